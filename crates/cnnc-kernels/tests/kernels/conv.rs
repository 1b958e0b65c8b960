//! Forward convolution on blocked maps with the fused epilogue, against the interpreter.

use super::oracle::{self, ConvCfg, Post};
use super::util::{Arena, Rng, close, cpus, from_blocked, guarded, par, to_blocked};
use cnnc_ir::Activation;
use cnnc_kernels::act::{Act, ActKind};
use cnnc_kernels::conv::{ConvIo, ConvPlan, ConvShape, Epilogue};
use cnnc_kernels::conv_fwd;
use cnnc_kernels::pack::{self, Blocked, WeightShape};
use cnnc_kernels::simd::Isa;
use cnnc_kernels::view::Layout;
use proptest::prelude::*;

/// Every activation with its interpreter twin.
pub fn activations() -> Vec<(Act, Activation)> {
    vec![
        (Act::RELU, Activation::Relu),
        (Act::leaky_relu(0.1), Activation::LeakyRelu { slope: 0.1f32 as f64 }),
        (Act::elu(0.7), Activation::Elu { alpha: 0.7f32 as f64 }),
        (Act::new(ActKind::Selu), Activation::Selu),
        (Act::new(ActKind::Sigmoid), Activation::Sigmoid),
        (Act::new(ActKind::Tanh), Activation::Tanh),
        (Act::hardtanh(-0.5, 0.75), Activation::HardTanh { min: -0.5, max: 0.75 }),
        (Act::new(ActKind::Softsign), Activation::Softsign),
        // PyTorch's softplus jumps where it turns linear (`beta x > threshold`): by 0.1 at a
        // threshold of 1.5, so an f32 and an f64 sum on either side of it disagree; at 8 the
        // jump is 2e-4 of the value, below the tolerance, and x > 4 still reaches the linear
        // branch.
        (Act::softplus(2.0, 8.0), Activation::Softplus { beta: 2.0, threshold: 8.0 }),
    ]
}

#[derive(Clone, Copy, Debug)]
pub enum Residual {
    None,
    Apart,
    InPlace,
}

#[derive(Clone, Copy, Debug)]
pub struct EpiCase {
    pub bias: bool,
    pub scale_shift: bool,
    pub residual: Residual,
    /// Index into [`activations`], or none.
    pub act: Option<usize>,
}

/// Random convolutions: sizes 1..40, channels not multiples of 16, strides 1..3, padding,
/// dilation, two groups of whole blocks, batch 1..5; spatial size scaled down so that a case
/// stays under about two million multiply-accumulates.
pub fn conv_cfg() -> impl Strategy<Value = ConvCfg> {
    (
        (1usize..=5, 1usize..=40, 1usize..=40, prop_oneof![Just(1usize), Just(2)]),
        (1usize..=40, 1usize..=40, 1usize..=5, 1usize..=5),
        (1usize..=3, 1usize..=3, 0usize..=3, 0usize..=3, 1usize..=2, 1usize..=2),
    )
        .prop_map(|((n, ic, oc, groups), (ih, iw, kh, kw), (sh, sw, ph, pw, dh, dw))| {
            let (ic, oc) = if groups == 2 { (32 * ic.div_ceil(20), 16 * oc.div_ceil(20) * 2) } else { (ic, oc) };
            let extent = |k: usize, d: usize| d * (k - 1) + 1;
            // Padding up to one past the kernel's extent (rows and columns with no tap at all).
            let (ph, pw) = (ph.min(extent(kh, dh)), pw.min(extent(kw, dw)));
            let mut cfg = ConvCfg {
                n,
                ic,
                ih: ih.max(extent(kh, dh).saturating_sub(2 * ph)).max(1),
                iw: iw.max(extent(kw, dw).saturating_sub(2 * pw)).max(1),
                oc,
                k: [kh, kw],
                stride: [sh, sw],
                pad: [ph, pw],
                dilation: [dh, dw],
                groups,
            };
            // Shrink the batch, then the larger reducible spatial side, until small enough.
            while macs(&cfg) > 2_000_000 {
                let (can_h, can_w) = (cfg.ih > extent(kh, dh), cfg.iw > extent(kw, dw));
                if cfg.n > 1 {
                    cfg.n -= 1;
                } else if can_h && (cfg.ih >= cfg.iw || !can_w) {
                    cfg.ih -= 1;
                } else if can_w {
                    cfg.iw -= 1;
                } else {
                    break;
                }
            }
            cfg
        })
}

/// Small maps (1x1 .. 4x4) at batch 1..17, where plans run tiles over images: strides 1-2,
/// padding, dilation, two groups, channels not multiples of 16.
pub fn small_cfg() -> impl Strategy<Value = ConvCfg> {
    (
        (1usize..=17, 1usize..=40, 1usize..=40, prop_oneof![Just(1usize), Just(2)]),
        (1usize..=4, 1usize..=4, 1usize..=3, 1usize..=3),
        (1usize..=2, 1usize..=2, 0usize..=2, 0usize..=2, 1usize..=2, 1usize..=2),
    )
        .prop_map(|((n, ic, oc, groups), (ih, iw, kh, kw), (sh, sw, ph, pw, dh, dw))| {
            let (ic, oc) = if groups == 2 { (32, 32 * oc.div_ceil(20)) } else { (ic, oc) };
            let extent = |k: usize, d: usize| d * (k - 1) + 1;
            let (ph, pw) = (ph.min(extent(kh, dh)), pw.min(extent(kw, dw)));
            ConvCfg {
                n,
                ic,
                ih: ih.max(extent(kh, dh).saturating_sub(2 * ph)),
                iw: iw.max(extent(kw, dw).saturating_sub(2 * pw)),
                oc,
                k: [kh, kw],
                stride: [sh, sw],
                pad: [ph, pw],
                dilation: [dh, dw],
                groups,
            }
        })
}

fn macs(c: &ConvCfg) -> usize {
    let [oh, ow] = c.out_hw();
    c.n * c.oc * oh * ow * c.ic / c.groups * c.k[0] * c.k[1]
}

pub fn epi_case() -> impl Strategy<Value = EpiCase> {
    (any::<bool>(), any::<bool>(), 0usize..3, proptest::option::of(0usize..9)).prop_map(|(bias, ss, r, act)| EpiCase {
        bias,
        scale_shift: ss,
        residual: [Residual::None, Residual::Apart, Residual::InPlace][r],
        act,
    })
}

pub fn shape_of(c: &ConvCfg) -> ConvShape {
    ConvShape {
        n: c.n,
        ic: c.ic,
        ih: c.ih,
        iw: c.iw,
        oc: c.oc,
        kh: c.k[0],
        kw: c.k[1],
        stride: c.stride,
        pad: c.pad,
        dilation: c.dilation,
        groups: c.groups,
    }
}

pub fn weight_shape(c: &ConvCfg) -> WeightShape {
    WeightShape { o: c.oc, i: c.ic / c.groups, kh: c.k[0], kw: c.k[1], groups: c.groups }
}

fn check_forward(cfg: ConvCfg, e: EpiCase, seed: u64) -> Result<(), String> {
    let mut rng = Rng::new(seed);
    let [oh, ow] = cfg.out_hw();
    let (ihw, ohw) = (cfg.ih * cfg.iw, oh * ow);
    let x = rng.vec(cfg.n * cfg.ic * ihw);
    let w = rng.vec(cfg.oc * cfg.ic / cfg.groups * cfg.k[0] * cfg.k[1]);
    let bias = rng.vec(cfg.oc);
    let (scale, shift) = (rng.vec(cfg.oc), rng.vec(cfg.oc));
    let res = rng.vec(cfg.n * cfg.oc * ohw);
    let acts = activations();
    let post = Post {
        scale_shift: e.scale_shift.then_some((&scale[..], &shift[..])),
        residual: (!matches!(e.residual, Residual::None)).then_some(&res[..]),
        act: e.act.map(|i| acts[i].1),
    };
    let want = oracle::conv_forward(&cfg, &x, &w, e.bias.then_some(&bias[..]), &post);
    let ws = weight_shape(&cfg);
    let mut packed = vec![0.0; ws.blocked_len().unwrap()];
    pack::pack(&ws, Blocked::Forward, &w, &mut packed).unwrap();
    let packed = guarded(&packed);
    let (bias_g, scale_g, shift_g) = (guarded(&bias), guarded(&scale), guarded(&shift));
    let epilogue = Epilogue {
        bias: e.bias,
        scale_shift: e.scale_shift,
        residual: !matches!(e.residual, Residual::None),
        act: e.act.map_or(Act::NONE, |i| acts[i].0),
    };
    let xb = to_blocked(&x, cfg.n, cfg.ic, ihw, 3.5);
    let rb = to_blocked(&res, cfg.n, cfg.oc, ohw, -2.0);
    for cpu in cpus() {
        let par = par(seed);
        let plan = ConvPlan::new(shape_of(&cfg), epilogue, cpu, par.threads()).map_err(|e| e.to_string())?;
        // Both loop orders of a task (the plan picks one by the weights' size), rows cut into
        // blocks of one tile, and blocks outside rows with the reduction cut into chunks of
        // one and two input blocks (uncut with a residual), with and without weight
        // prefetching.
        let flipped = plan.with_blocks_outer(!plan.blocks_outer()).with_prefetch(!plan.prefetch());
        let cut = plan.with_blocks_outer(false).with_col_block(plan.tile().1).with_prefetch(true);
        let chunked = plan.with_blocks_outer(true).with_chunk(1).with_prefetch(true);
        let pairs = plan.with_blocks_outer(true).with_chunk(2).with_prefetch(false);
        // One row and one tile's blocks a task: with an odd block count and two blocks a
        // tile, the last block alone is a task of its own.
        let units = plan.with_split(1, plan.tile().0);
        if !matches!(e.residual, Residual::None) && chunked.chunk() != (cfg.ic / cfg.groups).div_ceil(16) {
            return Err(format!("{cfg:?}: a plan with a residual cut its reduction"));
        }
        // Tiles over images (what small maps at batch > 1 get), on any shape.
        let span = plan.with_span(par.threads());
        for plan in [plan, flipped, cut, chunked, pairs, units, span] {
            let what = format!(
                "{:?} {cfg:?} {e:?} plan tile {:?} band {:?} blocks outer {} prefetch {} chunk {}",
                cpu.isa(),
                plan.tile(),
                plan.band(),
                plan.blocks_outer(),
                plan.prefetch(),
                plan.chunk()
            );
            let ops = Operands {
                xb: &xb,
                rb: &rb,
                weights: packed.as_slice(),
                bias: bias_g.as_slice(),
                scale: scale_g.as_slice(),
                shift: shift_g.as_slice(),
            };
            run_blocked(&what, cfg, e, &ops, &want, plan.scratch_len(par.threads()), |arena, io, scratch| {
                conv_fwd::forward(par, &plan, arena, io, scratch)
            })?;
        }
    }
    Ok(())
}

/// A blocked forward convolution's operands for [`run_blocked`]: input and residual in
/// `nChw16c`, the weights in the kernel's form, the epilogue vectors.
pub struct Operands<'a> {
    pub xb: &'a [f32],
    pub rb: &'a [f32],
    pub weights: &'a [f32],
    pub bias: &'a [f32],
    pub scale: &'a [f32],
    pub shift: &'a [f32],
}

/// Runs `run` once on fresh guard-checked buffers for `cfg` with epilogue `e` (the residual
/// apart, in the output's own memory, or none) and compares its output with `want`: within
/// rtol 1e-4, padding lanes finite, nothing written outside its tensors or scratch.
pub fn run_blocked(
    what: &str,
    cfg: ConvCfg,
    e: EpiCase,
    ops: &Operands<'_>,
    want: &[f32],
    scratch_len: usize,
    run: impl FnOnce(&mut [f32], &ConvIo<'_>, &mut [f32]) -> Result<(), cnnc_kernels::error::KernelError>,
) -> Result<(), String> {
    let [oh, ow] = cfg.out_hw();
    let y0 = match e.residual {
        Residual::InPlace => ops.rb.to_vec(),
        _ => vec![9.0; ops.rb.len()],
    };
    let mut arena = match e.residual {
        Residual::Apart => Arena::new(&[ops.xb, ops.rb, &y0]),
        _ => Arena::new(&[ops.xb, &y0]),
    };
    let yi = arena.offsets.len() - 1;
    let xv = arena.view(0, cfg.n, cfg.ic, cfg.ih, cfg.iw, Layout::NChw16c);
    let yv = arena.view(yi, cfg.n, cfg.oc, oh, ow, Layout::NChw16c);
    let rv = match e.residual {
        Residual::None => None,
        Residual::Apart => Some(arena.view(1, cfg.n, cfg.oc, oh, ow, Layout::NChw16c)),
        Residual::InPlace => Some(yv),
    };
    let io = ConvIo {
        x: xv,
        y: yv,
        residual: rv,
        weights: ops.weights,
        bias: e.bias.then_some(ops.bias),
        scale: e.scale_shift.then_some(ops.scale),
        shift: e.scale_shift.then_some(ops.shift),
    };
    let mut scratch = guarded(&vec![0.0; scratch_len]);
    run(arena.buf.as_mut_slice(), &io, scratch.as_mut_slice()).map_err(|e| format!("{what}: {e}"))?;
    let got = arena.part(yi);
    close(what, &from_blocked(got, cfg.n, cfg.oc, oh * ow), want, 1e-4)?;
    if !got.iter().all(|v| v.is_finite()) {
        return Err(format!("{what}: a padding lane is not finite"));
    }
    if !arena.gaps_intact() || !scratch.sentinels_intact() {
        return Err(format!("{what}: wrote outside its tensors"));
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn forward_matches_interpreter(cfg in conv_cfg(), e in epi_case(), seed in any::<u64>()) {
        check_forward(cfg, e, seed).map_err(TestCaseError::fail)?;
    }

    #[test]
    fn small_maps_match_interpreter(cfg in small_cfg(), e in epi_case(), seed in any::<u64>()) {
        check_forward(cfg, e, seed).map_err(TestCaseError::fail)?;
    }
}

/// Odd block counts (GoogLeNet's 208, 112 and 144 channels, scaled down): AVX-512 plans tile
/// two blocks at a time and the last block of each group alone, at every split.
#[test]
fn odd_block_counts_tile_the_last_block_alone() {
    let cfg = |n, ic, hw: [usize; 2], oc, k: usize, groups| ConvCfg {
        n,
        ic,
        ih: hw[0],
        iw: hw[1],
        oc,
        k: [k, k],
        stride: [1, 1],
        pad: [k / 2, k / 2],
        dilation: [1, 1],
        groups,
    };
    let cases = [
        cfg(2, 32, [9, 11], 48, 3, 1),
        cfg(1, 48, [7, 7], 80, 1, 1),
        cfg(1, 40, [5, 6], 40, 3, 1),
        cfg(2, 64, [6, 5], 96, 3, 2),
        cfg(1, 24, [4, 30], 208, 1, 1),
    ];
    for (i, c) in cases.into_iter().enumerate() {
        if let Some(cpu) = cpus().into_iter().find(|c| c.isa() == Isa::Avx512) {
            let plan = ConvPlan::new(shape_of(&c), Epilogue::NONE, cpu, 2).unwrap();
            assert_eq!(plan.tile().0, 2, "{c:?}: one block a tile");
        }
        for seed in [2 * i as u64, 2 * i as u64 + 1] {
            let e = EpiCase { bias: true, scale_shift: i == 1, residual: Residual::InPlace, act: Some(0) };
            check_forward(c, e, seed).unwrap();
            let e = EpiCase { bias: false, scale_shift: false, residual: Residual::None, act: None };
            check_forward(c, e, seed).unwrap();
        }
    }
}

/// The layers of the benchmarks, scaled down in width, with each epilogue piece.
#[test]
fn benchmark_shapes_match_interpreter() {
    let shapes = [
        (
            ConvCfg {
                n: 1,
                ic: 64,
                ih: 12,
                iw: 30,
                oc: 64,
                k: [3, 3],
                stride: [1, 1],
                pad: [1, 1],
                dilation: [1, 1],
                groups: 1,
            },
            1,
        ),
        (
            ConvCfg {
                n: 1,
                ic: 48,
                ih: 14,
                iw: 14,
                oc: 48,
                k: [1, 1],
                stride: [1, 1],
                pad: [0, 0],
                dilation: [1, 1],
                groups: 1,
            },
            2,
        ),
        (
            ConvCfg {
                n: 2,
                ic: 32,
                ih: 15,
                iw: 15,
                oc: 64,
                k: [3, 3],
                stride: [2, 2],
                pad: [1, 1],
                dilation: [1, 1],
                groups: 1,
            },
            3,
        ),
        (
            ConvCfg {
                n: 1,
                ic: 16,
                ih: 7,
                iw: 7,
                oc: 128,
                k: [3, 3],
                stride: [1, 1],
                pad: [1, 1],
                dilation: [1, 1],
                groups: 1,
            },
            4,
        ),
        // A stride-2 1x1 downsample whose weights make the plan put blocks outside rows.
        (
            ConvCfg {
                n: 1,
                ic: 512,
                ih: 9,
                iw: 9,
                oc: 256,
                k: [1, 1],
                stride: [2, 2],
                pad: [0, 0],
                dilation: [1, 1],
                groups: 1,
            },
            5,
        ),
        // Layer4-like: weights past L2, so tasks prefetch the next pair's weights (3x3 with
        // blocks outside rows, and a 1x1 whose pixels are one flat row).
        (
            ConvCfg {
                n: 1,
                ic: 128,
                ih: 6,
                iw: 5,
                oc: 128,
                k: [3, 3],
                stride: [1, 1],
                pad: [1, 1],
                dilation: [1, 1],
                groups: 1,
            },
            6,
        ),
        (
            ConvCfg {
                n: 1,
                ic: 512,
                ih: 3,
                iw: 5,
                oc: 256,
                k: [1, 1],
                stride: [1, 1],
                pad: [0, 0],
                dilation: [1, 1],
                groups: 1,
            },
            7,
        ),
        // One-row kernels with a row stride and no row padding: the band holds only the rows
        // they read.
        (
            ConvCfg {
                n: 2,
                ic: 40,
                ih: 11,
                iw: 10,
                oc: 48,
                k: [1, 1],
                stride: [3, 2],
                pad: [0, 0],
                dilation: [1, 1],
                groups: 1,
            },
            8,
        ),
        (
            ConvCfg {
                n: 1,
                ic: 20,
                ih: 9,
                iw: 9,
                oc: 32,
                k: [1, 3],
                stride: [2, 2],
                pad: [0, 1],
                dilation: [1, 2],
                groups: 1,
            },
            9,
        ),
    ];
    for (cfg, seed) in shapes {
        for act in [None, Some(0), Some(5)] {
            let e = EpiCase { bias: true, scale_shift: seed % 2 == 0, residual: Residual::InPlace, act };
            check_forward(cfg, e, seed).unwrap();
        }
    }
}
