//! Lowering's integration tests, in one test binary:
//!
//! - [`examples`]: the shipped example networks against their published parameter counts, and
//!   `docs/language.md` against the compiler (layer table, examples, names, grammar);
//! - [`naming`]: hierarchical layer names as PyTorch's `state_dict` gives them.

mod examples;
mod naming;
