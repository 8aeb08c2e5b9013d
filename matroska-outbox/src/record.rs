//! One outbox row → the dependencies it invalidates.

use std::collections::{BTreeSet, HashMap};

use matroska_core::table::Row;
use matroska_core::{Dependency, RowChange, TableSpec};

use crate::db::OutboxRow;

/// What a row turned into.
#[derive(Debug)]
pub(crate) enum Reading {
    /// The row's exact dependencies.
    Exact(Vec<Dependency>),
    /// A table no registered spec describes: its whole entity, by table name.
    UnknownTable(Vec<Dependency>),
    /// An unreadable row: the whole entity's lists, and the row goes to the dead letters.
    Unreadable {
        deps: Vec<Dependency>,
        error: String,
    },
}

fn parse(text: Option<&str>) -> Result<Option<Row>, String> {
    match text {
        None => Ok(None),
        Some(text) => match serde_json::from_str(text) {
            Ok(serde_json::Value::Object(row)) => Ok(Some(row)),
            Ok(serde_json::Value::Null) => Ok(None),
            Ok(_) => Err("the recorded row is not a JSON object".into()),
            Err(e) => Err(format!("the recorded row is not JSON: {e}")),
        },
    }
}

/// Reads one row against the specs of its table (every model on the table: their
/// dependencies together). A spec in `coarse` (its table's triggers do not record all it
/// needs) yields its entity's lists for every change.
pub(crate) fn read(
    row: &OutboxRow,
    specs: &HashMap<String, Vec<TableSpec>>,
    coarse: &BTreeSet<(String, String)>,
) -> Reading {
    let Some(specs) = specs.get(&row.table).filter(|s| !s.is_empty()) else {
        return Reading::UnknownTable(TableSpec::coarse_dependencies(&row.table));
    };
    let mut deps = Vec::new();
    let mut errors = Vec::new();
    for spec in specs {
        if coarse.contains(&(spec.table().to_owned(), spec.entity().to_owned())) {
            deps.extend(TableSpec::coarse_dependencies(spec.entity()));
            deps.extend(keys(row, spec));
            continue;
        }
        match read_one(row, spec) {
            Ok(d) => deps.extend(d),
            Err(error) => {
                deps.extend(TableSpec::coarse_dependencies(spec.entity()));
                deps.extend(keys(row, spec));
                errors.push(error);
            }
        }
    }
    if errors.is_empty() {
        Reading::Exact(deps)
    } else {
        Reading::Unreadable {
            deps,
            error: errors.join("; "),
        }
    }
}

/// The primary keys of the row's sides that can be read, for a row read coarsely: the
/// entity's lists are reached through `all`, but an entry that depends on a row's key alone
/// is reached only through it. Rows of older triggers (a `K` row without a tracked column
/// added since) still record the key.
fn keys(row: &OutboxRow, spec: &TableSpec) -> Vec<Dependency> {
    [row.old_row.as_deref(), row.new_row.as_deref()]
        .into_iter()
        .filter_map(|text| parse(text).ok().flatten())
        .filter_map(|side| {
            let key = spec
                .key_columns()
                .iter()
                .map(|c| c.decoder().decode(side.get(c.name())?).ok())
                .collect::<Option<Vec<_>>>()?;
            (!key.is_empty()).then(|| Dependency::PrimaryKey {
                entity: spec.entity().to_owned(),
                key,
            })
        })
        .collect()
}

fn read_one(row: &OutboxRow, spec: &TableSpec) -> Result<Vec<Dependency>, String> {
    let old = parse(row.old_row.as_deref())?;
    let new = parse(row.new_row.as_deref())?;
    let change = match (row.op.trim(), &old, &new) {
        ("T", _, _) => return Ok(TableSpec::coarse_dependencies(spec.entity())),
        ("I", _, Some(new)) => RowChange::Insert { new },
        ("D", Some(old), _) => RowChange::Delete { old },
        ("K", _, Some(key)) => RowChange::KeyOnly { key },
        ("U", old, new) if old.is_some() || new.is_some() => RowChange::Update {
            old: old.as_ref(),
            new: new.as_ref(),
        },
        (op, _, _) => return Err(format!("operation {op:?} without the rows it needs")),
    };
    spec.dependencies(&change).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use matroska_core::ColumnDecoder;

    use super::*;

    fn specs() -> HashMap<String, Vec<TableSpec>> {
        let spec = TableSpec::new("post", "posts")
            .key("id", ColumnDecoder::of::<i64>())
            .scope(&[("category", ColumnDecoder::of::<String>())], false);
        HashMap::from([("posts".to_owned(), vec![spec])])
    }

    fn row(table: &str, op: &str, old: Option<&str>, new: Option<&str>) -> OutboxRow {
        OutboxRow {
            id: 1,
            table: table.into(),
            op: op.into(),
            old_row: old.map(Into::into),
            new_row: new.map(Into::into),
            created_us: 0,
        }
    }

    #[test]
    fn exact_rows() {
        let r = read(
            &row("posts", "I", None, Some(r#"{"id": 1, "category": "a"}"#)),
            &specs(),
            &BTreeSet::new(),
        );
        let Reading::Exact(deps) = r else {
            panic!("{r:?}")
        };
        assert!(deps.contains(&Dependency::primary_key("post", [1])));
        assert!(deps.contains(&Dependency::condition("post", [("category", "a".into())])));
    }

    #[test]
    fn coarse_specs_invalidate_every_list() {
        let coarse = BTreeSet::from([("posts".to_owned(), "post".to_owned())]);
        let r = read(
            &row("posts", "K", None, Some(r#"{"id": 1}"#)),
            &specs(),
            &coarse,
        );
        let Reading::Exact(deps) = r else {
            panic!("{r:?}")
        };
        // Every list, and the row's own key (recorded by triggers of every layout).
        let mut want = TableSpec::coarse_dependencies("post");
        want.push(Dependency::primary_key("post", [1]));
        assert_eq!(deps, want);
    }

    #[test]
    fn unknown_tables_invalidate_by_table_name() {
        let r = read(
            &row("gone", "I", None, Some("{}")),
            &specs(),
            &BTreeSet::new(),
        );
        assert!(
            matches!(r, Reading::UnknownTable(deps) if deps.contains(&Dependency::invalidate_all("gone")))
        );
    }

    #[test]
    fn unreadable_rows_go_aside_with_coarse_dependencies() {
        for bad in [
            row("posts", "I", None, Some("not json")),
            row("posts", "I", None, None),
            row("posts", "X", None, Some("{}")),
            row("posts", "D", Some(r#"{"id": "x", "category": "a"}"#), None),
            row("posts", "I", None, Some("[1]")),
        ] {
            let r = read(&bad, &specs(), &BTreeSet::new());
            assert!(
                matches!(&r, Reading::Unreadable { deps, .. } if deps.contains(&Dependency::invalidate_all("post"))),
                "{bad:?} -> {r:?}"
            );
        }
    }

    /// A `K` row of triggers older than a model's tracked column (layout 2: the key only,
    /// queued before the install that upgraded them, or written while the relay runs
    /// coarsely on outdated triggers) still reaches the row's primary key: the lists are
    /// reached through `all`, but an entry that depends on the row's key alone (a cached
    /// `find`) would otherwise keep the old row until its TTL.
    #[test]
    fn rows_read_coarsely_still_reach_their_keys() {
        let spec = TableSpec::new("comment", "comments")
            .key("id", ColumnDecoder::of::<i64>())
            .tracked("post_id", ColumnDecoder::of::<i64>());
        let specs = HashMap::from([("comments".to_owned(), vec![spec])]);
        let layout_2 = row("comments", "K", None, Some(r#"{"id": 5}"#));
        let outdated = BTreeSet::from([("comments".to_owned(), "comment".to_owned())]);
        for coarse in [BTreeSet::new(), outdated] {
            let (Reading::Unreadable { deps, .. } | Reading::Exact(deps)) =
                read(&layout_2, &specs, &coarse)
            else {
                panic!("a known table");
            };
            assert!(
                deps.contains(&Dependency::invalidate_all("comment")),
                "{deps:?}"
            );
            assert!(
                deps.contains(&Dependency::primary_key("comment", [5])),
                "{deps:?}"
            );
        }
    }
}
