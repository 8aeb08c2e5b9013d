//! Cached queries on an r2d2 pool (feature `r2d2`): a hit checks out no connection.
//!
//! A cached query on a connection ([`Cached::load_blocking`]) needs that connection checked
//! out first, even to hit: the key carries the connection's [namespace],
//! which only the connection can tell. [`CachePool`] wraps an r2d2 pool and remembers the
//! namespace *per pool*, as matroska-seaorm does for SeaORM's pools: asked once, on the
//! pool's first miss, on the connection that miss checks out. After that, the `_pooled` forms
//! (`load_pooled`, `get_results_pooled`, `get_result_pooled`, `first_pooled`,
//! `values_pooled`, `value_pooled`, `count_pooled` on [`Cached`], and [`find_pooled`]) read
//! the cache with the pool's namespace and check out a connection only on a miss.
//!
//! **A connection that reads other data.** Every connection of a pool is meant to read the
//! same data. One that does not — someone ran `SET search_path` (or `SET ROLE`, `USE db`) on
//! a connection and gave it back to the pool — is caught on a miss: the connection checked out
//! to load is asked its own namespace (one short query, or none when the connection
//! remembers it: it ran nothing since, not even r2d2's check-out ping), and when it is not
//! the pool's, the query reads through — answered from that connection, nothing stored — and a
//! warning is logged once. So one tenant's rows are never stored under another's key. (The
//! pool's namespace is that of the connection its first miss checks out: make sure that no
//! connection of it has been switched before then.) A hit
//! reads the pool's entries whatever was done to an idle connection: it runs no statement.
//! Give each tenant its own pool (r2d2's `connection_customizer` can set the `search_path`
//! of every connection it opens), or use the connection forms, which ask each connection.
//! An in-memory SQLite database is private to its connection, so a pool of them reads through
//! on every connection but the one first asked.
//!
//! A miss costs one cache read more than on a connection (the pooled form reads before it
//! checks out, then loads through [`Cache::get_or_load`], which reads again under its
//! single-flight); a hit costs the same, and no checkout.
//!
//! ```
//! use diesel::prelude::*;
//! use diesel::r2d2::{ConnectionManager, Pool};
//! use matroska_core::{Cache, CacheDeps, Dependency};
//! use matroska_diesel::{CachePool, CachedExt};
//!
//! diesel::table! { posts (id) { id -> Integer, title -> Text } }
//!
//! #[derive(Queryable, Selectable, serde::Serialize, serde::Deserialize)]
//! struct Post { id: i32, title: String }
//! # impl CacheDeps for Post {
//! #     fn entity_name() -> &'static str { "posts" }
//! #     fn primary_key(&self) -> Dependency { Dependency::primary_key("posts", [self.id]) }
//! # }
//!
//! # let dir = std::env::temp_dir().join(format!("matroska-pool-doc-{}.db", std::process::id()));
//! # let _ = std::fs::remove_file(&dir);
//! let manager = ConnectionManager::<SqliteConnection>::new(dir.display().to_string());
//! let pool = CachePool::new(Pool::builder().max_size(2).build(manager)?);
//! let mut conn = pool.get()?; // `CachePool` is the r2d2 pool for everything else
//! diesel::sql_query("CREATE TABLE posts (id INTEGER PRIMARY KEY, title TEXT NOT NULL)")
//!     .execute(&mut conn)?;
//! diesel::sql_query("INSERT INTO posts VALUES (1, 'Python'), (2, 'Cache')").execute(&mut conn)?;
//! drop(conn);
//! let cache = Cache::memory();
//!
//! // The first miss asks the pool's namespace; later hits check out no connection.
//! let all = posts::table.order(posts::id).cached(&cache).load_pooled::<Post, _>(&pool)?;
//! assert_eq!(all.len(), 2);
//! let again = posts::table.order(posts::id).cached(&cache).load_pooled::<Post, _>(&pool)?;
//! assert_eq!(again.len(), 2);
//! # std::fs::remove_file(&dir)?;
//! # Ok::<_, Box<dyn std::error::Error>>(())
//! ```

use std::sync::{Arc, OnceLock};

use diesel::backend::Backend;
use diesel::connection::LoadConnection;
use diesel::dsl;
use diesel::query_builder::QueryFragment;
use diesel::query_dsl::methods::{FindDsl, LimitDsl, SelectDsl};
use diesel::query_dsl::{LoadQuery, RunQueryDsl};
use diesel::r2d2::{ManageConnection, Pool, R2D2Connection};
use diesel::{OptionalExtension, QueryResult};
use matroska_core::blocking::block_on;
use matroska_core::{Cache, CacheDeps, DependencySet, QueryRow, ToKeyValues};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::Result;
use crate::namespace::{self, NamespaceBackend};
use crate::query::{
    Cached, CachedRow, Plan, find_plan, in_transaction, no_keys, row_keys, rows_keys, run_in,
};

/// An r2d2 pool of Diesel connections that remembers its cache namespace, so the `_pooled`
/// cached queries hit without checking out a connection (see the [module docs](self)).
/// Cheap to clone (clones share the pool and the namespace); derefs to the r2d2 [`Pool`].
pub struct CachePool<M: ManageConnection> {
    pool: Pool<M>,
    /// The namespace of the pool's connections, asked on its first miss.
    namespace: Arc<OnceLock<Arc<str>>>,
}

impl<M: ManageConnection> CachePool<M> {
    /// `pool`, with room for its namespace (asked on its first cached miss).
    pub fn new(pool: Pool<M>) -> Self {
        Self {
            pool,
            namespace: Arc::default(),
        }
    }

    /// The r2d2 pool.
    pub fn pool(&self) -> &Pool<M> {
        &self.pool
    }

    /// The namespace remembered for the pool, once a cached miss has asked it.
    pub fn namespace(&self) -> Option<&str> {
        self.namespace.get().map(|ns| &**ns)
    }
}

impl<M: ManageConnection> Clone for CachePool<M> {
    fn clone(&self) -> Self {
        Self {
            pool: self.pool.clone(),
            namespace: Arc::clone(&self.namespace),
        }
    }
}

impl<M: ManageConnection> std::fmt::Debug for CachePool<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CachePool")
            .field("state", &self.pool.state())
            .field("namespace", &self.namespace.get())
            .finish()
    }
}

impl<M: ManageConnection> std::ops::Deref for CachePool<M> {
    type Target = Pool<M>;

    fn deref(&self) -> &Pool<M> {
        &self.pool
    }
}

impl<M: ManageConnection> From<Pool<M>> for CachePool<M> {
    fn from(pool: Pool<M>) -> Self {
        Self::new(pool)
    }
}

impl<Q> Cached<Q> {
    /// [`Cached::load`] on an r2d2 pool, blocking: a hit checks out no connection (see
    /// [`crate::pool`]).
    ///
    /// # Errors
    /// As [`Cached::load_blocking`], and [`Error::Pool`](crate::Error::Pool) when a miss
    /// cannot check out a connection.
    pub fn load_pooled<'query, U, C>(
        self,
        pool: &CachePool<diesel::r2d2::ConnectionManager<C>>,
    ) -> Result<Vec<U>>
    where
        C: LoadConnection + R2D2Connection + 'static,
        C::Backend: NamespaceBackend + Default,
        <C::Backend as Backend>::QueryBuilder: Default,
        Q: RunQueryDsl<C> + LoadQuery<'query, C, U> + QueryFragment<C::Backend>,
        U: CachedRow,
    {
        let plan = self.plan::<U>("all");
        block_on(run_pooled(
            plan,
            pool,
            |query, conn| query.load::<U>(conn),
            rows_keys,
        ))
    }

    /// [`Cached::get_results`] on an r2d2 pool (as [`Cached::load_pooled`]).
    ///
    /// # Errors
    /// As [`Cached::load_pooled`].
    pub fn get_results_pooled<'query, U, C>(
        self,
        pool: &CachePool<diesel::r2d2::ConnectionManager<C>>,
    ) -> Result<Vec<U>>
    where
        C: LoadConnection + R2D2Connection + 'static,
        C::Backend: NamespaceBackend + Default,
        <C::Backend as Backend>::QueryBuilder: Default,
        Q: RunQueryDsl<C> + LoadQuery<'query, C, U> + QueryFragment<C::Backend>,
        U: CachedRow,
    {
        self.load_pooled(pool)
    }

    /// [`Cached::get_result`] on an r2d2 pool.
    ///
    /// # Errors
    /// As [`Cached::load_pooled`].
    pub fn get_result_pooled<'query, U, C>(
        self,
        pool: &CachePool<diesel::r2d2::ConnectionManager<C>>,
    ) -> Result<Option<U>>
    where
        C: LoadConnection + R2D2Connection + 'static,
        C::Backend: NamespaceBackend + Default,
        <C::Backend as Backend>::QueryBuilder: Default,
        Q: RunQueryDsl<C> + LoadQuery<'query, C, U> + QueryFragment<C::Backend>,
        U: CachedRow,
    {
        let plan = self.plan::<U>("one");
        block_on(run_pooled(
            plan,
            pool,
            |query, conn| query.get_result::<U>(conn).optional(),
            row_keys,
        ))
    }

    /// [`Cached::first`] on an r2d2 pool.
    ///
    /// # Errors
    /// As [`Cached::load_pooled`].
    pub fn first_pooled<'query, U, C>(
        self,
        pool: &CachePool<diesel::r2d2::ConnectionManager<C>>,
    ) -> Result<Option<U>>
    where
        C: LoadConnection + R2D2Connection + 'static,
        C::Backend: NamespaceBackend + Default,
        <C::Backend as Backend>::QueryBuilder: Default,
        Q: LimitDsl,
        dsl::Limit<Q>: RunQueryDsl<C> + LoadQuery<'query, C, U> + QueryFragment<C::Backend>,
        U: CachedRow,
    {
        let plan = self.plan::<U>("first").map(|query| query.limit(1));
        block_on(run_pooled(
            plan,
            pool,
            |query, conn| query.get_result::<U>(conn).optional(),
            row_keys,
        ))
    }

    /// [`Cached::values`] on an r2d2 pool.
    ///
    /// # Errors
    /// As [`Cached::load_pooled`].
    pub fn values_pooled<'query, M, U, C>(
        self,
        pool: &CachePool<diesel::r2d2::ConnectionManager<C>>,
    ) -> Result<Vec<U>>
    where
        C: LoadConnection + R2D2Connection + 'static,
        C::Backend: NamespaceBackend + Default,
        <C::Backend as Backend>::QueryBuilder: Default,
        Q: RunQueryDsl<C> + LoadQuery<'query, C, U> + QueryFragment<C::Backend>,
        M: QueryRow,
        U: Serialize + DeserializeOwned,
    {
        let plan = self.coarse_plan::<M>("values");
        block_on(run_pooled(
            plan,
            pool,
            |query, conn| query.load::<U>(conn),
            no_keys,
        ))
    }

    /// [`Cached::value`] on an r2d2 pool.
    ///
    /// # Errors
    /// As [`Cached::load_pooled`].
    pub fn value_pooled<'query, M, U, C>(
        self,
        pool: &CachePool<diesel::r2d2::ConnectionManager<C>>,
    ) -> Result<Option<U>>
    where
        C: LoadConnection + R2D2Connection + 'static,
        C::Backend: NamespaceBackend + Default,
        <C::Backend as Backend>::QueryBuilder: Default,
        Q: RunQueryDsl<C> + LoadQuery<'query, C, U> + QueryFragment<C::Backend>,
        M: QueryRow,
        U: Serialize + DeserializeOwned,
    {
        let plan = self.coarse_plan::<M>("value");
        block_on(run_pooled(
            plan,
            pool,
            |query, conn| query.get_result::<U>(conn).optional(),
            no_keys,
        ))
    }

    /// [`Cached::count`] on an r2d2 pool.
    ///
    /// # Errors
    /// As [`Cached::load_pooled`].
    pub fn count_pooled<'query, M, C>(
        self,
        pool: &CachePool<diesel::r2d2::ConnectionManager<C>>,
    ) -> Result<i64>
    where
        C: LoadConnection + R2D2Connection + 'static,
        C::Backend: NamespaceBackend + Default,
        <C::Backend as Backend>::QueryBuilder: Default,
        M: QueryRow,
        Q: SelectDsl<dsl::CountStar>,
        dsl::Select<Q, dsl::CountStar>:
            RunQueryDsl<C> + LoadQuery<'query, C, i64> + QueryFragment<C::Backend>,
    {
        let plan = self
            .plan::<M>("count")
            .map(|query| SelectDsl::select(query, dsl::count_star()));
        block_on(run_pooled(
            plan,
            pool,
            |query, conn| query.get_result(conn),
            no_keys,
        ))
    }
}

/// [`find`](crate::find) on an r2d2 pool, blocking: a hit checks out no connection.
///
/// # Errors
/// As [`Cached::load_pooled`].
pub fn find_pooled<'query, M, T, K, C>(
    cache: &Cache,
    pool: &CachePool<diesel::r2d2::ConnectionManager<C>>,
    table: T,
    id: K,
) -> Result<Option<M>>
where
    C: LoadConnection + R2D2Connection + 'static,
    C::Backend: NamespaceBackend + Default,
    <C::Backend as Backend>::QueryBuilder: Default,
    T: FindDsl<K>,
    dsl::Find<T, K>: LimitDsl,
    dsl::Limit<dsl::Find<T, K>>:
        RunQueryDsl<C> + LoadQuery<'query, C, M> + QueryFragment<C::Backend>,
    K: ToKeyValues,
    M: CacheDeps + CachedRow,
{
    let plan = find_plan::<M, _, _>(cache, table, id);
    block_on(run_pooled(
        plan,
        pool,
        |query, conn| query.get_result::<M>(conn).optional(),
        no_keys,
    ))
}

/// Runs `plan` through the cache on `pool`: a read under the pool's namespace first (no
/// checkout); on a miss, or before the namespace is known, a connection checked out, its own
/// namespace compared with the pool's (read through on a mismatch), and the connection
/// driver's [`run`] on it.
async fn run_pooled<Q, C, T>(
    plan: Plan<Q>,
    pool: &CachePool<diesel::r2d2::ConnectionManager<C>>,
    exec: impl FnOnce(Q, &mut C) -> QueryResult<T>,
    keys: impl FnOnce(&T, &mut DependencySet),
) -> Result<T>
where
    C: LoadConnection + R2D2Connection + 'static,
    C::Backend: NamespaceBackend + Default,
    <C::Backend as Backend>::QueryBuilder: Default,
    Q: QueryFragment<C::Backend>,
    T: Serialize + DeserializeOwned,
{
    if let Some(namespace) = pool.namespace.get() {
        let (key, _) = plan.entry::<C::Backend>(namespace);
        match plan.cache.try_get::<T>(&key).await {
            Ok(Some(value)) => return Ok(value),
            Ok(None) => {}
            // `get_or_load` below reads again, and degrades a failing backend to the database.
            Err(e) if e.is_backend_failure() => {}
            Err(e) => return Err(e.into()),
        }
    }
    let mut conn = pool.pool.get()?;
    let conn: &mut C = &mut conn;
    // Diesel's r2d2 manager drops a connection given back inside a transaction; checked
    // anyway, as the connection forms do.
    if in_transaction(conn) {
        return Ok(exec(plan.query, conn)?);
    }
    let Some(own) = namespace::of_connection(conn)? else {
        // A connection whose cached queries read through (see `namespace`).
        return Ok(exec(plan.query, conn)?);
    };
    let pools = pool.namespace.get_or_init(|| Arc::clone(&own));
    // The entry is filed under the pool's namespace, where hits look: filled from a
    // connection that reads other data, it would serve that data to the pool's readers.
    if *pools != own {
        warn_other_namespace(pools, &own);
        return Ok(exec(plan.query, conn)?);
    }
    run_in(plan, conn, pools, exec, keys).await
}

/// Once per process: a pooled connection read other data than its pool.
fn warn_other_namespace(pool: &str, connection: &str) {
    static WARNED: std::sync::Once = std::sync::Once::new();
    WARNED.call_once(|| {
        tracing::warn!(
            pool,
            connection,
            "a connection of a CachePool reads other data than the pool (a session `SET \
             search_path`, `SET ROLE` or `USE` on a pooled connection?): its pooled cached \
             queries read through the cache; give each tenant its own pool, or use the \
             connection forms (`load_blocking`), which ask each connection"
        );
    });
}
