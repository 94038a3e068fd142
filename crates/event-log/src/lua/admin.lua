-- An admin's action on one auction, atomically with the events it appends.
-- KEYS: state, stream.
-- ARGV: id, action ('close' | 'extend' | 'cancel' | 'delete'), by_json
--   (`{"id","name"}` of the admin), reason_json ('null' when none), maxlen,
--   retention_ms, ends_at (the new end, Unix ms; 'extend' only).
-- Returns {'missing'} | {'not_open', status} | {'not_later', ends_at}
--   | {'ok', id of the `admin` event, auction JSON after the action}.
-- Every action appends one `admin` event
-- (`{"action","by","reason","at","auction"}`) naming who did it; a close
-- then appends the `closed` event the closer would.
local state, stream = KEYS[1], KEYS[2]
local id, action, by, reason = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local maxlen, retention = ARGV[5], ARGV[6]
local st = redis.call('HMGET', state, 'status', 'ends_at')
if not st[1] then return {'missing'} end
local now = now_ms()

local function admin_event(auction)
  return append(state, stream, id, 'admin',
    '{"action":"' .. action .. '","by":' .. by .. ',"reason":' .. reason ..
    ',"at":' .. num(now) .. ',"auction":' .. auction .. '}', '', maxlen, now)
end

if action == 'delete' then
  -- The listing goes: the state now, the stream a minute later (long
  -- enough for every edge to read the event), so the auction's pages are
  -- told, then `gone`.
  local auction = auction_json(state)
  local event_id = admin_event(auction)
  redis.call('DEL', state)
  redis.call('PEXPIRE', stream, 60000)
  return {'ok', event_id, auction}
end

if st[1] ~= 'open' then return {'not_open', st[1]} end
if action ~= 'close' and now >= tonumber(st[2]) then
  -- Past its end and not closed yet: it closes as it would have.
  close_auction(state, stream, id, maxlen, now, retention)
  return {'not_open', 'closed'}
end

if action == 'close' then
  local event_id = admin_event(auction_json(state))
  close_auction(state, stream, id, maxlen, now, retention)
  return {'ok', event_id, auction_json(state)}
elseif action == 'extend' then
  local ends_at = tonumber(ARGV[7])
  if not ends_at or ends_at <= tonumber(st[2]) then return {'not_later', st[2]} end
  redis.call('HSET', state, 'ends_at', num(ends_at))
  local auction = auction_json(state)
  return {'ok', admin_event(auction), auction}
elseif action == 'cancel' then
  redis.call('HSET', state, 'status', 'cancelled')
  local auction = auction_json(state)
  local event_id = admin_event(auction)
  local keep = tonumber(retention) or 0
  if keep > 0 then
    redis.call('PEXPIRE', state, keep)
    redis.call('PEXPIRE', stream, keep)
  end
  return {'ok', event_id, auction}
end
return redis.error_reply('unknown admin action ' .. action)
