//! The near cache: a bounded in-process tier in front of Redis that serves hits without a
//! round trip, and is never stale beyond [`NearConfig::max_lag`].
//!
//! # How it stays coherent
//!
//! - **Broadcast.** Every invalidation publishes the dependencies it stamped on the channel
//!   `{P}:n`, from inside `invalidate.lua` (atomically with the stamp change: a process that
//!   receives the message and then reads Redis sees the new stamps); `delete` publishes the
//!   key. Every process's subscriber ([`super::subscriber`]) records what it receives here.
//! - **Marks, checked at hit time.** Recording an invalidation gives it the next number of
//!   this tier's sequence and marks each dependency (and deleted key) with it. An entry
//!   remembers the sequence number noted *before* the remote read that filled it, and is
//!   served only while none of its marks is newer than that and it is not older than the
//!   floor (below). So a remote read racing an invalidation can insert its value, but never
//!   serve it after the invalidation is recorded. The marks map is bounded: forgetting a mark
//!   raises the floor to its number, which refuses every entry filled before it.
//! - **Liveness.** Every `max_lag / 4` the subscriber publishes a heartbeat on this tier's
//!   own channel `{P}:n:<nonce>` *through the backend's data connection* and waits for it on
//!   the subscribed one. Invariant: when a heartbeat sent at `s` comes back, every message the
//!   server that ran its `PUBLISH` had published before it — so every invalidation that
//!   returned before `s` on the server the data connection reaches — has been recorded,
//!   because one server delivers a subscriber's messages in the order it ran their
//!   `PUBLISH`es and the subscriber records them in the order received. A hit is served only
//!   while the newest such `s` is at most `max_lag` old, so an invalidation that returned at
//!   `t` can be served stale only by a read that began before `t + max_lag`, whatever failed
//!   (connection killed, Redis restarted, this process paused, the subscription left on an old
//!   master after a failover behind one address, the heartbeat refused). On every
//!   (re)subscription the tier starts empty (the floor moves past every entry). On Redis
//!   Cluster the subscriber subscribes on every master and a heartbeat round must come back
//!   from each (`subscriber_cluster.rs`).
//! - **Read-your-writes.** `invalidate` and `delete` record their marks in this process
//!   before returning, independently of the broadcast.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::watch;

use super::RedisBackend;

/// Settings of the near cache ([`RedisConfig::near_cache`](super::RedisConfig::near_cache)).
///
/// ```
/// use std::time::Duration;
/// use matroska_core::backend::redis::NearConfig;
///
/// let near = NearConfig::new(64 << 20) // 64 MiB of keys, values and dependencies
///     .max_age(Duration::from_secs(60))
///     .max_lag(Duration::from_millis(200));
/// ```
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct NearConfig {
    /// The most bytes the tier holds, counting each entry's key, value and dependencies plus
    /// a fixed per-entry overhead ([`NearConfig::ENTRY_OVERHEAD`]).
    pub max_bytes: u64,
    /// How long an entry may be served from the tier before it is read from Redis again;
    /// `None` for no limit. Default 60 s: it bounds what no broadcast reaches — a writer
    /// whose `PUBLISH` an ACL refuses, a release without the broadcast.
    pub max_age: Option<Duration>,
    /// How far behind the invalidation broadcast this process may be and still serve near
    /// hits: a hit is served only if a heartbeat published through the data connection at
    /// most this long ago has come back on the subscribed connection (and every message
    /// before it was recorded). It bounds how long after an invalidation returned another
    /// process may still serve the old value when delivery fails. Costs one `PUBLISH` every
    /// `max_lag / 4` per process (20 per second at the default). Default 200 ms.
    pub max_lag: Duration,
    /// How many invalidated dependencies (and deleted keys) the tier remembers; forgetting
    /// the older half makes every entry filled before them a miss. Default 65,536.
    pub max_marks: usize,
}

impl NearConfig {
    /// Bytes counted per entry on top of its key, value and dependencies: the entry, its
    /// `Arc`, the map's own bookkeeping. Measured by `--bench footprint`: 678 heap bytes per
    /// entry of a 13-byte key, an 87-byte value and 5 dependencies, which this weighs 675.
    pub const ENTRY_OVERHEAD: u64 = 360;

    /// A near cache of at most `max_bytes`, a 60 s maximum age, a 200 ms maximum lag.
    pub fn new(max_bytes: u64) -> Self {
        NearConfig {
            max_bytes,
            max_age: Some(Duration::from_secs(60)),
            max_lag: Duration::from_millis(200),
            max_marks: 65_536,
        }
    }

    /// Sets [`NearConfig::max_age`].
    #[must_use]
    pub fn max_age(mut self, age: Duration) -> Self {
        self.max_age = Some(age);
        self
    }

    /// Sets [`NearConfig::max_lag`] (at least 4 ms: the subscriber sends a heartbeat every
    /// quarter of it).
    #[must_use]
    pub fn max_lag(mut self, lag: Duration) -> Self {
        self.max_lag = lag.max(Duration::from_millis(4));
        self
    }

    /// Sets [`NearConfig::max_marks`].
    #[must_use]
    pub fn max_marks(mut self, marks: usize) -> Self {
        self.max_marks = marks.max(16);
        self
    }
}

/// What a message on the channel says was invalidated.
const DEPS: u8 = b'd';
/// What a message on the channel says was deleted.
const KEY: u8 = b'k';

/// The message `invalidate.lua` publishes for `deps`: `d`, then per dependency
/// `<len>:<dependency>` (the entry header's framing: unambiguous whatever the bytes).
pub(super) fn deps_message<'a>(deps: impl IntoIterator<Item = &'a [u8]>) -> Vec<u8> {
    frame(DEPS, deps)
}

/// The message `delete` publishes for `key`: `k<len>:<key>`.
pub(super) fn key_message(key: &str) -> Vec<u8> {
    frame(KEY, [key.as_bytes()])
}

fn frame<'a>(kind: u8, items: impl IntoIterator<Item = &'a [u8]>) -> Vec<u8> {
    use std::io::Write as _;
    let mut message = vec![kind];
    for item in items {
        // Writing into a Vec cannot fail.
        let _ = write!(message, "{}:", item.len());
        message.extend_from_slice(item);
    }
    message
}

/// The marks a message names (`d`/`k` then the item, as [`mark`] builds them), or `None`
/// for a message this version cannot read.
fn parse_message(message: &[u8]) -> Option<Vec<Box<[u8]>>> {
    let (&kind, mut rest) = message.split_first()?;
    if kind != DEPS && kind != KEY {
        return None;
    }
    let mut marks = Vec::new();
    while !rest.is_empty() {
        let colon = rest.iter().take(11).position(|&b| b == b':')?;
        let len: usize = std::str::from_utf8(&rest[..colon]).ok()?.parse().ok()?;
        let item = rest.get(colon + 1..(colon + 1).checked_add(len)?)?;
        marks.push(mark(kind, item));
        rest = &rest[colon + 1 + len..];
    }
    Some(marks)
}

/// The marks map's key of a dependency (`d`) or key (`k`).
fn mark(kind: u8, item: &[u8]) -> Box<[u8]> {
    let mut m = Vec::with_capacity(1 + item.len());
    m.push(kind);
    m.extend_from_slice(item);
    m.into()
}

struct Entry {
    value: Bytes,
    /// `k<key>` and `d<dependency>` for each dependency.
    marks: Box<[Box<[u8]>]>,
    /// The sequence number noted before the remote read that filled it.
    filled: u64,
    /// The newest sequence number at which the entry was found valid: while the sequence has
    /// not moved, a hit needs no look at the marks.
    checked: AtomicU64,
    /// What was left of the Redis entry's time to live when it was read (capped by
    /// `max_age`): the near copy never outlives it.
    ttl: Duration,
}

/// Expires each entry after its own [`Entry::ttl`].
struct EntryTtl;

impl moka::Expiry<Box<str>, Arc<Entry>> for EntryTtl {
    fn expire_after_create(
        &self,
        _key: &Box<str>,
        entry: &Arc<Entry>,
        _created_at: Instant,
    ) -> Option<Duration> {
        Some(entry.ttl)
    }
}

struct Marks {
    /// Mark -> the sequence number of its last invalidation.
    last: HashMap<Box<[u8]>, u64>,
    /// Entries filled before this are refused (forgotten marks, resubscriptions).
    floor: u64,
}

/// Test hooks that stall parts of the protocol (doc-hidden methods on the backend).
pub(super) struct Hooks {
    /// While set, the subscriber records nothing and sends and confirms no heartbeat (a
    /// stalled process).
    pub(super) stall: watch::Sender<bool>,
    /// While set, a read that found a valid value in Redis waits before inserting it.
    fills_closed: watch::Sender<bool>,
    /// Reads that reached the closed fill gate, ever.
    fills_stopped: watch::Sender<usize>,
}

impl Default for Hooks {
    fn default() -> Self {
        Hooks {
            stall: watch::Sender::new(false),
            fills_closed: watch::Sender::new(false),
            fills_stopped: watch::Sender::new(0),
        }
    }
}

impl Hooks {
    /// Waits while the fill gate is closed.
    pub(super) async fn fill_gate(&self, _key: &str) {
        let mut closed = self.fills_closed.subscribe();
        if *closed.borrow_and_update() {
            self.fills_stopped.send_modify(|n| *n += 1);
            // The sender lives in `self`, so this ends only when the gate opens.
            let _ = closed.wait_for(|c| !*c).await;
        }
    }
}

/// The tier. Shared with the subscriber task, which holds it weakly.
pub(super) struct Near {
    entries: moka::sync::Cache<Box<str>, Arc<Entry>>,
    marks: Mutex<Marks>,
    /// Bumped, under `marks`' lock, after every recorded invalidation, delete or restart.
    seq: AtomicU64,
    /// Send time (nanoseconds after `origin`, +1 so that 0 means none) of the newest
    /// heartbeat that came back with every message before it recorded.
    confirmed: AtomicU64,
    origin: Instant,
    pub(super) config: NearConfig,
    pub(super) channel: String,
    /// `{P}:n:<nonce>`: this tier's own heartbeat channel (one per tier, so that N processes
    /// publish N heartbeats, not N² broadcasts).
    pub(super) heartbeat_channel: String,
    pub(super) hooks: Hooks,
}

impl Near {
    pub(super) fn new(mut config: NearConfig, channel: String) -> Self {
        // The fields are public: keep the bounds the setters keep (a zero `max_lag` would
        // also be a zero heartbeat period, which panics the subscriber's interval).
        let (lag, marks) = (config.max_lag, config.max_marks);
        config = config.max_lag(lag).max_marks(marks);
        let entries = moka::sync::Cache::builder()
            .max_capacity(config.max_bytes)
            .weigher(weigh)
            .expire_after(EntryTtl)
            .build();
        Near {
            entries,
            marks: Mutex::new(Marks {
                last: HashMap::new(),
                floor: 0,
            }),
            seq: AtomicU64::new(0),
            confirmed: AtomicU64::new(0),
            origin: Instant::now(),
            config,
            heartbeat_channel: format!("{channel}:{:016x}", crate::nonce::next()),
            channel,
            hooks: Hooks::default(),
        }
    }

    fn nanos(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.origin).as_nanos()).unwrap_or(u64::MAX)
    }

    /// Whether the broadcast is known delivered up to at most `max_lag` ago.
    fn live(&self) -> bool {
        let confirmed = self.confirmed.load(Ordering::Acquire);
        if confirmed == 0 {
            return false;
        }
        let lag = u64::try_from(self.config.max_lag.as_nanos()).unwrap_or(u64::MAX);
        self.nanos(Instant::now()).saturating_sub(confirmed - 1) <= lag
    }

    /// The value of `key`, if the tier may serve it.
    pub(super) fn get(&self, key: &str) -> Option<Bytes> {
        // Liveness first: marks read after a confirmation include every message it covers.
        if !self.live() {
            return None;
        }
        let entry = self.entries.get(key)?;
        let seq = self.seq.load(Ordering::Acquire);
        if entry.checked.load(Ordering::Relaxed) != seq {
            if !self.valid(&entry) {
                self.entries.invalidate(key);
                return None;
            }
            entry.checked.fetch_max(seq, Ordering::Relaxed);
        }
        Some(entry.value.clone())
    }

    fn valid(&self, entry: &Entry) -> bool {
        let marks = self.marks.lock().unwrap_or_else(PoisonError::into_inner);
        entry.filled >= marks.floor
            && entry
                .marks
                .iter()
                .all(|m| marks.last.get(m).is_none_or(|&at| at <= entry.filled))
    }

    /// The sequence number to note before a remote read whose value may be inserted.
    pub(super) fn note(&self) -> u64 {
        self.seq.load(Ordering::Acquire)
    }

    /// Inserts a value read from Redis by a read that noted `noted` before it began; nothing
    /// when an invalidation of its key or dependencies was recorded since.
    pub(super) fn insert<'a>(
        &self,
        key: &str,
        value: Bytes,
        deps: impl IntoIterator<Item = &'a [u8]>,
        noted: u64,
        ttl: Duration,
    ) {
        let marks: Box<[Box<[u8]>]> = std::iter::once(mark(KEY, key.as_bytes()))
            .chain(deps.into_iter().map(|d| mark(DEPS, d)))
            .collect();
        let entry = Entry {
            // A copy: the value read is a slice of the whole Redis entry (dependencies and
            // stamps included), which it would otherwise keep alive uncounted.
            value: Bytes::copy_from_slice(&value),
            marks,
            filled: noted,
            checked: AtomicU64::new(noted),
            // moka refuses more than 1000 years.
            ttl: self
                .config
                .max_age
                .map_or(ttl, |age| age.min(ttl))
                .min(Duration::from_secs(1 << 34)),
        };
        // Not needed for correctness (a hit checks again), but keeps a value already known
        // stale from taking room.
        if self.valid(&entry) {
            self.entries.insert(key.into(), Arc::new(entry));
        }
    }

    /// Records an invalidation of `deps` (encoded dependencies) in this process.
    pub(super) fn invalidated<'a>(&self, deps: impl IntoIterator<Item = &'a [u8]>) {
        self.record(deps.into_iter().map(|d| mark(DEPS, d)).collect());
    }

    /// Records the deletion of `key` in this process.
    pub(super) fn deleted(&self, key: &str) {
        self.record(vec![mark(KEY, key.as_bytes())]);
        self.entries.invalidate(key);
    }

    /// A guard to take before a put or delete of `key`: when dropped (after the write
    /// returned, failed or was cancelled) it refuses this process's near copy of `key` and the
    /// fills of it in flight, so this process reads its own writes. Recorded after the write,
    /// not before: a fill that noted the sequence after the mark could still read the old
    /// value.
    pub(super) fn key_guard<'a>(&'a self, key: &'a str) -> KeyGuard<'a> {
        KeyGuard { near: self, key }
    }

    /// The same for an invalidation of `deps` (encoded dependencies).
    pub(super) fn deps_guard<'a>(&'a self, deps: &'a [String]) -> DepsGuard<'a> {
        DepsGuard { near: self, deps }
    }

    /// Records a message received on the channel.
    pub(super) fn received(&self, message: &[u8]) {
        match parse_message(message) {
            Some(marks) => self.record(marks),
            None => {
                // Another version's message, or garbage: it may have invalidated anything.
                tracing::warn!("unreadable near-cache invalidation message; near tier emptied");
                self.restart();
            }
        }
    }

    fn record(&self, new: Vec<Box<[u8]>>) {
        let mut marks = self.marks.lock().unwrap_or_else(PoisonError::into_inner);
        let seq = self.seq.load(Ordering::Relaxed) + 1;
        for m in new {
            marks.last.insert(m, seq);
        }
        if marks.last.len() > self.config.max_marks {
            forget_older_half(&mut marks);
        }
        // After the marks: a hit that sees this number sees them.
        self.seq.store(seq, Ordering::Release);
    }

    /// Empties the tier: every entry filled so far, or being filled, is refused.
    pub(super) fn restart(&self) {
        let mut marks = self.marks.lock().unwrap_or_else(PoisonError::into_inner);
        let seq = self.seq.load(Ordering::Relaxed) + 1;
        marks.last.clear();
        marks.floor = seq;
        self.seq.store(seq, Ordering::Release);
        drop(marks);
        self.entries.invalidate_all();
    }

    /// A heartbeat sent at `sent` came back and every message before it was recorded.
    pub(super) fn confirm(&self, sent: Instant) {
        self.confirmed
            .fetch_max(self.nanos(sent) + 1, Ordering::AcqRel);
    }

    /// The subscription is gone: serve nothing until it is back and confirmed.
    pub(super) fn disconnected(&self) {
        self.confirmed.store(0, Ordering::Release);
    }

    /// Entries held (after pending evictions), and their total weight in bytes.
    pub(super) fn usage(&self) -> (u64, u64) {
        self.entries.run_pending_tasks();
        (self.entries.entry_count(), self.entries.weighted_size())
    }

    /// Whether the tier may serve hits now.
    pub(super) fn is_live(&self) -> bool {
        self.live()
    }
}

/// See [`Near::key_guard`].
pub(super) struct KeyGuard<'a> {
    near: &'a Near,
    key: &'a str,
}

impl Drop for KeyGuard<'_> {
    fn drop(&mut self) {
        self.near.deleted(self.key);
    }
}

/// See [`Near::deps_guard`].
pub(super) struct DepsGuard<'a> {
    near: &'a Near,
    deps: &'a [String],
}

impl Drop for DepsGuard<'_> {
    fn drop(&mut self) {
        self.near
            .invalidated(self.deps.iter().map(|d| d.as_bytes()));
    }
}

/// An entry's weight: its key, value and marks, plus [`NearConfig::ENTRY_OVERHEAD`].
#[allow(clippy::borrowed_box)] // moka hands the key as it is stored.
fn weigh(key: &Box<str>, entry: &Arc<Entry>) -> u32 {
    let bytes = NearConfig::ENTRY_OVERHEAD as usize
        + key.len()
        + entry.value.len()
        + entry.marks.iter().map(|m| m.len() + 16).sum::<usize>();
    u32::try_from(bytes).unwrap_or(u32::MAX)
}

impl RedisBackend {
    /// Publishes heartbeat `seq` on `channel` through the data connection (the one reads and
    /// invalidations take, so it goes wherever the data now lives); how many subscribers got
    /// it. Through the fast-fail like any command: during an outage none is sent, and the
    /// tier serves nothing.
    pub(super) async fn near_heartbeat(&self, channel: &str, seq: u64) -> crate::Result<i64> {
        let mut conn = self.conn()?;
        self.run(
            "near heartbeat",
            redis::cmd("PUBLISH")
                .arg(channel)
                .arg(seq)
                .query_async(&mut conn),
        )
        .await
    }
}

/// Inspection and test hooks of the near cache; not part of the API.
impl RedisBackend {
    fn near(&self) -> Option<&Near> {
        self.inner.near.as_deref()
    }

    /// The value the near tier would serve for `key` now (no Redis call).
    #[doc(hidden)]
    pub fn near_peek(&self, key: &str) -> Option<Bytes> {
        self.near()?.get(key)
    }

    /// Whether the near tier may serve hits now (subscribed, and a heartbeat sent within
    /// `max_lag` came back).
    #[doc(hidden)]
    pub fn near_is_live(&self) -> bool {
        self.near().is_some_and(Near::is_live)
    }

    /// Entries held by the near tier and their weight in bytes.
    #[doc(hidden)]
    pub fn near_usage(&self) -> Option<(u64, u64)> {
        self.near().map(Near::usage)
    }

    /// Stalls the subscriber (it records no message, and sends and confirms no heartbeat)
    /// until unstalled, as if this process were paused.
    #[doc(hidden)]
    pub fn near_stall_subscriber(&self, stalled: bool) {
        if let Some(near) = self.near() {
            near.hooks.stall.send_replace(stalled);
        }
    }

    /// Closes (or opens) the fill gate: a read that found a valid value in Redis waits there
    /// before inserting it into the near tier.
    #[doc(hidden)]
    pub fn near_close_fills(&self, closed: bool) {
        if let Some(near) = self.near() {
            near.hooks.fills_closed.send_replace(closed);
        }
    }

    /// Waits until more than `before` reads have reached the closed fill gate.
    #[doc(hidden)]
    pub async fn near_fills_stopped_after(&self, before: usize) {
        if let Some(near) = self.near() {
            let mut stopped = near.hooks.fills_stopped.subscribe();
            let _ = stopped.wait_for(|n| *n > before).await;
        }
    }
}

/// Forgets the older half of the marks, raising the floor past them.
fn forget_older_half(marks: &mut Marks) {
    let mut seqs: Vec<u64> = marks.last.values().copied().collect();
    let mid = seqs.len() / 2;
    let (_, &mut threshold, _) = seqs.select_nth_unstable(mid);
    marks.last.retain(|_, at| *at > threshold);
    marks.floor = marks.floor.max(threshold);
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: Duration = Duration::from_secs(3600);

    #[test]
    fn entries_expire_with_their_redis_ttl_or_max_age() {
        let near = Near::new(
            NearConfig::new(1 << 20).max_age(Duration::from_millis(30)),
            "c".into(),
        );
        near.confirm(Instant::now());
        let noted = near.note();
        near.insert(
            "short",
            Bytes::from_static(b"v"),
            [],
            noted,
            Duration::from_millis(20),
        );
        near.insert("aged", Bytes::from_static(b"v"), [], noted, HOUR);
        assert!(near.get("short").is_some() && near.get("aged").is_some());
        std::thread::sleep(Duration::from_millis(40));
        near.confirm(Instant::now());
        assert_eq!(near.get("short"), None, "the Redis entry's TTL");
        assert_eq!(near.get("aged"), None, "max_age");
    }

    fn near() -> Near {
        let near = Near::new(NearConfig::new(1 << 20), "c".into());
        near.confirm(Instant::now());
        near
    }

    #[test]
    fn messages_round_trip_and_garbage_does_not_parse() {
        let deps: [&[u8]; 3] = [b"a", b"b:1:{};,", b""];
        let parsed = parse_message(&deps_message(deps)).unwrap();
        assert_eq!(
            parsed,
            vec![mark(DEPS, b"a"), mark(DEPS, b"b:1:{};,"), mark(DEPS, b"")]
        );
        assert_eq!(
            parse_message(&key_message("k:2")).unwrap(),
            vec![mark(KEY, b"k:2")]
        );
        for garbage in [
            &b""[..],
            b"x1:a",
            b"d2:a",
            b"d1a",
            b"d99999999999:a",
            b"dx:a",
        ] {
            assert!(parse_message(garbage).is_none(), "{garbage:?}");
        }
    }

    #[test]
    fn an_invalidation_recorded_after_the_note_refuses_the_fill() {
        let near = near();
        let noted = near.note();
        near.invalidated([&b"dep"[..]]);
        near.insert("k", Bytes::from_static(b"old"), [&b"dep"[..]], noted, HOUR);
        assert_eq!(near.get("k"), None);
        // Inserted anyway (as if the insert check raced): the hit still refuses it.
        near.entries.insert(
            "k".into(),
            Arc::new(Entry {
                value: Bytes::from_static(b"old"),
                marks: vec![mark(KEY, b"k"), mark(DEPS, b"dep")].into(),
                filled: noted,
                checked: AtomicU64::new(noted),
                ttl: HOUR,
            }),
        );
        assert_eq!(near.get("k"), None);
        let noted = near.note();
        near.insert("k", Bytes::from_static(b"new"), [&b"dep"[..]], noted, HOUR);
        assert_eq!(near.get("k").as_deref(), Some(&b"new"[..]));
        near.invalidated([&b"other"[..]]);
        assert_eq!(near.get("k").as_deref(), Some(&b"new"[..]));
        near.received(&deps_message([&b"dep"[..]]));
        assert_eq!(near.get("k"), None);
    }

    #[test]
    fn deletes_restarts_and_garbage_refuse_older_fills() {
        let near = near();
        let noted = near.note();
        near.deleted("k");
        near.insert("k", Bytes::from_static(b"v"), [], noted, HOUR);
        assert_eq!(near.get("k"), None);

        let noted = near.note();
        near.insert("k", Bytes::from_static(b"v"), [], noted, HOUR);
        assert!(near.get("k").is_some());
        near.restart();
        assert_eq!(near.get("k"), None);
        near.insert("k", Bytes::from_static(b"v"), [], noted, HOUR);
        assert_eq!(near.get("k"), None, "filled before the restart");

        let noted = near.note();
        near.insert("k", Bytes::from_static(b"v"), [], noted, HOUR);
        near.received(b"garbage");
        assert_eq!(near.get("k"), None);
    }

    #[test]
    fn forgotten_marks_raise_the_floor() {
        let near = Near::new(NearConfig::new(1 << 20).max_marks(16), "c".into());
        near.confirm(Instant::now());
        let noted = near.note();
        near.invalidated([&b"dep"[..]]);
        for i in 0..100 {
            near.invalidated([format!("x{i}").as_bytes()]);
        }
        assert!(near.marks.lock().unwrap().last.len() <= 17);
        // `dep`'s mark is forgotten: the floor refuses the fill instead.
        near.insert("k", Bytes::from_static(b"old"), [&b"dep"[..]], noted, HOUR);
        assert_eq!(near.get("k"), None);
    }

    #[test]
    fn nothing_is_served_without_a_recent_confirmation() {
        let near = Near::new(
            NearConfig::new(1 << 20).max_lag(Duration::from_millis(50)),
            "c".into(),
        );
        let noted = near.note();
        near.insert("k", Bytes::from_static(b"v"), [], noted, HOUR);
        assert_eq!(near.get("k"), None, "never confirmed");
        near.confirm(Instant::now());
        assert!(near.get("k").is_some());
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(near.get("k"), None, "confirmation older than max_lag");
        near.confirm(Instant::now());
        assert!(near.get("k").is_some());
        near.disconnected();
        assert_eq!(near.get("k"), None);
    }

    #[test]
    fn the_byte_bound_holds() {
        let near = Near::new(NearConfig::new(100_000), "c".into());
        near.confirm(Instant::now());
        let value = Bytes::from(vec![0u8; 1000]);
        for i in 0..1000 {
            let noted = near.note();
            near.insert(&format!("k{i}"), value.clone(), [&b"dep"[..]], noted, HOUR);
        }
        let (count, bytes) = near.usage();
        assert!(bytes <= 100_000, "{bytes} bytes in {count} entries");
        assert!(count > 50, "{count}");
    }
}
