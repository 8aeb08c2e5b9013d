//! Diesel through matroska, on SQLite, PostgreSQL and MariaDB: cached queries (`load`,
//! `first`, `count`, `find`, scoped by the derive's typed conditions) stay fresh under every
//! Diesel write path, invalidated only by the outbox installed through a Diesel connection
//! and its relay (Diesel has no hooks).
//!
//! Each scenario caches two probes per list (published fantasy, published sci-fi) and per row
//! (posts A and B) with the derive's dependencies, and warms the cached queries; performs one
//! kind of write; waits (bounded poll) until the probes the write affects are gone, and checks,
//! once the outbox is empty, that the others are still cached and that every cached query
//! answers what the database holds.
//!
//! Joins (`(Comment, Post)`, `(Post, Option<Comment>)`, scoped, `belonging_to`, counts) follow
//! writes to either side and new joinable rows written by raw SQL; `find` takes composite keys;
//! two databases (PostgreSQL schemas, MariaDB databases, SQLite files, in-memory SQLite
//! connections) behind one cache never share entries.
//!
//! The blocking forms (`load_blocking`, ..., from sync code: a plain thread, `spawn_blocking`,
//! Redis on a runtime driven elsewhere; an error from async code) and the r2d2 pooled forms
//! (`load_pooled`, ...: no checkout on a hit; a connection switched to another schema reads
//! through) answer what the database holds after relayed writes.
#![cfg(all(
    feature = "diesel-postgres",
    feature = "diesel-mysql",
    feature = "seaorm"
))]
#![allow(clippy::unwrap_used)]

mod diesel_blog;
mod support;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use diesel::connection::{SimpleConnection, TransactionManager};
use diesel::prelude::*;
use diesel::r2d2::ConnectionManager;
use matroska::diesel::{CachePool, CachedExt, install_outbox, uninstall_outbox};
use matroska::outbox::Outbox;
use matroska::seaorm::outbox as seaorm_outbox;
use matroska::{Cache, WatchedTable};

use diesel_blog::schema::{comments, post_tags, posts};
use diesel_blog::{
    ALL, Comment, Env, FANTASY, Post, PostBySeries, PostTag, ROW_A, ROW_B, SCI_FI, create_tables,
    published_in, tenants, watched_tables,
};
use support::db::{DieselConn, ScratchDb};
use support::faults::Faulty;

/// One module of scenarios per connection type: Diesel's query types are checked per backend,
/// so the scenarios are written once here and instantiated for each.
macro_rules! diesel_tests {
    ($backend:ident, $conn:ty) => {
        mod $backend {
            use super::*;

            type Conn = $conn;
            type Backend = <Conn as Connection>::Backend;

            fn insert(conn: &mut Conn, title: &str, category: &str) -> Post {
                diesel::insert_into(posts::table)
                    .values((
                        posts::title.eq(title),
                        posts::category.eq(category),
                        posts::published.eq(true),
                    ))
                    .execute(conn)
                    .unwrap();
                // Titles are unique in a scenario; no `RETURNING` on MariaDB.
                posts::table
                    .filter(posts::title.eq(title))
                    .first(conn)
                    .unwrap()
            }

            pub(super) async fn setup(name: &str) -> Env<Conn> {
                setup_with(name, support::redis_cache(name).await).await
            }

            async fn setup_with(name: &str, cache: Cache) -> Env<Conn> {
                let db = ScratchDb::new(<Conn as DieselConn>::KIND, name).await;
                let mut conn = Conn::open(&db);
                create_tables(&mut conn, db.kind);
                install_outbox(&mut conn, &watched_tables()).unwrap();
                // Idempotent, as a migration re-run or every start-up.
                install_outbox(&mut conn, &watched_tables()).unwrap();
                let a = insert(&mut conn, "A", "fantasy");
                let b = insert(&mut conn, "B", "sci-fi");
                let relay = seaorm_outbox::relay(&db.conn, cache.clone())
                    .unwrap()
                    .watch_type::<Post>()
                    .watch_type::<Comment>()
                    .watch_type::<PostTag>()
                    .build()
                    .spawn();
                let mut env = Env {
                    db,
                    conn,
                    cache,
                    relay,
                    a,
                    b,
                };
                env.wait_idle().await;
                env.fill_probes().await;
                warm(&mut env).await;
                env
            }

            /// The cached list of published posts of `category`, scoped by its condition.
            async fn list(env: &mut Env<Conn>, category: &str) -> Vec<Post> {
                posts::table
                    .order(posts::id)
                    .cached(&env.cache)
                    .scoped(&published_in(category))
                    .load::<Post, _>(&mut env.conn)
                    .await
                    .unwrap()
            }

            fn list_db(env: &mut Env<Conn>, category: &str) -> Vec<Post> {
                posts::table
                    .filter(published_in(category).filter())
                    .order(posts::id)
                    .load(&mut env.conn)
                    .unwrap()
            }

            async fn count(env: &mut Env<Conn>) -> i64 {
                posts::table
                    .cached(&env.cache)
                    .count::<Post, _>(&mut env.conn)
                    .await
                    .unwrap()
            }

            async fn find(env: &mut Env<Conn>, id: i32) -> Option<Post> {
                matroska::diesel::find(&env.cache, &mut env.conn, posts::table, id)
                    .await
                    .unwrap()
            }

            async fn first(env: &mut Env<Conn>) -> Option<Post> {
                posts::table
                    .order(posts::id)
                    .cached(&env.cache)
                    .first::<Post, _>(&mut env.conn)
                    .await
                    .unwrap()
            }

            /// Fills every cached query the scenarios check.
            async fn warm(env: &mut Env<Conn>) {
                let (a, b) = (env.a.id, env.b.id);
                assert_eq!(list(env, "fantasy").await, vec![env.a.clone()]);
                assert_eq!(list(env, "sci-fi").await, vec![env.b.clone()]);
                assert_eq!(count(env).await, 2);
                assert_eq!(find(env, a).await, Some(env.a.clone()));
                assert_eq!(find(env, b).await, Some(env.b.clone()));
                assert_eq!(first(env).await, Some(env.a.clone()));
            }

            /// Every cached query answers what the database holds.
            async fn assert_fresh(env: &mut Env<Conn>) {
                for category in ["fantasy", "sci-fi"] {
                    let db = list_db(env, category);
                    assert_eq!(list(env, category).await, db, "{category} list");
                }
                let db: i64 = posts::table.count().get_result(&mut env.conn).unwrap();
                assert_eq!(count(env).await, db, "count");
                for id in [env.a.id, env.b.id] {
                    let db = posts::table
                        .find(id)
                        .first::<Post>(&mut env.conn)
                        .optional()
                        .unwrap();
                    assert_eq!(find(env, id).await, db, "post {id}");
                }
                let db = posts::table
                    .order(posts::id)
                    .first::<Post>(&mut env.conn)
                    .optional()
                    .unwrap();
                assert_eq!(first(env).await, db, "first");
            }

            /// A single column and an aggregate are cacheable, and depend on every write to
            /// the entity even when scoped: a title is outside the scope, so its update
            /// reaches no condition. The Diesel write is read back fresh after
            /// `wait_delivered` (read-your-writes with no hook).
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn single_columns_and_aggregates() {
                let mut env = setup("d_values").await;
                async fn titles(env: &mut Env<Conn>) -> Vec<String> {
                    posts::table
                        .select(posts::title)
                        .order(posts::id)
                        .cached(&env.cache)
                        .scoped(&published_in("fantasy"))
                        .values::<Post, String, _>(&mut env.conn)
                        .await
                        .unwrap()
                }
                async fn newest(env: &mut Env<Conn>) -> Option<Option<i32>> {
                    posts::table
                        .select(diesel::dsl::max(posts::id))
                        .cached(&env.cache)
                        .value::<Post, Option<i32>, _>(&mut env.conn)
                        .await
                        .unwrap()
                }
                assert_eq!(titles(&mut env).await, vec!["A".to_owned()]);
                assert_eq!(newest(&mut env).await, Some(Some(env.b.id)));
                diesel::update(posts::table.find(env.a.id))
                    .set(posts::title.eq("A2"))
                    .execute(&mut env.conn)
                    .unwrap();
                env.relay
                    .wait_delivered(Duration::from_secs(20))
                    .await
                    .unwrap();
                assert_eq!(titles(&mut env).await, vec!["A2".to_owned()]);
                let c = insert(&mut env.conn, "C", "sci-fi");
                env.relay
                    .wait_delivered(Duration::from_secs(20))
                    .await
                    .unwrap();
                assert_eq!(newest(&mut env).await, Some(Some(c.id)));
            }

            /// The tables the install adds are exactly those that `diesel.toml`'s
            /// `filter = { except_tables = [..] }` (in the crate docs and the README) keeps out
            /// of `schema.rs`.
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn diesel_toml_excludes_every_outbox_table() {
                let db = ScratchDb::new(<Conn as DieselConn>::KIND, "diesel_except").await;
                let mut conn = Conn::open(&db);
                create_tables(&mut conn, db.kind);
                let before = table_names(&db).await;
                install_outbox(&mut conn, &watched_tables()).unwrap();
                let added: BTreeSet<String> = table_names(&db)
                    .await
                    .difference(&before)
                    .cloned()
                    .collect();
                let mut documented = documented_except_tables();
                if db.kind != support::db::Kind::MySql {
                    // Only MySQL/MariaDB need the InnoDB ids (TRUNCATE fires no trigger there).
                    assert!(documented.remove("matroska_outbox_table_ids"));
                }
                assert_eq!(added, documented);
            }

            /// Review: the module docs say "without `.scoped`, any filter, order and join is
            /// safe", and `values` "names the entity it comes from". A filter with a subquery
            /// on another table (posts that have a comment) selects from `posts` only, so
            /// the entry depends on posts alone: a new comment changes the answer and
            /// invalidates nothing it depends on. Both `values::<Post, ..>` and
            /// `load::<Post, _>` serve the stale answer after `wait_delivered`.
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn subquery_on_another_table_stays_fresh() {
                let mut env = setup("d_subquery").await;
                async fn commented_titles(env: &mut Env<Conn>) -> Vec<String> {
                    posts::table
                        .filter(posts::id.eq_any(comments::table.select(comments::post_id)))
                        .select(posts::title)
                        .order(posts::id)
                        .cached(&env.cache)
                        .values::<Post, String, _>(&mut env.conn)
                        .await
                        .unwrap()
                }
                async fn commented(env: &mut Env<Conn>) -> Vec<Post> {
                    posts::table
                        .filter(posts::id.eq_any(comments::table.select(comments::post_id)))
                        .order(posts::id)
                        .cached(&env.cache)
                        .load::<Post, _>(&mut env.conn)
                        .await
                        .unwrap()
                }
                assert_eq!(commented_titles(&mut env).await, Vec::<String>::new());
                assert_eq!(commented(&mut env).await, Vec::<Post>::new());
                comment(&mut env.conn, env.a.id, "first");
                env.relay
                    .wait_delivered(Duration::from_secs(20))
                    .await
                    .unwrap();
                let db: Vec<Post> = posts::table
                    .filter(posts::id.eq_any(comments::table.select(comments::post_id)))
                    .order(posts::id)
                    .load(&mut env.conn)
                    .unwrap();
                assert_eq!(db, vec![env.a.clone()]);
                // (load::<Post>, values::<Post, String>)
                assert_eq!(
                    (commented(&mut env).await, commented_titles(&mut env).await),
                    (db, vec!["A".to_owned()]),
                    "stale cached answers"
                );
            }

            /// Review: a `values` entry's key is the first entity of `M`, the kind and the
            /// SQL, not `M` itself, yet `M` decides its dependencies. Two call sites running
            /// one join with different `M`s share the entry: whichever fills it first decides
            /// what invalidates it for both. Here `::<Comment, ..>` (too narrow) fills it and
            /// the correctly typed `::<(Comment, Post), ..>` is then served the stale titles
            /// after a post's update.
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn values_of_one_query_with_another_row_type_stay_fresh() {
                let mut env = setup("d_values_m").await;
                comment(&mut env.conn, env.a.id, "c1");
                env.relay
                    .wait_delivered(Duration::from_secs(20))
                    .await
                    .unwrap();
                let query = || {
                    comments::table
                        .inner_join(posts::table)
                        .select(posts::title)
                        .order(comments::id)
                };
                let narrow = query()
                    .cached(&env.cache)
                    .values::<Comment, String, _>(&mut env.conn)
                    .await
                    .unwrap();
                assert_eq!(narrow, vec!["A".to_owned()]);
                diesel::update(posts::table.find(env.a.id))
                    .set(posts::title.eq("A2"))
                    .execute(&mut env.conn)
                    .unwrap();
                env.relay
                    .wait_delivered(Duration::from_secs(20))
                    .await
                    .unwrap();
                let wide = query()
                    .cached(&env.cache)
                    .values::<(Comment, Post), String, _>(&mut env.conn)
                    .await
                    .unwrap();
                assert_eq!(
                    wide,
                    vec!["A2".to_owned()],
                    "values::<(Comment, Post)> stale"
                );
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn insert_enters_a_list() {
                let mut env = setup("d_insert").await;
                insert(&mut env.conn, "C", "fantasy");
                env.expect(&[FANTASY], &[SCI_FI, ROW_A, ROW_B]).await;
                assert_fresh(&mut env).await;
                assert_eq!(list(&mut env, "fantasy").await.len(), 2);
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn update_moves_a_row_between_lists() {
                let mut env = setup("d_move").await;
                diesel::update(posts::table.find(env.a.id))
                    .set(posts::category.eq("sci-fi"))
                    .execute(&mut env.conn)
                    .unwrap();
                env.expect(&[ROW_A, FANTASY, SCI_FI], &[ROW_B]).await;
                assert_fresh(&mut env).await;
                assert_eq!(list(&mut env, "sci-fi").await.len(), 2);
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn unwatched_update_keeps_lists() {
                let mut env = setup("d_unwatched").await;
                diesel::update(&env.a)
                    .set(posts::title.eq("A, revised"))
                    .execute(&mut env.conn)
                    .unwrap();
                // Only the row: no scope column changed.
                env.expect(&[ROW_A], &[FANTASY, SCI_FI, ROW_B]).await;
                assert_fresh(&mut env).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn delete() {
                let mut env = setup("d_delete").await;
                diesel::delete(posts::table.find(env.a.id))
                    .execute(&mut env.conn)
                    .unwrap();
                env.expect(&[ROW_A, FANTASY], &[SCI_FI, ROW_B]).await;
                assert_fresh(&mut env).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn bulk_update() {
                let mut env = setup("d_bulk_update").await;
                insert(&mut env.conn, "C", "fantasy");
                env.expect(&[FANTASY], &[]).await;
                env.fill_probes().await;
                diesel::update(posts::table.filter(posts::category.eq("fantasy")))
                    .set(posts::published.eq(false))
                    .execute(&mut env.conn)
                    .unwrap();
                env.expect(&[ROW_A, FANTASY], &[SCI_FI, ROW_B]).await;
                assert_fresh(&mut env).await;
                assert!(list(&mut env, "fantasy").await.is_empty());
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn bulk_delete() {
                let mut env = setup("d_bulk_delete").await;
                diesel::delete(posts::table.filter(posts::published.eq(true)))
                    .execute(&mut env.conn)
                    .unwrap();
                env.expect(ALL, &[]).await;
                assert_fresh(&mut env).await;
                assert_eq!(count(&mut env).await, 0);
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn raw_sql() {
                let mut env = setup("d_raw_sql").await;
                diesel::sql_query(format!(
                    "UPDATE posts SET category = 'sci-fi' WHERE id = {}",
                    env.a.id
                ))
                .execute(&mut env.conn)
                .unwrap();
                env.expect(&[ROW_A, FANTASY, SCI_FI], &[ROW_B]).await;
                assert_fresh(&mut env).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn rollback_invalidates_nothing() {
                let mut env = setup("d_rollback").await;
                let result = env.conn.transaction::<(), _, _>(|conn| {
                    insert(conn, "C", "fantasy");
                    diesel::delete(posts::table.find(env.b.id)).execute(conn)?;
                    Err(diesel::result::Error::RollbackTransaction)
                });
                assert!(result.is_err());
                // A later committed write proves the relay ran past the rolled-back one.
                // (The relay's delivery counter is updated after its commit, so comparing
                // it raced with the setup's last claim.)
                diesel::update(posts::table.find(env.a.id))
                    .set(posts::title.eq("A2"))
                    .execute(&mut env.conn)
                    .unwrap();
                env.expect(&[ROW_A], &[FANTASY, SCI_FI, ROW_B]).await;
                assert_fresh(&mut env).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn another_connection() {
                let mut env = setup("d_other_conn").await;
                let mut other = Conn::open(&env.db);
                insert(&mut other, "C", "sci-fi");
                env.expect(&[SCI_FI], &[FANTASY, ROW_A, ROW_B]).await;
                assert_fresh(&mut env).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn transaction_reads_through() {
                let mut env = setup("d_txn").await;
                let manager = || <Conn as Connection>::TransactionManager::begin_transaction;
                manager()(&mut env.conn).unwrap();
                insert(&mut env.conn, "C", "fantasy");
                // No hit: the cached list lacks the transaction's own write.
                assert_eq!(list(&mut env, "fantasy").await.len(), 2);
                // No fill: a miss inside the transaction stores nothing it read.
                env.cache
                    .invalidate(&published_in("fantasy").dependencies())
                    .await
                    .unwrap();
                assert_eq!(list(&mut env, "fantasy").await.len(), 2);
                <Conn as Connection>::TransactionManager::rollback_transaction(&mut env.conn)
                    .unwrap();
                assert_eq!(list(&mut env, "fantasy").await, vec![env.a.clone()]);
                assert_fresh(&mut env).await;
            }

            /// A comment on `post`, by raw SQL (a write Diesel's query builder never saw).
            fn comment(conn: &mut Conn, post: i32, body: &str) {
                diesel::sql_query(format!(
                    "INSERT INTO comments (post_id, body) VALUES ({post}, '{body}')"
                ))
                .execute(conn)
                .unwrap();
            }

            async fn inner_join(env: &mut Env<Conn>) -> Vec<(Comment, Post)> {
                comments::table
                    .inner_join(posts::table)
                    .order(comments::id)
                    .cached(&env.cache)
                    .load::<(Comment, Post), _>(&mut env.conn)
                    .await
                    .unwrap()
            }

            async fn left_join(env: &mut Env<Conn>) -> Vec<(Post, Option<Comment>)> {
                posts::table
                    .left_join(comments::table)
                    .order((posts::id, comments::id.nullable()))
                    .cached(&env.cache)
                    .load::<(Post, Option<Comment>), _>(&mut env.conn)
                    .await
                    .unwrap()
            }

            /// The published fantasy posts with their comments: scoped by the posts' condition.
            async fn scoped_join(env: &mut Env<Conn>) -> Vec<(Post, Option<Comment>)> {
                posts::table
                    .left_join(comments::table)
                    .order((posts::id, comments::id.nullable()))
                    .cached(&env.cache)
                    .scoped(&published_in("fantasy"))
                    .load::<(Post, Option<Comment>), _>(&mut env.conn)
                    .await
                    .unwrap()
            }

            /// Every cached join answers what the database holds.
            async fn assert_joins_fresh(env: &mut Env<Conn>) {
                let db: Vec<(Comment, Post)> = comments::table
                    .inner_join(posts::table)
                    .order(comments::id)
                    .load(&mut env.conn)
                    .unwrap();
                assert_eq!(inner_join(env).await, db, "inner join");
                let db_count = db.len() as i64;
                let count = comments::table
                    .inner_join(posts::table)
                    .cached(&env.cache)
                    .count::<(Comment, Post), _>(&mut env.conn)
                    .await
                    .unwrap();
                assert_eq!(count, db_count, "join count");
                let db: Vec<(Post, Option<Comment>)> = posts::table
                    .left_join(comments::table)
                    .order((posts::id, comments::id.nullable()))
                    .load(&mut env.conn)
                    .unwrap();
                assert_eq!(left_join(env).await, db, "left join");
                let db: Vec<(Post, Option<Comment>)> = posts::table
                    .left_join(comments::table)
                    .filter(published_in("fantasy").filter())
                    .order((posts::id, comments::id.nullable()))
                    .load(&mut env.conn)
                    .unwrap();
                assert_eq!(scoped_join(env).await, db, "scoped join");
                let a = env.a.clone();
                let db: Vec<Comment> = Comment::belonging_to(&a)
                    .order(comments::id)
                    .load(&mut env.conn)
                    .unwrap();
                let cached = Comment::belonging_to(&a)
                    .order(comments::id)
                    .cached(&env.cache)
                    .load::<Comment, _>(&mut env.conn)
                    .await
                    .unwrap();
                assert_eq!(cached, db, "belonging_to");
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn joins_follow_both_sides() {
                let mut env = setup("d_joins").await;
                let (a, b) = (env.a.id, env.b.id);
                comment(&mut env.conn, a, "a1");
                env.wait_idle().await;
                assert_joins_fresh(&mut env).await;
                assert_eq!(inner_join(&mut env).await.len(), 1);

                // A new row of the joined table that joins, by raw SQL: seen by the outbox
                // only. B's row was in the left join (with no comment), not in the inner one.
                comment(&mut env.conn, b, "b1");
                env.wait_idle().await;
                assert_joins_fresh(&mut env).await;
                assert_eq!(inner_join(&mut env).await.len(), 2);

                // The other side: a post's unwatched column (its key and `any_change` only).
                diesel::update(posts::table.find(a))
                    .set(posts::title.eq("A, revised"))
                    .execute(&mut env.conn)
                    .unwrap();
                env.wait_idle().await;
                assert_joins_fresh(&mut env).await;

                // A joined row changes, then leaves.
                diesel::update(comments::table.filter(comments::post_id.eq(a)))
                    .set(comments::body.eq("a1, revised"))
                    .execute(&mut env.conn)
                    .unwrap();
                env.wait_idle().await;
                assert_joins_fresh(&mut env).await;
                diesel::delete(comments::table.filter(comments::post_id.eq(a)))
                    .execute(&mut env.conn)
                    .unwrap();
                env.wait_idle().await;
                assert_joins_fresh(&mut env).await;

                // A post moves into the scoped join's condition.
                diesel::update(posts::table.find(b))
                    .set(posts::category.eq("fantasy"))
                    .execute(&mut env.conn)
                    .unwrap();
                env.wait_idle().await;
                assert_joins_fresh(&mut env).await;
                assert_eq!(scoped_join(&mut env).await.len(), 2);
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn joins_hit_and_scoped_joins_outlive_other_rows() {
                let mut env = setup("d_join_hits").await;
                let a = env.a.id;
                comment(&mut env.conn, a, "a1");
                env.wait_idle().await;
                assert_joins_fresh(&mut env).await;
                // A sci-fi post's title: not in the fantasy join's condition, not one of its rows.
                diesel::update(posts::table.find(env.b.id))
                    .set(posts::title.eq("B, revised"))
                    .execute(&mut env.conn)
                    .unwrap();
                env.wait_idle().await;
                // Unseen by the cache from here: the entries answer.
                uninstall_outbox(&mut env.conn, &["comments"]).unwrap();
                comment(&mut env.conn, a, "a2");
                env.wait_idle().await;
                assert_eq!(scoped_join(&mut env).await.len(), 1, "scoped join kept");
                // Unscoped, the joins depend on every write to posts: reloaded with `a2`...
                assert_eq!(inner_join(&mut env).await.len(), 2, "inner join reloaded");
                assert_eq!(left_join(&mut env).await.len(), 3, "left join reloaded");
                // ... and now answered from the cache.
                comment(&mut env.conn, a, "a3");
                assert_eq!(inner_join(&mut env).await.len(), 2, "inner join hit");
                assert_eq!(left_join(&mut env).await.len(), 3, "left join hit");
            }

            async fn find_tag(env: &mut Env<Conn>, post: i32, tag: &str) -> Option<PostTag> {
                matroska::diesel::find(
                    &env.cache,
                    &mut env.conn,
                    post_tags::table,
                    (post, tag.to_owned()),
                )
                .await
                .unwrap()
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn find_by_composite_key() {
                let mut env = setup("d_find_composite").await;
                let a = env.a.id;
                // A missing row is cached, and its insert drops it.
                assert_eq!(find_tag(&mut env, a, "rust").await, None);
                diesel::insert_into(post_tags::table)
                    .values((
                        post_tags::post_id.eq(a),
                        post_tags::tag.eq("rust"),
                        post_tags::note.eq("first"),
                    ))
                    .execute(&mut env.conn)
                    .unwrap();
                env.wait_idle().await;
                let found = find_tag(&mut env, a, "rust").await.unwrap();
                assert_eq!(found.note, "first");
                assert_eq!(find_tag(&mut env, a, "go").await, None);
                // Another key of the same post: `rust` stays cached, `go` drops.
                diesel::sql_query(format!(
                    "INSERT INTO post_tags (post_id, tag, note) VALUES ({a}, 'go', 'second')"
                ))
                .execute(&mut env.conn)
                .unwrap();
                env.wait_idle().await;
                assert_eq!(find_tag(&mut env, a, "go").await.unwrap().note, "second");
                diesel::update(post_tags::table.find((a, "rust")))
                    .set(post_tags::note.eq("revised"))
                    .execute(&mut env.conn)
                    .unwrap();
                env.wait_idle().await;
                assert_eq!(find_tag(&mut env, a, "rust").await.unwrap().note, "revised");
                // A hit: unseen by the cache, the entry answers.
                uninstall_outbox(&mut env.conn, &["post_tags"]).unwrap();
                diesel::delete(post_tags::table)
                    .execute(&mut env.conn)
                    .unwrap();
                assert_eq!(find_tag(&mut env, a, "rust").await.unwrap().note, "revised");
            }

            /// Two databases of one kind (PostgreSQL schemas of one database, MariaDB databases,
            /// SQLite files) behind one cache prefix: equal queries, separate entries.
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn two_databases_do_not_share() {
                let cache = support::redis_cache("d_tenants").await;
                let mut lists = Vec::new();
                let mut dbs = Vec::new();
                for tenant in ["one", "two"] {
                    let db = ScratchDb::new(<Conn as DieselConn>::KIND, "d_tenant").await;
                    let mut conn = Conn::open(&db);
                    create_tables(&mut conn, db.kind);
                    insert(&mut conn, tenant, "fantasy");
                    for _ in 0..2 {
                        let list = posts::table
                            .order(posts::id)
                            .cached(&cache)
                            .load::<Post, _>(&mut conn)
                            .await
                            .unwrap();
                        lists.push(list.into_iter().map(|p| p.title).collect::<Vec<_>>());
                    }
                    dbs.push((db, conn));
                }
                assert_eq!(lists, [["one"], ["one"], ["two"], ["two"]]);
            }

            /// The cached list of posts in `series` (`None`: in none).
            async fn series(env: &mut Env<Conn>, series: Option<&str>) -> Vec<Post> {
                let condition = PostBySeries {
                    series: series.map(str::to_owned),
                };
                posts::table
                    .order(posts::id)
                    .cached(&env.cache)
                    .scoped(&condition)
                    .load::<Post, _>(&mut env.conn)
                    .await
                    .unwrap()
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn nullable_scope() {
                let mut env = setup("d_nullable").await;
                // `None` filters with IS NULL (null-safe), not `= NULL`.
                assert_eq!(series(&mut env, None).await.len(), 2);
                assert!(series(&mut env, Some("dune")).await.is_empty());
                diesel::update(posts::table.find(env.b.id))
                    .set(posts::series.eq("dune"))
                    .execute(&mut env.conn)
                    .unwrap();
                // A watched column changed: the relay invalidates the conditions of every
                // scope of the row (B's sci-fi list too), never another row's.
                env.expect(&[ROW_B, SCI_FI], &[FANTASY, ROW_A]).await;
                assert_eq!(series(&mut env, None).await, vec![env.a.clone()]);
                let dune = series(&mut env, Some("dune")).await;
                assert_eq!(dune.iter().map(|p| p.id).collect::<Vec<_>>(), [env.b.id]);
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn find_caches_a_missing_row() {
                let mut env = setup("d_find_missing").await;
                assert_eq!(find(&mut env, 999).await, None);
                diesel::insert_into(posts::table)
                    .values((
                        posts::id.eq(999),
                        posts::title.eq("Z"),
                        posts::category.eq("poetry"),
                        posts::published.eq(false),
                    ))
                    .execute(&mut env.conn)
                    .unwrap();
                env.expect(&[], ALL).await;
                assert_eq!(find(&mut env, 999).await.map(|p| p.title), Some("Z".into()));
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn cached_queries_hit_without_the_outbox() {
                let mut env = setup("d_hits").await;
                uninstall_outbox(&mut env.conn, &["posts"]).unwrap();
                // Unseen by the cache: every cached query still answers from its entry.
                env.conn.batch_execute("DELETE FROM posts").unwrap();
                env.wait_idle().await;
                assert_eq!(list(&mut env, "fantasy").await, vec![env.a.clone()]);
                assert_eq!(count(&mut env).await, 2);
                let a = env.a.id;
                assert_eq!(find(&mut env, a).await, Some(env.a.clone()));
                assert_eq!(first(&mut env).await, Some(env.a.clone()));
                // Another namespace is another entry.
                let other = posts::table
                    .order(posts::id)
                    .cached(&env.cache)
                    .namespace("other-db")
                    .scoped(&published_in("fantasy"))
                    .load::<Post, _>(&mut env.conn)
                    .await
                    .unwrap();
                assert!(other.is_empty());
            }

            /// A cached load reads the list, then a write from another connection commits and
            /// the relay invalidates the list, then the load's put arrives: the put is refused
            /// (stale-set ticket), so the next read sees the write. The same sequence with a
            /// plain read-then-put leaves the stale list cached.
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn stale_load_is_not_stored() {
                let backend = Arc::new(Faulty::new(support::redis_backend("d_stale").await));
                let cache = Cache::builder_arc(backend.clone()).build().unwrap();
                let mut env = setup_with("d_stale", cache).await;
                let condition = published_in("fantasy");
                // The list's entry (filled by `setup`) goes, so the next read loads.
                env.cache
                    .invalidate(&condition.dependencies()[..1])
                    .await
                    .unwrap();
                env.fill_probes().await;
                backend.close_puts();
                let Env {
                    conn, db, cache, ..
                } = &mut env;
                let load = posts::table
                    .order(posts::id)
                    .cached(cache)
                    .scoped(&condition)
                    .load::<Post, _>(conn);
                let write = async {
                    backend.puts_stopped_after(0).await;
                    insert(&mut Conn::open(db), "C", "fantasy");
                    let deadline = Instant::now() + Duration::from_secs(20);
                    while cache.has(FANTASY).await.unwrap() {
                        assert!(Instant::now() < deadline, "the relay did not invalidate");
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                    backend.open_puts();
                };
                let (loaded, ()) = tokio::join!(load, write);
                // The load read before the write: its answer is right for its time ...
                assert_eq!(loaded.unwrap(), vec![env.a.clone()]);
                // ... and was not stored.
                assert_eq!(list(&mut env, "fantasy").await.len(), 2);

                // Unprotected: read, the write lands and is invalidated, then a plain put.
                let rows: Vec<Post> = posts::table
                    .filter(condition.filter())
                    .load(&mut env.conn)
                    .unwrap();
                insert(&mut Conn::open(&env.db), "D", "fantasy");
                env.expect(&[FANTASY], &[]).await;
                env.cache
                    .put("naive", &rows, &condition.dependencies(), None)
                    .await
                    .unwrap();
                let naive: Vec<Post> = env.cache.get("naive").await.unwrap().unwrap();
                assert_eq!(naive.len(), 2, "the plain put stored the list without D");
                assert_eq!(list_db(&mut env, "fantasy").len(), 3);
            }

            /// Posts `ids` by a key list, `.derived()`: ordered by an unwatched column, which
            /// a key list allows.
            async fn by_ids(env: &mut Env<Conn>, ids: &[i32]) -> Vec<Post> {
                posts::table
                    .filter(posts::id.eq_any(ids.to_vec()))
                    .order((posts::title, posts::id))
                    .cached(&env.cache)
                    .derived::<Post>()
                    .load::<Post, _>(&mut env.conn)
                    .await
                    .unwrap()
            }

            async fn by_ids_count(env: &mut Env<Conn>, ids: &[i32]) -> i64 {
                posts::table
                    .filter(posts::id.eq_any(ids.to_vec()))
                    .cached(&env.cache)
                    .derived::<Post>()
                    .count::<Post, _>(&mut env.conn)
                    .await
                    .unwrap()
            }

            /// Whether the key list and its count were served from the cache, after checking
            /// that both answer what the database holds.
            async fn by_ids_hit(env: &mut Env<Conn>, backend: &Faulty, ids: &[i32]) -> bool {
                let before = backend.hits();
                let list = by_ids(env, ids).await;
                let listed = backend.hits() > before;
                let count = by_ids_count(env, ids).await;
                let counted = backend.hits() > before + usize::from(listed);
                let db: Vec<Post> = posts::table
                    .filter(posts::id.eq_any(ids.to_vec()))
                    .order((posts::title, posts::id))
                    .load(&mut env.conn)
                    .unwrap();
                assert_eq!(list, db, "key list");
                assert_eq!(count, db.len() as i64, "key count");
                assert_eq!(
                    listed, counted,
                    "the list and its count are dropped together"
                );
                listed
            }

            async fn delivered(env: &Env<Conn>) {
                env.relay
                    .wait_delivered(Duration::from_secs(20))
                    .await
                    .unwrap();
            }

            /// A `.derived()` key list (`id IN (..)` / `= ANY`) and its count depend on the
            /// listed keys: writes to other rows keep them; an update, a delete, or the insert
            /// of a listed id that was missing drops them, through Diesel or raw SQL.
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn derived_key_lists() {
                let backend = Arc::new(Faulty::new(support::redis_backend("d_derived_keys").await));
                let cache = Cache::builder_arc(backend.clone()).build().unwrap();
                let mut env = setup_with("d_derived_keys", cache).await;
                let (a, b) = (env.a.id, env.b.id);
                let missing = b + 100;
                let ids = [a, missing];
                let explained = posts::table
                    .filter(posts::id.eq_any(ids.to_vec()))
                    .cached(&env.cache)
                    .derived::<Post>()
                    .explain::<Backend>();
                assert_eq!(explained.to_string(), "derived: 2 primary key(s)");
                assert!(
                    !by_ids_hit(&mut env, &backend, &ids).await,
                    "first read loads"
                );
                assert!(
                    by_ids_hit(&mut env, &backend, &ids).await,
                    "second read hits"
                );

                // Other rows: an unwatched and a watched column of B, a new row, by Diesel and
                // raw SQL.
                diesel::update(posts::table.find(b))
                    .set(posts::title.eq("B2"))
                    .execute(&mut env.conn)
                    .unwrap();
                diesel::sql_query(format!(
                    "UPDATE posts SET category = 'fantasy' WHERE id = {b}"
                ))
                .execute(&mut env.conn)
                .unwrap();
                let c = insert(&mut env.conn, "C", "fantasy");
                assert_ne!(c.id, missing);
                delivered(&env).await;
                assert!(
                    by_ids_hit(&mut env, &backend, &ids).await,
                    "a write outside the list dropped it"
                );

                let writes = [
                    format!("UPDATE posts SET title = 'A2' WHERE id = {a}"),
                    format!(
                        "INSERT INTO posts (id, title, category, published) \
                         VALUES ({missing}, 'M', 'x', true)"
                    ),
                    format!("UPDATE posts SET published = false WHERE id = {missing}"),
                    format!("DELETE FROM posts WHERE id = {a}"),
                ];
                for write in writes {
                    diesel::sql_query(&write).execute(&mut env.conn).unwrap();
                    delivered(&env).await;
                    assert!(!by_ids_hit(&mut env, &backend, &ids).await, "{write}: kept");
                    assert!(
                        by_ids_hit(&mut env, &backend, &ids).await,
                        "{write}: refilled"
                    );
                }
                // Through Diesel's query builder too.
                diesel::update(posts::table.find(missing))
                    .set(posts::title.eq("M2"))
                    .execute(&mut env.conn)
                    .unwrap();
                delivered(&env).await;
                assert!(
                    !by_ids_hit(&mut env, &backend, &ids).await,
                    "Diesel update: kept"
                );
                // A write the relay cannot narrow to rows (PostgreSQL records a `TRUNCATE` as
                // one, invalidating the entity's `all`): only `all` reaches the list.
                if <Conn as DieselConn>::KIND == support::db::Kind::Postgres {
                    assert!(by_ids_hit(&mut env, &backend, &ids).await);
                    env.conn.batch_execute("TRUNCATE posts").unwrap();
                    delivered(&env).await;
                    assert!(
                        !by_ids_hit(&mut env, &backend, &ids).await,
                        "TRUNCATE: kept"
                    );
                }
            }

            /// A post's comments through `.derived()`, by the tracked foreign key
            /// (`belongs_to(Post)` → `post_id`): their count (`post_id = $1`) and their
            /// `belonging_to(&[post])` list (`= ANY` / `IN`), ordered by an unwatched column.
            /// Whether both were served from the cache, after checking that both answer what
            /// the database holds.
            async fn comments_hit(env: &mut Env<Conn>, backend: &Faulty, post: &Post) -> bool {
                let posts = vec![post.clone()];
                let before = backend.hits();
                let count = comments::table
                    .filter(comments::post_id.eq(post.id))
                    .cached(&env.cache)
                    .derived::<Comment>()
                    .count::<Comment, _>(&mut env.conn)
                    .await
                    .unwrap();
                let counted = backend.hits() > before;
                let list = Comment::belonging_to(&posts)
                    .order((comments::body, comments::id))
                    .cached(&env.cache)
                    .derived::<Comment>()
                    .load::<Comment, _>(&mut env.conn)
                    .await
                    .unwrap();
                let listed = backend.hits() > before + usize::from(counted);
                let db: Vec<Comment> = Comment::belonging_to(&posts)
                    .order((comments::body, comments::id))
                    .load(&mut env.conn)
                    .unwrap();
                assert_eq!(list, db, "comments of post {}", post.id);
                assert_eq!(count, db.len() as i64, "count of post {}", post.id);
                assert_eq!(listed, counted, "the list and its count go together");
                listed
            }

            /// The tracked foreign key (`comments.post_id`): a post's comment count and its
            /// `belonging_to` list stay cached across writes to another post's comments, and
            /// are dropped by an insert, a delete, an update of an unwatched column of one of
            /// its comments (a key-only `K` row, which records the tracked column too) and a
            /// comment moved to or away from it (both sides of a `U` row), through Diesel or
            /// raw SQL; every recorded row is read exactly (no dead letter, no coarse fallback).
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn tracked_foreign_keys() {
                let backend = Arc::new(Faulty::new(support::redis_backend("d_tracked").await));
                let cache = Cache::builder_arc(backend.clone()).build().unwrap();
                let mut env = setup_with("d_tracked", cache).await;
                let (a, b) = (env.a.clone(), env.b.clone());
                diesel::sql_query(format!(
                    "INSERT INTO comments (id, post_id, body) VALUES \
                     (1, {a}, 'x'), (2, {a}, 'y'), (3, {b}, 'z')",
                    a = a.id,
                    b = b.id
                ))
                .execute(&mut env.conn)
                .unwrap();
                delivered(&env).await;
                let explained = comments::table
                    .filter(comments::post_id.eq(a.id))
                    .cached(&env.cache)
                    .derived::<Comment>()
                    .explain::<Backend>();
                assert_eq!(
                    explained.to_string(),
                    "derived: 1 condition(s) on tracked column `post_id`"
                );
                let posts = vec![a.clone(), b.clone()];
                let explained = Comment::belonging_to(&posts)
                    .order(comments::body)
                    .cached(&env.cache)
                    .derived::<Comment>()
                    .explain::<Backend>();
                assert_eq!(
                    explained.to_string(),
                    "derived: 2 condition(s) on tracked column `post_id`"
                );
                assert!(
                    !comments_hit(&mut env, &backend, &a).await,
                    "first read loads"
                );
                assert!(
                    comments_hit(&mut env, &backend, &a).await,
                    "second read hits"
                );

                // Another post's comments: an unwatched column (a `K` row), a new one, one
                // deleted; and the post itself.
                diesel::update(comments::table.find(3))
                    .set(comments::body.eq("z2"))
                    .execute(&mut env.conn)
                    .unwrap();
                for write in [
                    format!(
                        "INSERT INTO comments (id, post_id, body) VALUES (4, {}, 'w')",
                        b.id
                    ),
                    "DELETE FROM comments WHERE id = 4".to_owned(),
                    format!("UPDATE posts SET title = 'A2' WHERE id = {}", a.id),
                ] {
                    diesel::sql_query(&write).execute(&mut env.conn).unwrap();
                }
                delivered(&env).await;
                assert!(
                    comments_hit(&mut env, &backend, &a).await,
                    "a write to another post's comments dropped them"
                );

                let writes = [
                    // Inserted into the post.
                    format!(
                        "INSERT INTO comments (id, post_id, body) VALUES (5, {}, 'v')",
                        a.id
                    ),
                    // An unwatched column of one of its comments: a key-only row.
                    "UPDATE comments SET body = 'x2' WHERE id = 1".to_owned(),
                    // Moved to it (the new side of the update).
                    format!("UPDATE comments SET post_id = {} WHERE id = 3", a.id),
                    // Moved away from it (the old side).
                    format!("UPDATE comments SET post_id = {} WHERE id = 1", b.id),
                    "DELETE FROM comments WHERE id = 2".to_owned(),
                ];
                for write in writes {
                    diesel::sql_query(&write).execute(&mut env.conn).unwrap();
                    delivered(&env).await;
                    assert!(!comments_hit(&mut env, &backend, &a).await, "{write}: kept");
                    assert!(
                        comments_hit(&mut env, &backend, &a).await,
                        "{write}: refilled"
                    );
                }
                // Through Diesel's query builder: a key-only update, and a move away.
                diesel::update(comments::table.find(5))
                    .set(comments::body.eq("v2"))
                    .execute(&mut env.conn)
                    .unwrap();
                delivered(&env).await;
                assert!(
                    !comments_hit(&mut env, &backend, &a).await,
                    "Diesel update: kept"
                );
                diesel::update(comments::table.find(5))
                    .set(comments::post_id.eq(b.id))
                    .execute(&mut env.conn)
                    .unwrap();
                delivered(&env).await;
                assert!(
                    !comments_hit(&mut env, &backend, &a).await,
                    "Diesel move: kept"
                );
                assert_eq!(
                    comments::table
                        .filter(comments::post_id.eq(a.id))
                        .count()
                        .get_result::<i64>(&mut env.conn)
                        .unwrap(),
                    1
                );
                let dead = env.relay.relay().dead_letters().await.unwrap();
                assert!(dead.is_empty(), "rows read coarsely: {dead:?}");
                // A write the relay cannot narrow to rows (PostgreSQL records a `TRUNCATE` as
                // one): only the entity's `all` reaches them.
                if <Conn as DieselConn>::KIND == support::db::Kind::Postgres {
                    assert!(comments_hit(&mut env, &backend, &a).await);
                    env.conn.batch_execute("TRUNCATE comments").unwrap();
                    delivered(&env).await;
                    assert!(
                        !comments_hit(&mut env, &backend, &a).await,
                        "TRUNCATE: kept"
                    );
                }
            }

            /// Review: writes that change a comment's key and its tracked `post_id` in one
            /// statement, over several rows (PostgreSQL's statement-level triggers pair old
            /// and new rows by key: a changed key leaves both unpaired), and a multi-row
            /// update of an unwatched column only (`K` rows): each drops the lists of every
            /// post a changed row belonged to before or after, with no coarse fallback.
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn tracked_foreign_keys_across_key_changes() {
                let backend = Arc::new(Faulty::new(support::redis_backend("d_tracked_keys").await));
                let cache = Cache::builder_arc(backend.clone()).build().unwrap();
                let mut env = setup_with("d_tracked_keys", cache).await;
                let (a, b) = (env.a.clone(), env.b.clone());
                diesel::sql_query(format!(
                    "INSERT INTO comments (id, post_id, body) VALUES (1, {a}, 'x'), (2, {b}, 'y')",
                    a = a.id,
                    b = b.id
                ))
                .execute(&mut env.conn)
                .unwrap();
                delivered(&env).await;
                let writes = [
                    // New keys, and each comment moved to the other post.
                    format!(
                        "UPDATE comments SET id = id + 10, post_id = CASE WHEN post_id = {a} \
                         THEN {b} ELSE {a} END",
                        a = a.id,
                        b = b.id
                    ),
                    // New keys only.
                    "UPDATE comments SET id = id + 10".to_owned(),
                    // Unwatched columns of both posts' comments.
                    "UPDATE comments SET body = 'z'".to_owned(),
                ];
                for write in writes {
                    for post in [&a, &b] {
                        comments_hit(&mut env, &backend, post).await;
                        assert!(
                            comments_hit(&mut env, &backend, post).await,
                            "{write}: cached"
                        );
                    }
                    diesel::sql_query(&write).execute(&mut env.conn).unwrap();
                    delivered(&env).await;
                    for post in [&a, &b] {
                        assert!(
                            !comments_hit(&mut env, &backend, post).await,
                            "{write}: kept post {}",
                            post.id
                        );
                    }
                }
                let dead = env.relay.relay().dead_letters().await.unwrap();
                assert!(dead.is_empty(), "rows read coarsely: {dead:?}");
            }

            /// A `.derived()` filter on a declared scope's fields gets what `.scoped` gives,
            /// and behaves so; a filter outside the subset is coarse: any write drops it.
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn derived_scope_and_coarse_filters() {
                let backend =
                    Arc::new(Faulty::new(support::redis_backend("d_derived_scope").await));
                let cache = Cache::builder_arc(backend.clone()).build().unwrap();
                let mut env = setup_with("d_derived_scope", cache).await;
                fn fantasy() -> diesel::helper_types::Order<
                    diesel::helper_types::Filter<
                        diesel::helper_types::Filter<
                            posts::table,
                            diesel::helper_types::Eq<posts::published, bool>,
                        >,
                        diesel::helper_types::Eq<posts::category, &'static str>,
                    >,
                    posts::id,
                > {
                    posts::table
                        .filter(posts::published.eq(true))
                        .filter(posts::category.eq("fantasy"))
                        .order(posts::id)
                }
                let explained = fantasy()
                    .cached(&env.cache)
                    .derived::<Post>()
                    .explain::<Backend>();
                let mut got = explained.dependencies.clone();
                let mut want = published_in("fantasy").dependencies();
                got.sort();
                want.sort();
                assert_eq!(got, want, "{explained}");
                async fn hit(env: &mut Env<Conn>, backend: &Faulty) -> bool {
                    let before = backend.hits();
                    let list = fantasy()
                        .cached(&env.cache)
                        .derived::<Post>()
                        .load::<Post, _>(&mut env.conn)
                        .await
                        .unwrap();
                    assert_eq!(list, fantasy().load::<Post>(&mut env.conn).unwrap());
                    backend.hits() > before
                }
                async fn titled_hit(env: &mut Env<Conn>, backend: &Faulty) -> bool {
                    let before = backend.hits();
                    let query = || {
                        posts::table
                            .filter(posts::title.like("%A%"))
                            .order(posts::id)
                    };
                    let list = query()
                        .cached(&env.cache)
                        .derived::<Post>()
                        .load::<Post, _>(&mut env.conn)
                        .await
                        .unwrap();
                    assert_eq!(list, query().load::<Post>(&mut env.conn).unwrap());
                    backend.hits() > before
                }
                let coarse = posts::table
                    .filter(posts::title.like("%A%"))
                    .cached(&env.cache)
                    .derived::<Post>()
                    .explain::<Backend>();
                assert!(coarse.is_coarse(), "{coarse}");
                // The same SQL as `list(env, "fantasy")`'s (`.scoped` renders this filter), so
                // the same entry: `setup` filled it.
                assert!(hit(&mut env, &backend).await);
                assert!(!titled_hit(&mut env, &backend).await);
                assert!(titled_hit(&mut env, &backend).await);
                // An unwatched column of a sci-fi row: the scope list stays, the coarse one goes.
                diesel::update(posts::table.find(env.b.id))
                    .set(posts::title.eq("B2"))
                    .execute(&mut env.conn)
                    .unwrap();
                delivered(&env).await;
                assert!(
                    hit(&mut env, &backend).await,
                    "scope list dropped by another list's row"
                );
                assert!(!titled_hit(&mut env, &backend).await, "coarse list kept");
                // A scope filter with one more conjunct on an unwatched column: coarse, since
                // a title change (which reaches no condition) moves A into it.
                async fn titled_fantasy_hit(env: &mut Env<Conn>, backend: &Faulty) -> bool {
                    let before = backend.hits();
                    let query = || {
                        posts::table
                            .filter(posts::category.eq("fantasy"))
                            .filter(posts::title.eq("Z"))
                            .order(posts::id)
                    };
                    let list = query()
                        .cached(&env.cache)
                        .derived::<Post>()
                        .load::<Post, _>(&mut env.conn)
                        .await
                        .unwrap();
                    assert_eq!(
                        list,
                        query().load::<Post>(&mut env.conn).unwrap(),
                        "a title filter beside a scope"
                    );
                    backend.hits() > before
                }
                assert!(!titled_fantasy_hit(&mut env, &backend).await);
                assert!(titled_fantasy_hit(&mut env, &backend).await);
                diesel::update(posts::table.find(env.a.id))
                    .set(posts::title.eq("Z"))
                    .execute(&mut env.conn)
                    .unwrap();
                delivered(&env).await;
                assert!(!titled_fantasy_hit(&mut env, &backend).await);
                // A row moving into the scope, by raw SQL: dropped, fresh after.
                diesel::sql_query(format!(
                    "UPDATE posts SET category = 'fantasy' WHERE id = {}",
                    env.b.id
                ))
                .execute(&mut env.conn)
                .unwrap();
                delivered(&env).await;
                assert!(!hit(&mut env, &backend).await, "a row entering the scope");
                assert_eq!(fantasy().load::<Post>(&mut env.conn).unwrap().len(), 2);
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn migration_sql_route() {
                let mut env = setup("d_migration").await;
                let sql = matroska::diesel::outbox::migration_sql::<Backend>(
                    &Outbox::default(),
                    &[Post::watched_table()],
                )
                .unwrap();
                env.conn.batch_execute(&sql.down).unwrap();
                // Without the triggers the write goes unrecorded.
                insert(&mut env.conn, "C", "fantasy");
                env.expect(&[], ALL).await;
                // Re-installed: the whole-table row of `up.sql` invalidates every list of the
                // table (the probes on a bare primary key are not reached: their key is not
                // in the row; cached `find`s also depend on the entity's `all`).
                env.conn.batch_execute(&sql.up).unwrap();
                env.expect(&[FANTASY, SCI_FI], &[ROW_A, ROW_B]).await;
                env.fill_probes().await;
                insert(&mut env.conn, "D", "fantasy");
                env.expect(&[FANTASY], &[SCI_FI, ROW_A, ROW_B]).await;
            }

            /// What the cached queries of the blocking tests answer: every blocking form once.
            type Answers = (
                Vec<Post>,
                Vec<Post>,
                Option<Post>,
                Option<Post>,
                Vec<String>,
                Option<Option<i32>>,
                i64,
                Option<Post>,
            );

            /// The fantasy list through `load_blocking`, as `list` reads it with `load`.
            fn list_blocking(cache: &Cache, conn: &mut Conn) -> Vec<Post> {
                posts::table
                    .order(posts::id)
                    .cached(cache)
                    .scoped(&published_in("fantasy"))
                    .load_blocking::<Post, _>(conn)
                    .unwrap()
            }

            /// Every blocking form, from sync code.
            fn read_blocking(cache: &Cache, conn: &mut Conn, id: i32) -> Answers {
                (
                    list_blocking(cache, conn),
                    posts::table
                        .order(posts::id)
                        .cached(cache)
                        .scoped(&published_in("sci-fi"))
                        .get_results_blocking::<Post, _>(conn)
                        .unwrap(),
                    posts::table
                        .filter(posts::id.eq(id))
                        .cached(cache)
                        .get_result_blocking::<Post, _>(conn)
                        .unwrap(),
                    posts::table
                        .order(posts::id)
                        .cached(cache)
                        .first_blocking::<Post, _>(conn)
                        .unwrap(),
                    posts::table
                        .select(posts::title)
                        .order(posts::id)
                        .cached(cache)
                        .values_blocking::<Post, String, _>(conn)
                        .unwrap(),
                    posts::table
                        .select(diesel::dsl::max(posts::id))
                        .cached(cache)
                        .value_blocking::<Post, Option<i32>, _>(conn)
                        .unwrap(),
                    // A borrowed bind (`&id`), as sync code writes its filters.
                    posts::table
                        .filter(posts::id.ne(&id))
                        .cached(cache)
                        .count_blocking::<Post, _>(conn)
                        .unwrap(),
                    matroska::diesel::find_blocking::<Post, _, _, _>(cache, conn, posts::table, id)
                        .unwrap(),
                )
            }

            /// What the database holds for the same queries.
            fn read_db(conn: &mut Conn, id: i32) -> Answers {
                let by_id = posts::table
                    .filter(posts::id.eq(id))
                    .first::<Post>(conn)
                    .optional()
                    .unwrap();
                (
                    posts::table
                        .filter(published_in("fantasy").filter())
                        .order(posts::id)
                        .load(conn)
                        .unwrap(),
                    posts::table
                        .filter(published_in("sci-fi").filter())
                        .order(posts::id)
                        .load(conn)
                        .unwrap(),
                    by_id.clone(),
                    posts::table
                        .order(posts::id)
                        .first(conn)
                        .optional()
                        .unwrap(),
                    posts::table
                        .select(posts::title)
                        .order(posts::id)
                        .load(conn)
                        .unwrap(),
                    Some(
                        posts::table
                            .select(diesel::dsl::max(posts::id))
                            .get_result(conn)
                            .unwrap(),
                    ),
                    posts::table
                        .filter(posts::id.ne(id))
                        .count()
                        .get_result(conn)
                        .unwrap(),
                    by_id,
                )
            }

            /// A sync app: a plain thread with no runtime (the relay runs on a runtime of its
            /// own, as a sync app would start one at boot), the in-memory backend. The blocking
            /// forms fill, hit, and after a Diesel write and the relay's delivery
            /// (`wait_delivered_blocking`), answer what the database holds.
            #[test]
            fn blocking_forms_on_a_plain_thread() {
                let relay_runtime = tokio::runtime::Runtime::new().unwrap();
                let mut env =
                    relay_runtime.block_on(setup_with("d_blocking_plain", support::memory_cache()));
                let a = env.a.id;
                std::thread::scope(|scope| {
                    scope
                        .spawn(|| {
                            assert!(tokio::runtime::Handle::try_current().is_err());
                            let Env {
                                conn, cache, relay, ..
                            } = &mut env;
                            let fresh = read_db(conn, a);
                            assert_eq!(read_blocking(cache, conn, a), fresh, "filled");
                            assert_eq!(read_blocking(cache, conn, a), fresh, "hit");
                            diesel::update(posts::table.find(a))
                                .set(posts::title.eq("A2"))
                                .execute(conn)
                                .unwrap();
                            insert(conn, "C", "fantasy");
                            relay
                                .wait_delivered_blocking(Duration::from_secs(20))
                                .unwrap();
                            let fresh = read_db(conn, a);
                            assert_eq!(fresh.0.len(), 2);
                            assert_eq!(read_blocking(cache, conn, a), fresh, "after the write");
                        })
                        .join()
                        .unwrap();
                });
                relay_runtime.block_on(async move { drop(env) });
            }

            /// The blocking forms on `spawn_blocking` threads, with the Redis backend made in
            /// this multi-thread runtime: they hit the entries the async forms filled (one
            /// implementation, one key), and answer what the database holds after a write the
            /// relay delivered.
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn blocking_forms_on_a_blocking_thread_with_redis() {
                let backend = Arc::new(Faulty::new(support::redis_backend("d_blocking").await));
                let cache = Cache::builder_arc(backend.clone()).build().unwrap();
                let mut env = setup_with("d_blocking", cache).await;
                let a = env.a.id;
                let on_a_blocking_thread =
                    |env: &Env<Conn>, read: fn(&Cache, &mut Conn, i32) -> Answers| {
                        let (cache, mut conn) = (env.cache.clone(), Conn::open(&env.db));
                        tokio::task::spawn_blocking(move || {
                            (read(&cache, &mut conn, a), read_db(&mut conn, a))
                        })
                    };
                // `setup` filled the fantasy list with `load`: `load_blocking` hits it.
                let before = backend.hits();
                let hit = on_a_blocking_thread(&env, |cache, conn, _| {
                    let list = list_blocking(cache, conn);
                    (list, Vec::new(), None, None, Vec::new(), None, 0, None)
                })
                .await
                .unwrap();
                assert_eq!(hit.0.0, hit.1.0);
                assert_eq!(backend.hits(), before + 1, "the async form's entry");
                for round in ["filled", "hit"] {
                    let (cached, fresh) = on_a_blocking_thread(&env, read_blocking).await.unwrap();
                    assert_eq!(cached, fresh, "{round}");
                }
                diesel::update(posts::table.find(a))
                    .set(posts::title.eq("A2"))
                    .execute(&mut env.conn)
                    .unwrap();
                insert(&mut env.conn, "C", "fantasy");
                delivered(&env).await;
                let (cached, fresh) = on_a_blocking_thread(&env, read_blocking).await.unwrap();
                assert_eq!(fresh.0.len(), 2);
                assert_eq!(cached, fresh, "after the write");
            }

            /// An r2d2 pool of connections to `db`, set up as `Conn::open` sets one up, that
            /// counts its checkouts.
            fn r2d2_pool(
                db: &ScratchDb,
                checkouts: &Checkouts,
            ) -> CachePool<ConnectionManager<Conn>> {
                let (url, session) = pool_settings(db);
                let pool = diesel::r2d2::Pool::builder()
                    .max_size(2)
                    .connection_customizer(Box::new(Session(session)))
                    .event_handler(Box::new(checkouts.clone()))
                    .build(ConnectionManager::<Conn>::new(url))
                    .unwrap();
                CachePool::new(pool)
            }

            /// Every pooled form.
            fn read_pooled(
                cache: &Cache,
                pool: &CachePool<ConnectionManager<Conn>>,
                id: i32,
            ) -> Answers {
                (
                    posts::table
                        .order(posts::id)
                        .cached(cache)
                        .scoped(&published_in("fantasy"))
                        .load_pooled::<Post, _>(pool)
                        .unwrap(),
                    posts::table
                        .order(posts::id)
                        .cached(cache)
                        .scoped(&published_in("sci-fi"))
                        .get_results_pooled::<Post, _>(pool)
                        .unwrap(),
                    posts::table
                        .filter(posts::id.eq(id))
                        .cached(cache)
                        .get_result_pooled::<Post, _>(pool)
                        .unwrap(),
                    posts::table
                        .order(posts::id)
                        .cached(cache)
                        .first_pooled::<Post, _>(pool)
                        .unwrap(),
                    posts::table
                        .select(posts::title)
                        .order(posts::id)
                        .cached(cache)
                        .values_pooled::<Post, String, _>(pool)
                        .unwrap(),
                    posts::table
                        .select(diesel::dsl::max(posts::id))
                        .cached(cache)
                        .value_pooled::<Post, Option<i32>, _>(pool)
                        .unwrap(),
                    posts::table
                        .filter(posts::id.ne(&id))
                        .cached(cache)
                        .count_pooled::<Post, _>(pool)
                        .unwrap(),
                    matroska::diesel::find_pooled::<Post, _, _, _>(cache, pool, posts::table, id)
                        .unwrap(),
                )
            }

            /// The pooled forms from sync code (Redis made in a runtime of its own, the relay
            /// on it): misses check out a connection, hits none; after a write the relay
            /// delivered they answer what the database holds.
            #[test]
            fn pooled_forms_hit_without_a_checkout() {
                let runtime = tokio::runtime::Runtime::new().unwrap();
                let mut env = runtime.block_on(setup("d_pooled"));
                let a = env.a.id;
                let checkouts = Checkouts::default();
                let pool = r2d2_pool(&env.db, &checkouts);
                let fresh = read_db(&mut env.conn, a);
                assert_eq!(read_pooled(&env.cache, &pool, a), fresh, "filled");
                assert!(checkouts.count() > 0, "misses check out");
                assert!(pool.namespace().is_some());
                let before = checkouts.count();
                assert_eq!(read_pooled(&env.cache, &pool, a), fresh, "hit");
                assert_eq!(checkouts.count(), before, "a hit checked out a connection");
                diesel::update(posts::table.find(a))
                    .set(posts::title.eq("A2"))
                    .execute(&mut env.conn)
                    .unwrap();
                insert(&mut env.conn, "C", "fantasy");
                env.relay
                    .wait_delivered_blocking(Duration::from_secs(20))
                    .unwrap();
                let fresh = read_db(&mut env.conn, a);
                assert_eq!(fresh.0.len(), 2);
                assert_eq!(read_pooled(&env.cache, &pool, a), fresh, "after the write");
                drop(pool);
                runtime.block_on(async move { drop(env) });
            }
        }
    };
}

/// Two in-memory SQLite databases behind one cache: each connection's entries are its own,
/// and each still hits (its namespace is remembered in the connection, through an
/// instrumentation of the user's too).
/// `invalidate_now` (read-your-writes before the relay delivers) reaches what a
/// `.derived()` query bounded by a tracked foreign key depends on: the derive's
/// `tracked_dependencies`, equal to the relay's conditions for the row.
#[tokio::test]
async fn invalidate_now_reaches_tracked_conditions() {
    use matroska::{CacheDeps, Dependency, Value};
    let cache = support::memory_cache();
    let comment = Comment {
        id: 1,
        post_id: 7,
        body: "x".into(),
    };
    let on_post = |post: i32| Dependency::condition("comments", [("post_id", Value::from(post))]);
    assert_eq!(comment.tracked_dependencies(), [on_post(7)]);
    cache.put("on-7", &1, &[on_post(7)], None).await.unwrap();
    cache.put("on-8", &1, &[on_post(8)], None).await.unwrap();
    matroska::diesel::invalidate_now(&cache, &[&comment])
        .await
        .unwrap();
    assert!(!cache.has("on-7").await.unwrap());
    assert!(cache.has("on-8").await.unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_memory_sqlite_databases_do_not_share() {
    use diesel::connection::InstrumentationEvent;
    use std::sync::atomic::{AtomicUsize, Ordering};

    let cache = support::memory_cache();
    let queries = Arc::new(AtomicUsize::new(0));
    let mut conns = Vec::new();
    for title in ["one", "two"] {
        let mut conn = SqliteConnection::establish(":memory:").unwrap();
        if title == "two" {
            let queries = Arc::clone(&queries);
            conn.set_instrumentation(matroska::diesel::CacheInstrumentation::wrap(
                move |event: InstrumentationEvent<'_>| {
                    if matches!(event, InstrumentationEvent::StartQuery { .. }) {
                        queries.fetch_add(1, Ordering::Relaxed);
                    }
                },
            ));
        }
        create_tables(&mut conn, support::db::Kind::Sqlite);
        conn.batch_execute(&format!(
            "INSERT INTO posts (title, category, published) VALUES ('{title}', 'fantasy', 1)"
        ))
        .unwrap();
        conns.push(conn);
    }
    let before = queries.load(Ordering::Relaxed);
    for _ in 0..3 {
        for (conn, title) in conns.iter_mut().zip(["one", "two"]) {
            let list = posts::table
                .order(posts::id)
                .cached(&cache)
                .load::<Post, _>(conn)
                .await
                .unwrap();
            assert_eq!(list.len(), 1);
            assert_eq!(list[0].title, title);
        }
    }
    // The namespace and the list, then the namespace again (the list ran since it was asked),
    // then nothing; the user's instrumentation saw all three.
    assert_eq!(queries.load(Ordering::Relaxed) - before, 3);
}

/// An instrumentation of the user's that captures nothing (zero-sized, like Diesel's own
/// no-op) is kept: cached queries leave it in place and it keeps seeing every query.
#[tokio::test]
async fn a_zero_sized_instrumentation_of_the_users_is_kept() {
    use diesel::connection::InstrumentationEvent;
    use std::sync::atomic::{AtomicUsize, Ordering};
    static SEEN: AtomicUsize = AtomicUsize::new(0);

    let cache = support::memory_cache();
    let mut conn = SqliteConnection::establish(":memory:").unwrap();
    conn.set_instrumentation(|event: InstrumentationEvent<'_>| {
        if matches!(event, InstrumentationEvent::StartQuery { .. }) {
            SEEN.fetch_add(1, Ordering::Relaxed);
        }
    });
    create_tables(&mut conn, support::db::Kind::Sqlite);
    for _ in 0..2 {
        let list = posts::table
            .order(posts::id)
            .cached(&cache)
            .load::<Post, _>(&mut conn)
            .await
            .unwrap();
        assert!(list.is_empty());
    }
    let before = SEEN.load(Ordering::Relaxed);
    conn.batch_execute("SELECT 1").unwrap();
    assert_eq!(
        SEEN.load(Ordering::Relaxed),
        before + 1,
        "the user's instrumentation was replaced"
    );
}

/// A sync Diesel pool in an async app (deadpool-diesel on MariaDB), both ways to use a pooled
/// connection: `interact` (the closure runs on a blocking thread: the blocking form) and
/// `lock` (the `&mut` connection on the task; the query runs in `block_in_place`).
/// Both share entries (same database, same namespace) and follow writes through the relay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deadpool_diesel_on_mariadb() {
    let mut env = mysql::setup("d_deadpool").await;
    let manager =
        deadpool_diesel::mysql::Manager::new(env.db.url.clone(), deadpool_diesel::Runtime::Tokio1);
    let pool = deadpool_diesel::mysql::Pool::builder(manager)
        .max_size(2)
        .build()
        .unwrap();
    let interact = |pool: deadpool_diesel::mysql::Pool, cache: Cache| async move {
        let pooled = pool.get().await.unwrap();
        pooled
            .interact(move |conn| {
                posts::table
                    .order(posts::id)
                    .cached(&cache)
                    .scoped(&published_in("fantasy"))
                    .load_blocking::<Post, _>(conn)
            })
            .await
            .unwrap()
            .unwrap()
    };
    let lock = |pool: deadpool_diesel::mysql::Pool, cache: Cache| async move {
        let pooled = pool.get().await.unwrap();
        let mut conn = pooled.lock().unwrap();
        posts::table
            .order(posts::id)
            .cached(&cache)
            .scoped(&published_in("fantasy"))
            .load::<Post, _>(&mut *conn)
            .await
            .unwrap()
    };
    for _ in 0..2 {
        assert_eq!(
            interact(pool.clone(), env.cache.clone()).await,
            [env.a.clone()]
        );
        assert_eq!(lock(pool.clone(), env.cache.clone()).await, [env.a.clone()]);
    }
    diesel::insert_into(posts::table)
        .values((
            posts::title.eq("C"),
            posts::category.eq("fantasy"),
            posts::published.eq(true),
        ))
        .execute(&mut env.conn)
        .unwrap();
    env.expect(&[FANTASY], &[SCI_FI, ROW_A, ROW_B]).await;
    assert_eq!(interact(pool.clone(), env.cache.clone()).await.len(), 2);
    assert_eq!(lock(pool.clone(), env.cache.clone()).await.len(), 2);
}

/// An in-memory SQLite database with two posts, for the blocking tests that need no relay.
fn sqlite_posts() -> diesel::SqliteConnection {
    let mut conn = diesel::SqliteConnection::establish(":memory:").unwrap();
    create_tables(&mut conn, support::db::Kind::Sqlite);
    conn.batch_execute(
        "INSERT INTO posts (title, category, published) VALUES ('A', 'fantasy', 1), ('B', 'sci-fi', 1)",
    )
    .unwrap();
    conn
}

fn titles_blocking(
    cache: &Cache,
    conn: &mut diesel::SqliteConnection,
) -> matroska::diesel::Result<Vec<Post>> {
    posts::table
        .order(posts::id)
        .cached(cache)
        .load_blocking::<Post, _>(conn)
}

/// A blocking form called from async code — sync code called straight from an async handler:
/// `Runtime::block_on`'s future on a current-thread runtime (actix-web's kind), a task of a
/// multi-thread one — blocks its thread and works: not Tokio's "Cannot start a runtime from
/// within a runtime" panic, and no deadlock on a current-thread runtime's own timer (a fill
/// polling another process's lease sleeps on the process-wide runtime's).
#[test]
fn a_blocking_form_in_async_code_works() {
    let current = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let cache = support::memory_cache();
    let in_block_on = current.block_on(async {
        let mut conn = sqlite_posts();
        titles_blocking(&cache, &mut conn)
    });
    assert_eq!(in_block_on.unwrap().len(), 2);
    // Leases always held elsewhere: every miss polls on a timer until the lease would expire.
    let backend = Arc::new(Faulty::new(
        matroska::backend::memory::MemoryBackend::default(),
    ));
    backend.hold_leases_elsewhere(true);
    let leased = Cache::builder_arc(backend.clone())
        .fill_lease(Duration::from_millis(100))
        .build()
        .unwrap();
    let polled = current.block_on(async {
        let mut conn = sqlite_posts();
        titles_blocking(&leased, &mut conn)
    });
    assert_eq!(polled.unwrap().len(), 2);
    let multi = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let in_task = multi
        .block_on(multi.spawn(async move {
            let mut conn = sqlite_posts();
            titles_blocking(&cache, &mut conn)
        }))
        .unwrap();
    assert_eq!(in_task.unwrap().len(), 2);
}

/// A fill that waits for another process's fill lease polls on Tokio's timer; from a plain
/// thread with no runtime, a bare executor would panic there ("no reactor running"). Leases
/// held elsewhere (always) make every miss poll until the lease would expire, then load.
#[test]
fn a_blocking_fill_polling_a_lease_on_a_plain_thread() {
    let backend = Arc::new(Faulty::new(
        matroska::backend::memory::MemoryBackend::default(),
    ));
    backend.hold_leases_elsewhere(true);
    let cache = Cache::builder_arc(backend.clone())
        .fill_lease(Duration::from_millis(100))
        .build()
        .unwrap();
    let loaded = std::thread::spawn(move || {
        assert!(tokio::runtime::Handle::try_current().is_err());
        let mut conn = sqlite_posts();
        let first = titles_blocking(&cache, &mut conn).unwrap();
        (first, backend.lease_asks())
    })
    .join()
    .unwrap();
    assert_eq!(loaded.0.len(), 2);
    assert!(loaded.1 > 0, "the fill asked for the lease");
}

/// A Redis backend made on a current-thread runtime that another thread drives (inside its
/// `Runtime::block_on`): blocking forms from a plain thread fill and hit through it (its
/// connection task runs there; the cache's timers on matroska's own runtime). Once nothing
/// drives that runtime, its connection stops answering: the reads end at the backend's
/// time-out and degrade to the database (right answers, no error, no hang).
#[test]
fn redis_made_on_a_current_thread_runtime_driven_elsewhere() {
    let (made, cache) = std::sync::mpsc::channel();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let driver = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let backend = support::redis_backend_with(
                matroska::backend::redis::RedisConfig::new(
                    support::redis_url(),
                    support::unique("d_blocking_ct"),
                )
                .timeout(Duration::from_millis(300)),
            )
            .await;
            let backend = Arc::new(Faulty::new(backend));
            let cache = Cache::builder_arc(backend.clone()).build().unwrap();
            made.send((cache, backend)).unwrap();
            let _ = stopped.await;
        });
        runtime
    });
    let (cache, backend) = cache.recv().unwrap();
    let mut conn = sqlite_posts();
    assert_eq!(titles_blocking(&cache, &mut conn).unwrap().len(), 2);
    let before = backend.hits();
    assert_eq!(titles_blocking(&cache, &mut conn).unwrap().len(), 2);
    assert_eq!(backend.hits(), before + 1, "served by Redis");
    // Nobody drives the backend's runtime any more (it is kept, not dropped).
    stop.send(()).unwrap();
    let _runtime = driver.join().unwrap();
    let before = backend.hits();
    diesel::sql_query("DELETE FROM posts WHERE title = 'B'")
        .execute(&mut conn)
        .unwrap();
    // No relay here: a hit would still list B; a degraded read lists what the database holds.
    assert_eq!(titles_blocking(&cache, &mut conn).unwrap().len(), 1);
    assert_eq!(backend.hits(), before, "Redis did not answer");
}

/// Counts the checkouts of an r2d2 pool.
#[derive(Debug, Default, Clone)]
struct Checkouts(Arc<std::sync::atomic::AtomicUsize>);

impl Checkouts {
    fn count(&self) -> usize {
        self.0.load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl diesel::r2d2::HandleEvent for Checkouts {
    fn handle_checkout(&self, _: diesel::r2d2::event::CheckoutEvent) {
        self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }
}

/// Runs its statements on every connection an r2d2 pool opens.
#[derive(Debug)]
struct Session(String);

impl<C: SimpleConnection> diesel::r2d2::CustomizeConnection<C, diesel::r2d2::Error> for Session {
    fn on_acquire(&self, conn: &mut C) -> Result<(), diesel::r2d2::Error> {
        conn.batch_execute(&self.0)
            .map_err(diesel::r2d2::Error::QueryError)
    }
}

/// The URL an r2d2 `ConnectionManager` opens `db` with, and what each new connection runs
/// (as `DieselConn::open` does).
fn pool_settings(db: &ScratchDb) -> (String, String) {
    match db.kind {
        support::db::Kind::Sqlite => {
            let path = db.url.trim_start_matches("sqlite://");
            let path = path.split_once('?').map_or(path, |(path, _)| path);
            (path.to_owned(), "PRAGMA busy_timeout = 10000".to_owned())
        }
        support::db::Kind::Postgres => {
            let schema = db.schema.as_deref().unwrap();
            (db.url.clone(), format!("SET search_path TO \"{schema}\""))
        }
        support::db::Kind::MySql => (db.url.clone(), "SET @matroska_test = 1".to_owned()),
    }
}

/// A pooled connection switched to another tenant's schema (`SET search_path`, then given
/// back to the pool) is caught on a miss: its own namespace is not the pool's, so the query
/// reads through (that connection's rows) and nothing is stored under the pool's key. Without
/// the check, tenant b's rows would be stored under tenant a's key and served to a's requests.
#[test]
fn a_pooled_connection_switched_to_another_schema_reads_through() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (cache, dbs) = runtime.block_on(async {
        (
            support::redis_cache("d_pooled_search_path").await,
            tenants(support::db::Kind::Postgres, "d_pooled_search_path").await,
        )
    });
    let schema = |i: usize| dbs[i].0.schema.clone().unwrap();
    let (a, b) = (schema(0), schema(1));
    // One connection, so the switched one is the one the next miss gets.
    let pool = CachePool::new(
        diesel::r2d2::Pool::builder()
            .max_size(1)
            .connection_customizer(Box::new(Session(format!("SET search_path TO \"{a}\""))))
            .build(ConnectionManager::<PgConnection>::new(
                support::db::postgres_url(),
            ))
            .unwrap(),
    );
    let newest_first = || {
        posts::table
            .order(posts::id.desc())
            .cached(&cache)
            .load_pooled::<Post, _>(&pool)
            .unwrap()
            .into_iter()
            .map(|post| post.title)
            .collect::<Vec<_>>()
    };
    let oldest_first = || {
        posts::table
            .order(posts::id)
            .cached(&cache)
            .load_pooled::<Post, _>(&pool)
            .unwrap()
            .into_iter()
            .map(|post| post.title)
            .collect::<Vec<_>>()
    };
    // The pool's namespace: tenant a's (its first miss).
    assert_eq!(oldest_first(), ["tenant a"]);
    pool.get()
        .unwrap()
        .batch_execute(&format!("SET search_path TO \"{b}\""))
        .unwrap();
    // A miss on the switched connection: its own rows, not stored.
    assert_eq!(newest_first(), ["tenant b"]);
    // A hit needs no connection: tenant a's entry, whatever the idle connection reads.
    assert_eq!(oldest_first(), ["tenant a"]);
    pool.get()
        .unwrap()
        .batch_execute(&format!("SET search_path TO \"{a}\""))
        .unwrap();
    assert_eq!(
        newest_first(),
        ["tenant a"],
        "tenant b's rows under a's key"
    );
    runtime.block_on(async move { drop(dbs) });
}

/// The titles of the cached list of posts on `conn`.
async fn cached_titles<C>(cache: &Cache, conn: &mut C) -> Vec<String>
where
    C: diesel::connection::LoadConnection,
    C::Backend: matroska::diesel::NamespaceBackend + Default,
    <C::Backend as diesel::backend::Backend>::QueryBuilder: Default,
    posts::table: diesel::query_dsl::methods::OrderDsl<posts::id>,
    diesel::dsl::Order<posts::table, posts::id>: RunQueryDsl<C>
        + diesel::query_dsl::LoadQuery<'static, C, Post>
        + diesel::query_builder::QueryFragment<C::Backend>,
{
    posts::table
        .order(posts::id)
        .cached(cache)
        .load::<Post, _>(conn)
        .await
        .unwrap()
        .into_iter()
        .map(|post| post.title)
        .collect()
}

/// A schema-per-tenant app on one connection: each request switches the connection's
/// `search_path` (every way a session can: `SET`, `set_config` in a `SELECT`, a PL/pgSQL
/// function calling it, a `SET` at the end of a batch) and reads its tenant's rows, from a
/// deadpool-diesel pool of one connection and from a plain connection reused. The namespace is
/// remembered in the connection only until it runs another statement: without that, the
/// second tenant is served the first one's entry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_switching_search_path_reads_each_tenants_rows() {
    let cache = support::redis_cache("d_search_path").await;
    let dbs = tenants(support::db::Kind::Postgres, "d_search_path").await;
    let schema = |i: usize| dbs[i].0.schema.clone().unwrap();
    let (a, b) = (schema(0), schema(1));
    // In tenant a's schema, so it goes with it; called by its qualified name.
    <PgConnection as DieselConn>::open(&dbs[0].0)
        .batch_execute(&format!(
            "CREATE FUNCTION \"{a}\".switch_tenant(s text) RETURNS void LANGUAGE plpgsql \
             AS $$ BEGIN PERFORM set_config('search_path', s, false); END $$"
        ))
        .unwrap();
    let switch = |conn: &mut PgConnection, how: usize, to: &str| match how % 4 {
        0 => conn
            .batch_execute(&format!("SET search_path TO \"{to}\""))
            .unwrap(),
        1 => {
            diesel::sql_query("SELECT set_config('search_path', $1, false)")
                .bind::<diesel::sql_types::Text, _>(format!("\"{to}\""))
                .execute(conn)
                .unwrap();
        }
        2 => {
            diesel::sql_query(format!("SELECT \"{a}\".switch_tenant($1)"))
                .bind::<diesel::sql_types::Text, _>(format!("\"{to}\""))
                .execute(conn)
                .unwrap();
        }
        _ => conn
            .batch_execute(&format!("SELECT 1; SET SESSION search_path TO \"{to}\""))
            .unwrap(),
    };

    let manager = deadpool_diesel::postgres::Manager::new(
        support::db::postgres_url(),
        deadpool_diesel::Runtime::Tokio1,
    );
    let pool = deadpool_diesel::postgres::Pool::builder(manager)
        .max_size(1)
        .build()
        .unwrap();
    let mut plain = PgConnection::establish(&support::db::postgres_url()).unwrap();
    for round in 0..8 {
        for (i, (_, title)) in dbs.iter().enumerate() {
            let to = schema(i);
            let pooled = pool.get().await.unwrap();
            let mut conn = pooled.lock().unwrap();
            switch(&mut conn, round, &to);
            assert_eq!(
                cached_titles(&cache, &mut *conn).await,
                [*title],
                "pooled, round {round}"
            );
            switch(&mut plain, round + 1, &to);
            assert_eq!(
                cached_titles(&cache, &mut plain).await,
                [*title],
                "plain, round {round}"
            );
        }
    }
    // The reads were hits: a row written behind the cache's back (no outbox here) is not seen,
    // and each tenant still gets its own entry.
    plain
        .batch_execute(&format!(
            "INSERT INTO \"{a}\".posts (title, category, published) VALUES ('late', 'x', true)"
        ))
        .unwrap();
    for (to, title) in [(&b, "tenant b"), (&a, "tenant a")] {
        switch(&mut plain, 0, to);
        assert_eq!(cached_titles(&cache, &mut plain).await, [title]);
    }
}

/// Drops the roles of a test (they are the cluster's, not a schema's).
struct Roles(Vec<String>);

impl Drop for Roles {
    fn drop(&mut self) {
        if let Ok(mut conn) = PgConnection::establish(&support::db::postgres_url()) {
            for role in &self.0 {
                let _ = conn.batch_execute(&format!(
                    "DROP OWNED BY \"{role}\"; DROP ROLE IF EXISTS \"{role}\""
                ));
            }
        }
    }
}

/// `SET ROLE` changes what a connection reads (here through `search_path = "$user"`: each
/// role reads the schema named after it): one connection switching roles between cached
/// reads gets each role's rows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_switching_role_reads_each_roles_rows() {
    let cache = support::redis_cache("d_set_role").await;
    let dbs = tenants(support::db::Kind::Postgres, "d_set_role").await;
    let mut conn = PgConnection::establish(&support::db::postgres_url()).unwrap();
    let mut roles = Roles(Vec::new());
    for (db, _) in &dbs {
        let role = db.schema.clone().unwrap();
        conn.batch_execute(&format!(
            "CREATE ROLE \"{role}\"; GRANT USAGE ON SCHEMA \"{role}\" TO \"{role}\"; \
             GRANT SELECT ON ALL TABLES IN SCHEMA \"{role}\" TO \"{role}\""
        ))
        .unwrap();
        roles.0.push(role);
    }
    conn.batch_execute("SET search_path TO \"$user\"").unwrap();
    for round in 0..3 {
        for (role, (_, title)) in roles.0.iter().zip(&dbs) {
            conn.batch_execute(&format!("SET ROLE \"{role}\"")).unwrap();
            assert_eq!(
                cached_titles(&cache, &mut conn).await,
                [*title],
                "round {round}"
            );
        }
    }
    conn.batch_execute("RESET ROLE").unwrap();
}

/// MariaDB tenants in databases of their own, and connections switching between them with
/// `USE`. MariaDB keeps each prepared statement on the database it was prepared in (and Diesel
/// caches prepared statements), so after a `USE` a connection's own Diesel queries may still
/// read the old database: its cached queries read through from then on (the same rows as
/// plain Diesel), and never fill the other tenant's entries with them. Connections opened on
/// each database keep reading their own rows from the cache; a connection that runs `USE`
/// before it prepared anything reads the new database, and caches.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_switching_database_never_fills_another_tenants_entries() {
    let cache = support::redis_cache("d_use_db").await;
    let dbs = tenants(support::db::Kind::MySql, "d_use_db").await;
    let use_db = |i: usize| format!("USE `{}`", dbs[i].0.url.rsplit_once('/').unwrap().1);
    let mut own: Vec<MysqlConnection> = dbs
        .iter()
        .map(|(db, _)| <MysqlConnection as DieselConn>::open(db))
        .collect();
    // The cached query's own statement, run by Diesel.
    let plain_titles = |conn: &mut MysqlConnection| -> Vec<String> {
        posts::table
            .order(posts::id)
            .load::<Post>(conn)
            .unwrap()
            .into_iter()
            .map(|post| post.title)
            .collect()
    };

    // Switched before preparing anything: it reads tenant b, and caches.
    let mut early = <MysqlConnection as DieselConn>::open(&dbs[0].0);
    early.batch_execute(&use_db(1)).unwrap();
    assert_eq!(cached_titles(&cache, &mut early).await, ["tenant b"]);

    let manager = deadpool_diesel::mysql::Manager::new(
        dbs[0].0.url.clone(),
        deadpool_diesel::Runtime::Tokio1,
    );
    let pool = deadpool_diesel::mysql::Pool::builder(manager)
        .max_size(1)
        .build()
        .unwrap();
    let mut plain = <MysqlConnection as DieselConn>::open(&dbs[0].0);
    for round in 0..3 {
        for i in [0, 1] {
            let pooled = pool.get().await.unwrap();
            let mut conn = pooled.lock().unwrap();
            for conn in [&mut *conn, &mut plain] {
                conn.batch_execute(&use_db(i)).unwrap();
                let cached = cached_titles(&cache, conn).await;
                assert_eq!(cached, plain_titles(conn), "round {round}, tenant {i}");
            }
            for (conn, (_, title)) in own.iter_mut().zip(&dbs) {
                assert_eq!(
                    cached_titles(&cache, conn).await,
                    [*title],
                    "round {round}, after switching to tenant {i}"
                );
            }
        }
    }
    // The tenants' own connections were served from the cache (no outbox here: a row written
    // behind its back is not seen).
    own[1]
        .batch_execute("INSERT INTO posts (title, category, published) VALUES ('late', 'x', 1)")
        .unwrap();
    assert_eq!(cached_titles(&cache, &mut own[1]).await, ["tenant b"]);
}

/// The tables of the scratch database (SQLite's own `sqlite_*` ones aside: Diesel skips them).
async fn table_names(db: &ScratchDb) -> BTreeSet<String> {
    use sea_orm::{ConnectionTrait, Statement};
    let sql = match db.kind {
        support::db::Kind::Sqlite => {
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
                .to_owned()
        }
        support::db::Kind::Postgres => format!(
            "SELECT table_name::text FROM information_schema.tables WHERE table_schema = '{}'",
            db.schema.as_deref().unwrap()
        ),
        support::db::Kind::MySql => {
            "SELECT CAST(table_name AS CHAR) FROM information_schema.tables \
                                     WHERE table_schema = DATABASE()"
                .to_owned()
        }
    };
    db.conn
        .query_all_raw(Statement::from_string(db.backend(), sql))
        .await
        .unwrap()
        .iter()
        .map(|row| row.try_get_by_index::<String>(0).unwrap())
        .collect()
}

/// The table names of `diesel.toml`'s `filter = { except_tables = [..] }` in the Diesel crate
/// docs, checked to be the README's too.
fn documented_except_tables() -> BTreeSet<String> {
    let line = |text: &'static str| -> String {
        let found: Vec<&str> = text
            .lines()
            .map(|l| l.trim_start_matches("//!").trim())
            .filter(|l| l.starts_with("filter = { except_tables = ["))
            .collect();
        assert_eq!(
            found.len(),
            1,
            "one `filter = {{ except_tables = [..] }}` line"
        );
        found[0].to_owned()
    };
    let docs = line(include_str!("../matroska-diesel/src/lib.rs"));
    assert_eq!(
        docs,
        line(include_str!("../README.md")),
        "README and crate docs differ"
    );
    docs.split('"')
        .skip(1)
        .step_by(2)
        .map(|regex| {
            // Anchored exact names: diesel_cli matches its regexes anywhere in a name
            // (`Regex::is_match` in diesel_cli's `Filtering::should_ignore_table`).
            let name = regex.strip_prefix('^').and_then(|r| r.strip_suffix('$'));
            name.unwrap_or_else(|| panic!("not an anchored name: {regex}"))
                .to_owned()
        })
        .collect()
}

diesel_tests!(sqlite, diesel::SqliteConnection);
diesel_tests!(postgres, diesel::PgConnection);
diesel_tests!(mysql, diesel::MysqlConnection);
