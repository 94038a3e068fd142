-- Validates and appends one bid. KEYS: state, stream, idempotency key (scoped
-- to the bidder by the caller), bidders (the hidden per-bidder hash).
-- ARGV: id, amount (or maximum), bidder_name_json, source, traceparent,
--   maxlen, idem_ttl_ms, use_idem ('1'|'0'), bidder_id_json, fingerprint
--   (what the key is bound to), retention_ms (for a close on the way),
--   kind ('amount' | 'max' | 'buy_now'; missing: 'amount').
-- Returns {'not_found'} | {'reused'} | {'dup', answer} | {'new', answer}, where
--   answer is 'ok2\n<id>\n<leading 1|0>\n<own maximum or empty>\n<bid json>'
--   (the bid: the auction's current one after this request; the id: its
--   event) | 'too_low\n<current>\n<min_next>' | 'not_raised\n<own maximum>'
--   | 'no_buy_now' | 'closed'. The rules: bid_rules.lua. ('ok\n<id>\n<bid>'
--   answers, stored before, are still read.)
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
local st = redis.call('HMGET', state, 'status', 'ends_at')
local answer
if st[1] ~= 'open' then
  answer = 'closed'
elseif now >= tonumber(st[2]) then
  close_auction(state, stream, id, maxlen, now, ARGV[11])
  answer = 'closed'
else
  answer = decide_bid({
    auction = id, kind = ARGV[12] or 'amount', value = ARGV[2], name_json = ARGV[3],
    id_json = ARGV[9], source = ARGV[4], traceparent = ARGV[5], maxlen = maxlen,
    retention = ARGV[11], now = now, state = state, stream = stream, bidders = KEYS[4]})
end
if use_idem then
  redis.call('SET', idem, fingerprint .. '\n' .. answer, 'PX', ARGV[7])
end
return {'new', answer}
