//! A Diesel model: entity name from `table_name` (a path), composite key from
//! `primary_key(..)` (columns), scope fields named by their `table!` columns, and condition
//! types that are Diesel filters (null-safe for `Option` fields).

mod schema {
    diesel::table! {
        order_lines (order_id, line) {
            order_id -> BigInt,
            line -> Integer,
            published -> Bool,
            category -> Text,
            #[sql_name = "type"]
            kind -> Text,
            editor_id -> Nullable<BigInt>,
        }
    }
}

use diesel::prelude::*;
use matroska::diesel::ScopeFilter;
use matroska::{CacheDeps, Dependency, ScopeCondition, Scoped, ToValue, Value, WatchedTable};
use schema::order_lines;

#[derive(Queryable, Selectable, Identifiable, matroska::CacheDeps)]
#[diesel(table_name = schema::order_lines, primary_key(order_id, line))]
#[scope(published, category)]
#[scope(ty, name = OfType)]
#[scope(editor_id)]
pub struct Line {
    pub order_id: i64,
    pub line: i32,
    pub published: bool,
    pub category: String,
    #[diesel(column_name = kind)]
    pub ty: String,
    pub editor_id: Option<i64>,
}

/// The SQL of a query filtered by `$filter`, as SQLite runs it.
macro_rules! sql {
    ($filter:expr) => {
        diesel::debug_query::<diesel::sqlite::Sqlite, _>(
            &order_lines::table.select(order_lines::line).filter($filter),
        )
        .to_string()
    };
}

fn main() {
    assert_eq!(Line::entity_name(), "order_lines");
    assert_eq!(Line::scope().name(), "order_lines");
    let line = Line {
        order_id: 7,
        line: 2,
        published: true,
        category: "books".into(),
        ty: "gift".into(),
        editor_id: None,
    };
    assert_eq!(
        line.primary_key(),
        Dependency::primary_key("order_lines", [7i64.to_value(), 2i32.to_value()])
    );

    let books = LineByPublishedCategory { published: true, category: "books".into() };
    assert_eq!(
        sql!(books.filter()),
        "SELECT `order_lines`.`line` FROM `order_lines` WHERE ((`order_lines`.`published` = ?) \
         AND (`order_lines`.`category` = ?)) -- binds: [true, \"books\"]"
    );
    let _: <LineByPublishedCategory as ScopeFilter>::Filter = ScopeFilter::filter(&books);

    // Conditions and the outbox name the column, not the field.
    let gifts = OfType { ty: "gift".into() };
    assert_eq!(gifts.fields(), [("kind", Value::from("gift"))]);
    let spec = Line::watched_table();
    assert_eq!(spec.table(), "order_lines");
    assert!(spec.watched_columns().contains(&"kind"));

    let unedited = LineByEditorId { editor_id: None };
    assert!(sql!(unedited.filter()).contains("IS NULL"));
}
