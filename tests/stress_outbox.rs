//! Stress through the outbox: writers on every write path, readers through cached SeaORM
//! queries, invalidation only by the triggers and the relay (no cache is registered for the
//! hooks), on PostgreSQL and MariaDB with Redis.
//!
//! Each writer owns some rows and bumps their versions in turn through a hooked save,
//! `update_many`, raw SQL, `Entity::update(..).exec` and a hooked save inside SeaORM's own
//! `db.transaction`; every third write also moves the row to the other bucket (a watched
//! column). After each commit the writer waits until the relay has delivered it (the outbox
//! holds no row up to the one its write added), then finishes the write in the ledger.
//!
//! The checker ([`support::ledger`]): a read that starts after a finished write must not see
//! an older version of the row (by id, or inside a bucket's list), and a row that is not being
//! written must be in exactly the list of its bucket. The same run without the triggers (the
//! relay has nothing to deliver) must be caught by the checker. Bounded by operation counts;
//! no timing assertions.
#![cfg(feature = "seaorm")]
#![allow(clippy::unwrap_used)]

mod seaorm_blog;
mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use matroska::seaorm::{self, CachedExt, outbox};
use matroska::{Cache, WatchedTable};
use sea_orm::sea_query::Expr;
use sea_orm::{
    ActiveModelTrait, ColumnTrait, ConnectionTrait, DatabaseConnection, EntityTrait,
    IntoActiveModel, QueryFilter, QueryOrder, Schema, Set, TransactionTrait,
};

use seaorm_blog::stress_row as row;
use support::db::{Kind, ScratchDb};
use support::ledger::Ledger;

const ROWS: i64 = 12;
const WRITERS: i64 = 4;
const READERS: u64 = 4;

struct Harness {
    db: ScratchDb,
    cache: Cache,
    ledger: Ledger,
    protected: bool,
    stale: AtomicU64,
    misplaced: AtomicU64,
    reads: AtomicU64,
}

impl Harness {
    fn conn(&self) -> &DatabaseConnection {
        &self.db.conn
    }

    /// Waits until the relay delivered every outbox row written up to now.
    async fn delivered(&self) {
        if self.protected {
            support::relay::delivered(self.conn()).await;
        }
    }
}

async fn write(h: &Harness, path: u64, from: &row::Model, to: &row::Model) {
    let db = h.conn();
    match path % 5 {
        0 => {
            let mut am = from.clone().into_active_model();
            am.version = Set(to.version);
            am.bucket = Set(to.bucket);
            am.update(db).await.unwrap();
        }
        1 => {
            row::Entity::update_many()
                .col_expr(row::Column::Version, Expr::value(to.version))
                .col_expr(row::Column::Bucket, Expr::value(to.bucket))
                .filter(row::Column::Id.eq(to.id))
                .exec(db)
                .await
                .unwrap();
        }
        2 => {
            let sql = format!(
                "UPDATE stress_row SET version = {}, bucket = {} WHERE id = {}",
                to.version, to.bucket, to.id
            );
            db.execute_unprepared(&sql).await.unwrap();
        }
        3 => {
            let mut am = from.clone().into_active_model();
            am.version = Set(to.version);
            am.bucket = Set(to.bucket);
            row::Entity::update(am).exec(db).await.unwrap();
        }
        _ => {
            let (from, to) = (from.clone(), to.clone());
            db.transaction::<_, _, sea_orm::DbErr>(|txn| {
                Box::pin(async move {
                    let mut am = from.into_active_model();
                    am.version = Set(to.version);
                    am.bucket = Set(to.bucket);
                    am.update(txn).await?;
                    Ok(())
                })
            })
            .await
            .unwrap();
        }
    }
}

async fn writer(h: Arc<Harness>, w: i64, writes: u64) {
    let mut owned: Vec<row::Model> = row::Entity::find()
        .order_by_asc(row::Column::Id)
        .all(h.conn())
        .await
        .unwrap()
        .into_iter()
        .filter(|r| r.id % WRITERS == w)
        .collect();
    for k in 0..writes {
        let i = usize::try_from(k).unwrap() % owned.len();
        let from = owned[i].clone();
        let to = row::Model {
            version: from.version + 1,
            bucket: if k % 3 == 0 {
                1 - from.bucket
            } else {
                from.bucket
            },
            ..from.clone()
        };
        h.ledger.begin(to.id);
        write(&h, k + u64::try_from(w).unwrap(), &from, &to).await;
        h.delivered().await;
        h.ledger.finish(to.id, to.version, i64::from(to.bucket));
        owned[i] = to;
    }
}

async fn reader(h: Arc<Harness>, seed: u64, reads: u64) {
    let mut rng = support::Rng(seed);
    for _ in 0..reads {
        let before = h.ledger.snapshot();
        h.reads.fetch_add(1, Ordering::Relaxed);
        let verdict = if rng.next(2) == 0 {
            let id = i64::try_from(rng.next(u64::try_from(ROWS).unwrap())).unwrap();
            let got = seaorm::query::find_by_id::<row::Entity, _>(&h.cache, h.conn(), id)
                .await
                .unwrap()
                .unwrap();
            before.check_row(id, got.version)
        } else {
            let bucket = i32::try_from(rng.next(2)).unwrap();
            let list = row::Entity::find()
                .order_by_asc(row::Column::Id)
                .cached(&h.cache)
                .scoped(&row::ByBucket { bucket })
                .all(h.conn())
                .await
                .unwrap();
            let after = h.ledger.snapshot();
            let rows: Vec<(i64, i64)> = list.iter().map(|r| (r.id, r.version)).collect();
            before.check_list(&after, i64::from(bucket), &rows)
        };
        h.stale.fetch_add(verdict.stale, Ordering::Relaxed);
        h.misplaced.fetch_add(verdict.misplaced, Ordering::Relaxed);
    }
}

struct Outcome {
    stale: u64,
    misplaced: u64,
    reads: u64,
}

async fn run(kind: Kind, name: &str, protected: bool, writes: u64, reads: u64) -> Outcome {
    let db = ScratchDb::new(kind, name).await;
    let schema = Schema::new(db.backend());
    db.conn
        .execute(&schema.create_table_from_entity(row::Entity))
        .await
        .unwrap();
    row::Entity::insert_many((0..ROWS).map(|id| row::ActiveModel {
        id: Set(id),
        version: Set(0),
        bucket: Set(i32::try_from(id % 2).unwrap()),
    }))
    .exec(&db.conn)
    .await
    .unwrap();
    let cache = support::redis_cache(name).await;
    let relay = if protected {
        outbox::install(&db.conn, &[row::Model::watched_table()])
            .await
            .unwrap();
        Some(
            outbox::relay(&db.conn, cache.clone())
                .unwrap()
                .watch_type::<row::Model>()
                .build()
                .spawn(),
        )
    } else {
        None
    };
    let h = Arc::new(Harness {
        db,
        cache: cache.clone(),
        ledger: Ledger::new(usize::try_from(ROWS).unwrap(), |id| {
            i64::try_from(id % 2).unwrap()
        }),
        protected,
        stale: AtomicU64::new(0),
        misplaced: AtomicU64::new(0),
        reads: AtomicU64::new(0),
    });
    // Protected: no cache for the hooks, only the outbox invalidates. Unprotected: the hooks
    // need a cache (each task's own scope); the other paths invalidate nothing.
    let scoped = |fut| {
        let cache = (!protected).then(|| cache.clone());
        async move {
            match cache {
                Some(cache) => seaorm::with_cache(cache, fut).await,
                None => fut.await,
            }
        }
    };
    let mut tasks = Vec::new();
    for w in 0..WRITERS {
        tasks.push(tokio::spawn(scoped(
            Box::pin(writer(Arc::clone(&h), w, writes))
                as std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>,
        )));
    }
    for r in 0..READERS {
        tasks.push(tokio::spawn(scoped(Box::pin(reader(
            Arc::clone(&h),
            7 + r,
            reads,
        )))));
    }
    for t in tasks {
        t.await.unwrap();
    }
    if let Some(relay) = relay {
        assert_eq!(relay.relay().stats().dead_letters, 0);
        relay.shutdown().await;
    }
    Outcome {
        stale: h.stale.load(Ordering::Relaxed),
        misplaced: h.misplaced.load(Ordering::Relaxed),
        reads: h.reads.load(Ordering::Relaxed),
    }
}

fn report(label: &str, o: &Outcome) {
    eprintln!(
        "{label}: {} reads, {} stale, {} misplaced",
        o.reads, o.stale, o.misplaced
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_stale_reads_through_the_outbox_on_postgres() {
    let o = run(Kind::Postgres, "stress_outbox_pg", true, 40, 300).await;
    report("postgres, outbox", &o);
    assert_eq!((o.stale, o.misplaced), (0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_stale_reads_through_the_outbox_on_mariadb() {
    let o = run(Kind::MySql, "stress_outbox_my", true, 40, 300).await;
    report("mariadb, outbox", &o);
    assert_eq!((o.stale, o.misplaced), (0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn checker_catches_writes_without_the_outbox() {
    let o = run(Kind::Postgres, "stress_outbox_off", false, 40, 300).await;
    report("postgres, no outbox", &o);
    assert!(
        o.stale + o.misplaced > 0,
        "the checker must catch the paths no hook sees"
    );
}
