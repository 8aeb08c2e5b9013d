//! Dependencies derived from a cached query's own `WHERE`, for selects on one table.
//!
//! Neither SeaORM nor Diesel hands a query's filter back, but both render deterministic SQL
//! with its bound values. [`derive()`] reads that SQL back (a small parser for the subset the
//! ORMs generate: qualified columns, `=`, `IN (..)`, `= ANY($n)`, `IS NULL`, `AND`, `OR`,
//! parentheses, `ORDER BY` columns, `LIMIT` / `OFFSET`), normalises the filter to at most
//! [`MAX_TERMS`] conjunctions, and gives each conjunction the narrowest dependencies that are
//! correct by construction:
//!
//! - **primary keys**: a conjunction that lists the values of every key column (`id = $1`,
//!   `id IN ($1, $2)`, `id = ANY($1)`) reads no row outside those keys, whatever else it
//!   filters, orders or limits by: it depends on each listed key ([`Dependency::PrimaryKey`],
//!   which every write to that row invalidates, an insert of a missing one included) and on
//!   the entity's `all` (bulk writes);
//! - **a declared scope**: a conjunction whose predicates are all equalities (or `IN` lists,
//!   or `IS NULL`) on the fields of one `#[scope(..)]` that [`Scope::condition`](crate::Scope::condition) would serve,
//!   in a query ordered only by that scope's fields or the key, depends on those conditions
//!   and `all`, exactly as `.scoped(&condition)` would;
//! - **a tracked column** ([`TableSpec::tracked`], a model's foreign keys): every recorded
//!   change of a row, one that changes no watched column included, invalidates the
//!   single-field conditions of its tracked columns' old and new values. A conjunction
//!   holding an equality (or `IN` list, `= ANY`, `IS NULL`) on a tracked column reads no row
//!   outside those values, whatever else it filters, orders or limits by, so it depends on
//!   those conditions and `all` (bulk writes). Text values are refused (a collation may
//!   equate values the cache tells apart);
//! - a disjunction is the union of its terms, when every term is one of the above.
//!
//! Everything else — any construct the parser does not know (ranges, `LIKE`, `NOT`,
//! functions, casts, joins, subqueries, grouping), a column outside the scope, a bound value
//! whose type cannot be shown to equal the field's [`ToValue`](crate::ToValue), a text
//! primary key (a collation may equate other keys) — gives the whole query the coarse
//! dependencies ([`Dependency::any_change`] and [`Dependency::invalidate_all`]), never
//! nothing. [`Derivation::basis`] says which rule applied, or why none did.
//!
//! ```
//! use matroska_core::derived::{Bound, Dialect, derive};
//! use matroska_core::{ColumnDecoder, Dependency, TableSpec, Value};
//!
//! let spec = TableSpec::new("posts", "posts")
//!     .key("id", ColumnDecoder::of::<i32>())
//!     .scope(&[("published", ColumnDecoder::of::<bool>()), ("category", ColumnDecoder::of::<String>())], false);
//! let by_ids = derive(
//!     &spec,
//!     Dialect::Postgres,
//!     r#"SELECT "posts"."id" FROM "posts" WHERE "posts"."id" = ANY($1) ORDER BY "posts"."title""#,
//!     &[Bound::List(vec![Value::Int(1), Value::Int(2)])],
//! );
//! assert!(by_ids.dependencies.contains(&Dependency::primary_key("posts", [2])));
//! assert!(!by_ids.dependencies.contains(&Dependency::any_change("posts")));
//!
//! let by_title = derive(
//!     &spec,
//!     Dialect::Sqlite,
//!     r#"SELECT "posts"."id" FROM "posts" WHERE "posts"."title" LIKE ?"#,
//!     &[Bound::Scalar(Value::from("A%"))],
//! );
//! assert!(by_title.is_coarse());
//! assert!(by_title.dependencies.contains(&Dependency::any_change("posts")));
//! ```

mod sql;

use std::collections::BTreeSet;
use std::fmt;

pub use sql::{MAX_CONJUNCTS, MAX_LIST, MAX_TERMS};

use crate::dependency::Dependency;
use crate::scope::MAX_SUBSET_FIELDS;
use crate::table::{ColumnSpec, TableSpec};
use crate::value::Value;
use sql::{Operand, Predicate};

/// At most this many dependencies (keys or conditions) derived for one query; past it,
/// coarse: a put with very many dependencies costs more than the invalidations it saves.
pub const MAX_DERIVED: usize = 256;

/// The SQL dialect a statement was rendered for: its identifier quote and parameter style.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Dialect {
    /// `"ident"`, `$1`.
    Postgres,
    /// `` `ident` ``, `?` (`"..."` is a string).
    MySql,
    /// `"ident"` or `` `ident` ``, `?`.
    Sqlite,
}

/// A statement's bound value, as the ORM integration could read it.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Bound {
    /// A scalar, as [`ToValue`](crate::ToValue) renders it. (Not named `Value`: a second
    /// public `Value` in the crate graph makes rustc print `ToValue`'s implementers with
    /// full paths, which changes the derive's compile-fail messages.)
    Scalar(Value),
    /// An array (PostgreSQL's `= ANY($1)`).
    List(Vec<Value>),
    /// A value the integration cannot read: any predicate using it is coarse.
    Unknown,
}

/// The dependencies a cached query gets, and why.
#[derive(Debug, Clone, PartialEq)]
pub struct Derivation {
    /// The dependencies beside those of the rows returned (their primary keys, which every
    /// cached query adds).
    pub dependencies: Vec<Dependency>,
    /// Which rule gave them.
    pub basis: Basis,
}

/// Which rule gave a [`Derivation`] its dependencies.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Basis {
    /// Derived from the `WHERE`: one rule per term of its normalised disjunction.
    Derived(Vec<Term>),
    /// Every write to the entity: the reason no narrower dependency is correct.
    Coarse(String),
    /// The scope conditions the query was given (`.scoped(&condition)`), not read from it.
    Declared,
}

/// How one term (conjunction) of a filter was derived.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Term {
    /// It lists this many primary keys.
    PrimaryKeys(usize),
    /// It is this many conditions over these fields of a declared scope.
    Scope {
        /// The condition's fields.
        fields: Vec<String>,
        /// How many conditions (one per combination of `IN` values).
        conditions: usize,
    },
    /// It requires this tracked column to hold one of this many values.
    Tracked {
        /// The tracked column.
        column: String,
        /// How many single-field conditions (one per value).
        conditions: usize,
    },
    /// It can match no row (`IN ()`, `1 = 0`): it depends on nothing.
    Empty,
}

impl Derivation {
    /// Whether the query depends on every write to its entity.
    pub fn is_coarse(&self) -> bool {
        matches!(self.basis, Basis::Coarse(_))
    }

    /// Every write to `entity` ([`Dependency::any_change`] and [`Dependency::invalidate_all`]),
    /// for `reason`.
    pub fn coarse(entity: &str, reason: impl Into<String>) -> Self {
        Derivation {
            dependencies: vec![
                Dependency::any_change(entity),
                Dependency::invalidate_all(entity),
            ],
            basis: Basis::Coarse(reason.into()),
        }
    }
}

impl fmt::Display for Derivation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.basis {
            Basis::Coarse(reason) => write!(f, "coarse (every write to the entity): {reason}"),
            Basis::Declared => f.write_str("declared: the `.scoped` conditions"),
            Basis::Derived(terms) => {
                f.write_str("derived:")?;
                for (i, term) in terms.iter().enumerate() {
                    f.write_str(if i == 0 { " " } else { " OR " })?;
                    match term {
                        Term::PrimaryKeys(n) => write!(f, "{n} primary key(s)")?,
                        Term::Scope { fields, conditions } => write!(
                            f,
                            "{conditions} scope condition(s) on ({})",
                            fields.join(", ")
                        )?,
                        Term::Tracked { column, conditions } => {
                            write!(f, "{conditions} condition(s) on tracked column `{column}`")?
                        }
                        Term::Empty => f.write_str("no row")?,
                    }
                }
                Ok(())
            }
        }
    }
}

/// The dependencies of the select `sql` (rendered for `dialect`, with `binds` its bound
/// values in order) on `spec`'s table; see the [module docs](self).
pub fn derive(spec: &TableSpec, dialect: Dialect, sql: &str, binds: &[Bound]) -> Derivation {
    let entity = spec.entity();
    let select = match sql::parse(sql, dialect, binds) {
        Ok(select) => select,
        Err(sql::Unsupported(reason)) => return Derivation::coarse(entity, reason),
    };
    if select.table != spec.table() {
        return Derivation::coarse(
            entity,
            format!("the query reads `{}`, not `{}`", select.table, spec.table()),
        );
    }
    let Some(filter) = select.filter else {
        return Derivation::coarse(entity, "no `WHERE`: every row can enter");
    };
    let mut dependencies = BTreeSet::new();
    let mut terms = Vec::new();
    for conjunction in &filter {
        match derive_term(
            spec,
            conjunction,
            &select.order_by,
            binds,
            &mut dependencies,
        ) {
            Ok(term) => terms.push(term),
            Err(reason) => return Derivation::coarse(entity, reason),
        }
        if dependencies.len() > MAX_DERIVED {
            return Derivation::coarse(
                entity,
                format!("more than {MAX_DERIVED} derived dependencies"),
            );
        }
    }
    // Even a filter that can match no row keeps `all`: bulk writes and the coarse paths of
    // the relay still reach it.
    dependencies.insert(Dependency::invalidate_all(entity));
    Derivation {
        dependencies: dependencies.into_iter().collect(),
        basis: Basis::Derived(terms),
    }
}

/// The values a predicate allows, each checked against `column`'s type.
fn values(
    column: &ColumnSpec,
    predicate: &Predicate,
    binds: &[Bound],
) -> Result<Vec<Value>, String> {
    let name = column.name();
    let raw: Vec<Value> = match predicate {
        Predicate::IsNull { .. } => vec![Value::Null],
        Predicate::Any { param, .. } => match binds.get(*param) {
            Some(Bound::List(values)) if values.len() > MAX_LIST => {
                return Err(format!("`{name} = ANY(..)` of more than {MAX_LIST} values"));
            }
            Some(Bound::List(values)) => values.clone(),
            _ => return Err(format!("`{name} = ANY(..)` of a value that is not a list")),
        },
        Predicate::In { values, .. } => values
            .iter()
            .map(|v| match v {
                Operand::Int(i) => Ok(Value::Int(*i)),
                Operand::Param(i) => match binds.get(*i) {
                    Some(Bound::Scalar(v)) => Ok(v.clone()),
                    Some(Bound::List(_)) => Err(format!("`{name}` compared to a list")),
                    Some(Bound::Unknown) => Err(format!(
                        "`{name}` compared to a value of an unreadable type"
                    )),
                    None => Err(format!("`{name}` compared to a missing parameter")),
                },
            })
            .collect::<Result<_, _>>()?,
    };
    if column.decoder().is_untyped() {
        return Err(format!(
            "`{name}`'s field type has no `FromDbJson`: its values cannot be checked"
        ));
    }
    for value in &raw {
        if !same_type(column, value) {
            return Err(format!(
                "`{name}` compared to {value}, which its field's type does not render so"
            ));
        }
    }
    Ok(raw)
}

/// Whether `value` is exactly what the column's decoder makes of it: a value the database
/// compares otherwise than the cache would (a number against a text column, `'5'` against an
/// integer one) fails, since the relay decodes written rows with this decoder.
fn same_type(column: &ColumnSpec, value: &Value) -> bool {
    let json = match value {
        Value::Null => serde_json::Value::Null,
        Value::Bool(b) => serde_json::Value::Bool(*b),
        Value::Int(i) => match i64::try_from(*i) {
            Ok(i) => serde_json::Value::from(i),
            Err(_) => match u64::try_from(*i) {
                Ok(u) => serde_json::Value::from(u),
                Err(_) => return false,
            },
        },
        Value::Str(s) => serde_json::Value::String(s.clone()),
        Value::Typed { repr, .. } => serde_json::Value::String(repr.clone()),
        // Floats compare inexactly; bytes are recorded as hex objects.
        Value::Float(_) | Value::Bytes(_) => return false,
    };
    column.decoder().decode(&json).ok().as_ref() == Some(value)
}

fn derive_term(
    spec: &TableSpec,
    conjunction: &[Predicate],
    order_by: &[String],
    binds: &[Bound],
    out: &mut BTreeSet<Dependency>,
) -> Result<Term, String> {
    if conjunction.is_empty() {
        return Err("a term that filters nothing (every row can enter)".to_owned());
    }
    let entity = spec.entity();
    // One predicate per column: a row matching the conjunction matches each of its
    // predicates, so dependencies of any one of a column's predicates cover it.
    let first = |name: &str| conjunction.iter().find(|p| p.column() == name);

    // Primary keys: every key column listed.
    let key = spec.key_columns();
    let key_predicates: Option<Vec<&Predicate>> = if key.is_empty() {
        None
    } else {
        key.iter().map(|c| first(c.name())).collect()
    };
    if let Some(predicates) = key_predicates {
        let mut combos: Vec<Vec<Value>> = vec![Vec::new()];
        for (column, predicate) in key.iter().zip(predicates) {
            let values = values(column, predicate, binds)?;
            if values
                .iter()
                .any(|v| matches!(v, Value::Str(_) | Value::Null))
            {
                return Err(format!(
                    "`{}` is a text (or null) key: a collation may equate keys the cache tells apart",
                    column.name()
                ));
            }
            combos = cross(&combos, &values)?;
        }
        if combos.is_empty() {
            return Ok(Term::Empty);
        }
        let n = combos.len();
        out.extend(
            combos
                .into_iter()
                .map(|k| Dependency::primary_key(entity, k)),
        );
        return Ok(Term::PrimaryKeys(n));
    }

    match scope_term(spec, conjunction, order_by, binds, out) {
        Ok(term) => Ok(term),
        // Not a scope's: a tracked column may still bound the rows it can read.
        Err(reason) => match tracked_term(spec, conjunction, binds, out) {
            Some(Ok(term)) => Ok(term),
            Some(Err(tracked)) => Err(format!("{reason}; {tracked}")),
            None => Err(reason),
        },
    }
}

/// A declared scope: every predicate on its fields, the order by its fields or the key.
fn scope_term(
    spec: &TableSpec,
    conjunction: &[Predicate],
    order_by: &[String],
    binds: &[Bound],
    out: &mut BTreeSet<Dependency>,
) -> Result<Term, String> {
    let entity = spec.entity();
    let key = spec.key_columns();
    let first = |name: &str| conjunction.iter().find(|p| p.column() == name);
    let columns: BTreeSet<&str> = conjunction.iter().map(Predicate::column).collect();
    let scope = spec
        .scopes()
        .iter()
        .filter(|s| !s.is_guarded() && s.watched().is_empty())
        .find(|s| {
            let own: BTreeSet<&str> = s.columns().iter().map(ColumnSpec::name).collect();
            if own.len() > MAX_SUBSET_FIELDS {
                own == columns
            } else {
                columns.is_subset(&own)
            }
        })
        .ok_or_else(|| {
            format!(
                "no declared scope covers the filtered columns ({}): a write to an unwatched \
                 column could move a row into the result unseen",
                columns.iter().copied().collect::<Vec<_>>().join(", ")
            )
        })?;
    for column in order_by {
        let watched = scope.columns().iter().any(|c| c.name() == column)
            || key.iter().any(|c| c.name() == column);
        if !watched {
            return Err(format!(
                "ordered by `{column}`, which the scope does not watch"
            ));
        }
    }
    let mut conditions: Vec<Vec<Value>> = vec![Vec::new()];
    let mut fields = Vec::new();
    for column in scope.columns() {
        let Some(predicate) = first(column.name()) else {
            continue;
        };
        let values: Vec<Value> = values(column, predicate, binds)?
            .into_iter()
            .map(|v| column.fold().apply(v))
            .collect();
        conditions = cross(&conditions, &values)?;
        fields.push(column.name().to_owned());
    }
    if conditions.is_empty() {
        return Ok(Term::Empty);
    }
    let n = conditions.len();
    for values in conditions {
        out.insert(Dependency::condition(
            entity,
            fields.iter().cloned().zip(values),
        ));
    }
    Ok(Term::Scope {
        fields,
        conditions: n,
    })
}

/// A tracked column's predicate: the conditions of its values. `None` when the conjunction
/// constrains no tracked column; an error when every one it constrains is refused (text or
/// unreadable values).
///
/// Correct whatever the other predicates, the order and the limit: a row outside the
/// column's values never matches the conjunction, and every recorded change of a row inside
/// them (before or after the change) invalidates its value's condition
/// ([`TableSpec::dependencies`]), so a write that can change the answer reaches the entry.
fn tracked_term(
    spec: &TableSpec,
    conjunction: &[Predicate],
    binds: &[Bound],
    out: &mut BTreeSet<Dependency>,
) -> Option<Result<Term, String>> {
    let mut best: Option<(&ColumnSpec, Vec<Value>)> = None;
    let mut refused = None;
    for column in spec.tracked_columns() {
        // Every predicate on the column bounds the rows; the one with fewest values is kept.
        for predicate in conjunction.iter().filter(|p| p.column() == column.name()) {
            let values = match values(column, predicate, binds) {
                Ok(values) => values,
                Err(reason) => {
                    refused.get_or_insert(reason);
                    continue;
                }
            };
            if values.iter().any(|v| matches!(v, Value::Str(_))) {
                refused.get_or_insert(format!(
                    "`{}` is a text tracked column: a collation may equate values the cache \
                     tells apart",
                    column.name()
                ));
                continue;
            }
            let mut distinct: Vec<Value> = Vec::new();
            for v in values {
                if !distinct.contains(&v) {
                    distinct.push(v);
                }
            }
            if best.as_ref().is_none_or(|(_, b)| distinct.len() < b.len()) {
                best = Some((column, distinct));
            }
        }
    }
    let Some((column, values)) = best else {
        return refused.map(Err);
    };
    if values.is_empty() {
        return Some(Ok(Term::Empty));
    }
    if values.len() > MAX_DERIVED {
        return Some(Err(format!("more than {MAX_DERIVED} derived dependencies")));
    }
    let n = values.len();
    for value in values {
        out.insert(Dependency::condition(
            spec.entity(),
            [(column.name().to_owned(), value)],
        ));
    }
    Some(Ok(Term::Tracked {
        column: column.name().to_owned(),
        conditions: n,
    }))
}

/// Every combination of `prefixes` with one of `values`, bounded by [`MAX_DERIVED`].
fn cross(prefixes: &[Vec<Value>], values: &[Value]) -> Result<Vec<Vec<Value>>, String> {
    let mut distinct: Vec<&Value> = Vec::new();
    for v in values {
        if !distinct.contains(&v) {
            distinct.push(v);
        }
    }
    if prefixes.len().saturating_mul(distinct.len()) > MAX_DERIVED {
        return Err(format!("more than {MAX_DERIVED} derived dependencies"));
    }
    Ok(prefixes
        .iter()
        .flat_map(|p| {
            distinct.iter().map(move |v| {
                let mut next = p.clone();
                next.push((*v).clone());
                next
            })
        })
        .collect())
}

#[cfg(test)]
mod tests;
