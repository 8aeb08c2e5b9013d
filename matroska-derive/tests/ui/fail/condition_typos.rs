//! The generated condition type only has the scope's fields, with their own types.

use matroska::CacheDeps;

#[derive(CacheDeps)]
#[scope(published, category)]
struct Article {
    id: i64,
    published: bool,
    category: String,
    title: String,
}

fn main() {
    // A misspelt field.
    let _ = ArticleByPublishedCategory { published: true, categroy: "fantasy".into() };
    // A field the scope does not describe.
    let _ = ArticleByPublishedCategory { published: true, category: "fantasy".into(), title: String::new() };
    // A value of the wrong type.
    let _ = ArticleByPublishedCategory { published: "true", category: "fantasy".into() };
    // No condition type for undescribed fields.
    let _ = ArticleByTitle { title: String::new() };
}
