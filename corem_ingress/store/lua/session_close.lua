-- A device's session ends on the node that owns it.
-- KEYS: 1 session hash, 2 downlink queue, 3 sent set
-- ARGV: 1 owner
-- Returns 0 (another node took the session over: nothing changed), 1 (persistent: kept
-- for expiry_s seconds) or 2 (discarded).
if redis.call('HGET', KEYS[1], 'owner') ~= ARGV[1] then
  return 0
end
local expiry = tonumber(redis.call('HGET', KEYS[1], 'expiry_s') or '0') or 0
if redis.call('HGET', KEYS[1], 'persistent') == '1' and expiry > 0 then
  redis.call('HDEL', KEYS[1], 'owner')
  redis.call('EXPIRE', KEYS[1], expiry)
  redis.call('EXPIRE', KEYS[2], expiry)
  redis.call('EXPIRE', KEYS[3], expiry)
  return 1
end
redis.call('DEL', KEYS[1], KEYS[2], KEYS[3])
return 2
