//! Invalidation on save and delete, through SeaORM's `ActiveModelBehavior`.
//!
//! SeaORM allows one `ActiveModelBehavior` impl per model, and it belongs to the user. So this
//! module offers the four hook bodies as functions ([`before_save`], [`after_save`],
//! [`before_delete`], [`after_delete`]) to call from an impl, and
//! [`active_model_behavior!`](crate::active_model_behavior) to generate the impl in one line
//! (delegating to the user's [`Hooks`] when there are any). Never a blanket impl.
//!
//! ## What a write invalidates
//!
//! | write | invalidated | extra queries |
//! |---|---|---|
//! | insert | the row's primary key; the scope conditions the new row matches; `any_change` | none |
//! | update, no watched column `Set` | the primary key; `any_change` | none |
//! | update of a watched column | the primary key; the conditions of the old row and of the new row, for the extractors watching a modified column; `any_change` | one `SELECT` of the old row, on the same connection, before the update |
//! | delete | the primary key; the conditions of the row as the database holds it and of the `ActiveModel`'s values; `any_change` | one `SELECT` of the row, on the same connection, before the delete (none for an entity without scopes) |
//!
//! "Modified" means the column's `ActiveValue` is `Set`, even to the value it had (use
//! SeaORM's `set_if_not_equals` to keep unchanged values `Unchanged`). The old values are read
//! because `Set` overwrites them in the `ActiveModel`. A delete reads the row too: the model
//! it is given may have been loaded before another writer moved the row to other scope values,
//! and a scoped `count` (which holds no primary key) is cached under the row's current ones.
//!
//! Invalidations happen after the statement, or at the end of the enclosing
//! [`transaction`](crate::transaction()) / [`batch`](crate::batch); see
//! [`transaction`](mod@crate::transaction#a-bare-begin) for a bare `begin()`. SeaORM runs no hooks
//! for `insert_many`, `update_many`, `delete_many`, `delete_by_id`, `Entity::insert(..).exec`,
//! `Entity::update(..).exec` or raw SQL; and `update_without_returning` runs `before_save`
//! only (its invalidations wait for the task's next save): use the [bulk](crate::bulk)
//! helpers, or [`invalidate`](crate::invalidate).

use std::any::TypeId;
use std::str::FromStr;

use async_trait::async_trait;
use matroska_core::{CacheDeps, Scoped};
use sea_orm::{
    ActiveModelTrait, ColumnTrait, Condition, ConnectionTrait, DbErr, EntityTrait, Iterable,
    ModelTrait, PrimaryKeyToColumn, QueryFilter, TryIntoModel,
};

use crate::invalidator::{Invalidator, Keep};
use crate::transaction::{finish, push, stash_update, take_update, warn_if_bare_transaction};

/// The `Model` of an `ActiveModel`.
pub type ModelOf<AM> = <<AM as ActiveModelTrait>::Entity as EntityTrait>::Model;

/// The scope fields (distinct) of a model's extractors, in declaration order.
fn scope_fields<M: Scoped>() -> Vec<&'static str> {
    let mut fields: Vec<&'static str> = Vec::new();
    for f in M::scope().watched_fields().flatten() {
        if !fields.contains(&f.as_str()) {
            fields.push(f.as_str());
        }
    }
    fields
}

/// The scope fields whose column is `Set` in `am`. A field that names no column (SeaORM's
/// `Column::from_str` takes field names, camelCase and column names) counts as modified:
/// an extra invalidation, never a missed one.
fn modified_fields<AM>(am: &AM) -> Vec<&'static str>
where
    AM: ActiveModelTrait,
    ModelOf<AM>: Scoped,
{
    scope_fields::<ModelOf<AM>>()
        .into_iter()
        .filter(
            |f| match <<AM::Entity as EntityTrait>::Column as FromStr>::from_str(f) {
                Ok(column) => am.get(column).is_set(),
                Err(_) => true,
            },
        )
        .collect()
}

/// The key a save's `before_save` and `after_save` agree on: model type and primary key.
fn update_key<AM: ActiveModelTrait>(
    pk: impl Iterator<Item = Option<sea_orm::Value>>,
) -> (TypeId, String)
where
    ModelOf<AM>: 'static,
{
    let pk: Vec<_> = pk.collect();
    (TypeId::of::<ModelOf<AM>>(), format!("{pk:?}"))
}

fn am_key<AM>(am: &AM) -> (TypeId, String)
where
    AM: ActiveModelTrait,
    ModelOf<AM>: 'static,
{
    update_key::<AM>(
        <AM::Entity as EntityTrait>::PrimaryKey::iter()
            .map(|k| am.get(k.into_column()).into_value()),
    )
}

fn model_key<AM>(model: &ModelOf<AM>) -> (TypeId, String)
where
    AM: ActiveModelTrait,
    ModelOf<AM>: 'static,
{
    update_key::<AM>(
        <AM::Entity as EntityTrait>::PrimaryKey::iter().map(|k| Some(model.get(k.into_column()))),
    )
}

/// The row `am` points at, read on `db` (the same connection or transaction as the write).
async fn find_row<AM, C>(am: &AM, db: &C) -> Result<Option<ModelOf<AM>>, DbErr>
where
    AM: ActiveModelTrait,
    C: ConnectionTrait,
{
    let mut condition = Condition::all();
    for key in <AM::Entity as EntityTrait>::PrimaryKey::iter() {
        let column = key.into_column();
        match am.get(column).into_value() {
            Some(value) => condition = condition.add(column.eq(value)),
            None => return Ok(None),
        }
    }
    AM::Entity::find().filter(condition).one(db).await
}

fn table_of<AM: ActiveModelTrait>() -> &'static str {
    sea_orm::EntityName::table_name(&<AM::Entity as Default>::default())
}

/// The invalidator for a write to `table`, checked before the write, and how its failed
/// invalidations are kept: `None` when no cache is registered but the outbox's triggers
/// record the write (its relays invalidate). A full retry queue refuses
/// the write only when no outbox watches the table; when one does, the write proceeds and
/// its failed invalidations are kept only while the queue has room (the relay delivers them).
pub(crate) async fn current_for_write<C>(
    db: &C,
    table: &str,
) -> Result<Option<(Invalidator, Keep)>, DbErr>
where
    C: ConnectionTrait + ?Sized,
{
    match Invalidator::current() {
        Some(invalidator) => match invalidator.check_capacity() {
            Ok(()) => Ok(Some((invalidator, Keep::Always))),
            Err(_) if crate::outbox::covers(db, table).await => {
                Ok(Some((invalidator, Keep::WhileRoom)))
            }
            Err(e) => Err(e.into()),
        },
        // No cache in this process: nothing here to invalidate, but other processes' caches
        // (a shared Redis) may hold the table's rows. The write goes ahead only if the
        // database records it in the write's own transaction: the outbox's triggers. (A
        // whole-table row written by the hook after the write was tried, and dropped: SeaORM
        // runs a single save without a transaction, so the write could commit and the row
        // fail — a role without rights on the outbox, a dropped future — leaving it
        // unrecorded; and its consumer check held locks on every relay's consumer row.)
        None if crate::outbox::covers(db, table).await => Ok(None),
        None => Err(crate::Error::Unrecorded {
            table: table.to_owned(),
        }
        .into()),
    }
}

/// How the failed invalidation of a write already made to `table` is kept: only while the
/// queue has room when it is full and the outbox watches the table, else whatever the limit
/// (the write was accepted; nothing else would invalidate it).
pub(crate) async fn keep_after_write<C>(invalidator: &Invalidator, db: &C, table: &str) -> Keep
where
    C: ConnectionTrait + ?Sized,
{
    if invalidator.is_full() && crate::outbox::covers(db, table).await {
        Keep::WhileRoom
    } else {
        Keep::Always
    }
}

/// Ends a save: outside a unit of work, invalidates what it collected (nothing when no cache
/// is registered and the outbox watches the table); and wakes this process's relays.
async fn end_save() {
    let _ = finish().await;
    matroska_outbox::poke();
}

/// The body of `ActiveModelBehavior::before_save`: refuses the write when no cache is
/// registered and nothing in the database would record it (see
/// [`outbox`](crate::outbox)), or when the retry queue is full; on an update of a watched
/// column, reads the old row (one `SELECT` on `db`) and collects the conditions it leaves.
///
/// # Errors
/// [`Error::Unrecorded`](crate::Error::Unrecorded), [`Error::Backlog`](crate::Error::Backlog)
/// (as [`DbErr::Custom`]), and the database's errors.
pub async fn before_save<AM, C>(am: AM, db: &C, insert: bool) -> Result<AM, DbErr>
where
    AM: ActiveModelTrait + Send,
    C: ConnectionTrait,
    ModelOf<AM>: CacheDeps + Scoped + Send + Sync,
{
    // Before the conditions of the row are computed, here or in `after_save` (`collation.rs`).
    crate::collation::ensure_checked::<ModelOf<AM>, C>(db, table_of::<AM>()).await;
    let invalidator = current_for_write(db, table_of::<AM>()).await?;
    warn_if_bare_transaction::<C>();
    if insert {
        return Ok(am);
    }
    let modified = modified_fields(&am);
    if !modified.is_empty()
        && let Some(old) = find_row(&am, db).await?
    {
        let scope = <ModelOf<AM> as Scoped>::scope();
        if let Some((invalidator, keep)) = &invalidator {
            push(
                invalidator,
                *keep,
                scope.dependencies_for_change(Some(&old), None, Some(&modified)),
            );
        }
    }
    stash_update(am_key(&am), modified);
    Ok(am)
}

/// The body of `ActiveModelBehavior::after_save`: invalidates the row's primary key and the
/// conditions the saved row matches (for an update, only those of extractors watching a
/// modified column), with what [`before_save`] collected: now, or at the end of the
/// enclosing [`transaction`](crate::transaction()) / [`batch`](crate::batch).
///
/// A failed invalidation does not fail the save (the row is written): it is queued and
/// retried, see the [failure policy](crate::invalidator#failure-policy-retry-queue-then-refuse-writes).
/// Without [`before_save`] wired, an update invalidates the whole scope (old values unknown).
///
/// # Errors
/// A cache failure is queued, not returned (the row is written).
pub async fn after_save<AM, C>(
    model: ModelOf<AM>,
    db: &C,
    insert: bool,
) -> Result<ModelOf<AM>, DbErr>
where
    AM: ActiveModelTrait,
    C: ConnectionTrait,
    ModelOf<AM>: CacheDeps + Scoped + Send + Sync,
{
    // A no-op after `before_save` (it checked): for an `after_save` wired alone.
    crate::collation::ensure_checked::<ModelOf<AM>, C>(db, table_of::<AM>()).await;
    let scope = <ModelOf<AM> as Scoped>::scope();
    let mut deps = vec![model.primary_key()];
    if insert {
        deps.extend(scope.dependencies_for(&model, None));
    } else {
        match take_update(&model_key::<AM>(&model)) {
            Some(modified) => {
                deps.extend(scope.dependencies_for_change(None, Some(&model), Some(&modified)));
            }
            None => {
                deps.extend(scope.dependencies_for(&model, None));
                deps.push(scope.all());
            }
        }
    }
    // No cache registered: `before_save` admitted the write only where the outbox's
    // triggers record it.
    if let Some(invalidator) = Invalidator::current() {
        let keep = keep_after_write(&invalidator, db, table_of::<AM>()).await;
        push(&invalidator, keep, deps);
    }
    end_save().await;
    Ok(model)
}

/// The body of `ActiveModelBehavior::before_delete`: refuses the delete as [`before_save`]
/// refuses a write, and collects the row's primary key and the conditions of the row as the
/// database holds it (one `SELECT` on `db`, skipped for an entity without scopes) and of
/// `am`'s values when it holds every column.
///
/// # Errors
/// As [`before_save`].
pub async fn before_delete<AM, C>(am: AM, db: &C) -> Result<AM, DbErr>
where
    AM: ActiveModelTrait + TryIntoModel<ModelOf<AM>> + Send,
    C: ConnectionTrait,
    ModelOf<AM>: CacheDeps + Scoped + Send + Sync,
{
    crate::collation::ensure_checked::<ModelOf<AM>, C>(db, table_of::<AM>()).await;
    let admitted = current_for_write(db, table_of::<AM>()).await?;
    warn_if_bare_transaction::<C>();
    // No cache registered: the outbox's triggers record the delete (`current_for_write`
    // refuses it otherwise) and its relay invalidates.
    let Some((invalidator, keep)) = admitted else {
        return Ok(am);
    };
    let scope = <ModelOf<AM> as Scoped>::scope();
    let given = am.clone().try_into_model().ok();
    // The model may have been loaded before another writer moved the row to other scope
    // values: the lists and counts cached under those hold the row now, so read it (on the
    // delete's own connection, as a watched update reads the old row). Without scopes there
    // is nothing to read but the key, which `am` holds when it converts.
    let current = if given.is_none() || !scope_fields::<ModelOf<AM>>().is_empty() {
        find_row(&am, db).await?
    } else {
        None
    };
    let mut deps = vec![scope.any_change()];
    for row in [&current, &given].into_iter().flatten() {
        deps.push(row.primary_key());
        deps.extend(scope.dependencies_for(row, None));
    }
    push(&invalidator, keep, deps);
    Ok(am)
}

/// The body of `ActiveModelBehavior::after_delete`: invalidates what [`before_delete`]
/// collected, now or at the end of the enclosing [`transaction`](crate::transaction()) /
/// [`batch`](crate::batch). Failures are queued, as in [`after_save`].
///
/// # Errors
/// As [`after_save`].
pub async fn after_delete<AM, C>(am: AM, _db: &C) -> Result<AM, DbErr>
where
    AM: ActiveModelTrait + Send,
    C: ConnectionTrait,
{
    end_save().await;
    Ok(am)
}

/// The user's own `ActiveModelBehavior` logic, for a model whose impl
/// [`active_model_behavior!`](crate::active_model_behavior)`(ActiveModel, with_hooks)`
/// generates. Same signatures and defaults as SeaORM's hooks; the user's `before_*` hooks run
/// before the invalidation bookkeeping (so columns they `Set` count as modified), and the
/// `after_*` hooks after it (so a failing user hook cannot skip an invalidation).
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// mod article {
///     use sea_orm::entity::prelude::*;
///     use sea_orm::Set;
///     # use matroska_core::{CacheDeps, Dependency, Scope, Scoped, Value};
///     #[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
///     #[sea_orm(table_name = "article")]
///     pub struct Model { #[sea_orm(primary_key)] pub id: i32, pub title: String }
///     #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
///     pub enum Relation {}
///     # impl CacheDeps for Model {
///     #     fn entity_name() -> &'static str { "article" }
///     #     fn primary_key(&self) -> Dependency { Dependency::primary_key("article", [Value::Int(self.id.into())]) }
///     # }
///     # impl Scoped for Model {
///     #     fn scope() -> &'static Scope<Self> {
///     #         static S: std::sync::LazyLock<Scope<Model>> = std::sync::LazyLock::new(|| Scope::new("article"));
///     #         &S
///     #     }
///     # }
///
///     // The user's own logic: titles are stored trimmed.
///     #[async_trait::async_trait]
///     impl matroska_seaorm::Hooks for ActiveModel {
///         async fn before_save<C: ConnectionTrait>(mut self, _db: &C, _insert: bool) -> Result<Self, DbErr> {
///             if let sea_orm::ActiveValue::Set(title) = &self.title {
///                 self.title = Set(title.trim().to_owned());
///             }
///             Ok(self)
///         }
///     }
///     matroska_seaorm::active_model_behavior!(ActiveModel, with_hooks);
/// }
///
/// use matroska_core::{Cache, Dependency};
/// use sea_orm::{ActiveModelTrait, ConnectionTrait, Database, Set};
///
/// let db = Database::connect("sqlite::memory:").await?;
/// db.execute_unprepared("CREATE TABLE article (id INTEGER PRIMARY KEY, title TEXT NOT NULL)").await?;
/// let cache = Cache::memory();
/// cache.put("count", &0, &[Dependency::condition("article", Vec::<(String, _)>::new())], None).await?;
/// let saved = matroska_seaorm::with_cache(cache.clone(), async {
///     article::ActiveModel { title: Set("  Cache  ".into()), ..Default::default() }.insert(&db).await
/// })
/// .await?;
/// assert_eq!(saved.title, "Cache"); // the user's hook ran
/// assert!(!cache.has("count").await?); // and so did the invalidation
/// # Ok::<_, Box<dyn std::error::Error>>(()) }).unwrap();
/// ```
#[allow(unused_variables)]
#[async_trait]
pub trait Hooks: ActiveModelTrait + Send {
    /// `ActiveModelBehavior::new`.
    fn new() -> Self {
        <Self as ActiveModelTrait>::default()
    }

    /// `ActiveModelBehavior::before_save`.
    async fn before_save<C>(self, db: &C, insert: bool) -> Result<Self, DbErr>
    where
        C: ConnectionTrait,
    {
        Ok(self)
    }

    /// `ActiveModelBehavior::after_save`.
    async fn after_save<C>(
        model: ModelOf<Self>,
        db: &C,
        insert: bool,
    ) -> Result<ModelOf<Self>, DbErr>
    where
        C: ConnectionTrait,
    {
        Ok(model)
    }

    /// `ActiveModelBehavior::before_delete`.
    async fn before_delete<C>(self, db: &C) -> Result<Self, DbErr>
    where
        C: ConnectionTrait,
    {
        Ok(self)
    }

    /// `ActiveModelBehavior::after_delete`.
    async fn after_delete<C>(self, db: &C) -> Result<Self, DbErr>
    where
        C: ConnectionTrait,
    {
        Ok(self)
    }
}

/// Generates `impl ActiveModelBehavior for $ActiveModel` whose hooks invalidate the cache
/// (see the [`hooks`](crate::hooks) module). The model must implement `CacheDeps` and
/// `Scoped` (`#[derive(CacheDeps)]` does both).
///
/// - `active_model_behavior!(ActiveModel);` — invalidation only.
/// - `active_model_behavior!(ActiveModel, with_hooks);` — also runs the user's
///   [`Hooks`] impl for `ActiveModel`.
///
/// A model with its own `ActiveModelBehavior` impl calls [`before_save`], [`after_save`],
/// [`before_delete`] and [`after_delete`] from it instead.
///
/// ```
/// mod article {
///     use sea_orm::entity::prelude::*;
///     use matroska_core::{CacheDeps, Dependency, Scope, Scoped, Value};
///
///     #[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
///     #[sea_orm(table_name = "article")]
///     pub struct Model {
///         #[sea_orm(primary_key)]
///         pub id: i32,
///         pub category: String,
///     }
///     #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
///     pub enum Relation {}
///
///     // What `#[derive(CacheDeps)] #[scope(category)]` generates, written by hand:
///     impl CacheDeps for Model {
///         fn entity_name() -> &'static str { "article" }
///         fn primary_key(&self) -> Dependency { Dependency::primary_key("article", [Value::Int(self.id.into())]) }
///     }
///     impl Scoped for Model {
///         fn scope() -> &'static Scope<Self> {
///             static SCOPE: std::sync::LazyLock<Scope<Model>> = std::sync::LazyLock::new(|| {
///                 Scope::new("article").describe(&["category"], |m: &Model| Some(vec![Value::Str(m.category.clone())]))
///             });
///             &SCOPE
///         }
///     }
///
///     matroska_seaorm::active_model_behavior!(ActiveModel);
/// }
/// ```
#[macro_export]
macro_rules! active_model_behavior {
    ($active_model:ty) => {
        $crate::active_model_behavior!(@impl $active_model, $crate::__private::NoHooks);
    };
    ($active_model:ty, with_hooks) => {
        $crate::active_model_behavior!(@impl $active_model, $active_model);
    };
    (@impl $active_model:ty, $hooks:ty) => {
        #[$crate::__private::async_trait]
        impl $crate::__private::sea_orm::ActiveModelBehavior for $active_model {
            fn new() -> Self {
                <$hooks as $crate::__private::UserHooks<$active_model>>::new_active_model()
            }

            async fn before_save<C>(self, db: &C, insert: bool)
                -> ::core::result::Result<Self, $crate::__private::sea_orm::DbErr>
            where
                C: $crate::__private::sea_orm::ConnectionTrait,
            {
                let this = <$hooks as $crate::__private::UserHooks<$active_model>>::before_save(self, db, insert).await?;
                $crate::hooks::before_save(this, db, insert).await
            }

            async fn after_save<C>(
                model: $crate::hooks::ModelOf<$active_model>,
                db: &C,
                insert: bool,
            ) -> ::core::result::Result<$crate::hooks::ModelOf<$active_model>, $crate::__private::sea_orm::DbErr>
            where
                C: $crate::__private::sea_orm::ConnectionTrait,
            {
                let model = $crate::hooks::after_save::<$active_model, C>(model, db, insert).await?;
                <$hooks as $crate::__private::UserHooks<$active_model>>::after_save(model, db, insert).await
            }

            async fn before_delete<C>(self, db: &C)
                -> ::core::result::Result<Self, $crate::__private::sea_orm::DbErr>
            where
                C: $crate::__private::sea_orm::ConnectionTrait,
            {
                let this = <$hooks as $crate::__private::UserHooks<$active_model>>::before_delete(self, db).await?;
                $crate::hooks::before_delete(this, db).await
            }

            async fn after_delete<C>(self, db: &C)
                -> ::core::result::Result<Self, $crate::__private::sea_orm::DbErr>
            where
                C: $crate::__private::sea_orm::ConnectionTrait,
            {
                let this = $crate::hooks::after_delete(self, db).await?;
                <$hooks as $crate::__private::UserHooks<$active_model>>::after_delete(this, db).await
            }
        }
    };
}
