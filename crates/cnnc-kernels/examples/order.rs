//! Compares forward-convolution loop orders and splits of one layer on the thread pool. The
//! variants take turns in bursts of a few runs (a shared machine's speed can halve and recover
//! within seconds, so only runs made close together compare): for each variant its median and
//! fastest run in GFLOP/s, and the median (with the quartiles) over the turns of its burst's
//! median time set against the chosen plan's burst just before, which is the figure to trust.
//! Run with `cargo run --release -p cnnc-kernels --example order [LAYER] [rounds]`
//! (a round is 30 turns of each variant; layers as `common/layer.rs` names them).

#[path = "common/layer.rs"]
mod layer;

use cnnc_kernels::act::Act;
use cnnc_kernels::conv::{ConvPlan, Epilogue};
use cnnc_kernels::lines::Lines;
use cnnc_kernels::par::Parallel;
use cnnc_kernels::threads::ThreadPool;
use cnnc_kernels::{conv_fwd, cpu};
use layer::Buffers;
use std::time::Instant;

fn main() {
    let which = std::env::args().nth(1).unwrap_or_else(|| "64".into());
    let rounds: usize = std::env::args().nth(2).and_then(|a| a.parse().ok()).unwrap_or(5);
    let shape = layer::named(&which);
    let pool = ThreadPool::global();
    let epi = Epilogue { bias: true, scale_shift: false, residual: false, act: Act::NONE };
    let base = ConvPlan::new(shape, epi, cpu::active(), pool.threads()).unwrap();
    let (rows, _, blocks) = base.split_info();
    // Whole tiles' blocks (an odd count's last block is a tile of its own).
    let blocks = blocks.div_ceil(base.tile().0) * base.tile().0;
    let mut variants: Vec<(String, ConvPlan)> = vec![("chosen".into(), base)];
    for (k, nw) in [(1, 16), (2, 14), (4, 6)] {
        let p = base.with_tile(k, nw, pool.threads());
        if p.tile() != base.tile() && p.tile().0 == k {
            variants.push((format!("tile {k} x {}", p.tile().1), p));
        }
    }
    for chunk in [1, 2, 4] {
        let p = base.with_blocks_outer(true).with_chunk(chunk);
        variants.push((format!("blocks outer, chunk {chunk}"), p));
    }
    let mut splits = vec![rows / 2, rows / 4, rows / 8, 1];
    splits.dedup();
    for rc in splits {
        if rc > 0 && rc != rows {
            variants.push((format!("rows {rc} blocks {blocks}"), base.with_split(rc, blocks)));
        }
    }
    let Buffers { mut arena, weights, bias, x, y } = Buffers::new(&shape);
    let io = layer::io(x, y, &weights, &bias);
    let flop = 2.0 * shape.macs();
    const BURST: usize = 10;
    let mut scratch: Vec<Lines> =
        variants.iter().map(|(_, p)| Lines::filled(p.scratch_len(pool.threads()), 0.0)).collect();
    let mut runs = vec![Vec::new(); variants.len()];
    let mut ratios = vec![Vec::new(); variants.len()];
    for _ in 0..rounds * 30 {
        let mut chosen_burst = 0.0;
        for (i, (_, plan)) in variants.iter().enumerate() {
            let mut t = [0.0f64; BURST];
            for slot in &mut t {
                let t0 = Instant::now();
                conv_fwd::forward(pool, plan, &mut arena, &io, &mut scratch[i]).unwrap();
                *slot = t0.elapsed().as_secs_f64();
            }
            runs[i].extend_from_slice(&t);
            t.sort_by(f64::total_cmp);
            let burst = t[BURST / 2];
            if i == 0 {
                chosen_burst = burst;
            }
            ratios[i].push(chosen_burst / burst);
        }
    }
    for (i, (name, plan)) in variants.iter().enumerate() {
        runs[i].sort_by(f64::total_cmp);
        ratios[i].sort_by(f64::total_cmp);
        let q = |v: &[f64], f: f64| v[((v.len() - 1) as f64 * f) as usize];
        println!(
            "{name:28} ({:3} tasks, split {:?}): {:6.1} GFLOP/s median, {:6.1} best, speed vs chosen {:.3} ({:.3}..{:.3})",
            plan.tasks(),
            plan.split_info(),
            flop / q(&runs[i], 0.5) / 1e9,
            flop / runs[i][0] / 1e9,
            q(&ratios[i], 0.5),
            q(&ratios[i], 0.25),
            q(&ratios[i], 0.75)
        );
    }
}
