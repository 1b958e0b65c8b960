//! Measures the forward-convolution tile shapes on this machine, one thread: for each layer,
//! every (blocks, width) the instruction set has, in GFLOP/s. Run with
//! `cargo run --release -p cnnc-kernels --example tiles [isa]`; the figures chose the model in
//! `conv::choose_tile`.

use cnnc_kernels::act::Act;
use cnnc_kernels::conv::{self, ConvArgs, ConvPlan, ConvShape, Epilogue};
use cnnc_kernels::cpu;
use cnnc_kernels::lines::Lines;
use cnnc_kernels::simd::Isa;
use std::time::Instant;

fn main() {
    let isa = std::env::args().nth(1).and_then(|n| Isa::from_name(&n)).unwrap_or(Isa::Avx512);
    let cpu = cpu::cpu(isa).expect("this CPU lacks the instruction set");
    let layers = [
        ("3x3 64->64 56", ConvShape::simple(1, 64, [56, 56], 64, 3, 1, 1)),
        ("3x3 256->256 14", ConvShape::simple(1, 256, [14, 14], 256, 3, 1, 1)),
        ("1x1 256->64 56", ConvShape::simple(1, 256, [56, 56], 64, 1, 1, 0)),
        ("3x3 512->512 7", ConvShape::simple(1, 512, [7, 7], 512, 3, 1, 1)),
    ];
    let epi = Epilogue { bias: true, scale_shift: false, residual: false, act: Act::RELU };
    for (name, shape) in layers {
        let base = ConvPlan::new(shape, epi, cpu, 1).expect("plan");
        let x = Lines::filled(shape.n * shape.ic.div_ceil(16) * 16 * shape.ih * shape.iw, 0.5);
        let w = Lines::filled(conv::packed_weight_len(&shape).unwrap(), 0.01);
        let b = Lines::filled(shape.oc, 0.1);
        let mut y = Lines::filled(shape.n * shape.oc.div_ceil(16) * 16 * base.out_hw()[0] * base.out_hw()[1], 0.0);
        let flop = 2.0 * shape.macs();
        println!(
            "{name}: chosen (k, nw) = {:?}; 2-thread split {:?} tasks {}",
            base.tile(),
            ConvPlan::new(shape, epi, cpu, 2).unwrap().split_info(),
            ConvPlan::new(shape, epi, cpu, 2).unwrap().tasks()
        );
        for k in [1, 2, 4] {
            for nw in 1..=16 {
                let plan = base.with_tile(k, nw, 1);
                if plan.tile() != (k, nw) {
                    continue;
                }
                let mut scratch = Lines::filled(plan.scratch_len(1), 0.0);
                let args = ConvArgs {
                    x: x.as_ptr(),
                    x_bs: x.len(),
                    w: w.as_ptr(),
                    bias: b.as_ptr(),
                    scale: std::ptr::null(),
                    shift: std::ptr::null(),
                    res: std::ptr::null(),
                    res_bs: 0,
                    y: y.as_mut_ptr(),
                    y_bs: y.len() / shape.n,
                };
                let run = |scratch: &mut [f32]| {
                    for t in 0..plan.tasks() {
                        // SAFETY: buffers sized from the plan's shape above.
                        unsafe { cnnc_kernels::conv_fwd::forward_task(&plan, &args, t, scratch.as_mut_ptr()) };
                    }
                };
                run(&mut scratch);
                let mut best = f64::INFINITY;
                for _ in 0..5 {
                    let t0 = Instant::now();
                    let reps = 10;
                    for _ in 0..reps {
                        run(&mut scratch);
                    }
                    best = best.min(t0.elapsed().as_secs_f64() / reps as f64);
                }
                println!("  k={k} nw={nw:2}: {:6.1} GFLOP/s", flop / best / 1e9);
            }
        }
    }
}
