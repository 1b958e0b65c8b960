//! The C-ABI entry points the JIT calls give exactly what the safe functions give.

use super::util::{Rng, cpus, pool};
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
