//! Cached SeaORM selects: `Entity::find()...cached(&cache).all(&db)`.
//!
//! [`CachedExt::cached`] wraps a `Select`, `SelectTwo` (`find_also_related`) or
//! `SelectTwoMany` (`find_with_related`) in a [`Cached`] query that runs through
//! [`Cache::get_or_load`], so stale-set protection and single-flight apply.
//!
//! - **Key**: `q:{table}:{kind}:{hash}`, the hash a fixed 128-bit xxh3 of the backend, the SQL
//!   SeaORM builds for the connection's backend, and its bound values: equal queries share an
//!   entry across processes of one build. Another SeaORM version may render a statement or a
//!   value differently, which changes keys (a miss, never a wrong hit); bump the cache's
//!   schema version when a model's shape changes.
//! - **Dependencies**: the primary key of every row returned (related rows included), plus
//!   - with [`Cached::scoped`], the scope condition (which also filters the query: one typed
//!     value serves both, since a `Select`'s filter cannot be read back);
//!   - with [`Cached::derived`] (opt-in), the dependencies read from the select's own `WHERE`
//!     ([`matroska_core::derived`]): the listed primary keys of `is_in` / `eq` on the key, or
//!     a declared scope's conditions, else coarse;
//!   - otherwise the entity's `any_change` and `all` dependencies: any write to the entity
//!     invalidates the entry (coarse, never stale).
//!
//!   The related entity of a `find_also_related` / `find_with_related` query always adds its
//!   `any_change` and `all`: a new related row can enter the result.
//!
//! - **Values**: each row as its column values (SeaORM `Value`s, read with `ModelTrait::get`),
//!   rebuilt on a hit through the `ActiveModel`, as SeaORM builds models: a hit returns exactly
//!   the row the database returned, whatever serde attributes the model carries (sea-orm-cli's
//!   `#[serde(skip_deserializing)]` on keys included). Models need no serde impl.
//!
//! - **Transactions**: on a `DatabaseTransaction` (any connection but SeaORM's pool handle
//!   `DatabaseConnection`), and anywhere inside [`transaction`](crate::transaction()) or
//!   [`batch`](crate::batch), a cached query reads through: no hit, no fill. A transaction's
//!   view is its own (uncommitted rows that may roll back, an old `REPEATABLE READ` snapshot),
//!   and inside a batch the invalidations of its writes have not run yet.
//!
//! A scoped query must not filter or order by columns outside the scope's extractors
//! (except ones that never change, like the primary key): a row whose unwatched column changes
//! invalidates only its primary key and `any_change`, so it could enter such a query unseen.
//! Without `.scoped`, any filter and order is safe.
//!
//! ## A value per row of a page
//!
//! A count (or any lookup) for each row of a list is one query per row if each goes through
//! its own cached query: one round trip to the cache per row even when all hit. Cache them
//! with [`Cache::get_or_load_many`] instead: the hits come in one backend call, and the misses
//! from one grouped query, each stored under its own key with its own dependencies (the same
//! stale-set guard as a cached query). With `#[scope(article_id)]` on the favourite model, the
//! hooks' invalidation of a favourite reaches exactly its article's count:
//!
//! ```text
//! let page = article::Entity::find().limit(20).cached(&cache).all(&db).await?;
//! let ids: Vec<i32> = page.iter().map(|a| a.id).collect();
//! let counts: Vec<i64> = cache
//!     .get_or_load_many(&ids, |id| format!("favorites:{id}"), None, |missing| async move {
//!         let rows: HashMap<i32, i64> = favorite::Entity::find()
//!             .select_only()
//!             .column(favorite::Column::ArticleId)
//!             .column_as(favorite::Column::ArticleId.count(), "n")
//!             .filter(favorite::Column::ArticleId.is_in(missing.clone()))
//!             .group_by(favorite::Column::ArticleId)
//!             .into_tuple::<(i32, i64)>()
//!             .all(&db)
//!             .await?
//!             .into_iter()
//!             .collect();
//!         Ok::<_, DbErr>(missing.iter().map(|id| {
//!             let deps = FavoriteByArticleId { article_id: *id }.dependencies();
//!             (rows.get(id).copied().unwrap_or(0), deps)
//!         }).collect())
//!     })
//!     .await?;
//! ```
//!
//! On Redis, once cached, the page and its 20 counts cost two round trips
//! (`a_page_of_per_row_lookups_is_two_round_trips` in `tests/redis_backend.rs`). The batch
//! form does not coalesce concurrent loads of the same keys (no single flight, no fill lease).

use std::sync::Arc;
use std::time::Duration;

use matroska_core::derived::{Basis, Bound, Derivation, Dialect};
use matroska_core::{Cache, CacheDeps, Dependency, Loaded, TableSpec, WatchedTable};
use sea_orm::sea_query::{FromValueTuple, IntoValueTuple};
use sea_orm::{
    DbErr, EntityName, EntityTrait, PaginatorTrait, PrimaryKeyTrait, QueryFilter, QueryTrait,
    Select, SelectTwo, SelectTwoMany, Statement, TryIntoModel,
};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::connection::CacheableConnection;
use crate::error::{Result, from_load};
use crate::filter::ScopeFilter;
use crate::row::Row;
use crate::transaction::in_batch;

/// Adds [`cached`](CachedExt::cached) to SeaORM selects.
pub trait CachedExt: Sized {
    /// This query, answered from `cache` when it can be.
    ///
    /// ```
    /// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
    /// # mod article {
    /// #     use sea_orm::entity::prelude::*;
    /// #     use matroska_core::{CacheDeps, Dependency, Value};
    /// #     #[derive(Clone, Debug, PartialEq, DeriveEntityModel, serde::Serialize, serde::Deserialize)]
    /// #     #[sea_orm(table_name = "article")]
    /// #     pub struct Model { #[sea_orm(primary_key)] pub id: i32, pub title: String }
    /// #     #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    /// #     pub enum Relation {}
    /// #     impl ActiveModelBehavior for ActiveModel {}
    /// #     impl CacheDeps for Model {
    /// #         fn entity_name() -> &'static str { "article" }
    /// #         fn primary_key(&self) -> Dependency { Dependency::primary_key("article", [Value::Int(self.id.into())]) }
    /// #     }
    /// # }
    /// use std::time::Duration;
    /// use sea_orm::{ConnectionTrait, Database, EntityTrait, QueryOrder};
    /// use matroska_core::Cache;
    /// use matroska_seaorm::CachedExt;
    ///
    /// let db = Database::connect("sqlite::memory:").await?;
    /// db.execute_unprepared("CREATE TABLE article (id INTEGER PRIMARY KEY, title TEXT NOT NULL);
    ///                        INSERT INTO article VALUES (1, 'Python'), (2, 'Cache')").await?;
    /// let cache = Cache::memory();
    ///
    /// let articles = article::Entity::find()
    ///     .order_by_asc(article::Column::Id)
    ///     .cached(&cache)
    ///     .ttl(Duration::from_secs(60))
    ///     .all(&db)
    ///     .await?;
    /// assert_eq!(articles.len(), 2);
    /// // Served from the cache now; any write to `article` drops it.
    /// assert_eq!(article::Entity::find().cached(&cache).count(&db).await?, 2);
    /// # Ok::<_, Box<dyn std::error::Error>>(()) }).unwrap();
    /// ```
    fn cached(self, cache: &Cache) -> Cached<Self>;
}

impl<E: EntityTrait> CachedExt for Select<E> {
    fn cached(self, cache: &Cache) -> Cached<Self> {
        Cached::new(self, cache)
    }
}

impl<E: EntityTrait, F: EntityTrait> CachedExt for SelectTwo<E, F> {
    fn cached(self, cache: &Cache) -> Cached<Self> {
        Cached::new(self, cache)
    }
}

impl<E: EntityTrait, F: EntityTrait> CachedExt for SelectTwoMany<E, F> {
    fn cached(self, cache: &Cache) -> Cached<Self> {
        Cached::new(self, cache)
    }
}

/// A select answered from the cache; made by [`CachedExt::cached`].
#[derive(Debug, Clone)]
#[must_use]
pub struct Cached<S> {
    query: S,
    cache: Cache,
    ttl: Option<Duration>,
    /// The scope conditions' dependencies; empty for an unscoped query.
    conditions: Vec<Dependency>,
    /// With [`Cached::derived`]: the table whose dependencies are read from the `WHERE`.
    derive: Option<TableSpec>,
}

impl<S: QueryFilter + QueryTrait> Cached<S> {
    fn new(query: S, cache: &Cache) -> Self {
        Cached {
            query,
            cache: cache.clone(),
            ttl: None,
            conditions: Vec::new(),
            derive: None,
        }
    }

    /// The dependencies derived from the query as `backend` renders it, when
    /// [`Cached::derived`] applies (set, and no `.scoped` condition).
    fn derivation(&self, backend: sea_orm::DbBackend) -> Option<Derivation> {
        let spec = self.derive.as_ref()?;
        if !self.conditions.is_empty() {
            return None;
        }
        Some(derivation(spec, &self.query.build(backend)))
    }

    /// Time to live of the entry (default: the cache's).
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = Some(ttl);
        self
    }

    fn scope_by<C: ScopeFilter>(mut self, condition: &C) -> Self {
        self.query = self.query.filter(condition.filter());
        self.conditions.extend(condition.dependencies());
        self
    }

    /// The dependencies of the main entity that do not come from rows.
    fn base_dependencies<M: CacheDeps>(&self) -> Vec<Dependency> {
        if self.conditions.is_empty() {
            coarse::<M>()
        } else {
            self.conditions.clone()
        }
    }

    /// The base dependencies plus the related entity's entity-wide ones: a new related row
    /// can enter a joined result.
    fn related_dependencies<M: CacheDeps, R: CacheDeps>(&self) -> Vec<Dependency> {
        let mut deps = self.base_dependencies::<M>();
        deps.extend(coarse::<R>());
        deps
    }

    fn key<E: EntityName>(
        &self,
        kind: &str,
        namespace: &str,
        backend: sea_orm::DbBackend,
    ) -> String {
        query_key::<E, _>(&self.query, kind, namespace, backend)
    }

    async fn load<T, F, Fut>(&self, key: &str, loader: F) -> Result<T>
    where
        T: Serialize + DeserializeOwned,
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Loaded<T>, DbErr>>,
    {
        let cache = &self.cache;
        self.cache
            .get_or_load(key, self.ttl, || async move {
                let (value, deps) = loader().await?;
                // Inside a `transaction` this load may have read uncommitted rows.
                crate::transaction::note_cached_load(cache, &deps);
                Ok::<_, DbErr>((value, deps))
            })
            .await
            .map_err(from_load)
    }

    /// The body every cached select shares: key, then on a miss run `load` and cache what it
    /// returns (rows in their cached form, and their dependencies) with `extra` added.
    async fn fetch<'c, E, T, C, Fut>(
        mut self,
        db: &'c C,
        kind: &str,
        extra: Vec<Dependency>,
        load: impl FnOnce(S, &'c C) -> Fut,
    ) -> Result<T>
    where
        E: EntityName,
        S: Clone,
        C: CacheableConnection,
        Fut: Future<Output = Result<Loaded<T>, DbErr>>,
        T: Serialize + DeserializeOwned,
    {
        let query = self.query.clone();
        let Some(namespace) = cache_namespace::<E, C>(db, kind).await? else {
            return Ok(load(query, db).await?.0);
        };
        let statement = self.query.build(db.get_database_backend());
        let key = statement_key::<E>(kind, &namespace, &statement);
        let derive = if self.conditions.is_empty() {
            self.derive.take()
        } else {
            None
        };
        self.load(&key, || async move {
            // Derived on a fill only: a hit pays no parse. `derive` is set only on a `Select`
            // of one entity, whose `extra` is that entity's coarse dependencies: the derived
            // ones replace them.
            let extra = match derive {
                Some(spec) => {
                    let derived = derivation(&spec, &statement);
                    tracing::debug!(table = spec.table(), %derived, "derived dependencies");
                    derived.dependencies
                }
                None => extra,
            };
            let (rows, mut deps) = load(query, db).await?;
            deps.extend(extra);
            Ok((rows, deps))
        })
        .await
    }
}

use crate::dependencies::entity_dependencies as coarse;

/// The namespace of `db` for keys, or `None` when a cached query must go to the database,
/// neither served from nor stored in the cache: on a transaction (see
/// [`CacheableConnection`]), or inside a [`batch`](crate::batch) /
/// [`transaction`](crate::transaction()), whose writes' invalidations have not run yet (a hit
/// could be stale).
///
/// A transaction sees its own uncommitted writes (stored, they would be served to everyone,
/// even after a rollback) and, under `REPEATABLE READ`, a snapshot that may predate committed
/// writes whose invalidations have already run (stored, the old rows would stay until the
/// TTL).
async fn cache_namespace<E: EntityName, C: CacheableConnection>(
    db: &C,
    kind: &str,
) -> Result<Option<Arc<str>>> {
    let namespace = if in_batch() {
        None
    } else {
        db.cache_namespace().await?
    };
    if namespace.is_none() {
        tracing::debug!(
            table = E::default().table_name(),
            kind,
            "cached query inside a transaction or batch: reading through"
        );
    }
    Ok(namespace)
}

/// Rows in their cached form, with their primary keys.
fn stored<E>(rows: Vec<E::Model>) -> Loaded<Vec<Row<E>>>
where
    E: EntityTrait,
    E::Model: CacheDeps,
{
    let deps = rows.iter().map(CacheDeps::primary_key).collect();
    (rows.into_iter().map(Row).collect(), deps)
}

fn restored<E: EntityTrait>(rows: Vec<Row<E>>) -> Vec<E::Model> {
    rows.into_iter().map(Row::into_model).collect()
}

/// A row in its cached form, adding its primary key to `deps`.
fn keep<E>(row: E::Model, deps: &mut Vec<Dependency>) -> Row<E>
where
    E: EntityTrait,
    E::Model: CacheDeps,
{
    deps.push(row.primary_key());
    Row(row)
}

/// `q:{table}:{kind}:{hash of the statement built for backend}`.
fn query_key<E: EntityName, S: QueryTrait>(
    query: &S,
    kind: &str,
    namespace: &str,
    backend: sea_orm::DbBackend,
) -> String {
    statement_key::<E>(kind, namespace, &query.build(backend))
}

/// `q:{table}:{kind}:{hash of statement}`.
fn statement_key<E: EntityName>(kind: &str, namespace: &str, statement: &Statement) -> String {
    format!(
        "q:{}:{kind}:{:032x}",
        E::default().table_name(),
        statement_hash(namespace, statement)
    )
}

/// A stable 128-bit hash of a built statement and the connection's namespace: namespace,
/// backend, SQL, and each value's debug form, every part length-prefixed so the concatenation
/// is unambiguous.
fn statement_hash(namespace: &str, statement: &Statement) -> u128 {
    let mut hasher = xxhash_rust::xxh3::Xxh3::new();
    let mut part = |bytes: &[u8]| {
        hasher.update(&(bytes.len() as u64).to_le_bytes());
        hasher.update(bytes);
    };
    part(namespace.as_bytes());
    part(format!("{:?}", statement.db_backend).as_bytes());
    part(statement.sql.as_bytes());
    if let Some(values) = &statement.values {
        for value in values.iter() {
            part(format!("{value:?}").as_bytes());
        }
    }
    hasher.digest128()
}

/// The row of `E` with primary key `id`, answered from `cache` when it can be.
///
/// Unlike `E::find_by_id(id).cached(&cache).one(&db)`, which cannot tell that its filter is a
/// primary key and so depends on any write to the entity, this lookup depends on that one key
/// (and the entity's `all`, for bulk writes): saving another row keeps it cached. A missing
/// row is cached too, and the insert of a row with that key drops it.
///
/// For key types the key dependency cannot be built from (floats, JSON, ...), it falls back to
/// the entity-wide dependencies, like an unscoped query.
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// # mod article {
/// #     use sea_orm::entity::prelude::*;
/// #     use matroska_core::{CacheDeps, Dependency, Value};
/// #     #[derive(Clone, Debug, PartialEq, DeriveEntityModel, serde::Serialize, serde::Deserialize)]
/// #     #[sea_orm(table_name = "article")]
/// #     pub struct Model { #[sea_orm(primary_key)] pub id: i32, pub title: String }
/// #     #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
/// #     pub enum Relation {}
/// #     impl ActiveModelBehavior for ActiveModel {}
/// #     impl CacheDeps for Model {
/// #         fn entity_name() -> &'static str { "article" }
/// #         fn primary_key(&self) -> Dependency { Dependency::primary_key("article", [Value::Int(self.id.into())]) }
/// #     }
/// # }
/// use sea_orm::{ConnectionTrait, Database};
/// use matroska_core::{Cache, CacheDeps};
///
/// let db = Database::connect("sqlite::memory:").await?;
/// db.execute_unprepared("CREATE TABLE article (id INTEGER PRIMARY KEY, title TEXT NOT NULL);
///                        INSERT INTO article VALUES (1, 'Python'), (2, 'Cache')").await?;
/// let cache = Cache::memory();
/// let first = matroska_seaorm::query::find_by_id::<article::Entity, _>(&cache, &db, 1).await?;
/// let second = matroska_seaorm::query::find_by_id::<article::Entity, _>(&cache, &db, 2).await?;
/// assert_eq!(first.as_ref().map(|a| a.title.as_str()), Some("Python"));
/// // A write to article 2 leaves article 1's entry alone.
/// cache.invalidate(&[second.unwrap().primary_key()]).await?;
/// let key = matroska_seaorm::query::find_by_id_key::<article::Entity, _>(&db, 1).await?;
/// assert!(cache.has(&key.expect("not a transaction")).await?);
/// # Ok::<_, Box<dyn std::error::Error>>(()) }).unwrap();
/// ```
///
/// # Errors
/// As [`Cached::all`].
pub async fn find_by_id<E, C>(
    cache: &Cache,
    db: &C,
    id: impl Into<<E::PrimaryKey as PrimaryKeyTrait>::ValueType>,
) -> Result<Option<E::Model>>
where
    E: EntityTrait,
    E::Model: CacheDeps + Send + Sync,
    E::ActiveModel: TryIntoModel<E::Model>,
    C: CacheableConnection,
{
    let values = id.into().into_value_tuple();
    let name = <E::Model as CacheDeps>::entity_name();
    let missing_row_deps = match key_values(values.clone()) {
        Some(key) => vec![
            Dependency::primary_key(name, key),
            Dependency::invalidate_all(name),
        ],
        None => coarse::<E::Model>(),
    };
    let id =
        <<E::PrimaryKey as PrimaryKeyTrait>::ValueType as FromValueTuple>::from_value_tuple(values);
    let cached = E::find_by_id(id).cached(cache);
    let query = cached.query.clone();
    let Some(namespace) = cache_namespace::<E, C>(db, "id").await? else {
        return Ok(query.one(db).await?);
    };
    let key = cached.key::<E>("id", &namespace, db.get_database_backend());
    let row: Option<Row<E>> = cached
        .load(&key, || async move {
            let row = query.one(db).await?;
            let deps = match &row {
                Some(row) => vec![row.primary_key(), Dependency::invalidate_all(name)],
                None => missing_row_deps,
            };
            Ok((row.map(Row), deps))
        })
        .await?;
    Ok(row.map(Row::into_model))
}

/// The cache key [`find_by_id`] uses for `id` on `db` (to inspect or delete the entry);
/// `None` where it reads through (a transaction).
///
/// # Errors
/// The database's, from the query that asks for `db`'s namespace (once per pool).
pub async fn find_by_id_key<E, C>(
    db: &C,
    id: impl Into<<E::PrimaryKey as PrimaryKeyTrait>::ValueType>,
) -> Result<Option<String>>
where
    E: EntityTrait,
    C: CacheableConnection,
{
    let Some(namespace) = db.cache_namespace().await? else {
        return Ok(None);
    };
    let backend = db.get_database_backend();
    Ok(Some(query_key::<E, _>(
        &E::find_by_id(id),
        "id",
        &namespace,
        backend,
    )))
}

/// The dependencies of `statement` on `spec`'s table, read from its SQL and values.
fn derivation(spec: &TableSpec, statement: &Statement) -> Derivation {
    let dialect = match statement.db_backend {
        sea_orm::DbBackend::Postgres => Dialect::Postgres,
        sea_orm::DbBackend::MySql => Dialect::MySql,
        sea_orm::DbBackend::Sqlite => Dialect::Sqlite,
        #[allow(unreachable_patterns)]
        _ => return Derivation::coarse(spec.entity(), "a database backend of unknown dialect"),
    };
    let binds: Vec<Bound> = statement
        .values
        .iter()
        .flat_map(|values| values.iter())
        .map(|v| match bound_value(v.clone()) {
            Some(v) => Bound::Scalar(v),
            None => Bound::Unknown,
        })
        .collect();
    // SeaORM's save hooks invalidate a row's key and scope conditions, never a tracked
    // column's condition (tracked columns are a Diesel model's `belongs_to`, recorded by the
    // outbox's triggers): with hooks and no relay a query bounded by one would stay stale.
    // So no tracked-column rule for SeaORM, even from a hand-written spec.
    let spec = spec.clone().without_tracked();
    matroska_core::derived::derive(&spec, dialect, &statement.sql, &binds)
}

/// A bound value as the derive's `ToValue` renders the field it is compared with, for the
/// types whose rendering is known (`NULL` of them included); arrays, floats, dates, JSON and
/// the rest are unknown (their predicates stay coarse).
fn bound_value(value: sea_orm::Value) -> Option<matroska_core::Value> {
    use matroska_core::Value as V;
    use sea_orm::Value as S;
    match value {
        S::Bool(None)
        | S::TinyInt(None)
        | S::SmallInt(None)
        | S::Int(None)
        | S::BigInt(None)
        | S::TinyUnsigned(None)
        | S::SmallUnsigned(None)
        | S::Unsigned(None)
        | S::BigUnsigned(None)
        | S::String(None)
        | S::Uuid(None) => Some(V::Null),
        other => key_values(other.into_value_tuple())?.pop(),
    }
}

/// A primary key's values as the derive's `ToValue` renders them, when every part has a
/// known rendering.
fn key_values(values: sea_orm::sea_query::ValueTuple) -> Option<Vec<matroska_core::Value>> {
    use matroska_core::{ToValue, Value as V};
    use sea_orm::Value as S;
    values
        .into_iter()
        .map(|v| match v {
            S::Bool(Some(b)) => Some(b.to_value()),
            S::TinyInt(Some(i)) => Some(i.to_value()),
            S::SmallInt(Some(i)) => Some(i.to_value()),
            S::Int(Some(i)) => Some(i.to_value()),
            S::BigInt(Some(i)) => Some(i.to_value()),
            S::TinyUnsigned(Some(i)) => Some(i.to_value()),
            S::SmallUnsigned(Some(i)) => Some(i.to_value()),
            S::Unsigned(Some(i)) => Some(i.to_value()),
            S::BigUnsigned(Some(i)) => Some(i.to_value()),
            S::String(Some(s)) => Some(s.to_value()),
            S::Uuid(Some(u)) => Some(u.to_value()),
            _ => None::<V>,
        })
        .collect()
}

impl<E> Cached<Select<E>>
where
    E: EntityTrait,
    E::Model: CacheDeps + Send + Sync,
    E::ActiveModel: TryIntoModel<E::Model>,
{
    /// Filters the query by a scope condition of its entity and makes the entry depend on
    /// it, instead of on any change of the entity. Several calls combine with `AND`.
    ///
    /// The query's other filters and its ordering must only use the scope's watched columns
    /// (see the [module docs](self)).
    pub fn scoped<C: ScopeFilter<Entity = E>>(self, condition: &C) -> Self {
        self.scope_by(condition)
    }

    /// Reads the entry's dependencies from the select's own `WHERE` instead of depending on
    /// every write to the entity (opt-in for now): a select that lists primary keys
    /// (`Column::Id.is_in(ids)`, `find_by_id`) depends on those keys, one filtered only by
    /// equalities on the fields of one `#[scope(..)]` (and ordered by them or the key) on
    /// those conditions, as [`Cached::scoped`] would; anything else stays coarse. See
    /// [`matroska_core::derived`] for the rules and [`Cached::explain`] for what a select got.
    /// Ignored with [`Cached::scoped`] (the declared conditions stay).
    ///
    /// ```text
    /// let list = post::Entity::find()
    ///     .filter(post::Column::Id.is_in(ids))
    ///     .order_by_desc(post::Column::CreatedAt)
    ///     .cached(&cache)
    ///     .derived()
    ///     .all(&db)
    ///     .await?;
    /// ```
    pub fn derived(mut self) -> Self
    where
        E::Model: WatchedTable,
    {
        self.derive = Some(<E::Model as WatchedTable>::watched_table());
        self
    }

    /// The dependencies this select's entries get on `backend` beside their rows' keys, and
    /// why: [`Basis::Declared`] with [`Cached::scoped`], the derived ones (or coarse with the
    /// reason) with [`Cached::derived`], else coarse.
    pub fn explain(&self, backend: sea_orm::DbBackend) -> Derivation {
        if let Some(derived) = self.derivation(backend) {
            return derived;
        }
        if self.conditions.is_empty() {
            let entity = <E::Model as CacheDeps>::entity_name();
            Derivation::coarse(entity, "neither `.scoped` nor `.derived`")
        } else {
            Derivation {
                dependencies: self.conditions.clone(),
                basis: Basis::Declared,
            }
        }
    }

    /// All rows, as `Select::all`.
    ///
    /// # Errors
    /// [`Error::Db`](crate::Error::Db) from the query; [`Error::Cache`](crate::Error::Cache) for a key or value over the cache's
    /// limits. A failing cache backend is not an error: the query runs uncached.
    pub async fn all<C: CacheableConnection>(self, db: &C) -> Result<Vec<E::Model>> {
        let base = self.base_dependencies::<E::Model>();
        let rows = self
            .fetch::<E, _, _, _>(db, "all", base, |q, db| async move {
                Ok(stored::<E>(q.all(db).await?))
            })
            .await?;
        Ok(restored(rows))
    }

    /// The first row, as `Select::one`.
    ///
    /// # Errors
    /// As [`Cached::all`].
    pub async fn one<C: CacheableConnection>(self, db: &C) -> Result<Option<E::Model>> {
        let base = self.base_dependencies::<E::Model>();
        let row = self
            .fetch::<E, _, _, _>(db, "one", base, |q, db| async move {
                let row = q.one(db).await?;
                let deps = row.iter().map(CacheDeps::primary_key).collect();
                Ok((row.map(Row::<E>), deps))
            })
            .await?;
        Ok(row.map(Row::into_model))
    }

    /// The number of rows, as `PaginatorTrait::count`. Depends on the scope condition (or any
    /// change), not on rows.
    ///
    /// # Errors
    /// As [`Cached::all`].
    pub async fn count<C: CacheableConnection>(self, db: &C) -> Result<u64> {
        let base = self.base_dependencies::<E::Model>();
        self.fetch::<E, _, _, _>(db, "count", base, |q, db| async move {
            Ok((q.count(db).await?, Vec::new()))
        })
        .await
    }

    /// Page `page` (from 0) of `page_size` rows, as `paginate(db, page_size).fetch_page(page)`.
    ///
    /// # Errors
    /// As [`Cached::all`].
    pub async fn page<C: CacheableConnection>(
        self,
        db: &C,
        page_size: u64,
        page: u64,
    ) -> Result<Vec<E::Model>> {
        let base = self.base_dependencies::<E::Model>();
        let kind = format!("page{page_size}.{page}");
        let rows = self
            .fetch::<E, _, _, _>(db, &kind, base, |q, db| async move {
                Ok(stored::<E>(
                    q.paginate(db, page_size).fetch_page(page).await?,
                ))
            })
            .await?;
        Ok(restored(rows))
    }

    /// The number of pages of `page_size` rows, as `paginate(db, page_size).num_pages()`.
    ///
    /// # Errors
    /// As [`Cached::all`].
    pub async fn num_pages<C: CacheableConnection>(self, db: &C, page_size: u64) -> Result<u64> {
        let items = self.count(db).await?;
        Ok(items.div_ceil(page_size.max(1)))
    }
}

impl<E, F> Cached<SelectTwo<E, F>>
where
    E: EntityTrait,
    F: EntityTrait,
    E::Model: CacheDeps + Send + Sync,
    F::Model: CacheDeps + Send + Sync,
    E::ActiveModel: TryIntoModel<E::Model>,
    F::ActiveModel: TryIntoModel<F::Model>,
{
    /// Filters the query by a scope condition of its entity and makes the entry depend on
    /// it, instead of on any change of the entity. Several calls combine with `AND`.
    ///
    /// The query's other filters and its ordering must only use the scope's watched columns
    /// (see the [module docs](self)).
    pub fn scoped<C: ScopeFilter<Entity = E>>(self, condition: &C) -> Self {
        self.scope_by(condition)
    }

    /// All rows with their related row, as `SelectTwo::all` (`find_also_related`).
    ///
    /// # Errors
    /// As [`Cached::all`].
    pub async fn all<C: CacheableConnection>(
        self,
        db: &C,
    ) -> Result<Vec<(E::Model, Option<F::Model>)>> {
        let kind = format!("also.{}", F::default().table_name());
        let extra = self.related_dependencies::<E::Model, F::Model>();
        let rows: Vec<(Row<E>, Option<Row<F>>)> = self
            .fetch::<E, _, _, _>(db, &kind, extra, |q, db| async move {
                let mut deps = Vec::new();
                let rows = q.all(db).await?;
                let rows = rows
                    .into_iter()
                    .map(|(row, related)| {
                        let row = keep(row, &mut deps);
                        (row, related.map(|r| keep(r, &mut deps)))
                    })
                    .collect();
                Ok((rows, deps))
            })
            .await?;
        Ok(rows
            .into_iter()
            .map(|(row, related)| (row.into_model(), related.map(Row::into_model)))
            .collect())
    }

    /// The first row with its related row, as `SelectTwo::one`.
    ///
    /// # Errors
    /// As [`Cached::all`].
    pub async fn one<C: CacheableConnection>(
        self,
        db: &C,
    ) -> Result<Option<(E::Model, Option<F::Model>)>> {
        let kind = format!("also1.{}", F::default().table_name());
        let extra = self.related_dependencies::<E::Model, F::Model>();
        let row: Option<(Row<E>, Option<Row<F>>)> = self
            .fetch::<E, _, _, _>(db, &kind, extra, |q, db| async move {
                let mut deps = Vec::new();
                let row = q.one(db).await?.map(|(row, related)| {
                    let row = keep(row, &mut deps);
                    (row, related.map(|r| keep(r, &mut deps)))
                });
                Ok((row, deps))
            })
            .await?;
        Ok(row.map(|(row, related)| (row.into_model(), related.map(Row::into_model))))
    }
}

impl<E, F> Cached<SelectTwoMany<E, F>>
where
    E: EntityTrait,
    F: EntityTrait,
    E::Model: CacheDeps + Send + Sync,
    F::Model: CacheDeps + Send + Sync,
    E::ActiveModel: TryIntoModel<E::Model>,
    F::ActiveModel: TryIntoModel<F::Model>,
{
    /// Filters the query by a scope condition of its entity and makes the entry depend on
    /// it, instead of on any change of the entity. Several calls combine with `AND`.
    ///
    /// The query's other filters and its ordering must only use the scope's watched columns
    /// (see the [module docs](self)).
    pub fn scoped<C: ScopeFilter<Entity = E>>(self, condition: &C) -> Self {
        self.scope_by(condition)
    }

    /// All rows with their related rows, as `SelectTwoMany::all` (`find_with_related`).
    ///
    /// # Errors
    /// As [`Cached::all`].
    pub async fn all<C: CacheableConnection>(
        self,
        db: &C,
    ) -> Result<Vec<(E::Model, Vec<F::Model>)>> {
        let kind = format!("with.{}", F::default().table_name());
        let extra = self.related_dependencies::<E::Model, F::Model>();
        let rows: Vec<(Row<E>, Vec<Row<F>>)> = self
            .fetch::<E, _, _, _>(db, &kind, extra, |q, db| async move {
                let mut deps = Vec::new();
                let rows = q.all(db).await?;
                let rows = rows
                    .into_iter()
                    .map(|(row, related)| {
                        let row = keep(row, &mut deps);
                        let related = related.into_iter().map(|r| keep(r, &mut deps)).collect();
                        (row, related)
                    })
                    .collect();
                Ok((rows, deps))
            })
            .await?;
        Ok(rows
            .into_iter()
            .map(|(row, related)| (row.into_model(), restored(related)))
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sea_orm::DbBackend;

    fn stmt(sql: &str, values: Vec<sea_orm::Value>) -> Statement {
        Statement::from_sql_and_values(DbBackend::Sqlite, sql, values)
    }

    #[test]
    fn hash_is_stable_and_value_sensitive() {
        let a = stmt("SELECT 1 WHERE x = ?", vec![1_i32.into()]);
        let b = stmt("SELECT 1 WHERE x = ?", vec![2_i32.into()]);
        let c = stmt("SELECT 1 WHERE x = ?", vec!["1".into()]);
        assert_eq!(statement_hash("", &a), statement_hash("", &a.clone()));
        assert_ne!(statement_hash("", &a), statement_hash("", &b));
        assert_ne!(statement_hash("", &a), statement_hash("", &c));
        assert_ne!(
            statement_hash("Postgres/db/a/u", &a),
            statement_hash("Postgres/db/b/u", &a)
        );
        // Fixed across processes and builds (no random seed): pinned, since a change here
        // orphans every deployed key. (Changed once, when the namespace joined the hash.)
        assert_eq!(
            format!("{:032x}", statement_hash("", &stmt("SELECT 1", vec![]))),
            "d235a35d025625a14e210c1d28453fae"
        );
    }

    #[test]
    fn hash_separates_sql_from_values() {
        let a = stmt("SELECT ?", vec!["a".into(), "b".into()]);
        let b = stmt("SELECT ?", vec!["ab".into()]);
        assert_ne!(statement_hash("", &a), statement_hash("", &b));
        let select = stmt("SELECT 1", vec![]);
        assert_ne!(
            statement_hash("Sqlite", &select),
            statement_hash("", &select)
        );
    }

    mod post {
        use sea_orm::entity::prelude::*;

        #[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
        #[sea_orm(table_name = "posts")]
        pub struct Model {
            #[sea_orm(primary_key)]
            pub id: i32,
            pub title: String,
            pub category: String,
            pub published: bool,
            pub series: Option<String>,
        }

        #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
        pub enum Relation {}

        impl ActiveModelBehavior for ActiveModel {}
    }

    fn spec() -> TableSpec {
        use matroska_core::ColumnDecoder;
        TableSpec::new("posts", "posts")
            .key("id", ColumnDecoder::of::<i32>())
            .scope(
                &[
                    ("published", ColumnDecoder::of::<bool>()),
                    ("category", ColumnDecoder::of::<String>()),
                ],
                false,
            )
            .scope(&[("series", ColumnDecoder::of::<Option<String>>())], false)
    }

    /// A tracked column (which SeaORM's hooks never invalidate) does not narrow a SeaORM
    /// select, even in a hand-written spec: coarse.
    #[test]
    fn tracked_columns_do_not_narrow_seaorm_selects() {
        use matroska_core::ColumnDecoder;
        use sea_orm::ColumnTrait;
        let spec = TableSpec::new("posts", "posts")
            .key("id", ColumnDecoder::of::<i32>())
            .tracked("published", ColumnDecoder::of::<bool>());
        for backend in [DbBackend::Postgres, DbBackend::MySql, DbBackend::Sqlite] {
            let select = post::Entity::find().filter(post::Column::Published.eq(true));
            let d = derivation(&spec, &select.build(backend));
            assert!(d.is_coarse(), "{backend:?}: {d}");
        }
    }

    /// The selects as SeaORM builds them for each backend.
    #[test]
    fn derived_from_the_sql_seaorm_builds() {
        use matroska_core::Value;
        use sea_orm::{ColumnTrait, QueryOrder, QuerySelect};
        let pk = |i: i32| Dependency::primary_key("posts", [i]);
        let all = Dependency::invalidate_all("posts");
        for backend in [DbBackend::Postgres, DbBackend::MySql, DbBackend::Sqlite] {
            let ids = post::Entity::find()
                .filter(post::Column::Id.is_in([1, 2]))
                .filter(post::Column::Title.eq("x"))
                .order_by_desc(post::Column::Title)
                .limit(3)
                .offset(1);
            let d = derivation(&spec(), &ids.build(backend));
            assert_eq!(
                d.dependencies,
                vec![pk(1), pk(2), all.clone()],
                "{backend:?}: {d}"
            );
            let one = post::Entity::find_by_id(7);
            let d = derivation(&spec(), &one.build(backend));
            assert_eq!(d.dependencies, vec![pk(7), all.clone()], "{backend:?}: {d}");
            let scope = post::Entity::find()
                .filter(post::Column::Published.eq(true))
                .filter(post::Column::Category.is_in(["a", "b"]))
                .order_by_asc(post::Column::Id);
            let d = derivation(&spec(), &scope.build(backend));
            let cond = |c: &str| {
                Dependency::condition(
                    "posts",
                    [
                        ("published", Value::Bool(true)),
                        ("category", Value::from(c)),
                    ],
                )
            };
            assert_eq!(
                d.dependencies,
                vec![cond("a"), cond("b"), all.clone()],
                "{backend:?}: {d}"
            );
            let series = post::Entity::find().filter(post::Column::Series.is_null());
            assert!(!derivation(&spec(), &series.build(backend)).is_coarse());
            let empty = post::Entity::find().filter(post::Column::Id.is_in(Vec::<i32>::new()));
            let d = derivation(&spec(), &empty.build(backend));
            assert_eq!(
                d.dependencies,
                vec![all.clone()],
                "{backend:?} {}: {d}",
                empty.build(backend).sql
            );
            let either = post::Entity::find().filter(
                sea_orm::Condition::any()
                    .add(post::Column::Id.eq(3))
                    .add(post::Column::Series.eq("s")),
            );
            let d = derivation(&spec(), &either.build(backend));
            assert_eq!(d.dependencies.len(), 3, "{backend:?}: {d}");
            for coarse in [
                post::Entity::find(),
                post::Entity::find().filter(post::Column::Title.eq("t")),
                post::Entity::find().filter(post::Column::Id.gt(1)),
                post::Entity::find().filter(post::Column::Title.like("a%")),
                post::Entity::find().filter(post::Column::Series.is_not_null()),
                post::Entity::find()
                    .filter(post::Column::Category.eq("a"))
                    .order_by_asc(post::Column::Title),
                post::Entity::find()
                    .filter(post::Column::Category.eq("a"))
                    .filter(post::Column::Title.eq("t")),
                post::Entity::find().filter(post::Column::Category.eq(5)),
                post::Entity::find().filter(
                    post::Column::Id.in_subquery(
                        sea_orm::sea_query::Query::select()
                            .column(post::Column::Id)
                            .from(post::Entity)
                            .to_owned(),
                    ),
                ),
            ] {
                let statement = coarse.build(backend);
                let d = derivation(&spec(), &statement);
                assert!(d.is_coarse(), "{backend:?} {}: {d}", statement.sql);
            }
        }
    }
}
