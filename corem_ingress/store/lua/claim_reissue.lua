-- Re-issue the credential a claim enrolled, while it was never used (a retry after a lost
-- reply): the current one is revoked, a new one replaces it. Whatever credential is current
-- is replaced, so concurrent retries each succeed and the last one's credential is the live
-- one. The current credential's keys come from the enrolment record: every registry key
-- shares one hash tag (one cluster slot), so reading them here is safe.
-- 'stale': the enrolment was used meanwhile, or the claim was revoked: decide again.
-- KEYS: 1 claim, 2 enrolment, 3 device, 4 new lookup, 5 new record, 6 device credentials
-- ARGV: 1 claim_id, 2 tenant_id, 3 now, 4 lookup value, 5 new credential_id, 6 bus channel,
--       7 created event, 8.. new record pairs
-- Returns {'ok', old credential_id, old lookup}: the caller publishes the old one's revoked
-- event (it was never used, so no node holds it in its cache: the event is belt and braces).
local c = redis.call('HMGET', KEYS[1], 'tenant_id', 'status')
if not c[1] or c[1] ~= ARGV[2] or c[2] ~= 'active' then return {'stale'} end
local e = redis.call('HMGET', KEYS[2], 'claim_id', 'used_at', 'credential_id', 'lookup_key',
  'record_key', 'device_id')
if e[1] ~= ARGV[1] or e[2] then return {'stale'} end
if redis.call('EXISTS', KEYS[4]) == 1 then return {'conflict'} end
local old_lookup = redis.call('HGET', e[5], 'lookup') or ''
redis.call('DEL', e[4])
redis.call('HSET', e[5], 'status', 'revoked', 'revoked_at', ARGV[3])
redis.call('SET', KEYS[4], ARGV[4])
redis.call('HSET', KEYS[5], unpack(ARGV, 8))
redis.call('SADD', KEYS[6], ARGV[5])
redis.call('HSET', KEYS[3], 'updated_at', ARGV[3])
redis.call('HSET', KEYS[2], 'credential_id', ARGV[5], 'lookup_key', KEYS[4], 'record_key',
  KEYS[5], 'issued_at', ARGV[3])
redis.call('HINCRBY', KEYS[2], 'issues', 1)
redis.call('PUBLISH', ARGV[6], ARGV[7])
return {'ok', e[3], old_lookup}
