//! Batch norm (statistics, running update, apply, training and inference backward) and LRN
//! (forward, backward) against the interpreter, both layouts.

use super::oracle;
use super::util::{Arena, Rng, close, cpus, from_blocked, guarded, par, to_blocked};
use cnnc_ir::{BatchNorm, Lrn, Op};
use cnnc_kernels::bn;
use cnnc_kernels::lrn::{self, LrnPlan};
use cnnc_kernels::view::Layout;
use proptest::prelude::*;

fn layouts(blocked: bool) -> Layout {
    if blocked { Layout::NChw16c } else { Layout::Nchw }
}

fn check_bn(n: usize, c: usize, h: usize, w: usize, layout: Layout, in_place: bool, seed: u64) -> Result<(), String> {
    let mut rng = Rng::new(seed);
    let hw = h * w;
    let x: Vec<f32> = rng.vec(n * c * hw).iter().map(|v| 3.0 * v + 0.5).collect();
    let (gamma, beta, gy) = (rng.vec(c), rng.vec(c), rng.vec(n * c * hw));
    let rm = rng.vec(c);
    let rv: Vec<f32> = rng.vec(c).iter().map(|v| v.abs() + 0.5).collect();
    let (eps, momentum) = (1e-3f32, 0.1f32);
    let op = Op::BatchNorm(BatchNorm { eps: eps as f64, momentum: momentum as f64 });
    let params: [(&str, &[usize], &[f32]); 4] =
        [("weight", &[c], &gamma), ("bias", &[c], &beta), ("running_mean", &[c], &rm), ("running_var", &[c], &rv)];
    let dims = [c, h, w];
    let (y_train, dx_train, g_train) = oracle::unary(op.clone(), &dims, n, &x, &params, Some(&gy), true);
    let (y_inf, dx_inf, g_inf) = oracle::unary(op, &dims, n, &x, &params, Some(&gy), false);
    let blocked = layout == Layout::NChw16c;
    let conv = |v: &[f32]| if blocked { to_blocked(v, n, c, hw, 1.5) } else { v.to_vec() };
    let back = |v: &[f32]| if blocked { from_blocked(v, n, c, hw) } else { v.to_vec() };
    let (xb, gyb) = (conv(&x), conv(&gy));
    let par = par(seed);
    let what = format!("bn n {n} c {c} {h}x{w} {layout:?} in place {in_place}");
    // Training forward: statistics, running update, affine, apply.
    let mut arena = Arena::new(&[&xb, &vec![f32::NAN; xb.len()]]);
    let xv = arena.view(0, n, c, h, w, layout);
    let yv = if in_place { xv } else { arena.view(1, n, c, h, w, layout) };
    let (mut mean, mut var) = (vec![0.0; c], vec![0.0; c]);
    bn::stats(par, arena.buf.as_slice(), xv, &mut mean, &mut var).map_err(|e| e.to_string())?;
    let (mut nrm, mut nrv) = (rm.clone(), rv.clone());
    bn::update_running(&mut nrm, &mut nrv, &mean, &var, momentum, n * hw).map_err(|e| e.to_string())?;
    close(&format!("running mean {what}"), &nrm, &g_train["stats:op.running_mean"].data, 1e-4)?;
    close(&format!("running var {what}"), &nrv, &g_train["stats:op.running_var"].data, 1e-4)?;
    let (mut scale, mut shift) = (vec![0.0; c], vec![0.0; c]);
    bn::affine(&gamma, &beta, &mean, &var, eps, &mut scale, &mut shift).map_err(|e| e.to_string())?;
    bn::apply(par, arena.buf.as_mut_slice(), xv, yv, &scale, &shift).map_err(|e| e.to_string())?;
    close(&format!("train y {what}"), &back(arena.part(if in_place { 0 } else { 1 })), &y_train, 1e-4)?;
    // Inference forward.
    let mut arena = Arena::new(&[&xb, &vec![f32::NAN; xb.len()]]);
    let xv = arena.view(0, n, c, h, w, layout);
    let yv = arena.view(1, n, c, h, w, layout);
    bn::affine(&gamma, &beta, &rm, &rv, eps, &mut scale, &mut shift).map_err(|e| e.to_string())?;
    bn::apply(par, arena.buf.as_mut_slice(), xv, yv, &scale, &shift).map_err(|e| e.to_string())?;
    close(&format!("inference y {what}"), &back(arena.part(1)), &y_inf, 1e-4)?;
    // Backward, training and inference (dx over gy's memory when in place).
    for (train, dx_want, grads) in [(true, &dx_train, &g_train), (false, &dx_inf, &g_inf)] {
        let mut arena = Arena::new(&[&xb, &gyb, &vec![f32::NAN; xb.len()]]);
        let (xv, gv) = (arena.view(0, n, c, h, w, layout), arena.view(1, n, c, h, w, layout));
        let dv = if in_place { gv } else { arena.view(2, n, c, h, w, layout) };
        let (mut dg, mut db) = (guarded(&vec![0.0; c]), guarded(&vec![0.0; c]));
        let r = if train {
            bn::backward_training(
                par,
                arena.buf.as_mut_slice(),
                xv,
                gv,
                dv,
                &gamma,
                eps,
                dg.as_mut_slice(),
                db.as_mut_slice(),
            )
        } else {
            bn::backward_inference(
                par,
                arena.buf.as_mut_slice(),
                xv,
                gv,
                dv,
                &gamma,
                eps,
                (&rm, &rv),
                dg.as_mut_slice(),
                db.as_mut_slice(),
            )
        };
        r.map_err(|e| e.to_string())?;
        let w = format!("train {train} {what}");
        close(&format!("dx {w}"), &back(arena.part(if in_place { 1 } else { 2 })), dx_want.as_ref().unwrap(), 1e-3)?;
        close(&format!("dgamma {w}"), dg.as_slice(), &grads["op.weight"].data, 1e-3)?;
        close(&format!("dbeta {w}"), db.as_slice(), &grads["op.bias"].data, 1e-3)?;
        if !arena.gaps_intact() {
            return Err(format!("{w}: wrote outside its tensors"));
        }
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn check_lrn(n: usize, c: usize, h: usize, w: usize, size: usize, layout: Layout, seed: u64) -> Result<(), String> {
    let mut rng = Rng::new(seed);
    let hw = h * w;
    let (x, gy) = (rng.vec(n * c * hw), rng.vec(n * c * hw));
    let (alpha, beta, k) = (1e-2f32, 0.75f32, 2.0f32);
    let op = Op::Lrn(Lrn { size, alpha: alpha as f64, beta: beta as f64, k: k as f64, alpha_over_size: true });
    let (want, dx_want, _) = oracle::unary(op, &[c, h, w], n, &x, &[], Some(&gy), false);
    let blocked = layout == Layout::NChw16c;
    let conv = |v: &[f32]| if blocked { to_blocked(v, n, c, hw, -0.5) } else { v.to_vec() };
    let back = |v: &[f32]| if blocked { from_blocked(v, n, c, hw) } else { v.to_vec() };
    for cpu in cpus() {
        let par = par(seed);
        let what = format!("{:?} lrn n {n} c {c} {h}x{w} size {size} {layout:?}", cpu.isa());
        let plan =
            LrnPlan::new(n, c, [h, w], layout, size, alpha, beta, k, cpu, par.threads()).map_err(|e| e.to_string())?;
        let (xb, gyb) = (conv(&x), conv(&gy));
        let nan = vec![f32::NAN; xb.len()];
        let mut arena = Arena::new(&[&xb, &gyb, &nan, &nan]);
        let v = |i| arena.view(i, n, c, h, w, layout);
        let (xv, gv, yv, dv) = (v(0), v(1), v(2), v(3));
        let mut scratch = guarded(&vec![0.0; plan.scratch_len(par.threads())]);
        lrn::forward(par, &plan, arena.buf.as_mut_slice(), xv, yv, scratch.as_mut_slice())
            .map_err(|e| e.to_string())?;
        close(&what, &back(arena.part(2)), &want, 1e-4)?;
        lrn::backward(par, &plan, arena.buf.as_mut_slice(), xv, gv, dv, scratch.as_mut_slice())
            .map_err(|e| e.to_string())?;
        close(&format!("dx {what}"), &back(arena.part(3)), dx_want.as_ref().unwrap(), 1e-3)?;
        if !arena.gaps_intact() || !scratch.sentinels_intact() {
            return Err(format!("{what}: wrote outside its tensors"));
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn batch_norm_matches_interpreter(n in 1usize..=5, c in 1usize..=40, h in 1usize..=12, w in 1usize..=12, blocked in any::<bool>(), in_place in any::<bool>(), seed in any::<u64>()) {
        prop_assume!(n * h * w >= 2);
        check_bn(n, c, h, w, layouts(blocked), in_place, seed).map_err(TestCaseError::fail)?;
    }

    #[test]
    fn lrn_matches_interpreter(n in 1usize..=3, c in 1usize..=40, h in 1usize..=8, w in 1usize..=8, size in 1usize..=7, blocked in any::<bool>(), seed in any::<u64>()) {
        check_lrn(n, c, h, w, size, layouts(blocked), seed).map_err(TestCaseError::fail)?;
    }
}

#[test]
fn batch_norm_of_vectors_and_googlenet_lrn() {
    check_bn(8, 10, 1, 1, Layout::Nchw, false, 1).unwrap();
    check_lrn(1, 64, 5, 5, 5, Layout::NChw16c, 2).unwrap();
}

/// Windows wider than a channel block (the blocked path's zero pads span two vectors) and
/// planes of several 16-pixel vectors with a partial last one, on both layouts.
#[test]
fn lrn_wide_windows_and_long_planes() {
    for layout in [Layout::Nchw, Layout::NChw16c] {
        check_lrn(2, 40, 3, 5, 33, layout, 3).unwrap();
        check_lrn(1, 17, 1, 1, 40, layout, 4).unwrap();
        check_lrn(2, 9, 7, 9, 4, layout, 5).unwrap();
        check_lrn(1, 3, 16, 16, 2, layout, 6).unwrap();
    }
}
