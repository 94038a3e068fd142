-- The simulator's turn on one auction. KEYS: the auction's turn key.
-- ARGV: interval_ms.
-- Redis's clock (this node's TIME, the same for every bidder replica) is cut
-- into intervals; the first caller in an interval takes the turn, the others
-- are told no. So the replicas together bid once per interval whatever
-- their own clocks say, and a replica that dies leaves the next turn to
-- whichever replica asks first.
-- Returns {1 | 0 (taken or not), ms until the next interval starts}.
local interval = tonumber(ARGV[1])
local now = now_ms()
local slot = math.floor(now / interval)
local next_in = (slot + 1) * interval - now
local last = tonumber(redis.call('GET', KEYS[1]) or '')
-- A turn recorded ahead of this clock (a failover to a node whose clock is
-- behind) blocks only until the key expires, two intervals after it was set.
if last and last >= slot then
  return {0, next_in}
end
redis.call('SET', KEYS[1], num(slot), 'PX', num(interval * 2))
return {1, next_in}
