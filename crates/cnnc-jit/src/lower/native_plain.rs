//! Native mode on plain (`nchw`) maps, which the blocked kernels do not take: LeNet-sized
//! layers, and the first convolution of a network trained on RGB images.
//!
//! - Forward: the plain-input convolution kernel (`Oihw16o` weights); when the optimiser
//!   updates the weights, a step before it repacks them from the parameter every run.
//! - Input gradient of a stride-1 convolution: the same kernel, as the convolution of the
//!   output gradient (padded by `d (k - 1) - p`) with the weights transposed and rotated,
//!   `w'[i][o][kh - 1 - y][kw - 1 - x] = w[o][i][y][x]`, repacked every run.
//! - Weight gradient, `x` and `gy` plain: the kernels' plain-map weight gradient
//!   (`conv_plain_bwd`: register tiles over rows of both maps, no patch matrix).
//! - Weight gradient otherwise: `dw[o][k] = sum_p gy[o][p] col[k][p]`, `k` running over input
//!   channel x kernel row x kernel column and `p` over the batch's output pixels; the output gradient's
//!   rows (`gy` by channel, the images one after the other) and the input's patches (`im2col`)
//!   are copied into buffers of the node's, each row padded with zeros to a multiple of 16,
//!   and the fully connected kernel's dot products (`y[n][o] = sum_i w[o][i] x[n][i]` with
//!   `x` the gradient rows, `w` the patch rows) give `dw` in the weight's `oihw` order, chunk
//!   of images by chunk. The patch positions that fall in the padding are never written, so
//!   they stay zero.
//!
//! Each function returns `false` when the node does not fit, and the caller lowers the
//! portable code instead.

use super::conv::Geo;
use super::native::{Arg, call, emit_call, keep};
use super::{Lx, Val};
use crate::emit::{F32, F32X4, Fx, I32, I64};
use crate::error::JitError;
use cnnc_ir::plan::ParamPlan;
use cnnc_ir::{Layout, WeightLayout};
use cnnc_kernels::conv::{ConvArgs, ConvShape, Epilogue};
use cnnc_kernels::conv_plain::PlainConvPlan;
use cnnc_kernels::conv_plain_bwd::{PlainBwdWeightsArgs, PlainBwdWeightsPlan};
use cnnc_kernels::fc::FcPlan;
use cnnc_kernels::view::Layout as KLayout;
use cranelift_codegen::ir::{InstBuilder, Value};

/// The most bytes the weight gradient's row copies (or the plain kernel's scratch) may take.
const MAX_COPIES: usize = 64 << 20;
/// Bytes of one chunk's patch and gradient rows: what a core's second-level cache holds
/// while the kernel reads them again for every output channel.
const CACHE_BUDGET: usize = 512 << 10;

/// Whether a parameter is stored as plain `oihw` (or `oi`).
fn plain_weights(wp: &ParamPlan) -> bool {
    wp.layout.is_none_or(|l| matches!(l, WeightLayout::Oihw | WeightLayout::Oi))
}

/// Emits a step that repacks `oihw` weights (`o x i x kh x kw` floats at `src`) into
/// `Oihw16o` at `dst`, or, with `transposed`, the transposed and rotated weights (`i x o x kh
/// x kw`) into `Oihw16o` of their own shape. Lanes past the output channels are never
/// written: the buffer was zeroed when it was made.
pub(crate) fn repack(lx: &mut Lx, src: u64, dims: [usize; 4], dst: u64, transposed: bool) -> Result<(), JitError> {
    let [o, i, kh, kw] = dims;
    let taps = (kh * kw) as i64;
    // Rows (packed output channels) and the inner length of one row.
    let (rows, inner) = if transposed { (i, o) } else { (o, i) };
    lx.kernel(1, |fx| {
        let (s, d) = (fx.abs(src), fx.abs(dst));
        fx.for_n(0, rows as i64, |fx, r| {
            let blk = fx.udiv(r, 16);
            let lane = fx.urem(r, 16);
            let blk_off = fx.muli(blk, inner as i64 * taps * 16);
            let dbase = fx.add(blk_off, lane);
            fx.for_n(0, inner as i64, |fx, c| {
                let it0 = fx.muli(c, taps);
                // The source of packed element (r, c, t): (r, c, t) itself, or (c, r, T - 1 - t).
                let (row, col) = if transposed { (c, r) } else { (r, c) };
                let srow = fx.muli(row, (i as i64) * taps);
                let sc = fx.muli(col, taps);
                let sbase = fx.add(srow, sc);
                fx.for_n(0, taps, |fx, t| {
                    let st = if transposed {
                        let back = fx.int(taps - 1);
                        fx.sub(back, t)
                    } else {
                        t
                    };
                    let si = fx.add(sbase, st);
                    let sa = fx.index(s, si, 4);
                    let v = fx.load(F32, sa, 0);
                    let di = fx.add(it0, t);
                    let di = fx.mad(di, 16, dbase);
                    let da = fx.index(d, di, 4);
                    fx.store(v, da, 0);
                });
            });
        });
    })
}

/// The kernels' layout of a plain or blocked value.
fn klayout(v: &Val) -> KLayout {
    if v.layout == Layout::Plain { KLayout::Nchw } else { KLayout::NChw16c }
}

/// `gx` of a stride-1 convolution from a plain `gy`: the forward kernel on the padded gradient
/// with the transposed, rotated weights (see the module comment).
pub(crate) fn backward_data(
    lx: &mut Lx,
    g: &Geo,
    gy: Val,
    gx: Val,
    (w, wp): (u64, &ParamPlan),
) -> Result<bool, JitError> {
    let Some(pad) = g.transposed_pad() else { return Ok(false) };
    if gy.layout != Layout::Plain || g.groups != 1 || g.stride != [1, 1] || !plain_weights(wp) {
        return Ok(false);
    }
    let s = ConvShape {
        n: gx.n,
        ic: g.o,
        ih: g.oh,
        iw: g.ow,
        oc: g.c,
        kh: g.kh,
        kw: g.kw,
        stride: [1, 1],
        pad,
        dilation: g.dil,
        groups: 1,
    };
    if s.out_hw().ok() != Some([g.h, g.w]) {
        return Ok(false);
    }
    let cpu = cnnc_kernels::cpu::best();
    let Ok(plan) = PlainConvPlan::new(s, Epilogue::NONE, klayout(&gx), cpu, lx.threads) else { return Ok(false) };
    let Ok(len) = cnnc_kernels::conv_plain::packed_weight_len(&s) else { return Ok(false) };
    let (_, packed) = lx.buffer(len * 4)?;
    repack(lx, w, [g.o, g.c, g.kh, g.kw], packed, true)?;
    let args = ConvArgs {
        x: gy.addr as *const f32,
        x_bs: (gy.bs / 4) as usize,
        w: packed as *const f32,
        bias: std::ptr::null(),
        scale: std::ptr::null(),
        shift: std::ptr::null(),
        res: std::ptr::null(),
        res_bs: 0,
        y: gx.addr as *mut f32,
        y_bs: (gx.bs / 4) as usize,
    };
    let scratch = lx.alloc(plan.scratch_len(lx.threads) * 4);
    let (p, a) = (keep(lx, plan), keep(lx, args));
    let f = cnnc_kernels::ffi::cnnc_conv_plain_forward as *const () as u64;
    call(lx, f, &[Arg::Abs(p), Arg::Abs(a), Arg::Aux(scratch), Arg::Abs(lx.pool)])?;
    Ok(true)
}

/// For each tap of one axis, the output positions `lo..hi` whose input `o s - p + t d` lies in
/// `0..size`, as `[lo, hi]` pairs.
fn valid_outputs(out: usize, size: usize, k: usize, s: usize, p: usize, d: usize) -> Vec<i32> {
    let mut t = Vec::with_capacity(2 * k);
    for tap in 0..k {
        let inside = |o: usize| {
            let i = (o * s + tap * d) as isize - p as isize;
            i >= 0 && (i as usize) < size
        };
        let lo = (0..out).find(|&o| inside(o)).unwrap_or(out);
        let hi = (lo..out).find(|&o| !inside(o)).unwrap_or(out);
        t.extend([lo as i32, hi as i32]);
    }
    t
}

fn load_pair(fx: &mut Fx, tab: Value, i: Value) -> (Value, Value) {
    let a = fx.index(tab, i, 8);
    let lo = fx.load_ro(I32, a, 0);
    let hi = fx.load_ro(I32, a, 4);
    (fx.b.ins().sextend(I64, lo), fx.b.ins().sextend(I64, hi))
}

/// Copies `count` floats from `src` (every `step` floats) to consecutive floats at `dst`,
/// four at a time where `step` is 1.
fn copy_run(fx: &mut Fx, dst: Value, src: Value, lo: Value, hi: Value, step: i64) {
    if step == 1 {
        let n = fx.sub(hi, lo);
        let whole = fx.b.ins().band_imm_s(n, -4);
        let vend = fx.add(lo, whole);
        fx.for_range(lo, vend, 4, |fx, j| {
            let sa = fx.index(src, j, 4);
            let v = fx.load(F32X4, sa, 0);
            let da = fx.index(dst, j, 4);
            fx.store(v, da, 0);
        });
        fx.for_range(vend, hi, 1, |fx, j| {
            let sa = fx.index(src, j, 4);
            let v = fx.load(F32, sa, 0);
            let da = fx.index(dst, j, 4);
            fx.store(v, da, 0);
        });
    } else {
        fx.for_range(lo, hi, 1, |fx, j| {
            let sa = fx.index(src, j, 4 * step);
            let v = fx.load(F32, sa, 0);
            let da = fx.index(dst, j, 4);
            fx.store(v, da, 0);
        });
    }
}

/// `gw` (plain `oihw`) of a one-group convolution: the kernels' plain-map weight gradient
/// when `x` and `gy` are plain, else patch rows and the fully connected kernel.
pub(crate) fn backward_weights(
    lx: &mut Lx,
    g: &Geo,
    x: Val,
    gy: Val,
    gw: Val,
    wp: &ParamPlan,
) -> Result<bool, JitError> {
    if g.groups != 1 || !plain_weights(wp) || gw.bytes < (4 * g.o * g.c * g.kh * g.kw) as u64 {
        return Ok(false);
    }
    if x.layout == Layout::Plain && gy.layout == Layout::Plain && plain_backward_weights(lx, g, x, gy, gw)? {
        return Ok(true);
    }
    patch_backward_weights(lx, g, x, gy, gw)
}

/// The kernels' plain-map weight gradient (no patch rows): both phases in one call; `false`
/// when its scratch would exceed [`MAX_COPIES`].
fn plain_backward_weights(lx: &mut Lx, g: &Geo, x: Val, gy: Val, gw: Val) -> Result<bool, JitError> {
    let s = ConvShape {
        n: x.n,
        ic: g.c,
        ih: g.h,
        iw: g.w,
        oc: g.o,
        kh: g.kh,
        kw: g.kw,
        stride: g.stride,
        pad: g.pad,
        dilation: g.dil,
        groups: 1,
    };
    if s.out_hw().ok() != Some([g.oh, g.ow]) {
        return Ok(false);
    }
    let cpu = cnnc_kernels::cpu::best();
    let Ok(plan) = PlainBwdWeightsPlan::new(s, cpu, lx.threads) else { return Ok(false) };
    // The partial sums are 16 floats per weight and image chunk: large layers take the patch rows.
    if plan.scratch_len(lx.threads) * 4 > MAX_COPIES {
        return Ok(false);
    }
    let args = PlainBwdWeightsArgs {
        x: x.addr as *const f32,
        x_bs: (x.bs / 4) as usize,
        gy: gy.addr as *const f32,
        gy_bs: (gy.bs / 4) as usize,
        gw: gw.addr as *mut f32,
    };
    let scratch = lx.alloc(plan.scratch_len(lx.threads) * 4);
    let (p, a) = (keep(lx, plan), keep(lx, args));
    let f = cnnc_kernels::ffi::cnnc_conv_plain_backward_weights as *const () as u64;
    call(lx, f, &[Arg::Abs(p), Arg::Abs(a), Arg::Aux(scratch), Arg::Abs(lx.pool)])?;
    Ok(true)
}

/// `gw` through patch rows and the fully connected kernel (see the module comment), any
/// layout of `x` and `gy`. The batch is cut
/// into chunks of images, one task each: the task copies its images' patch and gradient rows
/// (sized to stay in the core's cache), then runs the kernel on them serially, writing a
/// partial gradient; a last step sums the partials (one chunk writes `gw` itself).
fn patch_backward_weights(lx: &mut Lx, g: &Geo, x: Val, gy: Val, gw: Val) -> Result<bool, JitError> {
    let taps = g.kh * g.kw;
    let k = g.c * taps;
    let ohw = g.oh * g.ow;
    let ipc = (CACHE_BUDGET / ((k + g.o) * ohw * 4)).clamp(1, x.n).min(x.n.div_ceil(lx.threads));
    let chunks = x.n.div_ceil(ipc);
    let row = (ipc * ohw).div_ceil(16) * 16;
    let copies = chunks * (k + g.o) * row * 4;
    if copies > MAX_COPIES {
        return Ok(false);
    }
    let cpu = cnnc_kernels::cpu::best();
    let Ok(plan) = FcPlan::new(g.o, row, k, false, cnnc_kernels::act::Act::NONE, cpu, lx.threads) else {
        return Ok(false);
    };
    let (_, cols) = lx.buffer(chunks * k * row * 4)?;
    let (_, rows) = lx.buffer(chunks * g.o * row * 4)?;
    let parts = if chunks > 1 { lx.buffer(chunks * g.o * k * 4)?.1 } else { gw.addr };
    let ys = lx.table(&valid_outputs(g.oh, g.h, g.kh, g.stride[0], g.pad[0], g.dil[0]));
    let xs = lx.table(&valid_outputs(g.ow, g.w, g.kw, g.stride[1], g.pad[1], g.dil[1]));
    let p = keep(lx, plan);
    let (g, pool, n) = (*g, lx.pool, x.n);
    let f = cnnc_kernels::ffi::cnnc_fc_forward as *const () as u64;
    lx.kernel(chunks, |fx| {
        let q = fx.task;
        let n0 = fx.muli(q, ipc as i64);
        let n1 = fx.addi(n0, ipc as i64);
        let nn = fx.int(n as i64);
        let n1 = fx.smin(n1, nn);
        let (yt, xt) = (fx.aux(ys), fx.aux(xs));
        let cb = fx.abs(cols);
        let colq = fx.index(cb, q, (k * row * 4) as i64);
        let rb = fx.abs(rows);
        let rowq = fx.index(rb, q, (g.o * row * 4) as i64);
        // The patch rows of the chunk's images.
        fx.for_n(0, k as i64, |fx, r| {
            let ch = fx.udiv(r, taps as i64);
            let t = fx.urem(r, taps as i64);
            let ky = fx.udiv(t, g.kw as i64);
            let kx = fx.urem(t, g.kw as i64);
            let (oy_lo, oy_hi) = load_pair(fx, yt, ky);
            let (ox_lo, ox_hi) = load_pair(fx, xt, kx);
            let dst_row = fx.index(colq, r, (row * 4) as i64);
            // Input column and row of output (0, 0) through this tap (may be negative).
            let kxd = fx.muli(kx, g.dil[1] as i64);
            let ix0 = fx.addi(kxd, -(g.pad[1] as i64));
            let kyd = fx.muli(ky, g.dil[0] as i64);
            let iy0 = fx.addi(kyd, -(g.pad[0] as i64));
            fx.for_range(n0, n1, 1, |fx, img| {
                let plane = x.plane(fx, img, ch);
                let local = fx.sub(img, n0);
                let first = fx.muli(local, ohw as i64);
                fx.for_range(oy_lo, oy_hi, 1, |fx, oy| {
                    let iy = fx.mad(oy, g.stride[0] as i64, iy0);
                    let src_row = fx.index(plane, iy, (g.w as i64) * 4 * x.es());
                    // src(ox) = src_row + (ox * sw + ix0) * es floats: the base shifted so that
                    // the copy indexes by ox.
                    let shift = fx.muli(ix0, 4 * x.es());
                    let src = fx.add(src_row, shift);
                    let p0 = fx.mad(oy, g.ow as i64, first);
                    let dst = fx.index(dst_row, p0, 4);
                    copy_run(fx, dst, src, ox_lo, ox_hi, g.stride[1] as i64 * x.es());
                });
            });
        });
        // The gradient rows of the chunk's images.
        fx.for_n(0, g.o as i64, |fx, o| {
            let dst_row = fx.index(rowq, o, (row * 4) as i64);
            fx.for_range(n0, n1, 1, |fx, img| {
                let src = gy.plane(fx, img, o);
                let local = fx.sub(img, n0);
                let p0 = fx.muli(local, ohw as i64);
                let dst = fx.index(dst_row, p0, 4);
                let (zero, end) = (fx.int(0), fx.int(ohw as i64));
                copy_run(fx, dst, src, zero, end, gy.es());
            });
        });
        let pb = fx.abs(parts);
        let out = fx.index(pb, q, (g.o * k * 4) as i64);
        let (pp, zero, pl) = (fx.abs(p), fx.int(0), fx.abs(pool));
        emit_call(fx, f, &[pp, rowq, colq, zero, out, pl]);
    })?;
    if chunks > 1 {
        super::native_bwd::sum_parts(lx, parts, chunks, g.o * k, gw.addr)?;
    }
    Ok(true)
}
