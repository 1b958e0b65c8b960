//! `cnnc bench`: a model compiled by the JIT and timed, like `tract dump --profile` but
//! against the roofline: the compile time, each layer's median time, GFLOP/s and share of the
//! machine's FMA peak (measured once and cached, [`crate::peak_cache`]), and the whole model's
//! median; as a table or as one line of JSON.
//!
//! The model runs on seeded parameters (`cnnc init`'s) and a seeded input batch, after every
//! pass; with `train`, the training step of `--train` elsewhere (cross-entropy for a
//! classifier, else mean squared error; SGD with momentum; batch statistics) on seeded labels
//! or targets. The JSON has the fields the issue fixed, in this order, and more after them:
//!
//! ```text
//! {"compile_ms": f, "batch": n, "median_ms": f, "peak_gflops": f,
//!  "layers": [{"name": str, "median_ms": f, "gflops": f, "op": str, "flops": f, "percent_of_peak": f,
//!              "min_ms": f, "lowering": str | null}],
//!  "model": str, "mode": str, "train": b, "threads": n, "rounds": n, "passes_ms": f,
//!  "compile": {"setup_ms": f, "lower_ms": f, "codegen_ms": f, "codegen_threads": n,
//!              "functions": n, "shared_kernels": n, "instructions": n, "finalize_ms": f},
//!  "gflops": f, "percent_of_peak": f, "peak": {"isa": str, "cpu": str, "source": str},
//!  "min_ms": f, "others_pct": f, "waited_s": f, "depth_first": n}
//! ```
//!
//! `depth_first` counts the nodes, from the first, that run image by image at batch > 1
//! (`cnnc_jit::Options::depth_first_bytes`); the table says so under the compile line.
//!
//! `lowering` says which code runs a convolution or matrix product (`kernels`, `winograd4x4` or
//! `winograd2x2`, `dot`, `tiles`, or `loops`, the general scalar loops, correct but slow); null
//! for other layers.
//! `min_ms` is the fastest run (per layer and whole): on a machine shared with other work the
//! median counts the runs other processes held the cores up, the fastest is the code's own
//! speed. `others_pct` is how much of the CPUs other processes used while the runs were timed
//! (null when unknown or under half a second of runs; the table adds a note above 5 %);
//! `--wait-idle` waits for a quiet machine first.

use crate::execute::ExecError;
use crate::optimize::{Mode, Pass, optimize};
use crate::peak_cache::{self, Peak, PeakKey};
use cnnc_ir::{Graph, Op, TrainOp};
use cnnc_jit::bench::{BenchReport, Rounds};
use cnnc_runtime::{Cancel, Tensor, idle};
use serde::Serialize;
use std::time::{Duration, Instant};

/// What `cnnc bench` measures.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BenchOptions {
    pub batch: usize,
    /// `None`: the process-wide pool (`CNNC_THREADS` or every CPU).
    pub threads: Option<usize>,
    pub mode: cnnc_jit::Mode,
    /// Time the training step instead of inference.
    pub train: bool,
    /// Whole runs to time; `None`: as many as fit in about a second ([`DEFAULT_TIME`]).
    pub rounds: Option<usize>,
    /// The seed of the parameters, the input and the targets.
    pub seed: u64,
    /// Waits at most this long, before timing, for other processes to leave the CPUs idle.
    pub wait_idle: Option<Duration>,
    /// Whether 3x3 layers may run as Winograd (`cnnc_jit::Options::winograd`).
    pub winograd: bool,
}

/// The time the whole runs take when the number of rounds is not given (the step-by-step
/// runs for the layers take as long again).
pub const DEFAULT_TIME: Duration = Duration::from_secs(1);

/// What [`bench`] measured.
#[derive(Clone, Debug, PartialEq)]
pub struct BenchOutcome {
    pub model: String,
    pub options: BenchOptions,
    /// Threads the code ran on.
    pub threads: usize,
    /// Milliseconds the passes took (before the JIT's compile time).
    pub passes_ms: f64,
    pub report: BenchReport,
    /// The peak's instruction set and width, and the CPU, as the cache keys them.
    pub peak_key: PeakKey,
    pub peak: Peak,
    /// The share of the CPUs other processes used while the runs were timed (`None` where the
    /// system does not say, or the runs took under half a second), and the seconds waited for
    /// a quiet machine before.
    pub others: Option<f64>,
    pub waited_s: f64,
}

/// Compiles `graph` (after every pass) for `options` on the JIT, looks up the peak and times
/// it. With `cancel`, compiling and timing check it (between phases, rounds and layers) and
/// stop with [`ExecError::Cancelled`].
pub fn bench(graph: &Graph, options: &BenchOptions, cancel: Option<&Cancel>) -> Result<BenchOutcome, ExecError> {
    let params = crate::execute::init_weights(graph, options.seed)?;
    let mode = if options.train { Mode::Training } else { Mode::Inference };
    let start = Instant::now();
    // The JIT applies the plan's weight transforms itself (load_weights), so the passes run on
    // the graph alone.
    let opt = optimize(graph, None, Pass::ALL, mode).map_err(ExecError::Passes)?;
    let passes_ms = start.elapsed().as_secs_f64() * 1e3;
    let mut jit = cnnc_jit::Options::new(options.batch).with_mode(options.mode).with_winograd(options.winograd);
    if let Some(threads) = options.threads {
        jit = jit.with_threads(threads);
    }
    if let Some(cancel) = cancel {
        jit = jit.with_cancel(cancel.clone());
    }
    let model = cnnc_jit::CompiledModel::compile(&opt.plan, &jit)?;
    model.load_weights(&params)?;
    let threads = model.threads();
    let probe = cnnc_jit::bench::peak_probe(options.mode);
    let peak_key = PeakKey { cpu: peak_cache::cpu_model(), isa: peak_cache::isa_of_this_build(probe.isa()), threads };
    let peak = peak_cache::lookup(peak_cache::cache_dir().as_deref(), &peak_key, || probe.measure(threads));
    let inputs = inputs(&opt.plan.graph, options.batch, options.seed);
    let args = cnnc_jit::StepArgs { lr: if options.train { 1e-3 } else { 0.0 }, step: 1, seed: options.seed };
    let rounds = options.rounds.map_or(Rounds::For(DEFAULT_TIME), Rounds::Fixed);
    let waited_s = options.wait_idle.map_or(0.0, |max| idle::wait(max).0);
    let window = idle::Window::start();
    let report = cnnc_jit::bench::report(&model, &inputs, &args, rounds, peak.gflops)?;
    let others = window.others_measured();
    Ok(BenchOutcome {
        model: graph.name.clone(),
        options: *options,
        threads,
        passes_ms,
        report,
        peak_key,
        peak,
        others,
        waited_s,
    })
}

/// A seeded batch for every input of the plan's graph: values in [-1, 1), class labels in
/// range.
fn inputs(graph: &Graph, batch: usize, seed: u64) -> Vec<Tensor> {
    let mut rng = cnnc_runtime::Rng::for_name(seed, "cnnc bench input");
    graph
        .inputs
        .iter()
        .map(|&id| {
            let node = &graph[id];
            let mut shape = vec![batch];
            shape.extend_from_slice(&node.shape.0);
            let n: usize = shape.iter().product();
            // Class labels for a label input, values in [-1, 1) for any other.
            let data = if let Op::Train(TrainOp::Labels { classes }) = node.op {
                (0..n).map(|_| (rng.next_u64() % classes.max(1) as u64) as f32).collect()
            } else {
                (0..n).map(|_| (2.0 * rng.next_f64() - 1.0) as f32).collect()
            };
            Tensor { shape, data }
        })
        .collect()
}

/// The share of `peak` that `gflops` is, in percent (0 without a peak).
fn percent(gflops: f64, peak: f64) -> f64 {
    if peak > 0.0 { 100.0 * gflops / peak } else { 0.0 }
}

/// The whole model's GFLOP/s at its median time.
fn model_gflops(r: &BenchReport) -> f64 {
    if r.median_ms > 0.0 { r.flops / (r.median_ms * 1e-3) / 1e9 } else { 0.0 }
}

/// The `cnnc bench` table.
pub fn bench_table(b: &BenchOutcome) -> String {
    let r = &b.report;
    let what = if b.options.train { "training step" } else { "inference" };
    let mut out = format!(
        "model {}, {what}, batch {}, {} mode, {} thread{}\n",
        b.model,
        r.batch,
        b.options.mode.name(),
        b.threads,
        if b.threads == 1 { "" } else { "s" }
    );
    let c = &r.compile;
    out.push_str(&format!(
        "compile: {:.1} ms (JIT: setup {:.1}, lowering {:.1}, Cranelift {:.1} for {} functions on {} thread{}{}, \
         finalize {:.1}), passes {:.1} ms\n",
        r.compile_ms,
        c.setup_ms,
        c.lower_ms,
        c.codegen.wall_ms,
        c.codegen.functions,
        c.codegen.threads,
        if c.codegen.threads == 1 { "" } else { "s" },
        match c.codegen.shared {
            0 => String::new(),
            1 => " (1 more kernel runs one of them)".to_string(),
            n => format!(" ({n} more kernels run them)"),
        },
        c.finalize_ms,
        b.passes_ms
    ));
    if r.depth_first > 0 {
        out.push_str(&format!(
            "depth first: the first {} of {} nodes run image by image, so that one image's maps stay in the caches\n",
            r.depth_first, r.nodes
        ));
    }
    let cache = match (&b.peak.file, b.peak.source) {
        (Some(file), peak_cache::PeakSource::Cached) => format!("cached in {}", file.display()),
        (Some(file), peak_cache::PeakSource::Measured) => format!("measured now, cached in {}", file.display()),
        (None, _) => "measured now".to_string(),
    };
    out.push_str(&format!(
        "peak: {:.1} GFLOP/s ({} on {} threads; {cache})\n\n",
        r.peak_gflops, b.peak_key.isa, b.threads
    ));
    let width = r.layers.iter().map(|l| l.name.len()).max().unwrap_or(5).max(5);
    let op_width = r.layers.iter().map(|l| l.op.len()).max().unwrap_or(2).max(2);
    let code_width = r.layers.iter().filter_map(|l| l.lowering.map(|c| c.keyword().len())).max().unwrap_or(4).max(7);
    out.push_str(&format!(
        "{:<width$}  {:<op_width$}  {:<code_width$}  {:>10}  {:>9}  {:>7}\n",
        "layer", "op", "code", "ms", "GFLOP/s", "% peak"
    ));
    for l in &r.layers {
        let (gflops, pct) = if l.flops > 0.0 {
            (format!("{:.1}", l.gflops), format!("{:.1}%", percent(l.gflops, r.peak_gflops)))
        } else {
            ("-".to_string(), "-".to_string())
        };
        let code = l.lowering.map_or("-", |c| c.keyword());
        out.push_str(&format!(
            "{:<width$}  {:<op_width$}  {code:<code_width$}  {:>10.4}  {gflops:>9}  {pct:>7}\n",
            l.name, l.op, l.median_ms
        ));
    }
    let sum: f64 = r.layers.iter().map(|l| l.median_ms).sum();
    let gflops = model_gflops(r);
    out.push_str(&format!(
        "\nmodel: {:.3} ms median of {} runs (layers sum {sum:.3} ms), fastest {:.3} ms, {gflops:.1} GFLOP/s, {:.1}% \
         of peak\n",
        r.median_ms,
        r.rounds,
        r.min_ms,
        percent(gflops, r.peak_gflops)
    ));
    if let Some(others) = b.others.filter(|&o| o > idle::NOISY) {
        out.push_str(&format!(
            "note: other processes used {:.0} % of the CPUs while this ran: the times are theirs as much as the \
             model's (`--wait-idle 60` waits up to a minute for a quiet machine; the fastest run is the least \
             disturbed)\n",
            100.0 * others
        ));
    }
    if r.layers.iter().any(|l| l.flops > 0.0 && l.gflops > r.peak_gflops) {
        out.push_str(
            "note: GFLOP/s count every multiply-add of each layer's direct convolution, as model summaries do; a \
             layer above the peak computes fewer (Winograd's products, or kernel taps that meet only padding, as on \
             1x1 and 2x2 maps), or the cached peak was measured low (delete the cache file to measure it again)\n",
        );
    }
    out
}

/// One layer of the JSON.
#[derive(Serialize)]
struct JsonLayer<'a> {
    name: &'a str,
    median_ms: f64,
    gflops: f64,
    op: &'a str,
    flops: f64,
    percent_of_peak: f64,
    min_ms: f64,
    lowering: Option<&'static str>,
}

/// Where the JIT's compile time went.
#[derive(Serialize)]
struct JsonCompile {
    setup_ms: f64,
    lower_ms: f64,
    codegen_ms: f64,
    codegen_threads: usize,
    functions: usize,
    /// Kernels that run an earlier kernel's function (layers of equal shapes compile once).
    shared_kernels: usize,
    instructions: usize,
    finalize_ms: f64,
}

#[derive(Serialize)]
struct JsonPeak<'a> {
    isa: &'a str,
    cpu: &'a str,
    source: &'static str,
}

/// The JSON object; the issue's fields first, in its order.
#[derive(Serialize)]
struct JsonReport<'a> {
    compile_ms: f64,
    batch: usize,
    median_ms: f64,
    peak_gflops: f64,
    layers: Vec<JsonLayer<'a>>,
    model: &'a str,
    mode: &'static str,
    train: bool,
    threads: usize,
    rounds: usize,
    passes_ms: f64,
    compile: JsonCompile,
    gflops: f64,
    percent_of_peak: f64,
    peak: JsonPeak<'a>,
    min_ms: f64,
    /// Percent of the CPUs other processes used while the runs were timed (null: unknown, or
    /// the runs took under half a second).
    others_pct: Option<f64>,
    waited_s: f64,
    depth_first: usize,
}

/// `cnnc bench --json`: one line.
pub fn bench_json(b: &BenchOutcome) -> String {
    let r = &b.report;
    let layers = r
        .layers
        .iter()
        .map(|l| JsonLayer {
            name: &l.name,
            median_ms: finite(l.median_ms),
            gflops: finite(l.gflops),
            op: &l.op,
            flops: finite(l.flops),
            percent_of_peak: finite(percent(l.gflops, r.peak_gflops)),
            min_ms: finite(l.min_ms),
            lowering: l.lowering.map(|c| c.keyword()),
        })
        .collect();
    let gflops = model_gflops(r);
    let report = JsonReport {
        compile_ms: finite(r.compile_ms),
        batch: r.batch,
        median_ms: finite(r.median_ms),
        peak_gflops: finite(r.peak_gflops),
        layers,
        model: &b.model,
        mode: b.options.mode.name(),
        train: b.options.train,
        threads: b.threads,
        rounds: r.rounds,
        passes_ms: finite(b.passes_ms),
        compile: JsonCompile {
            setup_ms: finite(r.compile.setup_ms),
            lower_ms: finite(r.compile.lower_ms),
            codegen_ms: finite(r.compile.codegen.wall_ms),
            codegen_threads: r.compile.codegen.threads,
            functions: r.compile.codegen.functions,
            shared_kernels: r.compile.codegen.shared,
            instructions: r.compile.codegen.insts,
            finalize_ms: finite(r.compile.finalize_ms),
        },
        gflops: finite(gflops),
        percent_of_peak: finite(percent(gflops, r.peak_gflops)),
        peak: JsonPeak { isa: &b.peak_key.isa, cpu: &b.peak_key.cpu, source: b.peak.source.name() },
        min_ms: finite(r.min_ms),
        depth_first: r.depth_first,
        others_pct: b.others.map(|o| finite(100.0 * o)),
        waited_s: finite(b.waited_s),
    };
    let mut text = serde_json::to_string(&report).expect("plain data serialises");
    text.push('\n');
    text
}

/// JSON has no NaN or infinity: a timing that is not finite (which it never should be) is 0.
fn finite(x: f64) -> f64 {
    if x.is_finite() { x } else { 0.0 }
}
