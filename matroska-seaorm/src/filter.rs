//! Typed scope conditions as SeaORM filters.

use matroska_core::ScopeCondition;
use sea_orm::EntityTrait;

/// A typed scope condition that is also a SeaORM filter, so a cached query's `WHERE` clause
/// and its scope dependency come from one value and cannot disagree. Implemented by the code
/// `#[scope(...)]` generates on SeaORM models.
pub trait ScopeFilter: ScopeCondition {
    /// The entity the condition filters.
    type Entity: EntityTrait;

    /// The condition as a SeaORM filter (`col = value AND ...`, `IS NULL` for nulls).
    fn filter(&self) -> sea_orm::Condition;
}
