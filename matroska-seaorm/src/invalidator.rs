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
//! With neither, a hooked save goes ahead only when the database records it in the write's
//! own transaction (the outbox's triggers), and otherwise fails with [`Error::Unrecorded`] before it writes: no cache in this process
//! means nothing cached here, but silently skipping the invalidation would leave stale
//! entries behind in another process that shares the Redis (see
//! [migration order](crate::outbox#migration-order)). The bulk helpers and
//! [`invalidate`](crate::invalidate) need a cache ([`Error::NoCache`]).
//!
//! A cache has one invalidator while it is in use ([`Invalidator::for_cache`]): calling
//! [`with_cache`] per request with one cache shares that cache's retry queue and its limit.
//!
//! ## Delivery survives its caller
//!
//! An invalidation starts when the save's hook ends (or its unit of work), before any await,
//! and runs in a task of its own that the caller merely waits for: a caller dropped meanwhile
//! (a request time-out, a client gone) loses neither its dependencies nor the retry queue the
//! delivery carries, and the pending count comes down when the task ends. Without a tokio
//! runtime the delivery runs in the caller's future, and dropping that puts everything into
//! the retry queue.
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
//!   dependencies, hooked saves and the bulk helpers **refuse to write** to a table the
//!   outbox does not watch, with [`Error::Backlog`], before touching the database: a write
//!   whose invalidation cannot be delivered is not accepted once the outage is clearly not a
//!   blip. A write accepted before that is queued even past the limit (its row is in), so the
//!   queue exceeds the limit by at most the writes in flight when it filled;
//! - a table the [outbox](crate::outbox) watches is **never refused**: its relay invalidates
//!   every committed write from the database, at least once, so the hooks' own invalidation
//!   is only read-your-writes. While the queue is full, the failed invalidations of such
//!   writes are dropped instead of queued (counted by [`Invalidator::dropped`] and in the
//!   failure's log line): memory stays bounded through an outage of any length;
//! - an explicit [`invalidate`](crate::invalidate) is queued only while the queue has room;
//!   outside a unit of work, what did not fit is reported to its caller
//!   ([`Error::Dropped`]); inside one, it is logged at `error` and counted;
//! - [`Invalidator::pending`] and [`Invalidator::flush`] let health checks see and drain the
//!   queue. The queue lives in the process: entries still queued when it exits are lost,
//!   and the values they should have dropped live until their TTL (unless the outbox
//!   watches their table).

use std::collections::BTreeSet;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex, OnceLock, PoisonError, Weak};
use std::time::Duration;

use matroska_core::{Cache, Dependency, Invalidated};
use tracing::Instrument;

use crate::error::{Error, Result};

tokio::task_local! {
    static CURRENT: Invalidator;
}

static GLOBAL: OnceLock<Invalidator> = OnceLock::new();

/// The live invalidators, so that [`with_cache`] called again with one cache (per request,
/// say) uses that cache's one retry queue and its limit. Weak: an invalidator nobody uses any
/// more (no scope, no retry task) goes, with its cache.
static REGISTRY: LazyLock<Mutex<Vec<Weak<Inner>>>> = LazyLock::new(Mutex::default);

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
    /// Failed dependencies of [`Keep::WhileRoom`] dropped because the queue was full.
    dropped: AtomicU64,
}

/// How a failed invalidation is kept for retry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Keep {
    /// Queued whatever the limit: a write accepted while the queue had room, or to a table no
    /// outbox watches. Its row is in and nothing else will invalidate it; the writes after it
    /// are refused while the queue is full, so the overshoot is bounded by the writes in flight.
    Always,
    /// Queued only while the queue has room, else dropped and counted: a write to a table the
    /// outbox watches (its relay delivers the invalidation from the database), or an explicit
    /// [`invalidate`](crate::invalidate) (which reports the drop).
    WhileRoom,
}

/// A delivery that failed: the backend's error, and how many of its [`Keep::WhileRoom`]
/// dependencies did not fit in the queue.
#[derive(Debug)]
pub(crate) struct Undelivered {
    pub(crate) error: matroska_core::Error,
    pub(crate) dropped: usize,
}

impl From<matroska_core::Error> for Undelivered {
    fn from(error: matroska_core::Error) -> Self {
        Undelivered { error, dropped: 0 }
    }
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
    /// How many dependencies may wait in the retry queue before writes to tables the outbox
    /// does not watch are refused (and failures the queue need not keep are dropped; see the
    /// [failure policy](self#failure-policy-retry-queue-then-refuse-writes)).
    /// Default: 10 000. A limit of 0 refuses every such write while anything is queued.
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

    /// Builds the invalidator. While it lives, it is the one [`with_cache`] and
    /// [`Invalidator::for_cache`] use for this cache, unless the cache has a live invalidator
    /// already (build one per cache).
    pub fn build(self) -> Invalidator {
        let invalidator = Invalidator {
            inner: Arc::new(Inner {
                cache: self.cache,
                backlog: Mutex::default(),
                limit: self.limit,
                retry_min: self.retry_min,
                retry_max: self.retry_max,
                retrying: AtomicBool::new(false),
                in_flight: std::sync::atomic::AtomicUsize::new(0),
                dropped: AtomicU64::new(0),
            }),
        };
        let mut registry = lock_registry();
        if find_live(&mut registry, &invalidator.inner.cache).is_none() {
            registry.push(Arc::downgrade(&invalidator.inner));
        }
        invalidator
    }
}

fn lock_registry() -> std::sync::MutexGuard<'static, Vec<Weak<Inner>>> {
    REGISTRY.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The live invalidator of `cache` in the registry; drops the entries of dead ones.
fn find_live(registry: &mut Vec<Weak<Inner>>, cache: &Cache) -> Option<Invalidator> {
    let mut found = None;
    registry.retain(|weak| match weak.upgrade() {
        Some(inner) => {
            if found.is_none() && inner.cache.same_cache(cache) {
                found = Some(Invalidator { inner });
            }
            true
        }
        None => false,
    });
    found
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

    /// The invalidator of `cache`: the live one (see [`InvalidatorBuilder::build`]), else a
    /// new one with the default policy. [`with_cache`] uses this, so every task working with
    /// one cache shares its retry queue, and the queue's limit holds across them.
    ///
    /// ```
    /// use matroska_core::Cache;
    /// use matroska_seaorm::Invalidator;
    ///
    /// let cache = Cache::memory();
    /// let first = Invalidator::for_cache(&cache);
    /// assert!(first.same_invalidator(&Invalidator::for_cache(&cache.clone())));
    /// assert!(!first.same_invalidator(&Invalidator::for_cache(&Cache::memory())));
    /// ```
    pub fn for_cache(cache: &Cache) -> Invalidator {
        if let Some(live) = find_live(&mut lock_registry(), cache) {
            return live;
        }
        // Built outside the registry's lock (`build` takes it): a racing caller that
        // registered first wins, and this one is discarded for it.
        let built = Self::new(cache.clone());
        find_live(&mut lock_registry(), cache).unwrap_or(built)
    }

    /// Whether both are clones of one invalidator (one retry queue).
    pub fn same_invalidator(&self, other: &Invalidator) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
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

    /// Ends a delivery of `taken` queued dependencies; on failure the undelivered batch goes
    /// back first (its first `kept` entries whatever the limit, the rest while there is room),
    /// so the pending count never dips in between. Returns the queue's length and how many
    /// dependencies were dropped.
    fn settle(&self, taken: usize, failed: Option<(Vec<Dependency>, usize)>) -> (usize, usize) {
        let mut backlog = self.lock_backlog();
        let mut dropped = 0;
        if let Some((mut batch, kept)) = failed {
            let bounded = batch.split_off(kept.min(batch.len()));
            backlog.extend(batch);
            // Other deliveries' taken dependencies are still pending and come back too.
            let others = self
                .inner
                .in_flight
                .load(Ordering::Acquire)
                .saturating_sub(taken);
            for dep in bounded {
                if backlog.contains(&dep) {
                    continue;
                }
                if backlog.len() + others < self.inner.limit {
                    backlog.insert(dep);
                } else {
                    dropped += 1;
                }
            }
        }
        self.inner.in_flight.fetch_sub(taken, Ordering::AcqRel);
        if dropped > 0 {
            self.inner
                .dropped
                .fetch_add(dropped as u64, Ordering::Relaxed);
        }
        (backlog.len(), dropped)
    }

    /// Failed invalidations dropped, not queued, because the retry queue was full: those of
    /// writes to tables the outbox watches (its relay delivers them) and of explicit
    /// [`invalidate`](crate::invalidate) calls. Since this invalidator was built.
    pub fn dropped(&self) -> u64 {
        self.inner.dropped.load(Ordering::Relaxed)
    }

    /// The retry queue's limit ([`InvalidatorBuilder::backlog_limit`]).
    pub fn limit(&self) -> usize {
        self.inner.limit
    }

    /// Whether the retry queue is full: writes to tables the outbox does not watch are
    /// refused, and failures the queue need not keep are dropped.
    pub(crate) fn is_full(&self) -> bool {
        self.check_capacity().is_err()
    }

    /// Delivers the retry queue now; returns what the invalidation did (the entries dropped
    /// where the backend counts them: [`Invalidated::dropped`]).
    ///
    /// # Errors
    /// The backend's failure; the queue is kept.
    pub async fn flush(&self) -> Result<Invalidated> {
        self.deliver(Vec::new(), Vec::new())
            .await
            .map_err(|e| Error::Cache(e.error))
    }

    /// Refuses a write when the retry queue is full (see the [module docs](self)); callers
    /// let a write to a table the outbox watches through.
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

    /// Invalidates `kept` and `bounded` together with the retry queue, in one call. On failure
    /// the queue and `kept` go (back) into the queue, `bounded` only while it has room
    /// ([`Keep`]), a retry is scheduled, and the error is returned for callers that can
    /// report it.
    ///
    /// The work starts at the call, not at the first poll, and does not depend on the
    /// returned future: it runs in a task of its own, so a caller dropped while it waits (a
    /// request time-out, a client gone) loses neither `deps` nor the queue. Without a tokio
    /// runtime it runs in the returned future, and dropping that puts everything back into
    /// the queue.
    pub(crate) fn deliver(
        &self,
        kept: Vec<Dependency>,
        bounded: Vec<Dependency>,
    ) -> impl Future<Output = std::result::Result<Invalidated, Undelivered>> + Send + use<> {
        let delivery = Delivery::start(self, kept, bounded);
        let backend = self.inner.cache.backend().name();
        let running = match (delivery, tokio::runtime::Handle::try_current()) {
            (None, _) => Running::Nothing,
            (Some(delivery), Ok(runtime)) => {
                Running::Task(runtime.spawn(delivery.run().in_current_span()))
            }
            (Some(delivery), Err(_)) => Running::Inline(delivery),
        };
        async move {
            match running {
                Running::Nothing => Ok(Invalidated::counted(0)),
                Running::Inline(delivery) => delivery.run().await,
                // The task panicked or its runtime shut down: the delivery's drop queued it.
                Running::Task(task) => task.await.unwrap_or_else(|e| {
                    Err(matroska_core::Error::Backend {
                        backend,
                        message: format!(
                            "the invalidation task did not finish ({e}); queued for retry"
                        ),
                        source: Some(Box::new(e)),
                    }
                    .into())
                }),
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
        // Made before the spawn and moved into the task, so the flag is reset even when the
        // task is dropped unpolled (its runtime shutting down).
        let flag = RetryFlag {
            invalidator: self.clone(),
            owned: true,
        };
        runtime.spawn(flag.retry_loop());
    }
}

/// Owns `retrying` for one retry loop. A loop dropped with its runtime must not leave the flag
/// set: no other loop would ever start for this invalidator, which may outlive the runtime
/// (it is registered per cache, or global).
struct RetryFlag {
    invalidator: Invalidator,
    /// Cleared when another loop took the flag over.
    owned: bool,
}

impl Drop for RetryFlag {
    fn drop(&mut self) {
        if self.owned {
            self.invalidator
                .inner
                .retrying
                .store(false, Ordering::Release);
        }
    }
}

impl RetryFlag {
    async fn retry_loop(mut self) {
        let this = self.invalidator.clone();
        let mut delay = this.inner.retry_min;
        loop {
            tokio::time::sleep(delay).await;
            let Some(delivery) = Delivery::start(&this, Vec::new(), Vec::new()) else {
                this.inner.retrying.store(false, Ordering::Release);
                // A failure queued between the take and the store above must not be left
                // without a retry: go on unless another loop took over.
                if this.pending() == 0 || this.inner.retrying.swap(true, Ordering::AcqRel) {
                    // The flag is clear or another loop's now: leave it alone.
                    self.owned = false;
                    return;
                }
                continue;
            };
            let deps = delivery.batch.len();
            match delivery.attempt().await {
                Ok(_) => {
                    tracing::info!(deps, "queued invalidations delivered after retry");
                    delay = this.inner.retry_min;
                }
                Err(e) => {
                    delay = delay.saturating_mul(2).min(this.inner.retry_max);
                    tracing::warn!(error = %e.error, retry_in = ?delay, "queued invalidations still failing");
                }
            }
        }
    }
}

/// How [`Invalidator::deliver`] runs its delivery.
enum Running {
    Nothing,
    Task(tokio::task::JoinHandle<std::result::Result<Invalidated, Undelivered>>),
    Inline(Delivery),
}

/// One invalidation call in progress: the retry queue taken at its start (still counted as
/// pending) plus new dependencies. However it ends (delivered, failed, or dropped at its
/// await), the pending count comes back down and nothing undelivered that the queue must keep
/// is lost: it goes back into the queue ([`Keep`]).
struct Delivery {
    invalidator: Invalidator,
    /// The queue taken, the new [`Keep::Always`] dependencies, then the [`Keep::WhileRoom`]
    /// ones.
    batch: Vec<Dependency>,
    /// How many of `batch` came from the queue.
    taken: usize,
    /// How many of `batch` are kept whatever the limit (the queue's and the `Always` ones).
    kept: usize,
    settled: bool,
}

impl Delivery {
    /// Takes the queue; `None` when there is nothing to deliver.
    fn start(
        invalidator: &Invalidator,
        kept: Vec<Dependency>,
        bounded: Vec<Dependency>,
    ) -> Option<Delivery> {
        let mut all = invalidator.take_backlog();
        let taken = all.len();
        all.extend(kept);
        let bounded: BTreeSet<Dependency> =
            bounded.into_iter().filter(|d| !all.contains(d)).collect();
        if all.is_empty() && bounded.is_empty() {
            // Nothing was taken either: no count to settle.
            return None;
        }
        let kept = all.len();
        let mut batch: Vec<Dependency> = all.into_iter().collect();
        batch.extend(bounded);
        Some(Delivery {
            invalidator: invalidator.clone(),
            batch,
            taken,
            kept,
            settled: false,
        })
    }

    /// One attempt; a failure is queued (not retried: see [`Delivery::run`]).
    async fn attempt(mut self) -> std::result::Result<Invalidated, Undelivered> {
        let result = self.invalidator.inner.cache.invalidate(&self.batch).await;
        self.settled = true;
        let failed = result
            .is_err()
            .then(|| (std::mem::take(&mut self.batch), self.kept));
        let (_, dropped) = self.invalidator.settle(self.taken, failed);
        result.map_err(|error| Undelivered { error, dropped })
    }

    /// One attempt, and a retry scheduled on failure.
    async fn run(self) -> std::result::Result<Invalidated, Undelivered> {
        let invalidator = self.invalidator.clone();
        let result = self.attempt().await;
        if let Err(e) = &result {
            tracing::error!(
                error = %e.error,
                queued = invalidator.pending(),
                dropped = e.dropped,
                "invalidation failed; queued for retry (writes to tables the outbox does not \
                 watch are refused once the queue is full; other failures are then dropped)"
            );
            invalidator.spawn_retry();
        }
        result
    }
}

impl Drop for Delivery {
    fn drop(&mut self) {
        if self.settled {
            return;
        }
        let batch = std::mem::take(&mut self.batch);
        let (queued, dropped) = self
            .invalidator
            .settle(self.taken, Some((batch, self.kept)));
        tracing::warn!(
            queued,
            dropped,
            "an invalidation was abandoned before it finished; queued for retry"
        );
        self.invalidator.spawn_retry();
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
    Invalidator::for_cache(&cache).install_global()
}

/// Runs `fut` with `cache` as the cache the hooks invalidate in this task, whatever the
/// global one: each test can use its own cache, in parallel. The cache's one invalidator
/// ([`Invalidator::for_cache`]) is used, so calls with one cache share its retry queue.
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
    Invalidator::for_cache(&cache).scope(fut).await
}

/// The cache the hooks use here (see the [module docs](self)), if any.
pub fn current_cache() -> Option<Cache> {
    Invalidator::current().map(|i| i.inner.cache.clone())
}

/// The cache the hooks use here, for code that reads through it without being handed one: a
/// service layer whose functions take only the connection stays as it is, and `?` turns a
/// missing cache into a `DbErr` in functions that return one.
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// use matroska_core::Cache;
/// use sea_orm::DbErr;
///
/// async fn service() -> Result<bool, DbErr> {
///     let cache = matroska_seaorm::registered_cache()?; // e.g. `.cached(&cache)` on a select
///     Ok(cache.has("anything").await.is_ok())
/// }
/// assert!(service().await.is_err()); // none registered: `Error::NoCache`, as a `DbErr`
/// matroska_seaorm::with_cache(Cache::memory(), async {
///     assert!(service().await.unwrap());
/// }).await;
/// # })
/// ```
///
/// # Errors
/// [`Error::NoCache`] when no cache is registered ([`set_global_cache`], [`with_cache`]).
pub fn registered_cache() -> Result<Cache> {
    current_cache().ok_or(Error::NoCache)
}
