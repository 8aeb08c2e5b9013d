//! # matroska-outbox
//!
//! **No write escapes the cache.** The database records every change to a watched table in
//! the writing transaction, and a relay delivers it to the cache after the commit, at least
//! once. Whatever wrote the row — a hooked SeaORM save, `update_many`, raw SQL, `psql`, a
//! migration, another service — and whatever happened after the commit — the writer's future
//! dropped, its process killed, Redis down for a while — the cached entries that depend on
//! the row are invalidated.
//!
//! ## How
//!
//! 1. **Triggers + outbox** ([`ddl`]): `AFTER INSERT/UPDATE/DELETE` triggers on each watched
//!    table append the row's primary key and the old and new values of its scope columns to
//!    the `matroska_outbox` table, as part of the writing transaction: a rolled-back write
//!    records nothing, a committed one cannot lose its record. What to record comes from the
//!    entity's [`TableSpec`](matroska_core::TableSpec), which `#[derive(CacheDeps)]` generates
//!    ([`WatchedTable`](matroska_core::WatchedTable)).
//! 2. **Relay** ([`Relay`]): a background task, in any number of processes, claims the outbox
//!    rows its **consumer** (its cache) has not received, turns each into the dependencies a
//!    hooked save would have invalidated (computed from the database's own old values, so
//!    they are always right), invalidates them in bounded calls, and marks them delivered in
//!    the same transaction only after the invalidation succeeded. A row is deleted once every
//!    consumer has it: two services with their own Redis prefixes, a blue/green deploy that
//!    bumps the prefix, two processes on the in-memory backend each receive every change
//!    ([`RelayBuilder::consumer`]). It wakes on PostgreSQL's `NOTIFY` (sent on commit), on
//!    [`poke`] after this process's own commits, and polls as a safety net. For
//!    read-your-writes after a write no hook saw, [`wait_delivered`] (async),
//!    [`wait_delivered_blocking`] (sync code) or [`Relay::wait_delivered`] return once every
//!    row committed before the call is delivered.
//! 3. **Checks**: at start ([`Relay::start`]) and every few seconds the relay compares what
//!    the installed triggers record with the specs it watches; a scope added to a model
//!    without re-running the install is an error in development mode and coarse invalidation
//!    (with a warning) in production ([`RelayBuilder::mode`]).
//!
//! 3. **MySQL/MariaDB**: foreign-key actions (`ON DELETE CASCADE`, `ON UPDATE CASCADE`,
//!    `SET NULL`) and `TRUNCATE` fire no trigger there. [`install`] also puts triggers on the
//!    parent tables of watched tables, which record the child rows an action changes, and
//!    records each watched table's InnoDB table id, which relays compare to find a
//!    `TRUNCATE` (the relay's user needs the `PROCESS` privilege); see
//!    [`RelayBuilder::truncate_check_interval`]. The SQL of [`Outbox::install_sql`] has
//!    neither: they are read from the database's catalogue.
//!
//! The stale-set guard of [`Cache::get_or_load`](matroska_core::Cache::get_or_load) closes the
//! remaining window: a load that read the old row before the commit took its ticket before the
//! relay's invalidation, so its put is refused.
//!
//! ## Usage
//!
//! ```toml
//! [dependencies]
//! matroska-outbox = { version = "0.1", features = ["postgres"] }
//! ```
//!
//! ```
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! use matroska_core::{Cache, ColumnDecoder, Dependency, TableSpec};
//! use matroska_outbox::{Outbox, OutboxDb, Relay, SqlConnection};
//!
//! let db = OutboxDb::connect("sqlite::memory:").await?;
//! db.execute_sql("CREATE TABLE post (id INTEGER PRIMARY KEY, category TEXT NOT NULL)").await?;
//! // `post::Model::watched_table()` when the model derives `CacheDeps`.
//! let post = TableSpec::new("post", "post")
//!     .key("id", ColumnDecoder::of::<i64>())
//!     .scope(&[("category", ColumnDecoder::of::<String>())], false);
//! matroska_outbox::install(&db, &Outbox::default(), &[post.clone()]).await?;
//!
//! let cache = Cache::memory();
//! let fantasy = Dependency::condition("post", [("category", "fantasy".into())]);
//! cache.put("fantasy-posts", &Vec::<i64>::new(), &[fantasy], None).await?;
//!
//! // Any writer: here raw SQL, which no ORM hook sees.
//! db.execute_sql("INSERT INTO post (id, category) VALUES (1, 'fantasy')").await?;
//! let relay = Relay::builder(db, cache.clone()).watch(post).build();
//! relay.drain().await?;
//! assert!(!cache.has("fantasy-posts").await?);
//! # Ok::<_, Box<dyn std::error::Error>>(()) }).unwrap();
//! ```
//!
//! ### Migration SQL from the command line
//!
//! [`Outbox::install_sql`] is the text for a migration file. Without writing Rust, the
//! `matroska-outbox-sql` binary (feature `cli`, no extra dependency) prints it for tables named
//! on its command line:
//!
//! ```sh
//! cargo install matroska-outbox --features cli
//! matroska-outbox-sql --database postgres --table post:id:category,published --table tag:post_id,name > up.sql
//! matroska-outbox-sql --database postgres --table post:id:category,published --table tag:post_id,name --down > down.sql
//! ```
//!
//! `--table NAME:KEY[,KEY..][:COLUMN[,COLUMN..]]` gives a table's primary key (in the key's
//! order) and the columns its models' scopes filter on (`col=bytes` for a binary column);
//! `--outbox` / `--schema` name the outbox as [`Outbox::named`] / [`Outbox::in_schema`];
//! `--delimiter //` for the `mysql` command-line client; `--help` for the rest. A table
//! described with fewer columns than its models need is caught by the relay's start-up check
//! (an error in development mode). [`install`] still does more where it can ask the database
//! (see the note on MySQL above).
//!
//! ## Guarantee
//!
//! Every committed change to a watched table is invalidated in the cache at least once,
//! after its commit, as soon as a relay runs and the cache accepts the invalidation.
//!
//! ## Operations
//!
//! [`Relay::depth`] (rows waiting, age of the oldest), [`Relay::stats`] (rows delivered, dead
//! letters, failures, lag p50/p99), [`Relay::dead_letters`], [`Relay::drain`]; with the
//! `metrics` feature the gauges and counters `matroska_outbox_depth`,
//! `matroska_outbox_rows_delivered_total`, `matroska_outbox_dead_letters_total`,
//! `matroska_outbox_failures_total` and the histogram `matroska_outbox_lag_seconds`.
//!
//! **Logs** (`tracing`): `info` only for state changes — installed, relay started,
//! consumer registered or resumed, cache flushed, delivering again after failures; `warn`
//! for failed claims (with their back-off) and misconfiguration; each delivered batch at
//! `debug`, the idle poll at `trace`. An idle relay is silent at `info` — but the relay runs
//! its SQL on *your* pool, and SeaORM's `ConnectOptions` log every statement at `info` by
//! default (`sqlx::query`): a claim per poll interval (1 s on PostgreSQL, 50 ms elsewhere).
//! Lower them with `ConnectOptions::sqlx_logging_level(log::LevelFilter::Debug)` or filter
//! them (`RUST_LOG=info,sqlx::query=warn`); plain sqlx pools log statements at `debug`.
#![cfg_attr(docsrs, feature(doc_cfg))]
// Library code states why an `expect` cannot fail, and never unwraps.
#![warn(clippy::unwrap_used)]
// Without a driver feature `OutboxDb` has no values, and the code using it is unreachable.
#![cfg_attr(
    not(any(feature = "postgres", feature = "mysql", feature = "sqlite")),
    allow(unused, unreachable_code)
)]

mod cascade;
pub mod collation;
mod consumer;
mod db;
pub mod ddl;
mod error;
mod installed;
mod record;
mod relay;
mod truncate;

pub use collation::{
    CollationIssue, ScopedTable, check_collations, check_scoped_tables, ensure_collations_checked,
    ensure_scoped_table_checked,
};
pub use db::{OutboxDb, SqlConnection, install, uninstall, watched_tables};
pub use ddl::{Dialect, LAYOUT_VERSION, Outbox};
pub use error::{Error, Result};
pub use relay::{
    Delivery, OutboxDepth, Relay, RelayBuilder, RelayHandle, RelayStats, poke, wait_delivered,
    wait_delivered_blocking,
};
