//! A private Redis Cluster of `redis-server` processes: 3 masters (and a replica each) on free
//! loopback ports, created with `redis-cli --cluster create`. The benches include this file
//! too; it needs `unique`, `free_port` and `answers_ping` beside it (`process.rs`).
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

pub struct PrivateCluster {
    nodes: Vec<(u16, Option<Child>)>,
    dir: PathBuf,
}

impl PrivateCluster {
    /// Starts six nodes (3 masters, 3 replicas), creates the cluster and waits until every
    /// node reports it healthy.
    pub fn start() -> Self {
        Self::start_with_replicas(1)
    }

    /// Starts 3 masters with `replicas` replicas each.
    pub fn start_with_replicas(replicas: usize) -> Self {
        let dir = std::env::temp_dir().join(super::unique("cluster"));
        std::fs::create_dir_all(&dir).expect("a temporary directory");
        let mut nodes = Vec::new();
        while nodes.len() < 3 * (1 + replicas) {
            let port = super::free_port();
            // The cluster bus listens on port + 10000: both must be free.
            if port > 55_000 || std::net::TcpListener::bind(("127.0.0.1", port + 10_000)).is_err() {
                continue;
            }
            if nodes.iter().any(|&(p, _)| p == port) {
                continue;
            }
            // A free port is not reserved: a concurrent test may bind it first. Then this
            // node exits (or another server answers there), and another port is tried.
            if let Some(child) = start_node(port, &dir) {
                nodes.push((port, Some(child)));
            }
        }
        let cluster = PrivateCluster { nodes, dir };
        let out = Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(cluster.nodes.iter().map(|(p, _)| format!("127.0.0.1:{p}")))
            .args(["--cluster-replicas", &replicas.to_string(), "--cluster-yes"])
            .output()
            .expect("redis-cli must be installed for this test (it comes with redis-server)");
        assert!(
            out.status.success(),
            "redis-cli --cluster create failed: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        cluster.wait_until_healthy();
        cluster.wait_for_replicas_in_sync();
        cluster
    }

    /// Waits until every replica's link to its master is up: before its first sync, a
    /// replica's data is too old to be promoted.
    fn wait_for_replicas_in_sync(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        for &(port, _) in &self.nodes {
            loop {
                let info: String = Self::client(port)
                    .and_then(|mut c| redis::cmd("INFO").arg("replication").query(&mut c).ok())
                    .unwrap_or_default();
                if info.contains("role:master") || info.contains("master_link_status:up") {
                    break;
                }
                assert!(Instant::now() < deadline, "replica {port} never synced");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }

    /// Waits until the node on `port` (restarted after a failover) is a replica in sync with
    /// its master: before that its slot has no replica a second failover could promote.
    pub fn wait_for_replica(&self, port: u16) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let info: String = Self::client(port)
                .and_then(|mut c| redis::cmd("INFO").arg("replication").query(&mut c).ok())
                .unwrap_or_default();
            if info.contains("role:slave") && info.contains("master_link_status:up") {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "node {port} never became a synced replica"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits until the cluster has failed `dead` over: every live node marks it failed, it
    /// serves no slot, and the cluster is healthy again.
    pub fn wait_for_failover(&self, dead: u16) {
        let deadline = Instant::now() + Duration::from_secs(60);
        let needle = format!("127.0.0.1:{dead}@");
        loop {
            let done = self
                .nodes
                .iter()
                .filter(|(_, c)| c.is_some())
                .all(|&(p, _)| {
                    Self::client(p).is_some_and(|mut c| {
                        let nodes: String = redis::cmd("CLUSTER")
                            .arg("NODES")
                            .query(&mut c)
                            .unwrap_or_default();
                        nodes.lines().any(|l| {
                            l.contains(&needle) && l.contains("fail") && l.split(' ').count() <= 8
                        })
                    })
                });
            if done {
                break;
            }
            assert!(Instant::now() < deadline, "node {dead} was not failed over");
            std::thread::sleep(Duration::from_millis(100));
        }
        self.wait_until_healthy();
    }

    /// One cluster per test binary, for tests that do not stop nodes; it is killed when the
    /// test process exits.
    pub fn shared() -> &'static PrivateCluster {
        static SHARED: OnceLock<PrivateCluster> = OnceLock::new();
        SHARED.get_or_init(|| {
            let cluster = PrivateCluster::start();
            cluster.kill_when_this_process_exits();
            cluster
        })
    }

    /// A watcher process that kills the nodes (by pid) once this test process is gone: a
    /// static is never dropped.
    // The watcher must outlive this process, so nothing here may wait for it.
    #[allow(clippy::zombie_processes)]
    fn kill_when_this_process_exits(&self) {
        let pids: Vec<String> = self
            .nodes
            .iter()
            .filter_map(|(_, c)| c.as_ref().map(|c| c.id().to_string()))
            .collect();
        let script = format!(
            "while kill -0 {} 2>/dev/null; do sleep 0.5; done; kill -9 {} 2>/dev/null; rm -rf '{}'",
            std::process::id(),
            pids.join(" "),
            self.dir.display()
        );
        Command::new("sh")
            .args(["-c", &script])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("sh");
    }

    /// `redis://127.0.0.1:<port>` of every node.
    pub fn urls(&self) -> Vec<String> {
        self.nodes
            .iter()
            .map(|(p, _)| format!("redis://127.0.0.1:{p}"))
            .collect()
    }

    fn client(port: u16) -> Option<redis::Connection> {
        redis::Client::open(format!("redis://127.0.0.1:{port}"))
            .and_then(|c| c.get_connection_with_timeout(Duration::from_secs(1)))
            .ok()
    }

    /// Waits until every live node reports `cluster_state:ok` and agrees on the masters.
    pub fn wait_until_healthy(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let healthy = self
                .nodes
                .iter()
                .filter(|(_, c)| c.is_some())
                .all(|&(p, _)| {
                    Self::client(p).is_some_and(|mut c| {
                        redis::cmd("CLUSTER")
                            .arg("INFO")
                            .query::<String>(&mut c)
                            .is_ok_and(|info| {
                                info.contains("cluster_state:ok")
                                    && info.contains("cluster_slots_ok:16384")
                            })
                    })
                });
            if healthy {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the cluster did not become healthy"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The port of the master that serves `key` now.
    pub fn master_of(&self, key: &str) -> u16 {
        let port = self
            .nodes
            .iter()
            .find(|(_, c)| c.is_some())
            .expect("a live node")
            .0;
        let mut c = Self::client(port).expect("a live node answers");
        let slot: u16 = redis::cmd("CLUSTER")
            .arg("KEYSLOT")
            .arg(key)
            .query(&mut c)
            .expect("CLUSTER KEYSLOT");
        let nodes: String = redis::cmd("CLUSTER")
            .arg("NODES")
            .query(&mut c)
            .expect("CLUSTER NODES");
        for line in nodes.lines() {
            let fields: Vec<&str> = line.split(' ').collect();
            if fields.len() < 9 || !fields[2].contains("master") || fields[2].contains("fail") {
                continue;
            }
            let serves = fields[8..].iter().any(|range| {
                let (from, to) = range.split_once('-').unwrap_or((range, range));
                matches!((from.parse::<u16>(), to.parse::<u16>()), (Ok(f), Ok(t)) if (f..=t).contains(&slot))
            });
            if serves {
                let addr = fields[1].split('@').next().unwrap_or_default();
                return addr
                    .rsplit(':')
                    .next()
                    .and_then(|p| p.parse().ok())
                    .expect("a port");
            }
        }
        panic!("no master serves slot {slot}");
    }

    /// Starts a killed node again; it rejoins the cluster (as a replica, if it was failed
    /// over) from its cluster configuration file.
    pub fn restart(&mut self, port: u16) {
        let dir = self.dir.clone();
        let node = self
            .nodes
            .iter_mut()
            .find(|(p, _)| *p == port)
            .expect("a node");
        assert!(node.1.is_none(), "node {port} is running");
        node.1 = Some(spawn_node(port, &dir));
        let deadline = Instant::now() + Duration::from_secs(10);
        while !super::answers_ping(port) {
            assert!(
                Instant::now() < deadline,
                "cluster node {port} did not come back"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The ports of the replicas of the master on `port`, as it reports them.
    pub fn replicas_of(&self, port: u16) -> Vec<u16> {
        let info: String = Self::client(port)
            .and_then(|mut c| redis::cmd("INFO").arg("replication").query(&mut c).ok())
            .unwrap_or_default();
        info.lines()
            .filter(|l| l.starts_with("slave"))
            .filter_map(|l| {
                l.split(',')
                    .find_map(|f| f.strip_prefix("port="))
                    .and_then(|p| p.parse().ok())
            })
            .collect()
    }

    /// Cuts the replicas of the master on `port` off from it, as a network partition would:
    /// each replica is stopped (SIGSTOP) and the master drops its replication links, so the
    /// writes it acknowledges from now on reach no replica. [`PrivateCluster::heal`] resumes
    /// them. Returns the replicas cut off.
    pub fn partition_replicas(&self, port: u16) -> Vec<u16> {
        let replicas = self.replicas_of(port);
        for &replica in &replicas {
            self.signal(replica, "STOP");
        }
        if let Some(mut c) = Self::client(port) {
            let _: redis::RedisResult<i64> = redis::cmd("CLIENT")
                .arg("KILL")
                .arg("TYPE")
                .arg("replica")
                .query(&mut c);
        }
        replicas
    }

    /// Resumes replicas stopped by [`PrivateCluster::partition_replicas`].
    pub fn heal(&self, replicas: &[u16]) {
        for &replica in replicas {
            self.signal(replica, "CONT");
        }
    }

    fn signal(&self, port: u16, signal: &str) {
        if let Some((_, Some(child))) = self.nodes.iter().find(|(p, _)| *p == port) {
            let _ = Command::new("kill")
                .arg(format!("-{signal}"))
                .arg(child.id().to_string())
                .status();
        }
    }

    /// Kills (SIGKILL) the node on `port`.
    pub fn kill(&mut self, port: u16) {
        let node = self
            .nodes
            .iter_mut()
            .find(|(p, _)| *p == port)
            .expect("a node");
        if let Some(mut child) = node.1.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Spawns a node on `port` and waits until it answers; `None` when the port turned out to be
/// taken (the node exited, or the server answering there is another process).
fn start_node(port: u16, dir: &std::path::Path) -> Option<Child> {
    let mut child = spawn_node(port, dir);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(Some(_)) = child.try_wait() {
            return None;
        }
        if super::answers_ping(port) {
            let pid = PrivateCluster::client(port).and_then(|mut c| {
                let info: String = redis::cmd("INFO").arg("server").query(&mut c).ok()?;
                info.lines()
                    .find_map(|l| l.strip_prefix("process_id:"))
                    .and_then(|p| p.trim().parse::<u32>().ok())
            });
            if pid == Some(child.id()) {
                return Some(child);
            }
            if pid.is_some() {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
        }
        assert!(
            Instant::now() < deadline,
            "cluster node {port} did not come up"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn spawn_node(port: u16, dir: &std::path::Path) -> Child {
    Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--cluster-enabled", "yes", "--cluster-node-timeout", "1000"])
        .args(["--cluster-config-file", &format!("nodes-{port}.conf")])
        .args(["--save", "", "--appendonly", "no"])
        // Replicas sync at once, so a master can be failed over right after the start.
        .args(["--repl-diskless-sync-delay", "0"])
        .arg("--dir")
        .arg(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("redis-server must be installed for this test (.ci/run installs it)")
}

impl Drop for PrivateCluster {
    fn drop(&mut self) {
        for (_, child) in &mut self.nodes {
            if let Some(mut child) = child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
