//! Native mode's backward passes on blocked maps through `cnnc-kernels`: convolution
//! backward-data (the forward weights rewritten in the kernel's backward-data layout each
//! step, since the optimiser changes them, then the transposed convolution) and
//! backward-weights (written in the weight's packed layout, the one its gradient has). Each
//! returns `false` when the kernels have no fit for the node, and the caller lowers the
//! portable code instead.

use super::conv::Geo;
use super::native::{Arg, calls, keep, shape};
use super::{Lx, Val};
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
    let (_, wt) = lx.buffer(len * 4)?;
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

/// `gw = sum_n gy x^T` per tap on blocked maps, into the gradient's packed layout (the
/// weight's), padding zeroed by the kernel.
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
    let Ok(plan) = BwdWeightsPlan::new(s, false, false, cnnc_kernels::cpu::best()) else { return Ok(false) };
    let args = BwdWeightsArgs {
        x: x.addr as *const f32,
        x_bs: (x.bs / 4) as usize,
        gy: gy.addr as *const f32,
        gy_bs: (gy.bs / 4) as usize,
        dw: gw.addr as *mut f32,
        db: std::ptr::null_mut(),
    };
    let (p, a) = (keep(lx, plan), keep(lx, args));
    let f = cnnc_kernels::ffi::cnnc_conv_backward_weights as *const () as u64;
    calls(lx, &[(f, &[Arg::Abs(p), Arg::Abs(a), Arg::Abs(lx.pool)])])?;
    Ok(true)
}

/// Whether a fully connected layer's operands are dense plain vectors and its weight plain
/// `oi` (what the fc kernels take).
fn fc_fits(x: &Val, y: &Val, wp: &ParamPlan) -> bool {
    let dense = |v: &Val| v.layout == Layout::Plain && v.hw() == 1 && v.bs == 4 * v.c as u64;
    dense(x) && dense(y) && wp.layout.is_none_or(|l| matches!(l, WeightLayout::Oi | WeightLayout::Oihw))
}

/// `gx = gy w` of a fully connected layer (a matrix product on vectors).
pub(crate) fn fc_backward_data(lx: &mut Lx, gy: Val, gx: Val, (w, wp): (u64, &ParamPlan)) -> Result<bool, JitError> {
    if !fc_fits(&gx, &gy, wp) || wp.stored_len() != gx.c * gy.c {
        return Ok(false);
    }
    let cpu = cnnc_kernels::cpu::best();
    let act = cnnc_kernels::act::Act::NONE;
    let Ok(plan) = cnnc_kernels::fc::FcPlan::new(gx.n, gx.c, gy.c, false, act, cpu, lx.threads) else {
        return Ok(false);
    };
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
    let Ok(plan) = cnnc_kernels::fc::FcPlan::new(x.n, x.c, gy.c, false, act, cpu, lx.threads) else {
        return Ok(false);
    };
    let p = keep(lx, plan);
    let f = cnnc_kernels::ffi::cnnc_fc_backward_weights as *const () as u64;
    let args = [Arg::Abs(p), Arg::Abs(gy.addr), Arg::Abs(x.addr), Arg::Abs(gw.addr), Arg::Abs(0), Arg::Abs(lx.pool)];
    calls(lx, &[(f, &args)])?;
    Ok(true)
}
