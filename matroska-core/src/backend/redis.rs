//! The Redis backend: one `GET` per read, one script call per put and per invalidation.
//!
//! # Key layout
//!
//! With prefix `P` (which may not contain `{` or `}`):
//!
//! | key | type | holds |
//! |---|---|---|
//! | `{P}:e:<key>` | string | a cached value (codec header + payload) |
//! | `{P}:d:<dependency>` | set | names of the entries that depend on the dependency |
//! | `{P}:v:<dependency>` | string | invalidation marker: clock stamp of the last invalidation |
//! | `{P}:clock` | string | the invalidation clock |
//! | `{P}:l:<key>` | string | cross-process fill lease of a key |
//!
//! `<dependency>` is [`Dependency::encode`](crate::Dependency::encode), which is injective, and
//! `<key>` is the user's key as is: it ends the Redis key, so any bytes are safe. The `{P}` hash
//! tag puts every key of one prefix in one Redis Cluster slot, which multi-key scripts need;
//! see ARCHITECTURE.md for the cluster plan.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{AsyncCommands, Script};

use super::{Backend, PutOutcome, PutRequest, Ticket};
use crate::error::{Error, Result};

static PUT: &str = include_str!("lua/put.lua");
static INVALIDATE: &str = include_str!("lua/invalidate.lua");
static TICKET: &str = include_str!("lua/ticket.lua");
static RELEASE_LEASE: &str = include_str!("lua/release_lease.lua");

/// Settings of a [`RedisBackend`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct RedisConfig {
    /// `redis://[user:password@]host:port/db` (AUTH comes from the URL).
    pub url: String,
    /// The namespace of every key this backend writes.
    pub prefix: String,
    /// How long invalidation markers live; a guarded put whose ticket is older is refused.
    pub stale_window: Duration,
    /// Upper bound on one operation, connection included.
    pub timeout: Duration,
    /// The most entries one invalidation script call deletes before yielding to other
    /// clients; larger fan-outs take several calls.
    pub invalidate_batch: usize,
    /// After a connection failure or time-out, operations fail at once for this long instead
    /// of each waiting for the time-out: during an outage reads cost a miss, not a time-out.
    pub retry_after: Duration,
}

impl RedisConfig {
    /// Settings for `url` with keys under `prefix`, and defaults for the rest: a 60 s stale
    /// window, a 1 s time-out, 10,000 entries per invalidation call.
    pub fn new(url: impl Into<String>, prefix: impl Into<String>) -> Self {
        RedisConfig {
            url: url.into(),
            prefix: prefix.into(),
            stale_window: Duration::from_secs(60),
            timeout: Duration::from_secs(1),
            invalidate_batch: 10_000,
            retry_after: Duration::from_millis(500),
        }
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

    /// Sets [`RedisConfig::invalidate_batch`].
    #[must_use]
    pub fn invalidate_batch(mut self, entries: usize) -> Self {
        self.invalidate_batch = entries.max(1);
        self
    }
}

/// What [`RedisBackend::check_server`] found about the server's configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ServerWarning {
    /// Redis may evict keys under memory pressure, and eviction does not know that an index
    /// set must outlive its entries: an evicted set loses invalidations.
    EvictionMayDropIndex {
        /// The configured `maxmemory-policy`.
        policy: String,
    },
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
    conn: ConnectionManager,
    config: RedisConfig,
    clock_key: String,
    put: Script,
    invalidate: Script,
    ticket: Script,
    release_lease: Script,
    lease_tokens: AtomicU64,
    /// Fast-fail until this many ms after `epoch` (0: healthy).
    down_until_ms: AtomicU64,
    epoch: std::time::Instant,
}

impl std::fmt::Debug for RedisBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisBackend")
            .field("prefix", &self.inner.config.prefix)
            .finish_non_exhaustive()
    }
}

impl RedisBackend {
    /// Connects to Redis and checks its configuration (a warning is logged when eviction
    /// could drop index sets; see [`RedisBackend::check_server`]).
    ///
    /// # Errors
    /// [`Error::Config`] for a bad URL or prefix, [`Error::Backend`] or [`Error::Timeout`]
    /// when the server cannot be reached.
    pub async fn connect(config: RedisConfig) -> Result<Self> {
        validate_prefix(&config.prefix)?;
        let client = redis::Client::open(config.url.as_str()).map_err(|e| {
            let hint = if config.url.starts_with("rediss://") && !cfg!(feature = "tls") {
                " (rediss:// needs matroska's `tls` feature)"
            } else {
                ""
            };
            Error::Config(format!("bad Redis URL: {e}{hint}"))
        })?;
        let manager_config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(config.timeout))
            .set_response_timeout(Some(config.timeout))
            .set_number_of_retries(2)
            .set_max_delay(config.timeout);
        let conn = with_timeout(
            "connect",
            config.timeout,
            ConnectionManager::new_with_config(client, manager_config),
        )
        .await?;
        let backend = RedisBackend {
            inner: Arc::new(Inner {
                conn,
                clock_key: format!("{{{}}}:clock", config.prefix),
                config,
                put: Script::new(PUT),
                invalidate: Script::new(INVALIDATE),
                ticket: Script::new(TICKET),
                release_lease: Script::new(RELEASE_LEASE),
                lease_tokens: AtomicU64::new(seed_tokens()),
                down_until_ms: AtomicU64::new(0),
                epoch: std::time::Instant::now(),
            }),
        };
        match backend.check_server().await {
            Ok(warnings) => {
                for ServerWarning::EvictionMayDropIndex { policy } in warnings {
                    tracing::warn!(
                        %policy,
                        "Redis maxmemory-policy may evict matroska's reverse-index sets while \
                         keeping entries, which loses invalidations; use `noeviction` or a \
                         dedicated instance without maxmemory"
                    );
                }
            }
            // Managed services often disable CONFIG: not knowing is not an error.
            Err(e) => tracing::debug!(error = %e, "could not read Redis configuration"),
        }
        Ok(backend)
    }

    /// Reads `maxmemory` and `maxmemory-policy` and reports settings under which Redis could
    /// evict an index set while keeping the entries it names.
    ///
    /// # Errors
    /// Backend errors, including `CONFIG` being disabled on the server.
    pub async fn check_server(&self) -> Result<Vec<ServerWarning>> {
        let mut conn = self.inner.conn.clone();
        let (maxmemory, policy): (Vec<String>, Vec<String>) = with_timeout(
            "config",
            self.inner.config.timeout,
            redis::pipe()
                .cmd("CONFIG")
                .arg("GET")
                .arg("maxmemory")
                .cmd("CONFIG")
                .arg("GET")
                .arg("maxmemory-policy")
                .query_async(&mut conn),
        )
        .await?;
        let maxmemory = maxmemory.get(1).map_or("0", String::as_str);
        let policy = policy.get(1).cloned().unwrap_or_default();
        if maxmemory != "0" && policy != "noeviction" {
            Ok(vec![ServerWarning::EvictionMayDropIndex { policy }])
        } else {
            Ok(Vec::new())
        }
    }

    /// The configuration this backend runs with.
    pub fn config(&self) -> &RedisConfig {
        &self.inner.config
    }

    /// The Redis key of the entry `key` (for inspection with other clients).
    pub fn entry_key(&self, key: &str) -> String {
        format!("{{{}}}:e:{key}", self.inner.config.prefix)
    }

    /// The Redis key of the reverse-index set of an encoded dependency.
    pub fn index_key(&self, dep: &str) -> String {
        format!("{{{}}}:d:{dep}", self.inner.config.prefix)
    }

    fn marker_key(&self, dep: &str) -> String {
        format!("{{{}}}:v:{dep}", self.inner.config.prefix)
    }

    fn lease_key(&self, key: &str) -> String {
        format!("{{{}}}:l:{key}", self.inner.config.prefix)
    }

    fn conn(&self) -> ConnectionManager {
        self.inner.conn.clone()
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
        match &result {
            Err(Error::Timeout { .. }) => self.trip(now_ms()),
            Err(Error::Backend {
                source: Some(source),
                ..
            }) if source.downcast_ref::<redis::RedisError>().is_some_and(|e| {
                e.is_io_error()
                    || e.is_connection_dropped()
                    || e.is_connection_refusal()
                    || e.is_timeout()
            }) =>
            {
                self.trip(now_ms());
            }
            Ok(_) if down_until != 0 => {
                inner.down_until_ms.store(0, Ordering::Relaxed);
                tracing::info!("Redis answers again");
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

/// A per-process starting point for lease tokens, so two processes rarely share tokens.
fn seed_tokens() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    // Truncation is fine: only uniqueness across processes matters, not the value.
    (nanos as u64) ^ (u64::from(std::process::id()) << 32)
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}

#[async_trait]
impl Backend for RedisBackend {
    fn name(&self) -> &'static str {
        "redis"
    }

    async fn get(&self, key: &str) -> Result<Option<Bytes>> {
        let mut conn = self.conn();
        let value: Option<Vec<u8>> = self.run("get", conn.get(self.entry_key(key))).await?;
        Ok(value.map(Bytes::from))
    }

    async fn has(&self, key: &str) -> Result<bool> {
        let mut conn = self.conn();
        self.run("has", conn.exists(self.entry_key(key))).await
    }

    async fn put(&self, request: PutRequest<'_>) -> Result<PutOutcome> {
        let mut invocation = self.inner.put.prepare_invoke();
        invocation.key(self.entry_key(request.key));
        for dep in request.deps {
            invocation.key(self.index_key(dep));
        }
        for dep in request.deps {
            invocation.key(self.marker_key(dep));
        }
        invocation
            .arg(request.value.as_ref())
            .arg(millis(request.ttl))
            .arg(request.deps.len())
            .arg(request.ticket.map(|t| t.0.to_string()).unwrap_or_default())
            .arg(micros(self.inner.config.stale_window));
        let mut conn = self.conn();
        let stored: i64 = self.run("put", invocation.invoke_async(&mut conn)).await?;
        Ok(if stored == 1 {
            PutOutcome::Stored
        } else {
            PutOutcome::Stale
        })
    }

    async fn delete(&self, key: &str) -> Result<bool> {
        let mut conn = self.conn();
        let removed: i64 = self.run("delete", conn.del(self.entry_key(key))).await?;
        Ok(removed > 0)
    }

    async fn invalidate(&self, deps: &[String]) -> Result<u64> {
        let mut pending: Vec<&String> = deps.iter().collect();
        let mut dropped = 0;
        let mut calls = 0_u32;
        while !pending.is_empty() {
            calls += 1;
            let mut invocation = self.inner.invalidate.prepare_invoke();
            invocation.key(&self.inner.clock_key);
            for dep in &pending {
                invocation.key(self.index_key(dep));
            }
            for dep in &pending {
                invocation.key(self.marker_key(dep));
            }
            invocation
                .arg(pending.len())
                // At least one entry per call, or a call would make no progress.
                .arg(self.inner.config.invalidate_batch.max(1))
                .arg(millis(self.inner.config.stale_window));
            let mut conn = self.conn();
            let reply: Vec<i64> = self
                .run("invalidate", invocation.invoke_async(&mut conn))
                .await?;
            let (count, unfinished) = reply.split_first().unwrap_or((&0, &[]));
            dropped += u64::try_from(*count).unwrap_or(0);
            pending = unfinished
                .iter()
                .filter_map(|&i| usize::try_from(i - 1).ok().and_then(|i| pending.get(i)))
                .copied()
                .collect();
        }
        if calls > 1 {
            tracing::debug!(
                calls,
                dropped,
                "large invalidation split into several script calls"
            );
        }
        Ok(dropped)
    }

    async fn ticket(&self) -> Result<Ticket> {
        let mut invocation = self.inner.ticket.prepare_invoke();
        invocation.key(&self.inner.clock_key);
        let mut conn = self.conn();
        let now: u64 = self
            .run("ticket", invocation.invoke_async(&mut conn))
            .await?;
        Ok(Ticket(now))
    }

    async fn try_lease(&self, key: &str, ttl: Duration) -> Result<Option<u64>> {
        let token = self.inner.lease_tokens.fetch_add(1, Ordering::Relaxed);
        let mut conn = self.conn();
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
        Ok(taken.map(|_| token))
    }

    async fn release_lease(&self, key: &str, token: u64) -> Result<()> {
        let mut invocation = self.inner.release_lease.prepare_invoke();
        invocation.key(self.lease_key(key)).arg(token);
        let mut conn = self.conn();
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
}
