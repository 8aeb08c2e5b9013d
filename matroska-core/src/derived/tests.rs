//! The analyser on the SQL SeaORM and Diesel render (copied from their output for PostgreSQL,
//! MySQL and SQLite; the integration crates test it on SQL they build themselves), and a
//! property test of the rules against the relay's own dependencies.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;

use proptest::prelude::*;
use serde_json::json;

use super::*;
use crate::db_json::ColumnDecoder;
use crate::fold::Fold;
use crate::table::RowChange;

fn spec() -> TableSpec {
    TableSpec::new("posts", "posts")
        .key("id", ColumnDecoder::of::<i32>())
        .scope(
            &[
                ("published", ColumnDecoder::of::<bool>()),
                ("category", ColumnDecoder::of::<String>()),
            ],
            false,
        )
        .scope(&[("series", ColumnDecoder::of::<Option<String>>())], false)
}

fn int(i: i128) -> Bound {
    Bound::Scalar(Value::Int(i))
}

fn text(s: &str) -> Bound {
    Bound::Scalar(Value::from(s))
}

fn pk(id: i32) -> Dependency {
    Dependency::primary_key("posts", [id])
}

fn all() -> Dependency {
    Dependency::invalidate_all("posts")
}

fn coarse_reason(d: &Derivation) -> &str {
    match &d.basis {
        Basis::Coarse(reason) => reason,
        _ => panic!("expected coarse, got {d}"),
    }
}

fn deps(d: &Derivation) -> BTreeSet<Dependency> {
    assert!(!d.is_coarse(), "{d}");
    d.dependencies.iter().cloned().collect()
}

const PG_COLUMNS: &str = r#"SELECT "posts"."id", "posts"."title", "posts"."category", "posts"."published", "posts"."series" FROM "posts""#;
const MY_COLUMNS: &str = "SELECT `posts`.`id`, `posts`.`title`, `posts`.`category`, `posts`.`published`, `posts`.`series` FROM `posts`";

#[test]
fn primary_key_lists_in_every_dialect() {
    let cases = [
        // Diesel, PostgreSQL: `filter(posts::id.eq_any(ids))`.
        (
            Dialect::Postgres,
            format!(
                r#"{PG_COLUMNS} WHERE ("posts"."id" = ANY($1)) ORDER BY "posts"."title" LIMIT $2 OFFSET $3"#
            ),
            vec![
                Bound::List(vec![Value::Int(1), Value::Int(2)]),
                int(10),
                int(0),
            ],
        ),
        // SeaORM, PostgreSQL: `filter(Column::Id.is_in([1, 2]))`.
        (
            Dialect::Postgres,
            format!(r#"{PG_COLUMNS} WHERE "posts"."id" IN ($1, $2) ORDER BY "posts"."title" DESC"#),
            vec![int(1), int(2)],
        ),
        // Diesel, MySQL.
        (
            Dialect::MySql,
            format!("{MY_COLUMNS} WHERE (`posts`.`id` IN (?, ?)) ORDER BY `posts`.`title` LIMIT ?"),
            vec![int(1), int(2), int(5)],
        ),
        // Diesel, SQLite (backticks there), exactly as rendered.
        (
            Dialect::Sqlite,
            "SELECT `posts`.`id`, `posts`.`title`, `posts`.`category`, `posts`.`published`, `posts`.`series` FROM `posts` WHERE ((`posts`.`id` IN (?, ?)) AND (`posts`.`title` = ?)) ORDER BY `posts`.`title` LIMIT ? OFFSET ?".to_owned(),
            vec![int(1), int(2), text("x"), int(5), int(1)],
        ),
        // SQLite, with another conjunct on an unwatched column: still only keys 1, 2.
        (
            Dialect::Sqlite,
            format!(
                r#"{PG_COLUMNS} WHERE (("posts"."id" IN (?, ?)) AND ("posts"."title" = ?)) LIMIT -1 OFFSET ?"#
            ),
            vec![int(2), int(1), text("A"), int(3)],
        ),
    ];
    for (dialect, sql, binds) in cases {
        let d = derive(&spec(), dialect, &sql, &binds);
        assert_eq!(deps(&d), BTreeSet::from([pk(1), pk(2), all()]), "{sql}");
        assert_eq!(d.basis, Basis::Derived(vec![Term::PrimaryKeys(2)]));
    }
}

#[test]
fn a_declared_scope_is_derived_as_scoped_would_give_it() {
    let scoped = Dependency::condition(
        "posts",
        [
            ("published", Value::Bool(true)),
            ("category", Value::from("fantasy")),
        ],
    );
    // What `.scoped(&published_in("fantasy"))` renders, and the same by hand.
    for (dialect, sql, binds) in [
        (
            Dialect::Postgres,
            format!(
                r#"{PG_COLUMNS} WHERE (("posts"."published" = $1) AND ("posts"."category" = $2)) ORDER BY "posts"."id""#
            ),
            vec![Bound::Scalar(Value::Bool(true)), text("fantasy")],
        ),
        (
            Dialect::MySql,
            format!(
                "{MY_COLUMNS} WHERE `posts`.`category` = ? AND `posts`.`published` = ? ORDER BY `posts`.`published` ASC, `posts`.`category` DESC"
            ),
            vec![text("fantasy"), Bound::Scalar(Value::Bool(true))],
        ),
    ] {
        let d = derive(&spec(), dialect, &sql, &binds);
        assert_eq!(deps(&d), BTreeSet::from([scoped.clone(), all()]), "{sql}");
    }
    // A subset of the scope's fields, and an `IN` list: one condition per value.
    let d = derive(
        &spec(),
        Dialect::Sqlite,
        &format!(r#"{PG_COLUMNS} WHERE "posts"."category" IN (?, ?)"#),
        &[text("a"), text("b")],
    );
    let by = |c: &str| Dependency::condition("posts", [("category", Value::from(c))]);
    assert_eq!(deps(&d), BTreeSet::from([by("a"), by("b"), all()]));
}

#[test]
fn a_scope_with_an_unwatched_conjunct_or_order_is_coarse() {
    let d = derive(
        &spec(),
        Dialect::Sqlite,
        &format!(r#"{PG_COLUMNS} WHERE "posts"."category" = ? AND "posts"."title" = ?"#),
        &[text("a"), text("t")],
    );
    assert!(coarse_reason(&d).contains("no declared scope"), "{d}");
    let d = derive(
        &spec(),
        Dialect::Sqlite,
        &format!(r#"{PG_COLUMNS} WHERE "posts"."category" = ? ORDER BY "posts"."title" LIMIT ?"#),
        &[text("a"), int(1)],
    );
    assert!(coarse_reason(&d).contains("ordered by `title`"), "{d}");
    // Fields of two scopes in one term: neither scope's extractor watches the other's.
    let d = derive(
        &spec(),
        Dialect::Sqlite,
        &format!(r#"{PG_COLUMNS} WHERE "posts"."category" = ? AND "posts"."series" = ?"#),
        &[text("a"), text("s")],
    );
    assert!(d.is_coarse(), "{d}");
}

#[test]
fn guarded_opaque_and_wide_scopes_serve_as_scope_condition_would() {
    let guarded = TableSpec::new("posts", "posts")
        .key("id", ColumnDecoder::of::<i32>())
        .scope(&[("category", ColumnDecoder::of::<String>())], true);
    let sql = format!(r#"{PG_COLUMNS} WHERE "posts"."category" = ?"#);
    assert!(derive(&guarded, Dialect::Sqlite, &sql, &[text("a")]).is_coarse());
    let opaque = TableSpec::new("posts", "posts")
        .key("id", ColumnDecoder::of::<i32>())
        .scope_watching(&["category"]);
    assert!(derive(&opaque, Dialect::Sqlite, &sql, &[text("a")]).is_coarse());
    let names = ["a", "b", "c", "d", "category"];
    let columns: Vec<(&str, ColumnDecoder)> = names
        .iter()
        .map(|n| (*n, ColumnDecoder::of::<String>()))
        .collect();
    let wide = TableSpec::new("posts", "posts").scope(&columns, false);
    // Five fields serve only their full set, as `Scope::condition`.
    assert!(derive(&wide, Dialect::Sqlite, &sql, &[text("a")]).is_coarse());
    let full = format!(
        r#"{PG_COLUMNS} WHERE "posts"."a" = ? AND "posts"."b" = ? AND "posts"."c" = ? AND "posts"."d" = ? AND "posts"."category" = ?"#
    );
    let binds: Vec<Bound> = names.iter().map(|n| text(n)).collect();
    assert!(!derive(&wide, Dialect::Sqlite, &full, &binds).is_coarse());
}

#[test]
fn null_is_a_condition_value_only_for_nullable_fields() {
    let d = derive(
        &spec(),
        Dialect::Postgres,
        &format!(r#"{PG_COLUMNS} WHERE "posts"."series" IS NULL ORDER BY "posts"."id""#),
        &[],
    );
    assert_eq!(
        deps(&d),
        BTreeSet::from([
            Dependency::condition("posts", [("series", Value::Null)]),
            all()
        ])
    );
    let d = derive(
        &spec(),
        Dialect::Postgres,
        &format!(r#"{PG_COLUMNS} WHERE "posts"."category" IS NULL"#),
        &[],
    );
    assert!(d.is_coarse(), "{d}");
    // The derive's null-safe filter of an `Option` field: `= $1 OR (IS NULL AND $2 IS NULL)`
    // compares a bound parameter, which is outside the subset: `.scoped` serves it.
    let d = derive(
        &spec(),
        Dialect::Postgres,
        &format!(
            r#"{PG_COLUMNS} WHERE (("posts"."series" = $1) OR (("posts"."series" IS NULL) AND ($2 IS NULL)))"#
        ),
        &[text("s"), text("s")],
    );
    assert!(d.is_coarse(), "{d}");
}

#[test]
fn disjunctions_are_the_union_of_precise_terms() {
    let sql = format!(
        r#"{PG_COLUMNS} WHERE "posts"."id" = $1 OR ("posts"."published" = $2 AND "posts"."category" = $3)"#
    );
    let binds = [int(7), Bound::Scalar(Value::Bool(false)), text("x")];
    let d = derive(&spec(), Dialect::Postgres, &sql, &binds);
    let cond = Dependency::condition(
        "posts",
        [
            ("published", Value::Bool(false)),
            ("category", Value::from("x")),
        ],
    );
    assert_eq!(deps(&d), BTreeSet::from([pk(7), cond, all()]));
    // AND over OR distributes: (id = 1 OR id = 2) AND title = 'x' is two key terms.
    let sql = format!(
        r#"{PG_COLUMNS} WHERE ("posts"."id" = $1 OR "posts"."id" = $2) AND "posts"."title" = $3"#
    );
    let d = derive(
        &spec(),
        Dialect::Postgres,
        &sql,
        &[int(1), int(2), text("x")],
    );
    assert_eq!(deps(&d), BTreeSet::from([pk(1), pk(2), all()]));
    // One imprecise term makes the whole query coarse.
    let sql = format!(r#"{PG_COLUMNS} WHERE "posts"."id" = $1 OR "posts"."title" = $2"#);
    assert!(derive(&spec(), Dialect::Postgres, &sql, &[int(1), text("x")]).is_coarse());
}

#[test]
fn anything_not_understood_is_coarse() {
    let cases = [
        r#"WHERE "posts"."id" > $1"#,
        r#"WHERE "posts"."id" <> $1"#,
        r#"WHERE "posts"."id" BETWEEN $1 AND $2"#,
        r#"WHERE "posts"."title" LIKE $1"#,
        r#"WHERE NOT ("posts"."id" = $1)"#,
        r#"WHERE "posts"."series" IS NOT NULL"#,
        r#"WHERE LOWER("posts"."category") = $1"#,
        r#"WHERE "posts"."id" = $1::int"#,
        r#"WHERE CAST("posts"."id" AS INT) = $1"#,
        r#"WHERE "posts"."id" IN (SELECT "c"."post_id" FROM "c")"#,
        r#"WHERE "posts"."id" = "posts"."published""#,
        r#"WHERE "posts"."category" = 'fantasy'"#,
        r#"WHERE "other"."id" = $1"#,
        r#"WHERE "id" = $1"#,
        r#"WHERE ("posts"."id", "posts"."title") IN (($1, $2))"#,
        r#"WHERE "posts"."id" = $1 -- comment"#,
        r#"WHERE "posts"."id" = $1 /* comment */"#,
        r#"INNER JOIN "c" ON "c"."post_id" = "posts"."id" WHERE "posts"."id" = $1"#,
        r#", "c" WHERE "posts"."id" = $1"#,
        r#"WHERE "posts"."id" = $1 GROUP BY "posts"."category""#,
        r#"WHERE "posts"."id" = $1 ORDER BY RANDOM()"#,
        r#"WHERE "posts"."id" = $1 FOR UPDATE"#,
        r#"WHERE "posts"."id" = $1 UNION SELECT "posts"."id" FROM "posts""#,
        r#"WHERE "posts"."id" = $1 OR"#,
        r#"WHERE ("posts"."id" = $1"#,
        r#"WHERE "posts"."id" = $1)"#,
    ];
    for tail in cases {
        let sql = format!("{PG_COLUMNS} {tail}");
        let d = derive(&spec(), Dialect::Postgres, &sql, &[int(1), int(2)]);
        assert!(d.is_coarse(), "{sql}: {d}");
        assert_eq!(
            d.dependencies,
            vec![Dependency::any_change("posts"), all()],
            "{sql}"
        );
    }
    for sql in [
        r#"SELECT (SELECT 1 FROM "c") FROM "posts" WHERE "posts"."id" = $1"#,
        r#"SELECT "posts"."id" FROM "public"."posts" WHERE "posts"."id" = $1"#,
        r#"SELECT "posts"."id" FROM "posts" AS "p" WHERE "p"."id" = $1"#,
        r#"SELECT "posts"."id" FROM "posts""#,
        r#"SELECT "posts"."id" FROM "posts" WHERE TRUE"#,
        r#"SELECT "c"."id" FROM "c" WHERE "c"."id" = $1"#,
        r#"DELETE FROM "posts" WHERE "posts"."id" = $1"#,
        r#"SELECT "posts"."id" FROM "posts" WHERE "posts"."id" = $9"#,
        r#"SELECT "posts"."id" FROM "posts" WHERE "posts"."id" = ?"#,
        r#"SELECT "posts"."id" FROM "posts" WHERE "posts"."id" = $0"#,
    ] {
        assert!(
            derive(&spec(), Dialect::Postgres, sql, &[int(1)]).is_coarse(),
            "{sql}"
        );
    }
    // MySQL: a double-quoted "identifier" is a string; backslashes escape in strings.
    for sql in [
        r#"SELECT `posts`.`id` FROM `posts` WHERE "posts"."id" = ?"#,
        r"SELECT `posts`.`id` FROM `posts` WHERE `posts`.`id` = ? OR `posts`.`title` = 'a\' OR 1'",
        r#"SELECT "posts"."id" FROM "posts" WHERE "posts"."id" = ?"#,
    ] {
        assert!(
            derive(&spec(), Dialect::MySql, sql, &[int(1)]).is_coarse(),
            "{sql}"
        );
    }
}

#[test]
fn bound_values_must_be_what_the_fields_type_renders() {
    let by_category = format!(r#"{PG_COLUMNS} WHERE "posts"."category" = $1"#);
    let by_id = format!(r#"{PG_COLUMNS} WHERE "posts"."id" = $1"#);
    // MySQL compares `category = 0` numerically (every non-numeric string matches).
    assert!(derive(&spec(), Dialect::Postgres, &by_category, &[int(0)]).is_coarse());
    assert!(derive(&spec(), Dialect::Postgres, &by_id, &[text("1")]).is_coarse());
    assert!(derive(&spec(), Dialect::Postgres, &by_id, &[Bound::Unknown]).is_coarse());
    assert!(
        derive(
            &spec(),
            Dialect::Postgres,
            &by_id,
            &[Bound::Scalar(Value::float(1.0))]
        )
        .is_coarse()
    );
    assert!(derive(&spec(), Dialect::Postgres, &by_id, &[int(1 << 40)]).is_coarse());
    assert!(derive(&spec(), Dialect::Postgres, &by_id, &[]).is_coarse());
    // A list where a scalar is expected and the reverse.
    assert!(derive(&spec(), Dialect::Postgres, &by_id, &[Bound::List(vec![])]).is_coarse());
    let any = format!(r#"{PG_COLUMNS} WHERE "posts"."id" = ANY($1)"#);
    assert!(derive(&spec(), Dialect::Postgres, &any, &[int(1)]).is_coarse());
    // An untyped column (no `FromDbJson`: its `ToValue` is the user's) cannot be checked.
    let untyped = TableSpec::new("posts", "posts").key("id", ColumnDecoder::untyped());
    assert!(derive(&untyped, Dialect::Postgres, &by_id, &[int(1)]).is_coarse());
}

#[test]
fn text_keys_are_coarse_and_composite_keys_need_every_column() {
    let tags = TableSpec::new("post_tags", "post_tags")
        .key("post_id", ColumnDecoder::of::<i32>())
        .key("tag_id", ColumnDecoder::of::<i64>());
    let sql = r#"SELECT "post_tags"."post_id" FROM "post_tags" WHERE "post_tags"."post_id" = $1 AND "post_tags"."tag_id" IN ($2, $3)"#;
    let d = derive(&tags, Dialect::Postgres, sql, &[int(1), int(5), int(6)]);
    assert_eq!(
        deps(&d),
        BTreeSet::from([
            Dependency::primary_key("post_tags", [1, 5]),
            Dependency::primary_key("post_tags", [1, 6]),
            Dependency::invalidate_all("post_tags"),
        ])
    );
    // `belonging_to`: an `IN` on one column of the key is no key list.
    let sql =
        r#"SELECT "post_tags"."post_id" FROM "post_tags" WHERE "post_tags"."post_id" IN ($1, $2)"#;
    assert!(derive(&tags, Dialect::Postgres, sql, &[int(1), int(2)]).is_coarse());
    let slugs = TableSpec::new("pages", "pages").key("slug", ColumnDecoder::of::<String>());
    let sql = r#"SELECT "pages"."slug" FROM "pages" WHERE "pages"."slug" = $1"#;
    let d = derive(&slugs, Dialect::Postgres, sql, &[text("a")]);
    assert!(coarse_reason(&d).contains("text"), "{d}");
}

#[test]
fn empty_lists_and_constants() {
    // SeaORM's `is_in([])` is `$1 = $2` (1, 2), Diesel's `eq_any(vec![])` on SQLite `1=0`.
    for sql in [
        format!(r#"{PG_COLUMNS} WHERE 1 = 2"#),
        format!(r#"{PG_COLUMNS} WHERE 1=0 AND "posts"."title" = $1"#),
        format!(r#"{PG_COLUMNS} WHERE $2 = $3"#),
    ] {
        let d = derive(
            &spec(),
            Dialect::Postgres,
            &sql,
            &[text("x"), int(1), int(2)],
        );
        assert_eq!(d.dependencies, vec![all()], "{sql}");
        assert_eq!(d.basis, Basis::Derived(vec![]));
    }
    let any = format!(r#"{PG_COLUMNS} WHERE "posts"."id" = ANY($1)"#);
    let d = derive(&spec(), Dialect::Postgres, &any, &[Bound::List(vec![])]);
    assert_eq!(d.basis, Basis::Derived(vec![Term::Empty]));
    // `1 = 1 AND` adds nothing: the term is the key list.
    let sql = format!(r#"{PG_COLUMNS} WHERE 1 = 1 AND "posts"."id" = $1"#);
    let d = derive(&spec(), Dialect::Postgres, &sql, &[int(3)]);
    assert_eq!(deps(&d), BTreeSet::from([pk(3), all()]));
    // Strings compare under a collation: not evaluated.
    let sql = format!(r#"{PG_COLUMNS} WHERE $1 = $2 OR "posts"."id" = $3"#);
    let d = derive(
        &spec(),
        Dialect::Postgres,
        &sql,
        &[text("a"), text("A"), int(3)],
    );
    assert!(d.is_coarse(), "{d}");
}

#[test]
fn bounds_degrade_to_coarse() {
    let terms: Vec<String> = (1..=MAX_TERMS + 1)
        .map(|i| format!(r#""posts"."id" = ${i}"#))
        .collect();
    let sql = format!("{PG_COLUMNS} WHERE {}", terms.join(" OR "));
    let binds: Vec<Bound> = (0..=MAX_TERMS as i128).map(int).collect();
    assert!(derive(&spec(), Dialect::Postgres, &sql, &binds).is_coarse());
    let sql = format!("{PG_COLUMNS} WHERE {}", terms[..MAX_TERMS].join(" OR "));
    assert!(!derive(&spec(), Dialect::Postgres, &sql, &binds).is_coarse());
    // A product of disjunctions grows past the bound even when each factor is small.
    let factor = r#"("posts"."id" = $1 OR "posts"."id" = $2)"#;
    let sql = format!("{PG_COLUMNS} WHERE {}", [factor; 5].join(" AND "));
    assert!(derive(&spec(), Dialect::Postgres, &sql, &binds).is_coarse());
    let any = format!(r#"{PG_COLUMNS} WHERE "posts"."id" = ANY($1)"#);
    let many: Vec<Value> = (0..=MAX_DERIVED as i128).map(Value::Int).collect();
    let d = derive(&spec(), Dialect::Postgres, &any, &[Bound::List(many)]);
    assert!(d.is_coarse(), "{d}");
    let enough: Vec<Value> = (0..MAX_DERIVED as i128).map(Value::Int).collect();
    let d = derive(&spec(), Dialect::Postgres, &any, &[Bound::List(enough)]);
    assert_eq!(d.dependencies.len(), MAX_DERIVED + 1);
}

#[test]
fn folded_fields_fold_bound_values() {
    let spec = spec().fold("category", Fold::CI_AI);
    let sql = format!(r#"{PG_COLUMNS} WHERE "posts"."category" = $1"#);
    let d = derive(&spec, Dialect::Postgres, &sql, &[text("Fantásy")]);
    let folded = Fold::CI_AI.apply(Value::from("Fantásy"));
    assert_eq!(
        deps(&d),
        BTreeSet::from([
            Dependency::condition("posts", [("category", folded)]),
            all()
        ])
    );
}

#[test]
fn explain_says_why() {
    let sql = format!(r#"{PG_COLUMNS} WHERE "posts"."id" IN ($1, $2) OR "posts"."category" = $3"#);
    let d = derive(
        &spec(),
        Dialect::Postgres,
        &sql,
        &[int(1), int(2), text("a")],
    );
    assert_eq!(
        d.to_string(),
        "derived: 2 primary key(s) OR 1 scope condition(s) on (category)"
    );
    let sql = format!(r#"{PG_COLUMNS} WHERE "posts"."title" LIKE $1"#);
    let d = derive(&spec(), Dialect::Postgres, &sql, &[text("a")]);
    assert!(d.to_string().starts_with("coarse"), "{d}");
    assert!(d.to_string().contains("LIKE"), "{d}");
}

fn comments_spec() -> TableSpec {
    TableSpec::new("comments", "comments")
        .key("id", ColumnDecoder::of::<i32>())
        .tracked("post_id", ColumnDecoder::of::<i32>())
        .tracked("author", ColumnDecoder::of::<String>())
        .tracked("editor_id", ColumnDecoder::of::<Option<i32>>())
}

fn on_post(post: i32) -> Dependency {
    Dependency::condition("comments", [("post_id", Value::Int(post.into()))])
}

#[test]
fn a_tracked_column_bounds_the_rows_whatever_else_filters() {
    let spec = comments_spec();
    let all = Dependency::invalidate_all("comments");
    // A count of one post's comments, filtered and ordered by columns nothing watches.
    let d = derive(
        &spec,
        Dialect::Postgres,
        r#"SELECT COUNT(*) FROM "comments" WHERE "comments"."post_id" = $1 AND "comments"."body" = $2"#,
        &[int(7), text("x")],
    );
    assert_eq!(deps(&d), BTreeSet::from([on_post(7), all.clone()]));
    assert_eq!(
        d.to_string(),
        "derived: 1 condition(s) on tracked column `post_id`"
    );
    // `belonging_to(&posts)`: `= ANY` on PostgreSQL, `IN` elsewhere; ordered, limited.
    let d = derive(
        &spec,
        Dialect::Postgres,
        r#"SELECT "comments"."id" FROM "comments" WHERE "comments"."post_id" = ANY($1) ORDER BY "comments"."body" LIMIT $2"#,
        &[Bound::List(vec![Value::Int(1), Value::Int(2)]), int(5)],
    );
    assert_eq!(
        deps(&d),
        BTreeSet::from([on_post(1), on_post(2), all.clone()])
    );
    let d = derive(
        &spec,
        Dialect::MySql,
        "SELECT `comments`.`id` FROM `comments` WHERE `comments`.`post_id` IN (?, ?)",
        &[int(1), int(1)],
    );
    assert_eq!(deps(&d), BTreeSet::from([on_post(1), all.clone()]));
    // The narrower of two tracked columns; `IS NULL` is a value.
    let d = derive(
        &spec,
        Dialect::Sqlite,
        r#"SELECT "comments"."id" FROM "comments" WHERE "comments"."post_id" IN (?, ?) AND "comments"."editor_id" IS NULL"#,
        &[int(1), int(2)],
    );
    assert_eq!(
        deps(&d),
        BTreeSet::from([
            Dependency::condition("comments", [("editor_id", Value::Null)]),
            all.clone()
        ])
    );
    // A primary key still wins: the narrowest.
    let d = derive(
        &spec,
        Dialect::Sqlite,
        r#"SELECT "comments"."id" FROM "comments" WHERE "comments"."id" = ? AND "comments"."post_id" = ?"#,
        &[int(3), int(1)],
    );
    assert_eq!(d.to_string(), "derived: 1 primary key(s)");
}

/// Conduit's surrogate keys: a UUID foreign key is no text (its decoder is typed), so it
/// bounds the rows.
#[cfg(feature = "uuid")]
#[test]
fn uuid_tracked_columns_are_derived() {
    let spec = TableSpec::new("favorites", "favorites")
        .key("id", ColumnDecoder::of::<uuid::Uuid>())
        .tracked("article_id", ColumnDecoder::of::<uuid::Uuid>());
    let article = Value::typed("uuid", "67e55044-10b1-426f-9247-bb680e5fe0c8");
    let d = derive(
        &spec,
        Dialect::Postgres,
        r#"SELECT COUNT(*) FROM "favorites" WHERE "favorites"."article_id" = $1"#,
        &[Bound::Scalar(article.clone())],
    );
    assert_eq!(
        deps(&d),
        BTreeSet::from([
            Dependency::condition("favorites", [("article_id", article)]),
            Dependency::invalidate_all("favorites"),
        ])
    );
}

#[test]
fn tracked_columns_refuse_text_unknown_and_unparsed() {
    let spec = comments_spec();
    // Text: a collation may equate values.
    let d = derive(
        &spec,
        Dialect::Sqlite,
        r#"SELECT "comments"."id" FROM "comments" WHERE "comments"."author" = ?"#,
        &[text("Ann")],
    );
    assert!(coarse_reason(&d).contains("text tracked column"), "{d}");
    // A value of another type than the field's, or unreadable.
    for bound in [text("7"), Bound::Unknown] {
        let d = derive(
            &spec,
            Dialect::Sqlite,
            r#"SELECT "comments"."id" FROM "comments" WHERE "comments"."post_id" = ?"#,
            &[bound],
        );
        assert!(d.is_coarse(), "{d}");
    }
    // A construct the parser does not know, beside the tracked equality.
    let d = derive(
        &spec,
        Dialect::Sqlite,
        r#"SELECT "comments"."id" FROM "comments" WHERE "comments"."post_id" = ? AND "comments"."body" LIKE ?"#,
        &[int(1), text("a%")],
    );
    assert!(d.is_coarse(), "{d}");
    // A disjunction needs every term bounded.
    let d = derive(
        &spec,
        Dialect::Sqlite,
        r#"SELECT "comments"."id" FROM "comments" WHERE "comments"."post_id" = ? OR "comments"."body" = ?"#,
        &[int(1), text("a")],
    );
    assert!(d.is_coarse(), "{d}");
    // Without `.tracked`, the same column is coarse.
    let plain = TableSpec::new("comments", "comments").key("id", ColumnDecoder::of::<i32>());
    let d = derive(
        &plain,
        Dialect::Sqlite,
        r#"SELECT "comments"."id" FROM "comments" WHERE "comments"."post_id" = ?"#,
        &[int(1)],
    );
    assert!(d.is_coarse(), "{d}");
}

// --- The rules against the relay ---------------------------------------------------------
//
// A table of rows (id, published, category, title) and a random filter of the understood
// subset; for a random write, whenever the query's answer changes (which rows, or their
// contents) the relay's dependencies of that write must reach the entry's dependencies (the
// derived ones plus the keys of the rows returned). Checks the rules, not the parser: the
// filter is evaluated by the test from its own tree.

#[derive(Debug, Clone, PartialEq)]
struct PostRow {
    id: i32,
    published: bool,
    category: &'static str,
    title: &'static str,
    /// A tracked column (a foreign key).
    author: i32,
}

#[derive(Debug, Clone)]
enum Pred {
    Id(Vec<i32>),
    Published(bool),
    Category(Vec<&'static str>),
    Title(&'static str),
    Author(Vec<i32>),
}

const CATEGORIES: [&str; 2] = ["a", "b"];
const TITLES: [&str; 2] = ["x", "y"];

fn row_strategy() -> impl Strategy<Value = PostRow> {
    (
        0..4_i32,
        any::<bool>(),
        prop::sample::select(&CATEGORIES[..]),
        prop::sample::select(&TITLES[..]),
        0..3_i32,
    )
        .prop_map(|(id, published, category, title, author)| PostRow {
            id,
            published,
            category,
            title,
            author,
        })
}

fn pred_strategy() -> impl Strategy<Value = Pred> {
    prop_oneof![
        prop::collection::vec(0..4_i32, 1..3).prop_map(Pred::Id),
        any::<bool>().prop_map(Pred::Published),
        prop::collection::vec(prop::sample::select(&CATEGORIES[..]), 1..3).prop_map(Pred::Category),
        prop::sample::select(&TITLES[..]).prop_map(Pred::Title),
        prop::collection::vec(0..3_i32, 1..3).prop_map(Pred::Author),
    ]
}

fn matches(row: &PostRow, p: &Pred) -> bool {
    match p {
        Pred::Id(ids) => ids.contains(&row.id),
        Pred::Published(b) => row.published == *b,
        Pred::Category(cs) => cs.contains(&row.category),
        Pred::Title(t) => row.title == *t,
        Pred::Author(authors) => authors.contains(&row.author),
    }
}

fn render(dnf: &[Vec<Pred>], binds: &mut Vec<Bound>) -> String {
    let mut param = |b: Bound| {
        binds.push(b);
        "?".to_owned()
    };
    let terms: Vec<String> = dnf
        .iter()
        .map(|conj| {
            let preds: Vec<String> = conj
                .iter()
                .map(|p| match p {
                    Pred::Id(ids) => {
                        let list: Vec<String> =
                            ids.iter().map(|i| param(int((*i).into()))).collect();
                        format!(r#""posts"."id" IN ({})"#, list.join(", "))
                    }
                    Pred::Published(b) => {
                        format!(
                            r#""posts"."published" = {}"#,
                            param(Bound::Scalar(Value::Bool(*b)))
                        )
                    }
                    Pred::Category(cs) => {
                        let list: Vec<String> = cs.iter().map(|c| param(text(c))).collect();
                        format!(r#""posts"."category" IN ({})"#, list.join(", "))
                    }
                    Pred::Title(t) => format!(r#""posts"."title" = {}"#, param(text(t))),
                    Pred::Author(authors) => {
                        let list: Vec<String> =
                            authors.iter().map(|a| param(int((*a).into()))).collect();
                        format!(r#""posts"."author" IN ({})"#, list.join(", "))
                    }
                })
                .collect();
            format!("({})", preds.join(" AND "))
        })
        .collect();
    terms.join(" OR ")
}

fn json_row(r: &PostRow) -> crate::table::Row {
    match json!({"id": r.id, "published": r.published, "category": r.category, "author": r.author})
    {
        serde_json::Value::Object(map) => map,
        _ => unreachable!("an object"),
    }
}

/// What the triggers record in a `K` row: the spec's key-only columns and nothing else.
fn key_only_row(spec: &TableSpec, r: &PostRow) -> crate::table::Row {
    let all = json_row(r);
    spec.key_only_columns()
        .into_iter()
        .map(|c| (c.to_owned(), all[c].clone()))
        .collect()
}

fn relay_spec() -> TableSpec {
    TableSpec::new("posts", "posts")
        .key("id", ColumnDecoder::of::<i32>())
        .scope(
            &[
                ("published", ColumnDecoder::of::<bool>()),
                ("category", ColumnDecoder::of::<String>()),
            ],
            false,
        )
        .tracked("author", ColumnDecoder::of::<i32>())
}

proptest! {
    // Small domains and many cases: the interesting writes (a row moving into a term) are rare.
    #![proptest_config(ProptestConfig::with_cases(4096))]

    #[test]
    fn every_write_that_changes_the_answer_reaches_the_entry(
        rows in prop::collection::vec(row_strategy(), 0..5),
        dnf in prop::collection::vec(prop::collection::vec(pred_strategy(), 1..3), 1..3),
        order_by_title in any::<bool>(),
        limit in any::<bool>(),
        count in any::<bool>(),
        write in (0..3_u8, row_strategy()),
    ) {
        // Distinct keys, as a table holds them.
        let mut table: Vec<PostRow> = Vec::new();
        for r in rows {
            if !table.iter().any(|t| t.id == r.id) {
                table.push(r);
            }
        }
        // A count (`SELECT COUNT(*) ..`, unlimited) returns no rows: its entry holds no key.
        let limit = limit && !count;
        let mut binds = Vec::new();
        let order = if count { "" } else if order_by_title { r#" ORDER BY "posts"."title", "posts"."id""# } else { r#" ORDER BY "posts"."id""# };
        let limit_sql = if limit { " LIMIT 1" } else { "" };
        let select = if count { "COUNT(*)" } else { r#""posts"."id""# };
        let sql = format!(r#"SELECT {select} FROM "posts" WHERE {}{order}{limit_sql}"#, render(&dnf, &mut binds));
        let spec = relay_spec();
        let d = derive(&spec, Dialect::Sqlite, &sql, &binds);
        let answer = |table: &[PostRow]| -> Vec<PostRow> {
            let mut out: Vec<PostRow> = table
                .iter()
                .filter(|r| dnf.iter().any(|c| c.iter().all(|p| matches(r, p))))
                .cloned()
                .collect();
            if order_by_title {
                out.sort_by_key(|r| (r.title, r.id));
            } else {
                out.sort_by_key(|r| r.id);
            }
            if limit {
                out.truncate(1);
            }
            out
        };
        let answer = |table: &[PostRow]| -> Vec<PostRow> {
            let rows = answer(table);
            if count {
                vec![PostRow { id: rows.len() as i32, published: false, category: "", title: "", author: 0 }]
            } else {
                rows
            }
        };
        let before = answer(&table);
        let mut entry: BTreeSet<Dependency> = d.dependencies.iter().cloned().collect();
        if !count {
            entry.extend(before.iter().map(|r| Dependency::primary_key("posts", [r.id])));
        }

        let (kind, new) = write;
        let old = table.iter().position(|r| r.id == new.id);
        let old_row = old.map(|i| json_row(&table[i]));
        let new_row = json_row(&new);
        let key_row = key_only_row(&spec, &new);
        let change = match (kind, old) {
            (0, None) => {
                table.push(new.clone());
                RowChange::Insert { new: &new_row }
            }
            (1, Some(i)) => {
                let watched = table[i].published != new.published
                    || table[i].category != new.category
                    || table[i].author != new.author;
                table[i] = new.clone();
                if watched {
                    RowChange::Update { old: old_row.as_ref(), new: Some(&new_row) }
                } else {
                    RowChange::KeyOnly { key: &key_row }
                }
            }
            (2, Some(i)) => {
                table.remove(i);
                RowChange::Delete { old: old_row.as_ref().expect("the row exists") }
            }
            _ => return Ok(()),
        };
        let after = answer(&table);
        if before != after {
            let invalidated: BTreeSet<Dependency> = spec.dependencies(&change).unwrap().into_iter().collect();
            prop_assert!(
                !invalidated.is_disjoint(&entry),
                "{sql} ({d}): {before:?} -> {after:?} reached none of {entry:?}"
            );
        }
    }
}

// --- A Conduit-like workload: false invalidations, coarse against tracked ------------------
//
// `comments(id, article_id, author_id, body)` and `favorites(id, article_id, user_id,
// created_at)` with surrogate keys, as in the RealWorld (Conduit) Diesel app; cached per
// article: its favorites count (`WHERE article_id = $1`) and its comments list
// (`belonging_to`: `article_id = ANY($1)`, ordered by the body); random inserts, deletes and
// updates of an unwatched column (`body` / `created_at`, one column `body` here) of random
// rows, each turned into the relay's dependencies. Every entry a write reaches is
// dropped (and reloaded); one whose answer did not change is a false invalidation. An entry
// the write does not reach must still answer what the table holds (no stale read).

/// A row of either table: `(id, article, user, body)`.
type ConduitRow = (i64, i64, i64, i64);

/// A cached entry: its dependencies and the answer it holds.
type ConduitEntry = (BTreeSet<Dependency>, Vec<(i64, i64)>);

fn conduit_spec(table: &str, user: &str, tracked: bool) -> TableSpec {
    let spec = TableSpec::new(table, table).key("id", ColumnDecoder::of::<i64>());
    if tracked {
        spec.tracked("article_id", ColumnDecoder::of::<i64>())
            .tracked(user, ColumnDecoder::of::<i64>())
    } else {
        spec
    }
}

fn conduit_json(row: &ConduitRow, user: &str, columns: &[&str]) -> crate::table::Row {
    let all = json!({"id": row.0, "article_id": row.1, user: row.2, "body": row.3});
    columns
        .iter()
        .map(|c| ((*c).to_owned(), all[*c].clone()))
        .collect()
}

/// (entries dropped, of which unchanged, stale reads) over `writes` random writes.
fn conduit_run(tracked: bool, articles: i64, writes: usize, seed: u64) -> (usize, usize, usize) {
    let mut state = seed;
    let mut next = move |n: i64| -> i64 {
        // xorshift64*: deterministic, no dependency.
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        (state.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 33) as i64 % n
    };
    let tables = [("comments", "author_id"), ("favorites", "user_id")];
    let specs: Vec<TableSpec> = tables
        .iter()
        .map(|(t, u)| conduit_spec(t, u, tracked))
        .collect();
    let mut rows: Vec<Vec<ConduitRow>> = vec![Vec::new(), Vec::new()];
    let mut ids = 0_i64;
    for (t, table) in rows.iter_mut().enumerate() {
        for _ in 0..articles * (3 - t as i64) {
            ids += 1;
            table.push((ids, next(articles), next(50), 0));
        }
    }
    // The answer of entry (table, article): its rows' ids and bodies, in order.
    let answer = |rows: &[Vec<ConduitRow>], t: usize, article: i64| -> Vec<(i64, i64)> {
        let mut out: Vec<(i64, i64)> = rows[t]
            .iter()
            .filter(|r| r.1 == article)
            .map(|r| (r.3, r.0))
            .collect();
        out.sort_unstable();
        // The count entry (favorites) answers only how many.
        if t == 1 {
            return vec![(out.len() as i64, 0)];
        }
        out
    };
    let sql = |t: usize| -> String {
        let (table, _) = tables[t];
        if t == 1 {
            format!(r#"SELECT COUNT(*) FROM "{table}" WHERE "{table}"."article_id" = $1"#)
        } else {
            format!(
                r#"SELECT "{table}"."id" FROM "{table}" WHERE "{table}"."article_id" = ANY($1) ORDER BY "{table}"."body""#
            )
        }
    };
    let fill = |rows: &[Vec<ConduitRow>], t: usize, article: i64| {
        let bind = if t == 1 {
            int(article.into())
        } else {
            Bound::List(vec![Value::Int(article.into())])
        };
        let d = derive(&specs[t], Dialect::Postgres, &sql(t), &[bind]);
        assert_eq!(d.is_coarse(), !tracked, "{d}");
        let mut deps: BTreeSet<Dependency> = d.dependencies.into_iter().collect();
        if t == 0 {
            deps.extend(
                rows[t]
                    .iter()
                    .filter(|r| r.1 == article)
                    .map(|r| Dependency::primary_key(tables[t].0, [r.0])),
            );
        }
        (deps, answer(rows, t, article))
    };
    let mut entries: Vec<Vec<ConduitEntry>> = (0..2)
        .map(|t| (0..articles).map(|a| fill(&rows, t, a)).collect())
        .collect();
    let (mut dropped, mut unchanged, mut stale) = (0, 0, 0);
    for _ in 0..writes {
        let t = next(2) as usize;
        let (_, user) = tables[t];
        let watched = specs[t].watched_columns();
        let key_only = specs[t].key_only_columns();
        let kind = next(3);
        let deps = if kind == 0 || rows[t].is_empty() {
            ids += 1;
            let row = (ids, next(articles), next(50), next(100));
            rows[t].push(row);
            specs[t].dependencies(&RowChange::Insert {
                new: &conduit_json(&row, user, &watched),
            })
        } else if kind == 1 {
            let i = next(rows[t].len() as i64) as usize;
            let row = rows[t].swap_remove(i);
            specs[t].dependencies(&RowChange::Delete {
                old: &conduit_json(&row, user, &watched),
            })
        } else {
            // An unwatched column (the body): a key-only row.
            let i = next(rows[t].len() as i64) as usize;
            rows[t][i].3 = next(100);
            specs[t].dependencies(&RowChange::KeyOnly {
                key: &conduit_json(&rows[t][i], user, &key_only),
            })
        }
        .unwrap();
        let deps: BTreeSet<Dependency> = deps.into_iter().collect();
        for (t, per_article) in entries.iter_mut().enumerate() {
            for (article, entry) in per_article.iter_mut().enumerate() {
                let now = answer(&rows, t, article as i64);
                if entry.0.is_disjoint(&deps) {
                    stale += usize::from(entry.1 != now);
                } else {
                    dropped += 1;
                    unchanged += usize::from(entry.1 == now);
                    *entry = fill(&rows, t, article as i64);
                }
            }
        }
    }
    (dropped, unchanged, stale)
}

/// `cargo test -p matroska-core --lib conduit -- --nocapture` prints the numbers in
/// BENCHMARKS.md.
#[test]
fn conduit_workload_false_invalidations() {
    let (articles, writes) = (200, 1_000);
    let coarse = conduit_run(false, articles, writes, 0x5eed);
    let tracked = conduit_run(true, articles, writes, 0x5eed);
    for (name, (dropped, unchanged, stale)) in [("coarse", coarse), ("tracked", tracked)] {
        println!(
            "{name}: {dropped} entries dropped, {unchanged} of them unchanged ({:.1} %), {stale} stale reads",
            100.0 * unchanged as f64 / dropped.max(1) as f64
        );
        assert_eq!(stale, 0, "{name}");
    }
    assert!(tracked.0 < coarse.0 / 50, "{tracked:?} against {coarse:?}");
}
