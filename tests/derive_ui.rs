//! `#[derive(CacheDeps)]` expansion: cases that must compile (and run), and cases that must
//! fail with the errors in their `.stderr` files. Regenerate those with
//! `TRYBUILD=overwrite cargo test --test derive_ui --all-features`, then read them.
#![cfg(feature = "derive")]

#[test]
fn derive_ui() {
    let t = trybuild::TestCases::new();
    t.pass("tests/ui/pass/*.rs");
    t.compile_fail("tests/ui/fail/*.rs");
    #[cfg(feature = "seaorm")]
    t.pass("tests/ui/seaorm/*.rs");
    #[cfg(feature = "diesel")]
    {
        t.pass("tests/ui/diesel/*.rs");
        t.compile_fail("tests/ui/diesel_fail/*.rs");
    }
}
