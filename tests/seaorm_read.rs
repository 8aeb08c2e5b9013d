//! The read path of the SeaORM integration: what a cached query gives back, and when it may
//! be served from or stored in the cache at all. Each test has its own database (or schema)
//! and its own cache.
#![cfg(feature = "seaorm")]
#![allow(clippy::unwrap_used)]

mod seaorm_blog;
mod support;

use matroska::seaorm::{self, CachedExt};
use sea_orm::{ConnectionTrait, DatabaseConnection, EntityTrait, QueryOrder, Schema};

use support::db::{Kind, ScratchDb};

/// Models as sea-orm-cli generates them for an API: the key (and here a server-side column
/// too) is `#[serde(skip_deserializing)]`, so a client cannot set it.
mod skipping {
    pub mod writer {
        use sea_orm::entity::prelude::*;
        use serde::{Deserialize, Serialize};

        #[derive(
            Clone,
            Debug,
            PartialEq,
            Eq,
            DeriveEntityModel,
            Serialize,
            Deserialize,
            matroska::CacheDeps,
        )]
        #[sea_orm(table_name = "writer")]
        pub struct Model {
            #[sea_orm(primary_key)]
            #[serde(skip_deserializing)]
            pub id: i32,
            pub name: String,
        }

        #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
        pub enum Relation {
            #[sea_orm(has_many = "super::post::Entity")]
            Post,
        }

        impl Related<super::post::Entity> for Entity {
            fn to() -> RelationDef {
                Relation::Post.def()
            }
        }

        impl ActiveModelBehavior for ActiveModel {}
    }

    pub mod post {
        use sea_orm::entity::prelude::*;
        use serde::{Deserialize, Serialize};

        #[derive(
            Clone,
            Debug,
            PartialEq,
            Eq,
            DeriveEntityModel,
            Serialize,
            Deserialize,
            matroska::CacheDeps,
        )]
        #[sea_orm(table_name = "post")]
        pub struct Model {
            #[sea_orm(primary_key)]
            #[serde(skip_deserializing)]
            pub id: i32,
            pub title: String,
            #[serde(skip_deserializing)]
            pub moderation_note: String,
            #[serde(skip)]
            pub writer_id: Option<i32>,
        }

        #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
        pub enum Relation {
            #[sea_orm(
                belongs_to = "super::writer::Entity",
                from = "Column::WriterId",
                to = "super::writer::Column::Id"
            )]
            Writer,
        }

        impl Related<super::writer::Entity> for Entity {
            fn to() -> RelationDef {
                Relation::Writer.def()
            }
        }

        impl ActiveModelBehavior for ActiveModel {}
    }
}

async fn skipping_tables(db: &DatabaseConnection) {
    use skipping::{post, writer};
    let schema = Schema::new(db.get_database_backend());
    for statement in [
        schema.create_table_from_entity(writer::Entity),
        schema.create_table_from_entity(post::Entity),
    ] {
        db.execute(&statement).await.unwrap();
    }
    db.execute_unprepared(
        "INSERT INTO writer (id, name) VALUES (11, 'kolypto');
         INSERT INTO post (id, title, moderation_note, writer_id) VALUES
           (21, 'Python', 'checked', 11), (22, 'Cache', 'pending', NULL)",
    )
    .await
    .unwrap();
}

/// Every cached shape gives back the rows the database returned, on a hit too, whatever the
/// model's serde attributes say.
async fn rows_come_back_as_the_database_returned_them(kind: Kind, codec: matroska::Codec) {
    use skipping::{post, writer};
    let db = ScratchDb::new(kind, "skipping").await;
    let db = &db.conn;
    skipping_tables(db).await;
    let cache = matroska::Cache::builder(matroska::backend::memory::MemoryBackend::default())
        .codec(codec)
        .build()
        .unwrap();
    let posts = || post::Entity::find().order_by_asc(post::Column::Id);

    let expected = posts().all(db).await.unwrap();
    assert_eq!(
        (expected[0].id, expected[0].moderation_note.as_str()),
        (21, "checked")
    );
    let also = posts().find_also_related(writer::Entity);
    let with = writer::Entity::find().find_with_related(post::Entity);
    let expected_also = also.clone().all(db).await.unwrap();
    let expected_with = with.clone().all(db).await.unwrap();

    // Twice each: the first fills the entry, the second is served from it.
    for round in ["fill", "hit"] {
        assert_eq!(
            posts().cached(&cache).all(db).await.unwrap(),
            expected,
            "{round}"
        );
        assert_eq!(
            posts().cached(&cache).one(db).await.unwrap().as_ref(),
            Some(&expected[0]),
            "{round}"
        );
        assert_eq!(
            posts().cached(&cache).page(db, 1, 1).await.unwrap(),
            expected[1..2],
            "{round}"
        );
        assert_eq!(
            seaorm::query::find_by_id::<post::Entity, _>(&cache, db, 22)
                .await
                .unwrap()
                .as_ref(),
            Some(&expected[1]),
            "{round}"
        );
        assert_eq!(
            also.clone().cached(&cache).all(db).await.unwrap(),
            expected_also,
            "{round}"
        );
        assert_eq!(
            also.clone().cached(&cache).one(db).await.unwrap().as_ref(),
            expected_also.first(),
            "{round}"
        );
        assert_eq!(
            with.clone().cached(&cache).all(db).await.unwrap(),
            expected_with,
            "{round}"
        );
    }
    // The second round was served from the cache: a row changed behind its back is not seen.
    db.execute_unprepared("UPDATE post SET title = 'changed'")
        .await
        .unwrap();
    assert_eq!(posts().cached(&cache).all(db).await.unwrap(), expected);
}

#[tokio::test]
async fn rows_come_back_as_the_database_returned_them_sqlite() {
    rows_come_back_as_the_database_returned_them(Kind::Sqlite, matroska::Codec::Json).await;
}

#[tokio::test]
async fn rows_come_back_as_the_database_returned_them_postgres() {
    rows_come_back_as_the_database_returned_them(Kind::Postgres, matroska::Codec::Json).await;
}

#[cfg(feature = "msgpack")]
#[tokio::test]
async fn rows_come_back_as_the_database_returned_them_msgpack() {
    rows_come_back_as_the_database_returned_them(Kind::Sqlite, matroska::Codec::MessagePack).await;
}

// ---------------------------------------------------------------------------------------
// JSON `null` is not SQL `NULL`.

mod document {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, DeriveEntityModel, matroska::CacheDeps)]
    #[sea_orm(table_name = "document")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: i32,
        pub maybe: Option<Json>,
        pub body: Json,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// Rows holding JSON `null`, SQL `NULL` and `{"a":null}` come back from the cache exactly as
/// the database returned them: a hit (the second read, served from the entry) equals the
/// uncached read, in an `Option<Json>` and in a `Json` field.
async fn json_null_comes_back_as_json_null(kind: Kind) {
    use serde_json::{Value as Json, json};
    let scratch = ScratchDb::new(kind, "json_null").await;
    let db = &scratch.conn;
    let schema = Schema::new(db.get_database_backend());
    db.execute(&schema.create_table_from_entity(document::Entity))
        .await
        .unwrap();
    db.execute_unprepared(
        r#"INSERT INTO document (id, maybe, body) VALUES
             (1, 'null', 'null'), (2, NULL, '{"a":null}'), (3, '{"a":null}', '{"a":null}')"#,
    )
    .await
    .unwrap();
    let cache = support::memory_cache();
    let documents = || document::Entity::find().order_by_asc(document::Column::Id);
    let expected = documents().all(db).await.unwrap();
    // What the database returns, so the test checks what it means to.
    assert_eq!(
        expected
            .iter()
            .map(|d| (d.maybe.clone(), d.body.clone()))
            .collect::<Vec<_>>(),
        [
            (Some(Json::Null), Json::Null),
            (None, json!({"a": null})),
            (Some(json!({"a": null})), json!({"a": null})),
        ]
    );
    for round in ["miss", "hit"] {
        assert_eq!(
            documents().cached(&cache).all(db).await.unwrap(),
            expected,
            "{round}"
        );
        for row in &expected {
            assert_eq!(
                seaorm::query::find_by_id::<document::Entity, _>(&cache, db, row.id)
                    .await
                    .unwrap()
                    .as_ref(),
                Some(row),
                "{round}"
            );
        }
    }
    // The hits were served from the entries: rows changed behind the cache's back are not seen.
    db.execute_unprepared(r#"UPDATE document SET maybe = '1', body = '2'"#)
        .await
        .unwrap();
    assert_eq!(
        documents().cached(&cache).all(db).await.unwrap(),
        expected,
        "the list was not served from the cache"
    );
    for row in &expected {
        assert_eq!(
            seaorm::query::find_by_id::<document::Entity, _>(&cache, db, row.id)
                .await
                .unwrap()
                .as_ref(),
            Some(row),
            "row {} was not served from the cache",
            row.id
        );
    }
}

#[tokio::test]
async fn json_null_comes_back_as_json_null_sqlite() {
    json_null_comes_back_as_json_null(Kind::Sqlite).await;
}

#[tokio::test]
async fn json_null_comes_back_as_json_null_postgres() {
    json_null_comes_back_as_json_null(Kind::Postgres).await;
}

#[tokio::test]
async fn json_null_comes_back_as_json_null_mysql() {
    json_null_comes_back_as_json_null(Kind::MySql).await;
}

// ---------------------------------------------------------------------------------------
// Cached queries inside transactions read through the cache.

use sea_orm::{ActiveModelTrait, DbErr, Set, TransactionTrait};
use seaorm_blog::{article, author};

fn blog_article(title: &str, author: i32) -> article::ActiveModel {
    article::ActiveModel {
        title: Set(title.into()),
        category: Set("A".into()),
        published: Set(true),
        author_id: Set(author),
        ..Default::default()
    }
}

async fn titles_cached(
    cache: &matroska::Cache,
    db: &impl seaorm::CacheableConnection,
) -> Vec<String> {
    article::Entity::find()
        .order_by_asc(article::Column::Id)
        .cached(cache)
        .all(db)
        .await
        .unwrap()
        .into_iter()
        .map(|a| a.title)
        .collect()
}

/// Blog tables, one author, and a cache registered for the hooks of this task.
async fn blog(kind: Kind, name: &str) -> (ScratchDb, matroska::Cache, i32) {
    let db = ScratchDb::new(kind, name).await;
    seaorm_blog::create_tables(&db.conn).await;
    let cache = support::memory_cache();
    let author = seaorm::with_cache(cache.clone(), async {
        author::ActiveModel {
            name: Set("kolypto".into()),
            ..Default::default()
        }
        .insert(&db.conn)
        .await
        .unwrap()
    })
    .await;
    (db, cache, author.id)
}

/// A row inserted in a transaction that rolls back is never served from the cache: not to
/// another connection while the transaction runs, not afterwards.
async fn rolled_back_rows_are_never_served(kind: Kind) {
    let (scratch, cache, author) = blog(kind, "rollback").await;
    let db = &scratch.conn;
    seaorm::with_cache(cache.clone(), async {
        blog_article("committed", author).insert(db).await.unwrap();

        // A bare `begin()`: the hooks invalidate right after each statement.
        let txn = db.begin().await.unwrap();
        blog_article("uncommitted", author)
            .insert(&txn)
            .await
            .unwrap();
        assert_eq!(
            titles_cached(&cache, &txn).await,
            ["committed", "uncommitted"]
        );
        assert_eq!(titles_cached(&cache, db).await, ["committed"], "during");
        txn.rollback().await.unwrap();
        assert_eq!(titles_cached(&cache, db).await, ["committed"], "after");

        // `matroska_seaorm::transaction`, which invalidates after the rollback.
        let cache2 = cache.clone();
        let outer = db.clone();
        let rolled_back = seaorm::transaction(db, |txn| {
            Box::pin(async move {
                blog_article("uncommitted", author).insert(txn).await?;
                let inside = titles_cached(&cache2, txn).await;
                assert_eq!(inside, ["committed", "uncommitted"]);
                assert_eq!(
                    titles_cached(&cache2, &outer).await,
                    ["committed"],
                    "during"
                );
                Err::<(), _>(DbErr::Custom("roll back".into()))
            })
        })
        .await;
        assert!(rolled_back.is_err());
        assert_eq!(titles_cached(&cache, db).await, ["committed"], "after");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolled_back_rows_are_never_served_sqlite() {
    rolled_back_rows_are_never_served(Kind::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolled_back_rows_are_never_served_postgres() {
    rolled_back_rows_are_never_served(Kind::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolled_back_rows_are_never_served_mysql() {
    rolled_back_rows_are_never_served(Kind::MySql).await;
}

/// MariaDB's default isolation, REPEATABLE READ, reads a snapshot taken at the transaction's
/// first read: a cached query in it must not store rows another connection has changed and
/// invalidated since.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_old_snapshot_is_not_stored_mysql() {
    let (scratch, cache, author) = blog(Kind::MySql, "snapshot").await;
    let db = &scratch.conn;
    seaorm::with_cache(cache.clone(), async {
        let row = blog_article("old", author).insert(db).await.unwrap();

        let txn = db.begin().await.unwrap();
        // The first read takes the snapshot.
        assert_eq!(article::Entity::find().all(&txn).await.unwrap().len(), 1);
        // Another connection commits a change; its hook invalidates at once.
        let mut am: article::ActiveModel = row.into();
        am.title = Set("new".into());
        am.update(db).await.unwrap();
        // The transaction still sees the snapshot ...
        assert_eq!(titles_cached(&cache, &txn).await, ["old"]);
        txn.commit().await.unwrap();
        // ... which must not have reached the cache.
        assert_eq!(titles_cached(&cache, db).await, ["new"]);
    })
    .await;
}

/// Inside a batch the invalidations of its writes wait for its end: a hit could be stale.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_reads_through() {
    let (scratch, cache, author) = blog(Kind::Sqlite, "batch").await;
    let db = &scratch.conn;
    seaorm::with_cache(cache.clone(), async {
        blog_article("first", author).insert(db).await.unwrap();
        assert_eq!(titles_cached(&cache, db).await, ["first"]);
        seaorm::batch(async {
            blog_article("second", author).insert(db).await.unwrap();
            assert_eq!(titles_cached(&cache, db).await, ["first", "second"]);
        })
        .await;
        assert_eq!(titles_cached(&cache, db).await, ["first", "second"]);
    })
    .await;
}

// ---------------------------------------------------------------------------------------
// Tenants: keys are tied to the connection's database and schema.

/// Two schemas (picked by `search_path`) hold the same table with different rows, behind one
/// cache: each connection gets its own schema's rows, from the cache too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemas_behind_one_cache_do_not_share_entries_postgres() {
    use skipping::post;
    let tenant_a = ScratchDb::new(Kind::Postgres, "tenant_a").await;
    let tenant_b = ScratchDb::new(Kind::Postgres, "tenant_b").await;
    skipping_tables(&tenant_a.conn).await;
    skipping_tables(&tenant_b.conn).await;
    tenant_b
        .conn
        .execute_unprepared("UPDATE post SET title = 'tenant b'")
        .await
        .unwrap();
    let cache = support::redis_cache("tenants").await;
    let titles = |db: DatabaseConnection| {
        let cache = cache.clone();
        async move {
            let all = post::Entity::find()
                .order_by_asc(post::Column::Id)
                .cached(&cache)
                .all(&db)
                .await
                .unwrap();
            let by_id = seaorm::query::find_by_id::<post::Entity, _>(&cache, &db, 21)
                .await
                .unwrap()
                .unwrap();
            let count = post::Entity::find()
                .cached(&cache)
                .count(&db)
                .await
                .unwrap();
            (all[0].title.clone(), by_id.title, count)
        }
    };
    for round in ["fill", "hit"] {
        assert_eq!(
            titles(tenant_a.conn.clone()).await,
            ("Python".to_owned(), "Python".to_owned(), 2),
            "{round}"
        );
        assert_eq!(
            titles(tenant_b.conn.clone()).await,
            ("tenant b".to_owned(), "tenant b".to_owned(), 2),
            "{round}"
        );
    }
    // A second pool on tenant A's schema shares its entries (the namespace is the schema,
    // not the pool): a change behind the cache's back is not seen.
    tenant_a
        .conn
        .execute_unprepared("UPDATE post SET title = 'changed'")
        .await
        .unwrap();
    let again = sea_orm::Database::connect(
        sea_orm::ConnectOptions::new(tenant_a.url.clone())
            .sqlx_logging(false)
            .set_schema_search_path(tenant_a.schema.clone().unwrap())
            .to_owned(),
    )
    .await
    .unwrap();
    assert_eq!(titles(again).await.0, "Python");
}

/// Schema-per-tenant on one shared SeaORM pool, the way SeaORM can keep a statement on one
/// pooled connection: `SET LOCAL search_path` inside a transaction. Cached queries in a
/// transaction read through (no hit, no fill), so the tenant's rows come from its schema and
/// are never stored under the pool's namespace; the setting ends with the transaction, and the
/// pool (one connection, so it is the same one) reads its own schema again, from the cache.
/// (A session `SET` sent through the pool is not covered: see `matroska_seaorm::connection`.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_local_search_path_in_a_transaction_keeps_tenants_apart_postgres() {
    use sea_orm::TransactionTrait;
    use skipping::post;
    async fn first_title(cache: &matroska::Cache, db: &impl seaorm::CacheableConnection) -> String {
        post::Entity::find()
            .order_by_asc(post::Column::Id)
            .cached(cache)
            .all(db)
            .await
            .unwrap()
            .remove(0)
            .title
    }
    let tenant_a = ScratchDb::new(Kind::Postgres, "local_a").await;
    let tenant_b = ScratchDb::new(Kind::Postgres, "local_b").await;
    skipping_tables(&tenant_a.conn).await;
    skipping_tables(&tenant_b.conn).await;
    tenant_b
        .conn
        .execute_unprepared("UPDATE post SET title = 'tenant b'")
        .await
        .unwrap();
    let cache = support::redis_cache("local_tenants").await;
    let pool = sea_orm::Database::connect(
        sea_orm::ConnectOptions::new(tenant_a.url.clone())
            .sqlx_logging(false)
            .max_connections(1)
            .set_schema_search_path(tenant_a.schema.clone().unwrap())
            .to_owned(),
    )
    .await
    .unwrap();
    let schema_b = tenant_b.schema.clone().unwrap();
    for round in 0..2 {
        assert_eq!(first_title(&cache, &pool).await, "Python", "round {round}");
        let txn = pool.begin().await.unwrap();
        txn.execute_unprepared(&format!("SET LOCAL search_path TO \"{schema_b}\""))
            .await
            .unwrap();
        assert_eq!(first_title(&cache, &txn).await, "tenant b", "round {round}");
        txn.commit().await.unwrap();
    }
    assert_eq!(first_title(&cache, &tenant_b.conn).await, "tenant b");
    // The pool's reads were hits: a change behind the cache's back is not seen.
    tenant_a
        .conn
        .execute_unprepared("UPDATE post SET title = 'changed'")
        .await
        .unwrap();
    assert_eq!(first_title(&cache, &pool).await, "Python");
}

/// Two SQLite databases in memory behind one cache: each pool is a database of its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_memory_sqlite_databases_do_not_share_entries() {
    use skipping::post;
    let cache = support::memory_cache();
    let mut titles = Vec::new();
    for title in ["first", "second"] {
        let db = sea_orm::Database::connect("sqlite::memory:").await.unwrap();
        skipping_tables(&db).await;
        db.execute_unprepared(&format!("UPDATE post SET title = '{title}'"))
            .await
            .unwrap();
        let rows = post::Entity::find().cached(&cache).all(&db).await.unwrap();
        titles.push(rows[0].title.clone());
    }
    assert_eq!(titles, ["first", "second"]);
}

// ---------------------------------------------------------------------------------------
// A scope extractor that panics in a hook.

mod fragile {
    use matroska::{CacheDeps, Dependency, Scope, ScopeMode, Scoped, Value};
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "fragile")]
    pub struct Model {
        #[sea_orm(primary_key)]
        pub id: i32,
        pub category: String,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl CacheDeps for Model {
        fn entity_name() -> &'static str {
            "fragile"
        }
        fn primary_key(&self) -> Dependency {
            Dependency::primary_key("fragile", [Value::Int(self.id.into())])
        }
    }

    impl Scoped for Model {
        fn scope() -> &'static Scope<Self> {
            static SCOPE: std::sync::LazyLock<Scope<Model>> = std::sync::LazyLock::new(|| {
                Scope::new("fragile").mode(ScopeMode::Production).describe(
                    &["category"],
                    |m: &Model| {
                        assert!(m.category != "boom", "unexpected category");
                        Some(vec![Value::from(&m.category)])
                    },
                )
            });
            &SCOPE
        }
    }

    matroska::seaorm::active_model_behavior!(ActiveModel);
}

/// The hook runs the extractor after the row is written: a panic there must not lose the
/// invalidation. The whole scope is invalidated instead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_extractor_invalidates_the_whole_scope() {
    use matroska::Scoped;
    let scratch = ScratchDb::new(Kind::Sqlite, "fragile").await;
    let db = &scratch.conn;
    db.execute(&Schema::new(db.get_database_backend()).create_table_from_entity(fragile::Entity))
        .await
        .unwrap();
    let cache = support::memory_cache();
    let scope = fragile::Model::scope();
    let list = scope.condition([("category", "boom".into())]).unwrap();
    cache.put("boom-list", &0, &list, None).await.unwrap();

    let saved = seaorm::with_cache(cache.clone(), async {
        fragile::ActiveModel {
            category: Set("boom".into()),
            ..Default::default()
        }
        .insert(db)
        .await
    })
    .await;
    assert_eq!(saved.unwrap().category, "boom");
    assert!(!cache.has("boom-list").await.unwrap());
}

// ---------------------------------------------------------------------------------------
// Bulk updates that change a primary key.

/// `bulk::update_many` setting the key invalidates the old key (a cached row) and the new one
/// (a cached miss).
async fn a_bulk_key_change_invalidates_old_and_new_keys(kind: Kind) {
    use seaorm::query::find_by_id;
    let (scratch, cache, author) = blog(kind, "bulk_key").await;
    let db = &scratch.conn;
    seaorm::with_cache(cache.clone(), async {
        let row = blog_article("moving", author).insert(db).await.unwrap();
        let new_id = row.id + 1000;
        let lookup = |id| find_by_id::<article::Entity, _>(&cache, db, id);
        assert!(lookup(row.id).await.unwrap().is_some());
        assert!(lookup(new_id).await.unwrap().is_none());

        let moved = seaorm::bulk::update_many::<article::Entity>()
            .set(article::Column::Id, new_id)
            .filter(sea_orm::ColumnTrait::eq(&article::Column::Id, row.id))
            .exec(db)
            .await
            .unwrap();
        assert_eq!(moved, 1);
        assert_eq!(lookup(row.id).await.unwrap(), None, "old key still cached");
        assert_eq!(
            lookup(new_id).await.unwrap().map(|a| a.title),
            Some("moving".to_owned()),
            "new key still cached as missing"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bulk_key_change_invalidates_old_and_new_keys_sqlite() {
    a_bulk_key_change_invalidates_old_and_new_keys(Kind::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bulk_key_change_invalidates_old_and_new_keys_postgres() {
    a_bulk_key_change_invalidates_old_and_new_keys(Kind::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bulk_key_change_invalidates_old_and_new_keys_mysql() {
    a_bulk_key_change_invalidates_old_and_new_keys(Kind::MySql).await;
}
