-- check_clock.lua (Redis Cluster): the clock half of a guarded put, run after its stamps were
-- read (stamp.lua) and before its entry is written.
--
-- KEYS[1]  the clock: '<epoch>:<count>:<replication id>' (see ticket.lua)
-- ARGV[1]  ticket epoch
-- ARGV[2]  ticket count
-- ARGV[3]  '1' when a stamp was missing (created by this put), else '0'
--
-- Returns 1 when the put may store, 0 when the value may be stale: the clock has another
-- epoch or was written under another replication id (restart, failover, lost clock), or a
-- stamp was missing while an invalidation ran after the ticket. An invalidation bumps the
-- clock before it writes its stamps, so reading the clock after the stamps sees the bump of
-- any invalidation whose stamp this put could have missed.
local rid = string.match(redis.call('INFO', 'replication'), 'master_replid:(%w+)')
local c = redis.call('GET', KEYS[1])
local epoch, count, owner
if c then
  epoch, count, owner = string.match(c, '^(%d+):(%d+):(%w+)$')
end
if epoch ~= ARGV[1] or owner ~= rid then
  return 0
end
if ARGV[3] == '1' and tonumber(count) > tonumber(ARGV[2]) then
  return 0
end
return 1
