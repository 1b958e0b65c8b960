//! The 2x2/2 max pooling between a plain map and blocked neighbours (`pool2x2`): forward
//! (blocked value, plain argmax) and backward (plain gradient with the ReLU mask, bias sums)
//! against the interpreter and the general pooling kernel's argmax, on every instruction set:
//! odd map sizes, channels not a multiple of 16, rows longer than one vector, many ties.

use super::oracle;
use super::util::{Arena, Rng, close, cpus, from_blocked, par, to_blocked};
use cnnc_ir::{Op, PoolKind as IrKind, Window};
use cnnc_kernels::pool::{self, PoolKind, PoolPlan, PoolWindow};
use cnnc_kernels::pool2x2::{self, Max2BwdIo, Max2FwdIo, Max2Plan};
use cnnc_kernels::view::Layout;
use proptest::prelude::*;

/// Checks one shape; `levels` > 0 rounds the data to that many steps per unit (ties).
fn check(n: usize, c: usize, h: usize, w: usize, levels: f32, seed: u64) -> Result<(), String> {
    let mut rng = Rng::new(seed);
    let round = |v: f32| if levels > 0.0 { (v * levels).round() / levels } else { v };
    let x: Vec<f32> = rng.vec(n * c * h * w).into_iter().map(round).collect();
    let (oh, ow) = (h / 2, w / 2);
    let gy = rng.vec(n * c * oh * ow);
    let window = Window { kernel: [2, 2], stride: [2, 2], pad: [0, 0], dilation: [1, 1], ceil_mode: false };
    let op = Op::Pool { kind: IrKind::Max, window };
    let (want, dx_pool, _) = oracle::unary(op, &[c, h, w], n, &x, &[], Some(&gy), false);
    let unmasked = dx_pool.unwrap();
    // The ReLU backward with x as the saved map, and the bias sums over images and pixels.
    let dx_want: Vec<f32> = unmasked.iter().zip(&x).map(|(g, m)| g * if *m > 0.0 { 1.0 } else { 0.0 }).collect();
    let sums: Vec<f32> =
        (0..c).map(|ch| (0..n).map(|b| dx_want[(b * c + ch) * h * w..][..h * w].iter().sum::<f32>()).sum()).collect();
    let gyb = to_blocked(&gy, n, c, oh * ow, 0.5);
    for cpu in cpus() {
        let what = format!("{:?} n {n} c {c} {h}x{w} levels {levels}", cpu.isa());
        let par = par(seed);
        // The general kernel's argmax: the one the fused pass must reproduce.
        let general =
            PoolPlan::new(n, c, [h, w], PoolKind::Max, PoolWindow::sliding(2, 2, 0, false), Layout::Nchw, cpu)
                .map_err(|e| e.to_string())?;
        let out = vec![f32::NAN; n * c * oh * ow];
        let mut ga = Arena::new(&[&x, &out, &out]);
        let gv = |a: &Arena, i, hw: [usize; 2]| a.view(i, n, c, hw[0], hw[1], Layout::Nchw);
        let (xv, yv, mv) = (gv(&ga, 0, [h, w]), gv(&ga, 1, [oh, ow]), gv(&ga, 2, [oh, ow]));
        pool::forward(par, &general, ga.buf.as_mut_slice(), xv, yv, Some(mv)).map_err(|e| e.to_string())?;
        let argmax_want = ga.part(2).to_vec();

        let plan = Max2Plan::new(n, c, [h, w], cpu).map_err(|e| e.to_string())?;
        let yb = vec![f32::NAN; gyb.len()];
        let dx0 = vec![f32::NAN; x.len()];
        let mut arena = Arena::new(&[&x, &yb, &out, &gyb, &dx0]);
        let xv = arena.view(0, n, c, h, w, Layout::Nchw);
        let yv = arena.view(1, n, c, oh, ow, Layout::NChw16c);
        let mv = arena.view(2, n, c, oh, ow, Layout::Nchw);
        let gv = arena.view(3, n, c, oh, ow, Layout::NChw16c);
        let dv = arena.view(4, n, c, h, w, Layout::Nchw);
        pool2x2::forward(par, &plan, arena.buf.as_mut_slice(), &Max2FwdIo { x: xv, y: yv, argmax: mv })
            .map_err(|e| e.to_string())?;
        let y = arena.part(1);
        close(&format!("y {what}"), &from_blocked(y, n, c, oh * ow), &want, 0.0)?;
        let cb = c.div_ceil(16);
        for b in 0..n {
            for p in 0..oh * ow {
                for ch in c..cb * 16 {
                    if y[((b * cb + ch / 16) * oh * ow + p) * 16 + ch % 16] != 0.0 {
                        return Err(format!("{what}: a padding lane is not zero"));
                    }
                }
            }
        }
        if arena.part(2) != argmax_want.as_slice() {
            return Err(format!("{what}: argmax differs from the general kernel's"));
        }
        let mut bias = vec![f32::NAN; c];
        let io = Max2BwdIo { gy: gv, argmax: mv, mask: Some(xv), dx: dv };
        pool2x2::backward(par, &plan, arena.buf.as_mut_slice(), &io, Some(&mut bias)).map_err(|e| e.to_string())?;
        close(&format!("dx {what}"), arena.part(4), &dx_want, 0.0)?;
        close(&format!("bias {what}"), &bias, &sums, 1e-4)?;
        // Without the mask: the plain pooling gradient.
        let io = Max2BwdIo { mask: None, ..io };
        pool2x2::backward(par, &plan, arena.buf.as_mut_slice(), &io, None).map_err(|e| e.to_string())?;
        close(&format!("unmasked dx {what}"), arena.part(4), &unmasked, 0.0)?;
        // In place over the mask (the training graph's ReLU backward over the saved map).
        let mut bias = vec![f32::NAN; c];
        let io = Max2BwdIo { mask: Some(xv), dx: xv, ..io };
        pool2x2::backward(par, &plan, arena.buf.as_mut_slice(), &io, Some(&mut bias)).map_err(|e| e.to_string())?;
        close(&format!("in-place dx {what}"), arena.part(0), &dx_want, 0.0)?;
        close(&format!("in-place bias {what}"), &bias, &sums, 1e-4)?;
        if !arena.gaps_intact() {
            return Err(format!("{what}: wrote outside its tensors"));
        }
    }
    Ok(())
}

#[test]
fn cifar_sizes_odd_sizes_and_partial_blocks() {
    for (n, c, h, w) in [(2, 32, 32, 32), (1, 20, 7, 9), (3, 5, 2, 2), (1, 17, 5, 35), (2, 16, 3, 18)] {
        check(n, c, h, w, 0.0, (n * 1000 + c * 10 + h + w) as u64).unwrap();
    }
}

#[test]
fn ties_go_to_the_first_maximum() {
    // Two levels per unit: most windows hold equal values (and many zeros, where ReLU's
    // derivative is 0).
    check(2, 24, 12, 14, 2.0, 7).unwrap();
    check(1, 16, 6, 40, 1.0, 8).unwrap();
}

#[test]
fn bad_views_are_errors() {
    let plan = Max2Plan::new(1, 16, [4, 4], cpus()[0]).unwrap();
    let mut arena = vec![0.0f32; 1024];
    let io = Max2FwdIo {
        x: cnnc_kernels::view::View::dense(0, 1, 16, 4, 4, Layout::Nchw),
        y: cnnc_kernels::view::View::dense(100, 1, 16, 2, 2, Layout::NChw16c),
        argmax: cnnc_kernels::view::View::dense(400, 1, 16, 2, 2, Layout::Nchw),
    };
    let e = pool2x2::forward(&cnnc_kernels::par::Serial, &plan, &mut arena, &io).unwrap_err();
    assert!(e.to_string().contains("overlap"), "{e}");
    assert!(Max2Plan::new(1, 16, [1, 4], cpus()[0]).is_err());
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn matches_the_interpreter(n in 1usize..=2, c in 1usize..=36, h in 2usize..=13, w in 2usize..=41, ties in any::<bool>(), seed in any::<u64>()) {
        check(n, c, h, w, if ties { 2.0 } else { 0.0 }, seed).map_err(TestCaseError::fail)?;
    }
}
