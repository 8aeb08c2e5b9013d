//! # matroska-seaorm
//!
//! SeaORM integration for matroska: every save or delete through SeaORM invalidates exactly
//! the cached entries that depend on the row, and selects can be cached with their
//! dependencies collected for you.
//!
//! ## Concepts
//!
//! - **Entities** implement [`CacheDeps`] and [`Scoped`] (`#[derive(CacheDeps)]` with
//!   `#[scope(published, category)]` does it; the scope's name is the table name).
//! - **Hooks** ([`hooks`]): [`active_model_behavior!`]`(ActiveModel)` generates the
//!   entity's `ActiveModelBehavior`; inserts, updates and deletes then invalidate the row's
//!   primary key and the scope conditions of its old and new values. Only columns actually
//!   `Set` count as modified; the old row is read (one `SELECT`) only when a watched column
//!   changes.
//! - **Finding the cache** ([`invalidator`]): hooks only get the connection, so they use the
//!   cache set once at start-up with [`set_global_cache`], or a task's own with
//!   [`with_cache`] (tests in parallel). Failed invalidations are queued and retried; writes
//!   to tables the outbox does not watch are refused while the queue is full.
//! - **Transactions** ([`transaction()`], [`batch`]): invalidations wait for the commit and go
//!   in one call per cache; a rolled-back [`transaction()`] invalidates nothing it wrote.
//!   Deliveries run in tasks of their own: a caller dropped meanwhile loses none.
//! - **Bulk writes** ([`bulk`]): `update_many`, `delete_many`, `insert_many` and raw SQL run no
//!   hooks; use [`bulk::update_many`], [`bulk::delete_many`], [`bulk::insert_many`],
//!   [`invalidate_entity`].
//! - **Cached queries** ([`query`]): `Entity::find()...cached(&cache).all(&db)`, also `one`,
//!   `count`, `page`, `find_also_related` and `find_with_related`; `.scoped(&condition)`
//!   filters by a typed scope condition ([`ScopeFilter`]) and depends on it. Rows are cached as
//!   their column values (a hit returns exactly what the database returned); keys carry the
//!   connection's database and schema ([`connection`]); inside a transaction or batch they
//!   read through.
//! - **By hand**, in the seed's style: [`row_dependencies`] of loaded models for
//!   [`Cache::put`](matroska_core::Cache::put) or a
//!   [`get_or_load`](matroska_core::Cache::get_or_load) loader.
//!
//! ## Usage
//!
//! ```toml
//! [dependencies]
//! # `seaorm` with the drivers of your databases: `sqlx-postgres`, `sqlx-mysql`, `sqlx-sqlite`.
//! matroska = { version = "0.1", features = ["sqlx-postgres"] }
//! ```
//!
//! The `sqlx-*` features turn on SeaORM's driver of the same name; only the drivers asked for
//! are compiled. Cached queries need matroska-seaorm's feature for the database they run on
//! (to tell its pools apart, see [`connection`]); without it they read through, with a
//! warning.
//!
//! ```
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! mod article {
//!     use sea_orm::entity::prelude::*;
//!     use matroska_core::{CacheDeps, Dependency, Scope, Scoped, Value};
//!
//!     #[derive(Clone, Debug, PartialEq, DeriveEntityModel, serde::Serialize, serde::Deserialize)]
//!     #[sea_orm(table_name = "article")]
//!     pub struct Model {
//!         #[sea_orm(primary_key)]
//!         pub id: i32,
//!         pub title: String,
//!         pub published: bool,
//!     }
//!     #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
//!     pub enum Relation {}
//!
//!     // `#[derive(CacheDeps)] #[scope(published)]` generates these two impls.
//!     impl CacheDeps for Model {
//!         fn entity_name() -> &'static str { "article" }
//!         fn primary_key(&self) -> Dependency { Dependency::primary_key("article", [Value::Int(self.id.into())]) }
//!     }
//!     impl Scoped for Model {
//!         fn scope() -> &'static Scope<Self> {
//!             static SCOPE: std::sync::LazyLock<Scope<Model>> = std::sync::LazyLock::new(|| {
//!                 Scope::new("article").describe(&["published"], |m: &Model| Some(vec![Value::Bool(m.published)]))
//!             });
//!             &SCOPE
//!         }
//!     }
//!
//!     matroska_seaorm::active_model_behavior!(ActiveModel);
//! }
//!
//! use sea_orm::{ActiveModelTrait, ColumnTrait, ConnectionTrait, Database, EntityTrait, QueryFilter, Set};
//! use matroska_core::Cache;
//! use matroska_seaorm::CachedExt;
//!
//! let db = Database::connect("sqlite::memory:").await?;
//! db.execute_unprepared("CREATE TABLE article (id INTEGER PRIMARY KEY, title TEXT NOT NULL, published BOOLEAN NOT NULL)").await?;
//! let cache = Cache::memory();
//! matroska_seaorm::set_global_cache(cache.clone())?;
//!
//! let published = || article::Entity::find().filter(article::Column::Published.eq(true));
//! assert!(published().cached(&cache).all(&db).await?.is_empty());
//!
//! // The insert invalidates the cached (empty) list: the new row shows up.
//! article::ActiveModel { title: Set("Cache".into()), published: Set(true), ..Default::default() }
//!     .insert(&db)
//!     .await?;
//! assert_eq!(published().cached(&cache).all(&db).await?.len(), 1);
//! # Ok::<_, Box<dyn std::error::Error>>(()) }).unwrap();
//! ```
//!
//! ## Round trips
//!
//! A hooked save costs one cache round trip (one [`Cache::invalidate`] call) after its
//! statement, and one extra `SELECT` when an update changes a watched column or a scoped
//! entity's row is deleted (its current values, which a model loaded earlier may not hold). A [`transaction()`] or [`batch`] costs one round trip in
//! all, whatever the number of saves.
//!
//! [`Cache::invalidate`]: matroska_core::Cache::invalidate
//! [`CacheDeps`]: matroska_core::CacheDeps
//! [`Scoped`]: matroska_core::Scoped
#![cfg_attr(docsrs, feature(doc_cfg))]
// Library code states why an `expect` cannot fail, and never unwraps.
#![warn(clippy::unwrap_used)]

pub mod bulk;
pub mod collation;
pub mod connection;
mod dependencies;
mod error;
mod filter;
pub mod hooks;
pub mod invalidator;
pub mod outbox;
pub mod query;
mod row;
pub mod transaction;

pub use bulk::{invalidate, invalidate_entity};
pub use collation::{CollationIssue, check_collations};
pub use connection::CacheableConnection;
pub use dependencies::{entity_dependencies, row_dependencies};
pub use error::{Error, Result};
pub use filter::ScopeFilter;
pub use hooks::Hooks;
pub use invalidator::{
    Invalidator, InvalidatorBuilder, current_cache, registered_cache, set_global_cache, with_cache,
};
pub use query::{Cached, CachedExt};
pub use transaction::{batch, transaction};

/// Items for the code [`active_model_behavior!`] generates; not a public API.
#[doc(hidden)]
pub mod __private {
    pub use async_trait::async_trait;
    pub use matroska_core::WatchedTable;
    pub use sea_orm;
    pub use std::vec::Vec;

    use sea_orm::{ActiveModelTrait, ConnectionTrait, DbErr};

    use crate::hooks::{Hooks, ModelOf};

    /// The user hooks of a model without any.
    pub struct NoHooks;

    /// Either the user's [`Hooks`] or none.
    #[async_trait]
    pub trait UserHooks<AM>
    where
        AM: ActiveModelTrait + Send + 'static,
        ModelOf<AM>: Send,
    {
        fn new_active_model() -> AM;
        async fn before_save<C: ConnectionTrait>(am: AM, db: &C, insert: bool)
        -> Result<AM, DbErr>;
        async fn after_save<C: ConnectionTrait>(
            model: ModelOf<AM>,
            db: &C,
            insert: bool,
        ) -> Result<ModelOf<AM>, DbErr>;
        async fn before_delete<C: ConnectionTrait>(am: AM, db: &C) -> Result<AM, DbErr>;
        async fn after_delete<C: ConnectionTrait>(am: AM, db: &C) -> Result<AM, DbErr>;
    }

    #[async_trait]
    impl<AM> UserHooks<AM> for NoHooks
    where
        AM: ActiveModelTrait + Send + 'static,
        ModelOf<AM>: Send,
    {
        fn new_active_model() -> AM {
            <AM as ActiveModelTrait>::default()
        }
        async fn before_save<C: ConnectionTrait>(
            am: AM,
            _db: &C,
            _insert: bool,
        ) -> Result<AM, DbErr> {
            Ok(am)
        }
        async fn after_save<C: ConnectionTrait>(
            model: ModelOf<AM>,
            _db: &C,
            _insert: bool,
        ) -> Result<ModelOf<AM>, DbErr> {
            Ok(model)
        }
        async fn before_delete<C: ConnectionTrait>(am: AM, _db: &C) -> Result<AM, DbErr> {
            Ok(am)
        }
        async fn after_delete<C: ConnectionTrait>(am: AM, _db: &C) -> Result<AM, DbErr> {
            Ok(am)
        }
    }

    #[async_trait]
    impl<AM> UserHooks<AM> for AM
    where
        AM: Hooks + 'static,
        ModelOf<AM>: Send,
    {
        fn new_active_model() -> AM {
            <AM as Hooks>::new()
        }
        async fn before_save<C: ConnectionTrait>(
            am: AM,
            db: &C,
            insert: bool,
        ) -> Result<AM, DbErr> {
            <AM as Hooks>::before_save(am, db, insert).await
        }
        async fn after_save<C: ConnectionTrait>(
            model: ModelOf<AM>,
            db: &C,
            insert: bool,
        ) -> Result<ModelOf<AM>, DbErr> {
            <AM as Hooks>::after_save(model, db, insert).await
        }
        async fn before_delete<C: ConnectionTrait>(am: AM, db: &C) -> Result<AM, DbErr> {
            <AM as Hooks>::before_delete(am, db).await
        }
        async fn after_delete<C: ConnectionTrait>(am: AM, db: &C) -> Result<AM, DbErr> {
            <AM as Hooks>::after_delete(am, db).await
        }
    }
}
