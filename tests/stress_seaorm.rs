//! The stress harness of `tests/stress.rs`, end to end through SeaORM, against real PostgreSQL
//! and Redis.
//!
//! Readers read rows through the cached SeaORM queries: one row by id
//! (`find_by_id(..).cached(..).one(..)`) or a bucket's rows (`.cached(..).scoped(..).all(..)`).
//! Writers update rows through `ActiveModel` saves whose hooks invalidate by themselves: half
//! of them save one row at a time, the other half save one or two rows inside
//! `seaorm::transaction`. Every save bumps the row's version; some also move the row to the
//! other bucket (a watched column: the hooks read the old row and drop both buckets' lists).
//!
//! The checker: once a save has returned (for a transaction: once `transaction(...)` has
//! returned), no read that starts afterwards may get an older version of the row from the
//! cache (a *stale read*), and at the end every cached entry equals the database. The same
//! scenario with the stale-set protection turned off must be caught by the checker.
//!
//! Bounded by operation counts, not by time; nothing here asserts on timing.
#![cfg(feature = "seaorm")]

mod seaorm_blog;
mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use matroska::Cache;
use matroska::seaorm::{self, CachedExt, Invalidator};
use sea_orm::{
    ActiveModelTrait, ColumnTrait, ConnectionTrait, DatabaseConnection, DbBackend, DbErr,
    EntityTrait, ExecResult, IntoActiveModel, QueryFilter, QueryOrder, QueryResult, Schema, Set,
    Statement,
};

use seaorm_blog::stress_row as row;
use support::db::ScratchDb;

const ROWS: i64 = 8;
const BUCKETS: i32 = 2;
/// Writers: even ones save row by row, odd ones in `seaorm::transaction`. Writer `w` owns the
/// rows with `id % WRITERS == w`, so each row's versions are written in order by one task.
const WRITERS: u64 = 4;

/// Shared state of one run: what writers have saved *and invalidated*, and the checker's
/// counters.
struct Harness {
    db: ScratchDb,
    /// Per row: the highest version whose save (or transaction) has returned.
    saved: Vec<AtomicI64>,
    stale_reads: AtomicU64,
    /// The stale reads of rows saved in transactions (odd writers).
    stale_after_transaction: AtomicU64,
    reads: AtomicU64,
    writes: AtomicU64,
    transactions: AtomicU64,
    /// Queries the readers' connection ran: the cache's misses (its loads).
    loads: AtomicU64,
}

impl Harness {
    async fn new(name: &str) -> Arc<Self> {
        let db = ScratchDb::postgres(name).await;
        let schema = Schema::new(DbBackend::Postgres);
        db.conn
            .execute(&schema.create_table_from_entity(row::Entity))
            .await
            .unwrap();
        // Seeded behind the hooks' back, before anything is cached.
        row::Entity::insert_many((0..ROWS).map(|id| row::ActiveModel {
            id: Set(id),
            version: Set(0),
            bucket: Set((id % i64::from(BUCKETS)) as i32),
        }))
        .exec(&db.conn)
        .await
        .unwrap();
        Arc::new(Harness {
            db,
            saved: (0..ROWS).map(|_| AtomicI64::new(0)).collect(),
            stale_reads: AtomicU64::new(0),
            stale_after_transaction: AtomicU64::new(0),
            reads: AtomicU64::new(0),
            writes: AtomicU64::new(0),
            transactions: AtomicU64::new(0),
            loads: AtomicU64::new(0),
        })
    }

    fn conn(&self) -> &DatabaseConnection {
        &self.db.conn
    }

    /// The connection the readers query through.
    fn slow_reads(&self) -> SlowReads<'_> {
        SlowReads {
            db: self.conn(),
            loads: &self.loads,
        }
    }

    fn floors(&self) -> Vec<i64> {
        self.saved
            .iter()
            .map(|v| v.load(Ordering::SeqCst))
            .collect()
    }
}

/// The readers' connection: counts the queries that reach the database (cache misses), and
/// pauses after each answer, widening the window between a load and its put where the
/// stale-set race lives (as `tests/stress.rs` does in its loader). Writers use the plain
/// connection.
struct SlowReads<'a> {
    db: &'a DatabaseConnection,
    loads: &'a AtomicU64,
}

impl SlowReads<'_> {
    async fn loaded(&self) {
        self.loads.fetch_add(1, Ordering::Relaxed);
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

#[async_trait]
impl ConnectionTrait for SlowReads<'_> {
    fn get_database_backend(&self) -> DbBackend {
        self.db.get_database_backend()
    }

    async fn execute_raw(&self, stmt: Statement) -> Result<ExecResult, DbErr> {
        self.db.execute_raw(stmt).await
    }

    async fn execute_unprepared(&self, sql: &str) -> Result<ExecResult, DbErr> {
        self.db.execute_unprepared(sql).await
    }

    async fn query_one_raw(&self, stmt: Statement) -> Result<Option<QueryResult>, DbErr> {
        let row = self.db.query_one_raw(stmt).await;
        self.loaded().await;
        row
    }

    async fn query_all_raw(&self, stmt: Statement) -> Result<Vec<QueryResult>, DbErr> {
        let rows = self.db.query_all_raw(stmt).await;
        self.loaded().await;
        rows
    }
}

/// Reads the pool's data: its cached-query keys are the pool's.
#[async_trait]
impl seaorm::CacheableConnection for SlowReads<'_> {
    async fn cache_namespace(&self) -> Result<Option<Arc<str>>, DbErr> {
        self.db.cache_namespace().await
    }
}

/// The row by id, from the cache when it is there.
async fn cached_row(cache: &Cache, db: &impl seaorm::CacheableConnection, id: i64) -> row::Model {
    row::Entity::find_by_id(id)
        .cached(cache)
        .one(db)
        .await
        .expect("cached row")
        .expect("the row exists")
}

/// A bucket's rows, from the cache when it is there.
async fn cached_bucket(
    cache: &Cache,
    db: &impl seaorm::CacheableConnection,
    bucket: i32,
) -> Vec<row::Model> {
    row::Entity::find()
        .order_by_asc(row::Column::Id)
        .cached(cache)
        .scoped(&row::ByBucket { bucket })
        .all(db)
        .await
        .expect("cached bucket")
}

async fn reader(h: Arc<Harness>, cache: Cache, seed: u64, reads: u64) {
    let mut rng = support::Rng(seed);
    let db = h.slow_reads();
    for _ in 0..reads {
        // What must be visible: every version whose save returned before the read starts.
        let floors = h.floors();
        let rows = if rng.next(3) < 2 {
            vec![cached_row(&cache, &db, rng.next(ROWS as u64) as i64).await]
        } else {
            cached_bucket(&cache, &db, rng.next(BUCKETS as u64) as i32).await
        };
        h.reads.fetch_add(1, Ordering::Relaxed);
        for stale in rows.iter().filter(|r| r.version < floors[r.id as usize]) {
            h.stale_reads.fetch_add(1, Ordering::Relaxed);
            if transactional(stale.id as u64 % WRITERS) {
                h.stale_after_transaction.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

fn transactional(writer: u64) -> bool {
    writer % 2 == 1
}

/// The next version of `current`: one more, and every fourth save or so in the other bucket.
fn next(current: &row::Model, rng: &mut support::Rng) -> row::Model {
    let mut next = current.clone();
    next.version += 1;
    if rng.next(4) == 0 {
        next.bucket = (next.bucket + 1) % BUCKETS;
    }
    next
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

async fn writer(h: Arc<Harness>, w: u64, seed: u64, saves: u64) {
    let mut rng = support::Rng(seed);
    let db = h.conn().clone();
    let mut owned: Vec<row::Model> = row::Entity::find()
        .order_by_asc(row::Column::Id)
        .all(&db)
        .await
        .unwrap()
        .into_iter()
        .filter(|r| r.id as u64 % WRITERS == w)
        .collect();
    for _ in 0..saves {
        if transactional(w) {
            // One or two of the writer's rows in one transaction: one invalidation after the
            // commit.
            let n = 1 + rng.next(2) as usize;
            let first = rng.next(owned.len() as u64) as usize;
            let picked: Vec<usize> = (0..n).map(|i| (first + i) % owned.len()).collect();
            let updates: Vec<(row::Model, row::Model)> = picked
                .iter()
                .map(|&i| (owned[i].clone(), next(&owned[i], &mut rng)))
                .collect();
            let saved = seaorm::transaction(&db, |txn| {
                Box::pin(async move {
                    let mut saved = Vec::new();
                    for (from, to) in &updates {
                        saved.push(update(from, to).update(txn).await?);
                    }
                    Ok::<_, DbErr>(saved)
                })
            })
            .await
            .unwrap();
            for (i, row) in picked.into_iter().zip(saved) {
                h.saved[row.id as usize].fetch_max(row.version, Ordering::SeqCst);
                owned[i] = row;
                h.writes.fetch_add(1, Ordering::Relaxed);
            }
            h.transactions.fetch_add(1, Ordering::Relaxed);
        } else {
            let i = rng.next(owned.len() as u64) as usize;
            let to = next(&owned[i], &mut rng);
            let row = update(&owned[i], &to).update(&db).await.unwrap();
            h.saved[row.id as usize].fetch_max(row.version, Ordering::SeqCst);
            owned[i] = row;
            h.writes.fetch_add(1, Ordering::Relaxed);
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

struct Outcome {
    reads: u64,
    writes: u64,
    transactions: u64,
    loads: u64,
    stale_reads: u64,
    stale_after_transaction: u64,
    /// Invalidations the hooks could not deliver (queued for retry): must stay 0 here.
    undelivered: usize,
    /// Cached entries that differ from the database at the end.
    diverged: Vec<String>,
    /// Cached entries compared with the database at the end.
    checked: u64,
}

async fn run(name: &str, cache: Cache, readers: u64, reads: u64, saves: u64) -> Outcome {
    let h = Harness::new(name).await;
    // The hooks find the cache through the task-local invalidator of each writer task.
    let invalidator = Invalidator::new(cache.clone());
    let mut tasks = Vec::new();
    for r in 0..readers {
        tasks.push(tokio::spawn(reader(
            Arc::clone(&h),
            cache.clone(),
            0x9E37_79B9 + r * 7919,
            reads,
        )));
    }
    for w in 0..WRITERS {
        let writes = writer(Arc::clone(&h), w, 0xDEAD_BEEF + w * 104_729, saves);
        tasks.push(tokio::spawn(invalidator.clone().scope(writes)));
    }
    for t in tasks {
        t.await.expect("task panicked");
    }

    // Every entry the readers could have cached, through the same queries: an answer that
    // needed no query came from the cache, and must equal the database.
    let mut diverged = Vec::new();
    let mut checked = 0;
    let db = h.slow_reads();
    for id in 0..ROWS {
        let loads = h.loads.load(Ordering::Relaxed);
        let cached = cached_row(&cache, &db, id).await;
        if h.loads.load(Ordering::Relaxed) == loads {
            checked += 1;
            let fresh = row::Entity::find_by_id(id).one(h.conn()).await.unwrap();
            if fresh.as_ref() != Some(&cached) {
                diverged.push(format!("row {id}: cached {cached:?}, database {fresh:?}"));
            }
        }
    }
    for bucket in 0..BUCKETS {
        let loads = h.loads.load(Ordering::Relaxed);
        let cached = cached_bucket(&cache, &db, bucket).await;
        if h.loads.load(Ordering::Relaxed) == loads {
            checked += 1;
            let fresh: Vec<row::Model> = row::Entity::find()
                .filter(row::Column::Bucket.eq(bucket))
                .order_by_asc(row::Column::Id)
                .all(h.conn())
                .await
                .unwrap();
            if fresh != cached {
                diverged.push(format!(
                    "bucket {bucket}: cached {cached:?}, database {fresh:?}"
                ));
            }
        }
    }
    Outcome {
        reads: h.reads.load(Ordering::Relaxed),
        writes: h.writes.load(Ordering::Relaxed),
        transactions: h.transactions.load(Ordering::Relaxed),
        loads: h.loads.load(Ordering::Relaxed),
        stale_reads: h.stale_reads.load(Ordering::Relaxed),
        stale_after_transaction: h.stale_after_transaction.load(Ordering::Relaxed),
        undelivered: invalidator.pending(),
        diverged,
        checked,
    }
}

fn report(label: &str, o: &Outcome) {
    println!(
        "{label}: {} reads, {} saves ({} transactions), {} loads, {} stale reads \
         ({} of rows saved in transactions), {} undelivered invalidations, {} cached entries checked at the end, diverged: {:?}",
        o.reads,
        o.writes,
        o.transactions,
        o.loads,
        o.stale_reads,
        o.stale_after_transaction,
        o.undelivered,
        o.checked,
        o.diverged
    );
}

async fn redis_cache(name: &str, protection: bool) -> Cache {
    Cache::builder(support::redis_backend(name).await)
        .stale_set_protection(protection)
        .build()
        .unwrap()
}

const READERS: u64 = 8;
const READS: u64 = 300;
const SAVES: u64 = 100;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_stale_reads_through_seaorm_with_protection() {
    let cache = redis_cache("stress_orm", true).await;
    let o = run("stress_orm_on", cache, READERS, READS, SAVES).await;
    report("protected", &o);
    assert_eq!(o.reads, READERS * READS);
    assert!(o.writes >= WRITERS * SAVES);
    assert_eq!(o.undelivered, 0, "a hook could not deliver an invalidation");
    assert_eq!(
        o.stale_reads, 0,
        "a reader got a version older than a returned save"
    );
    assert!(
        o.diverged.is_empty(),
        "cache differs from the database: {:?}",
        o.diverged
    );
    assert!(
        o.loads < o.reads,
        "the cache never hit: the test exercised nothing"
    );
}

/// The checker is not vacuous: without the protection, the same scenario serves stale reads.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn checker_catches_stale_reads_through_seaorm_without_protection() {
    let mut stale = 0;
    // The race is timing-dependent: up to a few rounds (bounded) until it shows.
    for round in 0..5 {
        let cache = redis_cache("stress_orm_off", false).await;
        let o = run("stress_orm_off", cache, READERS, READS, SAVES).await;
        report(&format!("unprotected round {round}"), &o);
        stale += o.stale_reads + o.diverged.len() as u64;
        if stale > 0 {
            break;
        }
    }
    assert!(
        stale > 0,
        "the checker saw no stale read with the protection off"
    );
}
