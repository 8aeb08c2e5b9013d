-- invalidate.lua: give each of a bounded number of dependencies a fresh stamp, in one round
-- trip. Entries recorded the stamps of their dependencies when they were stored; a read
-- compares them with the current ones, so a new stamp makes every dependent entry a miss,
-- whatever the number of dependents: the work is O(dependencies).
--
-- KEYS[1]       the clock: '<epoch>:<count>:<replication id>' (see ticket.lua)
-- KEYS[2 ..]    the stamp of each dependency (none on Redis Cluster, where stamps live in
--               other slots and the caller writes the returned stamp into them afterwards)
-- ARGV[1]  a fresh epoch (decimal, never 0), used when the clock is missing or was written
--          under another replication id
-- ARGV[2]  stamp time to live, ms (the stale window; puts extend it to their entries' TTL)
--
-- Returns the stamp written, '<epoch>:<count>'.
--
-- Invariants:
-- * the count only grows within an epoch, and a lost or possibly stale clock comes back with
--   another epoch: the stamp is above every ticket of its epoch taken before this call;
-- * a stamp value is never reused (the count is unique within the epoch, the epoch unique),
--   so no entry stored before this call matches it;
-- * the caller bounds the number of dependencies per call, so a call never blocks the
--   server for long.
local rid = string.match(redis.call('INFO', 'replication'), 'master_replid:(%w+)')
local c = redis.call('GET', KEYS[1])
local epoch, count, owner
if c then
  epoch, count, owner = string.match(c, '^(%d+):(%d+):(%w+)$')
end
if not epoch or owner ~= rid then
  epoch, count = ARGV[1], '0'
end
local stamp = epoch .. ':' .. string.format('%d', tonumber(count) + 1)
redis.call('SET', KEYS[1], stamp .. ':' .. rid)
for i = 2, #KEYS do
  redis.call('SET', KEYS[i], stamp, 'PX', ARGV[2])
end
return stamp
