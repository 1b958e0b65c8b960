//! Forward convolution on small maps at batch > 1 ([`Band::Span`]): tiles whose columns are
//! images, not pixels.
//!
//! On a 2x2 or 1x1 map a row holds one or two pixels, so a tile over one image's pixels is one
//! or two columns wide: every weight vector loaded serves one or two FMAs, and the weights
//! (2.4 MB for 256 channels, 9.4 MB for 512) are re-read for every image. Here a task first
//! gathers its images' input blocks into scratch as `[icb][ih][iw][image][16]`, so the same
//! pixel of consecutive images is 16 floats apart, a plain `a16` run; a tile is then one output
//! pixel of up to 16 images, written in place in `nChw16c` (`Out::c_col` = the output's image
//! stride; the residual and the epilogue as for any tile). Each tile's reduction covers only
//! the kernel rows and columns whose input pixel is inside the map (on a 1x1 map with padding 1,
//! the centre tap of nine), so the gathered input needs no padding and the padding taps cost
//! nothing. A task runs each block pair of its output channels over all its pixels and images
//! before the next pair, so the pair's weights come from memory once and stay in L2.
//!
//! The plan ([`super::conv::ConvPlan`]) decides when a convolution runs this way and splits
//! it into tasks: output-channel blocks x pixels x image chunks (see `conv.rs`).

use super::conv::{Band, ConvArgs, ConvPlan};
use super::tile::{self, Out, Reduce};

/// Runs task `task` of a [`Band::Span`] plan: gathers the task's images, then its tiles.
///
/// # Safety
/// As [`super::conv_fwd::forward_task`]; `plan.band` is [`Band::Span`].
pub unsafe fn forward_task(plan: &ConvPlan, a: &ConvArgs, task: usize, scratch: *mut f32) {
    debug_assert_eq!(plan.band, Band::Span);
    let s = &plan.shape;
    let mut t = task;
    let pix_i = t % plan.n_cols;
    t /= plan.n_cols;
    let oc_i = t % plan.n_oc;
    t /= plan.n_oc;
    let g = t % s.groups;
    let img_i = t / s.groups;
    let n0 = img_i * plan.images;
    let n1 = (n0 + plan.images).min(s.n);
    let p0 = pix_i * plan.col_chunk;
    let p1 = (p0 + plan.col_chunk).min(plan.cols);
    // SAFETY: the images and the group's blocks are inside the input; the gather writes
    // plan.icb * band_icb <= plan.scratch floats (set_band).
    unsafe { gather(plan, a, g, n0..n1, scratch) };
    let ob0 = g * plan.ocb + oc_i * plan.oc_chunk;
    let ob_end = ob0 + plan.oc_chunk;
    let w_ocb = plan.icb * s.kh * s.kw * 256;
    let run = tap_run(plan, p0..p1);
    let per_pixel = (n1 - n0).div_ceil(plan.nw);
    for ob in (ob0..ob_end).step_by(plan.k) {
        let e = Vectors::load(plan, a, ob);
        let w = a.w.wrapping_add(ob * w_ocb);
        let next = NextPair { w: a.w.wrapping_add((ob + plan.k) * w_ocb), run, tiles: (p1 - p0) * per_pixel };
        let next = (ob + plan.k < ob_end).then_some(&next);
        for pix in p0..p1 {
            let pf = next.map(|n| (n, (pix - p0) * per_pixel));
            // SAFETY: forwarded contract; pix, the images and the blocks are the task's.
            unsafe { pixel(plan, a, &e, scratch, w, ob, pix, n0..n1, pf) };
        }
    }
}

/// Copies images `imgs` (blocks of group `g`) into `dst` as `[icb][ih][iw][image][16]`.
///
/// # Safety
/// As [`forward_task`]; `dst` holds `plan.icb * plan.band_icb` floats.
unsafe fn gather(plan: &ConvPlan, a: &ConvArgs, g: usize, imgs: core::ops::Range<usize>, dst: *mut f32) {
    let s = &plan.shape;
    let plane = s.ih * s.iw * 16;
    for (j, n) in imgs.enumerate() {
        for b in 0..plan.icb {
            let src = a.x.wrapping_add(n * a.x_bs + (g * plan.icb + b) * plane);
            for p in 0..s.ih * s.iw {
                // SAFETY: image n < shape.n and block g * icb + b are inside the input (caller);
                // (b, p, j) is inside the gathered layout, which band_icb = ih * iw * images *
                // 16 floats a block bounds (j < plan.images).
                unsafe {
                    let d = dst.add(b * plan.band_icb + (p * plan.images + j) * 16);
                    core::ptr::copy_nonoverlapping(src.add(p * 16), d, 16);
                }
            }
        }
    }
}

/// The taps (as floats from a block's first tap, and 64-byte lines) from the first to the
/// last that any of `pixels` reduces, in the weights' `[kh][kw]` order.
fn tap_run(plan: &ConvPlan, pixels: core::ops::Range<usize>) -> [usize; 2] {
    let s = &plan.shape;
    let (mut first, mut last) = (usize::MAX, 0);
    for pix in pixels {
        let [kh0, kh1] = axis_taps(pix / plan.ow, s.stride[0], s.pad[0], s.kh, s.dilation[0], s.ih);
        let [kw0, kw1] = axis_taps(pix % plan.ow, s.stride[1], s.pad[1], s.kw, s.dilation[1], s.iw);
        if kh0 < kh1 && kw0 < kw1 {
            first = first.min(kh0 * s.kw + kw0);
            last = last.max((kh1 - 1) * s.kw + kw1);
        }
    }
    if first >= last { [0, 0] } else { [first * 256, (last - first) * 16] }
}

/// The next block pair's weights, which the tiles of the current pair prefetch (inside a
/// training step they come from memory, written by the last update; without the hints the
/// 1x1-map layers of ResNet-18 read them at a few GB/s): of each block and input block, the
/// run of taps the task's pixels use ([`tap_run`]), dealt out to the pair's `tiles` tiles.
struct NextPair {
    w: *const f32,
    run: [usize; 2],
    tiles: usize,
}

impl NextPair {
    /// The share of tile `t` (of the pair's tiles): a range of input blocks of one block, or,
    /// when the pair has fewer tiles than blocks, whole blocks.
    fn deal(&self, plan: &ConvPlan, t: usize, out: &mut Out) {
        let s = &plan.shape;
        let (k, icb, tiles) = (plan.k, plan.icb, self.tiles.max(1));
        let tap_block = s.kh * s.kw * 256;
        if tiles < k {
            let (b0, b1) = (t * k / tiles, (t + 1) * k / tiles);
            out.pf = self.w.wrapping_add(b0 * icb * tap_block);
            out.pf_lines = icb * tap_block / 16;
            out.pf_copies = b1 - b0;
            out.pf_blk = (icb * tap_block) as isize;
            return;
        }
        let b = t * k / tiles;
        let (t_lo, t_hi) = ((b * tiles).div_ceil(k), ((b + 1) * tiles).div_ceil(k));
        let (m, i) = ((t_hi - t_lo).max(1), t - t_lo);
        let (i0, i1) = (i * icb / m, ((i + 1) * icb / m).min(icb));
        out.pf = self.w.wrapping_add((b * icb + i0) * tap_block + self.run[0]);
        out.pf_lines = if i1 > i0 { self.run[1] } else { 0 };
        out.pf_copies = i1.saturating_sub(i0).max(1);
        out.pf_blk = tap_block as isize;
    }
}

/// The epilogue vectors of blocks `ob .. ob + k` (zero past `oc`).
struct Vectors {
    bias: [f32; 64],
    scale: [f32; 64],
    shift: [f32; 64],
}

impl Vectors {
    fn load(plan: &ConvPlan, a: &ConvArgs, ob: usize) -> Vectors {
        let mut v = Vectors { bias: [0.0; 64], scale: [0.0; 64], shift: [0.0; 64] };
        let o0 = ob * 16;
        for i in 0..(16 * plan.k).min(plan.shape.oc.saturating_sub(o0)) {
            // SAFETY: o0 + i < oc, and the plan's epilogue vectors hold oc floats where it
            // has them (forward_task's contract); absent ones are null and not read.
            unsafe {
                if plan.epilogue.bias {
                    v.bias[i] = *a.bias.add(o0 + i);
                }
                if plan.epilogue.scale_shift {
                    v.scale[i] = *a.scale.add(o0 + i);
                    v.shift[i] = *a.shift.add(o0 + i);
                }
            }
        }
        v
    }
}

/// The kernel taps `[lo, hi)` of one axis whose input coordinate `o * stride - pad + k * dil`
/// is inside `0..size` (empty when none is).
fn axis_taps(o: usize, stride: usize, pad: usize, k: usize, dil: usize, size: usize) -> [usize; 2] {
    let top = (o * stride) as isize - pad as isize;
    let lo = if top >= 0 { 0 } else { ((-top) as usize).div_ceil(dil) };
    let hi = k.min(((size as isize - top + dil as isize - 1) / dil as isize).max(0) as usize);
    [lo.min(hi), hi]
}

/// The tiles of output pixel `pix`, images `imgs` (balanced widths of at most `plan.nw`),
/// blocks `ob .. ob + k`, reading the gathered input `x` and the pair's weights `w`; with
/// `pf`, the tiles prefetch their shares of the next pair, numbered from the given one.
///
/// # Safety
/// As [`forward_task`]; `x` holds the gathered images `imgs` (the first at column 0).
#[allow(clippy::too_many_arguments)]
unsafe fn pixel(
    plan: &ConvPlan,
    a: &ConvArgs,
    e: &Vectors,
    x: *const f32,
    w: *const f32,
    ob: usize,
    pix: usize,
    imgs: core::ops::Range<usize>,
    pf: Option<(&NextPair, usize)>,
) {
    let s = &plan.shape;
    let (oy, ox) = (pix / plan.ow, pix % plan.ow);
    let [kh0, kh1] = axis_taps(oy, s.stride[0], s.pad[0], s.kh, s.dilation[0], s.ih);
    let [kw0, kw1] = axis_taps(ox, s.stride[1], s.pad[1], s.kw, s.dilation[1], s.iw);
    let img_col = (plan.images * 16) as isize;
    let r = Reduce {
        n: [plan.icb, kh1 - kh0, kw1 - kw0],
        a: [plan.band_icb as isize, s.dilation[0] as isize * plan.band_row as isize, plan.tap_stride as isize],
        b: [(s.kh * s.kw * 256) as isize, (s.kw * 256) as isize, 256],
        steps: 16,
        a_step: 1,
        b_step: 16,
        b_blk: (plan.icb * s.kh * s.kw * 256) as isize,
    };
    // The first tap's input pixel (any in-range value when the reduction is empty).
    let iy = (oy * s.stride[0] + kh0 * s.dilation[0]).saturating_sub(s.pad[0]).min(s.ih - 1);
    let ix = (ox * s.stride[1] + kw0 * s.dilation[1]).saturating_sub(s.pad[1]).min(s.iw - 1);
    let x = x.wrapping_add(iy * plan.band_row + ix * img_col as usize);
    let w = w.wrapping_add((kh0 * s.kw + kw0) * 256);
    let plane_out = plan.oh * plan.ow * 16;
    let mut base = Out::plain(a.y, a.y_bs as isize, plane_out as isize, false);
    base.act = plan.epilogue.act;
    if plan.epilogue.bias {
        base.bias = e.bias.as_ptr();
    }
    if plan.epilogue.scale_shift {
        base.scale = e.scale.as_ptr();
        base.shift = e.shift.as_ptr();
    }
    let tiles = &tile::tiles(plan.isa).a16;
    let count = imgs.len();
    let ntiles = count.div_ceil(plan.nw);
    let mut j = 0;
    for t in 0..ntiles {
        let width = count / ntiles + usize::from(t < count % ntiles);
        let n = imgs.start + j;
        let mut out = base;
        if let Some((next, t0)) = pf {
            next.deal(plan, t0 + t, &mut out);
        }
        out.c = a.y.wrapping_add(n * a.y_bs + ob * plane_out + pix * 16);
        if plan.epilogue.residual {
            out.res = a.res.wrapping_add(n * a.res_bs + ob * plane_out + pix * 16);
            out.res_col = a.res_bs as isize;
            out.res_blk = plane_out as isize;
        }
        // SAFETY: the reduction visits the taps inside the map of the gathered images j ..
        // j + width and the pair's weights of those taps (the plan's blocks); the tile's output
        // and residual vectors are pixel pix of images n .. n + width, blocks ob .. ob + k.
        unsafe { tiles.get(plan.k, width)(x.wrapping_add(j * 16), w, &r, &out) };
        j += width;
    }
}
