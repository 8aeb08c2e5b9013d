//! Redis Cluster (3 masters, no replicas) against one master on the same machine, 32 tasks:
//! matroska get-hit and put throughput, and `redis-benchmark` GET/SET on the same servers as
//! the ceiling of what the servers (not matroska) allow here.

mod common;

use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use matroska::backend::redis::{RedisBackend, RedisConfig};
use matroska::{Cache, Dependency};

use common::cluster::PrivateCluster;
use common::{Article, PrivateRedis, concurrently, runtime, small};

/// Keys per side: enough to spread over every slot range of the three masters.
const KEYS: u64 = 1_000;

async fn cache_on(config: RedisConfig) -> Cache {
    let backend = RedisBackend::connect(config.timeout(Duration::from_secs(5)))
        .await
        .expect("the private servers answer");
    Cache::builder(backend).build().expect("valid settings")
}

fn cluster_vs_one_master(c: &mut Criterion) {
    let rt = runtime();
    let single = PrivateRedis::start();
    let cluster = PrivateCluster::start_with_replicas(0);
    let sides = rt.block_on(async {
        vec![
            (
                "one master",
                cache_on(RedisConfig::new(single.url(), "bench")).await,
            ),
            (
                "3-master cluster",
                cache_on(RedisConfig::cluster(cluster.urls(), "bench")).await,
            ),
        ]
    });
    for (_, cache) in &sides {
        rt.block_on(async {
            for i in 0..KEYS {
                let deps = [Dependency::id("article", i)];
                cache
                    .put(
                        &format!("k{i}"),
                        &small(),
                        &deps,
                        Some(Duration::from_secs(600)),
                    )
                    .await
                    .unwrap();
                // Warm the key -> stamps memo, as a process that read the key before has it.
                assert!(
                    cache
                        .get::<Article>(&format!("k{i}"))
                        .await
                        .unwrap()
                        .is_some()
                );
            }
        });
    }

    let mut g = c.benchmark_group("redis cluster/x32 tasks");
    g.throughput(Throughput::Elements(1));
    // Sides alternate within each operation.
    for op in ["get hit", "put 1 dependency"] {
        for (side, cache) in &sides {
            g.bench_function(BenchmarkId::new(op, side), |b| {
                b.iter_custom(|iters| {
                    let next = Arc::new(AtomicU64::new(0));
                    rt.block_on(concurrently(iters, {
                        let cache = cache.clone();
                        move || {
                            let (cache, i) =
                                (cache.clone(), next.fetch_add(1, Ordering::Relaxed) % KEYS);
                            async move {
                                let key = format!("k{i}");
                                if op == "get hit" {
                                    assert!(cache.get::<Article>(&key).await.unwrap().is_some());
                                } else {
                                    let deps = [Dependency::id("article", i)];
                                    cache
                                        .put(&key, &small(), &deps, Some(Duration::from_secs(600)))
                                        .await
                                        .unwrap();
                                }
                            }
                        }
                    }))
                })
            });
        }
    }
    g.finish();

    // The ceiling: the servers themselves under redis-benchmark's 32 clients (its own client
    // and pipeline-less protocol), same machine, same moment.
    let ports: Vec<u16> = cluster
        .urls()
        .iter()
        .filter_map(|u| u.rsplit(':').next()?.parse().ok())
        .collect();
    for (side, port, cluster_flag) in [
        ("one master", single.port, false),
        ("3-master cluster", ports[0], true),
    ] {
        let mut cmd = Command::new("redis-benchmark");
        cmd.args([
            "-p",
            &port.to_string(),
            "-c",
            "32",
            "-n",
            "200000",
            "-t",
            "get,set",
            "-q",
        ]);
        if cluster_flag {
            cmd.arg("--cluster");
        }
        match cmd.output() {
            Ok(out) => {
                for line in String::from_utf8_lossy(&out.stdout).lines() {
                    let line = line.rsplit('\r').next().unwrap_or(line).trim();
                    if !line.is_empty() {
                        println!("redis-benchmark {side}: {line}");
                    }
                }
            }
            Err(e) => println!("redis-benchmark not run: {e}"),
        }
    }
}

criterion_group!(benches, cluster_vs_one_master);
criterion_main!(benches);
