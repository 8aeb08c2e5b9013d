//! The one error type of matroska-seaorm.

use sea_orm::DbErr;

/// `Result` with matroska-seaorm's [`Error`] as the default error type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in a cached query, a bulk write or a hook.
///
/// Hooks must return SeaORM's [`DbErr`]; there an [`Error`] becomes
/// [`DbErr::Custom`] with the message below (a [`Error::Db`] stays the original `DbErr`).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The database failed.
    #[error(transparent)]
    Db(#[from] DbErr),
    /// The cache failed with bad input (a key or value over its limit, an encoding error) or,
    /// for explicit invalidations, with a backend failure.
    #[error(transparent)]
    Cache(#[from] matroska_core::Error),
    /// A hook or helper needed the cache, and none is registered for this task or process.
    #[error(
        "no matroska cache is registered: call `matroska::seaorm::set_global_cache(cache)` at start-up \
         (or run the code inside `matroska::seaorm::with_cache(cache, ...)`)"
    )]
    NoCache,
    /// A hooked write, with no cache registered, to a table that nothing in the database
    /// records writes to (no outbox triggers on it, and no outbox the hook could record the
    /// write in): caches of other processes may hold its rows, so the write is refused.
    #[error(
        "no matroska cache is registered, and no matroska outbox in the database records writes \
         to `{table}`: other processes' caches may hold its rows, so the write was refused before \
         it reached the database. Call `matroska::seaorm::set_global_cache(cache)` first (or run \
         the code inside `matroska::seaorm::with_cache(cache, ...)`), or install the outbox before \
         this write (in migrations: `matroska::seaorm::outbox_migration!` right after the tables \
         are created, before any migration that writes rows)"
    )]
    Unrecorded {
        /// The table written to.
        table: String,
    },
    /// A global cache was registered already; it is set once per process.
    #[error(
        "a global matroska cache is registered already; set it once at start-up, and use \
         `with_cache` for a different cache in one task"
    )]
    AlreadyRegistered,
    /// Invalidations could not be delivered for a while and the retry queue is full: the write
    /// was refused before it reached the database, because its invalidation could not be
    /// guaranteed either.
    #[error(
        "refusing the write: {pending} invalidations are waiting for the cache backend (limit {limit}); \
         check that the cache backend is up, or raise `Invalidator::backlog_limit`"
    )]
    Backlog {
        /// Dependencies waiting to be invalidated.
        pending: usize,
        /// The configured limit.
        limit: usize,
    },
    /// An explicit [`invalidate`](crate::invalidate) failed and the retry queue was full:
    /// `dropped` of its dependencies were neither delivered nor queued.
    #[error(
        "the cache backend failed and the invalidation retry queue is full (limit {limit}): \
         {dropped} invalidations were dropped, and entries depending on them stay until their \
         TTL; check that the cache backend is up, then invalidate again"
    )]
    Dropped {
        /// Dependencies neither delivered nor queued.
        dropped: usize,
        /// The configured limit.
        limit: usize,
        /// The backend's failure.
        source: matroska_core::Error,
    },
    /// Scope columns compare strings more loosely than their fields fold them (see
    /// [`check_collations`](crate::check_collations)).
    #[error("scope columns compare more loosely than their folds: {0}")]
    Collation(String),
}

impl From<Error> for DbErr {
    fn from(e: Error) -> Self {
        match e {
            Error::Db(e) => e,
            other => DbErr::Custom(other.to_string()),
        }
    }
}

/// Turns the error of a [`Cache::get_or_load`](matroska_core::Cache::get_or_load) whose loader
/// failed with a [`DbErr`] back into [`Error::Db`].
pub(crate) fn from_load(e: matroska_core::Error) -> Error {
    match e {
        matroska_core::Error::Load(source) => match source.downcast::<DbErr>() {
            Ok(db) => Error::Db(*db),
            Err(other) => Error::Cache(matroska_core::Error::Load(other)),
        },
        other => Error::Cache(other),
    }
}
