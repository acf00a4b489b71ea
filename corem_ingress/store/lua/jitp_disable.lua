-- Turn off just-in-time provisioning for a tenant CA.
-- KEYS: 1 CA record, 2 issuer index
-- ARGV: 1 this CA's index value
if redis.call('EXISTS', KEYS[1]) == 0 then return 'not_found' end
redis.call('HDEL', KEYS[1], 'jitp')
if redis.call('GET', KEYS[2]) == ARGV[1] then redis.call('DEL', KEYS[2]) end
return 'ok'
