-- ticket.lua: read the invalidation clock before loading a value.
--
-- KEYS[1]  the invalidation clock
--
-- Returns max(stored clock, server time in µs). Every invalidation that starts after this
-- call writes a stamp greater than the result (see invalidate.lua), so a guarded put with this
-- ticket can tell whether it raced with one.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local clock = tonumber(redis.call('GET', KEYS[1]) or '0')
return math.max(clock, now)
