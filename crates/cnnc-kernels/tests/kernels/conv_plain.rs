//! Plain-input convolutions (the stem, first layers) against the interpreter: forward in both
//! output layouts with the epilogue, and the weight gradient on plain maps.

use super::conv::{EpiCase, Residual, activations, epi_case, shape_of};
use super::oracle::{self, ConvCfg, Post};
use super::util::{Arena, Rng, close, cpus, from_blocked, guarded, par, to_blocked};
use cnnc_kernels::act::Act;
use cnnc_kernels::conv::{ConvIo, Epilogue};
use cnnc_kernels::conv_plain::{self, PlainConvPlan};
use cnnc_kernels::conv_plain_bwd::{self, PlainBwdWeightsIo, PlainBwdWeightsPlan};
use cnnc_kernels::pack::{self, WeightShape};
use cnnc_kernels::view::Layout;
use proptest::prelude::*;

fn check_plain(cfg: ConvCfg, e: EpiCase, out: Layout, seed: u64) -> Result<(), String> {
    let mut rng = Rng::new(seed);
    let [oh, ow] = cfg.out_hw();
    let ohw = oh * ow;
    let x = rng.vec(cfg.n * cfg.ic * cfg.ih * cfg.iw);
    let w = rng.vec(cfg.oc * cfg.ic * cfg.k[0] * cfg.k[1]);
    let (bias, scale, shift) = (rng.vec(cfg.oc), rng.vec(cfg.oc), rng.vec(cfg.oc));
    let res = rng.vec(cfg.n * cfg.oc * ohw);
    let acts = activations();
    let post = Post {
        scale_shift: e.scale_shift.then_some((&scale[..], &shift[..])),
        residual: (!matches!(e.residual, Residual::None)).then_some(&res[..]),
        act: e.act.map(|i| acts[i].1),
    };
    let want = oracle::conv_forward(&cfg, &x, &w, e.bias.then_some(&bias[..]), &post);
    let ws = WeightShape { o: cfg.oc, i: cfg.ic, kh: cfg.k[0], kw: cfg.k[1], groups: 1 };
    let mut packed = vec![0.0; pack::plain_input_len(&ws).unwrap()];
    pack::pack_plain_input(&ws, &w, &mut packed).unwrap();
    let mut back = vec![0.0; w.len()];
    pack::unpack_plain_input(&ws, &packed, &mut back).unwrap();
    assert_eq!(back, w);
    let packed = guarded(&packed);
    let (bias_g, scale_g, shift_g) = (guarded(&bias), guarded(&scale), guarded(&shift));
    let epilogue = Epilogue {
        bias: e.bias,
        scale_shift: e.scale_shift,
        residual: !matches!(e.residual, Residual::None),
        act: e.act.map_or(Act::NONE, |i| acts[i].0),
    };
    let blocked = out == Layout::NChw16c;
    let rb = if blocked { to_blocked(&res, cfg.n, cfg.oc, ohw, 0.5) } else { res.clone() };
    for cpu in cpus() {
        let par = par(seed);
        let plan = PlainConvPlan::new(shape_of(&cfg), epilogue, out, cpu, par.threads()).map_err(|e| e.to_string())?;
        let y0 = if matches!(e.residual, Residual::InPlace) { rb.clone() } else { vec![7.0; rb.len()] };
        let mut arena = match e.residual {
            Residual::Apart => Arena::new(&[&x, &rb, &y0]),
            _ => Arena::new(&[&x, &y0]),
        };
        let yi = arena.offsets.len() - 1;
        let yv = arena.view(yi, cfg.n, cfg.oc, oh, ow, out);
        let io = ConvIo {
            x: arena.view(0, cfg.n, cfg.ic, cfg.ih, cfg.iw, Layout::Nchw),
            y: yv,
            residual: match e.residual {
                Residual::None => None,
                Residual::Apart => Some(arena.view(1, cfg.n, cfg.oc, oh, ow, out)),
                Residual::InPlace => Some(yv),
            },
            weights: packed.as_slice(),
            bias: e.bias.then_some(bias_g.as_slice()),
            scale: e.scale_shift.then_some(scale_g.as_slice()),
            shift: e.scale_shift.then_some(shift_g.as_slice()),
        };
        let mut scratch = guarded(&vec![0.0; plan.scratch_len(par.threads())]);
        conv_plain::forward(par, &plan, arena.buf.as_mut_slice(), &io, scratch.as_mut_slice())
            .map_err(|e| e.to_string())?;
        let got = arena.part(yi);
        let got = if blocked { from_blocked(got, cfg.n, cfg.oc, ohw) } else { got.to_vec() };
        let what = format!("{:?} {cfg:?} {e:?} {out:?} tile {:?}", cpu.isa(), plan.tile());
        close(&what, &got, &want, 1e-4)?;
        if !arena.gaps_intact() || !scratch.sentinels_intact() {
            return Err(format!("{what}: wrote outside its tensors"));
        }
    }
    Ok(())
}

fn plain_cfg() -> impl Strategy<Value = ConvCfg> {
    super::conv::conv_cfg().prop_map(|mut c| {
        c.groups = 1;
        c.ic = c.ic.min(8);
        c
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 40, ..ProptestConfig::default() })]

    #[test]
    fn plain_input_matches_interpreter(cfg in plain_cfg(), e in epi_case(), blocked in any::<bool>(), seed in any::<u64>()) {
        let out = if blocked { Layout::NChw16c } else { Layout::Nchw };
        check_plain(cfg, e, out, seed).map_err(TestCaseError::fail)?;
    }
}

#[test]
fn stem_7x7_stride_2() {
    let cfg = ConvCfg {
        n: 1,
        ic: 3,
        ih: 37,
        iw: 40,
        oc: 64,
        k: [7, 7],
        stride: [2, 2],
        pad: [3, 3],
        dilation: [1, 1],
        groups: 1,
    };
    let e = EpiCase { bias: true, scale_shift: false, residual: Residual::None, act: Some(0) };
    check_plain(cfg, e, Layout::NChw16c, 1).unwrap();
    check_plain(cfg, e, Layout::Nchw, 2).unwrap();
}

/// The plain-map weight gradient against the interpreter's, on every instruction set.
fn check_plain_weights(cfg: ConvCfg, seed: u64) -> Result<(), String> {
    let mut rng = Rng::new(seed);
    let [oh, ow] = cfg.out_hw();
    let x = rng.vec(cfg.n * cfg.ic * cfg.ih * cfg.iw);
    let w = rng.vec(cfg.oc * cfg.ic * cfg.k[0] * cfg.k[1]);
    let gy = rng.vec(cfg.n * cfg.oc * oh * ow);
    let (_, want, _) = oracle::conv_backward(&cfg, &x, &w, &gy);
    let arena = Arena::new(&[&x, &gy]);
    for cpu in cpus() {
        let par = par(seed);
        let plan = PlainBwdWeightsPlan::new(shape_of(&cfg), cpu, par.threads()).map_err(|e| e.to_string())?;
        let mut gw = guarded(&vec![7.0; w.len()]);
        let mut scratch = guarded(&vec![f32::NAN; plan.scratch_len(par.threads())]);
        let io = PlainBwdWeightsIo {
            x: arena.view(0, cfg.n, cfg.ic, cfg.ih, cfg.iw, Layout::Nchw),
            gy: arena.view(1, cfg.n, cfg.oc, oh, ow, Layout::Nchw),
            gw: gw.as_mut_slice(),
        };
        conv_plain_bwd::backward_weights(par, &plan, arena.buf.as_slice(), io, scratch.as_mut_slice())
            .map_err(|e| e.to_string())?;
        let what = format!("{:?} {cfg:?} weight gradient", cpu.isa());
        close(&what, gw.as_slice(), &want, 1e-3)?;
        if !gw.sentinels_intact() || !scratch.sentinels_intact() {
            return Err(format!("{what}: wrote outside its tensors"));
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 40, ..ProptestConfig::default() })]

    #[test]
    fn plain_weight_gradient_matches_interpreter(cfg in plain_cfg(), seed in any::<u64>()) {
        check_plain_weights(cfg, seed).map_err(TestCaseError::fail)?;
    }
}

#[test]
fn plain_weight_gradient_of_the_first_layers() {
    let cfg = |n, ic, hw: usize, oc, k: usize, s: usize, p: usize| ConvCfg {
        n,
        ic,
        ih: hw,
        iw: hw,
        oc,
        k: [k, k],
        stride: [s, s],
        pad: [p, p],
        dilation: [1, 1],
        groups: 1,
    };
    // The CIFAR net's first layer, LeNet-5's first two, the stem at a small size.
    check_plain_weights(cfg(3, 3, 32, 32, 3, 1, 1), 1).unwrap();
    check_plain_weights(cfg(2, 1, 32, 6, 5, 1, 0), 2).unwrap();
    check_plain_weights(cfg(2, 6, 14, 16, 5, 1, 0), 3).unwrap();
    check_plain_weights(cfg(1, 3, 37, 64, 7, 2, 3), 4).unwrap();
}

#[test]
fn plain_output_first_layers() {
    let cfg = |ic, hw: usize, oc, k: usize, p: usize| ConvCfg {
        n: 2,
        ic,
        ih: hw,
        iw: hw,
        oc,
        k: [k, k],
        stride: [1, 1],
        pad: [p, p],
        dilation: [1, 1],
        groups: 1,
    };
    // LeNet-5's c1 and c3 (tanh, computed after the stores), the CIFAR net's c1 (ReLU in
    // registers, a residual read in place).
    let tanh = EpiCase { bias: true, scale_shift: false, residual: Residual::None, act: Some(5) };
    let relu = EpiCase { bias: true, scale_shift: true, residual: Residual::InPlace, act: Some(0) };
    check_plain(cfg(1, 32, 6, 5, 0), tanh, Layout::Nchw, 1).unwrap();
    check_plain(cfg(6, 14, 16, 5, 0), tanh, Layout::Nchw, 2).unwrap();
    check_plain(cfg(3, 32, 32, 3, 1), relu, Layout::Nchw, 3).unwrap();
}
