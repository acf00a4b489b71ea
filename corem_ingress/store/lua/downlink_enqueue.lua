-- Decide where one downlink goes, and queue it for a persistent session.
-- KEYS: 1 session hash, 2 downlink queue, 3 sent set
-- ARGV: 1 the downlink (JSON), 2 qos, 3 queue max, 4 now (s), 5 its MQTT topic
-- Returns {'none'} (no session), {'live', owner} (deliver over pub/sub only: a session
-- that is not persistent, or QoS 0), {'unsubscribed', owner} (a persistent MQTT session
-- none of whose subscriptions matches the topic: MQTT queues only what a session is
-- subscribed to), or {'queued', owner, position, dropped ids...}: the oldest entries
-- beyond the queue max (and expired ones at the head) are removed.
if redis.call('EXISTS', KEYS[1]) == 0 then
  return {'none'}
end
local owner = redis.call('HGET', KEYS[1], 'owner') or ''
if redis.call('HGET', KEYS[1], 'persistent') ~= '1' or ARGV[2] == '0' then
  return {'live', owner}
end
-- MQTT filter matching (as adapters/mqtt/policy.levels_match): '+' one level, '#' the rest.
local function split(text)
  local out = {}
  for level in string.gmatch(text .. '/', '([^/]*)/') do
    out[#out + 1] = level
  end
  return out
end
local function matches(filter, topic)
  for i, f in ipairs(filter) do
    if f == '#' then return true end
    if i > #topic then return false end
    if f ~= '+' and f ~= topic[i] then return false end
  end
  return #filter == #topic
end
if redis.call('HGET', KEYS[1], 'transport') == 'mqtt' then
  local ok, rows = pcall(cjson.decode, redis.call('HGET', KEYS[1], 'subs') or '[]')
  local topic, found = split(ARGV[5]), false
  if ok and type(rows) == 'table' then
    for _, row in ipairs(rows) do
      if type(row) == 'table' and type(row[1]) == 'string' and matches(split(row[1]), topic) then
        found = true
        break
      end
    end
  end
  if not found then
    return {'unsubscribed', owner}
  end
end
local now, max = tonumber(ARGV[4]), tonumber(ARGV[3])
local out = {'queued', owner, 0}
-- Expired entries at the head go first (they must not push a live one out).
while true do
  local head = redis.call('LINDEX', KEYS[2], 0)
  if not head then break end
  local exp = tonumber(cjson.decode(head)['expires_at']) or 0
  if exp <= 0 or exp > now then break end
  redis.call('LPOP', KEYS[2])
  redis.call('SREM', KEYS[3], cjson.decode(head)['message_id'])
end
local n = redis.call('RPUSH', KEYS[2], ARGV[1])
while n > max do
  local old = redis.call('LPOP', KEYS[2])
  local id = cjson.decode(old)['message_id']
  redis.call('SREM', KEYS[3], id)
  out[#out + 1] = id
  n = n - 1
end
out[3] = n
local ttl = redis.call('PTTL', KEYS[1])
if ttl > 0 then
  redis.call('PEXPIRE', KEYS[2], ttl)
end
return out
