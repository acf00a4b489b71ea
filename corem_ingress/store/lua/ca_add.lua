-- Add a CA to a tenant's trust anchors (idempotent: an existing one is left as it is).
-- KEYS: 1 CA record, 2 tenant CAs
-- ARGV: 1 fingerprint, 2 now, 3 most CAs a tenant may hold, 4 bus channel, 5 trust event,
--       6.. record field/value pairs
if redis.call('EXISTS', KEYS[1]) == 1 then return 'existing' end
if redis.call('ZCARD', KEYS[2]) >= tonumber(ARGV[3]) then return 'full' end
redis.call('HSET', KEYS[1], unpack(ARGV, 6))
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[1])
redis.call('PUBLISH', ARGV[4], ARGV[5])
return 'added'
