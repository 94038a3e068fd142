-- The auction rules a bid goes through (README: "Auction rules"), for
-- place_bid.lua; prepended after the prelude. One call decides one request
-- and writes its events; the caller has checked that the auction is open and
-- before its end.
--
-- Hidden state (never published): `leader_id` / `leader_name` (JSON, as in
-- bids) and `leader_max`, the leader's maximum; in the bidders hash,
-- `max:<id json>` (a bidder's latest maximum) and `last:<id json>` (the
-- amount of their latest bid in the stream). Only the leader's maximum can
-- matter: every other bidder's is at or below the price.

-- `req`: id, kind ('amount'|'max'|'buy_now'), value (the amount or the
-- maximum), name_json, id_json, source, traceparent, maxlen, retention, now,
-- state, stream, bidders. Returns the answer place_bid.lua stores and gives
-- back (see there).
local function decide_bid(req)
  local state, stream = req.state, req.stream
  local f = redis.call('HMGET', state, 'starting_price', 'min_increment', 'current_amount',
    'reserve_price', 'buy_now_price', 'leader_id', 'leader_name', 'leader_max', 'ends_at',
    'soft_close_ms', 'current')
  local starting, inc = tonumber(f[1]), tonumber(f[2])
  local has_bid = f[3] and f[3] ~= ''
  local price = has_bid and tonumber(f[3]) or nil
  local min_next = starting
  if has_bid then min_next = price + inc end
  local reserve = nil
  if f[4] and f[4] ~= '' then reserve = tonumber(f[4]) end
  local leader = f[6] or ''
  local leader_name = f[7] or ''
  local leader_max = tonumber(f[8] or '') or price
  local me = req.id_json
  local x = tonumber(req.value)

  -- The price the leader's maximum `max` takes `p` to, given the reserve:
  -- up to the reserve when the maximum reaches it.
  local function with_reserve(p, max)
    if reserve and p < reserve then return math.max(p, math.min(max, reserve)) end
    return p
  end

  local bids = {} -- {amount, name_json, id_json, source}, in order
  local new_leader, new_leader_name, new_max = leader, leader_name, leader_max
  local close_now = false

  if req.kind == 'buy_now' then
    local buy_now = tonumber(f[5] or '')
    if not buy_now or (has_bid and price >= buy_now) then return 'no_buy_now' end
    bids[1] = {buy_now, req.name_json, me, req.source}
    new_leader, new_leader_name, new_max = me, req.name_json, buy_now
    close_now = true
  elseif x < min_next then
    return 'too_low\n' .. num(price or 0) .. '\n' .. num(min_next)
  elseif has_bid and leader == me then
    if req.kind == 'amount' then
      bids[1] = {x, req.name_json, me, req.source}
      new_max = math.max(leader_max, x)
    else
      if x <= leader_max then return 'not_raised\n' .. num(leader_max) end
      new_max = x
      local p = with_reserve(price, x)
      if p > price then bids[1] = {p, req.name_json, me, req.source} end
    end
  else
    -- A challenger (or the first bid). A plain bid bids its amount at once.
    local floor = min_next
    if req.kind == 'amount' then floor = x end
    if not has_bid then
      bids[1] = {with_reserve(floor, x), req.name_json, me, req.source}
      new_leader, new_leader_name, new_max = me, req.name_json, x
    elseif x > leader_max then
      local p = with_reserve(math.max(floor, math.min(x, leader_max + inc)), x)
      bids[1] = {p, req.name_json, me, req.source}
      new_leader, new_leader_name, new_max = me, req.name_json, x
    else
      -- The earlier maximum holds (ties included): its bidder answers one
      -- increment over this one, up to their maximum.
      if req.kind == 'amount' then bids[#bids + 1] = {x, req.name_json, me, req.source} end
      local p = with_reserve(math.min(leader_max, x + inc), leader_max)
      bids[#bids + 1] = {p, leader_name, leader, 'proxy'}
    end
  end

  if req.kind == 'max' then redis.call('HSET', req.bidders, 'max:' .. me, num(x)) end
  redis.call('HSET', state, 'leader_id', new_leader, 'leader_name', new_leader_name,
    'leader_max', num(new_max))
  local event_id = redis.call('HGET', state, 'last_id') or '0-0'
  local last_bid = f[11] or 'null'
  for _, b in ipairs(bids) do
    -- With a reserve, each bid says whether it meets it (never the reserve).
    local reserve_note = ''
    if reserve then reserve_note = ',"reserve_met":' .. tostring(b[1] >= reserve) end
    last_bid = '{"auction":"' .. req.auction .. '","amount":' .. num(b[1]) .. ',"bidder":' ..
      b[2] .. ',"bidder_id":' .. b[3] .. ',"placed_at":' .. num(req.now) ..
      ',"source":"' .. b[4] .. '"' .. reserve_note .. '}'
    redis.call('HSET', state, 'current', last_bid, 'current_amount', num(b[1]))
    redis.call('HSET', req.bidders, 'last:' .. b[3], num(b[1]))
    event_id = append(state, stream, req.auction, 'bid', last_bid, req.traceparent, req.maxlen,
      req.now)
  end
  if close_now then
    close_auction(state, stream, req.auction, req.maxlen, req.now, req.retention)
  elseif #bids > 0 then
    -- Soft close: a bid within the window moves the end by the window.
    local ends_at, soft = tonumber(f[9]), tonumber(f[10] or '') or 0
    if soft > 0 and ends_at - req.now < soft then
      local new_end = num(ends_at + soft)
      redis.call('HSET', state, 'ends_at', new_end)
      append(state, stream, req.auction, 'extended',
        '{"auction":"' .. req.auction .. '","ends_at":' .. new_end .. '}', req.traceparent,
        req.maxlen, req.now)
    end
  end
  local leading = '0'
  if new_leader == me then leading = '1' end
  local my_max = redis.call('HGET', req.bidders, 'max:' .. me) or ''
  return 'ok2\n' .. event_id .. '\n' .. leading .. '\n' .. my_max .. '\n' .. last_bid
end
