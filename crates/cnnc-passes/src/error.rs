//! Why a pass list cannot be parsed or a pass cannot run.

use cnnc_ir::{ShapeError, VerifyError};
use std::fmt;

#[derive(Clone, Debug, PartialEq)]
pub enum PassError {
    /// A name in `--passes` that is no pass; `valid` lists every accepted name.
    UnknownPass { name: String, suggestion: Option<String>, valid: String },
    /// `--passes` was empty, or held an empty item (`fold-bn,,cse`).
    EmptyPassName { valid: String },
    /// `all` or `none` combined with other names.
    ExclusiveKeyword { keyword: &'static str },
    /// The graph handed to the pipeline does not verify (dead nodes aside, which DCE removes).
    InvalidInput { errors: Vec<VerifyError> },
    /// A pass left the graph broken: a bug in the pass, caught by the verifier.
    Broken { pass: &'static str, errors: Vec<VerifyError> },
    /// A pass rebuilt a node whose shape rule rejects it: a bug in the pass.
    Shape { pass: &'static str, node: String, error: ShapeError },
    /// A pass that rewrites weights could not (a tensor is missing or misshapen).
    Weights { pass: &'static str, error: cnnc_runtime::TransformError },
    /// The training transform was asked for something the graph cannot give.
    Training(String),
}

impl fmt::Display for PassError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PassError::UnknownPass { name, suggestion, valid } => {
                write!(f, "unknown pass `{name}`")?;
                if let Some(s) = suggestion {
                    write!(f, " (did you mean `{s}`?)")?;
                }
                write!(f, "; valid passes: {valid}")
            }
            PassError::EmptyPassName { valid } => {
                write!(f, "empty pass name in the pass list; valid passes: {valid}")
            }
            PassError::ExclusiveKeyword { keyword } => {
                write!(f, "`{keyword}` cannot be combined with other pass names")
            }
            PassError::InvalidInput { errors } => {
                write!(f, "the graph to optimise does not verify: ")?;
                join(f, errors)
            }
            PassError::Broken { pass, errors } => {
                write!(f, "internal error: pass `{pass}` left an invalid graph: ")?;
                join(f, errors)
            }
            PassError::Shape { pass, node, error } => {
                write!(f, "internal error: pass `{pass}` built an ill-shaped node `{node}`: {error}")
            }
            PassError::Weights { pass, error } => write!(f, "pass `{pass}`: {error}"),
            PassError::Training(message) => f.write_str(message),
        }
    }
}

fn join(f: &mut fmt::Formatter<'_>, errors: &[VerifyError]) -> fmt::Result {
    for (i, e) in errors.iter().enumerate() {
        if i > 0 {
            write!(f, "; ")?;
        }
        write!(f, "{e}")?;
    }
    Ok(())
}

impl std::error::Error for PassError {}
