//! The SQL that makes a database record its own changes: the outbox tables and, per watched
//! table, the triggers, for PostgreSQL, MySQL/MariaDB and SQLite.
//!
//! Everything here is text: [`Outbox::install_sql`] and [`Outbox::uninstall_sql`] give the
//! statements for a migration that holds plain SQL (a Diesel `up.sql`, a SeaORM migration's
//! `execute_unprepared`), and [`Outbox::install`](crate::Outbox::install) runs them.
//!
//! ## What the triggers record
//! One outbox row per changed row, in the writing transaction: the table, an operation and
//! the *watched* columns ([`TableSpec::watched_columns`]: the key and every scope column) of
//! the old and the new row as JSON:
//!
//! | op | when | `old_row` | `new_row` |
//! |---|---|---|---|
//! | `I` | insert | – | watched columns |
//! | `D` | delete | watched columns | – |
//! | `U` | update changing a watched column or the key | watched columns | watched columns |
//! | `K` | update changing no watched column | – | key columns |
//! | `T` | `TRUNCATE` (PostgreSQL) | – | – |
//!
//! On PostgreSQL the triggers are statement-level with transition tables: a 100k-row
//! `UPDATE` adds one `INSERT .. SELECT` (old and new rows paired by key; a row whose key
//! changed is recorded as two unpaired `U` rows, one per side), and one `pg_notify` per
//! statement wakes the relays when the transaction commits. MySQL/MariaDB and SQLite have
//! row-level triggers only.

use std::fmt::Write as _;

use matroska_core::TableSpec;

use crate::error::{Error, Result};

/// The version of the trigger layout this crate installs. Installing a newer version replaces
/// the triggers of an older one; an older crate refuses to replace a newer one.
pub const LAYOUT_VERSION: i64 = 1;

/// The SQL dialect of a database.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Dialect {
    /// PostgreSQL 10 or later (transition tables).
    Postgres,
    /// MySQL 8 or MariaDB 10.6 or later (`FOR UPDATE SKIP LOCKED`).
    MySql,
    /// SQLite 3.38 or later (JSON functions built in).
    Sqlite,
}

/// The names of the outbox's tables, and the SQL that installs it; see the
/// [module docs](self).
///
/// ```
/// use matroska_core::{ColumnDecoder, TableSpec};
/// use matroska_outbox::{Dialect, Outbox};
///
/// let article = TableSpec::new("article", "article")
///     .key("id", ColumnDecoder::of::<i32>())
///     .scope(&[("published", ColumnDecoder::of::<bool>())], false);
/// let sql = Outbox::default().install_sql(Dialect::Sqlite, &[article])?;
/// assert!(sql.iter().any(|s| s.contains("CREATE TRIGGER")));
/// # Ok::<_, matroska_outbox::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outbox {
    table: String,
    schema: Option<String>,
}

impl Default for Outbox {
    /// The outbox `matroska_outbox` (with `matroska_outbox_dead` and `matroska_outbox_tables`)
    /// in the connection's current schema.
    fn default() -> Self {
        Outbox {
            table: "matroska_outbox".into(),
            schema: None,
        }
    }
}

fn check_identifier(what: &str, name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 48
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !name.starts_with(|c: char| c.is_ascii_digit());
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidName {
            what: what.to_owned(),
            name: name.to_owned(),
        })
    }
}

/// A table or column name as a quoted identifier (`schema.table` quoted part by part).
pub(crate) fn quote(dialect: Dialect, name: &str) -> String {
    let q = match dialect {
        Dialect::MySql => '`',
        Dialect::Postgres | Dialect::Sqlite => '"',
    };
    name.split('.')
        .map(|part| {
            let doubled = part.replace(q, &format!("{q}{q}"));
            format!("{q}{doubled}{q}")
        })
        .collect::<Vec<_>>()
        .join(".")
}

/// A string literal.
pub(crate) fn literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

/// A short, stable name part for a table name that may be long or hold any character: the
/// alphanumeric part, cut, plus a hash of the whole.
fn name_part(table: &str) -> String {
    let clean: String = table
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .take(24)
        .collect();
    // FNV-1a: stable across builds and processes.
    let hash = table.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    format!("{clean}_{:08x}", hash & 0xffff_ffff)
}

impl Outbox {
    /// An outbox whose tables are `name`, `name_dead` and `name_tables`.
    ///
    /// # Errors
    /// [`Error::InvalidName`] unless `name` is 1 to 48 ASCII letters, digits and underscores,
    /// not starting with a digit.
    pub fn named(name: &str) -> Result<Self> {
        check_identifier("outbox table", name)?;
        Ok(Outbox {
            table: name.to_owned(),
            schema: None,
        })
    }

    /// Puts the outbox tables in `schema` (PostgreSQL: triggers then write there whatever a
    /// writer's `search_path`; MySQL: a database name).
    ///
    /// # Errors
    /// [`Error::InvalidName`] as for [`Outbox::named`].
    pub fn in_schema(mut self, schema: &str) -> Result<Self> {
        check_identifier("schema", schema)?;
        self.schema = Some(schema.to_owned());
        Ok(self)
    }

    /// The outbox in `schema`, a name read from the database (quoted, not checked).
    pub(crate) fn pinned_to(mut self, schema: String) -> Self {
        self.schema = Some(schema);
        self
    }

    /// The outbox table's name (unquoted).
    pub fn table(&self) -> &str {
        &self.table
    }

    /// The schema, if one was set.
    pub fn schema(&self) -> Option<&str> {
        self.schema.as_deref()
    }

    /// The `pg_notify` channel the triggers signal on PostgreSQL.
    pub fn channel(&self) -> &str {
        &self.table
    }

    fn qualified(&self, dialect: Dialect, suffix: &str) -> String {
        let name = format!("{}{suffix}", self.table);
        match &self.schema {
            Some(schema) if dialect != Dialect::Sqlite => {
                format!("{}.{}", quote(dialect, schema), quote(dialect, &name))
            }
            _ => quote(dialect, &name),
        }
    }

    /// The outbox table, quoted and qualified.
    pub(crate) fn outbox_table(&self, dialect: Dialect) -> String {
        self.qualified(dialect, "")
    }

    /// The dead-letter table, quoted and qualified.
    pub(crate) fn dead_table(&self, dialect: Dialect) -> String {
        self.qualified(dialect, "_dead")
    }

    /// The table of watched tables and their layout versions, quoted and qualified.
    pub(crate) fn meta_table(&self, dialect: Dialect) -> String {
        self.qualified(dialect, "_tables")
    }

    /// The statements that create the outbox tables (idempotent).
    pub fn create_tables_sql(&self, dialect: Dialect) -> Vec<String> {
        let (outbox, dead, meta) = (
            self.outbox_table(dialect),
            self.dead_table(dialect),
            self.meta_table(dialect),
        );
        match dialect {
            Dialect::Postgres => vec![
                format!(
                    "CREATE TABLE IF NOT EXISTS {outbox} (id BIGSERIAL PRIMARY KEY, \
                     table_name TEXT NOT NULL, op CHAR(1) NOT NULL, old_row JSONB, new_row JSONB, \
                     created_us BIGINT NOT NULL)"
                ),
                // A queue table: every row is deleted soon after it is written. Vacuumed after
                // a fixed number of dead rows instead of a fraction of the table, or a claim's
                // index scan wades through the dead rows of a bulk write (measured: a claim
                // after 300k deleted rows took ~50 ms until autovacuum ran).
                format!(
                    "ALTER TABLE {outbox} SET (autovacuum_vacuum_scale_factor = 0, \
                     autovacuum_vacuum_threshold = 10000, autovacuum_vacuum_cost_delay = 0)"
                ),
                format!(
                    "CREATE TABLE IF NOT EXISTS {dead} (id BIGINT PRIMARY KEY, table_name TEXT NOT NULL, \
                     op TEXT NOT NULL, old_row TEXT, new_row TEXT, created_us BIGINT NOT NULL, \
                     error TEXT NOT NULL, moved_us BIGINT NOT NULL)"
                ),
                format!(
                    "CREATE TABLE IF NOT EXISTS {meta} (table_name TEXT PRIMARY KEY, entity TEXT NOT NULL, \
                     version BIGINT NOT NULL, columns TEXT NOT NULL)"
                ),
            ],
            Dialect::MySql => vec![
                format!(
                    "CREATE TABLE IF NOT EXISTS {outbox} (id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY, \
                     table_name VARCHAR(255) NOT NULL, op CHAR(1) NOT NULL, old_row LONGTEXT, \
                     new_row LONGTEXT, created_us BIGINT NOT NULL) ENGINE=InnoDB"
                ),
                format!(
                    "CREATE TABLE IF NOT EXISTS {dead} (id BIGINT NOT NULL PRIMARY KEY, \
                     table_name VARCHAR(255) NOT NULL, op VARCHAR(8) NOT NULL, old_row LONGTEXT, \
                     new_row LONGTEXT, created_us BIGINT NOT NULL, error TEXT NOT NULL, \
                     moved_us BIGINT NOT NULL) ENGINE=InnoDB"
                ),
                format!(
                    "CREATE TABLE IF NOT EXISTS {meta} (table_name VARCHAR(255) NOT NULL PRIMARY KEY, \
                     entity VARCHAR(255) NOT NULL, version BIGINT NOT NULL, columns TEXT NOT NULL) \
                     ENGINE=InnoDB"
                ),
            ],
            // AUTOINCREMENT: ids are never reused, so a relay deleting the ids it delivered
            // can never delete a newer row that took a freed id.
            Dialect::Sqlite => vec![
                format!(
                    "CREATE TABLE IF NOT EXISTS {outbox} (id INTEGER PRIMARY KEY AUTOINCREMENT, \
                     table_name TEXT NOT NULL, op TEXT NOT NULL, old_row TEXT, new_row TEXT, \
                     created_us INTEGER NOT NULL)"
                ),
                format!(
                    "CREATE TABLE IF NOT EXISTS {dead} (id INTEGER PRIMARY KEY, table_name TEXT NOT NULL, \
                     op TEXT NOT NULL, old_row TEXT, new_row TEXT, created_us INTEGER NOT NULL, \
                     error TEXT NOT NULL, moved_us INTEGER NOT NULL)"
                ),
                format!(
                    "CREATE TABLE IF NOT EXISTS {meta} (table_name TEXT PRIMARY KEY, entity TEXT NOT NULL, \
                     version INTEGER NOT NULL, columns TEXT NOT NULL)"
                ),
            ],
        }
    }

    /// The SQL expression of the current time in microseconds since the epoch.
    pub(crate) fn now_us(dialect: Dialect) -> &'static str {
        match dialect {
            Dialect::Postgres => "(extract(epoch from clock_timestamp()) * 1000000)::bigint",
            Dialect::MySql => "CAST(UNIX_TIMESTAMP(SYSDATE(6)) * 1000000 AS SIGNED)",
            Dialect::Sqlite => "CAST((julianday('now') - 2440587.5) * 86400000000.0 AS INTEGER)",
        }
    }

    /// Every statement that installs the outbox for `tables` (idempotent: tables are created
    /// if missing, triggers replaced, the layout version recorded).
    ///
    /// # Errors
    /// [`Error::InvalidSpec`] for a table with no key column.
    pub fn install_sql(&self, dialect: Dialect, tables: &[TableSpec]) -> Result<Vec<String>> {
        let mut out = self.create_tables_sql(dialect);
        for spec in tables {
            out.extend(self.uninstall_table_sql(dialect, spec.table()));
            out.extend(self.triggers_sql(dialect, spec)?);
            out.push(self.record_version_sql(dialect, spec));
        }
        Ok(out)
    }

    /// Every statement that removes the triggers of `tables` (the outbox tables stay: a
    /// relay may still be delivering their rows).
    pub fn uninstall_sql(&self, dialect: Dialect, tables: &[&str]) -> Vec<String> {
        tables
            .iter()
            .flat_map(|t| {
                let mut sql = self.uninstall_table_sql(dialect, t);
                sql.push(format!(
                    "DELETE FROM {} WHERE table_name = {}",
                    self.meta_table(dialect),
                    literal(t)
                ));
                sql
            })
            .collect()
    }

    /// The statements that drop the outbox tables themselves.
    pub fn drop_tables_sql(&self, dialect: Dialect) -> Vec<String> {
        [
            self.outbox_table(dialect),
            self.dead_table(dialect),
            self.meta_table(dialect),
        ]
        .into_iter()
        // MySQL's recorded table ids (`truncate.rs`).
        .chain((dialect == Dialect::MySql).then(|| crate::truncate::ids_table(self)))
        .map(|t| format!("DROP TABLE IF EXISTS {t}"))
        .collect()
    }

    /// A query that counts this outbox's triggers on `table` (3 or more when it is watched;
    /// never fails, even without the outbox installed, so it is safe inside a transaction).
    pub fn triggers_present_sql(&self, dialect: Dialect, table: &str) -> String {
        let prefix = literal(&format!("{}_{}_%", self.table, name_part(table)).replace('_', "\\_"));
        match dialect {
            Dialect::Postgres => format!(
                "SELECT COUNT(*) FROM pg_trigger WHERE tgrelid = to_regclass({}) AND tgname LIKE {prefix}",
                literal(&quote(dialect, table))
            ),
            Dialect::MySql => format!(
                "SELECT COUNT(*) FROM information_schema.TRIGGERS WHERE EVENT_OBJECT_SCHEMA = {} \
                 AND EVENT_OBJECT_TABLE = {} AND TRIGGER_NAME LIKE {prefix}",
                self.schema
                    .as_deref()
                    .map_or_else(|| "DATABASE()".to_owned(), literal),
                literal(table)
            ),
            Dialect::Sqlite => format!(
                "SELECT COUNT(*) FROM sqlite_master WHERE type = 'trigger' AND tbl_name = {} \
                 AND name LIKE {prefix} ESCAPE '\\'",
                literal(table)
            ),
        }
    }

    /// The query of the installed layout versions: rows of (`name`: the table, `n`: its version).
    pub(crate) fn versions_sql(&self, dialect: Dialect) -> String {
        format!(
            "SELECT table_name AS name, version AS n FROM {}",
            self.meta_table(dialect)
        )
    }

    fn record_version_sql(&self, dialect: Dialect, spec: &TableSpec) -> String {
        let meta = self.meta_table(dialect);
        let values = format!(
            "({}, {}, {LAYOUT_VERSION}, {})",
            literal(spec.table()),
            literal(spec.entity()),
            literal(&spec.watched_columns().join(","))
        );
        match dialect {
            Dialect::Postgres | Dialect::Sqlite => format!(
                "INSERT INTO {meta} (table_name, entity, version, columns) VALUES {values} \
                 ON CONFLICT (table_name) DO UPDATE SET entity = excluded.entity, \
                 version = excluded.version, columns = excluded.columns"
            ),
            Dialect::MySql => format!(
                "INSERT INTO {meta} (table_name, entity, version, columns) VALUES {values} \
                 ON DUPLICATE KEY UPDATE entity = VALUES(entity), version = VALUES(version), \
                 columns = VALUES(columns)"
            ),
        }
    }

    fn trigger_name(&self, table: &str, event: &str) -> String {
        format!("{}_{}_{event}", self.table, name_part(table))
    }

    fn function_name(&self, table: &str) -> String {
        let name = format!("{}_{}", self.table, name_part(table));
        match &self.schema {
            Some(schema) => format!(
                "{}.{}",
                quote(Dialect::Postgres, schema),
                quote(Dialect::Postgres, &name)
            ),
            None => quote(Dialect::Postgres, &name),
        }
    }

    fn uninstall_table_sql(&self, dialect: Dialect, table: &str) -> Vec<String> {
        let quoted = quote(dialect, table);
        match dialect {
            Dialect::Postgres => {
                let mut sql: Vec<String> = ["i", "u", "d", "t"]
                    .iter()
                    .map(|ev| {
                        format!(
                            "DROP TRIGGER IF EXISTS {} ON {quoted}",
                            quote(dialect, &self.trigger_name(table, ev))
                        )
                    })
                    .collect();
                sql.push(format!(
                    "DROP FUNCTION IF EXISTS {}()",
                    self.function_name(table)
                ));
                sql
            }
            Dialect::MySql | Dialect::Sqlite => ["i", "u", "d"]
                .iter()
                .map(|ev| {
                    let name = quote(dialect, &self.trigger_name(table, ev));
                    match (&self.schema, dialect) {
                        (Some(schema), Dialect::MySql) => {
                            format!("DROP TRIGGER IF EXISTS {}.{name}", quote(dialect, schema))
                        }
                        _ => format!("DROP TRIGGER IF EXISTS {name}"),
                    }
                })
                .collect(),
        }
    }

    fn triggers_sql(&self, dialect: Dialect, spec: &TableSpec) -> Result<Vec<String>> {
        if spec.key_columns().is_empty() {
            return Err(Error::InvalidSpec {
                table: spec.table().to_owned(),
                reason: "it has no primary-key column".into(),
            });
        }
        Ok(match dialect {
            Dialect::Postgres => self.postgres_triggers(spec),
            Dialect::MySql => self.row_triggers(Dialect::MySql, spec),
            Dialect::Sqlite => self.row_triggers(Dialect::Sqlite, spec),
        })
    }

    /// `json_build_object` / `JSON_OBJECT` / `json_object` of `columns` of the row `alias`.
    pub(crate) fn json_object(
        dialect: Dialect,
        spec: &TableSpec,
        columns: &[&str],
        alias: &str,
    ) -> String {
        let mut out = String::new();
        for (i, column) in columns.iter().enumerate() {
            if i > 0 {
                out.push_str(", ");
            }
            let value = format!("{alias}.{}", quote(dialect, column));
            let bytes = spec
                .key_columns()
                .iter()
                .chain(spec.scopes().iter().flat_map(|s| s.columns()))
                .any(|c| c.name() == *column && c.decoder().is_bytes());
            let value = match dialect {
                // `to_jsonb` writes every type faithfully (bytea as "\\x..").
                Dialect::Postgres => value,
                // JSON_OBJECT cannot hold raw bytes.
                Dialect::MySql if bytes => {
                    format!("IF({value} IS NULL, NULL, JSON_OBJECT('hex', HEX({value})))")
                }
                Dialect::MySql => value,
                // json_object refuses blobs; any column may hold one in SQLite.
                Dialect::Sqlite => format!(
                    "CASE WHEN typeof({value}) = 'blob' THEN json_object('hex', hex({value})) ELSE {value} END"
                ),
            };
            let _ = write!(out, "{}, {value}", literal(column));
        }
        match dialect {
            Dialect::Postgres => format!("jsonb_build_object({out})"),
            Dialect::MySql => format!("JSON_OBJECT({out})"),
            Dialect::Sqlite => format!("json_object({out})"),
        }
    }

    fn postgres_triggers(&self, spec: &TableSpec) -> Vec<String> {
        let d = Dialect::Postgres;
        let outbox = self.outbox_table(d);
        let table = quote(d, spec.table());
        let name = literal(spec.table());
        let now = Self::now_us(d);
        let watched = spec.watched_columns();
        let keys: Vec<&str> = spec.key_columns().iter().map(|c| c.name()).collect();
        let scoped: Vec<&str> = watched
            .iter()
            .copied()
            .filter(|c| !keys.contains(c))
            .collect();
        let first_key = quote(d, keys[0]);
        let join = keys
            .iter()
            .map(|k| format!("o.{q} = n.{q}", q = quote(d, k)))
            .collect::<Vec<_>>()
            .join(" AND ");
        let changed = if scoped.is_empty() {
            format!("o.{first_key} IS NULL OR n.{first_key} IS NULL")
        } else {
            let row = |alias: &str| {
                scoped
                    .iter()
                    .map(|c| format!("{alias}.{}", quote(d, c)))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            format!(
                "o.{first_key} IS NULL OR n.{first_key} IS NULL OR ROW({}) IS DISTINCT FROM ROW({})",
                row("o"),
                row("n")
            )
        };
        let old_all = Self::json_object(d, spec, &watched, "o");
        let new_all = Self::json_object(d, spec, &watched, "n");
        let new_key = Self::json_object(d, spec, &keys, "n");
        let notify = literal(self.channel());
        let function = self.function_name(spec.table());
        let body = format!(
            "CREATE OR REPLACE FUNCTION {function}() RETURNS trigger LANGUAGE plpgsql AS $matroska$\n\
             BEGIN\n\
             IF TG_OP = 'INSERT' THEN\n\
               INSERT INTO {outbox} (table_name, op, old_row, new_row, created_us)\n\
               SELECT {name}, 'I', NULL, {new_all}, {now} FROM matroska_new n;\n\
             ELSIF TG_OP = 'DELETE' THEN\n\
               INSERT INTO {outbox} (table_name, op, old_row, new_row, created_us)\n\
               SELECT {name}, 'D', {old_all}, NULL, {now} FROM matroska_old o;\n\
             ELSIF TG_OP = 'UPDATE' THEN\n\
               INSERT INTO {outbox} (table_name, op, old_row, new_row, created_us)\n\
               SELECT {name},\n\
                 CASE WHEN {changed} THEN 'U' ELSE 'K' END,\n\
                 CASE WHEN o.{first_key} IS NULL THEN NULL WHEN {changed} THEN {old_all} END,\n\
                 CASE WHEN n.{first_key} IS NULL THEN NULL WHEN {changed} THEN {new_all} ELSE {new_key} END,\n\
                 {now}\n\
               FROM matroska_old o FULL JOIN matroska_new n ON {join};\n\
             ELSE\n\
               INSERT INTO {outbox} (table_name, op, old_row, new_row, created_us)\n\
               VALUES ({name}, 'T', NULL, NULL, {now});\n\
             END IF;\n\
             PERFORM pg_notify({notify}, '');\n\
             RETURN NULL;\n\
             END\n\
             $matroska$"
        );
        let trigger = |ev: &str, timing: &str, referencing: &str| {
            format!(
                "CREATE TRIGGER {} AFTER {timing} ON {table} {referencing} FOR EACH STATEMENT \
                 EXECUTE FUNCTION {function}()",
                quote(d, &self.trigger_name(spec.table(), ev))
            )
        };
        vec![
            body,
            trigger("i", "INSERT", "REFERENCING NEW TABLE AS matroska_new"),
            trigger(
                "u",
                "UPDATE",
                "REFERENCING OLD TABLE AS matroska_old NEW TABLE AS matroska_new",
            ),
            trigger("d", "DELETE", "REFERENCING OLD TABLE AS matroska_old"),
            trigger("t", "TRUNCATE", ""),
        ]
    }

    fn row_triggers(&self, d: Dialect, spec: &TableSpec) -> Vec<String> {
        let outbox = self.outbox_table(d);
        let table = quote(d, spec.table());
        let name = literal(spec.table());
        let now = Self::now_us(d);
        let watched = spec.watched_columns();
        let keys: Vec<&str> = spec.key_columns().iter().map(|c| c.name()).collect();
        // Null-safe equality of every watched column (the key included: a changed key is a
        // full change, both keys are invalidated).
        let same = watched
            .iter()
            .map(|c| {
                let c = quote(d, c);
                match d {
                    Dialect::MySql => format!("OLD.{c} <=> NEW.{c}"),
                    _ => format!("OLD.{c} IS NEW.{c}"),
                }
            })
            .collect::<Vec<_>>()
            .join(" AND ");
        let old_all = Self::json_object(d, spec, &watched, "OLD");
        let new_all = Self::json_object(d, spec, &watched, "NEW");
        let new_key = Self::json_object(d, spec, &keys, "NEW");
        let insert = format!("INSERT INTO {outbox} (table_name, op, old_row, new_row, created_us)");
        let (op, old, new) = match d {
            Dialect::MySql => (
                format!("IF({same}, 'K', 'U')"),
                format!("IF({same}, NULL, {old_all})"),
                format!("IF({same}, {new_key}, {new_all})"),
            ),
            _ => (
                format!("CASE WHEN {same} THEN 'K' ELSE 'U' END"),
                format!("CASE WHEN {same} THEN NULL ELSE {old_all} END"),
                format!("CASE WHEN {same} THEN {new_key} ELSE {new_all} END"),
            ),
        };
        let statements = [
            (
                "i",
                "INSERT",
                format!("{insert} VALUES ({name}, 'I', NULL, {new_all}, {now})"),
            ),
            (
                "u",
                "UPDATE",
                format!("{insert} VALUES ({name}, {op}, {old}, {new}, {now})"),
            ),
            (
                "d",
                "DELETE",
                format!("{insert} VALUES ({name}, 'D', {old_all}, NULL, {now})"),
            ),
        ];
        statements
            .into_iter()
            .map(|(ev, event, statement)| {
                let trigger = quote(d, &self.trigger_name(spec.table(), ev));
                match d {
                    Dialect::MySql => {
                        let trigger = match &self.schema {
                            Some(schema) => format!("{}.{trigger}", quote(d, schema)),
                            None => trigger,
                        };
                        format!(
                            "CREATE TRIGGER {trigger} AFTER {event} ON {table} FOR EACH ROW {statement}"
                        )
                    }
                    _ => format!(
                        "CREATE TRIGGER {trigger} AFTER {event} ON {table} FOR EACH ROW BEGIN {statement}; END"
                    ),
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use matroska_core::ColumnDecoder;

    use super::*;

    fn spec() -> TableSpec {
        TableSpec::new("post", "post")
            .key("id", ColumnDecoder::of::<i64>())
            .scope(&[("category", ColumnDecoder::of::<String>())], false)
    }

    #[test]
    fn names_are_checked() {
        assert!(Outbox::named("ok_name").is_ok());
        for bad in ["", "1abc", "a-b", "a;drop", &"x".repeat(49)] {
            assert!(Outbox::named(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn quoting_survives_hostile_names() {
        assert_eq!(quote(Dialect::Postgres, "we\"ird"), "\"we\"\"ird\"");
        assert_eq!(quote(Dialect::MySql, "a`b"), "`a``b`");
        assert_eq!(literal("it's"), "'it''s'");
        assert_eq!(quote(Dialect::Postgres, "app.post"), "\"app\".\"post\"");
    }

    #[test]
    fn trigger_names_are_short_and_distinct() {
        let outbox = Outbox::default();
        let a = outbox.trigger_name(&"a".repeat(200), "u");
        let b = outbox.trigger_name(&format!("{}b", "a".repeat(199)), "u");
        assert!(a.len() <= 64, "{a}");
        assert_ne!(a, b);
    }

    #[test]
    fn every_dialect_installs_three_events_and_records_the_version() {
        for dialect in [Dialect::Postgres, Dialect::MySql, Dialect::Sqlite] {
            let sql = Outbox::default().install_sql(dialect, &[spec()]).unwrap();
            let triggers = sql
                .iter()
                .filter(|s| s.starts_with("CREATE TRIGGER"))
                .count();
            assert!(triggers >= 3, "{dialect:?}: {sql:#?}");
            assert!(
                sql.iter()
                    .any(|s| s.contains("_tables") && s.contains("INSERT"))
            );
        }
    }

    #[test]
    fn a_spec_without_key_is_refused() {
        let keyless = TableSpec::new("x", "x");
        assert!(matches!(
            Outbox::default().install_sql(Dialect::Sqlite, &[keyless]),
            Err(Error::InvalidSpec { .. })
        ));
    }
}
