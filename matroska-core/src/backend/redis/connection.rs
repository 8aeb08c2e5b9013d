//! Connections to one server or a cluster, and the background connection task.

use std::sync::{PoisonError, Weak};
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use super::Inner;
use super::config::{RedisConfig, validate_prefix};
#[cfg(feature = "cluster")]
use super::persistence;
use crate::error::{Error, Result};

/// The server is unreachable (as opposed to slow, or answering with an error).
pub(super) fn is_connection_error(e: &redis::RedisError) -> bool {
    e.is_io_error() || e.is_connection_dropped() || e.is_connection_refusal()
}

/// A connection to one server or to a cluster; the backend's code is the same for both
/// except where a script would span slots.
#[derive(Clone)]
pub(super) enum Conn {
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
pub(super) enum Connector {
    Single(redis::Client, ConnectionManagerConfig),
    #[cfg(feature = "cluster")]
    Cluster(redis::cluster::ClusterClient),
}

impl Connector {
    pub(super) fn for_config(config: &RedisConfig) -> Result<Self> {
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

    pub(super) async fn connect(&self) -> redis::RedisResult<Conn> {
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

/// Connects, within the time-out, and on a cluster refuses nodes that persist to disk unless
/// allowed (`persistence.rs`).
pub(super) async fn connect_checked(connector: &Connector, config: &RedisConfig) -> Result<Conn> {
    let conn = with_timeout("connect", config.timeout, connector.connect()).await?;
    match &conn {
        Conn::Single(_) => {}
        #[cfg(feature = "cluster")]
        Conn::Cluster(cluster) => {
            let nodes = cluster_persistence(cluster.clone(), config.timeout).await?;
            persistence::judge(&nodes, config.allow_cluster_persistence)?;
        }
    }
    Ok(conn)
}

/// Every node's answer to `CONFIG GET *` (read for `save` and `appendonly`), by address.
#[cfg(feature = "cluster")]
async fn cluster_persistence(
    mut cluster: redis::cluster_async::ClusterConnection,
    timeout: Duration,
) -> Result<Vec<(String, persistence::Persistence)>> {
    use redis::Value;
    use redis::cluster_routing::{MultipleNodeRoutingInfo, RoutingInfo};
    let mut cmd = redis::cmd("CONFIG");
    // One pattern, not `save appendonly`: before Redis 7.0, `CONFIG GET` takes exactly one
    // (two are an error on every node, which would read as "cannot tell" and let a
    // persistent cluster through with a warning). The answer is small and read once.
    cmd.arg("GET").arg("*");
    // No response policy: the answers come back as a map from node address to answer.
    let routing = RoutingInfo::MultiNode((MultipleNodeRoutingInfo::AllNodes, None));
    let answer = match tokio::time::timeout(timeout, cluster.route_command(cmd, routing)).await {
        Ok(Ok(answer)) => answer,
        // CONFIG refused (an ACL without @admin, a renamed command): not checkable.
        Ok(Err(e)) => {
            return Ok(vec![(
                "every node".into(),
                persistence::Persistence::Unknown(e.to_string()),
            )]);
        }
        Err(_) => {
            return Err(Error::Timeout {
                operation: "CONFIG GET (cluster persistence check)",
                timeout,
            });
        }
    };
    Ok(match answer {
        Value::Map(nodes) => nodes
            .iter()
            .map(|(node, answer)| {
                let node = match node {
                    Value::BulkString(b) => String::from_utf8_lossy(b).into_owned(),
                    Value::SimpleString(s) => s.clone(),
                    other => format!("{other:?}"),
                };
                (node, persistence::persistence_of(answer))
            })
            .collect(),
        single => vec![("a node".into(), persistence::persistence_of(&single))],
    })
}

/// Tries to connect until it succeeds or the backend is dropped, backing off up to 5 s.
pub(super) async fn connect_in_background(inner: Weak<Inner>) {
    let mut pause = Duration::from_millis(50);
    loop {
        let Some((config, connector)) = inner
            .upgrade()
            .map(|i| (i.config.clone(), i.connector.clone()))
        else {
            return;
        };
        let attempt = connect_checked(&connector, &config).await;
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

pub(super) async fn with_timeout<T>(
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
