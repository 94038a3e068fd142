-- The auctions of one closing index whose end has passed by Redis's clock
-- (the clock the close itself checks), oldest first. KEYS: the index.
-- ARGV: limit. Returns a flat list: id, ends_at, id, ends_at...
-- Reads only: it runs under maxmemory too.
return redis.call('ZRANGE', KEYS[1], '-inf', num(now_ms()), 'BYSCORE', 'LIMIT', 0,
  tonumber(ARGV[1]), 'WITHSCORES')
