//! Native mode's backward passes on blocked maps through `cnnc-kernels`: convolution
//! backward-data (the forward weights rewritten in the kernel's backward-data layout each
//! step, since the optimiser changes them, then the transposed convolution) and
//! backward-weights (written in the weight's packed layout, the one its gradient has; large
//! batches in chunks of images, partial gradients summed; in one call, the optimiser's update
//! applied by the kernel's tasks when it is the gradient's only reader), and the fully
//! connected layers' backward passes. Each
//! returns `false` when the kernels have no fit for the node, and the caller lowers the
//! portable code instead.

use super::conv::Geo;
use super::native::{Arg, calls, emit_call, keep, keep_all, shape};
use super::{Lx, Val};
use crate::emit::{F32, F32X4, Fx};
use crate::error::JitError;
use cnnc_ir::plan::ParamPlan;
use cnnc_ir::{Layout, WeightLayout};
use cnnc_kernels::conv::packed_weight_len;
use cnnc_kernels::conv_bwd_data::{BwdDataArgs, BwdDataOptions, BwdDataPlan};
use cnnc_kernels::conv_bwd_weights::{BwdWeightsArgs, BwdWeightsPlan};

/// Whether a parameter is stored in one of the blocked forward layouts the kernels read.
fn blocked_weights(wp: &ParamPlan) -> bool {
    matches!(wp.layout, Some(WeightLayout::OIhw16i16o | WeightLayout::GOIhw16i16o | WeightLayout::OI16i16o))
}

/// `gx = conv_transpose(gy, w)` on blocked maps: two calls in one step, the weights' rewrite
/// (into a buffer of this node's) and the kernel.
pub(crate) fn conv_backward_data(
    lx: &mut Lx,
    g: &Geo,
    gy: Val,
    gx: Val,
    (w, wp): (u64, &ParamPlan),
) -> Result<bool, JitError> {
    if gy.layout != Layout::Blocked16 || gx.layout != Layout::Blocked16 || !blocked_weights(wp) {
        return Ok(false);
    }
    let s = shape(g, gx.n);
    let Ok(len) = packed_weight_len(&s) else { return Ok(false) };
    if len != wp.stored_len() {
        return Ok(false);
    }
    let cpu = cnnc_kernels::cpu::best();
    let Ok(plan) = BwdDataPlan::new(s, BwdDataOptions::default(), cpu, lx.threads) else { return Ok(false) };
    let bound = 4 * largest_param(lx);
    let wt = step_buffer(lx, "backward-data weights", 4 * len, bound)?;
    let scratch = lx.alloc(plan.scratch_len(lx.threads) * 4);
    let args = BwdDataArgs {
        gy: gy.addr as *const f32,
        gy_bs: (gy.bs / 4) as usize,
        y: std::ptr::null(),
        y_bs: 0,
        w: wt as *const f32,
        dx: gx.addr as *mut f32,
        dx_bs: (gx.bs / 4) as usize,
    };
    let (p, a) = (keep(lx, plan), keep(lx, args));
    let rewrite = cnnc_kernels::ffi::cnnc_conv_backward_data_weights as *const () as u64;
    let run = cnnc_kernels::ffi::cnnc_conv_backward_data as *const () as u64;
    let pool = Arg::Abs(lx.pool);
    calls(
        lx,
        &[
            (rewrite, &[Arg::Abs(p), Arg::Abs(w), Arg::Abs(wt), pool]),
            (run, &[Arg::Abs(p), Arg::Abs(a), Arg::Aux(scratch), pool]),
        ],
    )?;
    Ok(true)
}

/// A buffer of at least `bytes` that every node asking for `use_` shares: what it holds lives
/// only during the asking node's own step (the driver runs steps one at a time), so one buffer
/// does for all of them instead of one per layer (ResNet-18's backward-data weights alone were
/// another copy of its parameters). The first request maps `bound` bytes, the most any node
/// of the plan asks for that use; untouched pages cost nothing, so the resident memory is
/// what the largest node touches.
pub(super) fn step_buffer(lx: &mut Lx, use_: &'static str, bytes: usize, bound: usize) -> Result<u64, JitError> {
    if bytes > bound {
        return Err(crate::error::plan_err(format!("{use_}: {bytes} bytes is more than the bound {bound}")));
    }
    if let Some(&addr) = lx.step_buffers.get(use_) {
        return Ok(addr);
    }
    let (_, addr) = lx.buffer(bound)?;
    lx.step_buffers.insert(use_, addr);
    Ok(addr)
}

/// Floats of the plan's largest stored parameter.
pub(super) fn largest_param(lx: &Lx) -> usize {
    lx.plan.params.iter().map(|p| p.stored_len()).max().unwrap_or(0)
}

/// Bytes of input and gradient a backward-weights task of one image chunk should keep in the
/// core's second-level cache: each kernel tap re-reads them.
const CACHE_BUDGET: usize = 384 << 10;
/// The most bytes of per-chunk partial weight gradients.
const MAX_PARTIALS: usize = 64 << 20;

/// `gw = sum_n gy x^T` per tap on blocked maps, into the gradient's packed layout (the
/// weight's), padding zeroed by the kernel. The kernel's tasks (weight blocks) each reduce
/// over the whole batch tap by tap; when a task's share of the batch outgrows the cache, or
/// the weight has too few blocks to occupy the threads, the batch is cut into chunks of
/// images, one task each (the kernel running serially inside it) writing partial gradients
/// that a last step sums.
pub(crate) fn conv_backward_weights(
    lx: &mut Lx,
    g: &Geo,
    x: Val,
    gy: Val,
    gw: Val,
    wp: &ParamPlan,
) -> Result<bool, JitError> {
    if x.layout != Layout::Blocked16 || gy.layout != Layout::Blocked16 || !blocked_weights(wp) {
        return Ok(false);
    }
    let s = shape(g, x.n);
    let Ok(len) = packed_weight_len(&s) else { return Ok(false) };
    if len != wp.stored_len() || gw.bytes < 4 * len as u64 {
        return Ok(false);
    }
    let cpu = cnnc_kernels::cpu::best();
    let Ok(whole) = BwdWeightsPlan::new(s, false, false, cpu) else { return Ok(false) };
    let per_image = (g.h * g.w + whole.tile().0 * g.oh * g.ow) * 64;
    let mut ipc = (CACHE_BUDGET / per_image).clamp(1, x.n);
    if whole.tasks() < 2 * lx.threads {
        ipc = ipc.min(x.n.div_ceil(lx.threads));
    }
    ipc = ipc.max((x.n * len * 4).div_ceil(MAX_PARTIALS));
    let chunks = x.n.div_ceil(ipc);
    let args = |n0: usize, dw: u64| BwdWeightsArgs {
        x: (x.addr + n0 as u64 * x.bs) as *const f32,
        x_bs: (x.bs / 4) as usize,
        gy: (gy.addr + n0 as u64 * gy.bs) as *const f32,
        gy_bs: (gy.bs / 4) as usize,
        dw: dw as *mut f32,
        db: std::ptr::null_mut(),
    };
    let f = cnnc_kernels::ffi::cnnc_conv_backward_weights as *const () as u64;
    if chunks <= 1
        && let Some((update, opt)) = super::update::fusable(lx, lx.node)
    {
        return backward_weights_with_update(lx, whole, args(0, 0), (update, &opt));
    }
    if chunks <= 1 {
        let (p, a) = (keep(lx, whole), keep(lx, args(0, gw.addr)));
        calls(lx, &[(f, &[Arg::Abs(p), Arg::Abs(a), Arg::Abs(lx.pool)])])?;
        return Ok(true);
    }
    let bound = MAX_PARTIALS + 4 * largest_param(lx);
    let partials = step_buffer(lx, "weight-gradient partials", chunks * len * 4, bound)?;
    let mut plans = Vec::with_capacity(chunks);
    let mut all_args = Vec::with_capacity(chunks);
    for q in 0..chunks {
        let n0 = q * ipc;
        let shape_q = cnnc_kernels::conv::ConvShape { n: ipc.min(x.n - n0), ..s };
        let Ok(plan) = BwdWeightsPlan::new(shape_q, false, false, cpu) else { return Ok(false) };
        plans.push(plan);
        all_args.push(args(n0, partials + (q * len * 4) as u64));
    }
    let (pb, ab) = (keep_all(lx, plans), keep_all(lx, all_args));
    let pool = lx.pool;
    lx.kernel(chunks, |fx| {
        let q = fx.task;
        let p = fx.abs(pb);
        let p = fx.index(p, q, std::mem::size_of::<BwdWeightsPlan>() as i64);
        let a = fx.abs(ab);
        let a = fx.index(a, q, std::mem::size_of::<BwdWeightsArgs>() as i64);
        let pl = fx.abs(pool);
        emit_call(fx, f, &[p, a, pl]);
    })?;
    sum_parts(lx, partials, chunks, len, gw.addr)
}

/// The weight gradient with the optimiser's update applied by each kernel task to the blocks
/// it computed, from a scratch buffer of its thread's, in place of writing the gradient
/// (`update::fusable` decided that nothing else reads it): the update node emits nothing.
fn backward_weights_with_update(
    lx: &mut Lx,
    plan: BwdWeightsPlan,
    args: BwdWeightsArgs,
    update: (cnnc_ir::NodeId, &cnnc_ir::Optimizer),
) -> Result<bool, JitError> {
    let len = packed_weight_len(plan.shape()).map_err(|e| crate::error::plan_err(e.to_string()))?;
    let scratch = plan.update_scratch_len();
    let (p, a) = (keep(lx, plan), keep(lx, args));
    let f = cnnc_kernels::ffi::cnnc_conv_backward_weights_update as *const () as u64;
    call_with_update(lx, f, &[p, a], (len, scratch), update)
}

/// A fully connected layer's weight gradient with the optimiser's update applied by each
/// kernel task to the row groups it computed, from a scratch buffer of its thread's, in place
/// of writing the gradient (`update::fusable` decided that nothing else reads it): the update
/// node emits nothing. At small batches the gradient is as large as the weight and costs a
/// write and a read of it otherwise.
fn fc_backward_weights_with_update(
    lx: &mut Lx,
    plan: cnnc_kernels::fc::FcPlan,
    (x, gy): (Val, Val),
    update: (cnnc_ir::NodeId, &cnnc_ir::Optimizer),
) -> Result<bool, JitError> {
    let scratch = cnnc_kernels::fc_update::update_scratch_len(&plan);
    let p = keep(lx, plan);
    let f = cnnc_kernels::ffi::cnnc_fc_backward_weights_update as *const () as u64;
    // The bias gradient is a node of its own: its pointer is null.
    call_with_update(lx, f, &[p, gy.addr, x.addr, 0], (x.c * gy.c, scratch), update)
}

/// One kernel step calling a weight-gradient entry point `f` that applies the optimiser's
/// update itself: `f(lead.., update plan, update arguments, lr, step, scratch, pool)`, with
/// `scratch_floats` of scratch per thread, for a parameter of `len` floats (checked against the
/// update's); the update node is marked as written.
fn call_with_update(
    lx: &mut Lx,
    f: u64,
    lead: &[u64],
    (len, scratch_floats): (usize, usize),
    (update, opt): (cnnc_ir::NodeId, &cnnc_ir::Optimizer),
) -> Result<bool, JitError> {
    let (up, ua) = super::update::kernel_update(lx, update, opt)?;
    if lx.param(update, "")?.1.stored_len() != len {
        return Err(crate::error::plan_err(format!("update of {len} floats: the parameter's length differs")));
    }
    let scratch = lx.alloc(scratch_floats * lx.threads * 4);
    let pool = lx.pool;
    lx.kernel(1, |fx| {
        let mut args: Vec<_> = lead.iter().map(|&v| fx.abs(v)).collect();
        args.extend([fx.abs(up), fx.abs(ua)]);
        let (lr, step) = super::update::run_scalars(fx);
        let sc = fx.aux(scratch);
        let pl = fx.abs(pool);
        args.extend([lr, step, sc, pl]);
        emit_call(fx, f, &args);
    })?;
    lx.written.insert(update);
    Ok(true)
}

/// `dst[i] = sum_q parts[q][i]` for `len` floats of `count` consecutive parts.
pub(crate) fn sum_parts(lx: &mut Lx, parts: u64, count: usize, len: usize, dst: u64) -> Result<bool, JitError> {
    let units = len.div_ceil(4096);
    let tasks = lx.tasks(units, (len * count) as f64);
    lx.kernel(tasks, |fx| {
        let (lo, hi) = fx.task_range(units, tasks);
        let (src, d) = (fx.abs(parts), fx.abs(dst));
        fx.for_range(lo, hi, 1, |fx, u| {
            let start = fx.muli(u, 4096);
            let end = fx.addi(start, 4096);
            let whole = fx.int((len - len % 4) as i64);
            let vend = fx.smin(end, whole);
            let sum = |fx: &mut Fx, ty: cranelift_codegen::ir::Type, i: cranelift_codegen::ir::Value| {
                let a = fx.index(src, i, 4);
                let first = fx.load(ty, a, 0);
                let acc = fx.var_init(ty, first);
                fx.for_n(1, count as i64, |fx, q| {
                    let off = fx.muli(q, (len * 4) as i64);
                    let aq = fx.add(a, off);
                    let v = fx.load(ty, aq, 0);
                    let cur = fx.get(acc);
                    let next = fx.fadd(cur, v);
                    fx.set(acc, next);
                });
                let total = fx.get(acc);
                let da = fx.index(d, i, 4);
                fx.store(total, da, 0);
            };
            fx.for_range(start, vend, 4, |fx, i| sum(fx, F32X4, i));
            if !len.is_multiple_of(4) {
                let tot = fx.int(len as i64);
                let tend = fx.smin(end, tot);
                let ts = fx.smax(start, whole);
                fx.for_range(ts, tend, 1, |fx, i| sum(fx, F32, i));
            }
        });
    })?;
    Ok(true)
}

/// Whether a fully connected layer's operands are plain vectors, samples a whole number of
/// floats apart (the arena rounds images up to 64 bytes), and its weight plain `oi` (what the
/// fc kernels take).
fn fc_fits(x: &Val, y: &Val, wp: &ParamPlan) -> bool {
    let vector = |v: &Val| v.layout == Layout::Plain && v.hw() == 1 && v.bs.is_multiple_of(4) && v.bs >= 4 * v.c as u64;
    vector(x) && vector(y) && wp.layout.is_none_or(|l| matches!(l, WeightLayout::Oi | WeightLayout::Oihw))
}

/// Floats between samples of a vector value.
fn stride(v: &Val) -> usize {
    (v.bs / 4) as usize
}

/// `gx = gy w` of a fully connected layer (a matrix product on vectors).
pub(crate) fn fc_backward_data(lx: &mut Lx, gy: Val, gx: Val, (w, wp): (u64, &ParamPlan)) -> Result<bool, JitError> {
    if !fc_fits(&gx, &gy, wp) || wp.stored_len() != gx.c * gy.c {
        return Ok(false);
    }
    let cpu = cnnc_kernels::cpu::best();
    let act = cnnc_kernels::act::Act::NONE;
    let plan = cnnc_kernels::fc::FcPlan::new(gx.n, gx.c, gy.c, false, act, cpu, lx.threads)
        .and_then(|p| p.with_strides(stride(&gx), stride(&gy)));
    let Ok(plan) = plan else { return Ok(false) };
    let scratch = lx.alloc(plan.backward_scratch_len() * 4);
    let p = keep(lx, plan);
    let f = cnnc_kernels::ffi::cnnc_fc_backward_data as *const () as u64;
    let args = [Arg::Abs(p), Arg::Abs(gy.addr), Arg::Abs(w), Arg::Abs(gx.addr), Arg::Aux(scratch), Arg::Abs(lx.pool)];
    calls(lx, &[(f, &args)])?;
    Ok(true)
}

/// `gw = gy^T x` of a fully connected layer, in the weight's `oi` order.
pub(crate) fn fc_backward_weights(lx: &mut Lx, x: Val, gy: Val, gw: Val, wp: &ParamPlan) -> Result<bool, JitError> {
    if !fc_fits(&x, &gy, wp) || wp.stored_len() != x.c * gy.c || gw.bytes < 4 * (x.c * gy.c) as u64 {
        return Ok(false);
    }
    let cpu = cnnc_kernels::cpu::best();
    let act = cnnc_kernels::act::Act::NONE;
    let plan = cnnc_kernels::fc::FcPlan::new(x.n, x.c, gy.c, false, act, cpu, lx.threads)
        .and_then(|p| p.with_strides(stride(&x), stride(&gy)));
    let Ok(plan) = plan else { return Ok(false) };
    if let Some((update, opt)) = super::update::fusable(lx, lx.node) {
        return fc_backward_weights_with_update(lx, plan, (x, gy), (update, &opt));
    }
    let p = keep(lx, plan);
    let f = cnnc_kernels::ffi::cnnc_fc_backward_weights as *const () as u64;
    let args = [Arg::Abs(p), Arg::Abs(gy.addr), Arg::Abs(x.addr), Arg::Abs(gw.addr), Arg::Abs(0), Arg::Abs(lx.pool)];
    calls(lx, &[(f, &args)])?;
    Ok(true)
}
