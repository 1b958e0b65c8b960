//! The kernel tests: every kernel against the reference interpreter on every instruction set
//! this CPU supports, over proptest-generated configurations, on guard-paged buffers.

mod checks;
mod conv;
mod conv_bwd;
mod conv_generic;
mod conv_plain;
mod depthwise;
mod eltwise;
mod fc;
mod ffi;
mod guard;
mod lines;
mod norm;
mod optim;
mod oracle;
mod peak;
mod pool;
mod pool2x2;
mod softmax;
mod source;
mod threads;
mod util;
mod vmath;
mod winograd;
