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
//! On rollback the collected dependencies are invalidated too: at worst some extra misses,
//! and nothing is lost when the callback also wrote outside the transaction.
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

use matroska_core::Dependency;
use sea_orm::{TransactionError, TransactionTrait};

use crate::invalidator::Invalidator;

/// What one unit of work (a batch, or one task's in-flight save) has collected.
#[derive(Default)]
pub(crate) struct Pending {
    deps: BTreeSet<Dependency>,
    /// Updates between `before_save` and `after_save`: (model type, primary key) -> the
    /// modified scope fields.
    updates: HashMap<(TypeId, String), Vec<&'static str>>,
    touched: Option<Instant>,
}

tokio::task_local! {
    static BATCH: Arc<Mutex<Pending>>;
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
        return f(&mut batch.lock().unwrap_or_else(PoisonError::into_inner));
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

/// Collects dependencies for the end of the unit of work.
pub(crate) fn push(deps: impl IntoIterator<Item = Dependency>) {
    with_pending(|p| p.deps.extend(deps));
}

pub(crate) fn stash_update(key: (TypeId, String), modified: Vec<&'static str>) {
    with_pending(|p| {
        p.updates.insert(key, modified);
    });
}

pub(crate) fn take_update(key: &(TypeId, String)) -> Option<Vec<&'static str>> {
    with_pending(|p| p.updates.remove(key))
}

/// Ends a save: outside a batch, invalidates what the owner collected (one call). A failure
/// is queued for retry by the invalidator (see its failure policy) and returned; hooks drop
/// it, since their row is written.
pub(crate) async fn finish(invalidator: &Invalidator) -> Result<u64, matroska_core::Error> {
    if in_batch() {
        return Ok(0);
    }
    let deps: Vec<Dependency> = {
        let mut owners = OWNERS.lock().unwrap_or_else(PoisonError::into_inner);
        let me = owner();
        match owners.get_mut(&me) {
            Some(p) => {
                let deps = std::mem::take(&mut p.deps).into_iter().collect();
                if p.updates.is_empty() {
                    owners.remove(&me);
                }
                deps
            }
            None => Vec::new(),
        }
    };
    invalidator.deliver(deps).await
}

/// Ends a save outside a batch without delivering what it collected (no cache is registered
/// and the outbox watches the table: its relay invalidates).
pub(crate) fn discard() {
    if in_batch() {
        return;
    }
    let mut owners = OWNERS.lock().unwrap_or_else(PoisonError::into_inner);
    let me = owner();
    if let Some(p) = owners.get_mut(&me) {
        p.deps.clear();
        if p.updates.is_empty() {
            owners.remove(&me);
        }
    }
}

/// Collects `deps` and, outside a batch, invalidates them now.
pub(crate) async fn record(
    invalidator: &Invalidator,
    deps: Vec<Dependency>,
) -> Result<u64, matroska_core::Error> {
    push(deps);
    finish(invalidator).await
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
             `matroska_seaorm::transaction` or wrap the code in `matroska_seaorm::batch`"
        );
    }
}

/// Invalidates what `pending` collected if the unit of work ends without doing it (the
/// future was dropped, e.g. by a timeout, possibly after its commit).
struct FlushOnDrop {
    pending: Arc<Mutex<Pending>>,
    invalidator: Option<Invalidator>,
}

impl FlushOnDrop {
    fn take(&self) -> Vec<Dependency> {
        let mut p = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
        std::mem::take(&mut p.deps).into_iter().collect()
    }
}

impl Drop for FlushOnDrop {
    fn drop(&mut self) {
        let deps = self.take();
        if deps.is_empty() {
            return;
        }
        match (
            self.invalidator.take(),
            tokio::runtime::Handle::try_current(),
        ) {
            (Some(invalidator), Ok(runtime)) => {
                runtime.spawn(async move {
                    let _ = invalidator.deliver(deps).await;
                });
            }
            _ => tracing::error!(
                deps = ?deps,
                "a dropped batch could not deliver its invalidations (no cache or no runtime)"
            ),
        }
    }
}

/// Runs `fut`, holding back the invalidations of every hooked save, bulk helper and
/// [`invalidate`](crate::invalidate) inside it, and invalidates them all in one
/// call when it completes (or is dropped). Batches nest: an inner batch joins the outer one.
///
/// Use it around a bare `db.begin()` ... `txn.commit()`, or to make several saves cost one
/// round trip. The cache is the one current when the batch starts. The batch belongs to the
/// task: saves in tasks spawned inside it invalidate on their own, right after each save.
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
    let guard = FlushOnDrop {
        pending: Arc::default(),
        invalidator: Invalidator::current(),
    };
    let out = BATCH.scope(Arc::clone(&guard.pending), fut).await;
    let deps = guard.take();
    if !deps.is_empty() {
        match &guard.invalidator {
            // Failures are queued and retried (see the invalidator's failure policy).
            Some(invalidator) => {
                let _ = invalidator.deliver(deps).await;
            }
            None => tracing::error!(
                deps = ?deps,
                "no matroska cache was registered when the batch started; its invalidations are lost"
            ),
        }
    }
    out
}

/// [`TransactionTrait::transaction`] with the invalidations of its saves held back until the
/// transaction is over, then sent in one call (see the [module docs](self)).
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
/// As [`TransactionTrait::transaction`]; and [`TransactionError::Connection`] with
/// [`Error::Backlog`](crate::Error::Backlog) when the invalidation retry queue is full.
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
    if let Some(invalidator) = Invalidator::current() {
        invalidator
            .check_capacity()
            .map_err(|e| TransactionError::Connection(e.into()))?;
    }
    batch(db.transaction(callback)).await
}
