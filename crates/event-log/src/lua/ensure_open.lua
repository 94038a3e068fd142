-- Keeps a simulated auction open. KEYS: state, stream, bidders, sim_limits.
-- ARGV: id, title, title_json, starting_price, min_increment, duration_ms,
-- description_json, image_url_json, soft_close_ms, reserve_price,
-- buy_now_price, seller_json, terms_json (as create.lua), then maxlen,
-- pause_ms, retention_ms.
-- Missing: created. Closed: a new round starts (an 'opened' event), but not
-- before pause_ms past the old round's end, so its result stays visible.
-- Open but past its end: closed now (exactly once), then reopened (or paused).
-- Returns {'created'|'reopened'|'open'|'paused', auction_json}.
local state, stream = KEYS[1], KEYS[2]
local id, maxlen = ARGV[1], ARGV[14]
local pause_ms = tonumber(ARGV[15]) or 0
local now = now_ms()
if redis.call('EXISTS', state) == 0 then
  -- A round of its own: limits drawn for a deleted one do not carry over.
  redis.call('DEL', KEYS[4])
  init_state(state, stream, ARGV, now)
  return {'created', auction_json(state)}
end
local st = redis.call('HMGET', state, 'status', 'ends_at')
if st[1] == 'open' and now < tonumber(st[2]) then
  return {'open', auction_json(state)}
end
if st[1] == 'open' then
  close_auction(state, stream, id, maxlen, now, ARGV[16])
end
if now < tonumber(st[2]) + pause_ms then
  return {'paused', auction_json(state)}
end
-- A new round: the closed one's expiry no longer applies, nor do its
-- maximums and standings, nor its simulated bidders' limits.
redis.call('PERSIST', state)
redis.call('PERSIST', stream)
redis.call('DEL', KEYS[3], KEYS[4])
redis.call('HSET', state, 'status', 'open', 'current', '', 'current_amount', '',
  'ends_at', num(now + tonumber(ARGV[6])),
  'description_json', ARGV[7], 'image_url_json', ARGV[8],
  'soft_close_ms', ARGV[9], 'reserve_price', ARGV[10], 'buy_now_price', ARGV[11],
  'seller_json', ARGV[12], 'terms_json', ARGV[13],
  'leader_id', '', 'leader_name', '', 'leader_max', '')
local auction = auction_json(state)
append(state, stream, id, 'opened', '{"auction":' .. auction .. '}', '', maxlen, now)
return {'reopened', auction}
