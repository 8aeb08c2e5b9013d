//! The cached queries for sync apps: `load_blocking`, `get_results_blocking`,
//! `get_result_blocking`, `first_blocking`, `values_blocking`, `value_blocking`,
//! `count_blocking` on [`Cached`], and [`find_blocking`]. Plain functions for plain threads
//! (a sync web framework's handler, a CLI, a job worker): no async runtime of your own, no
//! `.await`.
//!
//! Each is the async form of the same name run to completion by
//! [`matroska_core::blocking::block_on`]: the same key, dependencies, transaction rule and
//! stale-set guard, one implementation. The cache's runtime needs are met there — on a thread
//! without a runtime, a small process-wide one drives the cache's timers and I/O — and sync
//! code called straight from an async handler (a repository under actix-web or axum) works
//! too: the call blocks that thread, as the sync Diesel query next to it does (in async code
//! of your own, `.await` the async form instead).
//!
//! - **In-memory backend**: works from any thread.
//! - **Redis backend**: it must be made inside a Tokio runtime (its connection is a task of
//!   that runtime). Made in a multi-thread runtime (say, one started at boot and kept in a
//!   `static`), it serves blocking calls from any thread, `spawn_blocking` threads included.
//!   Made in a current-thread runtime, it answers only while some thread is inside that
//!   runtime's `Runtime::block_on`; otherwise its calls end at the backend's time-out, and the
//!   cached queries read the database (a backend failure degrades, it is not an error).
//!
//! ```
//! use diesel::prelude::*;
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
//! // Plain sync code: no runtime, no `.await`.
//! let mut conn = SqliteConnection::establish(":memory:")?;
//! diesel::sql_query("CREATE TABLE posts (id INTEGER PRIMARY KEY, title TEXT NOT NULL)")
//!     .execute(&mut conn)?;
//! diesel::sql_query("INSERT INTO posts VALUES (1, 'Python'), (2, 'Cache')").execute(&mut conn)?;
//! let cache = Cache::memory();
//!
//! let all = posts::table.order(posts::id).cached(&cache).load_blocking::<Post, _>(&mut conn)?;
//! assert_eq!(all.len(), 2);
//! let one = matroska_diesel::find_blocking::<Post, _, _, _>(&cache, &mut conn, posts::table, 2)?;
//! assert_eq!(one.map(|post| post.title).as_deref(), Some("Cache"));
//! let count = posts::table.cached(&cache).count_blocking::<Post, _>(&mut conn)?;
//! assert_eq!(count, 2);
//! # Ok::<_, Box<dyn std::error::Error>>(())
//! ```
//!
//! ## Sync code called from async handlers
//!
//! Many Diesel apps on an async web framework (actix-web, axum) call their sync repositories
//! straight from the async handler. The blocking forms work there unchanged: the handler's
//! thread waits for the cache as it waits for the Diesel query (on a current-thread runtime
//! the cache's timers run on the process-wide runtime meanwhile, so nothing deadlocks):
//!
//! ```
//! use diesel::prelude::*;
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
//! /// A sync repository function, as the app has it.
//! fn all_posts(cache: &Cache, conn: &mut SqliteConnection) -> matroska_diesel::Result<Vec<Post>> {
//!     posts::table.cached(cache).load_blocking::<Post, _>(conn)
//! }
//!
//! let mut conn = SqliteConnection::establish(":memory:")?;
//! diesel::sql_query("CREATE TABLE posts (id INTEGER PRIMARY KEY, title TEXT NOT NULL)")
//!     .execute(&mut conn)?;
//! let cache = Cache::memory();
//! let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?; // actix-web's kind
//! // An async handler calling the sync repository.
//! let posts = runtime.block_on(async { all_posts(&cache, &mut conn) })?;
//! assert!(posts.is_empty());
//! # Ok::<_, Box<dyn std::error::Error>>(())
//! ```
//!
//! After a write on such a path, [`wait_delivered_blocking`](crate::outbox::wait_delivered_blocking)
//! returns once the relay delivered it: the next read is fresh. Not on a current-thread
//! runtime (actix-web's) that runs the relay itself: the relay cannot run while the thread
//! waits, so the wait can only time out; start the relay on a runtime of its own there.

use diesel::backend::Backend;
use diesel::connection::LoadConnection;
use diesel::dsl;
use diesel::query_builder::QueryFragment;
use diesel::query_dsl::methods::{FindDsl, LimitDsl, SelectDsl};
use diesel::query_dsl::{LoadQuery, RunQueryDsl};
use matroska_core::blocking::block_on;
use matroska_core::{Cache, CacheDeps, QueryRow, ToKeyValues};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::Result;
use crate::namespace::NamespaceBackend;
use crate::query::{Cached, CachedRow, find};

impl<Q> Cached<Q> {
    /// [`Cached::load`], blocking: for sync code (see [`crate::blocking`]).
    ///
    /// # Errors
    /// As [`Cached::load`].
    pub fn load_blocking<'query, U, C>(self, conn: &mut C) -> Result<Vec<U>>
    where
        C: LoadConnection,
        C::Backend: NamespaceBackend + Default,
        <C::Backend as Backend>::QueryBuilder: Default,
        Q: RunQueryDsl<C> + LoadQuery<'query, C, U> + QueryFragment<C::Backend>,
        U: CachedRow,
    {
        block_on(self.load(conn))
    }

    /// [`Cached::get_results`], blocking.
    ///
    /// # Errors
    /// As [`Cached::load_blocking`].
    pub fn get_results_blocking<'query, U, C>(self, conn: &mut C) -> Result<Vec<U>>
    where
        C: LoadConnection,
        C::Backend: NamespaceBackend + Default,
        <C::Backend as Backend>::QueryBuilder: Default,
        Q: RunQueryDsl<C> + LoadQuery<'query, C, U> + QueryFragment<C::Backend>,
        U: CachedRow,
    {
        block_on(self.get_results(conn))
    }

    /// [`Cached::get_result`], blocking.
    ///
    /// # Errors
    /// As [`Cached::load_blocking`].
    pub fn get_result_blocking<'query, U, C>(self, conn: &mut C) -> Result<Option<U>>
    where
        C: LoadConnection,
        C::Backend: NamespaceBackend + Default,
        <C::Backend as Backend>::QueryBuilder: Default,
        Q: RunQueryDsl<C> + LoadQuery<'query, C, U> + QueryFragment<C::Backend>,
        U: CachedRow,
    {
        block_on(self.get_result(conn))
    }

    /// [`Cached::first`], blocking.
    ///
    /// # Errors
    /// As [`Cached::load_blocking`].
    pub fn first_blocking<'query, U, C>(self, conn: &mut C) -> Result<Option<U>>
    where
        C: LoadConnection,
        C::Backend: NamespaceBackend + Default,
        <C::Backend as Backend>::QueryBuilder: Default,
        Q: LimitDsl,
        dsl::Limit<Q>: RunQueryDsl<C> + LoadQuery<'query, C, U> + QueryFragment<C::Backend>,
        U: CachedRow,
    {
        block_on(self.first(conn))
    }

    /// [`Cached::values`], blocking.
    ///
    /// # Errors
    /// As [`Cached::load_blocking`].
    pub fn values_blocking<'query, M, U, C>(self, conn: &mut C) -> Result<Vec<U>>
    where
        C: LoadConnection,
        C::Backend: NamespaceBackend + Default,
        <C::Backend as Backend>::QueryBuilder: Default,
        Q: RunQueryDsl<C> + LoadQuery<'query, C, U> + QueryFragment<C::Backend>,
        M: QueryRow,
        U: Serialize + DeserializeOwned,
    {
        block_on(self.values::<M, U, C>(conn))
    }

    /// [`Cached::value`], blocking.
    ///
    /// # Errors
    /// As [`Cached::load_blocking`].
    pub fn value_blocking<'query, M, U, C>(self, conn: &mut C) -> Result<Option<U>>
    where
        C: LoadConnection,
        C::Backend: NamespaceBackend + Default,
        <C::Backend as Backend>::QueryBuilder: Default,
        Q: RunQueryDsl<C> + LoadQuery<'query, C, U> + QueryFragment<C::Backend>,
        M: QueryRow,
        U: Serialize + DeserializeOwned,
    {
        block_on(self.value::<M, U, C>(conn))
    }

    /// [`Cached::count`], blocking.
    ///
    /// # Errors
    /// As [`Cached::load_blocking`].
    pub fn count_blocking<'query, M, C>(self, conn: &mut C) -> Result<i64>
    where
        C: LoadConnection,
        C::Backend: NamespaceBackend + Default,
        <C::Backend as Backend>::QueryBuilder: Default,
        M: QueryRow,
        Q: SelectDsl<dsl::CountStar>,
        dsl::Select<Q, dsl::CountStar>:
            RunQueryDsl<C> + LoadQuery<'query, C, i64> + QueryFragment<C::Backend>,
    {
        block_on(self.count::<M, C>(conn))
    }
}

/// [`find`], blocking: for sync code (see [`crate::blocking`]).
///
/// # Errors
/// As [`Cached::load_blocking`].
pub fn find_blocking<'query, M, T, K, C>(
    cache: &Cache,
    conn: &mut C,
    table: T,
    id: K,
) -> Result<Option<M>>
where
    C: LoadConnection,
    C::Backend: NamespaceBackend + Default,
    <C::Backend as Backend>::QueryBuilder: Default,
    T: FindDsl<K>,
    dsl::Find<T, K>: LimitDsl,
    dsl::Limit<dsl::Find<T, K>>:
        RunQueryDsl<C> + LoadQuery<'query, C, M> + QueryFragment<C::Backend>,
    K: ToKeyValues,
    M: CacheDeps + CachedRow,
{
    block_on(find::<M, T, K, C>(cache, conn, table, id))
}
