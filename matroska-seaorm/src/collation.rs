//! A start-up check that every scope column compares strings no more loosely than its fold.
//!
//! MySQL's and MariaDB's default collations compare case- and accent-insensitively and ignore
//! trailing spaces; PostgreSQL's `citext` ignores case. A list cached for `category =
//! "Fantasy"` then holds the rows stored as `"fantasy"`; unless the scope field folds its
//! values the same way (`#[cache(fold = "ci_ai")]` on the field, see
//! [`Fold`](matroska_core::Fold)), saving such a row invalidates another condition and the
//! list stays stale. [`check_collations`] reads each scope column's collation from the
//! database and finds the fields whose fold is too fine.
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

use matroska_core::{Fold, ScopeMode, TableSpec};
use sea_orm::{ConnectionTrait, DbBackend, Statement};

use crate::error::{Error, Result};

/// A scope column whose collation compares more loosely than the field's fold.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct CollationIssue {
    /// The entity (scope) name.
    pub entity: String,
    /// The table.
    pub table: String,
    /// The column.
    pub column: String,
    /// The column's collation or type, as the database names it.
    pub collation: String,
    /// The fold the field needs (at least).
    pub needs: Fold,
    /// The fold the field has.
    pub has: Fold,
}

impl std::fmt::Display for CollationIssue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let attribute = if self.needs == Fold::CASE {
            "case"
        } else {
            "ci_ai"
        };
        write!(
            f,
            "{}.{} compares as {} but its scope field folds {:?}: add `#[cache(fold = \"{attribute}\")]` \
             to the field (or use a binary collation)",
            self.table, self.column, self.collation, self.has
        )
    }
}

/// Whether `has` folds at least as much as `needs`.
fn covers(has: Fold, needs: Fold) -> bool {
    (has.case || !needs.case)
        && (has.accents || !needs.accents)
        && (has.trailing_spaces || !needs.trailing_spaces)
}

/// The fold a column with this collation (MySQL) or type and collation (PostgreSQL) needs.
fn needed(backend: DbBackend, collation: &str, type_name: &str) -> Fold {
    let collation = collation.to_ascii_lowercase();
    match backend {
        DbBackend::MySql if collation.contains("_ci") => Fold::CI_AI,
        DbBackend::Postgres if type_name.eq_ignore_ascii_case("citext") => Fold::CASE,
        // A nondeterministic ICU collation (`CREATE COLLATION .. deterministic = false`).
        DbBackend::Postgres if collation.contains("-ks-level") || collation.contains("nondet") => {
            Fold::CI_AI
        }
        _ => Fold::EXACT,
    }
}

/// Finds the scope columns of `tables` whose collation compares more loosely than their
/// field's fold. In [`ScopeMode::Development`] any such column is an error; in production
/// each is logged at `warn` level and marked coarse ([`matroska_core::fold::mark_coarse`]):
/// every write through it then invalidates all of its entity's lists. Returns the issues.
/// SQLite (`COLLATE NOCASE` columns) is not inspected.
///
/// # Errors
/// [`Error::Collation`] in development mode; the database's errors.
pub async fn check_collations<C: ConnectionTrait>(
    db: &C,
    tables: &[TableSpec],
    mode: ScopeMode,
) -> Result<Vec<CollationIssue>> {
    let backend = db.get_database_backend();
    let query = match backend {
        DbBackend::MySql => {
            "SELECT COLUMN_NAME, COALESCE(COLLATION_NAME, ''), DATA_TYPE FROM information_schema.COLUMNS \
             WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = ?"
        }
        DbBackend::Postgres => {
            "SELECT c.column_name::text, COALESCE(co.collname::text || CASE WHEN co.collisdeterministic \
             THEN '' ELSE '-nondeterministic' END, ''), c.udt_name::text \
             FROM information_schema.columns c \
             LEFT JOIN pg_collation co ON co.collname = c.collation_name \
             WHERE c.table_schema = current_schema() AND c.table_name = $1"
        }
        _ => return Ok(Vec::new()),
    };
    let mut issues = Vec::new();
    for spec in tables {
        let rows = db
            .query_all_raw(Statement::from_sql_and_values(
                backend,
                query,
                [spec.table().into()],
            ))
            .await?;
        for row in rows {
            let column: String = row.try_get_by_index(0)?;
            let collation: String = row.try_get_by_index(1)?;
            let type_name: String = row.try_get_by_index(2)?;
            let needs = needed(backend, &collation, &type_name);
            let scoped = spec
                .scopes()
                .iter()
                .flat_map(|s| s.columns())
                .find(|c| c.name() == column);
            if let Some(c) = scoped
                && !covers(c.fold(), needs)
            {
                let collation = if collation.is_empty() {
                    type_name
                } else {
                    collation
                };
                issues.push(CollationIssue {
                    entity: spec.entity().to_owned(),
                    table: spec.table().to_owned(),
                    column,
                    collation,
                    needs,
                    has: c.fold(),
                });
            }
        }
    }
    match mode {
        ScopeMode::Development if !issues.is_empty() => Err(Error::Collation(
            issues
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; "),
        )),
        _ => {
            for issue in &issues {
                tracing::warn!(%issue, "writes through this column invalidate all of its entity's lists");
                matroska_core::fold::mark_coarse(&issue.entity, &issue.column);
            }
            Ok(issues)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn needs_follow_the_collation() {
        assert_eq!(
            needed(DbBackend::MySql, "utf8mb4_general_ci", "varchar"),
            Fold::CI_AI
        );
        assert_eq!(
            needed(DbBackend::MySql, "utf8mb4_bin", "varchar"),
            Fold::EXACT
        );
        assert_eq!(needed(DbBackend::Postgres, "", "citext"), Fold::CASE);
        assert_eq!(needed(DbBackend::Postgres, "C", "text"), Fold::EXACT);
        assert!(covers(Fold::CI_AI, Fold::CASE));
        assert!(!covers(Fold::CASE, Fold::CI_AI));
        assert!(covers(Fold::EXACT, Fold::EXACT));
    }
}
