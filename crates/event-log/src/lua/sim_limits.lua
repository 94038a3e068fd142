-- The simulated bidders' limits in the auction's current round.
-- KEYS: the auction's limits hash. ARGV: ttl_ms, then name, limit pairs
-- (this caller's draw).
-- The first caller of a round stores its draw; every caller gets the stored
-- one, so all bidder replicas agree on each bidder's limit. ensure_open.lua
-- deletes the hash when a new round opens; the expiry only cleans up after
-- an auction that is no longer simulated.
-- Returns the stored hash as name, limit pairs.
if redis.call('EXISTS', KEYS[1]) == 0 and #ARGV > 1 then
  for i = 2, #ARGV - 1, 2 do
    redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
  end
  redis.call('PEXPIRE', KEYS[1], ARGV[1])
end
return redis.call('HGETALL', KEYS[1])
