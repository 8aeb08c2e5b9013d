-- invalidate.lua: drop every entry that depends on any of n dependencies, in one round trip
-- for up to ARGV[2] dependent entries.
--
-- KEYS[1]              the invalidation clock
-- KEYS[2 .. n+1]       the reverse-index set of each dependency
-- KEYS[n+2 .. 2n+1]    the invalidation marker of each dependency (same order)
-- ARGV[1]  n, the number of dependencies
-- ARGV[2]  budget: the most entries this call deletes
-- ARGV[3]  marker time to live, ms (the stale window)
--
-- Returns {dropped, i, j, ...}: the number of entries deleted, then the positions (1-based) of
-- the dependencies whose sets still hold members because the budget ran out. The caller calls
-- again with those.
--
-- Invariants:
-- * the clock only moves forward: max(stored clock, server time in µs) + 1, so a ticket taken
--   before this call is always lower than the markers written by it, even across a restart
--   that lost the clock key (the server's time has moved on);
-- * every dependency gets a marker, including ones with no entries yet: that is what makes a
--   concurrent guarded put of a value loaded before this call refuse;
-- * a call does bounded work (the budget), so a dependency with a million dependents never
--   blocks the server for long: it takes several calls instead of a BUSY script.
local n = tonumber(ARGV[1])
local budget = tonumber(ARGV[2])

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local clock = tonumber(redis.call('GET', KEYS[1]) or '0')
local stamp = string.format('%d', math.max(clock, now) + 1)
redis.call('SET', KEYS[1], stamp, 'PX', ARGV[3])

local dropped = 0
local result = {0}
for i = 1, n do
  redis.call('SET', KEYS[n + 1 + i], stamp, 'PX', ARGV[3])
  while true do
    if budget <= 0 then
      if redis.call('EXISTS', KEYS[1 + i]) == 1 then
        table.insert(result, i)
      end
      break
    end
    -- unpack() is bounded by Lua's stack: delete in chunks.
    local members = redis.call('SPOP', KEYS[1 + i], math.min(budget, 1000))
    if #members == 0 then
      break
    end
    dropped = dropped + redis.call('DEL', unpack(members))
    budget = budget - #members
  end
end
result[1] = dropped
return result
