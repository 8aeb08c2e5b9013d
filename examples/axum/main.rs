//! A web app with matroska: axum, SeaORM, cached reads, and every write invalidating.
//!
//! ```sh
//! cargo run -p matroska-tests --example axum              # SQLite in memory, in-process cache
//! DATABASE_URL=postgres://postgres@127.0.0.1:5432/test REDIS_URL=redis://127.0.0.1:6379 \
//!     cargo run -p matroska-tests --example axum
//! DATABASE_URL='sqlite://posts.db?mode=rwc' cargo run -p matroska-tests --example axum
//! ```
//!
//! (The example belongs to the `matroska-tests` package, which turns on every driver. In your
//! own app: `matroska = { version = "0.1", features = ["sqlx-postgres"] }`, or the
//! `sqlx-*` feature of your database.)
//!
//! Two instances on one database and one Redis, each with a near cache (in-process hits; an
//! invalidation in either drops the other's copies through Redis's broadcast):
//!
//! ```sh
//! export DATABASE_URL=postgres://postgres@127.0.0.1:5432/test REDIS_URL=redis://127.0.0.1:6379
//! NEAR_CACHE=1 ADDR=127.0.0.1:3000 cargo run -p matroska-tests --example axum &
//! NEAR_CACHE=1 ADDR=127.0.0.1:3001 cargo run -p matroska-tests --example axum
//! ```
//!
//! Then (`ADDR`, default `127.0.0.1:3000`):
//!
//! ```sh
//! curl -s localhost:3000/posts -H 'content-type: application/json' \
//!     -d '{"title": "Hello", "body": "First post", "published": true}'
//! curl -s 'localhost:3000/posts?page=1&per_page=10'       # a miss, then hits
//! curl -s -X PATCH localhost:3000/posts/1 -H 'content-type: application/json' -d '{"published": false}'
//! curl -s localhost:3000/posts/drafts                     # the post moved lists
//! curl -s -X POST localhost:3000/posts/unpublish-all      # a bulk write: the outbox invalidates
//! ```
//!
//! It creates the table `posts` (and the outbox's) if missing. `REDIS_PREFIX` (default
//! `axum-example`) names the database's entries in Redis: give each database its own.
//! `RUST_LOG` sets the log filter (default `info`). With `AXUM_EXAMPLE_EXIT=1` it shuts down
//! right after start-up (CI runs it that way).

mod app;
mod post;

use std::error::Error;

use matroska::Cache;
use matroska::backend::redis::{NearConfig, RedisBackend, RedisConfig};
use sea_orm::{ConnectOptions, Database};
use tokio::net::TcpListener;
use tracing_subscriber::EnvFilter;

use app::AppState;

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .init();

    // One pool for the handlers and the relay: an in-memory SQLite database is shared.
    let url = std::env::var("DATABASE_URL").unwrap_or_else(|_| "sqlite::memory:".into());
    let db = Database::connect(ConnectOptions::new(&url).sqlx_logging(false).to_owned()).await?;
    app::migrate(&db).await?;

    let cache = match std::env::var("REDIS_URL") {
        Ok(redis) => {
            // A prefix holds the entries of one database: every process serving it shares
            // them (and their invalidations). An in-memory database lives and dies with this
            // process, so its entries get a prefix of their own.
            let prefix = if url.contains(":memory:") {
                format!("axum-example-{}-{}", std::process::id(), unix_millis())
            } else {
                std::env::var("REDIS_PREFIX").unwrap_or_else(|_| "axum-example".into())
            };
            // `new`, not `connect`: the app starts while Redis is down (reads are misses, and
            // the backend connects in the background).
            let mut config = RedisConfig::new(redis, prefix);
            if std::env::var_os("NEAR_CACHE").is_some() {
                // Hits served in process, kept coherent across instances by Redis's
                // invalidation broadcast (64 MiB; a copy is checked at least every 200 ms).
                config = config.near_cache(NearConfig::new(64 << 20));
            }
            Cache::builder(RedisBackend::new(config)?).build()?
        }
        Err(_) => Cache::memory(),
    };
    let relay = app::relay(&db, cache.clone())?;

    let addr = std::env::var("ADDR").unwrap_or_else(|_| "127.0.0.1:3000".into());
    let listener = TcpListener::bind(&addr).await?;
    tracing::info!(addr = %listener.local_addr()?, "listening");
    axum::serve(listener, app::router(AppState { db, cache }))
        .with_graceful_shutdown(shutdown_signal())
        .await?;

    // In-flight requests are done: deliver what they wrote, then stop. Rows a stopped relay
    // leaves behind wait in the outbox for the next one, in this process or another.
    let relay_ = relay.relay().clone();
    relay.shutdown().await;
    let delivered = relay_.drain().await?;
    tracing::info!(delivered, "relay stopped");
    Ok(())
}

fn unix_millis() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis())
}

/// Ctrl-C or SIGTERM (or at once with `AXUM_EXAMPLE_EXIT=1`).
async fn shutdown_signal() {
    if std::env::var_os("AXUM_EXAMPLE_EXIT").is_some_and(|v| v == "1") {
        tracing::info!("AXUM_EXAMPLE_EXIT=1: shutting down after start-up");
        return;
    }
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut sigterm) => {
                sigterm.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = terminate => {}
    }
    tracing::info!("shutting down");
}
