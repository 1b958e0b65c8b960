//! Running a lowered model on data, for `cnnc init`, `cnnc run` and `cnnc grad`: weights loaded
//! and checked (or initialised), inputs and targets read from `.npy` and checked against the
//! model before anything runs, then a forward pass, or a loss and its gradients, on a back end.
//!
//! Everything the user can get wrong comes back as an [`ExecError`] whose message names the
//! file, the expected and the found shapes; [`render_exec_error`] adds the list of problems
//! and a hint, and [`ExecError::kind`] says which exit code fits. Nothing here panics on a bad
//! file: the runtime's readers validate every byte.
//!
//! The layout is PyTorch's: inputs `[N, C, H, W]` (or `[N, F]` for a flat model), any batch
//! size N >= 1; parameters under their `state_dict` names. The gradient map of [`grad`] holds
//! every trainable parameter under the same name as the weights, plus [`INPUT_KEY`] for the
//! gradient with respect to the input batch.

use crate::preflight::PreflightError;
use cnnc_diag::SourceFile;
use cnnc_interp::TensorLike;
use cnnc_interp::{InterpError, Options};
use cnnc_ir::plan::OutputRole;
use cnnc_ir::{Graph, NodeId, Op, TrainOp};
use cnnc_lower::Options as LowerOptions;
use cnnc_runtime::{Cancel, InitError, MemoryBudget, NpyArray, NpyError, WeightsError, check_weights};
pub use cnnc_runtime::{Tensor, TensorMap};
use std::fmt;
use std::path::{Path, PathBuf};
use thiserror::Error;

/// The key of the input gradient in the map [`grad`] returns (and `cnnc grad` saves).
/// Parameter names always contain a dot (`c1.weight`), so it cannot clash with one.
pub const INPUT_KEY: &str = "input";

/// How many images `cnnc run` lists the top classes of.
pub const MAX_LISTED_IMAGES: usize = 8;

/// The JIT's kernel mode (portable Cranelift loops, or native around the kernels).
pub use cnnc_jit::Mode as JitMode;

/// Where a model is run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Backend {
    /// `cnnc-interp`: plain loops, f32 storage with f64 accumulation.
    #[default]
    Interp,
    /// `cnnc-jit`: the plan compiled to machine code for the batch, in a kernel mode
    /// (portable Cranelift loops, or native around the `cnnc-kernels` microkernels).
    Jit(cnnc_jit::Mode),
}

impl Backend {
    /// The `--backend` name.
    pub fn name(self) -> &'static str {
        match self {
            Backend::Interp => "interp",
            Backend::Jit(_) => "jit",
        }
    }
}

/// The losses of `cnnc grad` (and training): the IR's, all means over the batch (PyTorch's
/// `reduction="mean"`). `ce` and both hinge forms take class labels, the others a tensor shaped
/// like the output.
pub use cnnc_ir::{HingeForm, Loss};

/// The targets of a loss, checked against the model's output and the batch.
#[derive(Clone, Debug, PartialEq)]
pub enum Target {
    /// One class index per image, each in `0..classes`.
    Classes(Vec<usize>),
    /// A tensor of the output's full shape `[N, ...]`.
    Values(Tensor),
}

/// Which exit code an error deserves: the CLI exits 1 for data that does not fit (as for a
/// source with errors) and 2 when the command could not run at all.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// The files were read but do not fit the model, or are not valid `.npy` / safetensors.
    Data,
    /// A file could not be read or written.
    Io,
    /// The arguments do not make sense together.
    Usage,
    /// The user stopped it (Ctrl-C).
    Cancelled,
}

/// Why a model could not be run on the given files.
#[derive(Debug, Error)]
pub enum ExecError {
    /// An `.npy` file could not be read, is not a valid `.npy` array, holds the wrong kind of
    /// values, or could not be written.
    #[error("{0}")]
    Npy(#[from] NpyError),
    /// A weights file could not be read or written, or is not valid safetensors of F32.
    #[error("{0}")]
    WeightsFile(WeightsError),
    /// The weights were read but do not fit the model: every problem, in the runtime's order.
    #[error(
        "weights file `{}` does not fit model `{model}`: {}",
        .path.display(),
        count(.problems.len(), "problem")
    )]
    Weights { path: PathBuf, model: String, problems: Vec<WeightsError> },
    /// The input batch does not have the shape the model takes.
    #[error(
        "input `{}` has shape {found:?}, but model `{model}` takes [N, {}] (a batch of N >= 1)",
        .path.display(),
        join(.expected)
    )]
    InputShape {
        path: PathBuf,
        model: String,
        expected: Vec<usize>,
        found: Vec<usize>,
        /// Whether the model lowers at the input's per-image shape, when that was checked
        /// ([`check_input_size`]); it decides between suggesting `--shape` and explaining why not.
        at_input_size: Option<SizeCheck>,
    },
    /// `cnnc run` and `cnnc grad` feed one input and read one output.
    #[error("model `{model}` has {inputs} inputs and {outputs} outputs; cnnc runs models with one of each")]
    Arity { model: String, inputs: usize, outputs: usize },
    /// A class loss on a model whose output is not a vector of class scores.
    #[error(
        "loss `{}` needs class scores, an output of shape [classes], but model `{model}` outputs {output:?}",
        .loss.name()
    )]
    NotAClassifier { loss: Loss, model: String, output: Vec<usize> },
    /// Targets of the wrong shape (class labels must be `[N]`, value targets the output's
    /// full shape).
    #[error(
        "target `{}` has shape {found:?}, but loss `{}` on this batch needs {expected:?} ({what})",
        .path.display(),
        .loss.name()
    )]
    TargetShape { path: PathBuf, loss: Loss, expected: Vec<usize>, found: Vec<usize>, what: &'static str },
    /// A class label outside `0..classes`.
    #[error(
        "target `{}`: label {label} of sample {sample} is out of range for {classes} classes (0 to {})",
        .path.display(),
        .classes - 1
    )]
    TargetOutOfRange { path: PathBuf, sample: usize, label: i64, classes: usize },
    /// `--train` on a model with dropout, without a seed for the masks.
    #[error("model `{model}` has no layer `{layer}`")]
    UnknownLayer { layer: String, model: String, suggestion: Option<String> },
    #[error("--train runs dropout in training mode, and the dropout masks need a seed: pass `--seed N`")]
    DropoutNeedsSeed { layers: Vec<String> },
    /// The back end refused to run (a training-mode batch norm with a single value per
    /// channel, say).
    #[error("{0}")]
    Backend(InterpError),
    /// The passes or the training transform could not run (a loss on a model with several
    /// outputs, say).
    #[error("{0}")]
    Passes(cnnc_passes::PassError),
    /// The JIT could not compile or run the plan.
    #[error("{0}")]
    Jit(cnnc_jit::JitError),
    /// A data set that cannot be read, or does not fit the model.
    #[error("{0}")]
    Data(#[from] cnnc_data::DataError),
    /// A check before allocating or writing anything failed: not enough memory for the task,
    /// or an output that would overwrite an input.
    #[error("{0}")]
    Preflight(#[from] PreflightError),
    /// Memory ran out while initialising parameters, despite the estimate.
    #[error("{0}")]
    OutOfMemory(#[from] InitError),
    /// The caller's cancel token was set (Ctrl-C): the interpreter or the JIT stopped between
    /// nodes or kernel steps, before anything was written. The back ends' own `Cancelled`
    /// errors arrive as this one.
    #[error("cancelled")]
    Cancelled,
}

impl ExecError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            ExecError::Npy(NpyError::Read { .. } | NpyError::Write { .. }) => ErrorKind::Io,
            ExecError::Npy(
                NpyError::Format { .. }
                | NpyError::Kind { .. }
                | NpyError::ShapeMismatch { .. }
                | NpyError::TooLarge { .. }
                | NpyError::Allocation { .. },
            ) => ErrorKind::Data,
            ExecError::WeightsFile(WeightsError::Read { .. } | WeightsError::Write { .. }) => ErrorKind::Io,
            ExecError::WeightsFile(_) => ErrorKind::Data,
            ExecError::DropoutNeedsSeed { .. }
            | ExecError::UnknownLayer { .. }
            | ExecError::Preflight(
                PreflightError::OutputIsInput { .. }
                | PreflightError::SameOutput { .. }
                | PreflightError::TwoOnStdout { .. },
            ) => ErrorKind::Usage,
            ExecError::Preflight(PreflightError::Memory { .. }) | ExecError::OutOfMemory(_) => ErrorKind::Data,
            ExecError::Weights { .. }
            | ExecError::InputShape { .. }
            | ExecError::Arity { .. }
            | ExecError::NotAClassifier { .. }
            | ExecError::TargetShape { .. }
            | ExecError::TargetOutOfRange { .. }
            | ExecError::Backend(_)
            | ExecError::Jit(_)
            | ExecError::Passes(_) => ErrorKind::Data,
            ExecError::Data(cnnc_data::DataError::Io { .. }) => ErrorKind::Io,
            ExecError::Data(_) => ErrorKind::Data,
            ExecError::Cancelled => ErrorKind::Cancelled,
        }
    }

    /// The individual problems behind a summary message (every weights mismatch), one a line.
    pub fn details(&self) -> Vec<String> {
        match self {
            ExecError::Weights { problems, .. } => problems.iter().map(ToString::to_string).collect(),
            ExecError::DropoutNeedsSeed { layers } => {
                vec![format!("dropout layers: {}", layers.join(", "))]
            }
            _ => Vec::new(),
        }
    }

    /// What to do about it, when there is something specific to say.
    pub fn hint(&self) -> Option<String> {
        match self {
            ExecError::Weights { problems, .. } => Some(weights_hint(problems)),
            ExecError::InputShape { expected, found, at_input_size, .. } => {
                input_hint(expected, found, at_input_size.as_ref())
            }
            ExecError::NotAClassifier { .. } => {
                Some("use `--loss mse`, `l1` or `huber` with a target shaped like the output".into())
            }
            ExecError::TargetShape { loss, found, expected, .. } => Some(if loss.takes_labels() {
                if found.len() == 2 && found.get(1) == expected.first() {
                    "class targets are indices, not one-hot rows: use `y.argmax(1)`".into()
                } else {
                    "save one class index per image: `np.save(path, y.reshape(-1).astype(np.int64))`".into()
                }
            } else {
                "the target of `mse`, `l1` and `huber` has the output's shape, batch first".into()
            }),
            ExecError::TargetOutOfRange { label, .. } if *label < 0 => Some(
                "labels are class indices from 0; cnnc has no `ignore_index`: drop such samples from the batch".into(),
            ),
            ExecError::TargetOutOfRange { classes, .. } => Some(format!(
                "the model's output has {classes} classes; check the labels, or the model's number of classes"
            )),
            ExecError::Backend(InterpError::BatchNormTooFewValues { .. }) => Some(
                "in training mode batch norm needs several values per channel: use a larger batch, or drop --train"
                    .into(),
            ),
            ExecError::UnknownLayer { suggestion: Some(name), .. } => Some(format!("did you mean `{name}`?")),
            ExecError::UnknownLayer { suggestion: None, model, .. } => {
                Some(format!("`cnnc summary` lists the layers of `{model}` by name"))
            }
            ExecError::Arity { .. } => Some("multi-input models can be run from Rust through cnnc-interp".into()),
            ExecError::Preflight(PreflightError::Memory { .. }) | ExecError::OutOfMemory(_) => Some(MEMORY_HINT.into()),
            ExecError::Npy(NpyError::TooLarge { .. }) | ExecError::WeightsFile(WeightsError::TooLarge { .. }) => Some(
                "is it the right file? If the machine has the memory, raise the limit with `--memory-limit SIZE` (or \
                 CNNC_MEMORY_LIMIT)"
                    .into(),
            ),
            ExecError::Preflight(PreflightError::OutputIsInput { .. }) => {
                Some("write the output to another file (copy the input first to replace it)".into())
            }
            ExecError::Npy(_)
            | ExecError::WeightsFile(_)
            | ExecError::Preflight(PreflightError::SameOutput { .. } | PreflightError::TwoOnStdout { .. })
            | ExecError::DropoutNeedsSeed { .. }
            | ExecError::Backend(_)
            | ExecError::Jit(_)
            | ExecError::Passes(_)
            | ExecError::Cancelled => None,
            ExecError::Data(e) => e.hint(),
        }
    }
}

/// What to do when a model needs more memory than there is.
const MEMORY_HINT: &str = "make the model or its input smaller (`--shape`, `--set`) or the batch; if the estimate is \
                           wrong for this machine, raise the limit with `--memory-limit SIZE` (or CNNC_MEMORY_LIMIT)";

impl From<WeightsError> for ExecError {
    fn from(e: WeightsError) -> ExecError {
        ExecError::WeightsFile(e)
    }
}

impl From<InterpError> for ExecError {
    fn from(e: InterpError) -> ExecError {
        match e {
            InterpError::Cancelled => ExecError::Cancelled,
            e => ExecError::Backend(e),
        }
    }
}

impl From<cnnc_jit::JitError> for ExecError {
    fn from(e: cnnc_jit::JitError) -> ExecError {
        match e {
            cnnc_jit::JitError::Cancelled => ExecError::Cancelled,
            e => ExecError::Jit(e),
        }
    }
}

/// `error: ...`, then each detail as `  - ...` and the hint as `  = help: ...`, one
/// newline-terminated block for stderr; a cancelled command is the one line `cancelled`
/// (nothing was wrong with it).
pub fn render_exec_error(error: &ExecError) -> String {
    if let ExecError::Cancelled = error {
        return "cancelled\n".into();
    }
    let mut out = format!("error: {error}\n");
    for detail in error.details() {
        out.push_str(&format!("  - {detail}\n"));
    }
    if let Some(hint) = error.hint() {
        out.push_str(&format!("  = help: {hint}\n"));
    }
    out
}

fn weights_hint(problems: &[WeightsError]) -> String {
    let only_unexpected = problems.iter().all(|p| matches!(p, WeightsError::Unexpected { .. }));
    let prefixed =
        problems.iter().any(|p| matches!(p, WeightsError::Unexpected { name, .. } if name.starts_with("module.")));
    if prefixed {
        "the names start with `module.` (saved from nn.DataParallel): save `model.module.state_dict()` instead".into()
    } else if only_unexpected {
        "the file holds tensors the model does not have: is it the right model, or another `--model`? To use a \
         checkpoint that also holds other tensors (heads, optimiser state), pass `--allow-extra-weights`"
            .into()
    } else {
        "`cnnc summary FILE --json` lists every tensor the model needs; `cnnc init FILE -o W.safetensors` writes a \
         matching file"
            .into()
    }
}

fn input_hint(expected: &[usize], found: &[usize], at_input_size: Option<&SizeCheck>) -> Option<String> {
    let shape_arg = |dims: &[usize]| dims.iter().map(usize::to_string).collect::<Vec<_>>().join("x");
    if found == expected {
        return Some("the batch axis is missing: save `x[None]` (a batch of one) instead".into());
    }
    if found.len() != expected.len() + 1 || found.first() == Some(&0) {
        return Some(format!(
            "cnnc reads a batch first: [N, {}]{}",
            join(expected),
            if expected.len() == 3 { " (NCHW)" } else { "" }
        ));
    }
    let per_image = &found[1..];
    // NHWC data (TensorFlow's, or images straight from a decoder) holding what the model takes.
    if expected.len() == 3 && per_image == [expected[1], expected[2], expected[0]] && expected[0] != expected[2] {
        return Some("the data looks like NHWC; cnnc reads NCHW: save `x.transpose(0, 3, 1, 2)`".into());
    }
    // The same rank: the model may well run at this size, which `--shape` asks for.
    if per_image.len() == 1 || per_image.len() == 3 {
        let arg = shape_arg(per_image);
        return Some(if let Some(SizeCheck { lowers: false, source }) = at_input_size {
            let wanted = if expected.len() == 3 {
                let channels = match (expected[0], per_image[0]) {
                    (c, f) if c == f => String::new(),
                    (1, _) => " with 1 channel".to_owned(),
                    (c, _) => format!(" with {c} channels"),
                };
                format!("resize the images to {}x{}{channels}", expected[1], expected[2])
            } else {
                format!("the model needs {} features per sample", expected[0])
            };
            format!("the model does not fit a {arg} input (`cnnc check {source} --shape {arg}` shows why): {wanted}")
        } else {
            format!("to run the model at the input's size, pass `--shape {arg}`")
        });
    }
    None
}

/// Whether a model lowers at an input's size, and the source file that was tried.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SizeCheck {
    pub lowers: bool,
    /// The source's name, as `cnnc check` would be given it.
    pub source: String,
}

/// For an input of the wrong shape: lowers the model again at the input's per-image shape and
/// records whether that works, so the hint suggests `--shape` only when it would help. Other
/// errors pass through unchanged.
pub fn check_input_size(error: ExecError, file: &SourceFile, options: &LowerOptions) -> ExecError {
    match error {
        ExecError::InputShape { path, model, expected, found, at_input_size: None }
            if found.len() == expected.len() + 1 && (found.len() == 2 || found.len() == 4) =>
        {
            let options = LowerOptions { input_shape: Some(found[1..].to_vec()), ..options.clone() };
            let lowers = crate::lower_source(file, &options).is_ok();
            let check = SizeCheck { lowers, source: file.name.clone() };
            ExecError::InputShape { path, model, expected, found, at_input_size: Some(check) }
        }
        other => other,
    }
}

fn join(dims: &[usize]) -> String {
    dims.iter().map(usize::to_string).collect::<Vec<_>>().join(", ")
}

fn count(n: usize, what: &str) -> String {
    if n == 1 { format!("1 {what}") } else { format!("{n} {what}s") }
}

/// Something worth knowing that does not stop the command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ExecWarning {
    /// NaN or infinite values in an input, the weights or the targets: allowed, but they spread.
    NonFinite { what: String, nan: usize, infinite: usize },
    /// Cross-entropy applies its own log-softmax: on a model that ends in softmax it sees
    /// probabilities, not logits.
    SoftmaxBeforeCrossEntropy { model: String },
    /// The loss came out NaN or infinite.
    NonFiniteLoss { value: String },
    /// `--allow-extra-weights`: tensors of the weights file the model does not use, ignored.
    ExtraWeights { path: PathBuf, names: Vec<String> },
}

/// How many extra tensor names a warning lists before it only counts the rest.
const LISTED_EXTRAS: usize = 10;

impl fmt::Display for ExecWarning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExecWarning::NonFinite { what, nan, infinite } => {
                let mut parts = Vec::new();
                if *nan > 0 {
                    parts.push(format!("{nan} NaN"));
                }
                if *infinite > 0 {
                    parts.push(format!("{infinite} infinite"));
                }
                write!(
                    f,
                    "{what} holds {} {}; results will not be finite",
                    parts.join(" and "),
                    plural_values(nan + infinite)
                )
            }
            ExecWarning::SoftmaxBeforeCrossEntropy { model } => write!(
                f,
                "model `{model}` ends in softmax, and `ce` applies its own log-softmax: the loss sees probabilities, \
                 not logits (drop the final softmax to train with `ce`)"
            ),
            ExecWarning::NonFiniteLoss { value } => write!(f, "the loss is {value}"),
            ExecWarning::ExtraWeights { path, names } => {
                let listed: Vec<String> = names.iter().take(LISTED_EXTRAS).map(|n| format!("`{n}`")).collect();
                let more = names.len().saturating_sub(LISTED_EXTRAS);
                write!(
                    f,
                    "weights file `{}` holds {} the model does not use, ignored (--allow-extra-weights): {}{}",
                    path.display(),
                    count(names.len(), "tensor"),
                    listed.join(", "),
                    if more > 0 { format!(" and {more} more") } else { String::new() }
                )
            }
        }
    }
}

fn plural_values(n: usize) -> &'static str {
    if n == 1 { "value" } else { "values" }
}

fn non_finite(what: impl FnOnce() -> String, data: &[f32]) -> Option<ExecWarning> {
    let nan = data.iter().filter(|v| v.is_nan()).count();
    let infinite = data.iter().filter(|v| v.is_infinite()).count();
    (nan + infinite > 0).then(|| ExecWarning::NonFinite { what: what(), nan, infinite })
}

/// The one input node's shape (without the batch) and the one output node's, or why the model
/// cannot be run by `cnnc run` and `cnnc grad`.
pub(crate) fn io_shapes(graph: &Graph) -> Result<(&[usize], &[usize]), ExecError> {
    match (&graph.inputs[..], &graph.outputs[..]) {
        ([input], [output]) => Ok((&graph[*input].shape.0, &graph[*output].shape.0)),
        _ => Err(ExecError::Arity {
            model: graph.name.clone(),
            inputs: graph.inputs.len(),
            outputs: graph.outputs.len(),
        }),
    }
}

/// The shape of the model's output for one image (without the batch).
pub fn output_shape(graph: &Graph) -> Result<Vec<usize>, ExecError> {
    io_shapes(graph).map(|(_, output)| output.to_vec())
}

/// Every parameter and buffer of the model, initialised from `seed` as the course teaches:
/// He for layers feeding a ReLU-family activation, Xavier otherwise, zero biases, batch norm
/// as the identity. The same seed gives the same values on every machine. Memory for each
/// tensor is reserved before it is filled (check the whole with [`crate::check_memory`] first).
pub fn init_weights(graph: &Graph, seed: u64) -> Result<TensorMap, ExecError> {
    Ok(cnnc_runtime::try_init_params(graph, seed)?)
}

/// Saves weights (or gradients) as an F32 safetensors file, atomically.
pub fn save_tensors(path: &Path, tensors: &TensorMap) -> Result<(), ExecError> {
    cnnc_runtime::save_safetensors(path, tensors).map_err(ExecError::WeightsFile)
}

/// Writes a model's output batch as a float32 `.npy` file, atomically.
pub fn save_output(path: &Path, output: &Tensor) -> Result<(), ExecError> {
    cnnc_runtime::write_npy(path, output).map_err(ExecError::Npy)
}

/// How weights files are read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WeightsOptions {
    /// Tensors the model does not have are dropped with a warning instead of being an error
    /// (`--allow-extra-weights`: checkpoints that also hold heads or optimiser state).
    pub allow_extra: bool,
    /// Files larger than this many bytes are refused before their data is read.
    pub limit: u64,
}

/// Loads a safetensors weights file and checks it against the model: every missing, extra and
/// mis-shaped tensor is reported at once (extras only without `allow_extra`; with it they are
/// dropped and listed in one warning). PyTorch's `num_batches_tracked` entries are ignored.
pub fn load_weights(
    graph: &Graph,
    path: &Path,
    options: WeightsOptions,
) -> Result<(TensorMap, Vec<ExecWarning>), ExecError> {
    load_weights_with_metadata(graph, path, options).map(|(weights, _, warnings)| (weights, warnings))
}

/// [`load_weights`], with the file's metadata (`cnnc train` stores the input normalisation
/// there: see [`input_normalization`]).
pub fn load_weights_with_metadata(
    graph: &Graph,
    path: &Path,
    options: WeightsOptions,
) -> Result<(TensorMap, cnnc_runtime::Metadata, Vec<ExecWarning>), ExecError> {
    let (mut weights, metadata) = cnnc_runtime::load_safetensors_with_metadata_within(path, options.limit)?;
    let mut warnings = Vec::new();
    if let Err(mut problems) = check_weights(graph, &weights) {
        if options.allow_extra {
            let mut extras = Vec::new();
            problems.retain(|p| match p {
                WeightsError::Unexpected { name, .. } => {
                    extras.push(name.clone());
                    false
                }
                _ => true,
            });
            for name in &extras {
                weights.remove(name);
            }
            if !extras.is_empty() {
                warnings.push(ExecWarning::ExtraWeights { path: path.to_path_buf(), names: extras });
            }
        }
        if !problems.is_empty() {
            return Err(ExecError::Weights { path: path.to_path_buf(), model: graph.name.clone(), problems });
        }
    }
    for (name, tensor) in &weights {
        warnings.extend(non_finite(|| format!("weight `{name}` in `{}`", path.display()), &tensor.data));
    }
    Ok((weights, metadata, warnings))
}

/// The input normalisation a weights file's metadata records (`cnnc train` writes it), checked
/// against the model's input channels; `None` when the file has none.
pub fn input_normalization(
    graph: &Graph,
    path: &Path,
    metadata: &cnnc_runtime::Metadata,
) -> Result<Option<cnnc_data::Normalization>, ExecError> {
    let map = metadata.clone().into_iter().collect();
    let Some(normalization) = cnnc_data::Normalization::from_metadata(&map)? else { return Ok(None) };
    let (input, _) = io_shapes(graph)?;
    let channels = if input.len() == 3 { input[0] } else { input.iter().product() };
    let found = normalization.mean.len();
    if !((found == channels || found == 1) && normalization.std.len() == found) {
        return Err(ExecError::Data(cnnc_data::DataError::NormalizationChannels {
            name: path.display().to_string(),
            channels,
            found,
        }));
    }
    Ok(Some(normalization))
}

/// Normalises a raw input batch in place as training did (`x * scale - mean) / std` per
/// channel, or per feature for a flat model).
pub fn normalize_input(normalization: &cnnc_data::Normalization, input: &mut Tensor) {
    let shape = match input.shape[1..] {
        [c, h, w] => [c, h, w],
        ref flat => [flat.iter().product(), 1, 1],
    };
    let per = shape.iter().product::<usize>().max(1);
    for image in input.data.chunks_mut(per) {
        normalization.apply(image, shape);
    }
}

/// Reads an input batch (float32 or float64 `.npy`, at most `budget` bytes) and checks it is
/// `[N] ++ the model's input shape` with N >= 1.
pub fn load_input(graph: &Graph, path: &Path, budget: &MemoryBudget) -> Result<(Tensor, Vec<ExecWarning>), ExecError> {
    let (expected, _) = io_shapes(graph)?;
    let input = cnnc_runtime::read_npy_f32_within(path, budget.bytes)?;
    let fits = input.shape.len() == expected.len() + 1 && input.shape[0] >= 1 && input.shape[1..] == *expected;
    if !fits {
        return Err(ExecError::InputShape {
            path: path.to_path_buf(),
            model: graph.name.clone(),
            expected: expected.to_vec(),
            found: input.shape.clone(),
            at_input_size: None,
        });
    }
    let warnings = non_finite(|| format!("input `{}`", path.display()), &input.data).into_iter().collect();
    Ok((input, warnings))
}

/// The number of classes when the output is a vector of class scores: `[C]`, or `[C, 1, 1]`
/// (a global pool's output), with C >= 1.
/// The number of classes of a classifier (a model whose one output is a vector of at least two
/// class scores), `None` for other models.
pub fn classes_of(graph: &Graph) -> Option<usize> {
    match &graph.outputs[..] {
        [output] => class_count(&graph[*output].shape.0),
        _ => None,
    }
}

pub(crate) fn class_count(output: &[usize]) -> Option<usize> {
    match output {
        [c] => Some(*c),
        [c, 1, 1] => Some(*c),
        _ => None,
    }
}

/// Reads the targets of `loss` for a batch of `batch` images and checks them against the
/// model's output: class labels (int32 or int64, shape `[N]`, each in `0..classes`) for `ce`
/// and `hinge`, a float tensor of the output's full shape otherwise.
pub fn load_target(
    graph: &Graph,
    path: &Path,
    loss: Loss,
    batch: usize,
    budget: &MemoryBudget,
) -> Result<(Target, Vec<ExecWarning>), ExecError> {
    let (_, output) = io_shapes(graph)?;
    let mut warnings = Vec::new();
    if loss.takes_labels() {
        let classes = class_count(output).ok_or_else(|| ExecError::NotAClassifier {
            loss,
            model: graph.name.clone(),
            output: output.to_vec(),
        })?;
        if matches!(loss, Loss::CrossEntropy) && ends_in_softmax(graph) {
            warnings.push(ExecWarning::SoftmaxBeforeCrossEntropy { model: graph.name.clone() });
        }
        let (shape, labels) = cnnc_runtime::read_npy_labels_within(path, budget.bytes)?;
        if shape != [batch] {
            return Err(ExecError::TargetShape {
                path: path.to_path_buf(),
                loss,
                expected: vec![batch],
                found: shape,
                what: "one class index per image",
            });
        }
        let mut targets = Vec::with_capacity(labels.len());
        for (sample, &label) in labels.iter().enumerate() {
            match usize::try_from(label) {
                Ok(t) if t < classes => targets.push(t),
                _ => {
                    return Err(ExecError::TargetOutOfRange { path: path.to_path_buf(), sample, label, classes });
                }
            }
        }
        Ok((Target::Classes(targets), warnings))
    } else {
        let target = match cnnc_runtime::read_npy_within(path, budget.bytes).map_err(ExecError::Npy)? {
            NpyArray::F32(t) => t,
            NpyArray::I64 { .. } | NpyArray::U8 { .. } => {
                return Err(ExecError::Npy(NpyError::Kind {
                    path: path.to_path_buf(),
                    expected: "floating-point",
                    found: "integer",
                    hint: " (the target of mse, l1 and huber is a tensor shaped like the output; class labels go \
                           with `--loss ce`, `hinge` or `multi-margin`)",
                }));
            }
        };
        let mut expected = vec![batch];
        expected.extend_from_slice(output);
        if target.shape != expected {
            return Err(ExecError::TargetShape {
                path: path.to_path_buf(),
                loss,
                expected,
                found: target.shape.clone(),
                what: "the output's shape, batch first",
            });
        }
        warnings.extend(non_finite(|| format!("target `{}`", path.display()), &target.data));
        Ok((Target::Values(target), warnings))
    }
}

/// Whether the model's output is a softmax (its values are probabilities already).
pub fn ends_in_softmax(graph: &Graph) -> bool {
    graph.outputs.len() == 1 && matches!(graph[graph.outputs[0]].op, Op::Softmax)
}

/// The dropout layers that drop anything (p > 0), by name.
fn dropout_layers(graph: &Graph) -> Vec<String> {
    graph.iter().filter(|(_, n)| matches!(n.op, Op::Dropout { p } if p > 0.0)).map(|(_, n)| n.name.clone()).collect()
}

/// How `cnnc run` and `cnnc grad` treat batch norm and dropout: as deployed, or as in training.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExecMode {
    /// Batch norm on batch statistics (the running statistics updated) and dropout active
    /// (`--train`).
    pub train: bool,
    /// The seed of the dropout masks.
    pub seed: u64,
}

/// The mode of `--train` (or not): inference, or training with dropout masks drawn from
/// `seed`. A model with dropout needs the seed.
pub fn exec_mode(graph: &Graph, train: bool, seed: Option<u64>) -> Result<ExecMode, ExecError> {
    if !train {
        return Ok(ExecMode { train: false, seed: 0 });
    }
    let layers = dropout_layers(graph);
    match seed {
        Some(seed) => Ok(ExecMode { train: true, seed }),
        None if layers.is_empty() => Ok(ExecMode { train: true, seed: 0 }),
        None => Err(ExecError::DropoutNeedsSeed { layers }),
    }
}

/// What [`run`] computed.
#[derive(Clone, Debug)]
pub struct RunOutcome {
    /// The model's output, batch first.
    pub output: Tensor,
    /// In training mode, the full state after the step: the parameters given, with each
    /// batch norm's running statistics updated from this batch (`--state-out`).
    pub state: Option<TensorMap>,
    /// In training mode, the number of batch-norm layers that used batch statistics.
    pub batch_norms_trained: usize,
    /// With `dump`: each layer's output (batch first), by layer name; see [`dump_key`].
    pub dump: Option<TensorMap>,
    /// What the passes did, as `note:` lines, when passes ran.
    pub pass_notes: Vec<String>,
}

/// Runs the model forward on a checked input batch: as deployed, or with `mode.train` as in
/// training (batch statistics, dropout masks from `mode.seed`; the updated running statistics
/// come back in [`RunOutcome::state`]). With `passes`, the optimised graph runs (in training
/// mode, the optimised forward pass of training). With `dump`, every layer's output is kept:
/// in an optimised graph, a fused node's output is the last layer it absorbed (`conv1 <- bn1,
/// relu1` gives `relu1`), and the layers fused away have none. With `cancel`, the back end
/// checks it between nodes (the JIT: kernel steps) and stops with [`ExecError::Cancelled`].
#[allow(clippy::too_many_arguments)] // each is one of `cnnc run`'s independent inputs
pub fn run(
    graph: &Graph,
    params: &TensorMap,
    input: &Tensor,
    mode: ExecMode,
    passes: &[cnnc_passes::Pass],
    dump: bool,
    backend: Backend,
    cancel: Option<&Cancel>,
) -> Result<RunOutcome, ExecError> {
    io_shapes(graph)?;
    let pass_mode = if mode.train { cnnc_passes::Mode::Training } else { cnnc_passes::Mode::Inference };
    if let Backend::Jit(jit_mode) = backend {
        // The JIT runs a plan: the optimised graph (or, without passes, the source graph's
        // own plan), with every dumped value kept to the end as an extra output.
        let opt = crate::optimize::optimize_forward(graph, None, passes, pass_mode).map_err(ExecError::Passes)?;
        let notes = if passes.is_empty() { Vec::new() } else { crate::optimize::pass_report(&opt) };
        let taps = taps_by_origin(graph, opt.graph(), &opt.origins);
        let tapped: Vec<(NodeId, NodeId)> =
            graph.ids().filter_map(|id| taps[id.index()].map(|node| (id, node))).collect();
        let plan = if dump {
            cnnc_passes::plan::with_taps(&opt.plan, &tapped.iter().map(|&(_, node)| node).collect::<Vec<_>>())
        } else {
            opt.plan.clone()
        };
        // The JIT takes checkpoint weights and applies the plan's transforms (BN folding,
        // packing) itself.
        let model = compile(&plan, input.shape[0], jit_mode, params, cancel)?;
        let args = cnnc_jit::StepArgs { lr: 0.0, step: 1, seed: mode.seed };
        let result = model.run(std::slice::from_ref(input), &args)?;
        let mut outputs = result.outputs.into_iter();
        let output = outputs.next().ok_or_else(|| cnnc_jit::JitError::Usage("the plan has no output".into()))?;
        // The model's own outputs come first (one of them taken above), then the taps.
        let models = opt.plan.outputs.iter().filter(|r| matches!(r, OutputRole::Model(_))).count();
        let tap_values: Vec<Tensor> = outputs.skip(models.saturating_sub(1)).collect();
        let dump = dump.then(|| {
            let mut map = TensorMap::new();
            for ((layer, _), tensor) in tapped.iter().zip(tap_values) {
                map.insert(dump_key(&map, &graph[*layer].name), tensor);
            }
            map
        });
        let trained = running_statistics(opt.graph());
        let state = mode.train.then(|| updated_state(params, &model.state(), &trained));
        return Ok(RunOutcome { output, state, batch_norms_trained: trained.len(), dump, pass_notes: notes });
    }
    // The graph that runs, its weights, what its outputs are (the model's first), and for
    // each source layer the node of it that holds the layer's output.
    let (runs, weights, taps, pass_notes): (std::borrow::Cow<'_, Graph>, std::borrow::Cow<'_, TensorMap>, _, _) =
        if !passes.is_empty() {
            // Weights were checked against the source graph; the passes rewrite them to fit the
            // optimised one (BN folded into the conv before it).
            let opt =
                crate::optimize::optimize_forward(graph, Some(params), passes, pass_mode).map_err(ExecError::Passes)?;
            let taps = taps_by_origin(graph, opt.graph(), &opt.origins);
            let notes = crate::optimize::pass_report(&opt);
            let weights = opt.weights.clone().unwrap_or_else(|| params.clone());
            (std::borrow::Cow::Owned(opt.plan.graph), std::borrow::Cow::Owned(weights), taps, notes)
        } else if mode.train {
            let t = cnnc_passes::training_forward(graph).map_err(ExecError::Passes)?;
            (std::borrow::Cow::Owned(t.graph), std::borrow::Cow::Borrowed(params), t.values, Vec::new())
        } else {
            let taps = graph.ids().map(Some).collect();
            (std::borrow::Cow::Borrowed(graph), std::borrow::Cow::Borrowed(params), taps, Vec::new())
        };
    let mut state = weights.into_owned();
    let mut options = Options::new().with_seed(mode.seed);
    if dump {
        options = options.keeping_values();
    }
    if let Some(cancel) = cancel {
        options = options.with_cancel(cancel.clone());
    }
    let result = cnnc_interp::run(&runs, &mut state, std::slice::from_ref(input), &options)?;
    let output = result.output(0).expect("a model's first output is a value");
    let dump = dump.then(|| dump_values(graph, &taps, |id| result.value(id).map(Tensor::from_buf)));
    let trained = running_statistics(&runs);
    let state = mode.train.then(|| updated_state(params, &state, &trained));
    Ok(RunOutcome { output, state, batch_norms_trained: trained.len(), dump, pass_notes })
}

/// `plan` compiled by the JIT for `batch` samples, with `weights` loaded: checkpoint weights
/// (the source graph's names and layouts), to which the JIT applies the plan's transforms.
/// With `cancel`, compiling and every run of the model check it (between kernel steps).
pub fn compile(
    plan: &cnnc_ir::plan::Plan,
    batch: usize,
    mode: cnnc_jit::Mode,
    weights: &TensorMap,
    cancel: Option<&Cancel>,
) -> Result<cnnc_jit::CompiledModel, ExecError> {
    let mut options = cnnc_jit::Options::new(batch).with_mode(mode);
    if let Some(cancel) = cancel {
        options = options.with_cancel(cancel.clone());
    }
    let model = cnnc_jit::CompiledModel::compile(plan, &options)?;
    model.load_weights(weights)?;
    Ok(model)
}

/// For each source layer, the node of an optimised graph holding the layer's output: the last
/// node whose latest origin is the layer and whose shape is the layer's (so a batch norm's statistics or a dropout mask, made from the layer too, are
/// passed over). Later nodes win: a reorder after its producer holds the same logical value.
fn taps_by_origin(source: &Graph, optimised: &Graph, origins: &[Vec<NodeId>]) -> Vec<Option<NodeId>> {
    let mut taps = vec![None; source.len()];
    for (id, node) in optimised.iter() {
        let Some(&layer) = origins.get(id.index()).and_then(|o| o.iter().max()) else { continue };
        if node.shape == source[layer].shape && !is_effect(&node.op) {
            taps[layer.index()] = Some(id);
        }
    }
    taps
}

/// Whether a node writes state instead of producing a value.
fn is_effect(op: &Op) -> bool {
    matches!(op, Op::Train(TrainOp::BnRunningUpdate { .. } | TrainOp::Update(_)))
}

/// The batch-norm layers whose running statistics a graph updates, by layer name.
fn running_statistics(graph: &Graph) -> Vec<String> {
    graph
        .iter()
        .filter(|(_, n)| matches!(n.op, Op::Train(TrainOp::BnRunningUpdate { .. })))
        .map(|(_, n)| n.name.clone())
        .collect()
}

/// The parameters given, with the running statistics the step wrote (`after` holds them).
fn updated_state(params: &TensorMap, after: &TensorMap, trained: &[String]) -> TensorMap {
    let mut state = params.clone();
    for layer in trained {
        for suffix in ["running_mean", "running_var"] {
            let name = format!("{layer}.{suffix}");
            if let Some(value) = after.get(&name) {
                state.insert(name, value.clone());
            }
        }
    }
    state
}

/// The key of a tensor in a dump: the name itself, or `name#k` for the `k`-th repeat of a
/// name already taken (loop bodies without labels repeat their layers' names).
pub fn dump_key(dump: &TensorMap, name: &str) -> String {
    if !dump.contains_key(name) {
        return name.to_string();
    }
    (1..).map(|k| format!("{name}#{k}")).find(|key| !dump.contains_key(key)).expect("some suffix is free")
}

/// Each source layer's output that `value` can give, by layer name, in layer order.
fn dump_values(graph: &Graph, taps: &[Option<NodeId>], value: impl Fn(NodeId) -> Option<Tensor>) -> TensorMap {
    let mut dump = TensorMap::new();
    for (id, node) in graph.iter() {
        if let Some(tensor) = taps[id.index()].and_then(&value) {
            dump.insert(dump_key(&dump, &node.name), tensor);
        }
    }
    dump
}

/// What [`grad`] computed.
#[derive(Clone, Debug)]
pub struct GradOutcome {
    /// The batch-mean loss.
    pub loss: f64,
    /// The model's output, batch first.
    pub output: Tensor,
    /// d loss / d every trainable parameter (by its weights name) and d loss / d input
    /// (under [`INPUT_KEY`], the input's full shape).
    pub grads: TensorMap,
    /// In training mode, the full state after the step: the parameters given, with each
    /// batch norm's running statistics updated from this batch (`--state-out`).
    pub state: Option<TensorMap>,
    /// In training mode, the number of batch-norm layers that used batch statistics.
    pub batch_norms_trained: usize,
    /// With `dump`: each layer's output under its name, the loss's gradient with respect to
    /// it under `<layer>.grad`, and each parameter's under `<parameter>.grad`.
    pub dump: Option<TensorMap>,
    pub warnings: Vec<ExecWarning>,
}

/// The loss of the model's output on a checked batch and its gradient with respect to every
/// trainable parameter and the input; with `dump`, every layer's output and gradient too.
/// With `cancel`, as [`run`].
#[allow(clippy::too_many_arguments)] // each is one of `cnnc grad`'s independent inputs
pub fn grad(
    graph: &Graph,
    params: &TensorMap,
    input: &Tensor,
    target: &Target,
    loss: Loss,
    mode: ExecMode,
    dump: bool,
    backend: Backend,
    cancel: Option<&Cancel>,
) -> Result<GradOutcome, ExecError> {
    io_shapes(graph)?;
    let options = cnnc_passes::TrainingOptions {
        batch_stats: mode.train,
        input_grads: true,
        ..cnnc_passes::TrainingOptions::new(loss)
    };
    let training = cnnc_passes::training_graph(graph, &options).map_err(ExecError::Passes)?;
    let target = match target {
        Target::Classes(labels) => {
            Tensor { shape: vec![labels.len()], data: labels.iter().map(|&l| l as f32).collect() }
        }
        Target::Values(t) => t.clone(),
    };
    match backend {
        Backend::Jit(jit_mode) => {
            grad_on_jit(graph, params, input, target, &training, &options, mode, dump, jit_mode, cancel)
        }
        Backend::Interp => {
            let mut state = params.clone();
            let inputs = [input.clone(), target];
            let mut run_options = Options::new().with_seed(mode.seed);
            if dump {
                run_options = run_options.keeping_values();
            }
            if let Some(cancel) = cancel {
                run_options = run_options.with_cancel(cancel.clone());
            }
            let result = cnnc_interp::run(&training.graph, &mut state, &inputs, &run_options)?;
            let g = cnnc_interp::gradients::<Tensor>(&training.outputs, &result);
            let value = g.loss.expect("a training graph computes its loss");
            let output = g.outputs.into_iter().next().expect("the model has one output");
            let mut grads: TensorMap = g.params;
            if let Some(input_grad) = g.inputs.into_values().next() {
                grads.insert(INPUT_KEY.to_owned(), input_grad);
            }
            let dump = dump.then(|| {
                let value_of = |id: NodeId| result.value(id).map(Tensor::from_buf);
                let mut dump = dump_values(graph, &training.values, value_of);
                for (id, node) in graph.iter() {
                    if let Some(tensor) = training.value_grads[id.index()].and_then(value_of) {
                        dump.insert(dump_key(&dump, &format!("{}.grad", node.name)), tensor);
                    }
                }
                for (name, tensor) in grads.iter().filter(|(name, _)| *name != INPUT_KEY) {
                    dump.insert(dump_key(&dump, &format!("{name}.grad")), tensor.clone());
                }
                dump
            });
            let trained = running_statistics(&training.graph);
            let state = mode.train.then(|| updated_state(params, &state, &trained));
            let warnings = if value.is_finite() {
                Vec::new()
            } else {
                vec![ExecWarning::NonFiniteLoss { value: value.to_string() }]
            };
            Ok(GradOutcome { loss: value, output, grads, state, batch_norms_trained: trained.len(), dump, warnings })
        }
    }
}

/// [`grad`] on the JIT: the optimised training plan; with `dump`, the training graph's own
/// plan (no passes, so that every layer's value and gradient is a node) with each of them
/// kept to the end as an extra output.
#[allow(clippy::too_many_arguments)] // grad's arguments, resolved
fn grad_on_jit(
    graph: &Graph,
    params: &TensorMap,
    input: &Tensor,
    target: Tensor,
    training: &cnnc_passes::TrainingGraph,
    options: &cnnc_passes::TrainingOptions,
    mode: ExecMode,
    dump: bool,
    jit_mode: cnnc_jit::Mode,
    cancel: Option<&Cancel>,
) -> Result<GradOutcome, ExecError> {
    let batch = input.shape[0];
    // Per tap: the source layer and whether it is the layer's gradient.
    let mut taps: Vec<(NodeId, bool, NodeId)> = Vec::new();
    let plan = if dump {
        for (id, _) in graph.iter() {
            taps.extend(training.values[id.index()].map(|node| (id, false, node)));
        }
        for (id, _) in graph.iter() {
            taps.extend(training.value_grads[id.index()].map(|node| (id, true, node)));
        }
        let own = cnnc_passes::plan::build(
            training.graph.clone(),
            training.outputs.clone(),
            Vec::new(),
            &cnnc_passes::PlanOptions::default(),
        );
        let nodes: Vec<NodeId> = taps.iter().map(|&(_, _, node)| node).collect();
        cnnc_passes::plan::with_taps(&own, &nodes)
    } else {
        let passes = cnnc_passes::PassOptions { verify: true, ..cnnc_passes::PassOptions::all() };
        cnnc_passes::optimize_training(graph, None, &passes, options).map_err(ExecError::Passes)?.plan
    };
    let model = compile(&plan, batch, jit_mode, params, cancel)?;
    let args = cnnc_jit::StepArgs { lr: 0.0, step: 1, seed: mode.seed };
    let result = model.run(&[input.clone(), target], &args)?;
    let value = result.loss.map_or(f64::NAN, f64::from);
    let mut outputs = result.outputs.into_iter();
    let output = outputs.next().ok_or_else(|| cnnc_jit::JitError::Usage("the plan has no model output".into()))?;
    let mut grads: TensorMap = result.param_grads;
    if let Some(input_grad) = result.input_grads.into_values().next() {
        grads.insert(INPUT_KEY.to_owned(), input_grad);
    }
    let dump = dump.then(|| {
        let mut map = TensorMap::new();
        for (&(layer, is_grad, _), tensor) in taps.iter().zip(outputs) {
            let name = &graph[layer].name;
            let key = if is_grad { format!("{name}.grad") } else { name.clone() };
            map.insert(dump_key(&map, &key), tensor);
        }
        for (name, tensor) in grads.iter().filter(|(name, _)| *name != INPUT_KEY) {
            map.insert(dump_key(&map, &format!("{name}.grad")), tensor.clone());
        }
        map
    });
    let trained = running_statistics(&plan.graph);
    let state = mode.train.then(|| updated_state(params, &model.state(), &trained));
    let warnings =
        if value.is_finite() { Vec::new() } else { vec![ExecWarning::NonFiniteLoss { value: value.to_string() }] };
    Ok(GradOutcome { loss: value, output, grads, state, batch_norms_trained: trained.len(), dump, warnings })
}

/// The output of layer `layer` for each image of a checked input batch, in inference mode: the
/// model cut after that layer (what comes after it is not run), for `cnnc features`.
pub fn features(
    graph: &Graph,
    params: &TensorMap,
    input: &Tensor,
    layer: &str,
    backend: Backend,
) -> Result<Tensor, ExecError> {
    io_shapes(graph)?;
    let Some((id, _)) = graph.iter().find(|(_, n)| n.name == layer) else {
        let names: Vec<&str> = graph.iter().map(|(_, n)| n.name.as_str()).collect();
        let suggestion = cnnc_diag::did_you_mean(layer, names.iter().copied()).map(str::to_owned);
        return Err(ExecError::UnknownLayer { layer: layer.to_owned(), model: graph.name.clone(), suggestion });
    };
    let mut cut = graph.clone();
    cut.outputs = vec![id];
    let pruned = crate::optimize::optimize(&cut, Some(params), &[cnnc_passes::Pass::Dce], cnnc_passes::Mode::Inference)
        .map_err(ExecError::Passes)?;
    let weights = pruned.weights.as_ref().unwrap_or(params);
    // Only the parameters of the layers before the cut are read; the rest are left out.
    let kept: TensorMap = pruned
        .graph()
        .named_params()
        .into_iter()
        .filter_map(|(name, _)| weights.get(&name).map(|t| (name, t.clone())))
        .collect();
    let mode = ExecMode { train: false, seed: 0 };
    Ok(run(pruned.graph(), &kept, input, mode, &[], false, backend, None)?.output)
}

/// One image's most likely classes, most likely first: `(class, probability)`.
pub type TopClasses = Vec<(usize, f64)>;

/// The `k` most likely classes of each image when the model is a classifier (its output is a
/// vector of at least two class scores): probabilities are the softmax of the scores, or the
/// scores themselves when the model ends in softmax. `None` for other models.
pub fn top_classes(graph: &Graph, output: &Tensor, k: usize) -> Option<Vec<TopClasses>> {
    let (_, shape) = io_shapes(graph).ok()?;
    let classes = match shape {
        [c] if *c >= 2 => *c,
        _ => return None,
    };
    if output.shape.len() != 2 || output.shape[1] != classes || output.data.len() != output.shape[0] * classes {
        return None;
    }
    let softmax = !ends_in_softmax(graph);
    let rows = output.data.chunks_exact(classes).map(|row| {
        let probs: Vec<f64> = if softmax {
            let max = row.iter().map(|&v| f64::from(v)).fold(f64::NEG_INFINITY, f64::max);
            let exps: Vec<f64> = row.iter().map(|&v| (f64::from(v) - max).exp()).collect();
            let sum: f64 = exps.iter().sum();
            exps.into_iter().map(|e| e / sum).collect()
        } else {
            row.iter().map(|&v| f64::from(v)).collect()
        };
        let mut order: Vec<usize> = (0..classes).collect();
        // Most likely first; NaN last; ties by class index (the sort is stable).
        order.sort_by(|&a, &b| {
            let (pa, pb) = (probs[a], probs[b]);
            pa.is_nan().cmp(&pb.is_nan()).then(pb.total_cmp(&pa))
        });
        order.into_iter().take(k).map(|c| (c, probs[c])).collect()
    });
    Some(rows.collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use cnnc_ir::{Fc, Shape};

    fn flat(classes: usize, softmax: bool) -> Graph {
        let mut g = Graph::new("flat");
        let x = g.add_input("x", Shape(vec![4]), Default::default()).unwrap();
        let (mut y, _) =
            g.add(Op::Fc(Fc { out_features: classes, bias: true }), vec![x], "fc", Default::default()).unwrap();
        if softmax {
            y = g.add(Op::Softmax, vec![y], "softmax", Default::default()).unwrap().0;
        }
        g.outputs.push(y);
        g
    }

    #[test]
    fn top_classes_sorts_and_applies_softmax_once() {
        let g = flat(3, false);
        let out = Tensor::from_vec(&[2, 3], vec![0.0, 2.0, 1.0, f32::NAN, 0.0, 0.0]).unwrap();
        let top = top_classes(&g, &out, 5).unwrap();
        assert_eq!(top[0].iter().map(|c| c.0).collect::<Vec<_>>(), [1, 2, 0]);
        let total: f64 = top[0].iter().map(|c| c.1).sum();
        assert!((total - 1.0).abs() < 1e-12);
        assert!(top[0][0].1 > 0.66 && top[0][0].1 < 0.67);
        // A NaN logit makes the whole row NaN; no panic, and still three entries.
        assert_eq!(top[1].len(), 3);
        let g = flat(3, true);
        let probs = Tensor::from_vec(&[1, 3], vec![0.2, 0.5, 0.3]).unwrap();
        let top = top_classes(&g, &probs, 2).unwrap();
        assert_eq!(top[0], vec![(1, f64::from(0.5f32)), (2, f64::from(0.3f32))]);
        // Not a classifier: a single score.
        assert!(top_classes(&flat(1, false), &Tensor::zeros(&[1, 1]), 5).is_none());
    }

    #[test]
    fn input_hints() {
        let hint = |e: &[usize], f: &[usize]| input_hint(e, f, None).unwrap_or_default();
        assert!(hint(&[3, 224, 224], &[2, 3, 64, 64]).contains("`--shape 3x64x64`"));
        assert!(hint(&[3, 32, 32], &[2, 32, 32, 3]).contains("NHWC"));
        assert!(hint(&[1, 32, 32], &[1, 32, 32]).contains("batch axis is missing"));
        assert!(hint(&[1, 32, 32], &[5, 1024]).contains("[N, 1, 32, 32] (NCHW)"));
        assert!(hint(&[784], &[5, 28, 28]).contains("[N, 784]"));
        assert!(hint(&[784], &[5, 100]).contains("`--shape 100`"));
        let check = SizeCheck { lowers: false, source: "m.cnn".into() };
        let no = input_hint(&[1, 32, 32], &[2, 1, 28, 28], Some(&check)).unwrap();
        assert_eq!(
            no,
            "the model does not fit a 1x28x28 input (`cnnc check m.cnn --shape 1x28x28` shows why): resize the \
             images to 32x32"
        );
    }

    #[test]
    fn errors_name_shapes_and_kinds() {
        let e = ExecError::InputShape {
            path: "x.npy".into(),
            model: "m".into(),
            expected: vec![1, 32, 32],
            found: vec![2, 1, 28, 28],
            at_input_size: None,
        };
        assert_eq!(
            e.to_string(),
            "input `x.npy` has shape [2, 1, 28, 28], but model `m` takes [N, 1, 32, 32] (a batch of N >= 1)"
        );
        assert_eq!(e.kind(), ErrorKind::Data);
        assert_eq!(
            render_exec_error(&e),
            "error: input `x.npy` has shape [2, 1, 28, 28], but model `m` takes [N, 1, 32, 32] (a batch of N >= 1)\n  \
             = help: to run the model at the input's size, pass `--shape 1x28x28`\n"
        );
        let e = ExecError::TargetOutOfRange { path: "t.npy".into(), sample: 3, label: 10, classes: 10 };
        assert_eq!(e.to_string(), "target `t.npy`: label 10 of sample 3 is out of range for 10 classes (0 to 9)");
        assert_eq!(ExecError::DropoutNeedsSeed { layers: vec!["drop".into()] }.kind(), ErrorKind::Usage);
    }

    #[test]
    fn training_options_need_a_seed_only_with_dropout() {
        let g = flat(3, false);
        assert_eq!(exec_mode(&g, false, None).unwrap(), ExecMode { train: false, seed: 0 });
        assert_eq!(exec_mode(&g, true, None).unwrap(), ExecMode { train: true, seed: 0 });
        let mut d = Graph::new("d");
        let x = d.add_input("x", Shape(vec![4]), Default::default()).unwrap();
        let (y, _) = d.add(Op::Dropout { p: 0.5 }, vec![x], "drop", Default::default()).unwrap();
        d.outputs.push(y);
        let e = exec_mode(&d, true, None).unwrap_err();
        assert!(matches!(&e, ExecError::DropoutNeedsSeed { layers } if layers == &["drop"]), "{e}");
        assert_eq!(exec_mode(&d, true, Some(3)).unwrap(), ExecMode { train: true, seed: 3 });
        assert_eq!(exec_mode(&d, false, None).unwrap(), ExecMode { train: false, seed: 0 });
    }
}
