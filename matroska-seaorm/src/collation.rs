//! The check that every scope column compares strings no more loosely than its fold, on a
//! SeaORM connection (the check itself: [`matroska_outbox::collation`]).
//!
//! MySQL's and MariaDB's default collations compare case- and accent-insensitively and ignore
//! trailing spaces; PostgreSQL's `citext` ignores case. A list cached for `category =
//! "Fantasy"` then holds the rows stored as `"fantasy"`; unless the scope field folds its
//! values the same way (`#[cache(fold = "ci_ai")]` on the field, see
//! [`Fold`](matroska_core::Fold)), saving such a row invalidates another condition and the
//! list would stay stale. The database itself is asked, under each scope column's own
//! collation, whether it equates a fixed list of tricky pairs (`ı`/`i`, `ł`/`l`, `œ`/`oe`,
//! trailing spaces, ...) — not the collation's name, which says too little
//! (`utf8mb4_general_ci` equates `ı` with `i`, `utf8mb4_unicode_ci` does not, but equates `œ`
//! with `oe`).
//!
//! **It runs by itself:** the hooks and bulk helpers check a table once per process before its
//! first invalidation (the relay does the same for the tables it watches), in production
//! semantics — a too-fine fold is logged at `warn` level and its column goes coarse (every
//! write through it invalidates all of its entity's lists), so a forgotten fold costs misses,
//! never stale reads. Call [`check_collations`] yourself in development mode (a test, start-up
//! in development) to turn such a column into an error that names the fold it needs:
//!
//! ```no_run
//! # async fn run(db: sea_orm::DatabaseConnection) -> Result<(), matroska_seaorm::Error> {
//! # mod post { pub struct Model; impl matroska_core::WatchedTable for Model {
//! #   fn watched_table() -> matroska_core::TableSpec { matroska_core::TableSpec::new("post", "post") } } }
//! use matroska_core::{ScopeMode, WatchedTable};
//!
//! // Development: an error naming the field and the fold it needs. Production: a warning,
//! // and writes through such a field invalidate all of its entity's lists.
//! matroska_seaorm::check_collations(&db, &[post::Model::watched_table()], ScopeMode::default()).await?;
//! # Ok(()) }
//! ```

use std::any::TypeId;
use std::collections::HashSet;
use std::sync::{LazyLock, Mutex, PoisonError};

use matroska_core::{ScopeMode, Scoped, TableSpec};
use matroska_outbox::collation::ScopedTable;
pub use matroska_outbox::collation::{CollationIssue, PROBES};
use sea_orm::ConnectionTrait;

use crate::error::{Error, Result};
use crate::outbox::SeaOrmSql;

/// Finds the scope columns of `tables` whose collation equates values their field's fold
/// tells apart: each scope column with a collation is asked, under that collation, about
/// every pair in [`PROBES`]; a pair the database equates but the fold folds to two strings
/// is a too-fine fold (stale lists). In [`ScopeMode::Development`] any such column is an
/// error; in production each is logged at `warn` level and marked coarse
/// ([`matroska_core::fold::mark_coarse`]): every write through it then invalidates all of
/// its entity's lists. Returns the issues. SQLite (`COLLATE NOCASE` columns) is not
/// inspected.
///
/// # Errors
/// [`Error::Collation`] in development mode; the database's errors.
pub async fn check_collations<C: ConnectionTrait>(
    db: &C,
    tables: &[TableSpec],
    mode: ScopeMode,
) -> Result<Vec<CollationIssue>> {
    matroska_outbox::check_collations(&SeaOrmSql(db), tables, mode)
        .await
        .map_err(|e| match e {
            matroska_outbox::Error::Collation(issues) => Error::Collation(issues),
            other => Error::Db(sea_orm::DbErr::Custom(other.to_string())),
        })
}

/// Checks `M`'s table once per process (see the [module docs](self)) before an invalidation
/// computes conditions from its rows; never fails (a failed check makes the columns coarse).
/// The columns are the scope's fields, whatever implements [`Scoped`] (the derive, or a
/// hand-written scope: fields that are no column of `table` are skipped).
pub(crate) async fn ensure_checked<M, C>(db: &C, table: &str)
where
    M: Scoped + 'static,
    C: ConnectionTrait + Sync + ?Sized,
{
    // Described once per type (it allocates), looked up by type afterwards.
    static SEEN: LazyLock<Mutex<HashSet<TypeId>>> = LazyLock::new(Default::default);
    let id = TypeId::of::<M>();
    if SEEN
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .contains(&id)
    {
        return;
    }
    let scope = M::scope();
    let columns = scope
        .described_fields()
        .flatten()
        .map(|field| (field.clone(), scope.field_fold(field)));
    let described = ScopedTable::new(scope.name(), table, columns);
    matroska_outbox::ensure_scoped_table_checked(&SeaOrmSql(db), &described).await;
    SEEN.lock()
        .unwrap_or_else(PoisonError::into_inner)
        .insert(id);
}
