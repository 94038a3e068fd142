-- Shared helpers, prepended to every script of the event log.
-- Keys of one auction share the hash tag {ID}, so every script touches one slot.
-- PUBLISH_COMMAND is defined before this file: 'PUBLISH' on a single node,
-- 'SPUBLISH' in a cluster (a sharded channel, delivered only by the shard
-- that owns the auction's slot instead of by every node).
-- Numbers: Lua numbers are doubles; every amount (<= 2 * 10^12) and time in ms
-- is an integer well below 2^53, so arithmetic is exact. '%.0f' prints them
-- without an exponent.

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local function num(x)
  return string.format('%.0f', x)
end

-- Whether `amount` meets the auction's reserve (`reserve`: the stored
-- field; empty or missing when the auction has none).
local function meets_reserve(reserve, amount)
  if not reserve or reserve == '' then return true end
  return tonumber(amount) >= tonumber(reserve)
end

-- The auction as clients see it, from the state hash. `title_json`,
-- `current` and the optional `description_json` / `image_url_json` /
-- `seller_json` / `terms_json` (empty or missing when unset, then left out:
-- a hash written before sellers were recorded has no seller) are stored
-- already JSON-encoded by the caller. The reserve itself is never shown: only `reserve_met` once there
-- is a bid, and `sold` once closed. A hash written before the auction rules
-- existed has no soft close, reserve or buy-now price.
local function auction_json(state_key)
  local f = redis.call('HMGET', state_key, 'id', 'title_json', 'status', 'starting_price',
    'min_increment', 'ends_at', 'current', 'description_json', 'image_url_json',
    'soft_close_ms', 'reserve_price', 'buy_now_price', 'current_amount', 'seller_json',
    'terms_json')
  local current = f[7]
  local has_bid = current and current ~= ''
  if not has_bid then current = 'null' end
  local optional = ''
  if f[8] and f[8] ~= '' then optional = optional .. ',"description":' .. f[8] end
  if f[9] and f[9] ~= '' then optional = optional .. ',"image_url":' .. f[9] end
  if f[14] and f[14] ~= '' then optional = optional .. ',"seller":' .. f[14] end
  if f[15] and f[15] ~= '' then optional = optional .. ',"terms":' .. f[15] end
  local soft = f[10]
  if not soft or soft == '' then soft = '0' end
  optional = optional .. ',"soft_close_ms":' .. soft
  if f[12] and f[12] ~= '' then optional = optional .. ',"buy_now_price":' .. f[12] end
  local met = has_bid and meets_reserve(f[11], f[13])
  if has_bid then optional = optional .. ',"reserve_met":' .. tostring(met) end
  if f[3] == 'closed' then optional = optional .. ',"sold":' .. tostring(met) end
  return '{"id":"' .. f[1] .. '","title":' .. f[2] .. ',"status":"' .. f[3] ..
    '","starting_price":' .. f[4] .. ',"min_increment":' .. f[5] ..
    ',"ends_at":' .. f[6] .. ',"current":' .. current .. optional .. '}'
end

-- Writes the state hash of a new auction (open, no bid yet) from `spec`, the
-- arguments create and ensure_open share, in this order: id, title,
-- title_json, starting_price, min_increment, duration_ms, description_json,
-- image_url_json (each '' when unset), soft_close_ms, reserve_price,
-- buy_now_price (the last two '' when unset), seller_json ('{"id","name"}')
-- and terms_json (each '' when unset: the simulator's auctions have no
-- seller). A stream may outlive its state
-- (state deleted by hand): `last_id` is its newest entry, so the chain goes
-- on. `leader_id` / `leader_max` (hidden) are the leader's id and maximum.
local function init_state(state_key, stream_key, spec, now)
  local last = redis.call('XREVRANGE', stream_key, '+', '-', 'COUNT', 1)
  local last_id = '0-0'
  if last[1] then last_id = last[1][1] end
  redis.call('HSET', state_key,
    'id', spec[1], 'title', spec[2], 'title_json', spec[3], 'status', 'open',
    'starting_price', spec[4], 'min_increment', spec[5],
    'ends_at', num(now + tonumber(spec[6])), 'created_at', num(now),
    'current', '', 'current_amount', '', 'last_id', last_id,
    'description_json', spec[7], 'image_url_json', spec[8],
    'soft_close_ms', spec[9], 'reserve_price', spec[10], 'buy_now_price', spec[11],
    'seller_json', spec[12], 'terms_json', spec[13],
    'leader_id', '', 'leader_name', '', 'leader_max', '')
end

-- Appends one event to the auction's stream and publishes its notice.
-- `at` is the event's time (Unix ms, Redis's clock), kept as a field of its
-- own in the stream entry and the notice, so nobody has to find it in `data`.
-- The notice carries the new id and the id of the event before it, so a
-- subscriber can see a missed notice. Format (lines): v2, id, prev, kind, at,
-- traceparent, data. `data` is one-line JSON and goes last.
local function append(state_key, stream_key, auction_id, kind, data, traceparent, maxlen, at)
  local prev = redis.call('HGET', state_key, 'last_id')
  if not prev then prev = '0-0' end
  local at_text = num(at)
  local id = redis.call('XADD', stream_key, 'MAXLEN', '~', maxlen, '*',
    'kind', kind, 'data', data, 'prev', prev, 'at', at_text, 'tp', traceparent)
  redis.call('HSET', state_key, 'last_id', id)
  redis.call(PUBLISH_COMMAND, 'auction:{' .. auction_id .. '}:live',
    'v2\n' .. id .. '\n' .. prev .. '\n' .. kind .. '\n' .. at_text .. '\n' .. traceparent ..
    '\n' .. data)
  return id
end

-- Closes the auction: its `closed` event (`sold`, and `reserve_met` once
-- there is a bid, beside the auction), then its state and stream expire
-- `retention_ms` later (0: kept), in the same step, so no closed auction is
-- ever left without an expiry. A round that reopens persists them again.
local function close_auction(state_key, stream_key, auction_id, maxlen, at, retention_ms)
  redis.call('HSET', state_key, 'status', 'closed')
  local f = redis.call('HMGET', state_key, 'current_amount', 'reserve_price')
  local outcome = ',"sold":false'
  if f[1] and f[1] ~= '' then
    local met = tostring(meets_reserve(f[2], f[1]))
    outcome = ',"sold":' .. met .. ',"reserve_met":' .. met
  end
  local id = append(state_key, stream_key, auction_id, 'closed',
    '{"auction":' .. auction_json(state_key) .. outcome .. '}', '', maxlen, at)
  local retention = tonumber(retention_ms) or 0
  if retention > 0 then
    redis.call('PEXPIRE', state_key, retention)
    redis.call('PEXPIRE', stream_key, retention)
  end
  return id
end
