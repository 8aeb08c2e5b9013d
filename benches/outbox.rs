//! The outbox: what its triggers add to a write, and how long a committed write takes to reach
//! the cache through the relay; on SQLite, PostgreSQL and MariaDB, with Redis.
//!
//! **Write cost.** The same statements on the same table, without and with the triggers,
//! alternated (no triggers, triggers, no triggers, triggers: the triggers are installed and
//! removed between the sides): a single-row `UPDATE` of a watched column, and a 10 000-row
//! `UPDATE` (a bulk `update_many`).
//!
//! **Relay lag.** Commit → invalidated: cache an entry depending on a row, update the row by
//! raw SQL (no hook, no poke: as another process would), and poll the cache until the entry is
//! gone. Idle (as another process's write: the relay wakes on PostgreSQL's `NOTIFY`, elsewhere
//! at its next poll), idle with `poke()` after the commit (as this process's hooked saves do),
//! idle with `wait_delivered` after the commit (read-your-writes for a write no hook saw: the
//! time until it returns), and under ~1 000 background writes/s to other rows. The percentiles of the
//! samples are printed (`lag <db> <load>: p50 .. p99 ..`); criterion reports the mean.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use matroska::seaorm::outbox;
use matroska::{Cache, CacheDeps, WatchedTable};
use sea_orm::{ConnectionTrait, DatabaseConnection, DbBackend};
use tokio::runtime::Runtime;

use common::seaorm::{ARTICLES, ScratchDb, article};
use common::{redis_cache, runtime};

/// Rows of the bulk update (added to the fixture's rows).
const BULK_ROWS: i64 = 10_000; // the digit tables in `add_bulk_rows` make exactly these

fn databases(rt: &Runtime) -> Vec<ScratchDb> {
    vec![
        rt.block_on(ScratchDb::sqlite()),
        rt.block_on(ScratchDb::postgres()),
        rt.block_on(ScratchDb::mysql()),
    ]
}

async fn exec(conn: &DatabaseConnection, sql: &str) {
    conn.execute_unprepared(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
}

async fn add_bulk_rows(conn: &DatabaseConnection) {
    let sql = match conn.get_database_backend() {
        DbBackend::Postgres => format!(
            "INSERT INTO article (id, title, category, published, author_id) \
             SELECT g, 'bulk', 'Z', false, 1 FROM generate_series(1000, {}) g",
            999 + BULK_ROWS
        ),
        // 10 000 rows from four digit tables: no recursive CTE (capped at 1 000 iterations
        // by default on MariaDB and MySQL).
        _ => {
            let digits = "(SELECT 0 AS n UNION ALL SELECT 1 UNION ALL SELECT 2 UNION ALL SELECT 3 \
                          UNION ALL SELECT 4 UNION ALL SELECT 5 UNION ALL SELECT 6 UNION ALL \
                          SELECT 7 UNION ALL SELECT 8 UNION ALL SELECT 9)";
            format!(
                "INSERT INTO article (id, title, category, published, author_id) \
                 SELECT 1000 + a.n + 10 * b.n + 100 * c.n + 1000 * d.n, 'bulk', 'Z', 0, 1 \
                 FROM {digits} a, {digits} b, {digits} c, {digits} d"
            )
        }
    };
    exec(conn, &sql).await;
}

async fn set_triggers(conn: &DatabaseConnection, on: bool) {
    if on {
        outbox::install(conn, &[article::Model::watched_table()])
            .await
            .expect("install");
    } else {
        outbox::uninstall(conn, &["article"])
            .await
            .expect("uninstall");
    }
    // What a previous side recorded (no relay runs during the write benches), and the dead
    // rows the previous side's bulk updates left: each side starts from the same table.
    match conn.get_database_backend() {
        DbBackend::Postgres => {
            exec(conn, "TRUNCATE matroska_outbox").await;
            exec(conn, "VACUUM FULL article").await;
        }
        DbBackend::MySql => {
            exec(conn, "TRUNCATE matroska_outbox").await;
            exec(conn, "OPTIMIZE TABLE article").await;
        }
        _ => {
            exec(conn, "DELETE FROM matroska_outbox").await;
            exec(conn, "VACUUM").await;
        }
    }
}

fn write_cost(c: &mut Criterion, rt: &Runtime, db: &ScratchDb) {
    let conn = &db.conn;
    rt.block_on(add_bulk_rows(conn));
    let mut g = c.benchmark_group(format!("outbox/write/{}", db.name));
    g.sample_size(30);
    let mut flip = false;
    for (side, on) in [
        ("no triggers (1)", false),
        ("triggers (1)", true),
        ("no triggers (2)", false),
        ("triggers (2)", true),
    ] {
        rt.block_on(set_triggers(conn, on));
        g.bench_function(format!("update 1 row, {side}"), |b| {
            b.to_async(rt).iter(|| {
                flip = !flip;
                let category = if flip { "B" } else { "C" };
                async move {
                    exec(
                        conn,
                        &format!("UPDATE article SET category = '{category}' WHERE id = 1"),
                    )
                    .await;
                }
            });
        });
        rt.block_on(set_triggers(conn, on));
        g.bench_function(format!("update 10k rows, {side}"), |b| {
            b.to_async(rt).iter(|| {
                flip = !flip;
                let published = if flip { "true" } else { "false" };
                async move {
                    exec(
                        conn,
                        &format!("UPDATE article SET published = {published} WHERE id >= 1000"),
                    )
                    .await;
                }
            });
        });
    }
    g.finish();
    rt.block_on(set_triggers(conn, false));
}

fn percentile(sorted: &[Duration], q: f64) -> Duration {
    #[allow(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        clippy::cast_precision_loss
    )]
    let i = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted[i]
}

/// One commit → invalidated sample.
async fn lag_once(
    conn: &DatabaseConnection,
    cache: &Cache,
    relay: &outbox::RelayHandle,
    row: &article::Model,
    n: u64,
    load: &str,
) -> Duration {
    cache
        .put("lag", &n, &[row.primary_key()], None)
        .await
        .expect("put");
    exec(
        conn,
        &format!("UPDATE article SET title = 'lag {n}' WHERE id = {}", row.id),
    )
    .await;
    let committed = Instant::now();
    if load.ends_with("poked") {
        // What a hooked save or `seaorm::transaction` does after its commit.
        outbox::poke();
    }
    if load.ends_with("wait_delivered") {
        // Read-your-writes for a write no hook saw: the entry is gone when this returns.
        relay
            .wait_delivered(Duration::from_secs(10))
            .await
            .expect("delivered in time");
        assert!(
            !cache.has("lag").await.expect("has"),
            "stale after the wait"
        );
    }
    while cache.has("lag").await.expect("has") {
        tokio::time::sleep(Duration::from_micros(200)).await;
    }
    committed.elapsed()
}

fn relay_lag(c: &mut Criterion, rt: &Runtime, db: &ScratchDb) {
    let conn = &db.conn;
    let cache = rt.block_on(redis_cache("outbox-lag"));
    rt.block_on(set_triggers(conn, true));
    let relay = rt.block_on(async {
        outbox::relay(conn, cache.clone())
            .expect("pool")
            .watch_type::<article::Model>()
            .build()
            .spawn()
    });
    let row = article::Model {
        id: 1,
        title: String::new(),
        category: String::new(),
        published: false,
        author_id: 1,
    };
    let mut g = c.benchmark_group(format!("outbox/lag/{}", db.name));
    g.sample_size(20);
    for load in [
        "idle",
        "idle, poked",
        "idle, wait_delivered",
        "1000 writes/s",
    ] {
        let stop = Arc::new(AtomicBool::new(false));
        let background = load.starts_with("1000").then(|| {
            let (conn, stop) = (conn.clone(), Arc::clone(&stop));
            rt.spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_millis(1));
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
                let mut n = 0_i64;
                while !stop.load(Ordering::Relaxed) {
                    tick.tick().await;
                    n += 1;
                    let id = 2 + n % i64::from(ARTICLES - 1);
                    exec(
                        &conn,
                        &format!("UPDATE article SET category = 'L{}' WHERE id = {id}", n % 3),
                    )
                    .await;
                }
            })
        });
        let samples = Arc::new(std::sync::Mutex::new(Vec::new()));
        let n = Arc::new(std::sync::atomic::AtomicU64::new(0));
        g.bench_function(load, |b| {
            b.to_async(rt).iter_custom(|iters| {
                let (cache, row, relay) = (cache.clone(), row.clone(), &relay);
                let (samples, n) = (Arc::clone(&samples), Arc::clone(&n));
                async move {
                    let mut total = Duration::ZERO;
                    for _ in 0..iters {
                        let i = n.fetch_add(1, Ordering::Relaxed);
                        let lag = lag_once(conn, &cache, relay, &row, i, load).await;
                        samples.lock().expect("not poisoned").push(lag);
                        total += lag;
                    }
                    total
                }
            });
        });
        stop.store(true, Ordering::Relaxed);
        if let Some(task) = background {
            let _ = rt.block_on(task);
        }
        let mut samples = samples.lock().expect("not poisoned").clone();
        if samples.is_empty() {
            // Filtered out on the command line.
            continue;
        }
        samples.sort_unstable();
        eprintln!(
            "lag {} {load}: p50 {:?} p99 {:?} over {} samples (relay: {:?})",
            db.name,
            percentile(&samples, 0.5),
            percentile(&samples, 0.99),
            samples.len(),
            relay.relay().stats(),
        );
    }
    g.finish();
    rt.block_on(relay.shutdown());
    rt.block_on(set_triggers(conn, false));
}

fn benches(c: &mut Criterion) {
    let rt = runtime();
    for db in databases(&rt) {
        // Lag first, on a database no bulk write has churned yet: after the write benches'
        // million-row updates, MariaDB's claims ran ~40 ms until its purge caught up.
        relay_lag(c, &rt, &db);
        write_cost(c, &rt, &db);
        rt.block_on(db.drop_now());
    }
}

criterion_group! {
    name = outbox_benches;
    config = Criterion::default().warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(3));
    targets = benches
}
criterion_main!(outbox_benches);
