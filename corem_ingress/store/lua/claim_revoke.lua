-- Revoke a claim now: its secret's lookup goes, the record stays (status revoked). Devices it
-- already enrolled keep their own credentials.
-- KEYS: 1 claim record, 2 claim lookup
-- ARGV: 1 tenant_id, 2 now
local c = redis.call('HMGET', KEYS[1], 'tenant_id', 'status')
if not c[1] or c[1] ~= ARGV[1] then return 'not_found' end
if c[2] == 'revoked' then return 'already' end
redis.call('DEL', KEYS[2])
redis.call('HSET', KEYS[1], 'status', 'revoked', 'revoked_at', ARGV[2])
return 'revoked'
