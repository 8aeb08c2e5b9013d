//! Shared test support: service URLs, unique namespaces, private redis-server instances.
//!
//! Services come from the environment with this machine's defaults. A missing service is a
//! test failure with a message saying which, never a silent skip.
#![allow(dead_code)]

use std::time::Duration;

use matroska::Cache;
use matroska::backend::memory::MemoryBackend;
use matroska::backend::redis::{RedisBackend, RedisConfig};

/// `REDIS_URL`, default `redis://127.0.0.1:6379`.
pub fn redis_url() -> String {
    std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// A Redis backend on `REDIS_URL` under a fresh prefix. Panics (fails the test) when Redis is
/// not reachable.
pub async fn redis_backend(name: &str) -> RedisBackend {
    redis_backend_with(RedisConfig::new(redis_url(), unique(name))).await
}

/// A Redis backend with the given settings; the URL must be reachable.
pub async fn redis_backend_with(config: RedisConfig) -> RedisBackend {
    let url = config.url.clone();
    RedisBackend::connect(config)
        .await
        .unwrap_or_else(|e| panic!("Redis at {url} is required for this test (set REDIS_URL): {e}"))
}

/// A cache on a fresh Redis prefix.
pub async fn redis_cache(name: &str) -> Cache {
    Cache::builder(redis_backend(name).await)
        .build()
        .expect("default settings are valid")
}

/// A Redis backend on the test binary's shared private cluster, under a fresh prefix.
#[cfg(feature = "cluster")]
pub async fn redis_cluster_backend(name: &str) -> RedisBackend {
    let cluster = tokio::task::spawn_blocking(cluster::PrivateCluster::shared)
        .await
        .expect("the cluster starts");
    redis_backend_with(RedisConfig::cluster(cluster.urls(), unique(name))).await
}

/// A cache on a fresh in-memory backend.
pub fn memory_cache() -> Cache {
    Cache::builder(MemoryBackend::default())
        .build()
        .expect("default settings are valid")
}

/// Records the commands clients send to a server (`MONITOR`), so a test can count the round
/// trips an operation costs. Commands that scripts run inside the server are not counted.
pub struct Monitor {
    lines: std::sync::mpsc::Receiver<String>,
    stream: std::net::TcpStream,
    url: String,
}

impl Monitor {
    pub fn start(redis: &PrivateRedis) -> Self {
        use std::io::{BufRead, BufReader, Write};
        let mut stream = std::net::TcpStream::connect(("127.0.0.1", redis.port)).expect("connect");
        stream.write_all(b"MONITOR\r\n").expect("MONITOR");
        let reader = stream.try_clone().expect("clone socket");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(reader).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut monitor = Monitor {
            lines: rx,
            stream,
            url: redis.url(),
        };
        // Wait for MONITOR's +OK so nothing sent afterwards is missed.
        monitor.next_line();
        monitor
    }

    fn next_line(&mut self) -> String {
        self.lines
            .recv_timeout(Duration::from_secs(10))
            .expect("MONITOR produced no line within 10 s")
    }

    fn echo(&self, marker: &str) {
        let mut c = redis::Client::open(self.url.as_str())
            .and_then(|c| c.get_connection())
            .expect("connect");
        let _: String = redis::cmd("ECHO").arg(marker).query(&mut c).expect("ECHO");
    }

    /// Runs `op` and returns its output with the commands clients sent meanwhile (one per
    /// round trip for non-pipelined clients), e.g. `["evalsha"]`.
    pub async fn commands<T>(
        &mut self,
        op: impl std::future::Future<Output = T>,
    ) -> (T, Vec<String>) {
        let id = unique("m");
        self.echo(&format!("start-{id}"));
        let out = op.await;
        self.echo(&format!("end-{id}"));
        let mut commands = Vec::new();
        let mut started = false;
        loop {
            let line = self.next_line();
            if line.contains(&format!("start-{id}")) {
                started = true;
                continue;
            }
            if line.contains(&format!("end-{id}")) {
                break;
            }
            if started && !line.contains(" lua]") {
                let command = line.split('"').nth(1).unwrap_or("").to_lowercase();
                commands.push(command);
            }
        }
        (out, commands)
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        let _ = self.stream.shutdown(std::net::Shutdown::Both);
    }
}
#[cfg(feature = "cluster")]
pub mod cluster;
pub mod db;
mod process;
#[allow(unused_imports)] // Each bench or test binary uses its own part.
pub use process::{PrivateRedis, answers_ping, free_port, unique};
pub mod faults;
pub mod fill;
pub mod ledger;
#[cfg(feature = "seaorm")]
pub mod relay;
pub mod stamps;

/// xorshift: a tiny deterministic generator for test workloads, one per task.
pub struct Rng(pub u64);

impl Rng {
    /// The generator of stream `stream` of `seed` (splitmix64 of both, never the all-zero
    /// state xorshift cannot leave): independent streams of one seed, e.g. one per task.
    pub fn derive(seed: u64, stream: u64) -> Self {
        let mut z = seed ^ stream.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        Rng((z ^ (z >> 31)) | 1)
    }

    /// The next number in `0..n`.
    pub fn next(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}
