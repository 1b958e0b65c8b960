//! How the middle of the compiler scales: lowering, the pass pipeline (with the verifier after
//! every pass, as the driver runs it) and the memory planner, timed separately on generated
//! models of 10,000 and 100,000 nodes ([`Deep`]). Throughput is reported in nodes per second:
//! a stage that is linear in the graph's size keeps roughly the same rate at both sizes (a
//! little lower at 100,000, where the graph no longer fits in the caches); a quadratic one
//! drops about tenfold.
//!
//! `cargo bench -p cnnc-benches --bench pipeline -- residual/10000` runs one case.

use cnnc_benches::Deep;
use cnnc_ir::Graph;
use cnnc_ir::plan::OutputRole;
use cnnc_passes::{Ctx, Mode, PassOptions, PlanOptions};
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use std::hint::black_box;
use std::time::Duration;

const SIZES: [usize; 2] = [10_000, 100_000];

/// The passes as `cnnc summary` runs them: every inference pass, the verifier after each.
fn pass_options() -> PassOptions {
    PassOptions { verify: true, ..PassOptions::all() }
}

fn lower(file: &cnnc_syntax::ast::File) -> Graph {
    cnnc_lower::lower(file, &cnnc_lower::Options::default()).expect("generated models lower").graph
}

fn optimized(graph: &Graph) -> Graph {
    let mut cx = Ctx::new(graph.clone(), None, Mode::Inference);
    cnnc_passes::pipeline::run_passes(&mut cx, &pass_options()).expect("the passes run");
    cx.graph
}

fn pipeline(c: &mut Criterion) {
    for deep in Deep::ALL {
        let mut group = c.benchmark_group(deep.name());
        group.sample_size(10).warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(2));
        for n in SIZES {
            let (file, errors) = cnnc_syntax::parse(&deep.source(n));
            assert!(errors.is_empty(), "{} does not parse", deep.name());
            let graph = lower(&file);
            group.throughput(Throughput::Elements(graph.len() as u64));
            group.bench_function(format!("{n}/lower"), |b| b.iter(|| lower(black_box(&file)).len()));
            group.bench_function(format!("{n}/passes"), |b| {
                b.iter_batched(
                    || Ctx::new(graph.clone(), None, Mode::Inference),
                    |mut cx| cnnc_passes::pipeline::run_passes(&mut cx, &pass_options()).map(|(ran, _)| ran.len()),
                    BatchSize::LargeInput,
                )
            });
            let after = optimized(&graph);
            let roles: Vec<OutputRole> = (0..after.outputs.len()).map(OutputRole::Model).collect();
            group.bench_function(format!("{n}/plan"), |b| {
                b.iter_batched(
                    || after.clone(),
                    |g| {
                        cnnc_passes::plan::build(g, roles.clone(), Vec::new(), &PlanOptions::default())
                            .workspace_bytes(1)
                    },
                    BatchSize::LargeInput,
                )
            });
            group.bench_function(format!("{n}/optimize"), |b| {
                b.iter(|| cnnc_passes::optimize(black_box(&graph), None, &pass_options()).map(|o| o.graph().len()))
            });
        }
        group.finish();
    }
}

criterion_group!(benches, pipeline);
criterion_main!(benches);
