//! The `.cnn` language: grammar (`grammar/cnn.pest`), AST with spans, parser and syntax errors.
//!
//! `parse` never panics and never recurses without bound: bracket and expression depth are
//! limited before the recursive parts run. This crate knows nothing of shapes or the IR.

pub mod ast;
mod error;
mod parse;
pub mod print;

pub use error::SyntaxError;
pub use parse::{MAX_EXPR_DEPTH, MAX_NESTING, parse, parse_expr};

#[cfg(test)]
mod tests;
