//! Invalidation for Diesel writes: the database outbox ([`matroska_outbox`]).
//!
//! Diesel has no model hooks, so nothing in the process sees a write. The outbox's triggers
//! record every committed change to a watched table in the writing transaction — `insert_into`,
//! `update`, `delete`, `sql_query`, another process — and a [`Relay`] invalidates the cache
//! after the commit, at least once. A rolled-back transaction records nothing.
//!
//! ## Install it in a migration
//!
//! **As SQL** (`diesel migration generate matroska_outbox`): write the statements of
//! [`migration_sql`] into the migration's `up.sql` and `down.sql` once, e.g. from a small
//! build-time binary or a test that prints them:
//!
//! ```
//! use matroska_core::{ColumnDecoder, TableSpec};
//! use matroska_outbox::Outbox;
//!
//! // `Post::watched_table()` when the model derives `CacheDeps`.
//! let posts = TableSpec::new("posts", "posts")
//!     .key("id", ColumnDecoder::of::<i32>())
//!     .scope(&[("category", ColumnDecoder::of::<String>())], false);
//! let sql = matroska_diesel::outbox::migration_sql::<diesel::sqlite::Sqlite>(&Outbox::default(), &[posts])?;
//! assert!(sql.up.contains("CREATE TRIGGER"));
//! assert!(sql.down.contains("DROP TRIGGER"));
//! # Ok::<_, matroska_diesel::Error>(())
//! ```
//!
//! Regenerate the migration (as a new migration file) when a model's key, scopes or
//! `belongs_to` foreign keys change, and after upgrading to a matroska release whose trigger
//! layout changed: the triggers record exactly the watched columns, and the relay reports
//! triggers that record less (`TriggersOutdated` in development; coarse in production). Put it right after the migrations that create the watched tables,
//! before any that writes rows. `up.sql` ends with a whole-table row per table
//! ([`Outbox::record_whole_table_sql`]): each time it runs (the first time over existing
//! data, again after a `migration redo` or a rollback past it), every relay invalidates
//! everything cached from those tables, so what was written while no trigger recorded it
//! (between `down.sql` and `up.sql`, say) is not served stale. On PostgreSQL, pin the outbox to a schema
//! (`Outbox::default().in_schema("public")?`) so the triggers write there whatever a writer's
//! `search_path`.
//!
//! **From Rust** (a start-up step, or a migration implemented in Rust):
//! [`install_outbox`] runs the same statements on a Diesel connection; it is idempotent, pins
//! PostgreSQL's outbox to the connection's current schema, and refuses to downgrade triggers a
//! newer matroska installed. It invalidates the tables (a whole-table row) only when the
//! triggers it replaces were missing, disabled or altered: running it at every start-up
//! costs no invalidation.
//!
//! ```
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use diesel::prelude::*;
//! use matroska_core::{ColumnDecoder, TableSpec};
//!
//! let mut conn = SqliteConnection::establish(":memory:")?;
//! diesel::sql_query("CREATE TABLE posts (id INTEGER PRIMARY KEY, category TEXT NOT NULL)")
//!     .execute(&mut conn)?;
//! let posts = TableSpec::new("posts", "posts")
//!     .key("id", ColumnDecoder::of::<i32>())
//!     .scope(&[("category", ColumnDecoder::of::<String>())], false);
//! matroska_diesel::install_outbox(&mut conn, &[posts.clone()])?;
//! matroska_diesel::install_outbox(&mut conn, &[posts])?; // again: a no-op
//! # Ok(()) }
//! ```
//!
//! ## Run the relay
//!
//! The relay runs on a sqlx pool to the same database (sqlx is pure Rust; it shares nothing
//! with the Diesel connections), in every process that serves cached reads. Each cache is a
//! consumer that receives every change (one name per Redis prefix and server; one per process
//! on the in-memory backend; [`RelayBuilder::consumer`](matroska_outbox::RelayBuilder::consumer)
//! to choose), and `start` refuses, in debug builds, triggers that do not record a column a
//! model now needs (regenerate the migration):
//!
//! ```no_run
//! # async fn run(cache: matroska_core::Cache) -> Result<(), Box<dyn std::error::Error>> {
//! use matroska_outbox::{OutboxDb, Relay};
//!
//! let db = OutboxDb::connect("postgres://app@localhost/blog").await?;
//! let relay = Relay::builder(db, cache)
//!     // .watch_type::<Post>() for every cached model
//!     .build()
//!     .start()
//!     .await?;
//! // ...
//! relay.shutdown().await;
//! # Ok(()) }
//! ```
//!
//! Invalidation then follows each commit by the relay's lag (it wakes on `NOTIFY` on
//! PostgreSQL, polls elsewhere; call [`poke`] after a commit to wake it at once). For
//! read-your-writes, [`wait_delivered_blocking`] (sync code) or [`wait_delivered`] (async)
//! right after the commit: it returns once every row committed before it is delivered, so the
//! next read is fresh, whatever wrote; or [`invalidate_now`](crate::invalidate_now) with the
//! row's old and new values, without waiting for the relay.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake};

use async_trait::async_trait;
use diesel::backend::Backend;
use diesel::connection::Connection;
use diesel::query_builder::SqlQuery;
use diesel::query_dsl::{LoadQuery, RunQueryDsl};
use diesel::sql_types::{BigInt, Text};
use matroska_core::TableSpec;
use matroska_outbox::{Dialect, Outbox, SqlConnection};

use crate::error::Result;

pub use matroska_outbox::{
    OutboxDb, Relay, RelayHandle, poke, wait_delivered, wait_delivered_blocking,
};

/// A Diesel backend the outbox knows the SQL dialect of.
pub trait OutboxBackend: Backend {
    /// The backend's dialect.
    const DIALECT: Dialect;
}

#[cfg(feature = "sqlite")]
#[cfg_attr(docsrs, doc(cfg(feature = "sqlite")))]
impl OutboxBackend for diesel::sqlite::Sqlite {
    const DIALECT: Dialect = Dialect::Sqlite;
}

#[cfg(feature = "postgres")]
#[cfg_attr(docsrs, doc(cfg(feature = "postgres")))]
impl OutboxBackend for diesel::pg::Pg {
    const DIALECT: Dialect = Dialect::Postgres;
}

#[cfg(feature = "mysql")]
#[cfg_attr(docsrs, doc(cfg(feature = "mysql")))]
impl OutboxBackend for diesel::mysql::Mysql {
    const DIALECT: Dialect = Dialect::MySql;
}

/// The statements of a Diesel SQL migration: `up.sql` installs the outbox tables and the
/// triggers, `down.sql` removes the triggers (the outbox tables and their rows stay: other
/// tables may still use them).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct MigrationSql {
    /// For `up.sql`.
    pub up: String,
    /// For `down.sql`.
    pub down: String,
}

/// The SQL of a Diesel migration that installs `outbox` for `tables` on backend `B`.
///
/// # Errors
/// [`Error::Outbox`](crate::Error::Outbox) for an invalid table spec.
pub fn migration_sql<B: OutboxBackend>(
    outbox: &Outbox,
    tables: &[TableSpec],
) -> Result<MigrationSql> {
    let script = |statements: Vec<String>| {
        statements
            .into_iter()
            .map(|s| format!("{s};\n"))
            .collect::<String>()
    };
    let names: Vec<&str> = tables.iter().map(TableSpec::table).collect();
    Ok(MigrationSql {
        up: script(outbox.install_sql(B::DIALECT, tables)?),
        down: script(outbox.uninstall_sql(B::DIALECT, &names)),
    })
}

/// Installs (or upgrades) the default outbox for `tables` through a Diesel connection: see
/// [`matroska_outbox::install`]. Idempotent. Blocks while it runs (it is sync, like the
/// connection).
///
/// # Errors
/// [`Error::Outbox`](crate::Error::Outbox) with the database's error, or when a table carries
/// triggers of a newer matroska.
pub fn install_outbox<C>(conn: &mut C, tables: &[TableSpec]) -> Result<()>
where
    C: Connection + Send,
    C::Backend: OutboxBackend,
    SqlQuery: for<'a> LoadQuery<'a, C, Pair>,
{
    install_outbox_with(conn, &Outbox::default(), tables)
}

/// [`install_outbox`] for an outbox with another name or schema.
///
/// # Errors
/// As [`install_outbox`].
pub fn install_outbox_with<C>(conn: &mut C, outbox: &Outbox, tables: &[TableSpec]) -> Result<()>
where
    C: Connection + Send,
    C::Backend: OutboxBackend,
    SqlQuery: for<'a> LoadQuery<'a, C, Pair>,
{
    let conn = DieselSql::new(conn);
    Ok(block_on(matroska_outbox::install(&conn, outbox, tables))?)
}

/// Removes the default outbox's triggers of `tables` (for a migration's `down`).
///
/// # Errors
/// [`Error::Outbox`](crate::Error::Outbox) with the database's error.
pub fn uninstall_outbox<C>(conn: &mut C, tables: &[&str]) -> Result<()>
where
    C: Connection + Send,
    C::Backend: OutboxBackend,
    SqlQuery: for<'a> LoadQuery<'a, C, Pair>,
{
    let conn = DieselSql::new(conn);
    Ok(block_on(matroska_outbox::uninstall(
        &conn,
        &Outbox::default(),
        tables,
    ))?)
}

/// A row of (text, integer), as the outbox's catalogue queries return (columns `name`, `n`).
#[derive(Debug, diesel::QueryableByName)]
pub struct Pair {
    #[diesel(sql_type = Text)]
    name: String,
    #[diesel(sql_type = BigInt)]
    n: i64,
}

/// A sync Diesel connection as the outbox installer's [`SqlConnection`]. Its calls block (the
/// connection is sync); the futures they return are always ready.
pub struct DieselSql<'a, C> {
    // The installer takes `&self` and must be `Sync`; Diesel connections need `&mut` and are
    // not `Sync`. A mutex gives both (there is never contention: one installer call at a time).
    conn: Mutex<&'a mut C>,
}

impl<'a, C> DieselSql<'a, C> {
    /// Wraps `conn`.
    pub fn new(conn: &'a mut C) -> Self {
        DieselSql {
            conn: Mutex::new(conn),
        }
    }

    fn with<R>(&self, f: impl FnOnce(&mut C) -> R) -> R {
        // A poisoned lock means an earlier call panicked mid-statement; the connection is
        // still a connection, and the next statement reports its own errors.
        let mut guard = self.conn.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut guard)
    }
}

fn db_error(e: diesel::result::Error) -> matroska_outbox::Error {
    matroska_outbox::Error::Connection(e.to_string())
}

#[async_trait]
impl<C> SqlConnection for DieselSql<'_, C>
where
    C: Connection + Send,
    C::Backend: OutboxBackend,
    SqlQuery: for<'a> LoadQuery<'a, C, Pair>,
{
    fn dialect(&self) -> Dialect {
        <C::Backend as OutboxBackend>::DIALECT
    }

    async fn execute_sql(&self, sql: &str) -> matroska_outbox::Result<()> {
        self.with(|conn| conn.batch_execute(sql)).map_err(db_error)
    }

    async fn query_pairs(&self, sql: &str) -> matroska_outbox::Result<Vec<(String, i64)>> {
        let rows = self
            .with(|conn| diesel::sql_query(sql).load::<Pair>(conn))
            .map_err(db_error)?;
        Ok(rows.into_iter().map(|p| (p.name, p.n)).collect())
    }
}

/// Drives a future to completion on this thread. The installer's futures only await the
/// sync [`DieselSql`] calls, so they complete in one poll; parking covers any other case.
fn block_on<F: Future>(future: F) -> F::Output {
    struct Unpark(std::thread::Thread);
    impl Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = Arc::new(Unpark(std::thread::current())).into();
    let mut cx = Context::from_waker(&waker);
    let mut future = std::pin::pin!(future);
    loop {
        match future.as_mut().poll(&mut cx) {
            Poll::Ready(out) => return out,
            Poll::Pending => std::thread::park(),
        }
    }
}
