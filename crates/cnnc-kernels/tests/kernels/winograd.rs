//! Winograd F(2x2, 3x3) and F(4x4, 3x3) forward convolution with the fused epilogue, against
//! the interpreter, and its weight transform from both weight layouts.

use super::conv::{EpiCase, Operands, Residual, activations, epi_case, run_blocked, shape_of, weight_shape};
use super::oracle::{self, ConvCfg, Post};
use super::util::{Rng, cpus, guarded, par, to_blocked};
use cnnc_kernels::act::Act;
use cnnc_kernels::conv::Epilogue;
use cnnc_kernels::pack::{self, Blocked};
use cnnc_kernels::winograd::{self, WinoPlan};
use proptest::prelude::*;

/// Random 3x3 stride-1 convolutions: sizes 1..40, channels not multiples of 16, padding 0..2,
/// batch 1..5, spatial size scaled down to stay under about two million multiply-adds.
fn wino_cfg() -> impl Strategy<Value = ConvCfg> {
    ((1usize..=5, 1usize..=40, 1usize..=40), (1usize..=40, 1usize..=40, 0usize..=2, 0usize..=2)).prop_map(
        |((n, ic, oc), (ih, iw, ph, pw))| {
            let mut cfg = ConvCfg {
                n,
                ic,
                ih: ih.max(3usize.saturating_sub(2 * ph)).max(1),
                iw: iw.max(3usize.saturating_sub(2 * pw)).max(1),
                oc,
                k: [3, 3],
                stride: [1, 1],
                pad: [ph, pw],
                dilation: [1, 1],
                groups: 1,
            };
            while cfg.n * cfg.ic * cfg.oc * cfg.ih * cfg.iw * 9 > 2_000_000 {
                if cfg.n > 1 {
                    cfg.n -= 1;
                } else if cfg.ih >= cfg.iw && cfg.ih > 3 {
                    cfg.ih -= 1;
                } else if cfg.iw > 3 {
                    cfg.iw -= 1;
                } else {
                    break;
                }
            }
            cfg
        },
    )
}

fn check_winograd(cfg: ConvCfg, e: EpiCase, seed: u64) -> Result<(), String> {
    let mut rng = Rng::new(seed);
    let [oh, ow] = cfg.out_hw();
    let (ihw, ohw) = (cfg.ih * cfg.iw, oh * ow);
    let x = rng.vec(cfg.n * cfg.ic * ihw);
    let w = rng.vec(cfg.oc * cfg.ic * 9);
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
    let shape = shape_of(&cfg);
    let ws = weight_shape(&cfg);
    let mut packed = vec![0.0; ws.blocked_len().unwrap()];
    pack::pack(&ws, Blocked::Forward, &w, &mut packed).unwrap();
    let (bias_g, scale_g, shift_g) = (guarded(&bias), guarded(&scale), guarded(&shift));
    let epilogue = Epilogue {
        bias: e.bias,
        scale_shift: e.scale_shift,
        residual: !matches!(e.residual, Residual::None),
        act: e.act.map_or(Act::NONE, |i| acts[i].0),
    };
    let xb = to_blocked(&x, cfg.n, cfg.ic, ihw, 3.5);
    let rb = to_blocked(&res, cfg.n, cfg.oc, ohw, -2.0);
    for (m, cpu) in [2, 4].into_iter().flat_map(|m| cpus().into_iter().map(move |c| (m, c))) {
        let len = winograd::weight_len(&shape, m).map_err(|e| e.to_string())?;
        let (mut u, mut u_plain) = (vec![0.0; len], vec![1.0; len]);
        winograd::transform_weights(&shape, m, &packed, &mut u).map_err(|e| e.to_string())?;
        winograd::transform_plain_weights(&shape, m, &w, &mut u_plain).map_err(|e| e.to_string())?;
        if u != u_plain {
            return Err(format!("{cfg:?}: the two weight transforms differ"));
        }
        let u = guarded(&u);
        let par = par(seed);
        let plan = WinoPlan::new(shape, m, epilogue, cpu, par.threads()).map_err(|e| e.to_string())?;
        // The chosen split, one tile row and one tile's blocks a task, and whole maps.
        let units = plan.with_split(1, plan.tile().0);
        let whole = plan.with_split(usize::MAX, usize::MAX);
        for plan in [plan, units, whole] {
            let what = format!(
                "F({m}x{m}) {:?} {cfg:?} {e:?} tile {:?} split {:?}",
                cpu.isa(),
                plan.tile(),
                plan.split_info()
            );
            let ops = Operands {
                xb: &xb,
                rb: &rb,
                weights: u.as_slice(),
                bias: bias_g.as_slice(),
                scale: scale_g.as_slice(),
                shift: shift_g.as_slice(),
            };
            run_blocked(&what, cfg, e, &ops, &want, plan.scratch_len(par.threads()), |arena, io, scratch| {
                winograd::forward(par, &plan, arena, io, scratch)
            })?;
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn winograd_matches_interpreter(cfg in wino_cfg(), e in epi_case(), seed in any::<u64>()) {
        check_winograd(cfg, e, seed).map_err(TestCaseError::fail)?;
    }
}

/// ResNet's 3x3 layers scaled down (64 channels on odd and even maps, 256 on 7x7), each
/// epilogue piece.
#[test]
fn resnet_shapes_match_interpreter() {
    let cfg = |n, c, hw: [usize; 2]| ConvCfg {
        n,
        ic: c,
        ih: hw[0],
        iw: hw[1],
        oc: c,
        k: [3, 3],
        stride: [1, 1],
        pad: [1, 1],
        dilation: [1, 1],
        groups: 1,
    };
    let cases = [cfg(1, 64, [14, 30]), cfg(2, 48, [9, 7]), cfg(1, 256, [7, 7])];
    for (i, c) in cases.into_iter().enumerate() {
        let e = EpiCase { bias: true, scale_shift: i == 1, residual: Residual::InPlace, act: Some(0) };
        check_winograd(c, e, i as u64).unwrap();
        let e = EpiCase { bias: false, scale_shift: false, residual: Residual::None, act: None };
        check_winograd(c, e, 10 + i as u64).unwrap();
    }
}

/// Shapes and tile sizes it cannot run are refused, by the plan and by the weight transform.
#[test]
fn refuses_what_is_not_a_3x3_stride_1_convolution() {
    let base = cfg_shape();
    let strided = cnnc_kernels::conv::ConvShape { stride: [2, 2], ..base };
    let grouped = cnnc_kernels::conv::ConvShape { groups: 2, ..base };
    let five = cnnc_kernels::conv::ConvShape { kh: 5, kw: 5, ..base };
    let dilated = cnnc_kernels::conv::ConvShape { dilation: [2, 2], ..base };
    let cpu = cnnc_kernels::simd::Cpu::PORTABLE;
    for s in [strided, grouped, five, dilated] {
        assert!(!winograd::applies(&s), "{s:?}");
        assert!(WinoPlan::new(s, 2, Epilogue::NONE, cpu, 2).is_err(), "{s:?}");
        assert!(winograd::transform_plain_weights(&s, 2, &[0.0; 9 * 32 * 32], &mut [0.0; 16 * 4 * 256]).is_err());
    }
    assert!(winograd::applies(&base));
    let mut dst = vec![0.0; winograd::weight_len(&base, 2).unwrap()];
    assert!(winograd::transform_plain_weights(&base, 2, &[0.0; 10], &mut dst).is_err(), "short weights");
    assert!(winograd::transform_plain_weights(&base, 4, &[0.0; 9 * 32 * 32], &mut dst).is_err(), "2x2 weights for 4x4");
    assert!(WinoPlan::new(base, 3, Epilogue::NONE, cpu, 2).is_err(), "3x3 output tiles");
    assert!(winograd::weight_len(&base, 6).is_err(), "6x6 output tiles");
}

fn cfg_shape() -> cnnc_kernels::conv::ConvShape {
    cnnc_kernels::conv::ConvShape::simple(1, 32, [8, 8], 32, 3, 1, 1)
}
