//! `matroska-outbox-sql`: bad arguments fail with a message and no SQL; the SQL it prints
//! installs cleanly on PostgreSQL, MariaDB and SQLite, records writes that a relay of the
//! equivalent models delivers (in development mode, so triggers recording less than the
//! models need would fail the relay's start-up check), and `--down` removes the triggers.
//!
//! Here, not in the workspace's `tests/` package: only a binary's own package can run it
//! (`CARGO_BIN_EXE_*`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::{Command, Output};
use std::time::{SystemTime, UNIX_EPOCH};

use matroska_core::{Cache, ColumnDecoder, Dependency, ScopeMode, TableSpec};
use matroska_outbox::{Dialect, Outbox, OutboxDb, Relay, SqlConnection};

fn run(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_matroska-outbox-sql"))
        .args(args)
        .output()
        .expect("the binary runs")
}

#[test]
fn bad_arguments_fail_with_a_message_and_print_no_sql() {
    for (args, says) in [
        (&["--table", "post:id"][..], "--database is required"),
        (
            &["--database", "oracle", "--table", "post:id"],
            "expected postgres",
        ),
        (
            &["--database", "sqlite", "--table", "post"],
            "expected NAME:KEY",
        ),
        (
            &[
                "--database",
                "sqlite",
                "--table",
                "post:id",
                "--outbox",
                "no-dash",
            ],
            "--outbox",
        ),
        (
            &["--database", "sqlite", "--tabel", "post:id"],
            "unknown argument `--tabel`",
        ),
    ] {
        let out = run(args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(out.stdout.is_empty(), "{args:?} printed SQL");
        assert!(
            stderr.contains(says) && stderr.contains("--help"),
            "{args:?}: {stderr}"
        );
    }
    let help = run(&["--help"]);
    assert!(help.status.success());
    assert!(String::from_utf8_lossy(&help.stdout).contains("--table <TABLE>"));
}

/// A name no other test (or run) uses.
fn unique(prefix: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!("{prefix}_{}_{nanos:x}", std::process::id())
}

fn sql(args: &[&str]) -> String {
    let out = run(args);
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Runs a whole script in one call (several statements), as migration tools do.
async fn script(db: &OutboxDb, text: &str) {
    let text = sqlx::AssertSqlSafe(text.to_owned());
    match db {
        OutboxDb::Postgres(pool) => drop(sqlx::raw_sql(text).execute(pool).await.unwrap()),
        OutboxDb::MySql(pool) => drop(sqlx::raw_sql(text).execute(pool).await.unwrap()),
        OutboxDb::Sqlite(pool) => drop(sqlx::raw_sql(text).execute(pool).await.unwrap()),
        other => panic!("no driver for {other:?}"),
    }
}

async fn installs_and_records(db: OutboxDb, database: &str, dialect: Dialect) {
    let table = unique("cli_post");
    let outbox_name = unique("cli_ob");
    db.execute_sql(&format!(
        "CREATE TABLE {table} (id BIGINT PRIMARY KEY, category VARCHAR(40) NOT NULL, \
         author_id BIGINT NOT NULL)"
    ))
    .await
    .unwrap();
    // With a Diesel `belongs_to` foreign key (a tracked column): without it the development
    // relay below refuses the triggers (they would not record it in key-only rows).
    let spec = format!("{table}:id:category:author_id");
    let up = sql(&[
        "--database",
        database,
        "--table",
        &spec,
        "--outbox",
        &outbox_name,
    ]);
    // One script, as a migration tool sends it.
    script(&db, &up).await;

    // The relay of the model this describes: development mode refuses triggers that record
    // less than the model's scope needs.
    let model = TableSpec::new("post", table.as_str())
        .key("id", ColumnDecoder::of::<i64>())
        .scope(&[("category", ColumnDecoder::of::<String>())], false)
        .tracked("author_id", ColumnDecoder::of::<i64>());
    let outbox = Outbox::named(&outbox_name).unwrap();
    let cache = Cache::memory();
    let relay = Relay::builder(db.clone(), cache.clone())
        .outbox(outbox.clone())
        .watch(model)
        .mode(ScopeMode::Development)
        .build();
    relay.drain().await.unwrap();
    let fantasy = Dependency::condition("post", [("category", "fantasy".into())]);
    cache
        .put("fantasy-posts", &0, &[fantasy], None)
        .await
        .unwrap();
    db.execute_sql(&format!(
        "INSERT INTO {table} (id, category, author_id) VALUES (1, 'fantasy', 7)"
    ))
    .await
    .unwrap();
    assert_eq!(relay.drain().await.unwrap(), 1, "{dialect:?}");
    assert!(!cache.has("fantasy-posts").await.unwrap(), "{dialect:?}");
    // A key-only change (a column no scope watches) carries the foreign key: the author's
    // entries are dropped.
    let by_author = Dependency::condition("post", [("author_id", 7_i64.into())]);
    cache.put("author-7", &0, &[by_author], None).await.unwrap();
    db.execute_sql(&format!("UPDATE {table} SET id = id WHERE id = 1"))
        .await
        .unwrap();
    relay.drain().await.unwrap();
    assert!(!cache.has("author-7").await.unwrap(), "{dialect:?}");

    let down = sql(&[
        "--database",
        database,
        "--table",
        &spec,
        "--outbox",
        &outbox_name,
        "--down",
    ]);
    script(&db, &down).await;
    db.execute_sql(&format!("UPDATE {table} SET category = 'sci-fi'"))
        .await
        .unwrap();
    assert_eq!(relay.depth().await.unwrap().rows, 0, "triggers left behind");

    for statement in outbox.drop_tables_sql(dialect) {
        db.execute_sql(&statement).await.unwrap();
    }
    db.execute_sql(&format!("DROP TABLE {table}"))
        .await
        .unwrap();
}

#[tokio::test]
async fn the_sql_installs_on_postgres() {
    let db = OutboxDb::connect("postgres://postgres@127.0.0.1:5432/test")
        .await
        .unwrap();
    installs_and_records(db, "postgres", Dialect::Postgres).await;
}

#[tokio::test]
async fn the_sql_installs_on_mariadb() {
    let db = OutboxDb::connect("mysql://root@127.0.0.1:3306/test")
        .await
        .unwrap();
    installs_and_records(db, "mariadb", Dialect::MySql).await;
}

#[tokio::test]
async fn the_sql_installs_on_sqlite() {
    let db = OutboxDb::connect("sqlite::memory:").await.unwrap();
    installs_and_records(db, "sqlite", Dialect::Sqlite).await;
}
