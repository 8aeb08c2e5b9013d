//! Migrations around the outbox, on SQLite, PostgreSQL and MariaDB: a database migrated
//! fresh with a seed before the outbox's migration, a rollback past the outbox's migration
//! (uninstall) with writes while it is uninstalled, the re-install — through the Rust
//! installer and through the migration text of `install_sql` — and the idempotent re-run of
//! the install at every start-up.
//!
//! The cache is another process's (a consumer of the outbox through its relay); the
//! migrating code registers **no cache for the hooks**, as a migration CLI. Stale reads are
//! checked by comparing what the cache serves (cached `find_by_id` of every id ever
//! written, and a scoped list) with what the database holds.
#![cfg(feature = "seaorm")]
#![allow(clippy::unwrap_used)]

mod seaorm_blog;
mod support;

use matroska::outbox::{Dialect, Outbox};
use matroska::seaorm::{self, CachedExt, outbox};
use matroska::{Cache, Dependency, ScopeMode, WatchedTable};
use sea_orm::{
    ActiveModelTrait, ColumnTrait, ConnectionTrait, DatabaseConnection, EntityTrait, ModelTrait,
    PaginatorTrait, QueryFilter, Set,
};

use seaorm_blog::{article, author, create_tables};
use support::db::{Kind, ScratchDb};

/// The ids the tests write (and read through the cache, present or not).
const IDS: std::ops::RangeInclusive<i32> = 1..=15;
/// An entry depending on exactly what a whole-table (`T`) row of `article` invalidates.
const WHOLE: &str = "whole-article-probe";

fn specs() -> [matroska::TableSpec; 2] {
    [
        article::Model::watched_table(),
        author::Model::watched_table(),
    ]
}

fn dialect(db: &ScratchDb) -> Dialect {
    match db.kind {
        Kind::Postgres => Dialect::Postgres,
        Kind::MySql => Dialect::MySql,
        Kind::Sqlite => Dialect::Sqlite,
    }
}

async fn exec(db: &DatabaseConnection, sql: &str) {
    db.execute_unprepared(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
}

/// A relay of `cache` over `db`, as another process runs it. Production mode: while the
/// outbox is uninstalled it delivers (coarsely) instead of refusing.
fn relay(db: &ScratchDb, cache: &Cache) -> outbox::Relay {
    outbox::relay(&db.conn, cache.clone())
        .unwrap()
        .watch_type::<article::Model>()
        .watch_type::<author::Model>()
        .mode(ScopeMode::Production)
        .build()
}

/// One author and an article per id (hooked inserts, no cache registered for the hooks).
async fn seed(db: &DatabaseConnection, title: &str, ids: std::ops::RangeInclusive<i32>) {
    let author = author::ActiveModel {
        name: Set(format!("author {title}")),
        ..Default::default()
    }
    .insert(db)
    .await
    .unwrap();
    for id in ids {
        article::ActiveModel {
            id: Set(id),
            title: Set(format!("{title} {id}")),
            category: Set("fantasy".into()),
            published: Set(true),
            author_id: Set(author.id),
        }
        .insert(db)
        .await
        .unwrap();
    }
}

/// Reads every id and the published fantasy list through the cache (filling it), and the
/// probe entry.
async fn fill(cache: &Cache, db: &DatabaseConnection) {
    for id in IDS {
        seaorm::query::find_by_id::<article::Entity, _>(cache, db, id)
            .await
            .unwrap();
    }
    fantasy(cache, db).await;
    let whole = [
        Dependency::invalidate_all("article"),
        Dependency::any_change("article"),
    ];
    cache.put(WHOLE, &1, &whole, None).await.unwrap();
}

async fn fantasy(cache: &Cache, db: &DatabaseConnection) -> Vec<article::Model> {
    let condition = article::published_in("fantasy");
    let mut rows = article::Entity::find()
        .filter(condition.filter())
        .cached(cache)
        .scoped(&condition)
        .all(db)
        .await
        .unwrap();
    rows.sort_by_key(|m| m.id);
    rows
}

/// What the cache serves that the database no longer holds.
async fn stale(cache: &Cache, db: &DatabaseConnection) -> Vec<String> {
    let mut out = Vec::new();
    for id in IDS {
        let cached = seaorm::query::find_by_id::<article::Entity, _>(cache, db, id)
            .await
            .unwrap();
        let fresh = article::Entity::find_by_id(id).one(db).await.unwrap();
        if cached != fresh {
            out.push(format!("id {id}: cached {cached:?}, database {fresh:?}"));
        }
    }
    let mut fresh = article::Entity::find()
        .filter(article::published_in("fantasy").filter())
        .all(db)
        .await
        .unwrap();
    fresh.sort_by_key(|m| m.id);
    let cached = fantasy(cache, db).await;
    if cached != fresh {
        out.push(format!(
            "fantasy list: cached {} rows, database {}",
            cached.len(),
            fresh.len()
        ));
    }
    out
}

/// A database that served cached reads: tables, outbox, the other process's relay (its
/// consumer registered), articles 1..=15, and the cache filled.
async fn served(kind: Kind, name: &str) -> (ScratchDb, Cache, outbox::Relay) {
    let db = ScratchDb::new(kind, name).await;
    create_tables(&db.conn).await;
    outbox::install(&db.conn, &specs()).await.unwrap();
    let cache = support::memory_cache();
    let relay = relay(&db, &cache);
    relay.drain().await.unwrap();
    seed(&db.conn, "first", IDS).await;
    relay.drain().await.unwrap();
    fill(&cache, &db.conn).await;
    assert!(stale(&cache, &db.conn).await.is_empty());
    (db, cache, relay)
}

/// The rows a rolled-back migration's `down` and a `psql` session write while the outbox is
/// uninstalled: a `delete_many` (no hooks), a raw update.
async fn unrecorded_writes(db: &DatabaseConnection) {
    article::Entity::delete_many()
        .filter(article::Column::Id.between(1, 5))
        .exec(db)
        .await
        .unwrap();
    exec(db, "UPDATE article SET category = 'sci-fi' WHERE id = 6").await;
}

/// Rollback past the outbox's migration, raw writes, migrate up again with the Rust
/// installer: the re-install invalidates everything cached from the tables. Before it, the
/// same writes are served stale (the test can tell).
async fn rollback_and_reinstall(kind: Kind) {
    let (db, cache, relay) = served(kind, "rollback").await;
    outbox::uninstall(&db.conn, &["article", "author"])
        .await
        .unwrap();
    unrecorded_writes(&db.conn).await;
    relay.drain().await.unwrap();
    assert!(
        !stale(&cache, &db.conn).await.is_empty(),
        "{kind:?}: the writes made while the outbox was uninstalled were invalidated by \
         something else: this test cannot see what the re-install does"
    );
    outbox::install(&db.conn, &specs()).await.unwrap();
    relay.drain().await.unwrap();
    let left = stale(&cache, &db.conn).await;
    assert!(
        left.is_empty(),
        "{kind:?}: stale after re-install: {left:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollback_and_reinstall_sqlite() {
    rollback_and_reinstall(Kind::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollback_and_reinstall_postgres() {
    rollback_and_reinstall(Kind::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollback_and_reinstall_mysql() {
    rollback_and_reinstall(Kind::MySql).await;
}

/// The same through the migration text (a Diesel `down.sql` / `up.sql`, a SeaORM migration's
/// `execute_unprepared`): `uninstall_sql`, raw writes, `install_sql`.
async fn rollback_and_reinstall_as_sql(kind: Kind) {
    let (db, cache, relay) = served(kind, "rollback_sql").await;
    let outbox = Outbox::default();
    for sql in outbox.uninstall_sql(dialect(&db), &["article", "author"]) {
        exec(&db.conn, &sql).await;
    }
    unrecorded_writes(&db.conn).await;
    relay.drain().await.unwrap();
    assert!(!stale(&cache, &db.conn).await.is_empty(), "{kind:?}");
    for sql in outbox.install_sql(dialect(&db), &specs()).unwrap() {
        exec(&db.conn, &sql).await;
    }
    relay.drain().await.unwrap();
    let left = stale(&cache, &db.conn).await;
    assert!(
        left.is_empty(),
        "{kind:?}: stale after install_sql: {left:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollback_and_reinstall_as_sql_sqlite() {
    rollback_and_reinstall_as_sql(Kind::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollback_and_reinstall_as_sql_postgres() {
    rollback_and_reinstall_as_sql(Kind::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollback_and_reinstall_as_sql_mysql() {
    rollback_and_reinstall_as_sql(Kind::MySql).await;
}

/// While the outbox is uninstalled (its tables stay), hooked writes with no cache registered
/// are refused before they write (nothing would record them in their own transaction), and
/// nothing cached goes stale.
async fn hooked_writes_while_uninstalled(kind: Kind) {
    let (db, cache, relay) = served(kind, "hooked_uninstalled").await;
    outbox::uninstall(&db.conn, &["article", "author"])
        .await
        .unwrap();
    let row = article::Entity::find_by_id(7).one(&db.conn).await.unwrap();
    let mut row: article::ActiveModel = row.unwrap().into();
    row.category = Set("sci-fi".into());
    let refused = row.update(&db.conn).await.unwrap_err().to_string();
    assert!(
        refused.contains("no matroska cache is registered") && refused.contains("`article`"),
        "{kind:?}: {refused}"
    );
    let refused = article::Entity::find_by_id(8)
        .one(&db.conn)
        .await
        .unwrap()
        .unwrap()
        .delete(&db.conn)
        .await
        .unwrap_err()
        .to_string();
    assert!(refused.contains("`article`"), "{kind:?}: {refused}");
    assert_eq!(
        article::Entity::find_by_id(8)
            .one(&db.conn)
            .await
            .unwrap()
            .map(|a| a.id),
        Some(8),
        "{kind:?}: the refused delete reached the database"
    );
    relay.drain().await.unwrap();
    let left = stale(&cache, &db.conn).await;
    assert!(
        left.is_empty(),
        "{kind:?}: hooked writes without a cache, outbox uninstalled: {left:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hooked_writes_while_uninstalled_sqlite() {
    hooked_writes_while_uninstalled(Kind::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hooked_writes_while_uninstalled_postgres() {
    hooked_writes_while_uninstalled(Kind::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hooked_writes_while_uninstalled_mysql() {
    hooked_writes_while_uninstalled(Kind::MySql).await;
}

/// `migrate fresh`: every table dropped (the outbox's too) and migrated again while the other
/// process's relay runs. A seed before the outbox's migration, with no cache registered, is
/// refused with a clear error (no panic, nothing written); in the documented order (outbox
/// right after the tables, then the seed) it goes through, and nothing of the 15 dropped
/// rows is served afterwards.
async fn migrate_fresh(kind: Kind) {
    let (db, cache, relay) = served(kind, "fresh").await;
    exec(&db.conn, "DROP TABLE article").await;
    exec(&db.conn, "DROP TABLE author").await;
    for sql in Outbox::default().drop_tables_sql(dialect(&db)) {
        exec(&db.conn, &sql).await;
    }
    create_tables(&db.conn).await;

    // Seed before the outbox: refused before it writes.
    let refused = author::ActiveModel {
        name: Set("seed".into()),
        ..Default::default()
    }
    .insert(&db.conn)
    .await
    .unwrap_err()
    .to_string();
    for part in [
        "no matroska cache is registered",
        "`author`",
        "install the outbox",
    ] {
        assert!(refused.contains(part), "{kind:?}: {refused}");
    }
    assert_eq!(author::Entity::find().count(&db.conn).await.unwrap(), 0);

    // The documented order: outbox, then seed (ids 1..=10 again, other titles).
    outbox::install(&db.conn, &specs()).await.unwrap();
    seed(&db.conn, "second", 1..=10).await;
    relay.drain().await.unwrap();
    let left = stale(&cache, &db.conn).await;
    assert!(
        left.is_empty(),
        "{kind:?}: stale after migrate fresh: {left:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_fresh_sqlite() {
    migrate_fresh(Kind::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_fresh_postgres() {
    migrate_fresh(Kind::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_fresh_mysql() {
    migrate_fresh(Kind::MySql).await;
}

/// A fresh database whose seed migration runs before the outbox's, in a process that
/// registers its cache before migrating (the other way to order them): the seed's hooks
/// invalidate that cache, the install that follows finds no triggers and, with the consumer
/// registered, invalidates the tables once more; nothing is stale and nothing panics.
async fn seed_before_outbox_with_a_cache(kind: Kind) {
    let db = ScratchDb::new(kind, "seed_first").await;
    create_tables(&db.conn).await;
    let cache = support::memory_cache();
    // The cache already holds reads of these ids (a shared Redis, say): misses.
    fill(&cache, &db.conn).await;
    seaorm::with_cache(cache.clone(), async {
        seed(&db.conn, "seed", IDS).await;
        outbox::install(&db.conn, &specs()).await.unwrap();
    })
    .await;
    relay(&db, &cache).drain().await.unwrap();
    let left = stale(&cache, &db.conn).await;
    assert!(left.is_empty(), "{kind:?}: {left:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_before_outbox_with_a_cache_sqlite() {
    seed_before_outbox_with_a_cache(Kind::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_before_outbox_with_a_cache_postgres() {
    seed_before_outbox_with_a_cache(Kind::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_before_outbox_with_a_cache_mysql() {
    seed_before_outbox_with_a_cache(Kind::MySql).await;
}

/// Re-running the install at every start-up, with nothing changed, invalidates nothing;
/// repairing a dropped trigger invalidates the table once (what was written meanwhile is not
/// recorded), and the repair is then up to date again.
async fn idempotent_install_keeps_the_cache(kind: Kind) {
    let (db, cache, relay) = served(kind, "idempotent").await;
    for _ in 0..3 {
        outbox::install(&db.conn, &specs()).await.unwrap();
    }
    assert_eq!(relay.drain().await.unwrap(), 0, "{kind:?}: rows written");
    assert!(
        cache.has(WHOLE).await.unwrap(),
        "{kind:?}: an up-to-date install invalidated the table"
    );
    // An upgrade of intact triggers (a model gained a scope column): they recorded every
    // write until the swap, so nothing is invalidated either.
    let grown = article::Model::watched_table()
        .scope(&[("title", matroska::ColumnDecoder::of::<String>())], false);
    outbox::install(&db.conn, &[grown, author::Model::watched_table()])
        .await
        .unwrap();
    assert_eq!(relay.drain().await.unwrap(), 0, "{kind:?}: rows written");
    assert!(
        cache.has(WHOLE).await.unwrap(),
        "{kind:?}: upgrading intact triggers invalidated the table"
    );

    // One trigger dropped by hand (the update trigger: whatever its generation's name).
    let names = Outbox::default();
    let present = names.triggers_present_sql(dialect(&db), "article");
    let count = || async {
        db.conn
            .query_one_raw(sea_orm::Statement::from_string(
                db.backend(),
                present.clone(),
            ))
            .await
            .unwrap()
            .unwrap()
            .try_get_by_index::<i64>(0)
            .unwrap()
    };
    let before = count().await;
    let drop = match kind {
        Kind::Postgres => "DO $$ DECLARE t text; BEGIN SELECT tgname INTO t FROM pg_trigger \
             WHERE tgrelid = 'article'::regclass AND tgname LIKE 'matroska_outbox_%_u' LIMIT 1; \
             EXECUTE format('DROP TRIGGER %I ON article', t); END $$"
            .to_owned(),
        Kind::MySql | Kind::Sqlite => {
            let sql = "SELECT name FROM sqlite_master WHERE type = 'trigger' AND tbl_name = 'article' \
                 AND name LIKE 'matroska!_outbox!_%!_u%' ESCAPE '!' LIMIT 1";
            let sql = if kind == Kind::MySql {
                "SELECT TRIGGER_NAME FROM information_schema.TRIGGERS WHERE \
                 EVENT_OBJECT_SCHEMA = DATABASE() AND EVENT_OBJECT_TABLE = 'article' AND \
                 TRIGGER_NAME LIKE 'matroska!_outbox!_%!_u%' ESCAPE '!' LIMIT 1"
            } else {
                sql
            };
            let row = db
                .conn
                .query_one_raw(sea_orm::Statement::from_string(db.backend(), sql))
                .await
                .unwrap()
                .unwrap();
            let name: String = row.try_get_by_index(0).unwrap();
            if kind == Kind::MySql {
                format!("DROP TRIGGER `{name}`")
            } else {
                format!("DROP TRIGGER \"{name}\"")
            }
        }
    };
    exec(&db.conn, &drop).await;
    assert!(count().await < before, "{kind:?}: no trigger was dropped");
    exec(
        &db.conn,
        "UPDATE article SET category = 'sci-fi' WHERE id = 9",
    )
    .await;
    outbox::install(&db.conn, &specs()).await.unwrap();
    relay.drain().await.unwrap();
    assert!(
        !cache.has(WHOLE).await.unwrap(),
        "{kind:?}: the repair did not invalidate the table"
    );
    let left = stale(&cache, &db.conn).await;
    assert!(
        left.is_empty(),
        "{kind:?}: stale after the repair: {left:#?}"
    );

    cache
        .put(WHOLE, &1, &[Dependency::invalidate_all("article")], None)
        .await
        .unwrap();
    outbox::install(&db.conn, &specs()).await.unwrap();
    assert_eq!(relay.drain().await.unwrap(), 0, "{kind:?}");
    assert!(cache.has(WHOLE).await.unwrap(), "{kind:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotent_install_keeps_the_cache_sqlite() {
    idempotent_install_keeps_the_cache(Kind::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotent_install_keeps_the_cache_postgres() {
    idempotent_install_keeps_the_cache(Kind::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotent_install_keeps_the_cache_mysql() {
    idempotent_install_keeps_the_cache(Kind::MySql).await;
}
