-- invalidate.lua: give each of a bounded number of dependencies a fresh stamp, in one round
-- trip. Entries recorded the stamps of their dependencies when they were stored; a read
-- compares them with the current ones, so a new stamp makes every dependent entry a miss,
-- whatever the number of dependents: the work is O(dependencies).
--
-- KEYS[1]       the clock: '<epoch>:<count>'
-- KEYS[2 ..]    the stamp of each dependency
-- ARGV[1]  a fresh epoch (decimal, never 0), used only when the clock is missing
-- ARGV[2]  stamp time to live, ms (the stale window; puts extend it to their entries' TTL)
--
-- Returns the number of dependencies stamped.
--
-- Invariants:
-- * the count only grows within an epoch, and a lost clock comes back with another epoch:
--   a stamp written here is '<epoch>:<count>' with a count above every ticket of its epoch
--   taken before this call;
-- * a stamp value is never reused (the count is unique within the epoch, the epoch unique),
--   so no entry stored before this call matches it;
-- * the caller bounds the number of dependencies per call, so a call never blocks the
--   server for long.
local c = redis.call('GET', KEYS[1])
local epoch, count
if c then
  epoch, count = string.match(c, '^(%d+):(%d+)$')
end
if not epoch then
  epoch, count = ARGV[1], '0'
end
local stamp = epoch .. ':' .. string.format('%d', tonumber(count) + 1)
redis.call('SET', KEYS[1], stamp)
for i = 2, #KEYS do
  redis.call('SET', KEYS[i], stamp, 'PX', ARGV[2])
end
return #KEYS - 1
