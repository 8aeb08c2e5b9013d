//! A SeaORM model: entity name and composite key from `#[sea_orm(...)]`, condition types
//! named after the fields only (the module is the namespace), and usable as query filters.

mod line {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, DeriveEntityModel, matroska::CacheDeps)]
    #[sea_orm(table_name = "order_lines")]
    #[scope(published, category)]
    #[scope(editor_id, shipped_on)]
    #[scope(r#type, name = OfType)]
    #[scope(tracking)]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub order_id: i64,
        #[sea_orm(primary_key, auto_increment = false)]
        pub line: i32,
        pub published: bool,
        #[sea_orm(column_type = "Text")]
        pub category: String,
        pub editor_id: Option<i64>,
        pub shipped_on: Option<Date>,
        #[sea_orm(enum_name = "Kind")]
        pub r#type: String,
        pub tracking: Uuid,
        pub created_at: DateTimeUtc,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

use matroska::seaorm::ScopeFilter;
use matroska::{CacheDeps, Dependency, ScopeCondition, Scoped, ToValue, Value};
use sea_orm::{DbBackend, EntityTrait, QueryFilter, QueryTrait};

fn sql(filter: sea_orm::Condition) -> String {
    line::Entity::find()
        .filter(filter)
        .build(DbBackend::Postgres)
        .to_string()
}

fn main() {
    assert_eq!(line::Model::entity_name(), "order_lines");
    assert_eq!(line::Model::scope().name(), "order_lines");

    let fantasy = line::ByPublishedCategory {
        published: true,
        category: "fantasy".into(),
    };
    let where_clause = sql(fantasy.filter());
    assert!(
        where_clause.ends_with(
            r#"WHERE "order_lines"."published" = TRUE AND "order_lines"."category" = 'fantasy'"#
        ),
        "{where_clause}"
    );
    // The trait and the inherent method agree.
    assert_eq!(sql(ScopeFilter::filter(&fantasy)), where_clause);
    assert_eq!(fantasy.scope_name(), "order_lines");

    let day = sea_orm::prelude::Date::from_ymd_opt(2026, 11, 25).unwrap();
    let unassigned = line::ByEditorIdShippedOn {
        editor_id: None,
        shipped_on: Some(day),
    };
    let where_clause = sql(unassigned.filter());
    assert!(
        where_clause.ends_with(
            r#"WHERE "order_lines"."editor_id" IS NULL AND "order_lines"."shipped_on" = '2026-11-25'"#
        ),
        "{where_clause}"
    );
    assert_eq!(
        unassigned.fields(),
        [
            ("editor_id", Value::Null),
            ("shipped_on", Value::typed("date", "2026-11-25"))
        ]
    );

    let books = line::OfType {
        r#type: "book".into(),
    };
    let where_clause = sql(books.filter());
    assert!(
        where_clause.ends_with(r#"WHERE "order_lines"."kind" = 'book'"#),
        "{where_clause}"
    );
    // On a SeaORM model, scope fields are named by their columns, as SeaORM reports them.
    assert_eq!(books.fields(), [("kind", Value::from("book"))]);
    let scope_fields: Vec<Vec<String>> = line::Model::scope()
        .described_fields()
        .map(<[String]>::to_vec)
        .collect();
    assert_eq!(scope_fields[2], ["kind"]);

    let tracking = sea_orm::prelude::Uuid::nil();
    let by_tracking = line::ByTracking { tracking };
    assert_eq!(by_tracking.fields()[0].1, tracking.to_value());

    let model = line::Model {
        order_id: 7,
        line: 2,
        published: true,
        category: "fantasy".into(),
        editor_id: None,
        shipped_on: None,
        r#type: "book".into(),
        tracking,
        created_at: Default::default(),
    };
    assert_eq!(
        model.primary_key(),
        Dependency::primary_key("order_lines", [7, 2])
    );
    let deps = line::Model::scope().dependencies_for(&model, None);
    assert!(deps.contains(&fantasy.dependencies()[0]));
}
