//! The interpreter's error type: everything the caller can get wrong is reported, nothing panics.

/// Why the interpreter refused to run. Shapes are full shapes (batch first) unless the field
/// says otherwise.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum InterpError {
    /// The graph itself is inconsistent (a node reads a later node, a shape does not follow
    /// its op's rule, an input node is not registered, ...). Graphs built with `Graph::add`
    /// never trigger this; hand-edited ones might.
    #[error("malformed graph: {0}")]
    Malformed(String),

    /// The graph has no inputs, so the batch size is unknown.
    #[error("the graph has no inputs")]
    NoInputs,

    #[error("expected {expected} input tensor(s), found {found}")]
    InputCount { expected: usize, found: usize },

    /// An input's shape is not `[N] ++ node shape` for some N >= 1.
    #[error("input {index} (`{name}`) must have shape [N, {}] with N >= 1, found {found:?}", join(.expected))]
    InputShape { index: usize, name: String, expected: Vec<usize>, found: Vec<usize> },

    /// Two inputs disagree on the batch size.
    #[error("input {index} (`{name}`) has batch size {found}, but input 0 has batch size {expected}")]
    BatchMismatch { index: usize, name: String, expected: usize, found: usize },

    /// A tensor's data length does not match its shape.
    #[error("{what}: shape {shape:?} holds a different number of elements than its data ({len})")]
    DataLength { what: String, shape: Vec<usize>, len: usize },

    /// A parameter or buffer the graph needs is missing from the map.
    #[error("missing parameter `{name}` (expected shape {expected:?})")]
    MissingParam { name: String, expected: Vec<usize> },

    #[error("parameter `{name}` has shape {found:?}, expected {expected:?}")]
    ParamShape { name: String, expected: Vec<usize>, found: Vec<usize> },

    /// An attribute value the interpreter cannot run (dropout p outside [0, 1], ...).
    #[error("layer `{layer}`: {message}")]
    BadAttribute { layer: String, message: String },

    /// Training-mode batch norm needs at least two values per channel (the running variance
    /// uses the unbiased estimate `n / (n - 1)`), as PyTorch.
    #[error("batch norm `{layer}` in training mode needs more than 1 value per channel, found {values}")]
    BatchNormTooFewValues { layer: String, values: usize },

    /// Some size times the batch size overflows.
    #[error("layer `{layer}`: the tensor size overflows")]
    Overflow { layer: String },

    /// A class label that is not an integer in `0..classes`.
    #[error("label {value} of sample {sample} is not a class index in 0..{classes}")]
    BadLabel { sample: usize, value: f64, classes: usize },

    /// The plan cannot be run as asked (f64 storage in the physical mode, a plan whose tables
    /// do not fit its graph).
    #[error("cannot run the plan: {0}")]
    Plan(String),

    /// The run's [`cnnc_runtime::Cancel`] was set: it stopped before a node.
    #[error("cancelled")]
    Cancelled,
}

fn join(dims: &[usize]) -> String {
    dims.iter().map(usize::to_string).collect::<Vec<_>>().join(", ")
}
