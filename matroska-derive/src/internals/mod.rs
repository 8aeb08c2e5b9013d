//! Parsing: attributes into a typed, validated model of the input.

pub mod ast;
pub mod attr;
pub mod ctxt;
