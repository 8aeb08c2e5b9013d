//! # matroska
//!
//! The facade crate: re-exports [`matroska_core`] and, behind features, the derive macros
//! (`derive`, on by default) and the SeaORM integration (`seaorm`).
#![cfg_attr(docsrs, feature(doc_cfg))]

pub use matroska_core::*;

// -- derive (owned by the derive work) --

// -- seaorm (owned by the SeaORM work) --
#[cfg(feature = "seaorm")]
#[cfg_attr(docsrs, doc(cfg(feature = "seaorm")))]
pub use matroska_seaorm as seaorm;
