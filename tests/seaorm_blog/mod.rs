//! The entities of the SeaORM tests: authors, and articles scoped by (published, category).
//! Shared by the `seaorm_*` test crates.
#![allow(dead_code)]

use sea_orm::{ConnectionTrait, DatabaseConnection, Schema};

pub mod author {
    use sea_orm::entity::prelude::*;
    use serde::{Deserialize, Serialize};

    #[derive(
        Clone, Debug, PartialEq, Eq, DeriveEntityModel, Serialize, Deserialize, matroska::CacheDeps,
    )]
    #[sea_orm(table_name = "author")]
    pub struct Model {
        #[sea_orm(primary_key)]
        pub id: i32,
        pub name: String,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {
        #[sea_orm(has_many = "super::article::Entity")]
        Article,
    }

    impl Related<super::article::Entity> for Entity {
        fn to() -> RelationDef {
            Relation::Article.def()
        }
    }

    matroska::seaorm::active_model_behavior!(ActiveModel);
}

pub mod article {
    use sea_orm::entity::prelude::*;
    use serde::{Deserialize, Serialize};

    /// Generates `ByPublishedCategory`, a `ScopeCondition` and `ScopeFilter`.
    #[derive(
        Clone, Debug, PartialEq, Eq, DeriveEntityModel, Serialize, Deserialize, matroska::CacheDeps,
    )]
    #[sea_orm(table_name = "article")]
    #[scope(published, category)]
    pub struct Model {
        #[sea_orm(primary_key)]
        pub id: i32,
        pub title: String,
        /// Folded as MariaDB's default `_ci` collations compare (a no-op for the lowercase
        /// categories the tests write; without it, MariaDB's automatic collation check makes
        /// the column coarse).
        #[cache(fold = "ci_ai")]
        pub category: String,
        pub published: bool,
        pub author_id: i32,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {
        #[sea_orm(
            belongs_to = "super::author::Entity",
            from = "Column::AuthorId",
            to = "super::author::Column::Id"
        )]
        Author,
    }

    impl Related<super::author::Entity> for Entity {
        fn to() -> RelationDef {
            Relation::Author.def()
        }
    }

    pub fn published_in(category: &str) -> ByPublishedCategory {
        ByPublishedCategory {
            published: true,
            category: category.into(),
        }
    }

    matroska::seaorm::active_model_behavior!(ActiveModel);
}

/// The article table without hooks, for measuring what the hooks add.
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

/// The rows of the stress tests: a version that every write bumps, and a watched bucket.
pub mod stress_row {
    use sea_orm::entity::prelude::*;
    use serde::{Deserialize, Serialize};

    /// Generates `ByBucket`, the scope condition of the list query.
    #[derive(
        Clone, Debug, PartialEq, Eq, DeriveEntityModel, Serialize, Deserialize, matroska::CacheDeps,
    )]
    #[sea_orm(table_name = "stress_row")]
    #[scope(bucket)]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: i64,
        pub version: i64,
        pub bucket: i32,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    matroska::seaorm::active_model_behavior!(ActiveModel);
}

/// Creates the tables.
pub async fn create_tables(db: &DatabaseConnection) {
    let schema = Schema::new(db.get_database_backend());
    for statement in [
        schema.create_table_from_entity(author::Entity),
        schema.create_table_from_entity(article::Entity),
    ] {
        db.execute(&statement).await.expect("create table");
    }
}
