-- A queued downlink is done (acknowledged, or dropped by the delivering node).
-- KEYS: 1 downlink queue, 2 sent set
-- ARGV: 1 the entry, 2 its message id
-- Returns 1 if it was still queued.
local n = redis.call('LREM', KEYS[1], 1, ARGV[1])
redis.call('SREM', KEYS[2], ARGV[2])
return n
