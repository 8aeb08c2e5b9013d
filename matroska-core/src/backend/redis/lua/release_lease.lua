-- release_lease.lua: release a fill lease only if the caller still holds it.
--
-- KEYS[1]  the lease
-- ARGV[1]  the holder's token
--
-- Returns 1 when released. A lease that expired and was taken by another caller is left alone.
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
