//! In-memory backend specifics: bounds, and a reverse index that never leaks.

mod support;

use std::time::{Duration, Instant};

use matroska::backend::memory::{MemoryBackend, MemoryConfig};
use matroska::{Cache, Dependency};

fn cache(backend: &MemoryBackend) -> Cache {
    Cache::builder(backend.clone()).build().unwrap()
}

#[tokio::test]
async fn evicted_entries_leave_no_index_rows() {
    let backend = MemoryBackend::new(MemoryConfig::default().max_entries(50));
    let cache = cache(&backend);
    for i in 0..1_000 {
        let deps = [
            Dependency::id("article", i),
            Dependency::tag("all"),
            Dependency::id("author", i % 7),
        ];
        cache.put(&format!("k{i}"), &i, &deps, None).await.unwrap();
    }
    backend.run_pending_tasks();
    let entries = backend.entry_count();
    assert!(entries <= 50, "bound not kept: {entries} entries");
    // Three rows per live entry, none for the evicted ones.
    assert_eq!(backend.index_rows() as u64, entries * 3);
}

#[tokio::test]
async fn expired_entries_leave_no_index_rows() {
    let backend = MemoryBackend::default();
    let cache = cache(&backend);
    for i in 0..100 {
        cache
            .put(
                &format!("k{i}"),
                &i,
                &[Dependency::id("a", i), Dependency::tag("t")],
                Some(Duration::from_millis(100)),
            )
            .await
            .unwrap();
    }
    assert_eq!(backend.index_rows(), 200);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        backend.run_pending_tasks();
        if backend.index_rows() == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "index rows left: {}",
            backend.index_rows()
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(backend.entry_count(), 0);
}

#[tokio::test]
async fn replaced_and_invalidated_entries_leave_no_index_rows() {
    let backend = MemoryBackend::default();
    let cache = cache(&backend);
    cache
        .put("k", &1, &[Dependency::tag("a"), Dependency::tag("b")], None)
        .await
        .unwrap();
    cache
        .put("k", &2, &[Dependency::tag("c")], None)
        .await
        .unwrap();
    backend.run_pending_tasks();
    assert_eq!(
        backend.index_rows(),
        1,
        "rows of the replaced value must go"
    );
    // The old dependency no longer reaches the new value.
    assert_eq!(
        cache
            .invalidate(&[Dependency::tag("a")])
            .await
            .unwrap()
            .dropped(),
        Some(0)
    );
    assert!(cache.has("k").await.unwrap());
    cache
        .put("j", &3, &[Dependency::tag("c"), Dependency::tag("d")], None)
        .await
        .unwrap();
    assert_eq!(
        cache
            .invalidate(&[Dependency::tag("c")])
            .await
            .unwrap()
            .dropped(),
        Some(2)
    );
    cache.delete("k").await.unwrap();
    backend.run_pending_tasks();
    assert_eq!(backend.index_rows(), 0);
}

#[tokio::test]
async fn byte_bound_is_kept() {
    let backend = MemoryBackend::new(MemoryConfig::default().max_bytes(64 * 1024));
    let cache = cache(&backend);
    let value = "x".repeat(1000);
    for i in 0..500 {
        cache
            .put(&format!("k{i}"), &value, &[Dependency::tag("t")], None)
            .await
            .unwrap();
    }
    backend.run_pending_tasks();
    let entries = backend.entry_count();
    assert!(
        entries > 0 && entries * 1000 <= 64 * 1024,
        "{entries} entries of 1 kB kept"
    );
    assert_eq!(backend.index_rows() as u64, entries);
}

/// Issue 15a on the memory backend (its lease is the test backend's, held "elsewhere").
#[tokio::test]
async fn late_follower_never_gets_the_lease_holders_pre_invalidation_value() {
    support::fill::late_follower_never_gets_the_lease_holders_pre_invalidation_value(
        MemoryBackend::default(),
    )
    .await;
}
