//! Redis Cluster nodes that persist to disk are refused (issue 16, item 16, on a cluster).
//!
//! A server restarted from an RDB or AOF snapshot brings back entries *with the stamps they
//! recorded*, older than every invalidation made since the snapshot, so the stamp comparison
//! passes. On one server the backend detects such a restart (`incarnation.rs`: the clock is
//! owned by the server's `run_id`, reads check the owner on a connection verified since it
//! connected). On a cluster it cannot: the cluster client hides which node and connection a
//! command takes, and an entry, its stamps and the clock live on different nodes, so a node
//! restored from its snapshot while the clock's node kept running passes every check. So a
//! cluster backend refuses, at connect, nodes that would restore old state: `save` points or
//! `appendonly yes` on any node (a replica restarted from its own file is as dangerous, since
//! it may be promoted or feed a restarted master's replicas). Operators who run persistence
//! deliberately and flush a node restored from a snapshot before it serves say so with
//! [`RedisConfig::allow_cluster_persistence`](super::RedisConfig::allow_cluster_persistence).
//!
//! A node that refuses `CONFIG GET` (renamed or disabled by a managed service, or an ACL
//! without `@admin`) cannot be checked: the backend connects and logs one warning naming the
//! risk. Nodes added to the cluster after the check, and `CONFIG SET` later, are not seen.

use redis::Value;

use crate::error::{Error, Result};

/// What one node answered about its persistence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Persistence {
    /// Neither snapshots nor an append-only file.
    Off,
    /// What turns it on: `save "<points>"` and/or `appendonly yes`.
    On(String),
    /// The node did not say (CONFIG refused, or an answer of an unknown shape).
    Unknown(String),
}

/// Reads `save` and `appendonly` from a node's answer to `CONFIG GET *` (a flat array of
/// name/value pairs under RESP2, a map under RESP3).
pub(super) fn persistence_of(answer: &Value) -> Persistence {
    let pairs: Vec<(String, String)> = match answer {
        Value::Array(items) => items
            .chunks(2)
            .filter_map(|pair| match pair {
                [name, value] => Some((text(name)?, text(value)?)),
                _ => None,
            })
            .collect(),
        Value::Map(pairs) => pairs
            .iter()
            .filter_map(|(name, value)| Some((text(name)?, text(value)?)))
            .collect(),
        Value::ServerError(e) => return Persistence::Unknown(format!("{e:?}")),
        other => return Persistence::Unknown(format!("unexpected answer {other:?}")),
    };
    let setting = |name: &str| {
        pairs
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.trim().to_owned())
    };
    let (Some(save), Some(appendonly)) = (setting("save"), setting("appendonly")) else {
        // Not the pairs themselves: `CONFIG GET *` includes `requirepass` and `masterauth`.
        return Persistence::Unknown(format!(
            "CONFIG GET answered {} settings, without save or appendonly",
            pairs.len()
        ));
    };
    let mut on = Vec::new();
    if !save.is_empty() {
        on.push(format!("save \"{save}\""));
    }
    if appendonly.eq_ignore_ascii_case("yes") {
        on.push("appendonly yes".to_owned());
    }
    if on.is_empty() {
        Persistence::Off
    } else {
        Persistence::On(on.join(", "))
    }
}

fn text(value: &Value) -> Option<String> {
    match value {
        Value::BulkString(bytes) => Some(String::from_utf8_lossy(bytes).into_owned()),
        Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    }
}

/// The verdict over every node's answer: an error naming the persistent nodes unless they
/// are allowed; nodes that could not be checked are logged once.
pub(super) fn judge(nodes: &[(String, Persistence)], allowed: bool) -> Result<()> {
    let unknown: Vec<String> = nodes
        .iter()
        .filter_map(|(node, p)| match p {
            Persistence::Unknown(why) => Some(format!("{node} ({why})")),
            _ => None,
        })
        .collect();
    if !unknown.is_empty() {
        tracing::warn!(
            nodes = %unknown.join("; "),
            "cannot tell whether these Redis Cluster nodes persist to disk: a node restarted \
             from a snapshot would serve entries older than the invalidations made since; run \
             the cluster without persistence (save \"\", appendonly no) or flush a restored node"
        );
    }
    let on: Vec<String> = nodes
        .iter()
        .filter_map(|(node, p)| match p {
            Persistence::On(what) => Some(format!("{node} ({what})")),
            _ => None,
        })
        .collect();
    if on.is_empty() {
        return Ok(());
    }
    if allowed {
        tracing::info!(
            nodes = %on.join("; "),
            "Redis Cluster nodes persist to disk (allowed): flush a node restored from a \
             snapshot before it serves"
        );
        return Ok(());
    }
    Err(Error::Config(format!(
        "Redis Cluster nodes persist to disk: {}. A node restarted from its snapshot would \
         bring back cache entries older than the invalidations made since, and on a cluster \
         the backend cannot detect that restart. Run the cluster without persistence \
         (`save \"\"`, `appendonly no`), or, if you flush (FLUSHALL) every node restored from \
         a snapshot before it serves, say so with RedisConfig::allow_cluster_persistence()",
        on.join("; ")
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    #[test]
    fn reads_both_protocols_and_every_setting() {
        let resp2 = |save: &str, aof: &str| {
            Value::Array(vec![
                bulk("save"),
                bulk(save),
                bulk("appendonly"),
                bulk(aof),
            ])
        };
        assert_eq!(persistence_of(&resp2("", "no")), Persistence::Off);
        assert_eq!(
            persistence_of(&resp2("3600 1 300 100", "no")),
            Persistence::On("save \"3600 1 300 100\"".into())
        );
        assert_eq!(
            persistence_of(&resp2("", "yes")),
            Persistence::On("appendonly yes".into())
        );
        let resp3 = Value::Map(vec![
            (bulk("appendonly"), bulk("no")),
            (bulk("save"), bulk("")),
        ]);
        assert_eq!(persistence_of(&resp3), Persistence::Off);
        // `CONFIG GET *`: every setting, the two read among them.
        let everything = Value::Array(
            [
                "dir",
                "/data",
                "appendonly",
                "yes",
                "save",
                "",
                "appendfsync",
                "everysec",
            ]
            .into_iter()
            .map(bulk)
            .collect(),
        );
        assert_eq!(
            persistence_of(&everything),
            Persistence::On("appendonly yes".into())
        );
        // A node that answers only one of the two settings is not taken as "off".
        assert!(matches!(
            persistence_of(&Value::Array(vec![bulk("save"), bulk("")])),
            Persistence::Unknown(_)
        ));
        assert!(matches!(
            persistence_of(&Value::Nil),
            Persistence::Unknown(_)
        ));
    }

    #[test]
    fn persistent_nodes_are_refused_unless_allowed_and_unknown_ones_pass() {
        let nodes = vec![
            ("a:1".to_owned(), Persistence::Off),
            ("b:2".to_owned(), Persistence::On("appendonly yes".into())),
            ("c:3".to_owned(), Persistence::Unknown("NOPERM".into())),
        ];
        let Err(Error::Config(message)) = judge(&nodes, false) else {
            panic!("a persistent node must be refused");
        };
        assert!(message.contains("b:2 (appendonly yes)"), "{message}");
        assert!(!message.contains("a:1"), "{message}");
        assert!(judge(&nodes, true).is_ok());
        assert!(judge(&nodes[..1], false).is_ok());
        assert!(judge(&nodes[2..], false).is_ok());
    }
}
