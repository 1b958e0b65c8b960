//! Compiles ResNet-50's inference plan (batch 1) or, with `--train`, its training step (batch
//! 8, SGD with momentum) several times and prints where each compile's time went; a loop to
//! run under `perf record`.
//!
//! `cargo run --release -p cnnc-jit --example compile_times -- [REPEATS] [--train] [--portable]`
//! (native mode unless `--portable`) from the
//! repository root (`CNNC_THREADS=1` for Cranelift on one thread).
use cnnc_jit::{CompiledModel, Mode, Options};
use cnnc_passes::{PassOptions, TrainingOptions, optimize, optimize_training};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let train = args.iter().any(|a| a == "--train");
    let mode = if args.iter().any(|a| a == "--portable") { Mode::Portable } else { Mode::Native };
    let reps: usize = args.get(1).and_then(|r| r.parse().ok()).unwrap_or(5);
    let src = std::fs::read_to_string("examples/resnet50.cnn").unwrap();
    let (parsed, _) = cnnc_syntax::parse(&src);
    let g = cnnc_lower::lower(&parsed, &cnnc_lower::Options::default()).unwrap().graph;
    let w = cnnc_runtime::init_params(&g, 1);
    let (plan, batch) = if train {
        let t = TrainingOptions {
            optimizer: Some(cnnc_ir::Optimizer::Sgd(cnnc_ir::Sgd {
                momentum: 0.9,
                weight_decay: 0.0,
                nesterov: false,
            })),
            ..TrainingOptions::new(cnnc_ir::Loss::CrossEntropy)
        };
        (optimize_training(&g, Some(&w), &PassOptions::all(), &t).unwrap().plan, 8)
    } else {
        (optimize(&g, Some(&w), &PassOptions::all()).unwrap().plan, 1)
    };
    for _ in 0..reps {
        let m = CompiledModel::compile(&plan, &Options::new(batch).with_mode(mode)).unwrap();
        let t = m.compile_times();
        eprintln!(
            "{:.1} ms: setup {:.1} lower {:.1} codegen {:.1} ({:.1} cpu, {} fns, {} shared, {} insts) finalize {:.1}",
            t.total_ms,
            t.setup_ms,
            t.lower_ms,
            t.codegen.wall_ms,
            t.codegen.cpu_ms,
            t.codegen.functions,
            t.codegen.shared,
            t.codegen.insts,
            t.finalize_ms
        );
    }
}
