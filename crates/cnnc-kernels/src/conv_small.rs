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
    let [pix_i, _, oc_i, g, img_i] = plan.task_place(task);
    let n0 = img_i * plan.images;
    let n1 = (n0 + plan.images).min(s.n);
    let p0 = pix_i * plan.col_chunk;
    let p1 = (p0 + plan.col_chunk).min(plan.cols);
    let x = a.x.wrapping_add(g * plan.icb * s.ih * s.iw * 16);
    // SAFETY: the images and the group's blocks are inside the input; the gather writes
    // plan.icb * band_icb <= plan.scratch floats (set_band).
    unsafe { gather(x, a.x_bs, core::ptr::null(), 0, plan.icb, s.ih * s.iw, n0..n1, plan.images, scratch) };
    let ob0 = g * plan.ocb + oc_i * plan.oc_chunk;
    let ob_end = ob0 + plan.oc_chunk;
    let w_ocb = plan.icb * s.kh * s.kw * 256;
    let run = tap_run(s.kw, (p0..p1).map(|pix| fwd_taps(plan, pix)));
    let per_pixel = (n1 - n0).div_ceil(plan.nw);
    for ob in (ob0..ob_end).step_by(plan.k) {
        let e = Vectors::load(plan, a, ob);
        let w = a.w.wrapping_add(ob * w_ocb);
        let next = NextPair {
            w: a.w.wrapping_add((ob + plan.k) * w_ocb),
            run,
            tiles: (p1 - p0) * per_pixel,
            k: plan.k,
            reduced: plan.icb,
            taps: s.kh * s.kw * 256,
        };
        let next = (ob + plan.k < ob_end).then_some(&next);
        for pix in p0..p1 {
            let pf = next.map(|n| (n, (pix - p0) * per_pixel));
            // SAFETY: forwarded contract; pix, the images and the blocks are the task's.
            unsafe { pixel(plan, a, &e, scratch, w, ob, pix, n0..n1, pf) };
        }
    }
}

/// Copies `blocks` blocks of `pixels` pixels of images `imgs` (image `n`'s first block at
/// `src + n * src_bs`, blocks `pixels * 16` floats apart) into `dst` as
/// `[block][pixel][image][16]` with `images` image slots, the first image in slot 0; where
/// `mask` (addressed as `src`, with `mask_bs`) is not null, a value whose mask is not
/// positive becomes zero (the ReLU of a fused conv + ReLU, for gradients).
///
/// # Safety
/// Every block read (and its mask) must be readable, `dst` writable for
/// `blocks * pixels * images * 16` floats, and `imgs.len() <= images`.
#[allow(clippy::too_many_arguments)]
pub unsafe fn gather(
    src: *const f32,
    src_bs: usize,
    mask: *const f32,
    mask_bs: usize,
    blocks: usize,
    pixels: usize,
    imgs: core::ops::Range<usize>,
    images: usize,
    dst: *mut f32,
) {
    let plane = pixels * 16;
    for (j, n) in imgs.enumerate() {
        for b in 0..blocks {
            let from = src.wrapping_add(n * src_bs + b * plane);
            let m = mask.wrapping_add(n * mask_bs + b * plane);
            for p in 0..pixels {
                // SAFETY: block b of image n is readable (caller), as its mask when asked;
                // slot (b, p, j) is inside dst (j < images).
                unsafe {
                    let d = dst.add((b * pixels + p) * images * 16 + j * 16);
                    if mask.is_null() {
                        core::ptr::copy_nonoverlapping(from.add(p * 16), d, 16);
                    } else {
                        for l in 0..16 {
                            let keep = *m.add(p * 16 + l) > 0.0;
                            *d.add(l) = if keep { *from.add(p * 16 + l) } else { 0.0 };
                        }
                    }
                }
            }
        }
    }
}

/// The tiles of one pixel of `count` images: balanced widths of at most `nw`, tile `t` from
/// image `j` reading `a + 16 j` (gathered images) and weights `b` through `r`, writing
/// `base` moved by `j` images (`c_col`, and `res_col` when there is a residual) after
/// `deal(t, out)` (prefetches).
///
/// # Safety
/// `tiles` of an instruction set the CPU supports; every tile's reduction and output must
/// satisfy [`tile::TileFn`]'s contract.
#[allow(clippy::too_many_arguments)]
pub unsafe fn image_tiles(
    tiles: &tile::TileSet,
    k: usize,
    nw: usize,
    a: *const f32,
    b: *const f32,
    r: &Reduce,
    base: &Out,
    count: usize,
    deal: &dyn Fn(usize, &mut Out),
) {
    let ntiles = count.div_ceil(nw);
    let mut j = 0;
    for t in 0..ntiles {
        let width = count / ntiles + usize::from(t < count % ntiles);
        let mut out = *base;
        deal(t, &mut out);
        out.c = base.c.wrapping_offset(j as isize * base.c_col);
        if !base.res.is_null() {
            out.res = base.res.wrapping_offset(j as isize * base.res_col);
        }
        // SAFETY: the caller's contract, for images j .. j + width.
        unsafe { tiles.get(k, width)(a.wrapping_add(j * 16), b, r, &out) };
        j += width;
    }
}

/// The taps (as floats from a block's first tap, and 64-byte lines) from the first to the
/// last of the kernel-row and kernel-column ranges `taps` yields (one per pixel), in the
/// weights' `[kh][kw]` order for kernels `kw` wide.
pub fn tap_run(kw: usize, taps: impl Iterator<Item = ([usize; 2], [usize; 2])>) -> [usize; 2] {
    let (mut first, mut last) = (usize::MAX, 0);
    for ([kh0, kh1], [kw0, kw1]) in taps {
        if kh0 < kh1 && kw0 < kw1 {
            first = first.min(kh0 * kw + kw0);
            last = last.max((kh1 - 1) * kw + kw1);
        }
    }
    if first >= last { [0, 0] } else { [first * 256, (last - first) * 16] }
}

/// The next block pair's weights, which the tiles of the current pair prefetch (inside a
/// training step they come from memory, written by the last update; without the hints the
/// 2x2-map layers of ResNet-18 read them at a few GB/s): of each of the `k` blocks and each of
/// the `reduced` blocks it reduces over (`taps` floats each, `[kh][kw][16][16]`), the run of
/// taps the task's pixels use ([`tap_run`]), dealt out to the pair's `tiles` tiles.
pub struct NextPair {
    pub w: *const f32,
    pub run: [usize; 2],
    pub tiles: usize,
    pub k: usize,
    pub reduced: usize,
    pub taps: usize,
}

impl NextPair {
    /// The share of tile `t` (of the pair's tiles): a range of reduced blocks of one block,
    /// or, when the pair has fewer tiles than blocks, whole blocks.
    pub fn deal(&self, t: usize, out: &mut Out) {
        let (k, icb, tiles, tap_block) = (self.k, self.reduced, self.tiles.max(1), self.taps);
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

/// The kernel rows and columns output pixel `pix` of a forward plan reduces.
fn fwd_taps(plan: &ConvPlan, pix: usize) -> ([usize; 2], [usize; 2]) {
    let s = &plan.shape;
    let (oy, ox) = (pix / plan.ow, pix % plan.ow);
    (
        axis_taps(fwd_top(oy, s.stride[0], s.pad[0]), s.kh, s.dilation[0], s.ih),
        axis_taps(fwd_top(ox, s.stride[1], s.pad[1]), s.kw, s.dilation[1], s.iw),
    )
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

/// The kernel taps `[lo, hi)` of one axis whose input coordinate `top + k * dil` is inside
/// `0..size` (empty when none is).
pub fn axis_taps(top: isize, k: usize, dil: usize, size: usize) -> [usize; 2] {
    let lo = if top >= 0 { 0 } else { ((-top) as usize).div_ceil(dil) };
    let hi = k.min(((size as isize - top + dil as isize - 1) / dil as isize).max(0) as usize);
    [lo.min(hi), hi]
}

/// The input coordinate of output coordinate `o`'s first tap.
fn fwd_top(o: usize, stride: usize, pad: usize) -> isize {
    (o * stride) as isize - pad as isize
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
    let ([kh0, kh1], [kw0, kw1]) = fwd_taps(plan, pix);
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
    base.c = a.y.wrapping_add(imgs.start * a.y_bs + ob * plane_out + pix * 16);
    if plan.epilogue.residual {
        base.res = a.res.wrapping_add(imgs.start * a.res_bs + ob * plane_out + pix * 16);
        base.res_col = a.res_bs as isize;
        base.res_blk = plane_out as isize;
    }
    let deal = |t: usize, out: &mut Out| {
        if let Some((next, t0)) = pf {
            next.deal(t0 + t, out);
        }
    };
    let tiles = &tile::tiles(plan.isa).a16;
    // SAFETY: the reduction visits the taps inside the map of the gathered images and the
    // pair's weights of those taps (the plan's blocks); a tile's output and residual vectors
    // are pixel pix of its images, blocks ob .. ob + k.
    unsafe { image_tiles(tiles, plan.k, plan.nw, x, w, &r, &base, imgs.len(), &deal) };
}
