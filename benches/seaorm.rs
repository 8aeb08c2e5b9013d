//! SeaORM: what the invalidation hooks add to a save, and a cached query hit against the
//! same query sent to the database; on SQLite and on PostgreSQL, with the Redis backend.
//!
//! The hooked entity and the plain one map the same table (`common::seaorm`), so a pair
//! differs only by the hooks. `cache.invalidate` of one dependency is measured alongside: it
//! is the round trip a hooked save should add, and no more.

mod common;

use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use matroska::seaorm::{self as mseaorm, CachedExt};
use matroska::{Cache, Dependency};
use sea_orm::{
    ActiveModelTrait, ActiveValue::Unchanged, DbErr, EntityTrait, QueryFilter, QueryOrder, Set,
    TransactionTrait,
};
use tokio::runtime::Runtime;

use common::seaorm::{ScratchDb, article, plain_article, published_in};
use common::{redis_cache, runtime};

/// The row the single saves update, and the rows of the transactions.
const ROW: i32 = 1;
const TRANSACTION_ROWS: i32 = 10;

fn databases(rt: &Runtime) -> Vec<ScratchDb> {
    vec![
        rt.block_on(ScratchDb::sqlite()),
        rt.block_on(ScratchDb::postgres()),
    ]
}

fn hooked(id: i32, title: &str) -> article::ActiveModel {
    article::ActiveModel {
        id: Unchanged(id),
        title: Set(title.into()),
        ..Default::default()
    }
}

fn plain(id: i32, title: &str) -> plain_article::ActiveModel {
    plain_article::ActiveModel {
        id: Unchanged(id),
        title: Set(title.into()),
        ..Default::default()
    }
}

/// Alternates a category so that every save changes it.
fn category(i: &mut u64) -> String {
    *i += 1;
    if i.is_multiple_of(2) { "B" } else { "C" }.into()
}

fn save(c: &mut Criterion, rt: &Runtime, cache: &Cache, db: &ScratchDb) {
    let conn = &db.conn;
    let mut g = c.benchmark_group(format!("seaorm/save/{}", db.name));
    g.bench_function("update title, no hooks", |b| {
        b.to_async(rt)
            .iter(|| async { plain(ROW, "title").update(conn).await.unwrap() })
    });
    g.bench_function("update title, hooks", |b| {
        b.to_async(rt)
            .iter(|| async { hooked(ROW, "title").update(conn).await.unwrap() })
    });
    let mut i = 0;
    g.bench_function("update category, no hooks", |b| {
        b.to_async(rt).iter(|| {
            let am = plain_article::ActiveModel {
                id: Unchanged(ROW),
                category: Set(category(&mut i)),
                ..Default::default()
            };
            async move { am.update(conn).await.unwrap() }
        })
    });
    g.bench_function("update category, hooks (reads the old row)", |b| {
        b.to_async(rt).iter(|| {
            let am = article::ActiveModel {
                id: Unchanged(ROW),
                category: Set(category(&mut i)),
                ..Default::default()
            };
            async move { am.update(conn).await.unwrap() }
        })
    });
    let dep = Dependency::id("article", ROW);
    g.bench_function("cache.invalidate of 1 dependency (reference)", |b| {
        b.to_async(rt)
            .iter(|| async { cache.invalidate(std::slice::from_ref(&dep)).await.unwrap() })
    });
    g.bench_function("transaction of 10 updates, no hooks", |b| {
        b.to_async(rt).iter(|| async {
            conn.transaction::<_, (), DbErr>(|txn| {
                Box::pin(async move {
                    for id in 1..=TRANSACTION_ROWS {
                        plain(id, "title").update(txn).await?;
                    }
                    Ok(())
                })
            })
            .await
            .unwrap()
        })
    });
    g.bench_function("seaorm::transaction of 10 updates, hooks", |b| {
        b.to_async(rt).iter(|| async {
            mseaorm::transaction(conn, |txn| {
                Box::pin(async move {
                    for id in 1..=TRANSACTION_ROWS {
                        hooked(id, "title").update(txn).await?;
                    }
                    Ok::<_, DbErr>(())
                })
            })
            .await
            .unwrap()
        })
    });
    g.finish();
}

fn query(c: &mut Criterion, rt: &Runtime, redis: &Cache, db: &ScratchDb) {
    let conn = &db.conn;
    let memory = Cache::memory();
    let by_id = || article::Entity::find_by_id(42);
    let list = || article::Entity::find().order_by_asc(article::Column::Id);
    let a = published_in("A");
    // Fill the entries the hits read.
    rt.block_on(async {
        for cache in [redis, &memory] {
            assert!(by_id().cached(cache).one(conn).await.unwrap().is_some());
            let rows = list().cached(cache).scoped(&a).all(conn).await.unwrap();
            assert_eq!(rows.len(), 10);
        }
    });

    let mut g = c.benchmark_group(format!("seaorm/query/{}", db.name));
    g.bench_function("one by id, uncached", |b| {
        b.to_async(rt)
            .iter(|| async { by_id().one(conn).await.unwrap() })
    });
    g.bench_function("one by id, cached hit (Redis)", |b| {
        b.to_async(rt)
            .iter(|| async { by_id().cached(redis).one(conn).await.unwrap() })
    });
    g.bench_function("one by id, cached hit (memory)", |b| {
        b.to_async(rt)
            .iter(|| async { by_id().cached(&memory).one(conn).await.unwrap() })
    });
    g.bench_function("list of 10, uncached", |b| {
        b.to_async(rt)
            .iter(|| async { list().filter(a.filter()).all(conn).await.unwrap() })
    });
    g.bench_function("list of 10, cached hit (Redis)", |b| {
        b.to_async(rt)
            .iter(|| async { list().cached(redis).scoped(&a).all(conn).await.unwrap() })
    });
    g.bench_function("list of 10, cached hit (memory)", |b| {
        b.to_async(rt)
            .iter(|| async { list().cached(&memory).scoped(&a).all(conn).await.unwrap() })
    });
    g.finish();
}

fn seaorm(c: &mut Criterion) {
    let rt = runtime();
    let cache = rt.block_on(redis_cache("seaorm"));
    // The hooks find the cache here; the unhooked entity never asks.
    mseaorm::set_global_cache(cache.clone()).expect("set once");
    for db in databases(&rt) {
        save(c, &rt, &cache, &db);
        query(c, &rt, &cache, &db);
        rt.block_on(db.drop_now());
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = seaorm
}
criterion_main!(benches);
