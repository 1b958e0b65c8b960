//! The `cnn!` macro's work: `cnnc_emit::emit_rust` (parse, lower, the passes, the code
//! generator and prettyplease) on ResNet-50, for inference and with a training step, against
//! the front end alone (parse and lower) in the same run. The macro adds to this its token
//! walk and rustc's lexing of the module text; rustc's `-Z time-passes` (`macro_expand_crate`)
//! gives the whole.

use cnnc_benches::EXAMPLES;
use criterion::{Criterion, criterion_group, criterion_main};
use std::hint::black_box;

fn emit(c: &mut Criterion) {
    for (name, src) in EXAMPLES {
        let mut group = c.benchmark_group(format!("{name}/emit"));
        group.sample_size(10);
        let source = cnnc_diag::SourceFile::new(format!("{name}.cnn"), *src);
        let options = cnnc_lower::Options::default();
        group.bench_function("front_end", |b| {
            b.iter(|| cnnc_lower::lower(&cnnc_syntax::parse(black_box(src)).0, &options).is_ok())
        });
        let inference = cnnc_emit::Options::default();
        group.bench_function("emit_inference", |b| {
            b.iter(|| cnnc_emit::emit_rust(black_box(&source), &inference).expect("compiles").text.len())
        });
        let sgd = cnnc_ir::Optimizer::Sgd(cnnc_ir::Sgd { momentum: 0.9, weight_decay: 5e-4, nesterov: false });
        let training = cnnc_emit::Options {
            training: Some(cnnc_emit::Training { loss: None, optimizer: Some(sgd) }),
            ..cnnc_emit::Options::default()
        };
        group.bench_function("emit_training", |b| {
            b.iter(|| cnnc_emit::emit_rust(black_box(&source), &training).expect("compiles").text.len())
        });
        group.finish();
    }
}

criterion_group!(benches, emit);
criterion_main!(benches);
