-- A claim enrols a new device: the device, its first credential and the enrolment record, and
-- one use of the claim, in one step. 'stale': the state the caller decided on changed (another
-- request enrolled this hardware_id, the claim ran out or was revoked): read and decide again.
-- KEYS: 1 claim, 2 enrolment, 3 hardware anchor, 4 device, 5 tenant devices, 6 credential
--       lookup, 7 credential record, 8 device credentials
-- ARGV: 1 claim_id, 2 tenant_id, 3 hardware_id, 4 device_id, 5 credential kind, 6 now,
--       7 lookup value, 8 credential_id, 9 bus channel, 10 created event, 11.. record pairs
local c = redis.call('HMGET', KEYS[1], 'tenant_id', 'status', 'uses', 'max_uses')
if not c[1] or c[1] ~= ARGV[2] or c[2] ~= 'active' then return 'stale' end
if tonumber(c[3]) >= tonumber(c[4]) then return 'stale' end
if redis.call('EXISTS', KEYS[2]) == 1 or redis.call('EXISTS', KEYS[3]) == 1 then
  return 'stale'
end
if redis.call('EXISTS', KEYS[6]) == 1 then return 'conflict' end
redis.call('SET', KEYS[3], ARGV[4])
redis.call('HSET', KEYS[4], 'device_id', ARGV[4], 'tenant_id', ARGV[2], 'hardware_id', ARGV[3],
  'credential_kind', ARGV[5], 'status', 'active', 'created_at', ARGV[6], 'updated_at', ARGV[6])
redis.call('ZADD', KEYS[5], ARGV[6], ARGV[4])
redis.call('SET', KEYS[6], ARGV[7])
redis.call('HSET', KEYS[7], unpack(ARGV, 11))
redis.call('SADD', KEYS[8], ARGV[8])
redis.call('HINCRBY', KEYS[1], 'uses', 1)
redis.call('HSET', KEYS[2], 'claim_id', ARGV[1], 'device_id', ARGV[4], 'credential_id', ARGV[8],
  'lookup_key', KEYS[6], 'record_key', KEYS[7], 'issued_at', ARGV[6], 'issues', '1')
redis.call('PUBLISH', ARGV[9], ARGV[10])
return 'ok'
