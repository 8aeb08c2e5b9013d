//! Processes and names the tests (and the benches, which include this file) start and use:
//! unique namespaces, free ports, private `redis-server`s. Nothing here depends on matroska.
#![allow(dead_code)]

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

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

/// A `redis-server` of our own on a free port, for tests that count commands, stop or flush
/// the server. Killed on drop.
pub struct PrivateRedis {
    child: Option<Child>,
    pub port: u16,
    /// The directory of its snapshots ([`PrivateRedis::start_persistent`]), removed on drop.
    dir: Option<std::path::PathBuf>,
}

impl PrivateRedis {
    /// Starts a server and waits until it answers PING.
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// Starts a server with extra `--name value` arguments.
    pub fn start_with(args: &[&str]) -> Self {
        let port = free_port();
        let mut redis = PrivateRedis {
            child: None,
            port,
            dir: None,
        };
        redis.spawn(args);
        redis
    }

    /// Starts a server that keeps its snapshot (`SAVE`, never automatic) in a directory of
    /// its own, for [`PrivateRedis::restart_from_snapshot`].
    pub fn start_persistent() -> Self {
        let dir = std::env::temp_dir().join(unique("snapshot"));
        std::fs::create_dir_all(&dir).expect("a temporary directory");
        let mut redis = PrivateRedis {
            child: None,
            port: free_port(),
            dir: Some(dir),
        };
        redis.spawn(&[]);
        redis
    }

    fn spawn(&mut self, args: &[&str]) {
        let dir = self
            .dir
            .as_ref()
            .map(|d| d.to_str().expect("a UTF-8 temporary directory"));
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .args(dir.map(|d| ["--dir", d]).into_iter().flatten())
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

    /// Stops the server (SIGSTOP) without losing its data: it accepts connections but answers
    /// nothing, so clients time out, until [`PrivateRedis::resume`].
    pub fn pause(&self) {
        self.signal("STOP");
    }

    /// Resumes a [paused](PrivateRedis::pause) server (SIGCONT) and waits until it answers.
    pub fn resume(&self) {
        self.signal("CONT");
        self.wait_until(true);
    }

    fn signal(&self, name: &str) {
        let pid = self.child.as_ref().expect("the server runs").id();
        let status = Command::new("kill")
            .args([format!("-{name}"), pid.to_string()])
            .status()
            .expect("kill(1) runs");
        assert!(status.success(), "kill -{name} {pid} failed");
    }

    /// Starts the server again on the same port, empty (a persistent server's snapshot is
    /// deleted first).
    pub fn restart(&mut self) {
        if let Some(dir) = &self.dir {
            let _ = std::fs::remove_file(dir.join("dump.rdb"));
        }
        self.spawn(&[]);
    }

    /// Kills a [persistent](PrivateRedis::start_persistent) server (SIGKILL, as a crash) and
    /// starts it again on the same port and directory: it comes back with its last `SAVE`.
    pub fn restart_from_snapshot(&mut self) {
        assert!(
            self.dir.is_some(),
            "start_persistent keeps snapshots, start does not"
        );
        self.kill();
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
        if let Some(dir) = self.dir.take() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free local port")
}

pub fn answers_ping(port: u16) -> bool {
    use std::io::{Read, Write};
    let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
    let mut buf = [0_u8; 64];
    stream.write_all(b"PING\r\n").is_ok()
        && matches!(stream.read(&mut buf), Ok(n) if n > 0 && (buf.starts_with(b"+PONG") || buf.starts_with(b"-NOAUTH")))
}
