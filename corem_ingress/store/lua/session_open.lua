-- A device's session starts on a node (MQTT CONNECT, CoAP Observe of /down).
-- KEYS: 1 session hash, 2 downlink queue, 3 sent set, 4 the device's pending (delayed) will
-- ARGV: 1 owner ("node|session"), 2 clean (0/1), 3 persistent (0/1), 4 expiry_s, 5 transport
-- Returns {present (0/1), previous owner or '', stored subscriptions (JSON) or ''}.
-- Clean: the stored session and its queue are discarded. Else a stored persistent session
-- is resumed (present); the owner field makes this node the only one that may deliver.
local prev = redis.call('HGET', KEYS[1], 'owner') or ''
-- A reconnect within the Will Delay Interval cancels the will (MQTT 5 3.1.3.2.2).
redis.call('DEL', KEYS[4])
local present, subs = 0, ''
if ARGV[2] == '1' then
  redis.call('DEL', KEYS[1], KEYS[2], KEYS[3])
elseif redis.call('HGET', KEYS[1], 'persistent') == '1' then
  present = 1
  subs = redis.call('HGET', KEYS[1], 'subs') or ''
end
redis.call('HSET', KEYS[1], 'owner', ARGV[1], 'persistent', ARGV[3], 'expiry_s', ARGV[4],
  'transport', ARGV[5])
redis.call('PERSIST', KEYS[1])
redis.call('PERSIST', KEYS[2])
redis.call('PERSIST', KEYS[3])
return {present, prev, subs}
