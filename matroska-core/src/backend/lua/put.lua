-- put.lua: store one entry and index it under each of its dependencies, in one round trip.
--
-- KEYS[1]              the entry
-- KEYS[2 .. n+1]       the reverse-index set of each dependency
-- KEYS[n+2 .. 2n+1]    the invalidation marker of each dependency (same order)
-- ARGV[1]  value bytes
-- ARGV[2]  time to live, ms
-- ARGV[3]  n, the number of dependencies
-- ARGV[4]  ticket (µs on the server's clock) taken before the value was loaded, or '' for an
--          unguarded put
-- ARGV[5]  stale window, µs: how long invalidation markers live
--
-- Returns 1 when stored, 0 when refused because the value may be stale.
--
-- Invariants:
-- * a guarded put never stores a value one of whose dependencies was invalidated after the
--   ticket was taken (the marker says when), nor one whose ticket is older than the markers
--   live (a marker that has expired can no longer tell);
-- * an index set lives at least as long as the longest-lived entry it names, so an
--   invalidation can always find every live entry;
-- * every key written has a TTL.
local n = tonumber(ARGV[3])
local ttl = tonumber(ARGV[2])

if ARGV[4] ~= '' then
  local ticket = tonumber(ARGV[4])
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
  if now - ticket > tonumber(ARGV[5]) then
    return 0
  end
  for i = 1, n do
    local marker = redis.call('GET', KEYS[n + 1 + i])
    if marker and tonumber(marker) > ticket then
      return 0
    end
  end
end

redis.call('SET', KEYS[1], ARGV[1], 'PX', ttl)
for i = 2, n + 1 do
  local added = redis.call('SADD', KEYS[i], KEYS[1])
  if redis.call('PTTL', KEYS[i]) < ttl then
    redis.call('PEXPIRE', KEYS[i], ttl)
  end
  -- A long-lived dependency that is never invalidated (a scope's invalidate-all, say) keeps
  -- collecting names of entries that have since expired. Now and then, sample a few members
  -- and drop the dead ones: bounded work per put, and the set stays near its live size.
  if added == 1 and redis.call('SCARD', KEYS[i]) % 64 == 0 then
    local sample = redis.call('SRANDMEMBER', KEYS[i], 16)
    for _, member in ipairs(sample) do
      if redis.call('EXISTS', member) == 0 then
        redis.call('SREM', KEYS[i], member)
      end
    end
  end
end
return 1
