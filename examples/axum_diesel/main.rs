//! A web app with matroska and sync Diesel: axum, an r2d2 pool through `CachePool`, cached
//! reads that hit without a connection checkout, the outbox relay, read-your-writes.
//!
//! ```sh
//! cargo run -p matroska-tests --example axum_diesel     # SQLite, a file in the temp dir
//! DATABASE_URL=postgres://postgres@127.0.0.1:5432/test cargo run -p matroska-tests --example axum_diesel
//! ```
//!
//! (In your own app: `matroska = { version = "0.1", features = ["diesel-postgres",
//! "diesel-r2d2"] }`, or `diesel-sqlite`.) Then (`ADDR`, default `127.0.0.1:3000`):
//!
//! ```sh
//! curl -s localhost:3000/posts -H 'content-type: application/json' -d '{"title": "Hello", "published": true}'
//! curl -s localhost:3000/posts                            # a miss, then hits
//! curl -s -X PATCH localhost:3000/posts/1 -H 'content-type: application/json' -d '{"published": false}'
//! curl -s localhost:3000/posts/drafts                     # the post moved lists
//! psql test -c 'UPDATE posts SET published = true'        # any writer: the relay invalidates
//! ```
//!
//! `RUST_LOG` sets the log filter (default `info`). With `AXUM_EXAMPLE_EXIT=1` it shuts down
//! right after start-up (CI runs it that way).

use std::error::Error;

use matroska::Cache;
use tokio::net::TcpListener;
use tracing_subscriber::EnvFilter;

/// The app on SQLite.
mod sqlite {
    pub type Conn = diesel::SqliteConnection;
    const CREATE_POSTS: &str = "CREATE TABLE IF NOT EXISTS posts \
        (id INTEGER PRIMARY KEY, title TEXT NOT NULL, published BOOLEAN NOT NULL)";
    const ON_CONNECT: &str = "PRAGMA busy_timeout = 5000";
    include!("app.rs");
}

/// The same app on PostgreSQL.
mod postgres {
    pub type Conn = diesel::PgConnection;
    const CREATE_POSTS: &str = "CREATE TABLE IF NOT EXISTS posts \
        (id SERIAL PRIMARY KEY, title TEXT NOT NULL, published BOOLEAN NOT NULL)";
    const ON_CONNECT: &str = "SET application_name = 'axum_diesel'";
    include!("app.rs");
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .init();

    let cache = Cache::memory();
    let (router, relay) = match std::env::var("DATABASE_URL") {
        Ok(url) => {
            let pool = postgres::pool(&url, 8)?;
            postgres::migrate(&pool)?;
            let relay = postgres::relay(&url, cache.clone()).await?;
            (postgres::router(postgres::AppState { pool, cache }), relay)
        }
        Err(_) => {
            // A file: the relay's own pool reaches it too.
            let path = std::env::temp_dir().join("matroska-axum-diesel.db");
            let pool = sqlite::pool(&path.display().to_string(), 8)?;
            sqlite::migrate(&pool)?;
            let url = format!("sqlite://{}", path.display());
            let relay = sqlite::relay(&url, cache.clone()).await?;
            (sqlite::router(sqlite::AppState { pool, cache }), relay)
        }
    };

    let addr = std::env::var("ADDR").unwrap_or_else(|_| "127.0.0.1:3000".into());
    let listener = TcpListener::bind(&addr).await?;
    tracing::info!(addr = %listener.local_addr()?, "listening");
    axum::serve(listener, router)
        .with_graceful_shutdown(async {
            if std::env::var_os("AXUM_EXAMPLE_EXIT").is_some_and(|v| v == "1") {
                tracing::info!("AXUM_EXAMPLE_EXIT=1: shutting down after start-up");
            } else if let Err(e) = tokio::signal::ctrl_c().await {
                tracing::error!(error = %e, "cannot listen for Ctrl-C");
                std::future::pending::<()>().await;
            }
        })
        .await?;
    relay.shutdown().await;
    Ok(())
}
