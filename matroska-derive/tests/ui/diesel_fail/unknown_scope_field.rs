//! A scope names a field the model does not have.

diesel::table! { posts (id) { id -> Integer, category -> Text } }

#[derive(diesel::Queryable, diesel::Selectable, matroska::CacheDeps)]
#[diesel(table_name = posts)]
#[scope(categroy)]
struct Post {
    id: i32,
    category: String,
}

fn main() {}
