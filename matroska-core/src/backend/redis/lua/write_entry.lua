-- write_entry.lua (Redis Cluster, and puts with very many dependencies): the last step of a
-- spread put, and a delete: write (or delete) an entry and publish its key for near caches,
-- in one script on the entry's master.
--
-- KEYS[1]  the entry
-- ARGV[1]  the entry to write, or '' to delete it
-- ARGV[2]  its time to live, ms (ignored for a delete)
-- ARGV[3]  the near-cache channel '{P}:n'
-- ARGV[4]  the message to publish there: the key (near.rs)
--
-- Returns 1 when written or deleted, 0 when there was nothing to delete; `{n, error}` when
-- the PUBLISH was refused.
--
-- Invariant: the key is published after the write, on the master that holds the entry, so a
-- subscriber on that master receives it before anything that master runs later (its
-- heartbeats included), and a process that receives it and then reads sees the write. A
-- refused PUBLISH (an ACL user without the channel) does not fail the write (pcall); the
-- caller warns.
local done
if ARGV[1] == '' then
  done = redis.call('DEL', KEYS[1])
else
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  done = 1
end
local sent = redis.pcall('PUBLISH', ARGV[3], ARGV[4])
if type(sent) == 'table' and sent.err then
  return {done, sent.err}
end
return done
