-- Replace a credential with a new one. expires_ms = 0: the old one stops now (revoked);
-- otherwise it keeps resolving until expires_ms, enforced by Redis itself (PEXPIREAT).
-- KEYS: 1 device, 2 new lookup, 3 new record, 4 device credentials, 5 old lookup, 6 old record
-- ARGV: 1 tenant_id, 2 device_id, 3 kind, 4 now, 5 new lookup value, 6 new credential_id,
--       7 bus channel, 8 created event, 9 old event, 10 expires_ms, 11 old lookup value (with
--       expiry), 12.. new record field/value pairs
local dev = redis.call('HMGET', KEYS[1], 'tenant_id', 'credential_kind')
if not dev[1] or dev[1] ~= ARGV[1] then return 'not_found' end
if dev[2] ~= ARGV[3] then return 'wrong_kind' end
local old = redis.call('HMGET', KEYS[6], 'device_id', 'status', 'kind')
if not old[1] or old[1] ~= ARGV[2] or old[3] ~= ARGV[3] then return 'old_not_found' end
if old[2] ~= 'active' then return 'old_not_active' end
if KEYS[2] ~= KEYS[5] and redis.call('EXISTS', KEYS[2]) == 1 then return 'conflict' end
if ARGV[10] == '0' then
  redis.call('DEL', KEYS[5])
  redis.call('HSET', KEYS[6], 'status', 'revoked', 'revoked_at', ARGV[4])
else
  if redis.call('EXISTS', KEYS[5]) == 1 then
    redis.call('SET', KEYS[5], ARGV[11])
    redis.call('PEXPIREAT', KEYS[5], ARGV[10])
  end
  redis.call('HSET', KEYS[6], 'status', 'rotated', 'expires_at', tostring(tonumber(ARGV[10]) / 1000))
end
redis.call('SET', KEYS[2], ARGV[5])
redis.call('HSET', KEYS[3], unpack(ARGV, 12))
redis.call('SADD', KEYS[4], ARGV[6])
redis.call('HSET', KEYS[1], 'updated_at', ARGV[4])
redis.call('PUBLISH', ARGV[7], ARGV[9])
redis.call('PUBLISH', ARGV[7], ARGV[8])
return 'ok'
