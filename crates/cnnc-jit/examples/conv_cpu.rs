//! Times one 3x3 convolution (bias and relu fused, blocked maps) in portable mode on one
//! thread by the CPU time the thread spent (`CLOCK_THREAD_CPUTIME_ID`), not the wall clock:
//! on a machine other processes share, time the thread spends preempted does not count
//! against the code. Prints the fastest of the runs (the input and output reorders
//! included), in GFLOP/s of the convolution.
//!
//! `cargo run --release -p cnnc-jit --example conv_cpu -- CHANNELS SIZE STRIDE [RUNS]` (input
//! `CHANNELS x SIZE x SIZE`, as many output channels, padding 1).

use cnnc_ir::{Activation, Conv, Graph, Op, Shape, Window};
use cnnc_jit::{CompiledModel, Mode, Options};
use cnnc_passes::{PassOptions, optimize};
use cnnc_runtime::Tensor;

/// Nanoseconds this thread has run on a CPU.
fn cpu_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid, writable timespec; the clock id is a constant Linux defines.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime");
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

fn main() {
    let args: Vec<usize> = std::env::args().skip(1).map(|a| a.parse().expect("a number")).collect();
    let (c, size, stride) = (args[0], args[1], args[2]);
    let runs = args.get(3).copied().unwrap_or(30);
    let mut g = Graph::new("conv");
    let x = g.add_input("x", Shape(vec![c, size, size]), Default::default()).unwrap();
    let window = Window { kernel: [3, 3], stride: [stride, stride], pad: [1, 1], dilation: [1, 1], ceil_mode: false };
    let conv = Op::Conv(Conv { out_channels: c, window, groups: 1, bias: true });
    let y = g.add(conv, vec![x], "conv", Default::default()).unwrap().0;
    let y = g.add(Op::Activation(Activation::Relu), vec![y], "relu", Default::default()).unwrap().0;
    g.outputs = vec![y];
    let weights = cnnc_runtime::init_params(&g, 1);
    let plan = optimize(&g, Some(&weights), &PassOptions::all()).unwrap().plan;
    let options = Options::new(1).with_mode(Mode::Portable).with_threads(1);
    let model = CompiledModel::compile(&plan, &options).unwrap();
    model.load_weights(&weights).unwrap();
    let input = Tensor { shape: vec![1, c, size, size], data: vec![0.5; c * size * size] };
    let out = size.div_ceil(stride);
    let flops = 2.0 * (c * c * 9 * out * out) as f64;
    let best = (0..runs)
        .map(|_| {
            let t0 = cpu_ns();
            model.forward(&input).unwrap();
            cpu_ns() - t0
        })
        .min()
        .unwrap_or(1);
    println!("{c}x{size}x{size} stride {stride}: {:.3} ms CPU, {:.1} GFLOP/s", best as f64 / 1e6, flops / best as f64);
}
