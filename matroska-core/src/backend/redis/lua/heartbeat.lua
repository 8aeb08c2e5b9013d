-- heartbeat.lua (Redis Cluster, near cache): one node's part of a heartbeat round, sent to
-- every master on the subscriber's own connection to it; also asked of any node to list the
-- masters.
--
-- ARGV[1]  the tier's heartbeat channel '{P}:n:<nonce>'
-- ARGV[2]  the round's number
--
-- Returns {subscribers that received the number on this node, this node's replication id,
-- the masters this node knows}: the masters as 'host:port' separated by spaces, sorted
-- (those flagged `fail` left out: a failed-over master's writes are lost; those still
-- joining, `handshake` or `noaddr`, left out: they hold no data yet). On a node that is not a
-- master, {-1, '', masters}, and nothing is published (demoted after a failover: its
-- PUBLISH would prove nothing about the writes, which go elsewhere).
--
-- Invariants: the replication id of a master changes whenever it is promoted or restarted,
-- so a round that finds every master with the id it had when the subscriber subscribed
-- proves that no failover happened meanwhile on those masters, however short; and a node
-- that takes writes for a slot (its owner, or the target of a migration: ASK) is known as a
-- master to the slot's previous owner before it takes any (`CLUSTER SETSLOT` names a known
-- node), so every master's list naming only the masters subscribed to proves none is missed.
local info = redis.call('INFO', 'replication')
local masters = {}
for line in string.gmatch(redis.call('CLUSTER', 'NODES'), '[^\n]+') do
  local addr, flags = string.match(line, '^%S+ ([^@ ]*)%S* (%S+)')
  if addr then
    local f = ',' .. flags .. ','
    if string.find(f, ',master,', 1, true) and not string.find(f, ',fail,', 1, true)
        and not string.find(f, ',handshake,', 1, true)
        and not string.find(f, ',noaddr,', 1, true) then
      table.insert(masters, addr)
    end
  end
end
table.sort(masters)
masters = table.concat(masters, ' ')
if string.match(info, 'role:(%w+)') ~= 'master' then
  return {-1, '', masters}
end
local id = string.match(info, 'master_replid:(%w+)') or ''
return {redis.call('PUBLISH', ARGV[1], ARGV[2]), id, masters}
