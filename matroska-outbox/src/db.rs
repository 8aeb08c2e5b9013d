//! The relay's database access (sqlx), and the one installer every connection type shares.

use std::future::Future;

use async_trait::async_trait;
use matroska_core::TableSpec;

use crate::ddl::{Dialect, Facts, IndexPart, LAYOUT_VERSION, Outbox, Recorded, literal};
use crate::error::{Error, Result};

/// A connection the outbox can be installed through: the relay's sqlx pools here, SeaORM's
/// connections in `matroska-seaorm`, Diesel's in `matroska-diesel`.
#[async_trait]
pub trait SqlConnection: Send + Sync {
    /// The database's dialect.
    fn dialect(&self) -> Dialect;

    /// Runs one statement through the text protocol (triggers cannot be prepared on MySQL).
    ///
    /// # Errors
    /// The database's error.
    async fn execute_sql(&self, sql: &str) -> Result<()>;

    /// Runs a query returning rows of (text, integer), its columns named `name` and `n` (so
    /// a connection may read them by name, as Diesel's `sql_query` does).
    ///
    /// # Errors
    /// The database's error.
    async fn query_pairs(&self, sql: &str) -> Result<Vec<(String, i64)>>;
}

/// Installs (or upgrades) the outbox for `tables` through `conn`: creates the outbox tables if
/// missing, replaces each table's triggers when they differ from the ones `tables` need,
/// records the layout version. Safe to run on every start-up or in a migration, while
/// anything writes, and from several processes at once:
///
/// - Triggers that are up to date are left alone (no DDL at all). Up to date means what the
///   database holds now: a trigger disabled, dropped or replaced by hand is replaced.
/// - Where the triggers it replaces were not recording every write — none there (the first
///   install, one after [`uninstall`], a table dropped and re-created), some missing,
///   disabled or altered — it also writes a whole-table row
///   ([`Outbox::record_whole_table_sql`]) after creating them: every consumer's relay then
///   invalidates everything cached from the table, whatever was written meanwhile (raw SQL,
///   a migration, a process without a cache). An upgrade of intact triggers (a model gained
///   a scope column) and an up-to-date re-run write none: running `install` at every
///   start-up costs no invalidation.
/// - An upgrade never leaves a moment in which a committed write records nothing: on
///   PostgreSQL it runs as one transaction; on MySQL/MariaDB and SQLite the new triggers are
///   created before the old ones are dropped (a write in between is recorded twice).
/// - Models sharing a table (a SeaORM entity and a Diesel model), installed together or by
///   separate installs, share its triggers: they record the union of the models' columns,
///   never fewer than an earlier install recorded — except a column the table no longer has
///   (a migration dropped it), which leaves the triggers.
/// - Concurrent installs: on PostgreSQL a swap runs under an advisory lock and only if the
///   table's stored description is still the one it was planned from; a swap that lost a
///   race (there, or a `CREATE TRIGGER` of a name another install just created on
///   MySQL/SQLite) reads the catalogue again and plans anew.
///
/// # Errors
/// [`Error::NewerLayout`] (nothing is changed for any table) when a table carries triggers of
/// a newer layout; [`Error::InvalidSpec`]; the database's errors.
pub async fn install(
    conn: &(impl SqlConnection + ?Sized),
    outbox: &Outbox,
    tables: &[TableSpec],
) -> Result<()> {
    let dialect = conn.dialect();
    let outbox = &resolve_schema(conn, outbox).await?;
    let wanted = Recorded::group(tables)?;
    if dialect == Dialect::Postgres {
        // Inside the caller's transaction this holds every other install off until it
        // commits, so what is read below is what the swap replaces; on a pool it only waits
        // for a swap under way (the guard in each swap does the rest).
        conn.query_pairs(&format!(
            "SELECT ''::text AS name, 0::bigint AS n FROM (SELECT pg_advisory_xact_lock({})) l",
            outbox.install_lock_key()
        ))
        .await?;
    }
    // Created only when missing (and checked with a query that cannot fail, so that an
    // install inside the caller's PostgreSQL transaction does not abort it).
    let present = conn
        .query_pairs(&outbox.tables_present_sql(dialect))
        .await?;
    if present.first().map_or(0, |(_, n)| *n) < Outbox::TABLES {
        execute_all(conn, &outbox.create_tables_sql(dialect)).await?;
    }
    let installed = conn.query_pairs(&outbox.versions_sql(dialect)).await?;
    for recorded in &wanted {
        if let Some((_, v)) = installed
            .iter()
            .find(|(t, v)| *t == recorded.table && *v > LAYOUT_VERSION)
        {
            return Err(Error::NewerLayout {
                table: recorded.table.clone(),
                installed: *v,
                ours: LAYOUT_VERSION,
            });
        }
    }
    let (mut changed, mut flushed) = (0_usize, 0_usize);
    for recorded in wanted {
        // Bounded: each retry follows another install's completed change.
        let mut attempts = 0;
        loop {
            let plan = plan(conn, outbox, &recorded).await?;
            let Some(statements) = &plan.statements else {
                break;
            };
            let result = if dialect == Dialect::Postgres {
                // One simple-query message: PostgreSQL runs it as one transaction (or inside
                // the caller's), so no write commits between the drop and the create.
                conn.execute_sql(&statements.join(";\n")).await
            } else {
                execute_all(conn, statements).await
            };
            match result {
                Ok(()) => {
                    changed += 1;
                    if plan.whole_table {
                        flushed += 1;
                        tracing::info!(
                            table = %recorded.table,
                            "matroska outbox: the table's triggers were missing, disabled or \
                             altered, so writes may have gone unrecorded: everything cached from \
                             it is invalidated through the outbox"
                        );
                    }
                    break;
                }
                Err(e) => {
                    attempts += 1;
                    // Another install changed the table's triggers since `plan` read them
                    // (its swap committed first): plan again from what it left.
                    let raced = match plan_inputs(conn, outbox, &recorded.table).await {
                        Ok(now) => now != plan.inputs,
                        Err(_) => false,
                    };
                    if !raced || attempts >= 5 {
                        return Err(e);
                    }
                    tracing::debug!(table = %recorded.table, error = %e, "install raced, planning again");
                }
            }
        }
    }
    // MySQL/MariaDB: what fires no trigger there (foreign-key actions, TRUNCATE).
    crate::cascade::install(conn, outbox, tables).await?;
    crate::truncate::install(conn, outbox, tables).await?;
    tracing::info!(
        tables = tables.len(),
        replaced = changed,
        invalidated = flushed,
        version = LAYOUT_VERSION,
        "matroska outbox installed"
    );
    Ok(())
}

/// What a table's plan is computed from: the stored description (text and version) and the
/// triggers the database holds (name and definition), sorted.
#[derive(Debug, PartialEq, Eq)]
struct PlanInputs {
    stored: Option<(String, i64)>,
    triggers: Vec<(String, String)>,
}

async fn plan_inputs(
    conn: &(impl SqlConnection + ?Sized),
    outbox: &Outbox,
    table: &str,
) -> Result<PlanInputs> {
    let dialect = conn.dialect();
    let stored = conn
        .query_pairs(&outbox.installed_sql(dialect, table))
        .await?
        .into_iter()
        .next();
    let mut triggers: Vec<(String, String)> = conn
        .query_pairs(&outbox.trigger_states_sql(dialect, table))
        .await?
        .into_iter()
        .map(|(text, _)| match text.split_once('\n') {
            Some((name, definition)) => (name.to_owned(), definition.to_owned()),
            None => (text, String::new()),
        })
        .collect();
    triggers.sort();
    Ok(PlanInputs { stored, triggers })
}

/// What one table's install does: nothing (`statements` is `None`) when the triggers the
/// database holds are the ones `wanted` needs, else the swap.
struct Plan {
    inputs: PlanInputs,
    statements: Option<Vec<String>>,
    /// The statements record a whole-table change: the triggers there were not recording
    /// every write.
    whole_table: bool,
}

async fn plan(
    conn: &(impl SqlConnection + ?Sized),
    outbox: &Outbox,
    wanted: &Recorded,
) -> Result<Plan> {
    let dialect = conn.dialect();
    let table = &wanted.table;
    let inputs = plan_inputs(conn, outbox, table).await?;
    let stored = inputs
        .stored
        .as_ref()
        .and_then(|(text, version)| Recorded::parse(table, text).map(|(r, fp)| (r, fp, *version)));
    let mut facts = facts(conn, outbox, table).await?;
    let mut recorded = wanted.clone();
    if let Some((before, _, _)) = &stored {
        // Another model's install recorded columns this one does not name: keep them, unless
        // the table no longer has them (a migration dropped the column: triggers naming it
        // would fail every write). A stored key that differs is ignored (the table's key
        // changed): the new one wins.
        if before.keys() == recorded.keys() {
            let mut union = before.clone();
            union.merge(&recorded)?;
            if !facts.columns.is_empty() {
                union.retain_columns(|c| {
                    wanted.columns().iter().any(|w| w == c) || facts.columns.iter().any(|t| t == c)
                });
            }
            recorded = union;
        }
    }
    facts.no_timestamp = no_timestamp(dialect, &facts, &recorded);
    if facts.unreadable_unique {
        tracing::warn!(
            table = %table,
            "a UNIQUE index's definition could not be read: every insert and update of the table \
             invalidates all its cached reads (a REPLACE through it may delete any row)"
        );
    }
    let fingerprint = outbox.fingerprint(dialect, &recorded, &facts);
    let existing: Vec<String> = inputs.triggers.iter().map(|(n, _)| n.clone()).collect();
    // Current: what the database holds is exactly one generation of the triggers we would
    // create (enabled, same text), and the stored description matches them.
    let complete = [0, 1]
        .iter()
        .any(|g| outbox.expected_trigger_states(dialect, &recorded, &facts, *g) == inputs.triggers);
    let current = stored
        .as_ref()
        .is_some_and(|(_, fp, v)| *fp == fingerprint && *v == LAYOUT_VERSION);
    if current && complete {
        return Ok(Plan {
            inputs,
            statements: None,
            whole_table: false,
        });
    }
    // Were the triggers there recording every write until now? Only if they are exactly one
    // generation of the triggers the stored description says (enabled, unaltered): then
    // this swap is an upgrade, and every write so far is in the outbox. Otherwise (no
    // triggers: a first install, one after an uninstall or a dropped and re-created table;
    // some missing, disabled or replaced by hand) writes went unrecorded, and whatever is
    // cached from the table may be stale.
    let intact = stored.as_ref().is_some_and(|(before, _, _)| {
        let mut facts = facts.clone();
        facts.no_timestamp = no_timestamp(dialect, &facts, before);
        [0, 1]
            .iter()
            .any(|g| outbox.expected_trigger_states(dialect, before, &facts, *g) == inputs.triggers)
    });
    let mut statements = Vec::new();
    if dialect == Dialect::Postgres {
        statements.extend(
            outbox.install_guard_sql(table, inputs.stored.as_ref().map(|(t, _)| t.as_str())),
        );
    }
    statements.extend(outbox.swap_sql(dialect, &recorded, &facts, &existing));
    if !intact {
        // After the new triggers exist (in the same transaction on PostgreSQL): every
        // consumer's relay invalidates everything cached from the table, after any write the
        // missing triggers did not record.
        statements.extend(outbox.record_whole_table_sql(dialect, table));
    }
    Ok(Plan {
        inputs,
        statements: Some(statements),
        whole_table: !intact,
    })
}

/// MySQL: whether the installer read the column types and none of `recorded`'s columns is a
/// `TIMESTAMP` (its triggers then need not force the session's time zone to UTC).
fn no_timestamp(dialect: Dialect, facts: &Facts, recorded: &Recorded) -> bool {
    dialect == Dialect::MySql
        && !facts.columns.is_empty()
        && !recorded
            .columns()
            .iter()
            .any(|c| facts.timestamps.iter().any(|t| t == c))
}

/// What the triggers of `table` need to know from the database beyond its specs.
async fn facts(
    conn: &(impl SqlConnection + ?Sized),
    outbox: &Outbox,
    table: &str,
) -> Result<Facts> {
    let dialect = conn.dialect();
    let mut facts = Facts::default();
    for (column, timestamp) in conn
        .query_pairs(&outbox.table_columns_sql(dialect, table))
        .await?
    {
        if timestamp != 0 {
            facts.timestamps.push(column.clone());
        }
        facts.columns.push(column);
    }
    if let Some(sql) = Outbox::unique_indexes_sql(dialect, table) {
        for (index, _) in conn.query_pairs(&sql).await? {
            let parsed = serde_json::from_str::<serde_json::Value>(&index)
                .ok()
                .and_then(|json| {
                    let columns = json
                        .get("columns")?
                        .as_array()?
                        .iter()
                        .map(|c| {
                            let name = c.get(0)?.as_str().map(str::to_owned);
                            let collation = c.get(1)?.as_str().unwrap_or("BINARY").to_owned();
                            Some((name, collation))
                        })
                        .collect::<Option<Vec<_>>>()?;
                    IndexPart::of_index(&columns, json.get("sql").and_then(|s| s.as_str()))
                });
            match parsed {
                Some(parts) => facts.unique.push(parts),
                None => facts.unreadable_unique = true,
            }
        }
        facts.unique.sort();
    }
    Ok(facts)
}

/// Removes the triggers of `tables` (the outbox tables and their rows stay). Idempotent.
///
/// From then on nothing records the tables' writes: what is cached from them may go stale
/// until the outbox is installed again, which invalidates everything cached from them
/// (see [`install`]). A hooked SeaORM write made without a cache meanwhile is refused before
/// it writes (`matroska_seaorm::Error::Unrecorded`).
///
/// # Errors
/// The database's errors.
pub async fn uninstall(
    conn: &(impl SqlConnection + ?Sized),
    outbox: &Outbox,
    tables: &[&str],
) -> Result<()> {
    let outbox = &resolve_schema(conn, outbox).await?;
    // Idempotent, also where the outbox was never installed: its tables are created (empty)
    // so that the statements below have what they name.
    let mut statements = outbox.create_tables_sql(conn.dialect());
    statements.extend(outbox.uninstall_sql(conn.dialect(), tables));
    execute_all(conn, &statements).await?;
    crate::cascade::uninstall(conn, outbox, tables).await?;
    crate::truncate::uninstall(conn, outbox, tables).await?;
    Ok(())
}

/// The tables the outbox watches here, with their layout versions (empty when the outbox is
/// not installed).
///
/// # Errors
/// The database's errors, other than a missing outbox.
pub async fn watched_tables(
    conn: &(impl SqlConnection + ?Sized),
    outbox: &Outbox,
) -> Result<Vec<(String, i64)>> {
    match conn.query_pairs(&outbox.versions_sql(conn.dialect())).await {
        Ok(rows) => Ok(rows),
        Err(e) if is_missing_table(&e) => Ok(Vec::new()),
        Err(e) => Err(e),
    }
}

/// Runs DDL statements in order. On SQLite they go as one script, on one connection, after a
/// read of the schema: a pooled connection whose cached schema is stale compiles
/// `DROP TRIGGER IF EXISTS` of a trigger it does not know into a no-op that never rechecks
/// the schema (seen with sqlx and SeaORM pools: a second install failed with "trigger already
/// exists"); reading `sqlite_master` first makes that connection reload it.
async fn execute_all(conn: &(impl SqlConnection + ?Sized), statements: &[String]) -> Result<()> {
    if conn.dialect() == Dialect::Sqlite {
        let mut script = String::from("SELECT COUNT(*) FROM sqlite_master;\n");
        for sql in statements {
            script.push_str(sql);
            script.push_str(";\n");
        }
        return conn.execute_sql(&script).await;
    }
    for sql in statements {
        conn.execute_sql(sql).await?;
    }
    Ok(())
}

/// On PostgreSQL, the outbox pinned to the installing connection's current schema: the
/// trigger functions then write there whatever a writer's `search_path`.
async fn resolve_schema(conn: &(impl SqlConnection + ?Sized), outbox: &Outbox) -> Result<Outbox> {
    if conn.dialect() != Dialect::Postgres || outbox.schema().is_some() {
        return Ok(outbox.clone());
    }
    let rows = conn
        .query_pairs("SELECT current_schema()::text AS name, 0::bigint AS n")
        .await?;
    Ok(match rows.into_iter().next() {
        Some((schema, _)) => outbox.clone().pinned_to(schema),
        None => outbox.clone(),
    })
}

pub(crate) fn is_missing_table(e: &Error) -> bool {
    let text = e.to_string().to_ascii_lowercase();
    text.contains("does not exist")
        || text.contains("doesn't exist")
        || text.contains("no such table")
}

/// A database the relay reads the outbox of: one of sqlx's pools. SeaORM users pass the pool
/// behind their connection (`db.get_postgres_connection_pool().clone()`).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum OutboxDb {
    /// PostgreSQL.
    #[cfg(feature = "postgres")]
    Postgres(sqlx::PgPool),
    /// MySQL / MariaDB.
    #[cfg(feature = "mysql")]
    MySql(sqlx::MySqlPool),
    /// SQLite.
    #[cfg(feature = "sqlite")]
    Sqlite(sqlx::SqlitePool),
    /// No driver feature is enabled: no value of this type can exist.
    #[doc(hidden)]
    #[cfg(not(any(feature = "postgres", feature = "mysql", feature = "sqlite")))]
    NoDriver(std::convert::Infallible),
}

#[cfg(feature = "postgres")]
impl From<sqlx::PgPool> for OutboxDb {
    fn from(pool: sqlx::PgPool) -> Self {
        OutboxDb::Postgres(pool)
    }
}

#[cfg(feature = "mysql")]
impl From<sqlx::MySqlPool> for OutboxDb {
    fn from(pool: sqlx::MySqlPool) -> Self {
        OutboxDb::MySql(pool)
    }
}

#[cfg(feature = "sqlite")]
impl From<sqlx::SqlitePool> for OutboxDb {
    fn from(pool: sqlx::SqlitePool) -> Self {
        OutboxDb::Sqlite(pool)
    }
}

/// One outbox row as the relay reads it.
#[derive(Debug, Clone)]
pub(crate) struct OutboxRow {
    pub id: i64,
    pub table: String,
    pub op: String,
    pub old_row: Option<String>,
    pub new_row: Option<String>,
    pub created_us: i64,
}

type RowTuple = (i64, String, String, Option<String>, Option<String>, i64);

impl From<RowTuple> for OutboxRow {
    fn from((id, table, op, old_row, new_row, created_us): RowTuple) -> Self {
        OutboxRow {
            id,
            table,
            op,
            old_row,
            new_row,
            created_us,
        }
    }
}

/// A row the relay could not read, for the dead-letter table.
#[derive(Debug, Clone)]
pub(crate) struct DeadRow {
    pub row: OutboxRow,
    pub error: String,
}

/// What a delivery decided for a claimed batch.
pub(crate) struct Settled {
    /// Rows delivered (or moved aside): deleted from the outbox.
    pub done: Vec<i64>,
    pub dead: Vec<DeadRow>,
}

/// SQL built here from checked identifiers, escaped literals and integers.
fn safe(sql: &str) -> sqlx::AssertSqlSafe<String> {
    sqlx::AssertSqlSafe(sql.to_owned())
}

/// The condition (on the outbox aliased `o`) of a row `consumer` has not marked delivered.
fn not_delivered(outbox: &Outbox, d: Dialect, consumer: &str) -> String {
    format!(
        "NOT EXISTS (SELECT 1 FROM {} m WHERE m.consumer = {} AND m.id = o.id)",
        outbox.done_table(d),
        literal(d, consumer)
    )
}

impl OutboxDb {
    /// Connects a pool to `url` (`postgres://`, `mysql://`/`mariadb://`, `sqlite:`).
    ///
    /// # Errors
    /// [`Error::UnsupportedDatabase`], or the connection's error.
    pub async fn connect(url: &str) -> Result<Self> {
        let scheme = url.split(':').next().unwrap_or_default();
        match scheme {
            #[cfg(feature = "postgres")]
            "postgres" | "postgresql" => Ok(OutboxDb::Postgres(sqlx::PgPool::connect(url).await?)),
            #[cfg(feature = "mysql")]
            "mysql" | "mariadb" => Ok(OutboxDb::MySql(
                sqlx::MySqlPool::connect(&url.replacen("mariadb:", "mysql:", 1)).await?,
            )),
            #[cfg(feature = "sqlite")]
            "sqlite" => Ok(OutboxDb::Sqlite(sqlx::SqlitePool::connect(url).await?)),
            other => Err(Error::UnsupportedDatabase(other.to_owned())),
        }
    }

    /// The number of rows waiting in the outbox for `consumer` (not yet marked delivered by
    /// it), and the write time of the oldest (µs since the epoch, by the database's clock),
    /// if any.
    pub(crate) async fn depth(
        &self,
        outbox: &Outbox,
        consumer: &str,
    ) -> Result<(u64, Option<i64>)> {
        let d = self.dialect();
        let sql = format!(
            "SELECT COUNT(*), MIN(created_us) FROM {} o WHERE {}",
            outbox.outbox_table(d),
            not_delivered(outbox, d, consumer)
        );
        let (count, oldest): (i64, Option<i64>) = match self {
            #[cfg(feature = "postgres")]
            OutboxDb::Postgres(pool) => sqlx::query_as(safe(&sql)).fetch_one(pool).await?,
            #[cfg(feature = "mysql")]
            OutboxDb::MySql(pool) => sqlx::query_as(safe(&sql)).fetch_one(pool).await?,
            #[cfg(not(any(feature = "postgres", feature = "mysql", feature = "sqlite")))]
            OutboxDb::NoDriver(never) => match *never {},
            #[cfg(feature = "sqlite")]
            OutboxDb::Sqlite(pool) => sqlx::query_as(safe(&sql)).fetch_one(pool).await?,
        };
        Ok((u64::try_from(count).unwrap_or(0), oldest))
    }

    /// The newest row waiting for `consumer` (not yet marked delivered by it), if any: with
    /// [`OutboxDb::waiting_up_to`], what a read-your-writes wait waits for.
    pub(crate) async fn newest_waiting(
        &self,
        outbox: &Outbox,
        consumer: &str,
    ) -> Result<Option<i64>> {
        let d = self.dialect();
        let sql = format!(
            "SELECT MAX(o.id) FROM {} o WHERE {}",
            outbox.outbox_table(d),
            not_delivered(outbox, d, consumer)
        );
        self.scalar_id(&sql).await
    }

    /// Whether a row with an id up to `horizon` still waits for `consumer`.
    pub(crate) async fn waiting_up_to(
        &self,
        outbox: &Outbox,
        consumer: &str,
        horizon: i64,
    ) -> Result<bool> {
        let d = self.dialect();
        let sql = format!(
            "SELECT MIN(o.id) FROM {} o WHERE o.id <= {horizon} AND {}",
            outbox.outbox_table(d),
            not_delivered(outbox, d, consumer)
        );
        Ok(self.scalar_id(&sql).await?.is_some())
    }

    /// The one nullable integer `sql` selects. Unprepared (`raw_sql`, the text protocol):
    /// the SQL holds a new id each time, and preparing each would churn the connection's
    /// statement cache, whose evictions stall MySQL/MariaDB for a delayed ACK (~40 ms; see
    /// BENCHMARKS.md, the relay's claim).
    async fn scalar_id(&self, sql: &str) -> Result<Option<i64>> {
        use sqlx::Row as _;
        let id: Option<i64> = match self {
            #[cfg(feature = "postgres")]
            OutboxDb::Postgres(pool) => {
                sqlx::raw_sql(safe(sql)).fetch_one(pool).await?.try_get(0)?
            }
            #[cfg(feature = "mysql")]
            OutboxDb::MySql(pool) => sqlx::raw_sql(safe(sql)).fetch_one(pool).await?.try_get(0)?,
            #[cfg(not(any(feature = "postgres", feature = "mysql", feature = "sqlite")))]
            OutboxDb::NoDriver(never) => match *never {},
            #[cfg(feature = "sqlite")]
            OutboxDb::Sqlite(pool) => sqlx::raw_sql(safe(sql)).fetch_one(pool).await?.try_get(0)?,
        };
        Ok(id)
    }

    /// Deletes the rows every registered consumer marked delivered, and the marks of rows
    /// gone. Run after each claim's commit: a row two consumers mark in concurrent claims is
    /// deleted by the next sweep (neither claim saw the other's mark).
    pub(crate) async fn sweep(&self, outbox: &Outbox) -> Result<()> {
        let d = self.dialect();
        let (table, done, consumers) = (
            outbox.outbox_table(d),
            outbox.done_table(d),
            outbox.consumers_table(d),
        );
        // Rows with a mark of every consumer (marks of dropped consumers do not count).
        let all_done = format!(
            "SELECT m.id FROM {done} m JOIN {consumers} c ON c.name = m.consumer \
             GROUP BY m.id HAVING COUNT(*) = (SELECT COUNT(*) FROM {consumers})"
        );
        let rows = match d {
            // A join with the derived table: MySQL runs `IN (subquery)` of a DELETE per row.
            Dialect::MySql => format!("DELETE o FROM {table} o JOIN ({all_done}) x ON x.id = o.id"),
            _ => format!("DELETE FROM {table} WHERE id IN ({all_done})"),
        };
        self.execute_sql(&rows).await?;
        self.execute_sql(&format!(
            "DELETE FROM {done} WHERE NOT EXISTS (SELECT 1 FROM {table} o WHERE o.id = {done}.id)"
        ))
        .await
    }

    /// The dead letters: (id, table, error), oldest first.
    pub(crate) async fn dead_letters(&self, outbox: &Outbox) -> Result<Vec<(i64, String, String)>> {
        let sql = format!(
            "SELECT id, table_name, error FROM {} ORDER BY id",
            outbox.dead_table(self.dialect())
        );
        Ok(match self {
            #[cfg(feature = "postgres")]
            OutboxDb::Postgres(pool) => sqlx::query_as(safe(&sql)).fetch_all(pool).await?,
            #[cfg(feature = "mysql")]
            OutboxDb::MySql(pool) => sqlx::query_as(safe(&sql)).fetch_all(pool).await?,
            #[cfg(not(any(feature = "postgres", feature = "mysql", feature = "sqlite")))]
            OutboxDb::NoDriver(never) => match *never {},
            #[cfg(feature = "sqlite")]
            OutboxDb::Sqlite(pool) => sqlx::query_as(safe(&sql)).fetch_all(pool).await?,
        })
    }

    /// Claims up to `limit` rows `consumer` has not marked delivered, in id order, and hands
    /// them to `deliver`. Rows are marked delivered by `consumer` (and dead letters copied
    /// aside) only when `deliver` succeeds; on its failure, or if this future is dropped, they
    /// stay for the next claim. `None` when the consumer is not registered (it was dropped as
    /// expired): nothing was claimed.
    ///
    /// On PostgreSQL and MySQL the claim holds the consumer's row (locked by its heartbeat)
    /// from before the read until the marks commit: relays of one consumer take turns, relays
    /// of different consumers never wait on each other, and a consumer cannot be dropped as
    /// expired while it delivers. On SQLite (one writer) the rows are read without a lock and
    /// marked afterwards: two relays of one consumer may deliver a row twice (harmless), never
    /// lose one.
    pub(crate) async fn claim<F, Fut>(
        &self,
        outbox: &Outbox,
        consumer: &str,
        limit: usize,
        deliver: F,
    ) -> Result<Option<usize>>
    where
        F: FnOnce(Vec<OutboxRow>) -> Fut + Send,
        Fut: Future<Output = Result<Settled>> + Send,
    {
        let d = self.dialect();
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let (table, dead) = (outbox.outbox_table(d), outbox.dead_table(d));
        let columns = match d {
            Dialect::Postgres => {
                "id, table_name, op::text, old_row::text, new_row::text, created_us"
            }
            _ => "id, table_name, op, old_row, new_row, created_us",
        };
        let select = format!(
            "SELECT {columns} FROM {table} o WHERE {} ORDER BY id LIMIT {limit}",
            not_delivered(outbox, d, consumer)
        );
        let consumer_lit = literal(d, consumer);
        let beat = format!(
            "UPDATE {} SET seen_us = {}, beats = beats + 1 WHERE name = {consumer_lit}",
            outbox.consumers_table(d),
            Outbox::now_us(d)
        );
        let (mark_ignore, mark_conflict) = match d {
            Dialect::MySql => ("IGNORE ", ""),
            _ => ("", " ON CONFLICT DO NOTHING"),
        };
        let mark = |ids: &[i64]| {
            let values = ids
                .iter()
                .map(|id| format!("({consumer_lit}, {id})"))
                .collect::<Vec<_>>()
                .join(", ");
            format!(
                "INSERT {mark_ignore}INTO {} (consumer, id) VALUES {values}{mark_conflict}",
                outbox.done_table(d)
            )
        };
        // Idempotent: a dead letter already moved (by a claim whose commit was lost, or an
        // id the database handed out again) is overwritten, never a key violation that would
        // fail every later claim of the row.
        let insert_dead = format!(
            "INSERT INTO {dead} (id, table_name, op, old_row, new_row, created_us, error, moved_us) \
             VALUES ({}) {}",
            match d {
                Dialect::Postgres => "$1, $2, $3, $4, $5, $6, $7, $8",
                _ => "?, ?, ?, ?, ?, ?, ?, ?",
            },
            match d {
                Dialect::MySql => {
                    "ON DUPLICATE KEY UPDATE table_name = VALUES(table_name), op = VALUES(op), \
                     old_row = VALUES(old_row), new_row = VALUES(new_row), \
                     created_us = VALUES(created_us), error = VALUES(error), moved_us = VALUES(moved_us)"
                }
                _ => {
                    "ON CONFLICT (id) DO UPDATE SET table_name = excluded.table_name, \
                     op = excluded.op, old_row = excluded.old_row, new_row = excluded.new_row, \
                     created_us = excluded.created_us, error = excluded.error, \
                     moved_us = excluded.moved_us"
                }
            }
        );
        let now = now_us();

        macro_rules! read {
            ($conn:expr) => {{
                let rows: Vec<RowTuple> =
                    sqlx::query_as(safe(&select)).fetch_all(&mut *$conn).await?;
                if rows.is_empty() {
                    return Ok(Some(0));
                }
                rows
            }};
        }

        // Whether the consumer is still registered (its row now locked by `$tx`).
        macro_rules! beat {
            ($tx:expr) => {{
                let beaten = sqlx::raw_sql(safe(&beat))
                    .execute(&mut *$tx)
                    .await?
                    .rows_affected();
                if beaten == 0 {
                    return Ok(None);
                }
            }};
        }

        // Copies the dead letters aside and marks the settled rows, in the transaction `$tx`.
        macro_rules! settle {
            ($tx:expr, $settled:expr) => {{
                for dead in &$settled.dead {
                    sqlx::query(safe(&insert_dead))
                        .bind(dead.row.id)
                        .bind(&dead.row.table)
                        .bind(&dead.row.op)
                        .bind(&dead.row.old_row)
                        .bind(&dead.row.new_row)
                        .bind(dead.row.created_us)
                        .bind(&dead.error)
                        .bind(now)
                        .execute(&mut *$tx)
                        .await?;
                }
                if !$settled.done.is_empty() {
                    // Unprepared (text protocol): the id list makes every INSERT a new
                    // statement, and preparing each one churns the connection's statement
                    // cache. On MySQL an eviction sends COM_STMT_CLOSE, which has no reply, right
                    // before the next command: with Nagle on (sqlx does not set TCP_NODELAY)
                    // that command waits for the server's delayed ACK, ~40 ms per claim.
                    sqlx::raw_sql(safe(&mark(&$settled.done)))
                        .execute(&mut *$tx)
                        .await?;
                }
            }};
        }

        match self {
            #[cfg(feature = "postgres")]
            OutboxDb::Postgres(pool) => {
                let mut tx = pool.begin().await?;
                beat!(tx);
                let rows = read!(tx);
                let claimed = rows.len();
                let settled = deliver(rows.into_iter().map(OutboxRow::from).collect()).await?;
                settle!(tx, settled);
                tx.commit().await?;
                Ok(Some(claimed))
            }
            #[cfg(feature = "mysql")]
            OutboxDb::MySql(pool) => {
                // READ COMMITTED: the claim's read takes no lock (writers' triggers never wait
                // on a claim), and the marks' INSERT takes no gap locks. (With the former
                // `FOR UPDATE` claim under REPEATABLE READ, MariaDB 10.11 made an INSERT wait
                // 2.5 s behind a claim held 3 s, 17 ms under READ COMMITTED.)
                use sqlx::Acquire;
                let mut conn = pool.acquire().await?;
                sqlx::query("SET TRANSACTION ISOLATION LEVEL READ COMMITTED")
                    .execute(&mut *conn)
                    .await?;
                let mut tx = conn.begin().await?;
                beat!(tx);
                let rows = read!(tx);
                let claimed = rows.len();
                let settled = deliver(rows.into_iter().map(OutboxRow::from).collect()).await?;
                settle!(tx, settled);
                tx.commit().await?;
                Ok(Some(claimed))
            }
            #[cfg(not(any(feature = "postgres", feature = "mysql", feature = "sqlite")))]
            OutboxDb::NoDriver(never) => match *never {},
            #[cfg(feature = "sqlite")]
            OutboxDb::Sqlite(pool) => {
                // Read without a transaction (no write lock held across the delivery); the
                // consumer's check, the dead letters and the marks commit together.
                use sqlx::Acquire;
                let mut conn = pool.acquire().await?;
                let rows = read!(conn);
                let claimed = rows.len();
                let settled = deliver(rows.into_iter().map(OutboxRow::from).collect()).await?;
                let mut tx = conn.begin().await?;
                beat!(tx);
                settle!(tx, settled);
                tx.commit().await?;
                Ok(Some(claimed))
            }
        }
    }
}

/// The relay's clock, µs since the epoch (for lag: the database's clock on the same host).
pub(crate) fn now_us() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
}

#[async_trait]
impl SqlConnection for OutboxDb {
    fn dialect(&self) -> Dialect {
        match self {
            #[cfg(feature = "postgres")]
            OutboxDb::Postgres(_) => Dialect::Postgres,
            #[cfg(feature = "mysql")]
            OutboxDb::MySql(_) => Dialect::MySql,
            #[cfg(not(any(feature = "postgres", feature = "mysql", feature = "sqlite")))]
            OutboxDb::NoDriver(never) => match *never {},
            #[cfg(feature = "sqlite")]
            OutboxDb::Sqlite(_) => Dialect::Sqlite,
        }
    }

    async fn execute_sql(&self, sql: &str) -> Result<()> {
        match self {
            #[cfg(feature = "postgres")]
            OutboxDb::Postgres(pool) => {
                sqlx::raw_sql(safe(sql)).execute(pool).await?;
            }
            #[cfg(feature = "mysql")]
            OutboxDb::MySql(pool) => {
                sqlx::raw_sql(safe(sql)).execute(pool).await?;
            }
            #[cfg(not(any(feature = "postgres", feature = "mysql", feature = "sqlite")))]
            OutboxDb::NoDriver(never) => match *never {},
            #[cfg(feature = "sqlite")]
            OutboxDb::Sqlite(pool) => {
                sqlx::raw_sql(safe(sql)).execute(pool).await?;
            }
        };
        Ok(())
    }

    async fn query_pairs(&self, sql: &str) -> Result<Vec<(String, i64)>> {
        Ok(match self {
            #[cfg(feature = "postgres")]
            OutboxDb::Postgres(pool) => sqlx::query_as(safe(sql)).fetch_all(pool).await?,
            #[cfg(feature = "mysql")]
            OutboxDb::MySql(pool) => sqlx::query_as(safe(sql)).fetch_all(pool).await?,
            #[cfg(not(any(feature = "postgres", feature = "mysql", feature = "sqlite")))]
            OutboxDb::NoDriver(never) => match *never {},
            #[cfg(feature = "sqlite")]
            OutboxDb::Sqlite(pool) => sqlx::query_as(safe(sql)).fetch_all(pool).await?,
        })
    }
}
