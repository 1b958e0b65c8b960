//! Register tiles over a whole small map: the output pixels taken in row-major order across
//! rows, cut into tiles of up to 12 pixels times one vector of four output channels, every
//! tile's position known at compile time so that each pixel reads exactly the kernel taps
//! that meet the input (halo rows and columns alike) at constant offsets.
//!
//! Why: a row tile's accumulators are its pixels, and each of them takes one FMA per kernel
//! column in turn, so a tile of `p` pixels has `p` chains of dependent FMAs. Two FMA pipes of
//! four cycles' latency need eight chains in flight; the 7-pixel rows of a 7x7 output (ResNet's
//! last stage, the stride-2 3x3 convolution on its 14x14 input above all) leave a row tile at
//! 7/8 of the pipes' peak at best, and its halo taps shorten the chains of some pixels only.
//! Tiles that run across rows hold 9-12 chains on such maps. The kernel rows are unrolled
//! with the columns (the pixels of one tile lie on different rows, clipped differently), so
//! this is for small maps only: the code grows with the map.

use super::{Cx, F32, F32X4, TASKS_PER_THREAD, TileShape, accumulators, first_channel, lane_mask, load_i, store};
use crate::emit::Fx;
use crate::error::JitError;
use crate::lower::{Lx, Val};
use cranelift_codegen::ir::Value;

/// 12 pixels x 4 channels: 12 accumulators, the weight vector of one input channel and tap,
/// and a broadcast input value (x64's FMA writes the product into the broadcast's register,
/// which is used once) in 14 of the 16 xmm registers.
pub(super) const SHAPE: TileShape = TileShape { pixels: 12, vecs: 1 };

/// Maps of at most this many output pixels are tiled whole: 7x7 and smaller (49 pixels, five
/// tiles a block of output channels), and rectangular maps of a similar size.
const MAX_PIXELS: usize = 64;

/// Whether a convolution's output is tiled whole: kernels of three or more columns (1x1
/// products have no column chains to lengthen) on maps of more than one row, rows shorter
/// than a row tile ([`super::TALL`]: on longer rows its tiles hold enough chains, and tiling
/// them whole only makes more code to compile) and at most [`MAX_PIXELS`] pixels, whose input
/// offsets fit the loads' 32-bit offsets.
pub(super) fn fits(t: &super::Geo, x: &Val) -> bool {
    t.kw >= 3 && t.oh > 1 && t.ow < super::TALL.pixels && t.oh * t.ow <= MAX_PIXELS && x.bytes < i32::MAX as u64
}

/// One tile: the row-major index of its first pixel, each pixel's `(oy, ox)`, and which of
/// its taps (`ky * kw + kx`) meet the input.
struct Tile {
    first: usize,
    pixels: Vec<(usize, usize)>,
    taps: Vec<Vec<bool>>,
}

/// The map's `oh * ow` pixels in `ceil(pixels / 12)` tiles whose sizes differ by at most one.
fn tiles(t: &super::Geo) -> Vec<Tile> {
    let total = t.oh * t.ow;
    let n = total.div_ceil(SHAPE.pixels);
    let (q, extra) = (total / n, total % n);
    let inside = |o: usize, k: usize, axis: usize, size: usize| {
        let i = (o * t.stride[axis] + k * t.dil[axis]) as isize - t.pad[axis] as isize;
        i >= 0 && (i as usize) < size
    };
    let mut first = 0;
    (0..n)
        .map(|k| {
            let size = q + usize::from(k < extra);
            let pixels: Vec<(usize, usize)> = (first..first + size).map(|p| (p / t.ow, p % t.ow)).collect();
            let taps = pixels
                .iter()
                .map(|&(oy, ox)| {
                    (0..t.kh * t.kw)
                        .map(|tap| inside(oy, tap / t.kw, 0, t.h) && inside(ox, tap % t.kw, 1, t.w))
                        .collect()
                })
                .collect();
            let tile = Tile { first, pixels, taps };
            first += size;
            tile
        })
        .collect()
}

/// Emits the kernel: one task per run of `(image, block of 16 output channels, quarter of
/// the block)` units, each unit every tile of the map.
pub(super) fn emit(lx: &mut Lx, cx: &Cx, w: u64) -> Result<(), JitError> {
    let ocb = cx.g.o.div_ceil(16);
    let parts = cx.shape.parts();
    let units = cx.y.n * ocb * parts;
    let tasks = match lx.tasks(units, cx.g.macs(cx.y.n)) {
        1 => 1,
        _ => units.min(lx.threads * TASKS_PER_THREAD),
    };
    let w_base = lx.table(&cx.reads.w_base);
    let x_base = lx.table(&cx.reads.x_base);
    let mask = lane_mask(lx, cx);
    let tiles = tiles(&cx.t);
    lx.kernel(tasks, |fx| {
        let (lo, hi) = fx.task_range(units, tasks);
        let (wbt, xbt) = (fx.aux(w_base), fx.aux(x_base));
        let mask = mask.map(|m| fx.aux(m));
        let w_abs = fx.abs(w);
        fx.for_range(lo, hi, 1, |fx, u| {
            let part = fx.urem(u, parts as i64);
            let rest = fx.udiv(u, parts as i64);
            let n = fx.udiv(rest, ocb as i64);
            let b = fx.urem(rest, ocb as i64);
            let ximg = cx.x.image(fx, n);
            let xb = load_i(fx, xbt, b);
            let xblk = fx.index(ximg, xb, 4);
            let wb = load_i(fx, wbt, b);
            let wblk = fx.index(w_abs, wb, 4);
            let out = super::Out { n, b, mask };
            for tile in &tiles {
                emit_tile(fx, cx, &out, part, [xblk, wblk], tile);
            }
        });
    })
}

/// One tile on the unit's input (`xblk`: the image at the block's first input chunk) and
/// weights (`wblk`: the block's).
fn emit_tile(fx: &mut Fx, cx: &Cx, out: &super::Out, part: Value, [xblk, wblk]: [Value; 2], tile: &Tile) {
    let (t, rd) = (&cx.t, &cx.reads);
    let ch0 = first_channel(fx, cx, out.b, part);
    let acc = accumulators(fx, cx, ch0, tile.pixels.len());
    let wpart = fx.index(wblk, part, 4 * cx.shape.channels() as i64);
    fx.for_n(0, rd.chunks as i64, |fx, chunk| {
        let xc = fx.index(xblk, chunk, 4 * rd.x_chunk);
        let wc = fx.index(wpart, chunk, 4 * rd.w_chunk);
        fx.for_n(0, rd.chunk_len as i64, |fx, c| {
            let xi = fx.index(xc, c, 4 * rd.x_chan);
            let wi = fx.index(wc, c, 4 * rd.w_chan);
            for tap in 0..t.kh * t.kw {
                if tile.taps.iter().all(|p| !p[tap]) {
                    continue;
                }
                let (ky, kx) = (tap / t.kw, tap % t.kw);
                let wv: Vec<Value> = (0..cx.shape.vecs)
                    .map(|v| fx.load_ro(F32X4, wi, 4 * (tap as i64 * rd.w_tap + 4 * v as i64)))
                    .collect();
                for (r, &(oy, ox)) in tile.pixels.iter().enumerate() {
                    if !tile.taps[r][tap] {
                        continue;
                    }
                    // Inside the input (the tap is read), so both are at least zero.
                    let iy = (oy * t.stride[0] + ky * t.dil[0] - t.pad[0]) as i64;
                    let ix = (ox * t.stride[1] + kx * t.dil[1] - t.pad[1]) as i64;
                    let s = fx.load(F32, xi, 4 * (iy * rd.x_row + ix * rd.x_pix));
                    let s = fx.splat(F32X4, s);
                    for (v, &wv) in wv.iter().enumerate() {
                        let cur = fx.get(acc[r][v]);
                        let nv = fx.fma(s, wv, cur);
                        fx.set(acc[r][v], nv);
                    }
                }
            }
        });
    });
    let pix = fx.int(tile.first as i64);
    store(fx, cx, out, ch0, pix, &acc);
}
