-- ticket.lua: read the invalidation clock before loading a value.
--
-- KEYS[1]  the clock: '<epoch>:<count>'
-- ARGV[1]  a fresh epoch (decimal, never 0), used only when the clock is missing
--
-- Returns the clock, '<epoch>:<count>'. Every invalidation that runs after this call writes
-- stamps '<epoch>:<higher count>' (see invalidate.lua), so a guarded put with this ticket can
-- tell whether one of its dependencies was invalidated since.
--
-- Invariant: a clock that is lost (restart, failover to a replica without it, eviction) comes
-- back with another epoch, so no ticket taken before the loss can store after it.
local c = redis.call('GET', KEYS[1])
if not c or not string.match(c, '^%d+:%d+$') then
  c = ARGV[1] .. ':0'
  redis.call('SET', KEYS[1], c)
end
return c
