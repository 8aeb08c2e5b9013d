-- stamp.lua (Redis Cluster, and puts with very many dependencies): read a dependency's stamp
-- for a put, marking it pending when missing, and keep it alive as long as the entry that
-- will record it. One key, so one slot.
--
-- KEYS[1]  the stamp
-- ARGV[1]  the entry's time to live, ms
-- ARGV[2]  a fresh nonce, for a pending value this call has to write
-- ARGV[3]  how long a stamp is kept when this call creates or extends it, ms (>= ARGV[1])
--
-- Returns the stamp.
--
-- Invariants:
-- * a created stamp must carry a clock reading no lower than the count of the dependency's
--   last invalidation, even one whose stamp was lost, so that a ticket older than that
--   invalidation is refused (put.lua). The clock lives in another slot: read before this
--   call, it could predate an invalidation whose stamp was then lost, and the stamp would go
--   backwards. So a missing stamp becomes 'p<nonce>', pending: the put reads the clock after
--   this call (check_clock.lua) and replaces the pending value with that reading
--   (resolve.lua), which is then at least the count of every invalidation whose stamp was
--   lost before this call. A pending value is never recorded in an entry, an invalidation
--   overwrites it (set_stamp.lua), and whichever put sees it next resolves it, so a crashed
--   creator wedges nothing;
-- * a stamp lives at least as long as the entries that record it (extended, never
--   shortened, whenever less than the entry's TTL is left).
local stamp = redis.call('GET', KEYS[1])
if not stamp then
  stamp = 'p' .. ARGV[2]
  redis.call('SET', KEYS[1], stamp, 'PX', ARGV[3])
  return stamp
end
local left = redis.call('PTTL', KEYS[1])
if left >= 0 and left < tonumber(ARGV[1]) then
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
end
return stamp
