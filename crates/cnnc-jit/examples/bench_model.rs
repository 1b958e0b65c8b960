//! Times one model on the JIT: compile time, then the median of whole runs, in one line of
//! JSON (what the benchmark table alternates with ONNX Runtime's `ort_bench.py`).
//!
//! `cargo run --release -p cnnc-jit --example bench_model -- examples/resnet50.cnn 1 [native|portable] [runs] [--layers]`

use cnnc_jit::{CompiledModel, Mode, Options};
use cnnc_passes::{PassOptions, optimize};
use std::time::Instant;

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
    let graph = cnnc_lower::lower(&parsed, &cnnc_lower::Options::default()).expect("the model lowers").graph;
    let weights = cnnc_runtime::init_params(&graph, 1);
    if args.iter().any(|a| a == "--train") {
        // The compile time of a training step (cross-entropy, SGD with momentum).
        let sgd = cnnc_ir::Sgd { momentum: 0.9, weight_decay: 0.0, nesterov: false };
        let t = cnnc_passes::TrainingOptions {
            optimizer: Some(cnnc_ir::Optimizer::Sgd(sgd)),
            ..cnnc_passes::TrainingOptions::new(cnnc_ir::Loss::CrossEntropy)
        };
        let t0 = Instant::now();
        let opt = cnnc_passes::optimize_training(&graph, Some(&weights), &PassOptions::all(), &t).expect("passes");
        let passes_ms = t0.elapsed().as_secs_f64() * 1e3;
        let model = CompiledModel::compile(&opt.plan, &Options::new(batch).with_mode(mode)).expect("compiles");
        println!(
            "{{\"model\": \"{}\", \"training_step\": true, \"batch\": {batch}, \"mode\": \"{}\", \"nodes\": {}, \"passes_ms\": {passes_ms:.2}, \"compile_ms\": {:.2}, \"steps\": {}}}",
            graph.name,
            mode.name(),
            opt.plan.graph.len(),
            model.compile_ms(),
            model.steps()
        );
        return;
    }
    let t0 = Instant::now();
    let opt = optimize(&graph, Some(&weights), &PassOptions::all()).expect("passes");
    let passes_ms = t0.elapsed().as_secs_f64() * 1e3;
    let model = CompiledModel::compile(&opt.plan, &Options::new(batch).with_mode(mode)).expect("compiles");
    model.load_weights(&weights).expect("weights");
    let shape = &graph[graph.inputs[0]].shape.0;
    let mut full = vec![batch];
    full.extend_from_slice(shape);
    let n: usize = full.iter().product();
    let x =
        cnnc_runtime::Tensor { shape: full, data: (0..n).map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0).collect() };
    let inputs = [x];
    if layers {
        let r = cnnc_jit::bench::report(&model, &inputs, runs, 0.0).expect("runs");
        eprint!("{}", r.to_table());
    }
    model.time_runs(&inputs, &Default::default(), 3).expect("warm-up");
    let times = model.time_runs(&inputs, &Default::default(), runs).expect("runs");
    let median = cnnc_jit::bench::median(&times) * 1e3;
    let min = times.iter().copied().fold(f64::INFINITY, f64::min) * 1e3;
    println!(
        "{{\"model\": \"{}\", \"batch\": {batch}, \"mode\": \"{}\", \"threads\": {}, \"passes_ms\": {passes_ms:.2}, \"compile_ms\": {:.2}, \"median_ms\": {median:.3}, \"min_ms\": {min:.3}, \"steps\": {}}}",
        graph.name,
        mode.name(),
        model.threads(),
        model.compile_ms(),
        model.steps()
    );
}
