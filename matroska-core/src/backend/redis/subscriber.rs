//! The near cache's subscriber: one dedicated connection subscribed to `{P}:n` (every
//! process's invalidations) and to this tier's own heartbeat channel `{P}:n:<nonce>`,
//! recording every invalidation it receives in the tier and confirming delivery with
//! heartbeats sent through the data path.
//!
//! Its own connection, not the backend's multiplexed one: a subscribed connection takes no
//! other commands. The heartbeat goes the other way round: every `max_lag / 4` the subscriber
//! `PUBLISH`es a sequence number on its heartbeat channel *through the backend's data
//! connection* (the one reads and invalidations use, which reconnects to wherever the address
//! now leads), and waits for it on the subscribed connection. One server delivers a
//! subscriber's messages in the order it ran their `PUBLISH`es, and this task records them in
//! the order they arrive: so when heartbeat `n`, sent at `s`, comes back, every message that
//! server published before it — every invalidation that returned before `s` on the server the
//! data connection reaches — is recorded, and only then is `s` confirmed
//! ([`Near::confirm`]). A subscription left on a server the data no longer goes to (a failover
//! behind one address) hears no heartbeat: the `PUBLISH` counts no receiver there.
//!
//! On any failure (a refused or killed connection, a heartbeat that reached no subscriber or
//! did not come back within the backend's time-out) it marks the tier disconnected (nothing is
//! served), reconnects with a back-off, and after subscribing again empties the tier: messages
//! sent meanwhile are lost. A heartbeat whose `PUBLISH` fails (Redis down, the fast-fail
//! tripped, an ACL refusal) confirms nothing, so the tier serves nothing until one succeeds;
//! the subscription itself heard everything meanwhile, so it is kept.

use std::sync::Weak;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use futures_util::StreamExt as _;

use super::near::Near;
use super::{Inner, RedisBackend};
use crate::error::Error;

#[cfg(feature = "cluster")]
#[path = "subscriber_cluster.rs"]
pub(super) mod cluster;

/// Runs until the backend is dropped. Holds it only weakly, and strongly only for a moment at
/// a time (a heartbeat in flight: at most the time-out), so that dropping the backend ends it.
pub(super) async fn run(inner: Weak<Inner>, target: Target, timeout: Duration) {
    const FIRST_PAUSE: Duration = Duration::from_millis(20);
    let mut pause = FIRST_PAUSE;
    // Heartbeat numbers never repeat across sessions: a late heartbeat of an earlier session
    // confirms nothing in this one.
    let mut next_beat = 0u64;
    // On a cluster: the masters of the last session, asked first for the current ones.
    #[cfg(feature = "cluster")]
    let mut known = Vec::new();
    loop {
        let (ended, confirmed) = match &target {
            Target::Single(client) => session(&inner, client, timeout, &mut next_beat).await,
            #[cfg(feature = "cluster")]
            Target::Cluster(target) => {
                cluster::session(&inner, target, &mut known, timeout, &mut next_beat).await
            }
        };
        let Some(near) = near_of(&inner) else { return };
        near.disconnected();
        drop(near);
        match ended {
            Ended::Dropped => return,
            Ended::Failed(why) => {
                tracing::warn!(error = %why, retry_in = ?pause, "near-cache subscription lost; near tier off");
            }
            // Warned once already (`refused`): an ACL does not change by itself.
            Ended::Refused(why) => {
                tracing::debug!(error = %why, retry_in = ?pause, "near-cache subscription refused");
            }
        }
        tokio::time::sleep(pause).await;
        // A session that was live resets the back-off: the next failure is a new one.
        pause = if confirmed {
            FIRST_PAUSE
        } else {
            (pause * 2).min(Duration::from_secs(1))
        };
    }
}

/// Where the subscriber subscribes.
pub(super) enum Target {
    /// The server the backend's URL leads to.
    Single(redis::Client),
    /// Every master of a cluster, each on its own connections (`subscriber_cluster.rs`).
    #[cfg(feature = "cluster")]
    Cluster(cluster::ClusterTarget),
}

enum Ended {
    /// The backend is gone.
    Dropped,
    Failed(String),
    /// An ACL refused the subscription.
    Refused(String),
}

fn near_of(inner: &Weak<Inner>) -> Option<std::sync::Arc<Near>> {
    inner.upgrade()?.near.clone()
}

type Publish = std::pin::Pin<Box<dyn Future<Output = crate::Result<i64>> + Send + 'static>>;

/// The heartbeat of a session not yet back.
struct Beat {
    seq: u64,
    sent: Instant,
    /// Its `PUBLISH`, until it answers.
    publish: Option<Publish>,
}

/// One subscription, from connecting until it fails; and whether a heartbeat was confirmed.
async fn session(
    weak: &Weak<Inner>,
    client: &redis::Client,
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
    let connect = async {
        let pubsub = client.get_async_pubsub().await?;
        let (mut sink, stream) = pubsub.split();
        // One command, both confirmations awaited: subscribed to both before any heartbeat.
        sink.subscribe(&[&channel, &beats]).await?;
        Ok::<_, redis::RedisError>((sink, stream))
    };
    // The sink is kept (not used) for as long as the session: dropping it may close the
    // connection.
    let (_sink, mut stream) = match tokio::time::timeout(timeout, connect).await {
        Ok(Ok(pair)) => pair,
        Ok(Err(e)) => {
            if e.code() == Some("NOPERM") {
                refused(&channel, &e.to_string());
                return (Ended::Refused(e.to_string()), false);
            }
            return (Ended::Failed(e.to_string()), false);
        }
        Err(_) => return (Ended::Failed("subscribing timed out".into()), false),
    };
    // Subscribed: anything invalidated before now reached Redis before any read that starts
    // from here on, and what was filled before may have missed messages.
    let Some(near) = near_of(weak) else {
        return (Ended::Dropped, false);
    };
    near.restart();
    drop(near);
    let mut confirmed = false;
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut beat: Option<Beat> = None;
    // Test hook: while stalled, messages are held (not recorded), heartbeats neither sent nor
    // confirmed, as in a process that does not run.
    let mut held: Vec<redis::Msg> = Vec::new();
    loop {
        tokio::select! {
            biased;
            changed = stall.changed() => {
                if changed.is_err() {
                    return (Ended::Dropped, confirmed);
                }
                if !*stall.borrow_and_update() {
                    let Some(near) = near_of(weak) else { return (Ended::Dropped, confirmed) };
                    for message in held.drain(..) {
                        confirmed |= record(&near, &beats, &mut beat, &message);
                    }
                }
            }
            message = stream.next() => {
                let Some(message) = message else {
                    if *stall.borrow() && stall.wait_for(|s| !*s).await.is_err() {
                        return (Ended::Dropped, confirmed);
                    }
                    if let Some(near) = near_of(weak) {
                        for message in held.drain(..) {
                            confirmed |= record(&near, &beats, &mut beat, &message);
                        }
                    }
                    return (Ended::Failed("the subscribed connection closed".into()), confirmed);
                };
                if *stall.borrow() {
                    held.push(message);
                    continue;
                }
                let Some(near) = near_of(weak) else { return (Ended::Dropped, confirmed) };
                confirmed |= record(&near, &beats, &mut beat, &message);
            }
            published = async {
                match beat.as_mut().and_then(|b| b.publish.as_mut()) {
                    Some(publish) => publish.await,
                    None => std::future::pending().await,
                }
            } => {
                if let Some(b) = beat.as_mut() {
                    b.publish = None;
                }
                match published {
                    // No subscriber on the server the data connection reaches: this
                    // subscription is elsewhere (a failover behind one address), deaf to the
                    // writes; subscribe again, where the address now leads.
                    Ok(0) => {
                        return (
                            Ended::Failed(
                                "a heartbeat published through the data connection reached no \
                                 subscriber: the subscription is on another server (failover?)"
                                    .into(),
                            ),
                            confirmed,
                        );
                    }
                    Ok(_) => {}
                    Err(e) => {
                        // Not sent, refused or timed out: confirms nothing. A late delivery
                        // of it is ignored; the next tick sends another.
                        beat = None;
                        if is_refusal(&e) {
                            refused(&beats, &e.to_string());
                        } else {
                            tracing::debug!(error = %e, "near-cache heartbeat failed; near tier off until one succeeds");
                        }
                    }
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
                    // Published, counted, and not back within the time-out: the
                    // subscription is deaf (a half-open connection) or far behind.
                    Some(b) if b.publish.is_none() && b.sent.elapsed() > timeout => {
                        return (
                            Ended::Failed("a heartbeat did not come back".into()),
                            confirmed,
                        );
                    }
                    Some(_) => {}
                    None => {
                        let Some(inner) = weak.upgrade() else {
                            return (Ended::Dropped, confirmed);
                        };
                        let backend = RedisBackend { inner };
                        let seq = *next_beat;
                        *next_beat += 1;
                        // Taken before the `PUBLISH` is sent: it runs after this instant.
                        let sent = Instant::now();
                        let channel = beats.clone();
                        beat = Some(Beat {
                            seq,
                            sent,
                            publish: Some(Box::pin(async move {
                                backend.near_heartbeat(&channel, seq).await
                            })),
                        });
                    }
                }
            }
        }
    }
}

/// Records one message (in the order received); a heartbeat of this session confirms its send
/// time: every message before it was recorded, just before. Whether it confirmed.
fn record(near: &Near, beats: &str, beat: &mut Option<Beat>, message: &redis::Msg) -> bool {
    if message.get_channel_name() != beats {
        near.received(message.get_payload_bytes());
        return false;
    }
    let seq = std::str::from_utf8(message.get_payload_bytes())
        .ok()
        .and_then(|s| s.parse::<u64>().ok());
    match beat {
        Some(b) if Some(b.seq) == seq => {
            near.confirm(b.sent);
            *beat = None;
            true
        }
        _ => false,
    }
}

/// Whether Redis refused a command for lack of rights (an ACL user without `PUBLISH` or
/// without the channel).
fn is_refusal(e: &Error) -> bool {
    match e {
        Error::Backend {
            source: Some(source),
            ..
        } => source
            .downcast_ref::<redis::RedisError>()
            .is_some_and(|e| e.code() == Some("NOPERM")),
        _ => false,
    }
}

/// Warns (once per process) that an ACL refuses this near tier its channels or `PUBLISH`: it
/// then serves nothing (every read goes to Redis), rather than serve what it cannot vouch for.
fn refused(channel: &str, why: &str) {
    static WARNED: AtomicBool = AtomicBool::new(false);
    if !WARNED.swap(true, Ordering::Relaxed) {
        tracing::warn!(
            channel,
            error = why,
            "Redis refuses the near cache its channels (SUBSCRIBE, or the heartbeat PUBLISH \
             on the data connection): the near tier serves nothing. An ACL user needs \
             `&{{P}}:n*` and the `publish` and `subscribe` commands"
        );
    }
}
