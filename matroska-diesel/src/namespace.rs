//! Which data a connection reads, so cached queries on two databases (or PostgreSQL schemas)
//! behind one cache never share entries.
//!
//! Every key hashes the connection's **namespace**: its database, schema search path and user
//! on PostgreSQL, database and user on MySQL / MariaDB, the attached database files on SQLite
//! (an in-memory database is private to its connection), as
//! [`matroska_core::namespace`] defines them for every integration. It is asked once per
//! connection (one query, on the first cached query that is not inside a transaction) and
//! remembered *in the connection*: Diesel connections carry an instrumentation slot
//! (`Connection::set_instrumentation`), and matroska puts a [`CacheInstrumentation`] there
//! that holds the namespace and forwards every event to the instrumentation it replaced. So a
//! hit costs no round trip, the namespace moves with the connection in and out of a pool, and
//! it dies with the connection (nothing keyed by address, which another connection could
//! reuse).
//!
//! The slot is taken only when it holds what a new connection gets: Diesel's no-op, or the
//! process default of [`set_default_instrumentation`](diesel::connection::set_default_instrumentation)
//! (recreated inside the wrapper). A connection with an instrumentation of its own
//! (`set_instrumentation(my_logger)`) keeps it, and its cached queries ask the namespace on
//! every call, unless you wrap yours: `conn.set_instrumentation(CacheInstrumentation::wrap(my_logger))`.
//! (A closure that captures nothing is told from Diesel's no-op by where it lives: Diesel
//! boxes what you set, and keeps its no-op inside the connection.)
//!
//! Run `SET search_path` (or `USE db`) before a connection's first cached query: a namespace
//! changed by hand afterwards is not seen (give such connections their own cache, or name the
//! tenant with [`Cached::namespace`](crate::Cached::namespace)).

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

use diesel::backend::Backend;
use diesel::connection::LoadConnection;
use diesel::connection::{Instrumentation, InstrumentationEvent, get_default_instrumentation};
use diesel::query_dsl::RunQueryDsl;
use diesel::{QueryResult, QueryableByName};
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
    namespace: Option<Arc<str>>,
    inner: Option<Box<dyn Instrumentation>>,
}

impl CacheInstrumentation {
    /// `inner`, with room for the connection's namespace (asked on its first cached query).
    pub fn wrap(inner: impl Instrumentation) -> Self {
        Self {
            namespace: None,
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
        if let Some(inner) = &mut self.inner {
            inner.on_connection_event(event);
        }
    }
}

/// The namespace remembered in an instrumentation slot, if any.
pub(crate) fn remembered(slot: &mut dyn Instrumentation) -> Option<Arc<str>> {
    slot.downcast_ref::<CacheInstrumentation>()?
        .namespace
        .clone()
}

/// What to put in the slot to remember `namespace`, or `None` to leave the slot alone (it
/// holds an instrumentation matroska did not install and cannot recreate).
pub(crate) fn remember(
    slot: &mut dyn Instrumentation,
    namespace: &Arc<str>,
) -> Option<CacheInstrumentation> {
    if let Some(ours) = slot.downcast_mut::<CacheInstrumentation>() {
        // Installed by the user (`wrap`): fill it in place.
        ours.namespace = Some(Arc::clone(namespace));
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

/// Numbers in-memory SQLite connections, so each one's entries are its own.
fn next_private_owner() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// A backend whose connections can say which data they read. Implemented for Diesel's SQLite,
/// PostgreSQL and MySQL backends (with this crate's features of the same names).
pub trait NamespaceBackend: Backend + Sized {
    /// Asks the namespace on a sync connection.
    #[doc(hidden)]
    fn ask<C>(conn: &mut C) -> QueryResult<String>
    where
        C: LoadConnection<Backend = Self>;

    /// Asks the namespace on a `diesel_async` connection.
    #[cfg(feature = "diesel-async")]
    #[doc(hidden)]
    fn ask_async<C>(conn: &mut C) -> impl Future<Output = QueryResult<String>> + Send
    where
        C: diesel_async::AsyncConnection<Backend = Self>;
}

/// The namespace statement's row: the namespace, and on SQLite whether an attached database
/// is in memory.
#[derive(QueryableByName)]
struct Row {
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Text>)]
    ns: Option<String>,
}

#[cfg(feature = "sqlite")]
#[derive(QueryableByName)]
struct SqliteRow {
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Text>)]
    ns: Option<String>,
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::BigInt>)]
    memory: Option<i64>,
}

/// `{backend}/{namespace}`, made private to this connection when a database is in memory.
fn finish(backend: &str, ns: Option<String>, memory: bool) -> String {
    let mut ns = format!("{backend}/{}", ns.unwrap_or_default());
    if memory {
        namespace::private_to(&mut ns, next_private_owner());
    }
    ns
}

/// Implements [`NamespaceBackend`] for a backend whose statement returns `$row`.
macro_rules! namespace_backend {
    ($backend:ty, $name:literal, $sql:expr, $row:ty, |$r:ident| $memory:expr) => {
        impl NamespaceBackend for $backend {
            fn ask<C>(conn: &mut C) -> QueryResult<String>
            where
                C: LoadConnection<Backend = Self>,
            {
                let $r: $row = diesel::sql_query($sql).get_result(conn)?;
                let memory = $memory;
                Ok(finish($name, $r.ns, memory))
            }

            #[cfg(feature = "diesel-async")]
            fn ask_async<C>(conn: &mut C) -> impl Future<Output = QueryResult<String>> + Send
            where
                C: diesel_async::AsyncConnection<Backend = Self>,
            {
                async move {
                    let $r: $row =
                        diesel_async::RunQueryDsl::get_result(diesel::sql_query($sql), conn)
                            .await?;
                    let memory = $memory;
                    Ok(finish($name, $r.ns, memory))
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
#[cfg(feature = "postgres")]
namespace_backend!(
    diesel::pg::Pg,
    "Postgres",
    namespace::POSTGRES_SQL,
    Row,
    |row| false
);
#[cfg(feature = "mysql")]
namespace_backend!(
    diesel::mysql::Mysql,
    "MySql",
    namespace::MYSQL_SQL,
    Row,
    |row| false
);

/// The namespace of a sync connection: remembered in it, else asked (and remembered when its
/// instrumentation slot allows).
pub(crate) fn of_connection<C>(conn: &mut C) -> QueryResult<Arc<str>>
where
    C: LoadConnection,
    C::Backend: NamespaceBackend,
{
    if let Some(ns) = remembered(conn.instrumentation()) {
        return Ok(ns);
    }
    let ns: Arc<str> = <C::Backend as NamespaceBackend>::ask(conn)?.into();
    if let Some(slot) = remember(conn.instrumentation(), &ns) {
        conn.set_instrumentation(slot);
    }
    tracing::debug!(namespace = %ns, "cached queries on a new connection");
    Ok(ns)
}

/// [`of_connection`] for a `diesel_async` connection.
#[cfg(feature = "diesel-async")]
pub(crate) async fn of_async_connection<C>(conn: &mut C) -> QueryResult<Arc<str>>
where
    C: diesel_async::AsyncConnection,
    C::Backend: NamespaceBackend,
{
    // diesel-async connections hand out their instrumentation only while no query of theirs
    // is in flight (else they panic); here none is: this function holds the `&mut`.
    if let Some(ns) = remembered(conn.instrumentation()) {
        return Ok(ns);
    }
    let ns: Arc<str> = <C::Backend as NamespaceBackend>::ask_async(conn)
        .await?
        .into();
    if let Some(slot) = remember(conn.instrumentation(), &ns) {
        conn.set_instrumentation(slot);
    }
    tracing::debug!(namespace = %ns, "cached queries on a new connection");
    Ok(ns)
}
