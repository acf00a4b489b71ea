-- Remove a CA from a tenant's trust anchors; returns its record (empty: not the tenant's).
-- KEYS: 1 CA record, 2 tenant CAs
-- ARGV: 1 fingerprint, 2 bus channel, 3 trust event
local record = redis.call('HGETALL', KEYS[1])
if #record == 0 then return record end
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('PUBLISH', ARGV[2], ARGV[3])
return record
