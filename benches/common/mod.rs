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
    let op = Arc::new(op);
    let start = Instant::now();
    let tasks: Vec<_> = (0..32)
        .map(|t| {
            let op = Arc::clone(&op);
            let n = iters / 32 + u64::from(t < iters % 32);
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
