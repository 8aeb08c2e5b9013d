//! What the installed triggers record, against what the relay's specs need.
//!
//! A model that gained a scope or a tracked column (or whose key changed) after the triggers
//! were installed is silently stale: the triggers do not record the new column (a tracked
//! one: not in key-only rows, as layouts before 3 did), so the relay cannot compute the
//! conditions it would invalidate. The relay reads the triggers' description
//! (`matroska_outbox_tables`, written by [`install`](crate::install)) at start and again every
//! few seconds, and compares it with every watched spec: in development mode a spec needing a
//! column the triggers do not record is an error ([`Error::TriggersOutdated`]) and nothing
//! is delivered until the install is re-run; in production the relay warns once and
//! invalidates that entity coarsely (every list: `all` + `any_change`) for each change.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use matroska_core::{ScopeMode, TableSpec};

use crate::db::{OutboxDb, SqlConnection};
use crate::ddl::{Outbox, Recorded};
use crate::error::{Error, Result};

/// How often the relay reads the installed description again.
const RECHECK: Duration = Duration::from_secs(5);

/// A spec's table and entity.
pub(crate) type SpecId = (String, String);

/// One spec the installed triggers do not serve.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Mismatch {
    table: String,
    entity: String,
    missing: Vec<String>,
    reason: String,
}

impl Mismatch {
    fn error(&self) -> Error {
        Error::TriggersOutdated {
            table: self.table.clone(),
            entity: self.entity.clone(),
            missing: self.missing.clone(),
            reason: self.reason.clone(),
        }
    }
}

/// The relay's view of the installed triggers.
#[derive(Debug, Default)]
pub(crate) struct Installed {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    checked: Option<Instant>,
    /// Production: the specs read coarsely.
    coarse: BTreeSet<SpecId>,
    /// Mismatches already warned about (or logged as errors).
    warned: BTreeSet<(String, String, Vec<String>)>,
}

impl Installed {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The specs to read coarsely (production mode, triggers out of date).
    pub(crate) fn coarse(&self) -> BTreeSet<SpecId> {
        self.state().coarse.clone()
    }

    /// Compares the installed triggers with `specs` when due (at the first call, then every
    /// few seconds; every call while they disagree in development mode).
    ///
    /// # Errors
    /// In [`ScopeMode::Development`], [`Error::TriggersOutdated`] for the first spec the
    /// triggers do not serve; the database's errors.
    pub(crate) async fn check(
        &self,
        db: &OutboxDb,
        outbox: &Outbox,
        specs: &HashMap<String, Vec<TableSpec>>,
        mode: ScopeMode,
    ) -> Result<()> {
        if self
            .state()
            .checked
            .is_some_and(|at| at.elapsed() < RECHECK)
        {
            return Ok(());
        }
        let found = mismatches(db, outbox, specs).await?;
        let mut state = self.state();
        for m in &found {
            if state
                .warned
                .insert((m.table.clone(), m.entity.clone(), m.missing.clone()))
            {
                match mode {
                    ScopeMode::Development => {
                        tracing::error!(error = %m.error(), "outbox triggers out of date")
                    }
                    _ => tracing::warn!(
                        error = %m.error(),
                        "outbox triggers out of date: invalidating the entity's lists for every change to the table"
                    ),
                }
            }
        }
        state.coarse = found
            .iter()
            .map(|m| (m.table.clone(), m.entity.clone()))
            .collect();
        match (mode, found.first()) {
            // Not marked checked: every claim checks again until the install is re-run.
            (ScopeMode::Development, Some(m)) => Err(m.error()),
            _ => {
                state.checked = Some(Instant::now());
                Ok(())
            }
        }
    }
}

/// Every watched spec whose columns the installed triggers do not all record.
async fn mismatches(
    db: &OutboxDb,
    outbox: &Outbox,
    specs: &HashMap<String, Vec<TableSpec>>,
) -> Result<Vec<Mismatch>> {
    let d = db.dialect();
    let mut out = Vec::new();
    let mut tables: Vec<&String> = specs.keys().collect();
    tables.sort();
    for table in tables {
        let installed = match db.query_pairs(&outbox.installed_sql(d, table)).await {
            Ok(rows) => rows.into_iter().next(),
            Err(e) if crate::db::is_missing_table(&e) => None,
            Err(e) => return Err(e),
        };
        let recorded = installed
            .as_ref()
            .map(|(text, _)| Recorded::parse(table, text).map(|(r, _)| r));
        for spec in &specs[table] {
            let needed: Vec<String> = Recorded::from_spec(spec)?.columns().to_vec();
            let (missing, reason) = match &recorded {
                None => (
                    needed,
                    "no outbox triggers are installed on the table".to_owned(),
                ),
                Some(None) => (
                    needed,
                    "its triggers are of a layout that does not say what they record".to_owned(),
                ),
                Some(Some(recorded)) => {
                    let key: Vec<&str> = spec.key_columns().iter().map(|c| c.name()).collect();
                    // A tracked column must be in `K` rows too (triggers of layout 2 and
                    // earlier record only the key there).
                    let tracked: Vec<&str> = spec
                        .tracked_columns()
                        .iter()
                        .map(|c| c.name())
                        .filter(|c| !key.contains(c))
                        .collect();
                    let missing: Vec<String> = needed
                        .into_iter()
                        .filter(|c| {
                            !recorded.columns().contains(c)
                                || (key.contains(&c.as_str()) && !recorded.keys().contains(c))
                                || (tracked.contains(&c.as_str())
                                    && !recorded.tracked().contains(c))
                        })
                        .collect();
                    (
                        missing,
                        format!(
                            "the triggers record {:?} with key {:?}, and {:?} in key-only rows",
                            recorded.columns(),
                            recorded.keys(),
                            recorded.key_only()
                        ),
                    )
                }
            };
            if !missing.is_empty() {
                out.push(Mismatch {
                    table: table.clone(),
                    entity: spec.entity().to_owned(),
                    missing,
                    reason,
                });
            }
        }
    }
    Ok(out)
}
