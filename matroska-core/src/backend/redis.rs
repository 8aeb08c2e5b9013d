//! The Redis backend: version stamps, so that losing any key can only cause a miss.
//!
//! # Key layout
//!
//! With prefix `P` (which may not contain `{` or `}`):
//!
//! | key | type | holds |
//! |---|---|---|
//! | `{P}:e:<key>` | string | an entry: its dependencies with the stamps they had when it was stored, the clock's epoch then, then the value (codec header + payload) |
//! | `{P}:s:<dependency>` | string | the dependency's stamp `<epoch>:<count>`: set to a fresh count by every invalidation, created from the clock's reading by a put (pending, `p<nonce>`, until then on a cluster) |
//! | `{P}:c` | string | the invalidation clock, `<epoch>:<count>:<run id of its server instance>` (the only key without a TTL) |
//! | `{P}:l:<key>` | string | cross-process fill lease of a key |
//!
//! `<dependency>` is [`Dependency::encode`](crate::Dependency::encode), which is injective, and
//! `<key>` is the user's key as is: it ends the Redis key, so any bytes are safe.
//!
//! # Protocol
//!
//! - **get**: one `MGET` of the entry, the stamps this process saw on the key's entry last
//!   time and (on one server) the clock; the entry is a hit only when every recorded stamp
//!   equals the current one and the clock still has the owner the entry recorded. A wrong
//!   guess (first read of a key, changed dependencies) costs a second round trip. A missing
//!   stamp is a miss, so eviction, expiry or a restart cannot make an invalidated entry
//!   readable again. On one server the `MGET` is pipelined after `CLIENT GETNAME`: an entry
//!   is served only on a connection verified since it connected, so a restart that restored
//!   old state serves nothing it restored (`incarnation.rs`). On a cluster, where the keys
//!   live in other slots, a `GET` and an `MGET` are in flight at once.
//! - **get_many**: the same, for every key in one `MGET` (entries, then the known stamps of
//!   each, then the clock), and one more `MGET` for all the wrong guesses together.
//! - **invalidate**: one script call per [`RedisConfig::invalidate_batch`] dependencies sets
//!   each stamp to `<epoch>:<count>` with a fresh count: O(dependencies), whatever the number
//!   of dependents, and no index to lose.
//! - **ticket** / **guarded put**: the ticket is the clock; the put script refuses when the
//!   clock's epoch changed (a lost clock), or a stamp of the ticket's epoch is newer than the
//!   ticket, a missing stamp re-created from the clock's reading included (so an invalidation
//!   whose stamp was lost still refuses an older ticket). It stores the entry with the stamps
//!   it read, in the same script.
//!
//! Everything lives in the `{P}` hash tag (one Redis Cluster slot), so each script is
//! single-slot. See ARCHITECTURE.md for the invariants and the measurements behind this.

use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use redis::AsyncCommands;

use super::{Backend, PutOutcome, PutRequest, Ticket};
use crate::error::{Error, Result};

mod breaker;
mod config;
mod connection;
mod entry;
mod incarnation;
mod known;
mod lua;
#[cfg(test)]
mod model;
mod near;
// Only a cluster's nodes are checked (a single server's restart is detected otherwise).
#[cfg(any(feature = "cluster", test))]
mod persistence;
mod spread;
mod subscriber;

use breaker::Breaker;
pub use config::RedisConfig;
use config::redact_password;
use connection::{Conn, Connector, connect_checked, connect_in_background, with_timeout};
use entry::{Envelope, entry_header, note_if_older_release};
use incarnation::{Incarnation, Seen, ask_name, owner_is_current};
use known::{KnownKeys, StampKeys};
use lua::{INVALIDATE, Lua, LuaCall, PUT, RELEASE_LEASE, TICKET};
pub use near::NearConfig;

/// The Redis backend. Cheap to clone.
///
/// ```no_run
/// # async fn run() -> matroska_core::Result<()> {
/// use matroska_core::Cache;
/// use matroska_core::backend::redis::{RedisBackend, RedisConfig};
///
/// let backend = RedisBackend::connect(RedisConfig::new("redis://127.0.0.1:6379", "myapp")).await?;
/// let cache = Cache::builder(backend).build()?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct RedisBackend {
    inner: Arc<Inner>,
}

struct Inner {
    /// Set once the first connection succeeds; both connection kinds reconnect by themselves
    /// after that.
    conn: OnceLock<Conn>,
    connector: Connector,
    /// Why the background connection has not succeeded yet.
    connect_error: Mutex<Option<String>>,
    config: RedisConfig,
    clock_key: String,
    /// `{P}:e:` (`P:e:` on a cluster), what precedes a key in its entry key.
    entry_prefix: String,
    /// `{P}:s:` (`P:s:` on a cluster), what precedes a dependency in its stamp key.
    stamp_prefix: String,
    /// `{P}:l:` (`P:l:` on a cluster).
    lease_prefix: String,
    put: Lua,
    invalidate: Lua,
    ticket: Lua,
    release_lease: Lua,
    spread: spread::Scripts,
    /// Key -> the stamp keys of its entry as last stored or read here: what a read fetches
    /// together with the entry.
    known: KnownKeys,
    /// Which connection was verified against restarts that restore old state.
    incarnation: Incarnation,
    breaker: Breaker,
    /// The near cache, when configured (`near.rs`).
    near: Option<Arc<near::Near>>,
}

impl Inner {
    fn current_conn(&self) -> Option<Conn> {
        self.conn.get().cloned()
    }

    fn set_conn(&self, conn: Conn) {
        self.conn.get_or_init(|| conn);
    }
}

impl std::fmt::Debug for RedisBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisBackend")
            .field("prefix", &self.inner.config.prefix)
            .finish_non_exhaustive()
    }
}

impl RedisBackend {
    /// Connects to Redis, waiting (up to [`RedisConfig::timeout`]) for the first connection.
    /// Use [`RedisBackend::new`] to start while Redis may be down.
    ///
    /// # Errors
    /// [`Error::Config`] for a bad URL or prefix, [`Error::Backend`] or [`Error::Timeout`]
    /// when the server cannot be reached.
    pub async fn connect(config: RedisConfig) -> Result<Self> {
        let connector = Connector::for_config(&config)?;
        let conn = connect_checked(&connector, &config).await?;
        let backend = Self::unconnected(config, connector)?;
        backend.inner.set_conn(conn);
        Ok(backend)
    }

    /// A backend that connects in the background, so an application can start while Redis is
    /// down: until the first connection succeeds, every operation fails at once (reads are
    /// misses, invalidations report the failure), as during an outage later on.
    ///
    /// ```no_run
    /// # async fn run() -> matroska_core::Result<()> {
    /// use matroska_core::Cache;
    /// use matroska_core::backend::redis::{RedisBackend, RedisConfig};
    ///
    /// let backend = RedisBackend::new(RedisConfig::new("redis://127.0.0.1:6379", "myapp"))?;
    /// let cache = Cache::builder(backend).build()?;
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// [`Error::Config`] for a bad URL or prefix, or when called outside a Tokio runtime
    /// (the connection task needs one).
    pub fn new(config: RedisConfig) -> Result<Self> {
        let connector = Connector::for_config(&config)?;
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| {
            Error::Config(
                "RedisBackend::new must be called inside a Tokio runtime (it connects in a \
                 background task)"
                    .into(),
            )
        })?;
        let backend = Self::unconnected(config, connector)?;
        runtime.spawn(connect_in_background(Arc::downgrade(&backend.inner)));
        Ok(backend)
    }

    fn unconnected(config: RedisConfig, connector: Connector) -> Result<Self> {
        // --- near cache (issue 19) ---
        // The subscriber is started below, once the backend exists: its heartbeats go through
        // the backend's data connection.
        let (near, subscriber) = match &config.near_cache {
            None => (None, None),
            Some(near) => {
                let target = match &connector {
                    Connector::Single(client, _) => subscriber::Target::Single(client.clone()),
                    // Subscribed on every master, with the first seed node's settings
                    // (subscriber_cluster.rs).
                    #[cfg(feature = "cluster")]
                    Connector::Cluster(_) => {
                        let clients = config
                            .cluster_nodes
                            .iter()
                            .map(|url| redis::Client::open(url.as_str()))
                            .collect::<redis::RedisResult<Vec<_>>>()
                            .map_err(|e| Error::Config(format!("bad Redis URL: {e}")))?;
                        let seeds = clients
                            .iter()
                            .filter_map(|c| match c.get_connection_info().addr() {
                                redis::ConnectionAddr::Tcp(host, port)
                                | redis::ConnectionAddr::TcpTls { host, port, .. } => {
                                    Some(format!("{host}:{port}"))
                                }
                                _ => None,
                            })
                            .collect();
                        let seed = clients.into_iter().next().ok_or_else(|| {
                            Error::Config("a cluster config without nodes".into())
                        })?;
                        subscriber::Target::Cluster(subscriber::cluster::ClusterTarget {
                            seed,
                            seeds,
                        })
                    }
                };
                let near = Arc::new(near::Near::new(
                    near.clone(),
                    format!("{{{}}}:n", config.prefix),
                ));
                let runtime = tokio::runtime::Handle::try_current().map_err(|_| {
                    Error::Config(
                        "a Redis backend with a near cache must be made inside a Tokio runtime \
                         (its subscriber is a background task)"
                            .into(),
                    )
                })?;
                (Some(near), Some((runtime, target)))
            }
        };
        // --- end near cache ---
        let prefix = &config.prefix;
        // On one server everything shares the hash tag `{P}`, so the put script can name the
        // entry, the clock and the stamps at once; on a cluster they spread over slots.
        let spread = if config.cluster_nodes.is_empty() {
            format!("{{{prefix}}}")
        } else {
            prefix.clone()
        };
        let backend = RedisBackend {
            inner: Arc::new(Inner {
                conn: OnceLock::new(),
                connector,
                connect_error: Mutex::new(None),
                clock_key: format!("{{{prefix}}}:c"),
                entry_prefix: format!("{spread}:e:"),
                stamp_prefix: format!("{spread}:s:"),
                lease_prefix: format!("{spread}:l:"),
                known: KnownKeys::new(config.known_keys),
                incarnation: Incarnation::default(),
                breaker: Breaker::new(config.retry_after),
                config,
                put: Lua::new(PUT),
                invalidate: Lua::new(INVALIDATE),
                ticket: Lua::new(TICKET),
                release_lease: Lua::new(RELEASE_LEASE),
                spread: spread::Scripts::default(),
                near,
            }),
        };
        // --- near cache (issue 19): it holds the backend weakly, so dropping it ends the task.
        if let Some((runtime, target)) = subscriber {
            let timeout = backend.inner.config.timeout;
            runtime.spawn(subscriber::run(
                Arc::downgrade(&backend.inner),
                target,
                timeout,
            ));
        }
        // --- end near cache ---
        Ok(backend)
    }

    /// Whether the first connection has succeeded (the connection may be down again since:
    /// it reconnects by itself).
    pub fn is_connected(&self) -> bool {
        self.inner.current_conn().is_some()
    }

    /// The configuration this backend runs with.
    pub fn config(&self) -> &RedisConfig {
        &self.inner.config
    }

    /// The Redis key of the entry `key` (for inspection with other clients).
    pub fn entry_key(&self, key: &str) -> String {
        [self.inner.entry_prefix.as_str(), key].concat()
    }

    /// The Redis key of the stamp of an encoded dependency (for inspection with other clients).
    pub fn stamp_key(&self, dep: &str) -> String {
        [self.inner.stamp_prefix.as_str(), dep].concat()
    }

    /// [`RedisBackend::stamp_key`] as bytes, for the stamp keys an entry records.
    fn stamp_key_bytes(&self, dep: &str) -> Vec<u8> {
        [self.inner.stamp_prefix.as_bytes(), dep.as_bytes()].concat()
    }

    /// `{P}:n`, where invalidations and deletes are published for near caches.
    fn near_channel(&self) -> String {
        format!("{{{}}}:n", self.inner.config.prefix)
    }

    fn lease_key(&self, key: &str) -> String {
        format!("{}{key}", self.inner.lease_prefix)
    }

    fn is_cluster(&self) -> bool {
        !self.inner.config.cluster_nodes.is_empty()
    }

    fn conn(&self) -> Result<Conn> {
        if let Some(conn) = self.inner.current_conn() {
            return Ok(conn);
        }
        let why = self
            .inner
            .connect_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
            .unwrap_or_else(|| "the first attempt is under way".into());
        Err(Error::Backend {
            backend: "redis",
            message: format!("not connected to Redis yet ({why}); connecting in the background"),
            source: None,
        })
    }

    /// Epochs and created stamps: unique per process, and across processes but for a 2^-64
    /// chance.
    fn nonce(&self) -> u64 {
        crate::nonce::next()
    }

    async fn run<T>(
        &self,
        operation: &'static str,
        fut: impl Future<Output = redis::RedisResult<T>>,
    ) -> Result<T> {
        let breaker = &self.inner.breaker;
        let admitted = breaker.admit(operation)?;
        let result = with_timeout(operation, self.inner.config.timeout, fut).await;
        breaker.record(admitted, &result);
        result
    }

    /// Whether every stamp recorded in `entry` equals the current one in `current` (same
    /// order); a missing stamp is not equal to anything.
    fn stamps_match(entry: &Envelope<'_>, current: &[Option<Vec<u8>>]) -> bool {
        entry.deps.len() == current.len()
            && entry
                .deps
                .iter()
                .zip(current)
                .all(|((_, recorded), now)| now.as_deref() == Some(*recorded))
    }

    fn stamp_keys_of(&self, entry: &Envelope<'_>) -> Arc<[Vec<u8>]> {
        entry
            .deps
            .iter()
            .map(|(dep, _)| [self.inner.stamp_prefix.as_bytes(), dep].concat())
            .collect()
    }

    /// What an entry read together with the stamps this process guessed for it (`known`,
    /// read as `guessed`) and, on one server, the clock (`clock`) says.
    fn judge(
        &self,
        key: &str,
        entry: &[u8],
        known: Option<&StampKeys>,
        guessed: Option<&[Option<Vec<u8>>]>,
        clock: Option<&[u8]>,
    ) -> Verdict {
        let Some(envelope) = Envelope::parse(entry) else {
            tracing::debug!(key, "entry not in this layout's format; a miss");
            note_if_older_release(key, entry);
            return Verdict::Miss;
        };
        if !self.owner_ok(&envelope, clock) {
            return Verdict::Miss;
        }
        if envelope.deps.is_empty() {
            return Verdict::Hit(envelope.value_at);
        }
        match (known, guessed) {
            (Some(keys), Some(stamps))
                if envelope.has_stamp_keys(keys, self.inner.stamp_prefix.as_bytes()) =>
            {
                if Self::stamps_match(&envelope, stamps) {
                    Verdict::Hit(envelope.value_at)
                } else {
                    Verdict::Miss
                }
            }
            _ => {
                let keys = self.stamp_keys_of(&envelope);
                self.inner.known.remember(key, &keys);
                Verdict::Recheck(keys)
            }
        }
    }

    /// Where the value of `entry` starts when `stamps` (read after the entry, for the keys a
    /// [`Verdict::Recheck`] named, with the clock on one server) are the ones it records;
    /// `None` for a miss.
    fn recheck(
        &self,
        entry: &[u8],
        stamps: &[Option<Vec<u8>>],
        clock: Option<&[u8]>,
    ) -> Option<usize> {
        let envelope = Envelope::parse(entry)?;
        (Self::stamps_match(&envelope, stamps) && self.owner_ok(&envelope, clock))
            .then_some(envelope.value_at)
    }

    /// On one server, whether the clock (as read with the entry) still has the owner the
    /// entry recorded; a cluster's reads do not check it (`incarnation.rs` says why).
    fn owner_ok(&self, envelope: &Envelope<'_>, clock: Option<&[u8]>) -> bool {
        self.is_cluster() || owner_is_current(envelope.owner, clock)
    }

    /// One server: `mget` (which names the clock last) after `CLIENT GETNAME` on the same
    /// connection; the values without the clock, and the clock, or the verified name the
    /// connection's did not match ([`Read::Unverified`]).
    async fn verified_mget(
        &self,
        conn: &mut Conn,
        mget: redis::Cmd,
        expected: usize,
    ) -> Result<std::result::Result<(Stamps, Option<Vec<u8>>), Seen>> {
        let mut pipe = redis::pipe();
        ask_name(&mut pipe);
        pipe.add_command(mget);
        let (name, mut values): (Option<String>, Stamps) =
            self.run("get", pipe.query_async(conn)).await?;
        if let Err(seen) = self.inner.incarnation.check(name.as_deref()) {
            return Ok(Err(seen));
        }
        if values.len() != expected {
            return Err(bad_reply("MGET answered with another number of values"));
        }
        let clock = values.pop().flatten();
        Ok(Ok((values, clock)))
    }

    /// `MGET` of `keys`, checking that the reply has one value per key.
    async fn mget(&self, conn: &mut Conn, keys: &redis::Cmd, expected: usize) -> Result<Stamps> {
        let values: Stamps = self.run("get", keys.query_async(conn)).await?;
        if values.len() != expected {
            return Err(bad_reply("MGET answered with another number of values"));
        }
        Ok(values)
    }

    /// One read of `key`: the entry, checked against the stamps it recorded and (on one
    /// server) the clock's owner, on a connection this backend verified; a hit is the whole
    /// entry and where its value starts.
    async fn read(&self, key: &str) -> Result<Read<Option<(Bytes, usize)>>> {
        let entry_key = self.entry_key(key);
        let known = self.inner.known.get(key).filter(|keys| !keys.is_empty());
        let mut conn = self.conn()?;
        let cluster = self.is_cluster();
        let (entry, guessed, clock): (Option<Vec<u8>>, Option<Stamps>, Option<Vec<u8>>) =
            match &known {
                Some(keys) if cluster => {
                    // Other slots, so no single command: both requests in flight at once.
                    // Their order does not matter: an invalidation that returned before this
                    // read began shows in the stamps either way.
                    let mut other = conn.clone();
                    let (get, mget) = (
                        redis::cmd("GET").arg(&entry_key).clone(),
                        redis::cmd("MGET").arg(&keys[..]).clone(),
                    );
                    let entry = get.query_async(&mut conn);
                    let stamps = mget.query_async(&mut other);
                    let (entry, stamps) = self
                        .run("get", async { tokio::try_join!(entry, stamps) })
                        .await?;
                    (entry, Some(stamps), None)
                }
                None if cluster => (self.run("get", conn.get(&entry_key)).await?, None, None),
                _ => {
                    // One server: the entry, its stamps and the clock share the `{P}` hash
                    // tag, so one `MGET` reads them all, atomically (an invalidation that
                    // returned before this read began shows in the stamps).
                    let keys: &[Vec<u8>] = known.as_deref().unwrap_or_default();
                    let mut mget = redis::cmd("MGET");
                    mget.arg(&entry_key).arg(keys).arg(&self.inner.clock_key);
                    let (mut values, clock) =
                        match self.verified_mget(&mut conn, mget, 2 + keys.len()).await? {
                            Ok(read) => read,
                            Err(seen) => return Ok(Read::Unverified(seen)),
                        };
                    let entry = values.remove(0);
                    (entry, known.is_some().then_some(values), clock)
                }
            };
        let Some(entry) = entry else {
            return Ok(Read::Done(None));
        };
        let entry = Bytes::from(entry);
        let verdict = self.judge(
            key,
            &entry,
            known.as_ref(),
            guessed.as_deref(),
            clock.as_deref(),
        );
        let value_at = match verdict {
            Verdict::Hit(at) => at,
            Verdict::Miss => return Ok(Read::Done(None)),
            Verdict::Recheck(keys) => {
                let mut mget = redis::cmd("MGET");
                mget.arg(&keys[..]);
                let (stamps, clock) = if cluster {
                    (self.mget(&mut conn, &mget, keys.len()).await?, None)
                } else {
                    // The stamps again, on a connection that must still be the verified one,
                    // and the clock with them.
                    mget.arg(&self.inner.clock_key);
                    match self.verified_mget(&mut conn, mget, keys.len() + 1).await? {
                        Ok(read) => read,
                        Err(seen) => return Ok(Read::Unverified(seen)),
                    }
                };
                match self.recheck(&entry, &stamps, clock.as_deref()) {
                    Some(at) => at,
                    None => return Ok(Read::Done(None)),
                }
            }
        };
        Ok(Read::Done(Some((entry, value_at))))
    }

    /// [`Backend::get_many`] on one server: one `MGET` of every entry, then of the stamps this
    /// process knows for each, then the clock (atomic, like a single read's), and one more
    /// for every wrong guess together; both on a verified connection.
    async fn read_many(&self, keys: &[&str]) -> Result<Read<Vec<Option<Bytes>>>> {
        let known: Vec<Option<StampKeys>> = keys
            .iter()
            .map(|key| self.inner.known.get(key).filter(|k| !k.is_empty()))
            .collect();
        let mut mget = redis::cmd("MGET");
        for key in keys {
            mget.arg(self.entry_key(key));
        }
        let mut guessed_count = 0;
        for stamp_keys in known.iter().flatten() {
            mget.arg(&stamp_keys[..]);
            guessed_count += stamp_keys.len();
        }
        mget.arg(&self.inner.clock_key);
        let mut conn = self.conn()?;
        let (mut values, clock) = match self
            .verified_mget(&mut conn, mget, keys.len() + guessed_count + 1)
            .await?
        {
            Ok(read) => read,
            Err(seen) => return Ok(Read::Unverified(seen)),
        };
        let guessed = values.split_off(keys.len());
        let entries: Vec<Option<Bytes>> = values.into_iter().map(|e| e.map(Bytes::from)).collect();
        let mut found = vec![None; keys.len()];
        let mut rechecks: Vec<(usize, StampKeys)> = Vec::new();
        let mut at = 0;
        for (i, (entry, known)) in entries.iter().zip(&known).enumerate() {
            let stamps = known.as_ref().map(|k| {
                let stamps = &guessed[at..at + k.len()];
                at += k.len();
                stamps
            });
            let Some(entry) = entry else { continue };
            match self.judge(keys[i], entry, known.as_ref(), stamps, clock.as_deref()) {
                Verdict::Hit(value_at) => found[i] = Some(entry.slice(value_at..)),
                Verdict::Miss => {}
                Verdict::Recheck(stamp_keys) => rechecks.push((i, stamp_keys)),
            }
        }
        if rechecks.is_empty() {
            return Ok(Read::Done(found));
        }
        // Every wrong guess in one more round trip; read after the entries, so these stamps
        // are at least as new as the entries' reads.
        let mut mget = redis::cmd("MGET");
        let mut count = 0;
        for (_, stamp_keys) in &rechecks {
            mget.arg(&stamp_keys[..]);
            count += stamp_keys.len();
        }
        mget.arg(&self.inner.clock_key);
        let (stamps, clock) = match self.verified_mget(&mut conn, mget, count + 1).await? {
            Ok(read) => read,
            Err(seen) => return Ok(Read::Unverified(seen)),
        };
        let mut at = 0;
        for (i, stamp_keys) in &rechecks {
            let now = &stamps[at..at + stamp_keys.len()];
            at += stamp_keys.len();
            if let Some(entry) = &entries[*i] {
                found[*i] = self
                    .recheck(entry, now, clock.as_deref())
                    .map(|value_at| entry.slice(value_at..));
            }
        }
        Ok(Read::Done(found))
    }

    /// [`Backend::get_many`] on a cluster: the keys' entries and stamps live in many slots, so
    /// every key is read as [`Backend::get`] reads it, all at once.
    async fn get_many_concurrently(&self, keys: &[&str]) -> Result<Vec<Option<Bytes>>> {
        let mut reads = tokio::task::JoinSet::new();
        for (at, key) in keys.iter().enumerate() {
            let (backend, key) = (self.clone(), (*key).to_owned());
            reads.spawn(async move { (at, backend.get(&key).await) });
        }
        let mut found = vec![None; keys.len()];
        // Dropping the set (an error here, or the caller dropping this future) aborts the
        // reads still in flight: reads leave nothing behind.
        while let Some(joined) = reads.join_next().await {
            let (at, read) = joined.map_err(|e| Error::Backend {
                backend: "redis",
                message: format!("a read task failed: {e}"),
                source: None,
            })?;
            found[at] = read?;
        }
        Ok(found)
    }

    /// The `put.lua` call of `request` (single server), and the stamp keys it names.
    fn put_call(&self, request: &PutRequest<'_>) -> (LuaCall<'_>, StampKeys) {
        let mut invocation = self.inner.put.call(2 + request.deps.len());
        invocation
            .key(self.entry_key(request.key))
            .key(&self.inner.clock_key);
        let keys: StampKeys = request
            .deps
            .iter()
            .map(|dep| self.stamp_key_bytes(dep))
            .collect();
        for key in keys.iter() {
            invocation.key(key.as_slice());
        }
        let (epoch, clock) = request
            .ticket
            .map_or((String::new(), 0), |t| (t.epoch.to_string(), t.clock));
        let ttl = millis(request.ttl);
        invocation
            .arg(request.value.as_ref())
            .arg(ttl)
            .arg(epoch)
            .arg(clock)
            .arg(self.nonce())
            .arg(entry_header(request.deps))
            .arg(stamp_keep(ttl))
            // --- near cache (issue 19): other processes drop a copy this value replaces.
            .arg(self.near_channel())
            .arg(near::key_message(request.key));
        (invocation, keys)
    }

    /// Whether `request` takes the spread path (see [`Backend::put`]).
    fn spreads(&self, request: &PutRequest<'_>) -> bool {
        self.is_cluster() || request.deps.len() > self.inner.config.invalidate_batch
    }

    /// What `put.lua` answered, remembering the stamp keys of a stored entry.
    fn put_outcome(&self, key: &str, keys: &StampKeys, stored: i64) -> PutOutcome {
        if stored == 1 {
            self.inner.known.remember(key, keys);
            PutOutcome::Stored
        } else {
            PutOutcome::Stale
        }
    }
}

/// What an entry and the stamps read with it say.
enum Verdict {
    /// A hit; the value starts here.
    Hit(usize),
    Miss,
    /// The guess was wrong (or there was none): read these stamp keys, then
    /// [`RedisBackend::recheck`].
    Recheck(StampKeys),
}

/// What one read found: the answer, or a connection it could not trust yet.
enum Read<T> {
    Done(T),
    Unverified(Seen),
}

/// How long a stamp is kept when a put creates or extends it: the entry's TTL plus a quarter,
/// so the puts that follow within that quarter find it long-lived enough and skip the
/// `PEXPIRE` (which Redis rewrites and propagates: the dearest step of a put).
fn stamp_keep(ttl_ms: u64) -> u64 {
    ttl_ms.saturating_add(ttl_ms / 4)
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}

fn bad_reply(what: &str) -> Error {
    Error::Backend {
        backend: "redis",
        message: format!("unexpected reply from Redis: {what}"),
        source: None,
    }
}

/// Warns (once per process) that Redis refused the near-cache broadcast on `channel`: the
/// write happened, but processes with a near cache do not hear of it.
fn broadcast_refused(channel: &str, why: Option<&redis::Value>) {
    static WARNED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    if !WARNED.swap(true, std::sync::atomic::Ordering::Relaxed) {
        tracing::warn!(
            channel,
            error = ?why,
            "Redis refused the near-cache PUBLISH (an ACL user needs the channel: \
             `&{channel}`); near caches of other processes will not hear of these writes"
        );
    }
}

/// Parses the clock `<epoch>:<count>` that ticket.lua returns.
fn parse_clock(clock: &str) -> Option<Ticket> {
    let (epoch, count) = clock.split_once(':')?;
    Some(Ticket::new(epoch.parse().ok()?, count.parse().ok()?))
}

type Stamps = Vec<Option<Vec<u8>>>;

#[async_trait]
impl Backend for RedisBackend {
    fn name(&self) -> &'static str {
        "redis"
    }

    /// `redis:<prefix>@<url>` (the cluster's seed nodes instead of the URL; passwords
    /// redacted): two processes with the same prefix on the same server share their entries.
    fn shared_store(&self) -> Option<String> {
        let config = &self.inner.config;
        let server = if config.cluster_nodes.is_empty() {
            redact_password(&config.url)
        } else {
            config
                .cluster_nodes
                .iter()
                .map(|n| redact_password(n))
                .collect::<Vec<_>>()
                .join(",")
        };
        Some(format!("redis:{}@{server}", config.prefix))
    }

    async fn get(&self, key: &str) -> Result<Option<Bytes>> {
        // --- near cache (issue 19): a hit without a round trip; else note the sequence
        // before the remote read, so an invalidation recorded meanwhile refuses its value.
        let near = self.inner.near.as_deref();
        if let Some(value) = near.and_then(|n| n.get(key)) {
            return Ok(Some(value));
        }
        let noted = near.map(near::Near::note);
        // --- end near cache ---
        // A read on a connection not verified yet (the first one, or a reconnect: perhaps to
        // a server restarted from a snapshot) verifies it and reads again (incarnation.rs).
        let found = match self.read(key).await? {
            Read::Done(found) => found,
            Read::Unverified(seen) => {
                self.verify(seen).await?;
                match self.read(key).await? {
                    Read::Done(found) => found,
                    // Reconnected again meanwhile: a miss rather than a loop.
                    Read::Unverified(_) => None,
                }
            }
        };
        let Some((entry, value_at)) = found else {
            return Ok(None);
        };
        let value = entry.slice(value_at..);
        // --- near cache (issue 19): a validated remote hit fills the tier.
        // Not while the tier is off: the next subscription would refuse the entry anyway.
        if let (Some(near), Some(noted)) = (near, noted)
            && near.is_live()
            && let Some(envelope) = Envelope::parse(&entry)
            && let Ok(mut conn) = self.conn()
        {
            // The near copy must not outlive the entry: one more round trip, per fill only
            // (a failure only skips the fill: the hit stands).
            let ttl: Result<i64> = self
                .run(
                    "get",
                    redis::cmd("PTTL")
                        .arg(self.entry_key(key))
                        .query_async(&mut conn),
                )
                .await;
            if let Ok(ttl @ 1..) = ttl {
                near.hooks.fill_gate(key).await;
                let deps = envelope.deps.iter().map(|d| d.0);
                near.insert(
                    key,
                    value.clone(),
                    deps,
                    noted,
                    Duration::from_millis(ttl.unsigned_abs()),
                );
            }
        }
        // --- end near cache ---
        Ok(Some(value))
    }

    async fn get_many(&self, keys: &[&str]) -> Result<Vec<Option<Bytes>>> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        if self.is_cluster() {
            return self.get_many_concurrently(keys).await;
        }
        let seen = match self.read_many(keys).await? {
            Read::Done(values) => return Ok(values),
            Read::Unverified(seen) => seen,
        };
        self.verify(seen).await?;
        match self.read_many(keys).await? {
            Read::Done(values) => Ok(values),
            Read::Unverified(_) => Ok(vec![None; keys.len()]),
        }
    }

    async fn has(&self, key: &str) -> Result<bool> {
        Ok(self.get(key).await?.is_some())
    }

    async fn put(&self, request: PutRequest<'_>) -> Result<PutOutcome> {
        // --- near cache (issue 19): when the put ends (or is dropped), after its write, this
        // process's near copy of the key and its fills in flight are refused.
        let _near = self.inner.near.as_deref().map(|n| n.key_guard(request.key));
        // --- end near cache ---
        // One script names the entry, the clock and every stamp: on a cluster they live in
        // other slots, and with very many dependencies the script would block the server.
        if self.spreads(&request) {
            return self.put_spread(request).await;
        }
        let (invocation, keys) = self.put_call(&request);
        let mut conn = self.conn()?;
        let stored: i64 = self.run("put", invocation.invoke_async(&mut conn)).await?;
        Ok(self.put_outcome(request.key, &keys, stored))
    }

    async fn put_many(&self, requests: Vec<PutRequest<'_>>) -> Result<Vec<PutOutcome>> {
        // --- near cache (issue 19): as in `put`, every key's near copy and fills in flight
        // are refused when this call ends (or is dropped), after its writes.
        let keys: Vec<&str> = requests.iter().map(|r| r.key).collect();
        let _near: Vec<_> = match self.inner.near.as_deref() {
            Some(near) => keys.iter().map(|key| near.key_guard(key)).collect(),
            None => Vec::new(),
        };
        // --- end near cache ---
        let mut outcomes: Vec<Option<PutOutcome>> = vec![None; requests.len()];
        // The script calls in one pipeline (one round trip); what must spread goes alone.
        let mut pipe = redis::pipe();
        let mut piped = Vec::new();
        for (at, request) in requests.iter().enumerate() {
            if !self.spreads(request) {
                let (invocation, keys) = self.put_call(request);
                pipe.add_command(invocation.cmd().clone());
                piped.push((at, invocation, keys));
            }
        }
        if !piped.is_empty() {
            // Each answer on its own: a `NOSCRIPT` (a restarted server) is retried alone with
            // the script's body.
            pipe.ignore_errors();
            let mut conn = self.conn()?;
            let answers: Vec<redis::Value> = self.run("put", pipe.query_async(&mut conn)).await?;
            if answers.len() != piped.len() {
                return Err(bad_reply(
                    "a pipeline answered with another number of replies",
                ));
            }
            for ((at, invocation, keys), answer) in piped.iter().zip(answers) {
                let stored: i64 = match answer {
                    redis::Value::ServerError(e)
                        if e.kind() == Some(redis::ServerErrorKind::NoScript) =>
                    {
                        self.run("put", invocation.invoke_async(&mut conn)).await?
                    }
                    answer => {
                        redis::from_redis_value(answer).map_err(|e| Error::backend("redis", e))?
                    }
                };
                outcomes[*at] = Some(self.put_outcome(requests[*at].key, keys, stored));
            }
        }
        let mut done = Vec::with_capacity(requests.len());
        for (request, outcome) in requests.into_iter().zip(outcomes) {
            done.push(match outcome {
                Some(outcome) => outcome,
                None => self.put_spread(request).await?,
            });
        }
        Ok(done)
    }

    async fn delete(&self, key: &str) -> Result<bool> {
        // --- near cache (issue 19): this process drops its near copy when the delete ends
        // (or is dropped), after its write; the others when they hear the `PUBLISH`, which
        // follows the `DEL` on the same connection, so a process that hears it reads the
        // deletion.
        let _near = self.inner.near.as_deref().map(|n| n.key_guard(key));
        // On a cluster a keyless `PUBLISH` would go to any node: one script on the entry's
        // master deletes and publishes (`write_entry.lua`), so that the subscriber on that
        // master receives it before that master's next heartbeat.
        if self.is_cluster() {
            return self.write_entry(key, b"", 0, "delete").await;
        }
        let mut conn = self.conn()?;
        let mut pipe = redis::pipe();
        pipe.del(self.entry_key(key));
        pipe.cmd("PUBLISH")
            .arg(self.near_channel())
            .arg(near::key_message(key));
        // Each reply on its own: a refused `PUBLISH` must not fail the delete.
        pipe.ignore_errors();
        let mut replies: Vec<redis::Value> =
            self.run("delete", pipe.query_async(&mut conn)).await?;
        if replies.len() == 2
            && let Some(redis::Value::ServerError(e)) = replies.pop()
        {
            broadcast_refused(&self.near_channel(), Some(&redis::Value::ServerError(e)));
        }
        let removed: i64 = match replies.pop() {
            Some(reply) => {
                redis::from_redis_value(reply).map_err(|e| Error::backend("redis", e))?
            }
            None => return Err(bad_reply("DEL answered nothing")),
        };
        // --- end near cache ---
        Ok(removed > 0)
    }

    async fn invalidate(&self, deps: &[String]) -> Result<super::Invalidated> {
        let batch = self.inner.config.invalidate_batch.max(1);
        for chunk in deps.chunks(batch) {
            // --- near cache (issue 19): this process's marks, recorded when this chunk's call
            // ends (or is dropped or fails: the script may have run; more marks than needed
            // only cost misses), after the stamps changed, so that a fill that noted the
            // sequence before then refuses its value; before `invalidate` returns.
            let _near = self.inner.near.as_deref().map(|n| n.deps_guard(chunk));
            // --- end near cache ---
            if self.is_cluster() {
                self.invalidate_spread(chunk).await?;
                continue;
            }
            let mut invocation = self.inner.invalidate.call(1 + chunk.len());
            invocation.key(&self.inner.clock_key);
            for dep in chunk {
                invocation.key(self.stamp_key(dep));
            }
            invocation
                .arg(self.nonce())
                .arg(millis(self.inner.config.stale_window))
                // --- near cache (issue 19): published by the script with the stamps, always
                // (a process without a near cache still invalidates those that have one).
                .arg("0")
                .arg(self.near_channel())
                .arg(near::deps_message(chunk.iter().map(|d| d.as_bytes())));
            // --- end near cache ---
            let mut conn = self.conn()?;
            let answer: redis::Value = self
                .run("invalidate", invocation.invoke_async(&mut conn))
                .await?;
            if let redis::Value::Array(answer) = answer {
                broadcast_refused(&self.near_channel(), answer.get(1));
            }
        }
        let replicas = self.inner.config.wait_for_replicas;
        if replicas > 0 {
            let mut conn = self.conn()?;
            let acked: usize = self
                .run(
                    "wait",
                    // Half the time-out, so WAIT answers before the operation times out.
                    redis::cmd("WAIT")
                        .arg(replicas)
                        .arg(millis(self.inner.config.timeout / 2))
                        .query_async(&mut conn),
                )
                .await?;
            if acked < replicas {
                return Err(Error::Backend {
                    backend: "redis",
                    message: format!(
                        "the invalidation reached {acked} of {replicas} replicas in time; \
                         retry it (it is idempotent)"
                    ),
                    source: None,
                });
            }
        }
        if deps.len() > batch {
            tracing::debug!(
                calls = deps.len().div_ceil(batch),
                "large invalidation split into several script calls"
            );
        }
        // Dependents are never looked at, so not counted.
        Ok(super::Invalidated::uncounted())
    }

    async fn ticket(&self) -> Result<Ticket> {
        let mut invocation = self.inner.ticket.call(1);
        invocation.key(&self.inner.clock_key).arg(self.nonce());
        let mut conn = self.conn()?;
        let clock: String = self
            .run("ticket", invocation.invoke_async(&mut conn))
            .await?;
        parse_clock(&clock).ok_or_else(|| bad_reply("a clock that is not `<epoch>:<count>`"))
    }

    async fn try_lease(&self, key: &str, token: u64, ttl: Duration) -> Result<bool> {
        let mut conn = self.conn()?;
        let taken: Option<String> = self
            .run(
                "lease",
                redis::cmd("SET")
                    .arg(self.lease_key(key))
                    .arg(token)
                    .arg("NX")
                    .arg("PX")
                    .arg(millis(ttl))
                    .query_async(&mut conn),
            )
            .await?;
        Ok(taken.is_some())
    }

    async fn release_lease(&self, key: &str, token: u64) -> Result<()> {
        let mut invocation = self.inner.release_lease.call(1);
        invocation.key(self.lease_key(key)).arg(token);
        let mut conn = self.conn()?;
        let _: i64 = self
            .run("release_lease", invocation.invoke_async(&mut conn))
            .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn tls_urls_need_the_tls_feature() {
        // Port 1 refuses at once: only the URL handling is under test.
        let config =
            RedisConfig::new("rediss://127.0.0.1:1/", "p").timeout(Duration::from_millis(200));
        let err = RedisBackend::connect(config).await.unwrap_err();
        if cfg!(feature = "tls") {
            assert!(err.is_backend_failure(), "{err}");
        } else {
            assert!(matches!(err, Error::Config(_)), "{err}");
        }
    }
}
