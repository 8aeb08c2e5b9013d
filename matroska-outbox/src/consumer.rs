//! Consumers: every cache the relays deliver to receives every change.
//!
//! A consumer is a name for one cache: by default the store's own name (a Redis prefix on a
//! server: every process on it is one consumer) or, for a store private to a process (the
//! in-memory backend), a name unique to this process and cache. The outbox keeps a row until
//! every registered consumer marked it delivered (`matroska_outbox_done`); a relay claims the
//! rows its consumer has not marked, in id order, and marks them in the transaction that
//! settles the claim. There is no cursor: a row whose transaction commits late with a lower
//! id is simply found by the next claim.
//!
//! A consumer that registers (first start, or back after it was dropped) may hold entries
//! for changes it never received: it flushes its cache for every watched table before it
//! delivers anything (every list of each entity, and the key of every row the table holds
//! now). A consumer whose relays have not been seen for its expiry time is dropped by any
//! other relay (with a warning), and its marks no longer hold rows back.

use std::collections::hash_map::RandomState;
use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::hash::{BuildHasher, Hasher};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use matroska_core::table::Row;
use matroska_core::{Cache, Dependency, RowChange, TableSpec};

use crate::db::{OutboxDb, SqlConnection};
use crate::ddl::{Dialect, Outbox, Recorded, literal};
use crate::error::Result;

/// A name unique to this process (pid and a random number), for consumers private to it.
fn process_nonce() -> &'static str {
    static NONCE: OnceLock<String> = OnceLock::new();
    NONCE.get_or_init(|| {
        let mut hasher = RandomState::new().build_hasher();
        hasher.write_u128(crate::db::now_us().unsigned_abs().into());
        format!("{}-{:016x}", std::process::id(), hasher.finish())
    })
}

/// The default consumer of `cache`: its store's shared name, else one private to this
/// process and this cache (`true`).
pub(crate) fn default_name(cache: &Cache) -> (String, bool) {
    match cache.backend().shared_store() {
        Some(name) => (name, false),
        None => (
            format!(
                "process:{}:{}:{:x}",
                cache.backend().name(),
                process_nonce(),
                Arc::as_ptr(cache.backend()).cast::<()>() as usize
            ),
            true,
        ),
    }
}

#[derive(Debug, Default)]
struct State {
    /// Registered and flushed (as far as this process knows).
    ready: bool,
    /// The last heartbeat (and expiry sweep) this process sent.
    beat: Option<Instant>,
}

/// One relay's consumer.
#[derive(Debug)]
pub(crate) struct Consumer {
    pub(crate) name: String,
    /// Private to this process: deregistered when the relay shuts down.
    pub(crate) private: bool,
    pub(crate) expiry: Duration,
    state: Mutex<State>,
}

impl Consumer {
    pub(crate) fn new(name: String, private: bool, expiry: Duration) -> Self {
        Consumer {
            name,
            private,
            expiry,
            state: Mutex::default(),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// How often the relay beats and sweeps expired consumers: often enough that a live
    /// relay is never taken for gone (ten beats per expiry), at most every 10 s.
    pub(crate) fn beat_every(&self) -> Duration {
        (self.expiry / 10).clamp(Duration::from_millis(10), Duration::from_secs(10))
    }

    /// Makes the next [`Consumer::ensure`] beat (and so find out whether the consumer was
    /// dropped meanwhile) whenever it last did.
    pub(crate) fn beat_due(&self) {
        self.state().beat = None;
    }

    /// Whether this process registered the consumer and the database still holds it, ready
    /// (one query): when not, rows it missed may be gone, and [`Consumer::ensure`] must run
    /// (registering it again, flushing) before "no row waits" means anything.
    pub(crate) async fn registered(&self, db: &OutboxDb, outbox: &Outbox) -> Result<bool> {
        if !self.state().ready {
            return Ok(false);
        }
        let d = db.dialect();
        let select = format!(
            "SELECT name, ready AS n FROM {} WHERE name = {}",
            outbox.consumers_table(d),
            literal(d, &self.name)
        );
        Ok(db
            .query_pairs(&select)
            .await?
            .first()
            .is_some_and(|(_, ready)| *ready != 0))
    }

    /// The claim found this consumer gone (dropped as expired): register again, flushing.
    pub(crate) fn lost(&self) {
        tracing::warn!(
            consumer = %self.name,
            "this relay's outbox consumer was dropped (not seen for longer than its expiry): \
             its cache may have missed changes and is flushed for every watched table"
        );
        self.state().ready = false;
    }

    /// Registers the consumer (flushing the cache through `flush` when it is new or came
    /// back), beats, and drops other consumers not seen for longer than their expiry. Returns
    /// whether it beat.
    pub(crate) async fn ensure<F, Fut>(
        &self,
        db: &OutboxDb,
        outbox: &Outbox,
        flush: F,
    ) -> Result<bool>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<()>>,
    {
        let d = db.dialect();
        let table = outbox.consumers_table(d);
        let name = literal(d, &self.name);
        let now = Outbox::now_us(d);
        let select = format!("SELECT name, ready AS n FROM {table} WHERE name = {name}");
        // Each consumer keeps its own expiry in its row: another relay, configured with a
        // shorter one, must not take it for gone between two of its beats.
        let expiry = i64::try_from(self.expiry.as_micros()).unwrap_or(i64::MAX);
        let beat = format!(
            "UPDATE {table} SET seen_us = {now}, expiry_us = {expiry}, beats = beats + 1 \
             WHERE name = {name}"
        );
        let (mut ready, beat_due) = {
            let state = self.state();
            (
                state.ready,
                state.beat.is_none_or(|b| b.elapsed() >= self.beat_every()),
            )
        };
        if ready && !beat_due {
            return Ok(false);
        }
        loop {
            if ready {
                db.execute_sql(&beat).await?;
            } else {
                let (ignore, conflict) = match d {
                    Dialect::MySql => ("IGNORE ", ""),
                    _ => ("", " ON CONFLICT (name) DO NOTHING"),
                };
                db.execute_sql(&format!(
                    "INSERT {ignore}INTO {table} \
                     (name, registered_us, seen_us, expiry_us, beats, ready) \
                     VALUES ({name}, {now}, {now}, {expiry}, 0, 0){conflict}"
                ))
                .await?;
            }
            match db.query_pairs(&select).await?.first() {
                // Dropped between two beats (or right after registering): register again,
                // flushing.
                None => {
                    if ready {
                        self.lost();
                    }
                    ready = false;
                }
                Some((_, 0)) => {
                    tracing::info!(
                        consumer = %self.name,
                        "new outbox consumer: flushing its cache for every watched table"
                    );
                    // Registered first: a row deleted from now on waited for this consumer,
                    // and one deleted before committed before the flush below.
                    flush().await?;
                    db.execute_sql(&format!("UPDATE {table} SET ready = 1 WHERE name = {name}"))
                        .await?;
                    break;
                }
                Some(_) => {
                    if !ready {
                        // Registered before (a process restart): the insert changed nothing,
                        // so this is the beat that says the consumer is alive again.
                        db.execute_sql(&beat).await?;
                        tracing::info!(
                            consumer = %self.name,
                            "outbox consumer registered before: resuming its deliveries"
                        );
                    }
                    break;
                }
            }
        }
        self.expire_others(db, outbox).await?;
        let mut state = self.state();
        state.ready = true;
        state.beat = Some(Instant::now());
        Ok(true)
    }

    /// Drops the consumers not seen for longer than their own expiry (each row keeps the
    /// expiry of the relays that beat it), and their marks.
    async fn expire_others(&self, db: &OutboxDb, outbox: &Outbox) -> Result<()> {
        let d = db.dialect();
        let (table, done) = (outbox.consumers_table(d), outbox.done_table(d));
        let cutoff = format!("{} - expiry_us", Outbox::now_us(d));
        let expired = db
            .query_pairs(&format!(
                "SELECT name, seen_us AS n FROM {table} WHERE seen_us < {cutoff} AND name <> {}",
                literal(d, &self.name)
            ))
            .await?;
        for (name, _) in expired {
            tracing::warn!(
                consumer = %name,
                "dropping an outbox consumer not seen for longer than the expiry: the rows it \
                 did not receive no longer wait for it (if it comes back, it flushes its cache)"
            );
            let lit = literal(d, &name);
            // Only if still expired: a relay of it that beat meanwhile keeps it.
            db.execute_sql(&format!(
                "DELETE FROM {table} WHERE name = {lit} AND seen_us < {cutoff}"
            ))
            .await?;
            db.execute_sql(&format!(
                "DELETE FROM {done} WHERE consumer = {lit} AND NOT EXISTS \
                 (SELECT 1 FROM {table} c WHERE c.name = {lit})"
            ))
            .await?;
        }
        Ok(())
    }

    /// Removes this consumer and its marks (a private consumer whose relay shuts down: its
    /// cache goes with its process).
    pub(crate) async fn deregister(&self, db: &OutboxDb, outbox: &Outbox) -> Result<()> {
        let d = db.dialect();
        let name = literal(d, &self.name);
        db.execute_sql(&format!(
            "DELETE FROM {} WHERE name = {name}",
            outbox.consumers_table(d)
        ))
        .await?;
        db.execute_sql(&format!(
            "DELETE FROM {} WHERE consumer = {name}",
            outbox.done_table(d)
        ))
        .await?;
        self.state().ready = false;
        Ok(())
    }
}

/// Invalidates everything `cache` may hold for the watched tables: every list of each
/// entity ([`TableSpec::coarse_dependencies`]) and the key of every row each table holds
/// now. Entries of rows deleted meanwhile, cached by key alone, are not reached (their key
/// is gone): they live until their TTL.
pub(crate) async fn flush(
    db: &OutboxDb,
    outbox: &Outbox,
    cache: &Cache,
    specs: &HashMap<String, Vec<TableSpec>>,
    per_call: usize,
) -> Result<()> {
    let d = db.dialect();
    let mut total = 0_usize;
    for (table, specs) in specs {
        let mut deps: BTreeSet<Dependency> = BTreeSet::new();
        for spec in specs {
            deps.extend(TableSpec::coarse_dependencies(spec.entity()));
        }
        let Some(recorded) = Recorded::group(specs)?.into_iter().next() else {
            continue;
        };
        for (key, _) in db.query_pairs(&outbox.keys_sql(d, &recorded)).await? {
            let Ok(serde_json::Value::Object(key)) =
                serde_json::from_str::<serde_json::Value>(&key)
            else {
                continue;
            };
            let key: Row = key;
            for spec in specs {
                if let Ok(found) = spec.dependencies(&RowChange::KeyOnly { key: &key }) {
                    deps.extend(found);
                }
            }
        }
        let deps: Vec<Dependency> = deps.into_iter().collect();
        for chunk in deps.chunks(per_call) {
            cache.invalidate(chunk).await?;
        }
        tracing::debug!(table = %table, dependencies = deps.len(), "outbox consumer flushed a table");
        total += deps.len();
    }
    // One `info` line per flush, not one per table.
    tracing::info!(
        tables = specs.len(),
        dependencies = total,
        "outbox consumer flushed its cache"
    );
    Ok(())
}
