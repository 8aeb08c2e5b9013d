//! MySQL/MariaDB: `TRUNCATE` of a watched table.
//!
//! `TRUNCATE` fires no trigger on MySQL/MariaDB (PostgreSQL has `TRUNCATE` triggers, SQLite
//! has no `TRUNCATE`), so it leaves no outbox row. It is observable all the same: InnoDB
//! re-creates the table under a new table id (`information_schema.INNODB_SYS_TABLES` on
//! MariaDB, `INNODB_TABLES` on MySQL 8; both need the `PROCESS` privilege). [`install`]
//! records each watched table's id in `{outbox}_table_ids`; a relay compares the recorded ids
//! with the current ones (one query for every watched table, at most once per
//! [`truncate_check_interval`](crate::RelayBuilder::truncate_check_interval), by default the
//! poll interval: a truncate is invalidated within that plus one poll interval, 100 ms by
//! default, plus a claim in progress),
//! and for each table whose id changed writes a whole-entity (`T`) row into the outbox and
//! then records the new id. The row goes through the outbox like any other, so every consumer
//! (every cache over this database, see `consumer.rs`) receives it, whichever relay noticed
//! the truncate first ([`TableSpec::coarse_dependencies`] is what a `T` row invalidates).
//! A truncate while no relay
//! runs is found by the next relay to start; one that happened before the install is not a
//! change to a watched table.
//!
//! Anything else that re-creates the table (`ALTER TABLE` with a copy, `OPTIMIZE TABLE`,
//! `DROP` and `CREATE`) changes the id too, and also invalidates the entity: a spare miss. Not
//! detected: tables of another engine than InnoDB, tables whose name holds characters other
//! than ASCII (their InnoDB name is encoded differently), and any table when the relay's user
//! lacks `PROCESS` (an error is logged once).

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use matroska_core::TableSpec;

use crate::db::{OutboxDb, SqlConnection};
use crate::ddl::{Dialect, Outbox, literal, quote};
use crate::error::Result;

/// The table of recorded table ids, quoted and qualified.
pub(crate) fn ids_table(outbox: &Outbox) -> String {
    let name = quote(Dialect::MySql, &format!("{}_table_ids", outbox.table()));
    match outbox.schema() {
        Some(schema) => format!("{}.{name}", quote(Dialect::MySql, schema)),
        None => name,
    }
}

fn create_ids_table_sql(outbox: &Outbox) -> String {
    format!(
        "CREATE TABLE IF NOT EXISTS {} (table_name VARCHAR(255) NOT NULL PRIMARY KEY, \
         innodb_name VARCHAR(1024) NOT NULL, table_id BIGINT NOT NULL) ENGINE=InnoDB",
        ids_table(outbox)
    )
}

/// InnoDB's name of a table, `database/table` with every ASCII character but letters, digits
/// and `_` written `@00xx`; `None` for names with other characters (encoded otherwise).
fn innodb_name(database: &str, table: &str) -> Option<String> {
    let encode = |name: &str| -> Option<String> {
        let mut out = String::new();
        for c in name.chars() {
            if c.is_ascii_alphanumeric() || c == '_' {
                out.push(c);
            } else if c.is_ascii() {
                out.push_str(&format!("@{:04x}", u32::from(c)));
            } else {
                return None;
            }
        }
        Some(out)
    };
    Some(format!("{}/{}", encode(database)?, encode(table)?))
}

/// The `information_schema` table of InnoDB's table ids on this server.
async fn id_source(conn: &(impl SqlConnection + ?Sized)) -> Result<&'static str> {
    let version = conn
        .query_pairs("SELECT VERSION() AS name, CAST(0 AS SIGNED) AS n")
        .await?;
    let mariadb = version
        .first()
        .is_some_and(|(v, _)| v.to_ascii_lowercase().contains("mariadb"));
    Ok(if mariadb {
        "information_schema.INNODB_SYS_TABLES"
    } else {
        "information_schema.INNODB_TABLES"
    })
}

fn is_denied(e: &crate::Error) -> bool {
    let text = e.to_string().to_ascii_lowercase();
    text.contains("access denied") || text.contains("process privilege")
}

/// Records the table ids of `tables` (MySQL/MariaDB; elsewhere nothing). An id already
/// recorded is kept: the table may have been truncated since, and the relay has not seen it.
pub(crate) async fn install(
    conn: &(impl SqlConnection + ?Sized),
    outbox: &Outbox,
    tables: &[TableSpec],
) -> Result<()> {
    if conn.dialect() != Dialect::MySql || tables.is_empty() {
        return Ok(());
    }
    conn.execute_sql(&create_ids_table_sql(outbox)).await?;
    let database = crate::cascade::current_database(conn).await?;
    let mut names = Vec::new();
    for spec in tables {
        let (db, table) = match spec.table().split_once('.') {
            Some((db, table)) => (Some(db), table),
            None => (database.as_deref(), spec.table()),
        };
        match db.and_then(|db| innodb_name(db, table)) {
            Some(name) => names.push((spec.table(), name)),
            None => tracing::warn!(
                table = spec.table(),
                "matroska outbox: TRUNCATE of this table cannot be detected (no database \
                 selected, or a name with non-ASCII characters)"
            ),
        }
    }
    if names.is_empty() {
        return Ok(());
    }
    let source = id_source(conn).await?;
    let sql = format!(
        "SELECT NAME AS name, CAST(TABLE_ID AS SIGNED) AS n FROM {source} WHERE NAME IN ({})",
        names
            .iter()
            .map(|(_, n)| literal(Dialect::MySql, n))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let ids: HashMap<String, i64> = match conn.query_pairs(&sql).await {
        Ok(rows) => rows.into_iter().collect(),
        Err(e) if is_denied(&e) => {
            tracing::warn!(
                error = %e,
                "matroska outbox: TRUNCATE of watched tables cannot be detected without the \
                 PROCESS privilege (InnoDB table ids); grant it to the installing and the \
                 relay's user"
            );
            return Ok(());
        }
        Err(e) => return Err(e),
    };
    for (table, name) in names {
        let Some(id) = ids.get(&name) else {
            tracing::warn!(
                table,
                "matroska outbox: TRUNCATE of this table cannot be detected (not an InnoDB table)"
            );
            continue;
        };
        conn.execute_sql(&format!(
            "INSERT INTO {} (table_name, innodb_name, table_id) VALUES ({}, {}, {id}) \
             ON DUPLICATE KEY UPDATE innodb_name = VALUES(innodb_name)",
            ids_table(outbox),
            literal(Dialect::MySql, table),
            literal(Dialect::MySql, &name)
        ))
        .await?;
    }
    Ok(())
}

/// Forgets the table ids of `tables` (MySQL/MariaDB; elsewhere nothing).
pub(crate) async fn uninstall(
    conn: &(impl SqlConnection + ?Sized),
    outbox: &Outbox,
    tables: &[&str],
) -> Result<()> {
    if conn.dialect() != Dialect::MySql || tables.is_empty() {
        return Ok(());
    }
    conn.execute_sql(&create_ids_table_sql(outbox)).await?;
    conn.execute_sql(&format!(
        "DELETE FROM {} WHERE table_name IN ({})",
        ids_table(outbox),
        tables
            .iter()
            .map(|t| literal(Dialect::MySql, t))
            .collect::<Vec<_>>()
            .join(", ")
    ))
    .await
}

/// A relay's watch over the table ids: which `information_schema` table holds them, when it
/// last looked.
#[derive(Debug, Default)]
pub(crate) struct TruncateWatch {
    state: Mutex<WatchState>,
}

#[derive(Debug, Default)]
struct WatchState {
    source: Option<&'static str>,
    last: Option<Instant>,
    /// The relay's user may not read the ids: said once, then not tried again.
    denied: bool,
    /// The ids table is missing (the outbox not installed yet, or by an older build).
    missing_said: bool,
}

impl TruncateWatch {
    fn state(&self) -> std::sync::MutexGuard<'_, WatchState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Writes a whole-entity (`T`) outbox row for every watched table whose InnoDB id changed
    /// since it was recorded (a `TRUNCATE`), then records the new id; returns how many. Runs at most
    /// once per `every` unless `force`d; nothing on databases other than MySQL/MariaDB.
    pub(crate) async fn check(
        &self,
        db: &OutboxDb,
        outbox: &Outbox,
        every: Duration,
        force: bool,
    ) -> Result<usize> {
        if db.dialect() != Dialect::MySql {
            return Ok(0);
        }
        let source = {
            let mut state = self.state();
            if state.denied || (!force && state.last.is_some_and(|last| last.elapsed() < every)) {
                return Ok(0);
            }
            state.last = Some(Instant::now());
            state.source
        };
        let source = match source {
            Some(source) => source,
            None => {
                let source = id_source(db).await?;
                self.state().source = Some(source);
                source
            }
        };
        let ids = ids_table(outbox);
        let sql = format!(
            "SELECT t.table_name AS name, CAST(s.TABLE_ID AS SIGNED) AS n FROM {ids} t \
             JOIN {source} s ON s.NAME = t.innodb_name WHERE s.TABLE_ID <> t.table_id"
        );
        let changed = match db.query_pairs(&sql).await {
            Ok(changed) => changed,
            Err(e) if is_denied(&e) => {
                self.state().denied = true;
                tracing::error!(
                    error = %e,
                    "matroska outbox relay: TRUNCATE of watched tables cannot be detected without \
                     the PROCESS privilege (InnoDB table ids); grant it to the relay's user"
                );
                return Ok(0);
            }
            Err(e) if e.to_string().contains("doesn't exist") => {
                let mut state = self.state();
                if !state.missing_said {
                    state.missing_said = true;
                    tracing::warn!(
                        "matroska outbox relay: no table ids recorded ({ids} is missing): TRUNCATE \
                         is detected once `install` ran"
                    );
                }
                return Ok(0);
            }
            Err(e) => return Err(e),
        };
        for (table, id) in &changed {
            // A `T` row (the whole entity), as the foreign-key triggers write for what they
            // cannot record exactly: it goes through the outbox, so every consumer (every cache
            // over this database) receives it, not only this relay's cache. The new id is
            // recorded only after the row is in: a failure between the two statements finds the
            // change again and writes a second `T` row, which costs a miss, never a stale read.
            db.execute_sql(&format!(
                "INSERT INTO {} (table_name, op, old_row, new_row, created_us) VALUES ({}, 'T', NULL, NULL, {})",
                outbox.outbox_table(Dialect::MySql),
                literal(Dialect::MySql, table),
                Outbox::now_us(Dialect::MySql)
            ))
            .await?;
            tracing::info!(
                table,
                "matroska outbox relay: the table was truncated or re-created; its whole entity \
                 is invalidated through the outbox"
            );
            db.execute_sql(&format!(
                "UPDATE {ids} SET table_id = {id} WHERE table_name = {}",
                literal(Dialect::MySql, table)
            ))
            .await?;
        }
        Ok(changed.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn innodb_names_encode_ascii_punctuation() {
        assert_eq!(innodb_name("db", "post").as_deref(), Some("db/post"));
        assert_eq!(
            innodb_name("db", "a-b c").as_deref(),
            Some("db/a@002db@0020c")
        );
        assert_eq!(innodb_name("db", "ü"), None);
    }
}
