//! A real backend with faults injected into its invalidations: they fail while the backend
//! is "down", wait while its gate is closed (to drop a caller mid-invalidation), and lose
//! their scope conditions while told to forget them (to show a checker catches that); its
//! puts wait while their own gate is closed (to let a write land between a load and its put);
//! and its lease requests can take the lease and then never answer (a reply lost in flight),
//! or find it held by another process; its reads that find a value wait while their gate is
//! closed (a reply still on its way while the world moves on).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use matroska::Error;
use matroska::backend::{Backend, PutOutcome, PutRequest, Ticket};
use tokio::sync::watch;

/// Wraps a backend; everything but `invalidate` goes straight through.
#[derive(Debug)]
pub struct Faulty {
    inner: Arc<dyn Backend>,
    down: AtomicBool,
    forget_conditions: AtomicBool,
    open: watch::Sender<bool>,
    /// Invalidations that reached the closed gate, ever.
    stopped: watch::Sender<usize>,
    puts_open: watch::Sender<bool>,
    /// Puts that reached the closed put gate, ever.
    puts_stopped: watch::Sender<usize>,
    lose_lease_replies: AtomicBool,
    leases_held_elsewhere: AtomicBool,
    /// Lease requests, ever.
    lease_asks: watch::Sender<usize>,
    hits_open: watch::Sender<bool>,
    /// Reads that found a value and reached the closed hit gate, ever.
    hits_stopped: watch::Sender<usize>,
    /// Reads answered (to the caller), ever.
    gets_answered: watch::Sender<usize>,
    /// Reads that found a value, ever.
    hits: AtomicUsize,
}

impl Faulty {
    pub fn new(inner: impl Backend) -> Self {
        Self::new_arc(Arc::new(inner))
    }

    /// Wraps a shared backend.
    pub fn new_arc(inner: Arc<dyn Backend>) -> Self {
        Faulty {
            inner,
            down: AtomicBool::new(false),
            forget_conditions: AtomicBool::new(false),
            open: watch::Sender::new(true),
            stopped: watch::Sender::new(0),
            puts_open: watch::Sender::new(true),
            puts_stopped: watch::Sender::new(0),
            lose_lease_replies: AtomicBool::new(false),
            leases_held_elsewhere: AtomicBool::new(false),
            lease_asks: watch::Sender::new(0),
            hits_open: watch::Sender::new(true),
            hits_stopped: watch::Sender::new(0),
            gets_answered: watch::Sender::new(0),
            hits: AtomicUsize::new(0),
        }
    }

    /// While set, `try_lease` answers that another process holds the lease (without asking
    /// the real backend, so it works on backends without leases too).
    pub fn hold_leases_elsewhere(&self, held: bool) {
        self.leases_held_elsewhere.store(held, Ordering::SeqCst);
    }

    /// How many lease requests have been made so far.
    pub fn lease_asks(&self) -> usize {
        *self.lease_asks.borrow()
    }

    /// Waits until more than `before` lease requests have been made.
    pub async fn lease_asks_after(&self, before: usize) {
        wait_above(&self.lease_asks, before).await;
    }

    /// Closes the hit gate: reads that find a value wait (with the value already read) until
    /// [`Faulty::open_hits`]. Misses go through.
    pub fn close_hits(&self) {
        self.hits_open.send_replace(false);
    }

    pub fn open_hits(&self) {
        self.hits_open.send_replace(true);
    }

    /// Waits until more than `before` reads have found a value and stopped at the hit gate.
    pub async fn hits_stopped_after(&self, before: usize) {
        wait_above(&self.hits_stopped, before).await;
    }

    /// How many reads have been answered so far.
    pub fn gets_answered(&self) -> usize {
        *self.gets_answered.borrow()
    }

    /// How many reads have found a value so far (hits of cached queries).
    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    /// Waits until more than `before` reads have been answered.
    pub async fn gets_answered_after(&self, before: usize) {
        wait_above(&self.gets_answered, before).await;
    }

    /// While set, `try_lease` takes the lease on the real backend and then never returns, as
    /// when the reply is lost and the caller is dropped waiting for it.
    pub fn lose_lease_replies(&self, lose: bool) {
        self.lose_lease_replies.store(lose, Ordering::SeqCst);
    }

    /// Closes the put gate: puts wait until [`Faulty::open_puts`].
    pub fn close_puts(&self) {
        self.puts_open.send_replace(false);
    }

    pub fn open_puts(&self) {
        self.puts_open.send_replace(true);
    }

    /// Waits until more than `before` puts have reached the closed put gate.
    pub async fn puts_stopped_after(&self, before: usize) {
        let mut stopped = self.puts_stopped.subscribe();
        stopped
            .wait_for(|n| *n > before)
            .await
            .expect("the sender lives in self");
    }

    /// While `down`, invalidations fail with a time-out.
    pub fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::SeqCst);
    }

    /// While set, invalidations drop the scope conditions (`Condition` dependencies) and
    /// deliver the rest: a write no longer reaches the lists a row enters.
    pub fn set_forget_conditions(&self, forget: bool) {
        self.forget_conditions.store(forget, Ordering::SeqCst);
    }

    /// Closes the gate: invalidations wait until [`Faulty::open`].
    pub fn close(&self) {
        self.open.send_replace(false);
    }

    pub fn open(&self) {
        self.open.send_replace(true);
    }

    /// How many invalidations have reached the closed gate so far.
    pub fn stopped(&self) -> usize {
        *self.stopped.borrow()
    }

    /// Waits until more than `before` invalidations have reached the closed gate.
    pub async fn stopped_after(&self, before: usize) {
        let mut stopped = self.stopped.subscribe();
        stopped
            .wait_for(|n| *n > before)
            .await
            .expect("the sender lives in self");
    }
}

#[async_trait]
impl Backend for Faulty {
    fn name(&self) -> &'static str {
        "faulty"
    }
    async fn get(&self, key: &str) -> matroska::Result<Option<Bytes>> {
        let read = self.inner.get(key).await;
        if matches!(read, Ok(Some(_))) {
            self.hits.fetch_add(1, Ordering::SeqCst);
            let mut open = self.hits_open.subscribe();
            if !*open.borrow_and_update() {
                self.hits_stopped.send_modify(|n| *n += 1);
                open.wait_for(|o| *o)
                    .await
                    .expect("the sender lives in self");
            }
        }
        self.gets_answered.send_modify(|n| *n += 1);
        read
    }
    async fn has(&self, key: &str) -> matroska::Result<bool> {
        self.inner.has(key).await
    }
    async fn put(&self, request: PutRequest<'_>) -> matroska::Result<PutOutcome> {
        let mut open = self.puts_open.subscribe();
        if !*open.borrow_and_update() {
            self.puts_stopped.send_modify(|n| *n += 1);
            open.wait_for(|o| *o)
                .await
                .expect("the sender lives in self");
        }
        self.inner.put(request).await
    }
    async fn delete(&self, key: &str) -> matroska::Result<bool> {
        self.inner.delete(key).await
    }
    async fn invalidate(&self, deps: &[String]) -> matroska::Result<matroska::Invalidated> {
        if self.down.load(Ordering::SeqCst) {
            return Err(Error::Timeout {
                operation: "invalidate",
                timeout: Duration::from_millis(1),
            });
        }
        let mut open = self.open.subscribe();
        if !*open.borrow_and_update() {
            self.stopped.send_modify(|n| *n += 1);
            open.wait_for(|o| *o)
                .await
                .expect("the sender lives in self");
        }
        if self.forget_conditions.load(Ordering::SeqCst) {
            // 'C' starts a condition's encoding (`Dependency::encode`).
            let kept: Vec<String> = deps
                .iter()
                .filter(|d| !d.starts_with('C'))
                .cloned()
                .collect();
            return self.inner.invalidate(&kept).await;
        }
        self.inner.invalidate(deps).await
    }
    async fn ticket(&self) -> matroska::Result<Ticket> {
        self.inner.ticket().await
    }
    async fn try_lease(&self, key: &str, token: u64, ttl: Duration) -> matroska::Result<bool> {
        self.lease_asks.send_modify(|n| *n += 1);
        if self.leases_held_elsewhere.load(Ordering::SeqCst) {
            return Ok(false);
        }
        let taken = self.inner.try_lease(key, token, ttl).await;
        if self.lose_lease_replies.load(Ordering::SeqCst) {
            std::future::pending::<()>().await;
        }
        taken
    }
    async fn release_lease(&self, key: &str, token: u64) -> matroska::Result<()> {
        self.inner.release_lease(key, token).await
    }
}

async fn wait_above(counter: &watch::Sender<usize>, before: usize) {
    let mut seen = counter.subscribe();
    seen.wait_for(|n| *n > before)
        .await
        .expect("the sender lives in the backend");
}
