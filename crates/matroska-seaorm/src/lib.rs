//! SeaORM integration for matroska.
