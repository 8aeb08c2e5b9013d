//! Invalidations that wait for the end of a unit of work: [`transaction`] and [`batch`].
//!
//! Invalidating inside a transaction, before it commits, lets a concurrent reader load the
//! still-committed old row and cache it after the invalidation: stale until the TTL. So the
//! hooks never invalidate inside a [`transaction`] or [`batch`]: they collect the
//! dependencies, and the helper invalidates them in **one** [`Cache::invalidate`] call (one
//! round trip) once the unit of work is over. A reader whose load straddles the commit is
//! covered by the stale-set guard of [`Cache::get_or_load`]: its ticket predates the
//! invalidation, so its put is refused.
//!
//! Each dependency goes to the cache that was current where it was collected: a
//! [`with_cache`](crate::with_cache) inside the unit of work sends the saves it wraps to its
//! own cache (one call per cache).
//!
//! ## Commit, rollback, and a dropped unit of work
//!
//! - [`transaction`] **commits**: the writes' dependencies are invalidated.
//! - Its callback returns `Err` and SeaORM **rolls back**: the writes' dependencies are
//!   *not* invalidated (nothing changed, so that would only cost misses). One exception: a
//!   cached query run inside the callback may have read the transaction's uncommitted rows
//!   and cached them, so the entries such loads cached are invalidated.
//! - `begin`, `commit` or `rollback` fails, or the future is **dropped** (a time-out) after
//!   its work started: whether anything committed is unknown, so everything collected is
//!   invalidated (at worst extra misses).
//! - [`batch`] cannot see a commit or rollback: it always invalidates the writes.
//! - A [`transaction`] nested in another (a savepoint) or in a [`batch`] joins it; when the
//!   nested one rolls back and the outer one commits, everything is invalidated.
//!
//! The choice this makes: the collected dependencies cannot tell a write on the
//! transaction from one the callback made *outside* it (a hooked save or bulk helper on
//! the outer connection, raw SQL followed by [`invalidate`](crate::invalidate)). Such a write
//! commits on its own, and on rollback its invalidation is dropped with the rest. So inside
//! [`transaction`], write only through the callback's transaction; do other writes before or
//! after it, or use [`batch`], which always delivers.
//!
//! The delivery survives its caller: it starts before the first await and runs on its own
//! (see [`Invalidator`]), so a caller dropped while it waits for the
//! cache loses nothing.
//!
//! ## A bare `begin()`
//!
//! Hooks cannot see whether their connection is a transaction. Outside [`transaction`] and
//! [`batch`], each save invalidates right after its statement, which inside a bare
//! `db.begin()` ... `txn.commit()` is *before* the commit: a reader between the two can
//! re-cache the old row until its TTL (a warning is logged once per process when a hook
//! sees a `DatabaseTransaction`). Wrap such code in [`batch`], or use [`transaction`].
//!
//! [`Cache::invalidate`]: matroska_core::Cache::invalidate
//! [`Cache::get_or_load`]: matroska_core::Cache::get_or_load

use std::any::TypeId;
use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock, Mutex, PoisonError};
use std::time::{Duration, Instant};

use matroska_core::{Cache, Dependency, Invalidated};
use sea_orm::{TransactionError, TransactionTrait};

use crate::invalidator::{Invalidator, Keep, Undelivered};

/// What one unit of work (a batch, or one task's in-flight save) has collected.
#[derive(Default)]
pub(crate) struct Pending {
    /// Per invalidator (cache) the dependencies go to: each save, helper or query records
    /// its own target, so a `with_cache` inside a batch sends its saves to its cache.
    targets: Vec<Target>,
    /// Updates between `before_save` and `after_save`: (model type, primary key) -> the
    /// modified scope fields.
    updates: HashMap<(TypeId, String), Vec<&'static str>>,
    touched: Option<Instant>,
}

struct Target {
    invalidator: Invalidator,
    /// Dependencies of writes: delivered when the unit of work commits.
    writes: BTreeSet<Dependency>,
    /// Dependencies of writes the queue keeps only while it has room ([`Keep::WhileRoom`]):
    /// delivered with `writes`.
    bounded: BTreeSet<Dependency>,
    /// Dependencies of entries cached by loads inside the unit of work: such a load may have
    /// read a transaction's uncommitted rows, so on rollback these are delivered instead.
    reads: BTreeSet<Dependency>,
}

/// How a unit of work ended, which decides what it delivers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    /// Committed (or a [`batch`], which delivers its writes whatever happened): the writes.
    Committed,
    /// Rolled back: the writes never happened, only the entries loads cached go.
    RolledBack,
    /// Dropped, or a commit or rollback that failed: everything.
    Unknown,
}

impl Pending {
    fn target(&mut self, invalidator: &Invalidator) -> &mut Target {
        let at = match self
            .targets
            .iter()
            .position(|t| t.invalidator.same_invalidator(invalidator))
        {
            Some(at) => at,
            None => {
                self.targets.push(Target {
                    invalidator: invalidator.clone(),
                    writes: BTreeSet::new(),
                    bounded: BTreeSet::new(),
                    reads: BTreeSet::new(),
                });
                self.targets.len() - 1
            }
        };
        &mut self.targets[at]
    }

    /// Takes what `outcome` delivers, per invalidator (kept, bounded: see [`Keep`]); forgets
    /// the rest.
    fn take(&mut self, outcome: Outcome) -> Vec<(Invalidator, Vec<Dependency>, Vec<Dependency>)> {
        std::mem::take(&mut self.targets)
            .into_iter()
            .filter_map(|t| {
                let (kept, bounded): (Vec<Dependency>, Vec<Dependency>) = match outcome {
                    Outcome::Committed => (
                        t.writes.into_iter().collect(),
                        t.bounded.into_iter().collect(),
                    ),
                    Outcome::RolledBack => (t.reads.into_iter().collect(), Vec::new()),
                    Outcome::Unknown => (
                        t.writes.into_iter().chain(t.reads).collect(),
                        t.bounded.into_iter().collect(),
                    ),
                };
                (!kept.is_empty() || !bounded.is_empty()).then_some((t.invalidator, kept, bounded))
            })
            .collect()
    }
}

/// Starts every delivery now, at the call (each then runs on its own, whatever happens to
/// the caller: see [`Invalidator`]); the future waits for them and returns the entries
/// dropped, or the first failure (every failure is queued for retry, as [`Keep`] says) with
/// the dependencies all of them dropped.
fn deliver_all(
    deliveries: Vec<(Invalidator, Vec<Dependency>, Vec<Dependency>)>,
) -> impl Future<Output = Result<Invalidated, Undelivered>> {
    let running: Vec<_> = deliveries
        .into_iter()
        .map(|(invalidator, kept, bounded)| invalidator.deliver(kept, bounded))
        .collect();
    async move {
        let mut entries = Invalidated::counted(0);
        let mut failure: Option<Undelivered> = None;
        for delivery in running {
            match (delivery.await, &mut failure) {
                (Ok(n), _) => entries += n,
                (Err(e), Some(first)) => first.dropped += e.dropped,
                (Err(e), None) => failure = Some(e),
            }
        }
        failure.map_or(Ok(entries), Err)
    }
}

/// A unit of work's buffer.
struct Batch {
    pending: Mutex<Pending>,
    /// A [`transaction`] nested inside rolled back (to its savepoint): the entries loads
    /// cached inside it may hold its rows, so they go even when the outer one commits.
    inner_rollback: AtomicBool,
}

impl Batch {
    fn lock(&self) -> std::sync::MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

tokio::task_local! {
    static BATCH: Arc<Batch>;
}

/// Who is saving, outside a batch: the tokio task (a save's hooks run on one task, which may
/// hop threads between them), or the thread for code not running in a task (`block_on`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Owner {
    Task(tokio::task::Id),
    Thread(std::thread::ThreadId),
}

fn owner() -> Owner {
    tokio::task::try_id().map_or_else(|| Owner::Thread(std::thread::current().id()), Owner::Task)
}

/// Per-owner state of saves outside a batch. Entries live from `before_save` to `after_save`;
/// one left behind by a failed statement is flushed with the owner's next save, or pruned
/// when very old (its write failed, so nothing needs invalidating).
static OWNERS: LazyLock<Mutex<HashMap<Owner, Pending>>> = LazyLock::new(Mutex::default);
const ABANDONED_AFTER: Duration = Duration::from_secs(600);

fn with_pending<R>(f: impl FnOnce(&mut Pending) -> R) -> R {
    if let Ok(batch) = BATCH.try_with(Arc::clone) {
        return f(&mut batch.lock());
    }
    let mut owners = OWNERS.lock().unwrap_or_else(PoisonError::into_inner);
    let now = Instant::now();
    if owners.len() > 256 {
        owners.retain(|_, p| p.touched.is_some_and(|t| now - t < ABANDONED_AFTER));
    }
    let pending = owners.entry(owner()).or_default();
    pending.touched = Some(now);
    f(pending)
}

/// Whether the current code runs inside a [`batch`] (or [`transaction`]).
pub(crate) fn in_batch() -> bool {
    BATCH.try_with(|_| ()).is_ok()
}

/// Collects dependencies of a write for `invalidator`, for the end of the unit of work;
/// `keep` says whether a failed delivery queues them whatever the limit.
pub(crate) fn push(
    invalidator: &Invalidator,
    keep: Keep,
    deps: impl IntoIterator<Item = Dependency>,
) {
    with_pending(|p| {
        let target = p.target(invalidator);
        match keep {
            Keep::Always => target.writes.extend(deps),
            Keep::WhileRoom => target.bounded.extend(deps),
        }
    });
}

/// Notes that a load inside a unit of work cached an entry in `cache` with `deps`: should a
/// transaction roll back, the entry may hold rows that never existed. Outside a unit of
/// work, nothing to do.
pub(crate) fn note_cached_load(cache: &Cache, deps: &[Dependency]) {
    let Ok(batch) = BATCH.try_with(Arc::clone) else {
        return;
    };
    let invalidator = Invalidator::for_cache(cache);
    batch
        .lock()
        .target(&invalidator)
        .reads
        .extend(deps.iter().cloned());
}

pub(crate) fn stash_update(key: (TypeId, String), modified: Vec<&'static str>) {
    with_pending(|p| {
        p.updates.insert(key, modified);
    });
}

pub(crate) fn take_update(key: &(TypeId, String)) -> Option<Vec<&'static str>> {
    with_pending(|p| p.updates.remove(key))
}

/// Ends a save: outside a batch, invalidates what the owner collected (one call per target
/// cache). A failure is queued for retry by the invalidator (see its failure policy) and
/// returned; hooks drop it, since their row is written.
///
/// The dependencies leave the owner's buffer and their deliveries start in one step, with
/// no await between: a caller dropped at the await below loses nothing.
pub(crate) async fn finish() -> Result<Invalidated, Undelivered> {
    if in_batch() {
        return Ok(Invalidated::counted(0));
    }
    let deliveries = {
        let mut owners = OWNERS.lock().unwrap_or_else(PoisonError::into_inner);
        let me = owner();
        match owners.get_mut(&me) {
            Some(p) => {
                let deliveries = p.take(Outcome::Committed);
                if p.updates.is_empty() {
                    owners.remove(&me);
                }
                deliveries
            }
            None => Vec::new(),
        }
    };
    deliver_all(deliveries).await
}

/// Collects `deps` for `invalidator` and, outside a batch, invalidates them now.
pub(crate) async fn record(
    invalidator: &Invalidator,
    keep: Keep,
    deps: Vec<Dependency>,
) -> Result<Invalidated, Undelivered> {
    push(invalidator, keep, deps);
    finish().await
}

/// Warns once per process when a hook runs on a transaction outside [`transaction`] / [`batch`].
pub(crate) fn warn_if_bare_transaction<C: ?Sized>() {
    static WARNED: AtomicBool = AtomicBool::new(false);
    if !in_batch()
        && std::any::type_name::<C>().ends_with("DatabaseTransaction")
        && !WARNED.swap(true, Ordering::Relaxed)
    {
        tracing::warn!(
            "a hooked save ran inside a bare `begin()` transaction: its invalidation happens before \
             the commit, so a concurrent reader may re-cache the old row; use \
             `matroska::seaorm::transaction` or wrap the code in `matroska::seaorm::batch`"
        );
    }
}

/// Delivers everything a unit of work collected if it ends without doing so (the future was
/// dropped, e.g. by a time-out, possibly after its commit: the outcome is unknown).
struct FlushOnDrop {
    batch: Arc<Batch>,
}

impl FlushOnDrop {
    /// Takes the buffer and starts its deliveries; they run on their own from here.
    fn deliver(
        &self,
        outcome: Outcome,
    ) -> impl Future<Output = Result<Invalidated, Undelivered>> + use<> {
        deliver_all(self.batch.lock().take(outcome))
    }
}

impl Drop for FlushOnDrop {
    fn drop(&mut self) {
        // Started at once and not awaited; a failure is queued by the invalidator.
        drop(self.deliver(Outcome::Unknown));
    }
}

/// Runs `fut` as a unit of work; `outcome` says from its output what to deliver.
async fn unit_of_work<F: Future>(fut: F, outcome: impl FnOnce(&F::Output) -> Outcome) -> F::Output {
    let guard = FlushOnDrop {
        batch: Arc::new(Batch {
            pending: Mutex::default(),
            inner_rollback: AtomicBool::new(false),
        }),
    };
    let out = BATCH.scope(Arc::clone(&guard.batch), fut).await;
    let outcome = match outcome(&out) {
        Outcome::Committed if guard.batch.inner_rollback.load(Ordering::Acquire) => {
            Outcome::Unknown
        }
        outcome => outcome,
    };
    // Failures are queued and retried (see the invalidator's failure policy).
    let _ = guard.deliver(outcome).await;
    out
}

/// Runs `fut`, holding back the invalidations of every hooked save, bulk helper and
/// [`invalidate`](crate::invalidate) inside it, and invalidates them all in one
/// call when it completes (or is dropped). Batches nest: an inner batch joins the outer one.
///
/// Use it around a bare `db.begin()` ... `txn.commit()`, or to make several saves cost one
/// round trip per cache. Each save's invalidations go to the cache current at the save (a
/// [`with_cache`](crate::with_cache) inside the batch is honoured). A batch cannot tell a
/// commit from a rollback: it always invalidates everything it collected. The batch belongs
/// to the task: saves in tasks spawned inside it invalidate on their own, right after each
/// save.
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// use matroska_core::{Cache, Dependency};
///
/// let cache = Cache::memory();
/// cache.put("list", &[1, 2], &[Dependency::invalidate_all("article")], None).await?;
/// matroska_seaorm::with_cache(cache.clone(), async {
///     matroska_seaorm::batch(async {
///         // ... writes; e.g. raw SQL, then:
///         matroska_seaorm::invalidate(vec![Dependency::invalidate_all("article")]).await?;
///         // Held back until the batch ends.
///         assert!(cache.has("list").await?);
///         Ok::<_, matroska_seaorm::Error>(())
///     })
///     .await
/// })
/// .await?;
/// assert!(!cache.has("list").await?);
/// # Ok::<_, matroska_seaorm::Error>(()) }).unwrap();
/// ```
pub async fn batch<F: Future>(fut: F) -> F::Output {
    if in_batch() {
        return fut.await;
    }
    unit_of_work(fut, |_| Outcome::Committed).await
}

/// [`TransactionTrait::transaction`] with the invalidations of its saves held back until the
/// transaction commits, then sent in one call per cache; after a rollback nothing is sent
/// but the entries cached queries stored from inside it (see the [module
/// docs](self#commit-rollback-and-a-dropped-unit-of-work), also for writes the callback makes
/// outside the transaction). Inside a [`batch`] or another `transaction`, it joins that one.
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// use sea_orm::{ConnectionTrait, Database};
///
/// let db = Database::connect("sqlite::memory:").await?;
/// matroska_seaorm::with_cache(matroska_core::Cache::memory(), async {
///     matroska_seaorm::transaction(&db, |txn| {
///         Box::pin(async move {
///             txn.execute_unprepared("CREATE TABLE t (id INTEGER PRIMARY KEY)").await?;
///             // ... hooked saves on `txn` ...
///             Ok::<_, sea_orm::DbErr>(())
///         })
///     })
///     .await
/// })
/// .await?;
/// # Ok::<_, Box<dyn std::error::Error>>(()) }).unwrap();
/// ```
///
/// # Errors
/// As [`TransactionTrait::transaction`]. A hooked save inside refused because the
/// invalidation retry queue is full ([`Error::Backlog`](crate::Error::Backlog), only for
/// tables the outbox does not watch) fails the callback like any database error.
pub async fn transaction<C, F, T, E>(db: &C, callback: F) -> Result<T, TransactionError<E>>
where
    C: TransactionTrait,
    F: for<'c> FnOnce(
            &'c C::Transaction,
        ) -> Pin<Box<dyn Future<Output = Result<T, E>> + Send + 'c>>
        + Send,
    T: Send,
    E: std::fmt::Display + std::fmt::Debug + Send,
{
    // No check of the retry queue here: which tables the callback writes is unknown, and a
    // full queue refuses only writes to tables the outbox does not watch. Each hooked save and
    // bulk helper inside checks for its own table, before it writes.
    if let Ok(outer) = BATCH.try_with(Arc::clone) {
        // Joins the enclosing unit of work, which delivers for both: its writes when the
        // outer one commits (extra misses for a savepoint rolled back), and then the entries
        // loads cached too if this one rolled back.
        let out = db.transaction(callback).await;
        if out.is_err() {
            outer.inner_rollback.store(true, Ordering::Release);
        }
        return out;
    }
    let out = unit_of_work(db.transaction(callback), |out| match out {
        Ok(_) => Outcome::Committed,
        // The callback failed and SeaORM rolled back.
        Err(TransactionError::Transaction(_)) => Outcome::RolledBack,
        // `begin`, `commit` or `rollback` failed: whether anything committed is unknown.
        Err(TransactionError::Connection(_)) => Outcome::Unknown,
    })
    .await;
    // The commit is in: this process's outbox relays need not wait for their next poll.
    matroska_outbox::poke();
    out
}
