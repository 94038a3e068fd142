-- Reports one replica's viewers of an auction; returns the total of every
-- replica's report that is still fresh. KEYS: the auction's viewers hash.
-- ARGV: replica, count, fresh_ms. Each field is a replica; its value is
-- 'count deadline_ms' (Redis's clock, so replicas' clocks do not matter).
-- A replica that stops reporting (it died) drops out when its deadline
-- passes; stale fields are removed here. A count of 0 removes the field.
local key, replica, count, fresh = KEYS[1], ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local now = now_ms()
if count > 0 then
  redis.call('HSET', key, replica, num(count) .. ' ' .. num(now + fresh))
else
  redis.call('HDEL', key, replica)
end
local total = 0
local fields = redis.call('HGETALL', key)
for i = 1, #fields, 2 do
  local n, deadline = string.match(fields[i + 1], '^(%d+) (%d+)$')
  if n and tonumber(deadline) >= now then
    total = total + tonumber(n)
  else
    redis.call('HDEL', key, fields[i])
  end
end
if #fields > 0 then
  -- The whole hash goes when every replica has stopped reporting.
  redis.call('PEXPIRE', key, fresh * 2)
end
return total
