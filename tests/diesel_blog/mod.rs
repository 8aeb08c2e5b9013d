//! The Diesel models of the Diesel tests: posts scoped by (published, category) and by the
//! nullable `series`, their comments (for joins and `belonging_to`) and their tags (a
//! composite primary key). Shared by the `diesel*` test crates.
#![allow(dead_code)]

use diesel::connection::SimpleConnection;
use matroska::seaorm::outbox::RelayHandle;
use matroska::{Cache, CacheDeps};
use serde::{Deserialize, Serialize};

use crate::support::db::{Kind, ScratchDb};

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

    diesel::table! {
        comments (id) {
            id -> Integer,
            post_id -> Integer,
            body -> Text,
        }
    }

    diesel::table! {
        post_tags (post_id, tag) {
            post_id -> Integer,
            tag -> Text,
            note -> Text,
        }
    }

    diesel::joinable!(comments -> posts (post_id));
    diesel::allow_tables_to_appear_in_same_query!(posts, comments);
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
    /// Folded as MariaDB's default `_ci` collations compare (without it, the relay's
    /// automatic collation check on MariaDB makes these columns coarse).
    #[cache(fold = "ci_ai")]
    pub category: String,
    pub published: bool,
    #[cache(fold = "ci_ai")]
    pub series: Option<String>,
}

/// A comment on a post: joins (`comments -> posts`) and `belonging_to`.
#[derive(
    Clone,
    Debug,
    PartialEq,
    Eq,
    diesel::Queryable,
    diesel::Selectable,
    diesel::Identifiable,
    diesel::Associations,
    Serialize,
    Deserialize,
    matroska::CacheDeps,
)]
#[diesel(table_name = schema::comments, belongs_to(Post))]
pub struct Comment {
    pub id: i32,
    pub post_id: i32,
    pub body: String,
}

/// A tag of a post, keyed by `(post_id, tag)`.
#[derive(
    Clone,
    Debug,
    PartialEq,
    Eq,
    diesel::Queryable,
    diesel::Selectable,
    Serialize,
    Deserialize,
    matroska::CacheDeps,
)]
#[diesel(table_name = schema::post_tags, primary_key(post_id, tag))]
pub struct PostTag {
    pub post_id: i32,
    pub tag: String,
    pub note: String,
}

/// Every table the tests watch.
pub fn watched_tables() -> Vec<matroska::TableSpec> {
    use matroska::WatchedTable;
    vec![
        Post::watched_table(),
        Comment::watched_table(),
        PostTag::watched_table(),
    ]
}

pub fn published_in(category: &str) -> PostByPublishedCategory {
    PostByPublishedCategory {
        published: true,
        category: category.into(),
    }
}

/// The `posts`, `comments` and `post_tags` tables of `kind`.
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
    conn.batch_execute(&format!(
        "CREATE TABLE comments (id {id}, post_id INTEGER NOT NULL, body {text} NOT NULL); \
         CREATE TABLE post_tags (post_id INTEGER NOT NULL, tag {text} NOT NULL, \
         note {text} NOT NULL, PRIMARY KEY (post_id, tag))"
    ))
    .expect("create comments and post_tags");
}

/// Two tenants' databases (PostgreSQL schemas, MariaDB databases) with the same tables, each
/// holding one post titled after its tenant (`tenant a`, `tenant b`).
pub async fn tenants(kind: Kind, name: &str) -> [(ScratchDb, &'static str); 2] {
    use crate::support::db::DieselConn;
    let mut out = Vec::new();
    for title in ["tenant a", "tenant b"] {
        let db = ScratchDb::new(kind, name).await;
        let insert =
            format!("INSERT INTO posts (title, category, published) VALUES ('{title}', 'x', true)");
        if kind == Kind::Postgres {
            let mut conn = <diesel::PgConnection as DieselConn>::open(&db);
            create_tables(&mut conn, db.kind);
            conn.batch_execute(&insert).expect("insert");
        } else {
            let mut conn = <diesel::MysqlConnection as DieselConn>::open(&db);
            create_tables(&mut conn, db.kind);
            conn.batch_execute(&insert).expect("insert");
        }
        out.push((db, title));
    }
    match out.try_into() {
        Ok(two) => two,
        Err(_) => unreachable!("two tenants"),
    }
}

/// The probes every scenario caches: one per list and per row, with the dependencies the
/// cached queries use.
pub const FANTASY: &str = "fantasy-probe";
pub const SCI_FI: &str = "sci-fi-probe";
pub const ROW_A: &str = "row-a-probe";
pub const ROW_B: &str = "row-b-probe";
pub const ALL: &[&str] = &[FANTASY, SCI_FI, ROW_A, ROW_B];

pub struct Env<C> {
    // Dropped first (fields drop in order): a test that fails inside a transaction must close
    // it before the scratch database's cleanup waits on its locks.
    pub conn: C,
    pub db: ScratchDb,
    pub cache: Cache,
    pub relay: RelayHandle,
    /// A published fantasy post (`ROW_A`) and a published sci-fi one (`ROW_B`).
    pub a: Post,
    pub b: Post,
}

impl<C> Env<C> {
    /// Caches the four probes with the dependencies the cached queries use.
    pub async fn fill_probes(&self) {
        let c = &self.cache;
        c.put(FANTASY, &1, &published_in("fantasy").dependencies(), None)
            .await
            .unwrap();
        c.put(SCI_FI, &1, &published_in("sci-fi").dependencies(), None)
            .await
            .unwrap();
        c.put(ROW_A, &1, &[self.a.primary_key()], None)
            .await
            .unwrap();
        c.put(ROW_B, &1, &[self.b.primary_key()], None)
            .await
            .unwrap();
    }

    /// Waits until every probe of `gone` is dropped (bounded), then until the outbox is
    /// empty, then checks every probe of `kept` is still cached.
    pub async fn expect(&self, gone: &[&str], kept: &[&str]) {
        crate::support::relay::expect(&self.cache, &self.relay, gone, kept).await;
    }

    pub async fn wait_idle(&self) {
        crate::support::relay::wait_idle(&self.relay).await;
    }
}
