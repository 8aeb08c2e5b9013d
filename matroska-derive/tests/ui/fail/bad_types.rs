//! Errors the type checker finds in the generated code point at the user's tokens.

use matroska::CacheDeps;

#[derive(Debug, Clone)]
struct Colour(u8);

#[derive(CacheDeps)]
#[scope(published, when = 42)]
#[scope(colour)]
struct Article {
    id: i64,
    published: bool,
    colour: Colour,
}

#[derive(CacheDeps)]
#[scope(published, when = |a: &Article| a.published)]
struct Book {
    id: i64,
    published: bool,
}

fn main() {}
