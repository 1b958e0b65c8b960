//! `cnnc`, the command-line front door: argument parsing and exit codes around `cnnc-driver`.
//!
//! Exit codes: 0 success (warnings allowed), 1 the source has errors or the data does not fit
//! the model (rendered on stderr), 2 the command itself could not run (bad arguments, an
//! unreadable or unwritable file, unknown code).

mod bench;
mod demo;
mod emit;
mod explain;
mod repl;
mod tools;
mod train;
mod usage;

use clap::{Args, Parser, Subcommand, ValueEnum};
use cnnc_diag::{Diagnostic, SourceFile};
use cnnc_driver::execute::{self, INPUT_KEY, MAX_LISTED_IMAGES};
use cnnc_driver::{
    ErrorKind, ExecError, ExecWarning, GradReport, Mode, Options, Pass, PreflightError, Task, WeightsOptions,
    check_memory, check_models, check_output, check_outputs, lower_source, ok_line, path_text, render,
    render_exec_error, summarize, summarize_optimized, table, thousands, to_json,
};
use cnnc_driver::{MemoryBudget, is_stdout};
use cnnc_ir::Graph;
use std::ffi::OsString;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(Parser, Debug)]
#[command(
    name = "cnnc",
    version,
    about = "A compiler for convolutional neural networks written in .cnn",
    long_about = "A compiler for convolutional neural networks written in .cnn.\n\n\
                  With no command, runs `cnnc demo`: the digits network trained on the built-in digits. \
                  `cnnc FILE.cnn -o model.rs` (a file instead of a command) compiles a model to Rust, as \
                  `cnnc emit-rust` does.",
    override_usage = "cnnc [OPTIONS] [COMMAND]\n       cnnc [OPTIONS] FILE.cnn [-o OUT.rs] [EMIT-RUST OPTIONS]"
)]
struct Cli {
    /// When to colour diagnostics: `auto` colours them only when stderr is a terminal.
    #[arg(long, value_enum, default_value_t = Color::Auto, global = true)]
    color: Color,
    /// The memory `init`, `run` and `grad` may use, such as 8G or 512M: a model or a file that
    /// needs more is refused before anything is allocated. By default, what the machine has
    /// available (MemAvailable, within this process's cgroup limit).
    #[arg(long, value_name = "SIZE", value_parser = parse_memory_limit, env = "CNNC_MEMORY_LIMIT", global = true)]
    memory_limit: Option<u64>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Color {
    Auto,
    Always,
    Never,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Check every model of a file (or the one given with --model) and report its size.
    Check(ModelArgs),
    /// Print a model's per-layer table: output shapes, parameters, MACs, receptive fields, and
    /// what the optimisation passes make of it: fused layers and the memory plan.
    ///
    /// The fused groups and the memory plan (its workspace against the sum of the intermediate
    /// tensors it replaces, at batch 1) are those of the graph after every inference pass
    /// unless --passes or --train say otherwise; the rows and totals are the source model's.
    Summary {
        #[command(flatten)]
        model: ModelArgs,
        #[command(flatten)]
        passes: PassArgs,
        /// Print the summary as one line of JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Print a model's typed IR as text, after the passes chosen with --passes (none by default).
    ///
    /// Each node that absorbed layers lists them after its name
    /// (`// layer1.0.conv3 <- layer1.0.bn3, layer1.0.add1, layer1.0.relu3`); what the passes
    /// did goes to stderr.
    Ir {
        #[command(flatten)]
        model: ModelArgs,
        #[command(flatten)]
        passes: PassArgs,
    },
    /// Print a model's graph in Graphviz DOT (`cnnc dot m.cnn | dot -Tsvg > m.svg`).
    ///
    /// With --passes, the source graph is drawn with each group of layers the passes fused
    /// into one node boxed as a cluster.
    Dot {
        #[command(flatten)]
        model: ModelArgs,
        #[command(flatten)]
        passes: PassArgs,
    },
    /// Explain a diagnostic code such as E0301; with no code, list every code.
    Explain {
        /// The code, as printed in `error[E0301]`.
        code: Option<String>,
    },
    /// Write seeded initial weights (He/Xavier) to a safetensors file.
    ///
    /// He normal for layers followed by a ReLU-family activation, Xavier normal otherwise,
    /// biases 0, batch norm gamma 1 and beta 0 (running mean 0, variance 1). The same seed
    /// gives the same file on every machine.
    Init {
        #[command(flatten)]
        model: ModelArgs,
        /// The seed: the same seed gives the same weights, byte for byte.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Where to write the weights (safetensors, PyTorch state_dict names); `-` for standard
        /// output.
        #[arg(short, long, value_name = "W.safetensors")]
        output: PathBuf,
    },
    /// Run a model on a batch of inputs (.npy) and print the output's shape and top-5 classes.
    ///
    /// The input is float32 (or float64) of shape [N, C, H, W], any batch size N. The output,
    /// batch first, goes to -o; for a classifier (an output of shape [classes]) the top-5
    /// classes of each of the first 8 images are printed with their probabilities.
    Run(RunArgs),
    /// Print a batch's loss and write its gradients w.r.t. every parameter and the input.
    ///
    /// The loss is the mean over the batch. The gradient file holds every trainable parameter
    /// under its weights name, and `input`.
    Grad(GradArgs),
    /// Check a model's backward pass against central finite differences on random data: the
    /// worst relative error of each parameter tensor's gradient (and the input's).
    ///
    /// Exit 1 when a gradient is wrong (a relative error of 1e-3 or more).
    Gradcheck(tools::GradcheckArgs),
    /// Train a model on a data set: the built-in digits by default, or MNIST-style IDX files,
    /// CIFAR-10 binary batches or .npy pairs.
    ///
    /// A progress bar shows the loss, accuracy and images per second; the test set is
    /// evaluated after each epoch; a checkpoint is written after each epoch and on Ctrl-C
    /// (`--resume` continues from it); at the end the weights (with the input normalisation in
    /// their metadata) and an SVG of the curves are written.
    Train(train::TrainArgs),
    /// Compile a model on the JIT and time it: the compile time, each layer's time, GFLOP/s
    /// and share of the machine's peak, and the whole model's median.
    ///
    /// The model runs on seeded parameters and a seeded input. The peak is the FMA throughput
    /// at the kernels' vector width on as many threads (128-bit for --mode portable), measured
    /// once per CPU, instruction set and thread count and cached in `$CNNC_CACHE_DIR/peak.json`
    /// (default: `$XDG_CACHE_HOME/cnnc` or `~/.cache/cnnc`); delete the file to measure again.
    Bench(bench::BenchArgs),
    /// Use a trained network as a feature extractor: the output of one layer for each image of
    /// a batch, saved as .npy (the layers after it are not run).
    Features(tools::FeaturesArgs),
    /// Compile a model to one self-contained Rust module (std only, or core with --no-std):
    /// `Model` (weights from safetensors or a seed, `forward` on any batch) and, with --train,
    /// `Trainer` (the training step). `cnnc FILE -o model.rs` is short for this.
    EmitRust(emit::EmitRustArgs),
    /// The main job on built-in data, needing no files: the digits network checked,
    /// summarised, JIT-compiled and trained on the built-in digits (with a progress bar), its
    /// test accuracy, its weights and curves written, and the JIT's speed beside the
    /// interpreter's on one batch.
    Demo(demo::DemoArgs),
    /// Build, inspect, run and train a network interactively: type .cnn a line at a time
    /// and see each layer's shape, parameters, MACs and receptive field (`:help` inside).
    ///
    /// On a terminal: line editing, tab completion and a history kept between sessions (in
    /// the user's data directory, or the file CNNC_HISTORY names; empty for none). A script
    /// (a file, or piped standard input) runs the same inputs with no prompts and exits 1
    /// when any of them failed.
    Repl(repl::ReplArgs),
    /// Draw a convolution's kernels (`filters`) or a layer's feature maps (`maps`) as PNG.
    #[command(subcommand)]
    Viz(repl::VizArgs),
    /// `cnnc FILE ...`: short for `cnnc emit-rust FILE ...`.
    #[command(external_subcommand)]
    External(Vec<OsString>),
}

#[derive(Args, Debug)]
struct RunArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// The weights (safetensors, PyTorch state_dict names); without it, the parameters are
    /// initialised from --seed as `cnnc init` does.
    #[arg(long, value_name = "W.safetensors")]
    weights: Option<PathBuf>,
    /// Ignore tensors of the weights file the model does not have (a checkpoint's heads or
    /// optimiser state), listing them in a warning, instead of refusing the file.
    #[arg(long, requires = "weights")]
    allow_extra_weights: bool,
    /// The input batch: float32 (or float64) .npy of shape [N, C, H, W], or [N, F].
    #[arg(long, value_name = "X.npy")]
    input: PathBuf,
    /// Feed the input as it is, even when the weights record the normalisation they were
    /// trained with (by default the raw input is normalised as in training).
    #[arg(long)]
    no_normalize: bool,
    /// Where to write the output batch (float32 .npy); `-` for standard output.
    #[arg(short, long, value_name = "Y.npy")]
    output: Option<PathBuf>,
    /// Run batch norm on batch statistics (updating the running statistics) and dropout with
    /// random masks, as in training.
    #[arg(long)]
    train: bool,
    /// With --train, where to write the full state after the step: the weights, with each batch
    /// norm's running statistics updated from this batch (safetensors).
    #[arg(long, value_name = "S.safetensors", requires = "train")]
    state_out: Option<PathBuf>,
    /// Where to write every layer's output, batch first, by layer name (safetensors): to find
    /// where two runs part ways.
    #[arg(long, value_name = "D.safetensors")]
    dump: Option<PathBuf>,
    /// The seed of the initial weights without --weights (0 by default), and of the dropout
    /// masks with --train.
    #[arg(long)]
    seed: Option<u64>,
    #[command(flatten)]
    backend: BackendArgs,
    /// Run the graph after these passes (BN folded into the weights, layers fused): `all` by
    /// default on the JIT, `none` on the interpreter. See `cnnc ir --help` for the list.
    #[arg(long, value_name = "all|none|LIST", value_parser = parse_pass_list)]
    passes: Option<PassList>,
}

#[derive(Args, Debug)]
struct GradArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// The weights (safetensors, PyTorch state_dict names); without it, the parameters are
    /// initialised from --seed (0 by default) as `cnnc init` does.
    #[arg(long, value_name = "W.safetensors")]
    weights: Option<PathBuf>,
    /// Ignore tensors of the weights file the model does not have (a checkpoint's heads or
    /// optimiser state), listing them in a warning, instead of refusing the file.
    #[arg(long, requires = "weights")]
    allow_extra_weights: bool,
    /// The input batch: float32 (or float64) .npy of shape [N, C, H, W], or [N, F].
    #[arg(long, value_name = "X.npy")]
    input: PathBuf,
    /// Feed the input as it is, even when the weights record the normalisation they were
    /// trained with (by default the raw input is normalised as in training).
    #[arg(long)]
    no_normalize: bool,
    /// The targets: int64 or int32 class indices of shape [N] for ce and the hinges, a float tensor
    /// shaped like the output ([N, ...]) for mse, l1 and huber.
    #[arg(long, value_name = "T.npy")]
    target: PathBuf,
    /// The loss, a mean over the batch.
    #[arg(long, value_enum)]
    loss: LossArg,
    /// The margin of `hinge` and `multi-margin` [default: 1].
    #[arg(long, value_parser = parse_positive)]
    margin: Option<f64>,
    /// The delta of `huber`, where the loss turns from quadratic to linear [default: 1].
    #[arg(long, value_parser = parse_positive)]
    delta: Option<f64>,
    /// Where to write the gradients (safetensors: the weights' names, plus `input`); `-` for
    /// standard output.
    #[arg(short, long, value_name = "G.safetensors")]
    output: Option<PathBuf>,
    /// Run batch norm on batch statistics and dropout with random masks, as in training
    /// (nothing is written back to the weights; see --state-out).
    #[arg(long)]
    train: bool,
    /// With --train, where to write the full state after the step: the weights, with each batch
    /// norm's running statistics updated from this batch (safetensors).
    #[arg(long, value_name = "S.safetensors", requires = "train")]
    state_out: Option<PathBuf>,
    /// Where to write every layer's output and gradient (safetensors): `<layer>` and
    /// `<layer>.grad`, and `<parameter>.grad` for each parameter.
    #[arg(long, value_name = "D.safetensors")]
    dump: Option<PathBuf>,
    /// The seed of the initial weights without --weights, and of the dropout masks with
    /// --train.
    #[arg(long)]
    seed: Option<u64>,
    /// Print the loss and the files read and written as one line of JSON instead of text.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    backend: BackendArgs,
}

/// Where the model runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum BackendArg {
    /// The Cranelift JIT: the optimised plan compiled to machine code for the batch.
    Jit,
    /// The reference interpreter (f32 storage, f64 accumulation).
    Interp,
}

/// The JIT's kernel mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum ModeArg {
    /// Every loop in Cranelift IR with 128-bit vectors (any Cranelift target).
    Portable,
    /// Cranelift loop nests around cnnc-kernels' AVX-512/AVX2 microkernels.
    Native,
}

/// `--backend` and `--mode`, shared by every command that runs a model.
#[derive(Args, Debug, Clone, Copy)]
struct BackendArgs {
    /// The back end that runs the model.
    #[arg(long = "backend", value_enum, default_value_t = BackendArg::Jit)]
    kind: BackendArg,
    /// The JIT's kernel mode [default: native where the CPU has AVX2 or AVX-512].
    #[arg(long, value_enum)]
    mode: Option<ModeArg>,
}

/// The JIT mode `--mode` asks for, or the host's default.
fn jit_mode(mode: Option<ModeArg>) -> execute::JitMode {
    match mode {
        Some(ModeArg::Portable) => execute::JitMode::Portable,
        Some(ModeArg::Native) => execute::JitMode::Native,
        None => execute::JitMode::host_default(),
    }
}

impl BackendArgs {
    fn backend(self) -> execute::Backend {
        match self.kind {
            BackendArg::Interp => execute::Backend::Interp,
            BackendArg::Jit => execute::Backend::Jit(jit_mode(self.mode)),
        }
    }

    /// The `--backend` name.
    fn name(self) -> &'static str {
        self.backend().name()
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum LossArg {
    /// Softmax cross-entropy on logits (class indices).
    Ce,
    /// Mean squared error (a target shaped like the output).
    Mse,
    /// Mean absolute error (a target shaped like the output).
    L1,
    /// Huber loss, quadratic within --delta of the target (a target shaped like the output).
    Huber,
    /// Multi-class SVM (CS231n): the sum over the wrong classes of max(0, s_j - s_y + margin)
    /// (class indices).
    Hinge,
    /// PyTorch's MultiMarginLoss: the same sum divided by the number of classes (class indices).
    MultiMargin,
}

impl LossArg {
    /// The loss with its constant; a constant the loss does not have is a usage error.
    fn with(self, margin: Option<f64>, delta: Option<f64>) -> Result<execute::Loss, Failure> {
        let takes_margin = matches!(self, LossArg::Hinge | LossArg::MultiMargin);
        if margin.is_some() && !takes_margin {
            return Err(Failure::Usage("--margin belongs to `--loss hinge` and `--loss multi-margin`".into()));
        }
        if delta.is_some() && self != LossArg::Huber {
            return Err(Failure::Usage("--delta belongs to `--loss huber`".into()));
        }
        Ok(self.loss(margin.unwrap_or(1.0), delta.unwrap_or(1.0)))
    }

    fn loss(self, margin: f64, delta: f64) -> execute::Loss {
        match self {
            LossArg::Ce => execute::Loss::CrossEntropy,
            LossArg::Mse => execute::Loss::Mse,
            LossArg::L1 => execute::Loss::L1,
            LossArg::Huber => execute::Loss::Huber { delta },
            LossArg::Hinge => execute::Loss::Hinge { margin, form: execute::HingeForm::Sum },
            LossArg::MultiMargin => execute::Loss::Hinge { margin, form: execute::HingeForm::MeanOverClasses },
        }
    }
}

#[derive(Args, Debug)]
struct ModelArgs {
    /// The .cnn source file.
    file: PathBuf,
    /// Input shape replacing the model's declared one: CxHxW such as 3x64x64, or F such as 784.
    #[arg(long, value_name = "CxHxW", value_parser = parse_shape)]
    shape: Option<InputShape>,
    /// The model to use, when the file defines several.
    #[arg(long, value_name = "NAME")]
    model: Option<String>,
    /// Sets a model parameter, replacing its default: `--set classes=10` (repeatable).
    #[arg(long = "set", value_name = "NAME=VALUE", value_parser = parse_setting)]
    settings: Vec<(String, String)>,
}

fn parse_setting(arg: &str) -> Result<(String, String), String> {
    match arg.split_once('=') {
        Some((name, value)) if !name.trim().is_empty() && !value.trim().is_empty() => {
            Ok((name.trim().to_string(), value.trim().to_string()))
        }
        _ => Err(format!("expected NAME=VALUE, such as `classes=10`, found `{arg}`")),
    }
}

/// `--passes` and `--train`, for the commands that show or run an optimised graph.
#[derive(Args, Debug)]
struct PassArgs {
    /// The optimisation passes to run: `all`, `none` or a comma-separated list (default: `all`
    /// for `summary`, `none` for `ir` and `dot`).
    #[arg(long, value_name = "all|none|LIST", value_parser = parse_pass_list, long_help = passes_long_help())]
    passes: Option<PassList>,
    /// Optimise for training: skip the passes that change what the model computes there
    /// (fold-bn, remove-dropout), and plan memory for the forward and backward passes.
    #[arg(long)]
    train: bool,
}

impl PassArgs {
    /// The passes asked for, or `default` (`all` or `none`) when --passes is not given.
    fn passes(&self, default: &[Pass]) -> Vec<Pass> {
        self.passes.as_ref().map_or_else(|| default.to_vec(), |p| p.0.clone())
    }

    fn mode(&self) -> Mode {
        if self.train { Mode::Training } else { Mode::Inference }
    }
}

fn passes_long_help() -> String {
    format!(
        "{}\n\nDefault: `all` for `summary` (the fused groups and the memory plan of the deployed \
         model), `none` for `ir` and `dot` (the graph as lowered).",
        cnnc_driver::passes_help()
    )
}

/// A parsed `--passes`; a newtype for the same reason as [`InputShape`].
#[derive(Clone, Debug)]
struct PassList(Vec<Pass>);

fn parse_pass_list(arg: &str) -> Result<PassList, cnnc_driver::PassError> {
    cnnc_driver::parse_passes(arg).map(PassList)
}

/// A parsed `--shape`; a newtype because clap reads `Option<Vec<_>>` as a repeated argument.
#[derive(Clone, Debug)]
struct InputShape(Vec<usize>);

fn parse_shape(arg: &str) -> Result<InputShape, cnnc_driver::ShapeArgError> {
    cnnc_driver::parse_shape(arg).map(InputShape)
}

impl ModelArgs {
    fn options(&self) -> Options {
        Options {
            model: self.model.clone(),
            input_shape: self.shape.as_ref().map(|s| s.0.clone()),
            overrides: self.settings.clone(),
        }
    }
}

/// Why a command stopped early; `main` turns it into the exit code.
enum Failure {
    /// The source has errors; they were already printed.
    Diagnostics,
    /// The command could not run; the message is printed as `error: ...`.
    Usage(String),
    /// Running the model on data failed; rendered with its details and hint, exit code by kind.
    Exec(ExecError),
    /// The report already says what failed (a gradient check that found a wrong gradient):
    /// only the exit code is left.
    Quiet(u8),
}

impl From<ExecError> for Failure {
    fn from(e: ExecError) -> Failure {
        Failure::Exec(e)
    }
}

impl From<PreflightError> for Failure {
    fn from(e: PreflightError) -> Failure {
        Failure::Exec(e.into())
    }
}

/// A finite number above zero: a margin or a delta.
fn parse_positive(arg: &str) -> Result<f64, String> {
    match arg.trim().parse::<f64>() {
        Ok(value) if value.is_finite() && value > 0.0 => Ok(value),
        Ok(_) => Err("must be a finite number above zero".into()),
        Err(_) => Err(format!("`{arg}` is not a number")),
    }
}

fn parse_memory_limit(arg: &str) -> Result<u64, String> {
    cnnc_driver::parse_size(arg)
}

fn main() -> ExitCode {
    // `--help` and `--version` exit 0 through clap; argument errors exit 2, as ours do, and a
    // missing argument is reported in our words, with an example.
    let args: Vec<OsString> = std::env::args_os().collect();
    let cli = match parse(&args) {
        Ok(cli) => cli,
        Err(ParseFailure::Clap(e, args)) => return argument_error(&e, &args),
        Err(ParseFailure::Usage(message)) => {
            let _ = writeln!(std::io::stderr(), "error: {message}");
            return ExitCode::from(2);
        }
    };
    let budget = cli.memory_limit.map_or_else(MemoryBudget::detect, MemoryBudget::set);
    let color = match cli.color {
        Color::Always => true,
        Color::Never => false,
        // NO_COLOR (no-color.org) is the common way to opt out for every tool at once.
        Color::Auto => std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty()),
    };
    let mut out = String::new();
    let result = match cli.command.unwrap_or_else(|| Command::Demo(demo::DemoArgs::default())) {
        Command::Check(args) => check(&args, color, &mut out),
        Command::Summary { model, passes, json } => summary(&model, &passes, json, color, &mut out),
        Command::Ir { model, passes } => graph_view(&model, &passes, View::Ir, color, &mut out),
        Command::Dot { model, passes } => graph_view(&model, &passes, View::Dot, color, &mut out),
        Command::Explain { code } => explain::run(code.as_deref(), &mut out).map_err(Failure::Usage),
        Command::Init { model, seed, output } => init(&model, seed, &output, &budget, color, &mut out),
        Command::Run(args) => run(&args, &budget, color, &mut out),
        Command::Grad(args) => grad(&args, &budget, color, &mut out),
        Command::Gradcheck(args) => tools::gradcheck(&args, &budget, color, &mut out),
        Command::Features(args) => tools::features(&args, &budget, color, &mut out),
        Command::Bench(args) => bench::bench(&args, &budget, color, &mut out),
        Command::Train(args) => train::train(&args, &budget, color, &mut out),
        Command::EmitRust(args) => emit::emit_rust(&args, color, &mut out),
        Command::Repl(args) => repl::repl(&args, &budget, color),
        Command::Viz(args) => repl::viz(&args, &budget, color, &mut out),
        Command::Demo(args) => demo::demo(&args, color),
        // `parse` turns a bare FILE into `emit-rust`; a word it let through is no command.
        Command::External(words) => Err(Failure::Usage(format!("unknown command {words:?}"))),
    };
    // Whatever was produced goes out even when a later step failed.
    if let Err(e) = std::io::stdout().lock().write_all(out.as_bytes()) {
        // A closed pipe (`cnnc ir m.cnn | head`) means the reader has seen enough.
        if e.kind() != std::io::ErrorKind::BrokenPipe {
            let _ = writeln!(std::io::stderr(), "error: cannot write the output: {e}");
            return ExitCode::from(2);
        }
    }
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Diagnostics) => ExitCode::from(1),
        Err(Failure::Quiet(code)) => ExitCode::from(code),
        Err(Failure::Usage(message)) => {
            // `eprintln!` would panic if stderr were closed; the exit code still tells.
            let _ = writeln!(std::io::stderr(), "error: {message}");
            ExitCode::from(2)
        }
        Err(Failure::Exec(error)) => {
            let _ = std::io::stderr().lock().write_all(render_exec_error(&error).as_bytes());
            match error.kind() {
                ErrorKind::Data => ExitCode::from(1),
                ErrorKind::Io | ErrorKind::Usage => ExitCode::from(2),
                // As a shell reports a command ended by SIGINT.
                ErrorKind::Cancelled => ExitCode::from(130),
            }
        }
    }
}

/// Why the command line was not understood: clap's error (with the arguments it parsed), or
/// ours.
enum ParseFailure {
    Clap(clap::Error, Vec<OsString>),
    Usage(String),
}

/// Parses the command line; `cnnc FILE ...` (a file where a command goes) is parsed as
/// `cnnc emit-rust FILE ...`.
fn parse(args: &[OsString]) -> Result<Cli, ParseFailure> {
    let cli = Cli::try_parse_from(args).map_err(|e| ParseFailure::Clap(e, args.to_vec()))?;
    let Some(Command::External(words)) = &cli.command else { return Ok(cli) };
    let command = <Cli as clap::CommandFactory>::command();
    let names: Vec<&str> = command.get_subcommands().map(|s| s.get_name()).collect();
    let expanded = emit::expand_bare_file(args, words, &names).map_err(ParseFailure::Usage)?;
    match Cli::try_parse_from(&expanded) {
        Ok(cli) => Ok(cli),
        Err(e) => Err(ParseFailure::Clap(e, expanded)),
    }
}

/// Prints a command-line error and gives its exit code: a missing argument in our words, with
/// an example ([`usage::missing_arguments`]), anything else as clap words it (`--help` and
/// `--version` print to stdout and exit 0).
fn argument_error(error: &clap::Error, args: &[OsString]) -> ExitCode {
    if let Some(message) = usage::missing_arguments(error, args) {
        let _ = std::io::stderr().lock().write_all(message.as_bytes());
        return ExitCode::from(2);
    }
    let _ = error.print();
    ExitCode::from(u8::try_from(error.exit_code()).unwrap_or(2))
}

fn load(path: &Path) -> Result<SourceFile, Failure> {
    cnnc_driver::load(path).map_err(|e| Failure::Usage(e.to_string()))
}

/// Prints diagnostics on stderr; errors among them stop the command.
fn report(diags: &[Diagnostic], file: &SourceFile, color: bool) -> Result<(), Failure> {
    if !diags.is_empty() {
        // Written whole, so that a closed stderr loses the text instead of panicking.
        let _ = std::io::stderr().lock().write_all(render(diags, file, color).as_bytes());
    }
    if cnnc_diag::has_errors(diags) { Err(Failure::Diagnostics) } else { Ok(()) }
}

fn check(args: &ModelArgs, color: bool, out: &mut String) -> Result<(), Failure> {
    let file = load(&args.file)?;
    check_file(&file, &args.options(), color, out).map(drop)
}

/// Lowers every selected model; one `ok:` line per model when all of them are free of errors.
fn check_file(file: &SourceFile, options: &Options, color: bool, out: &mut String) -> Result<Vec<Graph>, Failure> {
    let checked = check_models(file, options);
    report(&checked.diagnostics, file, color)?;
    for graph in &checked.models {
        out.push_str(&ok_line(graph));
    }
    Ok(checked.models)
}

/// `cnnc summary`: the source model's table (or JSON) with the fusion groups and the memory
/// plan after the passes (all of them by default).
fn summary(args: &ModelArgs, passes: &PassArgs, json: bool, color: bool, out: &mut String) -> Result<(), Failure> {
    let graph = lower_one(args, color)?;
    let summary = summarize_optimized(&graph, &passes.passes(Pass::ALL), passes.mode()).map_err(pass_failure)?;
    out.push_str(&if json { to_json(&summary) } else { table(&summary) });
    Ok(())
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum View {
    Ir,
    Dot,
}

/// `cnnc ir` and `cnnc dot`. With no pass (the default) the lowered graph as it is; otherwise
/// the IR after the passes, or the source graph's DOT with the fused groups as clusters, and
/// what the passes did on stderr (stdout stays plain IR text or DOT).
fn graph_view(args: &ModelArgs, passes: &PassArgs, view: View, color: bool, out: &mut String) -> Result<(), Failure> {
    let graph = lower_one(args, color)?;
    let chosen = passes.passes(&[]);
    if chosen.is_empty() {
        if passes.train && passes.passes.is_none() {
            notify(&["note: --train changes nothing without --passes (try `--passes all --train`)".to_string()]);
        }
        out.push_str(&match view {
            View::Ir => cnnc_ir::print(&graph),
            View::Dot => cnnc_ir::dot(&graph),
        });
        return Ok(());
    }
    // Only the graph is shown, so no weights are needed: BN folding changes the graph alone.
    let opt = cnnc_driver::optimize(&graph, None, &chosen, passes.mode()).map_err(pass_failure)?;
    notify(&cnnc_driver::pass_report(&opt));
    out.push_str(&match view {
        View::Ir => opt.print(),
        View::Dot => cnnc_driver::dot_fused(&graph, &opt),
    });
    Ok(())
}

/// A pass that cannot run on a graph that lowered is a bug in cnnc, not in the source: it is
/// reported as such, with exit code 2.
fn pass_failure(e: cnnc_driver::PassError) -> Failure {
    Failure::Usage(e.to_string())
}

/// Loads and lowers the one selected model, printing its warnings.
fn lower_one(args: &ModelArgs, color: bool) -> Result<Graph, Failure> {
    lower_with_source(args, color).map(|(graph, _)| graph)
}

/// [`lower_one`], also returning the source (to lower it again at another size).
fn lower_with_source(args: &ModelArgs, color: bool) -> Result<(Graph, SourceFile), Failure> {
    let file = load(&args.file)?;
    match lower_source(&file, &args.options()) {
        Ok((graph, warnings)) => {
            report(&warnings, &file, color)?;
            Ok((graph, file))
        }
        // Lowering fails only with an error among its diagnostics; exit 1 even if one did not.
        Err(diags) => report(&diags, &file, color).and(Err(Failure::Diagnostics)),
    }
}

/// Prints `warning: ...` and `note: ...` lines on stderr (written whole, like diagnostics).
fn notify(lines: &[String]) {
    if !lines.is_empty() {
        let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
        let _ = std::io::stderr().lock().write_all(text.as_bytes());
    }
}

fn warn(warnings: &[ExecWarning]) {
    notify(&warnings.iter().map(|w| format!("warning: {w}")).collect::<Vec<_>>());
}

fn init(
    args: &ModelArgs,
    seed: u64,
    output: &Path,
    budget: &MemoryBudget,
    color: bool,
    out: &mut String,
) -> Result<(), Failure> {
    let graph = lower_one(args, color)?;
    check_output(output, &[("the source FILE", &args.file)])?;
    check_memory(&graph, Task::Init, budget)?;
    let weights = execute::init_weights(&graph, seed)?;
    execute::save_tensors(output, &weights)?;
    let summary = summarize(&graph);
    let report = format!(
        "wrote {}: {} tensors of model `{}`, {} parameters and {} buffer values (seed {seed})\n",
        destination_text(output),
        weights.len(),
        graph.name,
        thousands(summary.params),
        thousands(summary.buffers),
    );
    say(Some(output), report, out);
    Ok(())
}

/// `` `out.npy` ``, or `standard output` for `-o -`.
fn destination_text(path: &Path) -> String {
    if is_stdout(path) { "standard output".to_string() } else { format!("`{}`", path.display()) }
}

/// The command's report: on stdout, unless the command's output file goes there (`-o -`), in
/// which case the report goes to stderr so that stdout holds the file alone.
fn say(output: Option<&Path>, text: String, out: &mut String) {
    say_where(output.is_some_and(is_stdout), text, out);
}

/// The report goes to stderr when standard output carries a file.
fn say_where(stdout_is_taken: bool, text: String, out: &mut String) {
    if stdout_is_taken {
        let _ = std::io::stderr().lock().write_all(text.as_bytes());
    } else {
        out.push_str(&text);
    }
}

/// Reads the input batch; a wrong size is checked against the model at the input's size, so the
/// hint suggests `--shape` only where it works.
fn load_input(
    graph: &Graph,
    file: &SourceFile,
    args: &ModelArgs,
    path: &Path,
    budget: &MemoryBudget,
) -> Result<(cnnc_driver::execute::Tensor, Vec<ExecWarning>), Failure> {
    execute::load_input(graph, path, budget)
        .map_err(|e| Failure::Exec(execute::check_input_size(e, file, &args.options())))
}

/// Loads the weights file, or initialises the parameters from `seed` (saying so) without one.
fn weights_or_init(
    graph: &Graph,
    weights: Option<&Path>,
    allow_extra: bool,
    seed: u64,
    budget: &MemoryBudget,
) -> Result<execute::TensorMap, Failure> {
    weights_and_normalization(graph, weights, allow_extra, seed, budget).map(|(params, _)| params)
}

/// [`weights_or_init`], with the input normalisation the weights file records (`cnnc train`
/// stores it), if any.
fn weights_and_normalization(
    graph: &Graph,
    weights: Option<&Path>,
    allow_extra: bool,
    seed: u64,
    budget: &MemoryBudget,
) -> Result<(execute::TensorMap, Option<cnnc_data::Normalization>), Failure> {
    match weights {
        Some(path) => {
            let options = WeightsOptions { allow_extra, limit: budget.bytes };
            let (params, metadata, warnings) = execute::load_weights_with_metadata(graph, path, options)?;
            warn(&warnings);
            let normalization = execute::input_normalization(graph, path, &metadata)?;
            Ok((params, normalization))
        }
        None => {
            notify(&[format!(
                "note: no --weights given: parameters initialised from seed {seed} (He/Xavier, as `cnnc init --seed {seed}`)"
            )]);
            Ok((execute::init_weights(graph, seed)?, None))
        }
    }
}

/// Normalises the raw input batch as the weights were trained, unless told not to, saying so.
fn normalize(
    normalization: Option<&cnnc_data::Normalization>,
    raw: bool,
    input: &mut execute::Tensor,
    weights: Option<&Path>,
) {
    let (Some(n), false) = (normalization, raw) else { return };
    execute::normalize_input(n, input);
    let list = |v: &[f32]| v.iter().map(|x| format!("{x:.4}")).collect::<Vec<_>>().join(", ");
    notify(&[format!(
        "note: the input is normalised as `{}` was trained: x * {} - mean [{}], / std [{}] (--no-normalize feeds it as it is)",
        weights.map_or(String::new(), |p| p.display().to_string()),
        n.scale,
        list(&n.mean),
        list(&n.std)
    )]);
}

fn run(args: &RunArgs, budget: &MemoryBudget, color: bool, out: &mut String) -> Result<(), Failure> {
    // First, so that a Ctrl-C while the files load stops the run at its first node.
    let cancel = cancel_on_ctrl_c();
    let (graph, file) = lower_with_source(&args.model, color)?;
    if args.weights.is_some() && args.seed.is_some() && !args.train {
        return Err(Failure::Usage(
            "--seed initialises the weights, or with --train seeds the dropout masks; with --weights and no --train \
             it has nothing to do"
                .into(),
        ));
    }
    let outputs = [("-o", &args.output), ("--dump", &args.dump), ("--state-out", &args.state_out)];
    let outputs: Vec<(&'static str, &Path)> =
        outputs.iter().filter_map(|(flag, path)| path.as_deref().map(|p| (*flag, p))).collect();
    let mut inputs = vec![("the source FILE", args.model.file.as_path()), ("--input", args.input.as_path())];
    inputs.extend(args.weights.as_deref().map(|w| ("--weights", w)));
    check_outputs(&outputs, &inputs)?;
    let mode = execute::exec_mode(&graph, args.train, args.seed)?;
    let (input, warnings) = load_input(&graph, &file, &args.model, &args.input, budget)?;
    warn(&warnings);
    // The JIT runs the optimised plan unless told otherwise; the interpreter the source graph.
    let passes: &[Pass] = match (&args.passes, args.backend.kind) {
        (Some(list), _) => &list.0,
        (None, BackendArg::Jit) => Pass::ALL,
        (None, BackendArg::Interp) => &[],
    };
    let task = Task::Run { batch: input.shape[0], passes: !passes.is_empty(), dump: args.dump.is_some() };
    check_memory(&graph, task, budget)?;
    let init_seed = args.seed.unwrap_or(0);
    let (params, normalization) =
        weights_and_normalization(&graph, args.weights.as_deref(), args.allow_extra_weights, init_seed, budget)?;
    let mut input = input;
    normalize(normalization.as_ref(), args.no_normalize, &mut input, args.weights.as_deref());
    let (dump, backend) = (args.dump.is_some(), args.backend.backend());
    let outcome =
        execute::run(&graph, &params, &input, mode, passes, dump, backend, Some(&cancel)).map_err(run_failure)?;
    if args.passes.is_some() {
        notify(&outcome.pass_notes);
    }
    let output = outcome.output;
    if let Some(path) = &args.output {
        execute::save_output(path, &output)?;
    }
    save_extras(args.dump.as_deref(), outcome.dump.as_ref(), args.state_out.as_deref(), outcome.state.as_ref())?;
    let mut text = format!("output: {:?}", output.shape);
    if let Some(path) = &args.output {
        text.push_str(&format!(", written to {}", destination_text(path)));
    }
    text.push('\n');
    match execute::top_classes(&graph, &output, 5) {
        Some(top) => print_top_classes(&top, execute::ends_in_softmax(&graph), &mut text),
        None => print_stats(&output.data, &mut text),
    }
    describe_extras(
        &args.dump,
        outcome.dump.as_ref(),
        &args.state_out,
        outcome.batch_norms_trained,
        args.train,
        &mut text,
    );
    say_where(outputs.iter().any(|(_, p)| is_stdout(p)), text, out);
    Ok(())
}

/// A pass that cannot run is a usage error (as in `cnnc ir`); every other failure keeps its
/// kind.
/// A token Ctrl-C requests, for a command that runs a model (installed as the command starts):
/// the back end stops at its first or next node or kernel step and the command ends with
/// `cancelled` and exit code 130; a second Ctrl-C before that ends the process at once (130
/// too). Without it the first Ctrl-C would kill the process with nothing said.
pub(crate) fn cancel_on_ctrl_c() -> cnnc_runtime::Cancel {
    let cancel = cnnc_runtime::Cancel::new();
    let asked = cancel.clone();
    // Fails only when a handler is already set; a command sets at most one.
    let _ = ctrlc::set_handler(move || {
        if asked.request() {
            std::process::exit(130);
        }
    });
    cancel
}

fn run_failure(e: ExecError) -> Failure {
    match e {
        ExecError::Passes(e) => pass_failure(e),
        other => Failure::Exec(other),
    }
}

/// Writes `--dump` and `--state-out` files (each atomically), when asked for.
fn save_extras(
    dump_path: Option<&Path>,
    dump: Option<&execute::TensorMap>,
    state_path: Option<&Path>,
    state: Option<&execute::TensorMap>,
) -> Result<(), Failure> {
    if let (Some(path), Some(dump)) = (dump_path, dump) {
        execute::save_tensors(path, dump)?;
    }
    if let (Some(path), Some(state)) = (state_path, state) {
        execute::save_tensors(path, state)?;
    }
    Ok(())
}

/// The report's lines about the dump and the running statistics.
fn describe_extras(
    dump_path: &Option<PathBuf>,
    dump: Option<&execute::TensorMap>,
    state_path: &Option<PathBuf>,
    batch_norms_trained: usize,
    train: bool,
    text: &mut String,
) {
    if let (Some(path), Some(dump)) = (dump_path, dump) {
        text.push_str(&format!("dump: {} tensors written to {}\n", dump.len(), destination_text(path)));
    }
    if !train || batch_norms_trained == 0 {
        return;
    }
    let layers = format!("{batch_norms_trained} batch-norm layer{}", if batch_norms_trained == 1 { "" } else { "s" });
    match state_path {
        Some(path) => text.push_str(&format!(
            "running statistics: {layers} updated, the full state written to {}\n",
            destination_text(path)
        )),
        None => text.push_str(&format!(
            "running statistics: {layers} updated from this batch (pass --state-out S.safetensors to save them)\n"
        )),
    }
}

fn print_top_classes(top: &[execute::TopClasses], softmax_output: bool, out: &mut String) {
    let k = top.first().map_or(0, Vec::len);
    let source = if softmax_output { "the model's softmax output" } else { "softmax of the logits" };
    out.push_str(&format!("top-{k} classes of each image (class: probability, {source}):\n"));
    let width = top.len().min(MAX_LISTED_IMAGES).saturating_sub(1).to_string().len();
    for (image, classes) in top.iter().enumerate().take(MAX_LISTED_IMAGES) {
        let listed: Vec<String> = classes.iter().map(|(class, p)| format!("{class}: {p:.4}")).collect();
        out.push_str(&format!("  image {image:>width$}  {}\n", listed.join("  ")));
    }
    if top.len() > MAX_LISTED_IMAGES {
        let more = top.len() - MAX_LISTED_IMAGES;
        out.push_str(&format!(
            "  ... and {more} more image{} (the first {MAX_LISTED_IMAGES} are shown; -o Y.npy saves every output)\n",
            if more == 1 { "" } else { "s" }
        ));
    }
}

/// For outputs that are not class scores: the range and mean of the values.
fn print_stats(data: &[f32], out: &mut String) {
    let finite: Vec<f64> = data.iter().filter(|v| v.is_finite()).map(|&v| f64::from(v)).collect();
    if finite.is_empty() {
        out.push_str("values: none finite\n");
        return;
    }
    let min = finite.iter().copied().fold(f64::INFINITY, f64::min);
    let max = finite.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let mean = finite.iter().sum::<f64>() / finite.len() as f64;
    out.push_str(&format!("values: min {min:.6}, max {max:.6}, mean {mean:.6}"));
    if finite.len() < data.len() {
        out.push_str(&format!(" ({} not finite)", data.len() - finite.len()));
    }
    out.push('\n');
}

fn grad(args: &GradArgs, budget: &MemoryBudget, color: bool, out: &mut String) -> Result<(), Failure> {
    let cancel = cancel_on_ctrl_c();
    let (graph, file) = lower_with_source(&args.model, color)?;
    let loss = args.loss.with(args.margin, args.delta)?;
    // Every file and argument is checked before the (possibly long) computation starts.
    let outputs = [("-o", &args.output), ("--dump", &args.dump), ("--state-out", &args.state_out)];
    let outputs: Vec<(&'static str, &Path)> =
        outputs.iter().filter_map(|(flag, path)| path.as_deref().map(|p| (*flag, p))).collect();
    let on_stdout = outputs.iter().find(|(_, p)| is_stdout(p));
    let stdout_is_taken = on_stdout.is_some();
    if let (true, Some((flag, path))) = (args.json, on_stdout) {
        return Err(Failure::Usage(format!(
            "--json and `{flag} {}` would both write to standard output: write the tensors to a file",
            path.display()
        )));
    }
    let mut inputs = vec![
        ("the source FILE", args.model.file.as_path()),
        ("--input", args.input.as_path()),
        ("--target", args.target.as_path()),
    ];
    inputs.extend(args.weights.as_deref().map(|w| ("--weights", w)));
    check_outputs(&outputs, &inputs)?;
    let mode = execute::exec_mode(&graph, args.train, args.seed)?;
    let (input, warnings) = load_input(&graph, &file, &args.model, &args.input, budget)?;
    warn(&warnings);
    let batch = input.shape[0];
    let (target, warnings) = execute::load_target(&graph, &args.target, loss, batch, budget)?;
    warn(&warnings);
    check_memory(&graph, Task::Grad { batch, dump: args.dump.is_some() }, budget)?;
    let init_seed = args.seed.unwrap_or(0);
    let (params, normalization) =
        weights_and_normalization(&graph, args.weights.as_deref(), args.allow_extra_weights, init_seed, budget)?;
    let mut input = input;
    normalize(normalization.as_ref(), args.no_normalize, &mut input, args.weights.as_deref());
    let dump = args.dump.is_some();
    let outcome =
        execute::grad(&graph, &params, &input, &target, loss, mode, dump, args.backend.backend(), Some(&cancel))?;
    warn(&outcome.warnings);
    if let Some(path) = &args.output {
        execute::save_tensors(path, &outcome.grads)?;
    }
    save_extras(args.dump.as_deref(), outcome.dump.as_ref(), args.state_out.as_deref(), outcome.state.as_ref())?;
    let params = outcome.grads.len() - usize::from(outcome.grads.contains_key(INPUT_KEY));
    if args.json {
        let report = GradReport {
            model: graph.name.clone(),
            mode: if args.train { "training" } else { "inference" },
            batch,
            output: outcome.output.shape.clone(),
            loss: outcome.loss.is_finite().then_some(outcome.loss),
            loss_fn: loss.name(),
            source: path_text(&args.model.file),
            weights: args.weights.as_deref().map(path_text),
            seed: if args.weights.is_none() { Some(init_seed) } else { args.seed.filter(|_| args.train) },
            input: path_text(&args.input),
            target: path_text(&args.target),
            gradients: args.output.as_deref().map(path_text),
            dump: args.dump.as_deref().map(path_text),
            state: args.state_out.as_deref().map(path_text),
            parameter_tensors: params,
            batch_norms_trained: outcome.batch_norms_trained,
        };
        out.push_str(&report.to_json());
        return Ok(());
    }
    let mut text = format!("output: {:?}\n", outcome.output.shape);
    // The f64 loss in full: the shortest decimal that reads back as the same number.
    text.push_str(&format!(
        "loss: {} ({}, mean over {batch} image{}{})\n",
        outcome.loss,
        loss.name(),
        if batch == 1 { "" } else { "s" },
        if args.train { ", training mode" } else { "" }
    ));
    match &args.output {
        Some(path) => text.push_str(&format!(
            "gradients: {params} parameter tensors and `{INPUT_KEY}` written to {}\n",
            destination_text(path)
        )),
        None => text.push_str(&format!(
            "gradients: {params} parameter tensors and `{INPUT_KEY}` (pass -o G.safetensors to save them)\n"
        )),
    }
    describe_extras(
        &args.dump,
        outcome.dump.as_ref(),
        &args.state_out,
        outcome.batch_norms_trained,
        args.train,
        &mut text,
    );
    say_where(stdout_is_taken, text, out);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn no_command_means_demo_and_color_is_global() {
        let cli = Cli::try_parse_from(["cnnc"]).expect("parses");
        assert!(cli.command.is_none());
        let cli = Cli::try_parse_from(["cnnc", "check", "m.cnn", "--color", "never", "--shape", "3x8x8"]).expect("ok");
        assert_eq!(cli.color, Color::Never);
        let Some(Command::Check(args)) = cli.command else { panic!("check expected") };
        assert_eq!(args.options().input_shape, Some(vec![3, 8, 8]));
    }

    #[test]
    fn run_and_grad_arguments() {
        let cli = Cli::try_parse_from(["cnnc", "run", "m.cnn", "--input", "x.npy", "--shape", "3x8x8"]).expect("ok");
        let Some(Command::Run(args)) = cli.command else { panic!("run expected") };
        assert_eq!((args.seed, args.backend.kind, args.weights), (None, BackendArg::Jit, None));
        assert!(!args.train && args.dump.is_none() && args.state_out.is_none());
        assert_eq!(args.model.options().input_shape, Some(vec![3, 8, 8]));
        // --state-out saves what --train changed.
        let state = ["cnnc", "run", "m.cnn", "--input", "x", "--state-out", "s"];
        assert_eq!(Cli::try_parse_from(state).unwrap_err().exit_code(), 2);
        assert!(Cli::try_parse_from(["cnnc", "run", "m.cnn"]).is_err(), "--input is required");
        let err = Cli::try_parse_from(["cnnc", "run", "m.cnn", "--input", "x", "--backend", "gpu"]).unwrap_err();
        assert!(err.to_string().contains("possible values: jit, interp"), "{err}");
        let portable = ["cnnc", "run", "m.cnn", "--input", "x", "--mode", "portable"];
        let Some(Command::Run(args)) = Cli::try_parse_from(portable).expect("ok").command else { panic!("run") };
        assert_eq!(args.backend.backend(), execute::Backend::Jit(execute::JitMode::Portable));

        let grad = ["cnnc", "grad", "m.cnn", "--weights", "w", "--input", "x", "--target", "t", "--loss", "huber"];
        let cli = Cli::try_parse_from(grad).expect("ok");
        let Some(Command::Grad(args)) = cli.command else { panic!("grad expected") };
        assert_eq!(args.loss.with(None, None).ok(), Some(execute::Loss::Huber { delta: 1.0 }));
        assert!(args.loss.with(Some(2.0), None).is_err(), "huber has no margin");
        let hinge = LossArg::Hinge.with(Some(0.5), None).ok();
        assert_eq!(hinge, Some(execute::Loss::Hinge { margin: 0.5, form: execute::HingeForm::Sum }));
        let multi = LossArg::MultiMargin.with(None, None).ok();
        assert_eq!(multi, Some(execute::Loss::Hinge { margin: 1.0, form: execute::HingeForm::MeanOverClasses }));
        assert!(LossArg::Hinge.with(None, Some(2.0)).is_err(), "hinge has no delta");
        let bad = ["cnnc", "grad", "m.cnn", "--input", "x", "--target", "t", "--loss", "hinge", "--margin", "-1"];
        assert!(Cli::try_parse_from(bad).is_err(), "a margin is positive");
        assert!(!args.train && args.seed.is_none() && args.output.is_none() && !args.json);
        // Without --weights the parameters are initialised, as `run` does.
        let no_weights = ["cnnc", "grad", "m.cnn", "--input", "x", "--target", "t", "--loss", "ce"];
        assert!(Cli::try_parse_from(no_weights).expect("ok").command.is_some());
        // --allow-extra-weights makes sense only with a weights file.
        let extra = ["cnnc", "run", "m.cnn", "--input", "x", "--allow-extra-weights"];
        assert!(Cli::try_parse_from(extra).is_err());
        for missing in ["--input", "--target", "--loss"] {
            let i = grad.iter().position(|a| *a == missing).expect("present");
            let args: Vec<&str> =
                grad.iter().enumerate().filter(|(j, _)| *j != i && *j != i + 1).map(|(_, a)| *a).collect();
            assert!(Cli::try_parse_from(args).is_err(), "{missing} is required");
        }
        assert!(Cli::try_parse_from(["cnnc", "init", "m.cnn"]).is_err(), "init needs -o");
    }

    #[test]
    fn pass_arguments() {
        let cli = Cli::try_parse_from(["cnnc", "summary", "m.cnn", "--passes", "fold-bn, dce", "--train"]).expect("ok");
        let Some(Command::Summary { passes, .. }) = cli.command else { panic!("summary expected") };
        assert_eq!(passes.passes(Pass::ALL), vec![Pass::Dce, Pass::FoldBn], "pipeline order");
        assert_eq!(passes.mode(), Mode::Training);
        let cli = Cli::try_parse_from(["cnnc", "ir", "m.cnn"]).expect("ok");
        let Some(Command::Ir { passes, .. }) = cli.command else { panic!("ir expected") };
        assert_eq!((passes.passes(&[]), passes.mode()), (vec![], Mode::Inference), "the caller's default");
        let err = Cli::try_parse_from(["cnnc", "dot", "m.cnn", "--passes", "layuot"]).unwrap_err();
        assert_eq!(err.exit_code(), 2);
        assert!(err.to_string().contains("unknown pass `layuot` (did you mean `layout`?); valid passes: all, none,"));
        // run takes --passes, and --train to run the forward pass of training.
        assert!(Cli::try_parse_from(["cnnc", "run", "m.cnn", "--input", "x", "--passes", "all"]).is_ok());
        let train = ["cnnc", "run", "m.cnn", "--input", "x", "--train", "--passes", "all"];
        let Some(Command::Run(args)) = Cli::try_parse_from(train).expect("ok").command else { panic!("run") };
        assert!(args.train);
    }

    #[test]
    fn bad_shape_is_a_usage_error() {
        let err = Cli::try_parse_from(["cnnc", "ir", "m.cnn", "--shape", "3x0x64"]).unwrap_err();
        assert_eq!(err.exit_code(), 2);
        assert!(err.to_string().contains("dimension 2 of `3x0x64` is 0"), "{err}");
    }
}
