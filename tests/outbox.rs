//! No write escapes: every write path, on SQLite, PostgreSQL and MariaDB, is invalidated by
//! the outbox triggers and the relay — with **no cache registered for the hooks** (as in a
//! migration, a CLI or another service), so nothing but the outbox can invalidate.
//!
//! Each scenario caches, with the derive's own dependencies, a list of published fantasy
//! articles, a list of published sci-fi articles, and two rows; performs one kind of write;
//! then waits (bounded poll) until the entries the write affects are gone, and checks, once the
//! outbox is empty, that the unaffected ones are still cached and that the cached queries
//! answer what the database holds.
#![cfg(feature = "seaorm")]
#![allow(clippy::unwrap_used)]

mod seaorm_blog;
mod support;

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use matroska::backend::memory::MemoryBackend;
use matroska::backend::{Backend, PutOutcome, PutRequest, Ticket};
use matroska::seaorm::{self, CachedExt, outbox};
use matroska::{Cache, CacheDeps, WatchedTable};
use sea_orm::sea_query::Expr;
use sea_orm::{
    ActiveModelTrait, ColumnTrait, ConnectionTrait, Database, DatabaseConnection, EntityTrait,
    IntoActiveModel, QueryFilter, Set, TransactionTrait,
};

use seaorm_blog::{article, author, create_tables};
use support::db::{Kind, ScratchDb};

const FANTASY: &str = "fantasy-list";
const SCI_FI: &str = "sci-fi-list";
const ROW_A: &str = "row-a";
const ROW_B: &str = "row-b";

struct Env {
    db: ScratchDb,
    cache: Cache,
    relay: outbox::RelayHandle,
    /// A published fantasy article (`ROW_A`) and a published sci-fi one (`ROW_B`).
    a: article::Model,
    b: article::Model,
    author: i32,
}

impl Env {
    fn conn(&self) -> &DatabaseConnection {
        &self.db.conn
    }

    /// Caches the four probes with the dependencies cached queries use.
    async fn fill(&self) {
        let fantasy = article::published_in("fantasy").dependencies();
        let sci_fi = article::published_in("sci-fi").dependencies();
        let c = &self.cache;
        c.put(FANTASY, &1, &fantasy, None).await.unwrap();
        c.put(SCI_FI, &1, &sci_fi, None).await.unwrap();
        c.put(ROW_A, &1, &[self.a.primary_key()], None)
            .await
            .unwrap();
        c.put(ROW_B, &1, &[self.b.primary_key()], None)
            .await
            .unwrap();
    }

    /// Waits until every key of `gone` is dropped (bounded), then until the outbox is
    /// empty, then checks every key of `kept` is still cached.
    async fn expect(&self, gone: &[&str], kept: &[&str]) {
        support::relay::expect(&self.cache, &self.relay, gone, kept).await;
    }

    async fn wait_idle(&self) {
        support::relay::wait_idle(&self.relay).await;
    }

    /// The cached list of published fantasy articles equals the database's.
    async fn assert_fresh(&self) {
        let condition = article::published_in("fantasy");
        let query = || article::Entity::find().filter(condition.filter());
        let mut cached = query()
            .cached(&self.cache)
            .scoped(&condition)
            .all(self.conn())
            .await
            .unwrap();
        let mut db = query().all(self.conn()).await.unwrap();
        cached.sort_by_key(|m| m.id);
        db.sort_by_key(|m| m.id);
        assert_eq!(cached, db);
    }
}

async fn insert_article(
    db: &impl ConnectionTrait,
    title: &str,
    category: &str,
    author: i32,
) -> article::Model {
    article::ActiveModel {
        title: Set(title.into()),
        category: Set(category.into()),
        published: Set(true),
        author_id: Set(author),
        ..Default::default()
    }
    .insert(db)
    .await
    .unwrap()
}

async fn run<F, Fut>(kind: Kind, name: &str, scenario: F)
where
    F: FnOnce(Env) -> Fut,
    Fut: Future<Output = ()>,
{
    let db = ScratchDb::new(kind, name).await;
    create_tables(&db.conn).await;
    outbox::install(
        &db.conn,
        &[
            article::Model::watched_table(),
            author::Model::watched_table(),
        ],
    )
    .await
    .unwrap();
    // Installing twice is a no-op (idempotent), as a migration re-run or every start-up.
    outbox::install(&db.conn, &[article::Model::watched_table()])
        .await
        .unwrap();
    let cache = support::redis_cache(name).await;
    let author = author::ActiveModel {
        name: Set("kolypto".into()),
        ..Default::default()
    }
    .insert(&db.conn)
    .await
    .unwrap();
    let a = insert_article(&db.conn, "A", "fantasy", author.id).await;
    let b = insert_article(&db.conn, "B", "sci-fi", author.id).await;
    let relay = outbox::relay(&db.conn, cache.clone())
        .unwrap()
        .watch_type::<article::Model>()
        .watch_type::<author::Model>()
        .build()
        .spawn();
    let env = Env {
        db,
        cache,
        relay,
        a,
        b,
        author: author.id,
    };
    env.wait_idle().await;
    env.fill().await;
    scenario(env).await;
}

macro_rules! matrix {
    ($($scenario:ident),* $(,)?) => {$(
        mod $scenario {
            use super::*;
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() { run(Kind::Sqlite, stringify!($scenario), super::$scenario).await }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() { run(Kind::Postgres, stringify!($scenario), super::$scenario).await }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn mysql() { run(Kind::MySql, stringify!($scenario), super::$scenario).await }
        }
    )*};
}

matrix!(
    hooked_insert,
    hooked_unwatched_update,
    hooked_watched_update,
    hooked_delete,
    insert_many,
    update_many,
    delete_many,
    delete_by_id,
    entity_insert_exec,
    entity_update_exec,
    raw_sql,
    another_connection,
    seaorm_transaction,
    begin_commit,
    rollback_invalidates_nothing,
    dropped_save,
    killed_writer,
    primary_key_change,
);

async fn hooked_insert(env: Env) {
    insert_article(env.conn(), "C", "fantasy", env.author).await;
    env.expect(&[FANTASY], &[SCI_FI, ROW_A, ROW_B]).await;
    env.assert_fresh().await;
}

async fn hooked_unwatched_update(env: Env) {
    let mut am = env.a.clone().into_active_model();
    am.title = Set("A, revised".into());
    am.update(env.conn()).await.unwrap();
    // Only the row: no scope column changed.
    env.expect(&[ROW_A], &[FANTASY, SCI_FI, ROW_B]).await;
}

async fn hooked_watched_update(env: Env) {
    let mut am = env.a.clone().into_active_model();
    am.category = Set("sci-fi".into());
    am.update(env.conn()).await.unwrap();
    // It left one list and entered the other.
    env.expect(&[ROW_A, FANTASY, SCI_FI], &[ROW_B]).await;
    env.assert_fresh().await;
}

async fn hooked_delete(env: Env) {
    env.a
        .clone()
        .into_active_model()
        .delete(env.conn())
        .await
        .unwrap();
    env.expect(&[ROW_A, FANTASY], &[SCI_FI, ROW_B]).await;
    env.assert_fresh().await;
}

async fn insert_many(env: Env) {
    let new = |title: &str, category: &str| article::ActiveModel {
        title: Set(title.into()),
        category: Set(category.into()),
        published: Set(true),
        author_id: Set(env.author),
        ..Default::default()
    };
    article::Entity::insert_many([new("C", "fantasy"), new("D", "fantasy")])
        .exec(env.conn())
        .await
        .unwrap();
    env.expect(&[FANTASY], &[SCI_FI, ROW_A, ROW_B]).await;
    env.assert_fresh().await;
}

async fn update_many(env: Env) {
    article::Entity::update_many()
        .col_expr(article::Column::Published, Expr::value(false))
        .filter(article::Column::Id.eq(env.a.id))
        .exec(env.conn())
        .await
        .unwrap();
    env.expect(&[ROW_A, FANTASY], &[SCI_FI, ROW_B]).await;
    env.assert_fresh().await;
}

async fn delete_many(env: Env) {
    article::Entity::delete_many()
        .filter(article::Column::Category.eq("fantasy"))
        .exec(env.conn())
        .await
        .unwrap();
    env.expect(&[ROW_A, FANTASY], &[SCI_FI, ROW_B]).await;
    env.assert_fresh().await;
}

async fn delete_by_id(env: Env) {
    article::Entity::delete_by_id(env.a.id)
        .exec(env.conn())
        .await
        .unwrap();
    env.expect(&[ROW_A, FANTASY], &[SCI_FI, ROW_B]).await;
}

async fn entity_insert_exec(env: Env) {
    article::Entity::insert(article::ActiveModel {
        title: Set("C".into()),
        category: Set("fantasy".into()),
        published: Set(true),
        author_id: Set(env.author),
        ..Default::default()
    })
    .exec(env.conn())
    .await
    .unwrap();
    env.expect(&[FANTASY], &[SCI_FI, ROW_A, ROW_B]).await;
}

async fn entity_update_exec(env: Env) {
    let mut am = env.a.clone().into_active_model();
    am.published = Set(false);
    article::Entity::update(am).exec(env.conn()).await.unwrap();
    env.expect(&[ROW_A, FANTASY], &[SCI_FI, ROW_B]).await;
}

async fn raw_sql(env: Env) {
    let sql = format!(
        "UPDATE article SET category = 'sci-fi' WHERE id = {}",
        env.a.id
    );
    env.conn().execute_unprepared(&sql).await.unwrap();
    env.expect(&[ROW_A, FANTASY, SCI_FI], &[ROW_B]).await;
    env.assert_fresh().await;
}

async fn current_schema(env: &Env) -> String {
    env.conn()
        .query_one_raw(sea_orm::Statement::from_string(
            env.db.backend(),
            "SELECT current_schema()::text",
        ))
        .await
        .unwrap()
        .unwrap()
        .try_get_by_index(0)
        .unwrap()
}

/// A second pool to the same database, standing in for another process.
async fn another_connection(env: Env) {
    let mut options = sea_orm::ConnectOptions::new(env.db.url.clone());
    if env.db.kind == Kind::Postgres {
        // The scratch PostgreSQL database is a schema: the other process sets its search path.
        options.set_schema_search_path(current_schema(&env).await);
    }
    let other = Database::connect(options).await.unwrap();
    let sql = format!("DELETE FROM article WHERE id = {}", env.b.id);
    other.execute_unprepared(&sql).await.unwrap();
    env.expect(&[ROW_B, SCI_FI], &[FANTASY, ROW_A]).await;
}

async fn seaorm_transaction(env: Env) {
    let a = env.a.clone();
    env.conn()
        .transaction::<_, _, sea_orm::DbErr>(|txn| {
            Box::pin(async move {
                let mut am = a.into_active_model();
                am.published = Set(false);
                am.update(txn).await?;
                Ok(())
            })
        })
        .await
        .unwrap();
    env.expect(&[ROW_A, FANTASY], &[SCI_FI, ROW_B]).await;
    env.assert_fresh().await;
}

async fn begin_commit(env: Env) {
    let txn = env.conn().begin().await.unwrap();
    insert_article(&txn, "C", "fantasy", env.author).await;
    txn.commit().await.unwrap();
    env.expect(&[FANTASY], &[SCI_FI, ROW_A, ROW_B]).await;
    env.assert_fresh().await;
}

async fn rollback_invalidates_nothing(env: Env) {
    let txn = env.conn().begin().await.unwrap();
    insert_article(&txn, "C", "fantasy", env.author).await;
    article::Entity::delete_by_id(env.b.id)
        .exec(&txn)
        .await
        .unwrap();
    txn.rollback().await.unwrap();
    // A later committed write proves the relay ran past the rolled-back one.
    let sql = format!("UPDATE article SET title = 'A2' WHERE id = {}", env.a.id);
    env.conn().execute_unprepared(&sql).await.unwrap();
    env.expect(&[ROW_A], &[FANTASY, SCI_FI, ROW_B]).await;
}

/// A backend whose invalidations never return, for dropping a save mid-invalidation.
#[derive(Debug)]
struct StuckInvalidate {
    inner: MemoryBackend,
    entered: Arc<tokio::sync::Notify>,
}

#[async_trait]
impl Backend for StuckInvalidate {
    fn name(&self) -> &'static str {
        "stuck"
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
    async fn invalidate(&self, _deps: &[String]) -> matroska::Result<u64> {
        self.entered.notify_one();
        std::future::pending().await
    }
    async fn ticket(&self) -> matroska::Result<Ticket> {
        self.inner.ticket().await
    }
}

/// A hooked save whose future is dropped while its own invalidation is in flight (after its
/// commit): the outbox still delivers.
async fn dropped_save(env: Env) {
    let entered = Arc::new(tokio::sync::Notify::new());
    let stuck = Cache::builder(StuckInvalidate {
        inner: MemoryBackend::default(),
        entered: Arc::clone(&entered),
    })
    .build()
    .unwrap();
    let mut am = env.a.clone().into_active_model();
    am.category = Set("sci-fi".into());
    let conn = env.conn().clone();
    let save = seaorm::with_cache(stuck, async move { am.update(&conn).await });
    tokio::select! {
        saved = save => panic!("the save returned although its invalidation never does: {saved:?}"),
        () = entered.notified() => {}
    }
    env.expect(&[ROW_A, FANTASY, SCI_FI], &[ROW_B]).await;
}

/// Another process writes and is killed with SIGKILL right after its commit.
async fn killed_writer(env: Env) {
    let update = format!(
        "UPDATE article SET published = false WHERE id = {}",
        env.a.id
    );
    let status = match env.db.kind {
        Kind::Sqlite => {
            let path = env
                .db
                .url
                .trim_start_matches("sqlite://")
                .split('?')
                .next()
                .unwrap()
                .to_owned();
            let script = format!(
                "import os, signal, sqlite3\n\
                 c = sqlite3.connect({path:?})\n\
                 c.execute({update:?})\n\
                 c.commit()\n\
                 os.kill(os.getpid(), signal.SIGKILL)\n"
            );
            std::process::Command::new("python3")
                .args(["-c", &script])
                .status()
        }
        Kind::Postgres => {
            let schema = current_schema(&env).await;
            let script = format!(
                "psql -v ON_ERROR_STOP=1 -q '{}' -c 'SET search_path TO \"{schema}\"; {update}' && kill -9 $$",
                env.db.url
            );
            std::process::Command::new("sh").args(["-c", &script]).status()
        }
        Kind::MySql => {
            let database = env.db.url.rsplit('/').next().unwrap().to_owned();
            let script = format!(
                "mariadb -h 127.0.0.1 -u root {database} -e '{update}' && kill -9 $$"
            );
            std::process::Command::new("sh").args(["-c", &script]).status()
        }
    }
    .expect("the writer process starts");
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(
        status.signal(),
        Some(9),
        "the writer was killed: {status:?}"
    );
    env.expect(&[ROW_A, FANTASY], &[SCI_FI, ROW_B]).await;
}

/// An update that changes a primary key invalidates both keys (a cached miss of the new key,
/// as `find_by_id` caches misses, included).
async fn primary_key_change(env: Env) {
    let new_id = env.a.id + 1000;
    let moved = article::Model {
        id: new_id,
        ..env.a.clone()
    };
    env.cache
        .put("row-new", &None::<i32>, &[moved.primary_key()], None)
        .await
        .unwrap();
    let sql = format!("UPDATE article SET id = {new_id} WHERE id = {}", env.a.id);
    env.conn().execute_unprepared(&sql).await.unwrap();
    env.expect(&[ROW_A, "row-new", FANTASY], &[SCI_FI, ROW_B])
        .await;
}

/// An entity with a scope on a column of every supported type. (Its condition types are not
/// used: the test builds conditions from models.)
#[allow(dead_code)]
mod typed {
    use sea_orm::entity::prelude::*;
    use serde::{Deserialize, Serialize};

    #[derive(
        Clone, Debug, PartialEq, DeriveEntityModel, Serialize, Deserialize, matroska::CacheDeps,
    )]
    #[sea_orm(table_name = "typed")]
    #[scope(flag)]
    #[scope(small)]
    #[scope(big)]
    #[scope(ratio)]
    #[scope(label)]
    #[scope(note)]
    #[scope(day)]
    #[scope(at)]
    #[scope(stamp)]
    #[scope(uid)]
    pub struct Model {
        #[sea_orm(primary_key)]
        pub id: i64,
        pub flag: bool,
        pub small: i16,
        pub big: i64,
        pub ratio: f64,
        pub label: String,
        pub note: Option<String>,
        pub day: Date,
        pub at: DateTime,
        pub stamp: DateTimeUtc,
        pub uid: Uuid,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    matroska::seaorm::active_model_behavior!(ActiveModel);
}

/// Caches one entry per scope condition of `model` (one per typed column); returns the keys.
async fn cache_conditions(cache: &Cache, model: &typed::Model, tag: &str) -> Vec<String> {
    use matroska::Scoped;
    let mut keys = Vec::new();
    for (i, dep) in typed::Model::scope()
        .dependencies_for(model, None)
        .into_iter()
        .filter(
            |d| matches!(d, matroska::Dependency::Condition { fields, .. } if !fields.is_empty()),
        )
        .enumerate()
    {
        let key = format!("{tag}-{i}: {dep:?}");
        cache.put(&key, &1, &[dep], None).await.unwrap();
        keys.push(key);
    }
    assert_eq!(keys.len(), 10, "one condition per typed column");
    keys
}

async fn wait_gone(cache: &Cache, keys: &[String], relay: &outbox::RelayHandle) {
    let deadline = Instant::now() + Duration::from_secs(20);
    for key in keys {
        while cache.has(key).await.unwrap() {
            assert!(
                Instant::now() < deadline,
                "not invalidated: {key} (relay: {:?}, dead letters: {:?})",
                relay.relay().stats(),
                relay.relay().dead_letters().await
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// The relay's dependencies, computed from the JSON each database's triggers write, equal the
/// ones computed from the model for every column type: booleans (MySQL and SQLite write
/// numbers), integers, floats, text, NULL, dates, naive and zoned timestamps, UUIDs (bytes on
/// MySQL and SQLite).
async fn typed_values(kind: Kind) {
    use chrono::{NaiveDate, TimeZone, Utc};
    let db = ScratchDb::new(kind, "typed_values").await;
    let schema = sea_orm::Schema::new(db.backend());
    db.conn
        .execute(&schema.create_table_from_entity(typed::Entity))
        .await
        .unwrap();
    outbox::install(&db.conn, &[typed::Model::watched_table()])
        .await
        .unwrap();
    let cache = support::redis_cache("typed_values").await;
    let relay = outbox::relay(&db.conn, cache.clone())
        .unwrap()
        .watch_type::<typed::Model>()
        .build()
        .spawn();

    let day = NaiveDate::from_ymd_opt(2026, 11, 25).unwrap();
    let first = typed::Model {
        id: 1,
        flag: true,
        small: -7,
        big: 9_007_199_254_740_993,
        ratio: 0.1,
        label: "Fantasy ü".into(),
        note: None,
        day,
        // SeaORM creates MySQL DATETIME columns without fractions of a second.
        at: day
            .and_hms_micro_opt(9, 30, 0, if kind == Kind::MySql { 0 } else { 123_456 })
            .unwrap(),
        stamp: Utc.with_ymd_and_hms(2026, 11, 25, 23, 59, 59).unwrap(),
        uid: uuid::Uuid::from_u128(0x0123_4567_89ab_cdef_fedc_ba98_7654_3210),
    };
    let keys = cache_conditions(&cache, &first, "insert").await;
    let saved = typed::ActiveModel::from(first.clone())
        .insert(&db.conn)
        .await
        .unwrap();
    assert_eq!(saved, first, "the database stores these values exactly");
    wait_gone(&cache, &keys, &relay).await;

    // Every column changes: the old and the new values' conditions are invalidated.
    let second = typed::Model {
        flag: false,
        small: 300,
        big: -1,
        ratio: -2.5,
        label: "sci-fi".into(),
        note: Some("a note".into()),
        day: day.succ_opt().unwrap(),
        at: day.and_hms_opt(0, 0, 0).unwrap(),
        stamp: Utc.with_ymd_and_hms(1999, 12, 31, 0, 0, 1).unwrap(),
        uid: uuid::Uuid::nil(),
        ..first.clone()
    };
    let mut keys = cache_conditions(&cache, &first, "old").await;
    keys.extend(cache_conditions(&cache, &second, "new").await);
    let raw = typed::ActiveModel::from(second.clone()).reset_all();
    typed::Entity::update(raw).exec(&db.conn).await.unwrap();
    wait_gone(&cache, &keys, &relay).await;

    let keys = cache_conditions(&cache, &second, "delete").await;
    typed::Entity::delete_by_id(1).exec(&db.conn).await.unwrap();
    wait_gone(&cache, &keys, &relay).await;
    assert_eq!(relay.relay().stats().dead_letters, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typed_values_sqlite() {
    typed_values(Kind::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typed_values_postgres() {
    typed_values(Kind::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typed_values_mysql() {
    typed_values(Kind::MySql).await;
}

/// Redis down: the relay's claims fail, the rows stay, it backs off; once Redis is back every
/// row is delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_outage_loses_nothing() {
    let mut redis = support::PrivateRedis::start();
    let db = ScratchDb::new(Kind::Postgres, "outbox_outage").await;
    create_tables(&db.conn).await;
    outbox::install(
        &db.conn,
        &[
            article::Model::watched_table(),
            author::Model::watched_table(),
        ],
    )
    .await
    .unwrap();
    let cache = Cache::builder(
        support::redis_backend_with(matroska::backend::redis::RedisConfig::new(
            redis.url(),
            support::unique("outage"),
        ))
        .await,
    )
    .build()
    .unwrap();
    let relay = outbox::relay(&db.conn, cache.clone())
        .unwrap()
        .watch_type::<article::Model>()
        .retry_delay(Duration::from_millis(20), Duration::from_millis(200))
        .build()
        .spawn();
    redis.kill();
    let author = author::ActiveModel {
        name: Set("a".into()),
        ..Default::default()
    }
    .insert(&db.conn)
    .await
    .unwrap();
    insert_article(&db.conn, "written during the outage", "fantasy", author.id).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while relay.relay().stats().failures < 2 {
        assert!(Instant::now() < deadline, "the relay never tried");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        relay.relay().depth().await.unwrap().rows >= 1,
        "the undelivered row stays in the outbox"
    );

    // Stop the background relay, so that the delivery below is the one checked.
    let relay = {
        let r = relay.relay().clone();
        relay.shutdown().await;
        r
    };
    redis.restart();
    // An entry cached after the restart depends on the list the outage's write entered: the
    // row recorded during the outage still drops it once delivered.
    let fantasy = article::published_in("fantasy").dependencies();
    let deadline = Instant::now() + Duration::from_secs(20);
    while cache.put(FANTASY, &1, &fantasy, None).await.is_err() {
        assert!(Instant::now() < deadline, "Redis did not come back");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(relay.drain().await.unwrap() >= 1);
    assert!(!cache.has(FANTASY).await.unwrap());
    assert_eq!(relay.depth().await.unwrap().rows, 0);
}

/// Bad rows never block the rows behind them: a table no spec describes invalidates its
/// entity by table name; an unreadable row goes to the dead letters (and its entity's lists are
/// dropped).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_rows_are_moved_aside() {
    for kind in [Kind::Sqlite, Kind::Postgres, Kind::MySql] {
        let db = ScratchDb::new(kind, "outbox_bad_rows").await;
        create_tables(&db.conn).await;
        outbox::install(&db.conn, &[article::Model::watched_table()])
            .await
            .unwrap();
        let cache = support::redis_cache("outbox_bad_rows").await;
        let gone_list = matroska::Dependency::invalidate_all("gone");
        cache
            .put("gone-list", &1, &[gone_list], None)
            .await
            .unwrap();
        cache
            .put(
                FANTASY,
                &1,
                &article::published_in("fantasy").dependencies(),
                None,
            )
            .await
            .unwrap();
        let insert = |table: &str, row: &str| {
            format!(
                "INSERT INTO matroska_outbox (table_name, op, old_row, new_row, created_us) \
                 VALUES ('{table}', 'I', NULL, '{row}', 0)"
            )
        };
        // JSONB on PostgreSQL cannot hold invalid JSON; a row of the wrong shape is as bad.
        let unreadable = if kind == Kind::Postgres {
            "[1, 2]"
        } else {
            "not json"
        };
        for sql in [
            insert("gone", "{}"),
            insert("article", unreadable),
            insert(
                "article",
                r#"{"id": "x", "published": true, "category": "a"}"#,
            ),
        ] {
            db.conn.execute_unprepared(&sql).await.unwrap();
        }
        let relay = outbox::relay(&db.conn, cache.clone())
            .unwrap()
            .watch_type::<article::Model>()
            .build();
        assert_eq!(relay.drain().await.unwrap(), 3, "{kind:?}");
        assert!(!cache.has("gone-list").await.unwrap(), "{kind:?}");
        assert!(!cache.has(FANTASY).await.unwrap(), "{kind:?}");
        let dead = relay.dead_letters().await.unwrap();
        assert_eq!(dead.len(), 2, "{kind:?}: {dead:?}");
        assert_eq!(relay.stats().unknown_rows, 1);
        assert_eq!(relay.depth().await.unwrap().rows, 0);
    }
}

/// A 20 000-row `UPDATE` (one statement-level trigger run on PostgreSQL) is delivered in
/// bounded batches.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_update_in_bounded_batches() {
    let db = ScratchDb::new(Kind::Postgres, "outbox_bulk").await;
    create_tables(&db.conn).await;
    db.conn
        .execute_unprepared("INSERT INTO author (name) VALUES ('a')")
        .await
        .unwrap();
    db.conn
        .execute_unprepared(
            "INSERT INTO article (title, category, published, author_id) \
             SELECT 't' || g, 'c' || (g % 100), true, (SELECT MIN(id) FROM author) \
             FROM generate_series(1, 20000) g",
        )
        .await
        .unwrap();
    outbox::install(&db.conn, &[article::Model::watched_table()])
        .await
        .unwrap();
    let cache = support::redis_cache("outbox_bulk").await;
    cache
        .put("c7", &1, &article::published_in("c7").dependencies(), None)
        .await
        .unwrap();
    db.conn
        .execute_unprepared("UPDATE article SET published = false")
        .await
        .unwrap();
    let relay = outbox::relay(&db.conn, cache.clone())
        .unwrap()
        .watch_type::<article::Model>()
        .batch_size(1_000)
        .build();
    let mut batches = 0;
    loop {
        let delivery = relay.run_once().await.unwrap();
        assert!(delivery.rows <= 1_000);
        if delivery.rows == 0 {
            break;
        }
        batches += 1;
    }
    assert_eq!(batches, 20);
    assert_eq!(relay.stats().rows_delivered, 20_000);
    assert!(!cache.has("c7").await.unwrap());
}
