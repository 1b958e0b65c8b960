//! The generated modules of the test models (see `models.rs` and `build.rs`), sharing one copy
//! of the kernels.

include!(concat!(env!("OUT_DIR"), "/kernels.rs"));
include!(concat!(env!("OUT_DIR"), "/models.rs"));
