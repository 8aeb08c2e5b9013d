//! The one error type of matroska-core.

use std::time::Duration;

/// `Result` with matroska's [`Error`] as the default error type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in a cache operation.
///
/// A cache miss is not an error: reads return `Ok(None)`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The backend (Redis) could not be reached or answered with an error.
    #[error(
        "cache backend `{backend}` failed: {message}; check that the service is up and the URL is right"
    )]
    Backend {
        /// Backend name (`"redis"`, `"memory"`).
        backend: &'static str,
        /// What the backend said.
        message: String,
        /// The underlying error, when there is one.
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },
    /// An operation did not finish within the configured time-out.
    #[error(
        "cache operation `{operation}` timed out after {timeout:?}; raise the time-out or check the backend's load"
    )]
    Timeout {
        /// The operation that timed out.
        operation: &'static str,
        /// The time-out that was exceeded.
        timeout: Duration,
    },
    /// A value could not be serialized for caching.
    #[error("could not encode the value for key `{key}`: {message}")]
    Encode {
        /// The cache key.
        key: String,
        /// What the serializer said.
        message: String,
    },
    /// Cached bytes could not be decoded (another type, another schema version, corruption).
    /// [`Cache::get`](crate::Cache::get) turns this into a miss; it surfaces only from
    /// [`Codec::decode`](crate::Codec::decode).
    #[error("could not decode cached bytes: {0}")]
    Decode(String),
    /// An encoded value is larger than the configured limit; nothing was stored.
    #[error(
        "value for key `{key}` is {size} bytes, over the limit of {limit} bytes; raise `max_value_bytes` or cache less"
    )]
    ValueTooLarge {
        /// The cache key.
        key: String,
        /// The encoded size.
        size: usize,
        /// The configured limit.
        limit: usize,
    },
    /// A key is longer than the configured limit.
    #[error(
        "cache key of {len} bytes is over the limit of {limit} bytes (key starts with `{head}`); hash long keys before caching"
    )]
    KeyTooLong {
        /// The first characters of the key.
        head: String,
        /// The key's length in bytes.
        len: usize,
        /// The configured limit.
        limit: usize,
    },
    /// Invalid configuration.
    #[error("invalid cache configuration: {0}")]
    Config(String),
    /// A scope condition names a field that no extractor of the scope describes.
    #[error(
        "scope `{scope}` has no extractor describing fields {fields:?}; describe them with `Scope::describe` (or `#[scope(...)]`) before caching lists filtered by them"
    )]
    UnknownScopeFields {
        /// The scope.
        scope: String,
        /// The fields the condition named.
        fields: Vec<String>,
    },
    /// A scope extractor misbehaved (returned the wrong number of values, or panicked); in
    /// [`ScopeMode::Development`](crate::ScopeMode::Development) only, from
    /// [`Scope::try_dependencies_for_change`](crate::Scope::try_dependencies_for_change) and
    /// the `invalidate_for*` methods. Production mode invalidates the whole scope instead.
    #[error(
        "the extractor of scope `{scope}` for fields {fields:?} {problem}; fix the closure given to `Scope::describe` (or the `#[scope(...)]` fields); the whole scope was invalidated instead"
    )]
    ScopeExtractor {
        /// The scope.
        scope: String,
        /// The extractor's fields.
        fields: Vec<String>,
        /// What went wrong ("returned 1 values", "panicked: ...").
        problem: String,
    },
    /// The loader of [`Cache::get_or_load`](crate::Cache::get_or_load) failed.
    #[error("loader failed: {0}")]
    Load(#[source] Box<dyn std::error::Error + Send + Sync>),
}

impl Error {
    #[cfg(feature = "redis")]
    pub(crate) fn backend(
        backend: &'static str,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        Error::Backend {
            backend,
            message: source.to_string(),
            source: Some(Box::new(source)),
        }
    }

    /// Whether the error comes from the backend being unreachable, failing or slow, as opposed
    /// to bad input. Reads degrade to misses on such errors.
    pub fn is_backend_failure(&self) -> bool {
        matches!(self, Error::Backend { .. } | Error::Timeout { .. })
    }
}
