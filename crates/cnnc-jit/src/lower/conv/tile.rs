//! The register-tiled forward convolution, all in Cranelift IR on F32X4 vectors: portable
//! mode's kernel for convolutions and matrix products whose output is channel-blocked or
//! plain, with blocked (`OIhw16i16o`, `gOIhw16i16o`, `OI16i16o`) or plain-input (`Oihw16o`,
//! repacked from `oihw`, also per group of a grouped convolution whose groups are not whole
//! blocks) weights (see `reads.rs`).
//!
//! A tile is up to 4 output pixels of one row times 2 vectors of four output channels, or on
//! short rows 8 pixels times one vector ([`tile_shape`]): its accumulators, the weight
//! vectors of one input channel and a broadcast input value fit in the 16 vector registers
//! Cranelift's x64 back end allocates, with room to spare (a spilled accumulator costs more
//! than a smaller tile: see [`TileShape`]).
//! The reduction runs over input chunks (channel blocks), kernel rows and input channels in
//! loops, with the kernel columns unrolled; every load is at a constant offset from a pointer
//! advanced once per loop step. A row's tiles are cut evenly at compile time: runs of tiles
//! whose every tap lies inside the input become one loop over tile positions, and each tile
//! touching the left or right halo is emitted on its own with the taps outside left out.
//! Kernel rows are clipped per output row from a table. The work splits over `(image, block
//! of 16 output channels, output row)`, each task a run of them. Small maps of short rows
//! (7x7 and the like) are tiled whole instead, across rows (`flat.rs`).

use super::{Geo, clip, load_i};
use crate::emit::{F32, F32X4, Fx};
use crate::error::JitError;
use crate::lower::{Lx, Val};
use crate::vmath;
use cnnc_ir::plan::ParamPlan;
use cnnc_ir::{Activation, Layout, WeightLayout};
use cranelift_codegen::ir::condcodes::IntCC;
use cranelift_codegen::ir::{InstBuilder, Value};
use cranelift_frontend::Variable;

/// Unit `u` of a kernel over (image, block of `blocks`, output row of `oh`): `(n, b, oy)`.
pub(super) fn image_block_row(fx: &mut Fx, u: Value, blocks: usize, oh: usize) -> (Value, Value, Value) {
    let per_image = (blocks * oh) as i64;
    let n = fx.udiv(u, per_image);
    let within = fx.urem(u, per_image);
    let b = fx.udiv(within, oh as i64);
    let oy = fx.urem(within, oh as i64);
    (n, b, oy)
}

/// The kernel rows `lo..hi` that output row `oy` reads, from a `clip` table at `rt`.
pub(super) fn kernel_rows(fx: &mut Fx, rt: Value, oy: Value) -> (Value, Value) {
    let i = fx.muli(oy, 2);
    let lo = load_i(fx, rt, i);
    let i = fx.addi(i, 1);
    (lo, load_i(fx, rt, i))
}

/// Tap `tap` of a `kw`-wide kernel: its kernel row and column, and the output pixels whose
/// input it meets, `[oy_lo, oy_hi, ox_lo, ox_hi]`, from a table of four per tap at `bt`.
pub(super) fn tap_bounds(fx: &mut Fx, bt: Value, tap: Value, kw: usize) -> (Value, Value, [Value; 4]) {
    let ky = fx.udiv(tap, kw as i64);
    let kx = fx.urem(tap, kw as i64);
    let b4 = fx.muli(tap, 4);
    let bounds = [0, 1, 2, 3].map(|k| {
        let i = fx.addi(b4, k);
        load_i(fx, bt, i)
    });
    (ky, kx, bounds)
}

mod backward;
mod depthwise;
mod flat;
mod reads;

use reads::{Reads, blocked_reads, grouped_reads, plain_reads};

pub(crate) use backward::{backward_data, backward_weight};

/// A tile's shape: up to `pixels` output pixels times `vecs` F32X4 vectors of output
/// channels. x64's FMA overwrites a factor, so each product of a broadcast takes a copy of it
/// (a register move): `pixels x vecs` accumulators, `vecs` weights, a broadcast and its copy
/// must fit the 16 xmm registers with room to spare. Measured on Zen 5 (3x3 64->64 at 56x56
/// and 256->256 at 14x14, one thread, CPU time): 4 x 2 and 8 x 1 tiles reach 80-82 % of the
/// 128-bit peak, 5 x 2 and 6 x 2 tiles 57-74 % (the register allocator spills an accumulator
/// of the loop and the spill's store and reload lengthen its chain), 3 x 4 47 %.
#[derive(Clone, Copy, Debug, PartialEq)]
struct TileShape {
    pixels: usize,
    vecs: usize,
}

impl TileShape {
    /// Output channels of a tile.
    fn channels(self) -> usize {
        4 * self.vecs
    }

    /// Tiles per block of 16 output channels.
    fn parts(self) -> usize {
        16 / self.channels()
    }
}

/// 4 pixels x 8 channels: the tile of long rows.
const WIDE: TileShape = TileShape { pixels: 4, vecs: 2 };
/// 8 pixels x 4 channels: the tile of short rows.
const TALL: TileShape = TileShape { pixels: 8, vecs: 1 };

/// The tile of a convolution's rows: [`TALL`] for kernels three or more columns wide on rows
/// of at most 14 output pixels (ResNet-50's 7x7 and 14x14 maps), [`WIDE`] otherwise. A tile
/// pass streams its channels' weights of every input channel and tap; a short row in `WIDE`
/// tiles is two or four passes over 8 channels' weights, in `TALL` ones one or two over 4,
/// half the weight traffic per output. Measured (one thread, CPU time, best of 15, portable
/// 128-bit peak 68 GFLOP/s): 512->512 3x3 on 7x7 outputs 52.3 -> 54.4 GFLOP/s at stride 1
/// and 47.2 -> 48.7 at stride 2, 256->256 stride 2 on a 14x14 output 47.9 -> 48.9; on a
/// 28x28 output `TALL` was slower (49.1 -> 46.6).
fn tile_shape(t: &Geo) -> TileShape {
    if t.kw >= 3 && t.ow <= 14 { TALL } else { WIDE }
}

/// Tile shape of the backward-weights tiles (see `backward.rs`).
const VECS: usize = WIDE.vecs;
/// Output channels of a backward-weights tile.
const TILE_CH: usize = 4 * VECS;
/// Backward-weights tiles per block of 16 output channels.
const PARTS: usize = 16 / TILE_CH;

/// Tasks per thread of a layer large enough to split.
const TASKS_PER_THREAD: usize = 16;

/// The geometry of the tiled rows: `g` itself, or a 1x1 stride-1 convolution without
/// padding seen as one row per image (its pixels are contiguous in every layout).
fn tiled_geo(g: &Geo) -> Geo {
    let unit = g.kh == 1 && g.kw == 1 && g.stride == [1, 1] && g.pad == [0, 0] && (g.oh, g.ow) == (g.h, g.w);
    if unit { Geo { h: 1, w: g.h * g.w, oh: 1, ow: g.oh * g.ow, ..*g } } else { *g }
}

/// A forward convolution as register tiles, when its layouts fit: returns whether it did.
pub(crate) fn forward(lx: &mut Lx, op: &super::ConvForward) -> Result<bool, JitError> {
    let super::ConvForward { g, x, y, res, w, wp, .. } = *op;
    if g.oh * g.ow == 0 || res.is_some_and(|r| r.layout != y.layout) {
        return Ok(false);
    }
    if depthwise::forward(lx, op)? {
        return Ok(true);
    }
    let plain_weights = wp.layout.is_none_or(|l| l == WeightLayout::Oihw) && g.groups == 1;
    let (reads, weights) = if let Some(r) = blocked_reads(g, &x, wp) {
        (r, w)
    } else if x.layout == Layout::Plain && plain_weights && wp.dims.len() == 4 {
        let Some(r) = plain_reads(g) else { return Ok(false) };
        (r, plain_input_weights(lx, g, w, wp)?)
    } else if let Some(r) = grouped_reads(g, &x)
        && wp.layout.is_none_or(|l| l == WeightLayout::Oihw)
        && wp.dims.len() == 4
    {
        // Each group's weights are a one-group convolution's of its inputs.
        let one = Geo { c: g.cg(), groups: 1, ..*g };
        (r, plain_input_weights(lx, &one, w, wp)?)
    } else {
        return Ok(false);
    };
    emit_tiles(lx, op, reads, weights)
}

/// The tiles of a forward convolution, reading its input and `weights` (their address) as
/// `reads` says: returns that it did.
fn emit_tiles(lx: &mut Lx, op: &super::ConvForward, reads: Reads, weights: u64) -> Result<bool, JitError> {
    let super::ConvForward { g, x, y, res, bias, act, .. } = *op;
    let t = tiled_geo(g);
    if reads.x_part.is_some() {
        // Tiles of four channels, each in one group.
        let cx = Cx { g: *g, t, shape: TALL, x, y, res, bias, act, reads };
        emit(lx, &cx, weights)?;
    } else if flat::fits(&t, &x) {
        let cx = Cx { g: *g, t, shape: flat::SHAPE, x, y, res, bias, act, reads };
        flat::emit(lx, &cx, weights)?;
    } else {
        let cx = Cx { g: *g, t, shape: tile_shape(&t), x, y, res, bias, act, reads };
        emit(lx, &cx, weights)?;
    }
    Ok(true)
}

/// Plain-input weights in `Oihw16o` for the tiles ([`Lx::plain_input_weights`]). Its address.
fn plain_input_weights(lx: &mut Lx, g: &Geo, w: u64, wp: &ParamPlan) -> Result<u64, JitError> {
    let shape = crate::lower::native::shape(g, 1);
    let len = cnnc_kernels::conv_plain::packed_weight_len(&shape).map_err(|e| JitError::Codegen(e.to_string()))?;
    lx.plain_input_weights(&wp.name, w, [g.o, g.c, g.kh, g.kw], shape, len)
}

/// Everything the emitted code is specialised to.
struct Cx {
    /// The convolution, and the geometry the tiles walk (see [`tiled_geo`]).
    g: Geo,
    t: Geo,
    shape: TileShape,
    x: Val,
    y: Val,
    res: Option<Val>,
    bias: Option<u64>,
    act: Option<Activation>,
    reads: Reads,
}

/// Tiles of one output row: a run of equal interior tiles (a loop), or one tile with the
/// taps that lie inside the input (`taps[r][kx]`).
enum Segment {
    Run { first: usize, count: usize, size: usize },
    Edge { first: usize, taps: Vec<Vec<bool>> },
}

/// The row's tiles: `ceil(ow / pixels)` tiles of sizes differing by at most one.
fn segments(t: &Geo, pixels: usize) -> Vec<Segment> {
    let n = t.ow.div_ceil(pixels);
    let (q, extra) = (t.ow / n, t.ow % n);
    let inside = |ox: usize, kx: usize| {
        let ix = (ox * t.stride[1] + kx * t.dil[1]) as isize - t.pad[1] as isize;
        ix >= 0 && (ix as usize) < t.w
    };
    let mut out: Vec<Segment> = Vec::new();
    let mut first = 0;
    for k in 0..n {
        let size = q + usize::from(k < extra);
        let taps: Vec<Vec<bool>> = (0..size).map(|r| (0..t.kw).map(|kx| inside(first + r, kx)).collect()).collect();
        if taps.iter().all(|row| row.iter().all(|&b| b)) {
            match out.last_mut() {
                Some(Segment::Run { count, size: s, .. }) if *s == size => *count += 1,
                _ => out.push(Segment::Run { first, count: 1, size }),
            }
        } else {
            out.push(Segment::Edge { first, taps });
        }
        first += size;
    }
    out
}

/// Emits the kernel: one task per run of `(image, output block, output row)` units.
fn emit(lx: &mut Lx, cx: &Cx, w: u64) -> Result<(), JitError> {
    let t = cx.t;
    let ocb = cx.g.o.div_ceil(16);
    let units = cx.y.n * ocb * t.oh;
    // Small tasks, many per thread: a thread the OS preempts (the machines are shared) holds
    // up the layer for one small task only, and the others take the rest.
    let tasks = match lx.tasks(units, cx.g.macs(cx.y.n)) {
        1 => 1,
        _ => units.min(lx.threads * TASKS_PER_THREAD),
    };
    let w_base = lx.table(&cx.reads.w_base);
    let x_base = lx.table(&cx.reads.x_base);
    let x_part = cx.reads.x_part.as_ref().map(|p| lx.table(p));
    let rows = lx.table(&clip(t.oh, t.h, t.kh, t.stride[0], t.pad[0], t.dil[0]));
    let mask = lane_mask(lx, cx);
    let segs = segments(&t, cx.shape.pixels);
    lx.kernel(tasks, |fx| {
        let (lo, hi) = fx.task_range(units, tasks);
        let (wbt, xbt, rt) = (fx.aux(w_base), fx.aux(x_base), fx.aux(rows));
        let x_part = x_part.map(|p| fx.aux(p));
        let mask = mask.map(|m| fx.aux(m));
        let w_abs = fx.abs(w);
        fx.for_range(lo, hi, 1, |fx, u| {
            let row = unit_row(fx, cx, u, ocb, [wbt, xbt, rt], w_abs, mask, x_part);
            fx.for_n(0, cx.shape.parts() as i64, |fx, part| {
                each_tile(fx, &segs, t.kw, &mut |fx, ox0, taps| tile(fx, cx, &row, part, ox0, taps));
            });
        });
    })
}

/// A tile from output column `ox0` reading the taps `taps[pixel][kx]` says.
type TileAt<'a> = dyn FnMut(&mut Fx, Value, &[Vec<bool>]) + 'a;

/// Calls `tile(ox0, taps)` for every tile of a row cut into `segs`: runs of equal tiles in a
/// loop, each reading every tap of a `kw`-wide kernel, then the edge tiles with their own taps.
fn each_tile(fx: &mut Fx, segs: &[Segment], kw: usize, tile: &mut TileAt) {
    for seg in segs {
        match seg {
            Segment::Run { first, count, size } => {
                let all = vec![vec![true; kw]; *size];
                fx.for_n(0, *count as i64, |fx, k| {
                    let ox0 = fx.muli(k, *size as i64);
                    let ox0 = fx.addi(ox0, *first as i64);
                    tile(fx, ox0, &all);
                });
            }
            Segment::Edge { first, taps, .. } => {
                let ox0 = fx.int(*first as i64);
                tile(fx, ox0, taps);
            }
        }
    }
}

/// The table of lanes that are real channels, when a blocked output has padding lanes.
fn lane_mask(lx: &mut Lx, cx: &Cx) -> Option<u64> {
    if cx.g.o.is_multiple_of(16) || cx.y.layout != Layout::Blocked16 {
        return None;
    }
    let lanes: Vec<i32> = (0..cx.g.o.div_ceil(16) * 16).map(|c| if c < cx.g.o { -1 } else { 0 }).collect();
    Some(lx.table(&lanes))
}

/// Where a tile's results go: the image, the block of 16 output channels and the lanes that
/// are real channels.
struct Out {
    n: Value,
    b: Value,
    /// The table of lanes that are real channels (when some are padding).
    mask: Option<Value>,
}

/// The values of one output row every tile of it shares.
/// The output row that unit `u` of a kernel over (image, block of `blocks`, output row)
/// computes: its clipped kernel rows, and where its input row of kernel row 0 (possibly above
/// the image: only clipped kernel rows are read) and its block's weights are, from the block
/// tables `wbt`, `xbt` and the row table `rt`.
#[allow(clippy::too_many_arguments)]
fn unit_row(
    fx: &mut Fx,
    cx: &Cx,
    u: Value,
    blocks: usize,
    [wbt, xbt, rt]: [Value; 3],
    w_abs: Value,
    mask: Option<Value>,
    x_part: Option<Value>,
) -> Row {
    let t = &cx.t;
    let (n, b, oy) = image_block_row(fx, u, blocks, t.oh);
    let (ky_lo, ky_hi) = kernel_rows(fx, rt, oy);
    let iy0 = fx.muli(oy, t.stride[0] as i64);
    let iy0 = fx.addi(iy0, -(t.pad[0] as i64));
    let ximg = cx.x.image(fx, n);
    let xb = load_i(fx, xbt, b);
    let xrow = fx.mad(iy0, cx.reads.x_row, xb);
    let xrow = fx.index(ximg, xrow, 4);
    let wb = load_i(fx, wbt, b);
    let wblk = fx.index(w_abs, wb, 4);
    Row { out: Out { n, b, mask }, oy, ky_lo, ky_hi, xrow, wblk, x_part }
}

struct Row {
    out: Out,
    oy: Value,
    ky_lo: Value,
    ky_hi: Value,
    /// The input row of kernel row 0 at the block's first input chunk.
    xrow: Value,
    /// The block's weights.
    wblk: Value,
    /// The table of [`Reads::x_part`], when there is one.
    x_part: Option<Value>,
}

/// One tile: `taps.len()` pixels from output column `ox0`, output channels
/// `part * channels ..` of the row's block; `taps[r][kx]` says which taps to read.
fn tile(fx: &mut Fx, cx: &Cx, row: &Row, part: Value, ox0: Value, taps: &[Vec<bool>]) {
    let (t, rd) = (&cx.t, &cx.reads);
    let (vecs, tile_ch) = (cx.shape.vecs, cx.shape.channels());
    let ch0 = first_channel(fx, cx, row.out.b, part);
    let acc = accumulators(fx, cx, ch0, taps.len());
    let ix0 = fx.muli(ox0, (t.stride[1] as i64) * rd.x_pix);
    let mut xpix = fx.index(row.xrow, ix0, 4);
    if let Some(table) = row.x_part {
        let k = fx.mad(row.out.b, cx.shape.parts() as i64, part);
        let off = load_i(fx, table, k);
        xpix = fx.index(xpix, off, 4);
    }
    let wpart = fx.index(row.wblk, part, 4 * tile_ch as i64);
    fx.for_n(0, rd.chunks as i64, |fx, chunk| {
        let xc = fx.index(xpix, chunk, 4 * rd.x_chunk);
        let wc = fx.index(wpart, chunk, 4 * rd.w_chunk);
        fx.for_range(row.ky_lo, row.ky_hi, 1, |fx, ky| {
            let xk = fx.index(xc, ky, 4 * t.dil[0] as i64 * rd.x_row);
            let wk = fx.index(wc, ky, 4 * t.kw as i64 * rd.w_tap);
            let unroll = channel_unroll(t.kw, rd.chunk_len);
            fx.for_step(0, rd.chunk_len as i64, unroll as i64, |fx, c| {
                let xi = fx.index(xk, c, 4 * rd.x_chan);
                let wi = fx.index(wk, c, 4 * rd.w_chan);
                for u in 0..unroll as i64 {
                    for kx in 0..t.kw {
                        if taps.iter().all(|r| !r[kx]) {
                            continue;
                        }
                        let w_off = u * rd.w_chan + kx as i64 * rd.w_tap;
                        let wv: Vec<Value> =
                            (0..vecs).map(|v| fx.load_ro(F32X4, wi, 4 * (w_off + 4 * v as i64))).collect();
                        for (r, tr) in taps.iter().enumerate() {
                            if !tr[kx] {
                                continue;
                            }
                            let ix = (r * t.stride[1] + kx * t.dil[1]) as i64 - t.pad[1] as i64;
                            let s = fx.load(F32, xi, 4 * (u * rd.x_chan + ix * rd.x_pix));
                            let s = fx.splat(F32X4, s);
                            for (v, &wv) in wv.iter().enumerate() {
                                let cur = fx.get(acc[r][v]);
                                let nv = fx.fma(s, wv, cur);
                                fx.set(acc[r][v], nv);
                            }
                        }
                    }
                }
            });
        });
    });
    let pix = fx.mad(row.oy, t.ow as i64, ox0);
    store(fx, cx, &row.out, ch0, pix, &acc);
}

/// The tile's first output channel: `b * 16 + part * channels`.
fn first_channel(fx: &mut Fx, cx: &Cx, b: Value, part: Value) -> Value {
    let ch0 = fx.muli(b, 16);
    let part_ch = fx.muli(part, cx.shape.channels() as i64);
    fx.add(ch0, part_ch)
}

/// A tile's accumulators, `size` pixels of `vecs` vectors from channel `ch0`, each set to the
/// bias (or zero).
fn accumulators(fx: &mut Fx, cx: &Cx, ch0: Value, size: usize) -> Vec<Vec<Variable>> {
    let init: Vec<Value> = (0..cx.shape.vecs)
        .map(|v| match cx.bias {
            Some(bias) => {
                let ba = fx.abs(bias);
                let a = fx.index(ba, ch0, 4);
                fx.load(F32X4, a, 16 * v as i64)
            }
            None => fx.fconst(F32X4, 0.0),
        })
        .collect();
    (0..size).map(|_| init.iter().map(|&i| fx.var_init(F32X4, i)).collect()).collect()
}

/// The epilogue of a tile whose pixels are consecutive in the map from pixel `pix` (row-major
/// index), from channel `ch0`.
fn store(fx: &mut Fx, cx: &Cx, out: &Out, ch0: Value, pix: Value, acc: &[Vec<Variable>]) {
    let sums: Vec<Vec<Value>> = acc.iter().map(|r| r.iter().map(|&a| fx.get(a)).collect()).collect();
    match cx.y.layout {
        Layout::Blocked16 => store_blocked(fx, cx, out, ch0, pix, &sums),
        Layout::Plain => store_plain(fx, cx, out, ch0, pix, &sums),
    }
}

/// Input channels per step of the innermost loop: four for 1x1 kernels, two for kernels two
/// columns wide, one otherwise (a step then holds 24-32 products, so the loop's own
/// instructions cost little), a divisor of the chunk. Measured on ResNet-50's 1x1 layers (one
/// thread): 45-50 GFLOP/s with one channel a step, 50-55 with four; two were slower on the
/// 64 -> 256 products (29-31).
fn channel_unroll(kw: usize, chunk_len: usize) -> usize {
    let want = match kw {
        1 => 4,
        2 => 2,
        _ => 1,
    };
    (1..=want).rev().find(|&u| chunk_len.is_multiple_of(u)).unwrap_or(1)
}

/// Float offset of output pixel `pix` (row-major index) in a blocked map, at channel `ch0`.
fn blocked_at(fx: &mut Fx, t: &Geo, b: Value, ch0: Value, pix: Value) -> Value {
    let blk = fx.muli(b, (t.oh * t.ow * 16) as i64);
    let pix = fx.muli(pix, 16);
    let lane = fx.urem(ch0, 16);
    let o = fx.add(blk, pix);
    fx.add(o, lane)
}

/// The epilogue on a blocked output: residual, activation, padding lanes zeroed, stores.
fn store_blocked(fx: &mut Fx, cx: &Cx, out: &Out, ch0: Value, pix: Value, sums: &[Vec<Value>]) {
    let at = blocked_at(fx, &cx.t, out.b, ch0, pix);
    let yimg = cx.y.image(fx, out.n);
    let ya = fx.index(yimg, at, 4);
    let ra = cx.res.map(|r| {
        let rimg = r.image(fx, out.n);
        fx.index(rimg, at, 4)
    });
    let keep: Option<Vec<Value>> = out.mask.map(|m| {
        let ma = fx.index(m, ch0, 4);
        (0..cx.shape.vecs).map(|v| fx.load_ro(F32X4, ma, 16 * v as i64)).collect()
    });
    for (r, vecs) in sums.iter().enumerate() {
        for (v, &s) in vecs.iter().enumerate() {
            let off = 4 * (16 * r + 4 * v) as i64;
            let mut s = s;
            if let Some(ra) = ra {
                let rv = fx.load(F32X4, ra, off);
                s = fx.fadd(s, rv);
            }
            if let Some(a) = cx.act {
                s = vmath::activation(fx, F32X4, a, s);
            }
            if let Some(k) = &keep {
                s = fx.b.ins().band(s, k[v]);
            }
            fx.store(s, ya, off);
        }
    }
}

/// The epilogue on a plain output, lane by lane (channels past the last are not stored).
fn store_plain(fx: &mut Fx, cx: &Cx, out: &Out, ch0: Value, pix: Value, sums: &[Vec<Value>]) {
    let t = &cx.t;
    let hw = (t.oh * t.ow) as i64;
    let chan = fx.muli(ch0, hw);
    let at = fx.add(chan, pix);
    let yimg = cx.y.image(fx, out.n);
    let ya = fx.index(yimg, at, 4);
    let ra = cx.res.map(|r| {
        let rimg = r.image(fx, out.n);
        fx.index(rimg, at, 4)
    });
    for l in 0..cx.shape.channels() {
        let lane_store = |fx: &mut Fx| {
            for (r, vecs) in sums.iter().enumerate() {
                let off = 4 * (l as i64 * hw + r as i64);
                let mut s = fx.b.ins().extractlane(vecs[l / 4], (l % 4) as u8);
                if let Some(ra) = ra {
                    let rv = fx.load(F32, ra, off);
                    s = fx.fadd(s, rv);
                }
                if let Some(a) = cx.act {
                    s = vmath::activation(fx, F32, a, s);
                }
                fx.store(s, ya, off);
            }
        };
        if cx.g.o.is_multiple_of(16) {
            lane_store(fx);
        } else {
            let c = fx.addi(ch0, l as i64);
            let real = fx.icmpi(IntCC::SignedLessThan, c, cx.g.o as i64);
            fx.if_then(real, lane_store);
        }
    }
}
