//! cnnc's front door: the one place that loads sources, runs the phases in order (the
//! optimisation passes included, [`optimize`]) and turns their typed results into text for
//! people (rendered diagnostics, summary tables, JSON), and the one place that runs a model on
//! data files for a front door ([`execute`]: weights, `.npy` inputs and targets, forward, loss
//! and gradients), or compiles it to Rust ([`emit_rust()`]).
//!
//! The CLI is a thin shell over this crate, and the REPL and the `cnn!` macro will be too, so
//! that every front door reports the same things in the same words. The phases below it never
//! render: they hand back `Diagnostic` values and this crate's [`render()`] prints them.

pub mod bench;
mod compile;
mod curves;
pub mod demo;
mod emit_rust;
pub mod examples;
pub mod execute;
pub mod gradcheck;
mod optimize;
pub mod peak_cache;
mod preflight;
mod report;
mod shape_arg;
mod summary;
pub mod train;
pub mod train_data;
pub mod viz;

pub use cnnc_lower::Options;
/// The renderer of diagnostics (`cnnc-render`), shared with the `cnn!` macro.
pub use cnnc_render::{render, render_diagnostics, summary_line};
/// The memory budget and the output rules the front doors apply (from the runtime).
pub use cnnc_runtime::{BudgetSource, MemoryBudget, is_stdout, parse_size};
pub use compile::{Checked, DriverError, MAX_SOURCE_BYTES, check_models, check_source, load, lower_source};
pub use curves::curves_svg;
pub use emit_rust::{EmitError, GeneratedRust, RustOptions, emit_rust, write_rust};
pub use execute::{
    Backend, ErrorKind, ExecError, ExecMode, ExecWarning, GradOutcome, Loss, RunOutcome, Target, WeightsOptions,
    render_exec_error,
};
pub use optimize::{
    Mode, Objective, Optimized, Pass, PassError, TrainingOptions, default_training, dot_fused, mode_name, optimize,
    optimize_forward, parse_passes, pass_report, passes_help, valid_pass_names,
};
pub use preflight::{Estimate, PreflightError, Task, check_memory, check_output, check_outputs, estimate};
pub use report::{GradReport, path_text};
pub use shape_arg::{ShapeArgError, parse_shape};
pub use summary::{
    LayerSummary, PassSummary, Summary, human_bytes, ok_line, summarize, summarize_optimized, table, thousands, to_json,
};
