//! `cnnc train`: a model trained on a data set (the built-in digits by default), with a
//! progress bar, the test accuracy after each epoch, a checkpoint after each epoch and on
//! Ctrl-C, `--resume`, and at the end the weights (with the input normalisation in their
//! metadata) and an SVG of the curves.

use crate::{BackendArgs, Failure, LossArg, ModelArgs, check_outputs, destination_text, lower_with_source, notify};
use clap::{Args, ValueEnum};
use cnnc_driver::train::{
    self, Checkpoint, EpochRecord, InterpStepper, JitStepper, Observer, Schedule, Start, StepProgress, TrainError,
    TrainSettings, defaults,
};
use cnnc_driver::train_data::DataBatches;
use cnnc_driver::{ExecError, MemoryBudget, Task, check_memory, execute};
use cnnc_ir::{Adam, Optimizer, RmsProp, Sgd};
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

#[derive(Args, Debug)]
pub(crate) struct TrainArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// The data: `digits` (built in: 1,437 training and 360 test images of 1x8x8), or a
    /// directory of MNIST-style IDX files, CIFAR-10 binary batches, or train_x.npy and
    /// train_y.npy (with test_x.npy and test_y.npy for a test set).
    #[arg(long, value_name = "DIR|digits", default_value = "digits")]
    data: String,
    /// Passes over the training set.
    #[arg(long, default_value_t = defaults::EPOCHS, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    epochs: u64,
    /// Images per step.
    #[arg(long, default_value_t = defaults::BATCH, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    batch: u64,
    /// The base learning rate [default: 0.05 for sgd, 0.001 for adam and rmsprop].
    #[arg(long, value_parser = crate::parse_positive)]
    lr: Option<f64>,
    #[arg(long, value_enum, default_value_t = OptimizerArg::Sgd)]
    optimizer: OptimizerArg,
    /// Momentum of sgd and rmsprop (0 for none).
    #[arg(long, default_value_t = defaults::MOMENTUM)]
    momentum: f64,
    /// Nesterov momentum (sgd).
    #[arg(long)]
    nesterov: bool,
    /// L2 weight decay, added to each gradient as PyTorch's optimisers do.
    #[arg(long, default_value_t = defaults::WEIGHT_DECAY)]
    weight_decay: f64,
    /// How the learning rate changes: constant, step (times --gamma every --step-every epochs)
    /// or cosine (annealed to zero over all steps).
    #[arg(long, value_enum, default_value_t = ScheduleArg::Cosine)]
    schedule: ScheduleArg,
    /// The factor of `--schedule step`.
    #[arg(long, default_value_t = 0.1)]
    gamma: f64,
    /// The epochs between the drops of `--schedule step` [default: a third of --epochs].
    #[arg(long)]
    step_every: Option<usize>,
    /// The loss, a mean over each batch.
    #[arg(long, value_enum, default_value_t = LossArg::Ce)]
    loss: LossArg,
    /// The margin of `hinge` and `multi-margin` [default: 1].
    #[arg(long, value_parser = crate::parse_positive)]
    margin: Option<f64>,
    /// The delta of `huber` [default: 1].
    #[arg(long, value_parser = crate::parse_positive)]
    delta: Option<f64>,
    /// The seed of the initial weights, the shuffling, the augmentation and the dropout masks:
    /// the same seed gives the same weights, bit for bit.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Start from the tensors of a weights file that fit the model (transfer learning); the
    /// others are initialised from --seed. What was loaded is listed.
    #[arg(long, value_name = "W.safetensors", conflicts_with = "resume")]
    init_from: Option<PathBuf>,
    /// Layers not to train (their parameters keep their values): names, or prefixes of names
    /// at a dot (`layer1` freezes everything in layer1), comma-separated.
    #[arg(long, value_name = "NAME,...", value_delimiter = ',')]
    freeze: Vec<String>,
    /// Augmentation: random crops of the image padded by this many zero pixels each side.
    #[arg(long, default_value_t = 0, value_name = "PIXELS")]
    crop_pad: usize,
    /// Augmentation: flip each image horizontally with probability 1/2 (not for digits!).
    #[arg(long)]
    flip: bool,
    /// Feed the raw values (no per-channel normalisation fitted on the training set).
    #[arg(long)]
    no_normalize: bool,
    /// Where to write the trained weights [default: MODEL.safetensors].
    #[arg(short, long, value_name = "W.safetensors")]
    output: Option<PathBuf>,
    /// Where to write the checkpoint after each epoch [default: next to -o, .ckpt.safetensors].
    #[arg(long, value_name = "C.safetensors")]
    checkpoint: Option<PathBuf>,
    /// Continue from a checkpoint (with the settings it was made with; --epochs may grow).
    #[arg(long, value_name = "C.safetensors")]
    resume: Option<PathBuf>,
    /// Where to draw the loss and accuracy curves [default: next to -o, .curves.svg].
    #[arg(long, value_name = "CURVES.svg")]
    plot: Option<PathBuf>,
    #[command(flatten)]
    backend: BackendArgs,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum OptimizerArg {
    /// Stochastic gradient descent, with --momentum and --weight-decay (torch.optim.SGD).
    Sgd,
    /// Adam (torch.optim.Adam: betas 0.9, 0.999, eps 1e-8).
    Adam,
    /// RMSprop (torch.optim.RMSprop: alpha 0.99, eps 1e-8, with --momentum).
    Rmsprop,
}

impl OptimizerArg {
    /// The optimiser with PyTorch's defaults for what the command line does not set.
    pub(crate) fn optimizer(self, momentum: f64, nesterov: bool, weight_decay: f64) -> Optimizer {
        match self {
            OptimizerArg::Sgd => Optimizer::Sgd(Sgd { momentum, weight_decay, nesterov }),
            OptimizerArg::Adam => Optimizer::Adam(Adam { beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay }),
            OptimizerArg::Rmsprop => Optimizer::RmsProp(RmsProp { alpha: 0.99, eps: 1e-8, momentum, weight_decay }),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum ScheduleArg {
    Constant,
    Step,
    Cosine,
}

/// Set by Ctrl-C: training stops at the next step, writes its checkpoint and exits 130.
static STOP: AtomicBool = AtomicBool::new(false);

impl TrainArgs {
    fn settings(&self, graph: &cnnc_ir::Graph) -> Result<TrainSettings, Failure> {
        let optimizer = self.optimizer.optimizer(self.momentum, self.nesterov, self.weight_decay);
        let lr = self.lr.unwrap_or(match self.optimizer {
            OptimizerArg::Sgd => defaults::SGD_LR,
            OptimizerArg::Adam | OptimizerArg::Rmsprop => defaults::ADAPTIVE_LR,
        });
        let epochs = usize::try_from(self.epochs).unwrap_or(usize::MAX);
        let schedule = match self.schedule {
            ScheduleArg::Constant => Schedule::Constant,
            ScheduleArg::Step => {
                Schedule::Step { every: self.step_every.unwrap_or((epochs / 3).max(1)), gamma: self.gamma }
            }
            ScheduleArg::Cosine => Schedule::Cosine,
        };
        let frozen = train::frozen_params(graph, &self.freeze).map_err(|e| Failure::Usage(e.to_string()))?;
        Ok(TrainSettings {
            loss: self.loss.with(self.margin, self.delta)?,
            optimizer,
            lr,
            schedule,
            epochs,
            batch: usize::try_from(self.batch).unwrap_or(usize::MAX),
            seed: self.seed,
            frozen,
        })
    }

    /// `-o`, the checkpoint and the plot, with their defaults beside `-o`.
    fn paths(&self, model: &str) -> (PathBuf, PathBuf, PathBuf) {
        let output = self.output.clone().unwrap_or_else(|| PathBuf::from(format!("{model}.safetensors")));
        let stem = output.file_name().and_then(|n| n.to_str()).unwrap_or(model);
        let stem = stem.strip_suffix(".safetensors").unwrap_or(stem).to_owned();
        let beside = |suffix: &str| output.with_file_name(format!("{stem}{suffix}"));
        let checkpoint = self.checkpoint.clone().unwrap_or_else(|| beside(".ckpt.safetensors"));
        let plot = self.plot.clone().unwrap_or_else(|| beside(".curves.svg"));
        (output, checkpoint, plot)
    }
}

pub(crate) fn train(args: &TrainArgs, budget: &MemoryBudget, color: bool, out: &mut String) -> Result<(), Failure> {
    let (graph, _) = lower_with_source(&args.model, color)?;
    let settings = args.settings(&graph)?;
    let (output, checkpoint_path, plot) = args.paths(&graph.name);
    let mut inputs = vec![("the source FILE", args.model.file.as_path())];
    inputs.extend(args.init_from.as_deref().map(|p| ("--init-from", p)));
    check_outputs(&[("-o", &output), ("--checkpoint", &checkpoint_path), ("--plot", &plot)], &inputs)?;

    let source = match args.data.as_str() {
        "digits" => cnnc_data::Source::Digits,
        dir => cnnc_data::Source::Dir(PathBuf::from(dir)),
    };
    let split = cnnc_data::open(&source, budget.bytes).map_err(ExecError::Data)?;
    let input = graph[graph.inputs[0]].shape.0.clone();
    let classes = execute::classes_of(&graph);
    split.check_model(&input, classes.filter(|_| settings.loss.takes_labels())).map_err(ExecError::Data)?;
    check_memory(&graph, Task::Grad { batch: settings.batch, dump: false }, budget)?;

    // Where training starts: a checkpoint, transferred weights, or the seed.
    let (state, start, normalization) = match &args.resume {
        Some(path) => {
            let checkpoint = Checkpoint::load(path, budget.bytes).map_err(train_failure)?;
            checkpoint.check_resumable(path, &graph.name, &settings).map_err(train_failure)?;
            let normalization =
                cnnc_data::Normalization::from_metadata(&checkpoint.metadata.clone().into_iter().collect())
                    .map_err(ExecError::Data)?;
            let position = checkpoint.start.position;
            notify(&[format!(
                "note: resuming from `{}`: {} epoch{} and {} batch{} done ({} steps)",
                path.display(),
                position.epoch,
                if position.epoch == 1 { "" } else { "s" },
                position.batch,
                if position.batch == 1 { "" } else { "es" },
                position.step
            )]);
            (checkpoint.state, checkpoint.start, normalization)
        }
        None => {
            let normalization = (!args.no_normalize).then(|| cnnc_data::Normalization::fit(&split.train));
            let state = match &args.init_from {
                Some(path) => {
                    let weights =
                        cnnc_runtime::load_safetensors_within(path, budget.bytes).map_err(ExecError::WeightsFile)?;
                    let (params, report) = train::init_from(&graph, &weights, settings.seed)?;
                    notify(&init_from_notes(path, &report));
                    params
                }
                None => execute::init_weights(&graph, settings.seed)?,
            };
            (state, Start::default(), normalization)
        }
    };
    let metadata = normalization.as_ref().map(|n| n.to_metadata().into_iter().collect()).unwrap_or_default();
    let data = DataBatches {
        input: input.clone(),
        train: Arc::new(split.train),
        test: split.test.map(Arc::new),
        batch: settings.batch,
        seed: settings.seed,
        augment: cnnc_data::Augment { crop_pad: args.crop_pad, hflip: args.flip },
        normalization,
    };
    let mut stepper: Box<dyn train::Stepper> = match args.backend.backend() {
        execute::Backend::Interp => Box::new(InterpStepper::new(&graph, &settings, state)?),
        execute::Backend::Jit(mode) => Box::new(JitStepper::new(&graph, &settings, state, mode)?),
    };

    out.push_str(&settings.describe(&graph, &args.data, &data, args.backend.name()));
    out.push('\n');
    flush(out);
    install_ctrl_c();
    let began = Instant::now();
    let mut observer = Progress::new(settings.epochs);
    let result = train::train(
        stepper.as_mut(),
        &data,
        &graph.name,
        &settings,
        start,
        Some((&checkpoint_path, &metadata)),
        &mut observer,
    );
    observer.finish();
    let trained = result.map_err(train_failure)?;
    // The compiled models' buffers go before the weights are copied out of the final state.
    drop(stepper);
    if let Some(at) = trained.interrupted {
        out.push_str(&format!(
            "interrupted at epoch {}, batch {}: checkpoint written to {}; continue with `--resume {}`\n",
            at.epoch + 1,
            at.batch,
            destination_text(&checkpoint_path),
            checkpoint_path.display()
        ));
        return Err(Failure::Quiet(130));
    }
    let weights = train::model_tensors(&graph, &trained.state);
    cnnc_runtime::save_safetensors_with_metadata(&output, &weights, &metadata).map_err(ExecError::WeightsFile)?;
    let svg = cnnc_driver::curves_svg(&format!("{} on {}", graph.name, args.data), &trained.history)
        .map_err(|e| Failure::Usage(format!("cannot draw the curves: {e}")))?;
    cnnc_runtime::write_atomic(&plot, |w| w.write_all(svg.as_bytes()))
        .map_err(|e| Failure::Usage(format!("cannot write `{}`: {e}", plot.display())))?;
    out.push_str(&footer(
        &trained.history,
        began.elapsed().as_secs_f64(),
        &output,
        &checkpoint_path,
        &plot,
        !metadata.is_empty(),
    ));
    Ok(())
}

fn train_failure(e: TrainError) -> Failure {
    let mut text = format!("error: {e}\n");
    if let Some(hint) = e.hint() {
        text.push_str(&format!("  = help: {hint}\n"));
    }
    match e {
        TrainError::Exec(e) => Failure::Exec(e),
        TrainError::NonFinite { .. } => {
            let _ = std::io::Write::write_all(&mut std::io::stderr().lock(), text.as_bytes());
            Failure::Quiet(1)
        }
        TrainError::Checkpoint { .. }
        | TrainError::NotACheckpoint { .. }
        | TrainError::Mismatch { .. }
        | TrainError::ZeroBatch => {
            let _ = std::io::Write::write_all(&mut std::io::stderr().lock(), text.as_bytes());
            Failure::Quiet(2)
        }
    }
}

fn init_from_notes(path: &Path, report: &train::InitFrom) -> Vec<String> {
    let list = |names: &[String]| {
        if names.len() <= 6 {
            names.join(", ")
        } else {
            format!("{}, ... ({} in all)", names[..5].join(", "), names.len())
        }
    };
    let mut notes = vec![format!(
        "note: --init-from `{}`: {} tensor{} loaded{}",
        path.display(),
        report.loaded.len(),
        if report.loaded.len() == 1 { "" } else { "s" },
        if report.loaded.is_empty() { String::new() } else { format!(" ({})", list(&report.loaded)) }
    )];
    if !report.initialised.is_empty() {
        notes.push(format!("note: initialised from the seed (not in the file): {}", list(&report.initialised)));
    }
    for (name, file, model) in &report.reshaped {
        notes.push(format!("note: `{name}` is {file:?} in the file but {model:?} here: initialised from the seed"));
    }
    if !report.ignored.is_empty() {
        notes.push(format!("note: tensors of the file the model has no use for: {}", list(&report.ignored)));
    }
    notes
}

fn footer(
    history: &[EpochRecord],
    seconds: f64,
    output: &Path,
    checkpoint: &Path,
    plot: &Path,
    normalised: bool,
) -> String {
    let mut text = String::new();
    if let Some(last) = history.last() {
        match (last.test_accuracy, last.test_loss) {
            (Some(acc), _) => text.push_str(&format!(
                "test accuracy {:.2} % after {} ({seconds:.1} s)\n",
                100.0 * acc,
                epochs(last.epoch)
            )),
            (None, Some(loss)) => {
                text.push_str(&format!("test loss {loss:.4} after {} ({seconds:.1} s)\n", epochs(last.epoch)))
            }
            (None, None) => text.push_str(&format!(
                "training loss {:.4} after {} ({seconds:.1} s)\n",
                last.train_loss,
                epochs(last.epoch)
            )),
        }
    }
    text.push_str(&format!(
        "weights: {}{}\ncheckpoint: {}\ncurves: {}\n",
        destination_text(output),
        if normalised { " (with the input normalisation: `cnnc run` takes raw pixel values)" } else { "" },
        destination_text(checkpoint),
        destination_text(plot)
    ));
    text
}

fn epochs(n: usize) -> String {
    format!("{n} epoch{}", if n == 1 { "" } else { "s" })
}

/// Writes what the report holds so far (the header before a long run).
fn flush(out: &mut String) {
    let _ = std::io::Write::write_all(&mut std::io::stdout().lock(), out.as_bytes());
    out.clear();
}

fn install_ctrl_c() {
    // A second Ctrl-C leaves at once (the checkpoint of the last epoch stays).
    let _ = ctrlc::set_handler(|| {
        if STOP.swap(true, Ordering::SeqCst) {
            std::process::exit(130);
        }
    });
}

/// The progress bar on a terminal, one line per epoch otherwise (`cnnc demo`'s too).
pub(crate) struct Progress {
    bar: Option<indicatif::ProgressBar>,
    epochs: usize,
}

impl Progress {
    pub(crate) fn new(epochs: usize) -> Progress {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = indicatif::ProgressBar::new(0);
            let style = indicatif::ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} {msg} ({elapsed})")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
                .progress_chars("=> ");
            bar.set_style(style);
            bar
        });
        Progress { bar, epochs }
    }

    pub(crate) fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

impl Observer for Progress {
    fn step(&mut self, p: &StepProgress) {
        if let Some(bar) = &self.bar {
            if p.batch == 1 {
                bar.reset();
                bar.set_length(p.batches as u64);
                bar.set_prefix(format!(
                    "epoch {:>width$}/{}",
                    p.epoch,
                    self.epochs,
                    width = self.epochs.to_string().len()
                ));
            }
            bar.set_position(p.batch as u64);
            let accuracy = p.accuracy.map_or(String::new(), |a| format!("  acc {:.2} %", 100.0 * a));
            bar.set_message(format!("loss {:.4}{accuracy}  {:.0} img/s", p.loss, p.images_per_second));
        }
    }

    fn evaluating(&mut self) {
        if let Some(bar) = &self.bar {
            bar.set_message("evaluating the test set");
        }
    }

    fn epoch(&mut self, r: &EpochRecord) {
        let width = self.epochs.to_string().len();
        let pct = |a: Option<f64>| a.map_or(String::new(), |a| format!("  acc {:6.2} %", 100.0 * a));
        let mut line =
            format!("epoch {:>width$}/{}  loss {:.4}{}", r.epoch, self.epochs, r.train_loss, pct(r.train_accuracy));
        if let Some(loss) = r.test_loss {
            line.push_str(&format!("  test loss {loss:.4}{}", pct(r.test_accuracy).replace("acc", "test acc")));
        }
        line.push_str(&format!("  lr {:.2e}  {:.1} s  {:.0} img/s", r.lr, r.seconds, r.images_per_second));
        match &self.bar {
            Some(bar) => bar.println(line),
            // The report goes to stdout; a closed pipe only loses the line.
            None => {
                let _ = writeln!(std::io::stdout(), "{line}");
            }
        }
    }

    fn stop_requested(&self) -> bool {
        STOP.load(Ordering::SeqCst)
    }
}
