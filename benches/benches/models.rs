//! Whole models compiled by `cnnc-codegen` (ResNet-18, ResNet-50, VGG-16 and GoogLeNet at
//! 3x224x224, each module standalone as `cnnc FILE -o model.rs` writes it), at batch 1 and 8.
//!
//! `cargo bench -p cnnc-benches --bench models` runs criterion groups. `-- --report` instead
//! times each model as `../shared/tools/ort_bench.py` times ONNX Runtime (warm-up, a wait of at
//! most 60 s for idle CPUs, then at least 20 runs and 2 s, the median), measures the machine's
//! FMA peak in the same run, and prints ms per batch, images/s, GFLOP/s (2 x the MACs of every
//! convolution and product, ORT's count) and % of peak, with one JSON line per result.
//! `--model NAME` and `--batch N` restrict the report (for alternating with ORT, one process
//! each); `--interp` adds the reference interpreter at batch 1 (one run; seconds).

use cnnc_benches::{idle, peak};
use criterion::{Criterion, Throughput};
use std::time::Instant;

include!(concat!(env!("OUT_DIR"), "/models.rs"));

/// `forward(x, batch, out)` of a generated model.
type Forward = Box<dyn Fn(&[f32], usize, &mut [f32])>;

/// A generated model, type-erased: its forward and its sizes.
struct Generated {
    name: &'static str,
    source: &'static str,
    input: usize,
    output: usize,
    forward: Forward,
}

macro_rules! generated {
    ($($module:ident),*) => {
        vec![$({
            let model = $module::Model::from_seed(1).expect("the seeded weights load");
            Generated {
                name: stringify!($module),
                source: include_str!(concat!("../../examples/", stringify!($module), ".cnn")),
                input: $module::model::INPUT_0_LEN,
                output: $module::model::OUTPUT_0_LEN,
                forward: Box::new(move |x: &[f32], n: usize, y: &mut [f32]| model.forward(x, n, y).expect("forward runs")),
            }
        }),*]
    };
}

fn models() -> Vec<Generated> {
    generated!(resnet18, resnet50, vgg16, googlenet)
}

fn graph(source: &str) -> cnnc_ir::Graph {
    let (parsed, errors) = cnnc_syntax::parse(source);
    assert!(errors.is_empty(), "{errors:?}");
    cnnc_lower::lower(&parsed, &cnnc_lower::Options::default()).expect("the example lowers").graph
}

/// GFLOP of one image: 2 x the MACs of every convolution and product.
fn gflop(g: &cnnc_ir::Graph) -> f64 {
    let stats = cnnc_ir::node_stats(g);
    2.0 * cnnc_ir::totals(g, &stats).macs as f64 / 1e9
}

/// `(median, min, max)` ms of `f` timed as ORT's tool times: warm-up, idle wait, >= 20 runs
/// and >= 2 s; the other processes' CPU share while timing goes to stderr.
fn time(label: &str, mut f: impl FnMut()) -> (f64, f64, f64) {
    let t0 = Instant::now();
    let mut n = 0;
    while n < 3 || t0.elapsed().as_secs_f64() < 0.5 {
        f();
        n += 1;
    }
    let (waited, _) = idle::wait(std::time::Duration::from_secs(60));
    let (window, wall) = (idle::Window::start(), Instant::now());
    let mut ts = Vec::new();
    while ts.len() < 20 || wall.elapsed().as_secs_f64() < 2.0 {
        let t = Instant::now();
        f();
        ts.push(t.elapsed().as_secs_f64() * 1e3);
    }
    let share = window.others();
    let noisy = if share > idle::NOISY { " NOISY" } else { "" };
    eprintln!(
        "# {label}: waited {waited:.1} s for idle CPUs; other processes used {:.1} % of the CPUs while timing{noisy}",
        share * 100.0
    );
    ts.sort_by(f64::total_cmp);
    (ts[ts.len() / 2], ts[0], ts[ts.len() - 1])
}

fn report(args: &[String]) {
    let arg = |name: &str| args.iter().position(|a| a == name).and_then(|k| args.get(k + 1)).cloned();
    let only_model = arg("--model");
    let batches: Vec<usize> = arg("--batch").map_or(vec![1, 8], |b| vec![b.parse().expect("a batch size")]);
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let p = peak::measure(threads);
    let peak_all = p.all_threads();
    println!(
        "{{\"tool\":\"cnnc_codegen_peak\",\"threads\":{threads},\"peak_gflops\":{peak_all:.1},\"isa\":\"{}\"}}",
        cnnc_kernels::cpu::active().isa().name()
    );
    for m in models().into_iter().filter(|m| only_model.as_deref().is_none_or(|o| o == m.name)) {
        let g = graph(m.source);
        let gf = gflop(&g);
        for &n in &batches {
            let x: Vec<f32> = (0..n * m.input).map(|i| ((i * 7919) % 1000) as f32 / 1000.0 - 0.5).collect();
            let mut y = vec![0.0; n * m.output];
            let (median, min, max) = time(&format!("{} b{n}", m.name), || (m.forward)(&x, n, &mut y));
            let gflops = gf * n as f64 / (median / 1e3);
            println!(
                "{{\"tool\":\"cnnc_codegen\",\"model\":\"{}\",\"batch\":{n},\"threads\":{threads},\"median_ms\":{median:.3},\"min_ms\":{min:.3},\"max_ms\":{max:.3},\"images_per_s\":{:.1},\"gflop\":{:.3},\"gflops\":{gflops:.1},\"peak_pct\":{:.1}}}",
                m.name,
                n as f64 / (median / 1e3),
                gf * n as f64,
                100.0 * gflops / peak_all
            );
        }
        if args.iter().any(|a| a == "--interp") {
            let weights = cnnc_runtime::init_params(&g, 1);
            let mut shape = vec![1];
            shape.extend_from_slice(&g[g.inputs[0]].shape.0);
            let x = cnnc_runtime::Tensor::zeros(&shape);
            let t = Instant::now();
            cnnc_interp::run(&g, &mut weights.clone(), &[x], &cnnc_interp::Options::new())
                .expect("the interpreter runs");
            let ms = t.elapsed().as_secs_f64() * 1e3;
            println!(
                "{{\"tool\":\"cnnc_interp\",\"model\":\"{}\",\"batch\":1,\"median_ms\":{ms:.1},\"runs\":1}}",
                m.name
            );
        }
    }
}

fn criterion_groups(c: &mut Criterion) {
    for m in models() {
        let g = graph(m.source);
        let mut group = c.benchmark_group(m.name);
        group.sample_size(10);
        for n in [1usize, 8] {
            let x = vec![0.25f32; n * m.input];
            let mut y = vec![0.0; n * m.output];
            group.throughput(Throughput::Elements((gflop(&g) * 1e9) as u64 * n as u64));
            group.bench_function(format!("batch{n}"), |b| b.iter(|| (m.forward)(&x, n, &mut y)));
        }
        group.finish();
    }
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
