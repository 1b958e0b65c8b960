//! The compile errors of `cnn!`, pinned: each `ui/*.rs` must fail to compile with exactly the
//! rustc output in its `.stderr` (one trybuild run builds every case). `TRYBUILD=overwrite`
//! rewrites the files after a deliberate change.

#[test]
fn compile_errors() {
    // trybuild builds the cases as a crate under `target/`, whose CARGO_MANIFEST_DIR is not
    // this crate's: the macro resolves `file = "..."` against this instead.
    // SAFETY: this is the only test of this binary, so no other thread reads the environment.
    unsafe { std::env::set_var("CNNC_MANIFEST_DIR_OVERRIDE", env!("CARGO_MANIFEST_DIR")) };
    let cases = trybuild::TestCases::new();
    cases.compile_fail("tests/ui/*.rs");
}
