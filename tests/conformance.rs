//! The backend conformance suite: every case runs against the in-memory backend and against
//! Redis (a fresh key prefix per case, on `REDIS_URL`).

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use matroska::backend::memory::MemoryBackend;
use matroska::backend::{PutOutcome, PutRequest};
use matroska::{Cache, Dependency, Error, Invalidated, Value};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Article {
    id: i64,
    title: String,
}

fn articles() -> Vec<Article> {
    vec![
        Article {
            id: 1,
            title: "Python".into(),
        },
        Article {
            id: 2,
            title: "Cache".into(),
        },
    ]
}

/// A loader error for tests.
#[derive(Debug)]
struct Boom;
impl std::fmt::Display for Boom {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("boom")
    }
}
impl std::error::Error for Boom {}

async fn eventually(what: &str, mut check: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// What `invalidate` reports for `n` dropped entries: backends that invalidate without looking
/// at dependents (Redis) say they did not count them, rather than reporting 0.
fn counted(cache: &Cache, n: u64) -> Invalidated {
    if cache.backend().name() == "memory" {
        Invalidated::counted(n)
    } else {
        Invalidated::uncounted()
    }
}

/// The cases, each taking a fresh cache and its backend.
mod cases {
    use super::*;

    pub async fn miss_put_hit_delete(cache: Cache) {
        assert_eq!(
            cache.get::<Vec<Article>>("articles-list").await.unwrap(),
            None
        );
        assert!(!cache.has("articles-list").await.unwrap());
        cache
            .put(
                "articles-list",
                &articles(),
                &[Dependency::id("author", 1)],
                None,
            )
            .await
            .unwrap();
        assert!(cache.has("articles-list").await.unwrap());
        assert_eq!(
            cache.get::<Vec<Article>>("articles-list").await.unwrap(),
            Some(articles())
        );
        assert!(cache.delete("articles-list").await.unwrap());
        assert!(!cache.delete("articles-list").await.unwrap());
        assert_eq!(
            cache.get::<Vec<Article>>("articles-list").await.unwrap(),
            None
        );
    }

    pub async fn invalidate_drops_dependents_only(cache: Cache) {
        let author = Dependency::id("author", 1);
        cache
            .put(
                "list",
                &articles(),
                &[
                    Dependency::id("article", 1),
                    Dependency::id("article", 2),
                    author.clone(),
                ],
                None,
            )
            .await
            .unwrap();
        cache
            .put("other", &1, &[Dependency::id("author", 2)], None)
            .await
            .unwrap();
        cache
            .put("by-tag", &2, &[Dependency::tag("t"), author.clone()], None)
            .await
            .unwrap();
        assert_eq!(
            cache
                .invalidate(&[Dependency::id("article", 3)])
                .await
                .unwrap(),
            counted(&cache, 0)
        );
        assert_eq!(
            cache
                .invalidate(std::slice::from_ref(&author))
                .await
                .unwrap(),
            counted(&cache, 2)
        );
        assert!(!cache.has("list").await.unwrap());
        assert!(!cache.has("by-tag").await.unwrap());
        assert!(cache.has("other").await.unwrap());
        // Nothing left to drop.
        assert_eq!(
            cache.invalidate(&[author]).await.unwrap(),
            counted(&cache, 0)
        );
        // Nothing to invalidate: an exact 0 on every backend.
        assert_eq!(
            cache.invalidate(&[]).await.unwrap(),
            Invalidated::counted(0)
        );
    }

    pub async fn any_dependency_invalidates(cache: Cache) {
        let deps: Vec<Dependency> = (0..20).map(|i| Dependency::id("article", i)).collect();
        for (i, dep) in deps.iter().enumerate() {
            let key = format!("k{i}");
            cache.put(&key, &i, &deps, None).await.unwrap();
            assert_eq!(
                cache.invalidate(std::slice::from_ref(dep)).await.unwrap(),
                counted(&cache, 1)
            );
            assert!(!cache.has(&key).await.unwrap());
        }
    }

    pub async fn many_dependents_are_counted(cache: Cache) {
        let dep = Dependency::tag("hot");
        for i in 0..300 {
            cache
                .put(&format!("k{i}"), &i, std::slice::from_ref(&dep), None)
                .await
                .unwrap();
        }
        assert_eq!(
            cache.invalidate(&[dep]).await.unwrap(),
            counted(&cache, 300)
        );
        for i in [0, 150, 299] {
            assert!(!cache.has(&format!("k{i}")).await.unwrap());
        }
    }

    pub async fn ttl_is_honoured(cache: Cache) {
        cache
            .put(
                "short",
                &1,
                &[Dependency::tag("t")],
                Some(Duration::from_millis(150)),
            )
            .await
            .unwrap();
        cache
            .put(
                "long",
                &1,
                &[Dependency::tag("t")],
                Some(Duration::from_secs(60)),
            )
            .await
            .unwrap();
        assert!(cache.has("short").await.unwrap());
        eventually("the short entry expires", async || {
            !cache.has("short").await.unwrap()
        })
        .await;
        assert!(cache.has("long").await.unwrap());
    }

    pub async fn undecodable_bytes_are_a_miss_and_dropped(cache: Cache) {
        cache.put("k", &vec![1, 2, 3], &[], None).await.unwrap();
        // Read as another type: a miss, and the entry goes.
        assert_eq!(cache.get::<Article>("k").await.unwrap(), None);
        assert!(!cache.has("k").await.unwrap());
        // Raw garbage written by someone else: a miss, no panic.
        let garbage = bytes::Bytes::from_static(b"\xA7\x01\x01\0\0\0\0{not json");
        cache
            .backend()
            .put(PutRequest::new("g", garbage, &[], Duration::from_secs(60)))
            .await
            .unwrap();
        assert_eq!(cache.get::<Vec<i32>>("g").await.unwrap(), None);
        assert!(!cache.has("g").await.unwrap());
    }

    pub async fn schema_version_change_is_a_miss(cache: Cache) {
        let v1 = Cache::builder_arc(Arc::clone(cache.backend()))
            .schema_version(1)
            .build()
            .unwrap();
        let v2 = Cache::builder_arc(Arc::clone(cache.backend()))
            .schema_version(2)
            .build()
            .unwrap();
        v1.put("k", &articles(), &[], None).await.unwrap();
        assert_eq!(v1.get::<Vec<Article>>("k").await.unwrap(), Some(articles()));
        assert_eq!(v2.get::<Vec<Article>>("k").await.unwrap(), None);
        // A rolling deploy: the other version's entry stays for the processes that use it.
        assert_eq!(v1.get::<Vec<Article>>("k").await.unwrap(), Some(articles()));
    }

    pub async fn oversized_value_is_refused_and_loses_nothing(cache: Cache) {
        let small = Cache::builder_arc(Arc::clone(cache.backend()))
            .max_value_bytes(64)
            .build()
            .unwrap();
        small.put("k", &"fits", &[], None).await.unwrap();
        let err = small
            .put("k", &"x".repeat(100), &[], None)
            .await
            .unwrap_err();
        assert!(
            matches!(err, Error::ValueTooLarge { size, limit: 64, .. } if size > 100),
            "{err}"
        );
        assert!(err.to_string().contains("max_value_bytes"));
        assert_eq!(
            small.get::<String>("k").await.unwrap().as_deref(),
            Some("fits")
        );
    }

    pub async fn long_key_is_refused(cache: Cache) {
        let key = "k".repeat(2000);
        let err = cache.put(&key, &1, &[], None).await.unwrap_err();
        assert!(matches!(err, Error::KeyTooLong { len: 2000, .. }), "{err}");
        assert!(cache.get::<i32>(&key).await.is_err());
    }

    pub async fn keys_with_separators_are_distinct(cache: Cache) {
        let keys = [
            "a", "a:b", "a:", ":a", "{a}", "}:e:a", "e:a", "", "ключ", "a\0b", "a b", "%3A",
        ];
        for (i, key) in keys.iter().enumerate() {
            cache
                .put(key, &i, &[Dependency::tag(*key)], None)
                .await
                .unwrap();
        }
        for (i, key) in keys.iter().enumerate() {
            assert_eq!(cache.get::<usize>(key).await.unwrap(), Some(i), "{key:?}");
        }
        assert_eq!(
            cache.invalidate(&[Dependency::tag("a:b")]).await.unwrap(),
            counted(&cache, 1)
        );
        assert!(!cache.has("a:b").await.unwrap());
        assert!(cache.has("a").await.unwrap());
    }

    /// Keys and dependency values of 1 MiB, with the bytes a Redis key layout could trip on.
    pub async fn huge_keys_and_dependencies_when_allowed(cache: Cache) {
        let big = Cache::builder_arc(Arc::clone(cache.backend()))
            .max_key_bytes(2 << 20)
            .build()
            .unwrap();
        let key = format!("{{}}\0:e:{}", "k".repeat(1 << 20));
        let dep = Dependency::tag(format!("}}{{\0{}", "d".repeat(1 << 20)));
        big.put(&key, &1, std::slice::from_ref(&dep), None)
            .await
            .unwrap();
        big.put(&key[..key.len() - 1], &2, &[], None).await.unwrap();
        assert_eq!(big.get::<i32>(&key).await.unwrap(), Some(1));
        assert_eq!(
            big.get::<i32>(&key[..key.len() - 1]).await.unwrap(),
            Some(2)
        );
        big.invalidate(&[dep]).await.unwrap();
        assert_eq!(big.get::<i32>(&key).await.unwrap(), None);
        assert_eq!(
            big.get::<i32>(&key[..key.len() - 1]).await.unwrap(),
            Some(2)
        );
    }

    pub async fn colliding_looking_dependencies_are_distinct(cache: Cache) {
        let pairs = [
            (Dependency::id("a:b", "c"), Dependency::id("a", "b:c")),
            (Dependency::id("article", 1), Dependency::tag("article:1")),
            (
                Dependency::condition("A", [("p", Value::from(true))]),
                Dependency::condition("A", [("p", Value::from("true"))]),
            ),
            (
                Dependency::primary_key("t", [1_i64, 2]),
                Dependency::primary_key("t", [12_i64]),
            ),
        ];
        for (a, b) in pairs {
            cache
                .put("ka", &1, std::slice::from_ref(&a), None)
                .await
                .unwrap();
            cache
                .put("kb", &1, std::slice::from_ref(&b), None)
                .await
                .unwrap();
            assert_eq!(cache.invalidate(&[a]).await.unwrap(), counted(&cache, 1));
            assert!(
                cache.has("kb").await.unwrap(),
                "{b} was dropped with its look-alike"
            );
            cache.invalidate(&[b]).await.unwrap();
        }
    }

    pub async fn guarded_put_refuses_after_invalidation(cache: Cache) {
        let backend = cache.backend();
        let deps = vec![Dependency::id("article", 1).encode()];
        let value = bytes::Bytes::from(matroska::Codec::Json.encode("k", &1, 0).unwrap());
        let ttl = Duration::from_secs(60);

        let ticket = backend.ticket().await.unwrap();
        backend.invalidate(&deps).await.unwrap();
        let outcome = backend
            .put(PutRequest::new("k", value.clone(), &deps, ttl).guarded_by(Some(ticket)))
            .await
            .unwrap();
        assert_eq!(outcome, PutOutcome::Stale);
        assert!(!cache.has("k").await.unwrap());

        // A ticket taken after the invalidation stores.
        let ticket = backend.ticket().await.unwrap();
        let outcome = backend
            .put(PutRequest::new("k", value.clone(), &deps, ttl).guarded_by(Some(ticket)))
            .await
            .unwrap();
        assert_eq!(outcome, PutOutcome::Stored);

        // An invalidation of another dependency does not block.
        let ticket = backend.ticket().await.unwrap();
        backend
            .invalidate(&[Dependency::id("article", 2).encode()])
            .await
            .unwrap();
        let outcome = backend
            .put(PutRequest::new("k2", value, &deps, ttl).guarded_by(Some(ticket)))
            .await
            .unwrap();
        assert_eq!(outcome, PutOutcome::Stored);
    }

    /// `get_many` answers each key as `get` would: hits, misses, entries whose dependency was
    /// invalidated, entries with other dependency sets and with none, a key given twice, and
    /// no keys at all.
    pub async fn get_many_answers_each_key_as_get_would(cache: Cache) {
        let (a, b) = (Dependency::id("article", 1), Dependency::id("article", 2));
        cache
            .put("one", &1, std::slice::from_ref(&a), None)
            .await
            .unwrap();
        cache
            .put(
                "two",
                &2,
                &[a.clone(), b.clone(), Dependency::tag("t")],
                None,
            )
            .await
            .unwrap();
        cache.put("three", &3, &[], None).await.unwrap();
        cache
            .put("four", &4, std::slice::from_ref(&b), None)
            .await
            .unwrap();
        let keys = ["one", "missing", "two", "three", "four", "one"];
        let got: Vec<Option<i32>> = cache.get_many(&keys).await.unwrap();
        assert_eq!(got, [Some(1), None, Some(2), Some(3), Some(4), Some(1)]);

        cache.invalidate(std::slice::from_ref(&b)).await.unwrap();
        let got: Vec<Option<i32>> = cache.get_many(&keys).await.unwrap();
        assert_eq!(got, [Some(1), None, None, Some(3), None, Some(1)]);
        // The raw backend call agrees.
        let raw = cache.backend().get_many(&keys).await.unwrap();
        assert_eq!(
            raw.iter().map(Option::is_some).collect::<Vec<_>>(),
            [true, false, false, true, false, true]
        );
        for (key, got) in keys.iter().zip(&raw) {
            assert_eq!(got, &cache.backend().get(key).await.unwrap(), "{key}");
        }

        let none: Vec<Option<i32>> = cache.get_many::<i32, &str>(&[]).await.unwrap();
        assert!(none.is_empty());
        assert!(cache.backend().get_many(&[]).await.unwrap().is_empty());

        // A key over the limit is bad input, not a miss.
        let long = "k".repeat(2000);
        let err = cache.get_many::<i32, _>(&[long]).await.unwrap_err();
        assert!(matches!(err, Error::KeyTooLong { .. }), "{err}");
    }

    /// `put_many` stores each request as `put` would, guarded by its own ticket.
    pub async fn put_many_guards_each_request(cache: Cache) {
        let backend = cache.backend();
        let value = bytes::Bytes::from(matroska::Codec::Json.encode("k", &1, 0).unwrap());
        let ttl = Duration::from_secs(60);
        let (stale, fresh) = (
            vec![Dependency::id("article", 1).encode()],
            vec![Dependency::id("article", 2).encode()],
        );
        // Redis refuses a put whose stamp it must create after an invalidation later than
        // the ticket (it cannot tell the two apart): make `fresh`'s stamp exist first.
        backend
            .put(PutRequest::new("warm", value.clone(), &fresh, ttl))
            .await
            .unwrap();
        let ticket = backend.ticket().await.unwrap();
        backend.invalidate(&stale).await.unwrap();
        let outcomes = backend
            .put_many(vec![
                PutRequest::new("a", value.clone(), &stale, ttl).guarded_by(Some(ticket)),
                PutRequest::new("b", value.clone(), &fresh, ttl).guarded_by(Some(ticket)),
                PutRequest::new("c", value.clone(), &stale, ttl),
            ])
            .await
            .unwrap();
        assert_eq!(
            outcomes,
            [PutOutcome::Stale, PutOutcome::Stored, PutOutcome::Stored]
        );
        assert!(!cache.has("a").await.unwrap());
        assert!(cache.has("b").await.unwrap() && cache.has("c").await.unwrap());
        assert!(backend.put_many(vec![]).await.unwrap().is_empty());
    }

    /// The batch load: the loader gets only the missing keys (each once), its values are
    /// returned in the items' order and cached, and the next call loads nothing.
    pub async fn get_or_load_many_loads_only_the_misses(cache: Cache) {
        cache
            .put("count:2", &20, &[Dependency::id("article", 2)], None)
            .await
            .unwrap();
        let ids = [1_i64, 2, 3, 1];
        let asked = std::sync::Mutex::new(Vec::new());
        let load = |missing: Vec<i64>| {
            asked.lock().unwrap().push(missing.clone());
            async move {
                Ok::<_, Boom>(
                    missing
                        .into_iter()
                        .map(|id| (id * 10, vec![Dependency::id("article", id)]))
                        .collect(),
                )
            }
        };
        let key = |id: &i64| format!("count:{id}");
        let got: Vec<i64> = cache.get_or_load_many(&ids, key, None, load).await.unwrap();
        assert_eq!(got, [10, 20, 30, 10]);
        assert_eq!(*asked.lock().unwrap(), [vec![1, 3]]);
        let got: Vec<i64> = cache.get_or_load_many(&ids, key, None, load).await.unwrap();
        assert_eq!(got, [10, 20, 30, 10]);
        assert_eq!(
            asked.lock().unwrap().len(),
            1,
            "loaded again after a full hit"
        );

        // Only the invalidated row is loaded again.
        cache
            .invalidate(&[Dependency::id("article", 3)])
            .await
            .unwrap();
        let got: Vec<i64> = cache.get_or_load_many(&ids, key, None, load).await.unwrap();
        assert_eq!(got, [10, 20, 30, 10]);
        assert_eq!(asked.lock().unwrap()[1], [3]);

        // Nothing asked for: no load.
        let got: Vec<i64> = cache
            .get_or_load_many(&[] as &[i64], key, None, load)
            .await
            .unwrap();
        assert!(got.is_empty());
        assert_eq!(asked.lock().unwrap().len(), 2);

        // A loader that answers for another number of items is an error, not a mix-up.
        let err = cache
            .get_or_load_many(&[7_i64, 8], key, None, |_| async {
                Ok::<_, Boom>(vec![(1_i64, vec![])])
            })
            .await
            .unwrap_err();
        assert!(
            matches!(&err, Error::Load(e) if e.to_string().contains("1 values for 2")),
            "{err}"
        );
        assert!(!cache.has("count:7").await.unwrap());
        let err = cache
            .get_or_load_many(&[9_i64], key, None, |_| async {
                Err::<Vec<(i64, _)>, _>(Boom)
            })
            .await
            .unwrap_err();
        assert!(
            matches!(&err, Error::Load(e) if e.to_string() == "boom"),
            "{err}"
        );
    }

    /// The stale-set guard of the batch load: a dependency invalidated while the loader runs
    /// makes the puts of the values that depend on it refuse; the others are stored. The caller
    /// still gets every value it loaded.
    pub async fn get_or_load_many_does_not_cache_values_loaded_across_an_invalidation(
        cache: Cache,
    ) {
        let ids = [1_i64, 2, 3];
        let key = |id: &i64| format!("count:{id}");
        // Redis refuses a put whose stamp it must create after an invalidation later than
        // the ticket (it cannot tell the two apart): make the stamps exist first.
        let all: Vec<Dependency> = ids
            .iter()
            .map(|&id| Dependency::id("article", id))
            .collect();
        cache.put("warm", &0, &all, None).await.unwrap();
        cache
            .put("warm-page", &0, &[Dependency::tag("page")], None)
            .await
            .unwrap();
        let writer = &cache;
        let got: Vec<i64> = cache
            .get_or_load_many(&ids, key, None, |missing| async move {
                // A writer changes article 2 and invalidates, after our read.
                writer
                    .invalidate(&[Dependency::id("article", 2)])
                    .await
                    .unwrap();
                Ok::<_, Boom>(
                    missing
                        .into_iter()
                        .map(|id| {
                            (
                                id,
                                vec![Dependency::id("article", id), Dependency::tag("page")],
                            )
                        })
                        .collect(),
                )
            })
            .await
            .unwrap();
        assert_eq!(got, [1, 2, 3]);
        assert!(cache.has("count:1").await.unwrap());
        assert!(
            !cache.has("count:2").await.unwrap(),
            "a value loaded before an invalidation was cached"
        );
        assert!(cache.has("count:3").await.unwrap());

        // Without the protection the stale value sticks: the race is real.
        let unprotected = Cache::builder_arc(Arc::clone(cache.backend()))
            .stale_set_protection(false)
            .build()
            .unwrap();
        let writer = &unprotected;
        let _: Vec<i64> = unprotected
            .get_or_load_many(&ids, key, None, |missing| async move {
                writer
                    .invalidate(&[Dependency::id("article", 2)])
                    .await
                    .unwrap();
                Ok::<_, Boom>(
                    missing
                        .into_iter()
                        .map(|id| (id, vec![Dependency::id("article", id)]))
                        .collect(),
                )
            })
            .await
            .unwrap();
        assert!(unprotected.has("count:2").await.unwrap());
    }

    pub async fn get_or_load_loads_once_then_hits(cache: Cache) {
        let loads = AtomicUsize::new(0);
        for _ in 0..3 {
            let value: Vec<Article> = cache
                .get_or_load("list", None, || async {
                    loads.fetch_add(1, Ordering::SeqCst);
                    Ok::<_, Boom>((articles(), vec![Dependency::id("author", 1)]))
                })
                .await
                .unwrap();
            assert_eq!(value, articles());
        }
        assert_eq!(loads.load(Ordering::SeqCst), 1);
        cache
            .invalidate(&[Dependency::id("author", 1)])
            .await
            .unwrap();
        let _: Vec<Article> = cache
            .get_or_load("list", None, || async {
                loads.fetch_add(1, Ordering::SeqCst);
                Ok::<_, Boom>((articles(), vec![]))
            })
            .await
            .unwrap();
        assert_eq!(loads.load(Ordering::SeqCst), 2);
    }

    pub async fn get_or_load_passes_loader_errors(cache: Cache) {
        let err = cache
            .get_or_load::<i32, _, _, _>("k", None, || async { Err(Boom) })
            .await
            .unwrap_err();
        assert!(
            matches!(&err, Error::Load(e) if e.to_string() == "boom"),
            "{err}"
        );
        assert!(!cache.has("k").await.unwrap());
    }

    /// The stale-set race, made deterministic: the write and its invalidation happen while the
    /// loader runs. The caller gets its (older) value, but it is not cached.
    pub async fn value_loaded_across_an_invalidation_is_not_cached(cache: Cache) {
        let dep = Dependency::id("article", 1);
        let value: i32 = cache
            .get_or_load("k", None, || async {
                // A writer updates the row and invalidates, after our read.
                cache.invalidate(std::slice::from_ref(&dep)).await.unwrap();
                Ok::<_, Boom>((1, vec![dep.clone()]))
            })
            .await
            .unwrap();
        assert_eq!(value, 1);
        assert!(
            !cache.has("k").await.unwrap(),
            "a value loaded before an invalidation was cached"
        );

        // Without the protection the stale value sticks: the race is real.
        let unprotected = Cache::builder_arc(Arc::clone(cache.backend()))
            .stale_set_protection(false)
            .build()
            .unwrap();
        let _: i32 = unprotected
            .get_or_load("k", None, || async {
                unprotected
                    .invalidate(std::slice::from_ref(&dep))
                    .await
                    .unwrap();
                Ok::<_, Boom>((1, vec![dep.clone()]))
            })
            .await
            .unwrap();
        assert!(unprotected.has("k").await.unwrap());
    }

    /// Followers never receive a value whose put was refused: it may predate an
    /// invalidation that returned before they joined. They load again instead.
    pub async fn followers_do_not_get_a_refused_value(cache: Cache) {
        let dep = Dependency::id("article", 1);
        let version = Arc::new(AtomicUsize::new(0));
        let start = Arc::new(tokio::sync::Barrier::new(10));
        let mut tasks = Vec::new();
        for _ in 0..10 {
            let (cache, dep, version, start) = (
                cache.clone(),
                dep.clone(),
                Arc::clone(&version),
                Arc::clone(&start),
            );
            tasks.push(tokio::spawn(async move {
                start.wait().await;
                let c = cache.clone();
                cache
                    .get_or_load("k", None, || async move {
                        let v = version.fetch_add(1, Ordering::SeqCst);
                        if v == 0 {
                            // The first load is slow and a writer invalidates meanwhile.
                            tokio::time::sleep(Duration::from_millis(100)).await;
                            c.invalidate(std::slice::from_ref(&dep)).await.unwrap();
                        }
                        Ok::<_, Boom>((v, vec![dep]))
                    })
                    .await
                    .unwrap()
            }));
        }
        let mut got = Vec::new();
        for t in tasks {
            got.push(t.await.unwrap());
        }
        // Only the leader's own caller may see version 0.
        assert_eq!(got.iter().filter(|&&v| v == 0).count(), 1, "{got:?}");
        assert!(cache.get::<usize>("k").await.unwrap().unwrap() >= 1);
    }

    /// A failing load fails every caller that waited on it, at once: one load, not one per
    /// caller in turn.
    pub async fn concurrent_callers_share_one_failure(cache: Cache) {
        let loads = Arc::new(AtomicUsize::new(0));
        let start = Arc::new(tokio::sync::Barrier::new(20));
        let mut tasks = Vec::new();
        for _ in 0..20 {
            let (cache, loads, start) = (cache.clone(), Arc::clone(&loads), Arc::clone(&start));
            tasks.push(tokio::spawn(async move {
                start.wait().await;
                cache
                    .get_or_load::<i32, _, _, _>("failing", None, || async {
                        loads.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        Err(Boom)
                    })
                    .await
            }));
        }
        for task in tasks {
            let err = task.await.unwrap().unwrap_err();
            assert!(
                matches!(&err, Error::Load(_)) && err.to_string().contains("boom"),
                "{err}"
            );
        }
        assert_eq!(loads.load(Ordering::SeqCst), 1);
    }

    pub async fn concurrent_callers_share_one_load(cache: Cache) {
        let loads = Arc::new(AtomicUsize::new(0));
        // All callers start together, so every one of them misses while the load runs.
        let start = Arc::new(tokio::sync::Barrier::new(100));
        let mut tasks = Vec::new();
        for _ in 0..100 {
            let cache = cache.clone();
            let loads = Arc::clone(&loads);
            let start = Arc::clone(&start);
            tasks.push(tokio::spawn(async move {
                start.wait().await;
                cache
                    .get_or_load("hot", None, || async {
                        loads.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        Ok::<_, Boom>((articles(), vec![Dependency::tag("hot")]))
                    })
                    .await
                    .unwrap()
            }));
        }
        for task in tasks {
            assert_eq!(task.await.unwrap(), articles());
        }
        assert_eq!(loads.load(Ordering::SeqCst), 1);
    }

    pub async fn overwrite_keeps_the_new_dependencies(cache: Cache) {
        cache
            .put("k", &1, &[Dependency::tag("old")], None)
            .await
            .unwrap();
        cache
            .put("k", &2, &[Dependency::tag("new")], None)
            .await
            .unwrap();
        assert_eq!(cache.get::<i32>("k").await.unwrap(), Some(2));
        // The old dependency no longer reaches the new value.
        cache.invalidate(&[Dependency::tag("old")]).await.unwrap();
        assert_eq!(cache.get::<i32>("k").await.unwrap(), Some(2));
        cache.invalidate(&[Dependency::tag("new")]).await.unwrap();
        assert!(!cache.has("k").await.unwrap());
    }
}

macro_rules! conformance {
    ($backend:ident, $make:expr) => {
        mod $backend {
            use super::*;
            conformance!(@cases $make;
                miss_put_hit_delete,
                invalidate_drops_dependents_only,
                any_dependency_invalidates,
                many_dependents_are_counted,
                ttl_is_honoured,
                undecodable_bytes_are_a_miss_and_dropped,
                schema_version_change_is_a_miss,
                oversized_value_is_refused_and_loses_nothing,
                long_key_is_refused,
                keys_with_separators_are_distinct,
                colliding_looking_dependencies_are_distinct,
                huge_keys_and_dependencies_when_allowed,
                guarded_put_refuses_after_invalidation,
                get_or_load_loads_once_then_hits,
                get_or_load_passes_loader_errors,
                value_loaded_across_an_invalidation_is_not_cached,
                concurrent_callers_share_one_load,
                followers_do_not_get_a_refused_value,
                concurrent_callers_share_one_failure,
                overwrite_keeps_the_new_dependencies,
                get_many_answers_each_key_as_get_would,
                put_many_guards_each_request,
                get_or_load_many_loads_only_the_misses,
                get_or_load_many_does_not_cache_values_loaded_across_an_invalidation,
            );
        }
    };
    (@cases $make:expr; $($case:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let cache: Cache = $make(stringify!($case)).await;
                cases::$case(cache).await;
            }
        )*
    };
}

async fn memory(_name: &str) -> Cache {
    Cache::builder(MemoryBackend::default()).build().unwrap()
}

async fn redis(name: &str) -> Cache {
    support::redis_cache(name).await
}

/// The Redis backend with its near cache on: the same contract.
async fn redis_near(name: &str) -> Cache {
    let config =
        matroska::backend::redis::RedisConfig::new(support::redis_url(), support::unique(name))
            .near_cache(matroska::backend::redis::NearConfig::new(1 << 20));
    let backend = support::redis_backend_with(config).await;
    // Subscribed and confirmed, so that the cases' reads are near hits where they can be.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !backend.near_is_live() {
        assert!(
            std::time::Instant::now() < deadline,
            "the near tier goes live"
        );
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    Cache::builder(backend).build().unwrap()
}

conformance!(memory_backend, memory);
conformance!(redis_backend, redis);
conformance!(redis_near_backend, redis_near);
#[cfg(feature = "cluster")]
conformance!(redis_cluster_backend, redis_cluster);

#[cfg(feature = "cluster")]
async fn redis_cluster(name: &str) -> Cache {
    Cache::builder(support::redis_cluster_backend(name).await)
        .build()
        .unwrap()
}

#[cfg(feature = "cluster")]
conformance!(redis_cluster_near_backend, redis_cluster_near);

/// The Redis backend on a cluster with its near cache on, live.
#[cfg(feature = "cluster")]
async fn redis_cluster_near(name: &str) -> Cache {
    let cluster = tokio::task::spawn_blocking(support::cluster::PrivateCluster::shared)
        .await
        .expect("the cluster starts");
    let config =
        matroska::backend::redis::RedisConfig::cluster(cluster.urls(), support::unique(name))
            .near_cache(matroska::backend::redis::NearConfig::new(1 << 20));
    let backend = support::redis_backend_with(config).await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !backend.near_is_live() {
        assert!(
            std::time::Instant::now() < deadline,
            "the near tier goes live"
        );
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    Cache::builder(backend).build().unwrap()
}
