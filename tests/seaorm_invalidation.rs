//! SeaORM integration end to end: hooks, modified columns, transactions, bulk helpers and
//! cached queries, each scenario written once and run on SQLite, PostgreSQL and MariaDB, with
//! the Redis and the in-memory backends. Every test has its own database (or schema) and its
//! own Redis prefix, and its own cache through `with_cache`, so tests run in parallel.
#![cfg(feature = "seaorm")]
#![allow(clippy::unwrap_used)]

mod seaorm_blog;
mod support;

use std::future::Future;

use matroska::seaorm::{self, CachedExt, bulk};
use matroska::{Cache, CacheDeps};
use sea_orm::sea_query::Expr;
use sea_orm::{
    ActiveModelTrait, ColumnTrait, ConnectionTrait, DatabaseConnection, DbErr, EntityTrait,
    IntoActiveModel, ModelTrait, PaginatorTrait, QueryFilter, QueryOrder, Set, TransactionTrait,
};

use seaorm_blog::{article, author, create_tables};
use support::db::{Kind, ScratchDb};

/// What a scenario gets: its database (tables created) and its cache, which the hooks use.
struct Env {
    db: ScratchDb,
    cache: Cache,
}

impl Env {
    fn conn(&self) -> &DatabaseConnection {
        &self.db.conn
    }
}

#[derive(Debug, Clone, Copy)]
enum Backend {
    Memory,
    Redis,
}

async fn run<F, Fut>(kind: Kind, backend: Backend, name: &str, scenario: F)
where
    F: FnOnce(Env) -> Fut,
    Fut: Future<Output = ()>,
{
    let db = ScratchDb::new(kind, name).await;
    create_tables(&db.conn).await;
    let cache = match backend {
        Backend::Memory => support::memory_cache(),
        Backend::Redis => support::redis_cache(name).await,
    };
    seaorm::with_cache(cache.clone(), scenario(Env { db, cache })).await;
}

/// One `#[tokio::test]` per database × backend for each scenario.
macro_rules! matrix {
    ($($scenario:ident),* $(,)?) => {$(
        mod $scenario {
            use super::*;
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite_memory() { run(Kind::Sqlite, Backend::Memory, stringify!($scenario), super::$scenario).await }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite_redis() { run(Kind::Sqlite, Backend::Redis, stringify!($scenario), super::$scenario).await }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres_memory() { run(Kind::Postgres, Backend::Memory, stringify!($scenario), super::$scenario).await }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres_redis() { run(Kind::Postgres, Backend::Redis, stringify!($scenario), super::$scenario).await }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn mysql_memory() { run(Kind::MySql, Backend::Memory, stringify!($scenario), super::$scenario).await }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn mysql_redis() { run(Kind::MySql, Backend::Redis, stringify!($scenario), super::$scenario).await }
        }
    )*};
}

matrix!(
    insert_update_delete,
    unwatched_change_keeps_list,
    category_move,
    stale_model_delete,
    transaction_commit_and_rollback,
    bulk_helpers,
    cached_queries_match_uncached,
    lookup_by_id_depends_on_its_key_only,
    with_cache_inside_a_unit_of_work,
    derived_queries,
);

// ---------------------------------------------------------------------------------------
// Helpers

fn new_article(title: &str, category: &str, published: bool, author: i32) -> article::ActiveModel {
    article::ActiveModel {
        title: Set(title.into()),
        category: Set(category.into()),
        published: Set(published),
        author_id: Set(author),
        ..Default::default()
    }
}

async fn new_author(db: &DatabaseConnection, name: &str) -> author::Model {
    author::ActiveModel {
        name: Set(name.into()),
        ..Default::default()
    }
    .insert(db)
    .await
    .expect("insert author")
}

/// The scoped list, from the cache when it is there.
async fn cached_list(env: &Env, condition: &article::ByPublishedCategory) -> Vec<article::Model> {
    article::Entity::find()
        .order_by_asc(article::Column::Id)
        .cached(&env.cache)
        .scoped(condition)
        .all(env.conn())
        .await
        .expect("cached list")
}

/// The same list straight from the database.
async fn db_list(env: &Env, condition: &article::ByPublishedCategory) -> Vec<article::Model> {
    article::Entity::find()
        .filter(condition.filter())
        .order_by_asc(article::Column::Id)
        .all(env.conn())
        .await
        .expect("uncached list")
}

/// Asserts the cached list equals the database's, and returns it.
async fn fresh_list(env: &Env, condition: &article::ByPublishedCategory) -> Vec<article::Model> {
    let cached = cached_list(env, condition).await;
    assert_eq!(
        cached,
        db_list(env, condition).await,
        "cached {condition:?} is stale"
    );
    cached
}

/// Writes an article behind the cache's back (`Entity::insert(..).exec` runs no hooks): a
/// probe that shows whether a list is still served from the cache.
async fn sneak_in(env: &Env, category: &str, author: i32) {
    article::Entity::insert(new_article("sneaked", category, true, author))
        .exec(env.conn())
        .await
        .expect("sneaky insert");
}

fn titles(rows: &[article::Model]) -> Vec<&str> {
    rows.iter().map(|a| a.title.as_str()).collect()
}

// ---------------------------------------------------------------------------------------
// Scenarios

async fn insert_update_delete(env: Env) {
    let db = env.conn();
    let kolypto = new_author(db, "kolypto").await;
    let a = article::published_in("A");
    let first = new_article("Python", "A", true, kolypto.id)
        .insert(db)
        .await
        .unwrap();
    assert_eq!(titles(&fresh_list(&env, &a).await), ["Python"]);
    let by_id = || article::Entity::find_by_id(first.id).cached(&env.cache);
    assert_eq!(by_id().one(db).await.unwrap().unwrap().title, "Python");

    // Insert: the new row enters the cached list.
    let second = new_article("Cache", "A", true, kolypto.id)
        .insert(db)
        .await
        .unwrap();
    assert_eq!(titles(&fresh_list(&env, &a).await), ["Python", "Cache"]);

    // Update of an unwatched column: the row's key drops the list and the single row.
    let mut am = first.clone().into_active_model();
    am.title = Set("Rust".into());
    am.update(db).await.unwrap();
    assert_eq!(titles(&fresh_list(&env, &a).await), ["Rust", "Cache"]);
    assert_eq!(by_id().one(db).await.unwrap().unwrap().title, "Rust");

    // Delete of a loaded model.
    second.delete(db).await.unwrap();
    assert_eq!(titles(&fresh_list(&env, &a).await), ["Rust"]);
    let count = || {
        article::Entity::find()
            .cached(&env.cache)
            .scoped(&a)
            .count(db)
    };
    assert_eq!(count().await.unwrap(), 1);

    // Delete through a partial ActiveModel: the row is read first to know its conditions.
    article::ActiveModel {
        id: Set(first.id),
        ..Default::default()
    }
    .delete(db)
    .await
    .unwrap();
    assert_eq!(count().await.unwrap(), 0);
    assert!(fresh_list(&env, &a).await.is_empty());
    assert_eq!(by_id().one(db).await.unwrap(), None);
}

async fn unwatched_change_keeps_list(env: Env) {
    let db = env.conn();
    let kolypto = new_author(db, "kolypto").await;
    let a = article::published_in("A");
    let in_a = new_article("in A", "A", true, kolypto.id)
        .insert(db)
        .await
        .unwrap();
    let in_b = new_article("in B", "B", true, kolypto.id)
        .insert(db)
        .await
        .unwrap();
    assert_eq!(titles(&fresh_list(&env, &a).await), ["in A"]);
    let count_a = || {
        article::Entity::find()
            .cached(&env.cache)
            .scoped(&a)
            .count(db)
    };
    assert_eq!(count_a().await.unwrap(), 1);

    // The probe: a row written behind the cache's back is not seen while the list is cached.
    sneak_in(&env, "A", kolypto.id).await;
    assert_eq!(titles(&cached_list(&env, &a).await), ["in A"]);
    assert_eq!(count_a().await.unwrap(), 1);

    // Changes to a row of another list, watched or not, keep list A cached.
    let mut am = in_b.clone().into_active_model();
    am.title = Set("in B, renamed".into());
    let in_b = am.update(db).await.unwrap();
    let mut am = in_b.into_active_model();
    am.published = Set(false);
    am.update(db).await.unwrap();
    assert_eq!(
        titles(&cached_list(&env, &a).await),
        ["in A"],
        "list A was dropped"
    );

    // A change to a row of list A (unwatched column) drops it through the row's key.
    let mut am = in_a.into_active_model();
    am.title = Set("in A, renamed".into());
    am.update(db).await.unwrap();
    assert_eq!(
        titles(&fresh_list(&env, &a).await),
        ["in A, renamed", "sneaked"]
    );
    // The count depends on the condition only, which an unwatched column leaves alone.
    assert_eq!(
        count_a().await.unwrap(),
        1,
        "an unwatched change dropped the count"
    );
}

async fn category_move(env: Env) {
    let db = env.conn();
    let kolypto = new_author(db, "kolypto").await;
    let (a, b) = (article::published_in("A"), article::published_in("B"));
    let mover = new_article("mover", "A", true, kolypto.id)
        .insert(db)
        .await
        .unwrap();
    new_article("stayer", "B", true, kolypto.id)
        .insert(db)
        .await
        .unwrap();
    assert_eq!(titles(&fresh_list(&env, &a).await), ["mover"]);
    assert_eq!(titles(&fresh_list(&env, &b).await), ["stayer"]);
    let cache = &env.cache;
    let count = |c: article::ByPublishedCategory| async move {
        article::Entity::find()
            .cached(cache)
            .scoped(&c)
            .count(db)
            .await
            .unwrap()
    };
    assert_eq!((count(a.clone()).await, count(b.clone()).await), (1, 1));

    // Only the category is Set (a partial ActiveModel): the old row is read before the update.
    article::ActiveModel {
        id: Set(mover.id),
        category: Set("B".into()),
        ..Default::default()
    }
    .update(db)
    .await
    .unwrap();
    assert!(fresh_list(&env, &a).await.is_empty());
    assert_eq!(titles(&fresh_list(&env, &b).await), ["mover", "stayer"]);
    assert_eq!((count(a).await, count(b).await), (0, 2));
}

/// A hooked delete of a model loaded before another path moved its row to another category
/// invalidates the row as the database held it at the delete: the count cached for the row's
/// current category (which holds no primary key) drops, without the outbox.
async fn stale_model_delete(env: Env) {
    let db = env.conn();
    let kolypto = new_author(db, "kolypto").await;
    let b = article::published_in("B");
    let stale = new_article("mover", "A", true, kolypto.id)
        .insert(db)
        .await
        .unwrap();
    // Another path moves the row, and invalidates what it changed: the cache is right.
    db.execute_unprepared(&format!(
        "UPDATE article SET category = 'B' WHERE id = {}",
        stale.id
    ))
    .await
    .unwrap();
    seaorm::invalidate_entity::<article::Entity>()
        .await
        .unwrap();
    let cache = &env.cache;
    let count_b = || async {
        article::Entity::find()
            .cached(cache)
            .scoped(&b)
            .count(db)
            .await
            .unwrap()
    };
    assert_eq!(count_b().await, 1);
    // The model still says category A.
    assert_eq!(stale.category, "A");
    stale.delete(db).await.unwrap();
    assert_eq!(
        count_b().await,
        0,
        "the count of B is stale after the delete"
    );
}

async fn transaction_commit_and_rollback(env: Env) {
    let db = env.conn();
    let kolypto = new_author(db, "kolypto").await;
    let a = article::published_in("A");
    let row = new_article("v1", "A", true, kolypto.id)
        .insert(db)
        .await
        .unwrap();

    // Commit: a reader on another connection, while the transaction is open, misses and
    // caches the committed (old) row; the invalidation after the commit drops it.
    let id = row.id;
    let (cache, conn, cond) = (env.cache.clone(), db.clone(), a.clone());
    let seen_inside = seaorm::transaction(db, |txn| {
        Box::pin(async move {
            article::ActiveModel {
                id: Set(id),
                title: Set("v2".into()),
                ..Default::default()
            }
            .update(txn)
            .await?;
            let inside = article::Entity::find()
                .order_by_asc(article::Column::Id)
                .cached(&cache)
                .scoped(&cond)
                .all(&conn)
                .await
                .map_err(DbErr::from)?;
            Ok::<_, DbErr>(inside)
        })
    })
    .await
    .unwrap();
    assert_eq!(
        titles(&seen_inside),
        ["v1"],
        "read committed before the commit"
    );
    assert_eq!(titles(&fresh_list(&env, &a).await), ["v2"]);

    // A reader whose load straddles the commit: it reads v2, the transaction commits v3 and
    // invalidates, then the reader tries to store v2. The stale-set guard refuses it.
    let key = "straddling-reader";
    let (loaded_tx, loaded_rx) = tokio::sync::oneshot::channel::<()>();
    let (go_tx, go_rx) = tokio::sync::oneshot::channel::<()>();
    let reader = {
        let (cache, conn, cond) = (env.cache.clone(), db.clone(), a.clone());
        tokio::spawn(async move {
            cache
                .get_or_load(key, None, || async move {
                    let rows = article::Entity::find()
                        .filter(cond.filter())
                        .all(&conn)
                        .await?;
                    let mut deps = seaorm::row_dependencies(&rows);
                    deps.extend(cond.dependencies());
                    loaded_tx.send(()).ok();
                    go_rx.await.ok();
                    Ok::<_, DbErr>((rows, deps))
                })
                .await
        })
    };
    loaded_rx.await.unwrap();
    seaorm::transaction(db, |txn| {
        Box::pin(async move {
            article::ActiveModel {
                id: Set(id),
                title: Set("v3".into()),
                ..Default::default()
            }
            .update(txn)
            .await
        })
    })
    .await
    .unwrap();
    go_tx.send(()).unwrap();
    let old: Vec<article::Model> = reader.await.unwrap().unwrap();
    assert_eq!(titles(&old), ["v2"]);
    assert_eq!(
        env.cache.get::<Vec<article::Model>>(key).await.unwrap(),
        None,
        "the pre-commit row was cached after the commit"
    );
    assert_eq!(titles(&fresh_list(&env, &a).await), ["v3"]);

    // Rollback: nothing changes in the database, so nothing is invalidated (an entry that
    // depends on the row survives), and the cache still agrees with the database.
    let probe = "depends-on-the-row";
    env.cache
        .put(probe, &1, &[row.primary_key()], None)
        .await
        .unwrap();
    let result = seaorm::transaction(db, |txn| {
        Box::pin(async move {
            article::ActiveModel {
                id: Set(id),
                title: Set("never".into()),
                ..Default::default()
            }
            .update(txn)
            .await?;
            Err::<(), _>(DbErr::Custom("roll back".into()))
        })
    })
    .await;
    assert!(result.is_err());
    assert!(
        env.cache.has(probe).await.unwrap(),
        "a rolled-back update invalidated"
    );
    assert_eq!(titles(&fresh_list(&env, &a).await), ["v3"]);

    // A cached query on the transaction (one not cached yet) reads its uncommitted row and
    // caches it; the rollback drops that entry (the row never existed).
    let newest_first = |cache: &Cache| {
        article::Entity::find()
            .order_by_desc(article::Column::Id)
            .cached(cache)
            .scoped(&a)
    };
    let cache = env.cache.clone();
    let (inside, author) = (newest_first(&cache), kolypto.id);
    let result = seaorm::transaction(db, |txn| {
        Box::pin(async move {
            new_article("phantom", "A", true, author)
                .insert(txn)
                .await?;
            let rows = inside.all(txn).await.map_err(DbErr::from)?;
            assert_eq!(titles(&rows), ["phantom", "v3"]);
            Err::<(), _>(DbErr::Custom("roll back".into()))
        })
    })
    .await;
    assert!(result.is_err());
    assert_eq!(
        titles(&newest_first(&cache).all(db).await.unwrap()),
        ["v3"],
        "the rolled-back row is still cached"
    );
    assert_eq!(titles(&fresh_list(&env, &a).await), ["v3"]);

    // A bare begin()/commit() wrapped in `batch`: invalidated after the commit as well.
    seaorm::batch(async {
        let txn = db.begin().await?;
        article::ActiveModel {
            id: Set(id),
            title: Set("v4".into()),
            ..Default::default()
        }
        .update(&txn)
        .await?;
        txn.commit().await
    })
    .await
    .unwrap();
    assert_eq!(titles(&fresh_list(&env, &a).await), ["v4"]);
}

async fn bulk_helpers(env: Env) {
    let db = env.conn();
    let kolypto = new_author(db, "kolypto").await;
    let (a, b) = (article::published_in("A"), article::published_in("B"));
    let one = new_article("one", "A", true, kolypto.id)
        .insert(db)
        .await
        .unwrap();
    let two = new_article("two", "A", true, kolypto.id)
        .insert(db)
        .await
        .unwrap();
    new_article("three", "B", true, kolypto.id)
        .insert(db)
        .await
        .unwrap();
    let count_a = || {
        article::Entity::find()
            .cached(&env.cache)
            .scoped(&a)
            .count(db)
    };
    assert_eq!(titles(&fresh_list(&env, &a).await), ["one", "two"]);
    assert_eq!(titles(&fresh_list(&env, &b).await), ["three"]);
    assert_eq!(count_a().await.unwrap(), 2);

    // Unwatched column: the rows' keys.
    let n = bulk::update_many::<article::Entity>()
        .col_expr(article::Column::Title, Expr::val("bulk"))
        .filter(article::Column::Category.eq("A"))
        .exec(db)
        .await
        .unwrap();
    assert_eq!(n, 2);
    assert_eq!(titles(&fresh_list(&env, &a).await), ["bulk", "bulk"]);

    // Watched column: the old and new conditions.
    bulk::update_many::<article::Entity>()
        .set(article::Column::Published, false)
        .filter(article::Column::Id.eq(one.id))
        .exec(db)
        .await
        .unwrap();
    assert_eq!(count_a().await.unwrap(), 1);
    bulk::update_many::<article::Entity>()
        .set(article::Column::Category, "B")
        .filter(article::Column::Id.eq(two.id))
        .exec(db)
        .await
        .unwrap();
    assert_eq!(count_a().await.unwrap(), 0);
    assert!(fresh_list(&env, &a).await.is_empty());
    assert_eq!(titles(&fresh_list(&env, &b).await), ["bulk", "three"]);

    // Delete.
    let n = bulk::delete_many::<article::Entity>()
        .filter(article::Column::Category.eq("B"))
        .exec(db)
        .await
        .unwrap();
    assert_eq!(n, 2);
    assert!(fresh_list(&env, &b).await.is_empty());

    // Insert: new rows enter the list.
    let n = bulk::insert_many(
        [
            new_article("four", "A", true, kolypto.id),
            new_article("five", "A", true, kolypto.id),
        ],
        db,
    )
    .await
    .unwrap();
    assert_eq!(n, 2);
    assert_eq!(titles(&fresh_list(&env, &a).await), ["four", "five"]);
    assert_eq!(count_a().await.unwrap(), 2);

    // Raw SQL, then the entity-wide invalidation.
    db.execute_unprepared("UPDATE article SET title = 'raw'")
        .await
        .unwrap();
    seaorm::invalidate_entity::<article::Entity>()
        .await
        .unwrap();
    assert_eq!(titles(&fresh_list(&env, &a).await), ["raw", "raw"]);
}

async fn cached_queries_match_uncached(env: Env) {
    let db = env.conn();
    let kolypto = new_author(db, "kolypto").await;
    let ada = new_author(db, "ada").await;
    for (title, category, published, author) in [
        ("a1", "A", true, &kolypto),
        ("a2", "A", false, &ada),
        ("b1", "B", true, &ada),
        ("b2", "B", true, &kolypto),
        ("c1", "C", true, &kolypto),
    ] {
        new_article(title, category, published, author.id)
            .insert(db)
            .await
            .unwrap();
    }
    let published = || {
        article::Entity::find()
            .filter(article::Column::Published.eq(true))
            .order_by_asc(article::Column::Id)
    };
    let also = || {
        article::Entity::find()
            .find_also_related(author::Entity)
            .order_by_asc(article::Column::Id)
    };
    let with = || {
        author::Entity::find()
            .find_with_related(article::Entity)
            .order_by_asc(author::Column::Id)
            .order_by_asc(article::Column::Id)
    };
    let a = article::published_in("A");

    // Every cached form equals its uncached query, before and after writes that change them.
    let check = |round: &'static str| {
        let (published, also, with, a) = (published, also, with, a.clone());
        let env = &env;
        async move {
            let c = &env.cache;
            assert_eq!(
                published().cached(c).all(db).await.unwrap(),
                published().all(db).await.unwrap(),
                "{round}: all"
            );
            assert_eq!(
                published().cached(c).one(db).await.unwrap(),
                published().one(db).await.unwrap(),
                "{round}: one"
            );
            assert_eq!(
                published().cached(c).count(db).await.unwrap(),
                published().count(db).await.unwrap(),
                "{round}: count"
            );
            for page in 0..3 {
                assert_eq!(
                    published().cached(c).page(db, 2, page).await.unwrap(),
                    published().paginate(db, 2).fetch_page(page).await.unwrap(),
                    "{round}: page {page}"
                );
            }
            assert_eq!(
                published().cached(c).num_pages(db, 2).await.unwrap(),
                published().paginate(db, 2).num_pages().await.unwrap(),
                "{round}: pages"
            );
            assert_eq!(
                also().cached(c).all(db).await.unwrap(),
                also().all(db).await.unwrap(),
                "{round}: find_also_related"
            );
            assert_eq!(
                also().cached(c).one(db).await.unwrap(),
                also().one(db).await.unwrap(),
                "{round}: find_also_related one"
            );
            assert_eq!(
                with().cached(c).all(db).await.unwrap(),
                with().all(db).await.unwrap(),
                "{round}: find_with_related"
            );
            fresh_list(env, &a).await;
            published().cached(c).count(db).await.unwrap()
        }
    };
    let before = check("initial").await;
    assert_eq!(check("cached").await, before);

    // A new row enters every filter: each cached query changes.
    new_article("a3", "A", true, kolypto.id)
        .insert(db)
        .await
        .unwrap();
    assert_eq!(check("after insert").await, before + 1);

    // A related row changes: the joined queries see it through its key.
    let mut am = ada.into_active_model();
    am.name = Set("Ada Lovelace".into());
    am.update(db).await.unwrap();
    check("after author update").await;

    // A row leaves the filters.
    let first = published().one(db).await.unwrap().unwrap();
    let mut am = first.into_active_model();
    am.published = Set(false);
    am.update(db).await.unwrap();
    assert_eq!(check("after unpublish").await, before);

    // A related row is deleted (after its articles).
    let gone = author::Entity::find_by_id(kolypto.id)
        .one(db)
        .await
        .unwrap()
        .unwrap();
    for article in gone.find_related(article::Entity).all(db).await.unwrap() {
        article.delete(db).await.unwrap();
    }
    gone.delete(db).await.unwrap();
    check("after deletes").await;
}

/// `query::find_by_id` depends on its row's key: saving another row keeps it, saving its row
/// (or creating the row a cached miss asked for) drops it.
async fn lookup_by_id_depends_on_its_key_only(env: Env) {
    use matroska::seaorm::query::{find_by_id, find_by_id_key};
    let db = env.conn();
    let key = |id| async move {
        find_by_id_key::<article::Entity, _>(db, id)
            .await
            .unwrap()
            .unwrap()
    };
    let kolypto = new_author(db, "kolypto").await;
    let first = new_article("Python", "A", true, kolypto.id)
        .insert(db)
        .await
        .unwrap();
    let second = new_article("Cache", "B", true, kolypto.id)
        .insert(db)
        .await
        .unwrap();
    let lookup = |id| find_by_id::<article::Entity, _>(&env.cache, db, id);

    assert_eq!(lookup(first.id).await.unwrap().unwrap().title, "Python");
    assert!(env.cache.has(&key(first.id).await).await.unwrap());

    // Another row's save leaves the entry cached.
    let mut am = second.clone().into_active_model();
    am.title = Set("Caching".into());
    am.update(db).await.unwrap();
    assert!(env.cache.has(&key(first.id).await).await.unwrap());

    // Its own row's save drops it, and the next lookup sees the change.
    let mut am = first.clone().into_active_model();
    am.title = Set("Rust".into());
    am.update(db).await.unwrap();
    assert!(!env.cache.has(&key(first.id).await).await.unwrap());
    assert_eq!(lookup(first.id).await.unwrap().unwrap().title, "Rust");

    // A cached miss is dropped by the insert of that key.
    let next = second.id + 100;
    assert_eq!(lookup(next).await.unwrap(), None);
    assert!(env.cache.has(&key(next).await).await.unwrap());
    article::ActiveModel {
        id: Set(next),
        ..new_article("Late", "A", true, kolypto.id)
    }
    .insert(db)
    .await
    .unwrap();
    assert_eq!(lookup(next).await.unwrap().unwrap().title, "Late");

    // Deleting the row drops it too.
    let id = first.id;
    first.delete(db).await.unwrap();
    assert_eq!(lookup(id).await.unwrap(), None);
}

/// A `with_cache` inside a `transaction` or `batch` sends the invalidations of the saves it
/// wraps to its own cache, at the end of the unit of work; the others go to the cache
/// current outside.
async fn with_cache_inside_a_unit_of_work(env: Env) {
    let db = env.conn();
    let kolypto = new_author(db, "kolypto").await;
    let a = article::published_in("A");
    let row = new_article("v1", "A", true, kolypto.id)
        .insert(db)
        .await
        .unwrap();
    let other = support::memory_cache();
    // Both caches hold the list.
    let in_other = async |env: &Env| {
        article::Entity::find()
            .order_by_asc(article::Column::Id)
            .cached(&other)
            .scoped(&a)
            .all(env.conn())
            .await
            .unwrap()
    };
    assert_eq!(titles(&in_other(&env).await), ["v1"]);
    assert_eq!(titles(&fresh_list(&env, &a).await), ["v1"]);

    let (id, other_cache, author) = (row.id, other.clone(), kolypto.id);
    seaorm::transaction(db, |txn| {
        Box::pin(async move {
            seaorm::with_cache(other_cache, async {
                article::ActiveModel {
                    id: Set(id),
                    title: Set("v2".into()),
                    ..Default::default()
                }
                .update(txn)
                .await
            })
            .await?;
            new_article("outer", "A", true, author).insert(txn).await?;
            Ok::<_, DbErr>(())
        })
    })
    .await
    .unwrap();
    assert_eq!(
        titles(&in_other(&env).await),
        ["v2", "outer"],
        "the inner cache is stale"
    );
    assert_eq!(titles(&fresh_list(&env, &a).await), ["v2", "outer"]);

    seaorm::batch(async {
        seaorm::with_cache(other.clone(), async {
            article::ActiveModel {
                id: Set(id),
                title: Set("v3".into()),
                ..Default::default()
            }
            .update(db)
            .await
        })
        .await
    })
    .await
    .unwrap();
    assert_eq!(titles(&in_other(&env).await), ["v3", "outer"]);

    // A nested transaction rolls back to its savepoint after a query cached its
    // uncommitted row in `other`; the outer one commits: that entry goes too.
    let newest_first = || {
        article::Entity::find()
            .order_by_desc(article::Column::Id)
            .cached(&other)
            .scoped(&a)
    };
    let inside = newest_first();
    seaorm::transaction(db, |txn| {
        Box::pin(async move {
            let inner = seaorm::transaction(txn, |txn| {
                Box::pin(async move {
                    new_article("phantom", "A", true, author)
                        .insert(txn)
                        .await?;
                    let rows = inside.all(txn).await.map_err(DbErr::from)?;
                    assert_eq!(titles(&rows), ["phantom", "outer", "v3"]);
                    Err::<(), _>(DbErr::Custom("roll back".into()))
                })
            })
            .await;
            assert!(inner.is_err());
            Ok::<_, DbErr>(())
        })
    })
    .await
    .unwrap();
    assert_eq!(
        titles(&newest_first().all(db).await.unwrap()),
        ["outer", "v3"],
        "the row rolled back to the savepoint is still cached"
    );
}

/// `.derived()` selects: a key list (`is_in` on the primary key, ordered by an unwatched
/// column) depends on its keys only, a filter on a declared scope's fields on its conditions
/// (as `.scoped`), anything else on every write. A write behind the hooks' back
/// (`update_many`, no hooks) shows whether an entry is still served.
async fn derived_queries(env: Env) {
    let db = env.conn();
    let kolypto = new_author(db, "kolypto").await;
    let first = new_article("Python", "A", true, kolypto.id)
        .insert(db)
        .await
        .unwrap();
    let second = new_article("Cache", "B", true, kolypto.id)
        .insert(db)
        .await
        .unwrap();
    let missing = second.id + 100;
    let ids = [first.id, missing];
    let by_ids = || {
        article::Entity::find()
            .filter(article::Column::Id.is_in(ids))
            .order_by_asc(article::Column::Title)
            .cached(&env.cache)
            .derived()
    };
    let db_by_ids = || async {
        article::Entity::find()
            .filter(article::Column::Id.is_in(ids))
            .order_by_asc(article::Column::Title)
            .all(db)
            .await
            .unwrap()
    };
    let fresh = || async {
        let cached = by_ids().all(db).await.unwrap();
        assert_eq!(cached, db_by_ids().await, "stale key list");
        assert_eq!(
            by_ids().count(db).await.unwrap(),
            cached.len() as u64,
            "stale key count"
        );
        cached
    };
    let sneak_title = |id: i32, title: &'static str| async move {
        article::Entity::update_many()
            .col_expr(article::Column::Title, Expr::val(title))
            .filter(article::Column::Id.eq(id))
            .exec(db)
            .await
            .unwrap();
    };
    assert_eq!(
        by_ids().explain(db.get_database_backend()).to_string(),
        "derived: 2 primary key(s)"
    );
    assert_eq!(titles(&fresh().await), ["Python"]);

    // Another row's saves (an unwatched and a watched column) and a new row keep the list.
    let mut am = second.clone().into_active_model();
    am.title = Set("Caching".into());
    am.category = Set("A".into());
    am.update(db).await.unwrap();
    new_article("Other", "A", true, kolypto.id)
        .insert(db)
        .await
        .unwrap();
    sneak_title(first.id, "sneaked").await;
    assert_eq!(
        titles(&by_ids().all(db).await.unwrap()),
        ["Python"],
        "a write outside the list dropped it"
    );

    // A listed row's save drops it.
    let mut am = first.clone().into_active_model();
    am.title = Set("Rust".into());
    let first = am.update(db).await.unwrap();
    assert_eq!(titles(&fresh().await), ["Rust"]);
    // The insert of a listed key that was missing drops it.
    article::ActiveModel {
        id: Set(missing),
        ..new_article("Late", "B", false, kolypto.id)
    }
    .insert(db)
    .await
    .unwrap();
    assert_eq!(titles(&fresh().await), ["Late", "Rust"]);
    // So do a bulk update and a delete.
    bulk::update_many::<article::Entity>()
        .col_expr(article::Column::Title, Expr::val("Bulk"))
        .filter(article::Column::Id.eq(missing))
        .exec(db)
        .await
        .unwrap();
    assert_eq!(titles(&fresh().await), ["Bulk", "Rust"]);
    first.delete(db).await.unwrap();
    assert_eq!(titles(&fresh().await), ["Bulk"]);

    // A declared scope's fields: what `.scoped` gives, and an entering row drops it.
    let scope = || {
        article::Entity::find()
            .filter(article::Column::Published.eq(true))
            .filter(article::Column::Category.eq("A"))
            .order_by_asc(article::Column::Id)
            .cached(&env.cache)
            .derived()
    };
    let explained = scope().explain(db.get_database_backend());
    let mut got = explained.dependencies.clone();
    let mut want = article::published_in("A").dependencies();
    got.sort();
    want.sort();
    assert_eq!(got, want, "{explained}");
    let scope_db = || async {
        article::Entity::find()
            .filter(article::published_in("A").filter())
            .order_by_asc(article::Column::Id)
            .all(db)
            .await
            .unwrap()
    };
    assert_eq!(scope().all(db).await.unwrap(), scope_db().await);
    // A row of another list: kept (the sneaked title shows it).
    let b_row = new_article("B1", "B", true, kolypto.id)
        .insert(db)
        .await
        .unwrap();
    let listed = scope().all(db).await.unwrap();
    let id = listed[0].id;
    sneak_title(id, "sneaked").await;
    let mut am = b_row.clone().into_active_model();
    am.title = Set("B2".into());
    am.update(db).await.unwrap();
    assert_eq!(
        scope().all(db).await.unwrap(),
        listed,
        "dropped by another list's row"
    );
    // Moving that row into the scope drops it.
    let mut am = b_row.into_active_model();
    am.category = Set("A".into());
    am.update(db).await.unwrap();
    assert_eq!(scope().all(db).await.unwrap(), scope_db().await);

    // Outside the subset: coarse, any save drops it.
    let titled = || {
        article::Entity::find()
            .filter(article::Column::Title.like("%a%"))
            .order_by_asc(article::Column::Id)
            .cached(&env.cache)
            .derived()
    };
    let explained = titled().explain(db.get_database_backend());
    assert!(explained.is_coarse(), "{explained}");
    let titled_db = || async {
        article::Entity::find()
            .filter(article::Column::Title.like("%a%"))
            .order_by_asc(article::Column::Id)
            .all(db)
            .await
            .unwrap()
    };
    assert_eq!(titled().all(db).await.unwrap(), titled_db().await);
    sneak_title(id, "sneaked again").await;
    let author = new_author(db, "unrelated").await;
    new_article("zzz", "C", false, author.id)
        .insert(db)
        .await
        .unwrap();
    assert_eq!(titled().all(db).await.unwrap(), titled_db().await);
}
