//! The hooks' failure policy (retry queue, then refused writes; no cache, no write), and the
//! measured cost of a save: SQL statements and cache round trips, with and without scopes.
#![cfg(feature = "seaorm")]
#![allow(clippy::unwrap_used)]

mod seaorm_blog;
mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use matroska::Cache;
use matroska::backend::memory::MemoryBackend;
use matroska::backend::redis::RedisConfig;
use matroska::seaorm::{self, Invalidator};
use sea_orm::{
    ActiveModelTrait, DatabaseConnection, DbErr, EntityTrait, IntoActiveModel, ModelTrait,
    PaginatorTrait, Set, TransactionTrait,
};

use seaorm_blog::{article, author, create_tables, plain_article};
use support::db::{Kind, ScratchDb};
use support::faults::Faulty;

fn article_in(category: &str, author: i32) -> article::ActiveModel {
    article::ActiveModel {
        title: Set(format!("in {category}")),
        category: Set(category.into()),
        published: Set(true),
        author_id: Set(author),
        ..Default::default()
    }
}

async fn cached_a(cache: &Cache, db: &DatabaseConnection) -> Vec<article::Model> {
    use matroska::seaorm::CachedExt;
    article::Entity::find()
        .cached(cache)
        .scoped(&article::published_in("A"))
        .all(db)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_invalidations_are_queued_retried_and_then_refuse_writes() {
    let scratch = ScratchDb::sqlite("policy").await;
    let db = &scratch.conn;
    create_tables(db).await;
    let backend = Arc::new(Faulty::new(MemoryBackend::default()));
    let cache = Cache::builder_arc(backend.clone()).build().unwrap();
    let invalidator = Invalidator::builder(cache.clone())
        .backlog_limit(8)
        .retry_delay(Duration::from_millis(10), Duration::from_millis(40))
        .build();
    invalidator
        .clone()
        .scope(async {
            let author = author::ActiveModel {
                name: Set("kolypto".into()),
                ..Default::default()
            }
            .insert(db)
            .await
            .unwrap();
            assert!(cached_a(&cache, db).await.is_empty());

            // The backend fails: the save succeeds, its invalidation waits in the queue, and the
            // stale list is still served meanwhile.
            backend.set_down(true);
            let first = article_in("A", author.id)
                .insert(db)
                .await
                .expect("the save succeeds");
            let queued = invalidator.pending();
            assert!(queued > 0 && queued < 8, "{queued} queued");
            assert!(
                cached_a(&cache, db).await.is_empty(),
                "stale while the backend is down"
            );
            assert!(
                invalidator.flush().await.is_err(),
                "flush reports the failure"
            );

            // A second failed save fills the queue: the next writes are refused before they
            // reach the database.
            article_in("B", author.id)
                .insert(db)
                .await
                .expect("the save succeeds");
            assert!(
                invalidator.pending() >= 8,
                "{} queued",
                invalidator.pending()
            );
            let refused = article_in("A", author.id).insert(db).await.unwrap_err();
            assert!(
                matches!(&refused, DbErr::Custom(m) if m.contains("refusing the write")),
                "{refused}"
            );
            let refused = seaorm::transaction(db, |txn| {
                Box::pin(async move { article_in("A", author.id).insert(txn).await })
            })
            .await;
            assert!(refused.is_err());
            let refused = seaorm::bulk::delete_many::<article::Entity>()
                .exec(db)
                .await;
            assert!(matches!(refused, Err(seaorm::Error::Backlog { .. })));
            assert_eq!(
                article::Entity::find().count(db).await.unwrap(),
                2,
                "a refused write was written"
            );

            // The backend comes back: the background retry drains the queue; the list is fresh.
            backend.set_down(false);
            let deadline = Instant::now() + Duration::from_secs(10);
            while invalidator.pending() > 0 {
                assert!(Instant::now() < deadline, "the retry queue did not drain");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            assert_eq!(cached_a(&cache, db).await, vec![first]);
            article_in("A", author.id)
                .insert(db)
                .await
                .expect("writes are accepted again");
            assert_eq!(cached_a(&cache, db).await.len(), 2);
        })
        .await;
}

/// With the outbox installed, a cache outage refuses no write to a table it watches — hooked
/// saves, `transaction`, the bulk helpers — and the retry queue stays bounded (what does not
/// fit is dropped: the relay delivers it from the database); once the cache is back and the
/// relay has drained, no entry cached before the outage is stale. A table the outbox does not
/// watch is still refused once the queue is full, and `invalidate` keeps to the limit too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_with_the_outbox_refuses_no_write_and_stays_bounded() {
    use matroska::WatchedTable;
    use matroska::seaorm::CachedExt;
    use sea_orm::{ColumnTrait, QueryFilter};
    const LIMIT: usize = 10;
    let redis = support::PrivateRedis::start();
    let scratch = ScratchDb::new(Kind::Postgres, "outage_outbox").await;
    let db = &scratch.conn;
    create_tables(db).await;
    // Articles are watched; authors are not.
    seaorm::outbox::install(db, &[article::Model::watched_table()])
        .await
        .unwrap();
    let backend = support::redis_backend_with(
        RedisConfig::new(redis.url(), support::unique("outage_outbox"))
            .timeout(Duration::from_millis(200)),
    )
    .await;
    let cache = Cache::builder(backend).build().unwrap();
    let invalidator = Invalidator::builder(cache.clone())
        .backlog_limit(LIMIT)
        .retry_delay(Duration::from_millis(20), Duration::from_millis(200))
        .build();
    let relay = seaorm::outbox::relay(db, cache.clone())
        .unwrap()
        .watch_type::<article::Model>()
        .retry_delay(Duration::from_millis(20), Duration::from_millis(200))
        .build()
        .spawn();
    let categories = ["A", "B", "C", "D", "E"];
    invalidator
        .clone()
        .scope(async {
            let author = author::ActiveModel {
                name: Set("kolypto".into()),
                ..Default::default()
            }
            .insert(db)
            .await
            .unwrap();
            let seed = article_in("E", author.id).insert(db).await.unwrap();
            // Entries cached before the outage: every category's count and list, a row by id.
            let count = |category: &'static str| {
                article::Entity::find()
                    .cached(&cache)
                    .scoped(&article::published_in(category))
                    .count(db)
            };
            let list = |category: &'static str| {
                article::Entity::find()
                    .cached(&cache)
                    .scoped(&article::published_in(category))
                    .all(db)
            };
            let uncached = |category: &'static str| {
                article::Entity::find()
                    .filter(article::published_in(category).filter())
                    .all(db)
            };
            let by_id = || seaorm::query::find_by_id::<article::Entity, _>(&cache, db, seed.id);
            for category in categories {
                count(category).await.unwrap();
                list(category).await.unwrap();
            }
            assert!(by_id().await.unwrap().is_some());

            redis.pause();
            let filled = std::cell::Cell::new(None);
            // Pending never grows once the queue is full: what no longer fits is dropped.
            let check_bounded = |step: &str| {
                let pending = invalidator.pending();
                match filled.get() {
                    None if pending >= LIMIT => {
                        // At most the last write accepted before the queue was full goes past
                        // the limit (Keep::Always): a few dependencies, never a multiple.
                        assert!(pending < 2 * LIMIT, "{step}: {pending} pending");
                        filled.set(Some(pending));
                    }
                    None => {}
                    Some(filled) => {
                        assert!(pending <= filled, "{step}: {pending} pending, was {filled}");
                    }
                }
            };
            for i in 0..30 {
                let category = categories[i % 4];
                let row = article_in(category, author.id)
                    .insert(db)
                    .await
                    .unwrap_or_else(|e| panic!("save {i} refused: {e}"));
                check_bounded("insert");
                if i % 3 == 0 {
                    let mut am = row.into_active_model();
                    am.category = Set(categories[(i + 1) % 4].into());
                    am.update(db).await.expect("update refused");
                    check_bounded("update");
                }
            }
            assert!(filled.get().is_some(), "the queue never filled");
            seaorm::transaction(db, |txn| {
                Box::pin(async move {
                    for category in ["A", "C"] {
                        article_in(category, author.id).insert(txn).await?;
                    }
                    Ok::<_, DbErr>(())
                })
            })
            .await
            .expect("transaction refused");
            check_bounded("transaction");
            seaorm::bulk::update_many::<article::Entity>()
                .set(article::Column::Category, "E")
                .filter(article::Column::Category.eq("D"))
                .exec(db)
                .await
                .expect("bulk update refused");
            check_bounded("bulk update");
            seaorm::bulk::delete_many::<article::Entity>()
                .filter(article::Column::Category.eq("B"))
                .exec(db)
                .await
                .expect("bulk delete refused");
            check_bounded("bulk delete");
            seaorm::bulk::insert_many([article_in("C", author.id), article_in("E", author.id)], db)
                .await
                .expect("bulk insert refused");
            check_bounded("bulk insert");
            seed.clone().delete(db).await.expect("delete refused");
            check_bounded("delete");
            assert!(invalidator.dropped() > 0, "nothing was dropped");

            // `invalidate` keeps to the limit: reported, not queued.
            let before = invalidator.pending();
            let dropped = seaorm::invalidate(vec![matroska::Dependency::tag("outage")]).await;
            assert!(
                matches!(dropped, Err(seaorm::Error::Dropped { dropped: 1, .. })),
                "{dropped:?}"
            );
            assert!(invalidator.pending() <= before);

            // A table the outbox does not watch: refused before writing, as without an outbox.
            let authors = author::Entity::find().count(db).await.unwrap();
            let refused = author::ActiveModel {
                name: Set("refused".into()),
                ..Default::default()
            }
            .insert(db)
            .await
            .unwrap_err();
            assert!(
                refused.to_string().contains("refusing the write"),
                "{refused}"
            );
            let refused = seaorm::transaction(db, |txn| {
                Box::pin(async move {
                    author::ActiveModel {
                        name: Set("refused".into()),
                        ..Default::default()
                    }
                    .insert(txn)
                    .await
                })
            })
            .await;
            assert!(refused.is_err());
            let refused = seaorm::bulk::delete_many::<author::Entity>()
                .filter(author::Column::Id.eq(-1))
                .exec(db)
                .await;
            assert!(
                matches!(refused, Err(seaorm::Error::Backlog { .. })),
                "{refused:?}"
            );
            assert_eq!(author::Entity::find().count(db).await.unwrap(), authors);

            // The cache comes back: the queue drains, the relay delivers the rest.
            redis.resume();
            eventually("the retry queue did not drain", async || {
                invalidator.pending() == 0
            })
            .await;
            support::relay::wait_idle(&relay).await;
            for category in categories {
                let fresh = uncached(category).await.unwrap();
                assert_eq!(
                    count(category).await.unwrap(),
                    fresh.len() as u64,
                    "the count of {category} is stale"
                );
                let mut cached = list(category).await.unwrap();
                cached.sort_by_key(|a| a.id);
                let mut fresh = fresh;
                fresh.sort_by_key(|a| a.id);
                assert_eq!(cached, fresh, "the list of {category} is stale");
            }
            assert_eq!(
                by_id().await.unwrap(),
                None,
                "the deleted row is still cached"
            );
        })
        .await;
    relay.shutdown().await;
}

/// Polls `check` until it holds; fails after 10 s with `what`.
async fn eventually(what: &str, mut check: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !check().await {
        assert!(Instant::now() < deadline, "{what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A scratch database with its tables, a cache on Redis behind a [`Faulty`] wrapper, and its
/// invalidator, whose background retry never runs during a test (only deliveries drain its
/// queue), with an author and the cached list of category A.
struct Rig {
    scratch: ScratchDb,
    backend: Arc<Faulty>,
    cache: Cache,
    invalidator: Invalidator,
    author: i32,
}

impl Rig {
    async fn new(kind: Kind, name: &str) -> Rig {
        let scratch = ScratchDb::new(kind, name).await;
        create_tables(&scratch.conn).await;
        let backend = Arc::new(Faulty::new(support::redis_backend(name).await));
        let cache = Cache::builder_arc(backend.clone()).build().unwrap();
        let hour = Duration::from_secs(3600);
        let invalidator = Invalidator::builder(cache.clone())
            .retry_delay(hour, hour)
            .build();
        let author = seaorm::with_cache(cache.clone(), async {
            author::ActiveModel {
                name: Set("kolypto".into()),
                ..Default::default()
            }
            .insert(&scratch.conn)
            .await
            .unwrap()
        })
        .await;
        Rig {
            scratch,
            backend,
            cache,
            invalidator,
            author: author.id,
        }
    }

    fn db(&self) -> &DatabaseConnection {
        &self.scratch.conn
    }

    /// Puts a failed invalidation into the retry queue: a save while the backend is down.
    async fn queue_a_failure(&self) {
        self.backend.set_down(true);
        article_in("B", self.author)
            .insert(self.db())
            .await
            .unwrap();
        self.backend.set_down(false);
        assert!(self.invalidator.pending() > 0);
    }

    /// Runs `write` with the gate closed and drops it once its invalidation waits at the
    /// gate, as a request time-out would; then opens the gate.
    async fn drop_mid_invalidation<T>(&self, write: impl Future<Output = T>) {
        self.backend.close();
        let stopped = self.backend.stopped();
        tokio::select! {
            _ = write => panic!("the write finished with the gate closed"),
            () = self.backend.stopped_after(stopped) => {}
        }
        self.backend.open();
    }

    /// Waits until the cached list of A shows `titles`, and the retry queue is empty.
    async fn settles_on(&self, titles: &[&str]) {
        eventually(
            "the dropped write's invalidation never arrived",
            async || {
                let list = cached_a(&self.cache, self.db()).await;
                list.iter().map(|a| a.title.as_str()).collect::<Vec<_>>() == titles
            },
        )
        .await;
        eventually(
            "the retry queue the dropped write carried was lost",
            async || self.invalidator.pending() == 0,
        )
        .await;
    }
}

/// A caller dropped while its hooked save's invalidation waits for the backend loses neither
/// that invalidation nor the retry queue it carried, and the pending count comes back down
/// (else, at the limit, every hooked write would be refused with the backend healthy).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_save_still_invalidates() {
    let rig = Rig::new(Kind::Sqlite, "dropped_save").await;
    let db = rig.db();
    rig.invalidator
        .clone()
        .scope(async {
            assert!(cached_a(&rig.cache, db).await.is_empty());
            rig.queue_a_failure().await;
            rig.drop_mid_invalidation(article_in("A", rig.author).insert(db))
                .await;
            rig.settles_on(&["in A"]).await;
        })
        .await;
}

/// The same for a `transaction` dropped after its commit, while its invalidation waits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_transaction_still_invalidates() {
    let rig = Rig::new(Kind::Postgres, "dropped_txn").await;
    let db = rig.db();
    rig.invalidator
        .clone()
        .scope(async {
            let row = article_in("A", rig.author).insert(db).await.unwrap();
            assert_eq!(cached_a(&rig.cache, db).await, vec![row.clone()]);
            rig.queue_a_failure().await;
            rig.drop_mid_invalidation(seaorm::transaction(db, |txn| {
                Box::pin(async move {
                    article::ActiveModel {
                        id: Set(row.id),
                        title: Set("v2".into()),
                        ..Default::default()
                    }
                    .update(txn)
                    .await
                })
            }))
            .await;
            rig.settles_on(&["v2"]).await;
        })
        .await;
}

/// The same for a `batch` around a bare `begin()` / `commit()`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_batch_still_invalidates() {
    let rig = Rig::new(Kind::MySql, "dropped_batch").await;
    let db = rig.db();
    rig.invalidator
        .clone()
        .scope(async {
            let row = article_in("A", rig.author).insert(db).await.unwrap();
            assert_eq!(cached_a(&rig.cache, db).await, vec![row.clone()]);
            rig.queue_a_failure().await;
            rig.drop_mid_invalidation(seaorm::batch(async {
                let txn = db.begin().await?;
                article::ActiveModel {
                    id: Set(row.id),
                    title: Set("v2".into()),
                    ..Default::default()
                }
                .update(&txn)
                .await?;
                txn.commit().await
            }))
            .await;
            rig.settles_on(&["v2"]).await;
        })
        .await;
}

/// `with_cache` with one cache, called per request, uses that cache's one retry queue: its
/// limit holds across the requests.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_cache_shares_the_caches_retry_queue() {
    let scratch = ScratchDb::sqlite("shared_queue").await;
    let db = &scratch.conn;
    create_tables(db).await;
    let backend = Arc::new(Faulty::new(MemoryBackend::default()));
    let cache = Cache::builder_arc(backend.clone()).build().unwrap();
    let invalidator = Invalidator::builder(cache.clone()).backlog_limit(1).build();
    let request = |name: &'static str| {
        seaorm::with_cache(cache.clone(), async move {
            author::ActiveModel {
                name: Set(name.into()),
                ..Default::default()
            }
            .insert(db)
            .await
        })
    };
    backend.set_down(true);
    request("first").await.expect("queued, not refused");
    let refused = request("second").await.unwrap_err();
    assert!(
        refused.to_string().contains("refusing the write"),
        "{refused}"
    );
    assert!(
        seaorm::with_cache(cache.clone(), async {
            Invalidator::current()
                .unwrap()
                .same_invalidator(&invalidator)
        })
        .await
    );
    backend.set_down(false);
    eventually("the queue drained", async || invalidator.pending() == 0).await;
    request("third").await.expect("accepted again");
}

/// An invalidator outlives runtimes (it is registered per cache, or global): a retry loop
/// dropped with its runtime does not keep later runtimes from retrying.
#[test]
fn retries_resume_on_a_new_runtime() {
    let backend = Arc::new(Faulty::new(MemoryBackend::default()));
    let cache = Cache::builder_arc(backend.clone()).build().unwrap();
    let invalidator = Invalidator::builder(cache)
        .retry_delay(Duration::from_millis(10), Duration::from_millis(10))
        .build();
    let runtime = || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    };
    let fail_once = || {
        invalidator.clone().scope(async {
            backend.set_down(true);
            let failed = seaorm::invalidate(vec![matroska::Dependency::tag("t")]).await;
            backend.set_down(false);
            assert!(failed.is_err());
        })
    };
    // The first runtime ends with its retry loop still waiting.
    runtime().block_on(fail_once());
    assert!(invalidator.pending() > 0);
    runtime().block_on(async {
        fail_once().await;
        eventually("no retry ran on the new runtime", async || {
            invalidator.pending() == 0
        })
        .await;
    });
}

#[tokio::test]
async fn a_save_without_a_cache_is_refused_before_writing() {
    let scratch = ScratchDb::sqlite("nocache").await;
    let db = &scratch.conn;
    create_tables(db).await;
    // No `with_cache` here, and no test in this binary sets the global cache.
    let err = author::ActiveModel {
        name: Set("nobody".into()),
        ..Default::default()
    }
    .insert(db)
    .await
    .unwrap_err();
    assert!(
        err.to_string().contains("no matroska cache is registered"),
        "{err}"
    );
    assert_eq!(author::Entity::find().count(db).await.unwrap(), 0);
}

/// What one operation costs: SQL statements, Redis round trips (script calls: the save path
/// issues nothing else), and Redis commands including those run inside the scripts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Cost {
    sql: u64,
    redis: u64,
    commands: u64,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn measure_the_cost_of_a_save() {
    let redis = support::PrivateRedis::start();
    let mut scratch = ScratchDb::sqlite("measure").await;
    let statements = Arc::new(AtomicU64::new(0));
    let counter = Arc::clone(&statements);
    scratch.conn.set_metric_callback(move |_| {
        counter.fetch_add(1, Ordering::SeqCst);
    });
    let db = &scratch.conn;
    create_tables(db).await;
    let backend =
        support::redis_backend_with(RedisConfig::new(redis.url(), support::unique("measure")))
            .await;
    let cache = Cache::builder(backend).build().unwrap();
    let round_trips = || redis.calls("evalsha") + redis.calls("eval") + redis.calls("script");
    let commands = || redis.total_calls() - redis.calls("info");

    seaorm::with_cache(cache.clone(), async {
        let measure = async |op: std::pin::Pin<Box<dyn Future<Output = ()> + '_>>| {
            let (sql0, redis0, commands0) =
                (statements.load(Ordering::SeqCst), round_trips(), commands());
            op.await;
            Cost {
                sql: statements.load(Ordering::SeqCst) - sql0,
                redis: round_trips() - redis0,
                commands: commands() - commands0,
            }
        };
        let author = author::ActiveModel {
            name: Set("kolypto".into()),
            ..Default::default()
        }
        .insert(db)
        .await
        .unwrap(); // also loads the Lua scripts
        let plain = |title: &str| plain_article::ActiveModel {
            title: Set(title.into()),
            category: Set("A".into()),
            published: Set(true),
            author_id: Set(author.id),
            ..Default::default()
        };

        let plain_insert = measure(Box::pin(async {
            plain("p").insert(db).await.map(drop).unwrap()
        }))
        .await;
        let unscoped_insert = measure(Box::pin(async {
            author::ActiveModel {
                name: Set("ada".into()),
                ..Default::default()
            }
            .insert(db)
            .await
            .map(drop)
            .unwrap()
        }))
        .await;
        let mut row = None;
        let scoped_insert = measure(Box::pin(async {
            row = Some(article_in("A", author.id).insert(db).await.unwrap())
        }))
        .await;
        let row = row.unwrap();

        let p = plain_article::Entity::find()
            .one(db)
            .await
            .unwrap()
            .unwrap();
        let plain_update = measure(Box::pin(async {
            let mut am = p.clone().into_active_model();
            am.title = Set("p2".into());
            am.update(db).await.map(drop).unwrap()
        }))
        .await;
        let unwatched_update = measure(Box::pin(async {
            let mut am = row.clone().into_active_model();
            am.title = Set("t2".into());
            am.update(db).await.map(drop).unwrap()
        }))
        .await;
        let watched_update = measure(Box::pin(async {
            let mut am = row.clone().into_active_model();
            am.category = Set("B".into());
            am.update(db).await.map(drop).unwrap()
        }))
        .await;
        let transaction_of_three = measure(Box::pin(async {
            let id = row.id;
            seaorm::transaction(db, |txn| {
                Box::pin(async move {
                    for title in ["x", "y", "z"] {
                        article::ActiveModel {
                            id: Set(id),
                            title: Set(title.into()),
                            ..Default::default()
                        }
                        .update(txn)
                        .await?;
                    }
                    Ok::<_, DbErr>(())
                })
            })
            .await
            .unwrap()
        }))
        .await;
        let plain_delete = measure(Box::pin(async { p.delete(db).await.map(drop).unwrap() })).await;
        let other = article_in("A", author.id).insert(db).await.unwrap();
        let scoped_delete = measure(Box::pin(async {
            article::Entity::find_by_id(row.id)
                .one(db)
                .await
                .unwrap()
                .unwrap()
                .delete(db)
                .await
                .map(drop)
                .unwrap()
        }))
        .await;
        let scoped_delete = Cost {
            sql: scoped_delete.sql - 1,
            ..scoped_delete
        }; // minus the find_by_id
        let partial_delete = measure(Box::pin(async {
            article::ActiveModel {
                id: Set(other.id),
                ..Default::default()
            }
            .delete(db)
            .await
            .map(drop)
            .unwrap()
        }))
        .await;

        eprintln!(
            "{:<42} {:>6} {:>12} {:>16}",
            "operation", "SQL", "round trips", "Redis commands"
        );
        for (name, cost) in [
            ("plain SeaORM insert (no hooks)", plain_insert),
            ("insert, entity without scopes", unscoped_insert),
            ("insert, scoped entity", scoped_insert),
            ("plain SeaORM update (no hooks)", plain_update),
            ("update, unwatched column", unwatched_update),
            ("update, watched column", watched_update),
            (
                "transaction of 3 updates (+BEGIN/COMMIT)",
                transaction_of_three,
            ),
            ("plain SeaORM delete (no hooks)", plain_delete),
            ("delete, loaded model", scoped_delete),
            ("delete, partial ActiveModel", partial_delete),
        ] {
            eprintln!(
                "{name:<42} {:>6} {:>12} {:>16}",
                cost.sql, cost.redis, cost.commands
            );
        }

        // Hooks add no statement, except one SELECT for a watched update or a delete;
        // every save costs one cache command, a transaction one in all.
        let cost = |c: Cost| (c.sql, c.redis);
        assert_eq!(cost(plain_insert).1, 0);
        assert_eq!(cost(unscoped_insert), (plain_insert.sql, 1));
        assert_eq!(cost(scoped_insert), (plain_insert.sql, 1));
        assert_eq!(cost(unwatched_update), (plain_update.sql, 1));
        assert_eq!(cost(watched_update), (plain_update.sql + 1, 1));
        assert_eq!(transaction_of_three.redis, 1);
        // A delete reads the row as the database holds it (the model may be stale).
        assert_eq!(cost(scoped_delete), (plain_delete.sql + 1, 1));
        assert_eq!(cost(partial_delete), (plain_delete.sql + 1, 1));
    })
    .await;
}
