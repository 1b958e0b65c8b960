//! The backward passes of a convolution on blocked maps as register tiles: the input
//! gradient as the forward tiles on transposed, rotated weights (a strided convolution's on
//! its output gradient spread out by the stride, zeros between), and the weight gradient as
//! tiles of 4 input x 8 output channels of one kernel tap, reduced over the batch's pixels.

use super::{Geo, PARTS, TASKS_PER_THREAD, TILE_CH, VECS, forward};
use crate::emit::{F32, F32X4, Fx};
use crate::error::{JitError, plan_err};
use crate::lower::conv::ConvForward;
use crate::lower::{Lx, Val};
use cnnc_ir::plan::ParamPlan;
use cnnc_ir::{Layout, WeightLayout};
use cranelift_codegen::ir::condcodes::IntCC;
use cranelift_codegen::ir::{InstBuilder, Value};
use cranelift_frontend::Variable;

/// The input gradient of a convolution or a matrix product on blocked maps (`OIhw16i16o` or
/// `OI16i16o` weights, one group) as register tiles: the forward convolution of `gy` with the
/// weights transposed (input and output channels swapped) and rotated by 180 degrees, padded
/// by `(k - 1) dilation - pad`. The transposed weights are rewritten from the parameter by a
/// kernel of their own before every use (the optimiser changes them each step). A strided
/// convolution's `gy` is first spread out by the stride (see [`spread`]): its tiles then
/// multiply zeros in `1 - 1 / (s0 s1)` of their products, which still beats scalar loops by
/// far. Returns whether it did.
pub(crate) fn backward_data(
    lx: &mut Lx,
    g: &Geo,
    gy: Val,
    gx: Val,
    (w, wp): (u64, &ParamPlan),
) -> Result<bool, JitError> {
    let Some(pad) = g.transposed_pad() else { return Ok(false) };
    if super::depthwise::fits(g, &gx, &gy, wp) {
        let (blocks, taps) = (g.c.div_ceil(16), g.kh * g.kw);
        let (_, dst) = lx.buffer(blocks * taps * 64)?;
        let Some(src) = spread(lx, g, gy)? else { return Ok(false) };
        let packed = super::depthwise::packed_weights(lx, g, w, wp)?;
        super::depthwise::rotate(lx, packed, dst, blocks, taps)?;
        let fwd = Geo { h: src.h, w: src.w, oh: g.h, ow: g.w, pad, stride: [1, 1], ..*g };
        let rotated = super::depthwise::packed_plan(wp);
        let op = ConvForward { g: &fwd, x: src, y: gx, res: None, w: dst, wp: &rotated, bias: None, act: None };
        return super::depthwise::forward(lx, &op);
    }
    if gy.layout == Layout::Plain {
        return plain_backward_data(lx, g, gy, gx, (w, wp), pad);
    }
    if g.groups > 1 {
        return grouped_backward_data(lx, g, gy, gx, (w, wp), pad);
    }
    let blocked = matches!(wp.layout, Some(WeightLayout::OIhw16i16o | WeightLayout::OI16i16o));
    let dims_fit = matches!(wp.dims[..], [o, c, kh, kw] if [o, c, kh, kw] == [g.o, g.c, g.kh, g.kw])
        || matches!(wp.dims[..], [o, c] if [o, c, g.kh, g.kw] == [g.o, g.c, 1, 1]);
    let fits = blocked && dims_fit && g.groups == 1 && gy.layout == Layout::Blocked16 && gx.layout == Layout::Blocked16;
    if !fits {
        return Ok(false);
    }
    // `OI16i16o` is `OIhw16i16o` with one tap.
    let turned = ParamPlan { dims: vec![g.c, g.o, g.kh, g.kw], layout: Some(WeightLayout::OIhw16i16o), ..wp.clone() };
    let (_, dst) = lx.buffer(turned.stored_len().div_ceil(16) * 64)?;
    transpose_rotate(lx, w, dst, [g.o.div_ceil(16), g.c.div_ceil(16)], g.kh * g.kw)?;
    let Some(src) = spread(lx, g, gy)? else { return Ok(false) };
    let fwd = Geo { c: g.o, h: src.h, w: src.w, o: g.c, oh: g.h, ow: g.w, pad, stride: [1, 1], ..*g };
    let op = ConvForward { g: &fwd, x: src, y: gx, res: None, w: dst, wp: &turned, bias: None, act: None };
    forward(lx, &op)
}

/// The input gradient of a stride-1 convolution on a plain output gradient (`oihw` weights,
/// one group: LeNet-5's maps, too small to block) as the forward tiles on plain input: `gy`
/// convolved with the weights transposed and rotated, repacked into `Oihw16o` by a kernel
/// before every use, padded by `pad`. Returns whether it did.
fn plain_backward_data(
    lx: &mut Lx,
    g: &Geo,
    gy: Val,
    gx: Val,
    (w, wp): (u64, &ParamPlan),
    pad: [usize; 2],
) -> Result<bool, JitError> {
    let plain = wp.layout.is_none_or(|l| l == WeightLayout::Oihw) && wp.dims[..] == [g.o, g.c, g.kh, g.kw];
    if !plain || g.groups != 1 || g.stride != [1, 1] || g.h * g.w == 0 {
        return Ok(false);
    }
    let fwd = Geo { c: g.o, h: g.oh, w: g.ow, o: g.c, oh: g.h, ow: g.w, pad, stride: [1, 1], ..*g };
    let Some(reads) = super::reads::plain_reads(&fwd) else { return Ok(false) };
    let shape = crate::lower::native::shape(&fwd, 1);
    let len = cnnc_kernels::conv_plain::packed_weight_len(&shape).map_err(|e| JitError::Codegen(e.to_string()))?;
    let (_, packed) = lx.buffer(len * 4)?;
    crate::lower::native_plain::repack(lx, w, [g.o, g.c, g.kh, g.kw], packed, true)?;
    let op = ConvForward { g: &fwd, x: gy, y: gx, res: None, w: packed, wp, bias: None, act: None };
    super::emit_tiles(lx, &op, reads, packed)
}

/// The input gradient of a grouped convolution on blocked maps whose groups are not whole
/// blocks (`oihw` weights) as the forward's grouped tiles: per group, `gy`'s channels of the
/// group (spread out by the stride when strided) convolved with the group's weights
/// transposed and rotated, `[C][O / groups][kh][kw]`, written by a kernel before every use and
/// repacked into `Oihw16o` by another. Returns whether it did (the groups' channels must suit
/// the tiles: see `grouped_reads`).
fn grouped_backward_data(
    lx: &mut Lx,
    g: &Geo,
    gy: Val,
    gx: Val,
    (w, wp): (u64, &ParamPlan),
    pad: [usize; 2],
) -> Result<bool, JitError> {
    let plain = wp.layout.is_none_or(|l| l == WeightLayout::Oihw) && wp.dims[..] == [g.o, g.cg(), g.kh, g.kw];
    let maps = gy.layout == Layout::Blocked16 && gx.layout == Layout::Blocked16;
    let fwd = Geo { c: g.o, h: g.oh, w: g.ow, o: g.c, oh: g.h, ow: g.w, pad, stride: [1, 1], ..*g };
    if !plain || !maps || g.h * g.w == 0 || super::reads::grouped_reads(&fwd, &gy).is_none() {
        return Ok(false);
    }
    let Some(src) = spread(lx, g, gy)? else { return Ok(false) };
    let fwd = Geo { h: src.h, w: src.w, ..fwd };
    let Some(reads) = super::reads::grouped_reads(&fwd, &src) else { return Ok(false) };
    let turned = [g.c, g.og(), g.kh, g.kw];
    let (_, scratch) = lx.buffer(turned.iter().product::<usize>() * 4)?;
    grouped_transpose_rotate(lx, w, scratch, g)?;
    let one = Geo { c: g.og(), groups: 1, ..fwd };
    let shape = crate::lower::native::shape(&one, 1);
    let len = cnnc_kernels::conv_plain::packed_weight_len(&shape).map_err(|e| JitError::Codegen(e.to_string()))?;
    let (_, packed) = lx.buffer(len * 4)?;
    crate::lower::native_plain::repack(lx, scratch, turned, packed, false)?;
    let op = ConvForward { g: &fwd, x: src, y: gx, res: None, w: packed, wp, bias: None, act: None };
    super::emit_tiles(lx, &op, reads, packed)
}

/// Writes the `oihw` weight `[O][C / groups][taps]` of a grouped convolution at `src` as
/// `[C][O / groups][taps]` at `dst`: element `(c, k, t)` from `(group * O / groups + k,
/// c % (C / groups), taps - 1 - t)`, `group = c / (C / groups)`.
fn grouped_transpose_rotate(lx: &mut Lx, src: u64, dst: u64, g: &Geo) -> Result<(), JitError> {
    let (cg, og, taps) = (g.cg() as i64, g.og() as i64, (g.kh * g.kw) as i64);
    let channels = g.c as i64;
    lx.kernel(1, |fx| {
        let (s, d) = (fx.abs(src), fx.abs(dst));
        fx.for_n(0, channels, |fx, c| {
            let grp = fx.udiv(c, cg);
            let ci = fx.urem(c, cg);
            let o0 = fx.muli(grp, og);
            fx.for_n(0, og, |fx, k| {
                let o = fx.add(o0, k);
                let from = fx.mad(o, cg, ci);
                let from = fx.muli(from, taps);
                let to = fx.mad(c, og, k);
                let to = fx.muli(to, taps);
                let (from, to) = (fx.index(s, from, 4), fx.index(d, to, 4));
                for t in 0..taps {
                    let v = fx.load_ro(F32, from, 4 * (taps - 1 - t));
                    fx.store(v, to, 4 * t);
                }
            });
        });
    })
}

/// `gy` itself at stride 1; else `gy` spread out by the stride into a buffer of its own:
/// pixel `(oy, ox)` at `(oy s0, ox s1)`, zeros between (written once: the buffer starts
/// zeroed and the kernel writes the same places every step), and as many zero rows and
/// columns at the end as the input has past the last one a tap reads, so that the stride-1
/// convolution of the spread map yields the whole input gradient. `None` when the output is
/// not the floor-mode one (the last row and column sizes do not solve).
fn spread(lx: &mut Lx, g: &Geo, gy: Val) -> Result<Option<Val>, JitError> {
    if g.stride == [1, 1] {
        return Ok(Some(gy));
    }
    if g.oh * g.ow == 0 {
        return Ok(None);
    }
    // The input rows past the last one the last output row reads.
    let past = |size: usize, out: usize, k: usize, [s, p, d]: [usize; 3]| {
        (size + 2 * p).checked_sub((k - 1) * d + 1 + (out - 1) * s).filter(|&r| r < s)
    };
    let (Some(rh), Some(rw)) = (
        past(g.h, g.oh, g.kh, [g.stride[0], g.pad[0], g.dil[0]]),
        past(g.w, g.ow, g.kw, [g.stride[1], g.pad[1], g.dil[1]]),
    ) else {
        return Ok(None);
    };
    let (h, w) = ((g.oh - 1) * g.stride[0] + 1 + rh, (g.ow - 1) * g.stride[1] + 1 + rw);
    let ob = g.o.div_ceil(16);
    let image = (ob * 16 * h * w * 4) as u64;
    let (_, addr) = lx.buffer(
        usize::try_from(image * gy.n as u64)
            .map_err(|_| plan_err("the spread output gradient is too large".to_string()))?,
    )?;
    let dst = Val { addr, bs: image, h, w, bytes: image, ..gy };
    let rows = gy.n * ob * g.oh;
    let tasks = lx.tasks(rows, (rows * g.ow * 16) as f64);
    let [sy, sx] = g.stride;
    let (oh, ow) = (g.oh, g.ow);
    lx.kernel(tasks, |fx| {
        let (lo, hi) = fx.task_range(rows, tasks);
        fx.for_range(lo, hi, 1, |fx, u| {
            // u = (image x O/16 + block) x oh + oy.
            let oy = fx.urem(u, oh as i64);
            let plane = fx.udiv(u, oh as i64);
            let n = fx.udiv(plane, ob as i64);
            let b = fx.urem(plane, ob as i64);
            // The row's first pixel (16 floats each) in `gy` and in the spread map.
            let src_row = fx.muli(oy, ow as i64);
            let src_pix = fx.mad(b, (oh * ow) as i64, src_row);
            let dst_row = fx.muli(oy, (sy * w) as i64);
            let dst_pix = fx.mad(b, (h * w) as i64, dst_row);
            let from = gy.image(fx, n);
            let src = fx.index(from, src_pix, 4 * 16);
            let to = dst.image(fx, n);
            let dst_row = fx.index(to, dst_pix, 4 * 16);
            fx.for_n(0, ow as i64, |fx, ox| {
                let sp = fx.index(src, ox, 4 * 16);
                let dp = fx.index(dst_row, ox, 4 * 16 * sx as i64);
                for v in 0..4 {
                    let x = fx.load(F32X4, sp, 16 * v);
                    fx.store(x, dp, 16 * v);
                }
            });
        });
    })?;
    Ok(Some(dst))
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

/// The weight gradient of a convolution with a blocked output gradient (one group), summed
/// over the batch, as register tiles: each tile is 4 input channels x 8 output channels of one
/// kernel tap, reduced over every output pixel whose input for that tap lies inside the map
/// (rows and columns clipped by a table per tap), one broadcast input value per channel times
/// two vectors of `gy`. On a blocked input into `OIhw16i16o` (or `OI16i16o`) every stored float
/// is written (padding lanes as zeros: the operands' padding is zero); on a plain input (a
/// stem's image, or a fully connected layer's vector) into `oihw` (or `[O, I]`), the input's
/// channels are planes apart, the last quad of input channels may be partial, and each
/// gradient is stored on its own. Returns whether it did.
pub(crate) fn backward_weight(
    lx: &mut Lx,
    g: &Geo,
    x: Val,
    gy: Val,
    gw: Val,
    wp: &ParamPlan,
) -> Result<bool, JitError> {
    if super::depthwise::backward_weight(lx, g, [x, gy, gw], wp)? {
        return Ok(true);
    }
    let blocked_weights = matches!(wp.layout, Some(WeightLayout::OIhw16i16o | WeightLayout::OI16i16o));
    // `oihw`, or a fully connected layer's `[O, I]` (its maps are 1 x 1).
    let plain_weights = wp.layout.is_none_or(|l| matches!(l, WeightLayout::Oihw | WeightLayout::Oi))
        && (wp.dims.len() == 4 || (wp.dims.len() == 2 && g.kh * g.kw == 1));
    let input = match x.layout {
        Layout::Blocked16 if blocked_weights => Input::Blocked,
        Layout::Plain if plain_weights => Input::Plain,
        Layout::Blocked16 | Layout::Plain => return Ok(false),
    };
    let fits = g.groups == 1
        && (gy.layout == Layout::Blocked16 || matches!(input, Input::Plain))
        && gw.bytes >= 4 * wp.stored_len() as u64
        && g.oh * g.ow > 0
        && x.bytes < i32::MAX as u64;
    if !fits {
        return Ok(false);
    }
    let (ob, taps) = (g.o.div_ceil(16), g.kh * g.kw);
    let table = lx.table(&tap_bounds(g));
    let gy = match gy.layout {
        Layout::Blocked16 => gy,
        Layout::Plain => blocked_copy(lx, gy)?,
    };
    // Tiles: (o block, quad of input channels, tap, half of the output block).
    let quads = match input {
        Input::Blocked => g.c.div_ceil(16) * 4,
        Input::Plain => g.c.div_ceil(4),
    };
    let units = ob * quads * taps * PARTS;
    let tasks = match lx.tasks(units, g.macs(x.n)) {
        1 => 1,
        _ => units.min(lx.threads * TASKS_PER_THREAD),
    };
    let g = *g;
    // The channels of the last quad (a plain input's may be partial; a blocked input's
    // padding lanes are zeros).
    let last = match input {
        Input::Blocked => 4,
        Input::Plain => g.c - 4 * (quads - 1),
    };
    lx.kernel(tasks, |fx| {
        let (lo, hi) = fx.task_range(units, tasks);
        let bt = fx.aux(table);
        fx.for_range(lo, hi, 1, |fx, u| {
            let part = fx.urem(u, PARTS as i64);
            let u2 = fx.udiv(u, PARTS as i64);
            let tap = fx.urem(u2, taps as i64);
            let u3 = fx.udiv(u2, taps as i64);
            let q = fx.urem(u3, quads as i64);
            let o_blk = fx.udiv(u3, quads as i64);
            let tile = Tile { part, tap, q, o_blk, bt };
            if last == 4 {
                weight_tile(fx, &g, [x, gy, gw], input, &tile, 4);
            } else {
                let partial = fx.icmpi(IntCC::Equal, q, quads as i64 - 1);
                fx.if_else(
                    partial,
                    |fx| weight_tile(fx, &g, [x, gy, gw], input, &tile, last),
                    |fx| weight_tile(fx, &g, [x, gy, gw], input, &tile, 4),
                );
            }
        });
    })?;
    Ok(true)
}

/// How the weight-gradient tiles read the input and store the gradient.
#[derive(Clone, Copy)]
enum Input {
    /// `nChw16c` into `OIhw16i16o`.
    Blocked,
    /// `nchw` into `oihw`.
    Plain,
}

/// One weight-gradient tile's place: the half of the output block, the tap, the quad of
/// input channels, the output block, and the table of tap bounds.
struct Tile {
    part: Value,
    tap: Value,
    q: Value,
    o_blk: Value,
    bt: Value,
}

/// One weight-gradient tile of `lanes` input channels (the rest of the quad is not there).
fn weight_tile(fx: &mut Fx, g: &Geo, [x, gy, gw]: [Val; 3], input: Input, tile: &Tile, lanes: usize) {
    let Tile { part, tap, q, o_blk, bt } = *tile;
    let (hw, ohw) = ((g.h * g.w) as i64, (g.oh * g.ow) as i64);
    // Floats between input channels and between horizontally adjacent input pixels.
    let (x_chan, x_pix) = match input {
        Input::Blocked => (1, 16),
        Input::Plain => (hw, 1),
    };
    let (ky, kx, [oy_lo, oy_hi, ox_lo, ox_hi]) = super::tap_bounds(fx, bt, tap, g.kw);
    let zero = fx.fconst(F32X4, 0.0);
    let acc: Vec<Vec<Variable>> = (0..lanes).map(|_| (0..VECS).map(|_| fx.var_init(F32X4, zero)).collect()).collect();
    // The input at output pixel (0, 0) for this tap (in pixels), at the quad's first channel,
    // and the output gradient's block at the tile's half.
    let dy = fx.muli(ky, g.dil[0] as i64);
    let dx = fx.muli(kx, g.dil[1] as i64);
    let tap_off = fx.mad(dy, g.w as i64, dx);
    let tap_off = fx.addi(tap_off, -((g.pad[0] * g.w + g.pad[1]) as i64));
    let xc = match input {
        Input::Blocked => {
            // Quad q is lanes 4 (q % 4).. of channel block q / 4.
            let c_blk = fx.udiv(q, 4);
            let xc = fx.mad(c_blk, hw, tap_off);
            let xc = fx.muli(xc, 16);
            let lane = fx.urem(q, 4);
            fx.mad(lane, 4, xc)
        }
        Input::Plain => {
            let plane = fx.muli(q, 4 * hw);
            fx.add(plane, tap_off)
        }
    };
    let gyc = fx.muli(o_blk, ohw * 16);
    let p8 = fx.muli(part, TILE_CH as i64);
    let gyc = fx.add(gyc, p8);
    fx.for_n(0, x.n as i64, |fx, n| {
        let ximg = x.image(fx, n);
        let xb = fx.index(ximg, xc, 4);
        let gimg = gy.image(fx, n);
        let gb = fx.index(gimg, gyc, 4);
        fx.for_range(oy_lo, oy_hi, 1, |fx, oy| {
            let xrow = fx.index(xb, oy, 4 * x_pix * (g.stride[0] * g.w) as i64);
            let grow = fx.index(gb, oy, 4 * 16 * g.ow as i64);
            fx.for_range(ox_lo, ox_hi, 1, |fx, ox| {
                let xp = fx.index(xrow, ox, 4 * x_pix * g.stride[1] as i64);
                let gp = fx.index(grow, ox, 4 * 16);
                let gv: Vec<Value> = (0..VECS).map(|v| fx.load(F32X4, gp, 16 * v as i64)).collect();
                for (r, row) in acc.iter().enumerate() {
                    let s = fx.load(F32, xp, 4 * r as i64 * x_chan);
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
    match input {
        Input::Blocked => {
            // [o block][c block][tap][16 c][16 o]: row c = quad x 4 + r, columns part x 8 ..
            let c_blk = fx.udiv(q, 4);
            let blk = fx.mad(o_blk, g.c.div_ceil(16) as i64, c_blk);
            let blk = fx.mad(blk, (g.kh * g.kw) as i64, tap);
            let wblk = fx.muli(blk, 256);
            let lane = fx.urem(q, 4);
            let wq = fx.muli(lane, 4 * 16);
            let wo = fx.add(wblk, wq);
            let wo = fx.add(wo, p8);
            let dst = fx.abs(gw.addr);
            let wa = fx.index(dst, wo, 4);
            for (r, row) in acc.iter().enumerate() {
                for (v, &a) in row.iter().enumerate() {
                    let s = fx.get(a);
                    fx.store(s, wa, 4 * (16 * r + 4 * v) as i64);
                }
            }
        }
        Input::Plain => store_plain_weights(fx, g, gw, tile, p8, &acc),
    }
}

/// A plain-input tile's gradients into `oihw`, one float each: output channel
/// `o_blk * 16 + part * 8 + 4 v + l` (those past the last not stored), input channel
/// `4 q + r`, the tile's tap.
fn store_plain_weights(fx: &mut Fx, g: &Geo, gw: Val, tile: &Tile, p8: Value, acc: &[Vec<Variable>]) {
    let taps = (g.kh * g.kw) as i64;
    let o0 = fx.muli(tile.o_blk, 16);
    let o0 = fx.add(o0, p8);
    let at = fx.muli(o0, g.c as i64 * taps);
    let c0 = fx.muli(tile.q, 4 * taps);
    let at = fx.add(at, c0);
    let at = fx.add(at, tile.tap);
    let dst = fx.abs(gw.addr);
    let wa = fx.index(dst, at, 4);
    for (r, row) in acc.iter().enumerate() {
        for (v, &a) in row.iter().enumerate() {
            let s = fx.get(a);
            for l in 0..4 {
                let oo = (4 * v + l) as i64;
                let off = 4 * ((oo * g.c as i64 + r as i64) * taps);
                let store = |fx: &mut Fx| {
                    let e = fx.b.ins().extractlane(s, l as u8);
                    fx.store(e, wa, off);
                };
                if g.o.is_multiple_of(16) {
                    store(fx);
                } else {
                    let o = fx.addi(o0, oo);
                    let real = fx.icmpi(IntCC::SignedLessThan, o, g.o as i64);
                    fx.if_then(real, store);
                }
            }
        }
    }
}

/// A plain map copied into `nChw16c` in a buffer of its own (its padding lanes stay zero),
/// rewritten by a kernel before every use: a plain output gradient (a stem's, whose output is
/// plain in training) as the weight-gradient tiles read it, eight channels in two vectors.
fn blocked_copy(lx: &mut Lx, v: Val) -> Result<Val, JitError> {
    let hw = v.hw();
    let image = (v.c.div_ceil(16) * 16 * hw * 4) as u64;
    let total =
        usize::try_from(image * v.n as u64).map_err(|_| plan_err("the blocked copy is too large".to_string()))?;
    let (_, addr) = lx.buffer(total)?;
    let dst = Val { addr, bs: image, layout: Layout::Blocked16, bytes: image, ..v };
    let planes = v.n * v.c;
    let tasks = lx.tasks(planes, (planes * hw) as f64);
    let c = v.c;
    lx.kernel(tasks, |fx| {
        let (lo, hi) = fx.task_range(planes, tasks);
        fx.for_range(lo, hi, 1, |fx, u| {
            let n = fx.udiv(u, c as i64);
            let ch = fx.urem(u, c as i64);
            let from = v.image(fx, n);
            let from = fx.index(from, ch, 4 * hw as i64);
            // Channel ch is lane ch % 16 of block ch / 16.
            let blk = fx.udiv(ch, 16);
            let lane = fx.urem(ch, 16);
            let at = fx.mad(blk, 16 * hw as i64, lane);
            let to = dst.image(fx, n);
            let to = fx.index(to, at, 4);
            fx.for_n(0, hw as i64, |fx, p| {
                let s = fx.index(from, p, 4);
                let x = fx.load(F32, s, 0);
                let d = fx.index(to, p, 4 * 16);
                fx.store(x, d, 0);
            });
        });
    })?;
    Ok(dst)
}

/// Per kernel tap (row-major), the output rows and columns whose input for it lies inside:
/// `[oy_lo, oy_hi, ox_lo, ox_hi]` each.
pub(super) fn tap_bounds(g: &Geo) -> Vec<i32> {
    let mut bounds = Vec::with_capacity(4 * g.kh * g.kw);
    for ky in 0..g.kh {
        for kx in 0..g.kw {
            let rows = inside_range(g.oh, g.h, ky, g.stride[0], g.pad[0], g.dil[0]);
            let cols = inside_range(g.ow, g.w, kx, g.stride[1], g.pad[1], g.dil[1]);
            bounds.extend([rows.0, rows.1, cols.0, cols.1].map(|v| v as i32));
        }
    }
    bounds
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
