//! The Redis backend: version stamps, so that losing any key can only cause a miss.
//!
//! # Key layout
//!
//! With prefix `P` (which may not contain `{` or `}`):
//!
//! | key | type | holds |
//! |---|---|---|
//! | `{P}:e:<key>` | string | an entry: its dependencies with the stamps they had when it was stored, then the value (codec header + payload) |
//! | `{P}:s:<dependency>` | string | the dependency's stamp `<epoch>:<count>`: set to a fresh count by every invalidation, created from the clock's reading by a put (pending, `p<nonce>`, until then on a cluster) |
//! | `{P}:c` | string | the invalidation clock, `<epoch>:<count>:<replication id>` (the only key without a TTL) |
//! | `{P}:l:<key>` | string | cross-process fill lease of a key |
//!
//! `<dependency>` is [`Dependency::encode`](crate::Dependency::encode), which is injective, and
//! `<key>` is the user's key as is: it ends the Redis key, so any bytes are safe.
//!
//! # Protocol
//!
//! - **get**: `GET` the entry and, in the same pipeline, `MGET` the stamps this process saw on
//!   the key's entry last time; the entry is a hit only when every recorded stamp equals the
//!   current one. A wrong guess (first read of a key, changed dependencies) costs a second
//!   round trip. A missing stamp is a miss, so eviction, expiry or a restart cannot make an
//!   invalidated entry readable again.
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

use std::io::Write as _;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError, Weak};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use redis::AsyncCommands;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use super::{Backend, PutOutcome, PutRequest, Ticket};
use crate::error::{Error, Result};

mod known;
#[cfg(test)]
mod model;
mod spread;

use known::KnownKeys;

static PUT: &str = include_str!("lua/put.lua");
static INVALIDATE: &str = include_str!("lua/invalidate.lua");
static TICKET: &str = include_str!("lua/ticket.lua");
static RELEASE_LEASE: &str = include_str!("lua/release_lease.lua");

/// First byte of an entry written by this layout (`put.lua`); anything else is not ours
/// (0xB5 was the layout before stamps were joined by `,`: read as a miss).
const ENTRY_MAGIC: u8 = 0xB6;

/// Settings of a [`RedisBackend`].
#[derive(Clone)]
#[non_exhaustive]
pub struct RedisConfig {
    /// `redis://[user:password@]host:port/db` (AUTH comes from the URL).
    pub url: String,
    /// The namespace of every key this backend writes.
    pub prefix: String,
    /// How long a stamp written by an invalidation lives at least (puts extend it to the TTL
    /// of the entries that record it).
    pub stale_window: Duration,
    /// Upper bound on one operation, connection included.
    pub timeout: Duration,
    /// The most dependencies one invalidation script call stamps, and one put script reads;
    /// more take several calls, so no call blocks the server for long.
    pub invalidate_batch: usize,
    /// After a connection failure or time-out, operations fail at once for this long instead
    /// of each waiting for the time-out: during an outage reads cost a miss, not a time-out.
    pub retry_after: Duration,
    /// How many keys' dependency lists this process remembers, so that a read fetches the
    /// entry and its stamps in one round trip.
    pub known_keys: u64,
    /// After each invalidation, wait (`WAIT`, up to [`RedisConfig::timeout`]) until this many
    /// replicas have it, and fail the invalidation otherwise. Off (0) by default; with
    /// replicas and automatic failover, an invalidation the promoted replica never received
    /// is lost, and this is what prevents that.
    pub wait_for_replicas: usize,
    /// Seed nodes of a Redis Cluster (`redis://host:port` each); empty for a single server
    /// at [`RedisConfig::url`]. See [`RedisConfig::cluster`].
    pub cluster_nodes: Vec<String>,
}

impl std::fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisConfig")
            .field("url", &redact_password(&self.url))
            .field("prefix", &self.prefix)
            .field("stale_window", &self.stale_window)
            .field("timeout", &self.timeout)
            .field("invalidate_batch", &self.invalidate_batch)
            .field("retry_after", &self.retry_after)
            .field("known_keys", &self.known_keys)
            .field("wait_for_replicas", &self.wait_for_replicas)
            .field(
                "cluster_nodes",
                &self
                    .cluster_nodes
                    .iter()
                    .map(|url| redact_password(url))
                    .collect::<Vec<_>>(),
            )
            .finish()
    }
}

/// The URL with the password of its user-info part (`user:password@`) replaced by `***`.
fn redact_password(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    // The user-info ends at the last `@` before the path.
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let Some(at) = rest[..authority_end].rfind('@') else {
        return url.to_owned();
    };
    let user = rest[..at]
        .split_once(':')
        .map_or(&rest[..at], |(user, _)| user);
    if user.len() == at {
        // `user@host`: no password.
        return url.to_owned();
    }
    format!("{scheme}://{user}:***{}", &rest[at..])
}

impl RedisConfig {
    /// Settings for `url` with keys under `prefix`, and defaults for the rest: a 60 s stale
    /// window, a 1 s time-out, 1,000 dependencies per invalidation call, 10,000 known keys.
    pub fn new(url: impl Into<String>, prefix: impl Into<String>) -> Self {
        RedisConfig {
            url: url.into(),
            prefix: prefix.into(),
            stale_window: Duration::from_secs(60),
            timeout: Duration::from_secs(1),
            invalidate_batch: 1_000,
            retry_after: Duration::from_millis(500),
            known_keys: 10_000,
            wait_for_replicas: 0,
            cluster_nodes: Vec::new(),
        }
    }

    /// Settings for a Redis Cluster reached through any of `nodes` (feature `cluster`).
    ///
    /// Entries and stamps are spread over the cluster's slots (only the clock, one key per
    /// prefix, lives in the slot of `{prefix}`); every script touches one key. A put then
    /// takes three round trips (stamps, clock, entry) instead of one, ordered so that any
    /// interleaving with an invalidation errs towards a miss. Consider
    /// [`RedisConfig::wait_for_replicas`]: without it, an invalidation that a failed master
    /// had not yet replicated is lost on failover.
    pub fn cluster<S: Into<String>>(
        nodes: impl IntoIterator<Item = S>,
        prefix: impl Into<String>,
    ) -> Self {
        let nodes: Vec<String> = nodes.into_iter().map(Into::into).collect();
        let mut config = Self::new(nodes.first().cloned().unwrap_or_default(), prefix);
        config.cluster_nodes = nodes;
        config
    }

    /// Sets [`RedisConfig::retry_after`] (zero turns the fast-fail off).
    #[must_use]
    pub fn retry_after(mut self, pause: Duration) -> Self {
        self.retry_after = pause;
        self
    }

    /// Sets [`RedisConfig::stale_window`].
    #[must_use]
    pub fn stale_window(mut self, window: Duration) -> Self {
        self.stale_window = window;
        self
    }

    /// Sets [`RedisConfig::timeout`].
    #[must_use]
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Sets [`RedisConfig::invalidate_batch`] (dependencies per script call).
    #[must_use]
    pub fn invalidate_batch(mut self, dependencies: usize) -> Self {
        self.invalidate_batch = dependencies.max(1);
        self
    }

    /// Sets [`RedisConfig::known_keys`].
    #[must_use]
    pub fn known_keys(mut self, keys: u64) -> Self {
        self.known_keys = keys;
        self
    }

    /// Sets [`RedisConfig::wait_for_replicas`].
    #[must_use]
    pub fn wait_for_replicas(mut self, replicas: usize) -> Self {
        self.wait_for_replicas = replicas;
        self
    }
}

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
    /// Fast-fail until this many ms after `epoch` (0: healthy).
    down_until_ms: AtomicU64,
    /// Time-outs in a row; the fast-fail trips at [`TIMEOUTS_TO_TRIP`].
    timeouts_in_a_row: AtomicU32,
    epoch: std::time::Instant,
}

/// One slow command is not an outage: the fast-fail trips at once on a connection error, but
/// only after this many time-outs in a row.
const TIMEOUTS_TO_TRIP: u32 = 3;

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
        let conn = with_timeout("connect", config.timeout, connector.connect()).await?;
        let backend = Self::unconnected(config, connector);
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
        let backend = Self::unconnected(config, connector);
        runtime.spawn(connect_in_background(Arc::downgrade(&backend.inner)));
        Ok(backend)
    }

    fn unconnected(config: RedisConfig, connector: Connector) -> Self {
        let prefix = &config.prefix;
        // On one server everything shares the hash tag `{P}`, so the put script can name the
        // entry, the clock and the stamps at once; on a cluster they spread over slots.
        let spread = if config.cluster_nodes.is_empty() {
            format!("{{{prefix}}}")
        } else {
            prefix.clone()
        };
        RedisBackend {
            inner: Arc::new(Inner {
                conn: OnceLock::new(),
                connector,
                connect_error: Mutex::new(None),
                clock_key: format!("{{{prefix}}}:c"),
                entry_prefix: format!("{spread}:e:"),
                stamp_prefix: format!("{spread}:s:"),
                lease_prefix: format!("{spread}:l:"),
                known: KnownKeys::new(config.known_keys),
                config,
                put: Lua::new(PUT),
                invalidate: Lua::new(INVALIDATE),
                ticket: Lua::new(TICKET),
                release_lease: Lua::new(RELEASE_LEASE),
                spread: spread::Scripts::default(),
                down_until_ms: AtomicU64::new(0),
                timeouts_in_a_row: AtomicU32::new(0),
                epoch: std::time::Instant::now(),
            }),
        }
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
        let inner = &self.inner;
        let now_ms = || u64::try_from(inner.epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
        let down_until = inner.down_until_ms.load(Ordering::Relaxed);
        if down_until != 0 && now_ms() < down_until {
            return Err(Error::Backend {
                backend: "redis",
                message: format!(
                    "Redis failed recently; `{operation}` not sent (retrying after {:?})",
                    inner.config.retry_after
                ),
                source: None,
            });
        }
        let result = with_timeout(operation, inner.config.timeout, fut).await;
        let redis_error = match &result {
            Err(Error::Backend {
                source: Some(source),
                ..
            }) => source.downcast_ref::<redis::RedisError>(),
            _ => None,
        };
        let timed_out = matches!(result, Err(Error::Timeout { .. }))
            || redis_error.is_some_and(redis::RedisError::is_timeout);
        match &result {
            _ if timed_out => {
                let in_a_row = inner.timeouts_in_a_row.fetch_add(1, Ordering::Relaxed) + 1;
                if in_a_row >= TIMEOUTS_TO_TRIP {
                    self.trip(now_ms());
                }
            }
            Err(_) if redis_error.is_some_and(is_connection_error) => self.trip(now_ms()),
            Ok(_) => {
                inner.timeouts_in_a_row.store(0, Ordering::Relaxed);
                if down_until != 0 {
                    inner.down_until_ms.store(0, Ordering::Relaxed);
                    tracing::info!("Redis answers again");
                }
            }
            _ => {}
        }
        result
    }

    fn trip(&self, now_ms: u64) {
        let pause = u64::try_from(self.inner.config.retry_after.as_millis()).unwrap_or(u64::MAX);
        if pause > 0 {
            self.inner
                .down_until_ms
                .store(now_ms.saturating_add(pause).max(1), Ordering::Relaxed);
        }
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
}

/// An entry as `put.lua` writes it: the header ([`entry_header`]: `0xB6`, `n:`, then per
/// dependency `<len>:<dependency>`), the recorded stamps joined by `,`, `;`, then the value.
#[derive(Debug)]
struct Envelope<'a> {
    deps: Vec<(&'a [u8], &'a [u8])>,
    /// Where the value starts.
    value_at: usize,
}

impl<'a> Envelope<'a> {
    /// `None` for bytes this layout did not write (another version, another writer).
    fn parse(bytes: &'a [u8]) -> Option<Self> {
        fn number(bytes: &[u8], at: usize) -> Option<(usize, usize)> {
            let digits = bytes.get(at..)?.iter().take(11).position(|&b| b == b':')?;
            let text = std::str::from_utf8(&bytes[at..at + digits]).ok()?;
            Some((text.parse().ok()?, at + digits + 1))
        }
        if bytes.first() != Some(&ENTRY_MAGIC) {
            return None;
        }
        let (n, mut at) = number(bytes, 1)?;
        // Bounded by the bytes at hand, not by what the header claims.
        let mut deps = Vec::with_capacity(n.min(bytes.len() / 4));
        for _ in 0..n {
            let (len, next) = number(bytes, at)?;
            let end = next.checked_add(len)?;
            deps.push((bytes.get(next..end)?, &b""[..]));
            at = end;
        }
        // Stamps hold neither `,` nor `;` (the scripts write them), so the first `;` ends them.
        let stamps_end = at + bytes.get(at..)?.iter().position(|&b| b == b';')?;
        let stamps = &bytes[at..stamps_end];
        if n == 0 {
            if !stamps.is_empty() {
                return None;
            }
        } else {
            let mut recorded = stamps.split(|&b| b == b',');
            for dep in &mut deps {
                dep.1 = recorded.next()?;
            }
            if recorded.next().is_some() {
                return None;
            }
        }
        Some(Envelope {
            deps,
            value_at: stamps_end + 1,
        })
    }

    /// Whether `keys` are the stamp keys of this entry's dependencies, in order.
    fn has_stamp_keys(&self, keys: &[Vec<u8>], prefix: &[u8]) -> bool {
        keys.len() == self.deps.len()
            && keys
                .iter()
                .zip(&self.deps)
                .all(|(key, (dep, _))| key.strip_prefix(prefix) == Some(*dep))
    }
}

/// The server is unreachable (as opposed to slow, or answering with an error).
fn is_connection_error(e: &redis::RedisError) -> bool {
    e.is_io_error() || e.is_connection_dropped() || e.is_connection_refusal()
}

/// A Lua script, called with `EVALSHA` and, when the server does not have it yet, with `EVAL`
/// on the same key's node. (redis-rs's `Script` sends `SCRIPT LOAD` instead, which a cluster
/// connection routes to every node: one dead node fails every script after a failover.)
struct Lua {
    code: &'static str,
    hash: String,
}

impl Lua {
    fn new(code: &'static str) -> Self {
        Lua {
            code,
            hash: redis::Script::new(code).get_hash().to_owned(),
        }
    }

    /// A call of this script naming `keys` keys: give them with [`LuaCall::key`] first, then
    /// the arguments. The command is built as it goes (one buffer, no copy per argument).
    fn call(&self, keys: usize) -> LuaCall<'_> {
        let mut cmd = redis::cmd("EVALSHA");
        cmd.arg(&self.hash).arg(keys);
        LuaCall {
            lua: self,
            cmd,
            keys,
        }
    }
}

/// One call of a [`Lua`] script: `EVALSHA <hash> <number of keys> <keys..> <args..>`.
struct LuaCall<'a> {
    lua: &'a Lua,
    cmd: redis::Cmd,
    /// Keys still to come before the arguments.
    keys: usize,
}

impl LuaCall<'_> {
    fn key(&mut self, key: impl redis::ToRedisArgs) -> &mut Self {
        debug_assert!(self.keys > 0, "more keys than the call was made for");
        self.keys = self.keys.saturating_sub(1);
        self.cmd.arg(key);
        self
    }

    fn arg(&mut self, arg: impl redis::ToRedisArgs) -> &mut Self {
        debug_assert_eq!(self.keys, 0, "an argument before the last key");
        self.cmd.arg(arg);
        self
    }

    async fn invoke_async<T: redis::FromRedisValue>(
        &self,
        conn: &mut Conn,
    ) -> redis::RedisResult<T> {
        match self.cmd.query_async(conn).await {
            Err(e) if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) => {
                // The server has not seen the script (a restart, a new node): the same call
                // with the body, which also caches it there.
                let mut eval = redis::cmd("EVAL");
                eval.arg(self.lua.code);
                for arg in self.cmd.args_iter().skip(2) {
                    if let redis::Arg::Simple(bytes) = arg {
                        eval.arg(bytes);
                    }
                }
                eval.query_async(conn).await
            }
            other => other,
        }
    }
}

/// A connection to one server or to a cluster; the backend's code is the same for both
/// except where a script would span slots.
#[derive(Clone)]
enum Conn {
    Single(ConnectionManager),
    #[cfg(feature = "cluster")]
    Cluster(redis::cluster_async::ClusterConnection),
}

impl redis::aio::ConnectionLike for Conn {
    fn req_packed_command<'a>(
        &'a mut self,
        cmd: &'a redis::Cmd,
    ) -> redis::RedisFuture<'a, redis::Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            #[cfg(feature = "cluster")]
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<redis::Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(cmd, offset, count),
            #[cfg(feature = "cluster")]
            Conn::Cluster(c) => c.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            #[cfg(feature = "cluster")]
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

/// What opens a [`Conn`], kept for retries.
#[derive(Clone)]
enum Connector {
    Single(redis::Client, ConnectionManagerConfig),
    #[cfg(feature = "cluster")]
    Cluster(redis::cluster::ClusterClient),
}

impl Connector {
    fn for_config(config: &RedisConfig) -> Result<Self> {
        validate_prefix(&config.prefix)?;
        let bad_url = |e: redis::RedisError| {
            let hint = if config.url.starts_with("rediss://") && !cfg!(feature = "tls") {
                " (rediss:// needs matroska's `tls` feature)"
            } else {
                ""
            };
            Error::Config(format!("bad Redis URL: {e}{hint}"))
        };
        if !config.cluster_nodes.is_empty() {
            #[cfg(feature = "cluster")]
            {
                let client = redis::cluster::ClusterClient::builder(config.cluster_nodes.clone())
                    .connection_timeout(config.timeout)
                    .response_timeout(config.timeout)
                    .retries(2)
                    .build()
                    .map_err(bad_url)?;
                return Ok(Connector::Cluster(client));
            }
            #[cfg(not(feature = "cluster"))]
            return Err(Error::Config(
                "RedisConfig::cluster needs matroska's `cluster` feature".into(),
            ));
        }
        let client = redis::Client::open(config.url.as_str()).map_err(bad_url)?;
        let manager_config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(config.timeout))
            .set_response_timeout(Some(config.timeout))
            .set_number_of_retries(2)
            .set_max_delay(config.timeout);
        Ok(Connector::Single(client, manager_config))
    }

    async fn connect(&self) -> redis::RedisResult<Conn> {
        match self {
            Connector::Single(client, config) => {
                ConnectionManager::new_with_config(client.clone(), config.clone())
                    .await
                    .map(Conn::Single)
            }
            #[cfg(feature = "cluster")]
            Connector::Cluster(client) => client.get_async_connection().await.map(Conn::Cluster),
        }
    }
}

/// Tries to connect until it succeeds or the backend is dropped, backing off up to 5 s.
async fn connect_in_background(inner: Weak<Inner>) {
    let mut pause = Duration::from_millis(50);
    loop {
        let Some((timeout, connector)) = inner
            .upgrade()
            .map(|i| (i.config.timeout, i.connector.clone()))
        else {
            return;
        };
        let attempt = with_timeout("connect", timeout, connector.connect()).await;
        let Some(live) = inner.upgrade() else {
            return;
        };
        match attempt {
            Ok(conn) => {
                live.set_conn(conn);
                tracing::info!(prefix = %live.config.prefix, "connected to Redis");
                return;
            }
            Err(e) => {
                tracing::warn!(error = %e, retry_in = ?pause, "cannot connect to Redis yet");
                *live
                    .connect_error
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner) = Some(e.to_string());
            }
        }
        drop(live);
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_secs(5));
    }
}

async fn with_timeout<T>(
    operation: &'static str,
    timeout: Duration,
    fut: impl Future<Output = redis::RedisResult<T>>,
) -> Result<T> {
    match tokio::time::timeout(timeout, fut).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(Error::backend("redis", e)),
        Err(_) => Err(Error::Timeout { operation, timeout }),
    }
}

fn validate_prefix(prefix: &str) -> Result<()> {
    if prefix.is_empty() || prefix.contains(['{', '}']) {
        return Err(Error::Config(format!(
            "Redis prefix {prefix:?} must be non-empty and contain no `{{` or `}}` \
             (it is the Redis Cluster hash tag of every key)"
        )));
    }
    Ok(())
}

/// The start of an entry up to its stamps: `0xB6`, `n:`, then per dependency
/// `<len>:<dependency>`. The caller writes it, so the script only appends the stamps it reads.
fn entry_header(deps: &[String]) -> Vec<u8> {
    let mut header = Vec::with_capacity(8 + deps.iter().map(|d| d.len() + 4).sum::<usize>());
    header.push(ENTRY_MAGIC);
    // Writing into a Vec cannot fail.
    let _ = write!(header, "{}:", deps.len());
    for dep in deps {
        let _ = write!(header, "{}:", dep.len());
        header.extend_from_slice(dep.as_bytes());
    }
    header
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
        let entry_key = self.entry_key(key);
        let known = self.inner.known.get(key);
        let mut conn = self.conn()?;
        // The entry and the stamps it had last time, in one round trip: `GET` runs first, so
        // an invalidation that returned before this read started shows in the `MGET`.
        let (entry, guessed): (Option<Vec<u8>>, Option<Stamps>) = match &known {
            Some(keys) if !keys.is_empty() && self.is_cluster() => {
                // Other slots, so no pipeline: both requests in flight at once. Their order
                // does not matter: an invalidation that returned before this read began shows
                // in the stamps either way.
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
                (entry, Some(stamps))
            }
            Some(keys) if !keys.is_empty() => {
                let mut pipe = redis::pipe();
                pipe.cmd("GET").arg(&entry_key).cmd("MGET").arg(&keys[..]);
                let (entry, stamps) = self.run("get", pipe.query_async(&mut conn)).await?;
                (entry, Some(stamps))
            }
            _ => (self.run("get", conn.get(&entry_key)).await?, None),
        };
        let Some(entry) = entry else {
            return Ok(None);
        };
        let entry = Bytes::from(entry);
        let Some(envelope) = Envelope::parse(&entry) else {
            tracing::debug!(key, "entry not in this layout's format; a miss");
            return Ok(None);
        };
        let prefix = self.inner.stamp_prefix.as_bytes();
        let valid = match (known, guessed) {
            _ if envelope.deps.is_empty() => true,
            (Some(keys), Some(stamps)) if envelope.has_stamp_keys(&keys, prefix) => {
                Self::stamps_match(&envelope, &stamps)
            }
            _ => {
                let keys = self.stamp_keys_of(&envelope);
                self.inner.known.remember(key, &keys);
                let stamps: Stamps = self
                    .run(
                        "get",
                        redis::cmd("MGET").arg(&keys[..]).query_async(&mut conn),
                    )
                    .await?;
                Self::stamps_match(&envelope, &stamps)
            }
        };
        let value_at = envelope.value_at;
        Ok(valid.then(|| entry.slice(value_at..)))
    }

    async fn has(&self, key: &str) -> Result<bool> {
        Ok(self.get(key).await?.is_some())
    }

    async fn put(&self, request: PutRequest<'_>) -> Result<PutOutcome> {
        // One script names the entry, the clock and every stamp: on a cluster they live in
        // other slots, and with very many dependencies the script would block the server.
        if self.is_cluster() || request.deps.len() > self.inner.config.invalidate_batch {
            return self.put_spread(request).await;
        }
        let mut invocation = self.inner.put.call(2 + request.deps.len());
        invocation
            .key(self.entry_key(request.key))
            .key(&self.inner.clock_key);
        let keys: Arc<[Vec<u8>]> = request
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
            .arg(stamp_keep(ttl));
        let mut conn = self.conn()?;
        let stored: i64 = self.run("put", invocation.invoke_async(&mut conn)).await?;
        Ok(if stored == 1 {
            self.inner.known.remember(request.key, &keys);
            PutOutcome::Stored
        } else {
            PutOutcome::Stale
        })
    }

    async fn delete(&self, key: &str) -> Result<bool> {
        let mut conn = self.conn()?;
        let removed: i64 = self.run("delete", conn.del(self.entry_key(key))).await?;
        Ok(removed > 0)
    }

    async fn invalidate(&self, deps: &[String]) -> Result<u64> {
        let batch = self.inner.config.invalidate_batch.max(1);
        for chunk in deps.chunks(batch) {
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
                .arg(millis(self.inner.config.stale_window));
            let mut conn = self.conn()?;
            let _stamp: String = self
                .run("invalidate", invocation.invoke_async(&mut conn))
                .await?;
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
        Ok(0)
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

    #[test]
    fn prefixes_with_braces_are_refused() {
        assert!(validate_prefix("app").is_ok());
        assert!(validate_prefix("").is_err());
        assert!(validate_prefix("a{b").is_err());
        assert!(validate_prefix("a}b").is_err());
    }

    #[test]
    fn debug_never_shows_the_password() {
        for (url, shown) in [
            ("redis://:s3cret@h:6379/0", "redis://:***@h:6379/0"),
            ("redis://user:s3cret@h:6379", "redis://user:***@h:6379"),
            ("rediss://u:p@ss@h", "rediss://u:***@h"),
            ("redis://user@h:6379", "redis://user@h:6379"),
            ("redis://h:6379/0", "redis://h:6379/0"),
        ] {
            let debug = format!("{:?}", RedisConfig::new(url, "p"));
            assert!(debug.contains(&format!("{shown:?}")), "{debug}");
            assert!(
                !debug.contains("s3cret") && !debug.contains("p@ss"),
                "{debug}"
            );
        }
    }

    #[test]
    fn envelopes_parse_and_garbage_does_not() {
        let mut bytes = entry_header(&["dep".into(), "a:{};,".into()]);
        bytes.extend_from_slice(b"1:1:2,c99;VAL;UE,");
        let e = Envelope::parse(&bytes).unwrap();
        assert_eq!(
            e.deps,
            vec![(&b"dep"[..], &b"1:1:2"[..]), (&b"a:{};,"[..], &b"c99"[..])]
        );
        assert_eq!(&bytes[e.value_at..], b"VAL;UE,");

        let mut bytes = entry_header(&[]);
        bytes.extend_from_slice(b";V");
        let e = Envelope::parse(&bytes).unwrap();
        assert!(e.deps.is_empty());
        assert_eq!(&bytes[e.value_at..], b"V");

        for garbage in [
            &b""[..],
            b"\xA7\x01\x01\0\0\0\0[]",
            b"\xB52:3:dep5:1:1:24:a:{}3:c99VALUE",
            b"\xB6",
            b"\xB6x:",
            b"\xB69999999999999:",
            b"\xB61:3:de",
            b"\xB61:99999999999999999999:d",
            b"\xB61:3:dep",
            b"\xB61:3:depc1,c2;V",
            b"\xB62:3:dep1:xc1;V",
            b"\xB60:c1;V",
        ] {
            assert!(Envelope::parse(garbage).is_none(), "{garbage:?}");
        }
    }
}
