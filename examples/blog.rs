//! A small SeaORM blog with matroska: derived entities, cached queries, and invalidation on
//! every save, with no `invalidate` call in the application code.
//!
//! ```sh
//! cargo run -p matroska-tests --example blog                  # SQLite in memory
//! DATABASE_URL=postgres://postgres@127.0.0.1:5432/test cargo run -p matroska-tests --example blog
//! DATABASE_URL=mysql://root@127.0.0.1:3306/test cargo run -p matroska-tests --example blog
//! ```
//!
//! It creates (and at the end drops) the tables `blog_author` and `blog_article`.

use std::time::Duration;

use matroska::Cache;
use matroska::seaorm::{self, CachedExt};
use sea_orm::{
    ActiveModelTrait, ConnectOptions, ConnectionTrait, Database, DatabaseConnection, DbErr,
    EntityTrait, IntoActiveModel, QueryOrder, Schema, Set,
};

mod author {
    use sea_orm::entity::prelude::*;
    use serde::{Deserialize, Serialize};

    #[derive(
        Clone, Debug, PartialEq, Eq, DeriveEntityModel, Serialize, Deserialize, matroska::CacheDeps,
    )]
    #[sea_orm(table_name = "blog_author")]
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

    // Saves and deletes through `ActiveModel` invalidate the cache.
    matroska::seaorm::active_model_behavior!(ActiveModel);
}

mod article {
    use sea_orm::entity::prelude::*;
    use serde::{Deserialize, Serialize};

    /// Articles are listed by (published, category): `#[scope]` makes saves invalidate
    /// exactly the lists a row enters or leaves, and generates `ByPublishedCategory`.
    #[derive(
        Clone, Debug, PartialEq, Eq, DeriveEntityModel, Serialize, Deserialize, matroska::CacheDeps,
    )]
    #[sea_orm(table_name = "blog_article")]
    #[scope(published, category)]
    pub struct Model {
        #[sea_orm(primary_key)]
        pub id: i32,
        pub title: String,
        /// Compared as MariaDB's default collations compare (case, accents, trailing
        /// spaces), so a save of "Fantasy" drops the list cached for "fantasy".
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

    matroska::seaorm::active_model_behavior!(ActiveModel);
}

/// The published articles of a category, with their authors: cached, and dropped when an
/// article enters or leaves the list, or one of its rows (article or author) changes.
async fn front_page(
    cache: &Cache,
    db: &DatabaseConnection,
    category: &str,
) -> Result<Vec<(article::Model, Option<author::Model>)>, seaorm::Error> {
    let listed = article::ByPublishedCategory {
        published: true,
        category: category.into(),
    };
    article::Entity::find()
        .find_also_related(author::Entity)
        .order_by_asc(article::Column::Id)
        .cached(cache)
        .scoped(&listed)
        .ttl(Duration::from_secs(300))
        .all(db)
        .await
}

fn show(label: &str, page: &[(article::Model, Option<author::Model>)]) {
    let items: Vec<String> = page
        .iter()
        .map(|(a, by)| format!("{:?} by {}", a.title, by.as_ref().map_or("?", |u| &u.name)))
        .collect();
    println!("{label:<36} {}", items.join(", "));
}

async fn create_tables(db: &DatabaseConnection) -> Result<(), DbErr> {
    let schema = Schema::new(db.get_database_backend());
    db.execute_unprepared("DROP TABLE IF EXISTS blog_article")
        .await?;
    db.execute_unprepared("DROP TABLE IF EXISTS blog_author")
        .await?;
    db.execute(&schema.create_table_from_entity(author::Entity))
        .await?;
    db.execute(&schema.create_table_from_entity(article::Entity))
        .await?;
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::var("DATABASE_URL").unwrap_or_else(|_| "sqlite::memory:".into());
    let db = Database::connect(ConnectOptions::new(url).sqlx_logging(false).to_owned()).await?;
    create_tables(&db).await?;

    // The in-memory backend; with Redis: `Cache::builder(RedisBackend::connect(..).await?)`.
    let cache = Cache::memory();
    // Once at start-up: the cache the hooks invalidate.
    seaorm::set_global_cache(cache.clone())?;

    let kolypto = author::ActiveModel {
        name: Set("kolypto".into()),
        ..Default::default()
    }
    .insert(&db)
    .await?;
    let mut python = article::ActiveModel {
        title: Set("Python".into()),
        category: Set("programming".into()),
        published: Set(true),
        author_id: Set(kolypto.id),
        ..Default::default()
    }
    .insert(&db)
    .await?;

    show(
        "programming:",
        &front_page(&cache, &db, "programming").await?,
    );
    show(
        "programming (from the cache):",
        &front_page(&cache, &db, "programming").await?,
    );

    // A new article enters the list: the insert invalidates it.
    article::ActiveModel {
        title: Set("Cache".into()),
        category: Set("programming".into()),
        published: Set(true),
        author_id: Set(kolypto.id),
        ..Default::default()
    }
    .insert(&db)
    .await?;
    show(
        "after an insert:",
        &front_page(&cache, &db, "programming").await?,
    );

    // A related row changes: its primary key drops the list.
    let mut author = kolypto.into_active_model();
    author.name = Set("Mark".into());
    author.update(&db).await?;
    show(
        "after renaming the author:",
        &front_page(&cache, &db, "programming").await?,
    );

    // A move between categories drops both lists, in one round trip after the commit.
    show("cooking:", &front_page(&cache, &db, "cooking").await?);
    let id = python.id;
    python = seaorm::transaction(&db, |txn| {
        Box::pin(async move {
            article::ActiveModel {
                id: Set(id),
                category: Set("cooking".into()),
                ..Default::default()
            }
            .update(txn)
            .await
        })
    })
    .await?;
    show(
        "programming after the move:",
        &front_page(&cache, &db, "programming").await?,
    );
    show(
        "cooking after the move:",
        &front_page(&cache, &db, "cooking").await?,
    );

    // Bulk writes run no hooks: use the invalidating helpers.
    seaorm::bulk::update_many::<article::Entity>()
        .set(article::Column::Published, false)
        .filter(
            article::ByPublishedCategory {
                published: true,
                category: "cooking".into(),
            }
            .filter(),
        )
        .exec(&db)
        .await?;
    show(
        "cooking after unpublishing:",
        &front_page(&cache, &db, "cooking").await?,
    );
    let _ = python;

    db.execute_unprepared("DROP TABLE blog_article").await?;
    db.execute_unprepared("DROP TABLE blog_author").await?;
    Ok(())
}
