-- Revoke a credential now: the lookup goes, the record stays (status revoked).
-- KEYS: 1 credential record, 2 credential lookup, 3 device
-- ARGV: 1 tenant_id, 2 kind, 3 now, 4 bus channel, 5 revoked event
local c = redis.call('HMGET', KEYS[1], 'tenant_id', 'kind', 'status')
if not c[1] or c[1] ~= ARGV[1] or c[2] ~= ARGV[2] then return 'not_found' end
if c[3] == 'revoked' then return 'already' end
redis.call('DEL', KEYS[2])
redis.call('HSET', KEYS[1], 'status', 'revoked', 'revoked_at', ARGV[3])
redis.call('HSET', KEYS[3], 'updated_at', ARGV[3])
redis.call('PUBLISH', ARGV[4], ARGV[5])
return 'revoked'
