//! Which data a connection reads, so cached queries on two databases (or PostgreSQL schemas)
//! behind one cache never share entries.
//!
//! Every key hashes the connection's **namespace**: its database, schema search path and user
//! on PostgreSQL, database and user on MySQL / MariaDB, the attached database files on SQLite
//! (an in-memory database is private to its connection), as
//! [`matroska_core::namespace`] defines them for every integration. It is asked with one query
//! and remembered *in the connection*: Diesel connections carry an instrumentation slot
//! (`Connection::set_instrumentation`), and matroska puts a [`CacheInstrumentation`] there
//! that holds the namespace and forwards every event to the instrumentation it replaced. The
//! namespace moves with the connection in and out of a pool, and it dies with the connection
//! (nothing keyed by address, which another connection could reuse).
//!
//! **A remembered namespace lasts only until the connection runs another statement.** The
//! instrumentation sees every statement a Diesel connection runs (sync and diesel-async), and
//! any of them may change what the connection reads: `SET search_path`, `SET ROLE`,
//! `SET SESSION AUTHORIZATION`, `RESET`, `DISCARD ALL`, `USE db`, a `set_config(..)` in a
//! `SELECT`, or a function that calls one, which no reading of the SQL text could see. So any
//! event forgets it, and the next cached query asks again. Cached queries that follow each
//! other with nothing in between (hits) cost no round trip; a cached query after other
//! statements (a write, a pool's check-out ping, the previous cached query's miss) costs one
//! namespace query. A schema-per-tenant application can therefore switch a pooled
//! connection's `search_path` (or role, or database) between requests, and each request reads
//! and fills its own tenant's entries.
//!
//! The slot is taken only when it holds what a new connection gets: Diesel's no-op, or the
//! process default of [`set_default_instrumentation`](diesel::connection::set_default_instrumentation)
//! (recreated inside the wrapper). A connection with an instrumentation of its own
//! (`set_instrumentation(my_logger)`) keeps it, and its cached queries ask the namespace on
//! every call, unless you wrap yours: `conn.set_instrumentation(CacheInstrumentation::wrap(my_logger))`.
//! (A closure that captures nothing is told from Diesel's no-op by where it lives: Diesel
//! boxes what you set, and keeps its no-op inside the connection.)
//!
//! Not covered (see [`matroska_core::namespace`]): tenants told apart by a session setting the
//! namespace does not include (row-level security on `current_setting('app.tenant')`): name
//! them with [`Cached::namespace`](crate::Cached::namespace).

// Without a backend feature (the facade's plain `diesel`) no connection type exists to ask,
// so the asking code is unused there.
#![cfg_attr(
    not(any(feature = "sqlite", feature = "postgres", feature = "mysql")),
    allow(dead_code, unused_imports, unused_macros)
)]

#[cfg(feature = "diesel-async")]
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use diesel::QueryResult;
use diesel::backend::Backend;
use diesel::connection::LoadConnection;
use diesel::connection::{Instrumentation, InstrumentationEvent, get_default_instrumentation};
use diesel::query_dsl::RunQueryDsl;
use matroska_core::namespace;

/// Diesel instrumentation that remembers a connection's cache namespace and forwards every
/// event to the instrumentation it wraps. matroska installs it on a connection's first cached
/// query (see the [module docs](self)); install it yourself to keep an instrumentation of your
/// own on a connection that runs cached queries:
///
/// ```
/// use diesel::prelude::*;
/// use diesel::connection::InstrumentationEvent;
/// use matroska_diesel::CacheInstrumentation;
///
/// let mut conn = SqliteConnection::establish(":memory:")?;
/// conn.set_instrumentation(CacheInstrumentation::wrap(|event: InstrumentationEvent<'_>| {
///     if let InstrumentationEvent::StartQuery { query, .. } = event {
///         println!("{query}");
///     }
/// }));
/// # Ok::<_, diesel::ConnectionError>(())
/// ```
pub struct CacheInstrumentation {
    /// The namespace asked last, while the connection has run nothing since.
    namespace: Option<Arc<str>>,
    /// The number making an in-memory SQLite database private to this connection: kept for
    /// the connection's life, so asking again names the same database.
    private_owner: Option<u64>,
    /// Whether `USE db` statements are looked for: MySQL / MariaDB, or a backend not known
    /// yet (no namespace asked).
    watch_use: bool,
    /// Diesel may hold prepared statements of this connection in its statement cache.
    prepared: bool,
    /// A `USE db` ran while prepared statements were cached: they keep reading the database
    /// they were prepared in, whatever the namespace says, so cached queries read through.
    switched_database: bool,
    inner: Option<Box<dyn Instrumentation>>,
}

impl CacheInstrumentation {
    /// `inner`, with room for the connection's namespace (asked on its first cached query).
    pub fn wrap(inner: impl Instrumentation) -> Self {
        Self {
            namespace: None,
            private_owner: None,
            watch_use: true,
            prepared: false,
            switched_database: false,
            inner: Some(Box::new(inner)),
        }
    }
}

impl std::fmt::Debug for CacheInstrumentation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CacheInstrumentation")
            .field("namespace", &self.namespace)
            .field("wraps", &self.inner.is_some())
            .finish()
    }
}

impl Instrumentation for CacheInstrumentation {
    fn on_connection_event(&mut self, event: InstrumentationEvent<'_>) {
        // Every event is a statement (or a transaction's), and any statement may have changed
        // what the connection reads, in ways its text need not show (a function calling
        // `set_config`): the next cached query asks again.
        self.namespace = None;
        match &event {
            InstrumentationEvent::CacheQuery { .. } => self.prepared = true,
            InstrumentationEvent::StartQuery { query, .. }
                if self.watch_use
                    && self.prepared
                    && !self.switched_database
                    && switches_database(&statement_text(*query)) =>
            {
                self.switched_database = true;
                warn_switched_database();
            }
            _ => {}
        }
        if let Some(inner) = &mut self.inner {
            inner.on_connection_event(event);
        }
    }
}

/// The SQL of an instrumentation event's statement, without Diesel's ` -- binds: [..]` suffix:
/// formatting stops there, so a statement with many bound values costs no more than its SQL.
fn statement_text(query: &dyn diesel::connection::DebugQuery) -> String {
    use std::fmt::Write as _;
    struct UntilBinds(String);
    impl std::fmt::Write for UntilBinds {
        fn write_str(&mut self, s: &str) -> std::fmt::Result {
            if s == BINDS {
                // Ends the formatting; the binds are values, not SQL.
                return Err(std::fmt::Error);
            }
            self.0.push_str(s);
            Ok(())
        }
    }
    let mut text = UntilBinds(String::new());
    // An error here is the stop above, or a failing `Display` of the query: either way what
    // was written is all the SQL there is to look at.
    let _ = write!(text, "{query}");
    text.0
}

/// How Diesel's statement text introduces the bound values.
const BINDS: &str = " -- binds: ";

/// Whether `sql` (a statement or a batch, as an instrumentation event shows it) has a `USE`
/// statement, the only way a MySQL / MariaDB session changes its database (`USE` is not
/// allowed in stored routines). Looks at the start of every `;`-separated part, after spaces
/// and comments; a `;` inside a quoted string only makes it look at more places. Diesel's text
/// ends with ` -- binds: [..]`, the values: not SQL, cut off.
fn switches_database(sql: &str) -> bool {
    let sql = sql.split_once(BINDS).map_or(sql, |(sql, _)| sql);
    sql.split(';').any(|statement| {
        let mut rest = statement;
        loop {
            rest = rest.trim_start();
            if let Some(after) = rest.strip_prefix("--").or_else(|| rest.strip_prefix('#')) {
                rest = after.split_once('\n').map_or("", |(_, next)| next);
            } else if rest.starts_with("/*!") {
                // MySQL runs the text of an executable comment: it may hold anything.
                return true;
            } else if let Some(after) = rest.strip_prefix("/*") {
                rest = after.split_once("*/").map_or("", |(_, next)| next);
            } else {
                break;
            }
        }
        rest.get(..3)
            .is_some_and(|word| word.eq_ignore_ascii_case("use"))
            && !rest[3..]
                .chars()
                .next()
                .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_' || c == '$')
    })
}

/// What an instrumentation slot knows of its connection's namespace.
pub(crate) enum Remembered {
    /// Asked, and the connection has run nothing since.
    Namespace(Arc<str>),
    /// To be asked.
    Unknown,
    /// The connection's cached queries must read through (see
    /// [`CacheInstrumentation::switched_database`]).
    ReadThrough,
}

/// What the instrumentation slot of a connection remembers.
pub(crate) fn remembered(slot: &mut dyn Instrumentation) -> Remembered {
    match slot.downcast_ref::<CacheInstrumentation>() {
        Some(ours) if ours.switched_database => Remembered::ReadThrough,
        Some(CacheInstrumentation {
            namespace: Some(ns),
            ..
        }) => Remembered::Namespace(Arc::clone(ns)),
        _ => Remembered::Unknown,
    }
}

/// The private number of this connection's in-memory SQLite database, if it got one.
fn private_owner(slot: &mut dyn Instrumentation) -> Option<u64> {
    slot.downcast_ref::<CacheInstrumentation>()?.private_owner
}

/// What to put in the slot to remember `namespace`, or `None` to leave the slot alone (it
/// holds an instrumentation matroska did not install and cannot recreate).
pub(crate) fn remember(
    slot: &mut dyn Instrumentation,
    namespace: &Arc<str>,
    private_owner: Option<u64>,
    watch_use: bool,
) -> Option<CacheInstrumentation> {
    if let Some(ours) = slot.downcast_mut::<CacheInstrumentation>() {
        // Ours (installed earlier, or by the user with `wrap`): fill it in place.
        ours.namespace = Some(Arc::clone(namespace));
        ours.private_owner = ours.private_owner.or(private_owner);
        ours.watch_use = watch_use;
        return None;
    }
    let default = get_default_instrumentation();
    let current = slot.as_any().type_id();
    let fresh = match &default {
        // The process default, as a new connection got it: recreated inside the wrapper.
        Some(default) => {
            let default: &dyn Instrumentation = &**default;
            default.as_any().type_id() == current
        }
        // Diesel's no-op: zero-sized, and stored in the connection itself. An instrumentation
        // of the user's is boxed by `set_instrumentation`, and a boxed zero-sized value (a
        // closure that captures nothing) sits at the dangling address `align_of`, never
        // inside a connection: such a slot is theirs, and stays.
        None => {
            let address = (&raw const *slot).cast::<u8>().addr();
            std::mem::size_of_val(slot) == 0 && address != std::mem::align_of_val(slot)
        }
    };
    if !fresh {
        warn_unremembered();
        return None;
    }
    Some(CacheInstrumentation {
        namespace: Some(Arc::clone(namespace)),
        private_owner,
        watch_use,
        // Statements the connection ran before it got this instrumentation were not seen:
        // some may be in Diesel's statement cache.
        prepared: true,
        switched_database: false,
        inner: default,
    })
}

/// Once per process: a connection's own instrumentation makes its cached queries ask the
/// namespace each time.
fn warn_unremembered() {
    static WARNED: std::sync::Once = std::sync::Once::new();
    WARNED.call_once(|| {
        tracing::warn!(
            "a connection with its own Diesel instrumentation asks its cache namespace on every \
             cached query; install it as `CacheInstrumentation::wrap(yours)` so matroska can \
             remember the namespace in the connection"
        );
    });
}

/// Once per process: a connection switched databases with `USE` after Diesel cached prepared
/// statements on it.
fn warn_switched_database() {
    static WARNED: std::sync::Once = std::sync::Once::new();
    WARNED.call_once(|| {
        tracing::warn!(
            "a Diesel connection ran `USE` after preparing statements: MySQL / MariaDB keep \
             each prepared statement on the database it was prepared in, so Diesel's cached \
             statements may still read the old database; this connection's cached queries \
             read through the cache from now on (give each database its own connection or pool)"
        );
    });
}

/// Numbers in-memory SQLite connections, so each one's entries are its own.
fn next_private_owner() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// A backend whose connections can say which data they read. Implemented for Diesel's SQLite,
/// PostgreSQL and MySQL backends (with this crate's features of the same names).
pub trait NamespaceBackend: Backend + Sized {
    /// How the backend renders SQL, for [`Cached::derived`](crate::Cached::derived).
    #[doc(hidden)]
    const DIALECT: matroska_core::derived::Dialect;

    /// Asks the namespace on a sync connection.
    #[doc(hidden)]
    fn ask<C>(conn: &mut C) -> QueryResult<Asked>
    where
        C: LoadConnection<Backend = Self>;

    /// Asks the namespace on a `diesel_async` connection.
    #[cfg(feature = "diesel-async")]
    #[doc(hidden)]
    fn ask_async<C>(conn: &mut C) -> impl Future<Output = QueryResult<Asked>> + Send
    where
        C: diesel_async::AsyncConnection<Backend = Self>;
}

/// The SQLite namespace statement's row: the attached files, and whether one is in memory.
#[cfg(feature = "sqlite")]
#[derive(diesel::QueryableByName)]
struct SqliteRow {
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Text>)]
    ns: Option<String>,
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::BigInt>)]
    memory: Option<i64>,
}

/// What a connection answered to the namespace statement.
#[doc(hidden)]
#[derive(Debug)]
pub struct Asked {
    backend: &'static str,
    ns: Option<String>,
    /// An attached database is in memory (SQLite).
    memory: bool,
}

impl Asked {
    /// `{backend}/{namespace}`, made private to the connection when a database is in memory:
    /// with `owner`, the number it got when first asked, else a new one (returned, to be kept).
    fn finish(self, owner: Option<u64>) -> (Arc<str>, Option<u64>) {
        let mut ns = format!("{}/{}", self.backend, self.ns.unwrap_or_default());
        if !self.memory {
            return (ns.into(), owner);
        }
        let owner = owner.unwrap_or_else(next_private_owner);
        namespace::private_to(&mut ns, owner);
        (ns.into(), Some(owner))
    }
}

/// Implements [`NamespaceBackend`] for a backend whose statement returns `$row`.
#[cfg(feature = "sqlite")]
macro_rules! namespace_backend {
    ($backend:ty, $name:expr, $sql:expr, $row:ty, |$r:ident| $memory:expr) => {
        impl NamespaceBackend for $backend {
            const DIALECT: matroska_core::derived::Dialect =
                matroska_core::derived::Dialect::Sqlite;

            fn ask<C>(conn: &mut C) -> QueryResult<Asked>
            where
                C: LoadConnection<Backend = Self>,
            {
                let $r: $row = diesel::sql_query($sql).get_result(conn)?;
                let memory = $memory;
                Ok(Asked {
                    backend: $name,
                    ns: $r.ns,
                    memory,
                })
            }

            #[cfg(feature = "diesel-async")]
            fn ask_async<C>(conn: &mut C) -> impl Future<Output = QueryResult<Asked>> + Send
            where
                C: diesel_async::AsyncConnection<Backend = Self>,
            {
                async move {
                    let $r: $row =
                        diesel_async::RunQueryDsl::get_result(diesel::sql_query($sql), conn)
                            .await?;
                    let memory = $memory;
                    Ok(Asked {
                        backend: $name,
                        ns: $r.ns,
                        memory,
                    })
                }
            }
        }
    };
}

#[cfg(feature = "sqlite")]
namespace_backend!(
    diesel::sqlite::Sqlite,
    "Sqlite",
    namespace::SQLITE_SQL,
    SqliteRow,
    |row| row.memory.unwrap_or(0) > 0
);
/// The backend name of MySQL / MariaDB namespaces.
const MYSQL: &str = "MySql";

/// The PostgreSQL / MySQL namespace statement as a Diesel query with a static id: Diesel
/// prepares it once per connection and keeps it in its statement cache, so asking again (after
/// any other statement) is one round trip. A `sql_query` is prepared anew each time: measured
/// at about four times the cost of a small cached query.
#[cfg(any(feature = "postgres", feature = "mysql"))]
#[derive(Debug, Clone, Copy, diesel::query_builder::QueryId)]
struct Probe;

#[cfg(any(feature = "postgres", feature = "mysql"))]
/// The namespace statement of a backend whose statement has one column.
trait ProbeSql {
    const SQL: &'static str;
}

#[cfg(feature = "postgres")]
impl ProbeSql for diesel::pg::Pg {
    const SQL: &'static str = namespace::POSTGRES_SQL;
}

#[cfg(feature = "mysql")]
impl ProbeSql for diesel::mysql::Mysql {
    const SQL: &'static str = namespace::MYSQL_SQL;
}

#[cfg(any(feature = "postgres", feature = "mysql"))]
impl diesel::query_builder::Query for Probe {
    type SqlType = diesel::sql_types::Nullable<diesel::sql_types::Text>;
}

#[cfg(any(feature = "postgres", feature = "mysql"))]
impl<DB: Backend + ProbeSql> diesel::query_builder::QueryFragment<DB> for Probe {
    fn walk_ast<'b>(
        &'b self,
        mut out: diesel::query_builder::AstPass<'_, 'b, DB>,
    ) -> QueryResult<()> {
        out.push_sql(DB::SQL);
        Ok(())
    }
}

#[cfg(any(feature = "postgres", feature = "mysql"))]
impl<C> RunQueryDsl<C> for Probe {}

/// Implements [`NamespaceBackend`] for a backend asked with [`Probe`].
#[cfg(any(feature = "postgres", feature = "mysql"))]
macro_rules! probe_backend {
    ($backend:ty, $name:expr, $dialect:ident) => {
        impl NamespaceBackend for $backend {
            const DIALECT: matroska_core::derived::Dialect =
                matroska_core::derived::Dialect::$dialect;

            fn ask<C>(conn: &mut C) -> QueryResult<Asked>
            where
                C: LoadConnection<Backend = Self>,
            {
                Ok(Asked {
                    backend: $name,
                    ns: Probe.get_result::<Option<String>>(conn)?,
                    memory: false,
                })
            }

            #[cfg(feature = "diesel-async")]
            fn ask_async<C>(conn: &mut C) -> impl Future<Output = QueryResult<Asked>> + Send
            where
                C: diesel_async::AsyncConnection<Backend = Self>,
            {
                async move {
                    Ok(Asked {
                        backend: $name,
                        ns: diesel_async::RunQueryDsl::get_result::<Option<String>>(Probe, conn)
                            .await?,
                        memory: false,
                    })
                }
            }
        }
    };
}

#[cfg(feature = "postgres")]
probe_backend!(diesel::pg::Pg, "Postgres", Postgres);
#[cfg(feature = "mysql")]
probe_backend!(diesel::mysql::Mysql, MYSQL, MySql);

/// The namespace of a sync connection: remembered in it if it has run nothing since it was
/// asked, else asked (and remembered when its instrumentation slot allows); `None` when its
/// cached queries must read through (a MySQL connection that switched databases).
pub(crate) fn of_connection<C>(conn: &mut C) -> QueryResult<Option<Arc<str>>>
where
    C: LoadConnection,
    C::Backend: NamespaceBackend,
{
    match remembered(conn.instrumentation()) {
        Remembered::Namespace(ns) => return Ok(Some(ns)),
        Remembered::ReadThrough => return Ok(None),
        Remembered::Unknown => {}
    }
    let asked = <C::Backend as NamespaceBackend>::ask(conn)?;
    // Remembered after the statement: its own events forgot the old namespace, not this one.
    let watch_use = asked.backend == MYSQL;
    let (ns, owner) = asked.finish(private_owner(conn.instrumentation()));
    if let Some(slot) = remember(conn.instrumentation(), &ns, owner, watch_use) {
        conn.set_instrumentation(slot);
    }
    tracing::trace!(namespace = %ns, "asked a connection's namespace");
    Ok(Some(ns))
}

/// [`of_connection`] for a `diesel_async` connection.
#[cfg(feature = "diesel-async")]
pub(crate) async fn of_async_connection<C>(conn: &mut C) -> QueryResult<Option<Arc<str>>>
where
    C: diesel_async::AsyncConnection,
    C::Backend: NamespaceBackend,
{
    // diesel-async connections hand out their instrumentation only while no query of theirs
    // is in flight (else they panic); here none is: this function holds the `&mut`, and the
    // namespace query has completed (its events included) when its future resolves.
    match remembered(conn.instrumentation()) {
        Remembered::Namespace(ns) => return Ok(Some(ns)),
        Remembered::ReadThrough => return Ok(None),
        Remembered::Unknown => {}
    }
    let asked = <C::Backend as NamespaceBackend>::ask_async(conn).await?;
    let watch_use = asked.backend == MYSQL;
    let (ns, owner) = asked.finish(private_owner(conn.instrumentation()));
    if let Some(slot) = remember(conn.instrumentation(), &ns, owner, watch_use) {
        conn.set_instrumentation(slot);
    }
    tracing::trace!(namespace = %ns, "asked a connection's namespace");
    Ok(Some(ns))
}

#[cfg(test)]
mod tests {
    use super::switches_database;

    #[test]
    fn statement_text_stops_before_the_binds() {
        use diesel::prelude::*;
        diesel::table! { t (id) { id -> Integer, name -> Text } }
        let query = t::table.filter(t::name.eq("x; USE b"));
        let debug = diesel::debug_query::<diesel::sqlite::Sqlite, _>(&query);
        let text = super::statement_text(&debug);
        assert!(text.starts_with("SELECT"), "{text}");
        assert!(!text.contains("binds") && !text.contains("USE"), "{text}");
        assert!(debug.to_string().contains("USE b"));
    }

    #[test]
    fn use_statements_are_seen_wherever_a_statement_starts() {
        for sql in [
            "USE tenant_b",
            "use `tenant_b`",
            "  \n\tUse`b`",
            "SELECT 1; USE b",
            "SELECT 1;USE b;SELECT 2",
            "-- switch\nUSE b",
            "# switch\nuse b",
            "/* switch */ USE b",
            "/*!40101 anything */",
            "USE",
            "SELECT 'a;use b' -- binds: []",
        ] {
            assert!(switches_database(sql), "{sql:?}");
        }
        for sql in [
            "SELECT `posts`.`id` FROM `posts`",
            "SELECT * FROM users",
            "UPDATE t SET used = 1",
            "user_stats",
            "SELECT 1 -- binds: [\"x; use b\"]",
            "-- USE b",
            "/* USE b */ SELECT 1",
            "",
        ] {
            assert!(!switches_database(sql), "{sql:?}");
        }
    }
}
