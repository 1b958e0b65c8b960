//! Measures each tile shape alone, one thread, on operands that stay in L1: the tile's own
//! throughput, without the driver's blocking, band copies and cache misses. Set beside
//! `examples/tiles.rs` (whole layers) it tells the kernel from what surrounds it; each shape is
//! measured in several rounds interleaved with the others, since a shared machine can move
//! between a fast and a slow state within seconds (a spread between rounds is the machine's).
//! Run with `cargo run --release -p cnnc-kernels --example tile_l1 [isa]`.

use cnnc_kernels::cpu;
use cnnc_kernels::lines::Lines;
use cnnc_kernels::simd::Isa;
use cnnc_kernels::tile::{self, Out, Reduce, TileFn};
use std::time::Instant;

/// Floats of A and of B: 8 KiB each, with the tile's output well inside a 32 KiB L1.
const OPERAND_FLOATS: usize = 2048;
/// Block pairs a call reduces over (each at the same A and B).
const PAIRS: usize = 32;
/// Input channels a step loop covers per block pair (one 16-channel block, as in every
/// convolution and matrix product on `nChw16c`).
const STEPS: usize = 16;
const ROUNDS: usize = 5;
const CALLS: usize = 2000;

/// One shape: its name, function, the reduction it runs and the distance between its
/// output's blocks (its columns are 16 floats apart).
struct Case {
    name: String,
    f: TileFn,
    r: Reduce,
    flop: f64,
    c_blk: isize,
}

fn main() {
    let isa = std::env::args().nth(1).and_then(|n| Isa::from_name(&n)).unwrap_or_else(|| cpu::best().isa());
    if cpu::cpu(isa).is_none() {
        eprintln!("this CPU lacks {isa:?}");
        std::process::exit(1);
    }
    let tiles = tile::tiles(isa);
    let mut cases = Vec::new();
    for (ac, set) in [(16isize, &tiles.a16), (1, &tiles.a1)] {
        for k in [1usize, 2, 4] {
            for w in 1..=set.max_width(k) {
                // A advances one channel a step (blocked map, columns 16 apart) or one row of
                // 16 columns (columns 1 apart); B one row of k 16-wide blocks. Every block
                // pair starts again at the same A and B, which therefore stay in L1.
                let a_step = if ac == 16 { 1 } else { 16 };
                let r = Reduce {
                    n: [1, 1, PAIRS],
                    a: [0; 3],
                    b: [0; 3],
                    steps: STEPS,
                    a_step,
                    b_step: 16 * k as isize,
                    b_blk: 16,
                };
                let flop = 2.0 * (PAIRS * STEPS * w * k * 16) as f64;
                let name = format!("a{ac:<2} k={k} w={w:2}");
                cases.push(Case { name, f: set.get(k, w), r, flop, c_blk: 16 * w as isize });
            }
        }
    }
    let (a, b) = (Lines::filled(OPERAND_FLOATS, 0.5), Lines::filled(OPERAND_FLOATS, 0.01));
    let mut c = Lines::filled(16 * 4 * 16, 0.0);
    let mut rates = vec![Vec::new(); cases.len()];
    for _ in 0..ROUNDS {
        for (case, rate) in cases.iter().zip(&mut rates) {
            let out = Out::plain(c.as_mut_ptr(), 16, case.c_blk, false);
            let (pa, pb) = (a.as_ptr(), b.as_ptr());
            let t0 = Instant::now();
            for _ in 0..CALLS {
                // SAFETY: every pair restarts at the same A and B, so the reduction reads A
                // within 272 floats (a16: 16 steps of one float plus 16 * (w - 1), w <= 16;
                // a1: 16 steps of 16 plus w - 1) and B within 16 steps of 16 * k floats plus
                // the last step's k blocks, 1024 floats for k = 4, of buffers of 2048; the
                // output's vectors (j, k) at 16 * (k * w + j) fit its 1024 floats
                // (w * k <= 28); the table belongs to an instruction set this CPU has
                // (checked above).
                unsafe { (case.f)(pa, pb, &case.r, &out) };
            }
            rate.push(case.flop * CALLS as f64 / t0.elapsed().as_secs_f64() / 1e9);
        }
    }
    println!("{isa:?} tiles, one thread, operands in L1: GFLOP/s, median and range of {ROUNDS} rounds");
    for (case, rate) in cases.iter().zip(&mut rates) {
        rate.sort_by(f64::total_cmp);
        println!("  {}: {:6.1} ({:5.1} .. {:5.1})", case.name, rate[ROUNDS / 2], rate[0], rate[ROUNDS - 1]);
    }
}
