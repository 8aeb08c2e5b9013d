//! The `posts` table.

use sea_orm::entity::prelude::*;
use serde::{Deserialize, Serialize};

/// A blog post. `#[scope(published)]` makes every write invalidate the cached lists of the
/// `published` value a row leaves and the one it enters, and generates `ByPublished`: the
/// list queries' filter and their dependency in one.
#[derive(
    Clone, Debug, PartialEq, Eq, DeriveEntityModel, Serialize, Deserialize, matroska::CacheDeps,
)]
#[sea_orm(table_name = "posts")]
#[scope(published)]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i32,
    pub title: String,
    pub body: String,
    pub published: bool,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

// Saves and deletes through `ActiveModel` invalidate at once (read-your-writes); the outbox
// catches every other write.
matroska::seaorm::active_model_behavior!(ActiveModel);
