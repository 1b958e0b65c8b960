//! `cnnc demo`: the whole product on built-in data, with no files: the digits network
//! (`examples/digits.cnn`, embedded) checked and summarised, its training step JIT-compiled,
//! trained on the built-in digits with `cnnc train`'s defaults, its test accuracy, its weights
//! and curves written to a directory of their own, and the JIT's speed beside the reference
//! interpreter's on one batch.
//!
//! The front door shows the training's progress (an [`Observer`]) and prints the text as it
//! comes (the `say` callback), since the run takes seconds and each part should appear when it
//! is done.

use crate::execute::ExecError;
use crate::optimize::{Mode, Pass};
use crate::train::{self, Batch, Batches, InterpStepper, JitStepper, Observer, Start, StepArgs, Stepper, TrainError};
use crate::train::{EpochRecord, TrainSettings};
use crate::train_data::DataBatches;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use thiserror::Error;

/// What the demo does.
#[derive(Clone, Debug, PartialEq)]
pub struct DemoOptions {
    /// Epochs of training ([`train::defaults::EPOCHS`] by default, as `cnnc train`).
    pub epochs: usize,
    /// Where the weights and the curves go: this directory (created when missing; a file
    /// already there is never overwritten), or by default a new directory `cnnc-demo` in the
    /// current one (`cnnc-demo-2`, `cnnc-demo-3`... when that exists).
    pub dir: Option<PathBuf>,
    /// How long each speed measurement runs at least.
    pub timing: Duration,
    /// Whether diagnostics are coloured.
    pub color: bool,
}

impl Default for DemoOptions {
    fn default() -> DemoOptions {
        DemoOptions {
            epochs: train::defaults::EPOCHS as usize,
            dir: None,
            timing: Duration::from_millis(300),
            color: false,
        }
    }
}

/// What the demo found.
#[derive(Clone, Debug, PartialEq)]
pub struct DemoReport {
    /// Milliseconds the JIT took to compile the training step and the evaluation.
    pub compile_ms: f64,
    pub history: Vec<EpochRecord>,
    pub weights: PathBuf,
    pub curves: PathBuf,
    /// The JIT's speed, then the interpreter's, on the same batch.
    pub speeds: Vec<Speed>,
}

/// Images per second of one back end on the demo's batch: the forward pass in inference mode
/// (with the loss) and a whole training step (forward, loss, backward, update).
#[derive(Clone, Debug, PartialEq)]
pub struct Speed {
    pub backend: String,
    pub forward: f64,
    pub step: f64,
}

/// Why the demo could not finish.
#[derive(Debug, Error)]
pub enum DemoError {
    /// The embedded source has errors (a broken build, never the user's doing).
    #[error("the built-in `{file}` does not compile:\n{rendered}")]
    Source { file: String, rendered: String },
    #[error("{0}")]
    Exec(#[from] ExecError),
    #[error("{0}")]
    Train(#[from] TrainError),
    #[error("cannot create the directory `{}`: {source}", .path.display())]
    Dir { path: PathBuf, source: std::io::Error },
    #[error("`{}` exists already, and the demo overwrites nothing", .path.display())]
    Exists { path: PathBuf },
    #[error("cannot write `{}`: {source}", .path.display())]
    Write { path: PathBuf, source: std::io::Error },
    #[error("the built-in digits hold no image")]
    NoData,
}

impl DemoError {
    /// What to do about it, when there is something specific to say.
    pub fn hint(&self) -> Option<String> {
        match self {
            DemoError::Exists { .. } => Some("pass another directory with `-o DIR`, or remove the file".into()),
            DemoError::Dir { .. } | DemoError::Write { .. } => {
                Some("pass a directory you can write to with `-o DIR`".into())
            }
            DemoError::Exec(e) => e.hint(),
            DemoError::Train(e) => e.hint(),
            DemoError::Source { .. } | DemoError::NoData => None,
        }
    }
}

/// The file names the demo writes in its directory.
pub const WEIGHTS_FILE: &str = "digits.safetensors";
pub const CURVES_FILE: &str = "digits.curves.svg";

/// Runs the demo: each part's text goes to `say` when it is done, the training's progress to
/// `observer`.
pub fn demo(
    options: &DemoOptions,
    observer: &mut dyn Observer,
    say: &mut dyn FnMut(&str),
) -> Result<DemoReport, DemoError> {
    let example = crate::examples::DIGITS;
    say(&format!(
        "cnnc demo: `examples/{}` checked, compiled and trained on the built-in digits (no files needed)\n",
        example.file
    ));
    let graph = check(&example, options.color, say)?;
    // Claimed before training, so that a directory that cannot be written fails at once.
    let dir = output_dir(options.dir.as_deref())?;

    let split = cnnc_data::open(&cnnc_data::Source::Digits, u64::MAX).map_err(ExecError::Data)?;
    let settings = TrainSettings::defaults(options.epochs);
    let normalization = cnnc_data::Normalization::fit(&split.train);
    let metadata: cnnc_runtime::Metadata = normalization.to_metadata().into_iter().collect();
    let data = DataBatches {
        input: graph[graph.inputs[0]].shape.0.clone(),
        train: Arc::new(split.train),
        test: split.test.map(Arc::new),
        batch: settings.batch,
        seed: settings.seed,
        augment: cnnc_data::Augment::default(),
        normalization: Some(normalization),
    };
    let state = crate::execute::init_weights(&graph, settings.seed)?;

    let mode = cnnc_jit::Mode::host_default();
    let mut jit = JitStepper::new(&graph, &settings, state.clone(), mode)?;
    let compile_ms = jit.compile_for(settings.batch)?;
    say(&format!(
        "\n== compile ==\nthe JIT ({} mode) compiled the training step and the evaluation of batch {} in {compile_ms:.0} ms\n",
        mode.name(),
        settings.batch
    ));

    say(&format!("\n== train ==\n{}\n", settings.describe(&graph, "the built-in digits", &data, "jit")));
    let began = Instant::now();
    let trained = train::train(&mut jit, &data, &graph.name, &settings, Start::default(), None, observer)?;
    let seconds = began.elapsed().as_secs_f64();
    let weights = dir.join(WEIGHTS_FILE);
    let curves = dir.join(CURVES_FILE);
    write_results(&graph, &trained.state, &metadata, &trained.history, &weights, &curves)?;
    say(&trained_text(&trained.history, seconds, &weights, &curves));

    let batch = data.test().and_then(|mut b| b.next()).or_else(|| data.train(0, 0).next()).ok_or(DemoError::NoData)?;
    let mut interp = InterpStepper::new(&graph, &settings, trained.state.clone())?;
    let speeds = vec![
        speed(&mut jit, &format!("JIT ({})", mode.name()), &batch, options.timing)?,
        speed(&mut interp, "interpreter", &batch, options.timing)?,
    ];
    say(&speed_table(&speeds, batch.x.shape.first().copied().unwrap_or(0)));
    Ok(DemoReport { compile_ms, history: trained.history, weights, curves, speeds })
}

/// Checks and summarises the example (the training step's summary, as `cnnc summary --train`).
fn check(
    example: &crate::examples::Example,
    color: bool,
    say: &mut dyn FnMut(&str),
) -> Result<cnnc_ir::Graph, DemoError> {
    let file = example.source_file();
    let checked = crate::check_models(&file, &crate::Options::default());
    let broken =
        || DemoError::Source { file: file.name.clone(), rendered: crate::render(&checked.diagnostics, &file, color) };
    if checked.has_errors() || checked.models.len() != 1 {
        return Err(broken());
    }
    let Some(graph) = checked.models.into_iter().next() else { return Err(broken()) };
    let summary = crate::summarize_optimized(&graph, Pass::ALL, Mode::Training).map_err(ExecError::Passes)?;
    say(&format!("\n== check ==\n{}\n== summary ==\n{}", crate::ok_line(&graph), crate::table(&summary)));
    Ok(graph)
}

/// The directory the results go to: `requested` (created when missing), or the first of
/// `cnnc-demo`, `cnnc-demo-2`, ... that does not exist yet, created here (so that two demos at
/// once never share one).
fn output_dir(requested: Option<&Path>) -> Result<PathBuf, DemoError> {
    if let Some(dir) = requested {
        std::fs::create_dir_all(dir).map_err(|source| DemoError::Dir { path: dir.to_path_buf(), source })?;
        for name in [WEIGHTS_FILE, CURVES_FILE] {
            let path = dir.join(name);
            if path.symlink_metadata().is_ok() {
                return Err(DemoError::Exists { path });
            }
        }
        return Ok(dir.to_path_buf());
    }
    let mut n = 1;
    loop {
        let path = PathBuf::from(if n == 1 { "cnnc-demo".to_owned() } else { format!("cnnc-demo-{n}") });
        match std::fs::create_dir(&path) {
            Ok(()) => return Ok(path),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && n < 10_000 => n += 1,
            Err(source) => return Err(DemoError::Dir { path, source }),
        }
    }
}

/// The weights (the model's tensors with the input normalisation) and the curves, each written
/// atomically.
fn write_results(
    graph: &cnnc_ir::Graph,
    state: &crate::execute::TensorMap,
    metadata: &cnnc_runtime::Metadata,
    history: &[EpochRecord],
    weights: &Path,
    curves: &Path,
) -> Result<(), DemoError> {
    let tensors = train::model_tensors(graph, state);
    cnnc_runtime::save_safetensors_with_metadata(weights, &tensors, metadata).map_err(ExecError::WeightsFile)?;
    let svg = crate::curves_svg(&format!("{} on the built-in digits", graph.name), history)
        .map_err(|e| DemoError::Write { path: curves.to_path_buf(), source: std::io::Error::other(e.to_string()) })?;
    cnnc_runtime::write_atomic(curves, |w| std::io::Write::write_all(w, svg.as_bytes()))
        .map_err(|source| DemoError::Write { path: curves.to_path_buf(), source })
}

fn trained_text(history: &[EpochRecord], seconds: f64, weights: &Path, curves: &Path) -> String {
    let mut text = String::new();
    if let Some(last) = history.last() {
        let accuracy = last
            .test_accuracy
            .map_or(String::from("no test accuracy"), |a| format!("test accuracy {:.2} %", 100.0 * a));
        text.push_str(&format!(
            "{accuracy} after {} epoch{} ({seconds:.1} s)\n",
            last.epoch,
            if last.epoch == 1 { "" } else { "s" }
        ));
    }
    text.push_str(&format!(
        "weights: {} (with the input normalisation: `cnnc run examples/digits.cnn --weights {0} --input X.npy` takes raw pixel values)\ncurves:  {}\n",
        weights.display(),
        curves.display()
    ));
    text
}

/// Images per second of `stepper`'s forward pass and training step on `batch`, each the
/// median of runs lasting `timing` in all (at least three).
fn speed(stepper: &mut dyn Stepper, backend: &str, batch: &Batch, timing: Duration) -> Result<Speed, DemoError> {
    let images = batch.x.shape.first().copied().unwrap_or(0) as f64;
    let forward = median_seconds(timing, || stepper.evaluate(&batch.x, &batch.target).map(drop))?;
    // The timed steps change the stepper's state, never the weights already written.
    let args = StepArgs { lr: 1e-3, step: 1, seed: 0 };
    let step = median_seconds(timing, || stepper.step(&batch.x, &batch.target, args).map(drop))?;
    Ok(Speed { backend: backend.to_owned(), forward: images / forward, step: images / step })
}

/// The median wall time of `run` after one untimed call, over at least three calls and at least
/// `timing` in all.
fn median_seconds(timing: Duration, mut run: impl FnMut() -> Result<(), ExecError>) -> Result<f64, ExecError> {
    run()?;
    let mut times = Vec::new();
    let began = Instant::now();
    while times.len() < 3 || began.elapsed() < timing {
        let t = Instant::now();
        run()?;
        times.push(t.elapsed().as_secs_f64());
    }
    times.sort_by(f64::total_cmp);
    Ok(times[times.len() / 2].max(1e-9))
}

fn speed_table(speeds: &[Speed], batch: usize) -> String {
    let mut text = format!(
        "\n== speed: one batch of {batch} test images, images/s (median) ==\n{:<18} {:>12} {:>15}\n",
        "back end", "forward", "training step"
    );
    for s in speeds {
        text.push_str(&format!("{:<18} {:>12} {:>15}\n", s.backend, whole(s.forward), whole(s.step)));
    }
    if let [jit, interp, ..] = speeds {
        text.push_str(&format!(
            "{:<18} {:>11.0}x {:>14.0}x\n",
            "JIT / interpreter",
            jit.forward / interp.forward,
            jit.step / interp.step
        ));
    }
    text
}

fn whole(images_per_second: f64) -> String {
    crate::thousands(images_per_second.round().max(0.0) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Records the epochs; never stops.
    #[derive(Default)]
    struct Quiet {
        epochs: usize,
    }

    impl Observer for Quiet {
        fn step(&mut self, _: &train::StepProgress) {}
        fn epoch(&mut self, _: &EpochRecord) {
            self.epochs += 1;
        }
        fn stop_requested(&self) -> bool {
            false
        }
    }

    #[test]
    fn the_demo_trains_writes_and_times_and_never_overwrites() {
        let dir = std::env::temp_dir().join(format!("cnnc-demo-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let options =
            DemoOptions { epochs: 2, dir: Some(dir.clone()), timing: Duration::from_millis(1), ..Default::default() };
        let mut text = String::new();
        let mut observer = Quiet::default();
        let report = demo(&options, &mut observer, &mut |s| text.push_str(s)).unwrap();
        assert_eq!(observer.epochs, 2);
        assert!(report.compile_ms > 0.0);
        let accuracy = report.history.last().and_then(|r| r.test_accuracy).unwrap();
        assert!(accuracy > 0.8, "two epochs already learn the digits: {accuracy}");
        let weights = cnnc_runtime::load_safetensors(&report.weights).unwrap();
        assert!(weights.contains_key("conv1.weight") && !weights.keys().any(|k| k.contains("momentum")));
        assert!(std::fs::read_to_string(&report.curves).unwrap().starts_with("<svg"));
        assert_eq!(report.speeds.len(), 2);
        assert!(report.speeds.iter().all(|s| s.forward > 0.0 && s.step > 0.0), "{:?}", report.speeds);
        for part in
            ["== check ==\nok: model `digits`: 30,890 parameters", "== summary ==", "== compile ==", "== train =="]
        {
            assert!(text.contains(part), "{part}: {text}");
        }
        assert!(text.contains("JIT / interpreter"), "{text}");
        // A second run into the same directory refuses rather than overwrite.
        let e = demo(&options, &mut Quiet::default(), &mut |_| {}).unwrap_err();
        assert!(matches!(&e, DemoError::Exists { path } if path.ends_with(WEIGHTS_FILE)), "{e:?}");
        assert!(e.hint().unwrap().contains("-o DIR"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
