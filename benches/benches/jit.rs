//! The JIT's benchmarks: compile time of ResNet-50's inference plan and training step (at
//! batch 1 and 8; Cranelift on all threads and on one), with where it goes, and
//! whole-model inference (ResNet-50, ResNet-18, VGG-16, GoogLeNet at batch 1 and 8) in native
//! mode, portable mode (ResNet-18 at batch 1: its convolutions are the general loops), and the
//! reference interpreter on the same plan (ResNet-18 at batch 1), each in this run. ONNX
//! Runtime's figures come from `../shared/tools/ort_bench.py`, run alternately with
//! `cargo run --release -p cnnc-jit --example bench_model` (see the note).

use cnnc_ir::Graph;
use cnnc_jit::{CompiledModel, Mode, Options};
use cnnc_passes::{PassOptions, TrainingOptions, optimize, optimize_training};
use cnnc_runtime::{Tensor, TensorMap};
use criterion::{Criterion, criterion_group, criterion_main};
use std::hint::black_box;
use std::time::Duration;

fn lower(file: &str) -> Graph {
    let path = format!("{}/../examples/{file}", env!("CARGO_MANIFEST_DIR"));
    let src = std::fs::read_to_string(&path).expect("example");
    let (parsed, errors) = cnnc_syntax::parse(&src);
    assert!(errors.is_empty());
    cnnc_lower::lower(&parsed, &cnnc_lower::Options::default()).expect("lowers").graph
}

fn input(g: &Graph, batch: usize) -> Tensor {
    let mut shape = vec![batch];
    shape.extend_from_slice(&g[g.inputs[0]].shape.0);
    let n: usize = shape.iter().product();
    Tensor { shape, data: (0..n).map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0).collect() }
}

fn compile_time(c: &mut Criterion) {
    let g = lower("resnet50.cnn");
    let w = cnnc_runtime::init_params(&g, 1);
    let inference = optimize(&g, Some(&w), &PassOptions::all()).unwrap().plan;
    let training = {
        let t = TrainingOptions {
            optimizer: Some(cnnc_ir::Optimizer::Sgd(cnnc_ir::Sgd {
                momentum: 0.9,
                weight_decay: 0.0,
                nesterov: false,
            })),
            ..TrainingOptions::new(cnnc_ir::Loss::CrossEntropy)
        };
        optimize_training(&g, Some(&w), &PassOptions::all(), &t).unwrap().plan
    };
    let mut group = c.benchmark_group("jit_compile");
    group.sample_size(10).measurement_time(Duration::from_secs(5));
    for mode in [Mode::Native, Mode::Portable] {
        group.bench_function(format!("resnet50_inference_{}", mode.name()), |b| {
            b.iter(|| black_box(CompiledModel::compile(&inference, &Options::new(1).with_mode(mode)).unwrap()))
        });
    }
    for batch in [1, 8] {
        group.bench_function(format!("resnet50_training_step_b{batch}_native"), |b| {
            b.iter(|| {
                black_box(CompiledModel::compile(&training, &Options::new(batch).with_mode(Mode::Native)).unwrap())
            })
        });
    }
    // Cranelift on one thread: what compiling the functions in parallel saves.
    group.bench_function("resnet50_training_step_b8_native_1thread", |b| {
        let options = Options::new(8).with_mode(Mode::Native).with_threads(1);
        b.iter(|| black_box(CompiledModel::compile(&training, &options).unwrap()))
    });
    group.finish();
    // Where the time goes, once (stderr): lowering, Cranelift, finalizing.
    for (name, plan, batch) in [("inference b1", &inference, 1), ("training step b8", &training, 8)] {
        let t = CompiledModel::compile(plan, &Options::new(batch).with_mode(Mode::Native)).unwrap().compile_times();
        eprintln!(
            "resnet50 {name}: {:.1} ms = setup {:.1} + lowering {:.1} + Cranelift {:.1} ({} functions, {} instructions, {} threads) + finalize {:.1}",
            t.total_ms,
            t.setup_ms,
            t.lower_ms,
            t.codegen.wall_ms,
            t.codegen.functions,
            t.codegen.insts,
            t.codegen.threads,
            t.finalize_ms
        );
    }
}

fn model(file: &str, batch: usize, mode: Mode) -> (CompiledModel, Tensor, cnnc_ir::plan::Plan, TensorMap) {
    let g = lower(file);
    let w = cnnc_runtime::init_params(&g, 1);
    let plan = optimize(&g, Some(&w), &PassOptions::all()).unwrap().plan;
    let m = CompiledModel::compile(&plan, &Options::new(batch).with_mode(mode)).unwrap();
    m.load_weights(&w).unwrap();
    (m, input(&g, batch), plan, w)
}

fn inference(c: &mut Criterion) {
    let mut group = c.benchmark_group("jit_inference");
    group.sample_size(10).measurement_time(Duration::from_secs(3));
    for file in ["resnet50.cnn", "resnet18.cnn", "vgg16.cnn", "googlenet.cnn"] {
        for batch in [1, 8] {
            let (m, x, _, _) = model(file, batch, Mode::Native);
            group.bench_function(format!("{}_b{batch}_native", file.trim_end_matches(".cnn")), |b| {
                b.iter(|| black_box(m.forward(&x).unwrap()))
            });
        }
    }
    let (m, x, plan, w) = model("resnet18.cnn", 1, Mode::Portable);
    group.bench_function("resnet18_b1_portable", |b| b.iter(|| black_box(m.forward(&x).unwrap())));
    group.bench_function("resnet18_b1_interpreter", |b| {
        b.iter(|| {
            let mut state = w.clone();
            black_box(
                cnnc_interp::run_plan(&plan, &mut state, std::slice::from_ref(&x), &cnnc_interp::Options::new())
                    .unwrap(),
            )
        })
    });
    group.finish();
}

criterion_group!(benches, compile_time, inference);
criterion_main!(benches);
