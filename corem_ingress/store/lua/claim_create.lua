-- Create a claim and its secret's lookup (which expires with the claim, enforced by Redis).
-- KEYS: 1 claim record, 2 tenant claims, 3 claim lookup
-- ARGV: 1 claim_id, 2 now, 3 lookup value, 4 expires at (ms; '0': never), 5.. record pairs
if redis.call('EXISTS', KEYS[3]) == 1 or redis.call('EXISTS', KEYS[1]) == 1 then
  return 'conflict'
end
redis.call('HSET', KEYS[1], unpack(ARGV, 5))
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[1])
redis.call('SET', KEYS[3], ARGV[3])
if ARGV[4] ~= '0' then redis.call('PEXPIREAT', KEYS[3], ARGV[4]) end
return 'ok'
