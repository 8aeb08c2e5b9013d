//! Hostile review of the near cache, restart detection and batch reads together (review 2):
//! each test is a finding, named after what should hold.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant};

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

fn request<'a>(key: &'a str, value: &str, deps: &'a [String]) -> PutRequest<'a> {
    PutRequest::new(
        key,
        Bytes::copy_from_slice(value.as_bytes()),
        deps,
        Duration::from_secs(60),
    )
}

async fn put(backend: &RedisBackend, key: &str, value: &str, deps: &[&str]) {
    let deps: Vec<String> = deps.iter().map(|d| (*d).to_owned()).collect();
    backend.put(request(key, value, &deps)).await.expect("put");
}

async fn eventually(what: &str, mut check: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + DEADLINE;
    while !check().await {
        assert!(Instant::now() < deadline, "not within {DEADLINE:?}: {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn fill(backend: &RedisBackend, key: &str, value: &str) {
    eventually("the near tier serves the key", async || {
        let read = backend.get(key).await.expect("get");
        assert_eq!(read.as_deref(), Some(value.as_bytes()), "{key}");
        backend.near_peek(key).is_some()
    })
    .await;
}

fn peek(backend: &RedisBackend, key: &str) -> Option<String> {
    backend
        .near_peek(key)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
}

/// A TCP proxy whose target can be switched: new connections go to the current target,
/// established ones stay where they are (a virtual IP, a DNS name or a proxy moved to a
/// promoted replica after a failover).
struct SwitchProxy {
    port: u16,
    target: Arc<AtomicU16>,
}

impl SwitchProxy {
    async fn start(target: u16) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let target = Arc::new(AtomicU16::new(target));
        let to = Arc::clone(&target);
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let port = to.load(Ordering::SeqCst);
                tokio::spawn(async move {
                    if let Ok(mut outbound) =
                        tokio::net::TcpStream::connect(("127.0.0.1", port)).await
                    {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
            }
        });
        SwitchProxy { port, target }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn switch(&self, port: u16) {
        self.target.store(port, Ordering::SeqCst);
    }
}

/// Finding 1. After a failover behind a switching address, the data connection reconnects to
/// the new master (and verifies it), but the subscribed connection stays on the old one,
/// which still answers pings: the tier stays "live" while it hears none of the invalidations
/// that now run on the new master, and serves the old value with no bound but the entry's
/// TTL (`max_age` is `None` by default). The liveness proof (a ping answered on the
/// subscribed connection) does not prove the subscription is on the server the writes go to.
#[tokio::test]
async fn a_subscription_left_on_the_old_master_stops_serving_within_max_lag() {
    let old = PrivateRedis::start();
    let new = PrivateRedis::start();
    let proxy = SwitchProxy::start(old.port).await;
    let prefix = unique("review_failover");
    let reader = redis_backend_with(near_config(&proxy.url(), &prefix)).await;
    let writer = redis_backend_with(RedisConfig::new(old.url(), &prefix)).await;
    put(&writer, "k", "old", &["dep"]).await;
    fill(&reader, "k", "old").await;

    // Failover: the address now leads to `new`; every normal connection to `old` is cut (the
    // subscribed one is not a normal client and survives, as it does when a server is
    // demoted or partitioned away from its clients' new master).
    proxy.switch(new.port);
    let _: i64 = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("TYPE")
        .arg("normal")
        .query(&mut old.client())
        .unwrap();
    let writer = redis_backend_with(RedisConfig::new(new.url(), &prefix)).await;
    put(&writer, "k", "new", &["dep"]).await;
    writer.invalidate(&["dep".to_owned()]).await.unwrap();
    put(&writer, "k", "newer", &["dep"]).await;
    let invalidated = Instant::now();

    // The reader's data path reaches the new master: a batch read (which bypasses the near
    // tier) sees the new value.
    eventually("the reader's data connection reaches the new master", async || {
        matches!(reader.get_many(&["k"]).await, Ok(v) if v[0].as_deref() == Some(&b"newer"[..]))
    })
    .await;
    tokio::time::sleep(invalidated + 3 * LAG - Instant::now()).await;
    assert_eq!(
        peek(&reader, "k"),
        None,
        "the near tier serves the value invalidated on the new master {:?} later (tier live: {})",
        invalidated.elapsed(),
        reader.near_is_live()
    );
    assert_eq!(
        reader.get("k").await.unwrap().as_deref(),
        Some(&b"newer"[..])
    );
}

/// Finding 2. Redis 7 gives new ACL users no channel (`acl-pubsub-default resetchannels`):
/// the `PUBLISH` that `invalidate.lua` now always runs fails with `NOPERM`, after the script
/// wrote the stamps, so every invalidation reports an error (an outbox relay retries it
/// forever), near cache or not. `delete` too.
#[tokio::test]
async fn an_acl_user_without_channels_can_still_invalidate_and_delete() {
    let redis = PrivateRedis::start();
    let _: () = redis::cmd("ACL")
        .arg(&["SETUSER", "app", "on", ">pw", "~*", "+@all"])
        .query(&mut redis.client())
        .unwrap();
    let url = format!("redis://app:pw@127.0.0.1:{}", redis.port);
    let prefix = unique("review_acl");
    let backend = redis_backend_with(RedisConfig::new(&url, &prefix)).await;
    put(&backend, "k", "v", &["dep"]).await;
    let invalidated = backend.invalidate(&["dep".to_owned()]).await;
    assert!(invalidated.is_ok(), "invalidate: {:?}", invalidated.err());
    let deleted = backend.delete("k").await;
    assert!(deleted.is_ok(), "delete: {:?}", deleted.err());
}

/// Publish rights: the tier's liveness proof is a heartbeat it publishes through its data
/// connection. An ACL user without `PUBLISH` can still subscribe (and, before, its tier went
/// live on pings alone while its own writes broadcast nothing): its heartbeats are refused, so
/// its tier serves nothing, every read goes to Redis, and the backend warns once.
#[tokio::test]
async fn an_acl_user_without_publish_gets_no_near_hits() {
    let redis = PrivateRedis::start();
    let _: () = redis::cmd("ACL")
        .arg(&[
            "SETUSER", "app", "on", ">pw", "~*", "&*", "+@all", "-publish",
        ])
        .query(&mut redis.client())
        .unwrap();
    let url = format!("redis://app:pw@127.0.0.1:{}", redis.port);
    let prefix = unique("review_acl_publish");
    let backend = redis_backend_with(near_config(&url, &prefix)).await;
    put(&backend, "k", "v", &["dep"]).await;
    let refused = || {
        let stats: String = redis::cmd("INFO")
            .arg("commandstats")
            .query(&mut redis.client())
            .unwrap();
        stats
            .lines()
            .find_map(|l| l.strip_prefix("cmdstat_publish:"))
            .and_then(|l| l.split(',').find_map(|f| f.strip_prefix("rejected_calls=")))
            .map_or(0, |n| n.trim().parse::<u64>().unwrap())
    };
    // Counted after the put, whose own `PUBLISH` the ACL refused too.
    let before = refused();
    // (Or the tier went live, which the reads below refuse.)
    eventually("a heartbeat is refused", async || {
        refused() > before || backend.near_is_live()
    })
    .await;
    // Reads for a while (the tier would go live, and fill, within a heartbeat's round trip).
    let until = Instant::now() + 3 * LAG;
    while Instant::now() < until {
        assert_eq!(backend.get("k").await.unwrap().as_deref(), Some(&b"v"[..]));
        assert_eq!(peek(&backend, "k"), None, "a near hit without a heartbeat");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(!backend.near_is_live());
}

/// Finding 3. `NearConfig`'s fields are public; a `max_lag` of zero set on the field (the
/// builder clamps it to 4 ms, the field does not) panics the subscriber task
/// (`tokio::time::interval` of a zero period): the tier is silently off for good.
#[tokio::test]
async fn a_zero_max_lag_field_does_not_kill_the_subscriber() {
    let prefix = unique("review_zero_lag");
    let mut near = NearConfig::new(1 << 20);
    near.max_lag = Duration::ZERO;
    let backend = redis_backend_with(RedisConfig::new(redis_url(), &prefix).near_cache(near)).await;
    put(&backend, "k", "v", &[]).await;
    fill(&backend, "k", "v").await;
}

/// Finding 4. `put` takes a guard that refuses this process's near copy of the key when it
/// ends (read-your-writes); `put_many` (what `Cache::get_or_load_many` stores with) takes
/// none, so this process keeps serving the value it just overwrote.
#[tokio::test]
async fn a_put_many_is_read_back_in_its_own_process() {
    let prefix = unique("review_put_many");
    let a = redis_backend_with(near_config(&redis_url(), &prefix)).await;
    put(&a, "k", "v1", &["d1"]).await;
    fill(&a, "k", "v1").await;
    let deps = vec!["d2".to_owned()];
    let outcomes = a.put_many(vec![request("k", "v2", &deps)]).await.unwrap();
    assert_eq!(outcomes.len(), 1);
    assert_eq!(a.get("k").await.unwrap().as_deref(), Some(&b"v2"[..]));
}

/// Finding 5. With the near tier on, `Cache::put` overwriting a key in process A
/// (write-through: update the row, then put the new value) left process B serving the old
/// value until the Redis entry's TTL (puts were not broadcast; `max_age` is `None` by
/// default). `put.lua` now publishes the key of a stored entry.
#[tokio::test]
async fn a_put_overwrite_in_another_process_is_not_served_stale_beyond_max_lag() {
    let prefix = unique("review_put_overwrite");
    let a = redis_backend_with(RedisConfig::new(redis_url(), &prefix)).await;
    let b = redis_backend_with(near_config(&redis_url(), &prefix)).await;
    put(&a, "k", "v1", &["dep"]).await;
    fill(&b, "k", "v1").await;
    put(&a, "k", "v2", &["dep"]).await;
    let written = Instant::now();
    assert_eq!(
        b.get_many(&["k"]).await.unwrap()[0].as_deref(),
        Some(&b"v2"[..])
    );
    tokio::time::sleep(written + 3 * LAG - Instant::now()).await;
    assert_eq!(
        b.get("k").await.unwrap().as_deref(),
        Some(&b"v2"[..]),
        "{:?} after the put returned",
        written.elapsed()
    );
}

/// Passes: the subscriber works with RESP3 and a database number in the URL (pub/sub
/// channels ignore the database, so two databases sharing a prefix only over-invalidate).
#[tokio::test]
async fn the_near_tier_works_with_resp3_and_a_database_number() {
    let prefix = unique("review_resp3_db");
    let url = format!("{}/3?protocol=resp3", redis_url().trim_end_matches('/'));
    let a = redis_backend_with(near_config(&url, &prefix)).await;
    let b = redis_backend_with(RedisConfig::new(redis_url(), &prefix)).await;
    put(&a, "k", "v1", &["dep"]).await;
    fill(&a, "k", "v1").await;
    // B writes in database 0: A hears it (over-invalidation, never staleness).
    b.invalidate(&["dep".to_owned()]).await.unwrap();
    eventually("A hears the invalidation", async || peek(&a, "k").is_none()).await;
    a.invalidate(&["dep".to_owned()]).await.unwrap();
    assert_eq!(a.get("k").await.unwrap(), None);
}

/// Passes: a `max_lag` of `Duration::MAX` (set with the builder) does not panic the
/// subscriber (its heartbeat period and the liveness arithmetic saturate).
#[tokio::test]
async fn a_huge_max_lag_does_not_kill_the_subscriber() {
    let prefix = unique("review_huge_lag");
    let near = NearConfig::new(1 << 20)
        .max_lag(Duration::MAX)
        .max_age(Duration::MAX);
    let backend = redis_backend_with(RedisConfig::new(redis_url(), &prefix).near_cache(near)).await;
    put(&backend, "k", "v", &["dep"]).await;
    fill(&backend, "k", "v").await;
    backend.invalidate(&["dep".to_owned()]).await.unwrap();
    assert_eq!(peek(&backend, "k"), None);
}

/// Finding 1, what was left: a process whose reads all hit its near tier sent nothing on its
/// data connection, so it verified nothing after the failover and its subscription stayed on
/// the old master, live (it answered pings) and deaf. The liveness proof now goes through the
/// data path: a heartbeat published on the data connection must come back on the
/// subscription.
#[tokio::test]
async fn a_near_only_reader_stops_serving_within_max_lag_after_a_failover() {
    let old = PrivateRedis::start();
    let new = PrivateRedis::start();
    let proxy = SwitchProxy::start(old.port).await;
    let prefix = unique("review_failover_hot");
    let reader = redis_backend_with(near_config(&proxy.url(), &prefix)).await;
    let writer = redis_backend_with(RedisConfig::new(old.url(), &prefix)).await;
    put(&writer, "k", "old", &["dep"]).await;
    fill(&reader, "k", "old").await;
    proxy.switch(new.port);
    let _: i64 = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("TYPE")
        .arg("normal")
        .query(&mut old.client())
        .unwrap();
    let writer = redis_backend_with(RedisConfig::new(new.url(), &prefix)).await;
    put(&writer, "k", "new", &["dep"]).await;
    writer.invalidate(&["dep".to_owned()]).await.unwrap();
    let invalidated = Instant::now();
    tokio::time::sleep(invalidated + 3 * LAG - Instant::now()).await;
    let read = reader.get("k").await.unwrap();
    assert_ne!(
        read.as_deref(),
        Some(&b"old"[..]),
        "{:?} after the invalidation returned",
        invalidated.elapsed()
    );
}
