-- Add a credential to an existing device of the same credential kind.
-- KEYS: 1 device, 2 credential lookup, 3 credential record, 4 device credentials, 5 tenant certs
-- ARGV: 1 tenant_id, 2 kind, 3 now, 4 lookup value, 5 credential_id, 6 bus channel,
--       7 created event, 8 record must be new (0/1), 9.. record field/value pairs
local dev = redis.call('HMGET', KEYS[1], 'tenant_id', 'credential_kind')
if not dev[1] or dev[1] ~= ARGV[1] then return 'not_found' end
if dev[2] ~= ARGV[2] then return 'wrong_kind' end
if redis.call('EXISTS', KEYS[2]) == 1 then return 'conflict' end
if ARGV[8] == '1' and redis.call('EXISTS', KEYS[3]) == 1 then return 'conflict' end
redis.call('SET', KEYS[2], ARGV[4])
redis.call('HSET', KEYS[3], unpack(ARGV, 9))
redis.call('SADD', KEYS[4], ARGV[5])
if ARGV[2] == 'x509' then redis.call('ZADD', KEYS[5], ARGV[3], ARGV[5]) end
redis.call('HSET', KEYS[1], 'updated_at', ARGV[3])
redis.call('PUBLISH', ARGV[6], ARGV[7])
return 'ok'
