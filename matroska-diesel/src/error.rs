//! The one error type of matroska-diesel.

/// `Result` with matroska-diesel's [`Error`] as the default error type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in a cached query or an outbox installation.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The database failed (Diesel's error, as Diesel returned it).
    #[error(transparent)]
    Diesel(#[from] diesel::result::Error),
    /// The cache failed with bad input (a key or value over its limit, an encoding error).
    /// Backend failures are not errors of a cached read: it degrades to the database.
    #[error(transparent)]
    Cache(#[from] matroska_core::Error),
    /// A cached query on an r2d2 pool could not check out a connection.
    #[cfg(feature = "r2d2")]
    #[cfg_attr(docsrs, doc(cfg(feature = "r2d2")))]
    #[error(transparent)]
    Pool(#[from] diesel::r2d2::PoolError),
    /// Installing or removing the outbox failed.
    #[error(transparent)]
    Outbox(#[from] matroska_outbox::Error),
}

/// Turns the error of a [`Cache::get_or_load`](matroska_core::Cache::get_or_load) whose loader
/// failed with Diesel's error back into [`Error::Diesel`].
pub(crate) fn from_load(e: matroska_core::Error) -> Error {
    match e {
        matroska_core::Error::Load(source) => match source.downcast::<diesel::result::Error>() {
            Ok(db) => Error::Diesel(*db),
            Err(other) => Error::Cache(matroska_core::Error::Load(other)),
        },
        other => Error::Cache(other),
    }
}
