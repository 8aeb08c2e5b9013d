//! The seed's scope scenario, on the in-memory backend and on Redis, with
//! `#[derive(CacheDeps)]` and typed conditions: lists of published books by category learn
//! about books that enter or leave them.
#![cfg(all(feature = "derive", feature = "redis"))]

mod support;

use matroska::{
    Cache, CacheDeps, Dependency, DependencySet, Error, Invalidated, ScopeCondition, ScopeMode,
    Scoped, Value,
};

#[derive(Debug, Clone, CacheDeps)]
struct User {
    id: i64,
    name: String,
}

#[derive(Debug, Clone, CacheDeps)]
#[scope(published, category, when = Book::is_listed)]
struct Book {
    id: i64,
    title: String,
    published: bool,
    category: String,
    #[cache(related)]
    author: Option<User>,
}

impl Book {
    /// Only published books are ever listed: a draft invalidates no list.
    fn is_listed(&self) -> bool {
        self.published
    }
}

fn kolypto() -> User {
    User {
        id: 1,
        name: "kolypto".into(),
    }
}

fn book(id: i64, title: &str, published: bool, category: &str) -> Book {
    Book {
        id,
        title: title.into(),
        published,
        category: category.into(),
        author: Some(kolypto()),
    }
}

/// The seed's `articles_view(category)`: the published books of a category, cached with the
/// books' and authors' primary keys and the list's condition.
async fn cache_list(cache: &Cache, category: &str, books: &[Book]) -> String {
    let key = format!("books:published=true;category={category}");
    let condition = BookByPublishedCategory {
        published: true,
        category: category.into(),
    };
    let mut deps = DependencySet::of(books);
    deps.extend(condition.dependencies());
    let titles: Vec<&str> = books.iter().map(|b| b.title.as_str()).collect();
    cache
        .put(&key, &titles, deps.as_slice(), None)
        .await
        .expect("put");
    key
}

async fn cached(cache: &Cache, key: &str) -> bool {
    cache.has(key).await.expect("has")
}

async fn scenario(cache: Cache) {
    let scope = Book::scope();
    let hobbit = book(1, "The Hobbit", true, "fantasy");
    let earthsea = book(2, "Earthsea", true, "fantasy");
    let dune = book(3, "Dune", true, "sci-fi");

    let fantasy = cache_list(&cache, "fantasy", &[hobbit.clone(), earthsea.clone()]).await;
    let sci_fi = cache_list(&cache, "sci-fi", std::slice::from_ref(&dune)).await;
    assert!(cached(&cache, &fantasy).await && cached(&cache, &sci_fi).await);

    // A new published fantasy book enters the fantasy list only.
    let new = book(4, "The Name of the Wind", true, "fantasy");
    scope
        .invalidate_for(&new, &cache, None)
        .await
        .expect("invalidate");
    assert!(!cached(&cache, &fantasy).await, "fantasy list must go");
    assert!(cached(&cache, &sci_fi).await, "sci-fi list must stay");
    let fantasy = cache_list(&cache, "fantasy", &[hobbit.clone(), earthsea.clone(), new]).await;

    // An unpublished book can be in no list (`when`): creating it invalidates neither.
    let draft = book(5, "Untitled", false, "fantasy");
    let dropped = scope
        .invalidate_for(&draft, &cache, None)
        .await
        .expect("invalidate");
    assert_dropped(&cache, dropped, 0);
    assert!(cached(&cache, &fantasy).await && cached(&cache, &sci_fi).await);

    // A book moving from fantasy to sci-fi leaves one list and enters the other.
    let moved = Book {
        category: "sci-fi".into(),
        ..earthsea.clone()
    };
    scope
        .invalidate_for_change(Some(&earthsea), Some(&moved), &cache, Some(&["category"]))
        .await
        .expect("invalidate");
    assert!(!cached(&cache, &fantasy).await, "left the fantasy list");
    assert!(!cached(&cache, &sci_fi).await, "entered the sci-fi list");

    // A change to an unwatched field touches no list through the scope; the book's own
    // primary key drops what shows it (its page, the list it is in), nothing else.
    let fantasy = cache_list(&cache, "fantasy", std::slice::from_ref(&hobbit)).await;
    let sci_fi = cache_list(&cache, "sci-fi", &[dune.clone(), moved.clone()]).await;
    cache
        .put("book:1", &hobbit.title, &[hobbit.primary_key()], None)
        .await
        .expect("put");
    let retitled = Book {
        title: "There and Back Again".into(),
        ..hobbit.clone()
    };
    let dropped = scope
        .invalidate_for(&retitled, &cache, Some(&["title"]))
        .await
        .expect("invalidate");
    // No list filters by title.
    assert_dropped(&cache, dropped, 0);
    assert!(cached(&cache, &fantasy).await && cached(&cache, "book:1").await);
    let dropped = cache
        .invalidate(&[retitled.primary_key()])
        .await
        .expect("invalidate");
    assert_dropped(&cache, dropped, 2);
    assert!(!cached(&cache, "book:1").await && !cached(&cache, &fantasy).await);
    assert!(
        cached(&cache, &sci_fi).await,
        "the sci-fi list does not show it"
    );

    // The author is a dependency of every list that shows one of their books.
    let fantasy = cache_list(&cache, "fantasy", std::slice::from_ref(&retitled)).await;
    cache
        .invalidate(&[kolypto().primary_key()])
        .await
        .expect("invalidate");
    assert!(!cached(&cache, &fantasy).await && !cached(&cache, &sci_fi).await);

    // A bulk update that cannot be narrowed to rows drops every list of the scope.
    let fantasy = cache_list(&cache, "fantasy", std::slice::from_ref(&hobbit)).await;
    scope.invalidate_all(&cache).await.expect("invalidate");
    assert!(!cached(&cache, &fantasy).await);
}

/// Production mode: a filter no extractor describes degrades to "any change in the scope",
/// which is coarse but never stale.
async fn production_degrades(cache: Cache) {
    let scope = Book::scope().clone().mode(ScopeMode::Production);
    let deps = scope
        .condition([("title", Value::from("Dune"))])
        .expect("production mode does not fail");
    assert_eq!(deps, [scope.any_change(), scope.all()]);
    cache
        .put("books:title=Dune", &["Dune"], &deps, None)
        .await
        .expect("put");

    // Any write in the scope drops it, even a draft's, even one touching no watched field.
    let draft = book(9, "Dune", false, "sci-fi");
    scope
        .invalidate_for(&draft, &cache, Some(&["title"]))
        .await
        .expect("invalidate");
    assert!(!cached(&cache, "books:title=Dune").await);
}

#[tokio::test]
async fn scopes_on_memory() {
    scenario(support::memory_cache()).await;
}

#[tokio::test]
async fn scopes_on_redis() {
    scenario(support::redis_cache("scopes").await).await;
}

#[tokio::test]
async fn production_mode_degrades_on_memory() {
    production_degrades(support::memory_cache()).await;
}

#[tokio::test]
async fn production_mode_degrades_on_redis() {
    production_degrades(support::redis_cache("scopes_prod").await).await;
}

#[test]
fn development_mode_rejects_undescribed_fields() {
    let scope = Book::scope().clone().mode(ScopeMode::Development);
    let err = scope
        .condition([("title", Value::from("Dune"))])
        .expect_err("no extractor describes `title`");
    assert!(
        matches!(&err, Error::UnknownScopeFields { scope, fields, .. } if scope == "Book" && fields == &["title"]),
        "{err}"
    );
    // Subsets of a described field set are served.
    assert!(scope.condition([("category", "fantasy".into())]).is_ok());
}

#[test]
fn typed_condition_agrees_with_the_runtime_scope() {
    let typed = BookByPublishedCategory {
        published: true,
        category: "fantasy".into(),
    };
    let runtime = Book::scope()
        .clone()
        .mode(ScopeMode::Development)
        .condition([("category", "fantasy".into()), ("published", true.into())])
        .expect("described");
    assert_eq!(typed.dependencies(), runtime);
    assert_eq!(typed.scope_name(), Book::entity_name());
}

#[test]
fn loaded_rows_and_relations_in_first_seen_order() {
    // The seed's `sa_dependencies(articles, {'author': 1})`.
    let books = [
        book(10, "A", true, "fantasy"),
        book(11, "B", true, "fantasy"),
    ];
    assert_eq!(
        DependencySet::of(&books).into_vec(),
        [
            Dependency::primary_key("Book", [10]),
            Dependency::primary_key("User", [1]),
            Dependency::primary_key("Book", [11]),
        ]
    );
    let _ = &books[0].author.as_ref().map(|a| &a.name);
}

/// A list filtered by a value that is not a column of its own (the author's name, from
/// `author_id`): the seed's `describes("author", watch_modified=["author_id"])`.
#[derive(Debug, Clone, CacheDeps)]
#[cache(entity = "post")]
#[scope(author, watch = [author_id])]
#[allow(dead_code)] // a view model: only the scope reads its fields
struct PostView {
    id: i64,
    title: String,
    author_id: i64,
    author: String,
}

#[test]
fn a_watching_scope_runs_when_its_source_columns_change() {
    use matroska::table::Row;
    use matroska::{RowChange, WatchedTable};

    let post = PostView {
        id: 1,
        title: "t".into(),
        author_id: 7,
        author: "kolypto".into(),
    };
    let by_author = Dependency::condition("post", [("author", Value::from("kolypto"))]);
    let condition = PostViewByAuthor {
        author: "kolypto".into(),
    };
    assert!(condition.dependencies().contains(&by_author));
    let scope = PostView::scope();
    assert!(
        scope
            .dependencies_for(&post, Some(&["author_id"]))
            .contains(&by_author)
    );
    assert!(
        !scope
            .dependencies_for(&post, Some(&["title"]))
            .contains(&by_author)
    );

    // The outbox records `author_id`; the relay cannot compute `author`, so a change of it
    // drops all of the entity's lists, and a change of anything else drops none.
    let spec = PostView::watched_table();
    assert_eq!(spec.watched_columns(), ["id", "author_id"]);
    let row = |author_id: i64| -> Row {
        serde_json::from_value(serde_json::json!({"id": 1, "author_id": author_id})).unwrap()
    };
    let (old, new) = (row(7), row(8));
    let moved = spec
        .dependencies(&RowChange::Update {
            old: Some(&old),
            new: Some(&new),
        })
        .unwrap();
    assert!(moved.contains(&Dependency::invalidate_all("post")));
    let same = spec
        .dependencies(&RowChange::Update {
            old: Some(&old),
            new: Some(&old),
        })
        .unwrap();
    assert!(!same.contains(&Dependency::invalidate_all("post")));
}

/// `invalidated` dropped `n` entries: counted on the in-memory backend; Redis does not count
/// dependents (it invalidates in O(dependencies)), and must then say so rather than report a
/// number (an empty invalidation is an exact 0 everywhere).
fn assert_dropped(cache: &Cache, invalidated: Invalidated, n: u64) {
    if cache.backend().name() == "memory" {
        assert_eq!(invalidated.dropped(), Some(n));
    } else {
        assert!(
            invalidated.dropped().is_none_or(|d| d == n),
            "{invalidated:?}"
        );
    }
}
