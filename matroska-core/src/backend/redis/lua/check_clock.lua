-- check_clock.lua (Redis Cluster, and puts with very many dependencies): the clock half of a
-- put, run after its stamps were read (stamp.lua) and before its entry is written.
--
-- KEYS[1]  the clock: '<epoch>:<count>:<run id>' (see ticket.lua)
-- ARGV[1]  ticket epoch, or '' for an unguarded put (which calls this only to resolve a
--          pending stamp)
-- ARGV[2]  ticket count
-- ARGV[3]  '1' when a stamp read cannot be compared with the ticket: pending (its creation
--          may have followed the loss of an invalidation's stamp), of another epoch (an
--          invalidation that read the clock before its epoch ended may write it late), or an
--          older layout's 'c<nonce>'; else '0'
-- ARGV[4]  a fresh epoch (decimal, never 0), used when the clock is missing or owned by
--          another server instance (run id)
--
-- Returns {1 when the put may store else 0, the clock reading '<epoch>:<count>', the clock's
-- owner (its first 16 characters, what the entry records: incarnation.rs)}: 0 when the
-- clock has another epoch than the ticket or is owned by another server instance (restart,
-- failover, lost clock), or a stamp could not be compared while an invalidation ran
-- after the ticket. An invalidation bumps the clock before it writes its stamps, so reading
-- the clock after the stamps sees the bump of any invalidation whose stamp this put could
-- have missed. The reading is what the put writes into its pending stamps (resolve.lua).
--
-- Invariant: like ticket.lua, a clock that is missing or owned by another run id is
-- restarted with a fresh epoch (count 0, owned by this server instance), so a reading handed
-- out here never comes from a clock that may be behind.
local rid = string.match(redis.call('INFO', 'server'), 'run_id:(%w+)')
local c = redis.call('GET', KEYS[1])
local epoch, count, owner
if c then
  epoch, count, owner = string.match(c, '^(%d+):(%d+):(%w+)$')
end
if not epoch or owner ~= rid then
  epoch, count, owner = ARGV[4], '0', rid
  redis.call('SET', KEYS[1], epoch .. ':0:' .. rid)
end
local reading = epoch .. ':' .. count
local owner16 = string.sub(owner, 1, 16)
if ARGV[1] ~= '' then
  if epoch ~= ARGV[1] then
    return { 0, reading, owner16 }
  end
  if ARGV[3] == '1' and tonumber(count) > tonumber(ARGV[2]) then
    return { 0, reading, owner16 }
  end
end
return { 1, reading, owner16 }
