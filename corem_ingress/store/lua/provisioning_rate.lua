-- Count one provisioning request against the fixed windows of its claim and its tenant.
-- KEYS: 1 claim window counter, 2 tenant window counter
-- ARGV: 1 seconds until the window ends
local a = redis.call('INCR', KEYS[1])
if a == 1 then redis.call('EXPIRE', KEYS[1], ARGV[1]) end
local b = redis.call('INCR', KEYS[2])
if b == 1 then redis.call('EXPIRE', KEYS[2], ARGV[1]) end
return {a, b}
