-- put.lua: store one entry with the current stamps of its dependencies, in one round trip.
--
-- KEYS[1]       the entry
-- KEYS[2]       the clock: '<epoch>:<count>:<replication id>' (see ticket.lua)
-- KEYS[3 ..]    the stamp of each dependency
-- ARGV[1]  value bytes
-- ARGV[2]  the entry's time to live, ms
-- ARGV[3]  ticket epoch taken before the value was loaded, or '' for an unguarded put
-- ARGV[4]  ticket count
-- ARGV[5]  a fresh nonce, for stamps this call has to create
-- ARGV[6]  the entry's header, encoded by the caller: '\182', n, ':', then per dependency
--          '<len>:<dependency>' (the dependencies of KEYS[3 ..], in order)
-- ARGV[7]  how long a stamp is kept when this call creates or extends it, ms (at least
--          ARGV[2]; the slack above it spares most puts the extension)
--
-- The entry is the header, the stamps read joined by ',' (a stamp never holds ',' or ';'),
-- ';', then the value. Returns 1 when stored, 0 when refused because the value may be stale.
--
-- Invariants:
-- * a read serves the entry only while every recorded stamp equals the current one, so
--   losing any key (the entry's stamps, the clock) can only make it a miss;
-- * a guarded put refuses when the clock has another epoch than its ticket or was written
--   under another replication id (restart, failover, lost clock), when a stamp of the
--   ticket's epoch is newer than the ticket, and when a stamp is missing while some
--   invalidation ran after the ticket (the missing stamp may have been that invalidation's,
--   then evicted);
-- * a missing stamp is created (also by a refused put, so the next load can store), with a
--   value no entry recorded before: entries that recorded a lost stamp stay misses;
-- * stamps live at least as long as the entries that recorded them (extended, never
--   shortened, whenever less than the entry's TTL is left), and every key written but the
--   clock has a TTL.
--
-- Cost: per dependency a GET and a PTTL; a PEXPIRE only when the stamp would die before the
-- entry (once per slack period), and no string building but the final concatenation.
local n = #KEYS - 2
local ttl = tonumber(ARGV[2])
local keep = ARGV[7]
local guarded = ARGV[3] ~= ''
local refuse = false
local ticket, clock
if guarded then
  ticket = tonumber(ARGV[4])
  local rid = string.match(redis.call('INFO', 'replication'), 'master_replid:(%w+)')
  local c = redis.call('GET', KEYS[2])
  local epoch, count, owner
  if c then
    epoch, count, owner = string.match(c, '^(%d+):(%d+):(%w+)$')
  end
  if epoch ~= ARGV[3] or owner ~= rid then
    refuse = true
  else
    clock = tonumber(count)
  end
end

local stamps = {}
for i = 1, n do
  local key = KEYS[i + 2]
  local stamp = redis.call('GET', key)
  if not stamp then
    stamp = 'c' .. ARGV[5]
    redis.call('SET', key, stamp, 'PX', keep)
    if guarded and not refuse and clock > ticket then
      refuse = true
    end
  else
    if guarded and not refuse then
      local epoch, count = string.match(stamp, '^(%d+):(%d+)$')
      if epoch == ARGV[3] and tonumber(count) > ticket then
        refuse = true
      end
    end
    local left = redis.call('PTTL', key)
    if left >= 0 and left < ttl then
      redis.call('PEXPIRE', key, keep)
    end
  end
  stamps[i] = stamp
end
if refuse then
  return 0
end
redis.call('SET', KEYS[1], ARGV[6] .. table.concat(stamps, ',') .. ';' .. ARGV[1], 'PX', ttl)
return 1
