//! cnnc's runtime: tensors and everything that moves them in and out of the compiler
//! (`.npy`, safetensors weights, seeded initialisation). Back ends and front doors use it; it
//! knows nothing of the syntax, the passes or any back end.

mod tensor;

pub use tensor::Tensor;
