-- Keeps a simulated auction open. KEYS: state, stream.
-- ARGV: id, title, title_json, starting_price, min_increment, duration_ms, maxlen,
-- description_json, image_url_json (each '' when unset), pause_ms, retention_ms.
-- Missing: created. Closed: a new round starts (an 'opened' event), but not
-- before pause_ms past the old round's end, so its result stays visible.
-- Open but past its end: closed now (exactly once), then reopened (or paused).
-- Returns {'created'|'reopened'|'open'|'paused', auction_json}.
local state, stream = KEYS[1], KEYS[2]
local id, maxlen = ARGV[1], ARGV[7]
local pause_ms = tonumber(ARGV[10]) or 0
local now = now_ms()
if redis.call('EXISTS', state) == 0 then
  local last = redis.call('XREVRANGE', stream, '+', '-', 'COUNT', 1)
  local last_id = '0-0'
  if last[1] then last_id = last[1][1] end
  redis.call('HSET', state,
    'id', id, 'title', ARGV[2], 'title_json', ARGV[3], 'status', 'open',
    'starting_price', ARGV[4], 'min_increment', ARGV[5],
    'ends_at', num(now + tonumber(ARGV[6])), 'created_at', num(now),
    'current', '', 'current_amount', '', 'last_id', last_id,
    'description_json', ARGV[8], 'image_url_json', ARGV[9])
  return {'created', auction_json(state)}
end
local st = redis.call('HMGET', state, 'status', 'ends_at')
if st[1] == 'open' and now < tonumber(st[2]) then
  return {'open', auction_json(state)}
end
if st[1] == 'open' then
  close_auction(state, stream, id, maxlen, now, ARGV[11])
end
if now < tonumber(st[2]) + pause_ms then
  return {'paused', auction_json(state)}
end
-- A new round: the closed one's expiry no longer applies.
redis.call('PERSIST', state)
redis.call('PERSIST', stream)
redis.call('HSET', state, 'status', 'open', 'current', '', 'current_amount', '',
  'ends_at', num(now + tonumber(ARGV[6])),
  'description_json', ARGV[8], 'image_url_json', ARGV[9])
local auction = auction_json(state)
append(state, stream, id, 'opened', '{"auction":' .. auction .. '}', '', maxlen, now)
return {'reopened', auction}
