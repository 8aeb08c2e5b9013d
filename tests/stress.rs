//! Consistency under concurrency and faults, against real PostgreSQL and Redis.
//!
//! Readers read rows through `get_or_load`; writers bump a row's version in PostgreSQL and
//! then invalidate it. The checker: once a writer's update + invalidate has returned, no reader
//! that starts afterwards may get an older version from the cache (a *stale read*), and at the
//! end every cached entry equals the database. The same scenario with the stale-set protection
//! turned off must be caught by the checker, which shows the checker can fail.
//!
//! Bounded by operation counts, not by time; nothing here asserts on timing.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use matroska::backend::redis::RedisConfig;
use matroska::{Cache, Dependency};
use sea_orm::{
    ConnectOptions, ConnectionTrait, Database, DatabaseConnection, DbBackend, Statement,
};

const ROWS: i64 = 4;

/// Shared state of one run: the table, what writers have committed *and invalidated*, and
/// the checker's counters.
struct Harness {
    db: DatabaseConnection,
    table: String,
    /// Per row: the highest version whose update and invalidation have both returned.
    invalidated: Vec<AtomicI64>,
    stale_reads: AtomicU64,
    reads: AtomicU64,
    writes: AtomicU64,
    loads: AtomicU64,
    failed_invalidations: AtomicU64,
}

impl Harness {
    async fn new(name: &str) -> Arc<Self> {
        let mut options = ConnectOptions::new(support::db::postgres_url());
        options.max_connections(16).sqlx_logging(false);
        let db = Database::connect(options).await.unwrap_or_else(|e| {
            panic!(
                "PostgreSQL at {} is required (set DATABASE_URL_POSTGRES): {e}",
                support::db::postgres_url()
            )
        });
        let table = support::unique(name);
        db.execute_unprepared(&format!(
            "CREATE TABLE {table} (id BIGINT PRIMARY KEY, version BIGINT NOT NULL)"
        ))
        .await
        .unwrap();
        db.execute_unprepared(&format!(
            "INSERT INTO {table} (id, version) SELECT g, 0 FROM generate_series(0, {}) g",
            ROWS - 1
        ))
        .await
        .unwrap();
        Arc::new(Harness {
            db,
            table,
            invalidated: (0..ROWS).map(|_| AtomicI64::new(0)).collect(),
            stale_reads: AtomicU64::new(0),
            reads: AtomicU64::new(0),
            writes: AtomicU64::new(0),
            loads: AtomicU64::new(0),
            failed_invalidations: AtomicU64::new(0),
        })
    }

    async fn db_version(&self, id: i64) -> i64 {
        let row = self
            .db
            .query_one_raw(Statement::from_sql_and_values(
                DbBackend::Postgres,
                format!("SELECT version FROM {} WHERE id = $1", self.table),
                [id.into()],
            ))
            .await
            .unwrap()
            .expect("row exists");
        row.try_get("", "version").unwrap()
    }

    async fn drop_table(&self) {
        self.db
            .execute_unprepared(&format!("DROP TABLE {}", self.table))
            .await
            .unwrap();
    }
}

fn key(id: i64) -> String {
    format!("row:{id}")
}

fn dep(id: i64) -> Dependency {
    Dependency::id("row", id)
}

async fn reader(h: Arc<Harness>, cache: Cache, seed: u64, reads: u64, latencies: Latencies) {
    let mut rng = support::Rng(seed);
    for _ in 0..reads {
        let id = rng.next(ROWS as u64) as i64;
        // What must be visible: every version whose invalidation returned before we start.
        let floor = h.invalidated[id as usize].load(Ordering::SeqCst);
        let started = Instant::now();
        let h2 = Arc::clone(&h);
        let version: i64 = cache
            .get_or_load(&key(id), Some(Duration::from_secs(30)), || async move {
                h2.loads.fetch_add(1, Ordering::Relaxed);
                let version = h2.db_version(id).await;
                // Widen the window between the read and the put, where the race lives.
                tokio::time::sleep(Duration::from_millis(2)).await;
                Ok::<_, std::io::Error>((version, vec![dep(id)]))
            })
            .await
            .expect("reads keep answering, whatever the cache does");
        latencies.lock().unwrap().push((started, started.elapsed()));
        h.reads.fetch_add(1, Ordering::Relaxed);
        if version < floor {
            h.stale_reads.fetch_add(1, Ordering::Relaxed);
        }
    }
}

async fn writer(h: Arc<Harness>, cache: Cache, seed: u64, writes: u64) {
    let mut rng = support::Rng(seed);
    for _ in 0..writes {
        let id = rng.next(ROWS as u64) as i64;
        let row =
            h.db.query_one_raw(Statement::from_sql_and_values(
                DbBackend::Postgres,
                format!(
                    "UPDATE {} SET version = version + 1 WHERE id = $1 RETURNING version",
                    h.table
                ),
                [id.into()],
            ))
            .await
            .unwrap()
            .expect("row exists");
        let version: i64 = row.try_get("", "version").unwrap();
        // An invalidation that failed is reported; this writer's policy is to retry until it
        // lands (bounded), and only then count the write as done.
        let deadline = Instant::now() + Duration::from_secs(30);
        while let Err(e) = cache.invalidate(&[dep(id)]).await {
            h.failed_invalidations.fetch_add(1, Ordering::Relaxed);
            assert!(Instant::now() < deadline, "invalidation kept failing: {e}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        h.invalidated[id as usize].fetch_max(version, Ordering::SeqCst);
        h.writes.fetch_add(1, Ordering::Relaxed);
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

struct Outcome {
    reads: u64,
    writes: u64,
    loads: u64,
    stale_reads: u64,
    failed_invalidations: u64,
    /// Rows whose cached value differs from the database at the end.
    diverged: Vec<(i64, i64, i64)>,
    latencies: Vec<(Instant, Duration)>,
}

/// Every read's start and duration, in completion order; the caller may watch it for progress.
type Latencies = Arc<std::sync::Mutex<Vec<(Instant, Duration)>>>;

async fn run(
    name: &str,
    cache: Cache,
    readers: u64,
    reads: u64,
    writers: u64,
    writes: u64,
) -> Outcome {
    run_observed(
        name,
        cache,
        readers,
        reads,
        writers,
        writes,
        Latencies::default(),
    )
    .await
}

async fn run_observed(
    name: &str,
    cache: Cache,
    readers: u64,
    reads: u64,
    writers: u64,
    writes: u64,
    latencies: Latencies,
) -> Outcome {
    let h = Harness::new(name).await;
    let mut tasks = Vec::new();
    for r in 0..readers {
        tasks.push(tokio::spawn(reader(
            Arc::clone(&h),
            cache.clone(),
            0x9E37_79B9 + r * 7919,
            reads,
            Arc::clone(&latencies),
        )));
    }
    for w in 0..writers {
        tasks.push(tokio::spawn(writer(
            Arc::clone(&h),
            cache.clone(),
            0xDEAD_BEEF + w * 104_729,
            writes,
        )));
    }
    for t in tasks {
        t.await.expect("task panicked");
    }
    let mut diverged = Vec::new();
    for id in 0..ROWS {
        if let Some(cached) = cache.get::<i64>(&key(id)).await.unwrap() {
            let db = h.db_version(id).await;
            if cached != db {
                diverged.push((id, cached, db));
            }
        }
    }
    h.drop_table().await;
    let latencies = std::mem::take(&mut *latencies.lock().unwrap());
    Outcome {
        reads: h.reads.load(Ordering::Relaxed),
        writes: h.writes.load(Ordering::Relaxed),
        loads: h.loads.load(Ordering::Relaxed),
        stale_reads: h.stale_reads.load(Ordering::Relaxed),
        failed_invalidations: h.failed_invalidations.load(Ordering::Relaxed),
        diverged,
        latencies,
    }
}

fn report(label: &str, o: &Outcome) {
    println!(
        "{label}: {} reads, {} writes, {} loads, {} stale reads, {} failed invalidations, diverged at end: {:?}",
        o.reads, o.writes, o.loads, o.stale_reads, o.failed_invalidations, o.diverged
    );
}

async fn redis_cache(name: &str, protection: bool) -> Cache {
    Cache::builder(support::redis_backend(name).await)
        .stale_set_protection(protection)
        .build()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_stale_reads_with_protection() {
    let cache = redis_cache("stress", true).await;
    let o = run("stress_on", cache, 8, 400, 2, 150).await;
    report("protected", &o);
    assert_eq!(o.reads, 8 * 400);
    assert_eq!(o.writes, 2 * 150);
    assert_eq!(
        o.stale_reads, 0,
        "a reader got a value older than a returned invalidation"
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
async fn checker_catches_stale_reads_without_protection() {
    let mut stale = 0;
    // The race is timing-dependent: up to a few rounds (bounded) until it shows.
    for round in 0..5 {
        let cache = redis_cache("stress_off", false).await;
        let o = run("stress_off", cache, 8, 400, 2, 150).await;
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

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_killed_and_restarted_mid_run() {
    let mut redis = support::PrivateRedis::start();
    let backend = support::redis_backend_with(
        RedisConfig::new(redis.url(), "stress").timeout(Duration::from_millis(250)),
    )
    .await;
    let cache = Cache::builder(backend).build().unwrap();
    let outage = Arc::new(std::sync::Mutex::new(None::<(Instant, Instant)>));
    let outage2 = Arc::clone(&outage);
    let progress = Latencies::default();
    let watched = Arc::clone(&progress);
    let during = async move {
        // Once a sixth of the reads are done (an event, not a delay), take Redis away for a
        // while and bring it back empty. Killing and restarting block: off the runtime.
        let deadline = Instant::now() + Duration::from_secs(60);
        while watched.lock().unwrap().len() < 300 {
            assert!(Instant::now() < deadline, "the run made no progress");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let from = Instant::now();
        redis = tokio::task::spawn_blocking(move || {
            redis.kill();
            redis
        })
        .await
        .unwrap();
        tokio::time::sleep(Duration::from_millis(1500)).await;
        redis = tokio::task::spawn_blocking(move || {
            redis.restart();
            redis
        })
        .await
        .unwrap();
        *outage2.lock().unwrap() = Some((from, Instant::now()));
        // Keep the server alive until the run ends.
        tokio::time::sleep(Duration::from_secs(3600)).await;
        drop(redis);
    };
    let run_fut = run_observed("stress_outage", cache, 6, 300, 2, 100, progress);
    let o = tokio::select! {
        o = run_fut => o,
        () = during => unreachable!("the outage task sleeps past the run"),
    };
    report("outage", &o);
    let (from, to) = outage
        .lock()
        .unwrap()
        .expect("the outage happened during the run");
    let during_outage: Vec<Duration> = o
        .latencies
        .iter()
        .filter(|(s, _)| *s >= from && *s < to)
        .map(|(_, d)| *d)
        .collect();
    let max = during_outage.iter().max().copied().unwrap_or_default();
    let mean = during_outage
        .iter()
        .sum::<Duration>()
        .checked_div(during_outage.len() as u32)
        .unwrap_or_default();
    println!(
        "outage of {:?}: {} reads answered, mean {mean:?}, max {max:?}",
        to - from,
        during_outage.len()
    );
    assert_eq!(o.reads, 6 * 300, "every read answered");
    assert!(
        !during_outage.is_empty(),
        "the application kept answering during the outage"
    );
    assert_eq!(o.stale_reads, 0);
    assert!(
        o.diverged.is_empty(),
        "cache differs from the database: {:?}",
        o.diverged
    );
}

#[cfg(feature = "cluster")]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_stale_reads_on_a_cluster() {
    let cache = Cache::builder(support::redis_cluster_backend("stress_cluster").await)
        .build()
        .unwrap();
    let o = run("stress_cluster", cache, 8, 400, 2, 150).await;
    report("cluster", &o);
    assert_eq!(o.reads, 8 * 400);
    assert_eq!(
        o.stale_reads, 0,
        "a reader got a value older than a returned invalidation"
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

/// A cluster master is killed mid-run and its replica promoted: reads keep answering and none
/// is stale. Invalidations wait for a replica (`wait_for_replicas(1)`), so the promoted
/// replica has every invalidation that returned.
#[cfg(feature = "cluster")]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cluster_master_killed_and_replica_promoted_mid_run() {
    let mut cluster = tokio::task::spawn_blocking(support::cluster::PrivateCluster::start)
        .await
        .unwrap();
    let prefix = support::unique("failover");
    let backend = support::redis_backend_with(
        RedisConfig::cluster(cluster.urls(), prefix.clone())
            .timeout(Duration::from_millis(500))
            .wait_for_replicas(1),
    )
    .await;
    let cache = Cache::builder(backend).build().unwrap();
    let progress = Latencies::default();
    let watched = Arc::clone(&progress);
    let killed = Arc::new(std::sync::Mutex::new(None::<u16>));
    let killed2 = Arc::clone(&killed);
    let during = async move {
        let deadline = Instant::now() + Duration::from_secs(60);
        while watched.lock().unwrap().len() < 300 {
            assert!(Instant::now() < deadline, "the run made no progress");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // The master of the clock: every ticket and invalidation goes through it.
        let clock = format!("{{{prefix}}}:c");
        cluster = tokio::task::spawn_blocking(move || {
            let port = cluster.master_of(&clock);
            cluster.kill(port);
            *killed2.lock().unwrap() = Some(port);
            // Its replica takes over; then the old master comes back as the new one's replica,
            // so invalidations find a replica to wait for again.
            cluster.wait_for_failover(port);
            cluster.restart(port);
            cluster.wait_until_healthy();
            cluster
        })
        .await
        .unwrap();
        tokio::time::sleep(Duration::from_secs(3600)).await;
        drop(cluster);
    };
    let run_fut = run_observed("stress_failover", cache, 6, 300, 2, 100, progress);
    let o = tokio::select! {
        o = run_fut => o,
        () = during => unreachable!("the failover task sleeps past the run"),
    };
    report("cluster failover", &o);
    assert!(
        killed.lock().unwrap().is_some(),
        "no master was killed during the run"
    );
    assert_eq!(o.reads, 6 * 300, "every read answered");
    assert_eq!(o.stale_reads, 0);
    assert!(
        o.diverged.is_empty(),
        "cache differs from the database: {:?}",
        o.diverged
    );
}

/// The checker is not vacuous on a cluster either: without the protection it sees stale reads.
#[cfg(feature = "cluster")]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn checker_catches_stale_reads_on_a_cluster_without_protection() {
    let mut stale = 0;
    for round in 0..5 {
        let cache = Cache::builder(support::redis_cluster_backend("stress_cluster_off").await)
            .stale_set_protection(false)
            .build()
            .unwrap();
        let o = run("stress_cluster_off", cache, 8, 400, 2, 150).await;
        report(&format!("cluster unprotected round {round}"), &o);
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
