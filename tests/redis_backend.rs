//! Redis backend specifics, on private `redis-server` instances where commands are counted or
//! the server is stopped: round trips per operation, bounded invalidation work, TTLs on every
//! key, outages and server configuration checks.

mod support;

use std::time::Duration;

use matroska::backend::redis::{RedisBackend, RedisConfig, ServerWarning};
use matroska::backend::{Backend, PutOutcome, PutRequest};
use matroska::{Cache, Dependency, Error};
use support::PrivateRedis;

async fn backend(
    redis: &PrivateRedis,
    config: impl FnOnce(RedisConfig) -> RedisConfig,
) -> RedisBackend {
    support::redis_backend_with(config(RedisConfig::new(redis.url(), "app"))).await
}

#[tokio::test]
async fn each_operation_is_one_round_trip() {
    let redis = PrivateRedis::start();
    let cache = Cache::builder(backend(&redis, |c| c).await)
        .build()
        .unwrap();
    let deps: Vec<Dependency> = (0..20).map(|i| Dependency::id("article", i)).collect();
    // Load the scripts once (redis-rs sends SCRIPT LOAD after the first NOSCRIPT).
    cache.put("warm", &0, &deps, None).await.unwrap();
    cache.invalidate(&deps[..1]).await.unwrap();
    cache.backend().ticket().await.unwrap();
    let mut monitor = support::Monitor::start(&redis);

    let (r, sent) = monitor
        .commands(cache.put("list", &vec![1, 2, 3], &deps, None))
        .await;
    r.unwrap();
    assert_eq!(sent, ["evalsha"], "put with 20 dependencies");

    let (r, sent) = monitor.commands(cache.get::<Vec<i32>>("list")).await;
    assert_eq!(r.unwrap(), Some(vec![1, 2, 3]));
    assert_eq!(sent, ["get"], "get hit");

    let (r, sent) = monitor.commands(cache.get::<Vec<i32>>("missing")).await;
    assert_eq!(r.unwrap(), None);
    assert_eq!(sent, ["get"], "get miss");

    let many: Vec<Dependency> = (0..500).map(|i| Dependency::tag(format!("t{i}"))).collect();
    for i in 0..200 {
        cache
            .put(&format!("k{i}"), &i, &many[i..=i], None)
            .await
            .unwrap();
    }
    let (dropped, sent) = monitor.commands(cache.invalidate(&many)).await;
    assert_eq!(sent, ["evalsha"], "invalidate of 500 dependencies");
    assert_eq!(dropped.unwrap(), 200);

    // A miss through get_or_load: GET, ticket, put.
    let (r, sent) = monitor
        .commands(cache.get_or_load("loaded", None, || async {
            Ok::<_, std::io::Error>((1, deps.clone()))
        }))
        .await;
    assert_eq!(r.unwrap(), 1);
    assert_eq!(sent, ["get", "evalsha", "evalsha"], "get_or_load miss");
}

#[tokio::test]
async fn huge_fan_out_is_split_into_bounded_calls() {
    let redis = PrivateRedis::start();
    let cache = Cache::builder(backend(&redis, |c| c.invalidate_batch(100)).await)
        .build()
        .unwrap();
    let hot = Dependency::tag("hot");
    for i in 0..1_050 {
        cache
            .put(
                &format!("k{i}"),
                &i,
                &[hot.clone(), Dependency::id("a", i)],
                None,
            )
            .await
            .unwrap();
    }
    cache
        .invalidate(&[Dependency::tag("warm-up")])
        .await
        .unwrap();
    let mut monitor = support::Monitor::start(&redis);
    let (dropped, sent) = monitor.commands(cache.invalidate(&[hot])).await;
    assert_eq!(dropped.unwrap(), 1_050);
    // 100 entries per call: 11 calls, none of them long.
    assert_eq!(sent, vec!["evalsha"; 11]);
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("{app}:e:*")
        .query(&mut redis.client())
        .unwrap();
    assert!(keys.is_empty(), "{} entries survived", keys.len());
}

#[tokio::test]
async fn every_key_written_has_a_ttl_and_index_outlives_entries() {
    let redis = PrivateRedis::start();
    let cache = Cache::builder(backend(&redis, |c| c).await)
        .build()
        .unwrap();
    let dep = Dependency::id("author", 1);
    cache
        .put(
            "short",
            &1,
            std::slice::from_ref(&dep),
            Some(Duration::from_secs(10)),
        )
        .await
        .unwrap();
    cache
        .put(
            "long",
            &1,
            std::slice::from_ref(&dep),
            Some(Duration::from_secs(500)),
        )
        .await
        .unwrap();
    cache
        .put(
            "shorter",
            &1,
            std::slice::from_ref(&dep),
            Some(Duration::from_secs(5)),
        )
        .await
        .unwrap();
    cache.invalidate(&[Dependency::tag("other")]).await.unwrap();
    let mut conn = redis.client();
    let keys: Vec<String> = redis::cmd("KEYS").arg("*").query(&mut conn).unwrap();
    assert!(keys.len() >= 5, "{keys:?}");
    for key in &keys {
        let pttl: i64 = redis::cmd("PTTL").arg(key).query(&mut conn).unwrap();
        assert!(pttl > 0, "{key} has no TTL ({pttl})");
    }
    let b = RedisBackend::connect(RedisConfig::new(redis.url(), "app"))
        .await
        .unwrap();
    let index_ttl: i64 = redis::cmd("PTTL")
        .arg(b.index_key(&dep.encode()))
        .query(&mut conn)
        .unwrap();
    assert!(
        index_ttl > 490_000,
        "index set expires before its longest entry: {index_ttl} ms"
    );
}

#[tokio::test]
async fn prefixes_isolate_applications() {
    let url = support::redis_url();
    let a = Cache::builder(
        support::redis_backend_with(RedisConfig::new(&url, support::unique("a"))).await,
    )
    .build()
    .unwrap();
    let b = Cache::builder(
        support::redis_backend_with(RedisConfig::new(&url, support::unique("b"))).await,
    )
    .build()
    .unwrap();
    let dep = Dependency::tag("shared-name");
    a.put("k", &"a", std::slice::from_ref(&dep), None)
        .await
        .unwrap();
    b.put("k", &"b", std::slice::from_ref(&dep), None)
        .await
        .unwrap();
    assert_eq!(a.get::<String>("k").await.unwrap().as_deref(), Some("a"));
    assert_eq!(a.invalidate(&[dep]).await.unwrap(), 1);
    assert_eq!(b.get::<String>("k").await.unwrap().as_deref(), Some("b"));
}

#[tokio::test]
async fn bad_configuration_is_a_clear_error() {
    let err = RedisBackend::connect(RedisConfig::new("redis://127.0.0.1:6379", "a{b"))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Config(_)), "{err}");
    let err = RedisBackend::connect(RedisConfig::new("not a url", "p"))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Config(_)), "{err}");
    let err = RedisBackend::connect(
        RedisConfig::new("redis://:wrong@127.0.0.1:6379", "p").timeout(Duration::from_millis(500)),
    )
    .await
    .unwrap_err();
    assert!(err.is_backend_failure(), "{err}");
}

#[tokio::test]
async fn auth_from_the_url() {
    let redis = PrivateRedis::start_with(&["--requirepass", "s3cret"]);
    let url = format!("redis://:s3cret@127.0.0.1:{}", redis.port);
    let cache = Cache::builder(support::redis_backend_with(RedisConfig::new(url, "app")).await)
        .build()
        .unwrap();
    cache.put("k", &1, &[], None).await.unwrap();
    assert_eq!(cache.get::<i32>("k").await.unwrap(), Some(1));
}

#[tokio::test]
async fn eviction_policy_that_can_drop_index_sets_is_reported() {
    let evicting =
        PrivateRedis::start_with(&["--maxmemory", "64mb", "--maxmemory-policy", "allkeys-lru"]);
    let b = backend(&evicting, |c| c).await;
    assert_eq!(
        b.check_server().await.unwrap(),
        vec![ServerWarning::EvictionMayDropIndex {
            policy: "allkeys-lru".into()
        }]
    );
    let safe =
        PrivateRedis::start_with(&["--maxmemory", "64mb", "--maxmemory-policy", "noeviction"]);
    assert!(
        backend(&safe, |c| c)
            .await
            .check_server()
            .await
            .unwrap()
            .is_empty()
    );
}

#[tokio::test]
async fn outage_degrades_reads_and_reports_invalidations() {
    let mut redis = PrivateRedis::start();
    let cache = Cache::builder(backend(&redis, |c| c.timeout(Duration::from_millis(300))).await)
        .build()
        .unwrap();
    let dep = Dependency::id("article", 1);
    cache
        .put("k", &1, std::slice::from_ref(&dep), None)
        .await
        .unwrap();
    redis.kill();

    // Reads are misses, the loader keeps the application answering.
    assert_eq!(cache.get::<i32>("k").await.unwrap(), None);
    assert!(!cache.has("k").await.unwrap());
    assert!(
        cache
            .try_get::<i32>("k")
            .await
            .unwrap_err()
            .is_backend_failure()
    );
    let value: i32 = cache
        .get_or_load("k", None, || async {
            Ok::<_, std::io::Error>((7, vec![dep.clone()]))
        })
        .await
        .unwrap();
    assert_eq!(value, 7);
    // Writes that matter are reported.
    assert!(
        cache
            .invalidate(std::slice::from_ref(&dep))
            .await
            .unwrap_err()
            .is_backend_failure()
    );
    assert!(
        cache
            .put("k", &1, &[], None)
            .await
            .unwrap_err()
            .is_backend_failure()
    );

    // Back up (empty): the same cache object works again.
    redis.restart();
    let mut ok = false;
    for _ in 0..100 {
        if cache
            .put("k", &2, std::slice::from_ref(&dep), None)
            .await
            .is_ok()
        {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(ok, "the cache did not reconnect");
    assert_eq!(cache.get::<i32>("k").await.unwrap(), Some(2));
}

/// A ticket taken before a restart that lost every key (the clock included) still loses
/// against an invalidation made after it: the clock falls back to the server's time.
#[tokio::test]
async fn ticket_survives_a_restart_that_lost_the_clock() {
    let mut redis = PrivateRedis::start();
    let b = backend(&redis, |c| c).await;
    // Push the stored clock ahead of the server time, as a burst of invalidations would.
    let dep = vec![Dependency::tag("t").encode()];
    for _ in 0..50 {
        b.invalidate(&dep).await.unwrap();
    }
    let ticket = b.ticket().await.unwrap();
    redis.kill();
    redis.restart();
    let mut invalidated = false;
    for _ in 0..100 {
        if b.invalidate(&dep).await.is_ok() {
            invalidated = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(invalidated, "no reconnect");
    let value = bytes::Bytes::from(matroska::Codec::Json.encode("k", &1, 0).unwrap());
    let outcome = b
        .put(PutRequest::new("k", value, &dep, Duration::from_secs(60)).guarded_by(Some(ticket)))
        .await
        .unwrap();
    assert_eq!(outcome, PutOutcome::Stale);
}

#[tokio::test]
async fn cross_process_lease_coalesces_loads() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    let redis = PrivateRedis::start();
    // Two caches on one prefix stand for two processes: in-process coalescing cannot help.
    let loads = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let cache = Cache::builder(backend(&redis, |c| c).await)
            .fill_lease(Duration::from_secs(2))
            .build()
            .unwrap();
        let loads = Arc::clone(&loads);
        tasks.push(tokio::spawn(async move {
            cache
                .get_or_load("hot", None, || async {
                    loads.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    Ok::<_, std::io::Error>((42, vec![Dependency::tag("hot")]))
                })
                .await
                .unwrap()
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), 42);
    }
    assert_eq!(loads.load(Ordering::SeqCst), 1);
}

/// A lease holder that gives up (its load failed, or its put was refused) hands over at once:
/// the waiter takes the lease on its next poll instead of waiting out a two-minute lease.
#[tokio::test]
async fn lease_is_handed_over_when_the_holder_gives_up() {
    let redis = PrivateRedis::start();
    let backend = backend(&redis, |c| c).await;
    let cache = Cache::builder(backend.clone())
        .fill_lease(Duration::from_secs(120))
        .build()
        .unwrap();
    // Another process holds the lease.
    let token = backend
        .try_lease("hot", Duration::from_secs(120))
        .await
        .unwrap()
        .unwrap();
    let waiter = tokio::spawn({
        let cache = cache.clone();
        async move {
            cache
                .get_or_load("hot", None, || async {
                    Ok::<_, std::io::Error>((7, vec![Dependency::tag("hot")]))
                })
                .await
        }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    backend.release_lease("hot", token).await.unwrap();
    // A deadline, not a measurement: without the hand-over this would wait 120 s.
    let value = tokio::time::timeout(Duration::from_secs(30), waiter)
        .await
        .expect("hand-over")
        .unwrap();
    assert_eq!(value.unwrap(), 7);
}

/// A value another process filled that this one cannot decode (a rolling deploy with another
/// schema version) is dropped, and this caller still loads its own.
#[tokio::test]
async fn undecodable_value_from_the_lease_holder_is_reloaded() {
    let redis = PrivateRedis::start();
    let backend = backend(&redis, |c| c).await;
    let v1 = Cache::builder(backend.clone())
        .schema_version(1)
        .fill_lease(Duration::from_millis(500))
        .build()
        .unwrap();
    let v2 = Cache::builder(backend.clone())
        .schema_version(2)
        .build()
        .unwrap();
    let token = backend
        .try_lease("k", Duration::from_millis(500))
        .await
        .unwrap()
        .unwrap();
    let waiter = tokio::spawn({
        let v1 = v1.clone();
        async move {
            v1.get_or_load("k", None, || async {
                Ok::<_, std::io::Error>(("from v1".to_string(), vec![]))
            })
            .await
        }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    v2.put("k", &"from v2", &[], None).await.unwrap();
    backend.release_lease("k", token).await.unwrap();
    let value = tokio::time::timeout(Duration::from_secs(30), waiter)
        .await
        .expect("no hang")
        .unwrap();
    assert_eq!(value.unwrap(), "from v1");
}

/// A leader dropped mid-load (a request time-out, a client gone) releases its fill lease at
/// once: a caller of this process that was waiting on it and another process both load
/// without waiting out the hour-long lease.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_leader_releases_its_lease() {
    let redis = PrivateRedis::start();
    let backend = backend(&redis, |c| c).await;
    let lease = Duration::from_secs(3600);
    let here = Cache::builder(backend.clone())
        .fill_lease(lease)
        .build()
        .unwrap();
    let there = Cache::builder(backend.clone())
        .fill_lease(lease)
        .build()
        .unwrap();
    let (started, running) = tokio::sync::oneshot::channel();
    let leader = tokio::spawn({
        let here = here.clone();
        async move {
            here.get_or_load("hot", None, || async move {
                let _ = started.send(());
                std::future::pending::<Result<(i32, Vec<Dependency>), std::io::Error>>().await
            })
            .await
        }
    });
    running.await.unwrap();
    let load = |cache: Cache| {
        tokio::spawn(async move {
            cache
                .get_or_load("hot", None, || async {
                    Ok::<_, std::io::Error>((5, vec![Dependency::tag("hot")]))
                })
                .await
        })
    };
    let follower = load(here.clone());
    leader.abort();
    assert!(leader.await.unwrap_err().is_cancelled());
    let other = load(there);
    // A deadline, not a measurement: with the lease left behind these would wait an hour.
    for task in [follower, other] {
        let value = tokio::time::timeout(Duration::from_secs(30), task)
            .await
            .expect("the abandoned lease was handed over")
            .unwrap();
        assert_eq!(value.unwrap(), 5);
    }
}
