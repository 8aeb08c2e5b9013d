//! Interleavings of the Redis stamp protocol (issue 16), run on one server
//! (`tests/redis_backend.rs`) and on a private cluster (`tests/redis_cluster.rs`): each drives
//! the public `Backend` operations in a fixed order and loses stamp keys with a raw client on
//! the server that holds them. The same protocol is model-checked exhaustively in
//! `matroska-core/src/backend/redis/model.rs`.

use std::time::{Duration, Instant};

use matroska::Dependency;
use matroska::backend::redis::RedisBackend;
use matroska::backend::{Backend, PutOutcome, PutRequest, Ticket};

/// How the invalidation's stamp is lost.
#[derive(Debug, Clone, Copy)]
pub enum Loss {
    /// Deleted, as an eviction does (under `volatile-ttl` invalidation stamps go first).
    Evicted,
    /// Expired: the load outlasted the stale window (the backend's must be short).
    Expired,
}

fn value(v: i64) -> bytes::Bytes {
    bytes::Bytes::from(matroska::Codec::Json.encode("k", &v, 0).expect("encodes"))
}

async fn put(b: &RedisBackend, key: &str, v: i64, deps: &[String], t: Ticket) -> PutOutcome {
    b.put(PutRequest::new(key, value(v), deps, Duration::from_secs(60)).guarded_by(Some(t)))
        .await
        .expect("put")
}

/// A connection to the server at `url` (the one holding the key in question).
fn raw(url: &str) -> redis::Connection {
    redis::Client::open(url)
        .and_then(|c| c.get_connection())
        .expect("a raw connection")
}

/// Issue 16, item 1: a loader takes its ticket and reads version 1; a writer commits version
/// 2 and invalidates; the invalidation's stamp is lost; another fill, whose ticket follows
/// the invalidation, re-creates the stamp and stores. The first loader's put must be
/// refused: the re-created stamp carries the clock's count, above the old ticket.
///
/// `node_of` gives the URL of the server that holds a key.
pub async fn lost_stamp_recreated_by_another_fill(
    b: &RedisBackend,
    node_of: &dyn Fn(&str) -> String,
    loss: Loss,
) {
    // Two rows, so that with `invalidate_batch(1)` puts take the step-by-step protocol.
    let deps = vec![
        Dependency::id("row", 1).encode(),
        Dependency::id("row", 2).encode(),
    ];
    let stamp_key = b.stamp_key(&deps[0]);
    let old = b.ticket().await.expect("ticket");
    // The loader reads version 1 here; the writer commits version 2 of row 1 and invalidates.
    b.invalidate(&deps[..1]).await.expect("invalidate");
    let mut conn = raw(&node_of(&stamp_key));
    match loss {
        Loss::Evicted => {
            let removed: i64 = redis::cmd("DEL")
                .arg(&stamp_key)
                .query(&mut conn)
                .expect("DEL");
            assert_eq!(removed, 1, "the invalidation wrote no stamp at {stamp_key}");
        }
        Loss::Expired => {
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                let exists: i64 = redis::cmd("EXISTS")
                    .arg(&stamp_key)
                    .query(&mut conn)
                    .expect("EXISTS");
                if exists == 0 {
                    break;
                }
                assert!(Instant::now() < deadline, "the stamp never expired");
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
    // Another fill depending on that row, loaded after the write, re-creates the stamp.
    let fresh = b.ticket().await.expect("ticket");
    assert_eq!(put(b, "other", 2, &deps, fresh).await, PutOutcome::Stored);
    let exists: i64 = redis::cmd("EXISTS")
        .arg(&stamp_key)
        .query(&mut conn)
        .expect("EXISTS");
    assert_eq!(exists, 1, "the other fill did not re-create the stamp");
    // The first loader's guarded put of version 1.
    assert_eq!(
        put(b, "k", 1, &deps, old).await,
        PutOutcome::Stale,
        "version 1, loaded before the invalidation, was stored after it ({loss:?})"
    );
    assert_eq!(b.get("k").await.expect("get"), None);
    // Nothing is wedged: a load after the write stores, and both entries read.
    let fresh = b.ticket().await.expect("ticket");
    assert_eq!(put(b, "k", 2, &deps, fresh).await, PutOutcome::Stored);
    assert!(b.get("k").await.expect("get").is_some());
    assert!(b.get("other").await.expect("get").is_some());
}

/// Issue 16, item 5 (cluster): a bulk invalidation takes clock value k; a loader takes its
/// ticket (k); a single-row invalidation takes k+1, writes its stamp and returns; the bulk
/// invalidation's stamp for the same row lands after it. The loader's put must be refused:
/// the stamp must not go back to k.
pub async fn reordered_invalidations_never_move_a_stamp_backwards(b: &RedisBackend) {
    let deps = vec![Dependency::id("row", 1).encode()];
    let bulk = b.spread_bump_clock().await.expect("bump");
    let ticket = b.ticket().await.expect("ticket");
    b.invalidate(&deps).await.expect("invalidate");
    b.spread_write_stamps(&deps, &bulk)
        .await
        .expect("the bulk invalidation's stamps");
    assert_eq!(
        put(b, "k", 1, &deps, ticket).await,
        PutOutcome::Stale,
        "a value loaded before an invalidation that returned was stored"
    );
    assert_eq!(b.get("k").await.expect("get"), None);
}
