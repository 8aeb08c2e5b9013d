//! The adversary in the suite: a seeded, nemesis-driven consistency checker (in the spirit of
//! Jepsen and FoundationDB's simulation tests).
//!
//! Writers bump the versions of a few rows (and move them between two buckets, a watched
//! column) on every write path the database has: a hooked SeaORM save, the invalidating bulk
//! `update_many`, a hooked save in `seaorm::transaction`, raw SQL on another pooled
//! connection, raw SQL from another process (`psql`, `mariadb`, Python's `sqlite3`), `REPLACE`
//! (SQLite, MariaDB), a session in another time zone (MariaDB), and `diesel::update`s in a
//! Diesel transaction on a sync Diesel connection (a second model of the table, `drow`).
//! Hooked paths finish their write in the [`Ledger`] when the save returns (unless its
//! invalidation failed and waits in the retry queue); the others once the outbox relay
//! delivered it to the main cache's consumer (`support::relay::delivered_to`). Readers read
//! through cached queries on the same cache: SeaORM's (a row by id, a bucket's list and a
//! bucket's count, and two of those inside `seaorm::transaction`) and matroska-diesel's (`find`,
//! a scoped `load`, a scoped `count`); `NEMESIS_READERS=diesel` or `seaorm` keeps one.
//!
//! Foreign-key cascades: two more rows of the table are parents of `stress_child` rows
//! (`ON DELETE CASCADE`). A parents' writer deletes a parent (raw SQL or a hooked SeaORM
//! delete: the children go with it, unseen by any hook and, on MariaDB, by any trigger),
//! adds a child, or inserts a deleted parent again with 0–3 children; readers count a
//! parent's children through cached scoped counts (SeaORM and Diesel), checked against the
//! [`Generations`] of each parent's child count.
//!
//! A nemesis injects faults at times drawn from the seed: it deletes random entries and
//! stamps on Redis, restarts the private `redis-server` (empty, or from a snapshot it saved
//! 0.1–0.7 s before: entries and stamps older than the invalidations since), kills the relay
//! and starts another one later, re-runs the outbox `install`, pauses every load's put
//! (a loader held past the memory backend's stale window, which the seed may shorten to
//! 40 ms; the seed may also shorten the entries' TTL), runs a relay for a second cache on the
//! same outbox for a while and then stops or abandons it, and (Cluster: a private cluster of
//! 3 masters and 3 replicas per run, invalidations waiting for a replica) kills a master and
//! waits for its replica to take over: always first, and drawn again in soaks.
//!
//! The checker ([`support::ledger`]): no read may return a row older than a write that
//! finished before the read started; a row no write touched during the read must be in
//! exactly its bucket's list; a count lies between the settled rows of its bucket and those
//! plus the unsettled ones; a parent's child count is the count after a write no older than
//! the last one finished before the read.
//!
//! The seed picks the configuration, each task's choices (paths, rows, reads) and the fault
//! schedule; the interleaving itself is the machine's, so a seed reproduces the schedule, not
//! the exact run. `NEMESIS_SEED=<n>` runs that seed; `NEMESIS_MINUTES=<m>` turns each test
//! into a soak (successive seeds until the time is up) that prints reads, faults by kind,
//! violations and the stale fraction (reads older than a committed write whose invalidation
//! was still on its way: allowed, and the lag the product has). A violation fails the test
//! with the seed, the configuration and the schedule so far. `NEMESIS_TRACE=1` prints each
//! write as it finishes.
#![cfg(all(
    feature = "seaorm",
    feature = "diesel-postgres",
    feature = "diesel-mysql"
))]
#![allow(clippy::unwrap_used)]

mod seaorm_blog;
mod support;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use matroska::backend::Backend;
use matroska::backend::memory::{MemoryBackend, MemoryConfig};
use matroska::backend::redis::RedisConfig;
use matroska::diesel::CachedExt as _;
use matroska::seaorm::{self, CachedExt, Invalidator, outbox};
use matroska::{Cache, WatchedTable};
use sea_orm::{
    ActiveModelTrait, ColumnTrait, ConnectionTrait, DatabaseConnection, DbErr, EntityTrait,
    IntoActiveModel, PaginatorTrait, QueryFilter, QueryOrder, Schema, Set, TransactionTrait,
};
use support::db::DieselConn as _;
use tokio::sync::{Mutex, MutexGuard};

use diesel::prelude::*;
use seaorm_blog::stress_row as row;
use support::Rng;
use support::db::{Kind, ScratchDb};
use support::faults::Faulty;
use support::ledger::{GenerationSnapshot, Generations, Ledger, Snapshot};

const ROWS: i64 = 8;
const BUCKETS: i32 = 2;
const WRITERS: u64 = 3;
const READERS: u64 = 4;
/// Writes per writer in one short (CI) run.
const WRITES: u64 = 30;

/// Parents: rows of the rows table (ids `PARENT..PARENT + PARENTS`, in a bucket no reader
/// lists) that have children; deleted (the children go by `ON DELETE CASCADE`) and inserted
/// again.
const PARENT: i64 = 100;
const PARENTS: i64 = 2;
const PARENT_BUCKET: i32 = 7;
/// Children of each parent at the start.
const CHILDREN: u64 = 2;

/// The child table: `stress_child.parent_id` references a parent `ON DELETE CASCADE`; readers
/// count a parent's children through a cached scoped count.
mod child {
    use sea_orm::entity::prelude::*;
    use serde::{Deserialize, Serialize};

    /// Generates `ByParentId`.
    #[derive(
        Clone, Debug, PartialEq, Eq, DeriveEntityModel, Serialize, Deserialize, matroska::CacheDeps,
    )]
    #[sea_orm(table_name = "stress_child")]
    #[scope(parent_id)]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: i64,
        pub parent_id: i64,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    matroska::seaorm::active_model_behavior!(ActiveModel);
}

/// The same table as a Diesel model (a second model on it, as an app with both ORMs has):
/// Diesel writes and cached Diesel reads on the SeaORM rows, through the same cache.
mod drow {
    diesel::table! {
        stress_row (id) {
            id -> BigInt,
            version -> BigInt,
            bucket -> Integer,
        }
    }

    /// Generates `DieselRowByBucket`: the scope condition, also a Diesel filter.
    #[derive(
        Clone,
        Debug,
        diesel::Queryable,
        diesel::Selectable,
        diesel::Identifiable,
        serde::Serialize,
        serde::Deserialize,
        matroska::CacheDeps,
    )]
    #[diesel(table_name = stress_row)]
    #[scope(bucket)]
    pub struct DieselRow {
        pub id: i64,
        pub version: i64,
        pub bucket: i32,
    }

    diesel::table! {
        stress_child (id) {
            id -> BigInt,
            parent_id -> BigInt,
        }
    }

    /// Generates `DieselChildByParentId`.
    #[derive(
        Clone,
        Debug,
        diesel::Queryable,
        diesel::Selectable,
        serde::Serialize,
        serde::Deserialize,
        matroska::CacheDeps,
    )]
    #[diesel(table_name = stress_child)]
    #[scope(parent_id)]
    pub struct DieselChild {
        pub id: i64,
        pub parent_id: i64,
    }

    /// The same table without a scope: its foreign key is tracked (`belongs_to`, issue 20),
    /// so `.derived()` bounds its counts by the tracked-column rule; the triggers record
    /// `parent_id` in every row for it.
    #[derive(
        Clone,
        Debug,
        diesel::Queryable,
        diesel::Selectable,
        diesel::Associations,
        serde::Serialize,
        serde::Deserialize,
        matroska::CacheDeps,
    )]
    #[diesel(table_name = stress_child)]
    #[diesel(belongs_to(DieselRow, foreign_key = parent_id))]
    pub struct DieselChildOf {
        pub id: i64,
        pub parent_id: i64,
    }

    impl From<DieselRow> for super::row::Model {
        fn from(r: DieselRow) -> Self {
            super::row::Model {
                id: r.id,
                version: r.version,
                bucket: r.bucket,
            }
        }
    }
}

/// A sync Diesel connection to the run's database (Diesel's queries are typed per backend).
enum DieselConn {
    Postgres(diesel::PgConnection),
    MySql(diesel::MysqlConnection),
    Sqlite(diesel::SqliteConnection),
}

impl DieselConn {
    fn open(db: &ScratchDb) -> Self {
        match db.kind {
            Kind::Postgres => DieselConn::Postgres(diesel::PgConnection::open(db)),
            Kind::MySql => DieselConn::MySql(diesel::MysqlConnection::open(db)),
            Kind::Sqlite => DieselConn::Sqlite(diesel::SqliteConnection::open(db)),
        }
    }
}

/// Runs `$body` with `$c` bound to the `&mut` connection of whichever backend `$conn` is.
macro_rules! with_diesel {
    ($conn:expr, $c:ident => $body:expr) => {
        match $conn {
            DieselConn::Postgres($c) => $body,
            DieselConn::MySql($c) => $body,
            DieselConn::Sqlite($c) => $body,
        }
    };
}

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
    /// The same with the near cache on (issue 19), failovers included.
    ClusterNear,
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
    /// Two `diesel::update`s in a Diesel transaction on a sync Diesel connection (Diesel has no
    /// hooks: the triggers record them).
    Diesel,
    /// The parents' writer ([`parents_writer`]), for the report only: its own task, not drawn.
    Cascade,
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
            Path::Diesel,
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
    /// Start a relay for a second, independent cache (another prefix on the private Redis,
    /// or a memory backend) on the same outbox, let it deliver for a while, then stop it, or
    /// abandon it (dropped without shutdown: its consumer stays registered until it expires).
    /// Every consumer receives every change (issue 16, item 4): the main cache's relay must
    /// still get every row.
    SecondCache,
    /// Kill the master of a random slot, wait until its replica took over, start the old
    /// master again (it rejoins as the new one's replica) and wait until it is in sync.
    Failover,
    /// The same after cutting the master's replicas off for 50–300 ms (SIGSTOP, and the
    /// master drops their links): writes acknowledged by the master alone meanwhile are lost
    /// with it, which is what `wait_for_replicas` guards (a partition, then the crash).
    PartitionFailover,
}

/// Fault kinds left out of the default runs because the fix for what they find is not on
/// main yet (turn them on with `NEMESIS_ALL_FAULTS=1`).
///
/// `PartitionFailover` finds stale reads on main, with `wait_for_replicas(1)`, not yet
/// explained, and intermittent: `NEMESIS_ALL_FAULTS=1 NEMESIS_SEED=3 .. postgres_cluster`
/// (3 violations in 1 of 6 runs: a row one version old ~0.5 s after the failover ended;
/// seeds 1–6 once each: only 3), and on an earlier
/// schedule seed 1 in about one run of 4 to 14 (a row's cached list one version old, the
/// version a hooked save had invalidated — returning `Ok`, so `WAIT` was acked — about 70 ms
/// before the master died; writes invalidated later during the partition failed, were
/// retried and were not stale). Plain kills (`Failover`) on that seed: 0 of 12.
/// `DeleteStamps` was here until the stamp re-creation fix (issue 16, item 1: created stamps
/// carry the clock's count) landed; before it, it found stale reads on main
/// (`NEMESIS_SEED=16902992922294168202 NEMESIS_MINUTES=0 .. postgres_redis`: a stale list
/// 20 ms after held puts were let go with 5 stamps deleted; `NEMESIS_SEED=15968181054327747194
/// .. mariadb_redis`: a stale row).
const AWAITING_FIXES: &[Fault] = &[Fault::PartitionFailover];

fn all_faults() -> bool {
    std::env::var("NEMESIS_ALL_FAULTS").is_ok_and(|v| v == "1")
}

impl Fault {
    /// The kinds the nemesis draws from; `soak`: a long run, which may also draw the slow
    /// ones (a failover takes 2–3 s: a short run has only its first, [`Config::first`]).
    fn on(store: Store, soak: bool) -> Vec<Fault> {
        let mut faults = vec![
            Fault::RestartRelay,
            Fault::Reinstall,
            Fault::PauseLoads,
            Fault::SecondCache,
        ];
        if matches!(store, Store::Cluster | Store::ClusterNear) && soak {
            faults.extend([Fault::Failover, Fault::PartitionFailover]);
        }
        if matches!(store, Store::Redis | Store::RedisNear) {
            faults.extend([
                Fault::DeleteEntries,
                Fault::DeleteStamps,
                Fault::RestartRedis,
                Fault::RestoreSnapshot,
            ]);
        }
        faults.retain(|f| all_faults() || !AWAITING_FIXES.contains(f));
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
    /// The nemesis's first fault, whatever the seed draws (a failover on Cluster: a short run
    /// would rarely draw it otherwise); writers go on for a third of their writes after it.
    first: Option<Fault>,
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
            faults: Fault::on(store, writes > WRITES),
            first: matches!(store, Store::Cluster | Store::ClusterNear).then_some(
                if all_faults() {
                    Fault::PartitionFailover
                } else {
                    Fault::Failover
                },
            ),
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
    /// The run's private cluster (Cluster only), which the nemesis fails over.
    cluster: Option<Arc<std::sync::Mutex<support::cluster::PrivateCluster>>>,
}

struct Harness {
    config: Config,
    db: ScratchDb,
    /// The SQLite file, for the `sqlite3` process.
    sqlite_path: Option<String>,
    cache: Cache,
    storage: Storage,
    relay: Mutex<Option<outbox::RelayHandle>>,
    /// The main cache's outbox consumer (every relay of [`Harness::spawn_relay`] is it).
    consumer: String,
    /// The hooks' invalidator (its retry queue).
    invalidator: Invalidator,
    /// Idle Diesel connections.
    diesel: std::sync::Mutex<Vec<DieselConn>>,
    /// Per parent: whether it exists, its number of children; held from a write's choice to
    /// its commit.
    parents: Vec<Mutex<Option<u64>>>,
    /// Per parent, the number of its children, by write.
    children: Generations,
    /// The next child id.
    next_child: AtomicI64,
    /// Whether the configured first fault ([`Config::first`]) is done (true when none).
    first_done: AtomicBool,
    /// Per row: its committed state; held from choosing a write's version to its commit.
    rows: Vec<Mutex<row::Model>>,
    ledger: Ledger,
    started: Instant,
    writers_done: AtomicBool,
    reads: AtomicU64,
    /// Reads of a parent's number of children.
    child_reads: AtomicU64,
    lagging: AtomicU64,
    read_errors: AtomicU64,
    write_errors: AtomicU64,
    violations: AtomicU64,
    /// The first violations, described.
    details: std::sync::Mutex<Vec<String>>,
    writes: std::sync::Mutex<BTreeMap<Path, u64>>,
    injected: std::sync::Mutex<Vec<Injected>>,
}

fn watched_tables() -> Vec<matroska::TableSpec> {
    // The Diesel models' specs equal the SeaORM ones but for `DieselChildOf`'s tracked
    // foreign key, which the triggers must record too (a union per table).
    vec![
        row::Model::watched_table(),
        child::Model::watched_table(),
        drow::DieselChildOf::watched_table(),
    ]
}

/// Inserts parent `p` (its row) with `children` children, ids from `first_child` on.
fn insert_parent_sql(p: i64, children: u64, first_child: i64) -> Vec<String> {
    let id = PARENT + p;
    let mut sql = vec![format!(
        "INSERT INTO stress_row (id, version, bucket) VALUES ({id}, 0, {PARENT_BUCKET})"
    )];
    for c in 0..i64::try_from(children).unwrap() {
        sql.push(format!(
            "INSERT INTO stress_child (id, parent_id) VALUES ({}, {id})",
            first_child + c
        ));
    }
    sql
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
        let engine = if config.kind == Kind::MySql {
            " ENGINE=InnoDB"
        } else {
            ""
        };
        db.conn
            .execute_unprepared(&format!(
                "CREATE TABLE stress_child (id BIGINT NOT NULL PRIMARY KEY, parent_id BIGINT NOT \
                 NULL, FOREIGN KEY (parent_id) REFERENCES stress_row (id) ON DELETE CASCADE){engine}"
            ))
            .await
            .unwrap();
        for p in 0..PARENTS {
            for sql in insert_parent_sql(p, CHILDREN, 1 + p * 2) {
                db.conn.execute_unprepared(&sql).await.unwrap();
            }
        }
        // Installed with the child table in place: on MariaDB the install finds the foreign
        // key's actions (no trigger fires for them) and records them from the parent's.
        outbox::install(&db.conn, &watched_tables()).await.unwrap();
        let mut cluster_handle = None;
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
            Store::Cluster | Store::ClusterNear => {
                let cluster = tokio::task::spawn_blocking(support::cluster::PrivateCluster::start)
                    .await
                    .unwrap();
                // A failover loses what the dead master had not replicated: invalidations
                // wait for a replica, or a promoted replica serves entries whose stamps it
                // never got (ARCHITECTURE.md, "Replication").
                let mut redis_config = RedisConfig::cluster(cluster.urls(), support::unique(name))
                    .timeout(Duration::from_millis(500))
                    .wait_for_replicas(1);
                if config.store == Store::ClusterNear {
                    redis_config =
                        redis_config.near_cache(matroska::backend::redis::NearConfig::new(1 << 22));
                }
                let backend = support::redis_backend_with(redis_config).await;
                cluster_handle = Some(Arc::new(std::sync::Mutex::new(cluster)));
                (Arc::new(backend), None)
            }
        };
        let faulty = Arc::new(Faulty::new_arc(inner));
        let mut builder = Cache::builder_arc(Arc::clone(&faulty) as Arc<dyn Backend>);
        if let Some(ttl) = config.ttl {
            builder = builder.default_ttl(ttl);
        }
        let cache = builder.build().unwrap();
        let invalidator = Invalidator::new(cache.clone());
        let sqlite_path = (config.kind == Kind::Sqlite).then(|| {
            let path = db.url.strip_prefix("sqlite://").unwrap();
            path.split('?').next().unwrap().to_owned()
        });
        let h = Arc::new(Harness {
            db,
            sqlite_path,
            cache,
            storage: Storage {
                faulty,
                redis,
                cluster: cluster_handle,
            },
            relay: Mutex::new(None),
            consumer: String::new(),
            invalidator,
            diesel: std::sync::Mutex::new(Vec::new()),
            parents: (0..PARENTS).map(|_| Mutex::new(Some(CHILDREN))).collect(),
            children: Generations::new(usize::try_from(PARENTS).unwrap(), CHILDREN),
            next_child: AtomicI64::new(1 + PARENTS * i64::try_from(CHILDREN).unwrap()),
            first_done: AtomicBool::new(config.first.is_none()),
            rows: seed.into_iter().map(Mutex::new).collect(),
            ledger: Ledger::new(usize::try_from(ROWS).unwrap(), |id| {
                i64::from(bucket_of(i64::try_from(id).unwrap()))
            }),
            config,
            started: Instant::now(),
            writers_done: AtomicBool::new(false),
            reads: AtomicU64::new(0),
            child_reads: AtomicU64::new(0),
            lagging: AtomicU64::new(0),
            read_errors: AtomicU64::new(0),
            write_errors: AtomicU64::new(0),
            violations: AtomicU64::new(0),
            details: std::sync::Mutex::new(Vec::new()),
            writes: std::sync::Mutex::new(BTreeMap::new()),
            injected: std::sync::Mutex::new(Vec::new()),
        });
        let mut h = Arc::into_inner(h).unwrap();
        let relay = h.spawn_relay();
        h.consumer = relay.relay().consumer().to_owned();
        *h.relay.get_mut() = Some(relay);
        Arc::new(h)
    }

    fn conn(&self) -> &DatabaseConnection {
        &self.db.conn
    }

    fn spawn_relay(&self) -> outbox::RelayHandle {
        self.relay_builder(self.cache.clone())
            // Beats every 200 ms: it drops the second caches' abandoned consumers within the
            // run.
            .consumer_expiry(Duration::from_secs(2))
            .build()
            .spawn()
    }

    /// A relay of `cache` on the run's outbox, watching both models of the table (their
    /// union).
    fn relay_builder(&self, cache: Cache) -> matroska::outbox::RelayBuilder {
        outbox::relay(self.conn(), cache)
            .unwrap()
            .watch_type::<row::Model>()
            .watch_type::<drow::DieselRow>()
            .watch_type::<child::Model>()
            .watch_type::<drow::DieselChild>()
            .watch_type::<drow::DieselChildOf>()
            .poll_interval(Duration::from_millis(10))
            // A cluster failing over refuses invalidations for a second or two: retry soon.
            .retry_delay(Duration::from_millis(10), Duration::from_millis(200))
    }

    /// An idle Diesel connection, or a new one.
    fn diesel_conn(&self) -> DieselConn {
        let idle = self.diesel.lock().unwrap().pop();
        idle.unwrap_or_else(|| tokio::task::block_in_place(|| DieselConn::open(&self.db)))
    }

    fn diesel_done(&self, conn: DieselConn) {
        self.diesel.lock().unwrap().push(conn);
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
        Path::Diesel => {
            let mut conn = h.diesel_conn();
            let updates: Vec<(i64, i64, i32)> = locked
                .iter()
                .map(|(_, to)| (to.id, to.version, to.bucket))
                .collect();
            let written = tokio::task::block_in_place(|| {
                with_diesel!(&mut conn, c => c.transaction::<_, diesel::result::Error, _>(|c| {
                    for &(id, version, bucket) in &updates {
                        diesel::update(drow::stress_row::table.find(id))
                            .set((
                                drow::stress_row::version.eq(version),
                                drow::stress_row::bucket.eq(bucket),
                            ))
                            .execute(c)?;
                    }
                    Ok(())
                }))
            });
            h.diesel_done(conn);
            written.map_err(|e| e.to_string())
        }
        Path::Cascade => unreachable!("not drawn: the parents' writer writes it"),
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
    // Writes after the configured first fault (all of them when there is none).
    let mut after_first = 0;
    for i in 0.. {
        if i >= h.config.writes && after_first >= h.config.writes / 3 {
            break;
        }
        if h.first_done.load(Ordering::SeqCst) {
            after_first += 1;
        }
        let path = h.config.paths[usize::try_from(rng.next(h.config.paths.len() as u64)).unwrap()];
        let two = matches!(path, Path::Transaction | Path::Diesel);
        let mut locked = lock_rows(&h, &mut rng, two).await;
        let result = write(&h, path, &locked).await;
        let returned = h.now();
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
        // A hook whose invalidation failed (a cluster failing over) still returns Ok, by
        // design: its dependencies wait in the invalidator's retry queue, and the relay
        // invalidates the write too (ARCHITECTURE.md, failure policy). Such a write is
        // finished once the relay delivered it.
        let queued = h.invalidator.pending() > 0;
        if path.through_relay() || result.is_err() || queued {
            support::relay::delivered_to(h.conn(), &h.consumer).await;
        }
        if std::env::var("NEMESIS_TRACE").is_ok() {
            eprintln!(
                "{:?} {w} finished {path:?} {finished:?} (returned at {returned:?}, queued {queued})",
                h.now()
            );
        }
        for to in finished {
            h.ledger.finish(to.id, to.version, i64::from(to.bucket));
        }
        *h.writes.lock().unwrap().entry(path).or_default() += 1;
    }
}

/// The parents' writer: deletes a parent (raw SQL, or a hooked SeaORM delete; its children go
/// by the foreign key's `ON DELETE CASCADE`, which only the triggers see, or on MariaDB the
/// install's record of the foreign key), adds a child, or inserts a deleted parent again with
/// 0–3 children. Each write is finished once the relay delivered it to the main cache.
async fn parents_writer(h: Arc<Harness>) {
    let mut rng = Rng::derive(h.config.seed, 300);
    for _ in 0..h.config.writes {
        let p = rng.next(u64::try_from(PARENTS).unwrap());
        let key = usize::try_from(p).unwrap();
        let id = PARENT + i64::try_from(p).unwrap();
        let mut parent = h.parents[key].lock().await;
        let (kind, value, statements): (&str, u64, Vec<String>) = match *parent {
            Some(n) => match rng.next(3) {
                0 => (
                    "raw DELETE",
                    0,
                    vec![format!("DELETE FROM stress_row WHERE id = {id}")],
                ),
                1 => ("hooked delete", 0, Vec::new()),
                _ => {
                    let child = h.next_child.fetch_add(1, Ordering::SeqCst);
                    (
                        "child INSERT",
                        n + 1,
                        vec![format!(
                            "INSERT INTO stress_child (id, parent_id) VALUES ({child}, {id})"
                        )],
                    )
                }
            },
            None => {
                let n = rng.next(4);
                let first = h
                    .next_child
                    .fetch_add(i64::try_from(n).unwrap(), Ordering::SeqCst);
                (
                    "parent INSERT",
                    n,
                    insert_parent_sql(i64::try_from(p).unwrap(), n, first),
                )
            }
        };
        let generation = h.children.begin(key, value);
        let result = if statements.is_empty() {
            row::Model {
                id,
                version: 0,
                bucket: PARENT_BUCKET,
            }
            .into_active_model()
            .delete(h.conn())
            .await
            .map(drop)
        } else {
            h.conn()
                .transaction::<_, _, DbErr>(|txn| {
                    Box::pin(async move {
                        for sql in statements {
                            txn.execute_unprepared(&sql).await?;
                        }
                        Ok(())
                    })
                })
                .await
                .map_err(|e| DbErr::Custom(e.to_string()))
        };
        if let Err(e) = &result {
            h.write_errors.fetch_add(1, Ordering::Relaxed);
            eprintln!("seed {}: {kind} of parent {p} failed: {e}", h.config.seed);
        }
        // What the database holds now (this task alone writes the parents and children).
        let exists = row::Entity::find_by_id(id)
            .one(h.conn())
            .await
            .unwrap()
            .is_some();
        let n = child::Entity::find()
            .filter(child::Column::ParentId.eq(id))
            .count(h.conn())
            .await
            .unwrap();
        if result.is_ok() {
            assert_eq!(n, value, "{kind} returned Ok without writing");
        }
        h.children.commit(key, generation, n);
        *parent = exists.then_some(n);
        drop(parent);
        support::relay::delivered_to(h.conn(), &h.consumer).await;
        h.children.finish(key, generation);
        *h.writes.lock().unwrap().entry(Path::Cascade).or_default() += 1;
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
    /// The number of children of a parent (its index).
    Children(usize, u64),
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
            // Checked by `check_children`.
            Answer::Children(..) => return None,
        };
        (verdict.stale + verdict.misplaced > 0).then(|| {
            let floors: Vec<i64> = (0..ROWS).map(|id| before.floor(id)).collect();
            format!(
                "{verdict:?}: read {self:?}; versions finished before the read, by id: {floors:?}"
            )
        })
    }

    /// A count of children, against the parents' generations around the read.
    fn check_children(
        &self,
        h: &Harness,
        before: &GenerationSnapshot,
        after: &GenerationSnapshot,
    ) -> Option<String> {
        let Answer::Children(parent, n) = *self else {
            return None;
        };
        (!h.children.check(parent, before, after, n)).then(|| {
            format!(
                "parent {parent} has {n} children in a cached count; {} when the read began",
                h.children.floor(parent, before)
            )
        })
    }

    fn lagging(&self, before: &Snapshot) -> bool {
        match self {
            Answer::Row(r) => before.lagging(r.id, r.version),
            Answer::List(_, rows) => rows.iter().any(|r| before.lagging(r.id, r.version)),
            Answer::Count(..) | Answer::Children(..) => false,
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
    let parent = rng.next(u64::try_from(PARENTS).unwrap());
    // 7..=9: the same reads with dependencies derived from the query's own WHERE
    // (`.derived()`, issue 20) instead of the declared scope.
    Ok(match rng.next(10) {
        7 => Answer::List(
            bucket,
            row::Entity::find()
                .filter(row::Column::Bucket.eq(bucket))
                .order_by_asc(row::Column::Id)
                .cached(cache)
                .derived()
                .all(db)
                .await
                .map_err(e)?,
        ),
        8 => Answer::Count(
            bucket,
            row::Entity::find()
                .filter(row::Column::Bucket.eq(bucket))
                .cached(cache)
                .derived()
                .count(db)
                .await
                .map_err(e)?,
        ),
        9 => Answer::Children(
            usize::try_from(parent).unwrap(),
            child::Entity::find()
                .filter(child::Column::ParentId.eq(PARENT + i64::try_from(parent).unwrap()))
                .cached(cache)
                .derived()
                .count(db)
                .await
                .map_err(e)?,
        ),
        6 => Answer::Children(
            usize::try_from(parent).unwrap(),
            child::Entity::find()
                .cached(cache)
                .scoped(&child::ByParentId {
                    parent_id: PARENT + i64::try_from(parent).unwrap(),
                })
                .count(db)
                .await
                .map_err(e)?,
        ),
        0 | 1 => Answer::Row(
            seaorm::query::find_by_id::<row::Entity, _>(cache, db, id)
                .await
                .map_err(e)?
                .expect("rows are never deleted"),
        ),
        2 | 3 => Answer::List(
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

/// A cached Diesel read of the same rows: `find` by id, a bucket's scoped list or count.
async fn read_diesel(
    cache: &Cache,
    conn: &mut DieselConn,
    rng: &mut Rng,
) -> Result<Answer, String> {
    use drow::stress_row::dsl as t;
    let id = i64::try_from(rng.next(u64::try_from(ROWS).unwrap())).unwrap();
    let bucket = i32::try_from(rng.next(u64::try_from(BUCKETS).unwrap())).unwrap();
    let scope = drow::DieselRowByBucket { bucket };
    let parent = rng.next(u64::try_from(PARENTS).unwrap());
    let children = drow::DieselChildByParentId {
        parent_id: PARENT + i64::try_from(parent).unwrap(),
    };
    // 7..=11: the same reads with dependencies derived from the query's own WHERE
    // (`.derived()`, issue 20) instead of the declared scope; 11 through the tracked foreign
    // key of a model without a scope.
    let which = rng.next(12);
    let e = |e: matroska::diesel::Error| e.to_string();
    with_diesel!(conn, c => Ok(match which {
        7 => Answer::Row(
            t::stress_row
                .filter(t::id.eq(id))
                .cached(cache)
                .derived::<drow::DieselRow>()
                .first::<drow::DieselRow, _>(c)
                .await
                .map_err(e)?
                .expect("rows are never deleted")
                .into(),
        ),
        8 => Answer::List(
            bucket,
            t::stress_row
                .filter(t::bucket.eq(bucket))
                .order(t::id)
                .cached(cache)
                .derived::<drow::DieselRow>()
                .load::<drow::DieselRow, _>(c)
                .await
                .map_err(e)?
                .into_iter()
                .map(Into::into)
                .collect(),
        ),
        9 => Answer::Count(
            bucket,
            u64::try_from(
                t::stress_row
                    .filter(t::bucket.eq(bucket))
                    .cached(cache)
                    .derived::<drow::DieselRow>()
                    .count::<drow::DieselRow, _>(c)
                    .await
                    .map_err(e)?,
            )
            .unwrap(),
        ),
        11 => Answer::Children(
            usize::try_from(parent).unwrap(),
            u64::try_from(
                drow::stress_child::table
                    .filter(drow::stress_child::parent_id.eq(children.parent_id))
                    .cached(cache)
                    .derived::<drow::DieselChildOf>()
                    .count::<drow::DieselChildOf, _>(c)
                    .await
                    .map_err(e)?,
            )
            .unwrap(),
        ),
        10 => Answer::Children(
            usize::try_from(parent).unwrap(),
            u64::try_from(
                drow::stress_child::table
                    .filter(drow::stress_child::parent_id.eq(children.parent_id))
                    .cached(cache)
                    .derived::<drow::DieselChild>()
                    .count::<drow::DieselChild, _>(c)
                    .await
                    .map_err(e)?,
            )
            .unwrap(),
        ),
        6 => Answer::Children(
            usize::try_from(parent).unwrap(),
            u64::try_from(
                drow::stress_child::table
                    .cached(cache)
                    .scoped(&children)
                    .count::<drow::DieselChild, _>(c)
                    .await
                    .map_err(e)?,
            )
            .unwrap(),
        ),
        0 | 1 => Answer::Row(
            matroska::diesel::find::<drow::DieselRow, _, _, _>(cache, c, t::stress_row, id)
                .await
                .map_err(e)?
                .expect("rows are never deleted")
                .into(),
        ),
        2 | 3 => Answer::List(
            bucket,
            t::stress_row
                .order(t::id)
                .cached(cache)
                .scoped(&scope)
                .load::<drow::DieselRow, _>(c)
                .await
                .map_err(e)?
                .into_iter()
                .map(Into::into)
                .collect(),
        ),
        _ => Answer::Count(
            bucket,
            u64::try_from(
                t::stress_row
                    .cached(cache)
                    .scoped(&scope)
                    .count::<drow::DieselRow, _>(c)
                    .await
                    .map_err(e)?,
            )
            .unwrap(),
        ),
    }))
}

async fn reader(h: Arc<Harness>, r: u64) {
    let mut rng = Rng::derive(h.config.seed, 200 + r);
    let mut diesel: Option<DieselConn> = None;
    let only = std::env::var("NEMESIS_READERS").ok();
    while !h.writers_done.load(Ordering::SeqCst) {
        let before = h.ledger.snapshot();
        let children_before = h.children.snapshot();
        // `NEMESIS_READERS=diesel` (or `seaorm`) reads through that ORM only: to tell which
        // path a violation needs.
        let through = match only.as_deref() {
            Some("diesel") => rng.next(5),
            Some("seaorm") => 5 + rng.next(10),
            _ => rng.next(15),
        };
        let answers = if through < 5 {
            let conn = diesel.get_or_insert_with(|| h.diesel_conn());
            vec![read_diesel(&h.cache, conn, &mut rng).await]
        } else if through < 8 {
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
        let children_after = h.children.snapshot();
        for answer in answers {
            h.reads.fetch_add(1, Ordering::Relaxed);
            match answer {
                Ok(answer) => {
                    let orm = if through < 5 { "Diesel" } else { "SeaORM" };
                    if matches!(answer, Answer::Children(..)) {
                        h.child_reads.fetch_add(1, Ordering::Relaxed);
                    }
                    if let Some(v) = answer.check(&before, &after) {
                        h.violation(format!("reader {r} ({orm}): {v}"));
                    }
                    if let Some(v) = answer.check_children(&h, &children_before, &children_after) {
                        h.violation(format!("reader {r} ({orm}): {v}"));
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
            outbox::install(h.conn(), &watched_tables()).await.unwrap();
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
        Fault::SecondCache => {
            let (backend, store): (Arc<dyn Backend>, &str) = match &h.storage.redis {
                Some((server, _)) if rng.next(2) == 0 => {
                    let url = server.lock().unwrap().url();
                    let config = RedisConfig::new(url, support::unique("second"));
                    (
                        Arc::new(support::redis_backend_with(config).await),
                        "another Redis prefix",
                    )
                }
                _ => (Arc::new(MemoryBackend::default()), "a memory backend"),
            };
            let cache = Cache::builder_arc(backend).build().unwrap();
            let relay = h
                .relay_builder(cache)
                .consumer_expiry(Duration::from_millis(300 + rng.next(700)))
                .build()
                .spawn();
            let consumer = relay.relay().consumer().to_owned();
            let lived = Duration::from_millis(50 + rng.next(400));
            tokio::time::sleep(lived).await;
            let how = if rng.next(2) == 0 {
                // A crashed process: the consumer stays registered, its rows wait for it
                // until another relay drops it as expired.
                drop(relay);
                "abandoned"
            } else {
                // A private consumer is removed; a Redis prefix's stays until it expires.
                relay.shutdown().await;
                "shut down"
            };
            format!("{consumer} on {store}, {how} after {lived:?}")
        }
        Fault::Failover | Fault::PartitionFailover => {
            let cluster = Arc::clone(h.storage.cluster.as_ref().unwrap());
            let key = format!("k{}", rng.next(u64::MAX));
            let cut_off = (fault == Fault::PartitionFailover)
                .then(|| Duration::from_millis(50 + rng.next(250)));
            tokio::task::spawn_blocking(move || {
                let mut cluster = cluster.lock().unwrap();
                let started = Instant::now();
                let port = cluster.master_of(&key);
                let mut partition = String::new();
                if let Some(cut_off) = cut_off {
                    let replicas = cluster.partition_replicas(port);
                    std::thread::sleep(cut_off);
                    cluster.kill(port);
                    cluster.heal(&replicas);
                    partition = format!(", its replicas {replicas:?} cut off {cut_off:?} before");
                } else {
                    cluster.kill(port);
                }
                cluster.wait_for_failover(port);
                let failed_over = started.elapsed();
                cluster.restart(port);
                cluster.wait_for_replica(port);
                cluster.wait_until_healthy();
                format!(
                    "master {port} (slot of {key}) killed{partition}, failed over in \
                     {failed_over:?}, back as a replica after {:?}",
                    started.elapsed()
                )
            })
            .await
            .unwrap()
        }
    }
}

async fn nemesis(h: Arc<Harness>) {
    let mut rng = Rng::derive(h.config.seed, 1);
    let faults = &h.config.faults;
    let mut first = h.config.first;
    loop {
        let gap = Duration::from_millis(20 + rng.next(200));
        let drawn = faults[usize::try_from(rng.next(faults.len() as u64)).unwrap()];
        let fault = first.take().unwrap_or(drawn);
        tokio::time::sleep(gap).await;
        if h.writers_done.load(Ordering::SeqCst) {
            return;
        }
        let at = h.now();
        let detail = inject(&h, fault, &mut rng).await;
        h.first_done.store(true, Ordering::SeqCst);
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
    child_reads: u64,
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
        self.child_reads += o.child_reads;
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
            "{} runs, {} reads ({} errors; {} of a parent's children), stale fraction {:.4} ({} reads older than a \
             committed write still being invalidated), {} violations; writes {:?} ({} errors); \
             faults {:?}",
            self.runs,
            self.reads,
            self.read_errors,
            self.child_reads,
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
    let invalidator = h.invalidator.clone();
    let nemesis = tokio::spawn(nemesis(Arc::clone(&h)));
    let readers: Vec<_> = (0..READERS)
        .map(|r| tokio::spawn(invalidator.clone().scope(reader(Arc::clone(&h), r))))
        .collect();
    let mut writers: Vec<_> = (0..WRITERS)
        .map(|w| tokio::spawn(invalidator.clone().scope(writer(Arc::clone(&h), w))))
        .collect();
    writers.push(tokio::spawn(
        invalidator.clone().scope(parents_writer(Arc::clone(&h))),
    ));
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
        child_reads: h.child_reads.load(Ordering::Relaxed),
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

#[cfg(feature = "cluster")]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_cluster_near() {
    check(Kind::Postgres, Store::ClusterNear, "postgres_cluster_near").await;
}
