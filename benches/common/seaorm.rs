//! Set-up of the SeaORM benches: the same article table seen through a hooked entity and a
//! plain one, and scratch databases on SQLite and PostgreSQL.

use std::path::PathBuf;

use sea_orm::{
    ConnectOptions, ConnectionTrait, Database, DatabaseConnection, EntityTrait, Schema, Set,
};

/// Articles with the invalidation hooks (`active_model_behavior!`).
pub mod article {
    use sea_orm::entity::prelude::*;
    use serde::{Deserialize, Serialize};

    /// Generates `ByPublishedCategory`.
    #[derive(
        Clone, Debug, PartialEq, Eq, DeriveEntityModel, Serialize, Deserialize, matroska::CacheDeps,
    )]
    #[sea_orm(table_name = "article")]
    #[scope(published, category)]
    pub struct Model {
        #[sea_orm(primary_key)]
        pub id: i32,
        pub title: String,
        pub category: String,
        pub published: bool,
        pub author_id: i32,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    matroska::seaorm::active_model_behavior!(ActiveModel);
}

/// The same table without hooks: the baseline of a save.
pub mod plain_article {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "article")]
    pub struct Model {
        #[sea_orm(primary_key)]
        pub id: i32,
        pub title: String,
        pub category: String,
        pub published: bool,
        pub author_id: i32,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// Rows in the table: ids 1..=ARTICLES, categories A to E in turn, every other published,
/// so `published_in("A")` matches 10 rows.
pub const ARTICLES: i32 = 100;

/// The published articles of `category`.
pub fn published_in(category: &str) -> article::ByPublishedCategory {
    article::ByPublishedCategory {
        published: true,
        category: category.into(),
    }
}

/// A database of the bench's own, with the article table filled; dropped with
/// [`ScratchDb::drop_now`].
pub struct ScratchDb {
    pub name: &'static str,
    pub conn: DatabaseConnection,
    cleanup: Cleanup,
}

enum Cleanup {
    File(PathBuf),
    Schema { admin_url: String, schema: String },
    Database { admin_url: String, database: String },
}

/// `DATABASE_URL_POSTGRES`, default `postgres://postgres@127.0.0.1:5432/test`.
pub fn postgres_url() -> String {
    std::env::var("DATABASE_URL_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

impl ScratchDb {
    /// A SQLite file in the temp dir, in WAL mode (as an application would run it).
    pub async fn sqlite() -> Self {
        let path = std::env::temp_dir().join(format!("{}.db", super::prefix("seaorm")));
        let conn = Database::connect(
            ConnectOptions::new(format!("sqlite://{}?mode=rwc", path.display()))
                .sqlx_logging(false)
                .to_owned(),
        )
        .await
        .expect("SQLite");
        conn.execute_unprepared("PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL")
            .await
            .expect("WAL mode");
        Self::filled("sqlite", conn, Cleanup::File(path)).await
    }

    /// A fresh schema on `DATABASE_URL_POSTGRES`.
    pub async fn postgres() -> Self {
        let admin_url = postgres_url();
        let schema = super::prefix("seaorm");
        let admin = Database::connect(ConnectOptions::new(admin_url.clone()).sqlx_logging(false).to_owned())
            .await
            .unwrap_or_else(|e| panic!("PostgreSQL at {admin_url} is required for this bench (set DATABASE_URL_POSTGRES): {e}"));
        admin
            .execute_unprepared(&format!(
                "DROP SCHEMA IF EXISTS \"{schema}\" CASCADE; CREATE SCHEMA \"{schema}\""
            ))
            .await
            .expect("create schema");
        admin.close().await.ok();
        let conn = Database::connect(
            ConnectOptions::new(admin_url.clone())
                .sqlx_logging(false)
                .set_schema_search_path(schema.clone())
                .to_owned(),
        )
        .await
        .expect("connect to the schema");
        Self::filled("postgres", conn, Cleanup::Schema { admin_url, schema }).await
    }

    /// A fresh database on `DATABASE_URL_MYSQL` (MariaDB here).
    pub async fn mysql() -> Self {
        let admin_url = std::env::var("DATABASE_URL_MYSQL")
            .unwrap_or_else(|_| "mysql://root@127.0.0.1:3306/test".into());
        let database = super::prefix("seaorm");
        let admin = Database::connect(
            ConnectOptions::new(admin_url.clone())
                .sqlx_logging(false)
                .to_owned(),
        )
        .await
        .unwrap_or_else(|e| {
            panic!(
                "MariaDB at {admin_url} is required for this bench (set DATABASE_URL_MYSQL): {e}"
            )
        });
        admin
            .execute_unprepared(&format!(
                "DROP DATABASE IF EXISTS `{database}`; CREATE DATABASE `{database}`"
            ))
            .await
            .expect("create database");
        admin.close().await.ok();
        let base = admin_url
            .rsplit_once('/')
            .map_or(admin_url.as_str(), |(b, _)| b);
        let conn = Database::connect(
            ConnectOptions::new(format!("{base}/{database}"))
                .sqlx_logging(false)
                .to_owned(),
        )
        .await
        .expect("connect to the database");
        Self::filled(
            "mariadb",
            conn,
            Cleanup::Database {
                admin_url,
                database,
            },
        )
        .await
    }

    async fn filled(name: &'static str, conn: DatabaseConnection, cleanup: Cleanup) -> Self {
        let schema = Schema::new(conn.get_database_backend());
        conn.execute(&schema.create_table_from_entity(plain_article::Entity))
            .await
            .expect("create table");
        // No hooks: nothing is cached yet.
        plain_article::Entity::insert_many((1..=ARTICLES).map(|id| plain_article::ActiveModel {
            id: Set(id),
            title: Set(format!("Article number {id}")),
            category: Set(["A", "B", "C", "D", "E"][id as usize % 5].into()),
            published: Set(id % 2 == 0),
            author_id: Set(id % 7),
        }))
        .exec(&conn)
        .await
        .expect("fill the table");
        ScratchDb {
            name,
            conn,
            cleanup,
        }
    }

    /// Drops the file or schema.
    pub async fn drop_now(self) {
        self.conn.close().await.ok();
        match self.cleanup {
            Cleanup::File(path) => {
                for suffix in ["", "-wal", "-shm"] {
                    let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
                }
            }
            Cleanup::Database {
                admin_url,
                database,
            } => {
                if let Ok(admin) = Database::connect(
                    ConnectOptions::new(admin_url)
                        .sqlx_logging(false)
                        .to_owned(),
                )
                .await
                {
                    let _ = admin
                        .execute_unprepared(&format!("DROP DATABASE IF EXISTS `{database}`"))
                        .await;
                    admin.close().await.ok();
                }
            }
            Cleanup::Schema { admin_url, schema } => {
                if let Ok(admin) = Database::connect(
                    ConnectOptions::new(admin_url)
                        .sqlx_logging(false)
                        .to_owned(),
                )
                .await
                {
                    let _ = admin
                        .execute_unprepared(&format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"))
                        .await;
                    admin.close().await.ok();
                }
            }
        }
    }
}
