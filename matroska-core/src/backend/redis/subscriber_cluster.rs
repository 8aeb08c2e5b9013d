//! The near cache's subscriber on Redis Cluster: one subscribed connection per master.
//!
//! On a cluster a plain `PUBLISH` (also from a script) reaches the subscribers of its own node
//! at once and every other node over the cluster bus. The bus is not relied on: a bus link
//! that breaks and reconnects loses what was queued on it, silently for a subscriber on the
//! far node, and a later heartbeat would come through the new link. So this subscribes on
//! *every master*, where each invalidation step publishes (`set_stamp.lua` and
//! `write_entry.lua` run on the master that holds their key), and each master's messages
//! reach it over its own connection, whose loss it sees. (It also receives the bus copies of
//! the other masters' messages: duplicates, which only mark again.)
//!
//! Heartbeat rounds: every `max_lag / 4` `heartbeat.lua` runs on every master, on a command
//! connection of this subscriber to it, and publishes the round's number on the tier's own
//! channel there. Invariant: **when the subscribed connection to master `M` delivers the
//! round's number (any copy: none exists before the round was sent, at `s`), every message
//! `M` wrote to that connection before `s` has been received and recorded** — one server
//! writes a subscriber's messages in the order it runs them, and they are recorded in the
//! order received. A round confirms `s` only when (1) every master answers as a master
//! (`role:master`) with the replication id it had when the session subscribed (a promotion
//! or a restart changes it: a failover meanwhile, however short, is seen), counting a
//! subscriber of the tier's channel on its node, and naming as the cluster's masters exactly
//! those subscribed to (a master added, a migration target, a failed master: seen); and (2)
//! every subscribed connection has delivered the number. So every invalidation step that
//! returned before `s` on any master — which ran its `PUBLISH` there before `s` — has been
//! recorded. The masters come from the cluster's own view (`CLUSTER NODES`, inside the
//! script), not from the data connection's slot map, which a process whose reads all hit its
//! near tier never refreshes.
//!
//! Anything else ends the session, and the next one lists the masters, subscribes to each
//! anew and empties the tier: a connection that closes (its node died), a round that fails
//! or is not back within the time-out, an answer that differs.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Weak;
use std::time::{Duration, Instant};

use futures_util::StreamExt as _;
use futures_util::stream::{self, BoxStream};
use redis::aio::MultiplexedConnection;

use super::{Ended, near_of, refused};
use crate::backend::redis::Inner;

static HEARTBEAT: &str = include_str!("lua/heartbeat.lua");

/// Where a cluster's subscriber subscribes.
pub(in crate::backend::redis) struct ClusterTarget {
    /// A client for the first seed node: its settings (credentials, TLS) serve every node.
    pub(in crate::backend::redis) seed: redis::Client,
    /// `host:port` of every seed node, to list the masters from when none is known.
    pub(in crate::backend::redis) seeds: Vec<String>,
}

/// One node's answer to `heartbeat.lua`.
#[derive(Debug)]
struct Answer {
    /// Subscribers of the channel on that node that received the number; -1 when it is not
    /// a master.
    subscribers: i64,
    /// Its replication id (changes when it is promoted or restarted).
    replid: String,
    /// The masters it knows, `host:port`.
    masters: BTreeSet<String>,
}

type Round =
    std::pin::Pin<Box<dyn Future<Output = redis::RedisResult<Vec<Answer>>> + Send + 'static>>;

/// A heartbeat round not yet confirmed.
struct Beat {
    seq: u64,
    sent: Instant,
    /// Its script calls, until they answer.
    round: Option<Round>,
    /// Whether every answer checked out.
    checked: bool,
    /// Per subscribed connection: whether it delivered the round's number.
    back: Vec<bool>,
}

/// One subscription to every master, from connecting until it fails; and whether a round was
/// confirmed. `known`: the masters of the last session, asked first.
pub(super) async fn session(
    weak: &Weak<Inner>,
    target: &ClusterTarget,
    known: &mut Vec<String>,
    timeout: Duration,
    next_beat: &mut u64,
) -> (Ended, bool) {
    let Some((channel, beats, every, mut stall)) = near_of(weak).map(|near| {
        (
            near.channel.clone(),
            near.heartbeat_channel.clone(),
            near.config.max_lag / 4,
            near.hooks.stall.subscribe(),
        )
    }) else {
        return (Ended::Dropped, false);
    };
    let failed = |e: redis::RedisError, what: &str| {
        if e.code() == Some("NOPERM") {
            refused(&beats, &e.to_string());
            Ended::Refused(e.to_string())
        } else {
            Ended::Failed(format!("{what}: {e}"))
        }
    };
    // 1. The masters, as a node of the cluster knows them (the last session's masters first,
    // then the seeds).
    let mut masters = None;
    let mut why = String::from("no node to ask");
    for addr in known.iter().chain(&target.seeds) {
        let asked = async {
            let mut conn = node_client(&target.seed, addr)?
                .get_multiplexed_async_connection()
                .await?;
            ask(&mut conn, addr, &beats, u64::MAX).await
        };
        match tokio::time::timeout(timeout, asked).await {
            Ok(Ok(answer)) if !answer.masters.is_empty() => {
                masters = Some(answer.masters);
                break;
            }
            Ok(Ok(_)) => why = format!("{addr} knows no master"),
            Ok(Err(e)) if e.code() == Some("NOPERM") => return (failed(e, "listing"), false),
            Ok(Err(e)) => why = format!("{addr}: {e}"),
            Err(_) => why = format!("{addr}: timed out"),
        }
    }
    let Some(masters) = masters else {
        return (Ended::Failed(format!("listing the masters: {why}")), false);
    };
    let order: Vec<String> = masters.iter().cloned().collect();
    *known = order.clone();
    // 2. A command connection and a subscription on each.
    let mut commands = Vec::with_capacity(order.len());
    let mut sinks = Vec::with_capacity(order.len());
    let mut streams: Vec<BoxStream<'static, (usize, Option<redis::Msg>)>> = Vec::new();
    for (i, addr) in order.iter().enumerate() {
        let connect = async {
            let client = node_client(&target.seed, addr)?;
            let command = client.get_multiplexed_async_connection().await?;
            let pubsub = client.get_async_pubsub().await?;
            let (mut sink, stream) = pubsub.split();
            // Both confirmations awaited: subscribed to both before any counted round.
            sink.subscribe(&[&channel, &beats]).await?;
            Ok::<_, redis::RedisError>((command, sink, stream))
        };
        match tokio::time::timeout(timeout, connect).await {
            Ok(Ok((command, sink, stream))) => {
                commands.push(command);
                // The sinks are kept (not used) for as long as the session: dropping one may
                // close its connection.
                sinks.push(sink);
                // `None` once the connection closed.
                streams.push(
                    stream
                        .map(move |m| (i, Some(m)))
                        .chain(stream::once(async move { (i, None) }))
                        .boxed(),
                );
            }
            Ok(Err(e)) => return (failed(e, &format!("subscribing on {addr}")), false),
            Err(_) => {
                return (
                    Ended::Failed(format!("subscribing on {addr} timed out")),
                    false,
                );
            }
        }
    }
    // 3. Each master's replication id now, subscribed: the rounds must find it unchanged.
    let first = tokio::time::timeout(
        timeout,
        send_round(commands.clone(), order.clone(), beats.clone(), u64::MAX),
    )
    .await;
    let topology: BTreeMap<String, String> = match first {
        Ok(Ok(answers)) => {
            if let Some(why) = differs(&order, &masters, None, &answers) {
                return (Ended::Failed(why), false);
            }
            order
                .iter()
                .cloned()
                .zip(answers.into_iter().map(|a| a.replid))
                .collect()
        }
        Ok(Err(e)) => return (failed(e, "the first round"), false),
        Err(_) => return (Ended::Failed("the first round timed out".into()), false),
    };
    // Subscribed on every master: what was filled before may have missed messages.
    let Some(near) = near_of(weak) else {
        return (Ended::Dropped, false);
    };
    near.restart();
    drop(near);
    let mut messages = stream::select_all(streams);
    let mut confirmed = false;
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut beat: Option<Beat> = None;
    // Test hook, as on one server: while stalled, messages are held, no round is sent or
    // confirmed.
    let mut held: Vec<(usize, redis::Msg)> = Vec::new();
    loop {
        tokio::select! {
            biased;
            changed = stall.changed() => {
                if changed.is_err() {
                    return (Ended::Dropped, confirmed);
                }
                if !*stall.borrow_and_update() {
                    let Some(near) = near_of(weak) else { return (Ended::Dropped, confirmed) };
                    for (i, message) in held.drain(..) {
                        confirmed |= record(&near, &beats, &mut beat, i, &message);
                    }
                }
            }
            message = messages.next() => {
                let Some((i, Some(message))) = message else {
                    if *stall.borrow() && stall.wait_for(|s| !*s).await.is_err() {
                        return (Ended::Dropped, confirmed);
                    }
                    if let Some(near) = near_of(weak) {
                        for (i, message) in held.drain(..) {
                            confirmed |= record(&near, &beats, &mut beat, i, &message);
                        }
                    }
                    let which = message.map_or("?", |(i, _)| order[i].as_str());
                    return (
                        Ended::Failed(format!("the subscription on {which} closed")),
                        confirmed,
                    );
                };
                if *stall.borrow() {
                    held.push((i, message));
                    continue;
                }
                let Some(near) = near_of(weak) else { return (Ended::Dropped, confirmed) };
                confirmed |= record(&near, &beats, &mut beat, i, &message);
            }
            answered = async {
                match beat.as_mut().and_then(|b| b.round.as_mut()) {
                    Some(round) => round.await,
                    None => std::future::pending().await,
                }
            } => {
                match answered {
                    Ok(answers) => {
                        if let Some(why) = differs(&order, &masters, Some(&topology), &answers) {
                            return (Ended::Failed(why), confirmed);
                        }
                        if let Some(b) = beat.as_mut() {
                            b.round = None;
                            b.checked = true;
                        }
                        if let Some(near) = near_of(weak) {
                            confirmed |= complete(&near, &mut beat);
                        }
                    }
                    // A command connection is gone, or a master refused: subscribe anew.
                    Err(e) => return (failed(e, "a heartbeat round"), confirmed),
                }
            }
            _ = tick.tick() => {
                if weak.strong_count() == 0 {
                    return (Ended::Dropped, confirmed);
                }
                if *stall.borrow() {
                    continue;
                }
                match &beat {
                    // Sent and not answered, or answered and not delivered, within the
                    // time-out: a master or a subscription is deaf or far behind.
                    Some(b) if b.sent.elapsed() > timeout => {
                        return (
                            Ended::Failed("a heartbeat round did not come back".into()),
                            confirmed,
                        );
                    }
                    Some(_) => {}
                    None => {
                        let seq = *next_beat;
                        *next_beat += 1;
                        // Taken before the scripts are sent: they run after this instant.
                        let sent = Instant::now();
                        beat = Some(Beat {
                            seq,
                            sent,
                            round: Some(Box::pin(send_round(
                                commands.clone(),
                                order.clone(),
                                beats.clone(),
                                seq,
                            ))),
                            checked: false,
                            back: vec![false; order.len()],
                        });
                    }
                }
            }
        }
    }
}

/// Runs `heartbeat.lua` with `seq` on every master at once; the answers in `order`'s order.
async fn send_round(
    commands: Vec<MultiplexedConnection>,
    order: Vec<String>,
    beats: String,
    seq: u64,
) -> redis::RedisResult<Vec<Answer>> {
    let calls = commands.into_iter().zip(&order).map(|(mut conn, addr)| {
        let beats = &beats;
        async move { ask(&mut conn, addr, beats, seq).await }
    });
    futures_util::future::try_join_all(calls).await
}

/// Runs `heartbeat.lua` on the node at `addr`.
async fn ask(
    conn: &mut MultiplexedConnection,
    addr: &str,
    beats: &str,
    seq: u64,
) -> redis::RedisResult<Answer> {
    // `EVALSHA` first: hashing the script's text on every round costs the server more than
    // running it.
    static HASH: std::sync::LazyLock<String> =
        std::sync::LazyLock::new(|| redis::Script::new(HEARTBEAT).get_hash().to_owned());
    let call = |command: &str, script: &str| {
        let mut cmd = redis::cmd(command);
        cmd.arg(script).arg(0).arg(beats).arg(seq);
        cmd
    };
    let answer: redis::RedisResult<(i64, String, String)> =
        call("EVALSHA", &HASH).query_async(conn).await;
    let (subscribers, replid, masters) = match answer {
        Err(e) if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) => {
            call("EVAL", HEARTBEAT).query_async(conn).await?
        }
        other => other?,
    };
    // A node that does not know its own IP yet names itself `:port`.
    let host = addr.rsplit_once(':').map_or("", |(host, _)| host);
    let masters = masters
        .split_whitespace()
        .map(|m| match m.rsplit_once(':') {
            // Not `::1:port` (IPv6): only an empty host.
            Some(("", port)) => format!("{host}:{port}"),
            _ => m.to_owned(),
        })
        .collect();
    Ok(Answer {
        subscribers,
        replid,
        masters,
    })
}

/// Why a round's answers (in `order`'s order) do not confirm the masters subscribed to
/// (`masters`), with the replication ids of `topology` (none yet in the first round).
fn differs(
    order: &[String],
    masters: &BTreeSet<String>,
    topology: Option<&BTreeMap<String, String>>,
    answers: &[Answer],
) -> Option<String> {
    if answers.len() != order.len() {
        return Some("a round answered for another number of masters".into());
    }
    for (addr, answer) in order.iter().zip(answers) {
        if answer.subscribers < 0 {
            return Some(format!("{addr} is no longer a master"));
        }
        if topology.is_some_and(|t| t.get(addr) != Some(&answer.replid)) {
            return Some(format!("{addr} was promoted or restarted"));
        }
        // No subscriber of this tier's channel on that node: the subscription there is gone
        // (or the address leads to another server now).
        if answer.subscribers == 0 {
            return Some(format!("the heartbeat on {addr} reached no subscriber"));
        }
        if answer.masters != *masters {
            return Some(format!(
                "{addr} knows other masters: {:?}, subscribed to {masters:?}",
                answer.masters
            ));
        }
    }
    None
}

/// Records one message received on connection `i`; a heartbeat of the current round marks
/// that connection's part. Whether the round is now confirmed.
fn record(
    near: &super::Near,
    beats: &str,
    beat: &mut Option<Beat>,
    i: usize,
    message: &redis::Msg,
) -> bool {
    if message.get_channel_name() != beats {
        near.received(message.get_payload_bytes());
        return false;
    }
    let seq = std::str::from_utf8(message.get_payload_bytes())
        .ok()
        .and_then(|s| s.parse::<u64>().ok());
    if let Some(b) = beat.as_mut()
        && Some(b.seq) == seq
        && let Some(back) = b.back.get_mut(i)
    {
        *back = true;
    }
    complete(near, beat)
}

/// Confirms the round when its reply checked out and every connection delivered it.
fn complete(near: &super::Near, beat: &mut Option<Beat>) -> bool {
    match beat {
        Some(b) if b.checked && b.back.iter().all(|&back| back) => {
            near.confirm(b.sent);
            *beat = None;
            true
        }
        _ => false,
    }
}

/// A client for the node at `addr` (`host:port`), with the seed's settings (credentials, TLS).
fn node_client(seed: &redis::Client, addr: &str) -> redis::RedisResult<redis::Client> {
    let bad = || {
        redis::RedisError::from((
            redis::ErrorKind::Client,
            "a cluster node address that is not host:port",
            addr.to_owned(),
        ))
    };
    let (host, port) = addr.rsplit_once(':').ok_or_else(bad)?;
    let port: u16 = port.parse().map_err(|_| bad())?;
    let host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let info = seed.get_connection_info().clone();
    let node = match info.addr().clone() {
        redis::ConnectionAddr::TcpTls {
            insecure,
            tls_params,
            ..
        } => redis::ConnectionAddr::TcpTls {
            host,
            port,
            insecure,
            tls_params,
        },
        _ => redis::ConnectionAddr::Tcp(host, port),
    };
    redis::Client::open(info.set_addr(node))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(subscribers: i64, replid: &str, masters: &[&str]) -> Answer {
        Answer {
            subscribers,
            replid: replid.into(),
            masters: masters.iter().map(|m| (*m).to_owned()).collect(),
        }
    }

    #[test]
    fn a_round_confirms_only_the_masters_subscribed_to_unchanged() {
        let order = vec!["a:1".to_owned(), "b:2".to_owned()];
        let masters: BTreeSet<String> = order.iter().cloned().collect();
        let topology: BTreeMap<String, String> = [("a:1", "x"), ("b:2", "y")]
            .into_iter()
            .map(|(a, r)| (a.to_owned(), r.to_owned()))
            .collect();
        let both = ["a:1", "b:2"];
        let check = |answers: &[Answer]| differs(&order, &masters, Some(&topology), answers);
        assert_eq!(check(&[answer(1, "x", &both), answer(2, "y", &both)]), None);
        for (answers, why) in [
            (vec![answer(1, "x", &both)], "an answer missing"),
            (
                vec![
                    answer(1, "x", &both),
                    answer(1, "y", &["a:1", "b:2", "c:3"]),
                ],
                "a master added",
            ),
            (
                vec![answer(1, "x", &both), answer(1, "y", &["a:1"])],
                "a master gone",
            ),
            (
                vec![answer(1, "x", &both), answer(1, "w", &both)],
                "promoted or restarted",
            ),
            (
                vec![answer(1, "x", &both), answer(-1, "", &both)],
                "demoted",
            ),
            (
                vec![answer(1, "x", &both), answer(0, "y", &both)],
                "no subscriber there",
            ),
        ] {
            assert!(check(&answers).is_some(), "{why}");
        }
    }

    #[test]
    fn a_round_is_confirmed_only_once_checked_and_back_on_every_connection() {
        let near =
            super::super::Near::new(crate::backend::redis::NearConfig::new(1 << 20), "c".into());
        let sent = Instant::now();
        let mut beat = Some(Beat {
            seq: 7,
            sent,
            round: None,
            checked: false,
            back: vec![false, false],
        });
        let msg = |seq: &str| {
            redis::Msg::from_owned_value(redis::Value::Array(vec![
                redis::Value::BulkString(b"message".to_vec()),
                redis::Value::BulkString(b"c:beat".to_vec()),
                redis::Value::BulkString(seq.as_bytes().to_vec()),
            ]))
            .unwrap()
        };
        assert!(!record(&near, "c:beat", &mut beat, 0, &msg("7")));
        assert!(
            !record(&near, "c:beat", &mut beat, 1, &msg("6")),
            "another round"
        );
        assert!(
            !record(&near, "c:beat", &mut beat, 1, &msg("7")),
            "answers not checked"
        );
        assert!(!near.is_live());
        beat.as_mut().unwrap().checked = true;
        assert!(complete(&near, &mut beat));
        assert!(near.is_live() && beat.is_none());
    }
}
