//! A Diesel model without a key: the error names `#[diesel(primary_key(..))]`.

diesel::table! { order_lines (order_id, line) { order_id -> BigInt, line -> Integer } }

#[derive(diesel::Queryable, matroska::CacheDeps)]
#[diesel(table_name = order_lines)]
struct Line {
    order_id: i64,
    line: i32,
}

fn main() {}
