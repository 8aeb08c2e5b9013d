//! Every attribute mistake in one struct: all are reported, each at its own tokens.

use matroska::CacheDeps;

#[derive(CacheDeps)]
#[cache(entity = "a", entity = "b", key, frobnicate = 1)]
#[scope(published, categroy)]
#[scope(published, published)]
#[scope(when = |a: &Article| a.published)]
#[scope(category, colour = 1)]
struct Article {
    #[cache(entity = "x", weird)]
    id: i64,
    #[scope(id)]
    published: bool,
    category: String,
}

fn main() {}
