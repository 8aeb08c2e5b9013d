-- ticket.lua: read the invalidation clock before loading a value.
--
-- KEYS[1]  the clock: '<epoch>:<count>:<run id of the server instance that owns it>'
-- ARGV[1]  a fresh epoch (decimal, never 0), used when the clock is missing or owned by
--          another server instance
--
-- Also the verification a read runs on each new connection (incarnation.rs): entries record
-- the clock's owner and are served only while it is current, so giving the clock to this
-- instance here drops every entry a restarted server restored from a snapshot.
--
-- Returns '<epoch>:<count>'. Every invalidation that runs after this call writes stamps
-- '<epoch>:<higher count>' (see invalidate.lua), so a guarded put with this ticket can tell
-- whether one of its dependencies was invalidated since.
--
-- Invariant: a clock that is lost (restart, eviction) or may be behind (a replica promoted
-- after a failover, a server restarted from an RDB/AOF snapshot: both have another run id,
-- which every start of redis-server draws anew, while the replication id may survive a
-- restart) comes back with another epoch, so no ticket taken before can store after it, no
-- entry stored before is served after it, and counts never go backwards within an epoch.
local rid = string.match(redis.call('INFO', 'server'), 'run_id:(%w+)')
local c = redis.call('GET', KEYS[1])
local epoch, count, owner
if c then
  epoch, count, owner = string.match(c, '^(%d+):(%d+):(%w+)$')
end
if not epoch or owner ~= rid then
  epoch, count = ARGV[1], '0'
  redis.call('SET', KEYS[1], epoch .. ':0:' .. rid)
end
return epoch .. ':' .. count
