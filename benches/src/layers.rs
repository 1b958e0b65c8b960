//! The benchmarked layers, each set up once (operands in a workspace arena, weights packed)
//! and run through `cnnc-kernels`' safe entry points on the global thread pool, as a back end
//! would run them.

use cnnc_kernels::act::Act;
use cnnc_kernels::conv::{self, ConvIo, ConvPlan, ConvShape, Epilogue};
use cnnc_kernels::cpu;
use cnnc_kernels::par::Parallel;
use cnnc_kernels::threads::ThreadPool;
use cnnc_kernels::view::{Layout, View};
use std::time::Instant;

/// What to run on a layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pass {
    Forward,
}

/// A layer of the benchmark table.
#[derive(Clone, Copy, Debug)]
pub struct Layer {
    /// The name `../shared/tools/ort_layers.py` uses for the same layer.
    pub name: &'static str,
    pub shape: ConvShape,
}

/// The layers at batch 1.
pub fn table() -> Vec<Layer> {
    vec![
        Layer { name: "conv3x3_64-64_56", shape: ConvShape::simple(1, 64, [56, 56], 64, 3, 1, 1) },
        Layer { name: "conv3x3_256-256_14", shape: ConvShape::simple(1, 256, [14, 14], 256, 3, 1, 1) },
        Layer { name: "conv1x1_256-64_56", shape: ConvShape::simple(1, 256, [56, 56], 64, 1, 1, 0) },
    ]
}

/// A prepared run: call it to run the layer once.
pub struct Prepared {
    pub flop: f64,
    run: Box<dyn FnMut()>,
}

impl Prepared {
    pub fn run(&mut self) {
        (self.run)()
    }

    /// Median seconds of `reps` runs after a warm-up of a few.
    pub fn median_secs(&mut self, reps: usize) -> f64 {
        for _ in 0..3 {
            self.run();
        }
        let mut t: Vec<f64> = (0..reps)
            .map(|_| {
                let t0 = Instant::now();
                self.run();
                t0.elapsed().as_secs_f64()
            })
            .collect();
        t.sort_by(f64::total_cmp);
        t[t.len() / 2]
    }
}

fn pseudo(len: usize, seed: u32) -> Vec<f32> {
    (0..len)
        .map(|i| ((i as u32).wrapping_mul(2_654_435_761).wrapping_add(seed) >> 9) as f32 / 8_388_608.0 - 1.0)
        .collect()
}

/// Sets up a forward convolution with bias (ONNX Runtime's Conv node has one) on `pool`.
pub fn conv_forward(shape: ConvShape, pool: &'static ThreadPool) -> Prepared {
    let epi = Epilogue { bias: true, scale_shift: false, residual: false, act: Act::NONE };
    let plan = ConvPlan::new(shape, epi, cpu::active(), pool.threads()).expect("benchmark layer plan");
    let [oh, ow] = plan.out_hw();
    let x = View::dense(0, shape.n, shape.ic, shape.ih, shape.iw, Layout::NChw16c);
    let y = View::dense(x.end().unwrap(), shape.n, shape.oc, oh, ow, Layout::NChw16c);
    let mut arena = pseudo(y.end().unwrap(), 1);
    let weights = pseudo(conv::packed_weight_len(&shape).unwrap(), 2);
    let bias = pseudo(shape.oc, 3);
    let mut scratch = vec![0.0f32; plan.scratch_len(pool.threads())];
    let flop = 2.0 * shape.macs();
    let run = Box::new(move || {
        let io = ConvIo { x, y, residual: None, weights: &weights, bias: Some(&bias), scale: None, shift: None };
        conv::forward(pool, &plan, &mut arena, &io, &mut scratch).expect("benchmark layer run");
    });
    Prepared { flop, run }
}

/// Sets up `layer` for `pass`.
pub fn prepare(layer: &Layer, pass: Pass, pool: &'static ThreadPool) -> Prepared {
    match pass {
        Pass::Forward => conv_forward(layer.shape, pool),
    }
}
