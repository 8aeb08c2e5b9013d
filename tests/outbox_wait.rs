//! The process-wide read-your-writes waits (`wait_delivered`, `wait_delivered_blocking`): they
//! wait for every relay this process runs, so they get a test binary of their own (the other
//! outbox tests run relays of their own in parallel, some against a broken cache).
#![cfg(feature = "seaorm")]
#![allow(clippy::unwrap_used)]

mod seaorm_blog;
mod support;

use std::time::Duration;

use matroska::WatchedTable;
use matroska::seaorm::outbox;
use sea_orm::{ActiveModelTrait, ConnectionTrait, Set};

use seaorm_blog::{article, author, create_tables};
use support::db::{Kind, ScratchDb};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_relay_of_the_process_delivers_before_the_wait_returns() {
    let db = ScratchDb::new(Kind::Sqlite, "outbox_wait").await;
    create_tables(&db.conn).await;
    outbox::install(
        &db.conn,
        &[
            article::Model::watched_table(),
            author::Model::watched_table(),
        ],
    )
    .await
    .unwrap();
    // No relay yet: nothing to wait for.
    outbox::wait_delivered(Duration::from_secs(5))
        .await
        .unwrap();

    let cache = support::redis_cache("outbox_wait").await;
    let author = author::ActiveModel {
        name: Set("kolypto".into()),
        ..Default::default()
    }
    .insert(&db.conn)
    .await
    .unwrap();
    // Polls once an hour and is never poked: only the waits deliver what follows (but for
    // its first poll, which the first wait below settles).
    let relay = outbox::relay(&db.conn, cache.clone())
        .unwrap()
        .watch_type::<article::Model>()
        .watch_type::<author::Model>()
        .poll_interval(Duration::from_secs(3600))
        .build()
        .spawn();
    outbox::wait_delivered(Duration::from_secs(20))
        .await
        .unwrap();

    for (round, blocking) in [(0, false), (1, true)] {
        let key = format!("article-{round}");
        let id = 100 + round;
        cache
            .put(
                &key,
                &1,
                &[matroska::Dependency::primary_key("article", [id])],
                None,
            )
            .await
            .unwrap();
        let sql = format!(
            "INSERT INTO article (id, title, category, published, author_id) \
             VALUES ({id}, 't', 'fantasy', true, {})",
            author.id
        );
        db.conn.execute_unprepared(&sql).await.unwrap();
        if blocking {
            std::thread::spawn(|| outbox::wait_delivered_blocking(Duration::from_secs(20)))
                .join()
                .unwrap()
                .unwrap();
        } else {
            outbox::wait_delivered(Duration::from_secs(20))
                .await
                .unwrap();
        }
        assert!(
            !cache.has(&key).await.unwrap(),
            "round {round}: still cached"
        );
    }
    relay.shutdown().await;
}
