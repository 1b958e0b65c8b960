//! cnnc's Cranelift JIT: an execution plan (`cnnc_ir::plan::Plan`) of a forward or a training
//! graph compiled to machine code at run time, specialised to its shapes and batch, behind a
//! safe API.
//!
//! ```text
//! CompiledModel::compile(&plan, &Options::new(batch))   lower every node to Cranelift IR,
//!        |                                               finalize, allocate the memory
//!   .load_weights(&checkpoint)                           the plan's transforms, packed params
//!   .forward(&x) / .forward_into(..) / .run(..)          inference
//!   .train_step(&[x, target], &StepArgs {lr, step, seed}) loss, outputs, gradients, updates
//!   .state()                                             parameters and optimiser state back
//!   .profile(..) / bench::report(..)                     per-layer times for `cnnc bench`
//! ```
//!
//! # How a plan is compiled
//!
//! Every node becomes one or more kernel functions `fn(ops, task, thread)` with every shape
//! and trip count a constant (the batch included: recompiling for another batch takes
//! milliseconds, and constant strides let every offset fold into the instruction) and every
//! address an operand, read from the kernel's operand block `ops`: kernels of layers with
//! equal shapes and attributes are then the same IR, compiled once. A driver function calls
//! the kernels in schedule order, each with its own block, handing a kernel with several
//! tasks to the thread pool of `cnnc-kernels` (`cnnc_parallel_for`). The arena is the plan's
//! (`Plan::image_offset` is the addressing rule), parameters live in one buffer as the plan
//! stores them (after `cnnc_runtime::apply_transforms`), inputs are copied into buffers of
//! the model's own, and operand blocks, tables and run-time arguments sit in an auxiliary
//! buffer. Two kernel modes ([`Mode`]): portable (every loop in Cranelift IR, F32X4) and
//! native (loop nests around `cnnc-kernels` microkernels where one fits).
//!
//! Compile time ([`CompiledModel::compile_times`]): lowering builds every kernel's IR, then
//! Cranelift compiles the functions on the model's threads at once (`codegen`); the buffers
//! are zero pages mapped on demand, so a large arena costs nothing until it is used. ResNet-50
//! compiles in a few milliseconds for inference (native mode: loop nests around kernel
//! calls), and its training step in tens. In portable mode the distinct kernels of its
//! inference plan are 28 functions of about 10,000 instructions, those of its training step
//! (batch 1) 202 functions of 25,000 instructions (827 kernels of 95,000 instructions before
//! equal kernels shared one function); lowering, which still builds every kernel's IR, is
//! then about half of the compile time.
//!
//! # Safety
//!
//! All `unsafe` code is in [`exec`]: the buffers, the one audited function that turns the
//! finalized module into a [`CompiledModel`]'s code, and the calls into it. Generated code only
//! addresses the model's own buffers, each range checked by the lowering before it is emitted;
//! the wrapper checks every shape, length and label before any generated code runs.

#![deny(unsafe_code)]

pub mod bench;
mod codegen;
mod emit;
mod error;
mod exec;
mod lower;
mod model;
mod options;
mod vmath;

pub use codegen::CodegenTimes;
pub use error::JitError;
pub use lower::{ConvLowering, ConvPass, Lowering};
pub use model::{CompileTimes, CompiledModel, NodeTime, StepArgs, StepResult};
pub use options::{DEPTH_FIRST_BYTES, Mode, Options};
