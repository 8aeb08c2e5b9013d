//! The Redis backend against raw redis-rs on the same connection type.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use matroska::Dependency;
use matroska::backend::redis::{RedisBackend, RedisConfig};
use redis::AsyncCommands;

use common::{Article, concurrently, paired, redis_pair, runtime, small};

fn get(c: &mut Criterion) {
    let rt = runtime();
    let (cache, raw) = rt.block_on(redis_pair("get"));
    rt.block_on(cache.put(
        "hit",
        &small(),
        &common::deps(5, 0),
        Some(Duration::from_secs(600)),
    ))
    .unwrap();
    let stored: Vec<u8> = rt.block_on(async {
        let b = cache.backend().get("hit").await.unwrap().unwrap();
        b.to_vec()
    });
    let mut raw_conn = raw.clone();
    rt.block_on(async {
        let _: () = raw_conn.set_ex("bench_raw_hit", stored, 600).await.unwrap();
    });

    let mut g = c.benchmark_group("redis/get");
    g.throughput(Throughput::Elements(1));
    g.bench_function("raw GET hit", |b| {
        b.to_async(&rt).iter(|| {
            let mut conn = raw.clone();
            async move {
                let v: Option<Vec<u8>> = conn.get("bench_raw_hit").await.unwrap();
                v
            }
        })
    });
    g.bench_function("matroska get hit", |b| {
        b.to_async(&rt)
            .iter(|| async { cache.get::<Article>("hit").await.unwrap() })
    });
    g.bench_function("raw GET miss", |b| {
        b.to_async(&rt).iter(|| {
            let mut conn = raw.clone();
            async move {
                let v: Option<Vec<u8>> = conn.get("bench_raw_missing").await.unwrap();
                v
            }
        })
    });
    g.bench_function("matroska get miss", |b| {
        b.to_async(&rt)
            .iter(|| async { cache.get::<Article>("missing").await.unwrap() })
    });
    g.finish();

    // Throughput with 32 concurrent tasks sharing the connection.
    let mut g = c.benchmark_group("redis/get x32 tasks");
    g.throughput(Throughput::Elements(1));
    g.bench_function("raw GET hit", |b| {
        b.iter_custom(|iters| {
            rt.block_on(concurrently(iters, {
                let raw = raw.clone();
                move || {
                    let mut conn = raw.clone();
                    async move {
                        let _: Option<Vec<u8>> = conn.get("bench_raw_hit").await.unwrap();
                    }
                }
            }))
        })
    });
    g.bench_function("matroska get hit", |b| {
        b.iter_custom(|iters| {
            rt.block_on(concurrently(iters, {
                let cache = cache.clone();
                move || {
                    let cache = cache.clone();
                    async move {
                        cache.get::<Article>("hit").await.unwrap();
                    }
                }
            }))
        })
    });
    g.finish();
}

fn put(c: &mut Criterion) {
    let rt = runtime();
    let (cache, raw) = rt.block_on(redis_pair("put"));
    let value = small();
    let bytes = serde_json::to_vec(&value).unwrap();
    let mut g = c.benchmark_group("redis/put");
    g.throughput(Throughput::Elements(1));
    g.bench_function("raw SET EX", |b| {
        b.to_async(&rt).iter(|| {
            let mut conn = raw.clone();
            let bytes = bytes.clone();
            async move {
                let _: () = conn.set_ex("bench_raw_put", bytes, 600).await.unwrap();
            }
        })
    });
    for n in [1, 5, 20] {
        let deps = common::deps(n, n);
        g.bench_with_input(
            BenchmarkId::new("matroska put", format!("{n} deps")),
            &deps,
            |b, deps| {
                b.to_async(&rt).iter(|| async {
                    cache
                        .put("put", &value, deps, Some(Duration::from_secs(600)))
                        .await
                        .unwrap()
                })
            },
        );
    }
    g.finish();
}

fn invalidate(c: &mut Criterion) {
    let rt = runtime();
    let (cache, raw) = rt.block_on(redis_pair("invalidate"));
    let mut g = c.benchmark_group("redis/invalidate one dependency");
    g.sample_size(10);
    for n in [1_usize, 100, 1000] {
        let dep = Dependency::tag(format!("fan-out-{n}"));
        g.bench_function(
            BenchmarkId::new("matroska invalidate", format!("{n} dependents")),
            |b| {
                b.iter_custom(|iters| {
                    rt.block_on(async {
                        let mut total = Duration::ZERO;
                        for _ in 0..iters {
                            for i in 0..n {
                                cache
                                    .put(&format!("e{i}"), &1, std::slice::from_ref(&dep), None)
                                    .await
                                    .unwrap();
                            }
                            let start = Instant::now();
                            cache.invalidate(std::slice::from_ref(&dep)).await.unwrap();
                            total += start.elapsed();
                            assert!(!cache.has("e0").await.unwrap());
                        }
                        total
                    })
                })
            },
        );
        // The naive Lua invalidate of `../shared/floor`: `SMEMBERS` of the dependency's index
        // set, `UNLINK` of its members in chunks, then of the set.
        let (put, inv) = (
            redis::Script::new(NAIVE_PUT),
            redis::Script::new(NAIVE_INVALIDATE),
        );
        g.bench_function(
            BenchmarkId::new("naive Lua invalidate", format!("{n} dependents")),
            |b| {
                b.iter_custom(|iters| {
                    rt.block_on(async {
                        let mut conn = raw.clone();
                        let set = format!("bench_naive_inv:{n}");
                        let mut total = Duration::ZERO;
                        for _ in 0..iters {
                            for i in 0..n {
                                let _: i64 = put
                                    .key(format!("bench_naive_e{i}"))
                                    .key(&set)
                                    .arg(1)
                                    .arg(600)
                                    .invoke_async(&mut conn)
                                    .await
                                    .unwrap();
                            }
                            let start = Instant::now();
                            let dropped: i64 = inv.key(&set).invoke_async(&mut conn).await.unwrap();
                            total += start.elapsed();
                            assert_eq!(dropped, n as i64);
                        }
                        total
                    })
                })
            },
        );
        // The floor: deleting the same keys when they are already known.
        g.bench_function(
            BenchmarkId::new("raw DEL of the keys", format!("{n} keys")),
            |b| {
                b.iter_custom(|iters| {
                    rt.block_on(async {
                        let mut conn = raw.clone();
                        let keys: Vec<String> = (0..n).map(|i| format!("bench_raw_e{i}")).collect();
                        let mut total = Duration::ZERO;
                        for _ in 0..iters {
                            let mut pipe = redis::pipe();
                            for k in &keys {
                                pipe.set_ex(k, 1, 600).ignore();
                            }
                            let _: () = pipe.query_async(&mut conn).await.unwrap();
                            let start = Instant::now();
                            let _: i64 = conn.del(&keys).await.unwrap();
                            total += start.elapsed();
                        }
                        total
                    })
                })
            },
        );
    }
    g.finish();
}

/// Raw and matroska GETs alternated in one loop, so drift in the loopback round trip (large on
/// a small VM) hits both equally; prints the paired means and their ratio.
fn get_paired(_: &mut Criterion) {
    if !common::wanted("get paired") {
        return;
    }
    let rt = runtime();
    let (cache, raw) = rt.block_on(redis_pair("get_paired"));
    rt.block_on(async {
        cache
            .put(
                "hit",
                &small(),
                &common::deps(5, 0),
                Some(Duration::from_secs(600)),
            )
            .await
            .unwrap();
        let stored = cache.backend().get("hit").await.unwrap().unwrap().to_vec();
        let mut conn = raw.clone();
        let _: () = conn
            .set_ex("bench_raw_hit_paired", stored, 600)
            .await
            .unwrap();
        let (mut raw_total, mut ours_total) = (Duration::ZERO, Duration::ZERO);
        const PAIRS: u32 = 20_000;
        for i in 0..PAIRS + 1_000 {
            let start = Instant::now();
            let _: Option<Vec<u8>> = conn.get("bench_raw_hit_paired").await.unwrap();
            let raw_time = start.elapsed();
            let start = Instant::now();
            let _ = cache.get::<Article>("hit").await.unwrap();
            let ours_time = start.elapsed();
            // The first thousand pairs warm up.
            if i >= 1_000 {
                raw_total += raw_time;
                ours_total += ours_time;
            }
        }
        let (raw_mean, ours_mean) = (raw_total / PAIRS, ours_total / PAIRS);
        println!(
            "redis/get paired ({PAIRS} pairs): raw GET {raw_mean:?}, matroska get {ours_mean:?}, \
             matroska throughput = {:.1}% of raw",
            100.0 * raw_mean.as_secs_f64() / ours_mean.as_secs_f64()
        );
    });
}

/// Version-stamp reads: a hit with 1, 5 and 50 dependencies against the design's own floor,
/// the same `GET` + `MGET` sent raw in one pipeline (and against a plain `GET`), with 1 and
/// with 32 tasks.
fn get_with_dependencies(c: &mut Criterion) {
    let rt = runtime();
    let (cache, raw) = rt.block_on(redis_pair("get_deps"));
    // Only for the key names: the cache's own backend is behind `dyn Backend`.
    let backend = rt.block_on(async {
        RedisBackend::new(RedisConfig::new(
            common::redis_url(),
            common::prefix("get_deps"),
        ))
        .unwrap()
    });
    let mut g = c.benchmark_group("redis/get hit by dependencies");
    g.throughput(Throughput::Elements(1));
    for n in [1_usize, 5, 50] {
        let key = format!("hit{n}");
        let deps = common::deps(n, n);
        rt.block_on(cache.put(&key, &small(), &deps, Some(Duration::from_secs(600))))
            .unwrap();
        // Warm the key -> stamps memo, as a process that read the key before has it.
        rt.block_on(cache.get::<Article>(&key)).unwrap();
        let entry_key = backend.entry_key(&key);
        let stamp_keys: Vec<String> = deps
            .iter()
            .map(|d| backend.stamp_key(&d.encode()))
            .collect();
        g.bench_function(BenchmarkId::new("raw GET + MGET pipelined", n), |b| {
            b.to_async(&rt).iter(|| {
                let mut conn = raw.clone();
                let mut pipe = redis::pipe();
                pipe.cmd("GET").arg(&entry_key).cmd("MGET").arg(&stamp_keys);
                async move {
                    let v: (Option<Vec<u8>>, Vec<Option<Vec<u8>>>) =
                        pipe.query_async(&mut conn).await.unwrap();
                    v
                }
            })
        });
        g.bench_function(BenchmarkId::new("matroska get hit", n), |b| {
            b.to_async(&rt)
                .iter(|| async { cache.get::<Article>(&key).await.unwrap().unwrap() })
        });
        g.bench_function(BenchmarkId::new("matroska get hit x32 tasks", n), |b| {
            b.iter_custom(|iters| {
                rt.block_on(concurrently(iters, {
                    let (cache, key) = (cache.clone(), key.clone());
                    move || {
                        let (cache, key) = (cache.clone(), key.clone());
                        async move {
                            cache.get::<Article>(&key).await.unwrap().unwrap();
                        }
                    }
                }))
            })
        });
        g.bench_function(
            BenchmarkId::new("raw GET + MGET pipelined x32 tasks", n),
            |b| {
                b.iter_custom(|iters| {
                    rt.block_on(concurrently(iters, {
                        let (raw, entry_key, stamp_keys) =
                            (raw.clone(), entry_key.clone(), stamp_keys.clone());
                        move || {
                            let mut conn = raw.clone();
                            let mut pipe = redis::pipe();
                            pipe.cmd("GET").arg(&entry_key).cmd("MGET").arg(&stamp_keys);
                            async move {
                                let _: (Option<Vec<u8>>, Vec<Option<Vec<u8>>>) =
                                    pipe.query_async(&mut conn).await.unwrap();
                            }
                        }
                    }))
                })
            },
        );
    }
    g.finish();
}

/// The naive one-round-trip Lua put and invalidate over index sets (`../shared/floor`), the
/// floor the issue compares against.
const NAIVE_PUT: &str = r#"
local ttl = tonumber(ARGV[2])
redis.call('SET', KEYS[1], ARGV[1], 'EX', ttl)
for i = 2, #KEYS do
  redis.call('SADD', KEYS[i], KEYS[1])
  if redis.call('TTL', KEYS[i]) < ttl then redis.call('EXPIRE', KEYS[i], ttl) end
end
return 1
"#;

const NAIVE_INVALIDATE: &str = r#"
local n = 0
for i = 1, #KEYS do
  local members = redis.call('SMEMBERS', KEYS[i])
  for j = 1, #members, 500 do
    n = n + redis.call('UNLINK', unpack(members, j, math.min(j + 499, #members)))
  end
  redis.call('UNLINK', KEYS[i])
end
return n
"#;

fn naive_floors(c: &mut Criterion) {
    let rt = runtime();
    let (cache, raw) = rt.block_on(redis_pair("naive"));
    let value = serde_json::to_vec(&small()).unwrap();
    let put = redis::Script::new(NAIVE_PUT);
    let mut g = c.benchmark_group("redis/put vs naive Lua put");
    g.throughput(Throughput::Elements(1));
    for n in [1_usize, 5, 20] {
        let deps = common::deps(n, n);
        g.bench_function(BenchmarkId::new("naive Lua put", n), |b| {
            b.to_async(&rt).iter(|| {
                let mut conn = raw.clone();
                let mut inv = put.key("bench_naive_put");
                for d in &deps {
                    inv.key(format!("bench_naive_rdep:{}", d.encode()));
                }
                inv.arg(&value).arg(600);
                async move {
                    let _: i64 = inv.invoke_async(&mut conn).await.unwrap();
                }
            })
        });
        g.bench_function(BenchmarkId::new("matroska put", n), |b| {
            b.to_async(&rt).iter(|| async {
                cache
                    .put("put", &small(), &deps, Some(Duration::from_secs(600)))
                    .await
                    .unwrap()
            })
        });
    }
    g.finish();

    // 100,000 dependents: the stamp layout never looks at them, so they are stored once.
    let hot = Dependency::tag("hot-100k");
    rt.block_on(async {
        for i in 0..100_000 {
            cache
                .put(&format!("d{i}"), &1, std::slice::from_ref(&hot), None)
                .await
                .unwrap();
        }
    });
    let mut g = c.benchmark_group("redis/invalidate a dependency with 100,000 dependents");
    g.sample_size(10);
    g.bench_function("matroska invalidate", |b| {
        b.to_async(&rt)
            .iter(|| async { cache.invalidate(std::slice::from_ref(&hot)).await.unwrap() })
    });
    g.finish();
}

/// The goals' ratios, each side alternated with its floor in one run (`common::paired`):
/// get hit against one `MGET` of the same keys + the same decode, and against a
/// plain `GET` + decode; put against the naive Lua put of `../shared/floor` given the same
/// value to encode; 1 and 32 tasks.
fn paired_ratios(_: &mut Criterion) {
    if !common::wanted("paired") {
        return;
    }
    let rt = runtime();
    let (cache, raw) = rt.block_on(redis_pair("paired"));
    // Only for the key names: the cache's own backend is behind `dyn Backend`.
    let backend = rt.block_on(async {
        RedisBackend::new(RedisConfig::new(
            common::redis_url(),
            common::prefix("paired"),
        ))
        .unwrap()
    });
    let json: Arc<[u8]> = serde_json::to_vec(&small()).unwrap().into();
    rt.block_on(async {
        let mut conn = raw.clone();
        let _: () = conn
            .set_ex("bench_paired_plain", &json[..], 600)
            .await
            .unwrap();
    });
    let gets: &[usize] = if common::wanted("paired get") {
        &[1, 5, 50]
    } else {
        &[]
    };
    for &n in gets {
        let key: Arc<str> = format!("get{n}").into();
        let deps = common::deps(n, n);
        rt.block_on(async {
            cache
                .put(&key, &small(), &deps, Some(Duration::from_secs(600)))
                .await
                .unwrap();
            cache.get::<Article>(&key).await.unwrap().unwrap();
        });
        let entry_key: Arc<str> = backend.entry_key(&key).into();
        let stamp_keys: Arc<[String]> = deps
            .iter()
            .map(|d| backend.stamp_key(&d.encode()))
            .collect();
        let ours = {
            let (cache, key) = (cache.clone(), Arc::clone(&key));
            move || {
                let (cache, key) = (cache.clone(), Arc::clone(&key));
                async move {
                    assert!(cache.get::<Article>(&key).await.unwrap().is_some());
                }
            }
        };
        let floor = {
            let (raw, entry_key, stamp_keys, json) = (
                raw.clone(),
                entry_key.clone(),
                stamp_keys.clone(),
                json.clone(),
            );
            move || {
                let mut conn = raw.clone();
                let mut mget = redis::cmd("MGET");
                mget.arg(&*entry_key).arg(&stamp_keys[..]);
                let json = Arc::clone(&json);
                async move {
                    let mut values: Vec<Option<Vec<u8>>> =
                        mget.query_async(&mut conn).await.unwrap();
                    let entry = values.swap_remove(0);
                    assert!(entry.is_some());
                    let article: Article = serde_json::from_slice(&json).unwrap();
                    std::hint::black_box(article);
                }
            }
        };
        // The same with what a read sends since issue 16, item 16: `CLIENT GETNAME` first and
        // the clock in the `MGET` (the cost of the restart check, on raw redis-rs).
        let checked = {
            let (raw, entry_key, stamp_keys, json) = (
                raw.clone(),
                entry_key.clone(),
                stamp_keys.clone(),
                json.clone(),
            );
            let clock_key = backend.entry_key("").replace(":e:", ":c");
            move || {
                let mut conn = raw.clone();
                let mut pipe = redis::pipe();
                pipe.cmd("CLIENT")
                    .arg("GETNAME")
                    .cmd("GET")
                    .arg(&*entry_key)
                    .cmd("MGET")
                    .arg(&stamp_keys[..])
                    .arg(&clock_key);
                let json = Arc::clone(&json);
                async move {
                    type Reply = (Option<String>, Option<Vec<u8>>, Vec<Option<Vec<u8>>>);
                    let (_, entry, _): Reply = pipe.query_async(&mut conn).await.unwrap();
                    assert!(entry.is_some());
                    let article: Article = serde_json::from_slice(&json).unwrap();
                    std::hint::black_box(article);
                }
            }
        };
        let plain = {
            let raw = raw.clone();
            move || {
                let mut conn = raw.clone();
                async move {
                    let v: Option<Vec<u8>> = conn.get("bench_paired_plain").await.unwrap();
                    let article: Article = serde_json::from_slice(&v.unwrap()).unwrap();
                    std::hint::black_box(article);
                }
            }
        };
        // The read before it was one command (raw, the same decode): what folding the `GET`
        // into the `MGET` gained.
        let two_commands = {
            let (raw, entry_key, stamp_keys, json) = (
                raw.clone(),
                entry_key.clone(),
                stamp_keys.clone(),
                json.clone(),
            );
            move || {
                let mut conn = raw.clone();
                let mut pipe = redis::pipe();
                pipe.cmd("GET")
                    .arg(&*entry_key)
                    .cmd("MGET")
                    .arg(&stamp_keys[..]);
                let json = Arc::clone(&json);
                async move {
                    let (entry, _): (Option<Vec<u8>>, Vec<Option<Vec<u8>>>) =
                        pipe.query_async(&mut conn).await.unwrap();
                    assert!(entry.is_some());
                    let article: Article = serde_json::from_slice(&json).unwrap();
                    std::hint::black_box(article);
                }
            }
        };
        for tasks in [1, 32] {
            if tasks > 1 {
                paired(
                    &rt,
                    &format!("redis/paired get hit, {n} dependencies"),
                    tasks,
                    ("MGET+decode", floor.clone()),
                    ("GET+MGET pipelined+decode", two_commands.clone()),
                );
            }
            paired(
                &rt,
                &format!("redis/paired get hit, {n} dependencies"),
                tasks,
                ("matroska", ours.clone()),
                ("MGET+decode", floor.clone()),
            );
            paired(
                &rt,
                &format!("redis/paired get hit, {n} dependencies"),
                tasks,
                ("matroska", ours.clone()),
                ("plain GET+decode", plain.clone()),
            );
            paired(
                &rt,
                &format!("redis/paired get hit, {n} dependencies"),
                tasks,
                ("GETNAME+GET+MGET(+clock)+decode", checked.clone()),
                ("GET+MGET+decode", floor.clone()),
            );
        }
    }

    let put = Arc::new(redis::Script::new(NAIVE_PUT));
    let puts: &[usize] = if common::wanted("paired put") {
        &[1, 5, 20]
    } else {
        &[]
    };
    for &n in puts {
        let deps: Arc<[Dependency]> = common::deps(n, 100 + n).into();
        let next = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let ours = {
            let (cache, deps, next) = (cache.clone(), deps.clone(), next.clone());
            move || {
                let (cache, deps) = (cache.clone(), deps.clone());
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % 1_000;
                async move {
                    cache
                        .put(
                            &format!("put{n}:{i}"),
                            &small(),
                            &deps,
                            Some(Duration::from_secs(600)),
                        )
                        .await
                        .unwrap();
                }
            }
        };
        let naive = {
            let (raw, put, deps, next) = (raw.clone(), put.clone(), deps.clone(), next.clone());
            move || {
                let mut conn = raw.clone();
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % 1_000;
                let (put, deps) = (Arc::clone(&put), Arc::clone(&deps));
                async move {
                    let mut inv = put.key(format!("bench_paired_put{n}:{i}"));
                    // Encoded for each put, as floor.rs and the cache do.
                    for d in deps.iter() {
                        inv.key(format!("bench_paired_rdep:{}", d.encode()));
                    }
                    // The same value, encoded as the cache encodes it on every put.
                    inv.arg(serde_json::to_vec(&small()).unwrap()).arg(600);
                    let _: i64 = inv.invoke_async(&mut conn).await.unwrap();
                }
            }
        };
        for tasks in [1, 32] {
            paired(
                &rt,
                &format!("redis/paired put, {n} dependencies"),
                tasks,
                ("matroska", ours.clone()),
                ("naive Lua put", naive.clone()),
            );
        }
    }
}

/// A page of per-row lookups (20 keys, one dependency each): `get_many` against a raw `MGET`
/// of 20 plain values + the same decode (1 and 32 tasks), and against 20 `get` calls one after
/// the other (what an application does without batch reads; 32 tasks).
fn paired_get_many(_: &mut Criterion) {
    if !common::wanted("paired get_many") {
        return;
    }
    let rt = runtime();
    let (cache, raw) = rt.block_on(redis_pair("paired_many"));
    const ROWS: usize = 20;
    let keys: Arc<[String]> = (0..ROWS).map(|i| format!("row{i}")).collect();
    let plain: Arc<[String]> = (0..ROWS).map(|i| format!("bench_many_plain{i}")).collect();
    let json = serde_json::to_vec(&small()).unwrap();
    rt.block_on(async {
        let mut conn = raw.clone();
        for (i, (key, plain)) in keys.iter().zip(plain.iter()).enumerate() {
            cache
                .put(
                    key,
                    &small(),
                    &[Dependency::id("row", i as i64)],
                    Some(Duration::from_secs(600)),
                )
                .await
                .unwrap();
            let _: () = conn.set_ex(plain, &json, 600).await.unwrap();
        }
    });
    let many = {
        let (cache, keys) = (cache.clone(), keys.clone());
        move || {
            let (cache, keys) = (cache.clone(), keys.clone());
            async move {
                let found: Vec<Option<Article>> = cache.get_many(&keys).await.unwrap();
                assert!(found.iter().all(Option::is_some));
            }
        }
    };
    let one_by_one = {
        let (cache, keys) = (cache.clone(), keys.clone());
        move || {
            let (cache, keys) = (cache.clone(), keys.clone());
            async move {
                for key in keys.iter() {
                    assert!(cache.get::<Article>(key).await.unwrap().is_some());
                }
            }
        }
    };
    let floor = {
        let (raw, plain) = (raw.clone(), plain.clone());
        move || {
            let mut conn = raw.clone();
            let plain = plain.clone();
            async move {
                let values: Vec<Option<Vec<u8>>> = conn.mget(&plain[..]).await.unwrap();
                for v in values {
                    let article: Article = serde_json::from_slice(&v.unwrap()).unwrap();
                    std::hint::black_box(article);
                }
            }
        }
    };
    for tasks in [1, 32] {
        paired(
            &rt,
            "redis/paired get_many, 20 keys",
            tasks,
            ("matroska get_many", many.clone()),
            ("raw MGET+decode", floor.clone()),
        );
        // With one task the answer is plain (20 round trips against one); not worth the minutes.
        if tasks > 1 {
            paired(
                &rt,
                "redis/paired get_many, 20 keys",
                tasks,
                ("matroska get_many", many.clone()),
                ("20 matroska gets", one_by_one.clone()),
            );
        }
    }
}

/// Invalidating one dependency with one dependent, matroska against the naive Lua invalidate
/// of `../shared/floor`, alternated every operation; each side's dependent is stored again
/// (untimed) before each invalidation, so both always have one to drop.
fn paired_invalidate(_: &mut Criterion) {
    if !common::wanted("paired invalidate") {
        return;
    }
    let rt = runtime();
    let (cache, raw) = rt.block_on(redis_pair("paired_inv"));
    let (put, inv) = (
        redis::Script::new(NAIVE_PUT),
        redis::Script::new(NAIVE_INVALIDATE),
    );
    rt.block_on(async {
        let mut conn = raw.clone();
        let dep = Dependency::tag("paired-inv");
        const ROUNDS: u32 = 12;
        const OPS: u32 = 1_000;
        let mut ratios = Vec::new();
        let (mut ours_all, mut naive_all) = (Duration::ZERO, Duration::ZERO);
        for round in 0..ROUNDS {
            let (mut ours, mut naive) = (Duration::ZERO, Duration::ZERO);
            for i in 0..OPS {
                cache
                    .put("e", &small(), std::slice::from_ref(&dep), None)
                    .await
                    .unwrap();
                let _: i64 = put
                    .key("bench_paired_inv_e")
                    .key("bench_paired_inv_set")
                    .arg(1)
                    .arg(600)
                    .invoke_async(&mut conn)
                    .await
                    .unwrap();
                for ours_first in [(i + round).is_multiple_of(2), !(i + round).is_multiple_of(2)] {
                    let start = Instant::now();
                    if ours_first {
                        cache.invalidate(std::slice::from_ref(&dep)).await.unwrap();
                        ours += start.elapsed();
                    } else {
                        let dropped: i64 =
                            inv.key("bench_paired_inv_set").invoke_async(&mut conn).await.unwrap();
                        naive += start.elapsed();
                        assert_eq!(dropped, 1);
                    }
                }
                assert!(!cache.has("e").await.unwrap());
            }
            ratios.push(naive.as_secs_f64() / ours.as_secs_f64());
            ours_all += ours;
            naive_all += naive;
        }
        ratios.sort_by(f64::total_cmp);
        println!(
            "redis/paired invalidate, 1 dependent: matroska {:?}, naive Lua invalidate {:?} per call; \
             matroska / naive (throughput) = {:.2} (rounds {:.2}..{:.2}, {ROUNDS} rounds of {OPS})",
            ours_all / (ROUNDS * OPS),
            naive_all / (ROUNDS * OPS),
            (ratios[5] + ratios[6]) / 2.0,
            ratios[0],
            ratios[ratios.len() - 1],
        );
    });
}

criterion_group!(
    benches,
    paired_ratios,
    paired_get_many,
    paired_invalidate,
    get,
    get_paired,
    get_with_dependencies,
    put,
    naive_floors,
    invalidate
);
criterion_main!(benches);
