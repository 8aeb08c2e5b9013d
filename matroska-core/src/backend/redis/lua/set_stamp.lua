-- set_stamp.lua (Redis Cluster): write an invalidation's stamp, never moving the stamp
-- backwards.
--
-- KEYS[1]  the stamp
-- ARGV[1]  the invalidation's stamp '<epoch>:<count>' (invalidate.lua)
-- ARGV[2]  stamp time to live, ms (the stale window)
-- ARGV[3]  a fresh nonce, for the pending value written when the current one cannot be
--          compared
-- ARGV[4]  the near-cache channel '{P}:n'
-- ARGV[5]  the message to publish there: this dependency (near.rs)
--
-- Returns 1 when written, 0 when the stamp already holds a count of the same epoch at least
-- as high; `{1 or 0, error}` when the PUBLISH was refused.
--
-- Invariant: a stamp never goes back to an older value. Two invalidations take their counts
-- from the clock in one order and may write the stamp in the other: a plain SET would let the
-- lower count land last, and a ticket taken between the two would then pass a stamp that no
-- longer shows the higher invalidation, which had already returned; an entry that recorded
-- the lower count would be served again. So:
-- * a count of the same epoch at least as high is kept: it comes from an invalidation (or a
--   re-creation, resolve.lua) that read the clock after this one's bump, and every entry
--   recording it was checked against a ticket at least as recent, so was loaded after this
--   one's write. Counts of an epoch are comparable because on a cluster the clock restarts
--   its epoch whenever it finds itself on another server (invalidate.lua with ARGV[3]): a
--   promoted replica's lagging clock never hands out counts below stamps already written;
-- * anything else cannot be compared: missing (perhaps lost with a higher count), pending (a
--   put will resolve it with a clock reading that may predate this bump), another epoch's
--   (perhaps newer: the clock may have restarted since this bump) or an older layout's. It
--   gets a fresh pending value 'p<nonce>': no entry recorded it, a put holding the old
--   pending value fails to resolve it and refuses, and the next put replaces it with a clock
--   reading taken after it, at least every count handed out so far (stamp.lua, resolve.lua).
--
-- Near cache: the dependency is published in this script, after the stamp is written (or
-- found newer), on the master that holds the stamp, so that a subscriber on that master
-- receives it before anything that master runs later (its heartbeats included), and a process
-- that receives it and then reads sees the new stamp. Published also when the stamp was kept:
-- a newer invalidation wrote it, and may not have published yet.
local function publish(written)
  local sent = redis.pcall('PUBLISH', ARGV[4], ARGV[5])
  if type(sent) == 'table' and sent.err then
    return {written, sent.err}
  end
  return written
end
local current = redis.call('GET', KEYS[1])
local epoch, count
if current then
  epoch, count = string.match(current, '^(%d+):(%d+)$')
end
local new_epoch, new_count = string.match(ARGV[1], '^(%d+):(%d+)$')
if epoch and epoch == new_epoch then
  if tonumber(count) >= tonumber(new_count) then
    return publish(0)
  end
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
else
  redis.call('SET', KEYS[1], 'p' .. ARGV[3], 'PX', ARGV[2])
end
return publish(1)
