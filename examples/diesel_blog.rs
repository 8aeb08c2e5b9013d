//! A small Diesel blog with matroska: a derived model, cached queries, and invalidation of
//! every write — Diesel's query builder, raw SQL, another connection — by the database outbox,
//! with no `invalidate` call in the application code.
//!
//! ```sh
//! cargo run -p matroska-tests --example diesel_blog       # SQLite, a file in the temp dir
//! ```
//!
//! The relay reads the outbox on its own (sqlx) pool, so the database is a file both reach.

use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use matroska::diesel::{CachedExt, find, install_outbox, invalidate_now};
use matroska::outbox::{OutboxDb, Relay};
use matroska::{Cache, WatchedTable};
use serde::{Deserialize, Serialize};

mod schema {
    diesel::table! {
        posts (id) {
            id -> Integer,
            title -> Text,
            category -> Text,
            published -> Bool,
        }
    }
}

use schema::posts;

/// Posts are listed by (published, category): `#[scope]` generates
/// `PostByPublishedCategory`, which is both the list's Diesel filter and its dependency.
#[derive(
    Clone,
    Debug,
    PartialEq,
    Queryable,
    Selectable,
    Identifiable,
    Serialize,
    Deserialize,
    matroska::CacheDeps,
)]
#[diesel(table_name = posts)]
#[scope(published, category)]
struct Post {
    id: i32,
    title: String,
    category: String,
    published: bool,
}

fn fantasy() -> PostByPublishedCategory {
    PostByPublishedCategory {
        published: true,
        category: "fantasy".into(),
    }
}

/// The cached list of published fantasy posts.
async fn fantasy_titles(cache: &Cache, conn: &mut SqliteConnection) -> Vec<String> {
    let posts = posts::table
        .order(posts::id)
        .cached(cache)
        .scoped(&fantasy())
        .load::<Post, _>(conn)
        .await
        .expect("cached list");
    let titles = posts.into_iter().map(|p| p.title).collect();
    println!("  fantasy list {titles:?}");
    titles
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let path = std::env::temp_dir().join(format!("matroska_diesel_blog_{}.db", std::process::id()));
    let mut conn = SqliteConnection::establish(&path.display().to_string())?;
    conn.batch_execute(
        "PRAGMA busy_timeout = 5000;
         CREATE TABLE posts (id INTEGER PRIMARY KEY AUTOINCREMENT, title TEXT NOT NULL,
                             category TEXT NOT NULL, published BOOLEAN NOT NULL);
         INSERT INTO posts (title, category, published) VALUES
             ('The Hobbit', 'fantasy', 1), ('Dune', 'sci-fi', 1), ('Draft', 'fantasy', 0);",
    )?;

    // Once, in a migration: triggers record every change to `posts` in its transaction.
    install_outbox(&mut conn, &[Post::watched_table()])?;

    // At start-up: the cache, and the relay that delivers the outbox to it. An application
    // `.spawn()`s it; the example drains it after each write to show each step.
    let cache = Cache::memory();
    let relay = Relay::builder(
        OutboxDb::connect(&format!("sqlite://{}", path.display())).await?,
        cache.clone(),
    )
    .watch_type::<Post>()
    .build();

    println!("the first read loads from SQLite, the next ones are served from the cache:");
    fantasy_titles(&cache, &mut conn).await;
    fantasy_titles(&cache, &mut conn).await;
    let hobbit = find::<Post, _, _, _>(&cache, &mut conn, posts::table, 1)
        .await?
        .expect("post 1");
    println!("  post 1: {}", hobbit.title);

    println!("insert_into a fantasy post: the list is invalidated (after the commit)");
    diesel::insert_into(posts::table)
        .values((
            posts::title.eq("Earthsea"),
            posts::category.eq("fantasy"),
            posts::published.eq(true),
        ))
        .execute(&mut conn)?;
    relay.drain().await?;
    assert_eq!(fantasy_titles(&cache, &mut conn).await.len(), 2);

    println!("an update of a sci-fi post's title: the fantasy list stays cached");
    diesel::update(posts::table.filter(posts::title.eq("Dune")))
        .set(posts::title.eq("Dune Messiah"))
        .execute(&mut conn)?;
    relay.drain().await?;
    fantasy_titles(&cache, &mut conn).await;

    println!("raw SQL from another connection publishes the draft: invalidated too");
    let mut other = SqliteConnection::establish(&path.display().to_string())?;
    diesel::sql_query("UPDATE posts SET published = 1 WHERE title = 'Draft'")
        .execute(&mut other)?;
    relay.drain().await?;
    assert_eq!(fantasy_titles(&cache, &mut conn).await.len(), 3);

    println!("a rolled-back transaction records nothing: the list stays cached");
    let _ = conn.transaction::<(), _, _>(|conn| {
        diesel::delete(posts::table).execute(conn)?;
        Err(diesel::result::Error::RollbackTransaction)
    });
    relay.drain().await?;
    assert_eq!(fantasy_titles(&cache, &mut conn).await.len(), 3);

    println!("read-your-writes: invalidate right after the write, before the relay runs");
    let renamed = diesel::update(&hobbit)
        .set(posts::title.eq("The Hobbit, revised"))
        .execute(&mut conn)
        .and_then(|_| posts::table.find(hobbit.id).first::<Post>(&mut conn))?;
    invalidate_now(&cache, &[&hobbit, &renamed]).await?;
    let again = find::<Post, _, _, _>(&cache, &mut conn, posts::table, 1).await?;
    println!("  post 1: {}", again.expect("post 1").title);
    relay.drain().await?;

    println!("relay: {:?}", relay.stats());
    drop(conn);
    drop(other);
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
    Ok(())
}
