//! The `cnnc` binary's end-to-end tests, in one test binary (one link, one process start for
//! the whole suite): each module runs the built `cnnc` from the repository root and checks exit
//! codes, stderr and stdout.
//!
//! - [`bench`]: `bench`: its JSON, table, peak cache and bad arguments;
//! - [`commands`]: `check`, `summary`, `ir`, `dot`, `explain`, `demo`; exit codes, diagnostics,
//!   and the example zoo's published numbers;
//! - [`passes`]: `--passes` and `--train`;
//! - [`run_grad`]: `init`, `run` and `grad`, and the errors for data that does not fit;
//! - [`tools`]: `gradcheck` and `features`;
//! - [`train`]: `cnnc train` on the built-in digits;
//! - [`training_mode`]: `run --train`, `--state-out` and `--dump`;
//! - [`emit_rust`]: `cnnc emit-rust` and `cnnc FILE -o model.rs`: the module, that it
//!   compiles, and failures that leave no file;
//! - [`golden_models`]: whole models against PyTorch's outputs and gradients;
//! - [`repl_viz`]: `cnnc repl` on scripts and `cnnc viz`'s PNG files;
//! - [`pty`]: `cnnc repl` on a terminal (a pseudo-terminal): editing, completion, history,
//!   Ctrl-C and Ctrl-D;
//! - [`hostile`]: bad inputs (too large for the memory, special files, outputs over inputs,
//!   corrupt safetensors, extra weights, missing arguments) and `grad --json`.

mod bench;
mod commands;
mod common;
mod emit_rust;
mod golden_models;
mod hostile;
mod passes;
#[cfg(unix)]
mod pty;
mod repl_viz;
mod run_grad;
mod tools;
mod train;
mod training_mode;
