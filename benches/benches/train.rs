//! Training steps on the JIT in native mode, the models and batches of
//! `../shared/tools/torch_train_bench.py` (PyTorch eager): ResNet-18 on 3x32x32 at batch 16,
//! LeNet-5 at 64, the CIFAR net conv3x3(32)-ReLU-maxpool-conv3x3(64)-ReLU-maxpool-fc(10) at 64
//! and that tool's digits net conv3x3(16)-ReLU-maxpool-conv3x3(32)-ReLU-maxpool-fc(10) at 64,
//! plus `examples/digits.cnn` (what `cnnc train` and `cnnc demo` train; batch norm and dropout,
//! no PyTorch counterpart in the tool) at 64. A step is what the tool's is: forward,
//! cross-entropy (mean over the batch), backward, SGD with momentum 0.9 (lr 0.01, no weight
//! decay), batch norm on batch statistics; timed as one `train_step` call, the copies of the
//! inputs in and the outputs out included.
//!
//! `cargo bench -p cnnc-benches --bench train` runs the criterion groups. `-- --report` instead
//! times each model as the PyTorch tool does (warm-up of at least 3 steps and 0.5 s, a wait of
//! at most `--max-wait S` seconds (60) for idle CPUs, then at least 20 steps and 2 s, the
//! median) and prints one JSON line per model; `--model NAME` restricts it to one model (to
//! alternate with the tool, one process each) and `--threads T` sets the thread count (all CPUs
//! by default, as the tool's). Each line also gives the plan's memory at the batch (arena,
//! parameters, optimiser state: `plan_mib`), the resident set before the model was compiled
//! and the process's peak resident set after its steps (`/proc/self/status`); with `--model`
//! the peak is that model's alone.

use cnnc_benches::idle;
use cnnc_ir::Graph;
use cnnc_jit::{CompiledModel, Mode, Options, StepArgs};
use cnnc_runtime::Tensor;
use criterion::{Criterion, Throughput};
use std::time::{Duration, Instant};

/// One benchmarked model: the tool's name for it, its source, the shape it runs at, its batch.
struct Case {
    name: &'static str,
    source: &'static str,
    input: Option<Vec<usize>>,
    overrides: &'static [(&'static str, &'static str)],
    batch: usize,
}

/// The CIFAR net of the tool (`SmallNet(3, 32, 64, 32)`): every layer with a bias.
const CIFARNET: &str = "model cifarnet {
    input x: [3, 32, 32]
    x -> c1: conv(32, k=3, pad=1) -> relu -> maxpool(2)
      -> c2: conv(64, k=3, pad=1) -> relu -> maxpool(2)
      -> flatten -> fc: fc(10)
}
";

/// The tool's digits net (`SmallNet(1, 16, 32, 8)`).
const DIGITS_SMALL: &str = "model digits_small {
    input x: [1, 8, 8]
    x -> c1: conv(16, k=3, pad=1) -> relu -> maxpool(2)
      -> c2: conv(32, k=3, pad=1) -> relu -> maxpool(2)
      -> flatten -> fc: fc(10)
}
";

fn cases() -> Vec<Case> {
    vec![
        Case {
            name: "resnet18",
            source: include_str!("../../examples/resnet18.cnn"),
            input: Some(vec![3, 32, 32]),
            overrides: &[("classes", "10")],
            batch: 16,
        },
        Case {
            name: "lenet5",
            source: include_str!("../../examples/lenet5.cnn"),
            input: None,
            overrides: &[],
            batch: 64,
        },
        Case { name: "cifarnet", source: CIFARNET, input: None, overrides: &[], batch: 64 },
        Case { name: "digits", source: DIGITS_SMALL, input: None, overrides: &[], batch: 64 },
        Case {
            name: "digits_example",
            source: include_str!("../../examples/digits.cnn"),
            input: None,
            overrides: &[],
            batch: 64,
        },
    ]
}

/// A compiled training step of a case and its inputs (seeded weights, fixed data and labels).
struct Trainer {
    model: CompiledModel,
    inputs: [Tensor; 2],
    /// 2 x the multiply-accumulates of one forward pass of the batch (the tool's `fwd_gflop`).
    fwd_gflop: f64,
    /// The plan's memory at the case's batch: the arena, the parameters and the optimiser state.
    plan_bytes: u64,
}

impl Trainer {
    fn new(case: &Case, threads: Option<usize>) -> Trainer {
        let (parsed, errors) = cnnc_syntax::parse(case.source);
        assert!(errors.is_empty(), "{}: {errors:?}", case.name);
        let options = cnnc_lower::Options {
            input_shape: case.input.clone(),
            overrides: case.overrides.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            ..Default::default()
        };
        let graph = cnnc_lower::lower(&parsed, &options).expect("the model lowers").graph;
        let weights = cnnc_runtime::init_params(&graph, 1);
        let sgd = cnnc_ir::Sgd { momentum: 0.9, weight_decay: 0.0, nesterov: false };
        let training = cnnc_passes::TrainingOptions {
            optimizer: Some(cnnc_ir::Optimizer::Sgd(sgd)),
            ..cnnc_passes::TrainingOptions::new(cnnc_ir::Loss::CrossEntropy)
        };
        let optimized =
            cnnc_passes::optimize_training(&graph, Some(&weights), &cnnc_passes::PassOptions::all(), &training)
                .expect("the training step optimises");
        let memory = optimized.memory_breakdown(case.batch);
        let plan_bytes = memory.workspace + memory.parameters + memory.optimizer_state;
        let mut jit = Options::new(case.batch).with_mode(Mode::Native);
        if let Some(t) = threads {
            jit = jit.with_threads(t);
        }
        let model = CompiledModel::compile(&optimized.plan, &jit).expect("the training step compiles");
        model.load_weights(&weights).expect("the weights load");
        Trainer { model, inputs: inputs(&graph, case.batch), fwd_gflop: gflop(&graph) * case.batch as f64, plan_bytes }
    }

    fn step(&self) {
        let args = StepArgs { lr: 0.01, step: 1, seed: 0 };
        std::hint::black_box(self.model.train_step(&self.inputs, &args).expect("the step runs"));
    }
}

/// Inputs in [-1, 1) and labels cycling through the classes.
fn inputs(graph: &Graph, batch: usize) -> [Tensor; 2] {
    let mut shape = vec![batch];
    shape.extend_from_slice(&graph[graph.inputs[0]].shape.0);
    let n: usize = shape.iter().product();
    let x = Tensor { shape, data: (0..n).map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0).collect() };
    let classes = graph[graph.outputs[0]].shape.elements();
    let labels = Tensor { shape: vec![batch], data: (0..batch).map(|i| ((i * 7) % classes) as f32).collect() };
    [x, labels]
}

/// GFLOP of one image's forward pass: 2 x the MACs of every convolution and product.
fn gflop(graph: &Graph) -> f64 {
    let stats = cnnc_ir::node_stats(graph);
    2.0 * cnnc_ir::totals(graph, &stats).macs as f64 / 1e9
}

/// `(median, min, max, steps)` in ms of `step`, timed as the PyTorch tool times.
fn time(label: &str, max_wait: Duration, step: impl Fn()) -> (f64, f64, f64, usize) {
    let warm = Instant::now();
    let mut n = 0;
    while n < 3 || warm.elapsed() < Duration::from_millis(500) {
        step();
        n += 1;
    }
    let (waited, quiet) = idle::wait(max_wait);
    let window = idle::Window::start();
    let began = Instant::now();
    let mut ms = Vec::new();
    while ms.len() < 20 || began.elapsed() < Duration::from_secs(2) {
        let t = Instant::now();
        step();
        ms.push(t.elapsed().as_secs_f64() * 1e3);
    }
    let others = window.others();
    eprintln!(
        "# {label}: waited {waited:.1} s for idle CPUs{}; other processes used {:.1} % of the CPUs while timing{}",
        if quiet { "" } else { " (never idle)" },
        100.0 * others,
        if others > idle::NOISY { " -- NOISY, rerun" } else { "" }
    );
    ms.sort_by(f64::total_cmp);
    (ms[ms.len() / 2], ms[0], ms[ms.len() - 1], ms.len())
}

fn report(args: &[String]) {
    let arg = |name: &str| args.iter().position(|a| a == name).and_then(|k| args.get(k + 1)).cloned();
    let only = arg("--model");
    let threads = arg("--threads").map(|t| t.parse::<usize>().expect("--threads takes a count"));
    let max_wait =
        Duration::from_secs_f64(arg("--max-wait").map_or(60.0, |s| s.parse().expect("--max-wait takes seconds")));
    for case in cases().iter().filter(|c| only.as_deref().is_none_or(|o| o == c.name)) {
        let before = kib("VmRSS");
        let trainer = Trainer::new(case, threads);
        let (median, min, max, runs) =
            time(&format!("{} b{} train_step", case.name, case.batch), max_wait, || trainer.step());
        println!(
            "{{\"tool\":\"cnnc_jit\",\"task\":\"train_step\",\"model\":\"{}\",\"batch\":{},\"threads\":{},\"median_ms\":{median:.4},\"min_ms\":{min:.4},\"max_ms\":{max:.4},\"runs\":{runs},\"fwd_gflop\":{:.6},\"compile_ms\":{:.1},\"plan_mib\":{:.2},\"rss_before_mib\":{:.2},\"peak_rss_mib\":{:.2}}}",
            case.name,
            case.batch,
            trainer.model.threads(),
            trainer.fwd_gflop,
            trainer.model.compile_ms(),
            trainer.plan_bytes as f64 / MIB,
            before / 1024.0,
            kib("VmHWM") / 1024.0
        );
    }
}

const MIB: f64 = 1024.0 * 1024.0;

/// A line of `/proc/self/status` in KiB (`VmRSS`, the resident set now; `VmHWM`, its peak so
/// far); 0 where there is no `/proc`.
fn kib(key: &str) -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':')?.trim().strip_suffix("kB")?.trim().parse().ok())
        .unwrap_or(0.0)
}

fn criterion_groups(c: &mut Criterion) {
    let mut group = c.benchmark_group("train_step_native");
    group.sample_size(20).measurement_time(Duration::from_secs(3));
    for case in cases() {
        let trainer = Trainer::new(&case, None);
        group.throughput(Throughput::Elements(case.batch as u64));
        group.bench_function(format!("{}_b{}", case.name, case.batch), |b| b.iter(|| trainer.step()));
    }
    group.finish();
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "--report") {
        report(&args);
        return;
    }
    let mut c = Criterion::default().configure_from_args();
    criterion_groups(&mut c);
    c.final_summary();
}
