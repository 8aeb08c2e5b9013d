//! # matroska-diesel
//!
//! The matroska cache for [Diesel](https://diesel.rs) 2.3: cached queries whose entries carry
//! the primary keys of their rows and, for lists, their typed scope condition; invalidation of
//! every committed write through the database outbox (Diesel has no hooks to do it in
//! process).
//!
//! ```toml
//! [dependencies]
//! matroska = { version = "0.1", features = ["diesel-postgres"] }    # PostgreSQL
//! # matroska = { version = "0.1", features = ["diesel-mysql"] }     # MySQL / MariaDB
//! # matroska = { version = "0.1", features = ["diesel-sqlite"] }    # SQLite
//! # (each brings that database only; combine them for several)
//! # features = ["diesel-r2d2"]   # cached queries on an r2d2 pool that hit without a checkout
//! # features = ["diesel-async"]   # the same queries on diesel-async connections
//! ```
//!
//! ## The flow
//!
//! 1. **Models**: `#[derive(CacheDeps)]` reads Diesel's `#[diesel(table_name = posts)]` and
//!    `#[diesel(primary_key(..))]` (default `id`, as `Identifiable`): the entity is the SQL
//!    table. Each `#[scope(category)]` generates a typed condition (`PostByCategory`) that is
//!    both a Diesel filter ([`ScopeFilter`]: `posts::category.eq(..)`) and a dependency.
//! 2. **Outbox**: install the triggers once, in a migration ([`outbox::migration_sql`] for
//!    `up.sql` / `down.sql`, or [`install_outbox`] from Rust), and run a
//!    [`Relay`](outbox::Relay) in each process that serves cached reads. Every committed write
//!    — `insert_into`, `update`, `delete`, `sql_query`, another process — is then
//!    invalidated after its commit; a rolled-back one records nothing.
//!
//!    The install creates the outbox's own tables in your database, which `diesel migration
//!    run` would then write into `schema.rs`. Keep them out in `diesel.toml` (these are the
//!    default outbox's names; with [`Outbox::named`](matroska_outbox::Outbox::named) they start with
//!    your name instead; `_table_ids` exists on MySQL/MariaDB only; diesel_cli matches these
//!    regular expressions anywhere in a name, hence `^..$`):
//!
//!    ```toml
//!    [print_schema]
//!    file = "src/schema.rs"
//!    filter = { except_tables = ["^matroska_outbox$", "^matroska_outbox_dead$", "^matroska_outbox_tables$", "^matroska_outbox_consumers$", "^matroska_outbox_done$", "^matroska_outbox_table_ids$"] }
//!    ```
//! 3. **Queries**: `.cached(&cache)` on any Diesel query ([`CachedExt`]), optionally
//!    `.scoped(&condition)`, then `load` / `get_results` / `get_result` / `first` / `count`,
//!    or [`find`] by primary key (a tuple for a composite one). Joins load tuples
//!    (`.load::<(Post, User), _>`, `(Post, Option<User>)` for a left join, [`CachedRow`]) and
//!    depend on every table they read, so a new row that would join drops them. Misses load
//!    through [`Cache::get_or_load`](matroska_core::Cache::get_or_load): a load that raced a
//!    write is not stored, and concurrent misses of one key share one query.
//! 4. **Databases**: every key carries the connection's database, schema search path and user
//!    (remembered in the connection until it runs another statement, see [`namespace`]), so
//!    tenants' databases or schemas behind one cache never share entries, even when a pooled
//!    connection switches `search_path`, role or database between them.
//! 5. **Sync or async app**: the forms above are `async fn`s (a sync connection used from
//!    async code, see [`query`]). A sync app calls the same queries as plain functions with a
//!    `_blocking` suffix — `load_blocking`, `count_blocking`, [`find_blocking`], ... — with
//!    no runtime of its own and no `.await` ([`blocking`]: each runs its async form to
//!    completion, one implementation). With an r2d2 pool (feature `r2d2`; `diesel-r2d2` on
//!    the `matroska` facade), the `_pooled` forms (`load_pooled(&pool)`, [`find_pooled`])
//!    take the pool and check out a connection only on a miss: the pool's namespace is
//!    remembered in a [`CachePool`] ([`pool`]). Sync code called from an async handler
//!    (actix-web, axum) runs on a thread of its own, or the blocking forms refuse: see
//!    [`blocking`]. After a write, [`outbox::wait_delivered_blocking`] makes the next read
//!    fresh.
//!
//! ```
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! use diesel::prelude::*;
//! use matroska_core::{Cache, CacheDeps, Dependency, ScopeCondition};
//! use matroska_diesel::{CachedExt, ScopeFilter};
//! # use diesel::dsl;
//!
//! diesel::table! { posts (id) { id -> Integer, category -> Text } }
//!
//! #[derive(Queryable, Selectable, serde::Serialize, serde::Deserialize)]
//! struct Post { id: i32, category: String }
//! // `#[derive(matroska::CacheDeps)] #[scope(category)]` generates these:
//! # impl CacheDeps for Post {
//! #     fn entity_name() -> &'static str { "posts" }
//! #     fn primary_key(&self) -> Dependency { Dependency::primary_key("posts", [self.id]) }
//! # }
//! struct PostByCategory { category: String }
//! # impl ScopeCondition for PostByCategory {
//! #     fn scope_name(&self) -> &'static str { "posts" }
//! #     fn fields(&self) -> Vec<(&'static str, matroska_core::Value)> { vec![("category", self.category.clone().into())] }
//! # }
//! # impl ScopeFilter for PostByCategory {
//! #     type Table = posts::table;
//! #     type Filter = dsl::Eq<posts::category, String>;
//! #     fn filter(&self) -> Self::Filter { posts::category.eq(self.category.clone()) }
//! # }
//!
//! let mut conn = SqliteConnection::establish(":memory:")?;
//! diesel::sql_query("CREATE TABLE posts (id INTEGER PRIMARY KEY, category TEXT NOT NULL)")
//!     .execute(&mut conn)?;
//! diesel::sql_query("INSERT INTO posts VALUES (1, 'fantasy'), (2, 'sci-fi')").execute(&mut conn)?;
//! let cache = Cache::memory();
//!
//! // One value: the query's WHERE and the list's dependency.
//! let fantasy = PostByCategory { category: "fantasy".into() };
//! let list = posts::table
//!     .order(posts::id)
//!     .cached(&cache)
//!     .scoped(&fantasy)
//!     .load::<Post, _>(&mut conn)
//!     .await?;
//! assert_eq!(list.len(), 1);
//!
//! // A new fantasy post (any writer) makes the relay invalidate the list's condition; here
//! // by hand, for the example.
//! cache.invalidate(&[Dependency::condition("posts", [("category", "fantasy".into())])]).await?;
//!
//! // Another database behind the same cache: the same query, its own entry.
//! let mut other = SqliteConnection::establish(":memory:")?;
//! diesel::sql_query("CREATE TABLE posts (id INTEGER PRIMARY KEY, category TEXT NOT NULL)")
//!     .execute(&mut other)?;
//! let empty = posts::table.order(posts::id).cached(&cache).load::<Post, _>(&mut other).await?;
//! assert!(empty.is_empty());
//! # Ok::<_, Box<dyn std::error::Error>>(()) }).unwrap();
//! ```
//!
//! A join, cached with the keys of both sides' rows and every write to the joined table:
//!
//! ```
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! use diesel::prelude::*;
//! use matroska_core::{Cache, CacheDeps, Dependency};
//! use matroska_diesel::CachedExt;
//!
//! diesel::table! { users (id) { id -> Integer, name -> Text } }
//! diesel::table! { posts (id) { id -> Integer, user_id -> Integer, title -> Text } }
//! diesel::joinable!(posts -> users (user_id));
//! diesel::allow_tables_to_appear_in_same_query!(posts, users);
//!
//! #[derive(Queryable, serde::Serialize, serde::Deserialize)]
//! struct User { id: i32, name: String }
//! #[derive(Queryable, serde::Serialize, serde::Deserialize)]
//! struct Post { id: i32, user_id: i32, title: String }
//! // `#[derive(matroska::CacheDeps)]` generates these:
//! # impl CacheDeps for User {
//! #     fn entity_name() -> &'static str { "users" }
//! #     fn primary_key(&self) -> Dependency { Dependency::primary_key("users", [self.id]) }
//! # }
//! # impl CacheDeps for Post {
//! #     fn entity_name() -> &'static str { "posts" }
//! #     fn primary_key(&self) -> Dependency { Dependency::primary_key("posts", [self.id]) }
//! # }
//!
//! let mut conn = SqliteConnection::establish(":memory:")?;
//! diesel::sql_query("CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT NOT NULL)")
//!     .execute(&mut conn)?;
//! diesel::sql_query("CREATE TABLE posts (id INTEGER PRIMARY KEY, user_id INTEGER NOT NULL, \
//!                    title TEXT NOT NULL)").execute(&mut conn)?;
//! diesel::sql_query("INSERT INTO users VALUES (1, 'Ann'), (2, 'Bo')").execute(&mut conn)?;
//! diesel::sql_query("INSERT INTO posts VALUES (10, 1, 'Hello')").execute(&mut conn)?;
//! let cache = Cache::memory();
//!
//! let with_posts = users::table
//!     .left_join(posts::table)
//!     .order(users::id)
//!     .cached(&cache)
//!     .load::<(User, Option<Post>), _>(&mut conn)
//!     .await?;
//! assert_eq!(with_posts.len(), 2);
//! assert!(with_posts[1].1.is_none());
//! // A first post of Bo's (any writer) drops the list: the relay invalidates `posts`' changes.
//! cache.invalidate(&[Dependency::any_change("posts")]).await?;
//! # Ok::<_, Box<dyn std::error::Error>>(()) }).unwrap();
//! ```
//!
//! The same flow in a sync app, with no runtime and no `.await` ([`blocking`]):
//!
//! ```
//! use diesel::prelude::*;
//! use matroska_core::{Cache, CacheDeps, Dependency};
//! use matroska_diesel::CachedExt;
//!
//! diesel::table! { posts (id) { id -> Integer, category -> Text } }
//!
//! #[derive(Queryable, Selectable, serde::Serialize, serde::Deserialize)]
//! struct Post { id: i32, category: String }
//! # impl CacheDeps for Post {
//! #     fn entity_name() -> &'static str { "posts" }
//! #     fn primary_key(&self) -> Dependency { Dependency::primary_key("posts", [self.id]) }
//! # }
//!
//! fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     let mut conn = SqliteConnection::establish(":memory:")?;
//!     diesel::sql_query("CREATE TABLE posts (id INTEGER PRIMARY KEY, category TEXT NOT NULL)")
//!         .execute(&mut conn)?;
//!     diesel::sql_query("INSERT INTO posts VALUES (1, 'fantasy')").execute(&mut conn)?;
//!     let cache = Cache::memory();
//!
//!     let list = posts::table.cached(&cache).load_blocking::<Post, _>(&mut conn)?;
//!     assert_eq!(list.len(), 1);
//!     let post = matroska_diesel::find_blocking::<Post, _, _, _>(&cache, &mut conn, posts::table, 1)?;
//!     assert_eq!(post.map(|p| p.category).as_deref(), Some("fantasy"));
//!     Ok(())
//! }
//! ```
//!
//! See [`query`] for keys, dependencies, transactions and how a sync connection is used from
//! async code, [`blocking`] for sync apps (and which runtime a blocking call runs on),
//! [`pool`] (feature `r2d2`) for r2d2 pools, [`outbox`] for the migration and the relay, and
//! `asynchronous` (feature `diesel-async`) for the same queries on `diesel_async` connections.
#![cfg_attr(docsrs, feature(doc_cfg))]
// Library code states why an `expect` cannot fail, and never unwraps.
#![warn(clippy::unwrap_used)]

#[cfg(feature = "diesel-async")]
#[cfg_attr(docsrs, doc(cfg(feature = "diesel-async")))]
pub mod asynchronous;
pub mod blocking;
mod derived;
mod error;
mod filter;
mod key;
pub mod namespace;
pub mod outbox;
#[cfg(feature = "r2d2")]
#[cfg_attr(docsrs, doc(cfg(feature = "r2d2")))]
pub mod pool;
pub mod query;

use matroska_core::{Cache, CacheDeps, Scoped};

#[cfg(feature = "diesel-async")]
#[cfg_attr(docsrs, doc(cfg(feature = "diesel-async")))]
pub use asynchronous::find_async;
pub use blocking::find_blocking;
pub use error::{Error, Result};
pub use filter::ScopeFilter;
pub use namespace::{CacheInstrumentation, NamespaceBackend};
pub use outbox::{install_outbox, uninstall_outbox};
#[cfg(feature = "r2d2")]
#[cfg_attr(docsrs, doc(cfg(feature = "r2d2")))]
pub use pool::{CachePool, find_pooled};
pub use query::{Cached, CachedExt, CachedRow, entity_dependencies, find};

/// Invalidates, right away, what a write of `rows` affects: each row's primary key, the scope
/// conditions it matches, the conditions of its tracked (`belongs_to`) columns' values, and
/// its entity's `any_change`. For read-your-writes: call it after
/// the write commits, with the rows' old and new values, so this request's next cached read
/// sees the write without waiting for the relay (which invalidates the same dependencies
/// again, so nothing is lost if this call fails or is skipped).
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// use matroska_core::{Cache, CacheDeps, Dependency, Scope, Scoped};
///
/// struct Post { id: i32 }
/// impl CacheDeps for Post {
///     fn entity_name() -> &'static str { "posts" }
///     fn primary_key(&self) -> Dependency { Dependency::primary_key("posts", [self.id]) }
/// }
/// impl Scoped for Post {
///     fn scope() -> &'static Scope<Self> {
///         static SCOPE: std::sync::OnceLock<Scope<Post>> = std::sync::OnceLock::new();
///         SCOPE.get_or_init(|| Scope::new("posts"))
///     }
/// }
///
/// let cache = Cache::memory();
/// cache.put("post-1", &"Python", &[Post { id: 1 }.primary_key()], None).await?;
/// // ... diesel::update(posts::table.find(1)).set(..).execute(conn)? ...
/// matroska_diesel::invalidate_now(&cache, &[&Post { id: 1 }]).await?;
/// assert!(!cache.has("post-1").await?);
/// # Ok::<_, matroska_diesel::Error>(()) }).unwrap();
/// ```
///
/// # Errors
/// [`Error::Cache`] when the cache backend fails (the outbox still delivers the write).
pub async fn invalidate_now<M: CacheDeps + Scoped>(cache: &Cache, rows: &[&M]) -> Result<()> {
    let mut deps = Vec::new();
    for row in rows {
        deps.push(row.primary_key());
        deps.extend(M::scope().dependencies_for(row, None));
        // The `belongs_to` foreign keys' conditions, on which `.derived()` counts and
        // `belonging_to` lists depend (the relay invalidates them again for the write).
        deps.extend(row.tracked_dependencies());
    }
    cache.invalidate(&deps).await?;
    // The relay will deliver the write too; let it find the row without waiting for a poll.
    outbox::poke();
    Ok(())
}

/// What `#[derive(CacheDeps)]` names through the facade; not public API.
#[doc(hidden)]
pub mod __private {
    pub use crate::ScopeFilter;
    pub use diesel::dsl;
    pub use diesel::{BoolExpressionMethods, Expression, ExpressionMethods, IntoSql};

    /// Holds when `Key` (a column, or a tuple of columns) is the table's primary key in
    /// `table!`, in its order. A mismatch reads as rustc's "type mismatch resolving
    /// `<table as Table>::PrimaryKey == ..`", with both column lists, at the model's
    /// `#[diesel(..)]`.
    pub trait PrimaryKeyIs<Key> {}

    impl<T: diesel::Table> PrimaryKeyIs<T::PrimaryKey> for T {}

    /// Compiles only when `Key` is `T`'s primary key: the derive calls it for Diesel models.
    pub fn assert_primary_key<T: PrimaryKeyIs<Key>, Key>() {}
}
