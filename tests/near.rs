//! The Redis backend's near cache (issue 19): an in-process tier that other processes'
//! invalidations reach by broadcast, and that serves nothing it cannot vouch for within
//! `max_lag`, under faults included.
//!
//! "Processes" are separate `RedisBackend`s (own connections, own near tiers, own
//! subscribers) on one prefix, except in `three_processes_one_writer_two_readers`, which runs
//! real child processes (this test binary again, in the role named by `NEAR_ROLE`).

mod support;

use std::io::{BufRead, BufReader, Write as _};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use matroska::backend::Backend;
use matroska::backend::PutRequest;
use matroska::backend::redis::{NearConfig, RedisBackend, RedisConfig};
use support::{PrivateRedis, redis_backend_with, redis_url, unique};

const LAG: Duration = Duration::from_millis(200);
const DEADLINE: Duration = Duration::from_secs(10);

fn near_config(url: &str, prefix: &str) -> RedisConfig {
    RedisConfig::new(url, prefix).near_cache(NearConfig::new(1 << 20).max_lag(LAG))
}

async fn put(backend: &RedisBackend, key: &str, value: &str, deps: &[&str]) {
    let deps: Vec<String> = deps.iter().map(|d| (*d).to_owned()).collect();
    let request = PutRequest::new(
        key,
        Bytes::copy_from_slice(value.as_bytes()),
        &deps,
        Duration::from_secs(60),
    );
    backend.put(request).await.expect("put");
}

async fn invalidate(backend: &RedisBackend, dep: &str) {
    backend
        .invalidate(&[dep.to_owned()])
        .await
        .expect("invalidate");
}

/// Polls `check` until it holds, failing the test after [`DEADLINE`].
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
        let read = backend.get(key).await.expect("get");
        assert_eq!(read.as_deref(), Some(value.as_bytes()), "{key}");
        backend.near_peek(key).is_some()
    })
    .await;
}

/// Waits until more than `before` reads of `backend` stopped at its closed fill gate.
async fn fill_gate_reached(backend: &RedisBackend, before: usize) {
    tokio::time::timeout(DEADLINE, backend.near_fills_stopped_after(before))
        .await
        .expect("the read reaches the fill gate (it went to Redis and found a value)");
}

fn peek(backend: &RedisBackend, key: &str) -> Option<String> {
    backend
        .near_peek(key)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
}

#[tokio::test]
async fn another_process_stops_serving_what_one_invalidates_or_deletes() {
    let prefix = unique("near_two");
    let a = redis_backend_with(near_config(&redis_url(), &prefix)).await;
    // The writer has no near cache: it still publishes.
    let b = redis_backend_with(RedisConfig::new(redis_url(), &prefix)).await;

    put(&b, "k", "v1", &["dep"]).await;
    fill(&a, "k", "v1").await;
    invalidate(&b, "dep").await;
    eventually("A drops the value B invalidated", async || {
        a.near_peek("k").is_none()
    })
    .await;
    assert_eq!(a.get("k").await.unwrap(), None);

    // A's own invalidation is visible in A as soon as it returns.
    put(&b, "k", "v2", &["dep"]).await;
    fill(&a, "k", "v2").await;
    a.stall_and(|| async {
        invalidate(&a, "dep").await;
        assert_eq!(
            peek(&a, "k"),
            None,
            "own invalidation, broadcast not yet heard"
        );
        assert_eq!(a.get("k").await.unwrap(), None);
    })
    .await;

    // Deletes are broadcast too, and drop A's copy locally at once.
    put(&b, "k", "v3", &["dep"]).await;
    fill(&a, "k", "v3").await;
    b.delete("k").await.unwrap();
    eventually("A drops the key B deleted", async || {
        a.near_peek("k").is_none()
    })
    .await;
    put(&b, "k", "v4", &["dep"]).await;
    fill(&a, "k", "v4").await;
    a.stall_and(|| async {
        a.delete("k").await.unwrap();
        assert_eq!(peek(&a, "k"), None, "own delete");
    })
    .await;
}

/// Runs `f` with the backend's subscriber stalled, so only local effects can show.
trait StallAnd {
    async fn stall_and<F: AsyncFnOnce()>(&self, f: F);
}

impl StallAnd for RedisBackend {
    async fn stall_and<F: AsyncFnOnce()>(&self, f: F) {
        self.near_stall_subscriber(true);
        f().await;
        self.near_stall_subscriber(false);
    }
}

/// A remote read that found the old value, then an invalidation that A records (from B's
/// broadcast) before the read inserts: the value must not be served afterwards.
#[tokio::test]
async fn a_fill_racing_an_invalidation_never_leaves_a_stale_entry() {
    let prefix = unique("near_race");
    let a = Arc::new(redis_backend_with(near_config(&redis_url(), &prefix)).await);
    let b = redis_backend_with(RedisConfig::new(redis_url(), &prefix)).await;
    put(&b, "k", "old", &["dep"]).await;
    // A witness on the same dependency: its drop shows A recorded the broadcast.
    put(&b, "witness", "w", &["dep"]).await;
    fill(&a, "witness", "w").await;

    a.near_close_fills(true);
    let reader = tokio::spawn({
        let a = Arc::clone(&a);
        async move { a.get("k").await }
    });
    fill_gate_reached(&a, 0).await;
    // The read has the old value (valid when read) and waits before inserting it.
    invalidate(&b, "dep").await;
    eventually("A records B's invalidation", async || {
        a.near_peek("witness").is_none()
    })
    .await;
    a.near_close_fills(false);
    let read = reader.await.unwrap().unwrap();
    assert_eq!(
        read.as_deref(),
        Some(&b"old"[..]),
        "began before the invalidation"
    );
    assert_eq!(
        peek(&a, "k"),
        None,
        "the racing fill must not serve its value"
    );
    assert_eq!(a.get("k").await.unwrap(), None);

    // The same race against A's own invalidation.
    put(&b, "k", "old2", &["dep"]).await;
    a.near_close_fills(true);
    let reader = tokio::spawn({
        let a = Arc::clone(&a);
        async move { a.get("k").await }
    });
    fill_gate_reached(&a, 1).await;
    // Stalled throughout: only A's own marks can refuse the fill.
    a.stall_and(|| async {
        invalidate(&a, "dep").await;
        a.near_close_fills(false);
        reader.await.unwrap().unwrap();
        assert_eq!(peek(&a, "k"), None);
    })
    .await;
}

/// A put in this process is seen by this process's next read, also when a fill of the old
/// value was in flight (puts are not broadcast; see the consistency model).
#[tokio::test]
async fn a_put_is_read_back_in_its_own_process() {
    let prefix = unique("near_put");
    let a = Arc::new(redis_backend_with(near_config(&redis_url(), &prefix)).await);
    put(&a, "k", "v1", &["d1"]).await;
    fill(&a, "k", "v1").await;
    put(&a, "k", "v2", &["d2"]).await;
    assert_eq!(a.get("k").await.unwrap().as_deref(), Some(&b"v2"[..]));

    // The put also keeps the tier from serving v2, so the next read goes to Redis.
    put(&a, "k", "v2b", &["d2"]).await;
    a.near_close_fills(true);
    let reader = tokio::spawn({
        let a = Arc::clone(&a);
        async move { a.get("k").await }
    });
    fill_gate_reached(&a, 0).await;
    put(&a, "k", "v3", &["d3"]).await;
    a.near_close_fills(false);
    reader.await.unwrap().unwrap();
    assert_ne!(peek(&a, "k").as_deref(), Some("v2b"), "the fill in flight");
    assert_eq!(a.get("k").await.unwrap().as_deref(), Some(&b"v3"[..]));
}

fn client_kill_pubsub(redis: &PrivateRedis) -> i64 {
    redis::cmd("CLIENT")
        .arg("KILL")
        .arg("TYPE")
        .arg("pubsub")
        .query(&mut redis.client())
        .expect("CLIENT KILL")
}

/// While `until`, reads `key` from A's near tier and fails if it serves `stale` in a read that
/// began `LAG` or more after `invalidated`.
async fn never_stale_beyond_lag(
    a: &RedisBackend,
    key: &str,
    stale: &str,
    invalidated: Instant,
    until: Instant,
) -> usize {
    let mut served = 0;
    while Instant::now() < until {
        let began = Instant::now();
        if let Some(v) = peek(a, key) {
            assert!(
                v != stale || began < invalidated + LAG,
                "served {v:?} {:?} after the invalidation returned",
                began - invalidated
            );
            served += 1;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    served
}

/// The subscription is killed and its process stalled, so B's invalidation is never
/// delivered to A: A stops serving within `max_lag`, and resubscribes empty.
#[tokio::test]
async fn a_killed_subscription_serves_nothing_beyond_max_lag_and_resubscribes_empty() {
    let redis = PrivateRedis::start();
    let prefix = unique("near_kill");
    let a = redis_backend_with(near_config(&redis.url(), &prefix)).await;
    let b = redis_backend_with(RedisConfig::new(redis.url(), &prefix)).await;
    put(&b, "k", "old", &["dep"]).await;
    fill(&a, "k", "old").await;

    // Stalled, A cannot notice the kill; the invalidation then reaches no subscriber.
    a.near_stall_subscriber(true);
    assert_eq!(client_kill_pubsub(&redis), 1);
    invalidate(&b, "dep").await;
    let invalidated = Instant::now();
    let served = never_stale_beyond_lag(&a, "k", "old", invalidated, invalidated + 3 * LAG).await;
    assert_eq!(peek(&a, "k"), None, "served nothing after max_lag");
    println!("served {served} near hits of the old value within max_lag");

    put(&b, "k", "new", &["dep"]).await;
    a.near_stall_subscriber(false);
    eventually("A resubscribes", async || a.near_is_live()).await;
    assert_eq!(a.near_usage().unwrap().0, 0, "the tier starts empty");
    assert_eq!(peek(&a, "k"), None);
    assert_eq!(a.get("k").await.unwrap().as_deref(), Some(&b"new"[..]));

    // Killed between publish and delivery, without the stall: whatever was in flight, A
    // never serves the old value beyond max_lag and ends up with the new one.
    fill(&a, "k", "new").await;
    let killer = tokio::task::spawn_blocking({
        let url = redis.url();
        move || {
            let mut c = redis::Client::open(url).unwrap().get_connection().unwrap();
            let _: i64 = redis::cmd("CLIENT")
                .arg("KILL")
                .arg("TYPE")
                .arg("pubsub")
                .query(&mut c)
                .unwrap();
        }
    });
    invalidate(&b, "dep").await;
    let invalidated = Instant::now();
    killer.await.unwrap();
    never_stale_beyond_lag(&a, "k", "new", invalidated, invalidated + 3 * LAG).await;
    assert_eq!(peek(&a, "k"), None);
}

#[tokio::test]
async fn a_redis_restart_empties_the_near_tier_and_it_serves_nothing_meanwhile() {
    let mut redis = PrivateRedis::start();
    let prefix = unique("near_restart");
    let a = redis_backend_with(near_config(&redis.url(), &prefix)).await;
    put(&a, "k", "old", &["dep"]).await;
    fill(&a, "k", "old").await;

    redis.kill();
    eventually("A notices the lost subscription", async || {
        !a.near_is_live()
    })
    .await;
    let until = Instant::now() + 2 * LAG;
    while Instant::now() < until {
        assert_eq!(peek(&a, "k"), None, "nothing is served while disconnected");
        assert!(a.get("k").await.unwrap_or(None).is_none());
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    redis.restart();
    eventually("A resubscribes", async || a.near_is_live()).await;
    assert_eq!(a.near_usage().unwrap().0, 0, "the tier starts empty");
    assert_eq!(peek(&a, "k"), None);
    eventually("A reads the restarted server", async || {
        a.get("k").await.is_ok_and(|v| v.is_none())
    })
    .await;
}

#[tokio::test]
async fn dropping_the_backend_ends_its_subscription() {
    let redis = PrivateRedis::start();
    let a = redis_backend_with(near_config(&redis.url(), &unique("near_drop"))).await;
    let subscribers = || {
        let list: String = redis::cmd("CLIENT")
            .arg("LIST")
            .arg("TYPE")
            .arg("pubsub")
            .query(&mut redis.client())
            .unwrap();
        list.lines().count()
    };
    eventually("A subscribes", async || a.near_is_live()).await;
    assert_eq!(subscribers(), 1);
    drop(a);
    eventually("the subscription ends", async || subscribers() == 0).await;
}

/// The tier never holds more than its byte bound, whatever the workload; prints what an
/// entry costs.
#[tokio::test]
async fn the_byte_bound_holds_under_a_larger_workload() {
    let prefix = unique("near_bound");
    let bound = 200_000;
    let a = redis_backend_with(
        RedisConfig::new(redis_url(), &prefix)
            .near_cache(NearConfig::new(bound).max_lag(Duration::from_secs(5))),
    )
    .await;
    eventually("A is live", async || a.near_is_live()).await;
    let value = "x".repeat(1000);
    for i in 0..1000 {
        put(&a, &format!("k{i}"), &value, &["d1", "d2"]).await;
    }
    let mut near_hits = 0;
    for round in 0..2 {
        for i in 0..1000 {
            let key = format!("k{i}");
            let hit = a.near_peek(&key).is_some();
            assert_eq!(
                a.get(&key).await.unwrap().as_deref(),
                Some(value.as_bytes())
            );
            near_hits += usize::from(round == 1 && hit);
        }
        let (count, bytes) = a.near_usage().unwrap();
        assert!(bytes <= bound, "{bytes} bytes in {count} entries");
        assert!(count > 0);
        println!("round {round}: {count} entries, {bytes} bytes (bound {bound})");
    }
    println!("{near_hits} near hits in the second round of 1000 keys");
    // A hot set that fits is served from the tier.
    let mut hot_hits = 0;
    for _ in 0..20 {
        for i in 0..20 {
            let key = format!("k{i}");
            hot_hits += usize::from(a.near_peek(&key).is_some());
            a.get(&key).await.unwrap();
        }
    }
    assert!(
        hot_hits > 0,
        "a hot set smaller than the bound gets near hits"
    );
    let (count, bytes) = a.near_usage().unwrap();
    assert!(bytes <= bound, "{bytes} bytes in {count} entries");
    println!("hot set: {hot_hits} near hits in 400 reads of 20 keys");
}

// ---------------------------------------------------------------------------------------
// Three processes: one writer, two readers, on a private Redis, with faults.

const ROUNDS: u64 = 150;

fn wall_ns() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_nanos()
}

/// Not a test on its own: the body of a child process when `NEAR_ROLE` is set.
#[test]
fn near_child() {
    let Ok(role) = std::env::var("NEAR_ROLE") else {
        return;
    };
    let url = std::env::var("NEAR_URL").unwrap();
    let prefix = std::env::var("NEAR_PREFIX").unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        match role.as_str() {
            "writer" => writer(&url, &prefix).await,
            _ => reader(&url, &prefix).await,
        }
    });
}

async fn writer(url: &str, prefix: &str) {
    let w = RedisBackend::connect(RedisConfig::new(url, prefix))
        .await
        .unwrap();
    for version in 1..=ROUNDS {
        put(&w, "k", &version.to_string(), &["dep"]).await;
        // Time for the readers to fill their near tiers.
        tokio::time::sleep(Duration::from_millis(20)).await;
        invalidate(&w, "dep").await;
        println!("NEAR invalidated {version} {}", wall_ns());
    }
    println!("NEAR done");
}

async fn reader(url: &str, prefix: &str) {
    let r = RedisBackend::connect(near_config(url, prefix))
        .await
        .unwrap();
    eventually("the reader is live", async || r.near_is_live()).await;
    let stop = Arc::new(AtomicBool::new(false));
    std::thread::spawn({
        let stop = Arc::clone(&stop);
        move || {
            // The parent closes stdin to stop the reader.
            let _ = std::io::Read::read_to_end(&mut std::io::stdin(), &mut Vec::new());
            stop.store(true, Ordering::SeqCst);
        }
    });
    println!("NEAR ready");
    std::io::stdout().flush().unwrap();
    // version -> the latest start of a read that returned it.
    let mut last_start = vec![0u128; ROUNDS as usize + 1];
    let (mut near, mut total) = (0u64, 0u64);
    while !stop.load(Ordering::Relaxed) {
        let began = wall_ns();
        let hit = r.near_peek("k").is_some();
        if let Ok(Some(v)) = r.get("k").await {
            let version: usize = std::str::from_utf8(&v).unwrap().parse().unwrap();
            last_start[version] = last_start[version].max(began);
            near += u64::from(hit);
        }
        total += 1;
        if total % 64 == 0 {
            // Let the subscriber and other tasks run on this busy runtime.
            tokio::task::yield_now().await;
        }
    }
    for (version, at) in last_start.iter().enumerate().skip(1) {
        if *at > 0 {
            println!("NEAR seen {version} {at}");
        }
    }
    println!("NEAR reads {total} near {near}");
}

fn spawn_child(role: &str, url: &str, prefix: &str) -> std::process::Child {
    Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "near_child", "--nocapture", "--test-threads=1"])
        .env("NEAR_ROLE", role)
        .env("NEAR_URL", url)
        .env("NEAR_PREFIX", prefix)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap()
}

fn lines(child: &mut std::process::Child) -> std::sync::mpsc::Receiver<String> {
    let out = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            // The harness may have written `test near_child ... ` on the same line.
            if let Some((_, rest)) = line.split_once("NEAR ")
                && tx.send(rest.to_owned()).is_err()
            {
                break;
            }
        }
    });
    rx
}

fn signal(child: &std::process::Child, name: &str) {
    let status = Command::new("kill")
        .args([format!("-{name}"), child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// After the writer's invalidation returns, how long until no reader serves the old value;
/// with a reader paused (SIGSTOP) for a second and every subscription killed once. Asserts
/// that no read beginning `max_lag` after an invalidation returned the old value; prints the
/// staleness p50/p99.
#[test]
fn three_processes_one_writer_two_readers() {
    let redis = PrivateRedis::start();
    let url = redis.url();
    let prefix = unique("near_procs");
    let mut readers: Vec<_> = (0..2)
        .map(|_| spawn_child("reader", &url, &prefix))
        .collect();
    let reader_lines: Vec<_> = readers.iter_mut().map(lines).collect();
    for rx in &reader_lines {
        assert_eq!(rx.recv_timeout(DEADLINE).unwrap(), "ready");
    }
    let mut writer = spawn_child("writer", &url, &prefix);
    let writer_lines = lines(&mut writer);
    let mut invalidated = vec![0u128; ROUNDS as usize + 1];
    let mut paused = false;
    let mut killed = false;
    loop {
        let line = writer_lines.recv_timeout(Duration::from_secs(60)).unwrap();
        if line == "done" {
            break;
        }
        let mut parts = line.split(' ').skip(1);
        let version: usize = parts.next().unwrap().parse().unwrap();
        invalidated[version] = parts.next().unwrap().parse().unwrap();
        if version == ROUNDS as usize / 3 && !paused {
            paused = true;
            signal(&readers[1], "STOP");
            std::thread::sleep(Duration::from_secs(1));
            signal(&readers[1], "CONT");
        }
        if version == 2 * ROUNDS as usize / 3 && !killed {
            killed = true;
            // Both readers, unless one is reconnecting after its pause.
            assert!(client_kill_pubsub(&redis) >= 1);
        }
    }
    writer.wait().unwrap();
    // Let the readers read the last version for a while, then stop them.
    std::thread::sleep(Duration::from_millis(100));
    for reader in &mut readers {
        drop(reader.stdin.take());
    }
    let mut stale_ms = Vec::new();
    let mut worst = vec![0f64; ROUNDS as usize + 1];
    for (i, rx) in reader_lines.iter().enumerate() {
        loop {
            let line = rx.recv_timeout(DEADLINE).unwrap();
            let parts: Vec<&str> = line.split(' ').collect();
            if parts[0] == "reads" {
                println!("reader {i}: {} reads, {} near hits", parts[1], parts[3]);
                break;
            }
            let version: usize = parts[1].parse().unwrap();
            let at: u128 = parts[2].parse().unwrap();
            if version < ROUNDS as usize && invalidated[version] > 0 {
                let stale = (at as f64 - invalidated[version] as f64) / 1e6;
                assert!(
                    stale < LAG.as_secs_f64() * 1e3,
                    "reader {i} served version {version} in a read that began {stale:.3} ms \
                     after its invalidation returned (max_lag {LAG:?})"
                );
                worst[version] = worst[version].max(stale);
            }
        }
    }
    for reader in &mut readers {
        reader.wait().unwrap();
    }
    for &w in &worst[1..ROUNDS as usize] {
        stale_ms.push(w.max(0.0));
    }
    stale_ms.sort_by(f64::total_cmp);
    println!(
        "staleness over {} invalidations (ms after the invalidation returned until no reader \
         serves the old value): p50 {:.3}, p99 {:.3}, max {:.3}",
        stale_ms.len(),
        percentile(&stale_ms, 0.5),
        percentile(&stale_ms, 0.99),
        stale_ms.last().unwrap()
    );
}
