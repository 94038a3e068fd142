-- Prepended to place_bid.lua: a suspended bidder's bid is refused before
-- anything else, atomically with the bid. KEYS[4] (single node only; a
-- cluster checks before the script): the bidder's suspension marker.
if KEYS[4] and redis.call('EXISTS', KEYS[4]) == 1 then return {'suspended'} end
