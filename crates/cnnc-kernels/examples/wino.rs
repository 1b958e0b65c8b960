//! Compares the direct convolution with Winograd F(2x2, 3x3) and F(4x4, 3x3) (and some of
//! their splits) on one 3x3 layer on the thread pool, the variants taking turns in bursts of
//! ten runs (only runs made close together compare on a shared machine): for each its median
//! and fastest run in effective GFLOP/s (the direct convolution's 2 x MACs over the time) and
//! its speed against the direct plan's burst just before.
//! Run with `cargo run --release -p cnnc-kernels --example wino [LAYER] [rounds]` (a round
//! is 30 turns of each variant; layers as `common/layer.rs` names them).

#[path = "common/layer.rs"]
mod layer;

use cnnc_kernels::act::Act;
use cnnc_kernels::conv::{ConvPlan, Epilogue};
use cnnc_kernels::lines::Lines;
use cnnc_kernels::par::Parallel;
use cnnc_kernels::threads::ThreadPool;
use cnnc_kernels::winograd::{self, WinoPlan};
use cnnc_kernels::{conv_fwd, cpu};
use layer::Buffers;
use std::time::Instant;

enum Variant {
    Direct(ConvPlan),
    Wino(WinoPlan),
}

fn main() {
    let which = std::env::args().nth(1).unwrap_or_else(|| "64".into());
    let rounds: usize = std::env::args().nth(2).and_then(|a| a.parse().ok()).unwrap_or(3);
    let shape = layer::named(&which);
    let pool = ThreadPool::global();
    let epi = Epilogue { bias: true, scale_shift: false, residual: false, act: Act::NONE };
    let direct = ConvPlan::new(shape, epi, cpu::active(), pool.threads()).unwrap();
    let mut variants: Vec<(String, Variant)> = vec![("direct".into(), Variant::Direct(direct))];
    for m in [2, 4] {
        let wino = WinoPlan::new(shape, m, epi, cpu::active(), pool.threads()).unwrap();
        let chunk = wino.split_info().1;
        let name = |p: &WinoPlan| format!("F({m}x{m}) {} x {}", p.split_info().0, p.split_info().1);
        variants.push((name(&wino), Variant::Wino(wino)));
        for (b, c) in [(1, usize::MAX), (2, usize::MAX), (4, usize::MAX), (usize::MAX, chunk / 2), (1, chunk / 2)] {
            let p = wino.with_split(b, c);
            let known = |q: &WinoPlan| q.output_tile() == m && q.split_info() == p.split_info();
            if !variants.iter().any(|(_, v)| matches!(v, Variant::Wino(q) if known(q))) {
                variants.push((name(&p), Variant::Wino(p)));
            }
        }
    }
    let Buffers { mut arena, weights, bias, x, y } = Buffers::new(&shape);
    let transformed = |m: usize| {
        let mut u = Lines::filled(winograd::weight_len(&shape, m).unwrap(), 0.0);
        winograd::transform_weights(&shape, m, &weights, &mut u).unwrap();
        u
    };
    let (u2, u4) = (transformed(2), transformed(4));
    let flop = 2.0 * shape.macs();
    const BURST: usize = 10;
    let mut scratch: Vec<Lines> = variants
        .iter()
        .map(|(_, v)| {
            let len = match v {
                Variant::Direct(p) => p.scratch_len(pool.threads()),
                Variant::Wino(p) => p.scratch_len(pool.threads()),
            };
            Lines::filled(len, 0.0)
        })
        .collect();
    let mut runs = vec![Vec::new(); variants.len()];
    let mut ratios = vec![Vec::new(); variants.len()];
    for _ in 0..rounds * 30 {
        let mut direct_burst = 0.0;
        for (i, (_, v)) in variants.iter().enumerate() {
            let mut t = [0.0f64; BURST];
            for slot in &mut t {
                let t0 = Instant::now();
                match v {
                    Variant::Direct(p) => {
                        conv_fwd::forward(pool, p, &mut arena, &layer::io(x, y, &weights, &bias), &mut scratch[i])
                    }
                    Variant::Wino(p) => {
                        let u = if p.output_tile() == 4 { &u4 } else { &u2 };
                        winograd::forward(pool, p, &mut arena, &layer::io(x, y, u, &bias), &mut scratch[i])
                    }
                }
                .unwrap();
                *slot = t0.elapsed().as_secs_f64();
            }
            runs[i].extend_from_slice(&t);
            t.sort_by(f64::total_cmp);
            let burst = t[BURST / 2];
            if i == 0 {
                direct_burst = burst;
            }
            ratios[i].push(direct_burst / burst);
        }
    }
    for (i, (name, v)) in variants.iter().enumerate() {
        runs[i].sort_by(f64::total_cmp);
        ratios[i].sort_by(f64::total_cmp);
        let q = |v: &[f64], f: f64| v[((v.len() - 1) as f64 * f) as usize];
        let tasks = match v {
            Variant::Direct(p) => p.tasks(),
            Variant::Wino(p) => p.tasks(),
        };
        println!(
            "{name:24} ({tasks:3} tasks): {:7.3} ms median, {:6.1} GFLOP/s median, {:6.1} best, speed vs direct {:.3} ({:.3}..{:.3})",
            q(&runs[i], 0.5) * 1e3,
            flop / q(&runs[i], 0.5) / 1e9,
            flop / runs[i][0] / 1e9,
            q(&ratios[i], 0.5),
            q(&ratios[i], 0.25),
            q(&ratios[i], 0.75)
        );
    }
}
