-- set_stamp.lua (Redis Cluster): write an invalidation's stamp, never moving the stamp
-- backwards within an epoch.
--
-- KEYS[1]  the stamp
-- ARGV[1]  the invalidation's stamp '<epoch>:<count>' (invalidate.lua)
-- ARGV[2]  stamp time to live, ms (the stale window)
--
-- Returns 1 when written, 0 when the stamp already holds a count of the same epoch at least
-- as high.
--
-- Invariant: within an epoch a stamp never goes backwards. Two invalidations take their
-- counts from the clock in one order and may write the stamp in the other: a plain SET would
-- let the lower count land last, and a ticket taken between the two would then pass a stamp
-- that no longer shows the higher invalidation, which had already returned. A higher count
-- of the same epoch means an invalidation (or a re-creation, resolve.lua) that read the
-- clock after this one's bump, so keeping it loses nothing. Counts are comparable only
-- within an epoch, and on a cluster the clock restarts its epoch whenever it finds itself on
-- another server (invalidate.lua with ARGV[3]), so a promoted replica's lagging clock never
-- hands out counts below stamps already written. A stamp of another epoch, a pending or an
-- older layout's value is overwritten (a guarded put treats a stamp of another epoch than
-- its ticket as unverifiable, see check_clock.lua).
local current = redis.call('GET', KEYS[1])
if current then
  local epoch, count = string.match(current, '^(%d+):(%d+)$')
  local new_epoch, new_count = string.match(ARGV[1], '^(%d+):(%d+)$')
  if epoch and epoch == new_epoch and tonumber(count) >= tonumber(new_count) then
    return 0
  end
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
