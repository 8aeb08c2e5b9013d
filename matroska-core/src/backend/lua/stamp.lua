-- stamp.lua (Redis Cluster): read a dependency's stamp for a put, creating it when missing,
-- and keep it alive as long as the entry that will record it. One key, so one slot.
--
-- KEYS[1]  the stamp
-- ARGV[1]  the entry's time to live, ms
-- ARGV[2]  a fresh nonce, for a stamp this call has to create
-- ARGV[3]  how long a stamp is kept when this call creates or extends it, ms (>= ARGV[1])
--
-- Returns {stamp, 1 if this call created it else 0}.
--
-- Invariant: a created stamp is a value no entry recorded before (a lost stamp's entries stay
-- misses); a stamp lives at least as long as the entries that record it (extended, never
-- shortened, whenever less than the entry's TTL is left).
local stamp = redis.call('GET', KEYS[1])
if not stamp then
  stamp = 'c' .. ARGV[2]
  redis.call('SET', KEYS[1], stamp, 'PX', ARGV[3])
  return { stamp, 1 }
end
local left = redis.call('PTTL', KEYS[1])
if left >= 0 and left < tonumber(ARGV[1]) then
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
end
return { stamp, 0 }
