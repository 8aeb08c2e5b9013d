//! The Redis backend's near cache against the in-memory backend: a hit of the same value
//! through `Cache::get` (decoded), sides alternated in one run. Issue 19's goal: a near hit
//! costs at most 1.3× the in-memory hit.
//!
//! `cargo bench -p matroska-tests --bench near` (prints its own figures; needs Redis at
//! `REDIS_URL`).

mod common;

use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use matroska::Cache;
use matroska::backend::memory::MemoryBackend;
use matroska::backend::redis::{NearConfig, RedisBackend, RedisConfig};

use common::{Article, small};

/// Polls a future that completes without waiting (a memory hit, a near hit) once, so neither
/// side pays for an executor.
fn ready<F: Future>(fut: F) -> F::Output {
    let mut fut = std::pin::pin!(fut);
    match fut.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(v) => v,
        Poll::Pending => panic!("a hit that waits: not served from memory"),
    }
}

fn main() {
    const KEYS: usize = 10_000;
    const ROUNDS: usize = 15;
    const OPS: usize = 200_000;
    // The subscriber (heartbeats, messages) runs on this runtime's threads.
    let rt = common::runtime();
    let keys: Vec<String> = (0..KEYS).map(|i| format!("articles:{i}")).collect();
    let deps = common::deps(5, 0);
    let value = small();
    let ttl = Some(Duration::from_secs(600));

    let memory = Cache::builder(MemoryBackend::default()).build().unwrap();
    let backend = rt
        .block_on(RedisBackend::connect(
            RedisConfig::new(common::redis_url(), common::prefix("near"))
                .timeout(Duration::from_secs(5))
                .near_cache(NearConfig::new(256 << 20)),
        ))
        .expect("Redis is required for this bench (REDIS_URL)");
    let near = Cache::builder(backend.clone()).build().unwrap();
    rt.block_on(async {
        for k in &keys {
            memory.put(k, &value, &deps, ttl).await.unwrap();
            near.put(k, &value, &deps, ttl).await.unwrap();
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        for k in &keys {
            while backend.near_peek(k).is_none() {
                assert!(Instant::now() < deadline, "the near tier does not fill");
                near.get::<Article>(k).await.unwrap();
            }
        }
    });
    println!(
        "near tier: {:?} (entries, bytes) for {KEYS} values of {} bytes, 5 dependencies",
        backend.near_usage().unwrap(),
        serde_json::to_vec(&value).unwrap().len()
    );

    let run = |cache: &Cache| {
        let start = Instant::now();
        for i in 0..OPS {
            let got = ready(cache.get::<Article>(&keys[i % KEYS])).unwrap();
            assert!(got.is_some(), "a miss");
        }
        start.elapsed().as_nanos() as f64 / OPS as f64
    };
    run(&memory);
    run(&near);
    let (mut m, mut n, mut ratio) = (vec![], vec![], vec![]);
    for round in 0..ROUNDS {
        let (mem, nea) = if round % 2 == 0 {
            let mem = run(&memory);
            (mem, run(&near))
        } else {
            let nea = run(&near);
            (run(&memory), nea)
        };
        m.push(mem);
        n.push(nea);
        ratio.push(nea / mem);
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (lo, hi) = (
        ratio.iter().copied().fold(f64::MAX, f64::min),
        ratio.iter().copied().fold(0.0, f64::max),
    );
    println!(
        "Cache::get hit, decoded, {ROUNDS} alternated rounds of {OPS}: memory {:.0} ns, near \
         {:.0} ns; near / memory median {:.2} (min {lo:.2}, max {hi:.2})",
        median(&mut m),
        median(&mut n),
        median(&mut ratio)
    );
}
