//! cnnc's runtime: tensors and everything that moves them in and out of the compiler
//! (`.npy`, safetensors weights, seeded initialisation). Back ends and front doors use it; it
//! knows nothing of the syntax, the passes or any back end.

mod atomic;
mod budget;
mod cancel;
pub mod idle;
mod init;
mod npy;
pub mod rng;
mod st_header;
mod tensor;
mod transform;
mod weights;

pub use atomic::{Destination, destination, is_stdout, write_atomic};
pub use budget::{BudgetSource, FALLBACK_BYTES, MemoryBudget, human_bytes, parse_size};
pub use cancel::{Cancel, cancel_requested};
pub use init::{InitError, WeightInit, init_params, try_init_params, weight_init};
pub use npy::{
    MAX_HEADER_LEN, NpyArray, NpyError, NpyFormatError, read_npy, read_npy_bytes, read_npy_f32, read_npy_f32_within,
    read_npy_labels, read_npy_labels_within, read_npy_within, write_npy, write_npy_labels, write_npy_u8,
};
pub use rng::Rng;
pub use tensor::{Tensor, TensorError};
pub use transform::{TransformError, apply_transforms, fold_bn, pack, pack_optimizer_state, unpack};
pub use weights::{
    Metadata, NUM_BATCHES_TRACKED, WeightsError, check_weights, load_safetensors,
    load_safetensors_with_metadata_within, load_safetensors_within, save_safetensors, save_safetensors_with_metadata,
};

/// Named tensors: a model's parameters and buffers, or their gradients, keyed by full name
/// (`layer1.0.conv1.weight`). Sorted, so iteration order is deterministic.
pub type TensorMap = std::collections::BTreeMap<String, Tensor>;
