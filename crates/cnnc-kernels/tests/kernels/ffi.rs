//! The C-ABI entry points the JIT calls give exactly what the safe functions give.

use super::util::{Rng, cpus, guarded, pool};
use cnnc_kernels::act::Act;
use cnnc_kernels::conv::{self, ConvArgs, ConvIo, ConvPlan, ConvShape, Epilogue};
use cnnc_kernels::conv_fwd;
use cnnc_kernels::ffi;
use cnnc_kernels::par::Parallel;
use cnnc_kernels::view::{Layout, View};
use std::sync::atomic::{AtomicUsize, Ordering};

#[test]
fn conv_through_the_c_abi_equals_the_safe_call() {
    let shape = ConvShape::simple(2, 20, [9, 11], 40, 3, 2, 1);
    for cpu in cpus() {
        let plan = ConvPlan::new(
            shape,
            Epilogue { bias: true, scale_shift: false, residual: true, act: Act::RELU },
            cpu,
            pool().threads(),
        )
        .unwrap();
        let [oh, ow] = plan.out_hw();
        let x = View::dense(0, 2, 20, 9, 11, Layout::NChw16c);
        let y = View::dense(x.end().unwrap(), 2, 40, oh, ow, Layout::NChw16c);
        let mut rng = Rng::new(5);
        let mut arena = rng.vec(y.end().unwrap());
        let w = rng.vec(conv::packed_weight_len(&shape).unwrap());
        let b = rng.vec(40);
        let mut arena2 = arena.clone();
        let mut scratch = vec![0.0; plan.scratch_len(pool().threads())];
        let io = ConvIo { x, y, residual: Some(y), weights: &w, bias: Some(&b), scale: None, shift: None };
        conv_fwd::forward(pool(), &plan, &mut arena, &io, &mut scratch).unwrap();
        let base = arena2.as_mut_ptr();
        let args = ConvArgs {
            x: base.wrapping_add(x.offset),
            x_bs: x.batch_stride,
            w: w.as_ptr(),
            bias: b.as_ptr(),
            scale: std::ptr::null(),
            shift: std::ptr::null(),
            res: base.wrapping_add(y.offset),
            res_bs: y.batch_stride,
            y: base.wrapping_add(y.offset),
            y_bs: y.batch_stride,
        };
        // SAFETY: the plan came from ConvPlan::new; the pointers address the views checked by
        // the safe call above on a twin arena; the scratch has the plan's length.
        unsafe { ffi::cnnc_conv_forward(&plan, &args, scratch.as_mut_ptr(), pool()) };
        assert_eq!(arena, arena2, "{:?}", cpu.isa());
    }
}

unsafe extern "C" fn count(ctx: *const u8, task: usize, thread: usize) {
    // SAFETY: ctx is the AtomicUsize passed below.
    let c = unsafe { &*(ctx as *const AtomicUsize) };
    assert!(thread < 3);
    c.fetch_add(task + 1, Ordering::Relaxed);
}

#[test]
fn parallel_for_runs_every_task_once() {
    let total = AtomicUsize::new(0);
    // SAFETY: the pool is live; `count` only touches the atomic.
    unsafe {
        assert_eq!(ffi::cnnc_pool_threads(pool()), 3);
        ffi::cnnc_parallel_for(pool(), 100, count, &total as *const AtomicUsize as *const u8);
    }
    assert_eq!(total.into_inner(), 5050);
}

/// The backward-data weights made from packed forward weights equal those packed from the
/// plain ones, through the safe function and the C-ABI entry point, over groups, partial
/// blocks and kernel sizes.
#[test]
fn backward_data_weights_from_forward_equal_packing_from_plain() {
    use cnnc_kernels::conv_bwd_data::{BwdDataOptions, BwdDataPlan};
    use cnnc_kernels::pack::{self, Blocked, WeightShape};
    for (k, &(ic, oc, kh, kw, groups)) in
        [(3, 5, 3, 3, 1), (20, 40, 3, 1, 1), (32, 64, 1, 1, 2), (64, 16, 7, 7, 1), (17, 33, 2, 3, 1)].iter().enumerate()
    {
        let ws = WeightShape { o: oc, i: ic / groups, kh, kw, groups };
        let mut rng = Rng::new(k as u64);
        let plain = rng.vec(ws.plain_len().unwrap());
        let len = ws.blocked_len().unwrap();
        let (mut fwd, mut want) = (vec![0.0; len], vec![0.0; len]);
        pack::pack(&ws, Blocked::Forward, &plain, &mut fwd).unwrap();
        pack::pack(&ws, Blocked::BackwardData, &plain, &mut want).unwrap();
        let mut got = vec![f32::NAN; len];
        pack::forward_to_backward_data(&ws, &fwd, &mut got).unwrap();
        assert_eq!(got, want, "safe {ws:?}");
        let shape = ConvShape { groups, ..ConvShape::simple(1, ic, [kh + 2, kw + 2], oc, 1, 1, 0) };
        let shape = ConvShape { kh, kw, ..shape };
        for cpu in cpus() {
            let plan = BwdDataPlan::new(shape, BwdDataOptions::default(), cpu, pool().threads()).unwrap();
            let mut got = guarded(&vec![f32::NAN; len]);
            let src = guarded(&fwd);
            // SAFETY: the plan came from BwdDataPlan::new for these weights; both buffers hold
            // the packed length and are apart; the pool is live.
            unsafe {
                ffi::cnnc_conv_backward_data_weights(
                    &plan,
                    src.as_slice().as_ptr(),
                    got.as_mut_slice().as_mut_ptr(),
                    pool(),
                )
            };
            assert_eq!(got.as_slice(), &want[..], "C ABI {ws:?} {:?}", cpu.isa());
        }
    }
    let bad = WeightShape { o: 3, i: 1, kh: 1, kw: 1, groups: 2 };
    assert!(pack::forward_to_backward_data(&bad, &[], &mut []).is_err());
}

/// The fc backward passes through the C ABI equal the safe function's.
#[test]
fn fc_backward_through_the_c_abi_equals_the_safe_call() {
    use cnnc_kernels::fc::{self, FcPlan};
    for (k, &(n, i, o, bias)) in [(64, 120, 84, true), (3, 20, 10, false), (1, 300, 17, true)].iter().enumerate() {
        let mut rng = Rng::new(10 + k as u64);
        let (x, w, gy) = (rng.vec(n * i), rng.vec(o * i), rng.vec(n * o));
        for cpu in cpus() {
            let plan = FcPlan::new(n, i, o, bias, Act::NONE, cpu, pool().threads()).unwrap();
            let (mut dx, mut dw, mut db) = (vec![0.0; n * i], vec![0.0; o * i], vec![0.0; o]);
            let mut scratch = vec![0.0; plan.backward_scratch_len()];
            fc::backward(
                pool(),
                &plan,
                &x,
                &w,
                &gy,
                Some(&mut dx),
                &mut dw,
                bias.then_some(&mut db[..]),
                false,
                &mut scratch,
            )
            .unwrap();
            let mut dx2 = guarded(&vec![f32::NAN; n * i]);
            let mut dw2 = guarded(&vec![f32::NAN; o * i]);
            let mut db2 = guarded(&vec![f32::NAN; o]);
            let mut scratch2 = guarded(&vec![f32::NAN; plan.backward_scratch_len()]);
            let (xg, wg, gyg) = (guarded(&x), guarded(&w), guarded(&gy));
            let db_ptr = if bias { db2.as_mut_slice().as_mut_ptr() } else { std::ptr::null_mut() };
            // SAFETY: the plan came from FcPlan::new for these sizes; every buffer holds what the
            // entry points' contracts ask, outputs apart from inputs; the pool is live.
            unsafe {
                ffi::cnnc_fc_backward_data(
                    &plan,
                    gyg.as_slice().as_ptr(),
                    wg.as_slice().as_ptr(),
                    dx2.as_mut_slice().as_mut_ptr(),
                    scratch2.as_mut_slice().as_mut_ptr(),
                    pool(),
                );
                ffi::cnnc_fc_backward_weights(
                    &plan,
                    gyg.as_slice().as_ptr(),
                    xg.as_slice().as_ptr(),
                    dw2.as_mut_slice().as_mut_ptr(),
                    db_ptr,
                    pool(),
                );
            }
            assert_eq!(dx2.as_slice(), &dx[..], "dx n {n} i {i} o {o} {:?}", cpu.isa());
            assert_eq!(dw2.as_slice(), &dw[..], "dw n {n} i {i} o {o} {:?}", cpu.isa());
            if bias {
                assert_eq!(db2.as_slice(), &db[..], "db n {n} i {i} o {o} {:?}", cpu.isa());
            }
        }
    }
}

/// The fc weight gradient with the update fused (each row group updated from a task's
/// scratch) leaves the parameter, its state and the bias gradient exactly as the weight
/// gradient written out and updated in a pass of its own, for SGD with momentum (step 1, which
/// starts the buffer, and step 2) and Adam; sizes whose rows leave partial row groups and
/// columns past the last whole 16.
#[test]
fn fc_backward_weights_with_update_equals_gradient_then_update() {
    use cnnc_kernels::fc::{self, FcPlan};
    use cnnc_kernels::optim::{UpdateArgs, UpdateKind, UpdatePlan, update_all};
    let kinds = [
        UpdateKind::Sgd { momentum: 0.9, weight_decay: 1e-3, nesterov: false },
        UpdateKind::Adam { beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.0 },
    ];
    for (k, &(n, i, o, bias)) in [(1, 300, 17, true), (5, 70, 40, false), (2, 1100, 9, true)].iter().enumerate() {
        let mut rng = Rng::new(30 + k as u64);
        let (x, w, gy) = (rng.vec(n * i), rng.vec(o * i), rng.vec(n * o));
        // Non-negative states: Adam's second moment is a mean of squares.
        let s: Vec<f32> = rng.vec(o * i).iter().map(|v| v.abs()).collect();
        for cpu in cpus() {
            let plan = FcPlan::new(n, i, o, bias, Act::NONE, cpu, pool().threads()).unwrap();
            for kind in kinds {
                let update = UpdatePlan::new(kind, o * i, cpu).unwrap();
                for step in [1, 2] {
                    // Gradient, then the update.
                    let (mut dw, mut db) = (vec![0.0; o * i], vec![0.0; o]);
                    let mut scratch = vec![0.0; plan.backward_scratch_len()];
                    let db_want = bias.then_some(&mut db[..]);
                    fc::backward(pool(), &plan, &x, &w, &gy, None, &mut dw, db_want, false, &mut scratch).unwrap();
                    let (mut p1, mut s1, mut t1, mut u1) = (w.clone(), s.clone(), s.clone(), s.clone());
                    update_all(pool(), &update, (0.01, step), &mut p1, &dw, [&mut s1, &mut t1, &mut u1]).unwrap();
                    // Fused.
                    let (mut p2, mut s2, mut t2, mut u2) = (w.clone(), s.clone(), s.clone(), s.clone());
                    let used = update.states();
                    let state =
                        |v: &mut Vec<f32>, k: usize| if used[k] { v.as_mut_ptr() } else { std::ptr::null_mut() };
                    let args = UpdateArgs {
                        p: p2.as_mut_ptr(),
                        s1: state(&mut s2, 0),
                        s2: state(&mut t2, 1),
                        s3: state(&mut u2, 2),
                    };
                    let mut db2 = guarded(&vec![f32::NAN; o]);
                    let db_ptr = if bias { db2.as_mut_slice().as_mut_ptr() } else { std::ptr::null_mut() };
                    let mut scratch2 =
                        guarded(&vec![f32::NAN; cnnc_kernels::fc_update::update_scratch_len(&plan) * pool().threads()]);
                    let (xg, gyg) = (guarded(&x), guarded(&gy));
                    // SAFETY: the plans came from FcPlan::new and UpdatePlan::new for these sizes;
                    // the parameter and its used states hold o x i floats, the scratch one row
                    // group per thread; outputs apart from inputs; the pool is live.
                    unsafe {
                        ffi::cnnc_fc_backward_weights_update(
                            &plan,
                            gyg.as_slice().as_ptr(),
                            xg.as_slice().as_ptr(),
                            db_ptr,
                            &update,
                            &args,
                            0.01f32.to_bits() as u64,
                            step,
                            scratch2.as_mut_slice().as_mut_ptr(),
                            pool(),
                        );
                    }
                    let what = format!("n {n} i {i} o {o} {kind:?} step {step} {:?}", cpu.isa());
                    assert_eq!(p2, p1, "parameter {what}");
                    assert_eq!([&s2, &t2, &u2], [&s1, &t1, &u1], "state {what}");
                    if bias {
                        assert_eq!(db2.as_slice(), &db[..], "db {what}");
                    }
                }
            }
        }
    }
}
