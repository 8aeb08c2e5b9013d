//! The SQL that makes a database record its own changes: the outbox tables and, per watched
//! table, the triggers, for PostgreSQL, MySQL/MariaDB and SQLite.
//!
//! Everything here is text: [`Outbox::install_sql`] and [`Outbox::uninstall_sql`] give the
//! statements for a migration that holds plain SQL (a Diesel `up.sql`, a SeaORM migration's
//! `execute_unprepared`), and [`install`](crate::install) runs them.
//!
//! ## What the triggers record
//! One outbox row per changed row, in the writing transaction: the table, an operation and
//! the *watched* columns ([`TableSpec::watched_columns`]: the key, every scope column and
//! every tracked column) of the old and the new row as JSON:
//!
//! | op | when | `old_row` | `new_row` |
//! |---|---|---|---|
//! | `I` | insert | – | watched columns |
//! | `D` | delete | watched columns | – |
//! | `U` | update changing a watched column or the key | watched columns | watched columns |
//! | `K` | update changing no watched column | – | key and tracked columns |
//! | `T` | `TRUNCATE` (PostgreSQL; MySQL found by the relay); an install over missing, disabled or altered triggers; a write nothing else records ([`Outbox::record_whole_table_sql`]) | – | – |
//!
//! Tracked columns ([`TableSpec::tracked`], a Diesel model's foreign keys) are in every row
//! the triggers record, `K` rows included ([`TableSpec::key_only_columns`]): the relay
//! invalidates their values' single-field conditions for every change of a row, on which
//! cached queries filtered by them depend ([`matroska_core::derived`]).
//!
//! On PostgreSQL the triggers are statement-level with transition tables: a 100k-row
//! `UPDATE` adds one `INSERT .. SELECT` (old and new rows paired by key; a row whose key
//! changed is recorded as two unpaired `U` rows, one per side), and one `pg_notify` per
//! statement wakes the relays when the transaction commits. MySQL/MariaDB and SQLite have
//! row-level triggers only.

use std::fmt::Write as _;

use matroska_core::TableSpec;

use crate::error::{Error, Result};

/// The message of the error a PostgreSQL swap raises when another install changed the table's
/// triggers since this one read them (the install then reads again and plans anew).
pub(crate) const RACED: &str = "matroska outbox: another install changed these triggers meanwhile";

/// The version of the trigger layout this crate installs. Installing a newer version replaces
/// the triggers of an older one; an older crate refuses to replace a newer one.
///
/// 3: `K` rows record the tracked columns ([`TableSpec::tracked`]) beside the key.
pub const LAYOUT_VERSION: i64 = 3;

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

/// A string literal. MySQL reads a backslash in a literal as an escape unless the session
/// runs with `NO_BACKSLASH_ESCAPES`, and a trigger body keeps the mode of the session that
/// created it: a backslash is written as `CHAR(92)`, which reads the same in either mode.
pub(crate) fn literal(dialect: Dialect, text: &str) -> String {
    let plain = |part: &str| format!("'{}'", part.replace('\'', "''"));
    if dialect != Dialect::MySql || !text.contains('\\') {
        return plain(text);
    }
    let parts: Vec<String> = text.split('\\').map(plain).collect();
    format!("CONCAT({})", parts.join(", CHAR(92 USING utf8mb4), "))
}

/// A `LIKE` pattern matching names that start with `prefix` (letters, digits and `_`), with
/// `!` as the escape character (no backslash: see [`literal`]).
fn like_prefix(dialect: Dialect, prefix: &str) -> String {
    format!(
        "{} ESCAPE '!'",
        literal(dialect, &format!("{}%", prefix.replace('_', "!_")))
    )
}

/// FNV-1a: stable across builds and processes.
fn fnv(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// A short, stable name part for a table name that may be long or hold any character: the
/// alphanumeric part, cut, plus a hash of the whole.
fn name_part(table: &str) -> String {
    let clean: String = table
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .take(24)
        .collect();
    format!("{clean}_{:08x}", fnv(table.as_bytes()) & 0xffff_ffff)
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

    /// The relays' consumers (one per cache), quoted and qualified.
    pub(crate) fn consumers_table(&self, dialect: Dialect) -> String {
        self.qualified(dialect, "_consumers")
    }

    /// Which consumer delivered which outbox row, quoted and qualified.
    pub(crate) fn done_table(&self, dialect: Dialect) -> String {
        self.qualified(dialect, "_done")
    }

    /// The suffixes of the outbox's tables.
    const SUFFIXES: [&'static str; 5] = ["", "_dead", "_tables", "_consumers", "_done"];

    /// The statements that create the outbox tables (idempotent).
    pub fn create_tables_sql(&self, dialect: Dialect) -> Vec<String> {
        let mut out = self.create_queue_tables_sql(dialect);
        out.extend(self.create_consumer_tables_sql(dialect));
        out
    }

    /// The consumers (one row per cache the relays deliver to: `seen_us` is its last
    /// heartbeat by the database's clock, `expiry_us` how long its relays may stay unseen
    /// before another relay drops it, `ready` whether the cache was flushed after it
    /// registered) and the delivery marks (a row is deleted once every consumer marked it).
    pub(crate) fn create_consumer_tables_sql(&self, dialect: Dialect) -> Vec<String> {
        let (consumers, done) = (self.consumers_table(dialect), self.done_table(dialect));
        let (text, int, engine) = match dialect {
            Dialect::Postgres => ("TEXT", "BIGINT", ""),
            Dialect::MySql => ("VARCHAR(255)", "BIGINT", " ENGINE=InnoDB"),
            Dialect::Sqlite => ("TEXT", "INTEGER", ""),
        };
        vec![
            format!(
                "CREATE TABLE IF NOT EXISTS {consumers} (name {text} NOT NULL PRIMARY KEY, \
                 registered_us {int} NOT NULL, seen_us {int} NOT NULL, \
                 expiry_us {int} NOT NULL, beats {int} NOT NULL, ready {int} NOT NULL){engine}"
            ),
            format!(
                "CREATE TABLE IF NOT EXISTS {done} (consumer {text} NOT NULL, id {int} NOT NULL, \
                 PRIMARY KEY (consumer, id)){engine}"
            ),
        ]
    }

    fn create_queue_tables_sql(&self, dialect: Dialect) -> Vec<String> {
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

    /// How many tables the outbox has ([`Outbox::tables_present_sql`] counts them).
    pub const TABLES: i64 = Self::SUFFIXES.len() as i64;

    /// A query of how many of the outbox's tables exist: one row (`name` = '', `n`; all of
    /// them when `n` is [`Outbox::TABLES`]). It never fails, even without the outbox, so it
    /// is safe inside a transaction.
    pub fn tables_present_sql(&self, dialect: Dialect) -> String {
        let names = Self::SUFFIXES.map(|suffix| format!("{}{suffix}", self.table));
        match dialect {
            Dialect::Postgres => {
                let exists = names
                    .iter()
                    .map(|n| {
                        let qualified = match &self.schema {
                            Some(s) => format!("{}.{}", quote(dialect, s), quote(dialect, n)),
                            None => quote(dialect, n),
                        };
                        format!(
                            "(to_regclass({}) IS NOT NULL)::int",
                            literal(dialect, &qualified)
                        )
                    })
                    .collect::<Vec<_>>()
                    .join(" + ");
                format!("SELECT ''::text AS name, ({exists})::bigint AS n")
            }
            Dialect::MySql => format!(
                "SELECT '' AS name, COUNT(*) AS n FROM information_schema.TABLES \
                 WHERE TABLE_SCHEMA = {} AND TABLE_NAME IN ({})",
                self.schema
                    .as_deref()
                    .map_or_else(|| "DATABASE()".to_owned(), |s| literal(dialect, s)),
                names.map(|n| literal(dialect, &n)).join(", ")
            ),
            Dialect::Sqlite => format!(
                "SELECT '' AS name, COUNT(*) AS n FROM sqlite_master WHERE type = 'table' \
                 AND name IN ({})",
                names.map(|n| literal(dialect, &n)).join(", ")
            ),
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

    /// The statements that record a change of the whole of `table` in the outbox: a `T` row
    /// (as a PostgreSQL `TRUNCATE` writes), which every consumer's relay turns into the
    /// invalidation of everything cached from the table (the entity's lists, and its rows
    /// cached by primary key through the integrations, which also depend on the entity's
    /// `all`), and on PostgreSQL a `pg_notify` that wakes the relays at the commit. The row
    /// is written only while some consumer is registered: a consumer that registers later
    /// flushes its cache before it delivers anything.
    ///
    /// For a write nothing else records: made while the table had no triggers (before the
    /// install, after an uninstall) or through a path no trigger sees. Run it after that write
    /// (or in its transaction): a relay that delivered the row before the write committed
    /// would invalidate too early. [`install`](crate::install) writes it itself when it
    /// (re)creates triggers that were missing, disabled or altered, and
    /// [`Outbox::install_sql`] always.
    ///
    /// ```
    /// use matroska_outbox::{Dialect, Outbox};
    ///
    /// let sql = Outbox::default().record_whole_table_sql(Dialect::Postgres, "post");
    /// assert!(sql[0].contains("'T'"));
    /// assert!(sql[1].contains("pg_notify"));
    /// ```
    pub fn record_whole_table_sql(&self, dialect: Dialect, table: &str) -> Vec<String> {
        // Only while a consumer is registered: one that registers later flushes its cache
        // first (`consumer.rs`), and a row no consumer marks would wait for the first one.
        let mut out = vec![format!(
            "INSERT INTO {} (table_name, op, old_row, new_row, created_us) \
             SELECT {}, 'T', NULL, NULL, {}{} WHERE EXISTS (SELECT 1 FROM {})",
            self.outbox_table(dialect),
            literal(dialect, table),
            Self::now_us(dialect),
            if dialect == Dialect::MySql {
                " FROM DUAL"
            } else {
                ""
            },
            self.consumers_table(dialect)
        )];
        if dialect == Dialect::Postgres {
            out.push(format!(
                "SELECT pg_notify({}, '')",
                literal(dialect, self.channel())
            ));
        }
        out
    }

    /// Every statement that installs the outbox for `tables` (idempotent: tables are created
    /// if missing, triggers replaced, the layout version recorded). Specs of one table (two
    /// models on it) are installed as one: the triggers record the union of their columns.
    ///
    /// After each table's triggers, a whole-table (`T`) row
    /// ([`Outbox::record_whole_table_sql`]): a migration runs this when the outbox is
    /// installed or re-installed (after a rollback), and whatever was written to the table
    /// while no trigger recorded it (before, or while it was uninstalled) is invalidated by
    /// the relays. Running it again costs one invalidation of each table's cached reads.
    ///
    /// This is the text for a migration; [`install`](crate::install) does better where it
    /// can ask the database: it leaves up-to-date triggers alone, keeps the columns an earlier
    /// install of another model on the same table recorded, swaps triggers without a gap
    /// (here MySQL and SQLite drop the old triggers before creating the new ones, so run
    /// it while nothing writes), and on SQLite also records rows that a `REPLACE` deletes
    /// through a `UNIQUE` index (here only through the primary key).
    ///
    /// # Errors
    /// [`Error::InvalidSpec`] for a table with no key column, or two specs of one table
    /// with different keys.
    pub fn install_sql(&self, dialect: Dialect, tables: &[TableSpec]) -> Result<Vec<String>> {
        let mut out = self.create_tables_sql(dialect);
        for recorded in Recorded::group(tables)? {
            let facts = Facts::default();
            if dialect == Dialect::Postgres {
                out.extend(self.swap_sql(dialect, &recorded, &facts, &[]));
            } else {
                out.extend(self.uninstall_table_sql(dialect, &recorded.table));
                let fingerprint = self.fingerprint(dialect, &recorded, &facts);
                out.extend(self.triggers_sql(dialect, &recorded, &facts, 0));
                out.push(self.record_version_sql(dialect, &recorded, &fingerprint));
            }
            // After the triggers exist: a write before them is covered by this row, a write
            // after by the triggers (on MySQL/SQLite nothing records between the drop and the
            // create above: this text is for a migration, run while nothing writes).
            out.extend(self.record_whole_table_sql(dialect, &recorded.table));
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
                    literal(dialect, t)
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
            self.consumers_table(dialect),
            self.done_table(dialect),
        ]
        .into_iter()
        // MySQL's recorded table ids (`truncate.rs`).
        .chain((dialect == Dialect::MySql).then(|| crate::truncate::ids_table(self)))
        .map(|t| format!("DROP TABLE IF EXISTS {t}"))
        .collect()
    }

    /// A query that counts this outbox's triggers on `table` (3 or more when it is watched;
    /// never fails, even without the outbox installed, so it is safe inside a transaction).
    /// Triggers that do not fire in this session (PostgreSQL's `ALTER TABLE .. DISABLE
    /// TRIGGER`, or a session with `session_replication_role = replica`) are not counted:
    /// they record nothing.
    pub fn triggers_present_sql(&self, dialect: Dialect, table: &str) -> String {
        format!(
            "SELECT COUNT(*) FROM ({}) matroska_triggers",
            self.trigger_names_sql(dialect, table, true)
        )
    }

    /// The names of this outbox's triggers on `table`: rows of (`name`, `n` = 0); with
    /// `enabled_only`, PostgreSQL's disabled triggers left out.
    pub(crate) fn trigger_names_sql(
        &self,
        dialect: Dialect,
        table: &str,
        enabled_only: bool,
    ) -> String {
        let prefix = like_prefix(dialect, &format!("{}_{}_", self.table, name_part(table)));
        match dialect {
            Dialect::Postgres => format!(
                "SELECT tgname::text AS name, 0::bigint AS n FROM pg_trigger \
                 WHERE tgrelid = to_regclass({}) AND tgname LIKE {prefix}{}",
                literal(dialect, &quote(dialect, table)),
                if enabled_only {
                    // Firing in this session: `O` (the default) fires unless the session is a
                    // replica's (`session_replication_role`, as pg_restore
                    // --disable-triggers sets it), `R` only there, `A` always, `D` never.
                    " AND (tgenabled = 'A' \
                     OR (tgenabled = 'O' AND current_setting('session_replication_role') <> 'replica') \
                     OR (tgenabled = 'R' AND current_setting('session_replication_role') = 'replica'))"
                } else {
                    ""
                }
            ),
            Dialect::MySql => format!(
                "SELECT TRIGGER_NAME AS name, CAST(0 AS SIGNED) AS n FROM information_schema.TRIGGERS \
                 WHERE EVENT_OBJECT_SCHEMA = {} AND EVENT_OBJECT_TABLE = {} AND TRIGGER_NAME LIKE {prefix}",
                self.schema
                    .as_deref()
                    .map_or_else(|| "DATABASE()".to_owned(), |s| literal(dialect, s)),
                literal(dialect, table)
            ),
            Dialect::Sqlite => format!(
                "SELECT name, 0 AS n FROM sqlite_master WHERE type = 'trigger' AND tbl_name = {} \
                 AND name LIKE {prefix}",
                literal(dialect, table)
            ),
        }
    }

    /// The state of this outbox's triggers on `table` as the database holds it: rows of
    /// (`name`: the trigger's name, a newline, its definition as
    /// [`Outbox::expected_trigger_states`] spells it, `n` = 0).
    pub(crate) fn trigger_states_sql(&self, dialect: Dialect, table: &str) -> String {
        let prefix = like_prefix(dialect, &format!("{}_{}_", self.table, name_part(table)));
        match dialect {
            Dialect::Postgres => format!(
                "SELECT t.tgname::text || chr(10) || t.tgenabled::text || ':' || \
                 (t.tgfoid = coalesce(to_regproc({function})::oid, 0))::text || ':' || \
                 p.prosecdef::text || ':' || p.prosrc AS name, 0::bigint AS n \
                 FROM pg_trigger t JOIN pg_proc p ON p.oid = t.tgfoid \
                 WHERE t.tgrelid = to_regclass({table}) AND t.tgname LIKE {prefix}",
                function = literal(dialect, &self.function_name(table)),
                table = literal(dialect, &quote(dialect, table)),
            ),
            Dialect::MySql => format!(
                "SELECT CONCAT(TRIGGER_NAME, CHAR(10), ACTION_TIMING, ' ', EVENT_MANIPULATION, \
                 CHAR(10), ACTION_STATEMENT) AS name, CAST(0 AS SIGNED) AS n \
                 FROM information_schema.TRIGGERS WHERE EVENT_OBJECT_SCHEMA = {} \
                 AND EVENT_OBJECT_TABLE = {} AND TRIGGER_NAME LIKE {prefix}",
                self.schema
                    .as_deref()
                    .map_or_else(|| "DATABASE()".to_owned(), |s| literal(dialect, s)),
                literal(dialect, table)
            ),
            Dialect::Sqlite => format!(
                "SELECT name || char(10) || sql AS name, 0 AS n FROM sqlite_master \
                 WHERE type = 'trigger' AND tbl_name = {} AND name LIKE {prefix}",
                literal(dialect, table)
            ),
        }
    }

    /// The trigger states ([`Outbox::trigger_states_sql`]) of the triggers `recorded` needs,
    /// generation `generation`: (name, definition), sorted.
    pub(crate) fn expected_trigger_states(
        &self,
        dialect: Dialect,
        recorded: &Recorded,
        facts: &Facts,
        generation: u8,
    ) -> Vec<(String, String)> {
        let names = self.trigger_names(dialect, &recorded.table, generation);
        let statements = self.triggers_sql(dialect, recorded, facts, generation);
        let mut out: Vec<(String, String)> = match dialect {
            Dialect::Postgres => {
                // Enabled ('O'), calling our function, whose source is what we would create.
                let source = statements
                    .first()
                    .and_then(|f| f.split("$matroska$").nth(1))
                    .unwrap_or_default();
                names
                    .into_iter()
                    .map(|n| (n, format!("O:true:true:{source}")))
                    .collect()
            }
            Dialect::MySql => names
                .into_iter()
                .zip(statements)
                .map(|(n, sql)| {
                    // `CREATE TRIGGER <name> <timing> <event> ON <table> FOR EACH ROW <body>`
                    let after_name = sql.split_once(" ON ").map_or("", |(head, _)| head);
                    let timing_event = after_name.rsplitn(3, ' ').collect::<Vec<_>>();
                    let timing_event = match timing_event.as_slice() {
                        [event, timing, _] => format!("{timing} {event}"),
                        _ => String::new(),
                    };
                    let body = sql
                        .split_once(" FOR EACH ROW ")
                        .map_or("", |(_, body)| body);
                    (n, format!("{timing_event}\n{body}"))
                })
                .collect(),
            Dialect::Sqlite => names.into_iter().zip(statements).collect(),
        };
        out.sort();
        out
    }

    /// The columns of `table` in the catalogue: rows of (`name`, `n`: 1 for a MySQL
    /// `TIMESTAMP` column, else 0). Empty when the table does not exist.
    pub(crate) fn table_columns_sql(&self, dialect: Dialect, table: &str) -> String {
        match dialect {
            Dialect::Postgres => format!(
                "SELECT attname::text AS name, 0::bigint AS n FROM pg_attribute \
                 WHERE attrelid = to_regclass({}) AND attnum > 0 AND NOT attisdropped",
                literal(dialect, &quote(dialect, table))
            ),
            Dialect::MySql => format!(
                "SELECT COLUMN_NAME AS name, CAST(LOWER(DATA_TYPE) = 'timestamp' AS SIGNED) AS n \
                 FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = {} AND TABLE_NAME = {}",
                self.schema
                    .as_deref()
                    .map_or_else(|| "DATABASE()".to_owned(), |s| literal(dialect, s)),
                literal(dialect, table)
            ),
            Dialect::Sqlite => format!(
                "SELECT name, 0 AS n FROM pragma_table_info({})",
                literal(dialect, table)
            ),
        }
    }

    /// PostgreSQL: the key of the advisory lock that serialises this outbox's installs.
    pub(crate) fn install_lock_key(&self) -> i64 {
        let name = self.meta_table(Dialect::Postgres);
        // Reinterpreted bits: any stable 64-bit value is a key.
        i64::from_ne_bytes(fnv(name.as_bytes()).to_ne_bytes())
    }

    /// PostgreSQL: statements that, at the start of a swap's transaction, wait for any other
    /// install of this outbox to finish and then fail unless `table`'s stored description is
    /// still `expected` (what the swap was planned from).
    pub(crate) fn install_guard_sql(&self, table: &str, expected: Option<&str>) -> Vec<String> {
        let d = Dialect::Postgres;
        let expected = expected.map_or_else(|| "NULL".to_owned(), |e| literal(d, e));
        vec![
            format!("SELECT pg_advisory_xact_lock({})", self.install_lock_key()),
            format!(
                "DO $matroska$ BEGIN IF (SELECT columns FROM {meta} WHERE table_name = {name}) \
                 IS DISTINCT FROM {expected} THEN RAISE EXCEPTION '{RACED}'; END IF; END $matroska$",
                meta = self.meta_table(d),
                name = literal(d, table),
            ),
        ]
    }

    /// The query of the installed layout versions: rows of (`name`: the table, `n`: its version).
    pub(crate) fn versions_sql(&self, dialect: Dialect) -> String {
        format!(
            "SELECT table_name AS name, version AS n FROM {}",
            self.meta_table(dialect)
        )
    }

    /// The query of what is recorded for `table`: rows of (`name`: the description of the
    /// installed triggers, `n`: their layout version).
    pub(crate) fn installed_sql(&self, dialect: Dialect, table: &str) -> String {
        format!(
            "SELECT columns AS name, version AS n FROM {} WHERE table_name = {}",
            self.meta_table(dialect),
            literal(dialect, table)
        )
    }

    /// SQLite: the query of `table`'s `UNIQUE` indexes, rows of (`name`: a JSON object with
    /// `columns`, an array of `[name, collation]` in index order, the name `null` for an
    /// expression, and `sql`, the index's `CREATE INDEX` text or `null`; `n`: the index's
    /// number).
    pub(crate) fn unique_indexes_sql(dialect: Dialect, table: &str) -> Option<String> {
        (dialect == Dialect::Sqlite).then(|| {
            format!(
                "SELECT json_object('columns', json_group_array(json_array(ii.name, ii.coll)), \
                 'sql', (SELECT m.sql FROM sqlite_master m WHERE m.type = 'index' AND m.name = il.name)) \
                 AS name, il.seq AS n \
                 FROM pragma_index_list({t}) il JOIN pragma_index_xinfo(il.name) ii \
                 WHERE il.\"unique\" = 1 AND ii.key = 1 GROUP BY il.seq",
                t = literal(dialect, table)
            )
        })
    }

    /// The key of every row of `recorded.table`, as the triggers record a key-only change:
    /// rows of (`name`: the key as JSON, `n` = 0).
    pub(crate) fn keys_sql(&self, dialect: Dialect, recorded: &Recorded) -> String {
        // The key-only columns, as a `K` row holds them: `TableSpec::dependencies` of a
        // key-only change needs the tracked columns too.
        let json = Self::json_object(dialect, recorded, &recorded.key_only(), "o");
        let table = quote(dialect, &recorded.table);
        match dialect {
            Dialect::Postgres => {
                format!("SELECT ({json})::text AS name, 0::bigint AS n FROM {table} o")
            }
            Dialect::MySql => {
                format!(
                    "SELECT CAST({json} AS CHAR) AS name, CAST(0 AS SIGNED) AS n FROM {table} o"
                )
            }
            Dialect::Sqlite => format!("SELECT {json} AS name, 0 AS n FROM {table} o"),
        }
    }

    fn record_version_sql(
        &self,
        dialect: Dialect,
        recorded: &Recorded,
        fingerprint: &str,
    ) -> String {
        let meta = self.meta_table(dialect);
        let values = format!(
            "({}, {}, {LAYOUT_VERSION}, {})",
            literal(dialect, &recorded.table),
            literal(dialect, &recorded.entities.join(",")),
            literal(dialect, &recorded.describe(fingerprint))
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

    /// A trigger's name. Row-level triggers come in two generations (`gen` 0 and 1) so an
    /// upgrade can create the new ones before it drops the old ones.
    fn trigger_name(&self, table: &str, event: &str, generation: u8) -> String {
        let suffix = if generation == 0 { "" } else { "2" };
        format!("{}_{}_{event}{suffix}", self.table, name_part(table))
    }

    /// The events a dialect's triggers are named after.
    fn events(dialect: Dialect) -> &'static [&'static str] {
        match dialect {
            Dialect::Postgres => &["i", "u", "d", "t"],
            Dialect::MySql => &["i", "u", "d"],
            // `ri` / `ru`: the rows a REPLACE deletes (before insert / update).
            Dialect::Sqlite => &["i", "u", "d", "ri", "ru"],
        }
    }

    /// The names of a complete set of triggers of generation `generation` on `table`.
    pub(crate) fn trigger_names(
        &self,
        dialect: Dialect,
        table: &str,
        generation: u8,
    ) -> Vec<String> {
        Self::events(dialect)
            .iter()
            .map(|ev| self.trigger_name(table, ev, generation))
            .collect()
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

    /// `DROP TRIGGER` of one trigger by name.
    fn drop_trigger_sql(&self, dialect: Dialect, table: &str, name: &str) -> String {
        let name = quote(dialect, name);
        match (&self.schema, dialect) {
            (_, Dialect::Postgres) => {
                format!("DROP TRIGGER IF EXISTS {name} ON {}", quote(dialect, table))
            }
            (Some(schema), Dialect::MySql) => {
                format!("DROP TRIGGER IF EXISTS {}.{name}", quote(dialect, schema))
            }
            _ => format!("DROP TRIGGER IF EXISTS {name}"),
        }
    }

    fn uninstall_table_sql(&self, dialect: Dialect, table: &str) -> Vec<String> {
        let generations: &[u8] = if dialect == Dialect::Postgres {
            &[0]
        } else {
            &[0, 1]
        };
        let mut sql: Vec<String> = generations
            .iter()
            .flat_map(|g| self.trigger_names(dialect, table, *g))
            .map(|name| self.drop_trigger_sql(dialect, table, &name))
            .collect();
        if dialect == Dialect::Postgres {
            sql.push(format!(
                "DROP FUNCTION IF EXISTS {}()",
                self.function_name(table)
            ));
        }
        sql
    }

    /// A fingerprint of the triggers `recorded` installs: equal fingerprints, same triggers.
    pub(crate) fn fingerprint(
        &self,
        dialect: Dialect,
        recorded: &Recorded,
        facts: &Facts,
    ) -> String {
        let text = self.triggers_sql(dialect, recorded, facts, 0).join("\n");
        format!("{LAYOUT_VERSION}:{:016x}", fnv(text.as_bytes()))
    }

    /// The statements that replace `recorded.table`'s triggers without a moment in which a
    /// committed write records nothing, `existing` being the names of the triggers there now.
    ///
    /// PostgreSQL: one statement list the caller runs as one transaction (its DDL is
    /// transactional; writers wait for its lock and then see the new triggers). MySQL and
    /// SQLite: the other generation's triggers are created first and the old ones dropped
    /// after, so a write in between is recorded twice (harmless), never not at all.
    pub(crate) fn swap_sql(
        &self,
        dialect: Dialect,
        recorded: &Recorded,
        facts: &Facts,
        existing: &[String],
    ) -> Vec<String> {
        let fingerprint = self.fingerprint(dialect, recorded, facts);
        let mut out = Vec::new();
        if dialect == Dialect::Postgres {
            // Dropped and created in the same transaction as the function is replaced.
            for name in self.trigger_names(dialect, &recorded.table, 0) {
                out.push(self.drop_trigger_sql(dialect, &recorded.table, &name));
            }
            out.extend(self.triggers_sql(dialect, recorded, facts, 0));
        } else {
            // The new generation is the one not (completely) there: the other keeps
            // recording until the new one exists. Leftovers of the new generation (a swap cut
            // short, a trigger altered by hand) are dropped first, so their names are free.
            let holds = |g: u8| {
                self.trigger_names(dialect, &recorded.table, g)
                    .iter()
                    .filter(|n| existing.contains(n))
                    .count()
            };
            let (complete, h0, h1) = (Self::events(dialect).len(), holds(0), holds(1));
            let generation: u8 = if h0 == complete {
                1
            } else if h1 == complete || h0 == 0 {
                0
            } else {
                u8::from(h1 <= h0)
            };
            let new = self.trigger_names(dialect, &recorded.table, generation);
            for name in existing.iter().filter(|n| new.contains(n)) {
                out.push(self.drop_trigger_sql(dialect, &recorded.table, name));
            }
            out.extend(self.triggers_sql(dialect, recorded, facts, generation));
            for name in existing.iter().filter(|n| !new.contains(n)) {
                out.push(self.drop_trigger_sql(dialect, &recorded.table, name));
            }
        }
        out.push(self.record_version_sql(dialect, recorded, &fingerprint));
        out
    }

    fn triggers_sql(
        &self,
        dialect: Dialect,
        recorded: &Recorded,
        facts: &Facts,
        generation: u8,
    ) -> Vec<String> {
        match dialect {
            Dialect::Postgres => self.postgres_triggers(recorded),
            Dialect::MySql | Dialect::Sqlite => {
                self.row_triggers(dialect, recorded, facts, generation)
            }
        }
    }

    /// `jsonb_build_object` / `JSON_OBJECT` / `json_object` of `columns` of the row `alias`.
    pub(crate) fn json_object(
        dialect: Dialect,
        recorded: &Recorded,
        columns: &[String],
        alias: &str,
    ) -> String {
        let mut out = String::new();
        for (i, column) in columns.iter().enumerate() {
            if i > 0 {
                out.push_str(", ");
            }
            let value = format!("{alias}.{}", quote(dialect, column));
            let bytes = recorded.hex.contains(column);
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
            let _ = write!(out, "{}, {value}", literal(dialect, column));
        }
        match dialect {
            Dialect::Postgres => format!("jsonb_build_object({out})"),
            Dialect::MySql => format!("JSON_OBJECT({out})"),
            Dialect::Sqlite => format!("json_object({out})"),
        }
    }

    fn postgres_triggers(&self, recorded: &Recorded) -> Vec<String> {
        let d = Dialect::Postgres;
        let outbox = self.outbox_table(d);
        let table = quote(d, &recorded.table);
        let name = literal(d, &recorded.table);
        let now = Self::now_us(d);
        let watched = &recorded.columns;
        let keys = &recorded.keys;
        let scoped: Vec<String> = watched
            .iter()
            .filter(|c| !keys.contains(c))
            .cloned()
            .collect();
        let first_key = quote(d, &keys[0]);
        // Compared as `jsonb`, whose operators live in `pg_catalog`: the function runs with a
        // pinned search path, where a column type's own `=` (citext, an extension's) may not
        // be found, and a type without `=` (json, point) still compares.
        let old_keys = Self::json_object(d, recorded, keys, "o");
        let new_keys = Self::json_object(d, recorded, keys, "n");
        // A `K` row: the key and the tracked columns (whose conditions every change
        // invalidates).
        let new_key_only = Self::json_object(d, recorded, &recorded.key_only(), "n");
        let changed = if scoped.is_empty() {
            format!("o.{first_key} IS NULL OR n.{first_key} IS NULL")
        } else {
            format!(
                "o.{first_key} IS NULL OR n.{first_key} IS NULL OR {} IS DISTINCT FROM {}",
                Self::json_object(d, recorded, &scoped, "o"),
                Self::json_object(d, recorded, &scoped, "n"),
            )
        };
        let old_all = Self::json_object(d, recorded, watched, "o");
        let new_all = Self::json_object(d, recorded, watched, "n");
        let notify = literal(d, self.channel());
        let function = self.function_name(&recorded.table);
        // SECURITY DEFINER: the function writes the outbox with the installing role's rights,
        // so a role that may write the table but not the outbox (or its sequence) still can.
        // Such a function must not resolve names through a search path its callers control:
        // every name in it is qualified, and the path is pinned to `pg_catalog` (and
        // `pg_temp` last, where it cannot shadow anything). Without a schema (a migration's
        // text) the path is pinned, right after the function is created, to the schema the
        // migration runs in, `pg_temp` last: `FROM CURRENT` alone leaves `pg_temp` first
        // implicitly, where a writer's temporary table named like the outbox would take the
        // rows.
        let search_path = if self.schema.is_some() {
            "SET search_path = pg_catalog, pg_temp"
        } else {
            "SET search_path FROM CURRENT"
        };
        let pin = self.schema.is_none().then(|| {
            let bare = format!("{}_{}", self.table, name_part(&recorded.table));
            format!(
                "DO $matroska$ BEGIN EXECUTE format('ALTER FUNCTION %I.%I() SET search_path = %I, pg_temp', \
                 current_schema(), {}, current_schema()); END $matroska$",
                literal(d, &bare)
            )
        });
        let body = format!(
            "CREATE OR REPLACE FUNCTION {function}() RETURNS trigger LANGUAGE plpgsql \
             SECURITY DEFINER {search_path} AS $matroska$\n\
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
                 CASE WHEN n.{first_key} IS NULL THEN NULL WHEN {changed} THEN {new_all} ELSE {new_key_only} END,\n\
                 {now}\n\
               FROM matroska_old o FULL JOIN matroska_new n ON {old_keys} = {new_keys};\n\
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
                quote(d, &self.trigger_name(&recorded.table, ev, 0))
            )
        };
        let mut out = vec![body];
        out.extend(pin);
        out.extend([
            // Only triggers call it (attaching it elsewhere needs EXECUTE).
            format!("REVOKE ALL ON FUNCTION {function}() FROM PUBLIC"),
            trigger("i", "INSERT", "REFERENCING NEW TABLE AS matroska_new"),
            trigger(
                "u",
                "UPDATE",
                "REFERENCING OLD TABLE AS matroska_old NEW TABLE AS matroska_new",
            ),
            trigger("d", "DELETE", "REFERENCING OLD TABLE AS matroska_old"),
            trigger("t", "TRUNCATE", ""),
        ]);
        out
    }

    fn row_triggers(
        &self,
        d: Dialect,
        recorded: &Recorded,
        facts: &Facts,
        generation: u8,
    ) -> Vec<String> {
        let outbox = self.outbox_table(d);
        let table = quote(d, &recorded.table);
        let name = literal(d, &recorded.table);
        let now = Self::now_us(d);
        let watched = &recorded.columns;
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
        let old_all = Self::json_object(d, recorded, watched, "OLD");
        let new_all = Self::json_object(d, recorded, watched, "NEW");
        // A `K` row: the key and the tracked columns.
        let new_key = Self::json_object(d, recorded, &recorded.key_only(), "NEW");
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
        let mut statements = vec![
            (
                "i",
                "AFTER INSERT".to_owned(),
                format!("{insert} VALUES ({name}, 'I', NULL, {new_all}, {now})"),
            ),
            (
                "u",
                "AFTER UPDATE".to_owned(),
                format!("{insert} VALUES ({name}, {op}, {old}, {new}, {now})"),
            ),
            (
                "d",
                "AFTER DELETE".to_owned(),
                format!("{insert} VALUES ({name}, 'D', {old_all}, NULL, {now})"),
            ),
        ];
        if d == Dialect::Sqlite {
            // SQLite deletes the rows a REPLACE (INSERT OR REPLACE, UPDATE OR REPLACE, Diesel's
            // `replace_into`) conflicts with without firing DELETE triggers (unless the writer
            // turned `recursive_triggers` on). Before each insert or update, the rows it could
            // replace (same key, or equal in a UNIQUE index) are recorded as deleted; when it
            // does not replace them (a plain INSERT fails, an upsert updates) that is one
            // spurious invalidation.
            let (insert_replaced, update_replaced, update_of) =
                Self::sqlite_replaced(recorded, facts, &insert, &name, &table);
            statements.push(("ri", "BEFORE INSERT".to_owned(), insert_replaced));
            statements.push(("ru", format!("BEFORE UPDATE{update_of}"), update_replaced));
        }
        statements
            .into_iter()
            .map(|(ev, event, statement)| {
                let trigger = quote(d, &self.trigger_name(&recorded.table, ev, generation));
                match d {
                    Dialect::MySql => {
                        let trigger = match &self.schema {
                            Some(schema) => format!("{}.{trigger}", quote(d, schema)),
                            None => trigger,
                        };
                        // A TIMESTAMP column reads in the session's time zone, and a writer
                        // may have set any: the row is read in UTC (as sqlx's sessions read
                        // it, and as the relay decodes it), the writer's zone restored after,
                        // also when the insert fails. Only where a recorded column may be a
                        // TIMESTAMP: the wrap costs MariaDB about a third more per row.
                        let body = if facts.no_timestamp {
                            format!("BEGIN {statement}; END")
                        } else {
                            mysql_utc_body(&statement)
                        };
                        format!("CREATE TRIGGER {trigger} {event} ON {table} FOR EACH ROW {body}")
                    }
                    _ => format!(
                        "CREATE TRIGGER {trigger} {event} ON {table} FOR EACH ROW BEGIN {statement}; END"
                    ),
                }
            })
            .collect()
    }
}

impl Outbox {
    /// SQLite: the bodies of the `BEFORE INSERT` and `BEFORE UPDATE` triggers that record the
    /// rows a `REPLACE` deletes, and the `OF <columns>` the update trigger is restricted to
    /// (empty: every update).
    ///
    /// A candidate row `o` conflicts with `NEW` when it is equal in the key or in every part
    /// of a `UNIQUE` index, compared as the index compares: with the index's collation (a
    /// `COLLATE NOCASE` index on a BINARY column), and for an expression the expression
    /// evaluated on both rows (on `NEW` through a subquery naming `NEW`'s columns as the
    /// table's, since the expression's column names are unqualified).
    fn sqlite_replaced(
        recorded: &Recorded,
        facts: &Facts,
        insert: &str,
        name: &str,
        table: &str,
    ) -> (String, String, String) {
        let d = Dialect::Sqlite;
        let now = Self::now_us(d);
        let new_row = facts
            .columns
            .iter()
            .map(|c| format!("NEW.{q} AS {q}", q = quote(d, c)))
            .collect::<Vec<_>>()
            .join(", ");
        let part = |p: &IndexPart| match p {
            IndexPart::Column { name, collation } => format!(
                "{table}.{q} = NEW.{q} COLLATE {coll}",
                q = quote(d, name),
                coll = quote(d, collation)
            ),
            IndexPart::Expression { sql, collation } => format!(
                "({sql}) = (SELECT ({sql}) FROM (SELECT {new_row})) COLLATE {}",
                quote(d, collation)
            ),
        };
        let key_equal = recorded
            .keys
            .iter()
            .map(|c| format!("{table}.{q} = NEW.{q}", q = quote(d, c)))
            .collect::<Vec<_>>()
            .join(" AND ");
        let conflicts = std::iter::once(format!("({key_equal})"))
            .chain(facts.unique.iter().map(|parts| {
                let all = parts.iter().map(part).collect::<Vec<_>>().join(" AND ");
                format!("({all})")
            }))
            .collect::<Vec<_>>()
            .join(" OR ");
        let old_o = Self::json_object(d, recorded, &recorded.columns, table);
        let replaced = format!(
            "{insert} SELECT {name}, 'D', {old_o}, NULL, {now} FROM {table} WHERE ({conflicts})"
        );
        let not_self = recorded
            .keys
            .iter()
            .map(|c| format!("{table}.{q} IS OLD.{q}", q = quote(d, c)))
            .collect::<Vec<_>>()
            .join(" AND ");
        let mut on_insert = replaced.clone();
        let mut on_update = format!("{replaced} AND NOT ({not_self})");
        if facts.unreadable_unique {
            // An index the trigger cannot compare by: the whole table, every time.
            let all = format!("{insert} VALUES ({name}, 'T', NULL, NULL, {now})");
            on_insert = format!("{on_insert}; {all}");
            on_update = format!("{on_update}; {all}");
        }
        // An update can only conflict through a column it sets: the key's or an index's
        // (an expression's columns are not known: then every update).
        let expression = facts
            .unique
            .iter()
            .flatten()
            .any(|p| matches!(p, IndexPart::Expression { .. }));
        let update_of = if expression || facts.unreadable_unique {
            String::new()
        } else {
            let mut columns: Vec<&String> = recorded.keys.iter().collect();
            for p in facts.unique.iter().flatten() {
                if let IndexPart::Column { name, .. } = p
                    && !columns.contains(&name)
                {
                    columns.push(name);
                }
            }
            let list = columns
                .iter()
                .map(|c| quote(d, c))
                .collect::<Vec<_>>()
                .join(", ");
            format!(" OF {list}")
        };
        (on_insert, on_update, update_of)
    }
}

/// A MySQL trigger body that runs `statement` with the session time zone at UTC and restores
/// it afterwards, also when `statement` fails: `TIMESTAMP` columns are then recorded in UTC,
/// as the relay decodes them, whatever zone the writing session uses.
pub(crate) fn mysql_utc_body(statement: &str) -> String {
    format!(
        "BEGIN \
         DECLARE matroska_tz VARCHAR(64) DEFAULT @@session.time_zone; \
         DECLARE EXIT HANDLER FOR SQLEXCEPTION \
         BEGIN SET time_zone = matroska_tz; RESIGNAL; END; \
         SET time_zone = '+00:00'; {statement}; SET time_zone = matroska_tz; END"
    )
}

/// What the triggers of one table record: the union of the specs of every model on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Recorded {
    pub(crate) table: String,
    /// The entities of the specs (informational, in the outbox's table of tables).
    entities: Vec<String>,
    /// The key columns.
    keys: Vec<String>,
    /// Every recorded column, the key first.
    columns: Vec<String>,
    /// The tracked columns ([`TableSpec::tracked`]), among `columns`: recorded in `K` rows
    /// too.
    tracked: Vec<String>,
    /// Columns recorded as `{"hex": ..}` on MySQL.
    hex: Vec<String>,
}

/// What the installer read from the database about a table, beyond its specs. The default
/// (nothing read: a migration's text) is the conservative choice everywhere.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Facts {
    /// SQLite: the parts of each `UNIQUE` index (the key's included).
    pub(crate) unique: Vec<Vec<IndexPart>>,
    /// SQLite: a `UNIQUE` index whose definition could not be read: every insert and every
    /// update is recorded as a change of the whole table (coarse, never nothing).
    pub(crate) unreadable_unique: bool,
    /// The table's columns, as the catalogue lists them (empty: not read).
    pub(crate) columns: Vec<String>,
    /// MySQL: the table's `TIMESTAMP` columns.
    pub(crate) timestamps: Vec<String>,
    /// MySQL: the installer read the column types and no recorded column is a `TIMESTAMP`,
    /// so the triggers need not force the session's time zone to UTC.
    pub(crate) no_timestamp: bool,
}

/// One part of a SQLite `UNIQUE` index: a column or an expression, compared with the
/// index's collation (which may differ from the column's).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum IndexPart {
    /// A column.
    Column {
        /// The column's name.
        name: String,
        /// The collation the index compares it with.
        collation: String,
    },
    /// An expression over the table's columns (unqualified), as the `CREATE INDEX` wrote it.
    Expression {
        /// The expression's SQL text.
        sql: String,
        /// The collation the index compares it with.
        collation: String,
    },
}

impl IndexPart {
    /// The parts of a `UNIQUE` index from its `pragma_index_xinfo` key columns (name or
    /// `None` for an expression, collation) and its `CREATE INDEX` text; `None` when an
    /// expression cannot be found in the text.
    pub(crate) fn of_index(
        columns: &[(Option<String>, String)],
        create_sql: Option<&str>,
    ) -> Option<Vec<IndexPart>> {
        let texts = create_sql.and_then(index_column_texts);
        columns
            .iter()
            .enumerate()
            .map(|(i, (name, collation))| match name {
                Some(name) => Some(IndexPart::Column {
                    name: name.clone(),
                    collation: collation.clone(),
                }),
                None => {
                    let texts = texts.as_ref()?;
                    (texts.len() == columns.len()).then(|| IndexPart::Expression {
                        sql: texts[i].clone(),
                        collation: collation.clone(),
                    })
                }
            })
            .collect()
    }
}

/// The indexed-column texts of a SQLite `CREATE INDEX` statement (`ASC`/`DESC` cut off):
/// the top-level comma-separated items of the first parenthesised list outside quotes.
fn index_column_texts(sql: &str) -> Option<Vec<String>> {
    let mut items = Vec::new();
    let mut current = String::new();
    let mut depth = 0_usize;
    let mut quote: Option<char> = None;
    for c in sql.chars() {
        if let Some(q) = quote {
            if depth > 0 {
                current.push(c);
            }
            if c == q {
                quote = None;
            }
            continue;
        }
        match c {
            '\'' | '"' | '`' => quote = Some(c),
            '[' => quote = Some(']'),
            '(' => {
                depth += 1;
                if depth == 1 {
                    continue;
                }
            }
            ')' => {
                depth = depth.checked_sub(1)?;
                if depth == 0 {
                    items.push(std::mem::take(&mut current));
                    break;
                }
            }
            ',' if depth == 1 => {
                items.push(std::mem::take(&mut current));
                continue;
            }
            _ => {}
        }
        if depth > 0 {
            current.push(c);
        }
    }
    if depth != 0 || items.is_empty() {
        return None;
    }
    let trimmed = items
        .into_iter()
        .map(|item| {
            let item = item.trim();
            let upper = item.to_ascii_uppercase();
            let cut = [" ASC", " DESC"]
                .iter()
                .find(|suffix| upper.ends_with(*suffix))
                .map_or(item.len(), |suffix| item.len() - suffix.len());
            item[..cut].trim().to_owned()
        })
        .collect::<Vec<_>>();
    trimmed.iter().all(|t| !t.is_empty()).then_some(trimmed)
}

impl Recorded {
    pub(crate) fn from_spec(spec: &TableSpec) -> Result<Self> {
        if spec.key_columns().is_empty() {
            return Err(Error::InvalidSpec {
                table: spec.table().to_owned(),
                reason: "it has no primary-key column".into(),
            });
        }
        Ok(Recorded::of_spec(spec))
    }

    /// `spec`'s columns, without [`Recorded::from_spec`]'s key check: for statements about a
    /// table whose specs the install already checked (the foreign-key triggers of
    /// `cascade.rs`).
    pub(crate) fn of_spec(spec: &TableSpec) -> Recorded {
        let hex = spec
            .key_columns()
            .iter()
            .chain(spec.scopes().iter().flat_map(|s| s.columns()))
            .chain(spec.tracked_columns())
            .filter(|c| c.decoder().is_bytes())
            .map(|c| c.name().to_owned())
            .collect();
        Recorded {
            table: spec.table().to_owned(),
            entities: vec![spec.entity().to_owned()],
            keys: spec
                .key_columns()
                .iter()
                .map(|c| c.name().to_owned())
                .collect(),
            columns: spec
                .watched_columns()
                .into_iter()
                .map(str::to_owned)
                .collect(),
            tracked: spec
                .tracked_columns()
                .iter()
                .map(|c| c.name().to_owned())
                .filter(|c| !spec.key_columns().iter().any(|k| k.name() == c))
                .collect(),
            hex,
        }
    }

    /// One per table, in the order of first appearance; specs of one table merged.
    pub(crate) fn group(tables: &[TableSpec]) -> Result<Vec<Recorded>> {
        let mut out: Vec<Recorded> = Vec::new();
        for spec in tables {
            let recorded = Recorded::from_spec(spec)?;
            match out.iter_mut().find(|r| r.table == recorded.table) {
                Some(existing) => existing.merge(&recorded)?,
                None => out.push(recorded),
            }
        }
        Ok(out)
    }

    /// Adds `other`'s columns (same table).
    ///
    /// # Errors
    /// [`Error::InvalidSpec`] when the keys differ.
    pub(crate) fn merge(&mut self, other: &Recorded) -> Result<()> {
        if self.keys != other.keys {
            return Err(Error::InvalidSpec {
                table: self.table.clone(),
                reason: format!(
                    "two models of this table name different keys ({:?} and {:?})",
                    self.keys, other.keys
                ),
            });
        }
        for (mine, theirs) in [
            (&mut self.entities, &other.entities),
            (&mut self.columns, &other.columns),
            (&mut self.tracked, &other.tracked),
            (&mut self.hex, &other.hex),
        ] {
            for item in theirs {
                if !mine.contains(item) {
                    mine.push(item.clone());
                }
            }
        }
        Ok(())
    }

    /// The description stored in the outbox's table of tables (JSON).
    fn describe(&self, fingerprint: &str) -> String {
        serde_json::json!({
            "entities": self.entities,
            "key": self.keys,
            "columns": self.columns,
            "tracked": self.tracked,
            "hex": self.hex,
            "fingerprint": fingerprint,
        })
        .to_string()
    }

    /// A stored description of `table`'s triggers, with their fingerprint; `None` for one
    /// this layout did not write.
    pub(crate) fn parse(table: &str, text: &str) -> Option<(Recorded, String)> {
        let json: serde_json::Value = serde_json::from_str(text).ok()?;
        let list = |field: &str| -> Option<Vec<String>> {
            json.get(field)?
                .as_array()?
                .iter()
                .map(|v| v.as_str().map(str::to_owned))
                .collect()
        };
        let recorded = Recorded {
            table: table.to_owned(),
            entities: list("entities")?,
            keys: list("key")?,
            columns: list("columns")?,
            // Absent from layouts before tracked columns: they recorded none in `K` rows.
            tracked: match json.get("tracked") {
                None => Vec::new(),
                Some(_) => list("tracked")?,
            },
            hex: list("hex")?,
        };
        let fingerprint = json.get("fingerprint")?.as_str()?.to_owned();
        (!recorded.keys.is_empty()).then_some((recorded, fingerprint))
    }

    /// The key columns.
    pub(crate) fn keys(&self) -> &[String] {
        &self.keys
    }

    /// Every recorded column, the key first.
    pub(crate) fn columns(&self) -> &[String] {
        &self.columns
    }

    /// The tracked columns (recorded in `K` rows too).
    pub(crate) fn tracked(&self) -> &[String] {
        &self.tracked
    }

    /// What a `K` row records: the key, then the tracked columns.
    pub(crate) fn key_only(&self) -> Vec<String> {
        self.keys.iter().chain(&self.tracked).cloned().collect()
    }

    /// Keeps the recorded non-key columns for which `keep` holds.
    pub(crate) fn retain_columns(&mut self, keep: impl Fn(&str) -> bool) {
        let keys = self.keys.clone();
        self.columns.retain(|c| keys.contains(c) || keep(c));
        let columns = self.columns.clone();
        self.tracked.retain(|c| columns.contains(c));
        self.hex.retain(|c| columns.contains(c));
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
        assert_eq!(literal(Dialect::Postgres, "it's"), "'it''s'");
        assert_eq!(literal(Dialect::Postgres, "a\\b"), "'a\\b'");
        assert_eq!(
            literal(Dialect::MySql, "a\\b'c"),
            "CONCAT('a', CHAR(92 USING utf8mb4), 'b''c')"
        );
        assert_eq!(quote(Dialect::Postgres, "app.post"), "\"app\".\"post\"");
    }

    #[test]
    fn trigger_names_are_short_and_distinct() {
        let outbox = Outbox::default();
        let a = outbox.trigger_name(&"a".repeat(200), "u", 1);
        let b = outbox.trigger_name(&format!("{}b", "a".repeat(199)), "u", 1);
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
