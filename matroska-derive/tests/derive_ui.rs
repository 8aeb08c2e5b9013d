//! `#[derive(CacheDeps)]` expansion: cases that must compile (and run), and cases that must
//! fail with the errors in their `.stderr` files. Regenerate those with
//! `TRYBUILD=overwrite cargo test -p matroska-derive --test derive_ui`, then read them.
//!
//! The cases live with the derive crate, so trybuild's scratch project builds only what they
//! use (the facade with `derive`, `seaorm` and `diesel`, no database driver, no C library),
//! not the integration tests' whole dependency tree.

#[test]
fn derive_ui() {
    let t = trybuild::TestCases::new();
    t.pass("tests/ui/pass/*.rs");
    t.compile_fail("tests/ui/fail/*.rs");
    t.pass("tests/ui/seaorm/*.rs");
    t.pass("tests/ui/diesel/*.rs");
    t.compile_fail("tests/ui/diesel_fail/*.rs");
}
