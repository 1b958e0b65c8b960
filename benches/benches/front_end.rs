//! Front-end speed: parsing, lowering (elaboration plus shape inference) and printing the IR of
//! real networks. Parsing is the baseline: the ratio lower / parse says what elaboration costs
//! on top of reading the text, independent of the machine's speed.

use cnnc_benches::EXAMPLES;
use criterion::{Criterion, criterion_group, criterion_main};
use std::hint::black_box;

fn front_end(c: &mut Criterion) {
    for (name, src) in EXAMPLES {
        let mut group = c.benchmark_group(*name);
        group.bench_function("parse", |b| b.iter(|| cnnc_syntax::parse(black_box(src))));
        let (file, errors) = cnnc_syntax::parse(src);
        assert!(errors.is_empty(), "{name} does not parse");
        let options = cnnc_lower::Options::default();
        group.bench_function("lower", |b| b.iter(|| cnnc_lower::lower(black_box(&file), &options).is_ok()));
        let graph = cnnc_lower::lower(&file, &options).expect("examples lower").graph;
        group.bench_function("verify", |b| b.iter(|| cnnc_ir::verify::verify(black_box(&graph)).is_ok()));
        group.bench_function("print", |b| b.iter(|| cnnc_ir::print::print(black_box(&graph)).len()));
        group.finish();
    }
}

criterion_group!(benches, front_end);
criterion_main!(benches);
