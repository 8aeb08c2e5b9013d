//! SeaORM 2.0's `#[sea_orm::model]` entity format: the attribute copies the model's derives
//! and attributes onto a generated `ModelEx` (the model with its related rows). The derive and
//! `#[scope]` work there, directly and through `#[sea_orm(model_attrs(..))]`, and the entities
//! cache and invalidate like any other.
#![cfg(feature = "seaorm")]
#![allow(clippy::unwrap_used)]

mod support;

use matroska::seaorm::{self, CachedExt};
use matroska::{CacheDeps, Scoped};
use sea_orm::{ActiveModelTrait, ConnectionTrait, EntityTrait, QueryFilter, Schema, Set};

mod user {
    use sea_orm::entity::prelude::*;

    #[sea_orm::model]
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel, matroska::CacheDeps)]
    #[sea_orm(table_name = "fmt_user")]
    pub struct Model {
        #[sea_orm(primary_key)]
        pub id: i32,
        pub name: String,
        #[sea_orm(has_many)]
        pub posts: HasMany<super::post::Entity>,
    }

    matroska::seaorm::active_model_behavior!(ActiveModel);
}

mod post {
    use sea_orm::entity::prelude::*;

    /// The derive and the scope are copied onto `ModelEx` by `#[sea_orm::model]`.
    #[sea_orm::model]
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel, matroska::CacheDeps)]
    #[sea_orm(table_name = "fmt_post")]
    #[sea_orm(model_attrs(derive(serde::Serialize, serde::Deserialize)))]
    #[scope(title)]
    pub struct Model {
        #[sea_orm(primary_key)]
        pub id: i32,
        pub title: String,
        pub user_id: i32,
        #[sea_orm(belongs_to, from = "user_id", to = "id")]
        pub user: HasOne<super::user::Entity>,
    }

    matroska::seaorm::active_model_behavior!(ActiveModel);
}

mod tag {
    use sea_orm::entity::prelude::*;

    /// The `model_attrs` route: the derive and the scope on `Model` only.
    #[sea_orm::model]
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(
        table_name = "fmt_tag",
        model_attrs(
            derive(matroska::CacheDeps, serde::Serialize, serde::Deserialize),
            scope(label)
        )
    )]
    pub struct Model {
        #[sea_orm(primary_key)]
        pub id: i32,
        pub label: String,
    }

    matroska::seaorm::active_model_behavior!(ActiveModel);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn model_format_caches_and_invalidates() {
    let db = support::db::ScratchDb::sqlite("model_format").await;
    let schema = Schema::new(db.backend());
    for create in [
        schema.create_table_from_entity(user::Entity),
        schema.create_table_from_entity(post::Entity),
        schema.create_table_from_entity(tag::Entity),
    ] {
        db.conn.execute(&create).await.unwrap();
    }
    let cache = support::memory_cache();
    seaorm::with_cache(cache.clone(), async {
        let author = user::ActiveModel {
            name: Set("a".into()),
            ..Default::default()
        }
        .insert(&db.conn)
        .await
        .unwrap();
        let hello = post::ByTitle {
            title: "hello".into(),
        };
        let list = || post::Entity::find().filter(hello.filter());
        assert!(
            list()
                .cached(&cache)
                .scoped(&hello)
                .all(&db.conn)
                .await
                .unwrap()
                .is_empty()
        );
        // Entering the cached list drops it.
        post::ActiveModel {
            title: Set("hello".into()),
            user_id: Set(author.id),
            ..Default::default()
        }
        .insert(&db.conn)
        .await
        .unwrap();
        assert_eq!(
            list()
                .cached(&cache)
                .scoped(&hello)
                .all(&db.conn)
                .await
                .unwrap()
                .len(),
            1
        );

        let rust = tag::ByLabel {
            label: "rust".into(),
        };
        let tags = || tag::Entity::find().filter(rust.filter());
        assert!(
            tags()
                .cached(&cache)
                .scoped(&rust)
                .all(&db.conn)
                .await
                .unwrap()
                .is_empty()
        );
        tag::ActiveModel {
            label: Set("rust".into()),
            ..Default::default()
        }
        .insert(&db.conn)
        .await
        .unwrap();
        assert_eq!(
            tags()
                .cached(&cache)
                .scoped(&rust)
                .all(&db.conn)
                .await
                .unwrap()
                .len(),
            1
        );
    })
    .await;

    // `ModelEx` has the same entity and key as `Model`.
    assert_eq!(<post::ModelEx as CacheDeps>::entity_name(), "fmt_post");
    assert_eq!(post::Model::scope().name(), "fmt_post");
}
