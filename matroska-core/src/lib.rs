//! # matroska-core
//!
//! A cache that knows what each entry was computed from, and drops it when that changes.
//!
//! ## Concepts
//!
//! - A [`Dependency`] names something a cached value was computed from: an object
//!   ([`Dependency::id`]), a tag, a database row ([`Dependency::primary_key`]), or a list filter
//!   ([`Dependency::condition`], with [`Scope`]s deciding which filters a changed row touches).
//! - A [`Cache`] stores values (through serde, with a versioned header) together with their
//!   dependencies, and [`Cache::invalidate`] drops everything that depends on a dependency.
//! - A [`DependencySet`] collects the primary-key dependencies of loaded models and the
//!   relations loaded with them, in first-seen order without duplicates ([`CollectDeps`]).
//! - A [`Backend`](backend::Backend) holds the bytes and the reverse index: the in-memory
//!   [`MemoryBackend`](backend::memory::MemoryBackend) (always available) or the Redis backend
//!   (feature `redis`).
//! - Every operation is async; [`blocking::block_on`] runs one from plain sync code (no
//!   runtime of your own needed), which the integrations' `_blocking` forms build on.
//!
//! ## Usage
//!
//! ```toml
//! [dependencies]
//! matroska = "0.1"   # the facade; features: redis (default), derive (default), seaorm, metrics, msgpack
//! ```
//!
//! The whole flow, on the in-memory backend:
//!
//! ```
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! use matroska_core::{Cache, Dependency};
//!
//! let cache = Cache::memory();
//!
//! // Miss: load, then cache with what the value depends on.
//! let titles: Vec<String> = cache
//!     .get_or_load("articles-list", None, || async {
//!         let titles = vec!["Python".to_string(), "Cache".to_string()];
//!         let deps = vec![
//!             Dependency::id("article", 1),
//!             Dependency::id("article", 2),
//!             Dependency::id("author", 1),
//!         ];
//!         Ok::<_, std::io::Error>((titles, deps))
//!     })
//!     .await?;
//! assert!(cache.has("articles-list").await?);
//!
//! // The author is modified: the list goes.
//! cache.invalidate(&[Dependency::id("author", 1)]).await?;
//! assert!(!cache.has("articles-list").await?);
//! # Ok::<_, matroska_core::Error>(()) }).unwrap();
//! ```
//!
//! ## Features
//!
//! - `redis`: the Redis backend ([`backend::redis`]).
//! - `cluster`: Redis Cluster for it ([`RedisConfig::cluster`](backend::redis::RedisConfig::cluster)).
//! - `metrics`: counters through the [`metrics`](https://docs.rs/metrics) facade.
//! - `msgpack`: the MessagePack [`Codec`].
//! - `chrono`, `uuid`: [`ToValue`] for chrono's dates and times and for `uuid::Uuid`, so they
//!   can be primary keys and scope fields.
#![cfg_attr(docsrs, feature(doc_cfg))]
// Library code states why an `expect` cannot fail, and never unwraps.
#![warn(clippy::unwrap_used)]

pub mod backend;
pub mod blocking;
mod cache;
mod codec;
mod collect;
mod db_json;
mod dependency;
pub mod derived;
mod error;
pub mod fold;
mod key;
pub mod namespace;
mod nonce;
mod observe;
pub mod scope;
pub mod table;
mod value;

pub use backend::Invalidated;
pub use cache::{Cache, CacheBuilder, Loaded};
pub use codec::Codec;
pub use collect::{CollectDeps, DependencySet, QueryRow};
pub use db_json::{ColumnDecoder, DecodeFn, FromDbJson, decode_untyped};
pub use dependency::Dependency;
pub use error::{Error, Result};
pub use fold::Fold;
pub use scope::{CacheDeps, Scope, ScopeCondition, ScopeMode, Scoped};
pub use table::{RowChange, RowError, TableSpec, WatchedTable};
pub use value::{ToKeyValues, ToValue, Value};
