//! The Redis backend on a private Redis Cluster (feature `cluster`): keys spread over the
//! masters, and scripts stay within one slot. The conformance suite and the stress tests run
//! on a cluster too (`tests/conformance.rs`, `tests/stress.rs`).
#![cfg(feature = "cluster")]

mod support;

use std::time::Duration;

use matroska::backend::redis::RedisConfig;
use matroska::{Cache, Dependency};
use support::cluster::PrivateCluster;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_and_stamps_spread_over_every_master() {
    let cluster = tokio::task::spawn_blocking(PrivateCluster::shared)
        .await
        .unwrap();
    let prefix = support::unique("spread");
    let backend =
        support::redis_backend_with(RedisConfig::cluster(cluster.urls(), prefix.clone())).await;
    let cache = Cache::builder(backend.clone()).build().unwrap();
    for i in 0..200 {
        cache
            .put(&format!("k{i}"), &i, &[Dependency::id("row", i)], None)
            .await
            .unwrap();
    }
    let mut masters = std::collections::HashSet::new();
    for i in 0..200 {
        masters.insert(cluster.master_of(&backend.entry_key(&format!("k{i}"))));
        masters.insert(cluster.master_of(&backend.stamp_key(&Dependency::id("row", i).encode())));
    }
    assert_eq!(
        masters.len(),
        3,
        "keys of one prefix live on {masters:?} only"
    );
    // And every one of them works: invalidate half, read all.
    let half: Vec<Dependency> = (0..100).map(|i| Dependency::id("row", i)).collect();
    cache.invalidate(&half).await.unwrap();
    for i in 0..200 {
        let got = cache.get::<i64>(&format!("k{i}")).await.unwrap();
        assert_eq!(got, (i >= 100).then_some(i), "k{i}");
    }
}

/// A guarded put whose ticket predates an invalidation is refused on a cluster as on one
/// server, whichever nodes hold the stamps; and one from before a failover of the clock's
/// master is refused after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ticket_from_before_a_failover_never_stores_after_it() {
    use matroska::backend::{Backend, PutOutcome, PutRequest};
    let mut cluster = tokio::task::spawn_blocking(PrivateCluster::start)
        .await
        .unwrap();
    let prefix = support::unique("failover");
    let b = support::redis_backend_with(
        RedisConfig::cluster(cluster.urls(), prefix.clone())
            .timeout(Duration::from_millis(500))
            .wait_for_replicas(1),
    )
    .await;
    let deps = vec![Dependency::id("row", 1).encode()];
    let value = bytes::Bytes::from(matroska::Codec::Json.encode("k", &1, 0).unwrap());
    let ttl = Duration::from_secs(60);
    let ticket = b.ticket().await.unwrap();
    let clock = format!("{{{prefix}}}:c");
    let cluster = tokio::task::spawn_blocking(move || {
        let port = cluster.master_of(&clock);
        cluster.kill(port);
        cluster.wait_for_failover(port);
        cluster
    })
    .await
    .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let outcome = loop {
        match b
            .put(PutRequest::new("k", value.clone(), &deps, ttl).guarded_by(Some(ticket)))
            .await
        {
            Ok(outcome) => break outcome,
            Err(e) => {
                assert!(std::time::Instant::now() < deadline, "{e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    assert_eq!(
        outcome,
        PutOutcome::Stale,
        "a ticket from before the failover stored"
    );
    // A fresh ticket stores, and reads answer.
    let ticket = b.ticket().await.unwrap();
    let outcome = b
        .put(PutRequest::new("k", value, &deps, ttl).guarded_by(Some(ticket)))
        .await
        .unwrap();
    assert_eq!(outcome, PutOutcome::Stored);
    assert!(b.get("k").await.unwrap().is_some());
    drop(cluster);
}

/// Issue 16, item 1, on a cluster: a lost invalidation stamp re-created by another fill
/// (pending, then the clock's reading) still refuses a ticket from before the invalidation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_stamp_recreated_by_another_fill_refuses_an_older_ticket() {
    use support::stamps::{Loss, lost_stamp_recreated_by_another_fill};
    let cluster = tokio::task::spawn_blocking(PrivateCluster::shared)
        .await
        .unwrap();
    let node_of = |key: &str| format!("redis://127.0.0.1:{}", cluster.master_of(key));
    for loss in [Loss::Evicted, Loss::Expired] {
        let b = support::redis_backend_with(
            RedisConfig::cluster(cluster.urls(), support::unique("lost_stamp"))
                .stale_window(Duration::from_millis(200)),
        )
        .await;
        lost_stamp_recreated_by_another_fill(&b, &node_of, loss).await;
    }
}

/// Issue 16, item 5: a bulk invalidation's stamp landing after a later single-row
/// invalidation's does not move the stamp backwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reordered_invalidations_never_move_a_stamp_backwards() {
    let b = support::redis_cluster_backend("reordered").await;
    support::stamps::reordered_invalidations_never_move_a_stamp_backwards(&b).await;
}

/// A cluster whose nodes persist to disk is refused at connect (issue 16, item 16, on a
/// cluster): a node restarted from its snapshot would serve entries older than the
/// invalidations made since, and on a cluster the backend cannot detect that restart. The
/// refusal names the node; `allow_cluster_persistence` accepts it; a background connection
/// (`new`) reports it on every operation and connects once persistence is turned off.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_that_persists_to_disk_is_refused_unless_allowed() {
    use matroska::Error;
    use matroska::backend::Backend;
    use matroska::backend::redis::RedisBackend;
    let cluster = tokio::task::spawn_blocking(|| PrivateCluster::start_with_replicas(0))
        .await
        .unwrap();
    let urls = cluster.urls();
    let persistent = urls[1].clone();
    let config_set = |url: &str, name: &str, value: &str| {
        let mut c = redis::Client::open(url).unwrap().get_connection().unwrap();
        let _: () = redis::cmd("CONFIG")
            .arg("SET")
            .arg(name)
            .arg(value)
            .query(&mut c)
            .unwrap();
    };
    let config = RedisConfig::cluster(urls.clone(), support::unique("persist"));

    // Off everywhere (the private cluster's nodes run with `save ""`): accepted.
    RedisBackend::connect(config.clone()).await.unwrap();

    config_set(&persistent, "save", "3600 1");
    let refused = RedisBackend::connect(config.clone()).await;
    let Err(Error::Config(message)) = &refused else {
        panic!("a persistent node must be refused, got {refused:?}");
    };
    let port = persistent.rsplit(':').next().unwrap();
    assert!(
        message.contains(&format!(":{port} (save \"3600 1\")")),
        "{message}"
    );
    RedisBackend::connect(config.clone().allow_cluster_persistence())
        .await
        .unwrap();

    // In the background: every operation fails naming the cause, until the node stops
    // persisting; then the retry connects.
    let background = RedisBackend::new(config.clone()).unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let failure = loop {
        match background.invalidate(&["dep".to_owned()]).await {
            Err(e) if e.to_string().contains("persist to disk") => break e,
            other => {
                assert!(tokio::time::Instant::now() < deadline, "got {other:?}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    assert!(!background.is_connected(), "{failure}");
    config_set(&persistent, "save", "");
    config_set(&persistent, "appendonly", "yes");
    let refused = RedisBackend::connect(config.clone()).await;
    assert!(
        matches!(&refused, Err(Error::Config(m)) if m.contains("appendonly yes")),
        "{refused:?}"
    );
    config_set(&persistent, "appendonly", "no");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while !background.is_connected() {
        assert!(tokio::time::Instant::now() < deadline, "never connected");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    background.invalidate(&["dep".to_owned()]).await.unwrap();
}
