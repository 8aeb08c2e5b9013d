//! Read-your-writes for every write path: wait until the outbox rows committed before the
//! call are delivered.
//!
//! Hooked SeaORM saves invalidate before they return; a write no hook sees (raw SQL, a
//! Diesel statement, a bulk API, another process) reaches the cache only through the outbox,
//! a few milliseconds later. After such a commit, [`Relay::wait_delivered`] (or the
//! process-wide [`wait_delivered`], or [`wait_delivered_blocking`] from synchronous code)
//! returns once this relay's consumer has every row that was committed when the wait began:
//! the first read after it is fresh.
//!
//! How: read the newest row still waiting for the consumer (a committed write's rows are
//! visible to any statement that starts after its commit returned), then claim and deliver
//! batches, in id order, until no row up to that one waits. Claims of one consumer take
//! turns (`db.rs`), so a wait that runs beside the relay's own task waits for its claim
//! rather than skipping its rows. Rows committed later are not waited for; rows with lower
//! ids that commit during the wait are delivered too (harmless).

use std::sync::{Mutex, PoisonError, Weak};
use std::time::Duration;

use super::{Inner, Relay};
use crate::error::{Error, Result};

/// Relays running in this process ([`Relay::spawn`]), with the runtime each runs on: what
/// [`wait_delivered`] and [`wait_delivered_blocking`] wait for.
static RUNNING: Mutex<Vec<(Weak<Inner>, tokio::runtime::Handle)>> = Mutex::new(Vec::new());

/// Remembers a spawned relay for the process-wide waits.
pub(super) fn register(relay: &Relay, runtime: tokio::runtime::Handle) {
    let mut running = RUNNING.lock().unwrap_or_else(PoisonError::into_inner);
    running.retain(|(relay, _)| relay.strong_count() > 0);
    running.push((std::sync::Arc::downgrade(&relay.inner), runtime));
}

/// Forgets one spawn of `relay` (its handle stopped it): a stopped relay is not waited for
/// (its wait would register again a private consumer its shutdown removed).
pub(super) fn unregister(relay: &Relay) {
    let mut running = RUNNING.lock().unwrap_or_else(PoisonError::into_inner);
    let ours = std::sync::Arc::as_ptr(&relay.inner);
    if let Some(at) = running.iter().position(|(r, _)| r.as_ptr() == ours) {
        running.remove(at);
    }
}

fn running() -> Vec<(Relay, tokio::runtime::Handle)> {
    RUNNING
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .iter()
        .filter_map(|(inner, runtime)| {
            Some((
                Relay {
                    inner: inner.upgrade()?,
                },
                runtime.clone(),
            ))
        })
        .collect()
}

impl Relay {
    /// Waits until every outbox row committed before this call is delivered to this relay's
    /// consumer, claiming and delivering batches itself (beside the background task, if
    /// any): after a commit no hook saw, the next read is fresh.
    ///
    /// ```no_run
    /// # async fn run(relay: matroska_outbox::Relay, pool: sqlx::PgPool) -> Result<(), Box<dyn std::error::Error>> {
    /// use std::time::Duration;
    ///
    /// sqlx::query("UPDATE article SET published = true WHERE id = 7").execute(&pool).await?;
    /// relay.wait_delivered(Duration::from_secs(2)).await?;
    /// // Every cached list and row that update touched is invalidated now.
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// [`Error::NotDeliveredInTime`] past `timeout` (the rows stay and are delivered later);
    /// the database's and the cache's errors.
    pub async fn wait_delivered(&self, timeout: Duration) -> Result<()> {
        match tokio::time::timeout(timeout, self.deliver_committed()).await {
            Ok(done) => done,
            // A claim cut short rolls back: its rows stay for the next one.
            Err(_) => Err(Error::NotDeliveredInTime { waited: timeout }),
        }
    }

    async fn deliver_committed(&self) -> Result<()> {
        let inner = &self.inner;
        // MySQL/MariaDB: a TRUNCATE leaves no row until it is noticed.
        self.check_truncations(true).await?;
        // A consumer dropped as expired is no longer waited for: the rows it missed may be
        // swept already, so "none waits" proves nothing until it is known registered (a
        // drop found here registers it again, flushing its cache).
        // Beats when due (no query otherwise): a consumer not seen for its expiry could be
        // dropped between the check below and the read of the horizon.
        self.prepare().await?;
        if !inner.consumer.registered(&inner.db, &inner.outbox).await? {
            inner.consumer.beat_due();
            self.prepare().await?;
        }
        let Some(horizon) = inner
            .db
            .newest_waiting(&inner.outbox, &inner.consumer.name)
            .await?
        else {
            return Ok(());
        };
        let mut pause = Duration::from_millis(1);
        loop {
            let delivery = self.run_once().await?;
            if !inner
                .db
                .waiting_up_to(&inner.outbox, &inner.consumer.name, horizon)
                .await?
            {
                return Ok(());
            }
            if delivery.rows == 0 {
                // Another relay of this consumer holds them (SQLite claims do not take
                // turns): give it a moment.
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_millis(50));
            }
        }
    }
}

/// [`Relay::wait_delivered`] for every relay running in this process ([`Relay::spawn`] or
/// [`Relay::start`]), at once: after a write no hook saw, e.g. a Diesel statement or raw SQL,
/// wait for this before reading what it changed. Returns at once when no relay runs.
///
/// ```no_run
/// # async fn run() -> Result<(), matroska_outbox::Error> {
/// use std::time::Duration;
///
/// // ... a commit through any driver ...
/// matroska_outbox::wait_delivered(Duration::from_secs(2)).await?;
/// # Ok(()) }
/// ```
///
/// # Errors
/// As [`Relay::wait_delivered`]; the first failure of any relay.
pub async fn wait_delivered(timeout: Duration) -> Result<()> {
    // One after the other, within one deadline: a process runs one relay per cache, rarely
    // more.
    // `None`: no deadline the clock can represent (`Duration::MAX`, "as long as it takes").
    let deadline = tokio::time::Instant::now().checked_add(timeout);
    for (relay, _) in running() {
        let left = deadline.map_or(timeout, |d| {
            d.saturating_duration_since(tokio::time::Instant::now())
        });
        relay.wait_delivered(left).await.map_err(|e| match e {
            Error::NotDeliveredInTime { .. } => Error::NotDeliveredInTime { waited: timeout },
            other => other,
        })?;
    }
    Ok(())
}

/// [`wait_delivered`] for synchronous code (a sync Diesel application, a blocking thread):
/// the wait runs on each relay's own runtime while this thread blocks, so no runtime is
/// needed here. Sync code called straight from an async handler (a Diesel repository under
/// actix-web or axum) may call it too: it blocks that thread, as the Diesel write before it
/// did, and works as long as the relays run on another runtime or thread (the usual
/// `main`-started relay; a relay on that very single-threaded runtime cannot deliver while
/// the thread waits, and the wait times out). In async code of your own, `.await`
/// [`wait_delivered`].
///
/// ```no_run
/// use std::time::Duration;
///
/// // ... `diesel::update(..).execute(&mut conn)?` on a synchronous connection ...
/// matroska_outbox::wait_delivered_blocking(Duration::from_secs(2))?;
/// # Ok::<(), matroska_outbox::Error>(())
/// ```
///
/// # Errors
/// As [`wait_delivered`].
pub fn wait_delivered_blocking(timeout: Duration) -> Result<()> {
    block_on_waits(running(), timeout)
}

/// Runs [`Relay::wait_delivered`] of each relay on its runtime and blocks this thread until
/// all are done (or the time is up).
pub(super) fn block_on_waits(
    relays: Vec<(Relay, tokio::runtime::Handle)>,
    timeout: Duration,
) -> Result<()> {
    // On a worker of a multi-thread runtime (sync code called from an async handler), hand
    // its core to another thread first: a wait spawned from here lands in the worker's own,
    // unstealable, next-task slot, and would only time out while the worker blocks below.
    // (On a current-thread runtime `block_in_place` would panic; there nothing helps when
    // the relay runs on it, as the docs of `wait_delivered_blocking` say.)
    matroska_core::blocking::run_blocking(|| wait_for(relays, timeout))
}

fn wait_for(relays: Vec<(Relay, tokio::runtime::Handle)>, timeout: Duration) -> Result<()> {
    let (sender, receiver) = std::sync::mpsc::channel();
    let count = relays.len();
    for (relay, runtime) in relays {
        let sender = sender.clone();
        runtime.spawn(async move {
            // The receiver may have given up (timed out): nothing to tell then.
            let _ = sender.send(relay.wait_delivered(timeout).await);
        });
    }
    drop(sender);
    // Each wait ends by its own time-out; the margin covers scheduling only.
    // `None` (`Duration::MAX`): wait for each to answer, however long.
    let deadline =
        std::time::Instant::now().checked_add(timeout.saturating_add(Duration::from_millis(100)));
    for _ in 0..count {
        let received = match deadline {
            Some(deadline) => receiver
                .recv_timeout(deadline.saturating_duration_since(std::time::Instant::now()))
                .ok(),
            None => receiver.recv().ok(),
        };
        match received {
            Some(done) => done?,
            None => return Err(Error::NotDeliveredInTime { waited: timeout }),
        }
    }
    Ok(())
}
