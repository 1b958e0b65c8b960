//! The benchmarked layers, each set up once (operands in a workspace arena, weights packed)
//! and run through `cnnc-kernels`' safe entry points on the global thread pool, as a back end
//! would run them.

use cnnc_kernels::act::Act;
use cnnc_kernels::conv::{self, ConvIo, ConvPlan, ConvShape, Epilogue};
use cnnc_kernels::conv_bwd_data::{self, BwdDataIo, BwdDataOptions, BwdDataPlan};
use cnnc_kernels::conv_bwd_weights::{self, BwdWeightsIo, BwdWeightsPlan};
use cnnc_kernels::conv_fwd;
use cnnc_kernels::conv_plain::{self, PlainConvPlan};
use cnnc_kernels::cpu;
use cnnc_kernels::fc::{self, FcPlan};
use cnnc_kernels::par::Parallel;
use cnnc_kernels::threads::ThreadPool;
use cnnc_kernels::view::{Layout, View};
use std::time::Instant;

/// What to run on a layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pass {
    Forward,
    BackwardData,
    BackwardWeights,
}

/// A layer's computation.
#[derive(Clone, Copy, Debug)]
pub enum Kind {
    Conv(ConvShape),
    /// A convolution of a plain (`nchw`) input to a blocked output (the stem).
    PlainConv(ConvShape),
    /// A fully connected layer at batch 1: `i` features to `o`.
    Fc {
        i: usize,
        o: usize,
    },
}

/// A layer of the benchmark table.
#[derive(Clone, Copy, Debug)]
pub struct Layer {
    /// The name `../shared/tools/ort_layers.py` uses for the same layer.
    pub name: &'static str,
    pub kind: Kind,
}

/// The layers at batch 1.
pub fn table() -> Vec<Layer> {
    let conv = |name, s| Layer { name, kind: Kind::Conv(s) };
    vec![
        conv("conv3x3_64-64_56", ConvShape::simple(1, 64, [56, 56], 64, 3, 1, 1)),
        conv("conv3x3_256-256_14", ConvShape::simple(1, 256, [14, 14], 256, 3, 1, 1)),
        conv("conv1x1_256-64_56", ConvShape::simple(1, 256, [56, 56], 64, 1, 1, 0)),
        Layer { name: "conv7x7s2_3-64_224", kind: Kind::PlainConv(ConvShape::simple(1, 3, [224, 224], 64, 7, 2, 3)) },
        Layer { name: "fc_4096-4096", kind: Kind::Fc { i: 4096, o: 4096 } },
        Layer { name: "fc_25088-4096", kind: Kind::Fc { i: 25088, o: 4096 } },
    ]
}

/// A prepared run: call it to run the layer once.
pub struct Prepared {
    pub flop: f64,
    /// Bytes a run must move at least (fc layers: weights, bias, input, output).
    pub bytes: f64,
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
        conv_fwd::forward(pool, &plan, &mut arena, &io, &mut scratch).expect("benchmark layer run");
    });
    Prepared { flop, bytes: 0.0, run }
}

/// Sets up a backward-data pass (no mask, overwrite).
pub fn conv_backward_data(shape: ConvShape, pool: &'static ThreadPool) -> Prepared {
    let plan = BwdDataPlan::new(shape, BwdDataOptions::default(), cpu::active(), pool.threads()).expect("plan");
    let [oh, ow] = shape.out_hw().unwrap();
    let gy = View::dense(0, shape.n, shape.oc, oh, ow, Layout::NChw16c);
    let dx = View::dense(gy.end().unwrap(), shape.n, shape.ic, shape.ih, shape.iw, Layout::NChw16c);
    let mut arena = pseudo(dx.end().unwrap(), 4);
    let weights = pseudo(conv::packed_weight_len(&shape).unwrap(), 5);
    let mut scratch = vec![0.0f32; plan.scratch_len(pool.threads())];
    let run = Box::new(move || {
        let io = BwdDataIo { gy, y: None, dx, weights: &weights };
        conv_bwd_data::backward_data(pool, &plan, &mut arena, &io, &mut scratch).expect("benchmark layer run");
    });
    Prepared { flop: 2.0 * shape.macs(), bytes: 0.0, run }
}

/// Sets up a backward-weights pass with the bias gradient.
pub fn conv_backward_weights(shape: ConvShape, pool: &'static ThreadPool) -> Prepared {
    let plan = BwdWeightsPlan::new(shape, true, false, cpu::active()).expect("plan");
    let [oh, ow] = shape.out_hw().unwrap();
    let x = View::dense(0, shape.n, shape.ic, shape.ih, shape.iw, Layout::NChw16c);
    let gy = View::dense(x.end().unwrap(), shape.n, shape.oc, oh, ow, Layout::NChw16c);
    let arena = pseudo(gy.end().unwrap(), 6);
    let mut dw = vec![0.0f32; conv::packed_weight_len(&shape).unwrap()];
    let mut db = vec![0.0f32; shape.oc];
    let run = Box::new(move || {
        let io = BwdWeightsIo { x, gy };
        conv_bwd_weights::backward_weights(pool, &plan, &arena, &io, &mut dw, Some(&mut db)).expect("run");
    });
    Prepared { flop: 2.0 * shape.macs(), bytes: 0.0, run }
}

/// Sets up a plain-input convolution with bias (the stem).
pub fn plain_conv_forward(shape: ConvShape, pool: &'static ThreadPool) -> Prepared {
    let epi = Epilogue { bias: true, scale_shift: false, residual: false, act: Act::NONE };
    let plan = PlainConvPlan::new(shape, epi, Layout::NChw16c, cpu::active(), pool.threads()).expect("plan");
    let [oh, ow] = plan.out_hw();
    let x = View::dense(0, shape.n, shape.ic, shape.ih, shape.iw, Layout::Nchw);
    let y = View::dense(x.end().unwrap(), shape.n, shape.oc, oh, ow, Layout::NChw16c);
    let mut arena = pseudo(y.end().unwrap(), 10);
    let weights = pseudo(conv_plain::packed_weight_len(&shape).unwrap(), 11);
    let bias = pseudo(shape.oc, 12);
    let mut scratch = vec![0.0f32; plan.scratch_len(pool.threads())];
    let run = Box::new(move || {
        let io = ConvIo { x, y, residual: None, weights: &weights, bias: Some(&bias), scale: None, shift: None };
        conv_plain::forward(pool, &plan, &mut arena, &io, &mut scratch).expect("run");
    });
    Prepared { flop: 2.0 * shape.macs(), bytes: 0.0, run }
}

/// Sets up an fc layer with bias at batch 1.
pub fn fc_forward(i: usize, o: usize, pool: &'static ThreadPool) -> Prepared {
    let plan = FcPlan::new(1, i, o, true, Act::NONE, cpu::active(), pool.threads()).expect("plan");
    let (x, w, b) = (pseudo(i, 7), pseudo(o * i, 8), pseudo(o, 9));
    let mut y = vec![0.0f32; o];
    let run = Box::new(move || fc::forward(pool, &plan, &x, &w, Some(&b), &mut y).expect("run"));
    Prepared { flop: 2.0 * (i * o) as f64, bytes: 4.0 * (o * i + o + i + o) as f64, run }
}

/// Sets up `layer` for `pass` (fc layers and 1x1 convolutions only forward).
pub fn prepare(layer: &Layer, pass: Pass, pool: &'static ThreadPool) -> Prepared {
    match (layer.kind, pass) {
        (Kind::Conv(s), Pass::Forward) => conv_forward(s, pool),
        (Kind::Conv(s), Pass::BackwardData) => conv_backward_data(s, pool),
        (Kind::Conv(s), Pass::BackwardWeights) => conv_backward_weights(s, pool),
        (Kind::PlainConv(s), _) => plain_conv_forward(s, pool),
        (Kind::Fc { i, o }, _) => fc_forward(i, o, pool),
    }
}

/// The 3x3 layers, whose backward passes the issue benchmarks.
pub fn backward_table() -> Vec<Layer> {
    table().into_iter().filter(|l| matches!(l.kind, Kind::Conv(s) if s.kh == 3)).collect()
}
