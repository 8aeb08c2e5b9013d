//! MySQL/MariaDB: the rows foreign-key actions change.
//!
//! InnoDB runs `ON DELETE CASCADE`, `ON UPDATE CASCADE` and `SET NULL` inside the storage
//! engine and fires no trigger for the rows they change, so a watched child table's own
//! triggers never see them (PostgreSQL and SQLite fire the child's triggers). [`install`]
//! therefore reads every foreign key whose action can change a watched table from
//! `information_schema` and puts triggers on the *parent* (the referenced table) that record,
//! in the writing statement, what the action is about to do to the watched table:
//!
//! | parent row | foreign key of the watched table | recorded | |
//! |---|---|---|---|
//! | deleted | `ON DELETE CASCADE` | `D` per child row (`BEFORE DELETE`: the rows still exist) | exact |
//! | deleted | `ON DELETE SET NULL` | `U` per child row: the row, and the row with the key columns null (`K` when they are not watched) | exact |
//! | key updated | `ON UPDATE CASCADE` | `D` per child row before (`BEFORE UPDATE`), `I` per child row after (`AFTER UPDATE`) | exact: the pair invalidates what a `U` would |
//! | key updated | `ON UPDATE SET NULL` | as `ON DELETE SET NULL` | exact |
//! | deleted / key updated | `SET DEFAULT` (InnoDB rejects it) | `T` | coarse |
//! | deleted / updated | further down a chain of actions (a grandchild) | `T` when the parent row has children on that key | coarse |
//!
//! `T` is the whole entity ([`TableSpec::coarse_dependencies`]): every list and count, and
//! every cached query that depends on the entity's `all` (SeaORM's and Diesel's cached
//! queries do); an entry put by hand with only a row's primary key is not reached.
//!
//! The triggers are named `{outbox}_fk_{hash of the watched table}_{hash of the trigger}`:
//! distinct from the watched tables' own triggers (a parent that is watched too keeps its
//! own), and a re-install whose catalogue did not change finds every trigger in place and
//! changes nothing. A changed trigger is created under its new name before the old one is
//! dropped, so no moment lacks one. Foreign keys are read from the databases of the watched
//! tables; a chain through a table of another database is not followed.

use std::collections::{BTreeMap, BTreeSet};

use matroska_core::TableSpec;

use crate::db::SqlConnection;
use crate::ddl::{Dialect, Outbox, Recorded, literal, mysql_utc_body, quote};
use crate::error::Result;

/// A table: (database, name).
type Table = (String, String);

/// What a foreign key does to its child rows when the parent row goes or its key changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    Cascade,
    SetNull,
    SetDefault,
    /// `RESTRICT` / `NO ACTION`: the child rows are not changed.
    Nothing,
}

impl Action {
    fn parse(rule: &str) -> Self {
        match rule {
            "CASCADE" => Action::Cascade,
            "SET NULL" => Action::SetNull,
            "SET DEFAULT" => Action::SetDefault,
            _ => Action::Nothing,
        }
    }
}

/// A change to a row, as far as foreign keys care.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Change {
    Delete,
    Update,
}

/// When a trigger on the parent runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Timing {
    BeforeDelete,
    BeforeUpdate,
    AfterUpdate,
}

impl Timing {
    fn sql(self) -> &'static str {
        match self {
            Timing::BeforeDelete => "BEFORE DELETE",
            Timing::BeforeUpdate => "BEFORE UPDATE",
            Timing::AfterUpdate => "AFTER UPDATE",
        }
    }
}

#[derive(Debug, Clone)]
struct ForeignKey {
    child: Table,
    parent: Table,
    /// (child column, parent column), in key order.
    columns: Vec<(String, String)>,
    on_delete: Action,
    on_update: Action,
}

impl ForeignKey {
    fn action(&self, change: Change) -> Action {
        match change {
            Change::Delete => self.on_delete,
            Change::Update => self.on_update,
        }
    }

    /// What the action does to a child row, if anything.
    fn child_change(&self, change: Change) -> Option<Change> {
        match (change, self.action(change)) {
            (_, Action::Nothing) => None,
            (Change::Delete, Action::Cascade) => Some(Change::Delete),
            _ => Some(Change::Update),
        }
    }

    /// The child rows that reference the parent row `row` (`OLD` or `NEW`), as a condition on
    /// the child's alias.
    fn references(&self, alias: &str, row: &str) -> String {
        let d = Dialect::MySql;
        self.columns
            .iter()
            .map(|(c, p)| format!("{alias}.{} = {row}.{}", quote(d, c), quote(d, p)))
            .collect::<Vec<_>>()
            .join(" AND ")
    }

    /// Whether an update changes the referenced columns.
    fn key_changed(&self) -> String {
        let d = Dialect::MySql;
        let same = self
            .columns
            .iter()
            .map(|(_, p)| format!("OLD.{p} <=> NEW.{p}", p = quote(d, p)))
            .collect::<Vec<_>>()
            .join(" AND ");
        format!("NOT ({same})")
    }
}

fn qualified((schema, name): &Table) -> String {
    format!(
        "{}.{}",
        quote(Dialect::MySql, schema),
        quote(Dialect::MySql, name)
    )
}

/// FNV-1a, 32 bits as 8 hex digits: stable across builds and processes.
fn hash(parts: &[&str]) -> String {
    let mut h = 0xcbf2_9ce4_8422_2325_u64;
    for part in parts {
        for b in part.bytes().chain([0]) {
            h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
    }
    format!("{:08x}", h & 0xffff_ffff)
}

/// The name prefix of every foreign-key trigger installed for the watched table `table`.
fn prefix(outbox: &Outbox, (schema, name): &Table) -> String {
    format!("{}_fk_{}_", outbox.table(), hash(&[schema, name]))
}

/// The database and name of a spec's table (`db.table`, else the connection's database).
fn resolve(spec_table: &str, database: Option<&str>) -> Option<Table> {
    match spec_table.split_once('.') {
        Some((schema, name)) => Some((schema.to_owned(), name.to_owned())),
        None => database.map(|db| (db.to_owned(), spec_table.to_owned())),
    }
}

/// The connection's current database, if one is selected.
pub(crate) async fn current_database(
    conn: &(impl SqlConnection + ?Sized),
) -> Result<Option<String>> {
    let rows = conn
        .query_pairs(
            "SELECT DATABASE() AS name, CAST(0 AS SIGNED) AS n FROM DUAL WHERE DATABASE() IS NOT NULL",
        )
        .await?;
    Ok(rows.into_iter().next().map(|(name, _)| name))
}

/// Every foreign key of a table in `schemas` whose action changes child rows.
async fn foreign_keys(
    conn: &(impl SqlConnection + ?Sized),
    schemas: &BTreeSet<String>,
) -> Result<Vec<ForeignKey>> {
    if schemas.is_empty() {
        return Ok(Vec::new());
    }
    let actions = "('CASCADE', 'SET NULL', 'SET DEFAULT')";
    let sql = format!(
        "SELECT JSON_ARRAY(k.CONSTRAINT_SCHEMA, k.CONSTRAINT_NAME, k.TABLE_SCHEMA, k.TABLE_NAME, \
         k.REFERENCED_TABLE_SCHEMA, k.REFERENCED_TABLE_NAME, k.COLUMN_NAME, \
         k.REFERENCED_COLUMN_NAME, r.UPDATE_RULE, r.DELETE_RULE) AS name, \
         CAST(k.ORDINAL_POSITION AS SIGNED) AS n \
         FROM information_schema.KEY_COLUMN_USAGE k \
         JOIN information_schema.REFERENTIAL_CONSTRAINTS r \
         ON r.CONSTRAINT_SCHEMA = k.CONSTRAINT_SCHEMA AND r.CONSTRAINT_NAME = k.CONSTRAINT_NAME \
         AND r.TABLE_NAME = k.TABLE_NAME \
         WHERE k.CONSTRAINT_SCHEMA IN ({}) AND k.REFERENCED_TABLE_NAME IS NOT NULL \
         AND (r.DELETE_RULE IN {actions} OR r.UPDATE_RULE IN {actions})",
        schemas
            .iter()
            .map(|s| literal(Dialect::MySql, s))
            .collect::<Vec<_>>()
            .join(", ")
    );
    // (constraint schema, constraint name, child table) → the key, its columns by position.
    type Keys = BTreeMap<(String, String, String), (ForeignKey, BTreeMap<i64, (String, String)>)>;
    let mut keys = Keys::new();
    for (row, position) in conn.query_pairs(&sql).await? {
        let fields: Vec<String> = serde_json::from_str(&row).map_err(|e| {
            crate::Error::Connection(format!("unreadable foreign-key catalogue row {row:?}: {e}"))
        })?;
        let [cs, cn, ts, tn, ps, pn, column, referenced, update, delete]: [String; 10] =
            fields.try_into().map_err(|f| {
                crate::Error::Connection(format!(
                    "foreign-key catalogue row of the wrong shape: {f:?}"
                ))
            })?;
        let entry = keys.entry((cs, cn, tn.clone())).or_insert_with(|| {
            (
                ForeignKey {
                    child: (ts, tn),
                    parent: (ps, pn),
                    columns: Vec::new(),
                    on_delete: Action::parse(&delete),
                    on_update: Action::parse(&update),
                },
                BTreeMap::new(),
            )
        });
        entry.1.insert(position, (column, referenced));
    }
    Ok(keys
        .into_values()
        .map(|(mut fk, columns)| {
            fk.columns = columns.into_values().collect();
            fk
        })
        .collect())
}

/// One trigger to have: on `host`, for the watched table `watched`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Trigger {
    watched: Table,
    host: Table,
    name: String,
    sql: String,
}

/// The statements that record, for one watched table, what the actions of foreign keys on
/// each parent do to it; grouped by (watched table, parent, timing).
struct Plan<'a> {
    outbox: &'a Outbox,
    watched: &'a BTreeMap<Table, &'a TableSpec>,
    by_parent: BTreeMap<&'a Table, Vec<&'a ForeignKey>>,
    statements: BTreeMap<(Table, Table, Timing), Vec<String>>,
}

impl<'a> Plan<'a> {
    fn new(
        outbox: &'a Outbox,
        watched: &'a BTreeMap<Table, &'a TableSpec>,
        fks: &'a [ForeignKey],
    ) -> Self {
        let mut by_parent: BTreeMap<&Table, Vec<&ForeignKey>> = BTreeMap::new();
        for fk in fks {
            by_parent.entry(&fk.parent).or_default().push(fk);
        }
        Plan {
            outbox,
            watched,
            by_parent,
            statements: BTreeMap::new(),
        }
    }

    /// The tables a change to rows of `table` reaches through further actions (not `table`
    /// itself unless a chain comes back to it).
    fn reached(&self, table: &Table, change: Change) -> BTreeSet<Table> {
        let mut seen: BTreeSet<(Table, Change)> = BTreeSet::new();
        let mut queue = vec![(table.clone(), change)];
        while let Some((table, change)) = queue.pop() {
            for fk in self.by_parent.get(&table).into_iter().flatten() {
                if let Some(next) = fk.child_change(change)
                    && seen.insert((fk.child.clone(), next))
                {
                    queue.push((fk.child.clone(), next));
                }
            }
        }
        seen.into_iter().map(|(t, _)| t).collect()
    }

    fn push(&mut self, watched: &Table, host: &Table, timing: Timing, statement: String) {
        let list = self
            .statements
            .entry((watched.clone(), host.clone(), timing))
            .or_default();
        if !list.contains(&statement) {
            list.push(statement);
        }
    }

    fn insert(&self) -> String {
        format!(
            "INSERT INTO {} (table_name, op, old_row, new_row, created_us)",
            self.outbox.outbox_table(Dialect::MySql)
        )
    }

    /// A `T` row (the whole entity) for `spec`, written only when the parent row has child
    /// rows through `fk` (and, for an update, only when the referenced key changes).
    ///
    /// An `INSERT .. SELECT`, not `IF EXISTS`: under `REPEATABLE READ` InnoDB reads the tables
    /// of an `INSERT .. SELECT` with locks, so it sees a child row committed after the
    /// transaction's snapshot, as the cascade does; a plain `EXISTS` would read the snapshot.
    fn coarse(&self, fk: &ForeignKey, change: Change, spec: &TableSpec) -> String {
        let exists = format!(
            "EXISTS (SELECT 1 FROM {} AS matroska_child WHERE {})",
            qualified(&fk.child),
            fk.references("matroska_child", "OLD")
        );
        let condition = match change {
            Change::Delete => exists,
            Change::Update => format!("{} AND {exists}", fk.key_changed()),
        };
        format!(
            "{} SELECT {}, 'T', NULL, NULL, {} FROM DUAL WHERE {condition}",
            self.insert(),
            literal(Dialect::MySql, spec.table()),
            Outbox::now_us(Dialect::MySql)
        )
    }

    /// One row per child row of `fk` that references the parent's `row` (`OLD`/`NEW`).
    fn rows(&self, fk: &ForeignKey, spec: &TableSpec, row: &str, op: &str) -> String {
        const ALIAS: &str = "matroska_child";
        let d = Dialect::MySql;
        let recorded = Recorded::of_spec(spec);
        let watched = spec.watched_columns();
        let owned = |columns: &[&str]| columns.iter().map(|c| (*c).to_owned()).collect::<Vec<_>>();
        let all = Outbox::json_object(d, &recorded, &owned(&watched), ALIAS);
        let (op, old, new) = match op {
            "D" => ("'D'".to_owned(), all, "NULL".to_owned()),
            "I" => ("'I'".to_owned(), "NULL".to_owned(), all),
            // SET NULL: the row, and the row with its watched key columns null.
            _ => {
                let nulled: Vec<&str> = fk
                    .columns
                    .iter()
                    .map(|(c, _)| c.as_str())
                    .filter(|c| watched.contains(c))
                    .collect();
                if nulled.is_empty() {
                    // A `K` row: the key and the tracked columns, as the row triggers do.
                    let key = Outbox::json_object(d, &recorded, &recorded.key_only(), ALIAS);
                    ("'K'".to_owned(), "NULL".to_owned(), key)
                } else {
                    let paths = nulled
                        .iter()
                        .map(|c| format!("{}, NULL", literal(d, &format!("$.\"{c}\""))))
                        .collect::<Vec<_>>()
                        .join(", ");
                    let new = format!("JSON_SET({all}, {paths})");
                    ("'U'".to_owned(), all, new)
                }
            }
        };
        format!(
            "{} SELECT {}, {op}, {old}, {new}, {} FROM {} AS {ALIAS} WHERE {}",
            self.insert(),
            literal(Dialect::MySql, spec.table()),
            Outbox::now_us(d),
            qualified(&fk.child),
            fk.references(ALIAS, row)
        )
    }

    fn when_key_changed(fk: &ForeignKey, statement: &str) -> String {
        format!("IF {} THEN {statement}; END IF", fk.key_changed())
    }

    fn add(&mut self, fk: &ForeignKey, change: Change) {
        let Some(child_change) = fk.child_change(change) else {
            return;
        };
        let host = &fk.parent;
        let before = match change {
            Change::Delete => Timing::BeforeDelete,
            Change::Update => Timing::BeforeUpdate,
        };
        if let Some(spec) = self.watched.get(&fk.child).copied() {
            let column_names_ok = fk
                .columns
                .iter()
                .all(|(c, _)| !c.contains(['"', '\\', '\'']));
            match (change, fk.action(change)) {
                (_, Action::Nothing) => {}
                (Change::Delete, Action::Cascade) => {
                    let rows = self.rows(fk, spec, "OLD", "D");
                    self.push(&fk.child, host, before, rows);
                }
                (Change::Update, Action::Cascade) => {
                    let old = Self::when_key_changed(fk, &self.rows(fk, spec, "OLD", "D"));
                    let new = Self::when_key_changed(fk, &self.rows(fk, spec, "NEW", "I"));
                    self.push(&fk.child, host, before, old);
                    self.push(&fk.child, host, Timing::AfterUpdate, new);
                }
                (_, Action::SetNull) if column_names_ok => {
                    let rows = self.rows(fk, spec, "OLD", "U");
                    let rows = match change {
                        Change::Delete => rows,
                        Change::Update => Self::when_key_changed(fk, &rows),
                    };
                    self.push(&fk.child, host, before, rows);
                }
                // SET DEFAULT (InnoDB refuses to create it, other engines have no foreign
                // keys) and key columns a JSON path cannot name: the whole entity.
                _ => {
                    let coarse = self.coarse(fk, change, spec);
                    self.push(&fk.child, host, before, coarse);
                }
            }
        }
        // Tables further down: their rows change by actions that fire nothing either.
        for table in self.reached(&fk.child, child_change) {
            if let Some(spec) = self.watched.get(&table).copied() {
                let coarse = self.coarse(fk, change, spec);
                self.push(&table, host, before, coarse);
            }
        }
    }

    fn triggers(mut self, fks: &[ForeignKey]) -> Vec<Trigger> {
        for fk in fks {
            self.add(fk, Change::Delete);
            self.add(fk, Change::Update);
        }
        let d = Dialect::MySql;
        self.statements
            .into_iter()
            .map(|((watched, host, timing), statements)| {
                let body = statements.join("; ");
                let sql_of = |name: &str| {
                    format!(
                        "CREATE TRIGGER {}.{} {} ON {} FOR EACH ROW {}",
                        quote(d, &host.0),
                        quote(d, name),
                        timing.sql(),
                        qualified(&host),
                        mysql_utc_body(&body)
                    )
                };
                // The name hashes the whole statement (with a placeholder name): a trigger
                // whose name exists is the same trigger.
                let name = format!("{}{}", prefix(self.outbox, &watched), hash(&[&sql_of("")]));
                let sql = sql_of(&name);
                Trigger {
                    watched,
                    host,
                    name,
                    sql,
                }
            })
            .collect()
    }
}

/// The foreign-key triggers of this outbox that exist: (database, name).
async fn existing(
    conn: &(impl SqlConnection + ?Sized),
    outbox: &Outbox,
) -> Result<BTreeSet<Table>> {
    // `_` matches any character: a superset, narrowed by the callers' exact prefixes.
    let sql = format!(
        "SELECT JSON_ARRAY(TRIGGER_SCHEMA, TRIGGER_NAME) AS name, CAST(0 AS SIGNED) AS n \
         FROM information_schema.TRIGGERS WHERE TRIGGER_NAME LIKE {}",
        literal(Dialect::MySql, &format!("{}_fk_%", outbox.table()))
    );
    let mut out = BTreeSet::new();
    for (row, _) in conn.query_pairs(&sql).await? {
        let pair: (String, String) = serde_json::from_str(&row).map_err(|e| {
            crate::Error::Connection(format!("unreadable trigger catalogue row {row:?}: {e}"))
        })?;
        out.insert(pair);
    }
    Ok(out)
}

async fn drop_trigger(conn: &(impl SqlConnection + ?Sized), trigger: &Table) -> Result<()> {
    conn.execute_sql(&format!("DROP TRIGGER IF EXISTS {}", qualified(trigger)))
        .await
}

/// The outbox with its database named (the parents' triggers may live in another database
/// than the outbox, and a trigger's unqualified names resolve in its own database).
fn pinned(outbox: &Outbox, database: Option<&str>) -> Outbox {
    match (outbox.schema(), database) {
        (None, Some(db)) => outbox.clone().pinned_to(db.to_owned()),
        _ => outbox.clone(),
    }
}

/// Installs (MySQL/MariaDB; elsewhere nothing) the triggers that record what foreign-key
/// actions do to `tables`, replacing the ones an earlier install made for them; see the
/// [module docs](self).
pub(crate) async fn install(
    conn: &(impl SqlConnection + ?Sized),
    outbox: &Outbox,
    tables: &[TableSpec],
) -> Result<()> {
    if conn.dialect() != Dialect::MySql || tables.is_empty() {
        return Ok(());
    }
    let database = current_database(conn).await?;
    let outbox = pinned(outbox, database.as_deref());
    let watched: BTreeMap<Table, &TableSpec> = tables
        .iter()
        .filter_map(|spec| resolve(spec.table(), database.as_deref()).map(|t| (t, spec)))
        .collect();
    let schemas = watched.keys().map(|(s, _)| s.clone()).collect();
    let fks = foreign_keys(conn, &schemas).await?;
    let wanted = Plan::new(&outbox, &watched, &fks).triggers(&fks);
    let present = existing(conn, &outbox).await?;
    for trigger in &wanted {
        if present.contains(&(trigger.host.0.clone(), trigger.name.clone())) {
            continue;
        }
        match conn.execute_sql(&trigger.sql).await {
            // A concurrent install created the same trigger: it is this one.
            Err(e) if e.to_string().contains("already exists") => {}
            other => other?,
        }
    }
    // Only now the stale ones: the new triggers already record.
    for table in watched.keys() {
        let prefix = prefix(&outbox, table);
        for old in present.iter().filter(|(_, name)| name.starts_with(&prefix)) {
            if !wanted.iter().any(|t| t.host.0 == old.0 && t.name == old.1) {
                drop_trigger(conn, old).await?;
            }
        }
    }
    if !wanted.is_empty() {
        tracing::info!(
            triggers = wanted.len(),
            "matroska outbox: triggers for foreign-key actions installed on parent tables"
        );
    }
    Ok(())
}

/// Removes the foreign-key triggers installed for `tables` (MySQL/MariaDB; elsewhere
/// nothing).
pub(crate) async fn uninstall(
    conn: &(impl SqlConnection + ?Sized),
    outbox: &Outbox,
    tables: &[&str],
) -> Result<()> {
    if conn.dialect() != Dialect::MySql || tables.is_empty() {
        return Ok(());
    }
    let database = current_database(conn).await?;
    let outbox = pinned(outbox, database.as_deref());
    let present = existing(conn, &outbox).await?;
    for table in tables
        .iter()
        .filter_map(|t| resolve(t, database.as_deref()))
    {
        let prefix = prefix(&outbox, &table);
        for old in present.iter().filter(|(_, name)| name.starts_with(&prefix)) {
            drop_trigger(conn, old).await?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use matroska_core::ColumnDecoder;

    use super::*;

    fn table(name: &str) -> Table {
        ("db".into(), name.into())
    }

    fn fk(child: &str, parent: &str, on_delete: Action, on_update: Action) -> ForeignKey {
        ForeignKey {
            child: table(child),
            parent: table(parent),
            columns: vec![("parent_id".into(), "id".into())],
            on_delete,
            on_update,
        }
    }

    fn spec(name: &str) -> TableSpec {
        TableSpec::new(name, name)
            .key("id", ColumnDecoder::of::<i64>())
            .scope(&[("parent_id", ColumnDecoder::of::<Option<i64>>())], false)
    }

    fn plan(fks: &[ForeignKey], watched: &[&str]) -> Vec<Trigger> {
        let specs: Vec<TableSpec> = watched.iter().map(|w| spec(w)).collect();
        let watched: BTreeMap<Table, &TableSpec> =
            specs.iter().map(|s| (table(s.table()), s)).collect();
        let outbox = Outbox::default().pinned_to("db".into());
        Plan::new(&outbox, &watched, fks).triggers(fks)
    }

    #[test]
    fn direct_actions_are_recorded_exactly_on_the_parent() {
        let fks = [fk("child", "parent", Action::Cascade, Action::Cascade)];
        let triggers = plan(&fks, &["child"]);
        assert_eq!(triggers.len(), 3, "{triggers:#?}");
        assert!(triggers.iter().all(|t| t.host == table("parent")));
        let before_delete = triggers
            .iter()
            .find(|t| t.sql.contains("BEFORE DELETE"))
            .unwrap();
        assert!(before_delete.sql.contains("'D'"), "{}", before_delete.sql);
        assert!(
            triggers
                .iter()
                .any(|t| t.sql.contains("AFTER UPDATE") && t.sql.contains("'I'"))
        );
    }

    #[test]
    fn set_null_records_the_nulled_row() {
        let fks = [fk("child", "parent", Action::SetNull, Action::Nothing)];
        let triggers = plan(&fks, &["child"]);
        assert_eq!(triggers.len(), 1, "{triggers:#?}");
        assert!(
            triggers[0]
                .sql
                .contains("JSON_SET(JSON_OBJECT('id', matroska_child.`id`"),
            "{}",
            triggers[0].sql
        );
    }

    #[test]
    fn chains_are_recorded_coarsely_and_unwatched_children_not_at_all() {
        let fks = [
            fk("child", "parent", Action::Cascade, Action::Nothing),
            fk("grandchild", "child", Action::Cascade, Action::Nothing),
        ];
        let triggers = plan(&fks, &["grandchild"]);
        // On the child (exact) and on the parent (coarse: the child's rows go by cascade).
        assert_eq!(triggers.len(), 2, "{triggers:#?}");
        let on_parent = triggers.iter().find(|t| t.host == table("parent")).unwrap();
        assert!(on_parent.sql.contains("'T'"), "{}", on_parent.sql);
        assert!(plan(&fks[..1], &["other"]).is_empty());
    }

    #[test]
    fn a_self_reference_reaches_grandchildren_coarsely() {
        let fks = [fk("node", "node", Action::Cascade, Action::Nothing)];
        let triggers = plan(&fks, &["node"]);
        assert_eq!(triggers.len(), 1);
        assert!(triggers[0].sql.contains("'D'") && triggers[0].sql.contains("'T'"));
    }

    #[test]
    fn names_are_stable_distinct_and_short() {
        let fks = [fk("child", "parent", Action::Cascade, Action::Cascade)];
        let a = plan(&fks, &["child"]);
        assert_eq!(a, plan(&fks, &["child"]));
        let names: BTreeSet<&str> = a.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names.len(), a.len());
        assert!(a.iter().all(|t| t.name.len() <= 64
            && t.name.starts_with("matroska_outbox_fk_")
            && !t.name.starts_with(&format!("matroska_outbox_{}", "child"))));
    }
}
