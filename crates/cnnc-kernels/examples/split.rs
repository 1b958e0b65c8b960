//! Measures forward-convolution task splits on the thread pool: for a layer, every
//! (rows per task, blocks per task) in a small grid, GFLOP/s at batch 1. Run with
//! `cargo run --release -p cnnc-kernels --example split [LAYER | custom IC HW OC K]` (layers as
//! `common/layer.rs` names them).

#[path = "common/layer.rs"]
mod layer;

use cnnc_kernels::act::Act;
use cnnc_kernels::conv::{ConvPlan, ConvShape, Epilogue};
use cnnc_kernels::lines::Lines;
use cnnc_kernels::par::Parallel;
use cnnc_kernels::threads::ThreadPool;
use cnnc_kernels::{conv_fwd, cpu};
use layer::Buffers;
use std::time::Instant;

fn main() {
    let which = std::env::args().nth(1).unwrap_or_else(|| "64".into());
    let arg = |i: usize, d: usize| std::env::args().nth(i).and_then(|a| a.parse().ok()).unwrap_or(d);
    let shape = match which.as_str() {
        "custom" => ConvShape::simple(1, arg(2, 64), [arg(3, 56), arg(3, 56)], arg(4, 64), arg(5, 3), 1, arg(5, 3) / 2),
        name => layer::named(name),
    };
    let pool = ThreadPool::global();
    let epi = Epilogue { bias: true, scale_shift: false, residual: false, act: Act::NONE };
    let base = ConvPlan::new(shape, epi, cpu::active(), pool.threads()).unwrap();
    let [_, ow] = base.out_hw();
    let Buffers { mut arena, weights, bias, x, y } = Buffers::new(&shape);
    println!("chosen split {:?}, {} tasks", base.split_info(), base.tasks());
    let rows = if base.split_info().1 > ow { vec![1] } else { vec![1, 2, 4, 7, 8, 14, 28] };
    let only_chosen = std::env::var("ONLY_CHOSEN").is_ok();
    for oc in if only_chosen { vec![base.split_info().2 * 16] } else { vec![16, 32, 64, 128, 256] } {
        let rows = if only_chosen { vec![base.split_info().0] } else { rows.clone() };
        for &rc in &rows {
            let plan = base.with_split(rc, oc / 16);
            let mut scratch = Lines::filled(plan.scratch_len(pool.threads()), 0.0);
            let io = layer::io(x, y, &weights, &bias);
            let mut t = Vec::new();
            for _ in 0..300 {
                let t0 = Instant::now();
                conv_fwd::forward(pool, &plan, &mut arena, &io, &mut scratch).unwrap();
                t.push(t0.elapsed().as_secs_f64());
            }
            t.sort_by(f64::total_cmp);
            println!(
                "  rows {rc:2} blocks {:2} ({:3} tasks): {:6.1} GFLOP/s median, {:6.1} best",
                plan.split_info().2,
                plan.tasks(),
                2.0 * shape.macs() / t[150] / 1e9,
                2.0 * shape.macs() / t[0] / 1e9
            );
        }
    }
}
