//! Cached Diesel queries: `posts::table.filter(..).cached(&cache).load::<Post, _>(conn)`.
//!
//! [`CachedExt::cached`] wraps any Diesel query in a [`Cached`] one that runs through
//! [`Cache::get_or_load`], so stale-set protection and single-flight apply.
//!
//! - **Row types** ([`CachedRow`]): a model (`Post`), and for joins a tuple of models and
//!   `Option`s of them (`(Post, User)` from `inner_join`, `(Post, Option<User>)` from
//!   `left_join`), up to six; stored with serde. Anything else a query selects — one column,
//!   a tuple of columns, an aggregate — through [`Cached::values`] / [`Cached::value`], which
//!   name the entity it comes from and depend on every write to it.
//! - **Key**: `q:{entity}:{kind}:{hash}` (the entity of the row type's first model), the hash a
//!   fixed 128-bit xxh3 of the backend, the connection's [namespace]
//!   (database, schema search path and user; asked again after any other statement), the optional
//!   [user namespace](Cached::namespace), and Diesel's [`debug_query`](diesel::debug_query)
//!   text of the statement (SQL and bound values). Equal queries on one database share an
//!   entry across processes of one build; two databases or schemas behind one cache do not.
//! - **Dependencies**: the primary key of every model in every row returned, plus, for each
//!   entity of the row type,
//!   - the scope condition given with [`Cached::scoped`] (which also filters the query), for
//!     the entity it is a condition of;
//!   - with [`Cached::derived`] (opt-in), for a query of one entity alone, the dependencies
//!     read from the query's own `WHERE` ([`matroska_core::derived`]): the listed primary keys
//!     of `id = ANY(..)` / `IN (..)`, or a declared scope's conditions, or the values of a
//!     `belongs_to` foreign key (`belonging_to`, `post_id = $1`), else coarse;
//!   - otherwise the entity's `any_change` and `all` dependencies: any committed write to its
//!     table invalidates the entry (coarse, never stale).
//!
//!   So a join list drops when a row of either side changes, and when a *new* row appears
//!   that would join: an insert into the joined table is a write to it, whatever it joins to.
//!   (Depending only on the joined rows' keys would miss that row: it was not in the result.)
//!   `belonging_to` queries are filters like any other and depend the same way.
//! - **Invalidation**: Diesel has no hooks; the database outbox's triggers record every
//!   committed write and its relay invalidates these dependencies (see [`crate::outbox`]).
//!
//! A scoped query must not filter or order by columns outside the scope's fields (except ones
//! that never change, like the primary key): an update of an unwatched column invalidates
//! only the row's key and `any_change`, so a row could enter such a query unseen. An inner
//! join filters too, by its join column: a scoped inner join must join on a column that is
//! watched (a field of one of the model's `#[scope]`s) or that cannot stop a row from joining
//! (a `NOT NULL` foreign key); a scoped left join keeps every row of the scope, so it is
//! always safe. Without `.scoped`, any filter, order and join is safe: every table the
//! statement reads beyond the row type's (a subquery's, an `EXISTS`'s: each name after `FROM`
//! or `JOIN` in its SQL) is a dependency too, on every write to it.
//!
//! ## A value per row of a page
//!
//! A count (or any lookup) for each row of a list is one query per row if each goes through
//! its own cached query: one round trip to the cache per row even when all hit. Cache them
//! with [`Cache::get_or_load_many`](matroska_core::Cache::get_or_load_many) instead: the hits
//! come in one backend call, and the misses from one grouped query, each stored under its own
//! key with its own dependencies (the same stale-set guard as a cached query). With
//! `#[scope(article_id)]` on `Favorite`, the relay's invalidation of a favourite reaches
//! exactly its article's count:
//!
//! ```text
//! let page = articles::table.order(articles::id.desc()).limit(20)
//!     .cached(&cache).load::<Article, _>(&mut conn).await?;
//! let ids: Vec<i32> = page.iter().map(|a| a.id).collect();
//! let counts: Vec<i64> = cache
//!     .get_or_load_many(&ids, |id| format!("favorites:{id}"), None, |missing| async move {
//!         let rows: HashMap<i32, i64> = favorites::table
//!             .filter(favorites::article_id.eq_any(&missing))
//!             .group_by(favorites::article_id)
//!             .select((favorites::article_id, diesel::dsl::count_star()))
//!             .load::<(i32, i64)>(&mut conn)?
//!             .into_iter()
//!             .collect();
//!         Ok::<_, diesel::result::Error>(missing.iter().map(|id| {
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
//!
//! ## Sync Diesel under async
//!
//! The cache is async and Diesel's connections are sync. (A sync app uses the `_blocking`
//! forms instead, see [`crate::blocking`].) The Diesel call runs on the calling
//! task, inside [`tokio::task::block_in_place`] on a multi-thread runtime (the worker hands its
//! other tasks to another thread while the query runs), and directly elsewhere (a
//! current-thread runtime, or a blocking thread). It takes the connection as `&mut`, so it
//! works with a plain connection, an r2d2 `PooledConnection`, or a deadpool-diesel connection
//! either way deadpool offers (both tested on MariaDB):
//!
//! ```text
//! // On the task: the pooled connection's lock guard is the `&mut` connection.
//! let pooled = pool.get().await?;
//! let list = posts::table.cached(&cache).load::<Post, _>(&mut *pooled.lock()?).await?;
//!
//! // On a blocking thread (`interact` is deadpool's `spawn_blocking`): the blocking form.
//! let list = pooled
//!     .interact(move |conn| posts::table.cached(&cache).load_blocking::<Post, _>(conn))
//!     .await??;
//! ```
//!
//! ## Transactions
//!
//! Inside a Diesel transaction (`conn.transaction(..)`, or one begun through the connection's
//! transaction manager) a cached query reads through: no hit (the transaction may have written
//! the rows) and no fill (the rows may never commit). A transaction begun with raw SQL
//! (`sql_query("BEGIN")`) is invisible to Diesel and therefore to this check.

use std::time::Duration;

use diesel::backend::Backend;
use diesel::connection::{LoadConnection, TransactionManager};
use diesel::dsl;
use diesel::query_builder::{AsQuery, QueryFragment};
use diesel::query_dsl::methods::{FilterDsl, FindDsl, LimitDsl, SelectDsl};
use diesel::query_dsl::{LoadQuery, RunQueryDsl};
use diesel::{OptionalExtension, QueryResult};
use matroska_core::blocking::run_blocking;
use matroska_core::derived::{Basis, Derivation};
use matroska_core::{
    Cache, CacheDeps, Dependency, DependencySet, Loaded, QueryRow, TableSpec, ToKeyValues,
    WatchedTable,
};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::{Result, from_load};
use crate::filter::ScopeFilter;
use crate::key::{query_key, tables_read};
use crate::namespace::{self, NamespaceBackend};

/// A row type cached queries return: a model (`Post`), or for joins a tuple of models and
/// `Option`s of them (`(Post, User)`, `(Post, Option<User>)`), up to six. [`QueryRow`] gives
/// its dependencies, serde stores it. Implemented for every such type.
pub trait CachedRow: QueryRow + Serialize + DeserializeOwned {}

impl<T: QueryRow + Serialize + DeserializeOwned> CachedRow for T {}

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
            scopes: Vec::new(),
            derive: None,
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
    /// The entities the conditions are of: they depend on their condition, not on every write.
    scopes: Vec<&'static str>,
    /// With [`Cached::derived`]: the table whose dependencies are read from the `WHERE`.
    derive: Option<TableSpec>,
}

impl<Q> Cached<Q> {
    /// Time to live of the entry (default: the cache's).
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = Some(ttl);
        self
    }

    /// Adds a name of your own to the key, beside the connection's database, schema and user
    /// (which every key carries, see [`crate::namespace`]): for tenants told apart by
    /// something the database cannot see, like row-level security keyed by a session setting.
    pub fn namespace(mut self, namespace: impl Into<String>) -> Self {
        self.namespace = Some(namespace.into());
        self
    }

    /// Filters the query by a typed scope condition and makes the entry depend on it instead
    /// of on every write to the condition's entity: a row created, deleted, or moved into or
    /// out of the condition drops the entry; a write to another list's rows does not. The
    /// other entities of a join still depend on every write to them.
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
        let mut scopes = self.scopes;
        scopes.push(condition.scope_name());
        Cached {
            query: self.query.filter(condition.filter()),
            cache: self.cache,
            ttl: self.ttl,
            namespace: self.namespace,
            conditions,
            scopes,
            derive: self.derive,
        }
    }

    /// Reads the entry's dependencies on `M`'s entity from the query's own `WHERE` instead of
    /// depending on every write to it (opt-in for now): a query that lists primary keys
    /// (`posts::id.eq_any(ids)`, `.find(id)`) depends on those keys, one filtered only by
    /// equalities on the fields of one `#[scope(..)]` (and ordered by them or the key) on
    /// those conditions, as [`Cached::scoped`] would; one with an equality (or `eq_any`) on a
    /// `#[diesel(belongs_to(..))]` foreign key — a *tracked* column: `comments::post_id.eq(id)`,
    /// `Comment::belonging_to(&posts)` — on that column's values, whatever else it filters,
    /// orders or limits by (the outbox relay, which must watch `M`, invalidates those values
    /// for every write to a row holding them, before or after); anything else stays coarse. See
    /// [`matroska_core::derived`] for the rules, and [`Cached::explain`] for what a query got.
    ///
    /// Applies to `load`, `get_results`, `get_result`, `first` and `count` of a query on `M`'s
    /// table alone (no join), and is ignored with [`Cached::scoped`] (the declared conditions
    /// stay) and by `values` / `value` (a write to any column may change those).
    ///
    /// ```text
    /// let list = posts::table
    ///     .filter(posts::id.eq_any(&ids))
    ///     .order(posts::created_at.desc())
    ///     .cached(&cache)
    ///     .derived::<Post>()
    ///     .load::<Post, _>(conn)
    ///     .await?;
    /// ```
    pub fn derived<M: WatchedTable>(mut self) -> Self {
        self.derive = Some(M::watched_table());
        self
    }

    /// The dependencies this query's entry gets on backend `DB` beside its rows' keys, and
    /// why: [`Basis::Declared`] with [`Cached::scoped`], the derived ones (or coarse with the
    /// reason) with [`Cached::derived`], else coarse.
    ///
    /// ```
    /// use diesel::prelude::*;
    /// use matroska_core::{Cache, ColumnDecoder, TableSpec, WatchedTable};
    /// use matroska_diesel::CachedExt;
    ///
    /// diesel::table! { posts (id) { id -> Integer, title -> Text } }
    /// struct Post;
    /// impl WatchedTable for Post {
    ///     fn watched_table() -> TableSpec {
    ///         TableSpec::new("posts", "posts").key("id", ColumnDecoder::of::<i32>())
    ///     }
    /// }
    ///
    /// let cache = Cache::memory();
    /// let by_ids = posts::table.filter(posts::id.eq_any(vec![1, 2])).cached(&cache).derived::<Post>();
    /// assert_eq!(by_ids.explain::<diesel::sqlite::Sqlite>().to_string(), "derived: 2 primary key(s)");
    /// let by_title = posts::table.filter(posts::title.eq("a")).cached(&cache).derived::<Post>();
    /// assert!(by_title.explain::<diesel::sqlite::Sqlite>().is_coarse());
    /// ```
    pub fn explain<DB>(&self) -> Derivation
    where
        DB: NamespaceBackend + Default,
        DB::QueryBuilder: Default,
        Q: QueryFragment<DB>,
    {
        match (&self.derive, self.scopes.first()) {
            (_, Some(_)) => Derivation {
                dependencies: self.conditions.clone(),
                basis: Basis::Declared,
            },
            (Some(spec), None) => crate::derived::derivation::<DB, _>(spec, &self.query),
            // The row type (its entities) is known only when the query runs.
            (None, None) => Derivation {
                dependencies: Vec::new(),
                basis: Basis::Coarse(
                    "neither `.scoped` nor `.derived`: every write to each entity of the row type"
                        .to_owned(),
                ),
            },
        }
    }

    /// [`Cached::plan`] with every entity of `M` depending on every write to it, scoped or
    /// not: for results that are not rows (values, aggregates).
    pub(crate) fn coarse_plan<M: QueryRow>(mut self, kind: &'static str) -> Plan<Q> {
        self.scopes.clear();
        self.derive = None;
        self.plan::<M>(kind)
    }

    /// The entry this query fills for row type `U`: its key's parts and the dependencies that
    /// do not come from rows (the conditions, and every write to each other entity of `U`).
    pub(crate) fn plan<U: QueryRow>(self, kind: &'static str) -> Plan<Q> {
        let mut entities = Vec::new();
        U::entities(&mut entities);
        // Derived: a query of the spec's entity alone, not scoped.
        let derive = self.derive.filter(|spec| {
            self.scopes.is_empty() && entities.len() == 1 && entities[0] == spec.entity()
        });
        let mut base = self.conditions;
        let mut seen: Vec<&'static str> = Vec::new();
        for entity in &entities {
            if !self.scopes.contains(entity) && !seen.contains(entity) {
                seen.push(entity);
                base.extend(entity_dependencies_of(entity));
            }
        }
        Plan {
            derive,
            query: self.query,
            cache: self.cache,
            ttl: self.ttl,
            namespace: self.namespace,
            entity: entities.first().copied().unwrap_or("_"),
            entities,
            kind,
            base,
        }
    }

    /// All rows, like [`RunQueryDsl::load`], cached with their primary keys. `U` is a model,
    /// or a tuple for a join: `.load::<(Post, User), _>(conn)`.
    ///
    /// # Errors
    /// [`Error::Diesel`](crate::Error::Diesel) from the query (or from asking the connection's
    /// namespace); [`Error::Cache`](crate::Error::Cache) for a key or value over the cache's
    /// limits or an encoding error.
    pub async fn load<'query, U, C>(self, conn: &mut C) -> Result<Vec<U>>
    where
        C: LoadConnection,
        C::Backend: NamespaceBackend + Default,
        <C::Backend as Backend>::QueryBuilder: Default,
        Q: RunQueryDsl<C> + LoadQuery<'query, C, U> + QueryFragment<C::Backend>,
        U: CachedRow,
    {
        let plan = self.plan::<U>("all");
        run(plan, conn, |query, conn| query.load::<U>(conn), rows_keys).await
    }

    /// The same as [`Cached::load`] (Diesel's `get_results`).
    ///
    /// # Errors
    /// As [`Cached::load`].
    pub async fn get_results<'query, U, C>(self, conn: &mut C) -> Result<Vec<U>>
    where
        C: LoadConnection,
        C::Backend: NamespaceBackend + Default,
        <C::Backend as Backend>::QueryBuilder: Default,
        Q: RunQueryDsl<C> + LoadQuery<'query, C, U> + QueryFragment<C::Backend>,
        U: CachedRow,
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
        C: LoadConnection,
        C::Backend: NamespaceBackend + Default,
        <C::Backend as Backend>::QueryBuilder: Default,
        Q: RunQueryDsl<C> + LoadQuery<'query, C, U> + QueryFragment<C::Backend>,
        U: CachedRow,
    {
        let plan = self.plan::<U>("one");
        run(
            plan,
            conn,
            |query, conn| query.get_result::<U>(conn).optional(),
            row_keys,
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
        C: LoadConnection,
        C::Backend: NamespaceBackend + Default,
        <C::Backend as Backend>::QueryBuilder: Default,
        Q: LimitDsl,
        dsl::Limit<Q>: RunQueryDsl<C> + LoadQuery<'query, C, U> + QueryFragment<C::Backend>,
        U: CachedRow,
    {
        let plan = self.plan::<U>("first").map(|query| query.limit(1));
        run(
            plan,
            conn,
            |query, conn| query.get_result::<U>(conn).optional(),
            row_keys,
        )
        .await
    }

    /// What the query selects when it is not a model — a column (`.select(posts::id)`), a
    /// tuple of columns, an expression — as values of any serde type `U`, cached with every
    /// write to the entities of `M`: `.cached(&cache).values::<Post, i32, _>(conn)`, or
    /// `::<(Post, User), _, _>` for a join. A scope condition is not enough here (a write to
    /// a column outside the scope changes these values and no condition), so the entry depends
    /// on every write to each entity even when scoped.
    ///
    /// # Errors
    /// As [`Cached::load`].
    pub async fn values<'query, M, U, C>(self, conn: &mut C) -> Result<Vec<U>>
    where
        C: LoadConnection,
        C::Backend: NamespaceBackend + Default,
        <C::Backend as Backend>::QueryBuilder: Default,
        Q: RunQueryDsl<C> + LoadQuery<'query, C, U> + QueryFragment<C::Backend>,
        M: QueryRow,
        U: Serialize + DeserializeOwned,
    {
        let plan = self.coarse_plan::<M>("values");
        run(plan, conn, |query, conn| query.load::<U>(conn), no_keys).await
    }

    /// The first value the query selects (an aggregate, `.select(max(posts::id))`, or one
    /// column of one row), `None` for no row; cached as [`Cached::values`].
    ///
    /// # Errors
    /// As [`Cached::load`].
    pub async fn value<'query, M, U, C>(self, conn: &mut C) -> Result<Option<U>>
    where
        C: LoadConnection,
        C::Backend: NamespaceBackend + Default,
        <C::Backend as Backend>::QueryBuilder: Default,
        Q: RunQueryDsl<C> + LoadQuery<'query, C, U> + QueryFragment<C::Backend>,
        M: QueryRow,
        U: Serialize + DeserializeOwned,
    {
        let plan = self.coarse_plan::<M>("value");
        run(
            plan,
            conn,
            |query, conn| query.get_result::<U>(conn).optional(),
            no_keys,
        )
        .await
    }

    /// `SELECT COUNT(*)` of the query, cached with the scope condition, or with every write
    /// to the entities of `M` when unscoped: `.cached(&cache).count::<Post, _>(conn)`, or
    /// `::<(Post, User), _>` for a join.
    ///
    /// # Errors
    /// As [`Cached::load`].
    pub async fn count<'query, M, C>(self, conn: &mut C) -> Result<i64>
    where
        C: LoadConnection,
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
        run(plan, conn, |query, conn| query.get_result(conn), no_keys).await
    }
}

/// A cached query ready to run: what the sync and async methods share.
pub(crate) struct Plan<Q> {
    pub(crate) query: Q,
    pub(crate) cache: Cache,
    pub(crate) ttl: Option<Duration>,
    namespace: Option<String>,
    /// The entity the key is filed under.
    entity: &'static str,
    /// The entities the result is read as (the row type's): part of the key, since they
    /// decide the dependencies.
    pub(crate) entities: Vec<&'static str>,
    kind: &'static str,
    /// The dependencies that do not come from rows.
    pub(crate) base: Vec<Dependency>,
    /// The table whose dependencies [`derived_base`] puts in `base` (in place of its coarse
    /// ones) from the query's SQL.
    pub(crate) derive: Option<TableSpec>,
}

impl<Q> Plan<Q> {
    /// The same entry for a query made from this one (`LIMIT 1`, `COUNT(*)`).
    pub(crate) fn map<R>(self, f: impl FnOnce(Q) -> R) -> Plan<R> {
        Plan {
            query: f(self.query),
            cache: self.cache,
            ttl: self.ttl,
            namespace: self.namespace,
            entity: self.entity,
            entities: self.entities,
            kind: self.kind,
            base: self.base,
            derive: self.derive,
        }
    }

    /// The entry's key on a connection of backend `DB` whose namespace is `namespace`, and
    /// the statement it hashes (for [`read_elsewhere`], on a fill).
    pub(crate) fn entry<DB>(&self, namespace: &str) -> (String, String)
    where
        DB: Backend + Default,
        DB::QueryBuilder: Default,
        Q: QueryFragment<DB>,
    {
        query_key::<DB, _>(
            &self.query,
            self.entity,
            self.kind,
            namespace,
            self.namespace.as_deref(),
            &self.entities.join(","),
        )
    }
}

/// The dependencies of the tables `statement` reads beyond the row type's `entities` (a
/// subquery's, an `EXISTS`'s): any write to them invalidates, whatever the row type says.
/// Both drivers call it in the loader, so a hit pays no scan.
pub(crate) fn read_elsewhere(statement: &str, entities: &[&'static str]) -> Vec<Dependency> {
    tables_read(statement)
        .into_iter()
        .filter(|table| !entities.contains(&table.as_str()))
        .flat_map(|table| entity_dependencies_of(&table))
        .collect()
}

/// `base` with the dependencies derived from `query` as backend `DB` renders it in place of
/// the entity's coarse ones, when [`Cached::derived`] applies (`derive`). Both drivers call it
/// in the loader, so a hit pays no parse; until it runs, `base` holds the coarse dependencies,
/// so a driver that skipped it would be coarse, never too narrow.
pub(crate) fn derived_base<DB, Q>(
    mut base: Vec<Dependency>,
    derive: Option<TableSpec>,
    query: &Q,
) -> Vec<Dependency>
where
    DB: NamespaceBackend + Default,
    DB::QueryBuilder: Default,
    Q: QueryFragment<DB>,
{
    if let Some(spec) = derive {
        let derivation = crate::derived::derivation::<DB, _>(&spec, query);
        tracing::debug!(entity = spec.entity(), %derivation, "derived dependencies");
        let coarse = entity_dependencies_of(spec.entity());
        base.retain(|dep| !coarse.contains(dep));
        base.extend(derivation.dependencies);
    }
    base
}

/// The row keys of a list's rows.
pub(crate) fn rows_keys<U: QueryRow>(rows: &Vec<U>, set: &mut DependencySet) {
    for row in rows {
        row.row_keys(set);
    }
}

/// The row keys of one row, if any.
pub(crate) fn row_keys<U: QueryRow>(row: &Option<U>, set: &mut DependencySet) {
    row.row_keys(set);
}

/// No row keys (a count, or `find`, whose key is in its base dependencies).
pub(crate) fn no_keys<T>(_: &T, _: &mut DependencySet) {}

/// The dependencies of a result: its rows' keys, then the plan's base ones, without
/// duplicates (a user joined to many posts is there once).
pub(crate) fn dependencies<T>(
    value: &T,
    keys: impl FnOnce(&T, &mut DependencySet),
    base: Vec<Dependency>,
) -> Vec<Dependency> {
    let mut set = DependencySet::new();
    keys(value, &mut set);
    set.extend(base);
    set.into_vec()
}

/// The row of `M` with primary key `id` in `table`, answered from `cache` when it can be:
/// `find::<Post, _, _, _>(&cache, conn, posts::table, 7)`, or for a composite key the tuple
/// Diesel's `find` takes, `find::<PostTag, _, _, _>(&cache, conn, post_tags::table, (7, 3))`.
///
/// Unlike `table.find(id).cached(&cache).first(conn)`, which cannot tell that its filter is a
/// primary key and so depends on any write to the entity, this lookup depends on that one key
/// (and the entity's `all`, for bulk writes): a write to another row keeps it cached. A
/// missing row is cached too, and the insert of a row with that key drops it.
///
/// # Errors
/// As [`Cached::load`].
pub async fn find<'query, M, T, K, C>(
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
    let plan = find_plan::<M, _, _>(cache, table, id);
    run(
        plan,
        conn,
        |query, conn| query.get_result::<M>(conn).optional(),
        no_keys,
    )
    .await
}

/// [`find`]'s entry: keyed by the statement, dependent on the requested key (so a missing
/// row's entry is dropped by its insert) and the entity's `all`.
pub(crate) fn find_plan<M: CacheDeps, T, K>(
    cache: &Cache,
    table: T,
    id: K,
) -> Plan<dsl::Limit<dsl::Find<T, K>>>
where
    T: FindDsl<K>,
    dsl::Find<T, K>: LimitDsl,
    K: ToKeyValues,
{
    let name = M::entity_name();
    let base = vec![
        Dependency::primary_key(name, id.to_key_values()),
        Dependency::invalidate_all(name),
    ];
    Plan {
        query: table.find(id).limit(1),
        cache: cache.clone(),
        ttl: None,
        namespace: None,
        entity: name,
        entities: vec![name],
        kind: "id",
        base,
        derive: None,
    }
}

/// The dependencies any write to `M`'s entity invalidates (its scope's `any_change` and
/// `all`).
pub fn entity_dependencies<M: CacheDeps>() -> Vec<Dependency> {
    entity_dependencies_of(M::entity_name())
}

fn entity_dependencies_of(name: &str) -> Vec<Dependency> {
    vec![
        Dependency::any_change(name),
        Dependency::invalidate_all(name),
    ]
}

/// Runs `plan` on `conn` through the cache: read-through inside a transaction, else
/// [`Cache::get_or_load`] under the key of the connection's namespace, with the result's row
/// keys from `keys` and the plan's base dependencies.
async fn run<Q, C, T>(
    plan: Plan<Q>,
    conn: &mut C,
    exec: impl FnOnce(Q, &mut C) -> QueryResult<T>,
    keys: impl FnOnce(&T, &mut DependencySet),
) -> Result<T>
where
    C: LoadConnection,
    C::Backend: NamespaceBackend + Default,
    <C::Backend as Backend>::QueryBuilder: Default,
    Q: QueryFragment<C::Backend>,
    T: Serialize + DeserializeOwned,
{
    if in_transaction(conn) {
        return Ok(run_blocking(|| exec(plan.query, conn))?);
    }
    let Some(namespace) = run_blocking(|| namespace::of_connection(conn))? else {
        return Ok(run_blocking(|| exec(plan.query, conn))?);
    };
    run_in(plan, conn, &namespace, exec, keys).await
}

/// [`run`]'s cached part: [`Cache::get_or_load`] under the key of `namespace`, which must be
/// what `conn` reads (its own, or a pool's it was checked against), on a connection outside a
/// transaction.
pub(crate) async fn run_in<Q, C, T>(
    plan: Plan<Q>,
    conn: &mut C,
    namespace: &str,
    exec: impl FnOnce(Q, &mut C) -> QueryResult<T>,
    keys: impl FnOnce(&T, &mut DependencySet),
) -> Result<T>
where
    C: LoadConnection,
    C::Backend: NamespaceBackend + Default,
    <C::Backend as Backend>::QueryBuilder: Default,
    Q: QueryFragment<C::Backend>,
    T: Serialize + DeserializeOwned,
{
    let (key, statement) = plan.entry::<C::Backend>(namespace);
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
            let value = run_blocking(|| exec(query, conn))?;
            let deps = dependencies(&value, keys, base);
            Ok::<Loaded<T>, diesel::result::Error>((value, deps))
        })
        .await
        .map_err(from_load)
}

/// Whether `conn` is inside a transaction Diesel knows of. A broken transaction manager
/// counts as inside (read through: nothing is cached from a connection in an unknown state).
///
/// `transaction_manager_status_mut` is hidden in Diesel's docs (part of its backend-author
/// API) but public; Diesel's own connection pools use it the same way.
pub(crate) fn in_transaction<C: LoadConnection>(conn: &mut C) -> bool {
    match <C::TransactionManager as TransactionManager<C>>::transaction_manager_status_mut(conn)
        .transaction_depth()
    {
        Ok(depth) => depth.is_some(),
        Err(_) => true,
    }
}
