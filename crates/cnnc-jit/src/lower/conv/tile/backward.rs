//! The backward passes of a convolution on blocked maps as register tiles: the input
//! gradient (stride 1) as the forward tiles on transposed, rotated weights, and the weight
//! gradient as tiles of 4 input x 8 output channels of one kernel tap, reduced over the
//! batch's pixels.

use super::{Geo, PARTS, TASKS_PER_THREAD, TILE_CH, VECS, forward, load_i};
use crate::emit::{F32, F32X4, Fx};
use crate::error::JitError;
use crate::lower::conv::ConvForward;
use crate::lower::{Lx, Val};
use cnnc_ir::plan::ParamPlan;
use cnnc_ir::{Layout, WeightLayout};
use cranelift_codegen::ir::Value;
use cranelift_frontend::Variable;

/// The input gradient of a stride-1 convolution or a matrix product on blocked maps
/// (`OIhw16i16o` or `OI16i16o` weights, one group) as register tiles: the forward convolution of `gy` with the weights transposed
/// (input and output channels swapped) and rotated by 180 degrees, padded by
/// `(k - 1) dilation - pad`. The transposed weights are rewritten from the parameter by a
/// kernel of their own before every use (the optimiser changes them each step). Returns
/// whether it did.
pub(crate) fn backward_data(
    lx: &mut Lx,
    g: &Geo,
    gy: Val,
    gx: Val,
    (w, wp): (u64, &ParamPlan),
) -> Result<bool, JitError> {
    let Some(pad) = g.transposed_pad() else { return Ok(false) };
    let blocked = matches!(wp.layout, Some(WeightLayout::OIhw16i16o | WeightLayout::OI16i16o));
    let dims_fit = matches!(wp.dims[..], [o, c, kh, kw] if [o, c, kh, kw] == [g.o, g.c, g.kh, g.kw])
        || matches!(wp.dims[..], [o, c] if [o, c, g.kh, g.kw] == [g.o, g.c, 1, 1]);
    let fits = blocked
        && dims_fit
        && g.groups == 1
        && g.stride == [1, 1]
        && gy.layout == Layout::Blocked16
        && gx.layout == Layout::Blocked16;
    if !fits {
        return Ok(false);
    }
    // `OI16i16o` is `OIhw16i16o` with one tap.
    let turned = ParamPlan { dims: vec![g.c, g.o, g.kh, g.kw], layout: Some(WeightLayout::OIhw16i16o), ..wp.clone() };
    let (_, dst) = lx.buffer(turned.stored_len().div_ceil(16) * 64)?;
    transpose_rotate(lx, w, dst, [g.o.div_ceil(16), g.c.div_ceil(16)], g.kh * g.kw)?;
    let fwd = Geo { c: g.o, h: g.oh, w: g.ow, o: g.c, oh: g.h, ow: g.w, pad, ..*g };
    let op = ConvForward { g: &fwd, x: gy, y: gx, res: None, w: dst, wp: &turned, bias: None, act: None };
    forward(lx, &op)
}

/// Writes the `OIhw16i16o` weight `[O/16][C/16][taps][16 c][16 o]` at `src` as
/// `[C/16][O/16][taps][16 o][16 c]` at `dst`, tap `t` from tap `taps - 1 - t`.
fn transpose_rotate(lx: &mut Lx, src: u64, dst: u64, [ob, cb]: [usize; 2], taps: usize) -> Result<(), JitError> {
    let blocks = ob * cb * taps;
    let tasks = lx.tasks(blocks, (blocks * 256) as f64);
    lx.kernel(tasks, |fx| {
        let (lo, hi) = fx.task_range(blocks, tasks);
        let (s, d) = (fx.abs(src), fx.abs(dst));
        fx.for_range(lo, hi, 1, |fx, u| {
            // u = (c block x O/16 + o block) x taps + tap, in the destination's order.
            let tap = fx.urem(u, taps as i64);
            let rest = fx.udiv(u, taps as i64);
            let o_blk = fx.urem(rest, ob as i64);
            let c_blk = fx.udiv(rest, ob as i64);
            let back = fx.int(taps as i64 - 1);
            let src_tap = fx.sub(back, tap);
            let sb = fx.mad(o_blk, cb as i64, c_blk);
            let sb = fx.mad(sb, taps as i64, src_tap);
            let from = fx.index(s, sb, 4 * 256);
            let to = fx.index(d, u, 4 * 256);
            fx.for_n(0, 16, |fx, c| {
                let row = fx.index(from, c, 4 * 16);
                let col = fx.index(to, c, 4);
                for o in 0..16 {
                    let v = fx.load_ro(F32, row, 4 * o);
                    fx.store(v, col, 4 * 16 * o);
                }
            });
        });
    })
}

/// The weight gradient of a convolution on blocked maps (`OIhw16i16o`, one group), summed
/// over the batch, as register tiles: each tile is 4 input channels x 8 output channels of one
/// kernel tap, reduced over every output pixel whose input for that tap lies inside the map
/// (rows and columns clipped by a table per tap), one broadcast input value per channel times
/// two vectors of `gy`. Every stored float is written (padding lanes as zeros: the operands'
/// padding is zero). Returns whether it did.
pub(crate) fn backward_weight(
    lx: &mut Lx,
    g: &Geo,
    x: Val,
    gy: Val,
    gw: Val,
    wp: &ParamPlan,
) -> Result<bool, JitError> {
    let fits = matches!(wp.layout, Some(WeightLayout::OIhw16i16o | WeightLayout::OI16i16o))
        && g.groups == 1
        && x.layout == Layout::Blocked16
        && gy.layout == Layout::Blocked16
        && gw.bytes >= 4 * wp.stored_len() as u64
        && g.oh * g.ow > 0;
    if !fits {
        return Ok(false);
    }
    let (ob, cb, taps) = (g.o.div_ceil(16), g.c.div_ceil(16), g.kh * g.kw);
    // Per tap: the output rows and columns whose input lies inside.
    let mut bounds = Vec::with_capacity(4 * taps);
    for ky in 0..g.kh {
        for kx in 0..g.kw {
            let rows = inside_range(g.oh, g.h, ky, g.stride[0], g.pad[0], g.dil[0]);
            let cols = inside_range(g.ow, g.w, kx, g.stride[1], g.pad[1], g.dil[1]);
            bounds.extend([rows.0, rows.1, cols.0, cols.1].map(|v| v as i32));
        }
    }
    let table = lx.table(&bounds);
    // Tiles: (o block, c block, tap, quad of input channels, half of the output block).
    let quads = 16 / 4;
    let units = ob * cb * taps * quads * PARTS;
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
            let part = fx.urem(u, PARTS as i64);
            let u2 = fx.udiv(u, PARTS as i64);
            let quad = fx.urem(u2, quads as i64);
            let blk = fx.udiv(u2, quads as i64); // (o block x C/16 + c block) x taps + tap
            let tap = fx.urem(blk, taps as i64);
            let pair = fx.udiv(blk, taps as i64);
            let c_blk = fx.urem(pair, cb as i64);
            let o_blk = fx.udiv(pair, cb as i64);
            let ky = fx.udiv(tap, g.kw as i64);
            let kx = fx.urem(tap, g.kw as i64);
            let b4 = fx.muli(tap, 4);
            let bound = |fx: &mut Fx, k: i64| {
                let i = fx.addi(b4, k);
                load_i(fx, bt, i)
            };
            let (oy_lo, oy_hi, ox_lo, ox_hi) = (bound(fx, 0), bound(fx, 1), bound(fx, 2), bound(fx, 3));
            let zero = fx.fconst(F32X4, 0.0);
            let acc: Vec<Vec<Variable>> =
                (0..4).map(|_| (0..VECS).map(|_| fx.var_init(F32X4, zero)).collect()).collect();
            // The input at output pixel (0, 0) for this tap, at the quad's first channel, and
            // the output gradient's block at the tile's half.
            let dy = fx.muli(ky, g.dil[0] as i64);
            let dx = fx.muli(kx, g.dil[1] as i64);
            let tap_off = fx.mad(dy, g.w as i64, dx);
            let tap_off = fx.addi(tap_off, -((g.pad[0] * g.w + g.pad[1]) as i64));
            let xc = fx.mad(c_blk, hw, tap_off);
            let xc = fx.muli(xc, 16);
            let q4 = fx.muli(quad, 4);
            let xc = fx.add(xc, q4);
            let gyc = fx.muli(o_blk, ohw * 16);
            let p8 = fx.muli(part, TILE_CH as i64);
            let gyc = fx.add(gyc, p8);
            fx.for_n(0, x.n as i64, |fx, n| {
                let ximg = x.image(fx, n);
                let xb = fx.index(ximg, xc, 4);
                let gimg = gy.image(fx, n);
                let gb = fx.index(gimg, gyc, 4);
                fx.for_range(oy_lo, oy_hi, 1, |fx, oy| {
                    let xrow = fx.index(xb, oy, 4 * 16 * (g.stride[0] * g.w) as i64);
                    let grow = fx.index(gb, oy, 4 * 16 * g.ow as i64);
                    fx.for_range(ox_lo, ox_hi, 1, |fx, ox| {
                        let xp = fx.index(xrow, ox, 4 * 16 * g.stride[1] as i64);
                        let gp = fx.index(grow, ox, 4 * 16);
                        let gv: Vec<Value> = (0..VECS).map(|v| fx.load(F32X4, gp, 16 * v as i64)).collect();
                        for (r, row) in acc.iter().enumerate() {
                            let s = fx.load(F32, xp, 4 * r as i64);
                            let s = fx.splat(F32X4, s);
                            for (v, &a) in row.iter().enumerate() {
                                let cur = fx.get(a);
                                let nv = fx.fma(s, gv[v], cur);
                                fx.set(a, nv);
                            }
                        }
                    });
                });
            });
            // [o block][c block][tap][16 c][16 o]: row c = quad x 4 + r, columns part x 8 ...
            let wblk = fx.muli(blk, 256);
            let wq = fx.muli(quad, 4 * 16);
            let wo = fx.add(wblk, wq);
            let wo = fx.add(wo, p8);
            let wa = fx.index(dst, wo, 4);
            for (r, row) in acc.iter().enumerate() {
                for (v, &a) in row.iter().enumerate() {
                    let s = fx.get(a);
                    fx.store(s, wa, 4 * (16 * r + 4 * v) as i64);
                }
            }
        });
    })?;
    Ok(true)
}

/// The output indices `lo..hi` along one axis whose input for kernel tap `k` lies inside.
fn inside_range(out: usize, size: usize, k: usize, stride: usize, pad: usize, dil: usize) -> (usize, usize) {
    let inside = |o: usize| {
        let i = (o * stride + k * dil) as isize - pad as isize;
        i >= 0 && (i as usize) < size
    };
    let lo = (0..out).find(|&o| inside(o)).unwrap_or(out);
    let hi = (lo..out).find(|&o| !inside(o)).unwrap_or(out);
    (lo, hi)
}
