//! The cached queries over diesel-async connections (SQLite through `SyncConnectionWrapper`,
//! PostgreSQL through `AsyncPgConnection`, MariaDB through `AsyncMysqlConnection`): they
//! answer from the cache, follow every write through the outbox relay (joins too), find by
//! composite keys, keep two databases apart, and read through inside a transaction.
#![cfg(all(
    feature = "diesel-async",
    feature = "diesel-postgres",
    feature = "diesel-mysql",
    feature = "seaorm"
))]
#![allow(clippy::unwrap_used)]

mod diesel_blog;
mod support;

use diesel::prelude::*;
use diesel_async::{AsyncConnection, RunQueryDsl, TransactionManager};
use matroska::diesel::{CachedExt, find_async, install_outbox, uninstall_outbox};
use matroska::seaorm::outbox as seaorm_outbox;

use diesel_blog::schema::{comments, post_tags, posts};
use diesel_blog::{
    ALL, Comment, Env, FANTASY, Post, PostTag, ROW_A, ROW_B, SCI_FI, create_tables, published_in,
    tenants, watched_tables,
};
use support::db::{DieselAsyncConn, DieselConn, ScratchDb};

macro_rules! diesel_async_tests {
    ($backend:ident, $conn:ty, $sync:ty) => {
        mod $backend {
            use super::*;

            type Conn = $conn;
            /// The sync connection of the same database, for DDL (as a migration would).
            type Sync = $sync;

            async fn insert(conn: &mut Conn, title: &str, category: &str) -> Post {
                diesel::insert_into(posts::table)
                    .values((
                        posts::title.eq(title),
                        posts::category.eq(category),
                        posts::published.eq(true),
                    ))
                    .execute(conn)
                    .await
                    .unwrap();
                posts::table
                    .filter(posts::title.eq(title))
                    .first(conn)
                    .await
                    .unwrap()
            }

            async fn setup(name: &str) -> Env<Conn> {
                let db = ScratchDb::new(<Conn as DieselAsyncConn>::KIND, name).await;
                let mut sync = <Sync as DieselConn>::open(&db);
                create_tables(&mut sync, db.kind);
                install_outbox(&mut sync, &watched_tables()).unwrap();
                let mut conn = <Conn as DieselAsyncConn>::open(&db).await;
                let cache = support::redis_cache(name).await;
                let a = insert(&mut conn, "A", "fantasy").await;
                let b = insert(&mut conn, "B", "sci-fi").await;
                let relay = seaorm_outbox::relay(&db.conn, cache.clone())
                    .unwrap()
                    .watch_type::<Post>()
                    .watch_type::<Comment>()
                    .watch_type::<PostTag>()
                    .build()
                    .spawn();
                let env = Env {
                    db,
                    conn,
                    cache,
                    relay,
                    a,
                    b,
                };
                env.wait_idle().await;
                env.fill_probes().await;
                env
            }

            async fn list(env: &mut Env<Conn>, category: &str) -> Vec<Post> {
                posts::table
                    .order(posts::id)
                    .cached(&env.cache)
                    .scoped(&published_in(category))
                    .load_async::<Post, _>(&mut env.conn)
                    .await
                    .unwrap()
            }

            async fn count(env: &mut Env<Conn>) -> i64 {
                posts::table
                    .cached(&env.cache)
                    .count_async::<Post, _>(&mut env.conn)
                    .await
                    .unwrap()
            }

            async fn find(env: &mut Env<Conn>, id: i32) -> Option<Post> {
                find_async(&env.cache, &mut env.conn, posts::table, id)
                    .await
                    .unwrap()
            }

            async fn first(env: &mut Env<Conn>) -> Option<Post> {
                posts::table
                    .order(posts::id)
                    .cached(&env.cache)
                    .first_async::<Post, _>(&mut env.conn)
                    .await
                    .unwrap()
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn cached_queries_follow_writes() {
                let mut env = setup("da_writes").await;
                let a = env.a.id;
                assert_eq!(list(&mut env, "fantasy").await, vec![env.a.clone()]);
                assert_eq!(count(&mut env).await, 2);
                assert_eq!(find(&mut env, a).await, Some(env.a.clone()));
                assert_eq!(first(&mut env).await, Some(env.a.clone()));

                diesel::update(posts::table.find(a))
                    .set(posts::category.eq("sci-fi"))
                    .execute(&mut env.conn)
                    .await
                    .unwrap();
                env.expect(&[ROW_A, FANTASY, SCI_FI], &[ROW_B]).await;
                assert!(list(&mut env, "fantasy").await.is_empty());
                assert_eq!(list(&mut env, "sci-fi").await.len(), 2);
                assert_eq!(find(&mut env, a).await.unwrap().category, "sci-fi");

                insert(&mut env.conn, "C", "poetry").await;
                env.wait_idle().await;
                assert_eq!(count(&mut env).await, 3);
            }

            /// `values_async` / `value_async`: a column and an aggregate, read back fresh
            /// after a write and `wait_delivered`.
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn single_columns_and_aggregates() {
                let mut env = setup("da_values").await;
                async fn titles(env: &mut Env<Conn>) -> Vec<String> {
                    posts::table
                        .select(posts::title)
                        .order(posts::id)
                        .cached(&env.cache)
                        .scoped(&published_in("fantasy"))
                        .values_async::<Post, String, _>(&mut env.conn)
                        .await
                        .unwrap()
                }
                async fn newest(env: &mut Env<Conn>) -> Option<Option<i32>> {
                    posts::table
                        .select(diesel::dsl::max(posts::id))
                        .cached(&env.cache)
                        .value_async::<Post, Option<i32>, _>(&mut env.conn)
                        .await
                        .unwrap()
                }
                assert_eq!(titles(&mut env).await, vec!["A".to_owned()]);
                assert_eq!(newest(&mut env).await, Some(Some(env.b.id)));
                diesel::update(posts::table.find(env.a.id))
                    .set(posts::title.eq("A2"))
                    .execute(&mut env.conn)
                    .await
                    .unwrap();
                insert(&mut env.conn, "C", "sci-fi").await;
                env.relay
                    .wait_delivered(std::time::Duration::from_secs(20))
                    .await
                    .unwrap();
                assert_eq!(titles(&mut env).await, vec!["A2".to_owned()]);
                assert!(newest(&mut env).await.unwrap().unwrap() > env.b.id);
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn cached_queries_hit() {
                let mut env = setup("da_hits").await;
                let a = env.a.id;
                assert_eq!(list(&mut env, "fantasy").await.len(), 1);
                assert_eq!(count(&mut env).await, 2);
                assert!(find(&mut env, a).await.is_some());
                assert!(first(&mut env).await.is_some());
                // Without the triggers the cache cannot see this delete: the entries answer.
                uninstall_outbox(&mut <Sync as DieselConn>::open(&env.db), &["posts"]).unwrap();
                diesel::delete(posts::table)
                    .execute(&mut env.conn)
                    .await
                    .unwrap();
                env.expect(&[], ALL).await;
                assert_eq!(list(&mut env, "fantasy").await.len(), 1);
                assert_eq!(count(&mut env).await, 2);
                assert!(find(&mut env, a).await.is_some());
                assert!(first(&mut env).await.is_some());
            }

            /// `.derived()` on the async forms: a key list follows a write to a listed row and
            /// stays cached through a write to another row (seen afterwards through a write
            /// the triggers, removed, do not record).
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn derived_key_list() {
                let mut env = setup("da_derived").await;
                let (a, b) = (env.a.id, env.b.id);
                async fn titles(env: &mut Env<Conn>, ids: &[i32]) -> (Vec<String>, Option<String>) {
                    let query = || {
                        posts::table
                            .filter(posts::id.eq_any(ids.to_vec()))
                            .order(posts::title)
                            .cached(&env.cache)
                            .derived::<Post>()
                    };
                    let list = query().load_async::<Post, _>(&mut env.conn).await.unwrap();
                    let first = query().first_async::<Post, _>(&mut env.conn).await.unwrap();
                    (
                        list.into_iter().map(|p| p.title).collect(),
                        first.map(|p| p.title),
                    )
                }
                let ids = [a, b + 100];
                assert_eq!(
                    titles(&mut env, &ids).await,
                    (vec!["A".to_owned()], Some("A".to_owned()))
                );
                diesel::update(posts::table.find(a))
                    .set(posts::title.eq("A2"))
                    .execute(&mut env.conn)
                    .await
                    .unwrap();
                env.relay
                    .wait_delivered(std::time::Duration::from_secs(20))
                    .await
                    .unwrap();
                assert_eq!(
                    titles(&mut env, &ids).await,
                    (vec!["A2".to_owned()], Some("A2".to_owned()))
                );
                // The listed key that was missing, inserted by raw SQL.
                diesel::sql_query(format!(
                    "INSERT INTO posts (id, title, category, published) VALUES ({}, 'M', 'x', true)",
                    b + 100
                ))
                .execute(&mut env.conn)
                .await
                .unwrap();
                env.relay
                    .wait_delivered(std::time::Duration::from_secs(20))
                    .await
                    .unwrap();
                assert_eq!(
                    titles(&mut env, &ids).await,
                    (vec!["A2".to_owned(), "M".to_owned()], Some("A2".to_owned()))
                );
                diesel::update(posts::table.find(b))
                    .set(posts::title.eq("B2"))
                    .execute(&mut env.conn)
                    .await
                    .unwrap();
                env.relay
                    .wait_delivered(std::time::Duration::from_secs(20))
                    .await
                    .unwrap();
                uninstall_outbox(&mut <Sync as DieselConn>::open(&env.db), &["posts"]).unwrap();
                diesel::update(posts::table.find(a))
                    .set(posts::title.eq("A3"))
                    .execute(&mut env.conn)
                    .await
                    .unwrap();
                assert_eq!(
                    titles(&mut env, &ids).await,
                    (vec!["A2".to_owned(), "M".to_owned()], Some("A2".to_owned())),
                    "the write to B dropped the key list"
                );
            }

            async fn inner_join(env: &mut Env<Conn>) -> Vec<(Comment, Post)> {
                comments::table
                    .inner_join(posts::table)
                    .order(comments::id)
                    .cached(&env.cache)
                    .load_async::<(Comment, Post), _>(&mut env.conn)
                    .await
                    .unwrap()
            }

            async fn join_count(env: &mut Env<Conn>) -> i64 {
                comments::table
                    .inner_join(posts::table)
                    .cached(&env.cache)
                    .count_async::<(Comment, Post), _>(&mut env.conn)
                    .await
                    .unwrap()
            }

            async fn find_tag(env: &mut Env<Conn>, post: i32, tag: &str) -> Option<PostTag> {
                find_async(
                    &env.cache,
                    &mut env.conn,
                    post_tags::table,
                    (post, tag.to_owned()),
                )
                .await
                .unwrap()
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn joins_and_composite_find_follow_writes() {
                let mut env = setup("da_joins").await;
                let (a, b) = (env.a.id, env.b.id);
                assert!(inner_join(&mut env).await.is_empty());
                assert_eq!(join_count(&mut env).await, 0);
                assert_eq!(find_tag(&mut env, a, "rust").await, None);
                // New joinable rows and a new key, by raw SQL: seen by the outbox only.
                diesel::sql_query(format!(
                    "INSERT INTO comments (post_id, body) VALUES ({a}, 'a1'), ({b}, 'b1')"
                ))
                .execute(&mut env.conn)
                .await
                .unwrap();
                diesel::sql_query(format!(
                    "INSERT INTO post_tags (post_id, tag, note) VALUES ({a}, 'rust', 'n')"
                ))
                .execute(&mut env.conn)
                .await
                .unwrap();
                env.wait_idle().await;
                let joined = inner_join(&mut env).await;
                assert_eq!(joined.len(), 2);
                assert_eq!(joined[0].1, env.a);
                assert_eq!(join_count(&mut env).await, 2);
                assert_eq!(find_tag(&mut env, a, "rust").await.unwrap().note, "n");
                // The other side of the join.
                diesel::update(posts::table.find(a))
                    .set(posts::title.eq("A, revised"))
                    .execute(&mut env.conn)
                    .await
                    .unwrap();
                env.wait_idle().await;
                assert_eq!(inner_join(&mut env).await[0].1.title, "A, revised");
            }

            /// Two databases behind one cache prefix: equal queries, separate entries.
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn two_databases_do_not_share() {
                let cache = support::redis_cache("da_tenants").await;
                let mut titles = Vec::new();
                let mut dbs = Vec::new();
                for tenant in ["one", "two"] {
                    let db = ScratchDb::new(<Conn as DieselAsyncConn>::KIND, "da_tenant").await;
                    create_tables(&mut <Sync as DieselConn>::open(&db), db.kind);
                    let mut conn = <Conn as DieselAsyncConn>::open(&db).await;
                    insert(&mut conn, tenant, "fantasy").await;
                    for _ in 0..2 {
                        let list = posts::table
                            .order(posts::id)
                            .cached(&cache)
                            .load_async::<Post, _>(&mut conn)
                            .await
                            .unwrap();
                        titles.push(list.into_iter().map(|p| p.title).collect::<Vec<_>>());
                    }
                    dbs.push((db, conn));
                }
                assert_eq!(titles, [["one"], ["one"], ["two"], ["two"]]);
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn transaction_reads_through() {
                let mut env = setup("da_txn").await;
                assert_eq!(list(&mut env, "fantasy").await.len(), 1);
                <Conn as AsyncConnection>::TransactionManager::begin_transaction(&mut env.conn)
                    .await
                    .unwrap();
                insert(&mut env.conn, "C", "fantasy").await;
                // No hit (the entry lacks the transaction's write) ...
                assert_eq!(list(&mut env, "fantasy").await.len(), 2);
                // ... and no fill.
                let condition = &published_in("fantasy").dependencies()[..1];
                env.cache.invalidate(condition).await.unwrap();
                assert_eq!(list(&mut env, "fantasy").await.len(), 2);
                <Conn as AsyncConnection>::TransactionManager::rollback_transaction(&mut env.conn)
                    .await
                    .unwrap();
                env.expect(&[], &[SCI_FI, ROW_A, ROW_B]).await;
                assert_eq!(list(&mut env, "fantasy").await, vec![env.a.clone()]);
            }
        }
    };
}

diesel_async_tests!(
    sqlite,
    diesel_async::sync_connection_wrapper::SyncConnectionWrapper<diesel::SqliteConnection>,
    diesel::SqliteConnection
);
diesel_async_tests!(
    postgres,
    diesel_async::AsyncPgConnection,
    diesel::PgConnection
);
diesel_async_tests!(
    mysql,
    diesel_async::AsyncMysqlConnection,
    diesel::MysqlConnection
);

/// The titles of the cached list of posts on `conn`, and of the same statement run by
/// diesel-async without the cache.
async fn titles<C>(cache: &matroska::Cache, conn: &mut C) -> (Vec<String>, Vec<String>)
where
    C: AsyncConnection,
    C::Backend: matroska::diesel::NamespaceBackend + Default,
    <C::Backend as diesel::backend::Backend>::QueryBuilder: Default,
    diesel::dsl::Order<posts::table, posts::id>: RunQueryDsl<C>
        + diesel_async::methods::LoadQuery<'static, C, Post>
        + diesel::query_builder::QueryFragment<C::Backend>
        + 'static,
{
    let query = || posts::table.order(posts::id);
    let cached = query()
        .cached(cache)
        .load_async::<Post, _>(conn)
        .await
        .unwrap();
    let direct = query().load::<Post>(conn).await.unwrap();
    let names = |posts: Vec<Post>| posts.into_iter().map(|post| post.title).collect();
    (names(cached), names(direct))
}

/// A schema-per-tenant app on one diesel-async PostgreSQL connection: switching `search_path`
/// (a `SET`, `set_config` in a `SELECT`, a `SET` ending a batch) between cached reads, each
/// read returns its tenant's rows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_switching_search_path_reads_each_tenants_rows() {
    use diesel_async::SimpleAsyncConnection;
    let cache = support::redis_cache("da_search_path").await;
    let dbs = tenants(support::db::Kind::Postgres, "da_search_path").await;
    let mut conn = diesel_async::AsyncPgConnection::establish(&support::db::postgres_url())
        .await
        .unwrap();
    for round in 0..6 {
        for (db, title) in &dbs {
            let to = format!("\"{}\"", db.schema.as_deref().unwrap());
            match round % 3 {
                0 => conn
                    .batch_execute(&format!("SET search_path TO {to}"))
                    .await
                    .unwrap(),
                1 => {
                    diesel::sql_query("SELECT set_config('search_path', $1, false)")
                        .bind::<diesel::sql_types::Text, _>(&to)
                        .execute(&mut conn)
                        .await
                        .unwrap();
                }
                _ => conn
                    .batch_execute(&format!("SELECT 1; SET SESSION search_path TO {to}"))
                    .await
                    .unwrap(),
            }
            let (cached, direct) = titles(&cache, &mut conn).await;
            assert_eq!(direct, [*title]);
            assert_eq!(cached, [*title], "round {round}");
        }
    }
}

/// MariaDB tenants in databases of their own, one diesel-async connection switching with
/// `USE`: the server keeps each prepared statement on the database it was prepared in, so
/// from the switch on the connection's cached queries read through (the rows its own
/// statement reads) and never fill another tenant's entries; connections opened on each
/// database keep reading their own rows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_switching_database_never_fills_another_tenants_entries() {
    use diesel_async::SimpleAsyncConnection;
    let cache = support::redis_cache("da_use_db").await;
    let dbs = tenants(support::db::Kind::MySql, "da_use_db").await;
    let mut own = Vec::new();
    for (db, _) in &dbs {
        own.push(<diesel_async::AsyncMysqlConnection as DieselAsyncConn>::open(db).await);
    }
    let mut conn = <diesel_async::AsyncMysqlConnection as DieselAsyncConn>::open(&dbs[0].0).await;
    for round in 0..3 {
        for (i, (db, _)) in dbs.iter().enumerate() {
            let database = db.url.rsplit_once('/').unwrap().1;
            conn.batch_execute(&format!("USE `{database}`"))
                .await
                .unwrap();
            let (cached, direct) = titles(&cache, &mut conn).await;
            assert_eq!(cached, direct, "round {round}, tenant {i}");
            for (own, (_, title)) in own.iter_mut().zip(&dbs) {
                assert_eq!(titles(&cache, own).await.0, [*title], "round {round}");
            }
        }
    }
}
