-- Creates an auction. KEYS: state, stream.
-- ARGV: id, title, title_json, starting_price, min_increment, duration_ms,
-- description_json, image_url_json (each '' when unset), soft_close_ms,
-- reserve_price, buy_now_price, seller_json, terms_json (each '' when
-- unset).
-- Returns {'exists', auction_json} or {'ok', auction_json}.
local state, stream = KEYS[1], KEYS[2]
if redis.call('EXISTS', state) == 1 then
  return {'exists', auction_json(state)}
end
init_state(state, stream, ARGV, now_ms())
return {'ok', auction_json(state)}
