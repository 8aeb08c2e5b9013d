//! Derive macros for matroska: `#[derive(CacheDeps)]` with `#[scope(...)]`.
//!
//! Use them through the `matroska` crate (feature `derive`, on by default), whose
//! documentation of `CacheDeps` shows the generated API. The generated code names the runtime
//! by absolute paths (`::matroska::...`, or the `#[cache(crate = "...")]` override).
//!
//! Layout: `internals` parses the input into a typed model (collecting every error),
//! `expand` generates code from it.
// Library code states why an `expect` cannot fail, and never unwraps.
#![warn(clippy::unwrap_used)]

mod expand;
mod internals;

use proc_macro::TokenStream;
use syn::{DeriveInput, parse_macro_input};

/// Implements `CacheDeps`, `CollectDeps` and `Scoped` for a struct, and generates one typed
/// condition per `#[scope(...)]`. See `matroska::CacheDeps` for the attributes and the
/// generated API.
#[proc_macro_derive(CacheDeps, attributes(cache, scope))]
pub fn derive_cache_deps(input: TokenStream) -> TokenStream {
    let input = parse_macro_input!(input as DeriveInput);
    expand::derive_cache_deps(&input).into()
}
