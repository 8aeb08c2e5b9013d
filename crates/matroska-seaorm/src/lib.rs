//! SeaORM integration for matroska: invalidation on save and delete, cached queries.
//!
//! (Being written; see the SeaORM issue.)

mod filter;

pub use filter::ScopeFilter;
