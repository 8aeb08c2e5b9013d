//! `#[diesel(primary_key(..))]` in another order than `table!`'s primary key: `find` takes
//! `table!`'s order, so the cache key would not be the key `find` is given.

diesel::table! { order_lines (order_id, line) { order_id -> BigInt, line -> Integer } }
diesel::table! { tags (id) { id -> Integer, slug -> Text } }

#[derive(diesel::Queryable, matroska::CacheDeps)]
#[diesel(table_name = order_lines, primary_key(line, order_id))]
struct Line {
    order_id: i64,
    line: i32,
}

/// A unique column, but not `table!`'s primary key.
#[derive(diesel::Queryable, matroska::CacheDeps)]
#[diesel(table_name = tags, primary_key(slug))]
struct Tag {
    id: i32,
    slug: String,
}

fn main() {}
