use matroska::CacheDeps;

#[derive(CacheDeps)]
#[scope(published, category)]
#[scope(category, published)]
#[scope(category, name = ArticleByPublishedCategory)]
struct Article {
    id: i64,
    published: bool,
    category: String,
}

#[derive(CacheDeps)]
#[scope(kind)]
struct Tagged<T> {
    id: i64,
    kind: T,
}

fn main() {}
