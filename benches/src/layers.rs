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
use cnnc_kernels::lines::Lines;
use cnnc_kernels::par::Parallel;
use cnnc_kernels::pool::{self, PoolKind, PoolPlan, PoolWindow};
use cnnc_kernels::threads::ThreadPool;
use cnnc_kernels::view::{Layout, View};
use cnnc_kernels::winograd::{self, WinoPlan};
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
    /// The same convolution through Winograd on its preferred tile (its FLOP count the direct
    /// convolution's: GFLOP/s and % of peak are effective, as against ONNX Runtime's node).
    Winograd(ConvShape),
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
        Layer {
            name: "conv3x3_64-64_56 winograd",
            kind: Kind::Winograd(ConvShape::simple(1, 64, [56, 56], 64, 3, 1, 1)),
        },
        Layer {
            name: "conv3x3_256-256_14 winograd",
            kind: Kind::Winograd(ConvShape::simple(1, 256, [14, 14], 256, 3, 1, 1)),
        },
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

    /// Median and fastest seconds of `reps` runs after a warm-up of a few.
    pub fn median_min_secs(&mut self, reps: usize) -> [f64; 2] {
        for _ in 0..3 {
            self.run();
        }
        let mut t: Vec<f64> = (0..reps.max(1))
            .map(|_| {
                let t0 = Instant::now();
                self.run();
                t0.elapsed().as_secs_f64()
            })
            .collect();
        t.sort_by(f64::total_cmp);
        [t[t.len() / 2], t[0]]
    }
}

/// Deterministic values in [-1, 1).
fn pseudo_at(i: usize, seed: u32) -> f32 {
    ((i as u32).wrapping_mul(2_654_435_761).wrapping_add(seed) >> 9) as f32 / 8_388_608.0 - 1.0
}

fn pseudo(len: usize, seed: u32) -> Lines {
    Lines::from_fn(len, |i| pseudo_at(i, seed))
}

fn zeros(len: usize) -> Lines {
    Lines::from_fn(len, |_| 0.0)
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
    let mut scratch = zeros(plan.scratch_len(pool.threads()));
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
    let mut scratch = zeros(plan.scratch_len(pool.threads()));
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
    let mut arena = pseudo(gy.end().unwrap(), 6);
    let mut dw = zeros(conv::packed_weight_len(&shape).unwrap());
    let mut db = zeros(shape.oc);
    let run = Box::new(move || {
        let io = BwdWeightsIo { x, gy, relu: None };
        conv_bwd_weights::backward_weights(pool, &plan, &mut arena, &io, &mut dw, Some(&mut db)).expect("run");
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
    let mut scratch = zeros(plan.scratch_len(pool.threads()));
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
    let mut y = zeros(o);
    let run = Box::new(move || fc::forward(pool, &plan, &x, &w, Some(&b), &mut y).expect("run"));
    Prepared { flop: 2.0 * (i * o) as f64, bytes: 4.0 * (o * i + o + i + o) as f64, run }
}

/// One distinct layer of ResNet-50 at batch 1 and how many times the network runs it.
#[derive(Clone, Copy, Debug)]
pub struct NetLayer {
    pub name: &'static str,
    pub count: usize,
    pub kind: NetKind,
}

/// A ResNet-50 layer's computation, with its fused epilogue (batch norm folded into a bias).
#[derive(Clone, Copy, Debug)]
pub enum NetKind {
    /// `residual`: the block's last 1x1 (`+ shortcut`, then ReLU); else `relu` or nothing.
    Conv {
        shape: ConvShape,
        relu: bool,
        residual: bool,
    },
    Stem(ConvShape),
    MaxPool,
    GlobalPool,
    Fc,
}

/// ResNet-50 (torchvision, v1.5: stride in the 3x3) at batch 1: its 53 convolutions in 23
/// distinct shapes, the max pool, the global average pool and the classifier.
pub fn resnet50() -> Vec<NetLayer> {
    let c = |name, count, ic, hw: usize, oc, k, s, relu, residual| {
        let p = if k == 3 { 1 } else { 0 };
        NetLayer {
            name,
            count,
            kind: NetKind::Conv { shape: ConvShape::simple(1, ic, [hw, hw], oc, k, s, p), relu, residual },
        }
    };
    vec![
        NetLayer {
            name: "conv1 7x7/2 3-64",
            count: 1,
            kind: NetKind::Stem(ConvShape::simple(1, 3, [224, 224], 64, 7, 2, 3)),
        },
        NetLayer { name: "maxpool 3x3/2", count: 1, kind: NetKind::MaxPool },
        c("l1 1x1 64-64", 1, 64, 56, 64, 1, 1, true, false),
        c("l1 3x3 64-64", 3, 64, 56, 64, 3, 1, true, false),
        c("l1 1x1 64-256 +res", 3, 64, 56, 256, 1, 1, true, true),
        c("l1 down 1x1 64-256", 1, 64, 56, 256, 1, 1, false, false),
        c("l1 1x1 256-64", 2, 256, 56, 64, 1, 1, true, false),
        c("l2 1x1 256-128", 1, 256, 56, 128, 1, 1, true, false),
        c("l2 3x3/2 128-128", 1, 128, 56, 128, 3, 2, true, false),
        c("l2 1x1 128-512 +res", 4, 128, 28, 512, 1, 1, true, true),
        c("l2 down 1x1/2 256-512", 1, 256, 56, 512, 1, 2, false, false),
        c("l2 1x1 512-128", 3, 512, 28, 128, 1, 1, true, false),
        c("l2 3x3 128-128", 3, 128, 28, 128, 3, 1, true, false),
        c("l3 1x1 512-256", 1, 512, 28, 256, 1, 1, true, false),
        c("l3 3x3/2 256-256", 1, 256, 28, 256, 3, 2, true, false),
        c("l3 1x1 256-1024 +res", 6, 256, 14, 1024, 1, 1, true, true),
        c("l3 down 1x1/2 512-1024", 1, 512, 28, 1024, 1, 2, false, false),
        c("l3 1x1 1024-256", 5, 1024, 14, 256, 1, 1, true, false),
        c("l3 3x3 256-256", 5, 256, 14, 256, 3, 1, true, false),
        c("l4 1x1 1024-512", 1, 1024, 14, 512, 1, 1, true, false),
        c("l4 3x3/2 512-512", 1, 512, 14, 512, 3, 2, true, false),
        c("l4 1x1 512-2048 +res", 3, 512, 7, 2048, 1, 1, true, true),
        c("l4 down 1x1/2 1024-2048", 1, 1024, 14, 2048, 1, 2, false, false),
        c("l4 1x1 2048-512", 2, 2048, 7, 512, 1, 1, true, false),
        c("l4 3x3 512-512", 2, 512, 7, 512, 3, 1, true, false),
        NetLayer { name: "global avgpool 2048", count: 1, kind: NetKind::GlobalPool },
        NetLayer { name: "fc 2048-1000", count: 1, kind: NetKind::Fc },
    ]
}

/// Bytes of distinct weight copies a cold-weight run cycles through: more than the last-level
/// cache (32 MiB on the machines measured) several times over, as a whole model's weights
/// (ResNet-50: about 100 MB) are, so every run reads its weights from memory.
pub const COLD_BYTES: usize = 128 << 20;

/// Whether a run reads its weights from cache (the same copy each run, as a layer benchmarked
/// alone) or from memory (the next of the copies filling [`COLD_BYTES`], as inside a model).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Weights {
    Warm,
    Cold,
}

/// A forward convolution's plan on either kernel.
enum FwdPlan {
    Direct(ConvPlan),
    Winograd(WinoPlan),
}

/// Which kernel runs a forward convolution.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Algorithm {
    Direct,
    /// Winograd on the tile `winograd::preferred` gives (2x2 where it prefers none).
    Winograd,
    /// What the back ends choose: Winograd where `winograd::preferred` says so, with its tile.
    Chosen,
}

/// A forward convolution with bias and the given ReLU / residual epilogue, on the kernel the
/// back ends choose.
pub fn conv_with(shape: ConvShape, relu: bool, residual: bool, pool: &'static ThreadPool) -> Prepared {
    conv_weights(shape, relu, residual, Weights::Warm, Algorithm::Chosen, pool)
}

/// [`conv_with`] reading warm or cold weights, on a given kernel.
pub fn conv_weights(
    shape: ConvShape,
    relu: bool,
    residual: bool,
    weights: Weights,
    algorithm: Algorithm,
    pool: &'static ThreadPool,
) -> Prepared {
    let act = if relu { Act::RELU } else { Act::NONE };
    let epi = Epilogue { bias: true, scale_shift: false, residual, act };
    let wino = match algorithm {
        Algorithm::Direct => None,
        Algorithm::Winograd => Some(winograd::preferred(&shape).unwrap_or(2)),
        Algorithm::Chosen => winograd::preferred(&shape),
    };
    let plan = if let Some(m) = wino {
        FwdPlan::Winograd(WinoPlan::new(shape, m, epi, cpu::active(), pool.threads()).expect("plan"))
    } else {
        FwdPlan::Direct(ConvPlan::new(shape, epi, cpu::active(), pool.threads()).expect("plan"))
    };
    let [oh, ow] = shape.out_hw().expect("shape");
    let x = View::dense(0, shape.n, shape.ic, shape.ih, shape.iw, Layout::NChw16c);
    let y = View::dense(x.end().unwrap(), shape.n, shape.oc, oh, ow, Layout::NChw16c);
    let mut arena = pseudo(y.end().unwrap(), 13);
    let len = match wino {
        Some(m) => winograd::weight_len(&shape, m),
        None => conv::packed_weight_len(&shape),
    }
    .unwrap();
    let copies = match weights {
        Weights::Warm => 1,
        Weights::Cold => COLD_BYTES.div_ceil(4 * len).max(2),
    };
    let weights = Lines::from_fn(copies * len, |i| pseudo_at(i % len, 14 + (i / len) as u32));
    let bias = pseudo(shape.oc, 15);
    let mut scratch = zeros(match &plan {
        FwdPlan::Direct(p) => p.scratch_len(pool.threads()),
        FwdPlan::Winograd(p) => p.scratch_len(pool.threads()),
    });
    let mut next = 0;
    let run = Box::new(move || {
        let w = &weights[next * len..(next + 1) * len];
        next = (next + 1) % copies;
        // In-place residual: the shortcut was written where the output goes.
        let io =
            ConvIo { x, y, residual: residual.then_some(y), weights: w, bias: Some(&bias), scale: None, shift: None };
        match &plan {
            FwdPlan::Direct(p) => conv_fwd::forward(pool, p, &mut arena, &io, &mut scratch),
            FwdPlan::Winograd(p) => winograd::forward(pool, p, &mut arena, &io, &mut scratch),
        }
        .expect("run");
    });
    Prepared { flop: 2.0 * shape.macs(), bytes: 0.0, run }
}

/// Pooling on blocked maps: ResNet's 3x3/2 max pool on 64 x 112 x 112, or the global average
/// pool on 2048 x 7 x 7.
pub fn pool_layer(global: bool, pool: &'static ThreadPool) -> Prepared {
    let (c, hw, kind, win) = if global {
        (2048, 7, PoolKind::Avg, PoolWindow::adaptive(1, 1))
    } else {
        (64, 112, PoolKind::Max, PoolWindow::sliding(3, 2, 1, false))
    };
    let plan = PoolPlan::new(1, c, [hw, hw], kind, win, Layout::NChw16c, cpu::active()).expect("plan");
    let [oh, ow] = plan.out_hw();
    let x = View::dense(0, 1, c, hw, hw, Layout::NChw16c);
    let y = View::dense(x.end().unwrap(), 1, c, oh, ow, Layout::NChw16c);
    let mut arena = pseudo(y.end().unwrap(), 16);
    let run = Box::new(move || pool::forward(pool, &plan, &mut arena, x, y, None).expect("run"));
    Prepared { flop: 0.0, bytes: 0.0, run }
}

/// Sets up a ResNet-50 layer.
pub fn prepare_net(layer: &NetLayer, pool: &'static ThreadPool) -> Prepared {
    match layer.kind {
        NetKind::Conv { shape, relu, residual } => conv_with(shape, relu, residual, pool),
        NetKind::Stem(shape) => plain_conv_forward(shape, pool),
        NetKind::MaxPool => pool_layer(false, pool),
        NetKind::GlobalPool => pool_layer(true, pool),
        NetKind::Fc => fc_forward(2048, 1000, pool),
    }
}

/// Sets up `layer` for `pass` (fc layers and 1x1 convolutions only forward).
pub fn prepare(layer: &Layer, pass: Pass, pool: &'static ThreadPool) -> Prepared {
    match (layer.kind, pass) {
        (Kind::Conv(s), Pass::Forward) => conv_forward(s, pool),
        (Kind::Winograd(s), _) => conv_weights(s, false, false, Weights::Warm, Algorithm::Winograd, pool),
        (Kind::Conv(s), Pass::BackwardData) => conv_backward_data(s, pool),
        (Kind::Conv(s), Pass::BackwardWeights) => conv_backward_weights(s, pool),
        (Kind::PlainConv(s), _) => plain_conv_forward(s, pool),
        (Kind::Fc { i, o }, _) => fc_forward(i, o, pool),
    }
}

/// Floating-point operations of `layer` that touch the image: the nominal count
/// (`2 * macs`, what ONNX Runtime and PyTorch count) less the products with padding.
/// Backward-data skips every tap that falls wholly outside the image (on a 1x1 map it runs one
/// tap of nine, so against the nominal count it runs at more than twice the peak). `None` for
/// an fc layer, which has no padding (its nominal count is the prepared run's).
pub fn in_image_flop(layer: &Layer) -> Option<f64> {
    match layer.kind {
        Kind::Conv(s) | Kind::Winograd(s) | Kind::PlainConv(s) => in_image_macs(&s).map(|m| 2.0 * m),
        Kind::Fc { .. } => None,
    }
}

/// Multiply-adds of a convolution whose input pixel lies inside the image: per axis, the
/// (output position, tap) pairs that land in `0..size` (for each tap, the outputs the
/// backward-weights kernel reduces over, `conv::in_image_outputs`), rows and columns counted
/// apart (the two are independent). `None` for a shape that is not a convolution.
pub fn in_image_macs(s: &ConvShape) -> Option<f64> {
    let [oh, ow] = s.out_hw().ok()?;
    let axis = |out: usize, k: usize, size: usize, stride: usize, pad: usize, dil: usize| -> usize {
        (0..k)
            .map(|t| {
                let (lo, hi) = conv::in_image_outputs(out, size, stride, pad, t * dil);
                hi - lo
            })
            .sum()
    };
    let rows = axis(oh, s.kh, s.ih, s.stride[0], s.pad[0], s.dilation[0]);
    let cols = axis(ow, s.kw, s.iw, s.stride[1], s.pad[1], s.dilation[1]);
    Some((s.n * s.oc * (s.ic / s.groups)) as f64 * (rows * cols) as f64)
}

/// The 3x3 layers, whose backward passes the issue benchmarks, and ResNet-18's layer4 convs
/// at 3x32x32, batch 16 (1x1 and 2x2 maps, where most kernel taps hit only padding).
pub fn backward_table() -> Vec<Layer> {
    let mut list: Vec<Layer> = table().into_iter().filter(|l| matches!(l.kind, Kind::Conv(s) if s.kh == 3)).collect();
    let conv = |name, s| Layer { name, kind: Kind::Conv(s) };
    list.push(conv("conv3x3_512-512_1_b16", ConvShape::simple(16, 512, [1, 1], 512, 3, 1, 1)));
    list.push(conv("conv3x3_512-512_2_b16", ConvShape::simple(16, 512, [2, 2], 512, 3, 1, 1)));
    list
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_image_macs_drop_only_the_padding() {
        // No padding: every product touches the image.
        let valid = ConvShape::simple(2, 16, [9, 7], 8, 3, 1, 0);
        assert_eq!(in_image_macs(&valid), Some(valid.macs()));
        // A 1x1 map under a 3x3 kernel with padding 1: only the centre tap of nine.
        let one = ConvShape::simple(16, 512, [1, 1], 512, 3, 1, 1);
        assert_eq!(in_image_macs(&one), Some(one.macs() / 9.0));
        // A 2x2 map: each output position has 2 of 3 taps inside per axis, 4 of 9 in all.
        let two = ConvShape::simple(1, 32, [2, 2], 16, 3, 1, 1);
        assert_eq!(in_image_macs(&two), Some(two.macs() * 4.0 / 9.0));
        // Worked by hand, 5 wide, 3 taps, stride 2, padding 1: outputs at -1..1, 1..3, 3..5
        // hit 2 + 3 + 2 = 7 of 9 per axis.
        let strided = ConvShape::simple(1, 16, [5, 5], 16, 3, 2, 1);
        assert_eq!(in_image_macs(&strided), Some((16 * 16 * 49) as f64));
        // Not a convolution (a kernel larger than the padded input).
        assert_eq!(in_image_macs(&ConvShape::simple(1, 16, [2, 2], 16, 5, 1, 0)), None);
    }
}
