//! The [`Cache`]: typed get / put / invalidate over a [`Backend`], and `get_or_load` with
//! stale-set protection and stampede control.
//!
//! This module holds the public API; the batch reads are in `batch.rs`; `get_or_load`'s
//! machinery lives beside it:
//! `flight.rs` (in-process single-flight), `lease.rs` (the cross-process fill lease) and
//! `fill.rs` (the fill protocol: the leader's steps as a pure state, the outcomes, which
//! followers may use which outcome).

mod batch;
mod fill;
mod flight;
mod lease;
#[cfg(test)]
mod model;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::backend::memory::MemoryBackend;
use crate::backend::{Backend, Invalidated, PutOutcome, PutRequest, Ticket};
use crate::codec::Codec;
use crate::dependency::Dependency;
use crate::error::{Error, Result};
use crate::observe::{Counter, backend_error, count};

/// A dependency-tracking cache. Cheap to clone: clones share the backend and settings.
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// use matroska_core::{Cache, Dependency};
///
/// let cache = Cache::memory();
/// let author = Dependency::id("author", 1);
/// cache.put("articles-list", &vec!["Python", "Cache"], &[author.clone()], None).await?;
/// assert_eq!(cache.get::<Vec<String>>("articles-list").await?.unwrap(), ["Python", "Cache"]);
///
/// // The author changed: everything that depends on them goes.
/// // (`dropped` counts them on the in-memory backend; Redis does not count: `None`.)
/// assert_eq!(cache.invalidate(&[author]).await?.dropped(), Some(1));
/// assert_eq!(cache.get::<Vec<String>>("articles-list").await?, None);
/// # Ok::<_, matroska_core::Error>(()) }).unwrap();
/// ```
#[derive(Clone)]
pub struct Cache {
    inner: Arc<Inner>,
}

struct Inner {
    backend: Arc<dyn Backend>,
    settings: Settings,
    /// In-process single-flight: key -> the load in progress.
    flights: flight::Flights,
    /// Orders callers' starts and leaders' reads (see `fill.rs`).
    clock: flight::Clock,
}

#[derive(Debug, Clone)]
struct Settings {
    codec: Codec,
    schema_version: u32,
    default_ttl: Duration,
    max_value_bytes: usize,
    max_key_bytes: usize,
    stale_set_protection: bool,
    fill_lease: Option<Duration>,
}

impl std::fmt::Debug for Cache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cache")
            .field("backend", &self.inner.backend)
            .field("settings", &self.inner.settings)
            .finish_non_exhaustive()
    }
}

/// Builds a [`Cache`]; see [`Cache::builder`].
#[derive(Debug)]
#[must_use]
pub struct CacheBuilder {
    backend: Arc<dyn Backend>,
    settings: Settings,
}

impl CacheBuilder {
    /// The codec values are written with (reads accept any codec). Default: JSON.
    pub fn codec(mut self, codec: Codec) -> Self {
        self.settings.codec = codec;
        self
    }

    /// The schema version stamped on every value. Bump it when a cached type changes shape:
    /// values written with another version read as misses. Default: 0.
    pub fn schema_version(mut self, version: u32) -> Self {
        self.settings.schema_version = version;
        self
    }

    /// TTL of entries put without one. Default: one hour.
    pub fn default_ttl(mut self, ttl: Duration) -> Self {
        self.settings.default_ttl = ttl;
        self
    }

    /// Largest encoded value stored; larger puts fail with [`Error::ValueTooLarge`].
    /// Default: 8 MiB.
    pub fn max_value_bytes(mut self, bytes: usize) -> Self {
        self.settings.max_value_bytes = bytes;
        self
    }

    /// Longest key accepted; longer keys fail with [`Error::KeyTooLong`]. Default: 1 KiB.
    pub fn max_key_bytes(mut self, bytes: usize) -> Self {
        self.settings.max_key_bytes = bytes;
        self
    }

    /// Whether [`Cache::get_or_load`] guards its put with a ticket taken before the load
    /// (default: on). Turning it off brings back the stale-set race; it exists so tests can
    /// show that race.
    pub fn stale_set_protection(mut self, on: bool) -> Self {
        self.settings.stale_set_protection = on;
        self
    }

    /// Coalesces loads across processes: on a miss, [`Cache::get_or_load`] takes a lease on the
    /// key for `ttl`; other processes wait (polling, up to `ttl`) for the holder's value instead
    /// of loading too, and load anyway when the holder dies. Off by default; in-process
    /// coalescing is always on.
    pub fn fill_lease(mut self, ttl: Duration) -> Self {
        self.settings.fill_lease = Some(ttl);
        self
    }

    /// Builds the cache.
    ///
    /// # Errors
    /// [`Error::Config`] when a setting is out of range (a zero TTL or limit).
    pub fn build(self) -> Result<Cache> {
        let s = &self.settings;
        if s.default_ttl.is_zero() {
            return Err(Error::Config("default_ttl must be more than zero".into()));
        }
        if s.max_value_bytes == 0 || s.max_key_bytes == 0 {
            return Err(Error::Config("size limits must be more than zero".into()));
        }
        if s.fill_lease
            .is_some_and(|d| d.is_zero() || d > Duration::from_secs(3600))
        {
            return Err(Error::Config(
                "fill_lease must be more than zero and at most an hour".into(),
            ));
        }
        Ok(Cache {
            inner: Arc::new(Inner {
                backend: self.backend,
                settings: self.settings,
                flights: flight::Flights::default(),
                clock: flight::Clock::default(),
            }),
        })
    }
}

/// The loader's output for [`Cache::get_or_load`]: the value and what it depends on.
pub type Loaded<T> = (T, Vec<Dependency>);

impl Cache {
    /// Starts building a cache over `backend`.
    pub fn builder(backend: impl Backend) -> CacheBuilder {
        Self::builder_arc(Arc::new(backend))
    }

    /// Starts building a cache over a shared backend.
    pub fn builder_arc(backend: Arc<dyn Backend>) -> CacheBuilder {
        CacheBuilder {
            backend,
            settings: Settings {
                codec: Codec::default(),
                schema_version: 0,
                default_ttl: Duration::from_secs(3600),
                max_value_bytes: 8 << 20,
                max_key_bytes: 1024,
                stale_set_protection: true,
                fill_lease: None,
            },
        }
    }

    /// A cache on a default in-memory backend, with default settings.
    pub fn memory() -> Cache {
        Self::builder(MemoryBackend::default())
            .build()
            .expect("the default settings are valid")
    }

    /// The backend this cache stores into.
    pub fn backend(&self) -> &Arc<dyn Backend> {
        &self.inner.backend
    }

    /// Whether `self` and `other` are clones of one cache (built once, then cloned). Two
    /// caches built separately are different even over one backend.
    ///
    /// ```
    /// use matroska_core::Cache;
    ///
    /// let cache = Cache::memory();
    /// assert!(cache.same_cache(&cache.clone()));
    /// assert!(!cache.same_cache(&Cache::memory()));
    /// ```
    pub fn same_cache(&self, other: &Cache) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
    }

    fn check_key(&self, key: &str) -> Result<()> {
        let limit = self.inner.settings.max_key_bytes;
        if key.len() > limit {
            let head: String = key.chars().take(32).collect();
            return Err(Error::KeyTooLong {
                head,
                len: key.len(),
                limit,
            });
        }
        Ok(())
    }

    fn name(&self) -> &'static str {
        self.inner.backend.name()
    }

    /// The value under `key`, or `None` on a miss.
    ///
    /// Bytes that do not decode into `T` (another type, corruption) are a miss: the entry is
    /// removed and a warning logged. An entry of another schema version is a miss and is left
    /// for the processes that still use that version. A failing backend is a miss too
    /// (with a warning and the `matroska_backend_errors_total` counter), so a Redis outage
    /// makes the application slower, not broken; use [`Cache::try_get`] to see the error.
    ///
    /// # Errors
    /// [`Error::KeyTooLong`] only.
    pub async fn get<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>> {
        match self.try_get(key).await {
            Err(e) if e.is_backend_failure() => {
                backend_error(self.name(), "get");
                tracing::warn!(key, error = %e, "cache read failed; treating it as a miss");
                Ok(None)
            }
            other => other,
        }
    }

    /// Like [`Cache::get`], but backend failures are returned instead of read as misses.
    ///
    /// # Errors
    /// [`Error::KeyTooLong`], [`Error::Backend`], [`Error::Timeout`].
    #[tracing::instrument(level = "debug", skip(self), fields(backend = self.name(), hit))]
    pub async fn try_get<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>> {
        self.check_key(key)?;
        let bytes = self.inner.backend.get(key).await?;
        let value = match bytes {
            Some(bytes) => self.decode_or_drop(key, &bytes).await,
            None => None,
        };
        let hit = value.is_some();
        tracing::Span::current().record("hit", hit);
        if hit {
            tracing::debug!(key, "cache hit");
        } else {
            tracing::debug!(key, "cache miss");
        }
        count(
            if hit { Counter::Hit } else { Counter::Miss },
            self.name(),
            1,
        );
        Ok(value)
    }

    async fn decode_or_drop<T: DeserializeOwned>(&self, key: &str, bytes: &[u8]) -> Option<T> {
        let s = &self.inner.settings;
        match s.codec.decode(bytes, s.schema_version) {
            Ok(value) => Some(value),
            // Another version's entry (a rolling deploy): a miss for us, still a hit for it.
            Err(_) if Codec::schema_version_of(bytes).is_some_and(|v| v != s.schema_version) => {
                None
            }
            Err(e) => {
                count(Counter::DecodeError, self.name(), 1);
                tracing::warn!(key, error = %e, "cached bytes do not decode; dropping the entry");
                if let Err(e) = self.inner.backend.delete(key).await {
                    tracing::warn!(key, error = %e, "could not drop undecodable entry");
                }
                None
            }
        }
    }

    /// Whether `key` holds a value (without decoding it). A failing backend reads as `false`.
    ///
    /// # Errors
    /// [`Error::KeyTooLong`] only.
    pub async fn has(&self, key: &str) -> Result<bool> {
        self.check_key(key)?;
        match self.inner.backend.has(key).await {
            Ok(found) => Ok(found),
            Err(e) => {
                backend_error(self.name(), "has");
                tracing::warn!(key, error = %e, "cache read failed; treating it as a miss");
                Ok(false)
            }
        }
    }

    /// Stores `value` under `key` with its dependencies, for `ttl` (or the default TTL).
    ///
    /// Whatever the number of dependencies, this is one backend round trip.
    ///
    /// # Errors
    /// [`Error::KeyTooLong`], [`Error::Encode`], [`Error::ValueTooLarge`] (nothing is stored
    /// and nothing else is touched), and backend failures.
    pub async fn put<T: Serialize + ?Sized>(
        &self,
        key: &str,
        value: &T,
        deps: &[Dependency],
        ttl: Option<Duration>,
    ) -> Result<()> {
        let bytes = self.encode(key, value)?;
        self.put_bytes(key, bytes, deps, ttl, None)
            .await
            .map(|_| ())
    }

    fn encode<T: Serialize + ?Sized>(&self, key: &str, value: &T) -> Result<Bytes> {
        self.check_key(key)?;
        let s = &self.inner.settings;
        let bytes = s.codec.encode(key, value, s.schema_version)?;
        if bytes.len() > s.max_value_bytes {
            return Err(Error::ValueTooLarge {
                key: key.to_owned(),
                size: bytes.len(),
                limit: s.max_value_bytes,
            });
        }
        Ok(Bytes::from(bytes))
    }

    #[tracing::instrument(level = "debug", skip_all, fields(backend = self.name(), key = key, deps = deps.len(), guarded = ticket.is_some(), outcome))]
    async fn put_bytes(
        &self,
        key: &str,
        bytes: Bytes,
        deps: &[Dependency],
        ttl: Option<Duration>,
        ticket: Option<Ticket>,
    ) -> Result<PutOutcome> {
        let ttl = ttl
            .filter(|t| !t.is_zero())
            .unwrap_or(self.inner.settings.default_ttl);
        let encoded = batch::encode_deps(deps);
        let request = PutRequest::new(key, bytes, &encoded, ttl).guarded_by(ticket);
        let outcome = self.inner.backend.put(request).await?;
        tracing::Span::current().record("outcome", tracing::field::debug(outcome));
        match outcome {
            PutOutcome::Stored => {
                tracing::debug!(key, deps = encoded.len(), ttl = ?ttl, "cache put");
                count(Counter::Put, self.name(), 1);
            }
            PutOutcome::Stale => {
                count(Counter::StaleRefused, self.name(), 1);
                tracing::debug!(
                    key,
                    "put refused: a dependency was invalidated during the load"
                );
            }
        }
        Ok(outcome)
    }

    /// Removes `key`; returns whether it held a value.
    ///
    /// # Errors
    /// [`Error::KeyTooLong`] and backend failures.
    pub async fn delete(&self, key: &str) -> Result<bool> {
        self.check_key(key)?;
        self.inner.backend.delete(key).await
    }

    /// Drops every entry that depends on any of `deps`. The result says how many entries were
    /// dropped only where the backend counts them: [`Invalidated::dropped`] is `Some(n)` on
    /// the in-memory backend and `None` on Redis, which invalidates without looking at
    /// dependents (see [`Backend::invalidate`]).
    ///
    /// One backend round trip whatever the number of dependents (on Redis, for up to
    /// [`invalidate_batch`](crate::backend::redis::RedisConfig::invalidate_batch)
    /// dependencies; more take a few calls). Loads that started before this call cannot store
    /// their result afterwards (see [`Cache::get_or_load`]).
    ///
    /// # Errors
    /// Backend failures are always returned, never swallowed: an invalidation that did not
    /// happen leaves stale values behind, and the caller must know.
    #[tracing::instrument(level = "debug", skip_all, fields(backend = self.name(), deps = deps.len(), dropped))]
    pub async fn invalidate(&self, deps: &[Dependency]) -> Result<Invalidated> {
        if deps.is_empty() {
            // Nothing to drop, whatever the backend: an exact count.
            return Ok(Invalidated::counted(0));
        }
        let mut encoded: Vec<String> = deps.iter().map(Dependency::encode).collect();
        encoded.sort_unstable();
        encoded.dedup();
        let invalidated = self
            .inner
            .backend
            .invalidate(&encoded)
            .await
            .inspect_err(|e| {
                backend_error(self.name(), "invalidate");
                // Counts only: dependency values can be personal data.
                tracing::error!(error = %e, deps = deps.len(), "invalidation failed");
            })?;
        let dropped = invalidated.dropped();
        if let Some(dropped) = dropped {
            tracing::Span::current().record("dropped", dropped);
            count(Counter::EntriesDropped, self.name(), dropped);
        }
        tracing::debug!(deps = encoded.len(), dropped, "cache invalidate");
        count(Counter::Invalidation, self.name(), 1);
        Ok(invalidated)
    }

    /// The value under `key`; on a miss, runs `loader` and caches what it returns with its
    /// dependencies.
    ///
    /// - **No stale sets.** A ticket is taken from the backend's clock *before* the loader
    ///   runs; the put is refused when any of the value's dependencies was invalidated after
    ///   it. So a value loaded across a concurrent update + invalidate is returned to this
    ///   caller (its read really did happen before the write) but never stored.
    /// - **No stampede.** Concurrent callers of one key in this process share one load; with
    ///   [`CacheBuilder::fill_lease`] processes share it too.
    /// - **Faults degrade.** A failing backend makes this a call of `loader` without the
    ///   cache: the read is a miss, the put is logged and dropped. Concurrent callers still
    ///   share loads: a caller uses a value loaded unchecked only when the load started after
    ///   the caller did, else it shares the next one.
    ///
    /// ```
    /// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
    /// use matroska_core::{Cache, Dependency};
    ///
    /// let cache = Cache::memory();
    /// let load = || async {
    ///     // ... query the database ...
    ///     Ok::<_, std::io::Error>((vec![1, 2], vec![Dependency::id("article", 1)]))
    /// };
    /// let first: Vec<i32> = cache.get_or_load("list", None, load).await?;
    /// let again: Vec<i32> = cache.get_or_load("list", None, || async { unreachable!() as Result<_, std::io::Error> }).await?;
    /// assert_eq!(first, again);
    /// # Ok::<_, matroska_core::Error>(()) }).unwrap();
    /// ```
    ///
    /// # Errors
    /// [`Error::Load`] with the loader's error; [`Error::KeyTooLong`], [`Error::Encode`],
    /// [`Error::ValueTooLarge`] for bad input (the loaded value is lost with them, so check
    /// limits up front). Backend failures are not returned.
    pub async fn get_or_load<T, F, Fut, E>(
        &self,
        key: &str,
        ttl: Option<Duration>,
        loader: F,
    ) -> Result<T>
    where
        T: Serialize + DeserializeOwned,
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Loaded<T>, E>>,
        E: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        self.check_key(key)?;
        self.load_through(key, ttl, loader).await
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;

    fn flights(cache: &Cache) -> usize {
        flight::lock(&cache.inner.flights).len()
    }

    fn holders(cache: &Cache, key: &str) -> usize {
        flight::lock(&cache.inner.flights)
            .get(key)
            .map_or(0, std::sync::Weak::strong_count)
    }

    /// A load that signals when it starts and never finishes.
    async fn stuck(
        started: tokio::sync::oneshot::Sender<()>,
    ) -> Result<Loaded<i32>, std::io::Error> {
        let _ = started.send(());
        std::future::pending().await
    }

    #[tokio::test]
    async fn a_leader_dropped_mid_load_leaves_no_flight_behind() {
        let cache = Cache::memory();
        let (started, running) = tokio::sync::oneshot::channel();
        let load = cache.get_or_load("k", None, || stuck(started));
        tokio::select! {
            _ = load => panic!("the stuck load finished"),
            _ = running => {}
        }
        assert_eq!(
            flights(&cache),
            0,
            "the abandoned flight is still in the map"
        );
        let value: i32 = cache
            .get_or_load("k", None, || async { Ok::<_, std::io::Error>((7, vec![])) })
            .await
            .unwrap();
        assert_eq!(value, 7);
        assert_eq!(flights(&cache), 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_follower_loads_when_its_leader_is_dropped() {
        let cache = Cache::memory();
        let (started, running) = tokio::sync::oneshot::channel();
        let leader = tokio::spawn({
            let cache = cache.clone();
            async move { cache.get_or_load("k", None, || stuck(started)).await }
        });
        running.await.unwrap();
        let follower = tokio::spawn({
            let cache = cache.clone();
            async move {
                cache
                    .get_or_load("k", None, || async {
                        Ok::<_, std::io::Error>((2, vec![Dependency::tag("t")]))
                    })
                    .await
            }
        });
        let deadline = Instant::now() + Duration::from_secs(10);
        while holders(&cache, "k") < 2 {
            assert!(
                Instant::now() < deadline,
                "the follower never joined the flight"
            );
            tokio::task::yield_now().await;
        }
        leader.abort();
        assert!(leader.await.unwrap_err().is_cancelled());
        assert_eq!(follower.await.unwrap().unwrap(), 2);
        assert_eq!(flights(&cache), 0);
        assert_eq!(cache.get::<i32>("k").await.unwrap(), Some(2));
    }
}
