//! The storage interface behind a [`Cache`](crate::Cache), and its two implementations.
//!
//! A backend stores opaque bytes under string keys, makes every entry that depends on an
//! invalidated dependency unreadable, and implements the stale-set guard: a
//! [`Ticket`] taken before a load makes a later [`PutRequest`] refuse to store when any of its
//! dependencies was invalidated in between. Both backends keep the same invariants; one
//! conformance suite (`tests/conformance.rs`) checks them.

use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;

use crate::error::Result;

pub mod memory;
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub mod redis;

/// A point in the backend's own invalidation clock, taken before loading a value.
///
/// The clock is owned by the backend (a counter kept in Redis, or the process's monotonic
/// clock for the in-memory backend), so processes on hosts with skewed clocks still agree on
/// what happened before what. The `epoch` names the clock's incarnation: a backend whose clock
/// was lost (a Redis restart or failover) starts another epoch, and refuses puts guarded by a
/// ticket of an earlier one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ticket {
    /// The clock's incarnation.
    pub epoch: u64,
    /// The clock's reading within the epoch.
    pub clock: u64,
}

impl Ticket {
    /// A ticket at `clock` in `epoch`.
    pub fn new(epoch: u64, clock: u64) -> Self {
        Ticket { epoch, clock }
    }
}

/// One value to store, with its dependencies.
#[derive(Debug)]
#[non_exhaustive]
pub struct PutRequest<'a> {
    /// The cache key (without prefix).
    pub key: &'a str,
    /// The encoded value.
    pub value: Bytes,
    /// Encoded dependencies ([`Dependency::encode`](crate::Dependency::encode)).
    pub deps: &'a [String],
    /// Time to live; always set, so nothing lives forever.
    pub ttl: Duration,
    /// When set, refuse to store if any dependency was invalidated after this ticket (or the
    /// backend can no longer tell, e.g. the ticket is older than the memory backend's stale
    /// window, or Redis lost the state that would tell).
    pub ticket: Option<Ticket>,
}

impl<'a> PutRequest<'a> {
    /// A request to store `value` under `key`.
    pub fn new(key: &'a str, value: Bytes, deps: &'a [String], ttl: Duration) -> Self {
        PutRequest {
            key,
            value,
            deps,
            ttl,
            ticket: None,
        }
    }

    /// Guards the put with a ticket taken before the value was loaded.
    #[must_use]
    pub fn guarded_by(mut self, ticket: Option<Ticket>) -> Self {
        self.ticket = ticket;
        self
    }
}

/// What a put did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum PutOutcome {
    /// The value is stored.
    Stored,
    /// A dependency was invalidated after the ticket was taken (or the ticket outlived the
    /// stale window): the value may be stale and was not stored.
    Stale,
}

/// What an invalidation did: how many entries it dropped, when the backend counts them.
///
/// The in-memory backend drops each dependent entry and counts them. Redis invalidates in
/// O(dependencies) without looking at dependents (their entries fail their stamp check on
/// the next read and expire), so it cannot say how many there were: [`dropped`] is `None`
/// there, never a misleading `0`.
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// use matroska_core::{Cache, Dependency};
///
/// let cache = Cache::memory();
/// cache.put("a", &1, &[Dependency::tag("t")], None).await?;
/// assert_eq!(cache.invalidate(&[Dependency::tag("t")]).await?.dropped(), Some(1));
/// # Ok::<_, matroska_core::Error>(()) }).unwrap();
/// ```
///
/// [`dropped`]: Invalidated::dropped
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Invalidated {
    dropped: Option<u64>,
}

impl Invalidated {
    /// A backend that counted: `dropped` entries were removed.
    pub const fn counted(dropped: u64) -> Self {
        Self {
            dropped: Some(dropped),
        }
    }

    /// A backend that invalidates without looking at dependents, so without counting them.
    pub const fn uncounted() -> Self {
        Self { dropped: None }
    }

    /// The entries dropped; `None` when the backend does not count them (Redis).
    pub const fn dropped(&self) -> Option<u64> {
        self.dropped
    }
}

/// Two invalidations together: counted when both were.
impl std::ops::Add for Invalidated {
    type Output = Self;

    fn add(self, other: Self) -> Self {
        Self {
            dropped: self
                .dropped
                .zip(other.dropped)
                .map(|(a, b)| a.saturating_add(b)),
        }
    }
}

impl std::ops::AddAssign for Invalidated {
    fn add_assign(&mut self, other: Self) {
        *self = *self + other;
    }
}

/// Storage for a [`Cache`](crate::Cache). Implemented by [`memory::MemoryBackend`] and
/// [`redis::RedisBackend`]; implement it to put matroska on another store.
///
/// Invariants every implementation keeps:
/// - `put` is atomic with respect to `invalidate`: an invalidation either happens after the
///   put (and the entry reads as a miss from then on) or before it, and then, for a guarded
///   put whose ticket predates the invalidation, makes the put refuse.
/// - a read that starts after `invalidate` returned never returns an entry stored with one of
///   its dependencies before that invalidation.
/// - overwriting a key replaces its dependencies: the old ones no longer reach the new value.
/// - every stored item expires.
#[async_trait]
pub trait Backend: Send + Sync + fmt::Debug + 'static {
    /// A short name for logs and errors (`"memory"`, `"redis"`).
    fn name(&self) -> &'static str;

    /// The bytes stored under `key`.
    async fn get(&self, key: &str) -> Result<Option<Bytes>>;

    /// The bytes stored under each of `keys`, in order (a key given twice is answered twice).
    /// Each answer keeps [`Backend::get`]'s guarantees: an invalidation that returned before
    /// this call began shows in every answer.
    ///
    /// The default reads the keys one after the other; a remote backend overrides it to read
    /// them in as few round trips as it can (Redis: one on a single server when this process
    /// has read or stored the keys before).
    async fn get_many(&self, keys: &[&str]) -> Result<Vec<Option<Bytes>>> {
        let mut found = Vec::with_capacity(keys.len());
        for key in keys {
            found.push(self.get(key).await?);
        }
        Ok(found)
    }

    /// Whether `key` holds a value.
    async fn has(&self, key: &str) -> Result<bool>;

    /// Stores a value with its dependencies, in one atomic step.
    async fn put(&self, request: PutRequest<'_>) -> Result<PutOutcome>;

    /// Stores several values, each as [`Backend::put`] would (each put is atomic on its own,
    /// the batch is not), and returns each one's outcome in order. An error may leave some of
    /// the values stored.
    ///
    /// The default puts them one after the other; Redis sends them in one round trip on a
    /// single server.
    async fn put_many(&self, requests: Vec<PutRequest<'_>>) -> Result<Vec<PutOutcome>> {
        let mut outcomes = Vec::with_capacity(requests.len());
        for request in requests {
            outcomes.push(self.put(request).await?);
        }
        Ok(outcomes)
    }

    /// Removes `key`; returns whether it was there.
    async fn delete(&self, key: &str) -> Result<bool>;

    /// Drops every entry that depends on any of `deps` (encoded), and makes guarded puts with
    /// an earlier ticket refuse. Returns [`Invalidated::counted`] with the number of entries
    /// dropped when the backend tracks dependents (the memory backend), and
    /// [`Invalidated::uncounted`] when it invalidates without looking at them (Redis, in
    /// O(dependencies)).
    async fn invalidate(&self, deps: &[String]) -> Result<Invalidated>;

    /// The current point of the backend's invalidation clock.
    async fn ticket(&self) -> Result<Ticket>;

    /// Tries to take the cross-process fill lease of `key` for `ttl` under `token` (a value
    /// the caller chose, unique to this attempt). Returns whether this caller got it. The
    /// caller knows the token before the call, so a call dropped mid-flight that did take the
    /// lease can still be released. Backends that live in one process return `true` at once
    /// (in-process coalescing already covers them).
    async fn try_lease(&self, key: &str, token: u64, ttl: Duration) -> Result<bool> {
        let _ = (key, token, ttl);
        Ok(true)
    }

    /// Releases a lease taken with [`Backend::try_lease`], if this token still holds it (a
    /// token that does not hold it is not an error).
    async fn release_lease(&self, key: &str, token: u64) -> Result<()> {
        let _ = (key, token);
        Ok(())
    }

    /// A name for the store this backend writes to, the same in every process that shares
    /// the store and different for any other store (the outbox relay delivers to each named
    /// store once). `None` (the default) for a store private to this process.
    fn shared_store(&self) -> Option<String> {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::Invalidated;

    #[test]
    fn a_sum_is_counted_only_when_both_parts_are() {
        assert_eq!(
            Invalidated::counted(1) + Invalidated::counted(2),
            Invalidated::counted(3)
        );
        assert_eq!(
            Invalidated::counted(1) + Invalidated::uncounted(),
            Invalidated::uncounted()
        );
        let mut total = Invalidated::uncounted();
        total += Invalidated::counted(4);
        assert_eq!(total.dropped(), None);
    }
}
