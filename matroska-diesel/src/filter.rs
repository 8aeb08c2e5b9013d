//! Typed scope conditions as Diesel filters.

use matroska_core::ScopeCondition;

/// A typed scope condition that is also a Diesel filter on its model's table, so one value is
/// both a query's `WHERE` clause and its cached result's dependency.
///
/// `#[derive(CacheDeps)]` implements it for every `#[scope(..)]` of a Diesel model (a struct
/// with `#[diesel(table_name = ..)]`), with the matroska facade's `diesel` feature on:
/// `#[scope(published, category)]` on `Post` gives `PostByPublishedCategory`, whose
/// [`filter`](ScopeFilter::filter) is
/// `posts::published.eq(..).and(posts::category.eq(..))`. An `Option` field compares
/// null-safely: `None` matches `NULL`.
///
/// Pass it to [`Cached::scoped`](crate::Cached::scoped), which adds the filter to the query
/// and the condition to the entry's dependencies.
pub trait ScopeFilter: ScopeCondition {
    /// The `table!` the filter is on.
    type Table: diesel::Table;
    /// The filter expression's type.
    type Filter;

    /// The condition as a Diesel expression: the scope's columns equal to its values, and-ed.
    fn filter(&self) -> Self::Filter;
}
