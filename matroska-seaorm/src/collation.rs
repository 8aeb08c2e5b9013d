//! A start-up check that every scope column compares strings no more loosely than its fold.
//!
//! MySQL's and MariaDB's default collations compare case- and accent-insensitively and ignore
//! trailing spaces; PostgreSQL's `citext` ignores case. A list cached for `category =
//! "Fantasy"` then holds the rows stored as `"fantasy"`; unless the scope field folds its
//! values the same way (`#[cache(fold = "ci_ai")]` on the field, see
//! [`Fold`]), saving such a row invalidates another condition and the
//! list stays stale. [`check_collations`] asks the database itself, under each scope column's
//! own collation, whether it equates a fixed list of tricky pairs (`ı`/`i`, `ł`/`l`,
//! `œ`/`oe`, trailing spaces, ...) and finds the fields whose fold tells a pair apart that the
//! column equates — not by the collation's name, which says too little (`utf8mb4_general_ci`
//! equates `ı` with `i`, `utf8mb4_unicode_ci` does not, but equates `œ` with `oe`).
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
use sea_orm::{ConnectionTrait, DbBackend, Statement, Value};

use crate::error::{Error, Result};

/// The pairs every scope column is probed with: each is equal under some common collation
/// and told apart by some simple fold (case, accents without a decomposition, ligatures,
/// compatibility forms, `PAD SPACE`).
pub const PROBES: &[(&str, &str)] = &[
    ("a", "A"),
    ("é", "e"),
    ("É", "e"),
    ("a ", "a"),
    ("ı", "i"),
    ("İ", "i"),
    ("ł", "l"),
    ("Ł", "l"),
    ("œ", "oe"),
    ("æ", "ae"),
    ("ß", "ss"),
    ("ß", "s"),
    ("ø", "o"),
    ("đ", "d"),
    ("ð", "d"),
    ("ħ", "h"),
    ("ŀ", "l"),
    ("ĳ", "ij"),
    ("ﬁ", "fi"),
    ("Ａ", "A"),
    ("ａ", "a"),
];

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
    /// The column's collation (MySQL) or type and collation (PostgreSQL), as the database
    /// names it.
    pub collation: String,
    /// The [`PROBES`] the column equates but the field's fold tells apart.
    pub pairs: Vec<(String, String)>,
    /// The finest named fold that equates every probe the column equates; `None` when none
    /// does (then only a binary collation, or going coarse, avoids stale lists).
    pub needs: Option<Fold>,
    /// The fold the field has.
    pub has: Fold,
}

impl std::fmt::Display for CollationIssue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let pairs = self
            .pairs
            .iter()
            .map(|(a, b)| format!("{a:?} = {b:?}"))
            .collect::<Vec<_>>()
            .join(", ");
        write!(
            f,
            "{}.{} ({}) equates {pairs} but its scope field folds {:?}: ",
            self.table, self.column, self.collation, self.has
        )?;
        match self.needs {
            Some(needs) => {
                let attribute = if needs == Fold::CASE { "case" } else { "ci_ai" };
                write!(
                    f,
                    "add `#[cache(fold = \"{attribute}\")]` to the field (or use a binary collation)"
                )
            }
            None => write!(f, "no fold equates them; use a binary collation"),
        }
    }
}

/// The finest named fold that equates every pair in `equal`.
fn needed(equal: &[(&str, &str)]) -> Option<Fold> {
    [Fold::EXACT, Fold::CASE, Fold::CI_AI]
        .into_iter()
        .find(|fold| equal.iter().all(|(a, b)| fold.text(a) == fold.text(b)))
}

/// Whether a name read from the catalog can be spliced into SQL as it is.
fn plain_name(name: &str) -> bool {
    !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// The probe query for one column (one result column per [`PROBES`] pair, true when the
/// column's collation equates the pair) and its parameters.
fn probe(backend: DbBackend, charset: &str, collation: &str) -> Option<Statement> {
    let mut values: Vec<Value> = Vec::new();
    let mut select = Vec::new();
    match backend {
        DbBackend::MySql => {
            // The column's character set may lack a character (`ł` in latin1 becomes `?`):
            // such a pair is not asked, only the ones that survive the round trip.
            if !plain_name(charset) || !plain_name(collation) {
                return None;
            }
            let fits = format!("HEX(CONVERT(CONVERT(? USING {charset}) USING utf8mb4)) = HEX(?)");
            for (a, b) in PROBES {
                select.push(format!(
                    "CAST(CASE WHEN {fits} AND {fits} THEN CONVERT(? USING {charset}) = \
                     CONVERT(? USING {charset}) COLLATE {collation} ELSE 0 END AS SIGNED)"
                ));
                for v in [a, a, b, b, a, b] {
                    values.push((*v).into());
                }
            }
        }
        DbBackend::Postgres => {
            // `charset` is the column's type (`citext`, `text`, ...), `collation` its
            // collation, both rendered as SQL by PostgreSQL itself.
            for (i, (a, b)) in PROBES.iter().enumerate() {
                select.push(format!(
                    "CAST(${} AS {charset}) COLLATE {collation} = CAST(${} AS {charset})",
                    2 * i + 1,
                    2 * i + 2
                ));
                values.push((*a).into());
                values.push((*b).into());
            }
        }
        _ => return None,
    }
    Some(Statement::from_sql_and_values(
        backend,
        format!("SELECT {}", select.join(", ")),
        values,
    ))
}

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
    let backend = db.get_database_backend();
    // Per column: its name, what the probe converts to (MySQL: the character set;
    // PostgreSQL: the type) and its collation. Columns without one (numbers, binary
    // strings) compare exactly.
    let query = match backend {
        DbBackend::MySql => {
            "SELECT COLUMN_NAME, CHARACTER_SET_NAME, COLLATION_NAME FROM information_schema.COLUMNS \
             WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = ? AND COLLATION_NAME IS NOT NULL"
        }
        DbBackend::Postgres => {
            "SELECT a.attname::text, format_type(a.atttypid, NULL), \
             quote_ident(n.nspname) || '.' || quote_ident(co.collname) \
             FROM pg_attribute a \
             JOIN pg_collation co ON co.oid = a.attcollation \
             JOIN pg_namespace n ON n.oid = co.collnamespace \
             WHERE a.attrelid = to_regclass(quote_ident(current_schema()) || '.' || quote_ident($1)) \
             AND a.attnum > 0 AND NOT a.attisdropped"
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
            let charset: String = row.try_get_by_index(1)?;
            let collation: String = row.try_get_by_index(2)?;
            let Some(scoped) = spec
                .scopes()
                .iter()
                .flat_map(|s| s.columns())
                .find(|c| c.name() == column)
            else {
                continue;
            };
            let Some(statement) = probe(backend, &charset, &collation) else {
                tracing::warn!(
                    table = spec.table(),
                    column,
                    collation,
                    "unusual collation name: not probed"
                );
                continue;
            };
            let Some(answers) = db.query_one_raw(statement).await? else {
                continue;
            };
            let mut equal = Vec::new();
            for (i, pair) in PROBES.iter().enumerate() {
                let same = match backend {
                    DbBackend::MySql => answers.try_get_by_index::<i64>(i)? != 0,
                    _ => answers.try_get_by_index::<bool>(i)?,
                };
                if same {
                    equal.push(*pair);
                }
            }
            let has = scoped.fold();
            let pairs: Vec<(String, String)> = equal
                .iter()
                .filter(|(a, b)| has.text(a) != has.text(b))
                .map(|(a, b)| ((*a).to_owned(), (*b).to_owned()))
                .collect();
            if pairs.is_empty() {
                continue;
            }
            let collation = match backend {
                DbBackend::Postgres => format!("{charset} COLLATE {collation}"),
                _ => collation,
            };
            issues.push(CollationIssue {
                entity: spec.entity().to_owned(),
                table: spec.table().to_owned(),
                column,
                collation,
                pairs,
                needs: needed(&equal),
                has,
            });
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
    fn needs_is_the_finest_fold_that_equates_the_pairs() {
        assert_eq!(needed(&[]), Some(Fold::EXACT));
        assert_eq!(needed(&[("a", "A")]), Some(Fold::CASE));
        assert_eq!(needed(&[("a", "A"), ("é", "e")]), Some(Fold::CI_AI));
        assert_eq!(needed(&[("a", "b")]), None);
        assert!(plain_name("utf8mb4_general_ci"));
        assert!(!plain_name("x; DROP TABLE y"));
    }
}
