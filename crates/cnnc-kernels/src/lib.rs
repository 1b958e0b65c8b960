//! cnnc's compute kernels: every hot loop of inference and training, for AVX-512, AVX2 + FMA
//! and portable Rust, on the execution plan's layouts (`nChw16c` activations, packed weights).
//!
//! # Shape of the API
//!
//! Each kernel family has a *plan* (`ConvPlan`, `FcPlan`, `PoolPlan`, ...): made once per
//! layer from its shape, checking everything and choosing tiles and the split into tasks for a
//! thread count and an instruction set ([`simd::Cpu`], a token only detection or an `unsafe`
//! assumption can make). Then, per run:
//!
//! * a **safe function** (`conv_fwd::forward`, `fc::forward`, `pool::forward`, ...) taking the
//!   workspace arena as one `&mut [f32]` plus a [`view::View`] (offset, batch stride, dims,
//!   layout) per operand, weights and per-channel vectors as separate slices, scratch memory,
//!   and a [`par::Parallel`] (the [`threads::ThreadPool`], or [`par::Serial`]). It checks every
//!   view against the plan and the arena, every length, and which operands may share memory
//!   (elementwise outputs may be their input; a residual may be the output), then runs;
//!   errors are [`error::KernelError`], never panics;
//! * the **raw task functions** it calls (`conv_fwd::forward_task`, ...): `unsafe`, `#[repr(C)]`
//!   plan and argument structs of pointers and integers, documented preconditions, for the JIT,
//!   which checks once at compile time and then calls them directly.
//!
//! Instruction sets: [`cpu::active`] (detected once, `CNNC_ISA` or [`cpu::force`] to choose);
//! every plan records its own, so tests run each kernel on all three. Threads: a persistent
//! pool, the caller working too, each layer split into tasks (output-channel blocks x rows x
//! images) at batch 1 as well.
//!
//! # One source
//!
//! Every module except `source` is self-contained Rust that the code generator pastes into
//! generated code ([`source::files`]); only `cpu`, `threads`, `ffi`, `peak` and `lines` need
//! `std`. The crate has no dependencies.
//!
//! [`peak`] measures the machine's FMA peak at the kernels' vector width, for reports that
//! quote a layer's speed as a share of it.

pub mod act;
pub mod bn;
pub mod conv;
pub mod conv_bwd_data;
pub mod conv_bwd_weights;
pub mod conv_fwd;
pub mod conv_generic;
pub mod conv_plain;
pub mod conv_plain_bwd;
pub mod conv_plain_rows;
pub mod conv_small;
pub mod cpu;
pub mod depthwise;
pub mod eltwise;
pub mod error;
pub mod fc;
pub mod fc_update;
pub mod ffi;
pub mod fmath;
pub mod lines;
pub mod lrn;
pub mod optim;
pub mod pack;
pub mod par;
pub mod peak;
pub mod pool;
pub mod pool2x2;
pub mod pool_bwd;
pub mod reorder;
pub mod simd;
pub mod softmax;
pub mod source;
pub mod threads;
pub mod tile;
pub mod view;
pub mod vmath;
pub mod winograd;
pub mod x86;
