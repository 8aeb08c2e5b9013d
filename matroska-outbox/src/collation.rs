//! Scope columns whose collation compares more loosely than their field's fold, found by
//! asking the database itself; and the check every invalidating process runs by itself.
//!
//! MariaDB's and MySQL's default collations (and PostgreSQL's `citext`, nondeterministic ICU
//! collations) compare `"Fantasy"` and `"fantasy "` as equal: a list cached for
//! `category = "Fantasy"` then holds the rows stored as `"fantasy"`, and unless the scope
//! field folds its values the same way (`#[cache(fold = "ci_ai")]`), saving such a row
//! invalidates another condition and the list stays stale. [`check_collations`] asks the
//! database, under each scope column's own collation, whether it equates a fixed list of
//! tricky pairs ([`PROBES`]); a pair it equates but the field's fold tells apart is an issue.
//!
//! Nobody has to remember to call it: [`ensure_collations_checked`] runs it once per process
//! and table before the first invalidation that computes conditions from the table's rows
//! (the relay at start, the SeaORM hooks and bulk helpers, Diesel's `invalidate`), in
//! production semantics: an issue is logged at `warn` level and its column marked coarse
//! ([`matroska_core::fold::mark_coarse`]), so every write through it invalidates all of its
//! entity's lists — never stale. Call [`check_collations`] in development mode (a test, a
//! start-up check) to turn issues into errors instead. On SQLite the collations are read from
//! the `CREATE TABLE` text (`COLLATE NOCASE`, `RTRIM`, or the application's own).
//!
//! Every query here goes through [`SqlConnection::query_pairs`] as text, reads only the
//! catalogue and literals, and is built not to fail (a domain column is probed through its
//! base type), so it is safe on a connection inside the caller's transaction.

use std::collections::HashSet;
use std::sync::{LazyLock, Mutex, PoisonError};

use matroska_core::{Fold, ScopeMode, TableSpec};

use crate::db::SqlConnection;
use crate::ddl::{Dialect, literal};
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
    ("a\u{A0}", "a"),
    ("a\u{200B}b", "ab"),
    ("a\u{AD}b", "ab"),
    ("a\u{1}b", "ab"),
    ("ς", "σ"),
];

/// A scope column whose collation compares more loosely than the field's fold.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct CollationIssue {
    /// The entity (scope) name.
    pub entity: String,
    /// The table.
    pub table: String,
    /// The column, as its scope field spells it (MySQL's column names ignore case).
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
        if self.pairs.is_empty() {
            return write!(
                f,
                "{}.{} ({}) cannot be probed on a server encoding other than UTF-8 (its \
                 comparison may equate characters the probes cannot be written in): writes \
                 through it invalidate all of its entity's lists",
                self.table, self.column, self.collation
            );
        }
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

/// The query of `table`'s columns that have a collation: rows of (`name`: the column, what a
/// probe converts to (MySQL: the character set; PostgreSQL: the type, a domain's base type,
/// string types only, so that a probe's cast cannot fail) and the collation, separated by
/// newlines; `n` = 0); on SQLite the table's `CREATE TABLE` text ([`sqlite_collations`]).
fn columns_sql(dialect: Dialect, table: &str) -> Option<String> {
    let table = literal(dialect, table);
    match dialect {
        Dialect::MySql => Some(format!(
            "SELECT CONCAT(COLUMN_NAME, CHAR(10), CHARACTER_SET_NAME, CHAR(10), COLLATION_NAME) \
             AS name, CAST(0 AS SIGNED) AS n FROM information_schema.COLUMNS \
             WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = {table} \
             AND COLLATION_NAME IS NOT NULL"
        )),
        // The type a probe casts to is the column's base type, through any number of
        // domains (a domain's CHECK could reject a probe and abort the caller's
        // transaction); the fourth line says whether the server encoding can hold every
        // probe (`utf8`), whether the type compares as the built-in string types do
        // (`std`), and whether the collation is deterministic (read through `to_jsonb`:
        // no error on a server older than the column).
        Dialect::Postgres => Some(format!(
            "SELECT a.attname::text || chr(10) || format_type(bt.oid, NULL) \
             || chr(10) || quote_ident(ns.nspname) || '.' || quote_ident(co.collname) \
             || chr(10) || CASE WHEN current_setting('server_encoding') = 'UTF8' \
             THEN 'utf8' ELSE 'other' END \
             || ':' || CASE WHEN bt.typname IN ('text', 'varchar', 'bpchar', 'name') \
             THEN 'std' ELSE 'ext' END \
             || ':' || coalesce(to_jsonb(co) ->> 'collisdeterministic', 'true') AS name, \
             0::bigint AS n \
             FROM pg_attribute a \
             JOIN LATERAL (WITH RECURSIVE b(o, depth) AS (SELECT a.atttypid, 0 \
             UNION ALL SELECT t.typbasetype, b.depth + 1 FROM pg_type t JOIN b ON t.oid = b.o \
             WHERE t.typtype = 'd' AND b.depth < 32) \
             SELECT t.oid, t.typname, t.typcategory FROM b JOIN pg_type t ON t.oid = b.o \
             ORDER BY b.depth DESC LIMIT 1) bt ON true \
             JOIN pg_collation co ON co.oid = a.attcollation \
             JOIN pg_namespace ns ON ns.oid = co.collnamespace \
             WHERE a.attrelid = to_regclass(quote_ident({table})) \
             AND a.attnum > 0 AND NOT a.attisdropped AND bt.typcategory = 'S'"
        )),
        // The `CREATE TABLE` text: SQLite keeps no column collation anywhere else.
        Dialect::Sqlite => Some(format!(
            "SELECT sql AS name, 0 AS n FROM sqlite_master WHERE type = 'table' AND name = {table}"
        )),
    }
}

/// SQLite: the columns of a `CREATE TABLE` statement declared with a `COLLATE` other than
/// `BINARY`, with that collation. Read leniently: a `COLLATE` anywhere in a column's
/// definition counts (one inside a `CHECK` only costs a probe), table constraints are skipped.
fn sqlite_collations(create: &str) -> Vec<(String, String)> {
    let Some(open) = create.find('(') else {
        return Vec::new();
    };
    // Split the definitions at top-level commas, outside quotes and parentheses.
    let mut defs = Vec::new();
    let (mut depth, mut quote, mut start) = (0_i32, None::<char>, open + 1);
    for (i, c) in create.char_indices().skip_while(|&(i, _)| i <= open) {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), _) => {}
            (None, '\'' | '"' | '`') => quote = Some(c),
            (None, '[') => quote = Some(']'),
            (None, '(') => depth += 1,
            (None, ')') if depth == 0 => {
                defs.push(&create[start..i]);
                break;
            }
            (None, ')') => depth -= 1,
            (None, ',') if depth == 0 => {
                defs.push(&create[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    let unquote = |word: &str| {
        let w = word.trim();
        let inner = w
            .strip_prefix('"')
            .and_then(|w| w.strip_suffix('"'))
            .or_else(|| w.strip_prefix('`').and_then(|w| w.strip_suffix('`')))
            .or_else(|| w.strip_prefix('[').and_then(|w| w.strip_suffix(']')));
        inner.map_or_else(|| w.to_owned(), |i| i.replace("\"\"", "\""))
    };
    let mut out = Vec::new();
    for def in defs {
        let def = def.trim();
        let upper = def.to_ascii_uppercase();
        if ["CONSTRAINT", "PRIMARY", "UNIQUE", "CHECK", "FOREIGN"]
            .iter()
            .any(|k| upper.starts_with(k))
        {
            continue;
        }
        // The name: a quoted identifier, or the first word.
        let name_end = match def.chars().next() {
            Some(q @ ('"' | '`' | '[')) => {
                let close = if q == '[' { ']' } else { q };
                def[1..].find(close).map_or(def.len(), |e| e + 2)
            }
            _ => def.find(char::is_whitespace).unwrap_or(def.len()),
        };
        let Some(at) = keyword_outside_quotes(def, "COLLATE") else {
            continue;
        };
        let collation = def[at + "COLLATE".len()..]
            .split(|c: char| c.is_whitespace() || c == ',' || c == ')')
            .find(|w| !w.is_empty())
            .map(unquote)
            .unwrap_or_default();
        if !collation.is_empty() && !collation.eq_ignore_ascii_case("BINARY") {
            out.push((unquote(&def[..name_end]), collation));
        }
    }
    out
}

/// Where the word `keyword` (upper case) starts in `text`, outside quotes.
fn keyword_outside_quotes(text: &str, keyword: &str) -> Option<usize> {
    let word = |c: char| c.is_ascii_alphanumeric() || c == '_';
    let mut quote = None::<char>;
    let mut before = ' ';
    for (i, c) in text.char_indices() {
        match quote {
            Some(q) if c == q => quote = None,
            Some(_) => {}
            None if matches!(c, '\'' | '"' | '`') => quote = Some(c),
            None if c == '[' => quote = Some(']'),
            None if !word(before)
                && text[i..]
                    .get(..keyword.len())
                    .is_some_and(|w| w.eq_ignore_ascii_case(keyword))
                && !text[i + keyword.len()..].starts_with(word) =>
            {
                return Some(i);
            }
            None => {}
        }
        before = c;
    }
    None
}

/// Which probes a column can be asked about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Probes {
    /// Every pair of [`PROBES`].
    All,
    /// Only the pairs written in ASCII (PostgreSQL on a server encoding other than UTF-8,
    /// where the other probes cannot be written: a standard string type under a
    /// deterministic collation, which equates nothing else anyway).
    Ascii,
    /// None that would clear it (a server encoding other than UTF-8, with a nondeterministic
    /// collation or a type of its own such as `citext`): reported as an issue, coarse.
    Unclearable,
}

/// A column with a collation, as the catalogue describes it.
#[derive(Debug)]
struct CollatedColumn {
    name: String,
    /// What a probe converts to: MySQL the character set, PostgreSQL the base type.
    charset: String,
    collation: String,
    probes: Probes,
}

/// `table`'s columns with a collation.
async fn column_collations(
    conn: &(impl SqlConnection + ?Sized),
    table: &str,
) -> Result<Vec<CollatedColumn>> {
    let dialect = conn.dialect();
    let Some(sql) = columns_sql(dialect, table) else {
        return Ok(Vec::new());
    };
    let rows = conn.query_pairs(&sql).await?;
    Ok(match dialect {
        Dialect::Sqlite => rows
            .iter()
            .flat_map(|(create, _)| sqlite_collations(create))
            .map(|(name, collation)| CollatedColumn {
                name,
                charset: String::new(),
                collation,
                probes: Probes::All,
            })
            .collect(),
        _ => rows
            .into_iter()
            .filter_map(|(described, _)| {
                let mut parts = described.splitn(4, '\n');
                let (name, charset, collation) = (parts.next()?, parts.next()?, parts.next()?);
                let probes = match parts.next() {
                    // MySQL: no fourth line; a probe converts to the column's character set.
                    None => Probes::All,
                    Some(flags) => {
                        let mut f = flags.split(':');
                        let utf8 = f.next() == Some("utf8");
                        let standard = f.next() == Some("std");
                        let deterministic = f.next() != Some("false");
                        match (utf8, standard && deterministic) {
                            (true, _) => Probes::All,
                            (false, true) => Probes::Ascii,
                            (false, false) => Probes::Unclearable,
                        }
                    }
                };
                Some(CollatedColumn {
                    name: name.to_owned(),
                    charset: charset.to_owned(),
                    collation: collation.to_owned(),
                    probes,
                })
            })
            .collect(),
    })
}

/// The probe query for one column: a row per [`PROBES`] pair (`name`: its index, `n`: 1 when
/// the column's collation equates the pair). `None` for names that cannot be spliced.
fn probe_sql(dialect: Dialect, charset: &str, collation: &str, probes: Probes) -> Option<String> {
    let asked = |(a, b): &(&str, &str)| probes != Probes::Ascii || (a.is_ascii() && b.is_ascii());
    let rows: Vec<String> = match dialect {
        Dialect::MySql => {
            // The column's character set may lack a character (`ł` in latin1 becomes `?`):
            // such a pair answers 0, only the ones that survive the round trip are compared.
            if !plain_name(charset) || !plain_name(collation) {
                return None;
            }
            let text = |s: &str| format!("_utf8mb4{}", literal(dialect, s));
            let fits = |s: &str| {
                format!(
                    "HEX(CONVERT(CONVERT({v} USING {charset}) USING utf8mb4)) = HEX({v})",
                    v = text(s)
                )
            };
            PROBES
                .iter()
                .enumerate()
                .filter(|(_, pair)| asked(pair))
                .map(|(i, (a, b))| {
                    format!(
                        "SELECT '{i}' AS name, CAST(CASE WHEN {} AND {} THEN \
                         CONVERT({} USING {charset}) = CONVERT({} USING {charset}) COLLATE \
                         {collation} ELSE 0 END AS SIGNED) AS n",
                        fits(a),
                        fits(b),
                        text(a),
                        text(b)
                    )
                })
                .collect()
        }
        Dialect::Postgres => {
            // `charset` is the column's type and `collation` its quoted collation, both
            // rendered by PostgreSQL itself.
            PROBES
                .iter()
                .enumerate()
                .filter(|(_, pair)| asked(pair))
                .map(|(i, (a, b))| {
                    format!(
                        "SELECT '{i}'::text AS name, (CAST({} AS {charset}) COLLATE {collation} \
                         = CAST({} AS {charset}))::int::bigint AS n",
                        literal(dialect, a),
                        literal(dialect, b)
                    )
                })
                .collect()
        }
        Dialect::Sqlite => {
            // Built-in collations (NOCASE, RTRIM) and the application's own: a collation this
            // connection does not know fails the probe, and the check goes coarse.
            if !plain_name(collation) {
                return None;
            }
            PROBES
                .iter()
                .enumerate()
                .filter(|(_, pair)| asked(pair))
                .map(|(i, (a, b))| {
                    format!(
                        "SELECT '{i}' AS name, ({} = {} COLLATE {collation}) AS n",
                        literal(dialect, a),
                        literal(dialect, b)
                    )
                })
                .collect()
        }
    };
    Some(rows.join(" UNION ALL "))
}

/// What the check needs of a table: the entity (scope) name, the table, and the scope
/// columns with their folds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScopedTable {
    entity: String,
    table: String,
    columns: Vec<(String, Fold)>,
}

impl ScopedTable {
    /// The scope columns of `entity`'s `table`, with their folds (names that are no column
    /// of the table are skipped by the check).
    pub fn new(
        entity: impl Into<String>,
        table: impl Into<String>,
        columns: impl IntoIterator<Item = (String, Fold)>,
    ) -> Self {
        ScopedTable {
            entity: entity.into(),
            table: table.into(),
            columns: columns.into_iter().collect(),
        }
    }

    /// The scope columns of a [`TableSpec`].
    pub fn of(spec: &TableSpec) -> Self {
        Self::new(
            spec.entity(),
            spec.table(),
            spec.scopes()
                .iter()
                .flat_map(|s| s.columns())
                .map(|c| (c.name().to_owned(), c.fold())),
        )
    }

    /// The scope field `column` (a name from the catalogue) is, and its fold. MySQL's column
    /// names are case-insensitive (SeaORM's `category` reaches a column created as
    /// `Category`); the field's own spelling is the one writes look up coarse marks by.
    fn field_of(&self, dialect: Dialect, column: &str) -> Option<(&str, Fold)> {
        self.columns
            .iter()
            .find(|(name, _)| match dialect {
                Dialect::MySql => name.eq_ignore_ascii_case(column),
                _ => name == column,
            })
            .map(|(name, fold)| (name.as_str(), *fold))
    }
}

/// Finds the scope columns of `tables` whose collation equates values their field's fold
/// tells apart (see the [module docs](self)). In [`ScopeMode::Development`] any such column is
/// an error; in production each is logged at `warn` level and marked coarse
/// ([`matroska_core::fold::mark_coarse`]): every write through it then invalidates all of its
/// entity's lists. Returns the issues.
///
/// # Errors
/// [`Error::Collation`] in development mode; the database's errors.
pub async fn check_collations(
    conn: &(impl SqlConnection + ?Sized),
    tables: &[TableSpec],
    mode: ScopeMode,
) -> Result<Vec<CollationIssue>> {
    let tables: Vec<ScopedTable> = tables.iter().map(ScopedTable::of).collect();
    check_scoped_tables(conn, &tables, mode).await
}

/// [`check_collations`] for tables described by their scope columns alone.
///
/// # Errors
/// As [`check_collations`].
pub async fn check_scoped_tables(
    conn: &(impl SqlConnection + ?Sized),
    tables: &[ScopedTable],
    mode: ScopeMode,
) -> Result<Vec<CollationIssue>> {
    let dialect = conn.dialect();
    let mut issues = Vec::new();
    for spec in tables {
        for found in column_collations(conn, &spec.table).await? {
            let (charset, collation) = (found.charset.as_str(), &found.collation);
            let Some((column, has)) = spec.field_of(dialect, &found.name) else {
                continue;
            };
            if found.probes == Probes::Unclearable {
                issues.push(CollationIssue {
                    entity: spec.entity.clone(),
                    table: spec.table.clone(),
                    column: column.to_owned(),
                    collation: format!("{charset} COLLATE {collation}"),
                    pairs: Vec::new(),
                    needs: None,
                    has,
                });
                continue;
            }
            let Some(sql) = probe_sql(dialect, charset, collation, found.probes) else {
                tracing::warn!(
                    table = spec.table,
                    column,
                    collation,
                    "unusual collation name: not probed"
                );
                continue;
            };
            let answers = conn.query_pairs(&sql).await?;
            let equal: Vec<(&str, &str)> = answers
                .iter()
                .filter(|(_, same)| *same != 0)
                .filter_map(|(i, _)| PROBES.get(i.parse::<usize>().ok()?).copied())
                .collect();
            let pairs: Vec<(String, String)> = equal
                .iter()
                .filter(|(a, b)| has.text(a) != has.text(b))
                .map(|(a, b)| ((*a).to_owned(), (*b).to_owned()))
                .collect();
            if pairs.is_empty() {
                continue;
            }
            let collation = match dialect {
                Dialect::Postgres => format!("{charset} COLLATE {collation}"),
                _ => collation.to_owned(),
            };
            issues.push(CollationIssue {
                entity: spec.entity.clone(),
                table: spec.table.clone(),
                column: column.to_owned(),
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

/// Tables whose collations this process has checked (entity and table).
static CHECKED: LazyLock<Mutex<HashSet<(String, String)>>> = LazyLock::new(Mutex::default);

/// Whether `table` was checked by [`ensure_collations_checked`] in this process (a table
/// without scope columns needs no check).
pub fn collations_checked(table: &ScopedTable) -> bool {
    table.columns.is_empty()
        || CHECKED
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .contains(&(table.entity.clone(), table.table.clone()))
}

/// Runs the check for `spec` once per process (production semantics: issues are logged and
/// their columns marked coarse), before the first invalidation that computes scope
/// conditions from the table's rows; a no-op afterwards, and for a table without scope
/// columns. A check that fails (the database's error) marks every scope column of the table
/// coarse instead, with an error logged: coarse, never stale.
///
/// Concurrent first calls may both run the check; each returns only after a check finished.
pub async fn ensure_collations_checked(conn: &(impl SqlConnection + ?Sized), spec: &TableSpec) {
    ensure_scoped_table_checked(conn, &ScopedTable::of(spec)).await;
}

/// [`ensure_collations_checked`] for a table described by its scope columns alone.
pub async fn ensure_scoped_table_checked(
    conn: &(impl SqlConnection + ?Sized),
    table: &ScopedTable,
) {
    if collations_checked(table) {
        return;
    }
    if let Err(e) =
        check_scoped_tables(conn, std::slice::from_ref(table), ScopeMode::Production).await
    {
        tracing::error!(
            table = table.table,
            error = %e,
            "could not check the scope columns' collations: writes through them invalidate all \
             of the entity's lists"
        );
        for (column, _) in &table.columns {
            matroska_core::fold::mark_coarse(&table.entity, column);
        }
    }
    CHECKED
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .insert((table.entity.clone(), table.table.clone()));
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

    #[test]
    fn sqlite_collations_are_read_from_the_create_table_text() {
        let create = "CREATE TABLE \"post\" (\"id\" integer NOT NULL PRIMARY KEY, \
                      \"tag\" text NOT NULL COLLATE NOCASE, title TEXT DEFAULT 'a, COLLATE x', \
                      [note] varchar(10) collate rtrim, plain text COLLATE BINARY, \
                      `both` text CHECK (length(`both`) > 0) COLLATE \"NOCASE\", \
                      UNIQUE (tag COLLATE NOCASE))";
        assert_eq!(
            sqlite_collations(create),
            [
                ("tag".to_owned(), "NOCASE".to_owned()),
                ("note".to_owned(), "rtrim".to_owned()),
                ("both".to_owned(), "NOCASE".to_owned()),
            ]
        );
        assert!(sqlite_collations("CREATE TABLE t (a, b)").is_empty());
    }

    #[test]
    fn probes_are_one_row_per_pair_and_refuse_unusual_names() {
        let sql = probe_sql(Dialect::MySql, "utf8mb4", "utf8mb4_general_ci", Probes::All).unwrap();
        assert_eq!(sql.matches(" UNION ALL ").count(), PROBES.len() - 1);
        assert!(probe_sql(Dialect::MySql, "utf8mb4", "x'; DROP", Probes::All).is_none());
        assert!(probe_sql(Dialect::Sqlite, "", "", Probes::All).is_none());
        assert!(probe_sql(Dialect::Sqlite, "", "NOCASE", Probes::All).is_some());
        let pg = probe_sql(
            Dialect::Postgres,
            "citext",
            "pg_catalog.\"default\"",
            Probes::All,
        )
        .unwrap();
        let ascii =
            probe_sql(Dialect::Postgres, "text", "pg_catalog.\"C\"", Probes::Ascii).unwrap();
        assert!(ascii.is_ascii(), "{ascii}");
        // a/A, "a "/a and a\u{1}b/ab.
        assert_eq!(ascii.matches(" UNION ALL ").count(), 2, "{ascii}");
        assert!(
            pg.starts_with("SELECT '0'::text AS name, (CAST('a' AS citext)"),
            "{pg}"
        );
    }
}
