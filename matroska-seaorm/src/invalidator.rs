//! How the hooks find the [`Cache`], and how invalidations reach it when the backend fails.
//!
//! SeaORM hands a hook only the model and the connection, so the cache cannot be passed in.
//! The hooks look it up, in this order:
//!
//! 1. the task-local cache of [`with_cache`] (or [`Invalidator::scope`]), if the hook runs
//!    inside one: tests running in parallel each use their own cache this way;
//! 2. the process-global cache set once at start-up with [`set_global_cache`] (or
//!    [`Invalidator::install_global`]).
//!
//! With neither, a hooked save fails with [`Error::NoCache`] before
//! it writes: silently skipping the invalidation would leave stale entries behind (possibly
//! in another process that shares the Redis).
//!
//! ## Failure policy: retry queue, then refuse writes
//!
//! A hook's invalidation runs *after* the row was written (after commit, in a
//! [`transaction`](crate::transaction())): when the cache backend fails then, the write cannot
//! be undone, and failing the call would tell the caller a committed write did not happen
//! (inviting a duplicate retry). So:
//!
//! - the save **succeeds**, the failure is logged at `error` level and counted (like every
//!   failed [`Cache::invalidate`]), and the dependencies go to a bounded **retry queue**; a
//!   background task retries them with exponential back-off, and every later invalidation
//!   carries the queue along (still one round trip);
//! - while the queue holds [`backlog_limit`](InvalidatorBuilder::backlog_limit) or more
//!   dependencies, hooked saves and the bulk helpers **refuse to write** with
//!   [`Error::Backlog`], before touching the database: a write whose
//!   invalidation cannot be delivered is not accepted once the outage is clearly not a blip;
//! - [`Invalidator::pending`] and [`Invalidator::flush`] let health checks see and drain the
//!   queue. The queue lives in the process: entries still queued when it exits are lost,
//!   and the values they should have dropped live until their TTL.

use std::collections::BTreeSet;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::Duration;

use matroska_core::{Cache, Dependency};

use crate::error::{Error, Result};

tokio::task_local! {
    static CURRENT: Invalidator;
}

static GLOBAL: OnceLock<Invalidator> = OnceLock::new();

/// A [`Cache`] as the hooks and helpers use it: with the retry queue of its failed
/// invalidations. Cheap to clone.
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// use std::time::Duration;
/// use matroska_core::Cache;
/// use matroska_seaorm::Invalidator;
///
/// let invalidator = Invalidator::builder(Cache::memory())
///     .backlog_limit(1_000)
///     .retry_delay(Duration::from_millis(100), Duration::from_secs(2))
///     .build();
/// invalidator.scope(async {
///     assert!(Invalidator::current().is_some());
/// }).await;
/// # })
/// ```
#[derive(Clone)]
pub struct Invalidator {
    inner: Arc<Inner>,
}

struct Inner {
    cache: Cache,
    backlog: Mutex<BTreeSet<Dependency>>,
    limit: usize,
    retry_min: Duration,
    retry_max: Duration,
    retrying: AtomicBool,
    /// Queued dependencies taken out of `backlog` by a delivery still in flight: they still
    /// count as pending, or an outage would empty the queue on every attempt and let writes
    /// through past the limit.
    in_flight: std::sync::atomic::AtomicUsize,
}

impl std::fmt::Debug for Invalidator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Invalidator")
            .field("cache", &self.inner.cache)
            .field("pending", &self.pending())
            .field("limit", &self.inner.limit)
            .finish_non_exhaustive()
    }
}

/// Builds an [`Invalidator`]; see [`Invalidator::builder`].
#[derive(Debug)]
#[must_use]
pub struct InvalidatorBuilder {
    cache: Cache,
    limit: usize,
    retry_min: Duration,
    retry_max: Duration,
}

impl InvalidatorBuilder {
    /// How many dependencies may wait in the retry queue before writes are refused.
    /// Default: 10 000. A limit of 0 refuses every write while anything is queued.
    pub fn backlog_limit(mut self, limit: usize) -> Self {
        self.limit = limit;
        self
    }

    /// The first and the longest delay between retries of the queue (doubling in between).
    /// Default: 50 ms and 5 s.
    pub fn retry_delay(mut self, first: Duration, max: Duration) -> Self {
        self.retry_min = first;
        self.retry_max = max.max(first);
        self
    }

    /// Builds the invalidator.
    pub fn build(self) -> Invalidator {
        Invalidator {
            inner: Arc::new(Inner {
                cache: self.cache,
                backlog: Mutex::default(),
                limit: self.limit,
                retry_min: self.retry_min,
                retry_max: self.retry_max,
                retrying: AtomicBool::new(false),
                in_flight: std::sync::atomic::AtomicUsize::new(0),
            }),
        }
    }
}

impl Invalidator {
    /// An invalidator over `cache` with the default policy.
    pub fn new(cache: Cache) -> Self {
        Self::builder(cache).build()
    }

    /// Starts building an invalidator over `cache`.
    pub fn builder(cache: Cache) -> InvalidatorBuilder {
        InvalidatorBuilder {
            cache,
            limit: 10_000,
            retry_min: Duration::from_millis(50),
            retry_max: Duration::from_secs(5),
        }
    }

    /// The cache.
    pub fn cache(&self) -> &Cache {
        &self.inner.cache
    }

    /// The invalidator the hooks use here: the task's (see [`Invalidator::scope`]), else the
    /// global one.
    pub fn current() -> Option<Invalidator> {
        CURRENT
            .try_with(Clone::clone)
            .ok()
            .or_else(|| GLOBAL.get().cloned())
    }

    pub(crate) fn require() -> Result<Invalidator> {
        Self::current().ok_or(Error::NoCache)
    }

    /// Makes this the process-wide invalidator. Call once at start-up.
    ///
    /// # Errors
    /// [`Error::AlreadyRegistered`] when one is set already.
    pub fn install_global(self) -> Result<()> {
        GLOBAL.set(self).map_err(|_| Error::AlreadyRegistered)
    }

    /// Runs `fut` with this invalidator as the current one for the task (tasks it spawns
    /// fall back to the global one).
    pub async fn scope<F: Future>(self, fut: F) -> F::Output {
        CURRENT.scope(self, fut).await
    }

    /// Dependencies waiting in the retry queue.
    pub fn pending(&self) -> usize {
        let queued = self.lock_backlog().len();
        queued + self.inner.in_flight.load(Ordering::Acquire)
    }

    /// Takes the queue for a delivery, still counting it as pending until [`Self::settle`].
    fn take_backlog(&self) -> BTreeSet<Dependency> {
        let mut backlog = self.lock_backlog();
        let taken = std::mem::take(&mut *backlog);
        self.inner
            .in_flight
            .fetch_add(taken.len(), Ordering::AcqRel);
        taken
    }

    /// Ends a delivery of `taken` queued dependencies; on failure `failed` goes back first, so
    /// the pending count never dips in between.
    fn settle(&self, taken: usize, failed: Option<Vec<Dependency>>) -> usize {
        let mut backlog = self.lock_backlog();
        if let Some(failed) = failed {
            backlog.extend(failed);
        }
        self.inner.in_flight.fetch_sub(taken, Ordering::AcqRel);
        backlog.len()
    }

    /// Delivers the retry queue now; returns the entries dropped.
    ///
    /// # Errors
    /// The backend's failure; the queue is kept.
    pub async fn flush(&self) -> Result<u64> {
        Ok(self.deliver(Vec::new()).await?)
    }

    /// Refuses a write when the retry queue is full (see the [module docs](self)).
    pub(crate) fn check_capacity(&self) -> Result<()> {
        let pending = self.pending();
        if pending > 0 && pending >= self.inner.limit {
            return Err(Error::Backlog {
                pending,
                limit: self.inner.limit,
            });
        }
        Ok(())
    }

    fn lock_backlog(&self) -> std::sync::MutexGuard<'_, BTreeSet<Dependency>> {
        self.inner
            .backlog
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Invalidates `deps` together with the retry queue, in one call. On failure everything
    /// goes (back) into the queue, a retry is scheduled, and the error is returned for
    /// callers that can report it.
    pub(crate) async fn deliver(
        &self,
        deps: Vec<Dependency>,
    ) -> std::result::Result<u64, matroska_core::Error> {
        let mut all = self.take_backlog();
        let taken = all.len();
        all.extend(deps);
        if all.is_empty() {
            return Ok(0);
        }
        let batch: Vec<Dependency> = all.into_iter().collect();
        match self.inner.cache.invalidate(&batch).await {
            Ok(dropped) => {
                self.settle(taken, None);
                Ok(dropped)
            }
            Err(e) => {
                let queued = self.settle(taken, Some(batch));
                tracing::error!(
                    error = %e,
                    queued,
                    "invalidation failed; queued for retry (writes are refused once the queue is full)"
                );
                self.spawn_retry();
                Err(e)
            }
        }
    }

    fn spawn_retry(&self) {
        if self.inner.retrying.swap(true, Ordering::AcqRel) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            // No runtime to retry on: the next invalidation carries the queue along.
            self.inner.retrying.store(false, Ordering::Release);
            return;
        };
        let this = self.clone();
        runtime.spawn(async move { this.retry_loop().await });
    }

    async fn retry_loop(self) {
        let mut delay = self.inner.retry_min;
        loop {
            tokio::time::sleep(delay).await;
            let batch: Vec<Dependency> = self.take_backlog().into_iter().collect();
            let taken = batch.len();
            if batch.is_empty() {
                self.inner.retrying.store(false, Ordering::Release);
                // A failure queued between the take and the store above must not be left
                // without a retry: go on unless another loop took over.
                if self.pending() == 0 || self.inner.retrying.swap(true, Ordering::AcqRel) {
                    return;
                }
                continue;
            }
            match self.inner.cache.invalidate(&batch).await {
                Ok(_) => {
                    self.settle(taken, None);
                    tracing::info!(
                        deps = batch.len(),
                        "queued invalidations delivered after retry"
                    );
                    delay = self.inner.retry_min;
                }
                Err(e) => {
                    self.settle(taken, Some(batch));
                    delay = delay.saturating_mul(2).min(self.inner.retry_max);
                    tracing::warn!(error = %e, retry_in = ?delay, "queued invalidations still failing");
                }
            }
        }
    }
}

/// Sets the process-wide cache the hooks invalidate, with the default failure policy. Call
/// once at start-up; see [`Invalidator::builder`] for other settings.
///
/// ```
/// use matroska_core::Cache;
///
/// matroska_seaorm::set_global_cache(Cache::memory())?;
/// assert!(matroska_seaorm::set_global_cache(Cache::memory()).is_err());
/// # Ok::<_, matroska_seaorm::Error>(())
/// ```
///
/// # Errors
/// [`Error::AlreadyRegistered`] when a global cache is set already.
pub fn set_global_cache(cache: Cache) -> Result<()> {
    Invalidator::new(cache).install_global()
}

/// Runs `fut` with `cache` as the cache the hooks invalidate in this task, whatever the
/// global one: each test can use its own cache, in parallel.
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// use matroska_core::Cache;
///
/// let cache = Cache::memory();
/// matroska_seaorm::with_cache(cache.clone(), async {
///     // ... saves through hooked ActiveModels invalidate `cache` ...
///     assert!(matroska_seaorm::current_cache().is_some());
/// }).await;
/// # })
/// ```
pub async fn with_cache<F: Future>(cache: Cache, fut: F) -> F::Output {
    Invalidator::new(cache).scope(fut).await
}

/// The cache the hooks use here (see the [module docs](self)), if any.
pub fn current_cache() -> Option<Cache> {
    Invalidator::current().map(|i| i.inner.cache.clone())
}
