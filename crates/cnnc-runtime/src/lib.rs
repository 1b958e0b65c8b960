//! cnnc's runtime: tensors and everything that moves them in and out of the compiler
//! (`.npy`, safetensors weights, seeded initialisation). Back ends and front doors use it; it
//! knows nothing of the syntax, the passes or any back end.

mod tensor;

pub use tensor::Tensor;

/// Named tensors: a model's parameters and buffers, or their gradients, keyed by full name
/// (`layer1.0.conv1.weight`). Sorted, so iteration order is deterministic.
pub type TensorMap = std::collections::BTreeMap<String, Tensor>;
