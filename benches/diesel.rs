//! Diesel: a cached query hit against the same query sent to the database, on SQLite and
//! PostgreSQL, with the in-memory and the Redis backends. The fixtures are the Diesel tests'
//! (`tests/diesel_blog`, `tests/support/db.rs`). The write cost of the outbox triggers that
//! invalidate Diesel writes is ORM-agnostic: see `benches/outbox.rs`.

#[path = "../tests/diesel_blog/mod.rs"]
mod diesel_blog;
// The test support's own unit tests compile here too, without their uses.
#[path = "../tests/support/mod.rs"]
#[allow(unused_imports)]
mod support;

use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use diesel::prelude::*;
use matroska::diesel::CachedExt;

use diesel_blog::schema::posts;
use diesel_blog::{Post, create_tables, published_in};
use support::db::{DieselConn, Kind, ScratchDb};

/// Rows in the table; `published_in("fantasy")` matches 25 of them.
const ROWS: i32 = 100;

fn fill(conn: &mut impl diesel::connection::SimpleConnection) {
    let values: Vec<String> = (1..=ROWS)
        .map(|i| {
            let category = ["fantasy", "sci-fi"][usize::try_from(i % 2).expect("small")];
            let published = if i % 4 < 2 { "TRUE" } else { "FALSE" };
            format!("('Post number {i}', '{category}', {published}, NULL)")
        })
        .collect();
    conn.batch_execute(&format!(
        "INSERT INTO posts (title, category, published, series) VALUES {}",
        values.join(", ")
    ))
    .expect("fill posts");
}

/// The pairs, sides alternated: uncached, cached hits (memory, Redis), uncached again.
macro_rules! measure {
    ($c:expr, $rt:expr, $name:expr, $caches:expr, $conn:expr) => {{
        let conn = $conn;
        let condition = published_in("fantasy");
        let mut g = $c.benchmark_group(format!("diesel/list of 25 rows/{}", $name));
        for round in [1, 2] {
            g.bench_function(format!("uncached ({round})"), |b| {
                b.iter(|| {
                    posts::table
                        .filter(condition.filter())
                        .order(posts::id)
                        .load::<Post>(&mut *conn)
                        .expect("load")
                })
            });
            if round == 2 {
                break;
            }
            for (backend, cache) in $caches {
                // Filled once; every iteration below is a hit.
                let rows = $rt.block_on(
                    posts::table
                        .order(posts::id)
                        .cached(cache)
                        .scoped(&condition)
                        .load::<Post, _>(&mut *conn),
                );
                assert_eq!(rows.expect("load").len(), 25);
                g.bench_function(format!("cached hit, {backend}"), |b| {
                    b.iter(|| {
                        $rt.block_on(
                            posts::table
                                .order(posts::id)
                                .cached(cache)
                                .scoped(&condition)
                                .load::<Post, _>(&mut *conn),
                        )
                        .expect("hit")
                    })
                });
            }
        }
        g.finish();
    }};
}

fn benches(c: &mut Criterion) {
    let rt = common_runtime();
    for kind in [Kind::Sqlite, Kind::Postgres] {
        let db = rt.block_on(ScratchDb::new(kind, "bench_diesel"));
        let name = format!("{kind:?}").to_lowercase();
        let caches = [
            ("memory", support::memory_cache()),
            ("redis", rt.block_on(support::redis_cache("bench_diesel"))),
        ];
        if kind == Kind::Sqlite {
            let mut conn = diesel::SqliteConnection::open(&db);
            create_tables(&mut conn, kind);
            fill(&mut conn);
            measure!(c, rt, name, &caches, &mut conn);
        } else {
            let mut conn = diesel::PgConnection::open(&db);
            create_tables(&mut conn, kind);
            fill(&mut conn);
            measure!(c, rt, name, &caches, &mut conn);
        }
    }
}

fn common_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime")
}

criterion_group! {
    name = diesel_benches;
    config = Criterion::default().warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(3));
    targets = benches
}
criterion_main!(diesel_benches);
