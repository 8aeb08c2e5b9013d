//! Process-wide nonces: lease tokens, fresh epochs, created stamps.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

/// A value no other call of any process is likely to get (splitmix64 of a counter seeded per
/// process from the time and the pid), never 0.
pub(crate) fn next() -> u64 {
    static COUNTER: OnceLock<AtomicU64> = OnceLock::new();
    let mut z = COUNTER
        .get_or_init(|| AtomicU64::new(seed()))
        .fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    (z ^ (z >> 31)).max(1)
}

/// A per-process starting point, so two processes rarely share nonces.
fn seed() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    // Truncation is fine: only uniqueness across processes matters, not the value.
    (nanos as u64) ^ (u64::from(std::process::id()) << 32)
}

#[cfg(test)]
mod tests {
    #[test]
    fn nonces_are_distinct_and_never_zero() {
        let seen: std::collections::HashSet<u64> = (0..10_000).map(|_| super::next()).collect();
        assert_eq!(seen.len(), 10_000);
        assert!(!seen.contains(&0));
    }
}
