//! # matroska
//!
//! The facade crate: re-exports [`matroska_core`] and, behind features, the derive macros and
//! the SeaORM integration.
#![cfg_attr(docsrs, feature(doc_cfg))]

pub use matroska_core::*;
