-- Store a persistent session's subscriptions, if this owner still holds the session.
-- KEYS: 1 session hash
-- ARGV: 1 owner, 2 subscriptions (JSON)
-- Returns 1 if stored, 0 if the session was taken over.
if redis.call('HGET', KEYS[1], 'owner') ~= ARGV[1] then
  return 0
end
redis.call('HSET', KEYS[1], 'subs', ARGV[2])
return 1
