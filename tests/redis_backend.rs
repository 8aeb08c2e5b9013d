//! Redis backend specifics, on private `redis-server` instances where commands are counted or
//! the server is stopped: round trips per operation, bounded invalidation work, TTLs on every
//! key, outages and server configuration checks.

mod support;

use std::time::Duration;

use matroska::backend::redis::{RedisBackend, RedisConfig};
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
    // The first read verifies the connection (`EVAL` of ticket.lua, `CLIENT SETNAME`: once
    // per connection, see incarnation.rs).
    cache.get::<i32>("warm").await.unwrap();
    let mut monitor = support::Monitor::start(&redis);

    let (r, sent) = monitor
        .commands(cache.put("list", &vec![1, 2, 3], &deps, None))
        .await;
    r.unwrap();
    assert_eq!(sent, ["evalsha"], "put with 20 dependencies");

    // The connection's name, then the entry, the stamps its put recorded and the clock in
    // one `MGET`, pipelined: one round trip.
    let (r, sent) = monitor.commands(cache.get::<Vec<i32>>("list")).await;
    assert_eq!(r.unwrap(), Some(vec![1, 2, 3]));
    assert_eq!(sent, ["client", "mget"], "get hit");

    let (r, sent) = monitor.commands(cache.get::<Vec<i32>>("missing")).await;
    assert_eq!(r.unwrap(), None);
    assert_eq!(sent, ["client", "mget"], "get miss");

    let many: Vec<Dependency> = (0..500).map(|i| Dependency::tag(format!("t{i}"))).collect();
    for i in 0..200 {
        cache
            .put(&format!("k{i}"), &i, &many[i..=i], None)
            .await
            .unwrap();
    }
    let (dropped, sent) = monitor.commands(cache.invalidate(&many)).await;
    assert_eq!(sent, ["evalsha"], "invalidate of 500 dependencies");
    dropped.unwrap();
    assert!(!cache.has("k0").await.unwrap() && !cache.has("k199").await.unwrap());

    // A miss through get_or_load: GET, ticket, put.
    let (r, sent) = monitor
        .commands(cache.get_or_load("loaded", None, || async {
            Ok::<_, std::io::Error>((1, deps.clone()))
        }))
        .await;
    assert_eq!(r.unwrap(), 1);
    assert_eq!(
        sent,
        ["client", "mget", "evalsha", "evalsha"],
        "get_or_load miss"
    );
}

/// `get_many` reads every key in one `MGET` when this process knows the keys' stamps, and
/// the wrong guesses of a process that does not (a fresh backend instance) in one more; the
/// answers are the same either way, invalidated entries included.
#[tokio::test]
async fn get_many_is_one_round_trip_and_wrong_guesses_one_more() {
    let redis = PrivateRedis::start();
    let writer = backend(&redis, |c| c).await;
    let value = |v: i32| bytes::Bytes::from(matroska::Codec::Json.encode("k", &v, 0).unwrap());
    let ttl = Duration::from_secs(60);
    let dep = |i: i64| Dependency::id("row", i).encode();
    let deps: Vec<Vec<String>> = vec![
        vec![dep(0)],
        vec![dep(1), dep(2)],
        vec![],
        (3..13).map(dep).collect(),
        vec![dep(2)],
    ];
    for (i, deps) in deps.iter().enumerate() {
        let key = format!("k{i}");
        writer
            .put(PutRequest::new(&key, value(i as i32), deps, ttl))
            .await
            .unwrap();
    }
    writer.invalidate(&[dep(2)]).await.unwrap();
    let keys = ["k0", "k1", "k2", "k3", "k4", "missing", "k0"];
    let expected: Vec<bool> = vec![true, false, true, true, false, false, true];
    let hits =
        |found: &[Option<bytes::Bytes>]| found.iter().map(Option::is_some).collect::<Vec<_>>();

    // Each backend's connection is verified by its first read (`incarnation.rs`): done
    // here with a key nobody stored, so that the counts below are a read's alone. A read is
    // `CLIENT GETNAME` and one `MGET`, pipelined.
    writer.get("warm-up").await.unwrap();
    let reader = backend(&redis, |c| c).await;
    reader.get("warm-up").await.unwrap();
    let other = backend(&redis, |c| c).await;
    other.get("warm-up").await.unwrap();
    let mut monitor = support::Monitor::start(&redis);
    let (found, sent) = monitor.commands(writer.get_many(&keys)).await;
    assert_eq!(hits(&found.unwrap()), expected);
    assert_eq!(sent, ["client", "mget"], "the process that stored the keys");

    let (found, sent) = monitor.commands(reader.get_many(&keys)).await;
    let found = found.unwrap();
    assert_eq!(hits(&found), expected, "first read in a fresh process");
    assert_eq!(found[3], writer.get("k3").await.unwrap());
    assert_eq!(
        sent,
        ["client", "mget", "client", "mget"],
        "wrong guesses cost one more round trip"
    );
    let (found, sent) = monitor.commands(reader.get_many(&keys)).await;
    assert_eq!(hits(&found.unwrap()), expected);
    assert_eq!(sent, ["client", "mget"], "guesses learnt");

    // An entry stored again with other dependencies: the guess is wrong, the answer right.
    writer
        .put(PutRequest::new("k1", value(11), &deps[0], ttl))
        .await
        .unwrap();
    writer.invalidate(&[dep(0)]).await.unwrap();
    let (found, sent) = monitor.commands(reader.get_many(&["k1", "k3"])).await;
    assert_eq!(hits(&found.unwrap()), [false, true]);
    assert_eq!(sent, ["client", "mget", "client", "mget"]);

    // A single get of a fresh process: the entry (and clock), then the stamps; then one read.
    let (found, sent) = monitor.commands(other.get("k3")).await;
    assert!(found.unwrap().is_some());
    assert_eq!(sent, ["client", "mget", "client", "mget"]);
    let (found, sent) = monitor.commands(other.get("k3")).await;
    assert!(found.unwrap().is_some());
    assert_eq!(sent, ["client", "mget"]);
    assert!(reader.get_many(&[]).await.unwrap().is_empty());
}

/// The "one count per row of this page" pattern (a list, then a per-row lookup for each of
/// its rows, as the Conduit article list does): once cached, a page costs two round trips
/// whatever its length, where per-row `get_or_load` calls cost one per row.
#[tokio::test]
async fn a_page_of_per_row_lookups_is_two_round_trips() {
    let redis = PrivateRedis::start();
    let cache = Cache::builder(backend(&redis, |c| c).await)
        .build()
        .unwrap();
    let page = || async {
        let ids: Vec<i64> = cache
            .get_or_load("articles:page1", None, || async {
                let ids: Vec<i64> = (1..=20).collect();
                let deps = vec![Dependency::tag("articles")];
                Ok::<_, std::io::Error>((ids, deps))
            })
            .await
            .unwrap();
        let counts: Vec<i64> = cache
            .get_or_load_many(
                &ids,
                |id| format!("favorites:{id}"),
                None,
                |missing| async move {
                    Ok::<_, std::io::Error>(
                        missing
                            .into_iter()
                            .map(|id| (id * 2, vec![Dependency::id("favorite_article", id)]))
                            .collect(),
                    )
                },
            )
            .await
            .unwrap();
        counts
    };
    // Load the scripts (a first `EVALSHA` answers `NOSCRIPT`) and verify the connection
    // (the first read does, `incarnation.rs`).
    cache.backend().ticket().await.unwrap();
    cache.put("warm", &0, &[], None).await.unwrap();
    cache.get::<i32>("warm").await.unwrap();
    let mut monitor = support::Monitor::start(&redis);
    let (counts, sent) = monitor.commands(page()).await;
    assert_eq!(counts, (1..=20).map(|i| i * 2).collect::<Vec<_>>());
    // Cold: the list's get, ticket and put; the rows' one read, one ticket, and their 20 puts
    // (one pipeline).
    let mut cold = vec![
        "client", "mget", "evalsha", "evalsha", "client", "mget", "evalsha",
    ];
    cold.extend(["evalsha"; 20]);
    assert_eq!(sent, cold);

    let (counts, sent) = monitor.commands(page()).await;
    assert_eq!(counts.len(), 20);
    assert_eq!(sent, ["client", "mget", "client", "mget"], "a cached page");

    // One row changes: one more round trip for its ticket, one for its put.
    cache
        .invalidate(&[Dependency::id("favorite_article", 7)])
        .await
        .unwrap();
    let (counts, sent) = monitor.commands(page()).await;
    assert_eq!(counts[6], 14);
    assert_eq!(
        sent,
        ["client", "mget", "client", "mget", "evalsha", "evalsha"]
    );

    // The pipelined puts after the server lost its scripts: each is sent again with its body.
    let _: () = redis::cmd("SCRIPT")
        .arg("FLUSH")
        .query(&mut redis.client())
        .unwrap();
    cache
        .invalidate(&[Dependency::id("favorite_article", 8)])
        .await
        .unwrap();
    let _ = page().await;
    assert!(
        cache.has("favorites:8").await.unwrap(),
        "not stored after NOSCRIPT"
    );
}

/// Invalidation work is bounded by dependencies, whatever the fan-out: a dependency with 5,000
/// dependents is one script call; 2,500 dependencies with 1,000 per call are three.
#[tokio::test]
async fn invalidation_is_bounded_by_dependencies_not_dependents() {
    let redis = PrivateRedis::start();
    let cache = Cache::builder(backend(&redis, |c| c).await)
        .build()
        .unwrap();
    let hot = Dependency::tag("hot");
    for i in 0..5_000 {
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
    let (r, sent) = monitor.commands(cache.invalidate(&[hot])).await;
    r.unwrap();
    assert_eq!(sent, ["evalsha"]);
    for i in (0..5_000).step_by(499) {
        assert!(!cache.has(&format!("k{i}")).await.unwrap(), "k{i} survived");
    }
    let many: Vec<Dependency> = (0..2_500).map(|i| Dependency::id("b", i)).collect();
    let (r, sent) = monitor.commands(cache.invalidate(&many)).await;
    r.unwrap();
    assert_eq!(sent, vec!["evalsha"; 3]);
}

#[tokio::test]
async fn every_key_written_has_a_ttl_and_stamps_outlive_entries() {
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
        // The clock is the one exception: one key per prefix, and losing it would only cost
        // the guarded puts in flight.
        if key != "{app}:c" {
            assert!(pttl > 0, "{key} has no TTL ({pttl})");
        }
    }
    let b = RedisBackend::connect(RedisConfig::new(redis.url(), "app"))
        .await
        .unwrap();
    let stamp_ttl: i64 = redis::cmd("PTTL")
        .arg(b.stamp_key(&dep.encode()))
        .query(&mut conn)
        .unwrap();
    assert!(
        stamp_ttl > 490_000,
        "a stamp expires before the longest entry that recorded it: {stamp_ttl} ms"
    );

    // An invalidation writes a short-lived stamp (the stale window); the next put that records
    // it extends it past its own entry, and a put that finds it long-lived leaves it alone.
    cache.invalidate(std::slice::from_ref(&dep)).await.unwrap();
    let stamp_ttl = |conn: &mut redis::Connection| -> i64 {
        redis::cmd("PTTL")
            .arg(b.stamp_key(&dep.encode()))
            .query(conn)
            .unwrap()
    };
    assert!(stamp_ttl(&mut conn) < 490_000);
    let put = |key: &'static str, secs| {
        let (cache, dep) = (cache.clone(), dep.clone());
        async move {
            cache
                .put(key, &1, &[dep], Some(Duration::from_secs(secs)))
                .await
                .unwrap()
        }
    };
    put("after", 500).await;
    let extended = stamp_ttl(&mut conn);
    assert!(extended > 500_000, "{extended} ms");
    put("after-short", 10).await;
    assert!(stamp_ttl(&mut conn) <= extended);
    assert!(stamp_ttl(&mut conn) > 500_000 - 5_000);
    assert!(cache.get::<i32>("after").await.unwrap().is_some());
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
    a.invalidate(&[dep]).await.unwrap();
    assert_eq!(a.get::<String>("k").await.unwrap(), None);
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
    let token = 41;
    assert!(
        backend
            .try_lease("hot", token, Duration::from_secs(120))
            .await
            .unwrap()
    );
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
    let token = 42;
    assert!(
        backend
            .try_lease("k", token, Duration::from_millis(500))
            .await
            .unwrap()
    );
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

/// A lease request whose reply never arrives, its caller dropped while waiting (a request
/// time-out): the lease it took is released all the same, since the token was chosen and
/// guarded before the request went out. Another process loads at once instead of waiting out
/// the hour-long lease.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_taken_by_a_dropped_request_is_released() {
    let redis = PrivateRedis::start();
    let faulty = support::faults::Faulty::new(backend(&redis, |c| c).await);
    faulty.lose_lease_replies(true);
    let lease = Duration::from_secs(3600);
    let here = Cache::builder(faulty).fill_lease(lease).build().unwrap();
    let there = Cache::builder(backend(&redis, |c| c).await)
        .fill_lease(lease)
        .build()
        .unwrap();
    let leader = tokio::spawn(async move {
        here.get_or_load("hot", None, || async {
            Ok::<_, std::io::Error>((1, vec![Dependency::tag("hot")]))
        })
        .await
    });
    // The lease is taken; the request that took it is still waiting for its reply.
    let mut conn = redis.client();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !redis::cmd("EXISTS")
        .arg("{app}:l:hot")
        .query::<bool>(&mut conn)
        .unwrap()
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the lease was never taken"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    leader.abort();
    assert!(leader.await.unwrap_err().is_cancelled());
    // A deadline, not a measurement: with the lease left behind this would wait an hour.
    let value = tokio::time::timeout(
        Duration::from_secs(30),
        there.get_or_load("hot", None, || async {
            Ok::<_, std::io::Error>((2, vec![Dependency::tag("hot")]))
        }),
    )
    .await
    .expect("the lease of the dropped request was released");
    assert_eq!(value.unwrap(), 2);
}

/// A blocking fill (`matroska::blocking::block_on`) on a plain thread with no runtime of its
/// own, whose loader panics, releases its fill lease: the lease guard's drop spawns the
/// release on the runtime `block_on` entered. Without a runtime context the release would be
/// skipped (nothing to spawn on) and another process would wait out the hour-long lease.
#[test]
fn a_blocking_fill_whose_loader_panics_releases_its_lease() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let prefix = support::unique("blocking_lease");
    let lease = Duration::from_secs(3600);
    let cache = || async {
        let config = RedisConfig::new(support::redis_url(), prefix.clone());
        Cache::builder(support::redis_backend_with(config).await)
            .fill_lease(lease)
            .build()
            .unwrap()
    };
    let (here, there) = runtime.block_on(async { (cache().await, cache().await) });
    let panicked = std::thread::spawn(move || {
        assert!(tokio::runtime::Handle::try_current().is_err());
        let loader = || async {
            if true {
                panic!("the loader fails");
            }
            Ok::<_, std::io::Error>((1, vec![Dependency::tag("hot")]))
        };
        matroska::blocking::block_on(here.get_or_load("hot", None, loader))
    })
    .join();
    assert!(panicked.is_err(), "the loader's panic reaches the caller");
    // A deadline, not a measurement: with the lease left behind this would wait an hour.
    let value = runtime.block_on(async {
        tokio::time::timeout(
            Duration::from_secs(30),
            there.get_or_load("hot", None, || async {
                Ok::<_, std::io::Error>((2, vec![Dependency::tag("hot")]))
            }),
        )
        .await
        .expect("the lease of the panicked fill was released")
    });
    assert_eq!(value.unwrap(), 2);
}

/// Fills a private server with `maxmemory 2mb` far past its memory, so Redis evicts keys of
/// every kind, while entries are read, written and invalidated. Whatever it evicts, a read
/// after an invalidation returned never sees the invalidated value.
async fn eviction_never_serves_invalidated_values(policy: &str) {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
    let redis = PrivateRedis::start_with(&["--maxmemory", "2mb", "--maxmemory-policy", policy]);
    let cache = Cache::builder(backend(&redis, |c| c).await)
        .build()
        .unwrap();
    const ROWS: usize = 200;
    let row = |i: usize| Dependency::id("row", i as i64);

    // 1. Deterministic: 200 cached rows, memory filled, every row invalidated.
    for i in 0..ROWS {
        cache
            .put(&format!("row:{i}"), &0_i64, &[row(i)], None)
            .await
            .unwrap();
    }
    let junk = "x".repeat(4096);
    for j in 0..400 {
        // 1.6 MB of junk, with dependencies of its own, through the same cache: past the
        // memory limit, but not so far that every row is evicted.
        let deps = [Dependency::tag(format!("junk{}", j % 97))];
        // Put may fail under memory pressure (OOM answers); only reads are under test.
        let _ = cache.put(&format!("junk:{j}"), &junk, &deps, None).await;
        // Reading the rows keeps their entries hot for LRU, and nothing else of theirs.
        if j % 50 == 0 {
            for i in 0..ROWS {
                let _ = cache.get::<i64>(&format!("row:{i}")).await;
            }
        }
    }
    let mut present = 0;
    for i in 0..ROWS {
        if cache.has(&format!("row:{i}")).await.unwrap() {
            present += 1;
        }
    }
    println!("{policy}: {present}/{ROWS} rows cached before the invalidation");
    assert!(present > 0, "the rows were evicted: nothing to check");
    let all: Vec<Dependency> = (0..ROWS).map(row).collect();
    cache.invalidate(&all).await.unwrap();
    let mut stale = 0;
    for i in 0..ROWS {
        if cache
            .get::<i64>(&format!("row:{i}"))
            .await
            .unwrap()
            .is_some()
        {
            stale += 1;
        }
    }
    assert_eq!(
        stale, 0,
        "{policy}: {stale}/{ROWS} entries readable after their invalidation"
    );

    // 2. Concurrent: readers load rows through the cache, writers bump a row and invalidate
    // it, fillers keep memory full; a read that starts after an invalidation returned must see
    // at least that version.
    let versions: Arc<Vec<AtomicI64>> = Arc::new((0..ROWS).map(|_| AtomicI64::new(0)).collect());
    let invalidated: Arc<Vec<AtomicI64>> = Arc::new((0..ROWS).map(|_| AtomicI64::new(0)).collect());
    let stale_reads = Arc::new(AtomicU64::new(0));
    let hits = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for r in 0..4_u64 {
        let (cache, versions, invalidated, stale_reads, hits) = (
            cache.clone(),
            Arc::clone(&versions),
            Arc::clone(&invalidated),
            Arc::clone(&stale_reads),
            Arc::clone(&hits),
        );
        tasks.push(tokio::spawn(async move {
            let mut rng = support::Rng(0x9E37_79B9 + r * 7919);
            for _ in 0..1_500 {
                let i = rng.next(ROWS as u64 / 10) as usize;
                let floor = invalidated[i].load(Ordering::SeqCst);
                let versions2 = Arc::clone(&versions);
                let mut loaded = false;
                let v: i64 = cache
                    .get_or_load(&format!("row:{i}"), None, || {
                        loaded = true;
                        async move {
                            let v = versions2[i].load(Ordering::SeqCst);
                            tokio::task::yield_now().await;
                            Ok::<_, std::io::Error>((v, vec![Dependency::id("row", i as i64)]))
                        }
                    })
                    .await
                    .unwrap();
                if !loaded {
                    hits.fetch_add(1, Ordering::Relaxed);
                }
                if v < floor {
                    stale_reads.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    for w in 0..2_u64 {
        let (cache, versions, invalidated) = (
            cache.clone(),
            Arc::clone(&versions),
            Arc::clone(&invalidated),
        );
        tasks.push(tokio::spawn(async move {
            let mut rng = support::Rng(0xDEAD_BEEF + w * 104_729);
            for _ in 0..300 {
                let i = rng.next(ROWS as u64 / 10) as usize;
                let v = versions[i].fetch_add(1, Ordering::SeqCst) + 1;
                cache
                    .invalidate(&[Dependency::id("row", i as i64)])
                    .await
                    .unwrap();
                invalidated[i].fetch_max(v, Ordering::SeqCst);
                tokio::task::yield_now().await;
            }
        }));
    }
    for f in 0..2_u64 {
        let cache = cache.clone();
        let junk = junk.clone();
        tasks.push(tokio::spawn(async move {
            for j in 0..1_500_u64 {
                let dep = Dependency::id("row", ((j * 7 + f) % ROWS as u64) as i64);
                let _ = cache
                    .put(&format!("junk:{f}:{j}"), &junk, &[dep], None)
                    .await;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let evicted: String = redis::cmd("INFO")
        .arg("stats")
        .query(&mut redis.client())
        .unwrap();
    let evicted = evicted
        .lines()
        .find_map(|l| l.strip_prefix("evicted_keys:"))
        .unwrap_or("0")
        .trim()
        .to_owned();
    println!(
        "{policy}: {} hits, {} stale reads, {evicted} keys evicted",
        hits.load(Ordering::Relaxed),
        stale_reads.load(Ordering::Relaxed)
    );
    assert!(
        evicted.parse::<u64>().unwrap() > 1_000,
        "memory was not under pressure"
    );
    assert!(
        hits.load(Ordering::Relaxed) > 0,
        "the cache never hit: nothing was exercised"
    );
    assert_eq!(
        stale_reads.load(Ordering::Relaxed),
        0,
        "{policy}: stale reads"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eviction_under_allkeys_lru_never_serves_invalidated_values() {
    eviction_never_serves_invalidated_values("allkeys-lru").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eviction_under_volatile_lru_never_serves_invalidated_values() {
    eviction_never_serves_invalidated_values("volatile-lru").await;
}

/// A load takes its ticket, a writer invalidates, Redis restarts empty (no persistence), and
/// only then does the load try to store its value: it must be refused.
#[tokio::test]
async fn ticket_from_before_a_restart_never_stores_after_it() {
    let mut redis = PrivateRedis::start();
    let b = backend(&redis, |c| c).await;
    let dep = vec![Dependency::id("row", 1).encode()];
    let value = bytes::Bytes::from(matroska::Codec::Json.encode("k", &1, 0).unwrap());
    let ttl = Duration::from_secs(60);
    let mut refused = 0;
    for _ in 0..3 {
        let ticket = b.ticket().await.unwrap();
        b.invalidate(&dep).await.unwrap();
        redis.kill();
        redis.restart();
        let mut outcome = None;
        for _ in 0..200 {
            match b
                .put(PutRequest::new("k", value.clone(), &dep, ttl).guarded_by(Some(ticket)))
                .await
            {
                Ok(o) => {
                    outcome = Some(o);
                    break;
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(25)).await,
            }
        }
        if outcome.expect("no reconnect") == PutOutcome::Stale {
            refused += 1;
        }
        assert_eq!(
            b.get("k").await.unwrap(),
            None,
            "the stale value was stored"
        );
    }
    assert_eq!(refused, 3);
}

/// An application starts while Redis is down: the backend is built at once, operations fail
/// fast (reads are misses), and it connects when Redis comes up.
#[tokio::test]
async fn backend_built_while_redis_is_down_connects_in_the_background() {
    let mut redis = PrivateRedis::start();
    redis.kill();
    let backend =
        RedisBackend::new(RedisConfig::new(redis.url(), "app").timeout(Duration::from_millis(300)))
            .unwrap();
    assert!(!backend.is_connected());
    let cache = Cache::builder(backend.clone()).build().unwrap();
    assert_eq!(cache.get::<i32>("k").await.unwrap(), None);
    let err = cache.invalidate(&[Dependency::tag("t")]).await.unwrap_err();
    assert!(err.is_backend_failure(), "{err}");
    let loaded: i32 = cache
        .get_or_load("k", None, || async {
            Ok::<_, std::io::Error>((5, vec![Dependency::tag("t")]))
        })
        .await
        .unwrap();
    assert_eq!(loaded, 5);

    redis.restart();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while cache
        .put("k", &1, &[Dependency::tag("t")], None)
        .await
        .is_err()
    {
        assert!(std::time::Instant::now() < deadline, "never connected");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(backend.is_connected());
    assert_eq!(cache.get::<i32>("k").await.unwrap(), Some(1));
    cache.invalidate(&[Dependency::tag("t")]).await.unwrap();
    assert_eq!(cache.get::<i32>("k").await.unwrap(), None);
}

/// One command that times out (the server is paused for a moment) does not make the next
/// commands fail unsent: only connection errors or repeated time-outs trip the fast-fail.
#[tokio::test]
async fn one_slow_command_does_not_trip_the_fast_fail() {
    let redis = PrivateRedis::start();
    let b = backend(&redis, |c| {
        c.timeout(Duration::from_millis(300))
            .retry_after(Duration::from_secs(60))
    })
    .await;
    b.put(PutRequest::new(
        "k",
        bytes::Bytes::from_static(b"v"),
        &[],
        Duration::from_secs(60),
    ))
    .await
    .unwrap();
    let _: () = redis::cmd("CLIENT")
        .arg("PAUSE")
        .arg(600)
        .arg("ALL")
        .query(&mut redis.client())
        .unwrap();
    let err = b.get("k").await.unwrap_err();
    assert!(err.to_string().contains("timed out"), "{err}");
    // Sent, not refused by the fast-fail: it answers once the pause ends (or times out).
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        match b.get("k").await {
            Ok(v) => {
                assert_eq!(v.as_deref(), Some(&b"v"[..]));
                break;
            }
            Err(e) => {
                assert!(
                    !e.to_string().contains("not sent"),
                    "tripped by one time-out: {e}"
                );
                assert!(std::time::Instant::now() < deadline, "{e}");
            }
        }
    }
}

/// With Redis down, 50 concurrent callers of one key share loads instead of each loading:
/// an outage must not turn into a database stampede.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outage_keeps_in_process_coalescing() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    let mut redis = PrivateRedis::start();
    let cache = Cache::builder(backend(&redis, |c| c.timeout(Duration::from_millis(300))).await)
        .build()
        .unwrap();
    redis.kill();
    let loads = Arc::new(AtomicUsize::new(0));
    let start = Arc::new(tokio::sync::Barrier::new(50));
    let mut tasks = Vec::new();
    for _ in 0..50 {
        let (cache, loads, start) = (cache.clone(), Arc::clone(&loads), Arc::clone(&start));
        tasks.push(tokio::spawn(async move {
            start.wait().await;
            cache
                .get_or_load("hot", None, || async {
                    loads.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    Ok::<_, std::io::Error>((7, vec![Dependency::tag("hot")]))
                })
                .await
                .unwrap()
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), 7);
    }
    let loads = loads.load(Ordering::SeqCst);
    assert!(loads <= 3, "{loads} loads for 50 callers during an outage");
}

/// A failed invalidation is logged with counts, not with the dependency values (which can be
/// personal data).
#[tokio::test]
async fn failed_invalidation_logs_no_dependency_values() {
    use std::sync::{Arc, Mutex};
    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<Vec<u8>>>);
    impl std::io::Write for Sink {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let sink = Sink::default();
    let writer = sink.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    let _guard = tracing_subscriber::util::SubscriberInitExt::set_default(subscriber);
    let mut redis = PrivateRedis::start();
    let cache = Cache::builder(backend(&redis, |c| c.timeout(Duration::from_millis(300))).await)
        .build()
        .unwrap();
    redis.kill();
    let secret = Dependency::id("user", "alice@example.com");
    assert!(cache.invalidate(&[secret]).await.is_err());
    let logged = String::from_utf8(sink.0.lock().unwrap().clone()).unwrap();
    assert!(logged.contains("invalidation failed"), "{logged}");
    assert!(!logged.contains("alice"), "{logged}");
}

/// A put with more dependencies than one script call handles (`invalidate_batch`) takes the
/// step-by-step protocol the cluster uses, with the same guarantees.
#[tokio::test]
async fn put_with_very_many_dependencies_is_split_and_still_guarded() {
    let redis = PrivateRedis::start();
    let b = backend(&redis, |c| c.invalidate_batch(10)).await;
    let deps: Vec<String> = (0..25).map(|i| Dependency::id("row", i).encode()).collect();
    let value = bytes::Bytes::from(matroska::Codec::Json.encode("k", &1, 0).unwrap());
    let ttl = Duration::from_secs(60);
    let mut monitor = support::Monitor::start(&redis);
    let (outcome, sent) = monitor
        .commands(b.put(PutRequest::new("k", value.clone(), &deps, ttl)))
        .await;
    assert_eq!(outcome.unwrap(), PutOutcome::Stored);
    assert!(sent.len() > 1, "one script for 25 dependencies: {sent:?}");
    assert!(b.get("k").await.unwrap().is_some());
    b.invalidate(&deps[24..]).await.unwrap();
    assert_eq!(b.get("k").await.unwrap(), None);

    let ticket = b.ticket().await.unwrap();
    b.invalidate(&deps[3..4]).await.unwrap();
    let outcome = b
        .put(PutRequest::new("k", value.clone(), &deps, ttl).guarded_by(Some(ticket)))
        .await
        .unwrap();
    assert_eq!(outcome, PutOutcome::Stale);
    let ticket = b.ticket().await.unwrap();
    let outcome = b
        .put(PutRequest::new("k", value, &deps, ttl).guarded_by(Some(ticket)))
        .await
        .unwrap();
    assert_eq!(outcome, PutOutcome::Stored);
    assert!(b.get("k").await.unwrap().is_some());
}

/// A replica is promoted that never got the master's last invalidation, and the count in its
/// clock is behind: a ticket taken on the old master after that invalidation must not store on
/// the promoted replica, even after the same invalidation is repeated there (same count).
///
/// The clock is owned by the master (a ticket reset it there) before it is replicated, so the
/// promoted replica's clock has the ticket's epoch and a count the repeated invalidation brings
/// up to the ticket's: the epoch and the stamps both pass, and only the owner (run id) written
/// with the clock (put.lua, and check_clock.lua for the step-by-step put) refuses.
#[tokio::test]
async fn ticket_from_the_old_master_never_stores_on_a_promoted_replica() {
    // A full sync writes an RDB file: into the temporary directory, not the working tree.
    let dir = std::env::temp_dir().join(support::unique("replication"));
    std::fs::create_dir_all(&dir).unwrap();
    let dir = dir.to_str().expect("a UTF-8 temporary directory");
    let master = PrivateRedis::start_with(&["--dir", dir]);
    let port = master.port.to_string();
    let replica = PrivateRedis::start_with(&["--dir", dir, "--replicaof", "127.0.0.1", &port]);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let info: String = redis::cmd("INFO")
            .arg("replication")
            .query(&mut replica.client())
            .unwrap();
        if info.contains("master_link_status:up") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the replica never synced"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let on_master = backend(&master, |c| c).await;
    let dep = vec![Dependency::id("row", 1).encode()];
    // Two dependencies and a batch of one: the step-by-step put (stamp.lua, check_clock.lua).
    let deps = vec![dep[0].clone(), Dependency::id("row", 2).encode()];
    // The first ticket makes the clock the master's: '<epoch>:0:<master's run id>'.
    let first = on_master.ticket().await.unwrap();
    on_master.invalidate(&deps).await.unwrap();
    let synced: i64 = redis::cmd("WAIT")
        .arg(1)
        .arg(5_000)
        .query(&mut master.client())
        .unwrap();
    assert_eq!(synced, 1);

    // Failover: the replica is promoted; the master's next invalidation never reaches it.
    let _: () = redis::cmd("REPLICAOF")
        .arg("NO")
        .arg("ONE")
        .query(&mut replica.client())
        .unwrap();
    on_master.invalidate(&deps).await.unwrap();
    let ticket = on_master.ticket().await.unwrap();
    assert_eq!(
        ticket.epoch, first.epoch,
        "the master kept its clock's epoch"
    );

    // The application now talks to the promoted replica and invalidates again: the replicated
    // clock is one invalidation behind, so this one writes the stamps the ticket already saw.
    let on_replica = backend(&replica, |c| c).await;
    on_replica.invalidate(&deps).await.unwrap();
    let clock: String = redis::cmd("GET")
        // The backend's clock key for the prefix "app".
        .arg("{app}:c")
        .query(&mut replica.client())
        .unwrap();
    assert!(
        clock.starts_with(&format!("{}:{}:", ticket.epoch, ticket.clock)),
        "the scenario needs the promoted clock at the ticket's reading: {clock} vs {ticket:?}"
    );
    let value = bytes::Bytes::from(matroska::Codec::Json.encode("k", &1, 0).unwrap());
    let outcome = on_replica
        .put(
            PutRequest::new("k", value.clone(), &dep, Duration::from_secs(60))
                .guarded_by(Some(ticket)),
        )
        .await
        .unwrap();
    assert_eq!(outcome, PutOutcome::Stale);
    let spread = backend(&replica, |c| c.invalidate_batch(1)).await;
    let outcome = spread
        .put(PutRequest::new("k", value, &deps, Duration::from_secs(60)).guarded_by(Some(ticket)))
        .await
        .unwrap();
    assert_eq!(outcome, PutOutcome::Stale);
    assert!(on_replica.get("k").await.unwrap().is_none());

    // A ticket taken on the promoted server starts its own epoch: loads store again, and the
    // next invalidation still drops what they stored.
    let ticket = on_replica.ticket().await.unwrap();
    let value = bytes::Bytes::from(matroska::Codec::Json.encode("k", &2, 0).unwrap());
    let outcome = on_replica
        .put(PutRequest::new("k", value, &dep, Duration::from_secs(60)).guarded_by(Some(ticket)))
        .await
        .unwrap();
    assert_eq!(outcome, PutOutcome::Stored);
    assert!(on_replica.get("k").await.unwrap().is_some());
    on_replica.invalidate(&dep).await.unwrap();
    assert!(on_replica.get("k").await.unwrap().is_none());
    drop((master, replica));
    let _ = std::fs::remove_dir_all(dir);
}

/// Issue 16, item 1, on one server: an invalidation's stamp is lost (evicted, or expired
/// because the load outlasted the stale window) and re-created by another fill; a ticket from
/// before the invalidation must still be refused. Also through the step-by-step put that
/// puts with more dependencies than `invalidate_batch` take.
#[tokio::test]
async fn a_lost_stamp_recreated_by_another_fill_refuses_an_older_ticket() {
    use support::stamps::{Loss, lost_stamp_recreated_by_another_fill};
    let url = support::redis_url();
    let node_of = |_: &str| url.clone();
    for loss in [Loss::Evicted, Loss::Expired] {
        // 1: two dependencies are more than one script call handles.
        for batch in [1_000, 1] {
            let b = support::redis_backend_with(
                RedisConfig::new(url.clone(), support::unique("lost_stamp"))
                    .stale_window(Duration::from_millis(200))
                    .invalidate_batch(batch),
            )
            .await;
            lost_stamp_recreated_by_another_fill(&b, &node_of, loss).await;
        }
    }
}

/// Issue 15a on Redis.
#[tokio::test]
async fn late_follower_never_gets_the_lease_holders_pre_invalidation_value() {
    support::fill::late_follower_never_gets_the_lease_holders_pre_invalidation_value(
        support::redis_backend("late_follower").await,
    )
    .await;
}

/// Retries `op` until Redis answers (the backend reconnects by itself after a restart).
async fn once_connected<T, F: Future<Output = matroska::Result<T>>>(
    mut op: impl FnMut() -> F,
) -> T {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        match op().await {
            Ok(v) => return v,
            Err(e) => {
                assert!(
                    std::time::Instant::now() < deadline,
                    "never reconnected: {e}"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}

/// Issue 16, item 16: a server restarted from a snapshot brings back entries and the stamps
/// they recorded, older than the invalidations made since the snapshot. Nothing it restored
/// may be served, by a process that reads and writes or by one that only reads, and a ticket
/// from before the restart never stores; afterwards the cache works as before.
#[tokio::test]
async fn a_restart_from_a_snapshot_serves_nothing_it_restored() {
    let mut redis = PrivateRedis::start_persistent();
    let writer = backend(&redis, |c| c).await;
    // Another process on the same prefix that only reads.
    let reader = backend(&redis, |c| c).await;
    let ttl = Duration::from_secs(600);
    let value = |v: i32| bytes::Bytes::from(matroska::Codec::Json.encode("k", &v, 0).unwrap());
    let rows: Vec<Vec<String>> = (0..30)
        .map(|i| vec![Dependency::id("row", i).encode()])
        .collect();
    // Every third key has no dependency at all: only the epoch can tell it was restored.
    let deps = |i: usize| if i % 3 == 2 { &[][..] } else { &rows[i][..] };
    for i in 0..rows.len() {
        let ticket = writer.ticket().await.unwrap();
        let key = format!("k{i}");
        let put = PutRequest::new(&key, value(1), deps(i), ttl).guarded_by(Some(ticket));
        assert_eq!(writer.put(put).await.unwrap(), PutOutcome::Stored);
        assert!(reader.get(&format!("k{i}")).await.unwrap().is_some());
    }
    let _: () = redis::cmd("SAVE").query(&mut redis.client()).unwrap();
    // After the snapshot: half the rows change, and a load starts after that.
    for row in &rows[..15] {
        writer.invalidate(row).await.unwrap();
    }
    let late = writer.ticket().await.unwrap();
    for i in (0..15).filter(|i| !deps(*i).is_empty()) {
        assert!(reader.get(&format!("k{i}")).await.unwrap().is_none());
    }
    redis.restart_from_snapshot();
    let restored: Option<Vec<u8>> = redis::cmd("GET")
        .arg(writer.entry_key("k0"))
        .query(&mut redis.client())
        .unwrap();
    assert!(
        restored.is_some(),
        "the scenario needs the snapshot restored"
    );

    // A load that took its ticket before the restart, first thing on the restored server.
    let refused = once_connected(|| {
        writer.put(PutRequest::new("k0", value(2), &rows[0], ttl).guarded_by(Some(late)))
    })
    .await;
    assert_eq!(refused, PutOutcome::Stale);
    for b in [&reader, &writer] {
        let mut served = Vec::new();
        for i in 0..rows.len() {
            let key = format!("k{i}");
            if once_connected(|| b.get(&key)).await.is_some() {
                served.push(i);
            }
        }
        assert_eq!(served, Vec::<usize>::new(), "restored entries were served");
    }
    let outcome = writer
        .put(PutRequest::new("k0", value(2), &rows[0], ttl).guarded_by(Some(late)))
        .await
        .unwrap();
    assert_eq!(
        outcome,
        PutOutcome::Stale,
        "a ticket from before the restart"
    );

    // The cache works as before.
    let ticket = writer.ticket().await.unwrap();
    let put = PutRequest::new("k0", value(3), &rows[0], ttl).guarded_by(Some(ticket));
    assert_eq!(writer.put(put).await.unwrap(), PutOutcome::Stored);
    assert!(reader.get("k0").await.unwrap().is_some());
    writer.invalidate(&rows[0]).await.unwrap();
    assert!(reader.get("k0").await.unwrap().is_none());
}

/// A reconnect to the same server instance (the connection was killed, the server kept
/// running) verifies the new connection and drops nothing.
#[tokio::test]
async fn a_reconnect_to_the_same_server_keeps_every_entry() {
    let redis = PrivateRedis::start();
    let b = backend(&redis, |c| c).await;
    let dep = vec![Dependency::id("row", 1).encode()];
    let ticket = b.ticket().await.unwrap();
    let value = bytes::Bytes::from(matroska::Codec::Json.encode("k", &1, 0).unwrap());
    let put = PutRequest::new("k", value, &dep, Duration::from_secs(60)).guarded_by(Some(ticket));
    assert_eq!(b.put(put).await.unwrap(), PutOutcome::Stored);
    assert!(b.get("k").await.unwrap().is_some());
    let clock = |redis: &PrivateRedis| -> String {
        redis::cmd("GET")
            .arg("{app}:c")
            .query(&mut redis.client())
            .unwrap()
    };
    let before = clock(&redis);
    let killed: i64 = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("TYPE")
        .arg("normal")
        .arg("SKIPME")
        .arg("yes")
        .query(&mut redis.client())
        .unwrap();
    assert!(killed >= 1);
    assert!(once_connected(|| b.get("k")).await.is_some());
    assert_eq!(clock(&redis), before, "the epoch was restarted");
    let names: String = redis::cmd("CLIENT")
        .arg("LIST")
        .query(&mut redis.client())
        .unwrap();
    assert!(
        names.contains("name=matroska-"),
        "the new connection was not verified: {names}"
    );
}

/// A Redis backend made on a multi-thread runtime (`#[tokio::main]`'s kind) serves blocking
/// calls from a task of that runtime too — sync code called straight from an async handler.
/// Parked with its core, the worker would keep the connection's driver task (woken by the
/// request from that very worker, so put in the worker's unstealable next-task slot) from
/// running: every call would end at the backend's time-out, a backend failure, whatever the
/// number of workers. `block_on` hands the core over first (`block_in_place`).
#[test]
fn a_blocking_read_from_a_worker_of_the_backends_runtime_reaches_redis() {
    let (done, got) = std::sync::mpsc::channel();
    // A thread of its own and a bounded wait: a stuck call fails the test, never hangs it.
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(4)
            .enable_all()
            .build()
            .unwrap();
        let got = runtime.block_on(async {
            let cache = support::redis_cache("blocking_worker").await;
            cache.put("k", &"v", &[], None).await.unwrap();
            let mut got = Vec::new();
            for _ in 0..3 {
                let cache = cache.clone();
                let read = tokio::spawn(async move {
                    matroska::blocking::block_on(cache.try_get::<String>("k"))
                });
                got.push(format!(
                    "{:?}",
                    read.await.map(|r| r.map_err(|e| e.to_string()))
                ));
            }
            got
        });
        let _ = done.send(got);
    });
    let got = got.recv_timeout(Duration::from_secs(60)).unwrap();
    assert!(
        got.iter().all(|g| g == r#"Ok(Ok(Some("v")))"#),
        "blocking reads from a worker: {got:?}"
    );
}
