//! A scope names an embedded struct: not a column to filter on.

diesel::table! { posts (id) { id -> Integer, author_name -> Text } }

#[derive(diesel::Queryable, diesel::Selectable)]
#[diesel(table_name = posts)]
struct Author {
    author_name: String,
}

#[derive(diesel::Queryable, diesel::Selectable, matroska::CacheDeps)]
#[diesel(table_name = posts)]
#[scope(author)]
struct Post {
    id: i32,
    #[diesel(embed)]
    author: Author,
}

fn main() {}
