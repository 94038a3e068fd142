-- Closes an auction whose end has passed. KEYS: state, stream.
-- ARGV: id, maxlen, retention_ms.
-- Returns 'closed' (this call closed it), 'already', 'not_due <ends_at>' (a
-- soft close moved its end: the caller re-indexes it) or 'missing'.
-- Atomic, so however many replicas race here, one 'closed' event is appended.
local state, stream = KEYS[1], KEYS[2]
local st = redis.call('HMGET', state, 'status', 'ends_at')
if not st[1] then return 'missing' end
if st[1] ~= 'open' then return 'already' end
local now = now_ms()
if now < tonumber(st[2]) then return 'not_due ' .. st[2] end
close_auction(state, stream, ARGV[1], ARGV[2], now, ARGV[3])
return 'closed'
