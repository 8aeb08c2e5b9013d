-- invalidate.lua: give each of a bounded number of dependencies a fresh stamp, in one round
-- trip. Entries recorded the stamps of their dependencies when they were stored; a read
-- compares them with the current ones, so a new stamp makes every dependent entry a miss,
-- whatever the number of dependents: the work is O(dependencies).
--
-- KEYS[1]       the clock: '<epoch>:<count>:<run id>' (see ticket.lua)
-- KEYS[2 ..]    the stamp of each dependency (none on Redis Cluster, where stamps live in
--               other slots and the caller writes the returned stamp into them afterwards)
-- ARGV[1]  a fresh epoch (decimal, never 0), used when the clock is missing
-- ARGV[2]  stamp time to live, ms (the stale window; puts extend it to their entries' TTL)
-- ARGV[3]  '1' to restart the clock with a fresh epoch when it is owned by another server
--          instance, run id (Redis Cluster), else '0' or absent
-- ARGV[4]  the near-cache channel '{P}:n', or absent (Redis Cluster: the caller publishes
--          after writing the stamps)
-- ARGV[5]  the message to publish there: the dependencies of KEYS[2 ..] (near.rs)
--
-- Returns the stamp written, '<epoch>:<count>'; `{stamp, error}` when the PUBLISH was refused.
--
-- Invariants:
-- * no entry stored before this call's clock bump matches the stamp it writes: the count
--   only grows within an epoch, a lost clock comes back with a fresh epoch, every stamp is
--   written with a count no higher than the clock's when written (puts create stamps from
--   the clock's reading), and a replica promoted with a clock that is behind holds no entry
--   recording a count above its clock (replication applies a prefix of the master's writes,
--   and an entry recording a stamp was written after that stamp's clock bump). On a cluster
--   the stamps live on other servers, which a failover of the clock's server does not roll
--   back: there the clock restarts its epoch as soon as it finds itself on another server
--   (ARGV[3]), so counts handed out after a failover never fall below stamps already
--   written, and set_stamp.lua can keep the higher of two counts of one epoch;
-- * tickets need more: after a failover, a ticket taken on the old master may be above the
--   promoted clock. The clock keeps the run id it was reset under (ticket.lua), and a
--   guarded put refuses while that id is not the server's own, until ticket.lua starts a new
--   epoch. On one server this script therefore asks the server for its run id only when it
--   starts a clock (`INFO` is most of a small invalidation's server time), and keeps the
--   clock's otherwise. A clock it starts is owned by this server instance, so entries stored
--   on it before the clock was lost still match it (they record the owner: incarnation.rs)
--   and a verification does not restart it;
-- * every process's near cache hears of this invalidation in the same step as the stamps
--   change (ARGV[4]): one that receives the message and then reads Redis sees the new stamps,
--   so its refill cannot bring the old value back;
-- * the caller bounds the number of dependencies per call, so a call never blocks the
--   server for long.
local c = redis.call('GET', KEYS[1])
local epoch, count, owner
if c then
  epoch, count, owner = string.match(c, '^(%d+):(%d+):(%w+)$')
end
if ARGV[3] == '1' then
  local rid = string.match(redis.call('INFO', 'server'), 'run_id:(%w+)')
  if owner ~= rid then
    epoch, count, owner = ARGV[1], '0', rid
  end
elseif not epoch then
  epoch, count = ARGV[1], '0'
  owner = string.match(redis.call('INFO', 'server'), 'run_id:(%w+)')
end
local stamp = epoch .. ':' .. string.format('%d', tonumber(count) + 1)
redis.call('SET', KEYS[1], stamp .. ':' .. owner)
for i = 2, #KEYS do
  redis.call('SET', KEYS[i], stamp, 'PX', ARGV[2])
end
if ARGV[4] then
  -- pcall: a refused PUBLISH (an ACL user without the channel: Redis 7's default for new
  -- users) must not fail the invalidation, whose stamps are written already; the caller warns.
  local sent = redis.pcall('PUBLISH', ARGV[4], ARGV[5])
  if type(sent) == 'table' and sent.err then
    return {stamp, sent.err}
  end
end
return stamp
