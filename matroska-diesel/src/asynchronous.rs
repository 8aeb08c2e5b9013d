//! The cached queries over [`diesel_async`] connections (feature `diesel-async`):
//! `load_async`, `get_results_async`, `get_result_async`, `first_async`, `count_async` on
//! [`Cached`], and [`find_async`]. Keys, dependencies and the transaction rule are those of the
//! sync methods ([`crate::query`]); the query runs on the async connection, no thread blocks.
//!
//! ```
//! # tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap().block_on(async {
//! use diesel::prelude::*;
//! use diesel_async::sync_connection_wrapper::SyncConnectionWrapper;
//! use diesel_async::{AsyncConnection, SimpleAsyncConnection};
//! use matroska_core::{Cache, CacheDeps, Dependency};
//! use matroska_diesel::CachedExt;
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
//! let mut conn = SyncConnectionWrapper::<SqliteConnection>::establish(":memory:").await?;
//! conn.batch_execute("CREATE TABLE posts (id INTEGER PRIMARY KEY, title TEXT NOT NULL);
//!                     INSERT INTO posts VALUES (1, 'Python'), (2, 'Cache')").await?;
//! let cache = Cache::memory();
//! let all = posts::table.order(posts::id).cached(&cache).load_async::<Post, _>(&mut conn).await?;
//! assert_eq!(all.len(), 2);
//! # Ok::<_, Box<dyn std::error::Error>>(()) }).unwrap();
//! ```

use std::future::Future;

use diesel::backend::Backend;
use diesel::dsl;
use diesel::query_builder::QueryFragment;
use diesel::query_dsl::methods::{FindDsl, LimitDsl, SelectDsl};
use diesel::{OptionalExtension, QueryResult};
use diesel_async::methods::LoadQuery;
use diesel_async::{AsyncConnection, RunQueryDsl, TransactionManager};
use matroska_core::{Cache, CacheDeps, DependencySet, Loaded, QueryRow, ToKeyValues};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::{Result, from_load};
use crate::namespace::{self, NamespaceBackend};
use crate::query::{
    Cached, CachedRow, Plan, dependencies, derived_base, find_plan, no_keys, read_elsewhere,
    row_keys, rows_keys,
};

impl<Q> Cached<Q> {
    /// [`Cached::load`] on a `diesel_async` connection.
    ///
    /// # Errors
    /// As [`Cached::load`].
    pub async fn load_async<'query, U, C>(self, conn: &mut C) -> Result<Vec<U>>
    where
        C: AsyncConnection,
        C::Backend: NamespaceBackend + Default,
        <C::Backend as Backend>::QueryBuilder: Default,
        Q: RunQueryDsl<C> + LoadQuery<'query, C, U> + QueryFragment<C::Backend> + 'query,
        U: CachedRow + Send,
    {
        let plan = self.plan::<U>("all");
        run(plan, conn, |query, conn| query.load::<U>(conn), rows_keys).await
    }

    /// [`Cached::get_results`] on a `diesel_async` connection.
    ///
    /// # Errors
    /// As [`Cached::load`].
    pub async fn get_results_async<'query, U, C>(self, conn: &mut C) -> Result<Vec<U>>
    where
        C: AsyncConnection,
        C::Backend: NamespaceBackend + Default,
        <C::Backend as Backend>::QueryBuilder: Default,
        Q: RunQueryDsl<C> + LoadQuery<'query, C, U> + QueryFragment<C::Backend> + 'query,
        U: CachedRow + Send,
    {
        self.load_async(conn).await
    }

    /// [`Cached::get_result`] on a `diesel_async` connection.
    ///
    /// # Errors
    /// As [`Cached::load`].
    pub async fn get_result_async<'query, U, C>(self, conn: &mut C) -> Result<Option<U>>
    where
        C: AsyncConnection,
        C::Backend: NamespaceBackend + Default,
        <C::Backend as Backend>::QueryBuilder: Default,
        Q: RunQueryDsl<C> + LoadQuery<'query, C, U> + QueryFragment<C::Backend> + 'query,
        U: CachedRow + Send,
    {
        let plan = self.plan::<U>("one");
        run(
            plan,
            conn,
            |query, conn| async move { query.get_result::<U>(conn).await.optional() },
            row_keys,
        )
        .await
    }

    /// [`Cached::first`] on a `diesel_async` connection.
    ///
    /// # Errors
    /// As [`Cached::load`].
    pub async fn first_async<'query, U, C>(self, conn: &mut C) -> Result<Option<U>>
    where
        C: AsyncConnection,
        C::Backend: NamespaceBackend + Default,
        <C::Backend as Backend>::QueryBuilder: Default,
        Q: LimitDsl,
        dsl::Limit<Q>:
            RunQueryDsl<C> + LoadQuery<'query, C, U> + QueryFragment<C::Backend> + 'query,
        U: CachedRow + Send,
    {
        let plan = self.plan::<U>("first").map(|query| query.limit(1));
        run(
            plan,
            conn,
            |query, conn| async move { query.get_result::<U>(conn).await.optional() },
            row_keys,
        )
        .await
    }

    /// [`Cached::values`] on a `diesel_async` connection.
    ///
    /// # Errors
    /// As [`Cached::load`].
    pub async fn values_async<'query, M, U, C>(self, conn: &mut C) -> Result<Vec<U>>
    where
        C: AsyncConnection,
        C::Backend: NamespaceBackend + Default,
        <C::Backend as Backend>::QueryBuilder: Default,
        Q: RunQueryDsl<C> + LoadQuery<'query, C, U> + QueryFragment<C::Backend> + 'query,
        M: QueryRow,
        U: Serialize + DeserializeOwned + Send,
    {
        let plan = self.coarse_plan::<M>("values");
        run(plan, conn, |query, conn| query.load::<U>(conn), no_keys).await
    }

    /// [`Cached::value`] on a `diesel_async` connection.
    ///
    /// # Errors
    /// As [`Cached::load`].
    pub async fn value_async<'query, M, U, C>(self, conn: &mut C) -> Result<Option<U>>
    where
        C: AsyncConnection,
        C::Backend: NamespaceBackend + Default,
        <C::Backend as Backend>::QueryBuilder: Default,
        Q: RunQueryDsl<C> + LoadQuery<'query, C, U> + QueryFragment<C::Backend> + 'query,
        M: QueryRow,
        U: Serialize + DeserializeOwned + Send,
    {
        let plan = self.coarse_plan::<M>("value");
        run(
            plan,
            conn,
            |query, conn| async move { query.get_result::<U>(conn).await.optional() },
            no_keys,
        )
        .await
    }

    /// [`Cached::count`] on a `diesel_async` connection.
    ///
    /// # Errors
    /// As [`Cached::load`].
    pub async fn count_async<M, C>(self, conn: &mut C) -> Result<i64>
    where
        C: AsyncConnection,
        C::Backend: NamespaceBackend + Default,
        <C::Backend as Backend>::QueryBuilder: Default,
        M: QueryRow,
        Q: SelectDsl<dsl::CountStar>,
        dsl::Select<Q, dsl::CountStar>:
            RunQueryDsl<C> + LoadQuery<'static, C, i64> + QueryFragment<C::Backend> + 'static,
    {
        let plan = self
            .plan::<M>("count")
            .map(|query| SelectDsl::select(query, dsl::count_star()));
        run(
            plan,
            conn,
            |query, conn| query.get_result::<i64>(conn),
            no_keys,
        )
        .await
    }
}

/// [`find`](crate::find) on a `diesel_async` connection.
///
/// # Errors
/// As [`Cached::load`].
pub async fn find_async<M, T, K, C>(
    cache: &Cache,
    conn: &mut C,
    table: T,
    id: K,
) -> Result<Option<M>>
where
    C: AsyncConnection,
    C::Backend: NamespaceBackend + Default,
    <C::Backend as Backend>::QueryBuilder: Default,
    T: FindDsl<K>,
    dsl::Find<T, K>: LimitDsl,
    dsl::Limit<dsl::Find<T, K>>:
        RunQueryDsl<C> + LoadQuery<'static, C, M> + QueryFragment<C::Backend> + 'static,
    K: ToKeyValues,
    M: CacheDeps + CachedRow + Send,
{
    let plan = find_plan::<M, _, _>(cache, table, id);
    run(
        plan,
        conn,
        |query, conn| async move { query.get_result::<M>(conn).await.optional() },
        no_keys,
    )
    .await
}

/// Runs `plan` on `conn` through the cache, or straight through inside a transaction. The
/// query's future is made inside the loader, after the stale-set ticket: a connection may
/// start the query when the future is made (diesel-async's `SyncConnectionWrapper` hands it to
/// a blocking thread at once), and a read that started before the ticket could store a row a
/// write replaced in between.
async fn run<'c, Q, C, T, F, Fut>(
    plan: Plan<Q>,
    conn: &'c mut C,
    exec: F,
    keys: impl FnOnce(&T, &mut DependencySet),
) -> Result<T>
where
    C: AsyncConnection,
    C::Backend: NamespaceBackend + Default,
    <C::Backend as Backend>::QueryBuilder: Default,
    Q: QueryFragment<C::Backend>,
    F: FnOnce(Q, &'c mut C) -> Fut,
    Fut: Future<Output = QueryResult<T>>,
    T: Serialize + DeserializeOwned,
{
    if in_transaction(conn) {
        return Ok(exec(plan.query, conn).await?);
    }
    let Some(namespace) = namespace::of_async_connection(conn).await? else {
        return Ok(exec(plan.query, conn).await?);
    };
    let (key, statement) = plan.entry::<C::Backend>(&namespace);
    let Plan {
        query,
        cache,
        ttl,
        mut base,
        derive,
        entities,
        ..
    } = plan;
    cache
        .get_or_load(&key, ttl, || async move {
            base.extend(read_elsewhere(&statement, &entities));
            let base = derived_base::<C::Backend, _>(base, derive, &query);
            let value = exec(query, conn).await?;
            let deps = dependencies(&value, keys, base);
            Ok::<Loaded<T>, diesel::result::Error>((value, deps))
        })
        .await
        .map_err(from_load)
}

/// Whether `conn` is inside a transaction diesel-async knows of (a broken manager counts as
/// inside). `transaction_manager_status_mut` is doc-hidden but public, as in Diesel.
fn in_transaction<C: AsyncConnection>(conn: &mut C) -> bool {
    match <C::TransactionManager as TransactionManager<C>>::transaction_manager_status_mut(conn)
        .transaction_depth()
    {
        Ok(depth) => depth.is_some(),
        Err(_) => true,
    }
}
