//! Which connections cached queries may use the cache on, and which data they read.
//!
//! Cached-query keys hash the SQL and its values; on their own they would let two databases
//! or schemas behind one cache prefix (tenants, a staging and a production database, schemas
//! picked by `search_path`) share entries and each other's rows. So every key also hashes the
//! connection's **namespace**: the database, schema search path and user it reads as. It is
//! asked for once per pool (one query on the pool's first cached query) and remembered, so a
//! hit costs no database round trip.
//!
//! | database | namespace |
//! |---|---|
//! | PostgreSQL | `current_database()`, `current_schemas(false)` (the effective `search_path`), `current_user` |
//! | MariaDB / MySQL | `DATABASE()`, `CURRENT_USER()` |
//! | SQLite | every attached database's name and file (`pragma_database_list`); an in-memory database is private to its pool |
//!
//! A transaction's view is its own (uncommitted rows, an old snapshot): on one, cached queries
//! read through to the database.
//!
//! **Tenants on one pool.** The namespace belongs to the pool, so every connection of the
//! pool must read the same data. Give each tenant its own pool
//! (`ConnectOptions::set_schema_search_path`, or an `after_connect` that sets it), or switch
//! the tenant inside a transaction with `SET LOCAL search_path` / `SET LOCAL ROLE` (cached
//! queries on the transaction read through, and the setting ends with it; tested by
//! `set_local_search_path_in_a_transaction_keeps_tenants_apart_postgres`). A *session* `SET`
//! sent through the pool (`db.execute_unprepared("SET search_path TO ..")`, or a plain `SET`
//! in a transaction, which outlives its commit) changes one arbitrary pooled connection, which
//! SeaORM's later statements may or may not run on: unreliable without a cache, and not
//! covered with one (such a connection reads and fills the pool's entries). Cached queries
//! cannot tell: a hit runs no statement, so there is no connection to ask, and asking on every
//! cached query would cost each hit a round trip and could still ask another connection than
//! the one the next statement runs on.
//!
//! Not covered either, so give such databases their own cache (or prefix): two *servers* with
//! equal database, schema and user names behind one prefix, and row-level security keyed by
//! session settings rather than the user.

use std::any::Any;
use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex, PoisonError};

use async_trait::async_trait;
use sea_orm::{
    ConnectionTrait, DatabaseConnection, DatabaseExecutor, DatabaseTransaction, DbBackend, DbErr,
    Statement,
};

/// A connection that [`Cached`](crate::Cached) queries and
/// [`find_by_id`](crate::query::find_by_id) run on: it says whether the cache may be used on
/// it, and the namespace its keys carry (see the [module docs](self)).
///
/// Implemented for SeaORM's `DatabaseConnection` (the cache is used), `DatabaseTransaction`
/// (read through) and `DatabaseExecutor` (by variant). A wrapper type implements it by
/// delegating to the connection it wraps.
#[async_trait]
pub trait CacheableConnection: ConnectionTrait + Sync {
    /// The namespace of the data this connection reads, or `None` when cached queries must
    /// not use the cache on it (a transaction).
    ///
    /// # Errors
    /// The database's, from the query that asks for the namespace.
    async fn cache_namespace(&self) -> Result<Option<Arc<str>>, DbErr>;
}

#[async_trait]
impl CacheableConnection for DatabaseConnection {
    async fn cache_namespace(&self) -> Result<Option<Arc<str>>, DbErr> {
        let Some(pool) = pool_identity(self) else {
            warn_uncached(self.get_database_backend());
            return Ok(None);
        };
        let id = Arc::as_ptr(&pool).cast::<()>() as usize;
        if let Some((_, namespace)) = known().get(&id) {
            return Ok(Some(Arc::clone(namespace)));
        }
        let namespace: Arc<str> = ask_namespace(self, id).await?.into();
        let mut known = known();
        if known.len() >= PRUNE_AT {
            // Entries whose pool is gone (only this map still holds its options).
            known.retain(|_, (pin, _)| Arc::strong_count(pin) > 1);
        }
        known.insert(id, (pool, Arc::clone(&namespace)));
        tracing::debug!(namespace = %namespace, "cached queries on a new pool");
        Ok(Some(namespace))
    }
}

#[async_trait]
impl CacheableConnection for DatabaseTransaction {
    async fn cache_namespace(&self) -> Result<Option<Arc<str>>, DbErr> {
        Ok(None)
    }
}

#[async_trait]
impl CacheableConnection for DatabaseExecutor<'_> {
    async fn cache_namespace(&self) -> Result<Option<Arc<str>>, DbErr> {
        match self {
            DatabaseExecutor::Connection(conn) => (*conn).cache_namespace().await,
            _ => Ok(None),
        }
    }
}

/// A pool's connect options: their address names the pool (all clones of a pool share
/// them), and the map below holds them, so the address cannot be reused by another pool while
/// its namespace is remembered. New options (`set_connect_options`) are asked for anew.
type Pin = Arc<dyn Any + Send + Sync>;

const PRUNE_AT: usize = 256;

/// Pool address -> (its pinned options, its namespace).
type Known = HashMap<usize, (Pin, Arc<str>)>;

fn known() -> std::sync::MutexGuard<'static, Known> {
    static KNOWN: LazyLock<Mutex<Known>> = LazyLock::new(Mutex::default);
    KNOWN.lock().unwrap_or_else(PoisonError::into_inner)
}

fn pool_identity(db: &DatabaseConnection) -> Option<Pin> {
    #[cfg(any(
        feature = "sqlx-postgres",
        feature = "sqlx-mysql",
        feature = "sqlx-sqlite"
    ))]
    use sea_orm::DatabaseConnectionType as T;
    match &db.inner {
        #[cfg(feature = "sqlx-postgres")]
        T::SqlxPostgresPoolConnection(_) => {
            Some(db.get_postgres_connection_pool().connect_options())
        }
        #[cfg(feature = "sqlx-mysql")]
        T::SqlxMySqlPoolConnection(_) => Some(db.get_mysql_connection_pool().connect_options()),
        #[cfg(feature = "sqlx-sqlite")]
        T::SqlxSqlitePoolConnection(_) => Some(db.get_sqlite_connection_pool().connect_options()),
        // Mock, proxy and disconnected handles, and drivers this build does not know.
        _ => None,
    }
}

/// Once per backend: cached queries on a connection whose pool this build cannot identify
/// (a driver feature of sea-orm turned on without matroska-seaorm's) read through.
fn warn_uncached(backend: DbBackend) {
    static WARNED: Mutex<Vec<DbBackend>> = Mutex::new(Vec::new());
    let mut warned = WARNED.lock().unwrap_or_else(PoisonError::into_inner);
    if !warned.contains(&backend) {
        warned.push(backend);
        tracing::warn!(
            ?backend,
            "cached queries on this connection read through the cache: matroska-seaorm cannot \
             identify its pool (a mock or proxy connection, or a driver this build lacks: turn \
             on matroska-seaorm's `sqlx-*` feature for this database)"
        );
    }
}

async fn ask_namespace(db: &DatabaseConnection, pool: usize) -> Result<String, DbErr> {
    use matroska_core::namespace;
    let backend = db.get_database_backend();
    let sql = match backend {
        DbBackend::Postgres => namespace::POSTGRES_SQL,
        DbBackend::MySql => namespace::MYSQL_SQL,
        DbBackend::Sqlite => namespace::SQLITE_SQL,
        other => {
            return Err(DbErr::Custom(format!(
                "cached queries do not support the {other:?} backend"
            )));
        }
    };
    let row = db
        .query_one_raw(Statement::from_string(backend, sql))
        .await?
        .ok_or_else(|| DbErr::Custom("the namespace query returned no row".into()))?;
    let mut ns: String = row.try_get("", "ns")?;
    if backend == DbBackend::Sqlite && row.try_get::<i64>("", "memory")? > 0 {
        // Each pool of an in-memory database is a database of its own (and no other process
        // can open it): its entries are private to the pool.
        namespace::private_to(&mut ns, pool as u64);
    }
    Ok(format!("{backend:?}/{ns}"))
}
