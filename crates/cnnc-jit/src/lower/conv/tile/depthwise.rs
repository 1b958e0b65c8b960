//! Depthwise convolutions (one input and one output channel a group, `Goihw16g` weights) on
//! blocked maps as F32X4 register tiles: each lane is a channel of its own, so a tile is up
//! to 8 output pixels of one row times four channels, every product a vector of the input
//! pixel's channels times the tap's weights of those channels (no broadcasts). The forward
//! pass, with its epilogue, also serves the input gradient (the output gradient, spread out by
//! the stride when strided, under the kernel rotated by 180 degrees); the weight gradient is a
//! reduction per `(channel block, tap)` over the batch's pixels, one accumulator per quarter of
//! the block.

use super::{Cx, F32X4, Reads, Row, TASKS_PER_THREAD, TileShape, accumulators, clip, lane_mask};
use super::{each_tile, tap_bounds, unit_row};
use super::{first_channel, segments, store};
use crate::emit::Fx;
use crate::error::JitError;
use crate::lower::conv::{ConvForward, Geo};
use crate::lower::{Lx, Val};
use cnnc_ir::plan::ParamPlan;
use cnnc_ir::{Layout, WeightLayout};
use cranelift_codegen::ir::condcodes::IntCC;
use cranelift_codegen::ir::{InstBuilder, Value};
use cranelift_frontend::Variable;

/// 8 pixels x 4 channels: 8 accumulators, the tap's weight vector and an input vector.
const SHAPE: TileShape = TileShape { pixels: 8, vecs: 1 };

/// Whether a convolution is depthwise with the layouts these tiles read: blocked maps, and
/// `Goihw16g` weights or, when the channels are not a multiple of 16, `oihw` ones (repacked,
/// see [`packed_weights`]).
pub(super) fn fits(g: &Geo, x: &Val, y: &Val, wp: &ParamPlan) -> bool {
    matches!(wp.layout, None | Some(WeightLayout::Goihw16g | WeightLayout::Oihw))
        && g.groups == g.c
        && g.o == g.c
        && wp.dims[..] == [g.o, 1, g.kh, g.kw]
        && x.layout == Layout::Blocked16
        && y.layout == Layout::Blocked16
        && x.bytes < i32::MAX as u64
}

/// The weights as the tiles read them, `[C/16][taps][16]` (`Goihw16g`): the parameter
/// itself, or its `oihw` repacked (as the `Oihw16o` weights of a convolution of one input
/// channel into `C`, which is that layout) into a buffer of their own, whenever weights load or,
/// when the optimiser updates them, by a kernel before every run. Their address.
pub(super) fn packed_weights(lx: &mut Lx, g: &Geo, w: u64, wp: &ParamPlan) -> Result<u64, JitError> {
    if wp.layout == Some(WeightLayout::Goihw16g) {
        return Ok(w);
    }
    super::plain_input_weights(lx, &Geo { c: 1, groups: 1, ..*g }, w, wp)
}

/// `wp` as stored in `Goihw16g`: how [`packed_weights`] lie.
pub(super) fn packed_plan(wp: &ParamPlan) -> ParamPlan {
    ParamPlan { layout: Some(WeightLayout::Goihw16g), ..wp.clone() }
}

/// A depthwise forward convolution as tiles, when it fits: returns whether it did.
pub(crate) fn forward(lx: &mut Lx, op: &ConvForward) -> Result<bool, JitError> {
    let ConvForward { g, x, y, res, w, wp, bias, act } = *op;
    if !fits(g, &x, &y, wp) || g.oh * g.ow == 0 || res.is_some_and(|r| r.layout != y.layout) {
        return Ok(false);
    }
    let w = packed_weights(lx, g, w, wp)?;
    let (taps, hw, blocks) = (g.kh * g.kw, g.h * g.w, g.c.div_ceil(16));
    let Some(w_base) = (0..blocks).map(|b| i32::try_from(b * taps * 16).ok()).collect::<Option<Vec<_>>>() else {
        return Ok(false);
    };
    let Some(x_base) = (0..blocks).map(|b| i32::try_from(b * hw * 16).ok()).collect::<Option<Vec<_>>>() else {
        return Ok(false);
    };
    // Each block of output channels reads its own input block, one channel a lane.
    let reads = Reads {
        chunks: 1,
        chunk_len: 1,
        x_chunk: 0,
        w_chunk: 0,
        x_chan: 0,
        w_chan: 0,
        x_pix: 16,
        x_row: 16 * g.w as i64,
        w_tap: 16,
        w_base,
        x_base,
        x_part: None,
    };
    let cx = Cx { g: *g, t: *g, shape: SHAPE, x, y, res, bias, act, reads };
    emit(lx, &cx, w)?;
    Ok(true)
}

/// Emits the kernel: one task per run of `(image, block of 16 channels, output row)` units,
/// each unit the row's tiles for each quarter of the block.
fn emit(lx: &mut Lx, cx: &Cx, w: u64) -> Result<(), JitError> {
    let t = cx.t;
    let blocks = t.c.div_ceil(16);
    let units = cx.y.n * blocks * t.oh;
    let tasks = match lx.tasks(units, cx.g.macs(cx.y.n)) {
        1 => 1,
        _ => units.min(lx.threads * TASKS_PER_THREAD),
    };
    let w_base = lx.table(&cx.reads.w_base);
    let x_base = lx.table(&cx.reads.x_base);
    let rows = lx.table(&clip(t.oh, t.h, t.kh, t.stride[0], t.pad[0], t.dil[0]));
    let mask = lane_mask(lx, cx);
    let segs = segments(&t, SHAPE.pixels);
    lx.kernel(tasks, |fx| {
        let (lo, hi) = fx.task_range(units, tasks);
        let (wbt, xbt, rt) = (fx.aux(w_base), fx.aux(x_base), fx.aux(rows));
        let mask = mask.map(|m| fx.aux(m));
        let w_abs = fx.abs(w);
        fx.for_range(lo, hi, 1, |fx, u| {
            let row = unit_row(fx, cx, u, blocks, [wbt, xbt, rt], w_abs, mask, None);
            fx.for_n(0, 4, |fx, quarter| {
                each_tile(fx, &segs, t.kw, &mut |fx, ox0, taps| tile(fx, cx, &row, quarter, ox0, taps));
            });
        });
    })
}

/// One tile: `taps.len()` pixels from output column `ox0`, channels `quarter * 4 ..` of the
/// row's block; `taps[r][kx]` says which taps to read.
fn tile(fx: &mut Fx, cx: &Cx, row: &Row, quarter: Value, ox0: Value, taps: &[Vec<bool>]) {
    let (t, rd) = (&cx.t, &cx.reads);
    let ch0 = first_channel(fx, cx, row.out.b, quarter);
    let acc = accumulators(fx, cx, ch0, taps.len());
    let ix0 = fx.muli(ox0, t.stride[1] as i64 * rd.x_pix);
    let xq = fx.index(row.xrow, ix0, 4);
    let xq = fx.index(xq, quarter, 16);
    let wq = fx.index(row.wblk, quarter, 16);
    fx.for_range(row.ky_lo, row.ky_hi, 1, |fx, ky| {
        let xk = fx.index(xq, ky, 4 * t.dil[0] as i64 * rd.x_row);
        let wk = fx.index(wq, ky, 4 * t.kw as i64 * rd.w_tap);
        for kx in 0..t.kw {
            if taps.iter().all(|r| !r[kx]) {
                continue;
            }
            let wv = fx.load_ro(F32X4, wk, 4 * kx as i64 * rd.w_tap);
            for (r, tr) in taps.iter().enumerate() {
                if !tr[kx] {
                    continue;
                }
                let ix = (r * t.stride[1] + kx * t.dil[1]) as i64 - t.pad[1] as i64;
                let xv = fx.load(F32X4, xk, 4 * ix * rd.x_pix);
                let cur = fx.get(acc[r][0]);
                let nv = fx.fma(xv, wv, cur);
                fx.set(acc[r][0], nv);
            }
        }
    });
    let pix = fx.mad(row.oy, t.ow as i64, ox0);
    store(fx, cx, &row.out, ch0, pix, &acc);
}

/// The weights of a depthwise convolution rotated by 180 degrees (`[C/16][taps][16]`, tap `t`
/// from tap `taps - 1 - t`) into `dst`, by a kernel before every use: the input gradient's
/// kernel.
pub(super) fn rotate(lx: &mut Lx, src: u64, dst: u64, blocks: usize, taps: usize) -> Result<(), JitError> {
    let units = blocks * taps;
    lx.kernel(1, |fx| {
        let (s, d) = (fx.abs(src), fx.abs(dst));
        fx.for_n(0, units as i64, |fx, u| {
            let tap = fx.urem(u, taps as i64);
            let b = fx.udiv(u, taps as i64);
            let back = fx.int(taps as i64 - 1);
            let from_tap = fx.sub(back, tap);
            let from = fx.mad(b, taps as i64, from_tap);
            let from = fx.index(s, from, 64);
            let to = fx.index(d, u, 64);
            for v in 0..4 {
                let x = fx.load_ro(F32X4, from, 16 * v);
                fx.store(x, to, 16 * v);
            }
        });
    })
}

/// The weight gradient of a depthwise convolution on blocked maps, summed over the batch, in
/// the weight's layout: per `(block, tap)` four accumulators (the block's quarters) over every
/// output pixel whose input for that tap lies inside (rows and columns clipped by a table per
/// tap), stored as `[C/16][taps][16]` (every float written, padding lanes as zeros: the maps'
/// padding is zero), or into `oihw` lane by lane (the padding lanes not stored). Returns
/// whether it did.
pub(crate) fn backward_weight(lx: &mut Lx, g: &Geo, [x, gy, gw]: [Val; 3], wp: &ParamPlan) -> Result<bool, JitError> {
    if !fits(g, &x, &gy, wp) || gw.bytes < 4 * wp.stored_len() as u64 || g.oh * g.ow == 0 {
        return Ok(false);
    }
    let (blocks, taps) = (g.c.div_ceil(16), g.kh * g.kw);
    let packed = wp.layout == Some(WeightLayout::Goihw16g);
    let table = lx.table(&super::backward::tap_bounds(g));
    let units = blocks * taps;
    let tasks = match lx.tasks(units, g.macs(x.n)) {
        1 => 1,
        _ => units.min(lx.threads * TASKS_PER_THREAD),
    };
    let g = *g;
    let (hw, ohw) = ((g.h * g.w) as i64, (g.oh * g.ow) as i64);
    lx.kernel(tasks, |fx| {
        let (lo, hi) = fx.task_range(units, tasks);
        let bt = fx.aux(table);
        let dst = fx.abs(gw.addr);
        fx.for_range(lo, hi, 1, |fx, u| {
            let tap = fx.urem(u, taps as i64);
            let b = fx.udiv(u, taps as i64);
            let (ky, kx, [oy_lo, oy_hi, ox_lo, ox_hi]) = tap_bounds(fx, bt, tap, g.kw);
            let zero = fx.fconst(F32X4, 0.0);
            let acc: Vec<Variable> = (0..4).map(|_| fx.var_init(F32X4, zero)).collect();
            // The input (in pixels) at output pixel (0, 0) for this tap, in the block.
            let dy = fx.muli(ky, g.dil[0] as i64);
            let dx = fx.muli(kx, g.dil[1] as i64);
            let tap_off = fx.mad(dy, g.w as i64, dx);
            let tap_off = fx.addi(tap_off, -((g.pad[0] * g.w + g.pad[1]) as i64));
            let xc = fx.mad(b, hw, tap_off);
            let gyc = fx.muli(b, ohw);
            fx.for_n(0, x.n as i64, |fx, n| {
                let ximg = x.image(fx, n);
                let xb = fx.index(ximg, xc, 64);
                let gimg = gy.image(fx, n);
                let gb = fx.index(gimg, gyc, 64);
                fx.for_range(oy_lo, oy_hi, 1, |fx, oy| {
                    let xrow = fx.index(xb, oy, 64 * (g.stride[0] * g.w) as i64);
                    let grow = fx.index(gb, oy, 64 * g.ow as i64);
                    fx.for_range(ox_lo, ox_hi, 1, |fx, ox| {
                        let xp = fx.index(xrow, ox, 64 * g.stride[1] as i64);
                        let gp = fx.index(grow, ox, 64);
                        for (v, &a) in acc.iter().enumerate() {
                            let xv = fx.load(F32X4, xp, 16 * v as i64);
                            let gv = fx.load(F32X4, gp, 16 * v as i64);
                            let cur = fx.get(a);
                            let nv = fx.fma(xv, gv, cur);
                            fx.set(a, nv);
                        }
                    });
                });
            });
            let sums: Vec<Value> = acc.iter().map(|&a| fx.get(a)).collect();
            if packed {
                let wa = fx.index(dst, u, 64);
                for (v, &s) in sums.iter().enumerate() {
                    fx.store(s, wa, 16 * v as i64);
                }
            } else {
                store_oihw(fx, g.c, taps, dst, [b, tap], &sums);
            }
        });
    })?;
    Ok(true)
}

/// A `(block, tap)` unit's 16 channel sums into `oihw` (`[C][taps]`): channel `16 b + l`,
/// those past the last `c` not stored.
fn store_oihw(fx: &mut Fx, c: usize, taps: usize, dst: Value, [b, tap]: [Value; 2], sums: &[Value]) {
    let c0 = fx.muli(b, 16);
    let at = fx.mad(c0, taps as i64, tap);
    let wa = fx.index(dst, at, 4);
    for l in 0..16 {
        let store = |fx: &mut Fx| {
            let e = fx.b.ins().extractlane(sums[l / 4], (l % 4) as u8);
            fx.store(e, wa, 4 * (l * taps) as i64);
        };
        if c.is_multiple_of(16) {
            store(fx);
        } else {
            let ch = fx.addi(c0, l as i64);
            let real = fx.icmpi(IntCC::SignedLessThan, ch, c as i64);
            fx.if_then(real, store);
        }
    }
}
