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
mod known;
mod lua;
#[cfg(test)]
mod model;
mod near;
mod spread;
mod subscriber;

use breaker::Breaker;
pub use config::RedisConfig;
use config::redact_password;
use connection::{Conn, Connector, connect_in_background, with_timeout};
use entry::{Envelope, entry_header};
use known::KnownKeys;
use lua::{INVALIDATE, Lua, PUT, RELEASE_LEASE, TICKET};
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
        let conn = with_timeout("connect", config.timeout, connector.connect()).await?;
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
        let near = match (&config.near_cache, &connector) {
            (None, _) => None,
            (Some(near), Connector::Single(client, _)) => {
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
                runtime.spawn(subscriber::run(
                    Arc::downgrade(&near),
                    client.clone(),
                    config.timeout,
                ));
                Some(near)
            }
            #[cfg(feature = "cluster")]
            (Some(_), Connector::Cluster(_)) => {
                return Err(Error::Config(
                    "the near cache is not available on Redis Cluster yet; turn it off \
                     (RedisConfig::near_cache) for a cluster"
                        .into(),
                ));
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
        Ok(RedisBackend {
            inner: Arc::new(Inner {
                conn: OnceLock::new(),
                connector,
                connect_error: Mutex::new(None),
                clock_key: format!("{{{prefix}}}:c"),
                entry_prefix: format!("{spread}:e:"),
                stamp_prefix: format!("{spread}:s:"),
                lease_prefix: format!("{spread}:l:"),
                known: KnownKeys::new(config.known_keys),
                breaker: Breaker::new(config.retry_after),
                config,
                put: Lua::new(PUT),
                invalidate: Lua::new(INVALIDATE),
                ticket: Lua::new(TICKET),
                release_lease: Lua::new(RELEASE_LEASE),
                spread: spread::Scripts::default(),
                near,
            }),
        })
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
        // --- near cache (issue 19): a hit without a round trip; else note the sequence
        // before the remote read, so an invalidation recorded meanwhile refuses its value.
        let near = self.inner.near.as_deref();
        if let Some(value) = near.and_then(|n| n.get(key)) {
            return Ok(Some(value));
        }
        let noted = near.map(near::Near::note);
        // --- end near cache ---
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
        let value = valid.then(|| entry.slice(value_at..));
        // --- near cache (issue 19): a validated remote hit fills the tier.
        // Not while the tier is off: the next subscription would refuse the entry anyway.
        if let (Some(near), Some(noted), Some(value)) = (near, noted, &value)
            && near.is_live()
        {
            // The near copy must not outlive the entry: one more round trip, per fill only.
            let ttl: Result<i64> = self
                .run(
                    "get",
                    redis::cmd("PTTL").arg(&entry_key).query_async(&mut conn),
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
                    Duration::from_millis(ttl as u64),
                );
            }
        }
        // --- end near cache ---
        Ok(value)
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
        // --- near cache (issue 19): this process drops its near copy when the delete ends
        // (or is dropped), after its write; the others when they hear the `PUBLISH`, which
        // follows the `DEL` on the same connection, so a process that hears it reads the
        // deletion.
        let _near = self.inner.near.as_deref().map(|n| n.key_guard(key));
        let mut conn = self.conn()?;
        let mut pipe = redis::pipe();
        pipe.del(self.entry_key(key));
        if !self.is_cluster() {
            pipe.cmd("PUBLISH")
                .arg(self.near_channel())
                .arg(near::key_message(key))
                .ignore();
        }
        let (removed,): (i64,) = self.run("delete", pipe.query_async(&mut conn)).await?;
        // --- end near cache ---
        Ok(removed > 0)
    }

    async fn invalidate(&self, deps: &[String]) -> Result<u64> {
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
}
