//! `cnnc emit-rust` (and its short form `cnnc FILE -o model.rs`): a lowered model compiled by
//! `cnnc-codegen` into one self-contained Rust module, written atomically.
//!
//! The module always holds the inference struct `Model`; with a training configuration it also
//! holds `Trainer`, the training step (a loss, its gradients, and an optimiser update when one
//! is given). The module is `cnnc-emit`'s, the one the `cnn!` macro expands to: the plans of
//! every pass with the verifier on, as the other commands make them, so the generated code runs
//! what `cnnc run` and `cnnc grad` run.

use cnnc_codegen::CodegenError;
use cnnc_diag::SourceFile;
use cnnc_emit::{GraphError, Module};
use cnnc_ir::Graph;
use cnnc_passes::{PassError, TrainingOptions};
use std::path::{Path, PathBuf};
use thiserror::Error;

/// What to generate.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RustOptions {
    /// `false` (`--no-std`): only `core`, no allocation (the caller passes the parameter storage
    /// and the workspace, `WORKSPACE_LEN` says how large), one thread; inference only.
    pub no_std: bool,
    /// `true` (`--no-winograd`): every convolution on the direct kernels, none as Winograd.
    pub no_winograd: bool,
    /// A training step to generate beside `Model`, as the struct `Trainer`.
    pub training: Option<TrainingOptions>,
}

/// A generated module and what it holds, for the command's report.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GeneratedRust {
    pub text: String,
    /// The public structs, in the module's order (`Model`, then `Trainer`).
    pub structs: Vec<String>,
}

/// Why no module was written.
#[derive(Debug, Error)]
pub enum EmitError {
    /// `--no-std` modules hold inference only: training needs allocation.
    #[error("`--no-std` modules hold inference only, but a training step (`--train`) was asked for")]
    NoStdTraining,
    /// The passes could not plan the model (a bug in cnnc, not in the source).
    #[error("{0}")]
    Passes(#[from] PassError),
    /// The code generator cannot compile this model.
    #[error("cannot compile model `{model}` to Rust: {source}")]
    Codegen { model: String, source: CodegenError },
    /// The destination could not be written; nothing was left there.
    #[error("cannot write the Rust module `{}`: {source}", .path.display())]
    Write { path: PathBuf, source: std::io::Error },
}

impl EmitError {
    /// What to do about it, when there is something to say.
    pub fn hint(&self) -> Option<String> {
        match self {
            EmitError::NoStdTraining => {
                Some("drop `--no-std` to generate a `Trainer`, or `--train` for a no-std model".into())
            }
            EmitError::Passes(_) => None,
            EmitError::Codegen { source: CodegenError::Unsupported(_), .. } => {
                Some("`cnnc run FILE --backend jit` runs every model; the Rust back end lacks this one".into())
            }
            EmitError::Codegen { .. } => Some("this is a bug in cnnc: please report it with the source".into()),
            EmitError::Write { .. } => {
                Some("check that the directory exists and is writable; `-o -` writes to standard output".into())
            }
        }
    }
}

/// Compiles `graph` (lowered from `file`) to one Rust module: the plans of every pass (the
/// verifier on), then `cnnc-codegen` with the source quoted in each layer's doc comment.
pub fn emit_rust(graph: &Graph, file: &SourceFile, options: &RustOptions) -> Result<GeneratedRust, EmitError> {
    if options.no_std && options.training.is_some() {
        return Err(EmitError::NoStdTraining);
    }
    let name = Path::new(&file.name).file_name().map_or(file.name.clone(), |n| n.to_string_lossy().into_owned());
    let source = SourceFile::new(name, file.text.clone());
    let training = options.training.as_ref().map(|t| (cnnc_emit::TRAINER, t));
    let (structs, text) = cnnc_emit::emit_graph(
        graph,
        &source,
        training,
        Module { std: !options.no_std, winograd: !options.no_winograd },
    )
    .map_err(|e| match e {
        GraphError::Passes(e) => EmitError::Passes(e),
        GraphError::Codegen(source) => EmitError::Codegen { model: graph.name.clone(), source },
    })?;
    Ok(GeneratedRust { text, structs })
}

/// Writes the module to `path` atomically (a failed write leaves no file behind and an old one
/// whole); `-` is standard output.
pub fn write_rust(path: &Path, text: &str) -> Result<(), EmitError> {
    cnnc_runtime::write_atomic(path, |w| w.write_all(text.as_bytes()))
        .map_err(|source| EmitError::Write { path: path.to_path_buf(), source })
}
