//! `examples/axum` over HTTP: its router on a real loopback listener, driven by hyper's client,
//! on SQLite, PostgreSQL and MariaDB with Redis.
//!
//! Every read follows the write it checks with the cache already holding the answer from
//! before the write: writes through the hooks (create, update, delete) are visible to the very
//! next read; the bulk unpublish, which only the outbox sees, within a bounded poll for the
//! relay.
#![cfg(all(feature = "seaorm", feature = "redis"))]
#![allow(clippy::unwrap_used)]

#[path = "../examples/axum/app.rs"]
mod app;
#[path = "../examples/axum/post.rs"]
mod post;
mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode, header};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::net::{TcpListener, TcpStream};

use app::AppState;
use support::db::{Kind, ScratchDb};

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
    let json = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes)
            .unwrap_or_else(|e| panic!("{path}: not JSON ({e}): {bytes:?}"))
    };
    (status, json)
}

struct Client(SocketAddr);

impl Client {
    async fn get(&self, path: &str) -> Value {
        let (status, body) = call(self.0, Method::GET, path, None).await;
        assert_eq!(status, StatusCode::OK, "GET {path}: {body}");
        body
    }

    async fn create(&self, title: &str, published: bool) -> Value {
        let new =
            json!({ "title": title, "body": format!("about {title}"), "published": published });
        let (status, body) = call(self.0, Method::POST, "/posts", Some(new)).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        body
    }

    async fn patch(&self, id: i64, changes: Value) -> Value {
        let (status, body) = call(
            self.0,
            Method::PATCH,
            &format!("/posts/{id}"),
            Some(changes),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        body
    }

    /// The titles of page `page` of the published posts, and their total.
    async fn page(&self, page: u64, per_page: u64) -> (Vec<String>, u64) {
        let body = self
            .get(&format!("/posts?page={page}&per_page={per_page}"))
            .await;
        (titles(&body["posts"]), body["total"].as_u64().unwrap())
    }

    async fn drafts(&self) -> Vec<String> {
        titles(&self.get("/posts/drafts").await)
    }
}

fn titles(posts: &Value) -> Vec<String> {
    posts
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["title"].as_str().unwrap().to_owned())
        .collect()
}

fn strings(titles: &[&str]) -> Vec<String> {
    titles.iter().map(|&t| t.to_owned()).collect()
}

async fn drive(kind: Kind) {
    let db = ScratchDb::new(kind, "axum").await;
    app::migrate(&db.conn).await.unwrap();
    // Idempotent: the example runs it at every start.
    app::migrate(&db.conn).await.unwrap();
    let cache = support::redis_cache("axum").await;
    let relay = app::relay(&db.conn, cache.clone()).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let http = Client(listener.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let router = app::router(AppState {
        db: db.conn.clone(),
        cache: cache.clone(),
    });
    let server = tokio::spawn(async move {
        axum::serve(listener, router)
            .with_graceful_shutdown(async {
                let _ = stopped.await;
            })
            .await
    });

    // Empty lists, cached.
    assert_eq!(http.page(1, 2).await, (vec![], 0));
    assert_eq!(http.drafts().await, Vec::<String>::new());

    // Create: each insert enters the cached lists at once.
    let mut ids = Vec::new();
    for (title, published, total) in [
        ("a", true, 1),
        ("b", true, 2),
        ("c", false, 2),
        ("d", true, 3),
    ] {
        ids.push(http.create(title, published).await["id"].as_i64().unwrap());
        assert_eq!(http.page(1, 2).await.1, total, "after creating {title}");
    }
    assert_eq!(http.page(1, 2).await, (strings(&["a", "b"]), 3));
    assert_eq!(http.page(2, 2).await, (strings(&["d"]), 3));
    assert_eq!(http.page(3, 2).await, (vec![], 3));
    assert_eq!(http.drafts().await, strings(&["c"]));
    let b = http.get(&format!("/posts/{}", ids[1])).await;
    assert_eq!(
        (b["title"].as_str(), b["published"].as_bool()),
        (Some("b"), Some(true))
    );
    // The by-id answer is in the cache (so the reads below test invalidation, not misses).
    let b_key = matroska::seaorm::query::find_by_id_key::<post::Entity, _>(
        &db.conn,
        i32::try_from(ids[1]).unwrap(),
    )
    .await
    .unwrap()
    .expect("a pool connection may use the cache");
    assert!(
        cache.has(&b_key).await.unwrap(),
        "GET /posts/{{id}} is not cached"
    );

    // Update an unwatched column: the row's entry and the page holding it are fresh.
    http.patch(ids[1], json!({ "title": "b2" })).await;
    assert_eq!(http.get(&format!("/posts/{}", ids[1])).await["title"], "b2");
    assert_eq!(http.page(1, 2).await, (strings(&["a", "b2"]), 3));

    // Update the scope column: the row leaves the published pages and enters the drafts.
    http.patch(ids[0], json!({ "published": false })).await;
    assert_eq!(http.page(1, 2).await, (strings(&["b2", "d"]), 2));
    assert_eq!(http.page(2, 2).await, (vec![], 2));
    assert_eq!(http.drafts().await, strings(&["a", "c"]));
    assert_eq!(
        http.get(&format!("/posts/{}", ids[0])).await["published"],
        false
    );
    // And back.
    http.patch(ids[2], json!({ "published": true, "body": "ready" }))
        .await;
    assert_eq!(http.page(1, 2).await, (strings(&["b2", "c"]), 3));
    assert_eq!(http.page(2, 2).await, (strings(&["d"]), 3));
    assert_eq!(http.drafts().await, strings(&["a"]));

    // Delete: gone from its entry and its list.
    let (status, _) = call(http.0, Method::DELETE, &format!("/posts/{}", ids[3]), None).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, _) = call(http.0, Method::GET, &format!("/posts/{}", ids[3]), None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(http.page(2, 2).await, (vec![], 2));
    assert_eq!(http.page(1, 2).await, (strings(&["b2", "c"]), 2));

    // Bulk: one UPDATE no hook sees. The outbox's relay invalidates shortly after the commit.
    assert_eq!(
        http.get(&format!("/posts/{}", ids[2])).await["published"],
        true
    );
    let (status, body) = call(http.0, Method::POST, "/posts/unpublish-all", None).await;
    assert_eq!(
        (status, &body),
        (StatusCode::OK, &json!({ "unpublished": 2 }))
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let published = http.page(1, 2).await;
        let drafts = http.drafts().await;
        let c = http.get(&format!("/posts/{}", ids[2])).await;
        if published == (vec![], 0)
            && drafts == strings(&["a", "b2", "c"])
            && c["published"] == false
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the bulk unpublish never reached the cache: published {published:?}, drafts {drafts:?}, post c {c}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Bad input gets a clear answer.
    for (method, path, body, expected) in [
        (Method::GET, "/posts?page=0", None, StatusCode::BAD_REQUEST),
        (
            Method::GET,
            "/posts?per_page=1000",
            None,
            StatusCode::BAD_REQUEST,
        ),
        (Method::GET, "/posts?page=x", None, StatusCode::BAD_REQUEST),
        (Method::GET, "/posts/999999", None, StatusCode::NOT_FOUND),
        (Method::GET, "/posts/x", None, StatusCode::BAD_REQUEST),
        (
            Method::POST,
            "/posts",
            Some(json!({ "body": "no title" })),
            StatusCode::BAD_REQUEST,
        ),
        (
            Method::PATCH,
            "/posts/999999",
            Some(json!({ "title": "z" })),
            StatusCode::NOT_FOUND,
        ),
        (
            Method::PATCH,
            "/posts/1",
            Some(json!({})),
            StatusCode::BAD_REQUEST,
        ),
        (
            Method::POST,
            "/posts",
            Some(json!({ "title": " " })),
            StatusCode::BAD_REQUEST,
        ),
        (Method::DELETE, "/posts/999999", None, StatusCode::NOT_FOUND),
    ] {
        let (status, answer) = call(http.0, method.clone(), path, body).await;
        assert_eq!(status, expected, "{method} {path}: {answer}");
        assert!(answer["error"].is_string(), "{method} {path}: {answer}");
    }

    stop.send(()).unwrap();
    server.await.unwrap().unwrap();
    assert_eq!(relay.relay().stats().dead_letters, 0);
    relay.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn axum_example_on_sqlite() {
    drive(Kind::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn axum_example_on_postgres() {
    drive(Kind::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn axum_example_on_mariadb() {
    drive(Kind::MySql).await;
}

/// Starts the example's router for `state` on a loopback port; the stop signal and the
/// server task.
async fn serve(
    state: AppState,
) -> (
    Client,
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<std::io::Result<()>>,
) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let client = Client(listener.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let router = app::router(state);
    let server = tokio::spawn(async move {
        axum::serve(listener, router)
            .with_graceful_shutdown(async {
                let _ = stopped.await;
            })
            .await
    });
    (client, stop, server)
}

/// Two instances of the example on one database and one Redis prefix, each with a near cache
/// (as `NEAR_CACHE=1` runs it): what one writes, the other reads back fresh once the
/// invalidation's broadcast arrives (bounded poll, far above the broadcast's sub-millisecond
/// delivery), though it served the old answer from its own memory just before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_with_near_caches_on_postgres() {
    use matroska::backend::redis::{NearConfig, RedisConfig};

    let db = ScratchDb::new(Kind::Postgres, "axum_near").await;
    app::migrate(&db.conn).await.unwrap();
    let prefix = support::unique("axum_near");
    let near_cache = || async {
        let config = RedisConfig::new(support::redis_url(), prefix.clone())
            .near_cache(NearConfig::new(1 << 20));
        matroska::Cache::builder(support::redis_backend_with(config).await)
            .build()
            .unwrap()
    };
    let (cache_a, cache_b) = (near_cache().await, near_cache().await);
    let relay = app::relay(&db.conn, cache_a.clone()).unwrap();
    let (a, stop_a, server_a) = serve(AppState {
        db: db.conn.clone(),
        cache: cache_a,
    })
    .await;
    let (b, stop_b, server_b) = serve(AppState {
        db: db.conn.clone(),
        cache: cache_b,
    })
    .await;

    let id = a.create("first", true).await["id"].as_i64().unwrap();
    let path = format!("/posts/{id}");
    // B caches the post (Redis, then its near tier) and serves it again.
    let deadline = Instant::now() + Duration::from_secs(10);
    while b.get(&path).await["title"] != "first" {
        assert!(Instant::now() < deadline, "B never read the created post");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(b.get(&path).await["title"], "first");
    assert_eq!(b.page(1, 10).await, (strings(&["first"]), 1));

    // A updates it (a hooked save: A's own reads are fresh at once) ...
    a.patch(id, json!({ "title": "second" })).await;
    assert_eq!(a.get(&path).await["title"], "second");
    // ... and B drops its near copies when the broadcast arrives.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (post, page) = (b.get(&path).await, b.page(1, 10).await);
        if post["title"] == "second" && page == (strings(&["second"]), 1) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "B still serves the old post: {post}, {page:?}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }

    for (stop, server) in [(stop_a, server_a), (stop_b, server_b)] {
        stop.send(()).unwrap();
        server.await.unwrap().unwrap();
    }
    relay.shutdown().await;
}
