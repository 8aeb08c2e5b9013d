//! `watch = [..]` names the columns a scope's values come from: each must be a field (or a
//! column name as a string), and a scope takes `when` or `watch`, not both.
use matroska::CacheDeps;

#[derive(CacheDeps)]
#[scope(author, watch = [auhtor_id])]
#[scope(title, watch = [1])]
#[scope(author, title, when = |_: &Post| true, watch = ["author_id"])]
struct Post {
    id: i64,
    title: String,
    author_id: i64,
    author: String,
}

fn main() {}
