//! Lowering's integration tests, in one test binary:
//!
//! - [`examples`]: the shipped example networks against their published parameter counts, and
//!   `docs/language.md` against the compiler (layer table, examples, names, grammar);
//! - [`freeze`]: the parameters `freeze` statements freeze, and their diagnostics;
//! - [`naming`]: hierarchical layer names as PyTorch's `state_dict` gives them.

mod examples;
mod freeze;
mod naming;
