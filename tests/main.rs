//! The data-driven tests of the whole front end, in one test binary:
//!
//! - [`snapshots`]: `tests/data/ok` and `tests/data/err` sources, and the shipped examples,
//!   against their AST, IR and diagnostic snapshots;
//! - [`error_index`]: `docs/errors.md` against the code registry and what cnnc prints;
//! - [`robustness`]: hostile input through the whole front end, which must neither panic nor
//!   take long.
//!
//! `cargo test -p cnnc-tests -- snapshots` runs one of them.

mod error_index;
mod robustness;
mod snapshots;
