//! Waiting on an outbox relay: until its outbox drains, until the invalidations of a write
//! have arrived. Bounded by deadlines (a failure, never a hang), polled, never timed.

use std::time::{Duration, Instant};

use matroska::Cache;
use matroska::seaorm::outbox::RelayHandle;
use sea_orm::{ConnectionTrait, DatabaseConnection, DbBackend, Statement};

/// Waits (at most 20 s) until the relay's outbox is empty.
pub async fn wait_idle(relay: &RelayHandle) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while relay.relay().depth().await.unwrap().rows > 0 {
        assert!(Instant::now() < deadline, "the outbox did not drain");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Waits until every key of `gone` is dropped (bounded), then until the outbox is empty, then
/// checks every key of `kept` is still cached and nothing went to the dead letters.
pub async fn expect(cache: &Cache, relay: &RelayHandle, gone: &[&str], kept: &[&str]) {
    let deadline = Instant::now() + Duration::from_secs(20);
    for key in gone {
        while cache.has(key).await.unwrap() {
            assert!(
                Instant::now() < deadline,
                "{key} was not invalidated (outbox: {:?}, relay: {:?})",
                relay.relay().depth().await,
                relay.relay().stats()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    wait_idle(relay).await;
    for key in kept {
        assert!(
            cache.has(key).await.unwrap(),
            "{key} was invalidated by a write that does not affect it"
        );
    }
    let dead = relay.relay().dead_letters().await.unwrap();
    assert!(dead.is_empty(), "dead letters: {dead:?}");
}

/// One number from the outbox table (`MIN`/`MAX` of its ids, cast to a 64-bit integer).
async fn outbox_edge(db: &DatabaseConnection, edge: &str, empty: i64) -> i64 {
    let int = if db.get_database_backend() == DbBackend::MySql {
        "SIGNED"
    } else {
        "BIGINT"
    };
    let sql = format!("SELECT CAST(COALESCE({edge}(id), {empty}) AS {int}) FROM matroska_outbox");
    db.query_one_raw(Statement::from_string(db.get_database_backend(), sql))
        .await
        .unwrap()
        .unwrap()
        .try_get_by_index::<i64>(0)
        .unwrap()
}

/// Waits (at most 30 s) until a relay has delivered every outbox row written up to now (the
/// outbox holds no row up to the highest id at the call): a write committed before the call
/// is then invalidated. Whichever relay delivers it; none running is a failure at the deadline.
pub async fn delivered(db: &DatabaseConnection) {
    let written = outbox_edge(db, "MAX", 0).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while outbox_edge(db, "MIN", i64::MAX).await <= written {
        assert!(Instant::now() < deadline, "the relay did not deliver");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Waits (at most 30 s) until every outbox row written up to now has reached `consumer`'s
/// cache: none up to the highest id at the call is still unmarked by it, and it is registered
/// and ready (flushed). With several consumers a row stays until all of them marked it, so
/// [`delivered`] would wait for the slowest (or an abandoned one, until it expires); and a row
/// swept while `consumer` was not registered reached its cache only through the flush of its
/// next registration, which "ready", read after the rows, vouches for (a sweep while it is
/// registered needs its mark).
pub async fn delivered_to(db: &DatabaseConnection, consumer: &str) {
    let written = outbox_edge(db, "MAX", 0).await;
    let name = consumer.replace('\'', "''");
    let backend = db.get_database_backend();
    let int = if backend == DbBackend::MySql {
        "SIGNED"
    } else {
        "BIGINT"
    };
    let pending = format!(
        "SELECT CAST(COALESCE(MIN(o.id), {}) AS {int}) FROM matroska_outbox o WHERE NOT EXISTS \
         (SELECT 1 FROM matroska_outbox_done d WHERE d.consumer = '{name}' AND d.id = o.id)",
        i64::MAX
    );
    let ready = format!(
        "SELECT CAST(COUNT(*) AS {int}) FROM matroska_outbox_consumers \
         WHERE name = '{name}' AND ready <> 0"
    );
    let one = |sql: String| async move {
        db.query_one_raw(Statement::from_string(backend, sql))
            .await
            .unwrap()
            .unwrap()
            .try_get_by_index::<i64>(0)
            .unwrap()
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if one(pending.clone()).await > written && one(ready.clone()).await > 0 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the relay of {consumer} did not deliver"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
