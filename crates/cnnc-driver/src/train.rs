//! Training a model for `cnnc train`: epochs of optimiser steps over shuffled batches under a
//! learning-rate schedule, the test set evaluated after each epoch, a checkpoint after each
//! epoch and when stopped, resuming from one, and a stop on a non-finite loss.
//!
//! The loop ([`train`]) is the same whatever runs the steps: a [`Stepper`] takes a batch and
//! returns its loss and output, having updated the parameters (the optimiser is an op of the
//! training graph, so a step is one run of that graph). [`InterpStepper`] runs them on the
//! reference interpreter. Data comes through [`Batches`] (the data sets and their loader
//! thread live in the front door), and progress goes out through an [`Observer`], so the loop
//! itself prints nothing.
//!
//! Determinism: batches depend only on the seed and the epoch, dropout masks on the seed, the
//! layer and the global step, and the state between steps is f32; so the same settings give
//! bit-identical weights, and a run resumed from a checkpoint gives the weights the
//! uninterrupted run would have.

use crate::execute::{ExecError, Loss, Tensor, TensorMap};
use cnnc_interp::Options;
use cnnc_ir::plan::OutputRole;
use cnnc_ir::{Graph, Optimizer};
use cnnc_passes::{Objective, TrainingOptions};
use cnnc_runtime::Metadata;
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Instant;
use thiserror::Error;

/// How the learning rate changes over training.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub enum Schedule {
    /// The same rate throughout.
    Constant,
    /// The rate times `gamma` after every `every` epochs (PyTorch's `StepLR`).
    Step { every: usize, gamma: f64 },
    /// Cosine annealing from the rate to zero over all the steps of training, updated every
    /// step (PyTorch's `CosineAnnealingLR` with `T_max` the total step count, `eta_min` 0).
    Cosine,
}

impl Schedule {
    /// The rate of step `step` (0-based, counted over all of training) in epoch `epoch`
    /// (0-based), of `total` steps, from the base rate `base`.
    pub fn rate(&self, base: f64, epoch: usize, step: u64, total: u64) -> f64 {
        match *self {
            Schedule::Constant => base,
            Schedule::Step { every, gamma } => {
                let drops = epoch.checked_div(every).unwrap_or(0);
                base * gamma.powi(i32::try_from(drops).unwrap_or(i32::MAX))
            }
            Schedule::Cosine if total == 0 => base,
            Schedule::Cosine => {
                let t = step.min(total) as f64 / total as f64;
                base * 0.5 * (1.0 + (std::f64::consts::PI * t).cos())
            }
        }
    }

    /// The `--schedule` name.
    pub fn name(&self) -> &'static str {
        match self {
            Schedule::Constant => "constant",
            Schedule::Step { .. } => "step",
            Schedule::Cosine => "cosine",
        }
    }
}

/// `cnnc train`'s defaults, which `cnnc demo` trains with too. They suit small image
/// classifiers trained from scratch (a LeNet-style network on the digits reaches about 99 % in 30
/// epochs); with SGD and momentum, a larger network or data set usually wants a rate nearer 0.1
/// and more epochs.
pub mod defaults {
    /// Passes over the training set.
    pub const EPOCHS: u64 = 30;
    /// Images per step.
    pub const BATCH: u64 = 32;
    /// The base rate of SGD.
    pub const SGD_LR: f64 = 0.05;
    /// The base rate of Adam and RMSprop.
    pub const ADAPTIVE_LR: f64 = 1e-3;
    /// Momentum of SGD and RMSprop.
    pub const MOMENTUM: f64 = 0.9;
    /// L2 weight decay.
    pub const WEIGHT_DECAY: f64 = 5e-4;
}

/// What training does: the objective, the optimiser and its schedule, how long and on what
/// batches.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainSettings {
    #[serde(with = "loss_text")]
    pub loss: Loss,
    #[serde(with = "optimizer_text")]
    pub optimizer: Optimizer,
    pub lr: f64,
    pub schedule: Schedule,
    pub epochs: usize,
    pub batch: usize,
    pub seed: u64,
    /// Parameters that are not trained, by full name (`conv1.weight`), besides those the
    /// source freezes.
    pub frozen: BTreeSet<String>,
}

/// Where training stands: what a checkpoint records and a resumed run continues from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Position {
    /// Epochs completed.
    pub epoch: usize,
    /// Batches done of epoch `epoch` (0 at an epoch's boundary).
    pub batch: usize,
    /// Optimiser steps done over all of training.
    pub step: u64,
}

/// One epoch's figures.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EpochRecord {
    /// The epoch, from 1.
    pub epoch: usize,
    /// The mean loss of the epoch's batches (each at the parameters it was computed with).
    pub train_loss: f64,
    /// The fraction of training samples classified correctly, for class targets.
    pub train_accuracy: Option<f64>,
    /// The test set's mean loss and accuracy after the epoch, in inference mode.
    pub test_loss: Option<f64>,
    pub test_accuracy: Option<f64>,
    /// The learning rate of the epoch's last step.
    pub lr: f64,
    /// Wall time of the epoch's steps (not the evaluation), and the training images per second.
    pub seconds: f64,
    pub images_per_second: f64,
}

/// Running sums of an epoch in progress (kept in a checkpoint taken mid-epoch).
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct EpochSums {
    /// The sum over batches of loss x batch size.
    pub loss: f64,
    pub correct: u64,
    pub samples: u64,
    pub seconds: f64,
}

/// A training batch: inputs `[B, ...]`, the target the loss takes (class indices as f32 `[B]`
/// or values `[B, ...]`), and the class labels when the targets are classes (for accuracy).
#[derive(Clone, Debug, PartialEq)]
pub struct Batch {
    pub x: Tensor,
    pub target: Tensor,
    pub labels: Option<Vec<i64>>,
}

/// The data a training run reads.
pub trait Batches {
    /// The batches of epoch `epoch` (0-based), from batch `skip` on.
    fn train(&self, epoch: usize, skip: usize) -> Box<dyn Iterator<Item = Batch> + '_>;
    /// How many batches an epoch has.
    fn train_batches(&self) -> usize;
    /// The test set's batches, in order, when there is a test set.
    fn test(&self) -> Option<Box<dyn Iterator<Item = Batch> + '_>>;
}

/// What one step (or one evaluation) computed.
#[derive(Clone, Debug, PartialEq)]
pub struct Step {
    /// The batch-mean loss.
    pub loss: f64,
    /// The model's output, batch first.
    pub output: Tensor,
}

/// The arguments of one optimiser step.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StepArgs {
    pub lr: f64,
    /// The step's number, from 1 (Adam's bias correction, the dropout masks).
    pub step: u64,
    pub seed: u64,
}

/// Runs training steps and evaluations on some back end.
pub trait Stepper {
    /// One optimiser step on a batch in training mode: the loss and output before the update.
    fn step(&mut self, x: &Tensor, target: &Tensor, args: StepArgs) -> Result<Step, ExecError>;
    /// The loss and output of a batch in inference mode; nothing changes.
    fn evaluate(&mut self, x: &Tensor, target: &Tensor) -> Result<Step, ExecError>;
    /// After a whole evaluation (every batch of a test set): what only evaluations use may go.
    fn evaluated(&mut self) {}
    /// The whole state: parameters, buffers (running statistics) and optimiser state.
    fn state(&self) -> TensorMap;
}

/// What a run reports while it goes; the loop prints nothing itself.
pub trait Observer {
    /// After each step.
    fn step(&mut self, progress: &StepProgress);
    /// Before the test set is evaluated.
    fn evaluating(&mut self) {}
    /// After each epoch (and its evaluation).
    fn epoch(&mut self, record: &EpochRecord);
    /// Whether to stop at the next step boundary (Ctrl-C).
    fn stop_requested(&self) -> bool;
}

/// The figures of the epoch so far, after a step.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StepProgress {
    /// The epoch, from 1, and the batch just done, from 1, of `batches`.
    pub epoch: usize,
    pub batch: usize,
    pub batches: usize,
    /// The epoch's mean loss and accuracy so far.
    pub loss: f64,
    pub accuracy: Option<f64>,
    pub images_per_second: f64,
    pub lr: f64,
}

/// Why training stopped early, or could not go on.
#[derive(Debug, Error)]
pub enum TrainError {
    #[error(
        "the loss became {loss} at epoch {epoch}, step {step} (batch {batch} of the epoch); training stopped{}",
        match .checkpoint { Some(path) => format!(" and the last good checkpoint, `{}`, was kept", path.display()), None => String::new() }
    )]
    NonFinite { loss: f64, epoch: usize, batch: usize, step: u64, checkpoint: Option<PathBuf> },
    #[error("{0}")]
    Exec(#[from] ExecError),
    #[error("cannot write checkpoint `{}`: {source}", .path.display())]
    Checkpoint { path: PathBuf, source: cnnc_runtime::WeightsError },
    #[error("`{}` is not a cnnc checkpoint: {problem}", .path.display())]
    NotACheckpoint { path: PathBuf, problem: String },
    #[error("checkpoint `{}` {problem}", .path.display())]
    Mismatch { path: PathBuf, problem: String },
    #[error("the batch size is 0: pass `--batch N` with N >= 1")]
    ZeroBatch,
}

impl TrainError {
    /// What to do about it, when there is something specific to say.
    pub fn hint(&self) -> Option<String> {
        match self {
            TrainError::NonFinite { .. } => Some(
                "lower the learning rate (`--lr`), or check the data's scale; `--resume` continues from the checkpoint"
                    .into(),
            ),
            TrainError::Mismatch { .. } => {
                Some("resume with the settings the checkpoint was made with, or start afresh without --resume".into())
            }
            TrainError::Exec(e) => e.hint(),
            TrainError::Checkpoint { .. } | TrainError::NotACheckpoint { .. } | TrainError::ZeroBatch => None,
        }
    }
}

impl TrainSettings {
    /// The defaults ([`defaults`]): cross-entropy, SGD with momentum and weight decay, the
    /// cosine schedule, seed 0, for `epochs` epochs.
    pub fn defaults(epochs: usize) -> TrainSettings {
        TrainSettings {
            loss: Loss::CrossEntropy,
            optimizer: Optimizer::Sgd(cnnc_ir::Sgd {
                momentum: defaults::MOMENTUM,
                weight_decay: defaults::WEIGHT_DECAY,
                nesterov: false,
            }),
            lr: defaults::SGD_LR,
            schedule: Schedule::Cosine,
            epochs,
            batch: defaults::BATCH as usize,
            seed: 0,
            frozen: BTreeSet::new(),
        }
    }

    /// One line saying what a run of `graph` trains on and how (`data` names the data set,
    /// `backend` what runs the steps).
    pub fn describe(
        &self,
        graph: &Graph,
        data: &str,
        batches: &crate::train_data::DataBatches,
        backend: &str,
    ) -> String {
        let shape = batches.train.shape;
        let test = batches
            .test
            .as_ref()
            .map_or(String::from("no test set"), |t| format!("{} test", crate::thousands(t.len() as u64)));
        let optimizer = match self.optimizer {
            Optimizer::Sgd(s) => format!(
                "sgd (momentum {}{}, weight decay {})",
                s.momentum,
                if s.nesterov { ", nesterov" } else { "" },
                s.weight_decay
            ),
            Optimizer::Adam(a) => format!("adam (weight decay {})", a.weight_decay),
            Optimizer::RmsProp(r) => format!("rmsprop (momentum {}, weight decay {})", r.momentum, r.weight_decay),
        };
        // The parameters the source freezes and those --freeze adds, each once.
        let frozen = graph.frozen.union(&self.frozen).count();
        let frozen = if frozen == 0 { String::new() } else { format!(", {frozen} tensors frozen") };
        format!(
            "training `{}` on {data} ({} training and {test} images of {}x{}x{}) for {} epoch{} of batch {}: {} loss, {optimizer}, lr {} {}{frozen}, on the {backend} back end",
            graph.name,
            crate::thousands(batches.train.len() as u64),
            shape[0],
            shape[1],
            shape[2],
            self.epochs,
            if self.epochs == 1 { "" } else { "s" },
            self.batch,
            self.loss.name(),
            self.lr,
            self.schedule.name(),
        )
    }
}

/// Where a run starts: afresh, or from a checkpoint's position and history.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Start {
    pub position: Position,
    pub history: Vec<EpochRecord>,
    pub sums: EpochSums,
}

/// What a run ended with.
#[derive(Clone, Debug, PartialEq)]
pub struct Trained {
    pub state: TensorMap,
    pub history: Vec<EpochRecord>,
    /// Where it stopped, when stopped before the last epoch (Ctrl-C).
    pub interrupted: Option<Position>,
}

/// A checkpoint: the whole state and where training stands, with the settings it was made
/// with. Stored as safetensors (the state's tensors) whose metadata holds the rest as JSON
/// under [`CHECKPOINT_KEY`], beside any metadata of the run (the input normalisation).
#[derive(Clone, Debug, PartialEq)]
pub struct Checkpoint {
    pub model: String,
    pub settings: TrainSettings,
    pub start: Start,
    pub state: TensorMap,
    pub metadata: Metadata,
}

/// The metadata key of a checkpoint's progress.
pub const CHECKPOINT_KEY: &str = "cnnc.checkpoint";

/// The JSON under [`CHECKPOINT_KEY`].
#[derive(Serialize, Deserialize)]
struct CheckpointInfo {
    model: String,
    settings: TrainSettings,
    position: Position,
    sums: EpochSums,
    history: Vec<EpochRecord>,
}

impl Checkpoint {
    /// Writes the checkpoint atomically.
    pub fn save(&self, path: &Path) -> Result<(), TrainError> {
        let info = CheckpointInfo {
            model: self.model.clone(),
            settings: self.settings.clone(),
            position: self.start.position,
            sums: self.start.sums,
            history: self.start.history.clone(),
        };
        let mut metadata = self.metadata.clone();
        // Finite numbers, strings and lists always serialise.
        metadata.insert(CHECKPOINT_KEY.to_owned(), serde_json::to_string(&info).unwrap_or_default());
        cnnc_runtime::save_safetensors_with_metadata(path, &self.state, &metadata)
            .map_err(|source| TrainError::Checkpoint { path: path.to_path_buf(), source })
    }

    /// Reads a checkpoint of at most `limit` bytes.
    pub fn load(path: &Path, limit: u64) -> Result<Checkpoint, TrainError> {
        let (state, mut metadata) = cnnc_runtime::load_safetensors_with_metadata_within(path, limit)
            .map_err(|e| TrainError::Exec(ExecError::WeightsFile(e)))?;
        let not = |problem: String| TrainError::NotACheckpoint { path: path.to_path_buf(), problem };
        let text = metadata.remove(CHECKPOINT_KEY).ok_or_else(|| {
            not(format!("its metadata has no `{CHECKPOINT_KEY}` entry (a weights file? use it with --init-from)"))
        })?;
        let info: CheckpointInfo =
            serde_json::from_str(&text).map_err(|e| not(format!("its `{CHECKPOINT_KEY}` entry is malformed ({e})")))?;
        metadata.remove("format");
        Ok(Checkpoint {
            model: info.model,
            settings: info.settings,
            start: Start { position: info.position, history: info.history, sums: info.sums },
            state,
            metadata,
        })
    }

    /// An error unless this checkpoint can continue a run of `model` with `settings` (the
    /// epoch count may grow: resuming can train for longer).
    pub fn check_resumable(&self, path: &Path, model: &str, settings: &TrainSettings) -> Result<(), TrainError> {
        let mismatch = |problem: String| TrainError::Mismatch { path: path.to_path_buf(), problem };
        if self.model != model {
            return Err(mismatch(format!("was made by training `{}`, not `{model}`", self.model)));
        }
        let ours = TrainSettings { epochs: self.settings.epochs, ..settings.clone() };
        if ours != self.settings {
            let describe = |s: &TrainSettings| serde_json::to_string(s).unwrap_or_default();
            return Err(mismatch(format!(
                "was made with other settings: {} (now {})",
                describe(&self.settings),
                describe(&ours)
            )));
        }
        if self.start.position.epoch >= settings.epochs {
            return Err(mismatch(format!(
                "has already done {} epochs: pass `--epochs N` with N above that to train on",
                self.start.position.epoch
            )));
        }
        Ok(())
    }
}

/// Trains from `start` to `settings.epochs`. After each epoch (and when the observer asks to
/// stop, at a step boundary) the whole state is written to `checkpoint` when given, with
/// `metadata` beside it; a non-finite loss stops the run without writing, so the last
/// checkpoint stays the last good state.
pub fn train(
    stepper: &mut dyn Stepper,
    data: &dyn Batches,
    model: &str,
    settings: &TrainSettings,
    start: Start,
    checkpoint: Option<(&Path, &Metadata)>,
    observer: &mut dyn Observer,
) -> Result<Trained, TrainError> {
    if settings.batch == 0 {
        return Err(TrainError::ZeroBatch);
    }
    let batches = data.train_batches();
    let total = (batches as u64).saturating_mul(settings.epochs as u64);
    let Start { mut position, mut history, mut sums } = start;
    let save = |state: TensorMap, position: Position, sums: EpochSums, history: &[EpochRecord]| {
        let Some((path, metadata)) = checkpoint else { return Ok(()) };
        let start = Start { position, history: history.to_vec(), sums };
        Checkpoint { model: model.to_owned(), settings: settings.clone(), start, state, metadata: metadata.clone() }
            .save(path)
    };
    let mut saved_once = false;
    while position.epoch < settings.epochs {
        let epoch = position.epoch;
        // The rate of the epoch's last step so far: a run resumed after the epoch's last batch
        // (stopped while evaluating) records the rate its steps ran at, not the next one's.
        let last = if position.batch > 0 { position.step.saturating_sub(1) } else { position.step };
        let mut lr = settings.schedule.rate(settings.lr, epoch, last, total);
        for batch in data.train(epoch, position.batch) {
            if observer.stop_requested() {
                save(stepper.state(), position, sums, &history)?;
                return Ok(Trained { state: stepper.state(), history, interrupted: Some(position) });
            }
            lr = settings.schedule.rate(settings.lr, epoch, position.step, total);
            let began = Instant::now();
            let args = StepArgs { lr, step: position.step + 1, seed: settings.seed };
            let step = stepper.step(&batch.x, &batch.target, args)?;
            if !step.loss.is_finite() {
                let checkpoint = checkpoint.filter(|_| saved_once).map(|(path, _)| path.to_path_buf());
                return Err(TrainError::NonFinite {
                    loss: step.loss,
                    epoch: epoch + 1,
                    batch: position.batch + 1,
                    step: position.step + 1,
                    checkpoint,
                });
            }
            let n = batch.x.shape.first().copied().unwrap_or(0) as u64;
            sums.loss += step.loss * n as f64;
            sums.samples += n;
            sums.correct += batch.labels.as_deref().map_or(0, |labels| correct(&step.output, labels));
            sums.seconds += began.elapsed().as_secs_f64();
            position.batch += 1;
            position.step += 1;
            observer.step(&StepProgress {
                epoch: epoch + 1,
                batch: position.batch,
                batches,
                loss: sums.loss / sums.samples.max(1) as f64,
                accuracy: batch.labels.as_ref().map(|_| sums.correct as f64 / sums.samples.max(1) as f64),
                images_per_second: sums.samples as f64 / sums.seconds.max(1e-9),
                lr,
            });
        }
        let classes = data.train(epoch, 0).next().is_some_and(|b| b.labels.is_some());
        observer.evaluating();
        let (test_loss, test_accuracy) = match data.test() {
            Some(test) => match evaluate(stepper, test, &|| observer.stop_requested())? {
                Some((loss, accuracy)) => (Some(loss), accuracy),
                // Stopped while evaluating: the epoch's steps are all done, so the checkpoint
                // is taken after its last batch and a resumed run starts with the evaluation.
                None => {
                    save(stepper.state(), position, sums, &history)?;
                    return Ok(Trained { state: stepper.state(), history, interrupted: Some(position) });
                }
            },
            None => (None, None),
        };
        let record = EpochRecord {
            epoch: epoch + 1,
            train_loss: sums.loss / sums.samples.max(1) as f64,
            train_accuracy: classes.then(|| sums.correct as f64 / sums.samples.max(1) as f64),
            test_loss,
            test_accuracy,
            lr,
            seconds: sums.seconds,
            images_per_second: sums.samples as f64 / sums.seconds.max(1e-9),
        };
        observer.epoch(&record);
        history.push(record);
        position = Position { epoch: epoch + 1, batch: 0, step: position.step };
        sums = EpochSums::default();
        save(stepper.state(), position, sums, &history)?;
        saved_once = true;
    }
    Ok(Trained { state: stepper.state(), history, interrupted: None })
}

/// The mean loss (weighted by batch size) and the accuracy of `batches` in inference mode;
/// `None` when `stop` says so before a batch (Ctrl-C while a large test set runs).
pub fn evaluate(
    stepper: &mut dyn Stepper,
    batches: impl Iterator<Item = Batch>,
    stop: &dyn Fn() -> bool,
) -> Result<Option<(f64, Option<f64>)>, ExecError> {
    let (mut loss, mut samples, mut correct_count, mut classes) = (0.0, 0u64, 0u64, false);
    for batch in batches {
        if stop() {
            stepper.evaluated();
            return Ok(None);
        }
        let step = stepper.evaluate(&batch.x, &batch.target)?;
        let n = batch.x.shape.first().copied().unwrap_or(0) as u64;
        loss += step.loss * n as f64;
        samples += n;
        if let Some(labels) = &batch.labels {
            classes = true;
            correct_count += correct(&step.output, labels);
        }
    }
    stepper.evaluated();
    let samples = samples.max(1) as f64;
    Ok(Some((loss / samples, classes.then(|| correct_count as f64 / samples))))
}

/// How many rows of `output` (`[B, classes, ...]` flattened per sample) have their largest
/// score at the label (the first of equal scores).
pub fn correct(output: &Tensor, labels: &[i64]) -> u64 {
    let Some(&rows) = output.shape.first() else { return 0 };
    if rows == 0 || rows != labels.len() {
        return 0;
    }
    let width = output.data.len() / rows;
    let mut hits = 0;
    for (row, &label) in output.data.chunks(width.max(1)).zip(labels) {
        let best = row.iter().enumerate().fold(None, |best: Option<(usize, f32)>, (i, &v)| match best {
            Some((_, b)) if v > b => Some((i, v)),
            Some(_) => best,
            None => Some((i, v)),
        });
        if best.is_some_and(|(i, _)| i as i64 == label) {
            hits += 1;
        }
    }
    hits
}

/// Training steps on the reference interpreter: the training graph (loss, backward,
/// optimiser updates, batch statistics) for steps, and the loss on the inference-mode forward
/// pass for evaluations.
pub struct InterpStepper {
    training: Graph,
    training_roles: Vec<OutputRole>,
    evaluation: Graph,
    evaluation_roles: Vec<OutputRole>,
    state: TensorMap,
}

impl InterpStepper {
    /// The stepper of `graph` (the source model) trained as `settings` says, from `state`
    /// (parameters and buffers, and optimiser state when resuming).
    pub fn new(graph: &Graph, settings: &TrainSettings, state: TensorMap) -> Result<InterpStepper, ExecError> {
        let options = TrainingOptions {
            objective: Objective::Loss(settings.loss),
            optimizer: Some(settings.optimizer),
            batch_stats: true,
            frozen: settings.frozen.clone(),
            input_grads: false,
        };
        let training = cnnc_passes::training_graph(graph, &options).map_err(ExecError::Passes)?;
        // Every parameter frozen and no input gradient: no backward pass at all, only the
        // forward pass and the loss, in inference mode.
        let all: BTreeSet<String> = graph.named_params().into_iter().map(|(name, _)| name).collect();
        let options = TrainingOptions { optimizer: None, batch_stats: false, frozen: all, ..options };
        let evaluation = cnnc_passes::training_graph(graph, &options).map_err(ExecError::Passes)?;
        Ok(InterpStepper {
            training: training.graph,
            training_roles: training.outputs,
            evaluation: evaluation.graph,
            evaluation_roles: evaluation.outputs,
            state,
        })
    }
}

impl Stepper for InterpStepper {
    fn step(&mut self, x: &Tensor, target: &Tensor, args: StepArgs) -> Result<Step, ExecError> {
        let options = Options::new().with_seed(args.seed).with_step(args.step).with_lr(args.lr);
        let inputs = [x.clone(), target.clone()];
        let run = cnnc_interp::run(&self.training, &mut self.state, &inputs, &options)?;
        Ok(step_of(&self.training_roles, &run))
    }

    fn evaluate(&mut self, x: &Tensor, target: &Tensor) -> Result<Step, ExecError> {
        let inputs = [x.clone(), target.clone()];
        let run = cnnc_interp::run(&self.evaluation, &mut self.state, &inputs, &Options::new())?;
        Ok(step_of(&self.evaluation_roles, &run))
    }

    fn state(&self) -> TensorMap {
        self.state.clone()
    }
}

fn step_of(roles: &[OutputRole], run: &cnnc_interp::Run) -> Step {
    let g = cnnc_interp::gradients::<Tensor>(roles, run);
    let loss = g.loss.unwrap_or(f64::NAN);
    let output = g.outputs.into_iter().next().unwrap_or_else(|| Tensor::zeros(&[0]));
    Step { loss, output }
}

/// Evaluation models whose parameters take more bytes than this are dropped after each
/// evaluation and compiled again for the next: otherwise their copy of the parameters
/// (ResNet-18: 43 MiB, a compile of tens of milliseconds) stays resident through training and
/// under each epoch's checkpoint; smaller ones (the digits demo's) are kept.
const KEEP_EVALUATOR_BYTES: usize = 16 << 20;

/// Training steps on the JIT: the optimised training plan compiled once per batch size (the
/// last batch of an epoch may be smaller), and the loss-only plan for evaluations. The newest
/// state lives in the model that ran the last step; switching batch sizes moves it across.
pub struct JitStepper {
    mode: cnnc_jit::Mode,
    training: cnnc_ir::plan::Plan,
    evaluation: cnnc_ir::plan::Plan,
    trainers: std::collections::BTreeMap<usize, cnnc_jit::CompiledModel>,
    /// Evaluation models, with the step count whose state they hold.
    evaluators: std::collections::BTreeMap<usize, (cnnc_jit::CompiledModel, u64)>,
    /// The batch size of the trainer holding the newest state (`None`: `state` is newest).
    live: Option<usize>,
    /// The state before the first step; empty once a trainer holds it.
    state: TensorMap,
    steps: u64,
    compile_ms: f64,
}

impl JitStepper {
    /// The stepper of `graph` trained as `settings` says, from `state`, in kernel mode `mode`.
    pub fn new(
        graph: &Graph,
        settings: &TrainSettings,
        state: TensorMap,
        mode: cnnc_jit::Mode,
    ) -> Result<JitStepper, ExecError> {
        let options = TrainingOptions {
            objective: Objective::Loss(settings.loss),
            optimizer: Some(settings.optimizer),
            batch_stats: true,
            frozen: settings.frozen.clone(),
            input_grads: false,
        };
        let passes = cnnc_passes::PassOptions::all();
        let training = cnnc_passes::optimize_training(graph, None, &passes, &options).map_err(ExecError::Passes)?;
        let all: BTreeSet<String> = graph.named_params().into_iter().map(|(name, _)| name).collect();
        let loss_only = TrainingOptions { optimizer: None, batch_stats: false, frozen: all, ..options };
        let evaluation = cnnc_passes::optimize_training(graph, None, &passes, &loss_only).map_err(ExecError::Passes)?;
        Ok(JitStepper {
            mode,
            training: training.plan,
            evaluation: evaluation.plan,
            trainers: Default::default(),
            evaluators: Default::default(),
            live: None,
            state,
            steps: 0,
            compile_ms: 0.0,
        })
    }

    /// Milliseconds spent compiling so far (every plan, every batch size).
    pub fn compile_ms(&self) -> f64 {
        self.compile_ms
    }

    fn model(
        plan: &cnnc_ir::plan::Plan,
        batch: usize,
        mode: cnnc_jit::Mode,
    ) -> Result<cnnc_jit::CompiledModel, ExecError> {
        Ok(cnnc_jit::CompiledModel::compile(plan, &cnnc_jit::Options::new(batch).with_mode(mode))?)
    }

    /// Compiles the training step and the evaluation of batches of `batch` now rather than at
    /// their first use; the milliseconds that took (0 when both were compiled before).
    pub fn compile_for(&mut self, batch: usize) -> Result<f64, ExecError> {
        let before = self.compile_ms;
        self.compile_trainer(batch)?;
        self.compile_evaluator(batch)?;
        Ok(self.compile_ms - before)
    }

    /// The kernel mode the steps run in.
    pub fn mode(&self) -> cnnc_jit::Mode {
        self.mode
    }

    fn compile_trainer(&mut self, batch: usize) -> Result<(), ExecError> {
        if !self.trainers.contains_key(&batch) {
            let model = Self::model(&self.training, batch, self.mode)?;
            self.compile_ms += model.compile_ms();
            self.trainers.insert(batch, model);
        }
        Ok(())
    }

    fn compile_evaluator(&mut self, batch: usize) -> Result<(), ExecError> {
        if !self.evaluators.contains_key(&batch) {
            let model = Self::model(&self.evaluation, batch, self.mode)?;
            self.compile_ms += model.compile_ms();
            self.evaluators.insert(batch, (model, u64::MAX));
        }
        Ok(())
    }

    /// The trainer for `batch`, holding the newest state.
    fn trainer(&mut self, batch: usize) -> Result<&cnnc_jit::CompiledModel, ExecError> {
        if self.live != Some(batch) {
            self.compile_trainer(batch)?;
            // The state moves into the trainer, never copied while it is whole: a copy would
            // double the memory of the parameters and the optimiser state (after a failed
            // load the stepper holds none, and the run stops with the error).
            let state = match self.live.and_then(|b| self.trainers.get(&b)) {
                Some(model) => model.state(),
                None => std::mem::take(&mut self.state),
            };
            self.live = None;
            self.trainers[&batch].load_state(state)?;
            self.live = Some(batch);
        }
        Ok(&self.trainers[&batch])
    }
}

impl Stepper for JitStepper {
    fn step(&mut self, x: &Tensor, target: &Tensor, args: StepArgs) -> Result<Step, ExecError> {
        let batch = x.shape.first().copied().unwrap_or(0);
        let jit_args = cnnc_jit::StepArgs { lr: args.lr, step: args.step, seed: args.seed };
        let result = self.trainer(batch)?.train_step(&[x.clone(), target.clone()], &jit_args)?;
        self.steps += 1;
        let output = result.outputs.into_iter().next().unwrap_or_else(|| Tensor::zeros(&[0]));
        Ok(Step { loss: result.loss.map_or(f64::NAN, f64::from), output })
    }

    fn evaluate(&mut self, x: &Tensor, target: &Tensor) -> Result<Step, ExecError> {
        let batch = x.shape.first().copied().unwrap_or(0);
        self.compile_evaluator(batch)?;
        if self.evaluators[&batch].1 != self.steps {
            // Only what the evaluation reads, copied once out of the newest state and moved
            // into the evaluator: the optimiser state would be another copy of the parameters
            // (ResNet-18: 43 MiB more at every epoch's end).
            let needed: BTreeSet<&str> = self.evaluation.params.iter().map(|p| p.name.as_str()).collect();
            let state = match self.live.and_then(|b| self.trainers.get(&b)) {
                Some(model) => model.state_where(|name| needed.contains(name)),
                None => self
                    .state
                    .iter()
                    .filter(|(n, _)| needed.contains(n.as_str()))
                    .map(|(n, t)| (n.clone(), t.clone()))
                    .collect(),
            };
            let (model, at) = self.evaluators.get_mut(&batch).expect("inserted above");
            model.load_state(state)?;
            *at = self.steps;
        }
        let result = self.evaluators[&batch].0.run(&[x.clone(), target.clone()], &cnnc_jit::StepArgs::default())?;
        let output = result.outputs.into_iter().next().unwrap_or_else(|| Tensor::zeros(&[0]));
        Ok(Step { loss: result.loss.map_or(f64::NAN, f64::from), output })
    }

    fn evaluated(&mut self) {
        let floats: usize = self.evaluation.params.iter().map(|p| p.stored_len()).sum();
        if floats.saturating_mul(4) > KEEP_EVALUATOR_BYTES {
            self.evaluators.clear();
        }
    }

    fn state(&self) -> TensorMap {
        match self.live.and_then(|b| self.trainers.get(&b)) {
            Some(model) => model.state(),
            None => self.state.clone(),
        }
    }
}

/// The model's own tensors of a training state (parameters and buffers, no optimiser state):
/// what `cnnc train -o` writes and `cnnc run --weights` reads.
pub fn model_tensors(graph: &Graph, state: &TensorMap) -> TensorMap {
    graph.named_params().into_iter().filter_map(|(name, _)| state.get(&name).map(|t| (name, t.clone()))).collect()
}

/// What `--init-from` took from a weights file.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct InitFrom {
    /// Tensors loaded from the file, by name.
    pub loaded: Vec<String>,
    /// The model's tensors the file lacks, initialised from the seed.
    pub initialised: Vec<String>,
    /// The model's tensors the file holds with another shape (a new head with another class
    /// count, say), initialised from the seed: name, the file's shape, the model's.
    pub reshaped: Vec<(String, Vec<usize>, Vec<usize>)>,
    /// The file's tensors the model has no use for.
    pub ignored: Vec<String>,
}

/// The starting parameters of transfer learning: every tensor of `weights` whose name and
/// shape fit the model, the rest initialised from `seed` as `cnnc init` does; what came from
/// where is reported.
pub fn init_from(graph: &Graph, weights: &TensorMap, seed: u64) -> Result<(TensorMap, InitFrom), ExecError> {
    let mut params = cnnc_runtime::try_init_params(graph, seed)?;
    let mut report = InitFrom::default();
    for (name, tensor) in params.iter_mut() {
        match weights.get(name) {
            Some(w) if w.shape == tensor.shape => {
                *tensor = w.clone();
                report.loaded.push(name.clone());
            }
            Some(w) => report.reshaped.push((name.clone(), w.shape.clone(), tensor.shape.clone())),
            None => report.initialised.push(name.clone()),
        }
    }
    report.ignored = weights.keys().filter(|k| !params.contains_key(*k)).cloned().collect();
    Ok((params, report))
}

/// A `--freeze` name that names no layer.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
#[error("--freeze `{name}`: model `{model}` has no layer `{name}` and no layer inside it{}", match .suggestion { Some(s) => format!(" (did you mean `{s}`?)"), None => String::new() })]
pub struct UnknownFreeze {
    pub name: String,
    pub model: String,
    pub suggestion: Option<String>,
}

/// The full names of the parameters `--freeze` names: each name is a layer (`conv1`) or a
/// prefix of layer names at a dot (`layer1` freezes `layer1.0.conv1` and everything else in
/// `layer1`), as `freeze` in the language reads it.
pub fn frozen_params(graph: &Graph, names: &[String]) -> Result<BTreeSet<String>, UnknownFreeze> {
    let mut frozen = BTreeSet::new();
    for name in names {
        let within =
            |layer: &str| layer == name || layer.strip_prefix(name.as_str()).is_some_and(|r| r.starts_with('.'));
        let layers: Vec<_> = graph.iter().filter(|(_, n)| within(&n.name)).collect();
        if layers.is_empty() {
            let candidates: Vec<&str> = graph.iter().map(|(_, n)| n.name.as_str()).collect();
            let suggestion = cnnc_diag::did_you_mean(name, candidates.iter().copied()).map(str::to_owned);
            return Err(UnknownFreeze { name: name.clone(), model: graph.name.clone(), suggestion });
        }
        for (id, node) in layers {
            frozen.extend(
                graph.params(id).iter().filter(|p| p.trainable()).map(|p| format!("{}.{}", node.name, p.suffix)),
            );
        }
    }
    Ok(frozen)
}

/// `Loss` as text in a checkpoint's settings (`ce`, `huber:1`, `hinge:1`...).
mod loss_text {
    use super::Loss;
    use cnnc_ir::HingeForm;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(loss: &Loss, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&match loss {
            Loss::Huber { delta } => format!("huber:{delta}"),
            Loss::Hinge { margin, .. } => format!("{}:{margin}", loss.name()),
            Loss::CrossEntropy | Loss::Mse | Loss::L1 => loss.name().to_owned(),
        })
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Loss, D::Error> {
        let text = String::deserialize(d)?;
        let (name, value) = text.split_once(':').map_or((text.as_str(), None), |(n, v)| (n, Some(v)));
        let number = || {
            value
                .and_then(|v| v.parse::<f64>().ok())
                .ok_or_else(|| serde::de::Error::custom(format!("loss `{text}` lacks its constant")))
        };
        Ok(match name {
            "ce" => Loss::CrossEntropy,
            "mse" => Loss::Mse,
            "l1" => Loss::L1,
            "huber" => Loss::Huber { delta: number()? },
            "hinge" => Loss::Hinge { margin: number()?, form: HingeForm::Sum },
            "multi-margin" => Loss::Hinge { margin: number()?, form: HingeForm::MeanOverClasses },
            other => return Err(serde::de::Error::custom(format!("unknown loss `{other}`"))),
        })
    }
}

/// `Optimizer` in a checkpoint's settings, as a JSON object of its constants.
mod optimizer_text {
    use cnnc_ir::{Adam, Optimizer, RmsProp, Sgd};
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    #[derive(Serialize, Deserialize)]
    #[serde(tag = "kind", rename_all = "lowercase")]
    enum Text {
        Sgd { momentum: f64, weight_decay: f64, nesterov: bool },
        Adam { beta1: f64, beta2: f64, eps: f64, weight_decay: f64 },
        RmsProp { alpha: f64, eps: f64, momentum: f64, weight_decay: f64 },
    }

    pub fn serialize<S: Serializer>(optimizer: &Optimizer, s: S) -> Result<S::Ok, S::Error> {
        match *optimizer {
            Optimizer::Sgd(Sgd { momentum, weight_decay, nesterov }) => Text::Sgd { momentum, weight_decay, nesterov },
            Optimizer::Adam(Adam { beta1, beta2, eps, weight_decay }) => Text::Adam { beta1, beta2, eps, weight_decay },
            Optimizer::RmsProp(RmsProp { alpha, eps, momentum, weight_decay }) => {
                Text::RmsProp { alpha, eps, momentum, weight_decay }
            }
        }
        .serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Optimizer, D::Error> {
        Ok(match Text::deserialize(d)? {
            Text::Sgd { momentum, weight_decay, nesterov } => Optimizer::Sgd(Sgd { momentum, weight_decay, nesterov }),
            Text::Adam { beta1, beta2, eps, weight_decay } => Optimizer::Adam(Adam { beta1, beta2, eps, weight_decay }),
            Text::RmsProp { alpha, eps, momentum, weight_decay } => {
                Optimizer::RmsProp(RmsProp { alpha, eps, momentum, weight_decay })
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cnnc_diag::Span;
    use cnnc_ir::{Activation, Fc, Op, Sgd, Shape};
    use std::cell::Cell;

    /// input [4] -> fc(8) -> relu -> fc(3).
    fn mlp() -> Graph {
        let mut g = Graph::new("mlp");
        let x = g.add_input("x", Shape(vec![4]), Span::DUMMY).unwrap();
        let (h, _) = g.add(Op::Fc(Fc { out_features: 8, bias: true }), vec![x], "fc1", Span::DUMMY).unwrap();
        let (r, _) = g.add(Op::Activation(Activation::Relu), vec![h], "relu", Span::DUMMY).unwrap();
        let (y, _) = g.add(Op::Fc(Fc { out_features: 3, bias: true }), vec![r], "fc2", Span::DUMMY).unwrap();
        g.outputs.push(y);
        g
    }

    /// 60 points of three separable classes (the class is where the largest of the first
    /// three features is), shuffled per epoch from the seed, in batches of `batch`.
    struct Points {
        x: Vec<[f32; 4]>,
        labels: Vec<i64>,
        batch: usize,
        seed: u64,
    }

    impl Points {
        fn new(batch: usize, seed: u64) -> Points {
            let mut rng = cnnc_runtime::Rng::seed_from_u64(11);
            let mut x = Vec::new();
            let mut labels = Vec::new();
            for _ in 0..60 {
                let p: [f32; 4] = std::array::from_fn(|_| rng.normal() as f32);
                let class = (0..3).fold(0, |best, k| if p[k] > p[best] { k } else { best });
                x.push(p);
                labels.push(class as i64);
            }
            Points { x, labels, batch, seed }
        }

        fn batch_of(&self, indices: &[usize]) -> Batch {
            let data = indices.iter().flat_map(|&i| self.x[i]).collect();
            let labels: Vec<i64> = indices.iter().map(|&i| self.labels[i]).collect();
            Batch {
                x: Tensor { shape: vec![indices.len(), 4], data },
                target: Tensor { shape: vec![indices.len()], data: labels.iter().map(|&l| l as f32).collect() },
                labels: Some(labels),
            }
        }
    }

    impl Batches for Points {
        fn train(&self, epoch: usize, skip: usize) -> Box<dyn Iterator<Item = Batch> + '_> {
            let mut order: Vec<usize> = (0..self.x.len()).collect();
            let mut rng = cnnc_runtime::Rng::seed_from_u64(self.seed ^ (epoch as u64 + 1).wrapping_mul(0x9e37));
            for i in (1..order.len()).rev() {
                order.swap(i, (rng.next_u64() % (i as u64 + 1)) as usize);
            }
            let chunks: Vec<Vec<usize>> = order.chunks(self.batch).map(<[usize]>::to_vec).collect();
            Box::new(chunks.into_iter().skip(skip).map(move |c| self.batch_of(&c)))
        }
        fn train_batches(&self) -> usize {
            self.x.len().div_ceil(self.batch)
        }
        fn test(&self) -> Option<Box<dyn Iterator<Item = Batch> + '_>> {
            Some(Box::new((0..3).map(|k| self.batch_of(&(k * 20..k * 20 + 20).collect::<Vec<_>>()))))
        }
    }

    /// Stops after `stop_after` steps when set; records the epochs.
    #[derive(Default)]
    struct Watch {
        steps: Cell<usize>,
        stop_after: Option<usize>,
        epochs: Vec<EpochRecord>,
    }

    impl Observer for Watch {
        fn step(&mut self, _: &StepProgress) {
            self.steps.set(self.steps.get() + 1);
        }
        fn epoch(&mut self, record: &EpochRecord) {
            self.epochs.push(record.clone());
        }
        fn stop_requested(&self) -> bool {
            self.stop_after.is_some_and(|n| self.steps.get() >= n)
        }
    }

    fn settings(epochs: usize, lr: f64) -> TrainSettings {
        TrainSettings {
            loss: Loss::CrossEntropy,
            optimizer: Optimizer::Sgd(Sgd { momentum: 0.9, weight_decay: 1e-4, nesterov: false }),
            lr,
            schedule: Schedule::Cosine,
            epochs,
            batch: 8,
            seed: 5,
            frozen: BTreeSet::new(),
        }
    }

    fn stepper(settings: &TrainSettings, state: TensorMap) -> InterpStepper {
        InterpStepper::new(&mlp(), settings, state).unwrap()
    }

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("cnnc-train-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn schedules_follow_pytorch() {
        assert_eq!(Schedule::Constant.rate(0.1, 5, 50, 100), 0.1);
        let step = Schedule::Step { every: 2, gamma: 0.5 };
        let rates: Vec<f64> = (0..5).map(|e| step.rate(0.1, e, 0, 100)).collect();
        assert_eq!(rates, [0.1, 0.1, 0.05, 0.05, 0.025]);
        assert_eq!(Schedule::Cosine.rate(0.1, 0, 0, 100), 0.1);
        assert!((Schedule::Cosine.rate(0.1, 0, 50, 100) - 0.05).abs() < 1e-15);
        assert!(Schedule::Cosine.rate(0.1, 0, 100, 100).abs() < 1e-15);
    }

    #[test]
    fn training_learns_and_is_deterministic() {
        let data = Points::new(8, 3);
        let settings = settings(15, 0.1);
        let init = cnnc_runtime::init_params(&mlp(), 1);
        let run = || {
            let mut watch = Watch::default();
            let trained = train(
                &mut stepper(&settings, init.clone()),
                &data,
                "mlp",
                &settings,
                Start::default(),
                None,
                &mut watch,
            )
            .unwrap();
            assert_eq!(watch.steps.get(), 15 * 8);
            assert_eq!(watch.epochs, trained.history);
            trained
        };
        let (a, b) = (run(), run());
        assert_eq!(a.state, b.state, "the same settings give bit-identical weights");
        let untimed = |t: &Trained| -> Vec<EpochRecord> {
            t.history.iter().map(|r| EpochRecord { seconds: 0.0, images_per_second: 0.0, ..r.clone() }).collect()
        };
        assert_eq!(untimed(&a), untimed(&b), "and the same figures");
        let first = &a.history[0];
        let last = a.history.last().unwrap();
        assert!(last.train_loss < 0.5 * first.train_loss, "{} -> {}", first.train_loss, last.train_loss);
        assert!(last.test_accuracy.unwrap() >= 0.9, "{:?}", last.test_accuracy);
        assert!(last.lr < 0.01 * settings.lr, "cosine anneals to near zero: {}", last.lr);
        // Momentum buffers are part of the state; the model's own tensors are not.
        assert!(a.state.keys().any(|k| k.ends_with("momentum_buffer")), "{:?}", a.state.keys());
        assert_eq!(model_tensors(&mlp(), &a.state).len(), 4);
    }

    /// A run of `epochs` epochs on [`Points`] whole, and the same run stopped after
    /// `stop_after` steps with its checkpoint (and `metadata`) at `path`.
    struct Stopped {
        dir: PathBuf,
        path: PathBuf,
        data: Points,
        settings: TrainSettings,
        whole: Trained,
        stopped: Trained,
    }

    fn stopped_run(name: &str, epochs: usize, stop_after: usize, metadata: &Metadata) -> Stopped {
        let dir = scratch(name);
        let data = Points::new(8, 3);
        let settings = settings(epochs, 0.1);
        let init = cnnc_runtime::init_params(&mlp(), 2);
        let mut watch = Watch::default();
        let whole =
            train(&mut stepper(&settings, init.clone()), &data, "mlp", &settings, Start::default(), None, &mut watch)
                .unwrap();
        let path = dir.join("ckpt.safetensors");
        let mut watch = Watch { stop_after: Some(stop_after), ..Watch::default() };
        let start = Start::default();
        let stopped =
            train(&mut stepper(&settings, init), &data, "mlp", &settings, start, Some((&path, metadata)), &mut watch)
                .unwrap();
        Stopped { dir, path, data, settings, whole, stopped }
    }

    /// The run resumed from `checkpoint`, checkpointing to `save`.
    fn resume(
        data: &Points,
        settings: &TrainSettings,
        checkpoint: &Checkpoint,
        save: Option<(&Path, &Metadata)>,
    ) -> Trained {
        let mut watch = Watch::default();
        let mut resumed = stepper(settings, checkpoint.state.clone());
        train(&mut resumed, data, "mlp", settings, checkpoint.start.clone(), save, &mut watch).unwrap()
    }

    #[test]
    fn a_resumed_run_ends_where_the_uninterrupted_one_does() {
        let metadata = Metadata::from([("cnnc.normalize.scale".to_owned(), "1".to_owned())]);
        let Stopped { dir, path, data, settings, whole, stopped } = stopped_run("resume", 3, 13, &metadata);
        assert_eq!(stopped.interrupted, Some(Position { epoch: 1, batch: 5, step: 13 }));
        let checkpoint = Checkpoint::load(&path, u64::MAX).unwrap();
        assert_eq!(checkpoint.start.position, Position { epoch: 1, batch: 5, step: 13 });
        assert_eq!(checkpoint.metadata, metadata, "the run's metadata rides along");
        assert_eq!(checkpoint.state, stopped.state);
        checkpoint.check_resumable(&path, "mlp", &settings).unwrap();

        let resumed = resume(&data, &settings, &checkpoint, Some((&path, &metadata)));
        assert_eq!(resumed.state, whole.state, "bit-identical weights");
        assert_eq!(resumed.history.len(), 3);
        for (r, w) in resumed.history.iter().zip(&whole.history) {
            assert_eq!((r.train_loss, r.test_accuracy), (w.train_loss, w.test_accuracy), "epoch {}", r.epoch);
        }

        // Another model, other settings, or nothing left to do are refused.
        assert!(checkpoint.check_resumable(&path, "other", &settings).is_err());
        let other = TrainSettings { lr: 0.2, ..settings.clone() };
        let e = checkpoint.check_resumable(&path, "mlp", &other).unwrap_err();
        assert!(e.to_string().contains("was made with other settings"), "{e}");
        let done = Checkpoint::load(&path, u64::MAX).unwrap();
        let e = done.check_resumable(&path, "mlp", &settings).unwrap_err();
        assert!(e.to_string().contains("has already done 3 epochs"), "{e}");
        assert!(done.check_resumable(&path, "mlp", &TrainSettings { epochs: 4, ..settings }).is_ok());
        // A weights file is not a checkpoint.
        let weights = dir.join("w.safetensors");
        cnnc_runtime::save_safetensors(&weights, &whole.state).unwrap();
        let e = Checkpoint::load(&weights, u64::MAX).unwrap_err();
        assert!(e.to_string().contains("has no `cnnc.checkpoint` entry"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_stop_while_evaluating_resumes_with_the_evaluation() {
        // 8 batches per epoch: the stop comes after the first epoch's last step, so the
        // evaluation that follows sees it before its first batch.
        let Stopped { dir, path, data, settings, whole, stopped } = stopped_run("stop-in-eval", 2, 8, &Metadata::new());
        let at = Position { epoch: 0, batch: 8, step: 8 };
        assert_eq!(stopped.interrupted, Some(at));
        assert!(stopped.history.is_empty(), "no epoch record without its evaluation");
        let checkpoint = Checkpoint::load(&path, u64::MAX).unwrap();
        assert_eq!(checkpoint.start.position, at);
        checkpoint.check_resumable(&path, "mlp", &settings).unwrap();

        let resumed = resume(&data, &settings, &checkpoint, None);
        assert_eq!(resumed.state, whole.state, "bit-identical weights");
        // The timings differ from run to run; every figure else is the same.
        let figures = |h: &[EpochRecord]| {
            h.iter()
                .map(|r| (r.epoch, r.train_loss, r.train_accuracy, r.test_loss, r.test_accuracy, r.lr))
                .collect::<Vec<_>>()
        };
        assert_eq!(figures(&resumed.history), figures(&whole.history));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// The interpreter's steps, with the loss of step `nan_at` replaced by NaN.
    struct Faulty {
        inner: InterpStepper,
        nan_at: u64,
    }

    impl Stepper for Faulty {
        fn step(&mut self, x: &Tensor, target: &Tensor, args: StepArgs) -> Result<Step, ExecError> {
            let step = self.inner.step(x, target, args)?;
            Ok(if args.step == self.nan_at { Step { loss: f64::NAN, ..step } } else { step })
        }
        fn evaluate(&mut self, x: &Tensor, target: &Tensor) -> Result<Step, ExecError> {
            self.inner.evaluate(x, target)
        }
        fn state(&self) -> TensorMap {
            self.inner.state()
        }
    }

    #[test]
    fn a_non_finite_loss_stops_and_keeps_the_last_good_checkpoint() {
        let dir = scratch("nan");
        let path = dir.join("ckpt.safetensors");
        let data = Points::new(8, 3);
        let settings = settings(5, 0.1);
        let init = cnnc_runtime::init_params(&mlp(), 2);
        let run = |nan_at: u64| {
            let _ = std::fs::remove_file(&path);
            let mut faulty = Faulty { inner: stepper(&settings, init.clone()), nan_at };
            let metadata = Metadata::new();
            let start = Start::default();
            train(&mut faulty, &data, "mlp", &settings, start, Some((&path, &metadata)), &mut Watch::default())
                .unwrap_err()
        };
        // Step 12 is the 4th batch of epoch 2 (8 batches an epoch).
        let e = run(12);
        assert!(matches!(e, TrainError::NonFinite { epoch: 2, batch: 4, step: 12, checkpoint: Some(_), .. }), "{e:?}");
        let text = e.to_string();
        assert!(text.starts_with("the loss became NaN at epoch 2, step 12 (batch 4 of the epoch)"), "{text}");
        assert!(text.ends_with("was kept"), "{text}");
        let good = Checkpoint::load(&path, u64::MAX).unwrap();
        assert_eq!(good.start.position, Position { epoch: 1, batch: 0, step: 8 }, "the end of epoch 1");
        // In the first epoch there is no good checkpoint yet, and none is written.
        let e = run(3);
        assert!(matches!(e, TrainError::NonFinite { epoch: 1, checkpoint: None, .. }), "{e:?}");
        assert!(!path.exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_jit_trains_as_the_interpreter_does() {
        // 60 points in batches of 8: the last batch of each epoch holds 4 (a second trainer).
        let data = Points::new(8, 3);
        let settings = settings(3, 0.1);
        let init = cnnc_runtime::init_params(&mlp(), 1);
        let interp = train(
            &mut stepper(&settings, init.clone()),
            &data,
            "mlp",
            &settings,
            Start::default(),
            None,
            &mut Watch::default(),
        )
        .unwrap();
        for mode in [cnnc_jit::Mode::Portable, cnnc_jit::Mode::host_default()] {
            let mut jit = JitStepper::new(&mlp(), &settings, init.clone(), mode).unwrap();
            let trained =
                train(&mut jit, &data, "mlp", &settings, Start::default(), None, &mut Watch::default()).unwrap();
            assert!(jit.compile_ms() > 0.0);
            for (name, want) in model_tensors(&mlp(), &interp.state) {
                let got = &trained.state[&name];
                let scale = want.data.iter().fold(1e-3f32, |m, v| m.max(v.abs()));
                for (a, b) in got.data.iter().zip(&want.data) {
                    assert!((a - b).abs() <= 1e-3 * scale, "{mode:?} {name}: {a} vs {b}");
                }
            }
            for (j, i) in trained.history.iter().zip(&interp.history) {
                assert!(
                    (j.train_loss - i.train_loss).abs() <= 1e-4 * i.train_loss.max(1e-3),
                    "{mode:?} epoch {}",
                    j.epoch
                );
                assert_eq!(j.test_accuracy, i.test_accuracy, "{mode:?} epoch {}", j.epoch);
            }
        }
    }

    #[test]
    fn init_from_takes_what_fits_and_says_what_it_did() {
        let g = mlp();
        let mut weights = cnnc_runtime::init_params(&g, 9);
        weights.insert("fc2.weight".into(), Tensor::zeros(&[5, 8]));
        weights.remove("fc2.bias");
        weights.insert("head.weight".into(), Tensor::zeros(&[2]));
        let (params, report) = init_from(&g, &weights, 1).unwrap();
        assert_eq!(report.loaded, ["fc1.bias", "fc1.weight"]);
        assert_eq!(report.initialised, ["fc2.bias"]);
        assert_eq!(report.reshaped, [("fc2.weight".to_string(), vec![5, 8], vec![3, 8])]);
        assert_eq!(report.ignored, ["head.weight"]);
        assert_eq!(params["fc1.weight"], weights["fc1.weight"]);
        assert_eq!(params["fc2.weight"], cnnc_runtime::init_params(&g, 1)["fc2.weight"]);
    }

    #[test]
    fn freeze_names_layers_and_prefixes() {
        let g = mlp();
        let names = |n: &[&str]| n.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let frozen = frozen_params(&g, &names(&["fc1"])).unwrap();
        assert_eq!(frozen.into_iter().collect::<Vec<_>>(), ["fc1.bias", "fc1.weight"]);
        assert!(frozen_params(&g, &names(&["relu"])).unwrap().is_empty(), "a layer without parameters");
        let e = frozen_params(&g, &names(&["fc3"])).unwrap_err();
        assert_eq!(
            e.to_string(),
            "--freeze `fc3`: model `mlp` has no layer `fc3` and no layer inside it (did you mean `fc1`?)"
        );
        assert!(frozen_params(&g, &names(&["fc"])).is_err(), "a prefix stops at a dot: `fc` is not `fc1`");
        // Frozen parameters keep their values through training; the others move.
        let data = Points::new(8, 3);
        let settings = TrainSettings { frozen: frozen_params(&g, &names(&["fc1"])).unwrap(), ..settings(2, 0.1) };
        let init = cnnc_runtime::init_params(&g, 3);
        let trained = train(
            &mut stepper(&settings, init.clone()),
            &data,
            "mlp",
            &settings,
            Start::default(),
            None,
            &mut Watch::default(),
        )
        .unwrap();
        assert_eq!(trained.state["fc1.weight"], init["fc1.weight"]);
        assert_ne!(trained.state["fc2.weight"], init["fc2.weight"]);
        assert!(!trained.state.contains_key("fc1.weight.momentum_buffer"), "no optimiser state for a frozen one");
    }

    #[test]
    fn accuracy_takes_the_first_of_equal_scores() {
        let out = Tensor { shape: vec![3, 3], data: vec![1., 3., 3., 0., 0., 0., 5., f32::NAN, 1.] };
        assert_eq!(correct(&out, &[1, 0, 0]), 3);
        assert_eq!(correct(&out, &[2, 1, 0]), 1);
        assert_eq!(correct(&out, &[1, 0]), 0, "a label count that does not fit counts nothing");
    }
}
