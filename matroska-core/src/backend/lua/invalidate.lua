-- invalidate.lua: give each of a bounded number of dependencies a fresh stamp, in one round
-- trip. Entries recorded the stamps of their dependencies when they were stored; a read
-- compares them with the current ones, so a new stamp makes every dependent entry a miss,
-- whatever the number of dependents: the work is O(dependencies).
--
-- KEYS[1]       the clock: '<epoch>:<count>:<replication id>' (see ticket.lua)
-- KEYS[2 ..]    the stamp of each dependency (none on Redis Cluster, where stamps live in
--               other slots and the caller writes the returned stamp into them afterwards)
-- ARGV[1]  a fresh epoch (decimal, never 0), used when the clock is missing
-- ARGV[2]  stamp time to live, ms (the stale window; puts extend it to their entries' TTL)
--
-- Returns the stamp written, '<epoch>:<count>'.
--
-- Invariants:
-- * a stamp value is never reused: the count only grows within an epoch, a lost clock comes
--   back with a fresh epoch, and a replica promoted with a clock that is behind holds no
--   entry recording a count above its clock (replication applies a prefix of the master's
--   writes, and an entry recording a stamp was written after that stamp's clock bump), so
--   no entry stored before this call matches the stamp it writes;
-- * tickets need more: after a failover, a ticket taken on the old master may be above the
--   promoted clock. The clock keeps the replication id it was reset under (ticket.lua), and a
--   guarded put refuses while that id is not the server's own, until ticket.lua starts a new
--   epoch. This script therefore does not ask the server for its replication id (`INFO` is
--   most of a small invalidation's server time): it keeps the clock's, or writes '0' (never
--   an id) when it starts a clock;
-- * the caller bounds the number of dependencies per call, so a call never blocks the
--   server for long.
local c = redis.call('GET', KEYS[1])
local epoch, count, owner
if c then
  epoch, count, owner = string.match(c, '^(%d+):(%d+):(%w+)$')
end
if not epoch then
  epoch, count, owner = ARGV[1], '0', '0'
end
local stamp = epoch .. ':' .. string.format('%d', tonumber(count) + 1)
redis.call('SET', KEYS[1], stamp .. ':' .. owner)
for i = 2, #KEYS do
  redis.call('SET', KEYS[i], stamp, 'PX', ARGV[2])
end
return stamp
