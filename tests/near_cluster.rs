//! The near cache on Redis Cluster (issue 19): one subscription per master, heartbeat rounds
//! on every master, invalidation steps that publish on the master they change
//! (`subscriber_cluster.rs`). "Processes" are separate `RedisBackend`s on one prefix (own
//! connections, own tiers, own subscribers). Tests that kill nodes start a private cluster;
//! the others share one.
#![cfg(feature = "cluster")]

mod support;

use std::time::{Duration, Instant};

use bytes::Bytes;
use matroska::backend::redis::{NearConfig, RedisBackend, RedisConfig};
use matroska::backend::{Backend, PutRequest};
use support::cluster::PrivateCluster;

const LAG: Duration = Duration::from_millis(200);
const DEADLINE: Duration = Duration::from_secs(20);

fn near_config(urls: Vec<String>, prefix: &str) -> RedisConfig {
    RedisConfig::cluster(urls, prefix)
        .timeout(Duration::from_millis(500))
        .near_cache(NearConfig::new(1 << 20).max_lag(LAG))
}

async fn put(backend: &RedisBackend, key: &str, value: &str, deps: &[String]) {
    let request = PutRequest::new(
        key,
        Bytes::copy_from_slice(value.as_bytes()),
        deps,
        Duration::from_secs(60),
    );
    backend.put(request).await.expect("put");
}

async fn eventually(what: &str, mut check: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + DEADLINE;
    while !check().await {
        assert!(Instant::now() < deadline, "not within {DEADLINE:?}: {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Reads `key` until the near tier holds it (the subscriber must be confirmed first).
async fn fill(backend: &RedisBackend, key: &str, value: &str) {
    eventually("the near tier serves the key", async || {
        if let Ok(read) = backend.get(key).await {
            assert_eq!(read.as_deref(), Some(value.as_bytes()), "{key}");
        }
        backend.near_peek(key).is_some()
    })
    .await;
}

fn peek(backend: &RedisBackend, key: &str) -> Option<String> {
    backend
        .near_peek(key)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
}

/// While `until`, reads `key` from A's near tier only, and fails if it serves `stale` in a read
/// that began `LAG` or more after `invalidated`.
async fn never_stale_beyond_lag(
    a: &RedisBackend,
    key: &str,
    stale: &str,
    invalidated: Instant,
    until: Instant,
) {
    while Instant::now() < until {
        let began = Instant::now();
        if let Some(v) = peek(a, key) {
            assert!(
                v != stale || began < invalidated + LAG,
                "served {v:?} {:?} after the invalidation returned",
                began - invalidated
            );
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// One dependency whose stamp lives on each master, so every master's publishing is tested.
fn deps_on_every_master(cluster: &PrivateCluster, b: &RedisBackend) -> Vec<String> {
    let mut by_master = std::collections::BTreeMap::new();
    for i in 0.. {
        let dep = format!("dep{i}");
        by_master
            .entry(cluster.master_of(&b.stamp_key(&dep)))
            .or_insert(dep);
        if by_master.len() == 3 {
            break;
        }
    }
    by_master.into_values().collect()
}

/// Kills every subscribed connection on every node that answers (other tests' too: they
/// resubscribe); how many.
async fn kill_subscriptions(urls: Vec<String>) -> i64 {
    tokio::task::spawn_blocking(move || {
        urls.iter()
            .filter_map(|url| {
                let mut c = redis::Client::open(url.as_str())
                    .ok()?
                    .get_connection_with_timeout(Duration::from_millis(500))
                    .ok()?;
                redis::cmd("CLIENT")
                    .arg("KILL")
                    .arg("TYPE")
                    .arg("pubsub")
                    .query::<i64>(&mut c)
                    .ok()
            })
            .sum()
    })
    .await
    .unwrap()
}

async fn shared() -> &'static PrivateCluster {
    tokio::task::spawn_blocking(PrivateCluster::shared)
        .await
        .expect("the cluster starts")
}

/// Another process (B, without a near cache: it still publishes) invalidates, deletes or
/// overwrites on whichever master holds the stamp or entry; A's near copy goes within
/// `max_lag`, and A's own invalidations show in A before they return.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_process_on_the_cluster_stops_serving_what_one_invalidates_deletes_or_overwrites() {
    let cluster = shared().await;
    let prefix = support::unique("nc_two");
    let a = support::redis_backend_with(near_config(cluster.urls(), &prefix)).await;
    let b = support::redis_backend_with(RedisConfig::cluster(cluster.urls(), &prefix)).await;
    let deps = deps_on_every_master(cluster, &b);
    for (i, dep) in deps.iter().enumerate() {
        let key = format!("k{i}");
        put(&b, &key, "v1", std::slice::from_ref(dep)).await;
        fill(&a, &key, "v1").await;
        b.invalidate(std::slice::from_ref(dep)).await.unwrap();
        let invalidated = Instant::now();
        never_stale_beyond_lag(&a, &key, "v1", invalidated, invalidated + 2 * LAG).await;
        assert_eq!(peek(&a, &key), None, "{dep}: invalidated by B");
        assert_eq!(a.get(&key).await.unwrap(), None);
    }
    // Deletes and overwrites, of entries on every master.
    for i in 0..6 {
        let key = format!("d{i}");
        put(&b, &key, "v1", &deps).await;
        fill(&a, &key, "v1").await;
        if i % 2 == 0 {
            b.delete(&key).await.unwrap();
        } else {
            put(&b, &key, "v2", &deps).await;
        }
        let written = Instant::now();
        never_stale_beyond_lag(&a, &key, "v1", written, written + 2 * LAG).await;
        assert_eq!(peek(&a, &key), None, "{key}: deleted or overwritten by B");
    }
    // A's own invalidation, broadcast not heard (stalled): gone before it returns.
    put(&b, "own", "v1", &deps).await;
    fill(&a, "own", "v1").await;
    a.near_stall_subscriber(true);
    a.invalidate(&deps[1..2]).await.unwrap();
    assert_eq!(peek(&a, "own"), None, "own invalidation");
    a.near_stall_subscriber(false);
}

/// A paused subscriber (it hears nothing, sends no round) serves nothing `max_lag` after an
/// invalidation it did not hear, and serves the new value once live again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_subscriber_serves_nothing_beyond_max_lag() {
    let cluster = shared().await;
    let prefix = support::unique("nc_pause");
    let a = support::redis_backend_with(near_config(cluster.urls(), &prefix)).await;
    let b = support::redis_backend_with(RedisConfig::cluster(cluster.urls(), &prefix)).await;
    let deps = deps_on_every_master(cluster, &b);
    put(&b, "k", "old", &deps).await;
    fill(&a, "k", "old").await;
    a.near_stall_subscriber(true);
    b.invalidate(&deps[2..]).await.unwrap();
    let invalidated = Instant::now();
    never_stale_beyond_lag(&a, "k", "old", invalidated, invalidated + 3 * LAG).await;
    assert_eq!(peek(&a, "k"), None);
    put(&b, "k", "new", &deps).await;
    a.near_stall_subscriber(false);
    fill(&a, "k", "new").await;
}

/// Near hits against remote hits on the cluster, same value, one task (printed, not asserted).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn near_and_remote_hits_on_the_cluster() {
    let cluster = shared().await;
    let prefix = support::unique("nc_time");
    let a = support::redis_backend_with(near_config(cluster.urls(), &prefix)).await;
    let b = support::redis_backend_with(RedisConfig::cluster(cluster.urls(), &prefix)).await;
    let deps: Vec<String> = (0..5).map(|i| format!("row{i}")).collect();
    put(&b, "k", &"x".repeat(100), &deps).await;
    fill(&a, "k", &"x".repeat(100)).await;
    for round in 0..3 {
        let n = 20_000;
        let started = Instant::now();
        for _ in 0..n {
            assert!(a.get("k").await.unwrap().is_some());
        }
        let near = started.elapsed() / n;
        let n = 2_000;
        let started = Instant::now();
        for _ in 0..n {
            assert!(b.get("k").await.unwrap().is_some());
        }
        let remote = started.elapsed() / n;
        println!("round {round}: near hit {near:?}, remote hit {remote:?}");
    }
}

/// The master holding a dependency's stamp is killed and its replica promoted. A reads only
/// from its near tier (its data connection carries nothing but heartbeat rounds), and is
/// stalled from before the kill until after B's invalidation, its subscriptions on the
/// surviving masters killed too: nothing of that invalidation reaches it, over the bus or
/// otherwise. A never serves the old value `max_lag` after the invalidation returned, then
/// subscribes on the new masters, empty, and serves the new value.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_near_only_reader_stops_serving_within_max_lag_after_a_failover() {
    let mut cluster = tokio::task::spawn_blocking(PrivateCluster::start)
        .await
        .unwrap();
    let prefix = support::unique("nc_failover");
    let a = support::redis_backend_with(near_config(cluster.urls(), &prefix)).await;
    let b = support::redis_backend_with(
        RedisConfig::cluster(cluster.urls(), &prefix).timeout(Duration::from_millis(500)),
    )
    .await;
    let deps = deps_on_every_master(&cluster, &b);
    let dep = deps[0].clone();
    put(&b, "k", "old", std::slice::from_ref(&dep)).await;
    fill(&a, "k", "old").await;
    let port = cluster.master_of(&b.stamp_key(&dep));
    let stamp_of = b.stamp_key(&dep);
    a.near_stall_subscriber(true);
    let cluster = tokio::task::spawn_blocking(move || {
        cluster.kill(port);
        cluster.wait_for_failover(port);
        cluster
    })
    .await
    .unwrap();
    assert_ne!(cluster.master_of(&stamp_of), port);
    assert!(kill_subscriptions(cluster.urls()).await >= 2);
    // B invalidates on the promoted master as soon as its slot map allows.
    let deadline = Instant::now() + DEADLINE;
    while let Err(e) = b.invalidate(std::slice::from_ref(&dep)).await {
        assert!(Instant::now() < deadline, "{e}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let invalidated = Instant::now();
    never_stale_beyond_lag(&a, "k", "old", invalidated, invalidated + 3 * LAG).await;
    assert_eq!(peek(&a, "k"), None);
    put(&b, "k", "new", std::slice::from_ref(&dep)).await;
    a.near_stall_subscriber(false);
    fill(&a, "k", "new").await;

    // A manual failover (`CLUSTER FAILOVER` on a replica): the old master lives on as a
    // replica, A's subscription on it stays open, and A's data connection, which only A's
    // rounds would use, still names it a master. Nothing is invalidated, yet A's tier
    // empties: the next round finds the old master demoted, another master, a new
    // replication id.
    let other = deps[1].clone();
    put(&b, "k1", "v", std::slice::from_ref(&other)).await;
    fill(&a, "k1", "v").await;
    let master = cluster.master_of(&b.stamp_key(&other));
    let replica = replica_of(master, &cluster.urls());
    let mut c = redis::Client::open(format!("redis://127.0.0.1:{replica}"))
        .unwrap()
        .get_connection()
        .unwrap();
    let _: () = redis::cmd("CLUSTER").arg("FAILOVER").query(&mut c).unwrap();
    eventually("A's tier empties after the failover", async || {
        a.near_peek("k1").is_none()
    })
    .await;
    fill(&a, "k1", "v").await;
    drop(cluster);
}

/// The port of a replica of the master on `master`.
fn replica_of(master: u16, urls: &[String]) -> u16 {
    let needle = format!("127.0.0.1:{master}@");
    for url in urls {
        let Ok(mut c) = redis::Client::open(url.as_str())
            .and_then(|c| c.get_connection_with_timeout(Duration::from_millis(500)))
        else {
            continue;
        };
        let nodes: String = redis::cmd("CLUSTER").arg("NODES").query(&mut c).unwrap();
        let id = nodes
            .lines()
            .find(|l| l.contains(&needle))
            .and_then(|l| l.split(' ').next())
            .unwrap()
            .to_owned();
        let replica = nodes.lines().find(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            f.len() > 3 && f[2].contains("slave") && !f[2].contains("fail") && f[3] == id
        });
        if let Some(line) = replica {
            let addr = line.split(' ').nth(1).unwrap();
            return addr
                .split('@')
                .next()
                .unwrap()
                .rsplit(':')
                .next()
                .unwrap()
                .parse()
                .unwrap();
        }
    }
    panic!("no live replica of {master}");
}

/// A's subscriptions are killed (`CLIENT KILL`) while A is stalled, so A cannot notice, and
/// B's invalidation reaches none of them. A serves nothing beyond `max_lag`, then resubscribes
/// on every master, empty, and serves the new value.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_subscriptions_serve_nothing_beyond_max_lag_and_resubscribe_empty() {
    let cluster = shared().await;
    let prefix = support::unique("nc_kill");
    let a = support::redis_backend_with(near_config(cluster.urls(), &prefix)).await;
    let b = support::redis_backend_with(RedisConfig::cluster(cluster.urls(), &prefix)).await;
    let deps = deps_on_every_master(cluster, &b);
    put(&b, "k", "old", &deps[..1]).await;
    fill(&a, "k", "old").await;
    a.near_stall_subscriber(true);
    assert!(kill_subscriptions(cluster.urls()).await >= 3);
    b.invalidate(&deps[..1]).await.unwrap();
    let invalidated = Instant::now();
    never_stale_beyond_lag(&a, "k", "old", invalidated, invalidated + 3 * LAG).await;
    put(&b, "k", "new", &deps[..1]).await;
    a.near_stall_subscriber(false);
    fill(&a, "k", "new").await;
}
