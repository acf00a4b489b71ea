-- Turn on just-in-time provisioning for a tenant CA: its template on the CA record, and the
-- issuer index that finds the CA from a device certificate's issuer name.
-- KEYS: 1 CA record, 2 issuer index
-- ARGV: 1 template JSON, 2 index value, 3 index value that may be replaced ('' : none)
if redis.call('EXISTS', KEYS[1]) == 0 then return 'not_found' end
local cur = redis.call('GET', KEYS[2])
if cur and cur ~= ARGV[2] and cur ~= ARGV[3] then return 'conflict' end
redis.call('HSET', KEYS[1], 'jitp', ARGV[1])
redis.call('SET', KEYS[2], ARGV[2])
return 'ok'
