//! The relay: claims outbox rows, invalidates their dependencies, marks them delivered.
//!
//! Delivery is **at least once**, to every consumer (cache; see [`crate::consumer`]): a row is
//! marked delivered by a consumer in the database transaction that claimed it, after its
//! invalidation succeeded; a failed invalidation, a crash or a dropped future leaves it for
//! the next claim. Invalidating twice is harmless. A row is deleted once every consumer
//! marked it.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use matroska_core::{Cache, Dependency, ScopeMode, TableSpec, WatchedTable};
use tokio::sync::Notify;

use crate::consumer::{self, Consumer};
use crate::db::{DeadRow, OutboxDb, Settled, SqlConnection, now_us};
use crate::ddl::Outbox;
use crate::error::Result;
use crate::installed::Installed;
use crate::record::{Reading, read};
use crate::truncate::TruncateWatch;

mod wait;

pub use wait::{wait_delivered, wait_delivered_blocking};

/// Relays in this process, for [`poke`].
static RELAYS: Mutex<Vec<Weak<Notify>>> = Mutex::new(Vec::new());

/// Wakes every relay of this process now, instead of at its next poll: call it after a
/// commit (the SeaORM integration does, after each hooked save and transaction). Cheap: no
/// I/O.
pub fn poke() {
    let mut relays = RELAYS.lock().unwrap_or_else(PoisonError::into_inner);
    relays.retain(|w| match w.upgrade() {
        Some(wake) => {
            wake.notify_one();
            true
        }
        None => false,
    });
}

/// How many recent lags the percentiles are computed over.
const LAG_WINDOW: usize = 4096;

/// Counters of one relay since it was built.
#[derive(Debug, Clone, Default, PartialEq)]
#[non_exhaustive]
pub struct RelayStats {
    /// Outbox rows delivered (invalidated and deleted).
    pub rows_delivered: u64,
    /// Rows moved to the dead-letter table.
    pub dead_letters: u64,
    /// Rows of tables no spec describes (their entity was invalidated whole).
    pub unknown_rows: u64,
    /// Claims that failed (database or cache); their rows stayed.
    pub failures: u64,
    /// Lag from the write to the invalidation, median over the last deliveries.
    pub lag_p50: Option<Duration>,
    /// Lag from the write to the invalidation, 99th percentile over the last deliveries.
    pub lag_p99: Option<Duration>,
}

/// The outbox's backlog, from [`Relay::depth`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct OutboxDepth {
    /// Rows waiting.
    pub rows: u64,
    /// Age of the oldest waiting row.
    pub oldest: Option<Duration>,
}

/// What one [`Relay::run_once`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Delivery {
    /// Rows claimed and settled (delivered or moved aside).
    pub rows: usize,
    /// Distinct dependencies invalidated.
    pub dependencies: usize,
    /// Rows moved to the dead letters.
    pub dead: usize,
}

/// Builds a [`Relay`]; see [`Relay::builder`].
#[derive(Debug)]
#[must_use]
pub struct RelayBuilder {
    db: OutboxDb,
    cache: Cache,
    outbox: Outbox,
    specs: HashMap<String, Vec<TableSpec>>,
    batch: usize,
    deps_per_call: usize,
    poll: Duration,
    truncate_check: Option<Duration>,
    retry_min: Duration,
    retry_max: Duration,
    consumer: Option<String>,
    expiry: Duration,
    mode: ScopeMode,
}

impl RelayBuilder {
    /// The name of the cache this relay delivers to. Every consumer receives every change:
    /// relays with one name share the work, relays with different names each deliver
    /// everything. Default: the cache's store ([`Backend::shared_store`]: `redis:<prefix>@<server>`
    /// for Redis, so every process on one prefix is one consumer and a deploy that bumps the
    /// prefix is a new one), or for a store private to the process (the in-memory backend) a
    /// name unique to this process and cache, removed when the relay shuts down.
    ///
    /// [`Backend::shared_store`]: matroska_core::backend::Backend::shared_store
    pub fn consumer(mut self, name: impl Into<String>) -> Self {
        self.consumer = Some(name.into());
        self
    }

    /// How long a consumer may go unseen (no relay of it reached the database) before another
    /// relay drops it, with a warning, and the rows it did not receive stop waiting for it
    /// (default 10 minutes). A dropped consumer that comes back flushes its cache for every
    /// watched table. Relays beat ten times per expiry, whatever the cache's health.
    pub fn consumer_expiry(mut self, expiry: Duration) -> Self {
        self.expiry = expiry.max(Duration::from_millis(100));
        self
    }

    /// What to do when the installed triggers do not record a column a watched spec needs (a
    /// scope added to a model without re-running the install): [`ScopeMode::Development`]
    /// (the default in debug builds) refuses to deliver, with [`Error::TriggersOutdated`];
    /// [`ScopeMode::Production`] warns once and invalidates the entity's lists for every
    /// change to the table.
    ///
    /// [`Error::TriggersOutdated`]: crate::Error::TriggersOutdated
    pub fn mode(mut self, mode: ScopeMode) -> Self {
        self.mode = mode;
        self
    }
    /// The outbox to read (default: [`Outbox::default`]).
    pub fn outbox(mut self, outbox: Outbox) -> Self {
        self.outbox = outbox;
        self
    }

    /// Reads changes of `spec`'s table. Several specs of one table (models sharing it) are
    /// all read: a change invalidates the dependencies of each.
    pub fn watch(mut self, spec: TableSpec) -> Self {
        self.specs
            .entry(spec.table().to_owned())
            .or_default()
            .push(spec);
        self
    }

    /// Reads changes of `T`'s table (`#[derive(CacheDeps)]` implements [`WatchedTable`]).
    pub fn watch_type<T: WatchedTable>(self) -> Self {
        self.watch(T::watched_table())
    }

    /// Rows claimed per database round trip (default 500). Bounds the relay's memory
    /// whatever the size of a bulk write.
    pub fn batch_size(mut self, rows: usize) -> Self {
        self.batch = rows.max(1);
        self
    }

    /// Dependencies per [`Cache::invalidate`] call (default 1 000), so one huge batch never
    /// becomes one long-running backend call.
    pub fn dependencies_per_call(mut self, deps: usize) -> Self {
        self.deps_per_call = deps.max(1);
        self
    }

    /// How often the outbox is polled when nothing wakes the relay (default: 1 s on
    /// PostgreSQL, where `LISTEN` wakes it on every commit, 50 ms elsewhere).
    pub fn poll_interval(mut self, every: Duration) -> Self {
        self.poll = every;
        self
    }

    /// MySQL/MariaDB: how often the relay looks for a `TRUNCATE` of a watched table, which
    /// fires no trigger there (default: the poll interval). Each look is one query over
    /// InnoDB's table list (measured on MariaDB 10.11: 0.85 ms of server time with 1 000
    /// InnoDB tables on the server, growing with their number). A truncate is invalidated
    /// within this interval plus the poll interval (plus a claim in progress) of its commit:
    /// 100 ms by default.
    pub fn truncate_check_interval(mut self, every: Duration) -> Self {
        self.truncate_check = Some(every);
        self
    }

    /// The first and longest wait after a failed claim (doubling in between; default 50 ms
    /// and 5 s).
    pub fn retry_delay(mut self, first: Duration, max: Duration) -> Self {
        self.retry_min = first;
        self.retry_max = max.max(first);
        self
    }

    /// Builds the relay.
    pub fn build(self) -> Relay {
        let wake = Arc::new(Notify::new());
        RELAYS
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(Arc::downgrade(&wake));
        let (name, private) = match self.consumer {
            Some(name) => (name, false),
            None => consumer::default_name(&self.cache),
        };
        Relay {
            inner: Arc::new(Inner {
                db: self.db,
                cache: self.cache,
                outbox: self.outbox,
                specs: self.specs,
                batch: self.batch,
                deps_per_call: self.deps_per_call,
                poll: self.poll,
                truncate_check: self.truncate_check.unwrap_or(self.poll),
                retry_min: self.retry_min,
                retry_max: self.retry_max,
                wake,
                stats: Mutex::default(),
                warned: Mutex::default(),
                truncations: TruncateWatch::default(),
                consumer: Consumer::new(name, private, self.expiry),
                mode: self.mode,
                installed: Installed::default(),
            }),
        }
    }
}

struct Inner {
    db: OutboxDb,
    cache: Cache,
    outbox: Outbox,
    specs: HashMap<String, Vec<TableSpec>>,
    batch: usize,
    deps_per_call: usize,
    poll: Duration,
    truncate_check: Duration,
    retry_min: Duration,
    retry_max: Duration,
    wake: Arc<Notify>,
    stats: Mutex<StatsState>,
    /// Unknown tables already warned about.
    warned: Mutex<BTreeSet<String>>,
    /// MySQL/MariaDB: `TRUNCATE`s, seen as new InnoDB table ids (`truncate.rs`).
    truncations: TruncateWatch,
    consumer: Consumer,
    mode: ScopeMode,
    installed: Installed,
}

#[derive(Default)]
struct StatsState {
    stats: RelayStats,
    lags: VecDeque<Duration>,
}

/// Delivers the outbox to a cache; see the [crate docs](crate). Cheap to clone.
///
/// ```no_run
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// use matroska_core::Cache;
/// use matroska_outbox::{OutboxDb, Relay};
///
/// let db = OutboxDb::connect("postgres://postgres@127.0.0.1/test").await?;
/// let relay = Relay::builder(db, Cache::memory())
///     // .watch_type::<post::Model>()  -- every entity the application caches
///     .build();
/// let handle = relay.spawn();
/// // ... on shutdown:
/// handle.shutdown().await;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Relay {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Relay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Relay")
            .field("outbox", &self.inner.outbox)
            .field("tables", &self.inner.specs.keys().collect::<Vec<_>>())
            .field("consumer", &self.inner.consumer.name)
            .finish_non_exhaustive()
    }
}

impl Relay {
    /// Starts building a relay reading `db`'s outbox into `cache`.
    pub fn builder(db: impl Into<OutboxDb>, cache: Cache) -> RelayBuilder {
        let db = db.into();
        let poll = match crate::db::SqlConnection::dialect(&db) {
            crate::Dialect::Postgres => Duration::from_secs(1),
            _ => Duration::from_millis(50),
        };
        RelayBuilder {
            db,
            cache,
            outbox: Outbox::default(),
            specs: HashMap::new(),
            batch: 500,
            deps_per_call: 1_000,
            poll,
            truncate_check: None,
            retry_min: Duration::from_millis(50),
            retry_max: Duration::from_secs(5),
            consumer: None,
            expiry: Duration::from_secs(600),
            mode: ScopeMode::default(),
        }
    }

    /// The consumer (cache) this relay delivers to; see [`RelayBuilder::consumer`].
    pub fn consumer(&self) -> &str {
        &self.inner.consumer.name
    }

    /// The database.
    pub fn db(&self) -> &OutboxDb {
        &self.inner.db
    }

    /// The outbox read.
    pub fn outbox(&self) -> &Outbox {
        &self.inner.outbox
    }

    /// Counters and lag percentiles.
    pub fn stats(&self) -> RelayStats {
        self.inner
            .stats
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .stats
            .clone()
    }

    /// The outbox's backlog.
    ///
    /// # Errors
    /// The database's errors.
    pub async fn depth(&self) -> Result<OutboxDepth> {
        let inner = &self.inner;
        let (rows, oldest) = inner.db.depth(&inner.outbox, &inner.consumer.name).await?;
        let oldest = oldest.map(|us| {
            Duration::from_micros(u64::try_from(now_us().saturating_sub(us)).unwrap_or(0))
        });
        #[cfg(feature = "metrics")]
        metrics::gauge!("matroska_outbox_depth").set(rows as f64);
        Ok(OutboxDepth { rows, oldest })
    }

    /// The rows moved aside as unreadable: (id, table, error), oldest first. Their entity's
    /// lists were invalidated when they were moved; fix or delete them by hand.
    ///
    /// # Errors
    /// The database's errors.
    pub async fn dead_letters(&self) -> Result<Vec<(i64, String, String)>> {
        self.inner.db.dead_letters(&self.inner.outbox).await
    }

    /// Checks the installed triggers against the watched specs, registers this relay's
    /// consumer (flushing its cache when it is new or was dropped), then starts the relay in
    /// the background ([`Relay::spawn`]). Prefer it to `spawn` at start-up, before the cache
    /// serves: a check that fails is returned here instead of logged.
    ///
    /// # Errors
    /// [`Error::TriggersOutdated`](crate::Error::TriggersOutdated) in development mode
    /// ([`RelayBuilder::mode`]); the database's and the cache's errors.
    pub async fn start(self) -> Result<RelayHandle> {
        self.prepare().await?;
        Ok(self.spawn())
    }

    /// Everything before a claim: the installed triggers' check, the consumer's registration,
    /// flush and heartbeat (and, with a heartbeat, the sweep of rows every consumer has).
    async fn prepare(&self) -> Result<()> {
        let inner = &self.inner;
        inner
            .installed
            .check(&inner.db, &inner.outbox, &inner.specs, inner.mode)
            .await?;
        // Before the first delivery: a scope column whose collation equates values its fold
        // tells apart goes coarse (once per process and table; a no-op afterwards).
        for spec in inner.specs.values().flatten() {
            crate::collation::ensure_collations_checked(&inner.db, spec).await;
        }
        let flush = || {
            consumer::flush(
                &inner.db,
                &inner.outbox,
                &inner.cache,
                &inner.specs,
                inner.deps_per_call,
            )
        };
        let beat = match inner.consumer.ensure(&inner.db, &inner.outbox, flush).await {
            // An outbox installed by a release without consumers: add their tables (idempotent)
            // so relays can be upgraded before the install is re-run.
            Err(e) if crate::db::is_missing_table(&e) => {
                for sql in inner.outbox.create_consumer_tables_sql(inner.db.dialect()) {
                    inner.db.execute_sql(&sql).await?;
                }
                inner
                    .consumer
                    .ensure(&inner.db, &inner.outbox, flush)
                    .await?
            }
            other => other?,
        };
        if beat {
            self.sweep().await;
        }
        Ok(())
    }

    /// Deletes the rows every consumer has; a failure (a deadlock with another relay's sweep)
    /// only leaves them for the next sweep.
    async fn sweep(&self) {
        if let Err(e) = self.inner.db.sweep(&self.inner.outbox).await {
            tracing::debug!(error = %e, "outbox sweep failed; the next one deletes the rows");
        }
    }

    /// Claims one batch and delivers it; see [`Relay`].
    ///
    /// # Errors
    /// The database's or the cache's failure; the batch stays in the outbox. In development
    /// mode, [`Error::TriggersOutdated`](crate::Error::TriggersOutdated).
    pub async fn run_once(&self) -> Result<Delivery> {
        let result = async {
            // A second round only when the claim found the consumer dropped: it registers
            // again (flushing) and claims.
            for _ in 0..2 {
                self.prepare().await?;
                if let Some(delivery) = self.claim_once().await? {
                    if delivery.rows > 0 {
                        self.sweep().await;
                    }
                    return Ok(delivery);
                }
                self.inner.consumer.lost();
            }
            Ok(Delivery::default())
        }
        .await;
        if result.is_err() {
            self.with_stats(|s| s.stats.failures += 1);
            #[cfg(feature = "metrics")]
            metrics::counter!("matroska_outbox_failures_total").increment(1);
        }
        result
    }

    /// One claim; `None` when the consumer was found dropped.
    async fn claim_once(&self) -> Result<Option<Delivery>> {
        let inner = &self.inner;
        let mut delivery = Delivery::default();
        let coarse = inner.installed.coarse();
        // Counted once the claim committed: a claim that fails after the delivery (its
        // delete, its commit) delivers again later, and counts then.
        let mut counted = None;
        let claimed = inner
            .db
            .claim(&inner.outbox, &inner.consumer.name, inner.batch, |rows| async {
                let mut deps = BTreeSet::new();
                let mut settled = Settled {
                    done: Vec::with_capacity(rows.len()),
                    dead: Vec::new(),
                };
                let mut unknown = 0_u64;
                let created: Vec<i64> = rows.iter().map(|r| r.created_us).collect();
                for row in rows {
                    match read(&row, &inner.specs, &coarse) {
                        Reading::Exact(d) => deps.extend(d),
                        Reading::UnknownTable(d) => {
                            unknown += 1;
                            self.warn_unknown(&row.table);
                            deps.extend(d);
                        }
                        Reading::Unreadable { deps: d, error } => {
                            tracing::error!(
                                id = row.id,
                                table = %row.table,
                                %error,
                                "unreadable outbox row: invalidating its entity's lists and moving it to the dead letters"
                            );
                            deps.extend(d);
                            settled.dead.push(DeadRow {
                                row: row.clone(),
                                error,
                            });
                        }
                    }
                    settled.done.push(row.id);
                }
                let deps: Vec<Dependency> = deps.into_iter().collect();
                for chunk in deps.chunks(inner.deps_per_call) {
                    inner.cache.invalidate(chunk).await?;
                }
                delivery.dependencies = deps.len();
                delivery.dead = settled.dead.len();
                counted = Some((created.clone(), unknown, settled.dead.len() as u64));
                tracing::debug!(
                    rows = created.len(),
                    deps = deps.len(),
                    dead = settled.dead.len(),
                    "outbox rows delivered"
                );
                Ok(settled)
            })
            .await;
        let Some(rows) = claimed? else {
            return Ok(None);
        };
        if let Some((created, unknown, dead)) = counted {
            self.record(&created, unknown, dead);
        }
        delivery.rows = rows;
        Ok(Some(delivery))
    }

    /// Runs [`Relay::run_once`] until the outbox is empty; returns the rows delivered.
    ///
    /// # Errors
    /// As [`Relay::run_once`].
    pub async fn drain(&self) -> Result<u64> {
        self.check_truncations(true).await?;
        let mut total = 0_u64;
        loop {
            let delivery = self.run_once().await?;
            total += delivery.rows as u64;
            if delivery.rows < self.inner.batch {
                return Ok(total);
            }
        }
    }

    /// MySQL/MariaDB: writes a whole-entity outbox row for each watched table truncated since
    /// the last look (at most once per poll interval unless `force`d); see `truncate.rs`.
    async fn check_truncations(&self, force: bool) -> Result<usize> {
        let inner = &self.inner;
        inner
            .truncations
            .check(&inner.db, &inner.outbox, inner.truncate_check, force)
            .await
    }

    fn with_stats<R>(&self, f: impl FnOnce(&mut StatsState) -> R) -> R {
        f(&mut self
            .inner
            .stats
            .lock()
            .unwrap_or_else(PoisonError::into_inner))
    }

    /// Counts a delivered batch, after its commit.
    fn record(&self, created: &[i64], unknown: u64, dead: u64) {
        let now = now_us();
        let lags: Vec<Duration> = created
            .iter()
            .map(|&c| Duration::from_micros(u64::try_from(now.saturating_sub(c)).unwrap_or(0)))
            .collect();
        #[cfg(feature = "metrics")]
        {
            metrics::counter!("matroska_outbox_rows_delivered_total")
                .increment(created.len() as u64);
            metrics::counter!("matroska_outbox_dead_letters_total").increment(dead);
            let histogram = metrics::histogram!("matroska_outbox_lag_seconds");
            for lag in &lags {
                histogram.record(lag.as_secs_f64());
            }
        }
        self.with_stats(|s| {
            s.stats.rows_delivered += created.len() as u64;
            s.stats.unknown_rows += unknown;
            s.stats.dead_letters += dead;
            for lag in lags {
                if s.lags.len() == LAG_WINDOW {
                    s.lags.pop_front();
                }
                s.lags.push_back(lag);
            }
            let mut sorted: Vec<Duration> = s.lags.iter().copied().collect();
            sorted.sort_unstable();
            let at = |q: f64| {
                #[allow(
                    clippy::cast_possible_truncation,
                    clippy::cast_sign_loss,
                    clippy::cast_precision_loss
                )]
                let i = ((sorted.len() as f64 - 1.0) * q).round() as usize;
                sorted.get(i).copied()
            };
            s.stats.lag_p50 = at(0.5);
            s.stats.lag_p99 = at(0.99);
        });
    }

    fn warn_unknown(&self, table: &str) {
        let mut warned = self
            .inner
            .warned
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if warned.insert(table.to_owned()) {
            tracing::warn!(
                table,
                "outbox rows of a table this relay does not watch: invalidating the whole entity by \
                 table name (register its spec with `watch`, or uninstall its triggers)"
            );
        }
    }

    /// Runs the relay in a background task until [`RelayHandle::shutdown`] (or the handle is
    /// dropped). On PostgreSQL it `LISTEN`s for the triggers' notifications; elsewhere, and
    /// as a safety net, it polls every [`poll_interval`](RelayBuilder::poll_interval);
    /// [`poke`] wakes it at once.
    pub fn spawn(self) -> RelayHandle {
        let stop = Arc::new(Notify::new());
        let task = tokio::spawn(self.clone().run(Arc::clone(&stop)));
        let runtime = tokio::runtime::Handle::current();
        wait::register(&self, runtime.clone());
        RelayHandle {
            relay: self,
            runtime,
            stop,
            task: Some(task),
        }
    }

    async fn run(self, stop: Arc<Notify>) {
        let inner = &self.inner;
        #[cfg(feature = "postgres")]
        let _listener = self.listen();
        let mut delay = inner.retry_min;
        // State changes are logged at `info`; the idle loop (a claim every poll interval) only
        // at `trace`, so an idle relay is silent at `info`.
        tracing::info!(
            consumer = %inner.consumer.name,
            tables = inner.specs.len(),
            poll = ?inner.poll,
            "matroska outbox relay started"
        );
        // Claims failed in a row, for the one `info` line when delivery works again.
        let mut failed = 0_u64;
        loop {
            if let Err(e) = self.check_truncations(false).await {
                tracing::warn!(error = %e, "checking watched tables for TRUNCATE failed; retrying at the next poll");
            }
            let more = match self.run_once().await {
                Ok(d) => {
                    delay = inner.retry_min;
                    if failed > 0 {
                        tracing::info!(
                            failed_claims = failed,
                            "matroska outbox relay delivering again after failures"
                        );
                        failed = 0;
                    }
                    tracing::trace!(rows = d.rows, "outbox poll");
                    d.rows >= inner.batch
                }
                Err(e) => {
                    failed += 1;
                    tracing::warn!(error = %e, retry_in = ?delay, "outbox delivery failed; the rows stay");
                    let wait = delay;
                    delay = delay.saturating_mul(2).min(inner.retry_max);
                    // Outdated triggers (development mode) end only with a re-install, whose
                    // whole-table row notifies: try again then, not after the back-off (up
                    // to `retry_max`). Other failures (a cache outage) keep their back-off,
                    // which every write's notification would otherwise cut short.
                    let outdated = matches!(e, crate::Error::TriggersOutdated { .. });
                    tokio::select! {
                        () = stop.notified() => return,
                        () = tokio::time::sleep(wait) => {}
                        () = inner.wake.notified(), if outdated => {}
                    }
                    continue;
                }
            };
            if more {
                continue;
            }
            tokio::select! {
                () = stop.notified() => return,
                () = inner.wake.notified() => {}
                () = tokio::time::sleep(inner.poll) => {}
            }
        }
    }

    /// On PostgreSQL, a task forwarding the triggers' notifications to the relay's wake-up
    /// (reconnecting after failures); aborted with the returned guard.
    #[cfg(feature = "postgres")]
    #[allow(irrefutable_let_patterns)] // with `postgres` the only driver
    fn listen(&self) -> Option<AbortOnDrop> {
        let OutboxDb::Postgres(pool) = &self.inner.db else {
            return None;
        };
        let pool = pool.clone();
        let channel = self.inner.outbox.channel().to_owned();
        let wake = Arc::clone(&self.inner.wake);
        let retry = self.inner.retry_max;
        Some(AbortOnDrop(tokio::spawn(async move {
            loop {
                let listened = async {
                    let mut listener = sqlx::postgres::PgListener::connect_with(&pool).await?;
                    listener.listen(&channel).await?;
                    // A commit may have landed before LISTEN took effect.
                    wake.notify_one();
                    loop {
                        listener.recv().await?;
                        wake.notify_one();
                    }
                    #[allow(unreachable_code)]
                    Ok::<(), sqlx::Error>(())
                };
                if let Err(e) = listened.await {
                    tracing::warn!(error = %e, "outbox LISTEN failed; polling until it reconnects");
                }
                tokio::time::sleep(retry).await;
            }
        })))
    }
}

#[cfg(feature = "postgres")]
struct AbortOnDrop(tokio::task::JoinHandle<()>);

#[cfg(feature = "postgres")]
impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A relay running in the background; dropping it stops the relay (rows not yet claimed wait
/// for the next relay).
#[derive(Debug)]
#[must_use = "dropping a RelayHandle stops its relay: keep it for as long as the relay should run"]
pub struct RelayHandle {
    relay: Relay,
    /// The runtime the relay runs on, for [`RelayHandle::wait_delivered_blocking`].
    runtime: tokio::runtime::Handle,
    stop: Arc<Notify>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl RelayHandle {
    /// The relay.
    pub fn relay(&self) -> &Relay {
        &self.relay
    }

    /// [`Relay::wait_delivered`]: after a write no hook saw, waits until this relay's
    /// consumer has every row committed before the call.
    ///
    /// # Errors
    /// As [`Relay::wait_delivered`].
    pub async fn wait_delivered(&self, timeout: Duration) -> Result<()> {
        self.relay.wait_delivered(timeout).await
    }

    /// [`RelayHandle::wait_delivered`] for synchronous code: the wait runs on the relay's
    /// runtime while this thread blocks. Not from async code (see [`wait_delivered_blocking`]).
    ///
    /// # Errors
    /// As [`Relay::wait_delivered`].
    pub fn wait_delivered_blocking(&self, timeout: Duration) -> Result<()> {
        wait::block_on_waits(vec![(self.relay.clone(), self.runtime.clone())], timeout)
    }

    /// Stops the relay once its current claim (if any) is settled. A consumer private to
    /// this process (the in-memory backend's default) is removed: no row waits for it any
    /// more.
    pub async fn shutdown(mut self) {
        self.stop.notify_one();
        if let Some(task) = self.task.take() {
            wait::unregister(&self.relay);
            let _ = task.await;
        }
        let inner = &self.relay.inner;
        if inner.consumer.private
            && let Err(e) = inner.consumer.deregister(&inner.db, &inner.outbox).await
        {
            tracing::warn!(
                consumer = %inner.consumer.name,
                error = %e,
                "could not remove this process's outbox consumer; it expires instead"
            );
        }
    }
}

impl Drop for RelayHandle {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            wait::unregister(&self.relay);
            // A claim cut short rolls back: its rows stay for the next relay.
            task.abort();
        }
    }
}
