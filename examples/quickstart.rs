//! The seed's "articles list" flow: miss -> load -> put with dependencies -> hit ->
//! invalidate the author -> miss.
//!
//! Runs on the in-memory backend with no service needed:
//!
//! ```sh
//! cargo run --example quickstart
//! ```
//!
//! With `REDIS_URL` set (e.g. `redis://127.0.0.1:6379`), it runs on Redis instead.

use std::time::Duration;

use matroska::backend::memory::MemoryBackend;
use matroska::{Cache, Dependency};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Author {
    id: i64,
    name: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Article {
    id: i64,
    title: String,
    author: Author,
}

/// Stands in for the database query of the seed.
async fn load_articles() -> Result<(Vec<Article>, Vec<Dependency>), std::io::Error> {
    println!("  -> loading the articles from the database");
    let author = Author {
        id: 1,
        name: "kolypto".into(),
    };
    let data = vec![
        Article {
            id: 1,
            title: "Python".into(),
            author: author.clone(),
        },
        Article {
            id: 2,
            title: "Cache".into(),
            author,
        },
    ];
    // If any of the articles or their author is modified, the list is discarded.
    let deps = vec![
        Dependency::id("article", 1),
        Dependency::id("article", 2),
        Dependency::id("author", 1),
    ];
    Ok((data, deps))
}

async fn get_articles_list(cache: &Cache) -> matroska::Result<Vec<Article>> {
    let hit = cache.has("articles-list").await?;
    println!(
        "get_articles_list: {}",
        if hit { "cache hit" } else { "cache miss" }
    );
    cache
        .get_or_load(
            "articles-list",
            Some(Duration::from_secs(60)),
            load_articles,
        )
        .await
}

async fn modify_user(cache: &Cache, id: i64) -> matroska::Result<()> {
    // ... update the user in the database, then:
    let invalidated = cache.invalidate(&[Dependency::id("author", id)]).await?;
    match invalidated.dropped() {
        Some(dropped) => {
            let entries = if dropped == 1 { "entry" } else { "entries" };
            println!("modify_user({id}): invalidated {dropped} cached {entries}");
        }
        // Redis invalidates in O(dependencies) and does not count dependents.
        None => println!("modify_user({id}): invalidated author {id}"),
    }
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let cache = match std::env::var("REDIS_URL") {
        Ok(url) => {
            #[cfg(feature = "redis")]
            {
                use matroska::backend::redis::{RedisBackend, RedisConfig};
                println!("backend: Redis at {url}");
                Cache::builder(RedisBackend::connect(RedisConfig::new(url, "quickstart")).await?)
                    .build()?
            }
            #[cfg(not(feature = "redis"))]
            {
                return Err(
                    format!("REDIS_URL={url} set, but built without the `redis` feature").into(),
                );
            }
        }
        Err(_) => {
            println!("backend: in-memory (set REDIS_URL to use Redis)");
            Cache::builder(MemoryBackend::default()).build()?
        }
    };
    // Start clean when re-run against a shared Redis.
    cache.delete("articles-list").await?;

    let articles = get_articles_list(&cache).await?;
    println!("  {} articles: {:?}", articles.len(), titles(&articles));
    let again = get_articles_list(&cache).await?;
    println!("  {} articles: {:?}", again.len(), titles(&again));

    modify_user(&cache, 1).await?;

    let reloaded = get_articles_list(&cache).await?;
    println!("  {} articles: {:?}", reloaded.len(), titles(&reloaded));
    Ok(())
}

fn titles(articles: &[Article]) -> Vec<&str> {
    articles.iter().map(|a| a.title.as_str()).collect()
}
