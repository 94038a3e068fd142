-- Validates and appends one bid. KEYS: state, stream, idempotency key (scoped
-- to the bidder by the caller).
-- ARGV: id, amount, bidder_name_json, source, traceparent, maxlen, idem_ttl_ms,
--   use_idem ('1'|'0'), bidder_id_json, fingerprint (what the key is bound to),
--   retention_ms (for a close on the way).
-- Returns {'not_found'} | {'reused'} | {'dup', answer} | {'new', answer}, where
--   answer is 'ok\n<id>\n<bid json>' | 'too_low\n<current>\n<min_next>' | 'closed'.
-- '<fingerprint>\n<answer>' is stored under the idempotency key: a retry with
-- the same fingerprint gets the answer back, another fingerprint gets 'reused'.
local state, stream, idem = KEYS[1], KEYS[2], KEYS[3]
local id, maxlen = ARGV[1], ARGV[6]
local use_idem = ARGV[8] == '1'
local fingerprint = ARGV[10]
if use_idem then
  local prior = redis.call('GET', idem)
  if prior then
    local cut = string.find(prior, '\n', 1, true)
    if not cut or string.sub(prior, 1, cut - 1) ~= fingerprint then return {'reused'} end
    return {'dup', string.sub(prior, cut + 1)}
  end
end
if redis.call('EXISTS', state) == 0 then
  return {'not_found'}
end
local now = now_ms()
local st = redis.call('HMGET', state, 'status', 'ends_at', 'starting_price', 'min_increment',
  'current_amount')
local answer
if st[1] ~= 'open' then
  answer = 'closed'
elseif now >= tonumber(st[2]) then
  close_auction(state, stream, id, maxlen, now, ARGV[11])
  answer = 'closed'
else
  local amount = tonumber(ARGV[2])
  local current, min_next = 0, tonumber(st[3])
  if st[5] and st[5] ~= '' then
    current = tonumber(st[5])
    min_next = current + tonumber(st[4])
  end
  if amount < min_next then
    answer = 'too_low\n' .. num(current) .. '\n' .. num(min_next)
  else
    local bid = '{"auction":"' .. id .. '","amount":' .. ARGV[2] .. ',"bidder":' .. ARGV[3] ..
      ',"bidder_id":' .. ARGV[9] .. ',"placed_at":' .. num(now) .. ',"source":"' .. ARGV[4] .. '"}'
    redis.call('HSET', state, 'current', bid, 'current_amount', ARGV[2])
    local event_id = append(state, stream, id, 'bid', bid, ARGV[5], maxlen, now)
    answer = 'ok\n' .. event_id .. '\n' .. bid
  end
end
if use_idem then
  redis.call('SET', idem, fingerprint .. '\n' .. answer, 'PX', ARGV[7])
end
return {'new', answer}
