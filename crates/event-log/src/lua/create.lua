-- Creates an auction. KEYS: state, stream.
-- ARGV: id, title, title_json, starting_price, min_increment, duration_ms,
-- description_json, image_url_json (each '' when unset).
-- Returns {'exists'} or {'ok', auction_json}.
local state, stream = KEYS[1], KEYS[2]
if redis.call('EXISTS', state) == 1 then
  return {'exists'}
end
local now = now_ms()
-- A stream may outlive its state (state deleted by hand): keep the chain.
local last = redis.call('XREVRANGE', stream, '+', '-', 'COUNT', 1)
local last_id = '0-0'
if last[1] then last_id = last[1][1] end
redis.call('HSET', state,
  'id', ARGV[1], 'title', ARGV[2], 'title_json', ARGV[3], 'status', 'open',
  'starting_price', ARGV[4], 'min_increment', ARGV[5],
  'ends_at', num(now + tonumber(ARGV[6])), 'created_at', num(now),
  'current', '', 'current_amount', '', 'last_id', last_id,
  'description_json', ARGV[7], 'image_url_json', ARGV[8])
return {'ok', auction_json(state)}
