//! `JitError`: everything that can go wrong compiling or running a plan, as values.

use std::fmt;

#[derive(Clone, Debug, PartialEq)]
pub enum JitError {
    /// The plan is malformed or asks for something this back end cannot lay out (a value
    /// outside the arena, tables that do not cover the graph).
    Plan(String),
    /// Cranelift rejected the generated code or the host.
    Codegen(String),
    /// Memory for the arena, parameters or code could not be had.
    Memory(String),
    /// A run was given the wrong number of inputs.
    InputCount { expected: usize, found: usize },
    /// An input's shape differs from the compiled one (batch included).
    InputShape { index: usize, name: String, expected: Vec<usize>, found: Vec<usize> },
    /// A caller buffer's length differs from what it must hold.
    BufferLength { what: String, expected: usize, found: usize },
    /// A class label that is not an integer in `0..classes`.
    BadLabel { sample: usize, value: f32, classes: usize },
    /// A parameter is missing from the weights, or has the wrong shape.
    Param { name: String, message: String },
    /// The model was run before its weights were loaded.
    NoWeights,
    /// The operation needs a plan of another kind (a training step on an inference plan...).
    Usage(String),
    /// The caller's [`cnnc_runtime::Cancel`] was set: compiling or running stopped.
    Cancelled,
}

impl fmt::Display for JitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            JitError::Plan(m) => write!(f, "cannot compile the plan: {m}"),
            JitError::Codegen(m) => write!(f, "code generation failed: {m}"),
            JitError::Memory(m) => write!(f, "out of memory: {m}"),
            JitError::InputCount { expected, found } => write!(f, "expected {expected} input(s), found {found}"),
            JitError::InputShape { index, name, expected, found } => {
                write!(f, "input {index} (`{name}`) has shape {found:?}, the model was compiled for {expected:?}")
            }
            JitError::BufferLength { what, expected, found } => {
                write!(f, "{what} holds {found} floats, expected {expected}")
            }
            JitError::BadLabel { sample, value, classes } => {
                write!(f, "label {value} of sample {sample} is not a class index in 0..{classes}")
            }
            JitError::Param { name, message } => write!(f, "parameter `{name}`: {message}"),
            JitError::NoWeights => write!(f, "the model's weights were not loaded (call `load_weights` first)"),
            JitError::Usage(m) => f.write_str(m),
            JitError::Cancelled => f.write_str("cancelled"),
        }
    }
}

impl std::error::Error for JitError {}

pub(crate) fn plan_err(m: impl Into<String>) -> JitError {
    JitError::Plan(m.into())
}
