//! MariaDB/MySQL writes that fire no trigger — foreign-key actions on a watched child table,
//! `TRUNCATE` of a watched table — still reach the cache through the outbox: a cached row, a
//! scoped list and a scoped count of the child stay fresh, with no cache registered for the
//! hooks (the writes are raw SQL, as another service's).
//!
//! Each test has its own scratch database (`ScratchDb::mysql`), so the table names are its own.
#![cfg(feature = "seaorm")]
#![allow(clippy::unwrap_used)]

mod support;

use std::time::{Duration, Instant};

use matroska::seaorm::{CachedExt, outbox, query};
use matroska::{Cache, ColumnDecoder, Dependency, TableSpec, WatchedTable};
use sea_orm::{ConnectionTrait, EntityTrait, QueryFilter, QueryOrder};

use support::db::ScratchDb;

mod parent {
    use sea_orm::entity::prelude::*;
    use serde::{Deserialize, Serialize};

    #[derive(
        Clone, Debug, PartialEq, Eq, DeriveEntityModel, Serialize, Deserialize, matroska::CacheDeps,
    )]
    #[sea_orm(table_name = "parent")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: i32,
        pub name: String,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    matroska::seaorm::active_model_behavior!(ActiveModel);
}

mod child {
    use sea_orm::entity::prelude::*;
    use serde::{Deserialize, Serialize};

    /// Generates `ByParentId`.
    #[derive(
        Clone, Debug, PartialEq, Eq, DeriveEntityModel, Serialize, Deserialize, matroska::CacheDeps,
    )]
    #[sea_orm(table_name = "child")]
    #[scope(parent_id)]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: i32,
        pub parent_id: Option<i32>,
        pub label: String,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    matroska::seaorm::active_model_behavior!(ActiveModel);
}

/// The child rows and parents the probes read.
const CHILDREN: [i32; 3] = [10, 11, 20];
const PARENTS: [Option<i32>; 4] = [Some(1), Some(2), Some(5), None];

/// What the probes see: each child row, and per parent the list and the count of its
/// children.
#[derive(Debug, PartialEq)]
struct View {
    rows: Vec<Option<child::Model>>,
    lists: Vec<Vec<child::Model>>,
    counts: Vec<u64>,
}

struct Env {
    db: ScratchDb,
    cache: Cache,
    relay: Option<outbox::RelayHandle>,
}

impl Env {
    /// A scratch database with `parent` (ids 1, 2) and `child` (10 and 11 of parent 1, 20 of
    /// parent 2) joined by a foreign key with `actions`, both watched (installed twice:
    /// idempotent), and a relay running.
    async fn new(name: &str, actions: &str) -> Env {
        let db = ScratchDb::mysql(name).await;
        for sql in [
            "CREATE TABLE parent (id INT PRIMARY KEY, name VARCHAR(50) NOT NULL) ENGINE=InnoDB"
                .to_owned(),
            format!(
                "CREATE TABLE child (id INT PRIMARY KEY, parent_id INT NULL, \
                 label VARCHAR(50) NOT NULL, CONSTRAINT child_parent FOREIGN KEY (parent_id) \
                 REFERENCES parent (id) {actions}) ENGINE=InnoDB"
            ),
            "INSERT INTO parent VALUES (1, 'one'), (2, 'two')".to_owned(),
            "INSERT INTO child VALUES (10, 1, 'a'), (11, 1, 'b'), (20, 2, 'c')".to_owned(),
        ] {
            db.conn.execute_unprepared(&sql).await.unwrap();
        }
        let specs = [
            parent::Model::watched_table(),
            child::Model::watched_table(),
        ];
        outbox::install(&db.conn, &specs).await.unwrap();
        let triggers = fk_triggers(&db).await;
        outbox::install(&db.conn, &specs).await.unwrap();
        assert_eq!(
            fk_triggers(&db).await,
            triggers,
            "a second install keeps the same foreign-key triggers (no duplicates)"
        );
        let cache = support::redis_cache(name).await;
        let mut env = Env {
            db,
            cache,
            relay: None,
        };
        env.start_relay().await;
        env
    }

    /// Starts a relay with `start`: its consumer is registered (and a new consumer's cache
    /// flushed) before it returns, so entries cached afterwards stay until a change drops them.
    async fn start_relay(&mut self) {
        self.relay = Some(
            outbox::relay(&self.db.conn, self.cache.clone())
                .unwrap()
                .watch_type::<parent::Model>()
                .watch_type::<child::Model>()
                .build()
                .start()
                .await
                .unwrap(),
        );
    }

    async fn stop_relay(&mut self) {
        self.relay.take().unwrap().shutdown().await;
    }

    async fn sql(&self, sql: &str) {
        self.db.conn.execute_unprepared(sql).await.unwrap();
    }

    /// The probes through the cache (filling it on a miss).
    async fn cached(&self) -> View {
        let (c, db) = (&self.cache, &self.db.conn);
        let mut view = View {
            rows: Vec::new(),
            lists: Vec::new(),
            counts: Vec::new(),
        };
        for id in CHILDREN {
            view.rows.push(
                query::find_by_id::<child::Entity, _>(c, db, id)
                    .await
                    .unwrap(),
            );
        }
        for parent_id in PARENTS {
            let of = child::ByParentId { parent_id };
            let list = child::Entity::find().order_by_asc(child::Column::Id);
            view.lists
                .push(list.cached(c).scoped(&of).all(db).await.unwrap());
            let count = child::Entity::find().cached(c).scoped(&of).count(db);
            view.counts.push(count.await.unwrap());
        }
        view
    }

    /// The probes straight from the database.
    async fn fresh(&self) -> View {
        let db = &self.db.conn;
        let mut view = View {
            rows: Vec::new(),
            lists: Vec::new(),
            counts: Vec::new(),
        };
        for id in CHILDREN {
            view.rows
                .push(child::Entity::find_by_id(id).one(db).await.unwrap());
        }
        for parent_id in PARENTS {
            let of = child::ByParentId { parent_id };
            let list = child::Entity::find().filter(of.filter());
            let list = list.order_by_asc(child::Column::Id).all(db).await.unwrap();
            view.counts.push(list.len() as u64);
            view.lists.push(list);
        }
        view
    }

    /// Caches every probe and checks they are cached.
    async fn fill(&self) {
        assert_eq!(self.cached().await, self.fresh().await);
        for id in CHILDREN {
            let key = query::find_by_id_key::<child::Entity, _>(&self.db.conn, id)
                .await
                .unwrap()
                .unwrap();
            assert!(self.cache.has(&key).await.unwrap(), "row {id} is cached");
        }
    }

    /// Waits (bounded) until every probe read through the cache equals the database.
    async fn assert_fresh(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let (cached, fresh) = (self.cached().await, self.fresh().await);
            if cached == fresh {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "stale reads served:\n cached {cached:?}\n     db {fresh:?}\n relay {:?}",
                self.relay.as_ref().map(|r| r.relay().stats())
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        if let Some(relay) = &self.relay {
            support::relay::wait_idle(relay).await;
            assert!(relay.relay().dead_letters().await.unwrap().is_empty());
        }
    }
}

/// The foreign-key triggers of the default outbox in the test's database.
async fn fk_triggers(db: &ScratchDb) -> Vec<String> {
    let rows = db
        .conn
        .query_all_raw(sea_orm::Statement::from_string(
            db.backend(),
            "SELECT TRIGGER_NAME FROM information_schema.TRIGGERS \
             WHERE TRIGGER_SCHEMA = DATABASE() AND TRIGGER_NAME LIKE 'matroska\\_outbox\\_fk\\_%' \
             ORDER BY TRIGGER_NAME",
        ))
        .await
        .unwrap();
    rows.iter()
        .map(|r| r.try_get_by_index::<String>(0).unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_delete_cascade() {
    let env = Env::new("fk_delete_cascade", "ON DELETE CASCADE ON UPDATE CASCADE").await;
    env.fill().await;
    env.sql("DELETE FROM parent WHERE id = 1").await;
    env.assert_fresh().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_update_cascade() {
    let env = Env::new("fk_update_cascade", "ON DELETE CASCADE ON UPDATE CASCADE").await;
    env.fill().await;
    // Children 10 and 11 move from parent 1's list to parent 5's.
    env.sql("UPDATE parent SET id = 5 WHERE id = 1").await;
    env.assert_fresh().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_delete_set_null() {
    let env = Env::new("fk_delete_set_null", "ON DELETE SET NULL").await;
    env.fill().await;
    // Children 10 and 11 move from parent 1's list to the list of children without one.
    env.sql("DELETE FROM parent WHERE id = 1").await;
    env.assert_fresh().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_update_set_null() {
    let env = Env::new("fk_update_set_null", "ON UPDATE SET NULL").await;
    env.fill().await;
    env.sql("UPDATE parent SET id = 5 WHERE id = 1").await;
    env.assert_fresh().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncate() {
    let env = Env::new("fk_truncate", "ON DELETE CASCADE").await;
    env.fill().await;
    env.sql("TRUNCATE TABLE child").await;
    env.assert_fresh().await;
}

/// A `TRUNCATE` while no relay runs is found by the next relay to start, even after the
/// install that a restart runs first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncate_while_no_relay_runs() {
    let mut env = Env::new("fk_truncate_stopped", "ON DELETE CASCADE").await;
    env.fill().await;
    env.stop_relay().await;
    env.sql("TRUNCATE TABLE child").await;
    assert_ne!(
        env.cached().await,
        env.fresh().await,
        "nothing but a relay invalidates"
    );
    outbox::install(&env.db.conn, &[child::Model::watched_table()])
        .await
        .unwrap();
    env.start_relay().await;
    env.assert_fresh().await;
}

/// A chain of actions: deleting a parent deletes its (unwatched) children, whose deletion
/// deletes their watched children. Recorded coarsely: the whole entity.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cascade_chain_reaches_grandchildren() {
    let env = Env::new("fk_chain", "ON DELETE CASCADE").await;
    for sql in [
        "CREATE TABLE link (id INT PRIMARY KEY, child_id INT NOT NULL, FOREIGN KEY (child_id) \
         REFERENCES child (id) ON DELETE CASCADE) ENGINE=InnoDB",
        "CREATE TABLE leaf (id INT PRIMARY KEY, link_id INT NOT NULL, FOREIGN KEY (link_id) \
         REFERENCES link (id) ON DELETE CASCADE) ENGINE=InnoDB",
        "INSERT INTO link VALUES (100, 10), (200, 20)",
        "INSERT INTO leaf VALUES (1000, 100), (2000, 200)",
    ] {
        env.sql(sql).await;
    }
    let leaf = TableSpec::new("leaf", "leaf").key("id", ColumnDecoder::of::<i32>());
    outbox::install(&env.db.conn, &[leaf]).await.unwrap();
    let list = [Dependency::invalidate_all("leaf")];
    env.cache.put("leaf-list", &2, &list, None).await.unwrap();
    env.sql("DELETE FROM parent WHERE id = 1").await;
    let relay = env.relay.as_ref().unwrap();
    support::relay::expect(&env.cache, relay, &["leaf-list"], &[]).await;
    env.assert_fresh().await;
}

/// Uninstalling the child drops its foreign-key triggers and leaves the parent's own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uninstall_removes_the_foreign_key_triggers() {
    let env = Env::new("fk_uninstall", "ON DELETE CASCADE ON UPDATE CASCADE").await;
    assert_eq!(
        fk_triggers(&env.db).await.len(),
        3,
        "before delete, before and after update"
    );
    outbox::uninstall(&env.db.conn, &["child"]).await.unwrap();
    assert!(fk_triggers(&env.db).await.is_empty());
    let own = env
        .db
        .conn
        .query_one_raw(sea_orm::Statement::from_string(
            env.db.backend(),
            "SELECT COUNT(*) FROM information_schema.TRIGGERS WHERE TRIGGER_SCHEMA = DATABASE() \
             AND EVENT_OBJECT_TABLE = 'parent'",
        ))
        .await
        .unwrap()
        .unwrap()
        .try_get_by_index::<i64>(0)
        .unwrap();
    assert_eq!(own, 3, "the parent's own triggers stay");
}

/// `ON DELETE SET NULL` of a foreign-key column no spec watches: the child rows change no
/// watched column, so the parent's trigger records them as key-only (`K`) rows, which hold
/// the child's tracked column too (as the child's own triggers' `K` rows do): an entry on
/// that column's condition is dropped, and every row is read exactly (no dead letter).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_null_key_only_rows_carry_tracked_columns() {
    let db = ScratchDb::mysql("fk_set_null_tracked").await;
    for sql in [
        "CREATE TABLE parent (id INT PRIMARY KEY) ENGINE=InnoDB",
        "CREATE TABLE child (id INT PRIMARY KEY, parent_id INT NULL, owner INT NOT NULL, \
         CONSTRAINT child_parent FOREIGN KEY (parent_id) REFERENCES parent (id) \
         ON DELETE SET NULL) ENGINE=InnoDB",
        "INSERT INTO parent VALUES (1)",
        "INSERT INTO child VALUES (10, 1, 7)",
    ] {
        db.conn.execute_unprepared(sql).await.unwrap();
    }
    let parent = TableSpec::new("parent", "parent").key("id", ColumnDecoder::of::<i32>());
    let child = TableSpec::new("child", "child")
        .key("id", ColumnDecoder::of::<i32>())
        .tracked("owner", ColumnDecoder::of::<i32>());
    outbox::install(&db.conn, &[parent.clone(), child.clone()])
        .await
        .unwrap();
    let cache = support::memory_cache();
    let relay = outbox::relay(&db.conn, cache.clone())
        .unwrap()
        .watch(parent)
        .watch(child)
        .build();
    relay.drain().await.unwrap();
    let owned = |owner: i32| Dependency::condition("child", [("owner", owner.into())]);
    cache.put("owned-7", &1, &[owned(7)], None).await.unwrap();
    cache.put("owned-8", &1, &[owned(8)], None).await.unwrap();
    db.conn
        .execute_unprepared("DELETE FROM parent WHERE id = 1")
        .await
        .unwrap();
    relay.drain().await.unwrap();
    assert!(!cache.has("owned-7").await.unwrap(), "the SET NULL kept it");
    assert!(cache.has("owned-8").await.unwrap(), "read coarsely");
    assert!(relay.dead_letters().await.unwrap().is_empty());
}
