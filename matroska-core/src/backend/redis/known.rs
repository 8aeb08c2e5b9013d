//! What a read sends with its `GET`: the stamp keys of the entry's dependencies as this
//! process last stored or read them, per cache key.
//!
//! Bounded by [`RedisConfig::known_keys`](super::RedisConfig::known_keys); a key forgotten or
//! never seen only costs its next read a second round trip, never a wrong answer (the read
//! checks the guess against the entry's own header). It sits on every read and put, so it is
//! a sharded map with arbitrary eviction rather than an LRU cache: bookkeeping for recency
//! cost more per call than the second round trip it would save on a rare miss.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::{Arc, Mutex, PoisonError};

/// Stamp keys of one entry, in its dependencies' order.
pub(super) type StampKeys = Arc<[Vec<u8>]>;

const SHARDS: usize = 16;

type Shard = HashMap<Box<str>, StampKeys>;

pub(super) struct KnownKeys {
    shards: Box<[Mutex<Shard>]>,
    per_shard: usize,
    hasher: RandomState,
}

impl KnownKeys {
    pub(super) fn new(capacity: u64) -> Self {
        let capacity = usize::try_from(capacity).unwrap_or(usize::MAX);
        KnownKeys {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            per_shard: capacity.div_ceil(SHARDS),
            hasher: RandomState::new(),
        }
    }

    fn shard(&self, key: &str) -> std::sync::MutexGuard<'_, Shard> {
        // Truncation is fine: any bits pick a shard.
        let at = self.hasher.hash_one(key) as usize % SHARDS;
        self.shards[at]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    pub(super) fn get(&self, key: &str) -> Option<StampKeys> {
        self.shard(key).get(key).cloned()
    }

    /// Remembers `keys` for `key`; when the shard is full, forgets another key first.
    pub(super) fn remember(&self, key: &str, keys: &StampKeys) {
        if self.per_shard == 0 {
            return;
        }
        let mut map = self.shard(key);
        if let Some(known) = map.get_mut(key) {
            // The usual case, a key stored again with the same dependencies: nothing to do.
            if **known != **keys {
                *known = Arc::clone(keys);
            }
            return;
        }
        if map.len() >= self.per_shard {
            let victim = map.keys().next().cloned();
            if let Some(victim) = victim {
                map.remove(&victim);
            }
        }
        map.insert(key.into(), Arc::clone(keys));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(n: u8) -> StampKeys {
        vec![vec![n]].into()
    }

    #[test]
    fn remembers_replaces_and_stays_bounded() {
        let known = KnownKeys::new(64);
        known.remember("a", &keys(1));
        assert_eq!(known.get("a"), Some(keys(1)));
        known.remember("a", &keys(2));
        assert_eq!(known.get("a"), Some(keys(2)));
        for i in 0..10_000 {
            known.remember(&format!("k{i}"), &keys(3));
        }
        let held: usize = known.shards.iter().map(|s| s.lock().unwrap().len()).sum();
        assert!(held <= 64, "{held} keys held");
        assert_eq!(known.get("k9999"), Some(keys(3)));
    }

    #[test]
    fn zero_capacity_remembers_nothing() {
        let known = KnownKeys::new(0);
        known.remember("a", &keys(1));
        assert_eq!(known.get("a"), None);
    }
}
