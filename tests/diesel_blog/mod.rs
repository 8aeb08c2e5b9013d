//! The Diesel models of the Diesel tests: posts scoped by (published, category) and by the
//! nullable `series`. Shared by the `diesel*` test crates.
#![allow(dead_code)]

use diesel::connection::SimpleConnection;
use serde::{Deserialize, Serialize};

use crate::support::db::Kind;

pub mod schema {
    diesel::table! {
        posts (id) {
            id -> Integer,
            title -> Text,
            category -> Text,
            published -> Bool,
            series -> Nullable<Text>,
        }
    }
}

/// Generates `PostByPublishedCategory` and `PostBySeries`: scope conditions that are also
/// Diesel filters.
#[derive(
    Clone,
    Debug,
    PartialEq,
    Eq,
    diesel::Queryable,
    diesel::Selectable,
    diesel::Identifiable,
    Serialize,
    Deserialize,
    matroska::CacheDeps,
)]
#[diesel(table_name = schema::posts)]
#[scope(published, category)]
#[scope(series)]
pub struct Post {
    pub id: i32,
    pub title: String,
    pub category: String,
    pub published: bool,
    pub series: Option<String>,
}

pub fn published_in(category: &str) -> PostByPublishedCategory {
    PostByPublishedCategory {
        published: true,
        category: category.into(),
    }
}

/// The `posts` table of `kind`.
pub fn create_tables(conn: &mut impl SimpleConnection, kind: Kind) {
    let id = match kind {
        Kind::Sqlite => "INTEGER PRIMARY KEY AUTOINCREMENT",
        Kind::Postgres => "SERIAL PRIMARY KEY",
        Kind::MySql => "INTEGER AUTO_INCREMENT PRIMARY KEY",
    };
    let text = match kind {
        Kind::MySql => "VARCHAR(255)",
        _ => "TEXT",
    };
    conn.batch_execute(&format!(
        "CREATE TABLE posts (id {id}, title {text} NOT NULL, category {text} NOT NULL, \
         published BOOLEAN NOT NULL, series {text})"
    ))
    .expect("create posts");
}
