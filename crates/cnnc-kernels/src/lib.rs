//! cnnc's compute kernels.

pub mod act;
pub mod bn;
pub mod conv;
pub mod conv_bwd_data;
pub mod conv_bwd_weights;
pub mod conv_plain;
pub mod conv_task;
pub mod cpu;
pub mod depthwise;
pub mod eltwise;
pub mod error;
pub mod fc;
pub mod lrn;
pub mod optim;
pub mod pack;
pub mod par;
pub mod pool;
pub mod pool_bwd;
pub mod reorder;
pub mod simd;
pub mod softmax;
pub mod threads;
pub mod tile;
pub mod view;
pub mod vmath;
pub mod x86;
