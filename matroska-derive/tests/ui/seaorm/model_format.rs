//! SeaORM 2.0's `#[sea_orm::model]` format: the derive and `#[scope]` are copied onto the
//! generated `ModelEx`; it compiles, with one `ByTitle`, and `ModelEx` shares `Model`'s key.

mod post {
    use sea_orm::entity::prelude::*;

    #[sea_orm::model]
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel, matroska::CacheDeps)]
    #[sea_orm(table_name = "post")]
    #[scope(title)]
    pub struct Model {
        #[sea_orm(primary_key)]
        pub id: i32,
        pub title: String,
        pub user_id: i32,
        #[sea_orm(belongs_to, from = "user_id", to = "id")]
        pub user: HasOne<super::user::Entity>,
    }

    impl ActiveModelBehavior for ActiveModel {}
}

mod user {
    use sea_orm::entity::prelude::*;

    #[sea_orm::model]
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "user", model_attrs(derive(matroska::CacheDeps), scope(name)))]
    pub struct Model {
        #[sea_orm(primary_key)]
        pub id: i32,
        pub name: String,
        #[sea_orm(has_many)]
        pub posts: HasMany<super::post::Entity>,
    }

    impl ActiveModelBehavior for ActiveModel {}
}

fn main() {
    use matroska::{CacheDeps, Dependency, ScopeCondition};
    let condition = post::ByTitle { title: "t".into() };
    assert_eq!(condition.scope_name(), "post");
    let by_name = user::ByName { name: "n".into() };
    assert_eq!(by_name.scope_name(), "user");
    assert_eq!(<post::ModelEx as CacheDeps>::entity_name(), "post");
    let _ = Dependency::any_change("post");
}
