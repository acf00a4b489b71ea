-- A delayed will is due: take it unless a reconnect cancelled it (deleted the key) or a
-- newer disconnect replaced it.
-- KEYS: 1 the device's pending will
-- ARGV: 1 the token of the will this node holds
-- Returns 1 if the will is to be stored now.
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  return 1
end
return 0
