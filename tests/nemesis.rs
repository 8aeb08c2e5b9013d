//! The adversary in the suite: a seeded, nemesis-driven consistency checker (in the spirit of
//! Jepsen and FoundationDB's simulation tests).
//!
//! Writers bump the versions of a few rows (and move them between two buckets, a watched
//! column) on every write path the database has: a hooked SeaORM save, the invalidating bulk
//! `update_many`, a hooked save in `seaorm::transaction`, raw SQL on another pooled
//! connection, raw SQL from another process (`psql`, `mariadb`, Python's `sqlite3`), `REPLACE`
//! (SQLite, MariaDB), and a session in another time zone (MariaDB). Hooked paths finish their
//! write in the [`Ledger`] when the save returns; the others once the outbox relay delivered
//! it (`support::relay::delivered`). Readers read through cached SeaORM queries: a row by id,
//! a bucket's list and a bucket's count, and two of those inside `seaorm::transaction`.
//!
//! A nemesis injects faults at times drawn from the seed: it deletes random entries and
//! stamps on Redis, restarts the private `redis-server` (empty, or from a snapshot it saved
//! 0.1–0.7 s before: entries and stamps older than the invalidations since), kills the relay
//! and starts another one later, re-runs the outbox `install`, and pauses every load's put
//! (a loader held past the memory backend's stale window, which the seed may shorten to
//! 40 ms; the seed may also shorten the entries' TTL).
//!
//! The checker ([`support::ledger`]): no read may return a row older than a write that
//! finished before the read started; a row no write touched during the read must be in
//! exactly its bucket's list; a count lies between the settled rows of its bucket and those
//! plus the unsettled ones.
//!
//! The seed picks the configuration, each task's choices (paths, rows, reads) and the fault
//! schedule; the interleaving itself is the machine's, so a seed reproduces the schedule, not
//! the exact run. `NEMESIS_SEED=<n>` runs that seed; `NEMESIS_MINUTES=<m>` turns each test
//! into a soak (successive seeds until the time is up) that prints reads, faults by kind,
//! violations and the stale fraction (reads older than a committed write whose invalidation
//! was still on its way: allowed, and the lag the product has). A violation fails the test
//! with the seed, the configuration and the schedule so far.
#![cfg(feature = "seaorm")]
#![allow(clippy::unwrap_used)]

mod seaorm_blog;
mod support;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use matroska::backend::Backend;
use matroska::backend::memory::{MemoryBackend, MemoryConfig};
use matroska::backend::redis::RedisConfig;
use matroska::seaorm::{self, CachedExt, Invalidator, outbox};
use matroska::{Cache, WatchedTable};
use sea_orm::{
    ActiveModelTrait, ColumnTrait, ConnectionTrait, DatabaseConnection, DbErr, EntityTrait,
    IntoActiveModel, QueryOrder, Schema, Set, TransactionTrait,
};
use tokio::sync::{Mutex, MutexGuard};

use seaorm_blog::stress_row as row;
use support::Rng;
use support::db::{Kind, ScratchDb};
use support::faults::Faulty;
use support::ledger::{Ledger, Snapshot};

const ROWS: i64 = 8;
const BUCKETS: i32 = 2;
const WRITERS: u64 = 3;
const READERS: u64 = 4;
/// Writes per writer in one short (CI) run.
const WRITES: u64 = 30;

/// Where the cache keeps its entries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Store {
    Memory,
    /// A private `redis-server` of the run's own (so the nemesis may restart it).
    Redis,
    /// The same with the near cache on (issue 19): reads are served in process.
    RedisNear,
    /// The test binary's private Redis Cluster.
    Cluster,
}

/// The write paths.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Path {
    /// A hooked `ActiveModel` update.
    Save,
    /// `seaorm::bulk::update_many`.
    Bulk,
    /// Two hooked saves in `seaorm::transaction`.
    Transaction,
    /// `UPDATE` on a pooled connection, seen by the triggers only.
    RawSql,
    /// `UPDATE` from another process (the database's command-line client).
    OtherProcess,
    /// `REPLACE INTO` (SQLite, MariaDB): a delete and an insert to the triggers.
    Replace,
    /// `UPDATE` from a MariaDB session in another time zone.
    OtherTimeZone,
}

impl Path {
    /// Whether the write is invalidated by the relay only (the ledger waits for it).
    fn through_relay(self) -> bool {
        !matches!(self, Path::Save | Path::Bulk | Path::Transaction)
    }

    fn on(kind: Kind) -> Vec<Path> {
        let mut paths = vec![
            Path::Save,
            Path::Bulk,
            Path::Transaction,
            Path::RawSql,
            Path::OtherProcess,
        ];
        match kind {
            Kind::Sqlite => paths.push(Path::Replace),
            Kind::MySql => paths.extend([Path::Replace, Path::OtherTimeZone]),
            Kind::Postgres => {}
        }
        paths
    }
}

/// The faults the nemesis injects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Fault {
    /// `DEL` of random entries (`{P}:e:*`).
    DeleteEntries,
    /// `DEL` of random stamps (`{P}:s:*`) while every put is held (so loads that read before
    /// an invalidation whose stamp is lost are waiting to store, and race the puts that
    /// re-create the stamp when the gate opens).
    DeleteStamps,
    /// Kill the private `redis-server` and start it again, empty.
    RestartRedis,
    /// `SAVE` a snapshot, let the run go on for a while, then kill the private
    /// `redis-server` and start it again from that snapshot: it comes back with entries and
    /// stamps older than the invalidations made since (issue 16, item 16).
    RestoreSnapshot,
    /// Stop the relay, and start a new one after a pause.
    RestartRelay,
    /// Run the outbox `install` again.
    Reinstall,
    /// Hold every put (so every load that finishes meanwhile) for up to 200 ms: past the
    /// memory backend's stale window when the seed shortened it.
    PauseLoads,
}

/// Fault kinds left out of the default runs because the fix for what they find is not on
/// main yet (turn them on with `NEMESIS_ALL_FAULTS=1`). Empty now: `DeleteStamps` was here
/// until the stamp re-creation fix (issue 16, item 1: created stamps carry the clock's count)
/// landed; before it, it found stale reads on main (`NEMESIS_SEED=16902992922294168202
/// NEMESIS_MINUTES=0 .. postgres_redis`: a stale list 20 ms after held puts were let go with 5
/// stamps deleted; `NEMESIS_SEED=15968181054327747194 .. mariadb_redis`: a stale row).
const AWAITING_FIXES: &[Fault] = &[];

impl Fault {
    fn on(store: Store) -> Vec<Fault> {
        let mut faults = vec![Fault::RestartRelay, Fault::Reinstall, Fault::PauseLoads];
        if matches!(store, Store::Redis | Store::RedisNear) {
            faults.extend([
                Fault::DeleteEntries,
                Fault::DeleteStamps,
                Fault::RestartRedis,
                Fault::RestoreSnapshot,
            ]);
        }
        let all = std::env::var("NEMESIS_ALL_FAULTS").is_ok_and(|v| v == "1");
        faults.retain(|f| all || !AWAITING_FIXES.contains(f));
        faults
    }
}

/// What the seed chose for a run.
#[derive(Debug, Clone)]
struct Config {
    seed: u64,
    kind: Kind,
    store: Store,
    /// Memory backend: how long invalidations are remembered for guarded puts.
    stale_window: Duration,
    /// The entries' TTL.
    ttl: Option<Duration>,
    paths: Vec<Path>,
    faults: Vec<Fault>,
    writes: u64,
}

impl Config {
    fn new(seed: u64, kind: Kind, store: Store, writes: u64) -> Self {
        let mut rng = Rng::derive(seed, 0);
        Config {
            seed,
            kind,
            store,
            stale_window: if rng.next(2) == 0 {
                Duration::from_millis(40)
            } else {
                Duration::from_secs(60)
            },
            ttl: (rng.next(3) == 0).then(|| Duration::from_millis(100 + rng.next(400))),
            paths: Path::on(kind),
            faults: Fault::on(store),
            writes,
        }
    }
}

/// A fault the nemesis injected, for the report.
struct Injected {
    at: Duration,
    fault: Fault,
    detail: String,
}

/// The cache's storage, with the handles the nemesis needs.
struct Storage {
    faulty: Arc<Faulty>,
    /// The private server and the key prefix (Redis only).
    redis: Option<(Arc<std::sync::Mutex<support::PrivateRedis>>, String)>,
}

struct Harness {
    config: Config,
    db: ScratchDb,
    /// The SQLite file, for the `sqlite3` process.
    sqlite_path: Option<String>,
    cache: Cache,
    storage: Storage,
    relay: Mutex<Option<outbox::RelayHandle>>,
    /// Per row: its committed state; held from choosing a write's version to its commit.
    rows: Vec<Mutex<row::Model>>,
    ledger: Ledger,
    started: Instant,
    writers_done: AtomicBool,
    reads: AtomicU64,
    lagging: AtomicU64,
    read_errors: AtomicU64,
    write_errors: AtomicU64,
    violations: AtomicU64,
    /// The first violations, described.
    details: std::sync::Mutex<Vec<String>>,
    writes: std::sync::Mutex<BTreeMap<Path, u64>>,
    injected: std::sync::Mutex<Vec<Injected>>,
}

fn bucket_of(id: i64) -> i32 {
    i32::try_from(id % i64::from(BUCKETS)).unwrap()
}

impl Harness {
    async fn new(config: Config, name: &str) -> Arc<Self> {
        let db = ScratchDb::new(config.kind, name).await;
        db.conn
            .execute(&Schema::new(db.backend()).create_table_from_entity(row::Entity))
            .await
            .unwrap();
        let seed: Vec<row::Model> = (0..ROWS)
            .map(|id| row::Model {
                id,
                version: 0,
                bucket: bucket_of(id),
            })
            .collect();
        row::Entity::insert_many(seed.iter().cloned().map(IntoActiveModel::into_active_model))
            .exec(&db.conn)
            .await
            .unwrap();
        outbox::install(&db.conn, &[row::Model::watched_table()])
            .await
            .unwrap();
        let (inner, redis): (Arc<dyn Backend>, _) = match config.store {
            Store::Memory => (
                Arc::new(MemoryBackend::new(
                    MemoryConfig::default().stale_window(config.stale_window),
                )),
                None,
            ),
            Store::Redis | Store::RedisNear => {
                let server = tokio::task::spawn_blocking(support::PrivateRedis::start_persistent)
                    .await
                    .unwrap();
                let prefix = support::unique(name);
                let mut redis_config = RedisConfig::new(server.url(), prefix.clone());
                if config.store == Store::RedisNear {
                    redis_config =
                        redis_config.near_cache(matroska::backend::redis::NearConfig::new(1 << 22));
                }
                let backend = support::redis_backend_with(redis_config).await;
                (
                    Arc::new(backend),
                    Some((Arc::new(std::sync::Mutex::new(server)), prefix)),
                )
            }
            Store::Cluster => (Arc::new(support::redis_cluster_backend(name).await), None),
        };
        let faulty = Arc::new(Faulty::new_arc(inner));
        let mut builder = Cache::builder_arc(Arc::clone(&faulty) as Arc<dyn Backend>);
        if let Some(ttl) = config.ttl {
            builder = builder.default_ttl(ttl);
        }
        let cache = builder.build().unwrap();
        let sqlite_path = (config.kind == Kind::Sqlite).then(|| {
            let path = db.url.strip_prefix("sqlite://").unwrap();
            path.split('?').next().unwrap().to_owned()
        });
        let h = Arc::new(Harness {
            db,
            sqlite_path,
            cache,
            storage: Storage { faulty, redis },
            relay: Mutex::new(None),
            rows: seed.into_iter().map(Mutex::new).collect(),
            ledger: Ledger::new(usize::try_from(ROWS).unwrap(), |id| {
                i64::from(bucket_of(i64::try_from(id).unwrap()))
            }),
            config,
            started: Instant::now(),
            writers_done: AtomicBool::new(false),
            reads: AtomicU64::new(0),
            lagging: AtomicU64::new(0),
            read_errors: AtomicU64::new(0),
            write_errors: AtomicU64::new(0),
            violations: AtomicU64::new(0),
            details: std::sync::Mutex::new(Vec::new()),
            writes: std::sync::Mutex::new(BTreeMap::new()),
            injected: std::sync::Mutex::new(Vec::new()),
        });
        *h.relay.lock().await = Some(h.spawn_relay());
        h
    }

    fn conn(&self) -> &DatabaseConnection {
        &self.db.conn
    }

    fn spawn_relay(&self) -> outbox::RelayHandle {
        outbox::relay(self.conn(), self.cache.clone())
            .unwrap()
            .watch_type::<row::Model>()
            .poll_interval(Duration::from_millis(10))
            .build()
            .spawn()
    }

    fn now(&self) -> Duration {
        self.started.elapsed()
    }

    fn violation(&self, detail: String) {
        self.violations.fetch_add(1, Ordering::SeqCst);
        let mut details = self.details.lock().unwrap();
        if details.len() < 5 {
            details.push(format!("at {:?}: {detail}", self.now()));
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Writers

/// One or two distinct rows, locked in id order (so writers never deadlock), with the
/// versions they get: one more, and about one in three in the other bucket.
async fn lock_rows<'h>(
    h: &'h Harness,
    rng: &mut Rng,
    two: bool,
) -> Vec<(MutexGuard<'h, row::Model>, row::Model)> {
    let rows = u64::try_from(ROWS).unwrap();
    let first = i64::try_from(rng.next(rows)).unwrap();
    let mut ids = vec![first];
    if two {
        ids.push((first + 1 + i64::try_from(rng.next(rows - 1)).unwrap()) % ROWS);
    }
    ids.sort_unstable();
    let mut locked = Vec::new();
    for id in ids {
        let guard = h.rows[usize::try_from(id).unwrap()].lock().await;
        let mut to = guard.clone();
        to.version += 1;
        if rng.next(3) == 0 {
            to.bucket = (to.bucket + 1) % BUCKETS;
        }
        h.ledger.begin(id);
        locked.push((guard, to));
    }
    locked
}

/// An update of `from` to `to` that sets only the columns that change (the hooks read the
/// old row only when a watched column is `Set`).
fn update(from: &row::Model, to: &row::Model) -> row::ActiveModel {
    let mut am = from.clone().into_active_model();
    am.version = Set(to.version);
    if to.bucket != from.bucket {
        am.bucket = Set(to.bucket);
    }
    am
}

fn update_sql(to: &row::Model) -> String {
    format!(
        "UPDATE stress_row SET version = {}, bucket = {} WHERE id = {}",
        to.version, to.bucket, to.id
    )
}

/// Runs `sql` through the database's command-line client: a writer this process knows
/// nothing about.
async fn other_process(h: &Harness, sql: &str) -> Result<(), String> {
    let mut command = match h.config.kind {
        Kind::Postgres => {
            let schema = h.db.schema.as_deref().unwrap();
            let mut c = tokio::process::Command::new("psql");
            c.args([&h.db.url, "-v", "ON_ERROR_STOP=1", "-q", "-c"])
                .arg(format!("SET search_path TO \"{schema}\"; {sql}"));
            c
        }
        Kind::MySql => {
            let database = h.db.url.rsplit('/').next().unwrap();
            let mut c = tokio::process::Command::new("mariadb");
            c.args(["-h", "127.0.0.1", "-u", "root", database, "-e", sql]);
            c
        }
        Kind::Sqlite => {
            // Python's sqlite3 module: scripts/test installs python3, not the sqlite3 shell.
            let mut c = tokio::process::Command::new("python3");
            c.arg("-c")
                .arg(
                    "import sqlite3, sys\n\
                     c = sqlite3.connect(sys.argv[1], timeout=10)\n\
                     c.execute(sys.argv[2])\n\
                     c.commit()",
                )
                .arg(h.sqlite_path.as_deref().unwrap())
                .arg(sql);
            c
        }
    };
    let out = command.output().await.map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// Writes `locked` on `path`; returns whether it may have failed (an error after which the
/// database decides what committed).
async fn write(
    h: &Harness,
    path: Path,
    locked: &[(MutexGuard<'_, row::Model>, row::Model)],
) -> Result<(), String> {
    let db = h.conn();
    let (from, to) = (&*locked[0].0, &locked[0].1);
    match path {
        Path::Save => update(from, to)
            .update(db)
            .await
            .map(drop)
            .map_err(|e| e.to_string()),
        Path::Bulk => seaorm::bulk::update_many::<row::Entity>()
            .set(row::Column::Version, to.version)
            .set(row::Column::Bucket, to.bucket)
            .filter(row::Column::Id.eq(to.id))
            .exec(db)
            .await
            .map(drop)
            .map_err(|e| e.to_string()),
        Path::Transaction => {
            let updates: Vec<_> = locked.iter().map(|(g, to)| update(g, to)).collect();
            seaorm::transaction(db, |txn| {
                Box::pin(async move {
                    for am in updates {
                        am.update(txn).await?;
                    }
                    Ok::<_, DbErr>(())
                })
            })
            .await
            .map_err(|e| e.to_string())
        }
        Path::RawSql => db
            .execute_unprepared(&update_sql(to))
            .await
            .map(drop)
            .map_err(|e| e.to_string()),
        Path::OtherProcess => other_process(h, &update_sql(to)).await,
        Path::Replace => db
            .execute_unprepared(&format!(
                "REPLACE INTO stress_row (id, version, bucket) VALUES ({}, {}, {})",
                to.id, to.version, to.bucket
            ))
            .await
            .map(drop)
            .map_err(|e| e.to_string()),
        Path::OtherTimeZone => {
            let sql = update_sql(to);
            db.transaction::<_, _, DbErr>(|txn| {
                Box::pin(async move {
                    txn.execute_unprepared("SET time_zone = '+09:30'").await?;
                    txn.execute_unprepared(&sql).await?;
                    // The pooled session goes back to the server's zone.
                    txn.execute_unprepared("SET time_zone = DEFAULT").await?;
                    Ok(())
                })
            })
            .await
            .map_err(|e| e.to_string())
        }
    }
}

async fn writer(h: Arc<Harness>, w: u64) {
    let mut rng = Rng::derive(h.config.seed, 100 + w);
    for _ in 0..h.config.writes {
        let path = h.config.paths[usize::try_from(rng.next(h.config.paths.len() as u64)).unwrap()];
        let mut locked = lock_rows(&h, &mut rng, path == Path::Transaction).await;
        let result = write(&h, path, &locked).await;
        if let Err(e) = &result {
            // A failure may come after the commit (an invalidation that could not be
            // delivered): the database says what committed.
            h.write_errors.fetch_add(1, Ordering::Relaxed);
            eprintln!("seed {}: {path:?} failed: {e}", h.config.seed);
        }
        let mut finished = Vec::new();
        for (guard, to) in &mut locked {
            let now = row::Entity::find_by_id(to.id)
                .one(h.conn())
                .await
                .unwrap()
                .unwrap();
            if result.is_ok() {
                assert_eq!(now, *to, "{path:?} returned Ok without writing");
            }
            if now == *to {
                h.ledger.committed(to.id, to.version);
                **guard = to.clone();
                finished.push(to.clone());
            } else {
                h.ledger.abort(to.id);
            }
        }
        drop(locked);
        if path.through_relay() || result.is_err() {
            support::relay::delivered(h.conn()).await;
        }
        for to in finished {
            h.ledger.finish(to.id, to.version, i64::from(to.bucket));
        }
        *h.writes.lock().unwrap().entry(path).or_default() += 1;
    }
}

// ---------------------------------------------------------------------------------------------
// Readers

/// What one read returned.
#[derive(Debug)]
enum Answer {
    Row(row::Model),
    List(i32, Vec<row::Model>),
    Count(i32, u64),
}

impl Answer {
    /// The violations in this answer, described (empty when it is right).
    fn check(&self, before: &Snapshot, after: &Snapshot) -> Option<String> {
        let verdict = match self {
            Answer::Row(r) => before.check_row(r.id, r.version),
            Answer::List(bucket, rows) => {
                let rows: Vec<(i64, i64)> = rows.iter().map(|r| (r.id, r.version)).collect();
                before.check_list(after, i64::from(*bucket), &rows)
            }
            Answer::Count(bucket, n) => before.check_count(after, i64::from(*bucket), *n),
        };
        (verdict.stale + verdict.misplaced > 0).then(|| {
            let floors: Vec<i64> = (0..ROWS).map(|id| before.floor(id)).collect();
            format!(
                "{verdict:?}: read {self:?}; versions finished before the read, by id: {floors:?}"
            )
        })
    }

    fn lagging(&self, before: &Snapshot) -> bool {
        match self {
            Answer::Row(r) => before.lagging(r.id, r.version),
            Answer::List(_, rows) => rows.iter().any(|r| before.lagging(r.id, r.version)),
            Answer::Count(..) => false,
        }
    }
}

async fn read_one(
    cache: &Cache,
    db: &impl seaorm::CacheableConnection,
    rng: &mut Rng,
) -> Result<Answer, String> {
    let id = i64::try_from(rng.next(u64::try_from(ROWS).unwrap())).unwrap();
    let bucket = i32::try_from(rng.next(u64::try_from(BUCKETS).unwrap())).unwrap();
    let e = |e: seaorm::Error| e.to_string();
    Ok(match rng.next(3) {
        0 => Answer::Row(
            seaorm::query::find_by_id::<row::Entity, _>(cache, db, id)
                .await
                .map_err(e)?
                .expect("rows are never deleted"),
        ),
        1 => Answer::List(
            bucket,
            row::Entity::find()
                .order_by_asc(row::Column::Id)
                .cached(cache)
                .scoped(&row::ByBucket { bucket })
                .all(db)
                .await
                .map_err(e)?,
        ),
        _ => Answer::Count(
            bucket,
            row::Entity::find()
                .cached(cache)
                .scoped(&row::ByBucket { bucket })
                .count(db)
                .await
                .map_err(e)?,
        ),
    })
}

async fn reader(h: Arc<Harness>, r: u64) {
    let mut rng = Rng::derive(h.config.seed, 200 + r);
    while !h.writers_done.load(Ordering::SeqCst) {
        let before = h.ledger.snapshot();
        let answers = if rng.next(5) == 0 {
            // Two reads in one transaction, checked against the ledger at its start (the
            // transaction's view is at least that new).
            let (cache, seed) = (h.cache.clone(), rng.next(u64::MAX));
            seaorm::transaction(h.conn(), move |txn| {
                Box::pin(async move {
                    let mut rng = Rng::derive(seed, 0);
                    let first = read_one(&cache, txn, &mut rng).await;
                    let second = read_one(&cache, txn, &mut rng).await;
                    Ok::<_, DbErr>(vec![first, second])
                })
            })
            .await
            .unwrap_or_else(|e| vec![Err(e.to_string())])
        } else {
            vec![read_one(&h.cache, h.conn(), &mut rng).await]
        };
        let after = h.ledger.snapshot();
        for answer in answers {
            h.reads.fetch_add(1, Ordering::Relaxed);
            match answer {
                Ok(answer) => {
                    if let Some(v) = answer.check(&before, &after) {
                        h.violation(format!("reader {r}: {v}"));
                    }
                    if answer.lagging(&before) {
                        h.lagging.fetch_add(1, Ordering::Relaxed);
                    }
                }
                Err(_) => {
                    h.read_errors.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        // Pacing, not synchronisation: readers spinning flat out would starve the writers
        // and the other tests on a small machine.
        tokio::time::sleep(Duration::from_micros(500)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// The nemesis

/// Deletes up to `n` random keys matching `pattern` on the private server.
async fn delete_random(h: &Harness, kind: &str, rng: &mut Rng) -> String {
    let (server, prefix) = h.storage.redis.as_ref().unwrap();
    let url = server.lock().unwrap().url();
    let Ok(mut c) = redis::Client::open(url)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
    else {
        return "server down".into();
    };
    let keys: Vec<Vec<u8>> = redis::cmd("KEYS")
        .arg(format!("{{{prefix}}}:{kind}:*"))
        .query_async(&mut c)
        .await
        .unwrap_or_default();
    if keys.is_empty() {
        return "none there".into();
    }
    let n = 1 + rng.next(keys.len() as u64 / 2 + 1);
    let mut deleted = 0;
    for _ in 0..n {
        let key = &keys[usize::try_from(rng.next(keys.len() as u64)).unwrap()];
        let gone: u64 = redis::cmd("DEL")
            .arg(key)
            .query_async(&mut c)
            .await
            .unwrap_or(0);
        deleted += gone;
    }
    format!("{deleted} of {} keys", keys.len())
}

async fn inject(h: &Harness, fault: Fault, rng: &mut Rng) -> String {
    match fault {
        Fault::DeleteEntries => delete_random(h, "e", rng).await,
        Fault::DeleteStamps => {
            let pause = Duration::from_millis(20 + rng.next(80));
            h.storage.faulty.close_puts();
            tokio::time::sleep(pause).await;
            let deleted = delete_random(h, "s", rng).await;
            h.storage.faulty.open_puts();
            format!("{deleted}, puts held {pause:?}")
        }
        Fault::RestartRedis => {
            let (server, _) = h.storage.redis.as_ref().unwrap();
            let server = Arc::clone(server);
            tokio::task::spawn_blocking(move || {
                let mut server = server.lock().unwrap();
                server.kill();
                server.restart();
            })
            .await
            .unwrap();
            "restarted empty".into()
        }
        Fault::RestoreSnapshot => {
            let (server, _) = h.storage.redis.as_ref().unwrap();
            let url = server.lock().unwrap().url();
            let saved: redis::RedisResult<()> = match redis::Client::open(url)
                .unwrap()
                .get_multiplexed_async_connection()
                .await
            {
                Ok(mut c) => redis::cmd("SAVE").query_async(&mut c).await,
                Err(e) => Err(e),
            };
            if let Err(e) = saved {
                return format!("no snapshot: {e}");
            }
            // Long enough for writes to land between the snapshot and the crash.
            let after = Duration::from_millis(100 + rng.next(600));
            tokio::time::sleep(after).await;
            let server = Arc::clone(server);
            tokio::task::spawn_blocking(move || server.lock().unwrap().restart_from_snapshot())
                .await
                .unwrap();
            format!("restarted from a snapshot {after:?} old")
        }
        Fault::RestartRelay => {
            let pause = Duration::from_millis(rng.next(150));
            let mut relay = h.relay.lock().await;
            if let Some(old) = relay.take() {
                old.shutdown().await;
            }
            tokio::time::sleep(pause).await;
            *relay = Some(h.spawn_relay());
            format!("relay down for {pause:?}")
        }
        Fault::Reinstall => {
            outbox::install(h.conn(), &[row::Model::watched_table()])
                .await
                .unwrap();
            "installed again".into()
        }
        Fault::PauseLoads => {
            // A deliberately paused loader: every put waits at the gate for this long.
            let pause = Duration::from_millis(20 + rng.next(180));
            h.storage.faulty.close_puts();
            tokio::time::sleep(pause).await;
            h.storage.faulty.open_puts();
            format!("puts held {pause:?}")
        }
    }
}

async fn nemesis(h: Arc<Harness>) {
    let mut rng = Rng::derive(h.config.seed, 1);
    let faults = &h.config.faults;
    loop {
        let gap = Duration::from_millis(20 + rng.next(200));
        let fault = faults[usize::try_from(rng.next(faults.len() as u64)).unwrap()];
        tokio::time::sleep(gap).await;
        if h.writers_done.load(Ordering::SeqCst) {
            return;
        }
        let at = h.now();
        let detail = inject(&h, fault, &mut rng).await;
        h.injected
            .lock()
            .unwrap()
            .push(Injected { at, fault, detail });
    }
}

// ---------------------------------------------------------------------------------------------
// Runs

/// What one run saw.
#[derive(Default)]
struct Outcome {
    runs: u64,
    reads: u64,
    lagging: u64,
    read_errors: u64,
    write_errors: u64,
    violations: u64,
    writes: BTreeMap<Path, u64>,
    faults: BTreeMap<Fault, u64>,
}

impl Outcome {
    fn add(&mut self, o: Outcome) {
        self.runs += o.runs;
        self.reads += o.reads;
        self.lagging += o.lagging;
        self.read_errors += o.read_errors;
        self.write_errors += o.write_errors;
        self.violations += o.violations;
        for (p, n) in o.writes {
            *self.writes.entry(p).or_default() += n;
        }
        for (f, n) in o.faults {
            *self.faults.entry(f).or_default() += n;
        }
    }

    fn summary(&self) -> String {
        format!(
            "{} runs, {} reads ({} errors), stale fraction {:.4} ({} reads older than a \
             committed write still being invalidated), {} violations; writes {:?} ({} errors); \
             faults {:?}",
            self.runs,
            self.reads,
            self.read_errors,
            self.lagging as f64 / self.reads.max(1) as f64,
            self.lagging,
            self.violations,
            self.writes,
            self.write_errors,
            self.faults
        )
    }
}

/// One seeded run: what it saw and, on a violation, the report (the seed, the configuration,
/// the first violations and the fault schedule).
async fn run(config: Config, name: &str) -> (Outcome, Option<String>) {
    let h = Harness::new(config, name).await;
    let invalidator = Invalidator::new(h.cache.clone());
    let nemesis = tokio::spawn(nemesis(Arc::clone(&h)));
    let readers: Vec<_> = (0..READERS)
        .map(|r| tokio::spawn(invalidator.clone().scope(reader(Arc::clone(&h), r))))
        .collect();
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| tokio::spawn(invalidator.clone().scope(writer(Arc::clone(&h), w))))
        .collect();
    for t in writers {
        t.await.expect("a writer panicked");
    }
    h.writers_done.store(true, Ordering::SeqCst);
    for t in readers {
        t.await.expect("a reader panicked");
    }
    nemesis.await.expect("the nemesis panicked");
    if let Some(relay) = h.relay.lock().await.take() {
        relay.shutdown().await;
    }
    let mut faults = BTreeMap::new();
    for i in h.injected.lock().unwrap().iter() {
        *faults.entry(i.fault).or_default() += 1;
    }
    let outcome = Outcome {
        runs: 1,
        reads: h.reads.load(Ordering::Relaxed),
        lagging: h.lagging.load(Ordering::Relaxed),
        read_errors: h.read_errors.load(Ordering::Relaxed),
        write_errors: h.write_errors.load(Ordering::Relaxed),
        violations: h.violations.load(Ordering::SeqCst),
        writes: h.writes.lock().unwrap().clone(),
        faults,
    };
    let mut report = None;
    if outcome.violations > 0 {
        let schedule: Vec<String> = h
            .injected
            .lock()
            .unwrap()
            .iter()
            .map(|i| format!("  at {:?}: {:?} ({})", i.at, i.fault, i.detail))
            .collect();
        report = Some(format!(
            "NEMESIS_SEED={} found {} violations (replay: NEMESIS_SEED={}{} cargo test -p \
             matroska-tests --test nemesis -- {name})\nconfiguration: {:?}\nfirst violations:\n  \
             {}\nfault schedule:\n{}\n{}",
            h.config.seed,
            outcome.violations,
            h.config.seed,
            if h.config.writes == WRITES {
                ""
            } else {
                " NEMESIS_MINUTES=0"
            },
            h.config,
            h.details.lock().unwrap().join("\n  "),
            schedule.join("\n"),
            outcome.summary()
        ));
    }
    (outcome, report)
}

/// The seed of a test: `NEMESIS_SEED`, else a fixed one per test (CI runs are repeatable).
fn seed(name: &str) -> u64 {
    match std::env::var("NEMESIS_SEED") {
        Ok(s) => s.parse().expect("NEMESIS_SEED is a number"),
        Err(_) => name.bytes().fold(0xCBF2_9CE4_8422_2325, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x100_0000_01B3)
        }),
    }
}

/// A short run of `name`'s seed, or with `NEMESIS_MINUTES` a soak of successive seeds (at
/// least one run, five times as many writes each); panics on the first violation.
async fn check(kind: Kind, store: Store, name: &str) {
    let first = seed(name);
    let minutes: Option<f64> = std::env::var("NEMESIS_MINUTES")
        .ok()
        .map(|m| m.parse().expect("NEMESIS_MINUTES is a number"));
    let Some(minutes) = minutes else {
        let config = Config::new(first, kind, store, WRITES);
        eprintln!("{name}: {config:?}");
        let started = Instant::now();
        let (o, violation) = run(config, name).await;
        eprintln!("{name}: {:?}, {}", started.elapsed(), o.summary());
        if let Some(report) = violation {
            panic!("{report}");
        }
        assert!(
            o.reads > 0 && o.faults.values().sum::<u64>() > 0,
            "nothing happened"
        );
        return;
    };
    let until = Instant::now() + Duration::from_secs_f64(minutes * 60.0);
    let mut total = Outcome::default();
    let mut seed = first;
    loop {
        let (o, violation) = run(Config::new(seed, kind, store, WRITES * 5), name).await;
        total.add(o);
        if let Some(report) = violation {
            eprintln!(
                "{name} soak from seed {first}, stopped: {}",
                total.summary()
            );
            panic!("{report}");
        }
        seed = seed.wrapping_add(1);
        if Instant::now() >= until {
            break;
        }
    }
    eprintln!("{name} soak from seed {first}: {}", total.summary());
    assert!(total.reads > 0, "nothing happened");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_memory() {
    check(Kind::Postgres, Store::Memory, "postgres_memory").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_redis() {
    check(Kind::Postgres, Store::Redis, "postgres_redis").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_redis_near() {
    check(Kind::Postgres, Store::RedisNear, "postgres_redis_near").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn mariadb_memory() {
    check(Kind::MySql, Store::Memory, "mariadb_memory").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn mariadb_redis() {
    check(Kind::MySql, Store::Redis, "mariadb_redis").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_memory() {
    check(Kind::Sqlite, Store::Memory, "sqlite_memory").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_redis() {
    check(Kind::Sqlite, Store::Redis, "sqlite_redis").await;
}

#[cfg(feature = "cluster")]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_cluster() {
    check(Kind::Postgres, Store::Cluster, "postgres_cluster").await;
}
