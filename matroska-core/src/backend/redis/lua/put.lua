-- put.lua: store one entry with the current stamps of its dependencies, in one round trip.
--
-- KEYS[1]       the entry
-- KEYS[2]       the clock: '<epoch>:<count>:<run id>' (see ticket.lua)
-- KEYS[3 ..]    the stamp of each dependency
-- ARGV[1]  value bytes
-- ARGV[2]  the entry's time to live, ms
-- ARGV[3]  ticket epoch taken before the value was loaded, or '' for an unguarded put
-- ARGV[4]  ticket count
-- ARGV[5]  a fresh epoch (decimal, never 0), used when the clock is missing
-- ARGV[6]  the entry's header, encoded by the caller: '\183', n, ':', then per dependency
--          '<len>:<dependency>' (the dependencies of KEYS[3 ..], in order)
-- ARGV[7]  how long a stamp is kept when this call creates or extends it, ms (at least
--          ARGV[2]; the slack above it spares most puts the extension)
-- ARGV[8]  the near-cache channel '{P}:n', or absent
-- ARGV[9]  the message to publish there when the entry is stored: its key (near.rs), so
--          every process drops a near copy the new value replaces; a refused PUBLISH (an ACL
--          user without the channel) does not fail the put
--
-- The entry is the header, the stamps read joined by ',' (a stamp never holds ',' or ';'),
-- ';', the clock's owner (its first 16 characters), ';', then the value. Returns 1 when
-- stored, 0 when refused because the value may be stale.
--
-- Invariants:
-- * a read serves the entry only while every recorded stamp equals the current one and the
--   clock still has the recorded owner, so losing any key (the entry's stamps, the clock)
--   can only make it a miss: a server restarted from a snapshot restores entries with the
--   owner they recorded, the old instance's run id, and the first ticket or read
--   verification on it gives the clock its own (incarnation.rs). A clock lost and started
--   again on the same instance gets the same owner, so it drops no entry;
-- * a missing stamp is created as the clock's reading '<epoch>:<count>' (also by a refused
--   put, so the next load can store; a clock is started, count 0, when there is none). This
--   script reads the clock atomically with the creation, and every invalidation of the
--   dependency set the clock to its count first, so the created count is at least that of
--   the dependency's last invalidation, even one whose stamp was lost (expired after the
--   stale window, evicted): within an epoch a stamp never goes backwards, through loss and
--   re-creation included. A pending value 'p<nonce>' (a step-by-step put's creation, see
--   stamp.lua) is replaced the same way;
-- * so a stamp value is reused only when nothing was invalidated in between: a re-created
--   stamp equals a lost one only if the clock has not moved since the lost one was written,
--   and then every entry that recorded it is still current;
-- * a guarded put refuses when the clock has another epoch than its ticket or is owned by
--   another run id (restart, failover, lost clock), and when a stamp of the
--   ticket's epoch, created ones included, has a count above the ticket (an invalidation
--   after the ticket, or a re-creation after one that was lost). A stamp of another epoch
--   was written before the ticket's epoch began (every stamp is written with the clock's
--   epoch, atomically with reading it); an older layout's 'c<nonce>' tells nothing, so it
--   refuses when the clock moved past the ticket;
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
local ticket = tonumber(ARGV[4])
local c = redis.call('GET', KEYS[2])
local epoch, count, owner
if c then
  epoch, count, owner = string.match(c, '^(%d+):(%d+):(%w+)$')
end
if guarded or not epoch then
  local rid = string.match(redis.call('INFO', 'server'), 'run_id:(%w+)')
  if guarded and (epoch ~= ARGV[3] or owner ~= rid) then
    refuse = true
  end
  if not epoch then
    -- The entry records the clock's owner, so a missing clock is started here, owned by this
    -- server instance as ticket.lua would.
    epoch, count, owner = ARGV[5], '0', rid
    redis.call('SET', KEYS[2], epoch .. ':0:' .. rid)
  end
end

local created
local stamps = {}
for i = 1, n do
  local key = KEYS[i + 2]
  local stamp = redis.call('GET', key)
  -- 112 is 'p': a pending creation, replaced here as if missing.
  if not stamp or string.byte(stamp) == 112 then
    if not created then
      created = epoch .. ':' .. count
    end
    stamp = created
    redis.call('SET', key, stamp, 'PX', keep)
  else
    local left = redis.call('PTTL', key)
    if left >= 0 and left < ttl then
      redis.call('PEXPIRE', key, keep)
    end
  end
  if guarded and not refuse then
    local e, k = string.match(stamp, '^(%d+):(%d+)$')
    if e == ARGV[3] then
      refuse = tonumber(k) > ticket
    elseif not e then
      refuse = tonumber(count) > ticket
    end
  end
  stamps[i] = stamp
end
if refuse then
  return 0
end
redis.call('SET', KEYS[1],
  ARGV[6] .. table.concat(stamps, ',') .. ';' .. string.sub(owner, 1, 16) .. ';' .. ARGV[1],
  'PX', ttl)
if ARGV[8] then
  redis.pcall('PUBLISH', ARGV[8], ARGV[9])
end
return 1
