//! `primary_key(..)` names a column no field has.

diesel::table! { posts (slug) { slug -> Text, title -> Text } }

#[derive(diesel::Queryable, matroska::CacheDeps)]
#[diesel(table_name = posts, primary_key(sluggg))]
struct Post {
    slug: String,
    title: String,
}

fn main() {}
