//! Native mode: convolutions whose input and output are single pixels ("point"
//! convolutions: ResNet-18's layer4 on 32x32 images works on 1x1 maps). Of a 3x3 kernel with
//! padding 1 only the centre tap ever sees the input pixel, the other eight see padding, so
//! the convolution is a fully connected layer on that tap's weights,
//! `y[n][o] = sum_i w[o][i][ky][kx] x[n][i]`, and its backward passes are the fc layer's.
//!
//! Why not the blocked kernels: they tile the pixels of one image, here one, so a tile is a
//! single column (each weight vector loaded for one FMA), and they stream every tap's weights
//! for the ninth that meets the input (ResNet-18's layer4 at batch 16 in training: 22-37 % of
//! the peak forward, ~50 % backward). The fc kernels tile the batch instead.
//!
//! The tap's weights are copied out as `oi` (what the fc kernels take) in a step before each
//! use, since the optimiser changes them between runs (a ninth of the weight's bytes read);
//! the weight gradient is the fc kernel's, written back into the weight's own layout with
//! zeros on the taps that see only padding (what the convolution's gradient has there).
//!
//! A 1x1 map in `nChw16c` with whole channel blocks is the plain vector of its channels, so
//! the fc kernels read and write both layouts alike; maps with padding lanes are left to the
//! blocked kernels (their lanes must stay zero).

use super::conv::{ConvForward, Geo};
use super::native::{Arg, act, calls, keep};
use super::{Lx, Val};
use crate::emit::{F32, F32X4, Fx};
use crate::error::JitError;
use cnnc_ir::plan::ParamPlan;
use cnnc_ir::{Layout, WeightLayout};
use cnnc_kernels::act::Act;
use cnnc_kernels::fc::FcPlan;
use cranelift_codegen::ir::Value;

/// The kernel tap `(ky, kx)` through which the output pixel sees the input pixel, when the
/// convolution maps one pixel to one pixel with one group.
fn live_tap(g: &Geo) -> Option<(usize, usize)> {
    if (g.h, g.w, g.oh, g.ow, g.groups) != (1, 1, 1, 1, 1) {
        return None;
    }
    // The output pixel reads input row `ky * dilation - pad`: row 0 through ky = pad / dilation.
    let axis = |pad: usize, dil: usize, k: usize| (pad.is_multiple_of(dil) && pad / dil < k).then_some(pad / dil);
    Some((axis(g.pad[0], g.dil[0], g.kh)?, axis(g.pad[1], g.dil[1], g.kw)?))
}

/// Whether a one-pixel value is a plain vector of its channels, samples a whole number of
/// floats apart (the arena rounds images up to 64 bytes).
fn vector(v: &Val) -> bool {
    let lanes_ok = v.layout == Layout::Plain || v.c.is_multiple_of(16);
    v.hw() == 1 && lanes_ok && v.bs.is_multiple_of(4) && v.bs >= 4 * v.c as u64
}

/// Whether the weight is in a layout [`extract`] reads: packed `OIhw16i16o` with whole
/// blocks, or plain `oihw`.
fn weights_fit(g: &Geo, wp: &ParamPlan) -> bool {
    let whole = g.c.is_multiple_of(16) && g.o.is_multiple_of(16);
    let len_ok = wp.stored_len() == g.o * g.c * g.kh * g.kw;
    len_ok
        && match wp.layout {
            None | Some(WeightLayout::Oihw) => true,
            Some(WeightLayout::OIhw16i16o | WeightLayout::OI16i16o) => whole,
            Some(_) => false,
        }
}

/// Floats between samples of a vector value.
fn stride(v: &Val) -> usize {
    (v.bs / 4) as usize
}

/// Runs `body(fx, w, i)` for every input channel `i` (a constant offset from the address
/// `body` is given) of output channel `o` (a run-time value), `w` the address of weight
/// `(o, i, tap)` as stored in `weights`: packed `OIhw16i16o` (block `(o / 16, i / 16)` of 16 x
/// 16 floats per tap, `[i % 16][o % 16]` inside it; the 16 channels of a block unrolled, so
/// each copy is a load and a store at constant offsets) or plain `oihw`. `i` comes as the
/// address of input channel `i0` (run time) plus the constant `i - i0`.
fn for_each_input(
    fx: &mut Fx,
    g: &Geo,
    packed: bool,
    tap: usize,
    (weights, o): (Value, Value),
    mut body: impl FnMut(&mut Fx, Value, i64, Value, i64),
) {
    let (c, taps) = (g.c, g.kh * g.kw);
    if packed {
        let ob = fx.udiv(o, 16);
        let lane = fx.urem(o, 16);
        let first = fx.muli(ob, (c / 16 * taps * 256) as i64);
        let first = fx.add(first, lane);
        let first = fx.addi(first, (tap * 256) as i64);
        let first = fx.index(weights, first, 4);
        fx.for_n(0, (c / 16) as i64, |fx, ib| {
            let blk = fx.index(first, ib, (taps * 256 * 4) as i64);
            let i0 = fx.muli(ib, 16);
            for ii in 0..16 {
                body(fx, blk, ii * 64, i0, ii);
            }
        });
    } else {
        let first = fx.muli(o, (c * taps) as i64);
        let first = fx.addi(first, tap as i64);
        let first = fx.index(weights, first, 4);
        fx.for_n(0, c as i64, |fx, i| {
            let at = fx.index(first, i, (taps * 4) as i64);
            body(fx, at, 0, i, 0);
        });
    }
}

/// A buffer the nodes of one use share during their own steps (see
/// `native_bwd::step_buffer`), mapped at the plan's largest weight.
fn shared_buffer(lx: &mut Lx, use_: &'static str) -> Result<u64, JitError> {
    if let Some(&addr) = lx.step_buffers.get(use_) {
        return Ok(addr);
    }
    let largest = lx.plan.params.iter().map(|p| p.stored_len()).max().unwrap_or(0);
    let (_, addr) = lx.buffer(4 * largest)?;
    lx.step_buffers.insert(use_, addr);
    Ok(addr)
}

/// Emits a step writing the live tap's weights as `oi` (`o x c` floats) at `dst`.
fn extract(lx: &mut Lx, g: &Geo, (w, wp): (u64, &ParamPlan), tap: usize, dst: u64) -> Result<(), JitError> {
    let (o, c) = (g.o, g.c);
    let packed = matches!(wp.layout, Some(WeightLayout::OIhw16i16o | WeightLayout::OI16i16o));
    let geo = *g;
    let tasks = lx.tasks(o, (o * c * 8) as f64);
    lx.kernel(tasks, |fx| {
        let (lo, hi) = fx.task_range(o, tasks);
        let (src, d) = (fx.abs(w), fx.abs(dst));
        fx.for_range(lo, hi, 1, |fx, oo| {
            let drow = fx.index(d, oo, (c * 4) as i64);
            for_each_input(fx, &geo, packed, tap, (src, oo), |fx, w, w_off, i, i_off| {
                let v = fx.load(F32, w, w_off);
                let da = fx.index(drow, i, 4);
                fx.store(v, da, i_off * 4);
            });
        });
    })
}

/// A forward point convolution through the fc kernel; bias and activation in its epilogue
/// (a residual is left to the blocked kernels).
pub(crate) fn forward(lx: &mut Lx, op: &ConvForward) -> Result<bool, JitError> {
    let ConvForward { g, x, y, res, w, wp, bias, act: a } = *op;
    let Some((ky, kx)) = live_tap(g) else { return Ok(false) };
    if res.is_some() || !vector(&x) || !vector(&y) || !weights_fit(g, wp) {
        return Ok(false);
    }
    let cpu = cnnc_kernels::cpu::best();
    let plan = FcPlan::new(x.n, g.c, g.o, bias.is_some(), act(a), cpu, lx.threads)
        .and_then(|p| p.with_strides(stride(&x), stride(&y)));
    let Ok(plan) = plan else { return Ok(false) };
    let wt = shared_buffer(lx, "point-convolution weights")?;
    extract(lx, g, (w, wp), ky * g.kw + kx, wt)?;
    let p = keep(lx, plan);
    let f = cnnc_kernels::ffi::cnnc_fc_forward as *const () as u64;
    let args =
        [Arg::Abs(p), Arg::Abs(x.addr), Arg::Abs(wt), Arg::Abs(bias.unwrap_or(0)), Arg::Abs(y.addr), Arg::Abs(lx.pool)];
    calls(lx, &[(f, &args)])?;
    Ok(true)
}

/// `gx = gy w_tap` of a point convolution (overwritten).
pub(crate) fn backward_data(
    lx: &mut Lx,
    g: &Geo,
    gy: Val,
    gx: Val,
    (w, wp): (u64, &ParamPlan),
) -> Result<bool, JitError> {
    let Some((ky, kx)) = live_tap(g) else { return Ok(false) };
    if !vector(&gy) || !vector(&gx) || !weights_fit(g, wp) {
        return Ok(false);
    }
    let cpu = cnnc_kernels::cpu::best();
    let plan = FcPlan::new(gx.n, g.c, g.o, false, Act::NONE, cpu, lx.threads)
        .and_then(|p| p.with_strides(stride(&gx), stride(&gy)));
    let Ok(plan) = plan else { return Ok(false) };
    let wt = shared_buffer(lx, "point-convolution weights")?;
    extract(lx, g, (w, wp), ky * g.kw + kx, wt)?;
    let scratch = lx.alloc(plan.backward_scratch_len() * 4);
    let p = keep(lx, plan);
    let f = cnnc_kernels::ffi::cnnc_fc_backward_data as *const () as u64;
    let args = [Arg::Abs(p), Arg::Abs(gy.addr), Arg::Abs(wt), Arg::Abs(gx.addr), Arg::Aux(scratch), Arg::Abs(lx.pool)];
    calls(lx, &[(f, &args)])?;
    Ok(true)
}

/// `gw` of a point convolution in the weight's layout: the fc kernel's `gy^T x` on the live
/// tap, zero on every other.
pub(crate) fn backward_weights(
    lx: &mut Lx,
    g: &Geo,
    x: Val,
    gy: Val,
    gw: Val,
    wp: &ParamPlan,
) -> Result<bool, JitError> {
    let Some((ky, kx)) = live_tap(g) else { return Ok(false) };
    let len = wp.stored_len();
    if !vector(&x) || !vector(&gy) || !weights_fit(g, wp) || gw.bytes < 4 * len as u64 {
        return Ok(false);
    }
    let cpu = cnnc_kernels::cpu::best();
    let plan = FcPlan::new(x.n, g.c, g.o, false, Act::NONE, cpu, lx.threads)
        .and_then(|p| p.with_strides(stride(&x), stride(&gy)));
    let Ok(plan) = plan else { return Ok(false) };
    let oi = shared_buffer(lx, "point-convolution weight gradient")?;
    let p = keep(lx, plan);
    let f = cnnc_kernels::ffi::cnnc_fc_backward_weights as *const () as u64;
    let args = [Arg::Abs(p), Arg::Abs(gy.addr), Arg::Abs(x.addr), Arg::Abs(oi), Arg::Abs(0), Arg::Abs(lx.pool)];
    calls(lx, &[(f, &args)])?;
    scatter(lx, g, wp, ky * g.kw + kx, oi, gw.addr)
}

/// Emits a step writing `oi` (`o x c` floats at `src`) into tap `tap` of a weight-shaped
/// tensor at `dst`, every other tap zero. Tasks own whole output channels (plain) or blocks
/// of 16 (packed), so their stores never meet.
fn scatter(lx: &mut Lx, g: &Geo, wp: &ParamPlan, tap: usize, src: u64, dst: u64) -> Result<bool, JitError> {
    let (o, c, taps) = (g.o, g.c, g.kh * g.kw);
    let packed = matches!(wp.layout, Some(WeightLayout::OIhw16i16o | WeightLayout::OI16i16o));
    // Each unit's floats are contiguous in `dst`: a block row of 16 output channels (packed)
    // or one output channel (plain).
    let (units, unit_len, per_unit) = if packed { (o / 16, 16 * c * taps, 16) } else { (o, c * taps, 1) };
    let geo = *g;
    let tasks = lx.tasks(units, (o * c * taps * 2) as f64);
    lx.kernel(tasks, |fx| {
        let (lo, hi) = fx.task_range(units, tasks);
        let (s, d) = (fx.abs(src), fx.abs(dst));
        fx.for_range(lo, hi, 1, |fx, u| {
            // Zeros over the unit (its length is a multiple of 4 floats when packed; plain
            // units end with a scalar tail).
            let start = fx.muli(u, unit_len as i64);
            let zero4 = fx.fconst(F32X4, 0.0);
            let vec_end = unit_len - unit_len % 4;
            let end = fx.addi(start, vec_end as i64);
            fx.for_range(start, end, 4, |fx, i| {
                let a = fx.index(d, i, 4);
                fx.store(zero4, a, 0);
            });
            let zero = fx.fconst(F32, 0.0);
            for k in vec_end..unit_len {
                let i = fx.addi(start, k as i64);
                let a = fx.index(d, i, 4);
                fx.store(zero, a, 0);
            }
            // Then the live tap, from the fc kernel's rows.
            fx.for_n(0, per_unit, |fx, lane| {
                let base_o = fx.muli(u, per_unit);
                let oo = fx.add(base_o, lane);
                let srow = fx.index(s, oo, (c * 4) as i64);
                for_each_input(fx, &geo, packed, tap, (d, oo), |fx, w, w_off, i, i_off| {
                    let sa = fx.index(srow, i, 4);
                    let v = fx.load(F32, sa, i_off * 4);
                    fx.store(v, w, w_off);
                });
            });
        });
    })?;
    Ok(true)
}
