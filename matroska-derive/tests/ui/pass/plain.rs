//! Plain structs: defaults, overrides, every scope option, and the generated API in use.

use matroska::{CacheDeps, CollectDeps, Dependency, DependencySet, ScopeCondition, Scoped, Value};

#[derive(CacheDeps)]
pub struct User {
    id: i64,
    name: String,
}

#[derive(CacheDeps)]
#[scope(published, category, when = Article::is_listed)]
#[scope(category)]
#[scope(author_id, when = |a: &Article| a.published, name = ByAuthor)]
#[scope(r#type)]
#[scope(editor_id)]
pub struct Article {
    id: i64,
    published: bool,
    category: String,
    author_id: i64,
    r#type: String,
    editor_id: Option<i64>,
    #[cache(related)]
    author: Option<User>,
}

impl Article {
    fn is_listed(&self) -> bool {
        self.published
    }
}

#[derive(CacheDeps)]
#[cache(entity = "order_line")]
struct OrderLine {
    #[cache(key)]
    order: i64,
    #[cache(key)]
    line: u16,
    #[cache(related)]
    items: Vec<User>,
}

/// CacheDeps on a generic struct (no scope: a scope is one static per type).
#[derive(CacheDeps)]
struct Wrapper<T> {
    id: u32,
    #[cache(related)]
    inner: T,
}

mod renamed {
    // The derive's `crate` override, for a renamed dependency.
    extern crate matroska as my_matroska;

    #[derive(my_matroska::CacheDeps)]
    #[cache(crate = "my_matroska")]
    #[scope(kind)]
    pub struct Tag {
        pub id: i64,
        pub kind: String,
    }
}

fn main() {
    let user = User {
        id: 1,
        name: "kolypto".into(),
    };
    assert_eq!(User::entity_name(), "User");
    assert_eq!(user.primary_key(), Dependency::primary_key("User", [1]));
    let _ = &user.name;

    let line = OrderLine {
        order: 7,
        line: 2,
        items: vec![user],
    };
    assert_eq!(
        line.primary_key(),
        Dependency::primary_key("order_line", [7, 2])
    );
    assert_eq!(
        DependencySet::of(&line).into_vec(),
        [line.primary_key(), Dependency::primary_key("User", [1])]
    );

    let article = Article {
        id: 10,
        published: false,
        category: "fantasy".into(),
        author_id: 1,
        r#type: "book".into(),
        editor_id: None,
        author: Some(User {
            id: 1,
            name: "kolypto".into(),
        }),
    };
    // Scope name is the entity name; one extractor per `#[scope]`.
    let scope = Article::scope();
    assert_eq!(scope.name(), Article::entity_name());
    assert_eq!(scope.described_fields().count(), 5);

    // Typed conditions: struct literals with the fields' own types.
    let fantasy = ArticleByPublishedCategory {
        published: true,
        category: "fantasy".into(),
    };
    assert_eq!(fantasy.scope_name(), "Article");
    assert_eq!(
        fantasy.dependencies(),
        scope
            .condition([
                ("published", Value::from(true)),
                ("category", "fantasy".into())
            ])
            .unwrap()
    );
    let by_author = ByAuthor { author_id: 1 };
    let by_type = ArticleByType {
        r#type: "book".into(),
    };
    assert_eq!(by_type.fields(), [("type", Value::from("book"))]);
    let unedited = ArticleByEditorId { editor_id: None };
    assert_eq!(unedited.fields(), [("editor_id", Value::Null)]);
    let _ = ArticleByCategory {
        category: "fantasy".into(),
    }
    .clone();
    let _ = format!("{by_author:?}");

    // A draft opts out of the `when` scopes, not of the others.
    let deps = scope.dependencies_for(&article, None);
    assert!(!deps.contains(&fantasy.dependencies()[0]));
    assert!(!deps.contains(&by_author.dependencies()[0]));
    assert!(deps.contains(&by_type.dependencies()[0]));
    assert!(deps.contains(&unedited.dependencies()[0]));

    let mut set = DependencySet::new();
    article.collect_deps(&mut set);
    assert_eq!(
        set.into_vec(),
        [
            Dependency::primary_key("Article", [10]),
            Dependency::primary_key("User", [1])
        ]
    );

    let w = Wrapper {
        id: 3,
        inner: Dependency::tag("x"),
    };
    assert_eq!(DependencySet::of(&w).len(), 2);

    let tag = renamed::Tag {
        id: 1,
        kind: "k".into(),
    };
    assert_eq!(
        renamed::TagByKind { kind: "k".into() }.fields()[0].1,
        Value::from(&tag.kind)
    );
    assert_eq!(tag.primary_key(), Dependency::primary_key("Tag", [tag.id]));
}
