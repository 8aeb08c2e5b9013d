//! Invalidating counterparts of the writes SeaORM runs no hooks for.
//!
//! `update_many`, `delete_many`, `insert_many` and raw SQL bypass `ActiveModelBehavior`. The
//! rule: **every write that does not go through a hooked `ActiveModel` goes through this
//! module** (or is followed by [`invalidate_entity`]). Each helper invalidates as narrowly as
//! the database lets it, after the write (after commit inside a
//! [`transaction`](crate::transaction()) / [`batch`](crate::batch)):
//!
//! | helper | PostgreSQL, SQLite ≥ 3.35 | MariaDB / MySQL |
//! |---|---|---|
//! | [`update_many`] | `UPDATE … RETURNING`: primary keys and `any_change`; when a watched or primary-key column is set, the old rows are selected first in the same transaction, and their keys and the old and new conditions go too | the affected rows are selected first (`FOR UPDATE`, same transaction): the same dependencies; setting a primary-key column adds `all` |
//! | [`delete_many`] | `DELETE … RETURNING`: primary keys and conditions of the deleted rows | selected first (`FOR UPDATE`, same transaction), then deleted |
//! | [`insert_many`] | `INSERT … RETURNING`: primary keys and conditions of the new rows | entity-wide: `all` and `any_change` |
//! | raw SQL | [`invalidate_entity`]: `all` and `any_change` | same |
//!
//! When a select-first update or delete affects more rows than it selected (rows that entered
//! the filter in between, which `FOR UPDATE` makes rare), the whole scope is invalidated too.

use std::str::FromStr;
use std::sync::OnceLock;

use matroska_core::{CacheDeps, Dependency, Scoped};
use sea_orm::sea_query::{Expr, IntoCondition, Query, SimpleExpr};
use sea_orm::{
    ActiveModelTrait, ColumnTrait, Condition, ConnectionTrait, DbBackend, DbErr, EntityTrait,
    IdenStatic, Iterable, ModelTrait, PrimaryKeyToColumn, QueryFilter, QuerySelect, QueryTrait,
    TransactionSession, TransactionTrait,
};

use crate::error::{Error, Result};
use crate::invalidator::{Invalidator, Keep};
use crate::transaction::record;

/// Starts an invalidating `UPDATE … WHERE …` of entity `E`; see [`BulkUpdate`].
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// # mod article {
/// #     use sea_orm::entity::prelude::*;
/// #     use matroska_core::{CacheDeps, Dependency, Scope, Scoped, Value};
/// #     #[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
/// #     #[sea_orm(table_name = "article")]
/// #     pub struct Model { #[sea_orm(primary_key)] pub id: i32, pub published: bool }
/// #     #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
/// #     pub enum Relation {}
/// #     impl ActiveModelBehavior for ActiveModel {}
/// #     impl CacheDeps for Model {
/// #         fn entity_name() -> &'static str { "article" }
/// #         fn primary_key(&self) -> Dependency { Dependency::primary_key("article", [Value::Int(self.id.into())]) }
/// #     }
/// #     impl Scoped for Model {
/// #         fn scope() -> &'static Scope<Self> {
/// #             static S: std::sync::LazyLock<Scope<Model>> = std::sync::LazyLock::new(|| Scope::new("article")
/// #                 .describe(&["published"], |m: &Model| Some(vec![Value::Bool(m.published)])));
/// #             &S
/// #         }
/// #     }
/// # }
/// use sea_orm::{ColumnTrait, ConnectionTrait, Database};
///
/// let db = Database::connect("sqlite::memory:").await?;
/// db.execute_unprepared("CREATE TABLE article (id INTEGER PRIMARY KEY, published BOOLEAN NOT NULL);
///                        INSERT INTO article VALUES (1, false), (2, false)").await?;
/// matroska_seaorm::with_cache(matroska_core::Cache::memory(), async {
///     let n = matroska_seaorm::bulk::update_many::<article::Entity>()
///         .set(article::Column::Published, true)
///         .filter(article::Column::Id.lte(2))
///         .exec(&db)
///         .await?;
///     assert_eq!(n, 2);
///     Ok::<_, matroska_seaorm::Error>(())
/// })
/// .await?;
/// # Ok::<_, Box<dyn std::error::Error>>(()) }).unwrap();
/// ```
pub fn update_many<E: EntityTrait>() -> BulkUpdate<E> {
    BulkUpdate {
        sets: Vec::new(),
        filter: Condition::all(),
    }
}

/// Starts an invalidating `DELETE … WHERE …` of entity `E`; see [`BulkDelete`].
pub fn delete_many<E: EntityTrait>() -> BulkDelete<E> {
    BulkDelete {
        filter: Condition::all(),
        entity: std::marker::PhantomData,
    }
}

/// An invalidating `UPDATE`; made by [`update_many`]. The filter is kept apart from SeaORM's
/// statement (whose `WHERE` cannot be read back) so the affected rows can be selected first.
#[derive(Debug)]
#[must_use]
pub struct BulkUpdate<E: EntityTrait> {
    sets: Vec<(E::Column, SimpleExpr)>,
    filter: Condition,
}

/// An invalidating `DELETE`; made by [`delete_many`].
#[derive(Debug)]
#[must_use]
pub struct BulkDelete<E: EntityTrait> {
    filter: Condition,
    entity: std::marker::PhantomData<E>,
}

type Model<E> = <E as EntityTrait>::Model;

/// The watched scope fields among `columns` (a field naming no column counts).
fn watched<E>(columns: &[E::Column]) -> Vec<&'static str>
where
    E: EntityTrait,
    E::Model: Scoped,
{
    let mut out: Vec<&'static str> = Vec::new();
    for field in <E::Model as Scoped>::scope().watched_fields().flatten() {
        let field = field.as_str();
        let hit = match <E::Column as FromStr>::from_str(field) {
            Ok(column) => columns.iter().any(|c| c.as_str() == column.as_str()),
            Err(_) => true,
        };
        if hit && !out.contains(&field) {
            out.push(field);
        }
    }
    out
}

/// Whether `db` can return rows from `UPDATE` / `DELETE` / `INSERT`. SQLite's version is
/// checked once per process (one library per process).
async fn has_returning<C: ConnectionTrait>(db: &C) -> Result<bool, DbErr> {
    static SQLITE: OnceLock<bool> = OnceLock::new();
    match db.get_database_backend() {
        DbBackend::Postgres => Ok(true),
        DbBackend::Sqlite => {
            if let Some(known) = SQLITE.get() {
                return Ok(*known);
            }
            let row = db
                .query_one_raw(sea_orm::Statement::from_string(
                    DbBackend::Sqlite,
                    "SELECT sqlite_version() AS v",
                ))
                .await?;
            let version: String = match row {
                Some(row) => row.try_get("", "v")?,
                None => String::new(),
            };
            let parts: Vec<u32> = version.split('.').filter_map(|p| p.parse().ok()).collect();
            let ok = parts.as_slice() >= [3, 35].as_slice();
            Ok(*SQLITE.get_or_init(|| ok))
        }
        _ => Ok(false),
    }
}

/// Runs `statement` with `RETURNING` every column, as models.
async fn returning<E, S, C>(mut statement: S, db: &C) -> Result<Vec<Model<E>>, DbErr>
where
    E: EntityTrait,
    S: sea_orm::StatementBuilder + Returning,
    C: ConnectionTrait,
{
    let backend = db.get_database_backend();
    statement.returning_all::<E>(backend);
    E::find()
        .from_raw_sql(backend.build(&statement))
        .all(db)
        .await
}

/// Statements that take a `RETURNING` clause.
trait Returning {
    fn returning_all<E: EntityTrait>(&mut self, backend: DbBackend);
}

fn returning_clause<E: EntityTrait>(backend: DbBackend) -> sea_orm::sea_query::ReturningClause {
    Query::returning().exprs(E::Column::iter().map(|c| c.select_as(c.into_returning_expr(backend))))
}

impl Returning for sea_orm::sea_query::UpdateStatement {
    fn returning_all<E: EntityTrait>(&mut self, backend: DbBackend) {
        self.returning(returning_clause::<E>(backend));
    }
}

impl Returning for sea_orm::sea_query::DeleteStatement {
    fn returning_all<E: EntityTrait>(&mut self, backend: DbBackend) {
        self.returning(returning_clause::<E>(backend));
    }
}

impl Returning for sea_orm::sea_query::InsertStatement {
    fn returning_all<E: EntityTrait>(&mut self, backend: DbBackend) {
        self.returning(returning_clause::<E>(backend));
    }
}

/// The rows matching `filter`, locked for the transaction where the database can
/// (`FOR UPDATE`; SQLite locks the whole database on write anyway).
async fn select_locked<E, C>(filter: Condition, db: &C) -> Result<Vec<Model<E>>, DbErr>
where
    E: EntityTrait,
    C: ConnectionTrait,
{
    let mut select = E::find().filter(filter);
    if db.get_database_backend() != DbBackend::Sqlite {
        select = select.lock_exclusive();
    }
    select.all(db).await
}

/// The condition `pk IN (rows' keys)`.
fn by_keys<E: EntityTrait>(rows: &[Model<E>]) -> Condition {
    let mut any = Condition::any();
    for row in rows {
        let mut one = Condition::all();
        for key in E::PrimaryKey::iter() {
            let column = key.into_column();
            one = one.add(column.eq(row.get(column)));
        }
        any = any.add(one);
    }
    any
}

/// The invalidator for a write to `E`'s table, checked before the write: a full retry queue
/// refuses it only when the outbox does not watch the table (see the
/// [failure policy](crate::invalidator#failure-policy-retry-queue-then-refuse-writes)).
async fn write_invalidator<E, C>(db: &C) -> Result<Invalidator>
where
    E: EntityTrait,
    E::Model: Scoped,
    C: ConnectionTrait,
{
    let invalidator = Invalidator::require()?;
    // Before the conditions of the rows written are computed (`collation.rs`).
    crate::collation::ensure_checked::<E::Model, C>(db, E::default().table_name()).await;
    if invalidator.is_full() && !crate::outbox::covers(db, E::default().table_name()).await {
        invalidator.check_capacity()?;
    }
    Ok(invalidator)
}

/// Records a bulk write's dependencies (see [`crate::hooks::keep_after_write`]); a failure is
/// queued, not returned: the rows are written.
async fn record_write<E, C>(invalidator: &Invalidator, db: &C, deps: Vec<Dependency>)
where
    E: EntityTrait,
    C: ConnectionTrait,
{
    let keep = crate::hooks::keep_after_write(invalidator, db, E::default().table_name()).await;
    let _ = record(invalidator, keep, deps).await;
}

impl<E> BulkUpdate<E>
where
    E: EntityTrait,
    E::Model: CacheDeps + Scoped + Send + Sync,
{
    /// Sets `column` to an expression (`Expr::col(Column::Views).add(1)`).
    pub fn col_expr(mut self, column: E::Column, expr: impl Into<SimpleExpr>) -> Self {
        self.sets.push((column, expr.into()));
        self
    }

    /// Sets `column` to a value.
    pub fn set(self, column: E::Column, value: impl Into<sea_orm::Value>) -> Self {
        self.col_expr(column, Expr::val(value))
    }

    /// Adds a filter (several combine with `AND`). Without one, every row is updated.
    pub fn filter(mut self, filter: impl IntoCondition) -> Self {
        self.filter = self.filter.add(filter.into_condition());
        self
    }

    fn statement(&self) -> sea_orm::UpdateMany<E> {
        let mut update = E::update_many();
        for (column, expr) in &self.sets {
            update = update.col_expr(*column, expr.clone());
        }
        update.filter(self.filter.clone())
    }

    /// Runs the update and invalidates what it changed (see the [module docs](self));
    /// returns the number of rows updated.
    ///
    /// # Errors
    /// [`Error::Db`]; [`Error::NoCache`] and [`Error::Backlog`] (a table the outbox does not
    /// watch) before anything is written.
    /// A failed invalidation is queued, not returned (the rows are written).
    pub async fn exec<C>(self, db: &C) -> Result<u64>
    where
        C: ConnectionTrait + TransactionTrait,
    {
        let invalidator = write_invalidator::<E, C>(db).await?;
        if self.sets.is_empty() {
            return Ok(0);
        }
        let scope = <E::Model as Scoped>::scope();
        let columns: Vec<E::Column> = self.sets.iter().map(|(c, _)| *c).collect();
        let modified = watched::<E>(&columns);
        // A new key leaves the old one behind: the old rows must be read first, like a
        // watched column's old values.
        let sets_key = E::PrimaryKey::iter().any(|key| {
            columns
                .iter()
                .any(|c| c.as_str() == key.into_column().as_str())
        });
        let returning_ok = has_returning(db).await?;
        let mut deps: Vec<Dependency> = vec![scope.any_change()];
        let count;
        if returning_ok && modified.is_empty() && !sets_key {
            // One statement: the conditions cannot change, the keys say which rows did.
            let rows = returning::<E, _, _>(self.statement().into_query(), db).await?;
            count = rows.len() as u64;
            deps.extend(rows.iter().map(CacheDeps::primary_key));
        } else {
            let txn = db.begin().await?;
            let old = select_locked::<E, _>(self.filter.clone(), &txn).await?;
            let new = if returning_ok {
                let rows = returning::<E, _, _>(self.statement().into_query(), &txn).await?;
                count = rows.len() as u64;
                rows
            } else {
                count = self.statement().exec(&txn).await?.rows_affected;
                if modified.is_empty() || old.is_empty() {
                    Vec::new()
                } else {
                    E::find().filter(by_keys::<E>(&old)).all(&txn).await?
                }
            };
            txn.commit().await?;
            for row in &old {
                deps.push(row.primary_key());
                deps.extend(scope.dependencies_for_change(Some(row), None, Some(&modified)));
            }
            for row in &new {
                deps.push(row.primary_key());
                deps.extend(scope.dependencies_for_change(None, Some(row), Some(&modified)));
            }
            if count > old.len() as u64 || (sets_key && !returning_ok) {
                // Rows entered the filter between the select and the update (their old
                // values are unknown), or keys changed and the new rows cannot be found by
                // their old keys (lookups cached as missing under the new keys).
                deps.push(scope.all());
            }
        }
        record_write::<E, C>(&invalidator, db, deps).await;
        Ok(count)
    }
}

impl<E> BulkDelete<E>
where
    E: EntityTrait,
    E::Model: CacheDeps + Scoped + Send + Sync,
{
    /// Adds a filter (several combine with `AND`). Without one, every row is deleted.
    pub fn filter(mut self, filter: impl IntoCondition) -> Self {
        self.filter = self.filter.add(filter.into_condition());
        self
    }

    /// Runs the delete and invalidates the deleted rows (see the [module docs](self));
    /// returns the number of rows deleted.
    ///
    /// # Errors
    /// As [`BulkUpdate::exec`].
    pub async fn exec<C>(self, db: &C) -> Result<u64>
    where
        C: ConnectionTrait + TransactionTrait,
    {
        let invalidator = write_invalidator::<E, C>(db).await?;
        let scope = <E::Model as Scoped>::scope();
        let delete = E::delete_many().filter(self.filter.clone());
        let mut deps: Vec<Dependency> = vec![scope.any_change()];
        let (rows, count) = if has_returning(db).await? {
            let rows = returning::<E, _, _>(delete.into_query(), db).await?;
            let count = rows.len() as u64;
            (rows, count)
        } else {
            let txn = db.begin().await?;
            let rows = select_locked::<E, _>(self.filter, &txn).await?;
            let count = delete.exec(&txn).await?.rows_affected;
            txn.commit().await?;
            if count > rows.len() as u64 {
                deps.push(scope.all());
            }
            (rows, count)
        };
        for row in &rows {
            deps.push(row.primary_key());
            deps.extend(scope.dependencies_for(row, None));
        }
        record_write::<E, C>(&invalidator, db, deps).await;
        Ok(count)
    }
}

/// `Entity::insert_many(models)`, invalidating the conditions the new rows match (see the
/// [module docs](self)); returns the number of rows inserted.
///
/// # Errors
/// As [`BulkUpdate::exec`].
pub async fn insert_many<A, I, C>(models: I, db: &C) -> Result<u64>
where
    A: ActiveModelTrait,
    I: IntoIterator<Item = A>,
    C: ConnectionTrait,
    Model<A::Entity>: CacheDeps + Scoped + Send + Sync,
{
    let invalidator = write_invalidator::<A::Entity, C>(db).await?;
    let models: Vec<A> = models.into_iter().collect();
    if models.is_empty() {
        return Ok(0);
    }
    let scope = <Model<A::Entity> as Scoped>::scope();
    let insert = A::Entity::insert_many(models);
    let (deps, count) = if has_returning(db).await? {
        let rows = returning::<A::Entity, _, _>(insert.into_query(), db).await?;
        let mut deps = Vec::new();
        for row in &rows {
            deps.push(row.primary_key());
            deps.extend(scope.dependencies_for(row, None));
        }
        (deps, rows.len() as u64)
    } else {
        let count = insert.exec_without_returning(db).await?;
        (vec![scope.all(), scope.any_change()], count)
    };
    record_write::<A::Entity, C>(&invalidator, db, deps).await;
    Ok(count)
}

/// Invalidates every cached list and query of entity `E` (`all` and `any_change`): for raw
/// SQL and other writes that cannot be narrowed to rows, or to drop everything cached about
/// `E` after rows were fixed by hand. Call it after the write; inside a
/// [`transaction`](crate::transaction()) or [`batch`](crate::batch) it waits for the end.
/// Cached queries and [`find_by_id`](crate::query::find_by_id) lookups all depend on `all`.
///
/// Entries depending only on a row's primary key (cached by hand) are not touched; invalidate
/// those rows' keys with [`invalidate`].
///
/// # Errors
/// [`Error::NoCache`]; outside a batch, the backend's failure (queued for retry too).
pub async fn invalidate_entity<E>() -> Result<()>
where
    E: EntityTrait,
    E::Model: Scoped,
{
    let scope = <E::Model as Scoped>::scope();
    invalidate(vec![scope.all(), scope.any_change()]).await
}

/// Invalidates `deps` through the current cache: now, or at the end of the enclosing
/// [`transaction`](crate::transaction()) / [`batch`](crate::batch).
///
/// A failed invalidation joins the retry queue only while the queue has room (its
/// [`backlog_limit`](crate::InvalidatorBuilder::backlog_limit)): memory stays bounded through
/// an outage. What did not fit is dropped, counted by
/// [`Invalidator::dropped`], and reported here ([`Error::Dropped`]); inside a
/// unit of work, only logged and counted.
///
/// # Errors
/// [`Error::NoCache`]; outside a batch, the backend's failure ([`Error::Cache`], queued for
/// retry too), or [`Error::Dropped`] when the queue was full.
pub async fn invalidate(deps: Vec<Dependency>) -> Result<()> {
    let invalidator = Invalidator::require()?;
    match record(&invalidator, Keep::WhileRoom, deps).await {
        Ok(_) => Ok(()),
        Err(e) if e.dropped > 0 => Err(Error::Dropped {
            dropped: e.dropped,
            limit: invalidator.limit(),
            source: e.error,
        }),
        Err(e) => Err(Error::Cache(e.error)),
    }
}
