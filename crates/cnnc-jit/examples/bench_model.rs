//! Times one model on the JIT: compile time, then the median of whole runs, in one line of
//! JSON (what the benchmark tables alternate with ONNX Runtime's `ort_bench.py` and PyTorch's
//! `torch_train_bench.py`).
//!
//! `cargo run --release -p cnnc-jit --example bench_model -- FILE BATCH [native|portable] [RUNS] [--layers] [--train] [--plan] [--shape CxHxW] [--set NAME=VALUE]...`
//!
//! With `--train` the timed run is a training step (cross-entropy, SGD with momentum 0.9, as
//! `torch_train_bench.py`'s), `--layers` then profiling its forward and backward nodes.

use cnnc_jit::{CompiledModel, Mode, Options, StepArgs};
use cnnc_passes::{PassOptions, optimize};
use cnnc_runtime::Tensor;
use std::time::Instant;

/// The value after `flag` (`--shape 3x32x32`), every one of them.
fn values<'a>(args: &'a [String], flag: &str) -> Vec<&'a str> {
    args.windows(2).filter(|w| w[0] == flag).map(|w| w[1].as_str()).collect()
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let file = args.get(1).expect("a .cnn file");
    let batch: usize = args.get(2).and_then(|b| b.parse().ok()).unwrap_or(1);
    let mode = args.get(3).and_then(|m| Mode::from_name(m)).unwrap_or_else(Mode::host_default);
    let runs: usize = args.get(4).and_then(|r| r.parse().ok()).unwrap_or(20);
    let layers = args.iter().any(|a| a == "--layers");
    let src = std::fs::read_to_string(file).expect("readable source");
    let (parsed, errors) = cnnc_syntax::parse(&src);
    assert!(errors.is_empty(), "{errors:?}");
    let input_shape =
        values(&args, "--shape").first().map(|s| s.split('x').map(|d| d.parse().expect("a dimension")).collect());
    let overrides = values(&args, "--set")
        .iter()
        .map(|s| {
            let (k, v) = s.split_once('=').expect("NAME=VALUE");
            (k.to_string(), v.to_string())
        })
        .collect();
    let options = cnnc_lower::Options { input_shape, overrides, ..Default::default() };
    let graph = cnnc_lower::lower(&parsed, &options).expect("the model lowers").graph;
    let weights = cnnc_runtime::init_params(&graph, 1);
    let shape = &graph[graph.inputs[0]].shape.0;
    let mut full = vec![batch];
    full.extend_from_slice(shape);
    let n: usize = full.iter().product();
    let x = Tensor { shape: full, data: (0..n).map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0).collect() };
    if args.iter().any(|a| a == "--train") {
        train(&graph, &weights, x, batch, mode, runs, layers);
        return;
    }
    let t0 = Instant::now();
    let opt = optimize(&graph, Some(&weights), &PassOptions::all()).expect("passes");
    let passes_ms = t0.elapsed().as_secs_f64() * 1e3;
    let model = CompiledModel::compile(&opt.plan, &Options::new(batch).with_mode(mode)).expect("compiles");
    model.load_weights(&weights).expect("weights");
    let inputs = [x];
    if layers {
        let rounds = cnnc_jit::bench::Rounds::Fixed(runs);
        let r = cnnc_jit::bench::report(&model, &inputs, &Default::default(), rounds, 0.0).expect("runs");
        for l in &r.layers {
            eprintln!("{:<48} {:>9.4} ms {:>8.1} GFLOP/s", l.name, l.median_ms, l.gflops);
        }
        eprintln!(
            "layers sum {:.3} ms; whole {:.3} ms",
            r.layers.iter().map(|l| l.median_ms).sum::<f64>(),
            r.median_ms
        );
    }
    model.time_runs(&inputs, &Default::default(), 3).expect("warm-up");
    let times = model.time_runs(&inputs, &Default::default(), runs).expect("runs");
    let median = cnnc_jit::bench::median(&times) * 1e3;
    let min = times.iter().copied().fold(f64::INFINITY, f64::min) * 1e3;
    println!(
        "{{\"model\": \"{}\", \"batch\": {batch}, \"mode\": \"{}\", \"threads\": {}, \"passes_ms\": {passes_ms:.2}, \"compile_ms\": {:.2}, \"compile\": {}, \"median_ms\": {median:.3}, \"min_ms\": {min:.3}, \"steps\": {}}}",
        graph.name,
        mode.name(),
        model.threads(),
        model.compile_ms(),
        compile_json(&model.compile_times()),
        model.steps()
    );
}

/// Compiles and times a training step (cross-entropy, SGD with momentum, as PyTorch's tool).
fn train(
    graph: &cnnc_ir::Graph,
    weights: &cnnc_runtime::TensorMap,
    x: Tensor,
    batch: usize,
    mode: Mode,
    runs: usize,
    layers: bool,
) {
    let sgd = cnnc_ir::Sgd { momentum: 0.9, weight_decay: 0.0, nesterov: false };
    let t = cnnc_passes::TrainingOptions {
        optimizer: Some(cnnc_ir::Optimizer::Sgd(sgd)),
        ..cnnc_passes::TrainingOptions::new(cnnc_ir::Loss::CrossEntropy)
    };
    let t0 = Instant::now();
    let opt = cnnc_passes::optimize_training(graph, Some(weights), &PassOptions::all(), &t).expect("passes");
    let passes_ms = t0.elapsed().as_secs_f64() * 1e3;
    if std::env::args().any(|a| a == "--plan") {
        eprint!("{}{}", cnnc_ir::print(&opt.plan.graph), opt.plan.render());
    }
    let model = CompiledModel::compile(&opt.plan, &Options::new(batch).with_mode(mode)).expect("compiles");
    model.load_weights(weights).expect("weights");
    let classes = graph[graph.outputs[0]].shape.elements();
    let labels = Tensor { shape: vec![batch], data: (0..batch).map(|i| ((i * 7) % classes) as f32).collect() };
    let inputs = [x, labels];
    let args = StepArgs { lr: 0.01, step: 1, seed: 0 };
    if layers {
        let per = model.profile(&inputs, &args, runs.max(1)).expect("runs");
        let mut rows: Vec<(f64, &str)> =
            per.iter().map(|t| (cnnc_jit::bench::median(&t.seconds) * 1e3, t.name.as_str())).collect();
        let sum: f64 = rows.iter().map(|r| r.0).sum();
        for (ms, name) in &rows {
            eprintln!("{name:<48} {ms:>9.4} ms");
        }
        rows.sort_by(|a, b| b.0.total_cmp(&a.0));
        eprintln!("layers sum {sum:.3} ms; slowest: {:?}", &rows[..rows.len().min(8)]);
    }
    model.time_runs(&inputs, &args, 3).expect("warm-up");
    let times = model.time_runs(&inputs, &args, runs).expect("runs");
    let median = cnnc_jit::bench::median(&times) * 1e3;
    let min = times.iter().copied().fold(f64::INFINITY, f64::min) * 1e3;
    println!(
        "{{\"model\": \"{}\", \"training_step\": true, \"batch\": {batch}, \"mode\": \"{}\", \"threads\": {}, \"nodes\": {}, \"passes_ms\": {passes_ms:.2}, \"compile_ms\": {:.2}, \"compile\": {}, \"median_ms\": {median:.3}, \"min_ms\": {min:.3}, \"steps\": {}}}",
        graph.name,
        mode.name(),
        model.threads(),
        opt.plan.graph.len(),
        model.compile_ms(),
        compile_json(&model.compile_times()),
        model.steps()
    );
}

/// Where the compile time went, as a JSON object.
fn compile_json(t: &cnnc_jit::CompileTimes) -> String {
    format!(
        "{{\"setup_ms\": {:.2}, \"lower_ms\": {:.2}, \"codegen_ms\": {:.2}, \"codegen_cpu_ms\": {:.2}, \"functions\": {}, \"threads\": {}, \"finalize_ms\": {:.2}}}",
        t.setup_ms,
        t.lower_ms,
        t.codegen.wall_ms,
        t.codegen.cpu_ms,
        t.codegen.functions,
        t.codegen.threads,
        t.finalize_ms
    )
}
