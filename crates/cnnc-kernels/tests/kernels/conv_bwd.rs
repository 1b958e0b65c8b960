//! Convolution backward-data (with the ReLU-mask prologue and accumulation) and
//! backward-weights (with the bias gradient) against the interpreter's backward pass.

use super::conv::{conv_cfg, shape_of, small_cfg, weight_shape};
use super::oracle::{self, ConvCfg};
use super::util::{Arena, Rng, close, cpus, from_blocked, guarded, par, pool, to_blocked};
use cnnc_kernels::conv_bwd_data::{self, BwdDataIo, BwdDataOptions, BwdDataPlan};
use cnnc_kernels::conv_bwd_weights::{self, BwdWeightsIo, BwdWeightsPlan};
use cnnc_kernels::ffi;
use cnnc_kernels::pack::{self, Blocked};
use cnnc_kernels::view::Layout;
use proptest::prelude::*;

fn check_backward(cfg: ConvCfg, relu_mask: bool, accumulate: bool, seed: u64) -> Result<(), String> {
    let mut rng = Rng::new(seed);
    let [oh, ow] = cfg.out_hw();
    let (ihw, ohw) = (cfg.ih * cfg.iw, oh * ow);
    let x = rng.vec(cfg.n * cfg.ic * ihw);
    let w = rng.vec(cfg.oc * cfg.ic / cfg.groups * cfg.k[0] * cfg.k[1]);
    let gy = rng.vec(cfg.n * cfg.oc * ohw);
    let y = rng.vec(gy.len());
    let masked: Vec<f32> =
        if relu_mask { gy.iter().zip(&y).map(|(g, y)| if *y > 0.0 { *g } else { 0.0 }).collect() } else { gy.clone() };
    let (mut dx_want, mut dw_want, mut db_want) = oracle::conv_backward(&cfg, &x, &w, &masked);
    let dx0 = rng.vec(dx_want.len());
    let dw0 = rng.vec(dw_want.len());
    let db0 = rng.vec(db_want.len());
    if accumulate {
        dx_want.iter_mut().zip(&dx0).for_each(|(a, b)| *a += b);
        dw_want.iter_mut().zip(&dw0).for_each(|(a, b)| *a += b);
        db_want.iter_mut().zip(&db0).for_each(|(a, b)| *a += b);
    }
    let ws = weight_shape(&cfg);
    let mut wf = vec![0.0; ws.blocked_len().unwrap()];
    pack::pack(&ws, Blocked::Forward, &w, &mut wf).unwrap();
    let mut dw_packed_want = vec![0.0; wf.len()];
    pack::pack(&ws, Blocked::Forward, &dw_want, &mut dw_packed_want).unwrap();
    let mut dw_init = vec![0.0; dw_packed_want.len()];
    pack::pack(&ws, Blocked::Forward, &dw0, &mut dw_init).unwrap();
    let gyb = to_blocked(&gy, cfg.n, cfg.oc, ohw, 1.25);
    let yb = to_blocked(&y, cfg.n, cfg.oc, ohw, -0.5);
    let xb = to_blocked(&x, cfg.n, cfg.ic, ihw, 0.75);
    let dxb0 = if accumulate { to_blocked(&dx0, cfg.n, cfg.ic, ihw, 0.0) } else { vec![f32::NAN; xb.len()] };
    let options = BwdDataOptions { relu_mask, accumulate };
    for cpu in cpus() {
        let par = par(seed);
        let what = format!("{:?} {cfg:?} mask {relu_mask} accumulate {accumulate}", cpu.isa());
        // Backward data.
        let first = BwdDataPlan::new(shape_of(&cfg), options, cpu, par.threads()).map_err(|e| e.to_string())?;
        // And tiles over images (what small maps at batch > 1 get, stride 1), on any shape.
        for plan in [first, first.with_span(par.threads())] {
            // The weights as a training step makes them: rewritten from the forward form, only the
            // taps the plan reads, over NaN, so that reading any other tap shows in dx.
            let mut wb = guarded(&vec![f32::NAN; wf.len()]);
            // SAFETY: the plan came from BwdDataPlan::new for these weights; both buffers hold the
            // packed length and are apart; the pool is live.
            unsafe { ffi::cnnc_conv_backward_data_weights(&plan, wf.as_ptr(), wb.as_mut_slice().as_mut_ptr(), pool()) };
            let mut arena = Arena::new(&[&gyb, &yb, &dxb0]);
            let io = BwdDataIo {
                gy: arena.view(0, cfg.n, cfg.oc, oh, ow, Layout::NChw16c),
                y: relu_mask.then(|| arena.view(1, cfg.n, cfg.oc, oh, ow, Layout::NChw16c)),
                dx: arena.view(2, cfg.n, cfg.ic, cfg.ih, cfg.iw, Layout::NChw16c),
                weights: wb.as_slice(),
            };
            let mut scratch = guarded(&vec![0.0; plan.scratch_len(par.threads())]);
            conv_bwd_data::backward_data(par, &plan, arena.buf.as_mut_slice(), &io, scratch.as_mut_slice())
                .map_err(|e| e.to_string())?;
            let dx = arena.part(2);
            close(&format!("dx {what} tile {:?}", plan.tile()), &from_blocked(dx, cfg.n, cfg.ic, ihw), &dx_want, 1e-3)?;
            if !dx.iter().all(|v| v.is_finite()) {
                return Err(format!("dx {what}: a padding lane is not finite"));
            }
            if !arena.gaps_intact() || !scratch.sentinels_intact() {
                return Err(format!("dx {what}: wrote outside its tensors"));
            }
        }
        // Backward weights: with the mask, the run writes the split gradient gy * (y > 0) (in
        // place over gy when accumulating, apart otherwise) and reduces it.
        let plan = BwdWeightsPlan::new(shape_of(&cfg), true, accumulate, cpu).map_err(|e| e.to_string())?;
        let gin = if relu_mask { &gy } else { &masked };
        let gmb = to_blocked(gin, cfg.n, cfg.oc, ohw, -1.5);
        let mut arena = Arena::new(&[&xb, &gmb, &yb, &vec![f32::NAN; gmb.len()]]);
        let gv = arena.view(1, cfg.n, cfg.oc, oh, ow, Layout::NChw16c);
        let split = if accumulate { gv } else { arena.view(3, cfg.n, cfg.oc, oh, ow, Layout::NChw16c) };
        let io = BwdWeightsIo {
            x: arena.view(0, cfg.n, cfg.ic, cfg.ih, cfg.iw, Layout::NChw16c),
            gy: gv,
            relu: relu_mask.then(|| (arena.view(2, cfg.n, cfg.oc, oh, ow, Layout::NChw16c), split)),
        };
        let mut dw = guarded(if accumulate { &dw_init } else { &dw_packed_want });
        if !accumulate {
            dw.as_mut_slice().fill(f32::NAN);
        }
        let mut db = guarded(if accumulate { &db0 } else { &db_want });
        conv_bwd_weights::backward_weights(
            par,
            &plan,
            arena.buf.as_mut_slice(),
            &io,
            dw.as_mut_slice(),
            Some(db.as_mut_slice()),
        )
        .map_err(|e| e.to_string())?;
        if relu_mask {
            let at = if accumulate { 1 } else { 3 };
            close(&format!("split gradient {what}"), &from_blocked(arena.part(at), cfg.n, cfg.oc, ohw), &masked, 0.0)?;
        }
        if !arena.gaps_intact() {
            return Err(format!("dw {what}: wrote outside its tensors"));
        }
        close(
            &format!("dw (packed, padding included) {what} tile {:?}", plan.tile()),
            dw.as_slice(),
            &dw_packed_want,
            1e-3,
        )?;
        close(&format!("db {what}"), db.as_slice(), &db_want, 1e-3)?;
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 40, ..ProptestConfig::default() })]

    #[test]
    fn backward_matches_interpreter(cfg in conv_cfg(), mask in any::<bool>(), acc in any::<bool>(), seed in any::<u64>()) {
        check_backward(cfg, mask, acc, seed).map_err(TestCaseError::fail)?;
    }

    #[test]
    fn small_maps_backward_matches_interpreter(cfg in small_cfg(), mask in any::<bool>(), acc in any::<bool>(), seed in any::<u64>()) {
        check_backward(cfg, mask, acc, seed).map_err(TestCaseError::fail)?;
    }
}

#[test]
fn backward_of_strided_and_benchmark_shapes() {
    let c = |ic, hw, oc, k, s, p| ConvCfg {
        n: 1,
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
    for (cfg, seed) in [
        (c(64, 14, 64, 3, 1, 1), 1),
        (c(32, 15, 48, 3, 2, 1), 2),
        (c(64, 14, 32, 1, 2, 0), 3),
        (c(3, 23, 16, 7, 2, 3), 4),
    ] {
        check_backward(cfg, seed % 2 == 0, false, seed).unwrap();
    }
}

/// Maps smaller than the kernel's reach (ResNet-18's layer4 at 32x32 inputs): on a 1x1 map
/// with padding 1 only the centre of a 3x3 kernel meets the map, on 2x2 each pixel meets four
/// taps; the pass must skip the rest (their rewritten weights are NaN) over a batch.
#[test]
fn backward_of_maps_smaller_than_the_kernel() {
    let c = |ic, hw: [usize; 2], oc, s, p| ConvCfg {
        n: 3,
        ic,
        ih: hw[0],
        iw: hw[1],
        oc,
        k: [3, 3],
        stride: [s, s],
        pad: [p, p],
        dilation: [1, 1],
        groups: 1,
    };
    for (cfg, seed) in [
        (c(48, [1, 1], 40, 1, 1), 1),
        (c(32, [2, 2], 64, 1, 1), 2),
        (c(40, [1, 2], 32, 1, 1), 3),
        (c(32, [2, 2], 32, 2, 1), 4),
        (c(16, [1, 1], 16, 1, 2), 5),
    ] {
        for (mask, acc) in [(false, false), (true, true)] {
            check_backward(cfg, mask, acc, seed).unwrap();
        }
    }
}

/// Layers with a one-pixel output (ResNet-18's layer4 at 32x32 inputs, LeNet-5's C5): the
/// backward-data pass as a product with images as tile columns, over batches wider than a
/// tile, padded channels, strides (a pixel no tap reaches gets zero), dilation, the mask and
/// accumulation.
#[test]
fn backward_data_of_one_pixel_outputs() {
    let c = |n, ic, hw, oc, k, s, p, d| ConvCfg {
        n,
        ic,
        ih: hw,
        iw: hw,
        oc,
        k: [k, k],
        stride: [s, s],
        pad: [p, p],
        dilation: [d, d],
        groups: 1,
    };
    for (cfg, seed) in [
        (c(20, 64, 1, 48, 3, 1, 1, 1), 1),
        (c(37, 16, 5, 120, 5, 1, 0, 1), 2),
        (c(17, 40, 2, 64, 3, 2, 1, 1), 3),
        (c(19, 32, 2, 32, 1, 2, 0, 1), 4),
        (c(5, 24, 3, 20, 2, 1, 0, 2), 5),
    ] {
        assert_eq!(cfg.out_hw(), [1, 1], "{cfg:?}");
        for (mask, acc) in [(false, false), (true, false), (false, true)] {
            check_backward(cfg, mask, acc, seed).unwrap();
        }
    }
}
