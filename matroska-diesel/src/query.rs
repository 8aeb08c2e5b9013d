//! Cached Diesel queries: `posts::table.filter(..).cached(&cache).load::<Post, _>(conn)`.
//!
//! [`CachedExt::cached`] wraps any Diesel query in a [`Cached`] one that runs through
//! [`Cache::get_or_load`], so stale-set protection and single-flight apply.
//!
//! - **Key**: `q:{entity}:{kind}:{hash}`, the hash a fixed 128-bit xxh3 of the backend, the
//!   optional [namespace](Cached::namespace), and Diesel's [`debug_query`](diesel::debug_query)
//!   text of the statement (SQL and bound values). Equal queries share an entry across
//!   processes of one build. The database is not part of the key: give each database its own
//!   cache (key prefix), or name it with [`Cached::namespace`] (one cache in front of several
//!   databases or tenant schemas).
//! - **Dependencies**: the primary key of every row returned (the model's
//!   [`CacheDeps`]), plus
//!   - with [`Cached::scoped`], the scope condition (which also filters the query);
//!   - otherwise the entity's `any_change` and `all` dependencies: any write to the entity
//!     invalidates the entry (coarse, never stale).
//! - **Invalidation**: Diesel has no hooks; the database outbox's triggers record every
//!   committed write and its relay invalidates these dependencies (see [`crate::outbox`]).
//!
//! A scoped query must not filter or order by columns outside the scope's fields (except ones
//! that never change, like the primary key): an update of an unwatched column invalidates
//! only the row's key and `any_change`, so a row could enter such a query unseen. Without
//! `.scoped`, any filter, order and join is safe.
//!
//! ## Sync Diesel under async
//!
//! The cache is async and Diesel's connections are sync. The Diesel call runs on the calling
//! task, inside [`tokio::task::block_in_place`] on a multi-thread runtime (the worker hands its
//! other tasks to another thread while the query runs), and directly elsewhere (a
//! current-thread runtime, as with any sync Diesel call there). It takes the connection as
//! `&mut`, so it works with a plain connection, an r2d2 `PooledConnection` or deadpool-diesel's
//! `Object::lock()` guard; a `spawn_blocking` design would need an owned connection.
//!
//! ## Transactions
//!
//! Inside a Diesel transaction (`conn.transaction(..)`, or one begun through the connection's
//! transaction manager) a cached query reads through: no hit (the transaction may have written
//! the rows) and no fill (the rows may never commit). A transaction begun with raw SQL
//! (`sql_query("BEGIN")`) is invisible to Diesel and therefore to this check.

use std::time::Duration;

use diesel::backend::Backend;
use diesel::connection::{Connection, TransactionManager};
use diesel::dsl;
use diesel::query_builder::{AsQuery, QueryFragment};
use diesel::query_dsl::methods::{FilterDsl, FindDsl, LimitDsl, SelectDsl};
use diesel::query_dsl::{LoadQuery, RunQueryDsl};
use diesel::{OptionalExtension, QueryResult};
use matroska_core::{Cache, CacheDeps, Dependency, Loaded, ToValue};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::{Result, from_load};
use crate::filter::ScopeFilter;

/// Adds [`cached`](CachedExt::cached) to Diesel queries (tables, selects, boxed selects,
/// joins).
pub trait CachedExt: Sized {
    /// This query, answered from `cache` when it can be.
    ///
    /// ```
    /// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
    /// use diesel::prelude::*;
    /// use matroska_core::{Cache, CacheDeps, Dependency};
    /// use matroska_diesel::CachedExt;
    ///
    /// diesel::table! { posts (id) { id -> Integer, title -> Text } }
    ///
    /// #[derive(Queryable, Selectable, serde::Serialize, serde::Deserialize)]
    /// struct Post { id: i32, title: String }
    /// # impl CacheDeps for Post {
    /// #     fn entity_name() -> &'static str { "posts" }
    /// #     fn primary_key(&self) -> Dependency { Dependency::primary_key("posts", [self.id]) }
    /// # }
    ///
    /// let mut conn = SqliteConnection::establish(":memory:")?;
    /// diesel::sql_query("CREATE TABLE posts (id INTEGER PRIMARY KEY, title TEXT NOT NULL)")
    ///     .execute(&mut conn)?;
    /// diesel::sql_query("INSERT INTO posts VALUES (1, 'Python'), (2, 'Cache')").execute(&mut conn)?;
    /// let cache = Cache::memory();
    ///
    /// let all = posts::table.order(posts::id).cached(&cache).load::<Post, _>(&mut conn).await?;
    /// assert_eq!(all.len(), 2);
    /// // Served from the cache now; any write to `posts` drops it (through the outbox).
    /// diesel::sql_query("DELETE FROM posts").execute(&mut conn)?;
    /// let again = posts::table.order(posts::id).cached(&cache).load::<Post, _>(&mut conn).await?;
    /// assert_eq!(again.len(), 2);
    /// # Ok::<_, Box<dyn std::error::Error>>(()) }).unwrap();
    /// ```
    fn cached(self, cache: &Cache) -> Cached<Self>;
}

impl<Q: AsQuery> CachedExt for Q {
    fn cached(self, cache: &Cache) -> Cached<Self> {
        Cached {
            query: self,
            cache: cache.clone(),
            ttl: None,
            namespace: None,
            conditions: Vec::new(),
        }
    }
}

/// A Diesel query answered from the cache; made by [`CachedExt::cached`].
#[derive(Debug, Clone)]
#[must_use]
pub struct Cached<Q> {
    query: Q,
    cache: Cache,
    ttl: Option<Duration>,
    namespace: Option<String>,
    /// The scope conditions' dependencies; empty for an unscoped query.
    conditions: Vec<Dependency>,
}

impl<Q> Cached<Q> {
    /// Time to live of the entry (default: the cache's).
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = Some(ttl);
        self
    }

    /// Names the database (or tenant schema) in the key, for one cache in front of several
    /// databases that run the same queries.
    pub fn namespace(mut self, namespace: impl Into<String>) -> Self {
        self.namespace = Some(namespace.into());
        self
    }

    /// Filters the query by a typed scope condition and makes the entry depend on it instead
    /// of on every write to the entity: a row created, deleted, or moved into or out of the
    /// condition drops the entry; a write to another list's rows does not.
    ///
    /// ```text
    /// let fantasy = PostByCategory { category: "fantasy".into() };
    /// let list = posts::table
    ///     .order(posts::id)
    ///     .cached(&cache)
    ///     .scoped(&fantasy)
    ///     .load::<Post, _>(conn)
    ///     .await?;
    /// ```
    pub fn scoped<F>(self, condition: &F) -> Cached<dsl::Filter<Q, F::Filter>>
    where
        F: ScopeFilter,
        Q: FilterDsl<F::Filter>,
    {
        let mut conditions = self.conditions;
        conditions.extend(condition.dependencies());
        Cached {
            query: self.query.filter(condition.filter()),
            cache: self.cache,
            ttl: self.ttl,
            namespace: self.namespace,
            conditions,
        }
    }

    /// The query, the cache, the TTL and the namespace.
    #[cfg(feature = "diesel-async")]
    pub(crate) fn into_parts(self) -> (Q, Cache, Option<Duration>, Option<String>) {
        (self.query, self.cache, self.ttl, self.namespace)
    }

    /// The dependencies of `M`'s entity that do not come from rows.
    pub(crate) fn base_dependencies<M: CacheDeps>(&self) -> Vec<Dependency> {
        if self.conditions.is_empty() {
            entity_dependencies::<M>()
        } else {
            self.conditions.clone()
        }
    }

    /// All rows, like [`RunQueryDsl::load`], cached with their primary keys.
    ///
    /// # Errors
    /// [`Error::Diesel`](crate::Error::Diesel) from the query; [`Error::Cache`](crate::Error::Cache)
    /// for a key or value over the cache's limits or an encoding error.
    pub async fn load<'query, U, C>(self, conn: &mut C) -> Result<Vec<U>>
    where
        C: Connection,
        C::Backend: Default,
        <C::Backend as Backend>::QueryBuilder: Default,
        Q: RunQueryDsl<C> + LoadQuery<'query, C, U> + QueryFragment<C::Backend>,
        U: CacheDeps + Serialize + DeserializeOwned,
    {
        let extra = self.base_dependencies::<U>();
        let key = key_of::<U, C, _>(&self.query, "all", self.namespace.as_deref());
        let Cached {
            query, cache, ttl, ..
        } = self;
        fetch(
            &cache,
            ttl,
            conn,
            key,
            move |conn| query.load::<U>(conn),
            move |rows| rows_deps(rows, extra),
        )
        .await
    }

    /// The same as [`Cached::load`] (Diesel's `get_results`).
    ///
    /// # Errors
    /// As [`Cached::load`].
    pub async fn get_results<'query, U, C>(self, conn: &mut C) -> Result<Vec<U>>
    where
        C: Connection,
        C::Backend: Default,
        <C::Backend as Backend>::QueryBuilder: Default,
        Q: RunQueryDsl<C> + LoadQuery<'query, C, U> + QueryFragment<C::Backend>,
        U: CacheDeps + Serialize + DeserializeOwned,
    {
        self.load(conn).await
    }

    /// The first row, if any (Diesel's `get_result(conn).optional()`). A missing row is
    /// cached too.
    ///
    /// # Errors
    /// As [`Cached::load`].
    pub async fn get_result<'query, U, C>(self, conn: &mut C) -> Result<Option<U>>
    where
        C: Connection,
        C::Backend: Default,
        <C::Backend as Backend>::QueryBuilder: Default,
        Q: RunQueryDsl<C> + LoadQuery<'query, C, U> + QueryFragment<C::Backend>,
        U: CacheDeps + Serialize + DeserializeOwned,
    {
        let extra = self.base_dependencies::<U>();
        let key = key_of::<U, C, _>(&self.query, "one", self.namespace.as_deref());
        let Cached {
            query, cache, ttl, ..
        } = self;
        fetch(
            &cache,
            ttl,
            conn,
            key,
            move |conn| query.get_result::<U>(conn).optional(),
            move |row| rows_deps(row.as_slice(), extra),
        )
        .await
    }

    /// The first row with `LIMIT 1`, if any (Diesel's `first(conn).optional()`). A missing row
    /// is cached too.
    ///
    /// # Errors
    /// As [`Cached::load`].
    pub async fn first<'query, U, C>(self, conn: &mut C) -> Result<Option<U>>
    where
        C: Connection,
        C::Backend: Default,
        <C::Backend as Backend>::QueryBuilder: Default,
        Q: LimitDsl,
        dsl::Limit<Q>: RunQueryDsl<C> + LoadQuery<'query, C, U> + QueryFragment<C::Backend>,
        U: CacheDeps + Serialize + DeserializeOwned,
    {
        let extra = self.base_dependencies::<U>();
        let Cached {
            query,
            cache,
            ttl,
            namespace,
            ..
        } = self;
        let query = query.limit(1);
        let key = key_of::<U, C, _>(&query, "first", namespace.as_deref());
        fetch(
            &cache,
            ttl,
            conn,
            key,
            move |conn| query.get_result::<U>(conn).optional(),
            move |row| rows_deps(row.as_slice(), extra),
        )
        .await
    }

    /// `SELECT COUNT(*)` of the query, cached with the scope condition, or with every write
    /// to `M`'s entity when unscoped: `.cached(&cache).count::<Post, _>(conn)`.
    ///
    /// # Errors
    /// As [`Cached::load`].
    pub async fn count<M, C>(self, conn: &mut C) -> Result<i64>
    where
        C: Connection,
        C::Backend: Default,
        <C::Backend as Backend>::QueryBuilder: Default,
        M: CacheDeps,
        Q: SelectDsl<dsl::CountStar>,
        dsl::Select<Q, dsl::CountStar>:
            RunQueryDsl<C> + LoadQuery<'static, C, i64> + QueryFragment<C::Backend>,
    {
        let extra = self.base_dependencies::<M>();
        let Cached {
            query,
            cache,
            ttl,
            namespace,
            ..
        } = self;
        let query = SelectDsl::select(query, dsl::count_star());
        let key = key_of::<M, C, _>(&query, "count", namespace.as_deref());
        fetch(
            &cache,
            ttl,
            conn,
            key,
            move |conn| query.get_result(conn),
            move |_| extra,
        )
        .await
    }
}

/// The row of `M` with primary key `id` in `table`, answered from `cache` when it can be:
/// `find::<Post, _, _, _>(&cache, conn, posts::table, 7)`.
///
/// Unlike `table.find(id).cached(&cache).first(conn)`, which cannot tell that its filter is a
/// primary key and so depends on any write to the entity, this lookup depends on that one key
/// (and the entity's `all`, for bulk writes): a write to another row keeps it cached. A
/// missing row is cached too, and the insert of a row with that key drops it. Single-column
/// keys; for a composite key, filter and use [`Cached::first`].
///
/// # Errors
/// As [`Cached::load`].
pub async fn find<M, T, K, C>(cache: &Cache, conn: &mut C, table: T, id: K) -> Result<Option<M>>
where
    C: Connection,
    C::Backend: Default,
    <C::Backend as Backend>::QueryBuilder: Default,
    T: FindDsl<K>,
    dsl::Find<T, K>: LimitDsl,
    dsl::Limit<dsl::Find<T, K>>:
        RunQueryDsl<C> + LoadQuery<'static, C, M> + QueryFragment<C::Backend>,
    K: ToValue,
    M: CacheDeps + Serialize + DeserializeOwned,
{
    let name = M::entity_name();
    // The key's own dependency, so a missing row's entry is dropped by its insert.
    let deps = vec![
        Dependency::primary_key(name, [id.to_value()]),
        Dependency::invalidate_all(name),
    ];
    let query = table.find(id).limit(1);
    let key = key_of::<M, C, _>(&query, "id", None);
    fetch(
        cache,
        None,
        conn,
        key,
        move |conn| query.get_result::<M>(conn).optional(),
        move |_| deps,
    )
    .await
}

/// The dependencies any write to `M`'s entity invalidates (its scope's `any_change` and
/// `all`).
pub fn entity_dependencies<M: CacheDeps>() -> Vec<Dependency> {
    let name = M::entity_name();
    vec![
        Dependency::any_change(name),
        Dependency::invalidate_all(name),
    ]
}

/// `q:{entity}:{kind}:{hash}` of `query` as `C`'s backend renders it.
fn key_of<M: CacheDeps, C, S>(query: &S, kind: &str, namespace: Option<&str>) -> String
where
    C: Connection,
    C::Backend: Default,
    <C::Backend as Backend>::QueryBuilder: Default,
    S: QueryFragment<C::Backend>,
{
    key_of_backend::<M, C::Backend, S>(query, kind, namespace)
}

/// `q:{entity}:{kind}:{hash}` of `query` as backend `DB` renders it (sync and async
/// connections of one backend share entries).
pub(crate) fn key_of_backend<M: CacheDeps, DB, S>(
    query: &S,
    kind: &str,
    namespace: Option<&str>,
) -> String
where
    DB: Backend + Default,
    DB::QueryBuilder: Default,
    S: QueryFragment<DB>,
{
    let statement = format!("{:?}", diesel::debug_query::<DB, _>(query));
    format!(
        "q:{}:{kind}:{:032x}",
        M::entity_name(),
        statement_hash(std::any::type_name::<DB>(), namespace, &statement)
    )
}

/// Runs `run` on `conn` through the cache under `key`: read-through inside a transaction,
/// else [`Cache::get_or_load`] with the result's dependencies from `deps`.
async fn fetch<C, T>(
    cache: &Cache,
    ttl: Option<Duration>,
    conn: &mut C,
    key: String,
    run: impl FnOnce(&mut C) -> QueryResult<T>,
    deps: impl FnOnce(&T) -> Vec<Dependency>,
) -> Result<T>
where
    C: Connection,
    T: Serialize + DeserializeOwned,
{
    if in_transaction(conn) {
        return Ok(blocking(|| run(conn))?);
    }
    cache
        .get_or_load(&key, ttl, || async move {
            let value = blocking(|| run(conn))?;
            let deps = deps(&value);
            Ok::<Loaded<T>, diesel::result::Error>((value, deps))
        })
        .await
        .map_err(from_load)
}

pub(crate) fn rows_deps<M: CacheDeps>(rows: &[M], extra: Vec<Dependency>) -> Vec<Dependency> {
    let mut deps: Vec<Dependency> = rows.iter().map(CacheDeps::primary_key).collect();
    deps.extend(extra);
    deps
}

/// Whether `conn` is inside a transaction Diesel knows of. A broken transaction manager
/// counts as inside (read through: nothing is cached from a connection in an unknown state).
///
/// `transaction_manager_status_mut` is hidden in Diesel's docs (part of its backend-author
/// API) but public; Diesel's own connection pools use it the same way.
fn in_transaction<C: Connection>(conn: &mut C) -> bool {
    match <C::TransactionManager as TransactionManager<C>>::transaction_manager_status_mut(conn)
        .transaction_depth()
    {
        Ok(depth) => depth.is_some(),
        Err(_) => true,
    }
}

/// Runs a sync Diesel call from async code: in `block_in_place` on a multi-thread runtime,
/// so the worker's other tasks move to another thread meanwhile; directly elsewhere
/// (`block_in_place` panics on a current-thread runtime).
fn blocking<R>(f: impl FnOnce() -> R) -> R {
    match tokio::runtime::Handle::try_current() {
        Ok(handle) if handle.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(f)
        }
        _ => f(),
    }
}

/// A stable 128-bit hash of the backend, the namespace and the statement, each part
/// length-prefixed so the concatenation is unambiguous.
fn statement_hash(backend: &str, namespace: Option<&str>, statement: &str) -> u128 {
    let mut hasher = xxhash_rust::xxh3::Xxh3::new();
    let mut part = |bytes: &[u8]| {
        hasher.update(&(bytes.len() as u64).to_le_bytes());
        hasher.update(bytes);
    };
    part(backend.as_bytes());
    match namespace {
        Some(ns) => {
            part(b"ns");
            part(ns.as_bytes());
        }
        None => part(b""),
    }
    part(statement.as_bytes());
    hasher.digest128()
}

#[cfg(test)]
mod tests {
    use super::statement_hash;

    #[test]
    fn hash_parts_are_unambiguous() {
        assert_ne!(
            statement_hash("Sqlite", Some("a"), "b"),
            statement_hash("Sqlite", Some("ab"), "")
        );
        assert_ne!(
            statement_hash("Sqlite", None, "x"),
            statement_hash("Pg", None, "x")
        );
        assert_ne!(
            statement_hash("Sqlite", None, "x"),
            statement_hash("Sqlite", Some(""), "x")
        );
    }
}
