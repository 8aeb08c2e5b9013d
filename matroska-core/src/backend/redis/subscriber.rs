//! The near cache's subscriber: one dedicated connection subscribed to `{P}:n`, recording
//! every invalidation it receives in the tier and confirming delivery with pings.
//!
//! Its own connection, not the backend's multiplexed one: a subscribed connection takes no
//! other commands, and a ping's reply proves the messages before it were delivered only on the
//! connection that received them. The reply to a `PING` sent at `s` comes after every message
//! published before `s` (the server writes both to the same socket, in order), and redis-rs
//! queues those messages before completing the ping: so once the reply is in, the queued
//! messages are recorded and only then is `s` confirmed ([`Near::confirm`]).
//!
//! On any failure (a refused or killed connection, a ping unanswered for longer than the
//! backend's time-out) it marks the tier disconnected (nothing is served), reconnects with a
//! back-off, and after subscribing again empties the tier: messages sent meanwhile are lost.

use std::sync::Weak;
use std::time::{Duration, Instant};

use futures_util::{FutureExt as _, StreamExt as _};
use redis::aio::PubSubStream;

use super::near::Near;

/// Runs until the tier (its backend) is dropped. Holds the tier only weakly, and strongly
/// only for a moment at a time, so that dropping the backend ends it.
pub(super) async fn run(near: Weak<Near>, client: redis::Client, timeout: Duration) {
    let mut pause = Duration::from_millis(20);
    loop {
        let ended = session(&near, &client, timeout).await;
        let Some(live) = near.upgrade() else { return };
        live.disconnected();
        drop(live);
        match ended {
            Ended::Dropped => return,
            Ended::Moved => {
                tracing::debug!("the data connection was verified anew; resubscribing");
                continue;
            }
            Ended::Failed(why) => {
                tracing::warn!(error = %why, retry_in = ?pause, "near-cache subscription lost; near tier off");
            }
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_secs(1));
    }
}

enum Ended {
    /// The backend is gone.
    Dropped,
    /// The backend verified a new data connection: subscribe again, where it now leads.
    Moved,
    Failed(String),
}

type Ping =
    std::pin::Pin<Box<dyn Future<Output = redis::RedisResult<redis::Value>> + Send + 'static>>;

/// One subscription, from connecting until it fails.
async fn session(weak: &Weak<Near>, client: &redis::Client, timeout: Duration) -> Ended {
    let Some((channel, every, mut stall, mut moved)) = weak.upgrade().map(|near| {
        (
            near.channel.clone(),
            near.config.max_lag / 4,
            near.hooks.stall.subscribe(),
            // Marked seen before connecting: a verification from here on moves this session.
            near.resubscribe.subscribe(),
        )
    }) else {
        return Ended::Dropped;
    };
    let connect = async {
        let pubsub = client.get_async_pubsub().await?;
        let (mut sink, stream) = pubsub.split();
        sink.subscribe(&channel).await?;
        Ok::<_, redis::RedisError>((sink, stream))
    };
    let (sink, mut stream) = match tokio::time::timeout(timeout, connect).await {
        Ok(Ok(pair)) => pair,
        Ok(Err(e)) => return Ended::Failed(e.to_string()),
        Err(_) => return Ended::Failed("subscribing timed out".into()),
    };
    // Subscribed: anything invalidated before now reached Redis before any read that starts
    // from here on, and what was filled before may have missed messages.
    let Some(near) = weak.upgrade() else {
        return Ended::Dropped;
    };
    near.restart();
    drop(near);
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut ping: Option<(Instant, Ping)> = None;
    // Test hook: while stalled, messages are held (not recorded) and pings not confirmed, as
    // in a process that does not run.
    let mut held: Vec<redis::Msg> = Vec::new();
    loop {
        tokio::select! {
            biased;
            changed = stall.changed() => {
                if changed.is_err() {
                    return Ended::Dropped;
                }
                if !*stall.borrow_and_update() {
                    let Some(near) = weak.upgrade() else { return Ended::Dropped };
                    for message in held.drain(..) {
                        near.received(message.get_payload_bytes());
                    }
                }
            }
            changed = moved.changed() => {
                if changed.is_err() {
                    return Ended::Dropped;
                }
                return Ended::Moved;
            }
            message = stream.next() => {
                let Some(message) = message else {
                    if *stall.borrow() && stall.wait_for(|s| !*s).await.is_err() {
                        return Ended::Dropped;
                    }
                    if let Some(near) = weak.upgrade() {
                        for message in held.drain(..) {
                            near.received(message.get_payload_bytes());
                        }
                    }
                    return Ended::Failed("the subscribed connection closed".into());
                };
                if *stall.borrow() {
                    held.push(message);
                    continue;
                }
                let Some(near) = weak.upgrade() else { return Ended::Dropped };
                near.received(message.get_payload_bytes());
            }
            answer = async {
                match ping.as_mut() {
                    Some((sent, fut)) => (*sent, fut.await),
                    None => std::future::pending().await,
                }
            } => {
                let (sent, answer) = answer;
                ping = None;
                if let Err(e) = answer {
                    return Ended::Failed(e.to_string());
                }
                if *stall.borrow() {
                    continue;
                }
                let Some(near) = weak.upgrade() else { return Ended::Dropped };
                drain(&near, &mut stream);
                near.confirm(sent);
            }
            _ = tick.tick() => {
                if weak.strong_count() == 0 {
                    return Ended::Dropped;
                }
                match &ping {
                    Some((sent, _)) if sent.elapsed() > timeout => {
                        return Ended::Failed("a ping went unanswered".into());
                    }
                    Some(_) => {}
                    None => {
                        let mut sink = sink.clone();
                        let sent = Instant::now();
                        ping = Some((sent, Box::pin(async move { sink.ping().await })));
                    }
                }
            }
        }
    }
}

/// Records every message already queued: those that arrived before the ping's reply.
fn drain(near: &Near, stream: &mut PubSubStream) {
    while let Some(Some(message)) = stream.next().now_or_never() {
        near.received(message.get_payload_bytes());
    }
}
