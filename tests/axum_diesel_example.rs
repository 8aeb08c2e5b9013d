//! `examples/axum_diesel` over HTTP: its router (sync Diesel on an r2d2 `CachePool`, the
//! pooled forms on blocking threads) on a real loopback listener, on SQLite and PostgreSQL.
//!
//! Every read follows the write it checks with the cache already holding the answer from
//! before the write: each API write waits for the relay (`wait_delivered_blocking`), so the
//! very next read is fresh; a write by another connection, which no handler waits for, within
//! a bounded poll.
#![cfg(all(feature = "diesel-postgres", feature = "diesel-r2d2"))]
#![allow(clippy::unwrap_used)]

mod support;

/// The app on SQLite, as `examples/axum_diesel/main.rs` builds it.
mod sqlite {
    pub type Conn = diesel::SqliteConnection;
    const CREATE_POSTS: &str = "CREATE TABLE IF NOT EXISTS posts \
        (id INTEGER PRIMARY KEY, title TEXT NOT NULL, published BOOLEAN NOT NULL)";
    const ON_CONNECT: &str = "PRAGMA busy_timeout = 5000";
    include!("../examples/axum_diesel/app.rs");
}

/// The same app on PostgreSQL.
mod postgres {
    pub type Conn = diesel::PgConnection;
    const CREATE_POSTS: &str = "CREATE TABLE IF NOT EXISTS posts \
        (id SERIAL PRIMARY KEY, title TEXT NOT NULL, published BOOLEAN NOT NULL)";
    const ON_CONNECT: &str = "SET application_name = 'axum_diesel'";
    include!("../examples/axum_diesel/app.rs");
}

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use diesel::connection::SimpleConnection;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode, header};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::net::{TcpListener, TcpStream};

use support::db::ScratchDb;

/// One HTTP/1.1 request on a fresh connection; the status and the JSON body (`null` if empty).
async fn call(
    addr: SocketAddr,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(connection);
    let body = body.map_or_else(Bytes::new, |b| Bytes::from(b.to_string()));
    let request = Request::builder()
        .method(method)
        .uri(path)
        .header(header::HOST, addr.to_string())
        .header(header::CONTENT_TYPE, "application/json")
        .body(Full::new(body))
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    let status = response.status();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    // An error answers text.
    let json = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
    (status, json)
}

/// The titles a list route answers.
async fn titles(addr: SocketAddr, path: &str) -> Vec<String> {
    let (status, body) = call(addr, Method::GET, path, None).await;
    assert_eq!(status, StatusCode::OK, "GET {path}: {body}");
    body.as_array()
        .unwrap()
        .iter()
        .map(|p| p["title"].as_str().unwrap().to_owned())
        .collect()
}

fn strings(titles: &[&str]) -> Vec<String> {
    titles.iter().map(|&t| t.to_owned()).collect()
}

/// Drives the router at `addr`; `raw_sql` writes through a connection of its own.
async fn drive(addr: SocketAddr, raw_sql: impl Fn(&str)) {
    assert_eq!(titles(addr, "/posts").await, Vec::<String>::new());
    assert_eq!(titles(addr, "/posts/drafts").await, Vec::<String>::new());

    // Create: each post is in its cached list at the very next read.
    let mut ids = Vec::new();
    let mut published = Vec::new();
    for (title, public) in [("a", true), ("b", true), ("c", false)] {
        let new = json!({ "title": title, "published": public });
        let (status, body) = call(addr, Method::POST, "/posts", Some(new)).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        ids.push(body["id"].as_i64().unwrap());
        if public {
            published.push(title);
        }
        assert_eq!(
            titles(addr, "/posts").await,
            strings(&published),
            "after {title}"
        );
    }
    assert_eq!(titles(addr, "/posts/drafts").await, strings(&["c"]));
    let b = format!("/posts/{}", ids[1]);
    assert_eq!(call(addr, Method::GET, &b, None).await.1["title"], "b");

    // Update a column no list filters on: the row's entry and its list are fresh.
    let (status, _) = call(addr, Method::PATCH, &b, Some(json!({ "title": "b2" }))).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(call(addr, Method::GET, &b, None).await.1["title"], "b2");
    assert_eq!(titles(addr, "/posts").await, strings(&["a", "b2"]));

    // Update the scope column: the row moves lists.
    let a = format!("/posts/{}", ids[0]);
    let (status, _) = call(addr, Method::PATCH, &a, Some(json!({ "published": false }))).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(titles(addr, "/posts").await, strings(&["b2"]));
    assert_eq!(titles(addr, "/posts/drafts").await, strings(&["a", "c"]));

    // Delete: gone from its entry and its list.
    let (status, _) = call(addr, Method::DELETE, &b, None).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_eq!(
        call(addr, Method::GET, &b, None).await.0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(titles(addr, "/posts").await, Vec::<String>::new());

    // A bulk write, then one by another connection (no handler waits for it: the relay
    // delivers it within a bounded poll).
    let c = format!("/posts/{}", ids[2]);
    call(addr, Method::PATCH, &c, Some(json!({ "published": true }))).await;
    assert_eq!(titles(addr, "/posts").await, strings(&["c"]));
    let (status, changed) = call(addr, Method::POST, "/posts/unpublish-all", None).await;
    assert_eq!((status, changed), (StatusCode::OK, json!(2)));
    assert_eq!(titles(addr, "/posts").await, Vec::<String>::new());
    assert_eq!(titles(addr, "/posts/drafts").await, strings(&["a", "c"]));
    raw_sql("UPDATE posts SET published = true");
    let deadline = Instant::now() + Duration::from_secs(10);
    while titles(addr, "/posts").await != strings(&["a", "c"]) {
        assert!(Instant::now() < deadline, "a raw write was never delivered");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Serves `router` on a loopback port until `drive` is done.
async fn serve_and_drive(router: axum::Router, raw_sql: impl Fn(&str)) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move { axum::serve(listener, router).await });
    drive(addr, raw_sql).await;
    server.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn axum_diesel_example_on_sqlite() {
    let db = ScratchDb::sqlite("axum_diesel").await;
    // ScratchDb's URL is sqlx's (`sqlite://PATH?mode=rwc`): Diesel takes the path.
    let path = db
        .url
        .trim_start_matches("sqlite://")
        .split('?')
        .next()
        .unwrap()
        .to_owned();
    let pool = sqlite::pool(&path, 4).unwrap();
    sqlite::migrate(&pool).unwrap();
    let cache = matroska::Cache::memory();
    let relay = sqlite::relay(&db.url, cache.clone()).await.unwrap();
    let state = sqlite::AppState {
        pool: pool.clone(),
        cache,
    };
    serve_and_drive(sqlite::router(state), |sql| {
        pool.get().unwrap().batch_execute(sql).unwrap();
    })
    .await;
    relay.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn axum_diesel_example_on_postgres() {
    let db = ScratchDb::postgres("axum_diesel").await;
    // Every connection, Diesel's and the relay's, in the scratch schema.
    let separator = if db.url.contains('?') { '&' } else { '?' };
    let schema = db.schema.clone().unwrap();
    let url = format!("{}{separator}options=-csearch_path%3D{schema}", db.url);
    let pool = postgres::pool(&url, 4).unwrap();
    postgres::migrate(&pool).unwrap();
    let cache = matroska::Cache::memory();
    let relay = postgres::relay(&url, cache.clone()).await.unwrap();
    let state = postgres::AppState {
        pool: pool.clone(),
        cache,
    };
    serve_and_drive(postgres::router(state), |sql| {
        pool.get().unwrap().batch_execute(sql).unwrap();
    })
    .await;
    relay.shutdown().await;
}
