//! Hostile review of read-your-writes (`wait_delivered`) and of the migrations work (issue
//! 18): each test shows one defect found in review. A binary of its own: it registers no
//! cache for the hooks (as a migration CLI) and spawns relays only where a test says so.
#![cfg(feature = "seaorm")]
#![allow(clippy::unwrap_used)]

mod seaorm_blog;
mod support;

use std::time::Duration;

use matroska::seaorm::outbox;
use matroska::{Dependency, WatchedTable};
use sea_orm::{
    ActiveModelTrait, ConnectOptions, ConnectionTrait, Database, DatabaseConnection, Set,
};

use seaorm_blog::{article, author, create_tables};
use support::db::{Kind, ScratchDb};

fn specs() -> [matroska::TableSpec; 2] {
    [
        article::Model::watched_table(),
        author::Model::watched_table(),
    ]
}

async fn exec(conn: &DatabaseConnection, sql: &str) {
    conn.execute_unprepared(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
}

async fn count(conn: &DatabaseConnection, sql: &str) -> i64 {
    let row = conn
        .query_one_raw(sea_orm::Statement::from_string(
            conn.get_database_backend(),
            sql.to_owned(),
        ))
        .await
        .unwrap()
        .unwrap();
    row.try_get_by_index::<i64>(0).unwrap()
}

/// A relay's consumer dropped as expired by another consumer's relay (its process was
/// paused past the expiry, say): the other relay delivers a raw write and sweeps the row,
/// which no longer waits for the dropped consumer. `wait_delivered` of the dropped
/// consumer's relay then finds no row waiting and returns `Ok` at once, without noticing
/// that its consumer is gone (which would flush its cache): the next read is stale.
async fn wait_delivered_after_its_consumer_was_dropped(kind: Kind) {
    let db = ScratchDb::new(kind, "rev_wait_dropped").await;
    create_tables(&db.conn).await;
    outbox::install(&db.conn, &specs()).await.unwrap();
    exec(&db.conn, "INSERT INTO author (id, name) VALUES (1, 'a')").await;
    exec(
        &db.conn,
        "INSERT INTO article (id, title, category, published, author_id) \
         VALUES (7, 't', 'fantasy', true, 1)",
    )
    .await;
    let relay = |cache: matroska::Cache, name: &str| {
        outbox::relay(&db.conn, cache)
            .unwrap()
            .watch_type::<article::Model>()
            .watch_type::<author::Model>()
            .consumer(name)
            .consumer_expiry(Duration::from_millis(100))
            .build()
    };
    let mine = support::memory_cache();
    let my_relay = relay(mine.clone(), "mine");
    let other_relay = relay(support::memory_cache(), "other");
    my_relay.run_once().await.unwrap();
    other_relay.run_once().await.unwrap();
    mine.put(
        "article-7",
        &1,
        &[Dependency::primary_key("article", [7])],
        None,
    )
    .await
    .unwrap();
    // Not a timing assertion: "mine" must go unseen for longer than its expiry (the
    // database's clock decides) for the other relay to drop it.
    tokio::time::sleep(Duration::from_millis(400)).await;
    exec(&db.conn, "UPDATE article SET title = 'u' WHERE id = 7").await;
    // Drops "mine" (expired), delivers the update to "other" and sweeps it.
    other_relay.run_once().await.unwrap();
    my_relay
        .wait_delivered(Duration::from_secs(20))
        .await
        .unwrap();
    assert!(
        !mine.has("article-7").await.unwrap(),
        "wait_delivered returned Ok but the updated row is still cached (its consumer was \
         dropped and nothing flushed its cache)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_delivered_after_its_consumer_was_dropped_postgres() {
    wait_delivered_after_its_consumer_was_dropped(Kind::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_delivered_after_its_consumer_was_dropped_mysql() {
    wait_delivered_after_its_consumer_was_dropped(Kind::MySql).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_delivered_after_its_consumer_was_dropped_sqlite() {
    wait_delivered_after_its_consumer_was_dropped(Kind::Sqlite).await;
}

/// `Duration::MAX` ("wait as long as it takes") panics in the process-wide wait: the
/// deadline `Instant::now() + timeout` overflows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn process_wide_wait_with_duration_max_does_not_panic() {
    let waited = tokio::spawn(outbox::wait_delivered(Duration::MAX)).await;
    assert!(
        waited.is_ok(),
        "wait_delivered(Duration::MAX) panicked: {waited:?}"
    );
    waited.unwrap().unwrap();
}

/// The blocking forms panic the same way (`Instant::now() + timeout + 100 ms`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocking_wait_with_duration_max_does_not_panic() {
    let db = ScratchDb::new(Kind::Sqlite, "rev_wait_max").await;
    create_tables(&db.conn).await;
    outbox::install(&db.conn, &specs()).await.unwrap();
    let handle = std::sync::Arc::new(
        outbox::relay(&db.conn, support::memory_cache())
            .unwrap()
            .watch_type::<article::Model>()
            .watch_type::<author::Model>()
            .build()
            .spawn(),
    );
    let waiting = std::sync::Arc::clone(&handle);
    let joined = std::thread::spawn(move || waiting.wait_delivered_blocking(Duration::MAX)).join();
    assert!(
        joined.is_ok(),
        "wait_delivered_blocking(Duration::MAX) panicked"
    );
    joined.unwrap().unwrap();
    let joined = std::thread::spawn(|| outbox::wait_delivered_blocking(Duration::MAX)).join();
    assert!(joined.is_ok(), "the process-wide blocking wait panicked");
    joined.unwrap().unwrap();
}

/// A hooked write with no cache registered, to a table whose triggers were uninstalled (a
/// migration's `down`), by a role that may write the table but not the outbox — the role
/// the SECURITY DEFINER triggers are designed for (`least_privilege_writer_postgres`). A
/// hook that let the write through and recorded a whole-table row after it (SeaORM's
/// `insert` is no transaction) left the committed write unrecorded when that row failed for
/// lack of privilege. Either the write is refused, or it is recorded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hooked_write_without_cache_is_recorded_or_refused_for_a_least_privilege_role() {
    let db = ScratchDb::new(Kind::Postgres, "rev_unrecorded").await;
    let schema = db.schema.clone().unwrap();
    create_tables(&db.conn).await;
    outbox::install(&db.conn, &specs()).await.unwrap();
    // A consumer (another process's cache): the whole-table row is written only then.
    outbox::relay(&db.conn, support::memory_cache())
        .unwrap()
        .watch_type::<article::Model>()
        .watch_type::<author::Model>()
        .build()
        .run_once()
        .await
        .unwrap();
    outbox::uninstall(&db.conn, &["author"]).await.unwrap();
    let role = support::unique("rev_writer");
    exec(&db.conn, &format!("CREATE ROLE \"{role}\" LOGIN")).await;
    exec(
        &db.conn,
        &format!("GRANT USAGE ON SCHEMA \"{schema}\" TO \"{role}\""),
    )
    .await;
    exec(
        &db.conn,
        &format!("GRANT SELECT, INSERT, UPDATE, DELETE ON author, article TO \"{role}\""),
    )
    .await;
    exec(
        &db.conn,
        &format!("GRANT USAGE ON ALL SEQUENCES IN SCHEMA \"{schema}\" TO \"{role}\""),
    )
    .await;
    let url = db.url.replacen("postgres@", &format!("{role}@"), 1);
    let writer = Database::connect(
        ConnectOptions::new(url)
            .sqlx_logging(false)
            .set_schema_search_path(schema.clone())
            .to_owned(),
    )
    .await
    .unwrap();
    let saved = author::ActiveModel {
        name: Set("written while uninstalled".into()),
        ..Default::default()
    }
    .insert(&writer)
    .await;
    writer.close().await.ok();
    let written = count(
        &db.conn,
        "SELECT COUNT(*) FROM author WHERE name = 'written while uninstalled'",
    )
    .await;
    let recorded = count(
        &db.conn,
        "SELECT COUNT(*) FROM matroska_outbox WHERE table_name = 'author' AND op = 'T'",
    )
    .await;
    exec(&db.conn, &format!("DROP OWNED BY \"{role}\"")).await;
    exec(&db.conn, &format!("DROP ROLE \"{role}\"")).await;
    assert!(
        written == 0 || recorded > 0,
        "the write committed ({written} row) with no whole-table row ({recorded}); the save \
         returned {saved:?}"
    );
}

/// A relay whose handle was shut down, while the application keeps a clone of the `Relay`
/// (as `wait_delivered_after_raw_sql` does): the process-wide wait still counts it as
/// running, and its wait registers the private consumer (in-memory cache) that `shutdown`
/// removed. Nothing runs that consumer any more: every later outbox row waits for it until
/// it expires (10 minutes by default), and no row is swept meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn process_wide_wait_does_not_revive_a_shut_down_private_consumer() {
    let db = ScratchDb::new(Kind::Sqlite, "rev_revive").await;
    create_tables(&db.conn).await;
    outbox::install(&db.conn, &specs()).await.unwrap();
    let relay = outbox::relay(&db.conn, support::memory_cache())
        .unwrap()
        .watch_type::<article::Model>()
        .watch_type::<author::Model>()
        .build();
    let handle = relay.clone().start().await.unwrap();
    let consumers = "SELECT COUNT(*) FROM matroska_outbox_consumers";
    assert_eq!(count(&db.conn, consumers).await, 1);
    handle.shutdown().await;
    assert_eq!(count(&db.conn, consumers).await, 0, "shutdown removes it");
    exec(&db.conn, "INSERT INTO author (id, name) VALUES (1, 'a')").await;
    outbox::wait_delivered(Duration::from_secs(20))
        .await
        .unwrap();
    assert_eq!(
        count(&db.conn, consumers).await,
        0,
        "the wait registered the shut-down relay's private consumer again"
    );
    drop(relay);
}

/// PostgreSQL: a session with `session_replication_role = replica` (pg_restore
/// `--disable-triggers`, data-loading and replication tools) fires no ordinary (`O`)
/// triggers, the outbox's included. A hooked write with no cache registered there was let
/// through as recorded by the triggers (`covers` counted them: present and not disabled), so
/// nothing recorded it and the consumer's cache kept the old row: it must be refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hooked_write_without_cache_under_replica_role_is_refused_postgres() {
    use sea_orm::TransactionTrait;

    let db = ScratchDb::new(Kind::Postgres, "rev_replica").await;
    create_tables(&db.conn).await;
    outbox::install(&db.conn, &specs()).await.unwrap();
    exec(&db.conn, "INSERT INTO author (id, name) VALUES (1, 'old')").await;
    let cache = support::memory_cache();
    let relay = outbox::relay(&db.conn, cache.clone())
        .unwrap()
        .watch_type::<article::Model>()
        .watch_type::<author::Model>()
        .build();
    relay.run_once().await.unwrap();
    let mut deps = matroska::TableSpec::coarse_dependencies("author");
    deps.push(Dependency::primary_key("author", [1]));
    cache.put("author-1", &"old", &deps, None).await.unwrap();

    let txn = db.conn.begin().await.unwrap();
    txn.execute_unprepared("SET LOCAL session_replication_role = replica")
        .await
        .unwrap();
    let saved = author::ActiveModel {
        id: sea_orm::Unchanged(1),
        name: Set("new".into()),
    }
    .update(&txn)
    .await;
    txn.commit().await.unwrap();
    let written = count(&db.conn, "SELECT COUNT(*) FROM author WHERE name = 'new'").await;
    relay.wait_delivered(Duration::from_secs(20)).await.unwrap();
    assert!(
        written == 0 || !cache.has("author-1").await.unwrap(),
        "the write committed ({saved:?}) and nothing recorded it: the old row is still cached"
    );
}

/// Repeated read-your-writes through a stopped relay (only the wait delivers), each write on
/// a connection of its own (another process's), on every database: no round's wait misses
/// its write (a pooled connection left in an old snapshot — SQLite WAL read transaction,
/// MariaDB REPEATABLE READ — would show here).
async fn wait_delivered_every_round(kind: Kind) {
    let db = ScratchDb::new(kind, "rev_rounds").await;
    create_tables(&db.conn).await;
    outbox::install(&db.conn, &specs()).await.unwrap();
    exec(&db.conn, "INSERT INTO author (id, name) VALUES (1, 'a')").await;
    let writer = Database::connect(
        ConnectOptions::new(db.url.clone())
            .sqlx_logging(false)
            .max_connections(1)
            .to_owned(),
    )
    .await
    .unwrap();
    if let Some(schema) = &db.schema {
        exec(&writer, &format!("SET search_path TO \"{schema}\"")).await;
    }
    let cache = support::memory_cache();
    let relay = outbox::relay(&db.conn, cache.clone())
        .unwrap()
        .watch_type::<article::Model>()
        .watch_type::<author::Model>()
        .build();
    relay.wait_delivered(Duration::from_secs(20)).await.unwrap();
    for round in 0..30 {
        cache
            .put(
                "author-1",
                &round,
                &[Dependency::primary_key("author", [1])],
                None,
            )
            .await
            .unwrap();
        // A read on the relay's pool between the fill and the write, as an application's.
        count(&db.conn, "SELECT COUNT(*) FROM author").await;
        exec(
            &writer,
            &format!("UPDATE author SET name = 'n{round}' WHERE id = 1"),
        )
        .await;
        relay.wait_delivered(Duration::from_secs(20)).await.unwrap();
        assert!(
            !cache.has("author-1").await.unwrap(),
            "round {round}: the write was not delivered when the wait returned"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_delivered_every_round_sqlite() {
    wait_delivered_every_round(Kind::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_delivered_every_round_mysql() {
    wait_delivered_every_round(Kind::MySql).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_delivered_every_round_postgres() {
    wait_delivered_every_round(Kind::Postgres).await;
}

/// MariaDB: a `TRUNCATE` (no trigger fires) then `wait_delivered` on a relay that never ran
/// (only the wait can notice it): the truncated rows' entries are gone when it returns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_delivered_after_truncate_mysql() {
    let db = ScratchDb::new(Kind::MySql, "rev_truncate").await;
    create_tables(&db.conn).await;
    outbox::install(&db.conn, &specs()).await.unwrap();
    exec(&db.conn, "INSERT INTO author (id, name) VALUES (1, 'a')").await;
    let cache = support::memory_cache();
    let relay = outbox::relay(&db.conn, cache.clone())
        .unwrap()
        .watch_type::<article::Model>()
        .watch_type::<author::Model>()
        .build();
    relay.wait_delivered(Duration::from_secs(20)).await.unwrap();
    cache
        .put(
            "articles",
            &1,
            &matroska::TableSpec::coarse_dependencies("article"),
            None,
        )
        .await
        .unwrap();
    exec(&db.conn, "TRUNCATE TABLE article").await;
    relay.wait_delivered(Duration::from_secs(20)).await.unwrap();
    assert!(
        !cache.has("articles").await.unwrap(),
        "the truncate was not delivered"
    );
}
