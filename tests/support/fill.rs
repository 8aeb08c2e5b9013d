//! Scenarios of `get_or_load`'s fill protocol, run on each backend.

use std::sync::Arc;
use std::time::Duration;

use matroska::backend::Backend;
use matroska::{Cache, Dependency};

use super::faults::Faulty;

/// Issue 15a. This process's leader of a flight waits on another process's fill lease and
/// reads that process's value ("old"); before the reply reaches it, the row changes and its
/// invalidation returns; then a caller of this process starts, misses and joins the flight.
/// That caller started after the invalidation returned, so it must not receive "old" (read
/// before the invalidation) but load "new" itself. Steps are ordered by the backend's gates and
/// counters, not by sleeps; run it on a current-thread runtime, where a spawned caller whose
/// read was answered has joined the flight before the test runs again (no await between
/// the two).
pub async fn late_follower_never_gets_the_lease_holders_pre_invalidation_value(
    inner: impl Backend + Clone,
) {
    let faulty = Arc::new(Faulty::new(inner.clone()));
    let here = Cache::builder_arc(faulty.clone())
        .fill_lease(Duration::from_secs(60))
        .build()
        .unwrap();
    // Another process: it fills the key under the lease it holds.
    let there = Cache::builder(inner).build().unwrap();
    let row = Dependency::id("article", 1);
    faulty.hold_leases_elsewhere(true);
    faulty.close_hits();

    let leader = tokio::spawn({
        let (here, row) = (here.clone(), row.clone());
        async move {
            here.get_or_load("k", None, || async move {
                Ok::<_, std::io::Error>(("loaded by the leader".to_string(), vec![row]))
            })
            .await
        }
    });
    // The leader missed and found the lease held: it polls for the holder's value.
    faulty.lease_asks_after(0).await;
    let stored: String = there
        .get_or_load("k", None, || async {
            Ok::<_, std::io::Error>(("old".to_string(), vec![row.clone()]))
        })
        .await
        .unwrap();
    assert_eq!(stored, "old");
    // The leader's poll read "old"; its reply is held.
    faulty.hits_stopped_after(0).await;
    // The row changes; its invalidation returns.
    here.invalidate(std::slice::from_ref(&row)).await.unwrap();
    // A caller starts after that, misses, and joins the leader's flight.
    let answered = faulty.gets_answered();
    let follower = tokio::spawn({
        let (here, row) = (here.clone(), row.clone());
        async move {
            here.get_or_load("k", None, || async move {
                Ok::<_, std::io::Error>(("new".to_string(), vec![row]))
            })
            .await
        }
    });
    faulty.gets_answered_after(answered).await;
    // The leader's reply arrives.
    faulty.open_hits();
    let led = tokio::time::timeout(Duration::from_secs(30), leader)
        .await
        .expect("the leader finishes")
        .unwrap()
        .unwrap();
    // Its caller started before the invalidation: the old value is fine for it, and shows the
    // leader got the holder's value rather than loading.
    assert_eq!(led, "old");
    // The other process is done: a caller here may take the lease now.
    faulty.hold_leases_elsewhere(false);
    let followed = tokio::time::timeout(Duration::from_secs(30), follower)
        .await
        .expect("the follower finishes")
        .unwrap()
        .unwrap();
    assert_eq!(
        followed, "new",
        "a caller that started after the invalidation returned got a value read before it"
    );
}
