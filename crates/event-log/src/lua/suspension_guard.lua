-- Prepended to place_bid.lua: a suspended bidder's bid is refused before
-- anything else, atomically with the bid. KEYS[5] (single node only; a
-- cluster checks before the script): the bidder's suspension marker.
if KEYS[5] and redis.call('EXISTS', KEYS[5]) == 1 then return {'suspended'} end
