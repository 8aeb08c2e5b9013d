//! The in-process backend: a bounded [moka] cache plus a reverse index.
//!
//! Reads go straight to moka (lock-free). Puts and invalidations take one mutex that guards
//! the reverse index, the invalidation markers and the clock, which is what makes a put and an
//! invalidation atomic with respect to each other. Every removal from moka, whatever its cause
//! (eviction, expiry, replacement, invalidation), goes through moka's eviction listener into a
//! queue that is drained under that mutex: one path cleans the index, so it never keeps rows
//! for entries that are gone.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use moka::notification::RemovalCause;

use super::{Backend, Invalidated, PutOutcome, PutRequest, Ticket};
use crate::error::Result;

/// Settings of a [`MemoryBackend`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct MemoryConfig {
    /// Bound on the number of entries (ignored when `max_bytes` is set).
    pub max_entries: u64,
    /// Bound on the total size of keys and values, in bytes.
    pub max_bytes: Option<u64>,
    /// How long an invalidation marker refuses guarded puts.
    pub stale_window: Duration,
}

impl Default for MemoryConfig {
    fn default() -> Self {
        MemoryConfig {
            max_entries: 100_000,
            max_bytes: None,
            stale_window: Duration::from_secs(60),
        }
    }
}

impl MemoryConfig {
    /// Bounds the cache to `n` entries.
    #[must_use]
    pub fn max_entries(mut self, n: u64) -> Self {
        self.max_entries = n;
        self
    }

    /// Bounds the cache to `bytes` of keys and values.
    #[must_use]
    pub fn max_bytes(mut self, bytes: u64) -> Self {
        self.max_bytes = Some(bytes);
        self
    }

    /// Sets the stale window (see [`MemoryConfig::stale_window`]).
    #[must_use]
    pub fn stale_window(mut self, window: Duration) -> Self {
        self.stale_window = window;
        self
    }
}

#[derive(Debug)]
struct Stored {
    value: Bytes,
    deps: Arc<[Arc<str>]>,
    generation: u64,
    ttl: Duration,
}

type Entries = moka::sync::Cache<Arc<str>, Arc<Stored>>;

/// Removals reported by moka, waiting to be applied to the index: (key, generation,
/// dependencies). Not the stored value: its bytes are freed at once.
type Removed = Arc<Mutex<Vec<(Arc<str>, u64, Arc<[Arc<str>]>)>>>;

#[derive(Debug, Default)]
struct State {
    /// Encoded dependency -> (key, generation) of the entries that depend on it.
    index: HashMap<Arc<str>, HashSet<(Arc<str>, u64)>>,
    /// Encoded dependency -> (clock at invalidation, marker expiry).
    markers: HashMap<Arc<str>, (u64, Instant)>,
    clock: u64,
    next_generation: u64,
    prune_markers_at: usize,
}

/// The embedded, in-process backend. Cheap to clone; clones share the storage.
///
/// ```
/// # tokio_test_block_on(async {
/// use matroska_core::{Cache, Dependency};
/// use matroska_core::backend::memory::{MemoryBackend, MemoryConfig};
///
/// let backend = MemoryBackend::new(MemoryConfig::default().max_entries(10_000));
/// let cache = Cache::builder(backend).build()?;
/// cache.put("k", &1, &[Dependency::tag("t")], None).await?;
/// assert_eq!(cache.invalidate(&[Dependency::tag("t")]).await?.dropped(), Some(1));
/// # Ok::<_, matroska_core::Error>(()) }).unwrap();
/// # fn tokio_test_block_on<F: std::future::Future>(f: F) -> F::Output {
/// #     tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(f) }
/// ```
#[derive(Debug, Clone)]
pub struct MemoryBackend {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    entries: Entries,
    removed: Removed,
    state: Mutex<State>,
    epoch: Instant,
    stale_window: Duration,
}

struct PerEntryTtl;

impl moka::Expiry<Arc<str>, Arc<Stored>> for PerEntryTtl {
    fn expire_after_create(
        &self,
        _key: &Arc<str>,
        value: &Arc<Stored>,
        _created_at: Instant,
    ) -> Option<Duration> {
        Some(value.ttl)
    }

    fn expire_after_update(
        &self,
        _key: &Arc<str>,
        value: &Arc<Stored>,
        _updated_at: Instant,
        _duration_until_expiry: Option<Duration>,
    ) -> Option<Duration> {
        Some(value.ttl)
    }
}

impl Default for MemoryBackend {
    fn default() -> Self {
        Self::new(MemoryConfig::default())
    }
}

impl MemoryBackend {
    /// A backend with the given bounds.
    pub fn new(config: MemoryConfig) -> Self {
        let removed: Removed = Arc::default();
        let sink = Arc::clone(&removed);
        let mut builder = moka::sync::Cache::builder()
            .expire_after(PerEntryTtl)
            .eviction_listener(move |key, value, _cause: RemovalCause| {
                // Only this small queue is locked here: moka may call the listener on a thread
                // that holds the state mutex (inside `put` or `invalidate`).
                lock(&sink).push((Arc::clone(&key), value.generation, Arc::clone(&value.deps)));
            });
        builder = match config.max_bytes {
            Some(bytes) => builder
                .max_capacity(bytes)
                .weigher(|k: &Arc<str>, v: &Arc<Stored>| {
                    let size =
                        k.len() + v.value.len() + v.deps.iter().map(|d| d.len()).sum::<usize>();
                    u32::try_from(size).unwrap_or(u32::MAX)
                }),
            None => builder.max_capacity(config.max_entries),
        };
        MemoryBackend {
            inner: Arc::new(Inner {
                entries: builder.build(),
                removed,
                state: Mutex::new(State {
                    prune_markers_at: 1024,
                    ..State::default()
                }),
                epoch: Instant::now(),
                // Bounded so that `Instant + window` cannot overflow.
                stale_window: config.stale_window.min(Duration::from_secs(86_400)),
            }),
        }
    }

    /// Runs moka's pending maintenance (expiry, eviction) and applies its removals to the
    /// reverse index. Normal operations do this incrementally; tests and benchmarks call it to
    /// observe a settled state.
    pub fn run_pending_tasks(&self) {
        self.inner.entries.run_pending_tasks();
        let mut state = self.inner.lock_state();
        self.inner.apply_removals(&mut state);
    }

    /// The number of entries held (after [`MemoryBackend::run_pending_tasks`], exact).
    pub fn entry_count(&self) -> u64 {
        self.inner.entries.entry_count()
    }

    /// The number of (dependency, entry) rows in the reverse index.
    pub fn index_rows(&self) -> usize {
        self.inner
            .lock_state()
            .index
            .values()
            .map(HashSet::len)
            .sum()
    }
}

/// Locks a mutex, recovering from poisoning: every critical section here leaves the state
/// consistent before anything that can panic, so a poisoned lock holds valid data.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Inner {
    fn lock_state(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }

    /// The time, as an `Instant` and in microseconds since `epoch` (the clock's unit). Read
    /// it with the state locked: the lock orders tickets, puts and invalidations, and a
    /// reading taken before it may be arbitrarily old by the time the lock is held.
    fn now(&self) -> (Instant, u64) {
        let instant = Instant::now();
        let micros = instant.saturating_duration_since(self.epoch).as_micros();
        (instant, u64::try_from(micros).unwrap_or(u64::MAX))
    }

    fn apply_removals(&self, state: &mut State) {
        let removed = std::mem::take(&mut *lock(&self.removed));
        for (key, generation, deps) in removed {
            let row = (key, generation);
            for dep in deps.iter() {
                if let Some(keys) = state.index.get_mut(dep) {
                    keys.remove(&row);
                    if keys.is_empty() {
                        state.index.remove(dep);
                    }
                }
            }
        }
    }
}

#[async_trait]
impl Backend for MemoryBackend {
    fn name(&self) -> &'static str {
        "memory"
    }

    async fn get(&self, key: &str) -> Result<Option<Bytes>> {
        Ok(self.inner.entries.get(key).map(|s| s.value.clone()))
    }

    async fn get_many(&self, keys: &[&str]) -> Result<Vec<Option<Bytes>>> {
        Ok(keys
            .iter()
            .map(|key| self.inner.entries.get(*key).map(|s| s.value.clone()))
            .collect())
    }

    async fn has(&self, key: &str) -> Result<bool> {
        Ok(self.inner.entries.contains_key(key))
    }

    async fn put(&self, request: PutRequest<'_>) -> Result<PutOutcome> {
        let mut state = self.inner.lock_state();
        // The time is read under the lock, once, for both checks below: read before it, a put
        // that waited for the lock longer than the stale window would pass the window check
        // with its early reading while the marker of an invalidation made after its ticket
        // had expired by the time the markers are looked at, and store a stale value.
        let (instant, now) = self.inner.now();
        self.inner.apply_removals(&mut state);
        if let Some(Ticket { clock: ticket, .. }) = request.ticket {
            let window = u64::try_from(self.inner.stale_window.as_micros()).unwrap_or(u64::MAX);
            if now.saturating_sub(ticket) > window {
                return Ok(PutOutcome::Stale);
            }
            let invalidated_since = request.deps.iter().any(|dep| {
                state
                    .markers
                    .get(dep.as_str())
                    .is_some_and(|&(at, until)| at > ticket && until > instant)
            });
            if invalidated_since {
                return Ok(PutOutcome::Stale);
            }
        }
        state.next_generation += 1;
        let generation = state.next_generation;
        let key: Arc<str> = Arc::from(request.key);
        let deps: Arc<[Arc<str>]> = request
            .deps
            .iter()
            .map(|d| match state.index.get_key_value(d.as_str()) {
                Some((shared, _)) => Arc::clone(shared),
                None => Arc::from(d.as_str()),
            })
            .collect();
        for dep in deps.iter() {
            state
                .index
                .entry(Arc::clone(dep))
                .or_default()
                .insert((Arc::clone(&key), generation));
        }
        let stored = Arc::new(Stored {
            value: request.value,
            deps,
            generation,
            ttl: request.ttl,
        });
        self.inner.entries.insert(key, stored);
        Ok(PutOutcome::Stored)
    }

    async fn delete(&self, key: &str) -> Result<bool> {
        Ok(self.inner.entries.remove(key).is_some())
    }

    async fn invalidate(&self, deps: &[String]) -> Result<Invalidated> {
        let mut state = self.inner.lock_state();
        let (_, now) = self.inner.now();
        self.inner.apply_removals(&mut state);
        state.clock = state.clock.max(now) + 1;
        let stamp = state.clock;
        // Measured from the marker's clock value, in the unit puts compare tickets with: a
        // put that finds this marker expired has `now >= stamp + window > ticket + window`,
        // so its window check refuses it. (From the wall time here, a clock pushed ahead of
        // the time by a burst of invalidations would let a marker expire a little early.)
        let until = self.inner.epoch + Duration::from_micros(stamp) + self.inner.stale_window;
        let mut dropped = 0;
        for dep in deps {
            let dep: Arc<str> = Arc::from(dep.as_str());
            if let Some(rows) = state.index.remove(&dep) {
                for (key, generation) in rows {
                    // Only the entry this row was written for: a later put of the same key
                    // with other dependencies is not affected by this one.
                    let current = self.inner.entries.get(&key);
                    if current.is_some_and(|s| s.generation == generation)
                        && self.inner.entries.remove(&key).is_some()
                    {
                        dropped += 1;
                    }
                }
            }
            state.markers.insert(dep, (stamp, until));
        }
        if state.markers.len() > state.prune_markers_at {
            let instant = Instant::now();
            state.markers.retain(|_, &mut (_, until)| until > instant);
            state.prune_markers_at = (state.markers.len() * 2).max(1024);
        }
        self.inner.apply_removals(&mut state);
        Ok(Invalidated::counted(dropped))
    }

    async fn ticket(&self) -> Result<Ticket> {
        let state = self.inner.lock_state();
        let (_, now) = self.inner.now();
        // One epoch: the clock lives as long as the backend.
        Ok(Ticket::new(0, state.clock.max(now)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A guarded put that waits for the lock longer than the stale window, behind an
    /// invalidation made after its ticket, is refused: the time it checks the window with is
    /// read under the lock, together with the markers' expiry, not before it.
    #[test]
    fn a_put_that_waited_for_the_lock_past_the_window_is_refused() {
        let window = Duration::from_millis(100);
        let backend = MemoryBackend::new(MemoryConfig::default().stale_window(window));
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("a runtime");
        let deps = vec!["d".to_owned()];
        let ticket = runtime.block_on(backend.ticket()).expect("ticket");
        runtime
            .block_on(backend.invalidate(&deps))
            .expect("invalidate");
        // Hold the lock that orders puts and invalidations while the put starts, and until
        // the invalidation's marker has expired.
        let held = backend.inner.lock_state();
        let marker_expired = Instant::now() + 2 * window;
        let put = std::thread::spawn({
            let (backend, deps) = (backend.clone(), deps.clone());
            move || {
                let request = PutRequest::new(
                    "k",
                    Bytes::from_static(b"v1"),
                    &deps,
                    Duration::from_secs(60),
                )
                .guarded_by(Some(ticket));
                tokio::runtime::Builder::new_current_thread()
                    .build()
                    .expect("a runtime")
                    .block_on(backend.put(request))
                    .expect("put")
            }
        });
        // The put is waiting for the lock; only the passing of time is waited for here.
        while Instant::now() < marker_expired {
            std::thread::sleep(marker_expired - Instant::now());
        }
        drop(held);
        let outcome = put.join().expect("the put thread");
        assert_eq!(
            outcome,
            PutOutcome::Stale,
            "a value loaded before the invalidation was stored"
        );
        assert!(runtime.block_on(backend.get("k")).expect("get").is_none());
    }
}
