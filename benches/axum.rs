//! The axum example's two-instance latency per HTTP request, with and without the near tier
//! (issue 19's done-when): two routers of `examples/axum` on one PostgreSQL schema and one
//! Redis prefix, as `NEAR_CACHE=1` runs two instances, against two more without the near tier
//! on another prefix. Each request is a cached `GET /posts?page=N&per_page=10` (two cached
//! queries: the count and the page), on a kept-alive HTTP/1.1 connection per instance, reads
//! alternating between the two instances of a side; sides alternated per round, the order
//! flipped every round. Latency is measured at the client, from sending the request to the
//! last byte of the body.
//!
//! `cargo bench -p matroska-tests --bench axum` (prints its own figures; needs PostgreSQL at
//! `DATABASE_URL_POSTGRES` and Redis at `REDIS_URL`).

#[path = "../examples/axum/app.rs"]
#[allow(dead_code)] // The relay: this bench only reads, so nothing is ever delivered.
mod app;
mod common;
#[path = "../examples/axum/post.rs"]
mod post;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1::SendRequest;
use hyper::{Request, StatusCode, header};
use hyper_util::rt::TokioIo;
use matroska::Cache;
use matroska::backend::redis::{NearConfig, RedisBackend, RedisConfig};
use sea_orm::{ConnectOptions, ConnectionTrait, Database, DatabaseConnection};
use tokio::net::{TcpListener, TcpStream};

use app::AppState;

/// Published posts, so that pages 1 to [`PAGES`] of 10 are full.
const POSTS: usize = 40;
const PAGES: usize = 3;
const ROUNDS: usize = 20;
/// Requests per side per round.
const REQUESTS: usize = 5_000;

/// Serves `router` on a loopback port until the runtime ends.
async fn serve(state: AppState) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(listener, app::router(state)).await.unwrap();
    });
    addr
}

/// A kept-alive HTTP/1.1 connection to one instance.
struct Conn {
    addr: SocketAddr,
    sender: SendRequest<Empty<Bytes>>,
}

impl Conn {
    async fn open(addr: SocketAddr) -> Self {
        let stream = TcpStream::connect(addr).await.unwrap();
        stream.set_nodelay(true).unwrap();
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(connection);
        Conn { addr, sender }
    }

    /// `GET path`; the body, which must be a 200.
    async fn get(&mut self, path: &str) -> Bytes {
        self.sender.ready().await.unwrap();
        let request = Request::get(path)
            .header(header::HOST, self.addr.to_string())
            .body(Empty::new())
            .unwrap();
        let response = self.sender.send_request(request).await.unwrap();
        let status = response.status();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(status, StatusCode::OK, "GET {path}: {body:?}");
        body
    }
}

/// A fresh schema on `DATABASE_URL_POSTGRES`, and the admin URL to drop it with.
async fn scratch_schema(schema: &str) -> DatabaseConnection {
    let url = common::seaorm::postgres_url();
    let admin = Database::connect(
        ConnectOptions::new(url.clone())
            .sqlx_logging(false)
            .to_owned(),
    )
    .await
    .unwrap_or_else(|e| {
        panic!("PostgreSQL at {url} is required for this bench (DATABASE_URL_POSTGRES): {e}")
    });
    admin
        .execute_unprepared(&format!(
            "DROP SCHEMA IF EXISTS \"{schema}\" CASCADE; CREATE SCHEMA \"{schema}\""
        ))
        .await
        .unwrap();
    admin.close().await.ok();
    Database::connect(
        ConnectOptions::new(url)
            .sqlx_logging(false)
            .set_schema_search_path(schema.to_owned())
            .to_owned(),
    )
    .await
    .unwrap()
}

async fn drop_schema(schema: &str) {
    let url = common::seaorm::postgres_url();
    if let Ok(admin) =
        Database::connect(ConnectOptions::new(url).sqlx_logging(false).to_owned()).await
    {
        let _ = admin
            .execute_unprepared(&format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"))
            .await;
        admin.close().await.ok();
    }
}

/// One side: two instances on one prefix, with or without the near tier.
struct Side {
    name: &'static str,
    conns: [Conn; 2],
    backends: [RedisBackend; 2],
}

impl Side {
    async fn start(name: &'static str, db: &DatabaseConnection, near: bool) -> Self {
        let prefix = common::prefix(&format!("axum_{name}"));
        let mut backends = Vec::new();
        let mut conns = Vec::new();
        for _ in 0..2 {
            let mut config = RedisConfig::new(common::redis_url(), prefix.clone())
                .timeout(Duration::from_secs(5));
            if near {
                // What `NEAR_CACHE=1` gives the example.
                config = config.near_cache(NearConfig::new(64 << 20));
            }
            let backend = RedisBackend::connect(config)
                .await
                .expect("Redis is required for this bench (REDIS_URL)");
            let cache = Cache::builder(backend.clone()).build().unwrap();
            let addr = serve(AppState {
                db: db.clone(),
                cache,
            })
            .await;
            conns.push(Conn::open(addr).await);
            backends.push(backend);
        }
        let (Ok(conns), Ok(backends)) = (conns.try_into(), backends.try_into()) else {
            unreachable!("two of each")
        };
        Side {
            name,
            conns,
            backends,
        }
    }

    /// `n` requests alternating between the two instances and cycling through the pages;
    /// each one's latency in µs.
    async fn run(&mut self, n: usize, into: &mut Vec<f64>) {
        for i in 0..n {
            let path = format!("/posts?page={}&per_page=10", 1 + (i / 2) % PAGES);
            let conn = &mut self.conns[i % 2];
            let start = Instant::now();
            let body = conn.get(&path).await;
            into.push(start.elapsed().as_secs_f64() * 1e6);
            std::hint::black_box(body);
        }
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn sorted(mut v: Vec<f64>) -> Vec<f64> {
    v.sort_by(f64::total_cmp);
    v
}

fn main() {
    let rt = common::runtime();
    let schema = common::prefix("axum");
    rt.block_on(async {
        let db = scratch_schema(&schema).await;
        app::migrate(&db).await.unwrap();
        let mut off = Side::start("off", &db, false).await;
        let mut on = Side::start("near", &db, true).await;
        // The posts, written through one instance (nothing is cached yet).
        for i in 0..POSTS {
            let new =
                format!(r#"{{"title": "Post {i}", "body": "about post {i}", "published": true}}"#);
            let stream = TcpStream::connect(off.conns[0].addr).await.unwrap();
            let (mut sender, connection) =
                hyper::client::conn::http1::handshake(TokioIo::new(stream))
                    .await
                    .unwrap();
            tokio::spawn(connection);
            let request = Request::post("/posts")
                .header(header::HOST, off.conns[0].addr.to_string())
                .header(header::CONTENT_TYPE, "application/json")
                .body(http_body_util::Full::new(Bytes::from(new)))
                .unwrap();
            let response = sender.send_request(request).await.unwrap();
            assert_eq!(response.status(), StatusCode::CREATED);
        }
        // Warm-up: every page cached in Redis, and in each near tier once it is live.
        let deadline = Instant::now() + Duration::from_secs(10);
        while !on.backends.iter().all(RedisBackend::near_is_live) {
            assert!(Instant::now() < deadline, "the near tiers never went live");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let mut scratch = Vec::new();
        for side in [&mut off, &mut on] {
            side.run(600, &mut scratch).await;
        }
        for backend in &on.backends {
            let (entries, _) = backend.near_usage().unwrap();
            // The count, and a page per page number.
            assert!(
                entries > PAGES as u64,
                "the near tier holds {entries} entries"
            );
        }

        let (mut all_off, mut all_on) = (Vec::new(), Vec::new());
        let (mut p50_ratio, mut p99_ratio) = (Vec::new(), Vec::new());
        println!("{ROUNDS} rounds of {REQUESTS} requests per side (µs per request: p50 / p99)");
        for round in 0..ROUNDS {
            let (mut o, mut n) = (Vec::with_capacity(REQUESTS), Vec::with_capacity(REQUESTS));
            if round % 2 == 0 {
                off.run(REQUESTS, &mut o).await;
                on.run(REQUESTS, &mut n).await;
            } else {
                on.run(REQUESTS, &mut n).await;
                off.run(REQUESTS, &mut o).await;
            }
            all_off.extend_from_slice(&o);
            all_on.extend_from_slice(&n);
            let (o, n) = (sorted(o), sorted(n));
            let (o50, o99, n50, n99) = (
                percentile(&o, 0.5),
                percentile(&o, 0.99),
                percentile(&n, 0.5),
                percentile(&n, 0.99),
            );
            p50_ratio.push(n50 / o50);
            p99_ratio.push(n99 / o99);
            println!(
                "round {round:2}: {} {o50:7.1} / {o99:7.1}   {} {n50:7.1} / {n99:7.1}   \
                 p50 near/off {:.3}",
                off.name,
                on.name,
                n50 / o50
            );
        }
        let (all_off, all_on) = (sorted(all_off), sorted(all_on));
        let (p50_ratio, p99_ratio) = (sorted(p50_ratio), sorted(p99_ratio));
        let median = |v: &[f64]| v[v.len() / 2];
        println!(
            "all {} requests per side: without the near tier p50 {:.1} µs, p99 {:.1} µs; with \
             it p50 {:.1} µs, p99 {:.1} µs",
            all_off.len(),
            percentile(&all_off, 0.5),
            percentile(&all_off, 0.99),
            percentile(&all_on, 0.5),
            percentile(&all_on, 0.99),
        );
        println!(
            "near / off per round: p50 median {:.3} (min {:.3}, max {:.3}); p99 median {:.3} \
             (min {:.3}, max {:.3})",
            median(&p50_ratio),
            p50_ratio[0],
            p50_ratio[p50_ratio.len() - 1],
            median(&p99_ratio),
            p99_ratio[0],
            p99_ratio[p99_ratio.len() - 1],
        );
        db.close().await.ok();
    });
    rt.block_on(drop_schema(&schema));
}
