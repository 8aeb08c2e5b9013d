//! The hooks' failure policy (retry queue, then refused writes; no cache, no write), and the
//! measured cost of a save: SQL statements and cache round trips, with and without scopes.
#![cfg(feature = "seaorm")]
#![allow(clippy::unwrap_used)]

mod seaorm_blog;
mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use matroska::backend::memory::MemoryBackend;
use matroska::backend::redis::RedisConfig;
use matroska::backend::{Backend, PutOutcome, PutRequest, Ticket};
use matroska::seaorm::{self, Invalidator};
use matroska::{Cache, Error};
use sea_orm::{
    ActiveModelTrait, DatabaseConnection, DbErr, EntityTrait, IntoActiveModel, ModelTrait,
    PaginatorTrait, Set,
};

use seaorm_blog::{article, author, create_tables, plain_article};
use support::db::ScratchDb;

/// An in-memory backend whose invalidations fail while `down` is set.
#[derive(Debug, Default)]
struct Flaky {
    inner: MemoryBackend,
    down: AtomicBool,
}

#[async_trait]
impl Backend for Flaky {
    fn name(&self) -> &'static str {
        "flaky"
    }
    async fn get(&self, key: &str) -> matroska::Result<Option<Bytes>> {
        self.inner.get(key).await
    }
    async fn has(&self, key: &str) -> matroska::Result<bool> {
        self.inner.has(key).await
    }
    async fn put(&self, request: PutRequest<'_>) -> matroska::Result<PutOutcome> {
        self.inner.put(request).await
    }
    async fn delete(&self, key: &str) -> matroska::Result<bool> {
        self.inner.delete(key).await
    }
    async fn invalidate(&self, deps: &[String]) -> matroska::Result<u64> {
        if self.down.load(Ordering::SeqCst) {
            return Err(Error::Timeout {
                operation: "invalidate",
                timeout: Duration::from_millis(1),
            });
        }
        self.inner.invalidate(deps).await
    }
    async fn ticket(&self) -> matroska::Result<Ticket> {
        self.inner.ticket().await
    }
}

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
    let backend = Arc::new(Flaky::default());
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
            backend.down.store(true, Ordering::SeqCst);
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
            backend.down.store(false, Ordering::SeqCst);
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

        // Hooks add no statement, except one SELECT for a watched update or a partial delete;
        // every save costs one cache command, a transaction one in all.
        let cost = |c: Cost| (c.sql, c.redis);
        assert_eq!(cost(plain_insert).1, 0);
        assert_eq!(cost(unscoped_insert), (plain_insert.sql, 1));
        assert_eq!(cost(scoped_insert), (plain_insert.sql, 1));
        assert_eq!(cost(unwatched_update), (plain_update.sql, 1));
        assert_eq!(cost(watched_update), (plain_update.sql + 1, 1));
        assert_eq!(transaction_of_three.redis, 1);
        assert_eq!(cost(scoped_delete), (plain_delete.sql, 1));
        assert_eq!(cost(partial_delete), (plain_delete.sql + 1, 1));
    })
    .await;
}
