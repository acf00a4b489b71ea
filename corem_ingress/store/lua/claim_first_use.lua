-- A credential a claim issued authenticated for the first time: drop its 'pending' mark
-- from the lookup value (so the resolver does not ask again) and record the first use on
-- the enrolment, which from now on refuses re-issues.
-- KEYS: 1 credential lookup, 2 enrolment
-- ARGV: 1 the lookup value as read, 2 the value without the mark, 3 now, 4 credential_id
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 'changed' end
redis.call('SET', KEYS[1], ARGV[2], 'KEEPTTL')
if redis.call('HGET', KEYS[2], 'credential_id') == ARGV[4] then
  redis.call('HSET', KEYS[2], 'used_at', ARGV[3])
end
return 'ok'
