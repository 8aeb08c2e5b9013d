//! Shared test support: service URLs, unique namespaces, private redis-server instances.
//!
//! Services come from the environment with this machine's defaults. A missing service is a
//! test failure with a message saying which, never a silent skip.
#![allow(dead_code)]

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use matroska::Cache;
use matroska::backend::memory::MemoryBackend;
use matroska::backend::redis::{RedisBackend, RedisConfig};

/// `REDIS_URL`, default `redis://127.0.0.1:6379`.
pub fn redis_url() -> String {
    std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// A namespace no other test (in this run or a concurrent one) uses.
pub fn unique(name: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("the clock is after 1970")
        .as_nanos();
    format!(
        "t_{name}_{}_{}_{}",
        std::process::id(),
        nanos % 1_000_000_000,
        N.fetch_add(1, Ordering::Relaxed)
    )
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

/// A `redis-server` of our own on a free port, for tests that count commands, stop or flush
/// the server. Killed on drop.
pub struct PrivateRedis {
    child: Option<Child>,
    pub port: u16,
}

impl PrivateRedis {
    /// Starts a server and waits until it answers PING.
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// Starts a server with extra `--name value` arguments.
    pub fn start_with(args: &[&str]) -> Self {
        let port = free_port();
        let mut redis = PrivateRedis { child: None, port };
        redis.spawn(args);
        redis
    }

    fn spawn(&mut self, args: &[&str]) {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server must be installed for this test (.ci/run installs it)");
        self.child = Some(child);
        self.wait_until(true);
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Kills the server (SIGKILL) and waits until the port refuses connections.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.wait_until(false);
    }

    /// Starts the server again on the same port (empty: it keeps nothing on disk).
    pub fn restart(&mut self) {
        self.spawn(&[]);
    }

    /// A synchronous client for inspection.
    pub fn client(&self) -> redis::Connection {
        redis::Client::open(self.url())
            .and_then(|c| c.get_connection())
            .expect("private redis-server answers")
    }

    /// Sum of `calls` over every command in `INFO commandstats`.
    pub fn total_calls(&self) -> u64 {
        let info: String = redis::cmd("INFO")
            .arg("commandstats")
            .query(&mut self.client())
            .expect("INFO works");
        info.lines()
            .filter_map(|l| l.split("calls=").nth(1))
            .filter_map(|rest| rest.split(',').next()?.parse::<u64>().ok())
            .sum()
    }

    /// `calls` of one command (lower-case name, e.g. `evalsha`) in `INFO commandstats`.
    pub fn calls(&self, command: &str) -> u64 {
        let info: String = redis::cmd("INFO")
            .arg("commandstats")
            .query(&mut self.client())
            .expect("INFO works");
        let needle = format!("cmdstat_{command}:calls=");
        info.lines()
            .find_map(|l| l.strip_prefix(&needle))
            .and_then(|rest| rest.split(',').next()?.parse().ok())
            .unwrap_or(0)
    }

    fn wait_until(&self, up: bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let answering = std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok();
            if answering == up {
                if up {
                    // Accepting connections is not yet answering commands; any reply (even
                    // NOAUTH on a password-protected server) means it answers.
                    if answers_ping(self.port) {
                        return;
                    }
                } else {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "redis-server on port {} did not come {}",
                self.port,
                if up { "up" } else { "down" }
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

pub(crate) fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free local port")
}

pub(crate) fn answers_ping(port: u16) -> bool {
    use std::io::{Read, Write};
    let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
    let mut buf = [0_u8; 64];
    stream.write_all(b"PING\r\n").is_ok()
        && matches!(stream.read(&mut buf), Ok(n) if n > 0 && (buf.starts_with(b"+PONG") || buf.starts_with(b"-NOAUTH")))
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
pub mod faults;
pub mod ledger;

/// xorshift: a tiny deterministic generator for test workloads, one per task.
pub struct Rng(pub u64);

impl Rng {
    /// The next number in `0..n`.
    pub fn next(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}
