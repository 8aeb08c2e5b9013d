//! Settings of a [`RedisBackend`](super::RedisBackend).

use std::time::Duration;

use super::near::NearConfig;
use crate::error::{Error, Result};

/// Settings of a [`RedisBackend`](super::RedisBackend).
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
    /// is lost, and this is what prevents that. (On one server, a failover that moves this
    /// backend's connection to the promoted server also empties the cache at its first read
    /// there, as a restart does; this still matters on a cluster, and while a connection stays
    /// open to a demoted master.)
    pub wait_for_replicas: usize,
    /// Seed nodes of a Redis Cluster (`redis://host:port` each); empty for a single server
    /// at [`RedisConfig::url`]. See [`RedisConfig::cluster`].
    pub cluster_nodes: Vec<String>,
    /// The in-process tier in front of Redis, off (`None`) by default. See
    /// [`RedisConfig::near_cache`].
    pub near_cache: Option<NearConfig>,
    /// Whether a cluster whose nodes persist to disk is accepted (off by default). See
    /// [`RedisConfig::allow_cluster_persistence`].
    pub allow_cluster_persistence: bool,
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
            .field("near_cache", &self.near_cache)
            .field("allow_cluster_persistence", &self.allow_cluster_persistence)
            .finish()
    }
}

/// The URL with the password of its user-info part (`user:password@`) replaced by `***`.
pub(super) fn redact_password(url: &str) -> String {
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
            near_cache: None,
            allow_cluster_persistence: false,
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

    /// Accepts Redis Cluster nodes that persist to disk (`save` points, `appendonly yes`),
    /// which a cluster backend otherwise refuses when it connects ([`Error::Config`]).
    ///
    /// A node restarted from its snapshot brings back entries older than the invalidations
    /// made since; on one server the backend detects that restart and serves nothing it
    /// restored, but on a cluster it cannot (the cluster client hides which node and
    /// connection a command takes, and an entry, its stamps and the clock live on different
    /// nodes). Turn this on only if every node restored from a snapshot is flushed
    /// (`FLUSHALL`) before it serves. Nodes that refuse `CONFIG GET` (managed services, ACLs
    /// without `@admin`) cannot be checked: the backend connects and logs a warning.
    ///
    /// ```
    /// use matroska_core::backend::redis::RedisConfig;
    ///
    /// let config = RedisConfig::cluster(["redis://10.0.0.1:7000"], "myapp")
    ///     .allow_cluster_persistence();
    /// assert!(config.allow_cluster_persistence);
    /// ```
    #[must_use]
    pub fn allow_cluster_persistence(mut self) -> Self {
        self.allow_cluster_persistence = true;
        self
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

    /// Turns on the near cache: a bounded in-process tier in front of Redis that serves hits
    /// without a round trip.
    ///
    /// Every invalidation publishes the dependencies it stamped (in the same script as the
    /// stamps, on the channel `{prefix}:n`) and `delete` publishes its key, whether or not the
    /// publishing process has a near cache; each process with one holds a subscribed
    /// connection and drops its near entries that depend on them. The consistency model:
    /// - an invalidation or delete in this process reaches its own near tier before it returns
    ///   (read-your-writes is unchanged);
    /// - another process stops serving the old value once it has received the message
    ///   (delivery latency, milliseconds on a LAN), and in any case no read that begins more
    ///   than [`NearConfig::max_lag`] after the invalidation returned is served from its near
    ///   tier unless that process has confirmed, with a heartbeat it published through its
    ///   data connection and received on its subscribed one, that it recorded every message
    ///   published up to then on the server its data now goes to (one `PUBLISH` every
    ///   `max_lag / 4` per process). A killed subscription, a Redis restart, a stalled or
    ///   paused process, a subscription left on an old master after a failover behind one
    ///   address: the tier serves nothing until it is subscribed and confirmed again, and then
    ///   starts empty. An ACL user needs the channels `{prefix}:n*` and the `publish` and
    ///   `subscribe` commands, or the tier serves nothing (one warning);
    /// - a stored `put` publishes its key like a `delete`: another process drops the copy the
    ///   new value replaces, within the same bound;
    /// - releases before the near cache do not publish: do not mix them with processes that
    ///   have it on.
    ///
    /// On a cluster ([`RedisConfig::cluster`]) each process subscribes on every master (the
    /// nodes' addresses as the cluster names them must be reachable, with the first seed
    /// URL's credentials and TLS settings) and its heartbeat round runs a small script on
    /// every master; any failover, node death or change of the masters empties the tier and
    /// it serves nothing until a round is confirmed on every master again. An ACL user there
    /// also needs `evalsha`, `eval`, `info` and `cluster|nodes` (the round's script).
    ///
    /// ```no_run
    /// # async fn run() -> matroska_core::Result<()> {
    /// use std::time::Duration;
    /// use matroska_core::Cache;
    /// use matroska_core::backend::redis::{NearConfig, RedisBackend, RedisConfig};
    ///
    /// let config = RedisConfig::new("redis://127.0.0.1:6379", "myapp")
    ///     .near_cache(NearConfig::new(64 << 20).max_lag(Duration::from_millis(200)));
    /// let cache = Cache::builder(RedisBackend::connect(config).await?).build()?;
    /// # Ok(()) }
    /// ```
    #[must_use]
    pub fn near_cache(mut self, near: NearConfig) -> Self {
        self.near_cache = Some(near);
        self
    }

    /// Sets [`RedisConfig::wait_for_replicas`].
    #[must_use]
    pub fn wait_for_replicas(mut self, replicas: usize) -> Self {
        self.wait_for_replicas = replicas;
        self
    }
}

pub(super) fn validate_prefix(prefix: &str) -> Result<()> {
    if prefix.is_empty() || prefix.contains(['{', '}']) {
        return Err(Error::Config(format!(
            "Redis prefix {prefix:?} must be non-empty and contain no `{{` or `}}` \
             (it is the Redis Cluster hash tag of every key)"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
