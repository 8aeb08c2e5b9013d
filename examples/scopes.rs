//! The seed's `articles_view(category)` with scopes, on the in-memory backend: a cached list
//! of published articles by category that notices new, moved and unpublished articles.
//!
//! Run with `cargo run --example scopes`.

use matroska::{Cache, CacheDeps, DependencySet, Invalidated, Scoped};

#[derive(Debug, Clone, CacheDeps)]
struct User {
    id: i64,
    name: String,
}

/// `#[scope(published, category)]` describes the filter the view caches by; `when` says a
/// draft can be in no such list. The derive generates `ArticleByPublishedCategory`.
#[derive(Debug, Clone, CacheDeps)]
#[scope(published, category, when = Article::is_listed)]
struct Article {
    id: i64,
    title: String,
    published: bool,
    category: String,
    #[cache(related)]
    author: User,
}

impl Article {
    fn is_listed(&self) -> bool {
        self.published
    }
}

/// The database, for this example: a list of rows.
struct Db {
    articles: Vec<Article>,
}

impl Db {
    fn published_in(&self, category: &str) -> Vec<Article> {
        self.articles
            .iter()
            .filter(|a| a.published && a.category == category)
            .cloned()
            .collect()
    }

    /// Saves an article and tells its scope, as a save hook would.
    async fn save(&mut self, article: Article, cache: &Cache) -> matroska::Result<()> {
        let previous = self.articles.iter().position(|a| a.id == article.id);
        let before = previous.map(|i| self.articles.remove(i));
        let modified: Option<Vec<&str>> = before.as_ref().map(|b| {
            let mut changed = Vec::new();
            if b.title != article.title {
                changed.push("title");
            }
            if b.published != article.published {
                changed.push("published");
            }
            if b.category != article.category {
                changed.push("category");
            }
            changed
        });
        let invalidated = Article::scope()
            .invalidate_for_change(before.as_ref(), Some(&article), cache, modified.as_deref())
            .await?
            + match &before {
                // A modified row also drops whatever shows it (its primary key).
                Some(before) => cache.invalidate(&[before.primary_key()]).await?,
                None => Invalidated::counted(0),
            };
        // Redis does not count the entries it invalidates (`None`).
        let dropped = match invalidated.dropped() {
            Some(1) => "1 cache entry dropped".to_owned(),
            Some(n) => format!("{n} cache entries dropped"),
            None => "cache entries invalidated".to_owned(),
        };
        println!(
            "  saved #{} {:?} ({}, {}): {dropped}",
            article.id,
            article.title,
            if article.published {
                "published"
            } else {
                "draft"
            },
            article.category,
        );
        self.articles.push(article);
        Ok(())
    }
}

/// The seed's `articles_view(category)`.
async fn articles_view(db: &Db, cache: &Cache, category: &str) -> matroska::Result<Vec<String>> {
    let key = format!("articles-list:published=true;category={category}");
    if let Some(titles) = cache.get::<Vec<String>>(&key).await? {
        println!("  {category}: from cache {titles:?}");
        return Ok(titles);
    }
    let articles = db.published_in(category);
    let titles: Vec<String> = articles.iter().map(|a| a.title.clone()).collect();
    // The rows and their authors (the seed's `sa_dependencies(articles, {'author': 1})`),
    // and the list's filter, typed: a misspelt field would not compile.
    let mut deps = DependencySet::of(&articles);
    deps.extend(
        ArticleByPublishedCategory {
            published: true,
            category: category.into(),
        }
        .dependencies(),
    );
    cache
        .put(
            &key,
            &titles,
            deps.as_slice(),
            Some(std::time::Duration::from_secs(60)),
        )
        .await?;
    println!(
        "  {category}: loaded {titles:?}, cached with {} dependencies",
        deps.len()
    );
    Ok(titles)
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> matroska::Result<()> {
    let cache = Cache::memory();
    let kolypto = User {
        id: 1,
        name: "kolypto".into(),
    };
    let article = |id, title: &str, published, category: &str| Article {
        id,
        title: title.into(),
        published,
        category: category.into(),
        author: kolypto.clone(),
    };
    let mut db = Db {
        articles: vec![
            article(1, "Python", true, "fantasy"),
            article(2, "Cache", true, "sci-fi"),
        ],
    };
    println!("author: {}", kolypto.name);

    println!("first views load and cache:");
    articles_view(&db, &cache, "fantasy").await?;
    articles_view(&db, &cache, "sci-fi").await?;

    println!("a new published fantasy article enters the fantasy list only:");
    db.save(article(3, "Dragons", true, "fantasy"), &cache)
        .await?;
    articles_view(&db, &cache, "fantasy").await?;
    articles_view(&db, &cache, "sci-fi").await?;

    println!("a draft is in no list:");
    db.save(article(4, "Draft", false, "fantasy"), &cache)
        .await?;
    articles_view(&db, &cache, "fantasy").await?;

    println!("an article moving to sci-fi leaves one list and enters the other:");
    db.save(article(3, "Dragons", true, "sci-fi"), &cache)
        .await?;
    articles_view(&db, &cache, "fantasy").await?;
    articles_view(&db, &cache, "sci-fi").await?;

    println!("a new title drops only the lists that show the article:");
    db.save(article(1, "Python 3", true, "fantasy"), &cache)
        .await?;
    articles_view(&db, &cache, "fantasy").await?;
    articles_view(&db, &cache, "sci-fi").await?;
    Ok(())
}
