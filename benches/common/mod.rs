//! Set-up shared by the benches: runtime, services, fixtures.
#![allow(dead_code)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use matroska::backend::redis::{RedisBackend, RedisConfig};
use matroska::{Cache, Dependency};
use redis::aio::ConnectionManager;
use serde::{Deserialize, Serialize};

/// A typical row of a cached list.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Article {
    pub id: i64,
    pub title: String,
    pub category: String,
    pub published: bool,
    pub author_id: i64,
    pub body: String,
}

pub fn articles(n: usize) -> Vec<Article> {
    (0..n)
        .map(|i| Article {
            id: i as i64,
            title: format!("Article number {i}"),
            category: ["fantasy", "sci-fi", "poetry"][i % 3].into(),
            published: i % 2 == 0,
            author_id: (i % 7) as i64,
            body: "Lorem ipsum dolor sit amet, consectetur adipiscing elit. ".repeat(4),
        })
        .collect()
}

/// A small cached value (~100 bytes encoded): decode cost is negligible next to a round trip.
pub fn small() -> Article {
    Article {
        id: 1,
        title: "Python".into(),
        category: "fantasy".into(),
        published: true,
        author_id: 1,
        body: String::new(),
    }
}

pub fn deps(n: usize, salt: usize) -> Vec<Dependency> {
    (0..n)
        .map(|i| Dependency::id("article", salt * 1000 + i))
        .collect()
}

pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime")
}

pub fn redis_url() -> String {
    std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

pub fn prefix(name: &str) -> String {
    format!("bench_{name}_{}", std::process::id())
}

/// A matroska cache on Redis and a raw `ConnectionManager` to the same server: the baseline
/// uses the connection type the backend uses.
pub async fn redis_pair(name: &str) -> (Cache, ConnectionManager) {
    let cache = redis_cache(name).await;
    let raw = ConnectionManager::new(redis::Client::open(redis_url()).expect("URL"))
        .await
        .expect("Redis");
    (cache, raw)
}

/// A matroska cache on Redis under the bench's own prefix.
pub async fn redis_cache(name: &str) -> Cache {
    let backend = RedisBackend::connect(
        RedisConfig::new(redis_url(), prefix(name)).timeout(Duration::from_secs(5)),
    )
    .await
    .expect("Redis is required for this bench (REDIS_URL)");
    Cache::builder(backend).build().expect("valid settings")
}

#[cfg(feature = "seaorm")]
pub mod seaorm;

// Private servers and clusters: the tests' own support code, not a copy.
#[path = "../../tests/support/cluster.rs"]
pub mod cluster;
#[path = "../../tests/support/process.rs"]
pub mod process;
#[allow(unused_imports)] // Each bench or test binary uses its own part.
pub use process::{PrivateRedis, answers_ping, free_port, unique};

/// Runs `iters` operations spread over 32 tasks; returns the wall time.
pub async fn concurrently<F, Fut>(iters: u64, op: F) -> Duration
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send,
{
    concurrently_on(32, iters, op).await
}

/// Runs `iters` operations spread over `tasks` tasks; returns the wall time.
pub async fn concurrently_on<F, Fut>(tasks: u64, iters: u64, op: F) -> Duration
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send,
{
    let op = Arc::new(op);
    let start = Instant::now();
    let tasks: Vec<_> = (0..tasks)
        .map(|t| {
            let op = Arc::clone(&op);
            let n = iters / tasks + u64::from(t < iters % tasks);
            tokio::spawn(async move {
                for _ in 0..n {
                    op().await;
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    start.elapsed()
}

/// Whether a bench that criterion cannot filter (it prints its own figures) should run: when
/// no filter is given, or the filter names it.
pub fn wanted(name: &str) -> bool {
    let filters: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    filters.is_empty()
        || filters
            .iter()
            .any(|f| name.contains(f.as_str()) || f.contains(name))
}

/// Throughputs of two sides measured in alternation: `rounds` rounds, each running `ops`
/// operations of one side then of the other over `tasks` tasks (which side goes first
/// alternates), so drift in the loopback round trip hits both alike. Prints each side's
/// median throughput and the median, minimum and maximum of the per-round ratio a / b.
pub fn paired<A, AF, B, BF>(
    rt: &tokio::runtime::Runtime,
    label: &str,
    tasks: u64,
    (a_name, a): (&str, A),
    (b_name, b): (&str, B),
) where
    A: Fn() -> AF + Send + Sync + Clone + 'static,
    AF: Future<Output = ()> + Send,
    B: Fn() -> BF + Send + Sync + Clone + 'static,
    BF: Future<Output = ()> + Send,
{
    const ROUNDS: usize = 12;
    let ops = if tasks > 1 { 16_000 } else { 3_000 };
    // Warm both sides up.
    rt.block_on(concurrently_on(tasks, ops / 4, a.clone()));
    rt.block_on(concurrently_on(tasks, ops / 4, b.clone()));
    let (mut a_rate, mut b_rate, mut ratio) = (vec![], vec![], vec![]);
    for round in 0..ROUNDS {
        let (ra, rb) = if tasks == 1 {
            // One task: alternate every operation, so each pair sees the same round trip.
            rt.block_on(async {
                let (mut ta, mut tb) = (Duration::ZERO, Duration::ZERO);
                for i in 0..ops {
                    let first_a = (i + round as u64).is_multiple_of(2);
                    for side_a in [first_a, !first_a] {
                        let start = Instant::now();
                        if side_a {
                            a().await;
                            ta += start.elapsed();
                        } else {
                            b().await;
                            tb += start.elapsed();
                        }
                    }
                }
                (ops as f64 / ta.as_secs_f64(), ops as f64 / tb.as_secs_f64())
            })
        } else {
            let run = |side: &dyn Fn() -> Duration| ops as f64 / side().as_secs_f64();
            let side_a = || rt.block_on(concurrently_on(tasks, ops, a.clone()));
            let side_b = || rt.block_on(concurrently_on(tasks, ops, b.clone()));
            if round.is_multiple_of(2) {
                let ra = run(&side_a);
                (ra, run(&side_b))
            } else {
                let rb = run(&side_b);
                (run(&side_a), rb)
            }
        };
        a_rate.push(ra);
        b_rate.push(rb);
        ratio.push(ra / rb);
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        (v[v.len() / 2 - 1] + v[v.len() / 2]) / 2.0
    };
    let (lo, hi) = (
        ratio.iter().copied().fold(f64::MAX, f64::min),
        ratio.iter().copied().fold(0.0, f64::max),
    );
    println!(
        "{label}: {a_name} {:.1} k/s, {b_name} {:.1} k/s; {a_name} / {b_name} = {:.2} \
         (rounds {lo:.2}..{hi:.2}, {ROUNDS} rounds of {ops} ops, {tasks} task(s))",
        median(&mut a_rate) / 1e3,
        median(&mut b_rate) / 1e3,
        median(&mut ratio),
    );
}
