//! Memory per entry: in-memory backend (heap bytes, counted by a global allocator) and Redis
//! (`MEMORY USAGE` of the entry and its share of the stamp keys), for entries with 5
//! dependencies.
//!
//! Not a criterion bench: it prints one table. `cargo bench --bench footprint`.

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::Arc;
use std::sync::atomic::{AtomicIsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use matroska::Dependency;
use matroska::backend::memory::MemoryBackend;
use matroska::backend::{Backend, PutRequest};

struct Counting;
static LIVE: AtomicIsize = AtomicIsize::new(0);

// SAFETY: forwards to the system allocator and only counts sizes.
#[allow(unsafe_code)]
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static A: Counting = Counting;

const N: usize = 20_000;

/// Entry `i`'s dependencies: 2 of its own (the row and a child row), 3 shared with others
/// (its author, its category's scope condition, the scope's invalidate-all).
fn deps(i: usize) -> Vec<Dependency> {
    vec![
        Dependency::id("article", i),
        Dependency::primary_key("comment", [i as i64, 1]),
        Dependency::id("author", i % 50),
        Dependency::condition(
            "Article",
            [(
                "category",
                matroska::Value::from(["fantasy", "sci-fi"][i % 2]),
            )],
        ),
        Dependency::invalidate_all("Article"),
    ]
}

fn main() {
    let value = Bytes::from(
        matroska::Codec::Json
            .encode("k", &common::small(), 0)
            .unwrap(),
    );
    let keys: Vec<String> = (0..N).map(|i| format!("articles:{i}")).collect();
    let encoded: Vec<Vec<String>> = (0..N)
        .map(|i| deps(i).iter().map(Dependency::encode).collect())
        .collect();
    let rt = common::runtime();

    // Bare moka holding the same keys and values.
    let before = LIVE.load(Ordering::Relaxed);
    let moka: moka::sync::Cache<Arc<str>, Bytes> = moka::sync::Cache::builder()
        .max_capacity(N as u64 * 2)
        .build();
    for k in &keys {
        moka.insert(Arc::from(k.as_str()), value.clone());
    }
    moka.run_pending_tasks();
    let moka_bytes = (LIVE.load(Ordering::Relaxed) - before) as f64 / N as f64;

    let before = LIVE.load(Ordering::Relaxed);
    let backend = MemoryBackend::default();
    rt.block_on(async {
        for (k, d) in keys.iter().zip(&encoded) {
            backend
                .put(PutRequest::new(
                    k,
                    value.clone(),
                    d,
                    Duration::from_secs(600),
                ))
                .await
                .unwrap();
        }
    });
    backend.run_pending_tasks();
    let memory_bytes = (LIVE.load(Ordering::Relaxed) - before) as f64 / N as f64;

    // Redis: MEMORY USAGE of every key under a fresh prefix, divided by the entries.
    let (redis_entry, redis_index) = rt.block_on(async {
        let (cache, _) = common::redis_pair("footprint").await;
        for (i, key) in keys.iter().enumerate() {
            cache
                .put(
                    key,
                    &common::small(),
                    &deps(i),
                    Some(Duration::from_secs(600)),
                )
                .await
                .unwrap();
        }
        let client = redis::Client::open(common::redis_url()).unwrap();
        let mut conn = client.get_multiplexed_async_connection().await.unwrap();
        let prefix = common::prefix("footprint");
        let (mut entry, mut index) = (0_u64, 0_u64);
        let mut cursor = 0_u64;
        loop {
            let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(format!("{{{prefix}}}:*"))
                .arg("COUNT")
                .arg(1000)
                .query_async(&mut conn)
                .await
                .unwrap();
            for key in batch {
                let usage: Option<u64> = redis::cmd("MEMORY")
                    .arg("USAGE")
                    .arg(&key)
                    .arg("SAMPLES")
                    .arg(0)
                    .query_async(&mut conn)
                    .await
                    .unwrap();
                if key.contains("}:e:") {
                    entry += usage.unwrap_or(0);
                } else {
                    index += usage.unwrap_or(0);
                }
                let _: () = redis::cmd("DEL")
                    .arg(&key)
                    .query_async(&mut conn)
                    .await
                    .unwrap();
            }
            if next == 0 {
                break;
            }
            cursor = next;
        }
        (entry as f64 / N as f64, index as f64 / N as f64)
    });

    // The Redis backend's near tier: heap bytes the reads that fill it keep (the puts before
    // them already made every other per-key allocation: the known-keys memo).
    let (near_bytes, near_weight) = rt.block_on(async {
        let backend = matroska::backend::redis::RedisBackend::connect(
            matroska::backend::redis::RedisConfig::new(
                common::redis_url(),
                common::prefix("footprint_near"),
            )
            .near_cache(matroska::backend::redis::NearConfig::new(1 << 30)),
        )
        .await
        .expect("Redis is required for this bench (REDIS_URL)");
        let cache = matroska::Cache::builder(backend.clone()).build().unwrap();
        for (i, key) in keys.iter().enumerate() {
            cache
                .put(
                    key,
                    &common::small(),
                    &deps(i),
                    Some(Duration::from_secs(600)),
                )
                .await
                .unwrap();
        }
        while !backend.near_is_live() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        backend.near_usage();
        let before = LIVE.load(Ordering::Relaxed);
        for key in &keys {
            backend.get(key).await.unwrap().unwrap();
        }
        let (count, weight) = backend.near_usage().unwrap();
        assert_eq!(count, N as u64, "every entry is in the near tier");
        let bytes = (LIVE.load(Ordering::Relaxed) - before) as f64 / N as f64;
        (bytes, weight as f64 / N as f64)
    });

    println!(
        "| store ({N} entries, ~{} B values, 5 deps each) | bytes per entry |",
        value.len()
    );
    println!("|---|---|");
    println!("| bare moka (key + value only) | {moka_bytes:.0} |");
    println!("| MemoryBackend (entry + reverse index) | {memory_bytes:.0} |");
    println!("| Redis: entry key | {redis_entry:.0} |");
    println!("| Redis: stamps + clock, per entry | {redis_index:.0} |");
    println!("| Redis: total | {:.0} |", redis_entry + redis_index);
    println!(
        "| Redis near tier, per entry in process (its weight: {near_weight:.0}) | {near_bytes:.0} |"
    );
}
