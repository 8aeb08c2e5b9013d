//! Scratch databases for the SeaORM and Diesel tests: a SQLite file in the temp dir, a fresh
//! PostgreSQL schema, or a fresh MariaDB/MySQL database per test, dropped when the handle is
//! dropped. `DieselConn` opens Diesel connections to the same database.
//!
//! Services come from `DATABASE_URL_POSTGRES` (default `postgres://postgres@127.0.0.1:5432/test`)
//! and `DATABASE_URL_MYSQL` (default `mysql://root@127.0.0.1:3306/test`). A missing service
//! fails the test.
#![cfg(feature = "seaorm")]

use std::path::PathBuf;

use sea_orm::{ConnectOptions, ConnectionTrait, Database, DatabaseConnection, DbBackend};

use super::unique;

/// Which database a test runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Sqlite,
    Postgres,
    MySql,
}

/// `DATABASE_URL_POSTGRES`, default `postgres://postgres@127.0.0.1:5432/test`.
pub fn postgres_url() -> String {
    std::env::var("DATABASE_URL_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

/// `DATABASE_URL_MYSQL`, default `mysql://root@127.0.0.1:3306/test`.
pub fn mysql_url() -> String {
    std::env::var("DATABASE_URL_MYSQL")
        .unwrap_or_else(|_| "mysql://root@127.0.0.1:3306/test".into())
}

/// A database of a test's own. Dropping it drops the schema / database / file.
pub struct ScratchDb {
    pub conn: DatabaseConnection,
    pub kind: Kind,
    /// The URL the connection was opened with (for extra connections).
    pub url: String,
    /// PostgreSQL: the schema every pooled connection has as its search path.
    pub schema: Option<String>,
    cleanup: Cleanup,
}

enum Cleanup {
    File(PathBuf),
    Statement { admin_url: String, sql: String },
}

impl ScratchDb {
    /// A scratch database of `kind`, named after `name`.
    pub async fn new(kind: Kind, name: &str) -> Self {
        match kind {
            Kind::Sqlite => Self::sqlite(name).await,
            Kind::Postgres => Self::postgres(name).await,
            Kind::MySql => Self::mysql(name).await,
        }
    }

    /// A SQLite file in the temp dir (a file, not `:memory:`, so a pool's connections share it).
    pub async fn sqlite(name: &str) -> Self {
        let path = std::env::temp_dir().join(format!("{}.db", unique(name)));
        let url = format!("sqlite://{}?mode=rwc", path.display());
        // SeaORM pools one SQLite connection by default; the tests read on a second connection
        // while a transaction holds the first.
        let conn = Database::connect(
            ConnectOptions::new(url.clone())
                .sqlx_logging(false)
                .max_connections(4)
                .to_owned(),
        )
        .await
        .unwrap_or_else(|e| panic!("SQLite at {url}: {e}"));
        // WAL lets readers run while a transaction writes (the tests read during transactions).
        conn.execute_unprepared("PRAGMA journal_mode=WAL")
            .await
            .expect("WAL mode");
        ScratchDb {
            conn,
            kind: Kind::Sqlite,
            url,
            schema: None,
            cleanup: Cleanup::File(path),
        }
    }

    /// A fresh schema on `DATABASE_URL_POSTGRES`, set as every pooled connection's search path.
    pub async fn postgres(name: &str) -> Self {
        let admin_url = postgres_url();
        let schema = unique(name);
        let admin = Database::connect(ConnectOptions::new(admin_url.clone()).sqlx_logging(false).to_owned())
            .await
            .unwrap_or_else(|e| panic!("PostgreSQL at {admin_url} is required for this test (set DATABASE_URL_POSTGRES): {e}"));
        admin
            .execute_unprepared(&format!("CREATE SCHEMA \"{schema}\""))
            .await
            .expect("create schema");
        admin.close().await.ok();
        let conn = Database::connect(
            ConnectOptions::new(admin_url.clone())
                .sqlx_logging(false)
                .set_schema_search_path(schema.clone())
                .to_owned(),
        )
        .await
        .expect("connect to the schema");
        ScratchDb {
            conn,
            kind: Kind::Postgres,
            url: admin_url.clone(),
            schema: Some(schema.clone()),
            cleanup: Cleanup::Statement {
                admin_url,
                sql: format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"),
            },
        }
    }

    /// A fresh database on the server of `DATABASE_URL_MYSQL`.
    pub async fn mysql(name: &str) -> Self {
        let admin_url = mysql_url();
        let database = unique(name);
        let admin = Database::connect(ConnectOptions::new(admin_url.clone()).sqlx_logging(false).to_owned())
            .await
            .unwrap_or_else(|e| panic!("MariaDB/MySQL at {admin_url} is required for this test (set DATABASE_URL_MYSQL): {e}"));
        admin
            .execute_unprepared(&format!("CREATE DATABASE `{database}`"))
            .await
            .expect("create database");
        admin.close().await.ok();
        let base = admin_url
            .rsplit_once('/')
            .map_or(admin_url.as_str(), |(b, _)| b);
        let url = format!("{base}/{database}");
        let conn = Database::connect(
            ConnectOptions::new(url.clone())
                .sqlx_logging(false)
                .to_owned(),
        )
        .await
        .expect("connect to the database");
        ScratchDb {
            conn,
            kind: Kind::MySql,
            url,
            schema: None,
            cleanup: Cleanup::Statement {
                admin_url,
                sql: format!("DROP DATABASE IF EXISTS `{database}`"),
            },
        }
    }

    pub fn backend(&self) -> DbBackend {
        self.conn.get_database_backend()
    }
}

/// A Diesel connection to a test's scratch database: the same database (SQLite file,
/// PostgreSQL schema as the search path, MariaDB database) the `ScratchDb`'s pool reaches.
#[cfg(feature = "diesel")]
pub trait DieselConn: diesel::Connection + Send + Sized + 'static {
    /// The kind of scratch database this connection type opens.
    const KIND: Kind;

    /// A new connection to `db`.
    fn open(db: &ScratchDb) -> Self;
}

#[cfg(feature = "diesel")]
impl DieselConn for diesel::SqliteConnection {
    const KIND: Kind = Kind::Sqlite;

    fn open(db: &ScratchDb) -> Self {
        use diesel::connection::SimpleConnection;
        let Cleanup::File(path) = &db.cleanup else {
            panic!("not a SQLite scratch database");
        };
        let mut conn = <Self as diesel::Connection>::establish(&path.display().to_string())
            .expect("open the SQLite file");
        // The relay's pool writes the same file (it deletes delivered outbox rows).
        conn.batch_execute("PRAGMA busy_timeout = 10000")
            .expect("busy timeout");
        conn
    }
}

#[cfg(feature = "diesel-postgres")]
impl DieselConn for diesel::PgConnection {
    const KIND: Kind = Kind::Postgres;

    fn open(db: &ScratchDb) -> Self {
        use diesel::connection::SimpleConnection;
        let mut conn = <Self as diesel::Connection>::establish(&db.url)
            .unwrap_or_else(|e| panic!("PostgreSQL at {}: {e}", db.url));
        let schema = db.schema.as_deref().expect("a PostgreSQL scratch schema");
        conn.batch_execute(&format!("SET search_path TO \"{schema}\""))
            .expect("search path");
        conn
    }
}

#[cfg(feature = "diesel-mysql")]
impl DieselConn for diesel::MysqlConnection {
    const KIND: Kind = Kind::MySql;

    fn open(db: &ScratchDb) -> Self {
        <Self as diesel::Connection>::establish(&db.url)
            .unwrap_or_else(|e| panic!("MariaDB/MySQL at {}: {e}", db.url))
    }
}

/// A diesel-async connection to a test's scratch database (SQLite through diesel-async's
/// `SyncConnectionWrapper`, PostgreSQL through tokio-postgres, MariaDB through mysql_async).
#[cfg(feature = "diesel-async")]
pub trait DieselAsyncConn: diesel_async::AsyncConnection + Sized + 'static {
    /// The kind of scratch database this connection type opens.
    const KIND: Kind;

    /// A new connection to `db`.
    fn open(db: &ScratchDb) -> impl std::future::Future<Output = Self> + Send;
}

#[cfg(feature = "diesel-async")]
impl DieselAsyncConn
    for diesel_async::sync_connection_wrapper::SyncConnectionWrapper<diesel::SqliteConnection>
{
    const KIND: Kind = Kind::Sqlite;

    async fn open(db: &ScratchDb) -> Self {
        Self::new(<diesel::SqliteConnection as DieselConn>::open(db))
    }
}

#[cfg(all(feature = "diesel-async", feature = "diesel-postgres"))]
impl DieselAsyncConn for diesel_async::AsyncPgConnection {
    const KIND: Kind = Kind::Postgres;

    async fn open(db: &ScratchDb) -> Self {
        use diesel_async::SimpleAsyncConnection;
        let mut conn = <Self as diesel_async::AsyncConnection>::establish(&db.url)
            .await
            .unwrap_or_else(|e| panic!("PostgreSQL at {}: {e}", db.url));
        let schema = db.schema.as_deref().expect("a PostgreSQL scratch schema");
        conn.batch_execute(&format!("SET search_path TO \"{schema}\""))
            .await
            .expect("search path");
        conn
    }
}

#[cfg(all(feature = "diesel-async", feature = "diesel-mysql"))]
impl DieselAsyncConn for diesel_async::AsyncMysqlConnection {
    const KIND: Kind = Kind::MySql;

    async fn open(db: &ScratchDb) -> Self {
        <Self as diesel_async::AsyncConnection>::establish(&db.url)
            .await
            .unwrap_or_else(|e| panic!("MariaDB/MySQL at {}: {e}", db.url))
    }
}

impl Drop for ScratchDb {
    fn drop(&mut self) {
        match &self.cleanup {
            Cleanup::File(path) => {
                for suffix in ["", "-wal", "-shm"] {
                    let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
                }
            }
            Cleanup::Statement { admin_url, sql } => {
                let (admin_url, sql) = (admin_url.clone(), sql.clone());
                // Drop runs inside the test's runtime: clean up from a thread with its own.
                let _ = std::thread::spawn(move || {
                    let rt = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()?;
                    rt.block_on(async {
                        if let Ok(admin) = Database::connect(
                            ConnectOptions::new(admin_url)
                                .sqlx_logging(false)
                                .to_owned(),
                        )
                        .await
                        {
                            let _ = admin.execute_unprepared(&sql).await;
                            let _ = admin.close().await;
                        }
                    });
                    Ok::<_, std::io::Error>(())
                })
                .join();
            }
        }
    }
}
