-- Issue a proof-of-possession challenge unless the tenant already holds too many.
-- KEYS: 1 challenge (-> tenant_id), 2 the tenant's outstanding challenges (zset token -> expiry)
-- ARGV: 1 tenant_id, 2 token, 3 now (s), 4 ttl (s), 5 max outstanding
-- Returns {'ok', ''} or {'full', <expiry of the oldest outstanding challenge>}.
local now, ttl = tonumber(ARGV[3]), tonumber(ARGV[4])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
if redis.call('ZCARD', KEYS[2]) >= tonumber(ARGV[5]) then
  local oldest = redis.call('ZRANGE', KEYS[2], 0, 0, 'WITHSCORES')
  return {'full', oldest[2]}
end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ttl, 'NX')
redis.call('ZADD', KEYS[2], now + ttl, ARGV[2])
redis.call('EXPIRE', KEYS[2], ttl)
return {'ok', ''}
