-- resolve.lua (Redis Cluster, and puts with very many dependencies): replace a pending stamp
-- (stamp.lua) with the clock reading taken after it was seen (check_clock.lua).
--
-- KEYS[1]  the stamp
-- ARGV[1]  the pending value 'p<nonce>' the put saw
-- ARGV[2]  the clock reading '<epoch>:<count>'
-- ARGV[3]  how long the stamp is kept, ms
--
-- Returns 1 when replaced, 0 when the stamp no longer holds that pending value (an
-- invalidation or another put replaced it, or it was lost): the put then refuses.
--
-- Invariant: the reading was taken after the pending value was written, so after the clock
-- bump of every invalidation whose stamp was lost before: the stamp never goes backwards
-- within an epoch. An invalidation that bumped the clock before the reading but writes its
-- stamp after this call keeps this value (set_stamp.lua): every entry recording it was
-- checked against a ticket at least as recent as that bump, so was loaded after its write.
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
  return 1
end
return 0
