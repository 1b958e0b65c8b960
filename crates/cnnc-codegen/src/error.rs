//! `CodegenError`: why a plan cannot be compiled to Rust.

use std::fmt;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CodegenError {
    /// The plan (or the source graph given with it) is inconsistent: a transform reads a
    /// tensor that does not exist, a parameter no checkpoint tensor gives, a value without a
    /// place. A bug in the passes, or a plan not made from that source.
    Plan(String),
    /// Something the code generator or the kernels do not implement, named.
    Unsupported(String),
    /// The generated text did not parse (a bug in the generator).
    Internal(String),
}

impl fmt::Display for CodegenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CodegenError::Plan(m) => write!(f, "inconsistent plan: {m}"),
            CodegenError::Unsupported(m) => write!(f, "not supported by the Rust back end: {m}"),
            CodegenError::Internal(m) => write!(f, "internal code generator error: {m}"),
        }
    }
}

impl std::error::Error for CodegenError {}
