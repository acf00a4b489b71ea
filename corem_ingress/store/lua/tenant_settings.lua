-- Change one trust setting of a tenant and tell every node.
-- KEYS: 1 tenant settings
-- ARGV: 1 field, 2 value, 3 bus channel, 4 trust event
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('PUBLISH', ARGV[3], ARGV[4])
return 'ok'
