//! The database outbox ([`matroska_outbox`]) from SeaORM: install it in a migration, run its
//! relay on the application's pool.
//!
//! With the outbox installed on a table, every committed write to it is invalidated — the
//! hooked saves, `Entity::update_many()`, `delete_by_id`, raw SQL, `psql`, other processes —
//! by a [`Relay`] after the commit. The hooks stay for read-your-writes (a request that saves
//! and then reads sees its write at once) and become an optimisation:
//!
//! - a hooked save with **no cache registered** (a migration, a CLI, a test) proceeds when the
//!   outbox's triggers watch its table: the relay will invalidate (one catalogue query before
//!   such a save checks the triggers). Otherwise the save is refused before it writes
//!   ([`Error::Unrecorded`](crate::Error::Unrecorded)): see [migration order](#migration-order);
//! - a full retry queue no longer refuses writes to a watched table, nor grows with them: their
//!   failed invalidations are dropped once the queue is full, and the outbox delivers them.
//!
//! ## In a migration
//!
//! With sea-orm-migration, one line is the whole migration file
//! ([`outbox_migration!`](crate::outbox_migration): `up` installs, `down` uninstalls, for the
//! tables of the models listed):
//!
//! ```text
//! // migration/src/m20220120_000001_matroska_outbox.rs
//! matroska::seaorm::outbox_migration!(entity::post::Model, entity::comment::Model);
//! ```
//!
//! It is this migration, written by hand:
//!
//! ```text
//! use sea_orm_migration::prelude::*;
//! use matroska::WatchedTable;
//!
//! #[async_trait::async_trait]
//! impl MigrationTrait for Migration {
//!     async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
//!         matroska::seaorm::outbox::install(
//!             manager.get_connection(),
//!             &[post::Model::watched_table(), comment::Model::watched_table()],
//!         )
//!         .await
//!         .map_err(|e| DbErr::Migration(e.to_string()))
//!     }
//!
//!     async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
//!         matroska::seaorm::outbox::uninstall(manager.get_connection(), &["post", "comment"])
//!             .await
//!             .map_err(|e| DbErr::Migration(e.to_string()))
//!     }
//! }
//! ```
//!
//! ## Migration order
//!
//! A migration's hooked writes (a seed) run with no cache registered in the migrating
//! process, and nothing in this process knows what other processes (a shared Redis) hold.
//! So a hooked write with no cache goes ahead only when the database records it, and is
//! refused otherwise — with an error, before it writes, never a panic and never a silent
//! skip:
//!
//! | no cache registered, and the table has | the hooked write |
//! |---|---|
//! | the outbox's triggers | goes ahead; the triggers record it, the relays invalidate |
//! | no triggers (a fresh database before the outbox's migration, or a rollback uninstalled it) | refused: [`Error::Unrecorded`](crate::Error::Unrecorded) |
//!
//! Put the outbox's migration **right after the migrations that create the watched tables,
//! before any migration that writes rows**. A project that adds it to existing migrations
//! lists it there too (sea-orm-migration applies a pending migration listed before applied
//! ones at the next `up`: existing databases get it, fresh ones get the right order), or
//! registers the cache before running the migrations (`set_global_cache` /
//! [`with_cache`](crate::with_cache) around `Migrator::up`): the seed's hooks then invalidate
//! that cache, and the install that follows finds no triggers and invalidates the tables for
//! every consumer anyway.
//!
//! Installing over missing, disabled or altered triggers (a first install over existing
//! data, the `up` after a rollback past this migration, a repair) invalidates everything
//! cached from the tables, through the outbox, for every consumer: whatever was written
//! while nothing recorded it — a `delete_many` in a rolled-back migration, `psql` — is not
//! served afterwards. Re-running the install with nothing changed (every start-up)
//! invalidates nothing. Between an uninstall and the next install, writes that bypass the
//! hooks are not recorded: the cache may serve them stale until the re-install (hooked saves
//! with no cache are refused then). A relay in development mode (the default in debug builds,
//! [`RelayBuilder::mode`]) refuses to deliver while a table it watches has no triggers, and
//! retries with back-off: it delivers the re-install's invalidation at its next retry, up to
//! the longest wait of [`RelayBuilder::retry_delay`] (5 s by default) after the `up` — an
//! app served stale reads for 2 and 5.6 s there (SeaORM's axum example, `migrate down`
//! twice, then `up`). In production mode it keeps delivering, coarsely, meanwhile.
//!
//! The migrations below, as functions (each the body of a `MigrationTrait::up`, called with
//! `manager.get_connection()`), run in the documented order and in the wrong one:
//!
//! ```
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! mod post {
//!     use sea_orm::entity::prelude::*;
//!     # use matroska_core::{CacheDeps, Dependency, Scope, Scoped, Value};
//!     #[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
//!     #[sea_orm(table_name = "post")]
//!     pub struct Model { #[sea_orm(primary_key)] pub id: i32, pub title: String }
//!     #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
//!     pub enum Relation {}
//!     // `#[derive(matroska::CacheDeps)]` writes these two impls.
//!     # impl CacheDeps for Model {
//!     #     fn entity_name() -> &'static str { "post" }
//!     #     fn primary_key(&self) -> Dependency { Dependency::primary_key("post", [Value::Int(self.id.into())]) }
//!     # }
//!     # impl Scoped for Model {
//!     #     fn scope() -> &'static Scope<Self> {
//!     #         static S: std::sync::LazyLock<Scope<Model>> = std::sync::LazyLock::new(|| Scope::new("post"));
//!     #         &S
//!     #     }
//!     # }
//!     matroska_seaorm::active_model_behavior!(ActiveModel);
//! }
//!
//! use matroska_core::{ColumnDecoder, TableSpec};
//! use matroska_seaorm::outbox;
//! use sea_orm::{ActiveModelTrait, ConnectionTrait, Database, DbErr, Set};
//!
//! // `post::Model::watched_table()` when the model derives `CacheDeps`.
//! let spec = || TableSpec::new("post", "post").key("id", ColumnDecoder::of::<i32>());
//!
//! async fn m1_create_post(db: &impl ConnectionTrait) -> Result<(), DbErr> {
//!     db.execute_unprepared("CREATE TABLE post (id INTEGER PRIMARY KEY, title TEXT NOT NULL)")
//!         .await
//!         .map(drop)
//! }
//! async fn m2_outbox(db: &impl ConnectionTrait, spec: TableSpec) -> Result<(), DbErr> {
//!     outbox::install(db, &[spec]).await.map_err(|e| DbErr::Migration(e.to_string()))
//! }
//! async fn m3_seed(db: &impl ConnectionTrait) -> Result<(), DbErr> {
//!     let post = post::ActiveModel { title: Set("Hello".into()), ..Default::default() };
//!     post.insert(db).await.map(drop)
//! }
//!
//! // No cache registered in this process, as in a migration CLI.
//! let db = Database::connect("sqlite::memory:").await?;
//! m1_create_post(&db).await?;
//! m2_outbox(&db, spec()).await?;
//! m3_seed(&db).await?; // recorded by the triggers
//!
//! // The seed before the outbox, on a fresh database: refused, nothing written.
//! let fresh = Database::connect("sqlite::memory:").await?;
//! m1_create_post(&fresh).await?;
//! let refused = m3_seed(&fresh).await.unwrap_err();
//! assert!(refused.to_string().contains("install the outbox before this write"));
//! # Ok::<_, Box<dyn std::error::Error>>(()) }).unwrap();
//! ```
//!
//! ## At start-up
//!
//! ```
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! use matroska_core::Cache;
//! use matroska_seaorm::outbox;
//!
//! let db = sea_orm::Database::connect("sqlite::memory:").await?;
//! # outbox::install(&db, &[]).await?;
//! let cache = Cache::memory();
//! // `start` checks the installed triggers against the models and registers this cache as a
//! // consumer (every cache over the database receives every change) before it returns.
//! let relay = outbox::relay(&db, cache.clone())?
//!     // .watch_type::<post::Model>() for every cached entity
//!     .build()
//!     .start()
//!     .await?;
//! // ...
//! relay.shutdown().await;
//! # Ok::<_, Box<dyn std::error::Error>>(()) }).unwrap();
//! ```

use std::sync::OnceLock;

use async_trait::async_trait;
use matroska_core::{Cache, TableSpec};
use matroska_outbox::{Dialect, Outbox, OutboxDb, RelayBuilder, SqlConnection};
use sea_orm::{ConnectionTrait, DatabaseConnection, DbBackend, DbErr, Statement};

pub use matroska_outbox::{Relay, RelayHandle, poke, wait_delivered, wait_delivered_blocking};

static OUTBOX: OnceLock<Outbox> = OnceLock::new();

/// Names the outbox the hooks look for (default [`Outbox::default`]). Call once at start-up,
/// before any save, if the outbox was installed under another name.
///
/// # Errors
/// [`crate::Error::AlreadyRegistered`] when one was set already.
pub fn use_outbox(outbox: Outbox) -> crate::Result<()> {
    OUTBOX
        .set(outbox)
        .map_err(|_| crate::Error::AlreadyRegistered)
}

fn configured() -> &'static Outbox {
    OUTBOX.get_or_init(Outbox::default)
}

/// A SeaORM connection (a `DatabaseConnection`, a transaction, a migration's
/// `SchemaManagerConnection`) as the outbox installer's [`SqlConnection`].
pub struct SeaOrmSql<'a, C: ?Sized>(pub &'a C);

fn dialect(backend: DbBackend) -> Dialect {
    match backend {
        DbBackend::Postgres => Dialect::Postgres,
        DbBackend::MySql => Dialect::MySql,
        _ => Dialect::Sqlite,
    }
}

fn db_error(e: DbErr) -> matroska_outbox::Error {
    matroska_outbox::Error::Connection(e.to_string())
}

#[async_trait]
impl<C: ConnectionTrait + Sync + ?Sized> SqlConnection for SeaOrmSql<'_, C> {
    fn dialect(&self) -> Dialect {
        dialect(self.0.get_database_backend())
    }

    async fn execute_sql(&self, sql: &str) -> matroska_outbox::Result<()> {
        self.0.execute_unprepared(sql).await.map_err(db_error)?;
        Ok(())
    }

    async fn query_pairs(&self, sql: &str) -> matroska_outbox::Result<Vec<(String, i64)>> {
        let rows = self
            .0
            .query_all_raw(Statement::from_string(self.0.get_database_backend(), sql))
            .await
            .map_err(db_error)?;
        rows.iter()
            .map(|row| {
                Ok((
                    row.try_get_by_index::<String>(0).map_err(db_error)?,
                    row.try_get_by_index::<i64>(1).map_err(db_error)?,
                ))
            })
            .collect()
    }
}

/// Installs (or upgrades) the outbox for `tables` on `conn` (see
/// [`matroska_outbox::install`]): idempotent, for a migration or start-up.
///
/// # Errors
/// As [`matroska_outbox::install`].
pub async fn install<C>(conn: &C, tables: &[TableSpec]) -> matroska_outbox::Result<()>
where
    C: ConnectionTrait + Sync + ?Sized,
{
    matroska_outbox::install(&SeaOrmSql(conn), configured(), tables).await
}

/// Removes the outbox triggers of `tables` (for a migration's `down`).
///
/// # Errors
/// The database's errors.
pub async fn uninstall<C>(conn: &C, tables: &[&str]) -> matroska_outbox::Result<()>
where
    C: ConnectionTrait + Sync + ?Sized,
{
    matroska_outbox::uninstall(&SeaOrmSql(conn), configured(), tables).await
}

/// A sea-orm-migration migration that installs the outbox on the tables of the listed models
/// (`up`: [`install`]) and removes it (`down`: [`uninstall`] of the same tables): the whole
/// migration file, whose name (the file's stem, as `DeriveMigrationName` takes it) is the
/// migration's.
///
/// ```text
/// // migration/src/m20220120_000001_matroska_outbox.rs
/// matroska::seaorm::outbox_migration!(entity::post::Model, entity::comment::Model);
///
/// // migration/src/lib.rs: right after the migrations that create the tables, before any
/// // that writes rows (see *Migration order* in the module docs)
/// vec![Box::new(m20220120_000001_create_post_table::Migration),
///      Box::new(m20220120_000001_matroska_outbox::Migration),
///      Box::new(m20220120_000002_seed_posts::Migration)]
/// ```
///
/// It generates `pub struct Migration` and its `MigrationTrait` impl, naming
/// `sea_orm_migration` items by path: the crate that calls it depends on `sea-orm-migration`
/// under that name (as every SeaORM migration crate does). Each model must derive
/// `matroska::CacheDeps` (for [`WatchedTable`](matroska_core::WatchedTable)). Adding the
/// migration in the middle of the list is fine on an existing database too: sea-orm-migration
/// applies every pending migration, wherever it is listed.
///
/// ```
/// mod post {
///     use sea_orm::entity::prelude::*;
///     # use matroska_core::{CacheDeps, ColumnDecoder, Dependency, Scope, Scoped, TableSpec, Value, WatchedTable};
///     #[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
///     #[sea_orm(table_name = "post")]
///     pub struct Model { #[sea_orm(primary_key)] pub id: i32, pub title: String }
///     #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
///     pub enum Relation {}
///     // `#[derive(matroska::CacheDeps)]` writes these three impls.
///     # impl CacheDeps for Model {
///     #     fn entity_name() -> &'static str { "post" }
///     #     fn primary_key(&self) -> Dependency { Dependency::primary_key("post", [Value::Int(self.id.into())]) }
///     # }
///     # impl Scoped for Model {
///     #     fn scope() -> &'static Scope<Self> {
///     #         static S: std::sync::LazyLock<Scope<Model>> = std::sync::LazyLock::new(|| Scope::new("post"));
///     #         &S
///     #     }
///     # }
///     # impl WatchedTable for Model {
///     #     fn watched_table() -> TableSpec { TableSpec::new("post", "post").key("id", ColumnDecoder::of::<i32>()) }
///     # }
///     matroska_seaorm::active_model_behavior!(ActiveModel);
/// }
///
/// mod m1_create_post {
///     use sea_orm_migration::prelude::*;
///     // Named by hand: this example is one file (`#[derive(DeriveMigrationName)]` in a file
///     // of its own, as the outbox's migration is named by its file).
///     pub struct Migration;
///     impl MigrationName for Migration {
///         fn name(&self) -> &str { "m1_create_post" }
///     }
///     #[async_trait::async_trait]
///     impl MigrationTrait for Migration {
///         async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
///             manager.get_connection()
///                 .execute_unprepared("CREATE TABLE post (id INTEGER PRIMARY KEY, title TEXT NOT NULL)")
///                 .await
///                 .map(drop)
///         }
///     }
/// }
/// mod m2_outbox {
///     // In a file of its own, this line is the whole migration.
///     matroska_seaorm::outbox_migration!(super::post::Model);
/// }
/// mod m3_seed {
///     use sea_orm::{ActiveModelTrait, Set};
///     use sea_orm_migration::prelude::*;
///     // Named by hand: this example is one file (`#[derive(DeriveMigrationName)]` in a file
///     // of its own, as the outbox's migration is named by its file).
///     pub struct Migration;
///     impl MigrationName for Migration {
///         fn name(&self) -> &str { "m3_seed" }
///     }
///     #[async_trait::async_trait]
///     impl MigrationTrait for Migration {
///         async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
///             // A hooked insert with no cache registered: the outbox's triggers record it.
///             let post = super::post::ActiveModel { title: Set("Hello".into()), ..Default::default() };
///             post.insert(manager.get_connection()).await.map(drop)
///         }
///         async fn down(&self, _: &SchemaManager) -> Result<(), DbErr> {
///             Ok(())
///         }
///     }
/// }
///
/// use sea_orm::{ActiveModelTrait, EntityTrait, Set};
/// use sea_orm_migration::{MigrationTrait, MigratorTrait};
///
/// struct Migrator;
/// #[sea_orm_migration::async_trait::async_trait]
/// impl MigratorTrait for Migrator {
///     fn migrations() -> Vec<Box<dyn MigrationTrait>> {
///         vec![Box::new(m1_create_post::Migration),
///              Box::new(m2_outbox::Migration),
///              Box::new(m3_seed::Migration)]
///     }
/// }
///
/// # fn main() { tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
///
/// // No cache registered in this process, as in the migration CLI.
/// let db = sea_orm::Database::connect("sqlite::memory:").await?;
/// Migrator::up(&db, None).await?;
/// assert_eq!(post::Entity::find().all(&db).await?.len(), 1);
///
/// // Rolling back the seed and the outbox uninstalls the triggers: a hooked write with no
/// // cache is refused again, before it writes.
/// Migrator::down(&db, Some(2)).await?;
/// let refused = post::ActiveModel { title: Set("Late".into()), ..Default::default() }
///     .insert(&db)
///     .await
///     .unwrap_err();
/// assert!(refused.to_string().contains("install the outbox before this write"));
/// # Ok::<_, Box<dyn std::error::Error>>(()) }).unwrap() }
/// ```
#[macro_export]
macro_rules! outbox_migration {
    ($($model:ty),+ $(,)?) => {
        /// Installs the matroska outbox on the tables of its models (`down` removes it).
        #[derive(sea_orm_migration::prelude::DeriveMigrationName)]
        pub struct Migration;

        #[sea_orm_migration::async_trait::async_trait]
        impl sea_orm_migration::MigrationTrait for Migration {
            async fn up(
                &self,
                manager: &sea_orm_migration::SchemaManager,
            ) -> ::core::result::Result<(), sea_orm_migration::DbErr> {
                let tables = [$(<$model as $crate::__private::WatchedTable>::watched_table()),+];
                $crate::outbox::install(manager.get_connection(), &tables)
                    .await
                    .map_err(|e| sea_orm_migration::DbErr::Migration(e.to_string()))
            }

            async fn down(
                &self,
                manager: &sea_orm_migration::SchemaManager,
            ) -> ::core::result::Result<(), sea_orm_migration::DbErr> {
                let tables = [$(<$model as $crate::__private::WatchedTable>::watched_table()),+];
                let names: $crate::__private::Vec<&str> = tables.iter().map(|t| t.table()).collect();
                $crate::outbox::uninstall(manager.get_connection(), &names)
                    .await
                    .map_err(|e| sea_orm_migration::DbErr::Migration(e.to_string()))
            }
        }
    };
}

/// The sqlx pool behind a SeaORM connection, for the relay.
///
/// # Errors
/// [`matroska_outbox::Error::UnsupportedDatabase`] for a mock or proxy connection.
pub fn relay_db(db: &DatabaseConnection) -> matroska_outbox::Result<OutboxDb> {
    if db.is_mock_connection() {
        return Err(matroska_outbox::Error::UnsupportedDatabase("mock".into()));
    }
    match db.get_database_backend() {
        #[cfg(feature = "sqlx-postgres")]
        DbBackend::Postgres => Ok(OutboxDb::from(db.get_postgres_connection_pool().clone())),
        #[cfg(feature = "sqlx-mysql")]
        DbBackend::MySql => Ok(OutboxDb::from(db.get_mysql_connection_pool().clone())),
        #[cfg(feature = "sqlx-sqlite")]
        DbBackend::Sqlite => Ok(OutboxDb::from(db.get_sqlite_connection_pool().clone())),
        other => Err(matroska_outbox::Error::UnsupportedDatabase(format!(
            "{other:?} (enable matroska's sqlx-* feature for it)"
        ))),
    }
}

/// A relay over the pool behind `db` (so an in-memory SQLite database is shared), reading the
/// configured outbox into `cache`; add the watched entities and `.build().start().await`.
/// Each cache is its own consumer (see [`RelayBuilder::consumer`]): every cache over the
/// database receives every change.
///
/// # Errors
/// As [`relay_db`].
pub fn relay(db: &DatabaseConnection, cache: Cache) -> matroska_outbox::Result<RelayBuilder> {
    Ok(Relay::builder(relay_db(db)?, cache).outbox(configured().clone()))
}

/// Whether the outbox's triggers watch `table` on `conn`'s database. One catalogue query that
/// cannot fail on a missing outbox (so it is safe inside a transaction).
pub(crate) async fn covers<C: ConnectionTrait + ?Sized>(conn: &C, table: &str) -> bool {
    let backend = conn.get_database_backend();
    let sql = configured().triggers_present_sql(dialect(backend), table);
    match conn
        .query_one_raw(Statement::from_string(backend, sql))
        .await
    {
        Ok(Some(row)) => row.try_get_by_index::<i64>(0).is_ok_and(|n| n >= 3),
        Ok(None) => false,
        Err(e) => {
            tracing::warn!(table, error = %e, "could not check for the outbox triggers");
            false
        }
    }
}
