//! The outbox's error type.

/// Errors of installing the outbox and of the relay.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A database statement failed.
    #[error("outbox database error: {0}")]
    Database(#[from] sqlx::Error),
    /// The database behind a SeaORM or Diesel connection failed (its own error, as text).
    #[error("outbox database error: {0}")]
    Connection(String),
    /// The cache refused or failed an invalidation; the outbox rows stay for a retry.
    #[error("outbox delivery failed: {0}")]
    Cache(#[from] matroska_core::Error),
    /// A name that cannot be used as an identifier.
    #[error(
        "invalid {what} name {name:?}: use 1 to 48 ASCII letters, digits and underscores, not starting with a digit"
    )]
    InvalidName {
        /// What was named.
        what: String,
        /// The name.
        name: String,
    },
    /// A table spec the triggers cannot be generated from.
    #[error("cannot watch table `{table}`: {reason}")]
    InvalidSpec {
        /// The table.
        table: String,
        /// Why.
        reason: String,
    },
    /// The triggers installed on a table are of a newer layout than this build knows.
    #[error(
        "table `{table}` has outbox triggers of layout {installed}, newer than this build's {ours}; \
         upgrade matroska-outbox instead of downgrading the triggers"
    )]
    NewerLayout {
        /// The table.
        table: String,
        /// The installed layout version.
        installed: i64,
        /// This build's layout version.
        ours: i64,
    },
    /// The triggers installed on a watched table do not record columns a model watching it
    /// needs (a key or scope added to the model without re-running the install). Returned
    /// by the relay in development mode; in production it warns and invalidates the table's
    /// entity coarsely instead.
    #[error(
        "the outbox triggers on table `{table}` do not record {missing:?}, which `{entity}` needs \
         ({reason}): re-run `matroska_outbox::install` for it (or regenerate the migration's \
         SQL: `Outbox::install_sql`, `matroska_diesel::outbox::migration_sql`)"
    )]
    TriggersOutdated {
        /// The table.
        table: String,
        /// The entity (model) whose spec needs the columns.
        entity: String,
        /// The columns the triggers do not record.
        missing: Vec<String>,
        /// What the relay found installed.
        reason: String,
    },
    /// A read-your-writes wait ([`Relay::wait_delivered`](crate::Relay::wait_delivered))
    /// ran out of time: rows committed before it began were not all delivered yet (the relay
    /// or the cache is slow or failing). Nothing is lost: the rows stay in the outbox and are
    /// delivered later; until then reads of what they changed may be stale.
    #[error(
        "outbox rows committed before the wait were not all delivered within {waited:?}: \
         the relay or the cache is slow or failing (the rows stay and are delivered later)"
    )]
    NotDeliveredInTime {
        /// How long the caller waited.
        waited: std::time::Duration,
    },
    /// Scope columns whose collation compares more loosely than their field's fold (a
    /// [`check_collations`](crate::check_collations) in development mode): each issue, with
    /// the fold the field needs.
    #[error("scope columns compare more loosely than their fields fold: {0}")]
    Collation(String),
    /// The database URL names no database this build supports.
    #[error(
        "unsupported database URL scheme {0:?} (enable the matching feature: postgres, mysql, sqlite)"
    )]
    UnsupportedDatabase(String),
}

/// `Result` with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
