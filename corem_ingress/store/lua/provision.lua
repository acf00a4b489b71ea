-- Create a device and (optionally) its first credential, idempotently on (tenant, hardware_id).
-- KEYS: 1 hardware anchor, 2 device, 3 tenant devices, 4 credential lookup, 5 credential record,
--       6 device credentials, 7 tenant certs
-- ARGV: 1 device_id, 2 tenant_id, 3 hardware_id, 4 kind, 5 now, 6 has_credential (0/1),
--       7 lookup value, 8 credential_id, 9 bus channel, 10 created event,
--       11 record must be new (0/1), 12.. credential record field/value pairs
local existing = redis.call('GET', KEYS[1])
if existing then return {'existing', existing} end
if ARGV[6] == '1' then
  if redis.call('EXISTS', KEYS[4]) == 1 then return {'conflict', ''} end
  if ARGV[11] == '1' and redis.call('EXISTS', KEYS[5]) == 1 then return {'conflict', ''} end
end
redis.call('SET', KEYS[1], ARGV[1])
redis.call('HSET', KEYS[2], 'device_id', ARGV[1], 'tenant_id', ARGV[2], 'hardware_id', ARGV[3],
  'credential_kind', ARGV[4], 'status', 'active', 'created_at', ARGV[5], 'updated_at', ARGV[5])
redis.call('ZADD', KEYS[3], ARGV[5], ARGV[1])
if ARGV[6] == '1' then
  redis.call('SET', KEYS[4], ARGV[7])
  redis.call('HSET', KEYS[5], unpack(ARGV, 12))
  redis.call('SADD', KEYS[6], ARGV[8])
  if ARGV[4] == 'x509' then redis.call('ZADD', KEYS[7], ARGV[5], ARGV[8]) end
  redis.call('PUBLISH', ARGV[9], ARGV[10])
end
return {'created', ARGV[1]}
