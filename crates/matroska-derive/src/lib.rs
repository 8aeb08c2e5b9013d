//! Derive macros for matroska.
