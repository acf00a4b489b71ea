-- Acknowledged entries out, then the next queued downlinks for the owner to send.
-- KEYS: 1 session hash, 2 downlink queue, 3 sent set
-- ARGV: 1 owner, 2 now (s), 3 how many, 4 n = number of acknowledged entries,
--       5 .. 4+2n (entry, message id) pairs acknowledged (removed whoever owns the session),
--       5+2n .. message ids this owner still has in flight (skipped)
-- Returns false if another node owns the session (after the acknowledged ones are removed),
-- else {expired ids (JSON list), entry, dup, entry, dup, ...}: each returned entry is
-- marked sent (dup = 1 if it already was: a redelivery). Expired entries are removed.
local n = tonumber(ARGV[4])
for i = 0, n - 1 do
  redis.call('LREM', KEYS[2], 1, ARGV[5 + 2 * i])
  redis.call('SREM', KEYS[3], ARGV[6 + 2 * i])
end
if redis.call('HGET', KEYS[1], 'owner') ~= ARGV[1] then
  return false
end
local now, want = tonumber(ARGV[2]), tonumber(ARGV[3])
local skip = {}
for i = 5 + 2 * n, #ARGV do skip[ARGV[i]] = true end
local out, expired = {''}, {}
local taken = 0
if want > 0 then
  for _, entry in ipairs(redis.call('LRANGE', KEYS[2], 0, -1)) do
    if taken >= want then break end
    local d = cjson.decode(entry)
    local id = d['message_id']
    if not skip[id] then
      local exp = tonumber(d['expires_at']) or 0
      if exp > 0 and exp <= now then
        redis.call('LREM', KEYS[2], 1, entry)
        redis.call('SREM', KEYS[3], id)
        expired[#expired + 1] = id
      else
        out[#out + 1] = entry
        out[#out + 1] = redis.call('SADD', KEYS[3], id) == 0 and 1 or 0
        taken = taken + 1
      end
    end
  end
end
out[1] = cjson.encode(expired)
return out
