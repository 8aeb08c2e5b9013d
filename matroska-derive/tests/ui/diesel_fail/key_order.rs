//! `#[cache(key)]` in an order that contradicts `#[diesel(primary_key(..))]` (the order of
//! the tuple Diesel's `find` takes): `find`'s entries would depend on a key no write
//! invalidates.

diesel::table! { order_lines (order_id, line) { order_id -> BigInt, line -> Integer } }

#[derive(diesel::Queryable, matroska::CacheDeps)]
#[diesel(table_name = order_lines, primary_key(order_id, line))]
struct Line {
    #[cache(key)]
    line: i32,
    #[cache(key)]
    order_id: i64,
}

fn main() {}
