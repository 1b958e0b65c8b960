//! C-ABI entry points for the Cranelift JIT (std: they run on the thread pool): each takes a
//! plan made by this crate's `new` functions, a `#[repr(C)]` struct of operand pointers, the
//! scratch memory and the pool, all by pointer, and runs every task of the plan. The JIT checks
//! shapes and views once when it compiles a model (by building the plans and laying out its
//! arena) and then calls these directly; [`cnnc_parallel_for`] lends the pool to the JIT's own
//! loops.
//!
//! Common contract (`# Safety` of every function here): the plan pointer points at a plan
//! made by the corresponding `Plan::new` (so on an instruction set this CPU supports); the
//! argument struct's pointers satisfy the matching `*_task` function's preconditions for every
//! task; `scratch` holds `plan.scratch_len(pool.threads())` floats (or is unused when that is
//! 0); `pool` points at a live [`ThreadPool`]; nothing else writes the operands during the call.

use super::conv::{ConvArgs, ConvPlan};
use super::conv_bwd_data::{BwdDataArgs, BwdDataPlan};
use super::conv_bwd_weights::{BwdWeightsArgs, BwdWeightsPlan};
use super::conv_plain::PlainConvPlan;
use super::conv_plain_bwd::{PlainBwdWeightsArgs, PlainBwdWeightsPlan};
use super::depthwise::DepthwisePlan;
use super::fc::FcPlan;
use super::lrn::{LrnArgs, LrnPlan};
use super::optim::{LiveTapGrad, UpdateArgs, UpdatePlan};
use super::pack::{WeightShape, forward_to_backward_data_task, forward_to_backward_data_tasks};
use super::par::{Parallel, SyncPtr};
use super::pool::{PoolArgs, PoolPlan};
use super::pool_bwd::PoolBwdArgs;
use super::pool2x2::{Max2BwdArgs, Max2FwdArgs, Max2Plan};
use super::threads::ThreadPool;
use super::winograd::WinoPlan;

/// Runs `f(task, thread)` for every task of a plan on the pool, `scratch` split per thread.
///
/// # Safety
/// `pool` live; `f` sound for every task with its thread's scratch.
unsafe fn on_pool(
    pool: *const ThreadPool,
    tasks: usize,
    scratch: *mut f32,
    per: usize,
    f: &(dyn Fn(usize, *mut f32) + Sync),
) {
    // SAFETY: the caller guarantees a live pool.
    let pool = unsafe { &*pool };
    let s = SyncPtr(scratch);
    pool.run(tasks, &|t, thread| f(t, s.get().wrapping_add(thread * per)));
}

/// Forward convolution on blocked maps.
///
/// # Safety
/// See the module's common contract ([`super::conv_fwd::forward_task`]'s preconditions).
pub unsafe extern "C" fn cnnc_conv_forward(
    plan: *const ConvPlan,
    args: *const ConvArgs,
    scratch: *mut f32,
    pool: *const ThreadPool,
) {
    // SAFETY: common contract.
    let (p, a) = unsafe { (&*plan, &*args) };
    // SAFETY: common contract; each task uses its thread's scratch.
    unsafe { on_pool(pool, p.tasks(), scratch, p.scratch, &|t, s| super::conv_fwd::forward_task(p, a, t, s)) };
}

/// Winograd convolution on blocked maps (`args.w`: the transformed weights).
///
/// # Safety
/// See the module's common contract ([`super::winograd::forward_task`]'s preconditions).
pub unsafe extern "C" fn cnnc_winograd_forward(
    plan: *const WinoPlan,
    args: *const ConvArgs,
    scratch: *mut f32,
    pool: *const ThreadPool,
) {
    // SAFETY: common contract.
    let (p, a) = unsafe { (&*plan, &*args) };
    // SAFETY: common contract; each task uses its thread's scratch.
    unsafe { on_pool(pool, p.tasks(), scratch, p.scratch, &|t, s| super::winograd::forward_task(p, a, t, s)) };
}

/// Plain-input convolution (the stem).
///
/// # Safety
/// See the module's common contract ([`super::conv_plain::forward_task`]).
pub unsafe extern "C" fn cnnc_conv_plain_forward(
    plan: *const PlainConvPlan,
    args: *const ConvArgs,
    scratch: *mut f32,
    pool: *const ThreadPool,
) {
    // SAFETY: common contract.
    let (p, a) = unsafe { (&*plan, &*args) };
    // SAFETY: common contract.
    unsafe { on_pool(pool, p.tasks(), scratch, p.scratch, &|t, s| super::conv_plain::forward_task(p, a, t, s)) };
}

/// Weight gradient of a convolution on plain maps (both phases).
///
/// # Safety
/// See the module's common contract ([`super::conv_plain_bwd::run_phases`]).
pub unsafe extern "C" fn cnnc_conv_plain_backward_weights(
    plan: *const PlainBwdWeightsPlan,
    args: *const PlainBwdWeightsArgs,
    scratch: *mut f32,
    pool: *const ThreadPool,
) {
    // SAFETY: common contract.
    let (p, a, pool) = unsafe { (&*plan, &*args, &*pool) };
    // SAFETY: common contract; the scratch is sized for the pool's threads.
    unsafe { super::conv_plain_bwd::run_phases(pool, p, a, scratch) };
}

/// Depthwise convolution.
///
/// # Safety
/// See the module's common contract ([`super::depthwise::forward_task`]).
pub unsafe extern "C" fn cnnc_depthwise_forward(
    plan: *const DepthwisePlan,
    args: *const ConvArgs,
    scratch: *mut f32,
    pool: *const ThreadPool,
) {
    // SAFETY: common contract.
    let (p, a) = unsafe { (&*plan, &*args) };
    // SAFETY: common contract.
    unsafe { on_pool(pool, p.tasks(), scratch, p.scratch, &|t, s| super::depthwise::forward_task(p.isa, p, a, t, s)) };
}

/// Convolution backward-data.
///
/// # Safety
/// See the module's common contract ([`super::conv_bwd_data::backward_data_task`]).
pub unsafe extern "C" fn cnnc_conv_backward_data(
    plan: *const BwdDataPlan,
    args: *const BwdDataArgs,
    scratch: *mut f32,
    pool: *const ThreadPool,
) {
    // SAFETY: common contract.
    let (p, a) = unsafe { (&*plan, &*args) };
    // SAFETY: common contract.
    unsafe {
        on_pool(pool, p.tasks(), scratch, p.scratch, &|t, s| super::conv_bwd_data::backward_data_task(p, a, t, s))
    };
}

/// The backward-data weights of `plan` from packed forward weights (`src`, `gOIhw16i16o`) into
/// `dst` (`gIOhw16o16i`, rotated), one task per group and output block: what a training step
/// runs before [`cnnc_conv_backward_data`] once its weights have changed. Only the taps the
/// plan reads are written ([`BwdDataPlan::taps`]); `dst`'s others keep what they held.
///
/// # Safety
/// `plan` from [`BwdDataPlan::new`]; `src` readable and `dst` writable for the plan's packed
/// weight length, apart; `pool` live.
pub unsafe extern "C" fn cnnc_conv_backward_data_weights(
    plan: *const BwdDataPlan,
    src: *const f32,
    dst: *mut f32,
    pool: *const ThreadPool,
) {
    // SAFETY: common contract.
    let p = unsafe { &*plan };
    let s = &p.shape;
    // Only the taps the pass reads: on small maps most of a kernel lands in padding.
    let (rows, cols) = p.taps();
    let ws = WeightShape { o: s.oc, i: s.ic / s.groups, kh: s.kh, kw: s.kw, groups: s.groups };
    // The plan checked the shape, so the count exists.
    let tasks = forward_to_backward_data_tasks(&ws).unwrap_or(0);
    let (sp, dp) = (SyncPtr(src as *mut f32), SyncPtr(dst));
    // SAFETY: the caller's contract; tasks write disjoint blocks of dst.
    unsafe {
        on_pool(pool, tasks, core::ptr::null_mut(), 0, &|t, _| {
            forward_to_backward_data_task(&ws, [rows, cols], sp.get(), dp.get(), t)
        })
    };
}

/// Convolution backward-weights (and bias).
///
/// # Safety
/// See the module's common contract ([`super::conv_bwd_weights::backward_weights_task`]; no
/// scratch).
pub unsafe extern "C" fn cnnc_conv_backward_weights(
    plan: *const BwdWeightsPlan,
    args: *const BwdWeightsArgs,
    pool: *const ThreadPool,
) {
    // SAFETY: common contract.
    let (p, a) = unsafe { (&*plan, &*args) };
    // SAFETY: common contract.
    unsafe {
        on_pool(pool, p.tasks(), core::ptr::null_mut(), 0, &|t, _| {
            super::conv_bwd_weights::backward_weights_task(p, a, t)
        })
    };
}

/// An optimiser's update of one parameter from its gradient `g`, at the run's learning rate
/// (`lr_bits`: an `f32`'s bits) and step.
///
/// # Safety
/// See the module's common contract ([`super::optim::update_task`]; no scratch).
pub unsafe extern "C" fn cnnc_update(
    plan: *const UpdatePlan,
    args: *const UpdateArgs,
    g: *const f32,
    lr_bits: u64,
    step: u64,
    pool: *const ThreadPool,
) {
    // SAFETY: common contract.
    let (p, a) = unsafe { (&*plan, &*args) };
    let rule = p.rule(f32::from_bits(lr_bits as u32), step);
    let g = SyncPtr(g as *mut f32);
    // SAFETY: common contract; tasks update disjoint chunks.
    unsafe {
        on_pool(pool, p.tasks(), core::ptr::null_mut(), 0, &|t, _| super::optim::update_task(p, &rule, a, g.get(), t))
    };
}

/// An optimiser's update of a packed weight whose gradient is a live-tap matrix (the other
/// taps' gradient zero), at the run's learning rate (`lr_bits`: an `f32`'s bits) and step.
///
/// # Safety
/// See the module's common contract ([`super::optim::update_live_taps_task`]; no scratch).
pub unsafe extern "C" fn cnnc_update_live_taps(
    plan: *const UpdatePlan,
    args: *const UpdateArgs,
    grad: *const LiveTapGrad,
    lr_bits: u64,
    step: u64,
    pool: *const ThreadPool,
) {
    // SAFETY: common contract.
    let (p, a, g) = unsafe { (&*plan, &*args, &*grad) };
    let rule = p.rule(f32::from_bits(lr_bits as u32), step);
    let tasks = super::optim::live_taps_tasks(g);
    // SAFETY: common contract; tasks update disjoint output blocks.
    unsafe {
        on_pool(pool, tasks, core::ptr::null_mut(), 0, &|t, _| super::optim::update_live_taps_task(&rule, a, g, t))
    };
}

/// Convolution backward-weights with the optimiser's update applied to each task's weight
/// blocks from its scratch ([`BwdWeightsPlan::update_scratch_len`] floats per thread), at the
/// run's learning rate (`lr_bits`: an `f32`'s bits) and step; `args.dw` is not written.
///
/// # Safety
/// See the module's common contract
/// ([`super::conv_bwd_weights::backward_weights_update_task`]).
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn cnnc_conv_backward_weights_update(
    plan: *const BwdWeightsPlan,
    args: *const BwdWeightsArgs,
    update: *const UpdatePlan,
    update_args: *const UpdateArgs,
    lr_bits: u64,
    step: u64,
    scratch: *mut f32,
    pool: *const ThreadPool,
) {
    // SAFETY: common contract.
    let (p, a, u, ua) = unsafe { (&*plan, &*args, &*update, &*update_args) };
    let rule = u.rule(f32::from_bits(lr_bits as u32), step);
    // SAFETY: common contract; tasks update disjoint weight blocks, each with its thread's
    // scratch.
    unsafe {
        on_pool(pool, p.tasks(), scratch, p.update_scratch_len(), &|t, sc| {
            super::conv_bwd_weights::backward_weights_update_task(p, a, (&rule, ua), t, sc)
        })
    };
}

/// Fully connected forward (`bias` null without one).
///
/// # Safety
/// See the module's common contract ([`super::fc::forward_task`]).
pub unsafe extern "C" fn cnnc_fc_forward(
    plan: *const FcPlan,
    x: *const f32,
    w: *const f32,
    bias: *const f32,
    y: *mut f32,
    pool: *const ThreadPool,
) {
    // SAFETY: common contract.
    let p = unsafe { &*plan };
    let (xp, wp, bp, yp) = (SyncPtr(x as *mut f32), SyncPtr(w as *mut f32), SyncPtr(bias as *mut f32), SyncPtr(y));
    // SAFETY: common contract.
    unsafe {
        on_pool(pool, p.tasks(), core::ptr::null_mut(), 0, &|t, _| {
            super::fc::forward_task(p, xp.get(), wp.get(), bp.get(), yp.get(), t)
        })
    };
}

/// Fully connected backward-data: `dx = gy w` (overwritten), `gy` transposed into `scratch`
/// first.
///
/// # Safety
/// See the module's common contract ([`super::fc::backward_data_task`]): `gy` holds
/// [`FcPlan::y_span`], `w` `o x i`, `dx` [`FcPlan::x_span`] floats, `scratch`
/// [`FcPlan::backward_scratch_len`], all apart.
pub unsafe extern "C" fn cnnc_fc_backward_data(
    plan: *const FcPlan,
    gy: *const f32,
    w: *const f32,
    dx: *mut f32,
    scratch: *mut f32,
    pool: *const ThreadPool,
) {
    // SAFETY: common contract.
    let p = unsafe { &*plan };
    for n in 0..p.n {
        for o in 0..p.o {
            // SAFETY: n < p.n, o < p.o: inside gy and the scratch.
            unsafe { *scratch.add(o * p.n + n) = *gy.add(n * p.ys + o) };
        }
    }
    let (gt, wp, dp) = (SyncPtr(scratch), SyncPtr(w as *mut f32), SyncPtr(dx));
    // SAFETY: common contract; tasks write disjoint columns of dx.
    unsafe {
        on_pool(pool, p.backward_data_tasks(), core::ptr::null_mut(), 0, &|t, _| {
            super::fc::backward_data_task(p, gt.get(), wp.get(), dp.get(), false, t)
        })
    };
}

/// Fully connected backward-weights: `dw = gy^T x` and, with a bias, `db` (both overwritten;
/// `db` null without one).
///
/// # Safety
/// See the module's common contract ([`super::fc::backward_weights_task`]): `gy` holds
/// [`FcPlan::y_span`], `x` [`FcPlan::x_span`], `dw` `o x i` and `db` `o` floats, outputs apart
/// from inputs.
pub unsafe extern "C" fn cnnc_fc_backward_weights(
    plan: *const FcPlan,
    gy: *const f32,
    x: *const f32,
    dw: *mut f32,
    db: *mut f32,
    pool: *const ThreadPool,
) {
    // SAFETY: common contract.
    let p = unsafe { &*plan };
    let (gp, xp, wp, bp) = (SyncPtr(gy as *mut f32), SyncPtr(x as *mut f32), SyncPtr(dw), SyncPtr(db));
    // SAFETY: common contract; tasks write disjoint rows of dw, task 0 alone db.
    unsafe {
        on_pool(pool, p.backward_weights_tasks(), core::ptr::null_mut(), 0, &|t, _| {
            super::fc::backward_weights_task(p, gp.get(), xp.get(), wp.get(), bp.get(), false, t)
        })
    };
}

/// Fully connected backward-weights with the optimiser's update applied to each row group
/// from its task's scratch ([`super::fc_update::update_scratch_len`] floats per thread), at the run's
/// learning rate (`lr_bits`: an `f32`'s bits) and step: the weight gradient is not written;
/// `db` (null without a bias) is.
///
/// # Safety
/// See the module's common contract ([`super::fc_update::backward_weights_update_task`]).
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn cnnc_fc_backward_weights_update(
    plan: *const FcPlan,
    gy: *const f32,
    x: *const f32,
    db: *mut f32,
    update: *const UpdatePlan,
    update_args: *const UpdateArgs,
    lr_bits: u64,
    step: u64,
    scratch: *mut f32,
    pool: *const ThreadPool,
) {
    // SAFETY: common contract.
    let (p, u, ua) = unsafe { (&*plan, &*update, &*update_args) };
    let rule = u.rule(f32::from_bits(lr_bits as u32), step);
    let (gp, xp, bp) = (SyncPtr(gy as *mut f32), SyncPtr(x as *mut f32), SyncPtr(db));
    // SAFETY: common contract; tasks update disjoint rows of the weight, each with its
    // thread's scratch; task 0 alone writes db.
    unsafe {
        on_pool(pool, p.backward_weights_tasks(), scratch, super::fc_update::update_scratch_len(p), &|t, sc| {
            super::fc_update::backward_weights_update_task(p, gp.get(), xp.get(), bp.get(), (&rule, ua), t, sc)
        })
    };
}

/// Local response normalisation: forward (`args.gy` null, `args.y` the output) or backward
/// (`args.y` the input gradient).
///
/// # Safety
/// See the module's common contract ([`super::lrn::task`]).
pub unsafe extern "C" fn cnnc_lrn(
    plan: *const LrnPlan,
    args: *const LrnArgs,
    scratch: *mut f32,
    pool: *const ThreadPool,
) {
    // SAFETY: common contract.
    let (p, a) = unsafe { (&*plan, &*args) };
    // SAFETY: common contract; each task writes its own pixels with its thread's scratch.
    unsafe { on_pool(pool, p.tasks(), scratch, p.scratch(), &|t, s| super::lrn::task(p, a, t, s)) };
}

/// Pooling forward.
///
/// # Safety
/// See the module's common contract ([`super::pool::forward_task`]; no scratch).
pub unsafe extern "C" fn cnnc_pool_forward(plan: *const PoolPlan, args: *const PoolArgs, pool: *const ThreadPool) {
    // SAFETY: common contract.
    let (p, a) = unsafe { (&*plan, &*args) };
    // SAFETY: common contract.
    unsafe { on_pool(pool, p.tasks(), core::ptr::null_mut(), 0, &|t, _| super::pool::forward_task(p, a, t)) };
}

/// Pooling backward.
///
/// # Safety
/// See the module's common contract ([`super::pool_bwd::backward_task`]: the argmax indices
/// must be the forward pass's).
pub unsafe extern "C" fn cnnc_pool_backward(plan: *const PoolPlan, args: *const PoolBwdArgs, pool: *const ThreadPool) {
    // SAFETY: common contract.
    let (p, a) = unsafe { (&*plan, &*args) };
    // SAFETY: common contract.
    unsafe { on_pool(pool, p.tasks(), core::ptr::null_mut(), 0, &|t, _| super::pool_bwd::backward_task(p, a, t)) };
}

/// 2x2/2 max pooling of a plain map into a blocked one, with its plain argmax.
///
/// # Safety
/// See the module's common contract ([`super::pool2x2::forward_task`]).
pub unsafe extern "C" fn cnnc_max2_forward(plan: *const Max2Plan, args: *const Max2FwdArgs, pool: *const ThreadPool) {
    // SAFETY: common contract.
    let (p, a) = unsafe { (&*plan, &*args) };
    // SAFETY: common contract.
    unsafe {
        on_pool(pool, p.forward_tasks(), core::ptr::null_mut(), 0, &|t, _| super::pool2x2::forward_task(p, a, t))
    };
}

/// 2x2/2 max pooling backward from a blocked gradient to a plain one (ReLU mask, bias sums).
///
/// # Safety
/// See the module's common contract ([`super::pool2x2::backward_task`]).
pub unsafe extern "C" fn cnnc_max2_backward(plan: *const Max2Plan, args: *const Max2BwdArgs, pool: *const ThreadPool) {
    // SAFETY: common contract.
    let (p, a) = unsafe { (&*plan, &*args) };
    // SAFETY: common contract.
    unsafe {
        on_pool(pool, p.backward_tasks(), core::ptr::null_mut(), 0, &|t, _| super::pool2x2::backward_task(p, a, t))
    };
}

/// Runs `f(ctx, task, thread)` for `tasks` tasks on the pool (the JIT's own parallel loops).
///
/// # Safety
/// `pool` live; `f` sound when called concurrently for different tasks with different
/// `thread` numbers (`< pool.threads()`) and the same `ctx`.
pub unsafe extern "C" fn cnnc_parallel_for(
    pool: *const ThreadPool,
    tasks: usize,
    f: unsafe extern "C" fn(*const u8, usize, usize),
    ctx: *const u8,
) {
    // SAFETY: the caller guarantees a live pool.
    let pool = unsafe { &*pool };
    let c = SyncPtr(ctx as *mut u8);
    // SAFETY: the caller guarantees f is sound this way.
    pool.run(tasks, &|t, thread| unsafe { f(c.get(), t, thread) });
}

/// The number of threads of a pool (for sizing scratch).
///
/// # Safety
/// `pool` live.
pub unsafe extern "C" fn cnnc_pool_threads(pool: *const ThreadPool) -> usize {
    // SAFETY: the caller guarantees a live pool.
    unsafe { (*pool).threads() }
}
