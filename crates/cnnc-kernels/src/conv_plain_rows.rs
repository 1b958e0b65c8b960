//! Plain-map convolution tiles whose vectors run over 16 output pixels of a row: the forward
//! convolution of a plain input to a plain (`nchw`) output (LeNet-style layers, the plain-map
//! input gradient), and the band of zero-padded input rows they and the plain weight
//! gradient (`conv_plain_bwd`) read.
//!
//! A forward tile holds up to 6 output channels x 4 pixel vectors in registers over every tap
//! (input channel x kernel row x kernel column): per tap 4 band loads and one weight broadcast
//! per channel for 24 FMAs. The output is written straight into the channel planes (the last
//! vector of a row masked) with bias, scale and shift, residual and a piecewise-linear
//! activation applied in registers; other activations run over the task's rows afterwards.

use super::act::{self, Act};
use super::conv::{ConvArgs, ConvShape, Epilogue};
use super::error::{KernelError, product};
use super::simd::{Isa, Simd, isa_fn};

/// Input rows of a pass, zero-padded: band row `r` of a channel is padded input row
/// `oy0 * sh + r` of the pass's first output row `oy0`. With column stride 1 a band row is
/// the padded input row; above 1 it holds each kernel column's pixels compacted
/// (`[kw][ow]`), so that the pixels a vector reads are consecutive either way.
#[derive(Clone, Copy, Debug, PartialEq)]
#[repr(C)]
pub struct RowBand {
    pub compact: bool,
    /// Output columns.
    pub ow: usize,
    /// Floats of a band row.
    pub row: usize,
    /// Floats of one input channel's band (the rows of a full pass).
    pub channel: usize,
    /// Floats of the whole band, with a vector of slack at the end (a row's last vector may
    /// read past it).
    pub len: usize,
}

impl RowBand {
    /// The band of passes of `rows` output rows.
    pub fn new(s: &ConvShape, ow: usize, rows: usize) -> Result<RowBand, KernelError> {
        let compact = s.stride[1] > 1;
        let row = if compact { s.kw * ow } else { s.iw + 2 * s.pad[1] };
        let rows = (rows.max(1) - 1) * s.stride[0] + (s.kh - 1) * s.dilation[0] + 1;
        let channel = product("band", &[rows, row])?;
        let len = product("band", &[s.ic, channel])?.checked_add(16).ok_or(KernelError::Overflow { what: "band" })?;
        Ok(RowBand { compact, ow, row, channel, len })
    }

    /// Where tap (input channel `c`, kernel row `ky`, kernel column `kx`) of the pass's first
    /// output pixel is.
    pub fn tap(&self, s: &ConvShape, [c, ky, kx]: [usize; 3]) -> usize {
        let col = kx * self.kx_step(s);
        c * self.channel + ky * s.dilation[0] * self.row + col
    }

    /// The band offsets of every tap in the weights' order (input channel, kernel row, kernel
    /// column), one after the other without a division.
    pub fn taps<'a>(&'a self, s: &'a ConvShape) -> Taps<'a> {
        Taps { band: self, s, at: [0; 3] }
    }

    /// The distance between kernel columns of one tap row.
    pub fn kx_step(&self, s: &ConvShape) -> usize {
        if self.compact { self.ow } else { s.dilation[1] }
    }

    /// Where output pixel `(oy, ox)` (`oy` counted from the pass's first row) reads tap 0.
    pub fn pixel(&self, s: &ConvShape, oy: usize, ox: usize) -> usize {
        let col = if self.compact { ox } else { ox * s.stride[1] };
        oy * s.stride[0] * self.row + col
    }

    /// Copies the padded input rows of output rows `oy0..oy1` from image `x` (`ic x ih x iw`).
    ///
    /// # Safety
    /// `x` valid for the image, `band` for `self.len` floats; `oy0 < oy1`, at most the rows
    /// the band was made for.
    pub unsafe fn copy(&self, s: &ConvShape, x: *const f32, [oy0, oy1]: [usize; 2], band: *mut f32) {
        let [sh, sw] = s.stride;
        let ow = self.ow;
        let pw = s.pad[1];
        let rows = (oy1 - oy0 - 1) * sh + (s.kh - 1) * s.dilation[0] + 1;
        for c in 0..s.ic {
            for r in 0..rows {
                let iy = (oy0 * sh + r) as isize - s.pad[0] as isize;
                let dst = band.wrapping_add(c * self.channel + r * self.row);
                if iy < 0 || iy as usize >= s.ih {
                    // SAFETY: a band row.
                    unsafe { dst.write_bytes(0, self.row) };
                    continue;
                }
                let src = x.wrapping_add((c * s.ih + iy as usize) * s.iw);
                // SAFETY: iy < ih: a row of the image; the destination row is inside the band.
                unsafe {
                    if self.compact {
                        for kx in 0..s.kw {
                            for ox in 0..ow {
                                let ix = (ox * sw + kx * s.dilation[1]) as isize - pw as isize;
                                let inside = ix >= 0 && (ix as usize) < s.iw;
                                *dst.add(kx * ow + ox) = if inside { *src.add(ix as usize) } else { 0.0 };
                            }
                        }
                    } else {
                        dst.write_bytes(0, pw);
                        core::ptr::copy_nonoverlapping(src, dst.add(pw), s.iw);
                        dst.add(pw + s.iw).write_bytes(0, pw);
                    }
                }
            }
        }
        // SAFETY: the slack vector at the end of the band (read, never used, by last vectors).
        unsafe { band.add(self.len - 16).write_bytes(0, 16) };
    }
}

/// See [`RowBand::taps`].
#[derive(Clone, Copy, Debug)]
pub struct Taps<'a> {
    band: &'a RowBand,
    s: &'a ConvShape,
    at: [usize; 3],
}

impl Iterator for Taps<'_> {
    type Item = usize;
    fn next(&mut self) -> Option<usize> {
        let [c, ky, kx] = self.at;
        if c >= self.s.ic {
            return None;
        }
        let off = self.band.tap(self.s, self.at);
        self.at = if kx + 1 < self.s.kw {
            [c, ky, kx + 1]
        } else if ky + 1 < self.s.kh {
            [c, ky + 1, 0]
        } else {
            [c + 1, 0, 0]
        };
        Some(off)
    }
}

/// Output channels of a forward tile at most, and its pixel vectors.
const TILE_OC: usize = 6;
const TILE_PX: usize = 4;

/// One forward pass: output rows `rows` of image `n`, output channels `oc` (plain output).
#[derive(Clone, Copy, Debug)]
pub struct RowsPass {
    pub n: usize,
    pub rows: [usize; 2],
    pub oc: [usize; 2],
    pub oh: usize,
    pub ow: usize,
}

/// Convolution of one pass into the plain output, the band already copied.
///
/// # Safety
/// `a` valid for `s` (plain images; `Oihw16o` weights; vectors of `oc` floats where the
/// epilogue has them; plain output and residual images of `oc x oh x ow`), the band copied for
/// the pass's rows; `isa` supported by the CPU; nothing else writes the pass's output.
pub unsafe fn forward_pass(
    isa: Isa,
    s: &ConvShape,
    e: &Epilogue,
    a: &ConvArgs,
    band: &RowBand,
    b: *const f32,
    p: &RowsPass,
) {
    let ohw = p.oh * p.ow;
    // Groups of channels inside one 16-channel block, so that a group's weights of a tap are
    // consecutive floats (one pointer for all its broadcasts).
    for blk in (p.oc[0]..p.oc[1]).step_by(16) {
        let count = 16.min(p.oc[1] - blk);
        let groups = count.div_ceil(TILE_OC);
        let mut o = blk;
        for g in 0..groups {
            let oc = count / groups + usize::from(g < count % groups);
            let ch = Channels::new(s, e, a, p, o, oc);
            // SAFETY: forwarded contract; the tiles read band floats of the pass's pixels'
            // taps and write the pass's pixels of channels o..o + oc.
            unsafe { tiles(isa, oc, s, band, &ch, b, p) };
            if !e.act.is_cheap() {
                for c in o..o + oc {
                    let at = a.y.wrapping_add(p.n * a.y_bs + c * ohw + p.rows[0] * p.ow);
                    // SAFETY: the pass's rows of channel c, written above.
                    unsafe { act::apply_in_place(isa, at, (p.rows[1] - p.rows[0]) * p.ow, &e.act) };
                }
            }
            o += oc;
        }
    }
}

/// A tile's output channels (inside one block): weights (`Oihw16o`: tap `t` of channel `i`
/// at `w + 16 t + i`), epilogue values, output and residual planes of the image.
struct Channels {
    w: *const f32,
    bias: [f32; TILE_OC],
    scale: [f32; TILE_OC],
    shift: [f32; TILE_OC],
    y: [*mut f32; TILE_OC],
    res: [*const f32; TILE_OC],
    act: Act,
    scale_shift: bool,
    residual: bool,
}

impl Channels {
    fn new(s: &ConvShape, e: &Epilogue, a: &ConvArgs, p: &RowsPass, o0: usize, count: usize) -> Channels {
        let taps = s.ic * s.kh * s.kw;
        let ohw = p.oh * p.ow;
        let at = |i: usize| o0 + i.min(count - 1);
        let vector = |v: *const f32, i: usize, none: f32| {
            // SAFETY: a present vector holds oc floats (forward_pass's contract); at(i) < oc.
            if v.is_null() { none } else { unsafe { *v.add(at(i)) } }
        };
        Channels {
            w: a.w.wrapping_add(o0 / 16 * taps * 16 + o0 % 16),
            bias: core::array::from_fn(|i| vector(a.bias, i, 0.0)),
            scale: core::array::from_fn(|i| vector(a.scale, i, 1.0)),
            shift: core::array::from_fn(|i| vector(a.shift, i, 0.0)),
            y: core::array::from_fn(|i| a.y.wrapping_add(p.n * a.y_bs + at(i) * ohw)),
            res: core::array::from_fn(|i| a.res.wrapping_add(p.n * a.res_bs + at(i) * ohw)),
            act: if e.act.is_cheap() { e.act } else { Act::NONE },
            scale_shift: e.scale_shift,
            residual: e.residual,
        }
    }
}

/// A tile's pixel vectors: where each reads tap 0 in the band, its offset in the output
/// planes, its lanes; vectors from `live` on are copies and are not written.
struct Pixels {
    x: [*const f32; TILE_PX],
    at: [usize; TILE_PX],
    lanes: [usize; TILE_PX],
    live: usize,
}

/// The tiles of a pass for `oc` channels (1..=6).
///
/// # Safety
/// As [`forward_pass`].
unsafe fn tiles(isa: Isa, oc: usize, s: &ConvShape, band: &RowBand, ch: &Channels, b: *const f32, p: &RowsPass) {
    // SAFETY: forwarded contract.
    unsafe {
        match oc {
            1 => tiles_1(isa, s, band, ch, b, p),
            2 => tiles_2(isa, s, band, ch, b, p),
            3 => tiles_3(isa, s, band, ch, b, p),
            4 => tiles_4(isa, s, band, ch, b, p),
            5 => tiles_5(isa, s, band, ch, b, p),
            _ => tiles_6(isa, s, band, ch, b, p),
        }
    }
}

macro_rules! tile_shapes {
    ($($name:ident, $generic:ident = $oc:literal;)*) => {$(
        #[inline(always)]
        unsafe fn $generic<S: Simd>(s: S, shape: &ConvShape, band: &RowBand, ch: &Channels, b: *const f32, p: &RowsPass) {
            // SAFETY: forwarded contract.
            unsafe { pass_tiles::<S, $oc>(s, shape, band, ch, b, p) }
        }
        isa_fn! {
            /// The tiles of one channel count, per instruction set.
            ///
            /// # Safety
            /// As [`tiles`].
            unsafe fn $name(shape: &ConvShape, band: &RowBand, ch: &Channels, b: *const f32, p: &RowsPass) = $generic;
        }
    )*};
}

tile_shapes! {
    tiles_1, tiles_1_generic = 1;
    tiles_2, tiles_2_generic = 2;
    tiles_3, tiles_3_generic = 3;
    tiles_4, tiles_4_generic = 4;
    tiles_5, tiles_5_generic = 5;
    tiles_6, tiles_6_generic = 6;
}

/// Every tile of a pass for one group of `OC` channels, in one function so that a tile's
/// setup is a few instructions (27 taps are only about 320 cycles of FMAs).
///
/// # Safety
/// As [`tiles`].
#[inline(always)]
unsafe fn pass_tiles<S: Simd, const OC: usize>(
    s: S,
    shape: &ConvShape,
    band: &RowBand,
    ch: &Channels,
    b: *const f32,
    p: &RowsPass,
) {
    let pixels = (p.rows[1] - p.rows[0]) * p.ow.div_ceil(16);
    // The next pixel vector (row from the pass's first, column), advanced without a
    // division; the copies that fill a last tile repeat its last vector.
    let (mut cursor, mut last) = ([0, 0], [0, 0]);
    for q0 in (0..pixels).step_by(TILE_PX) {
        let mut px = Pixels { x: [b; TILE_PX], at: [0; TILE_PX], lanes: [0; TILE_PX], live: 0 };
        px.live = TILE_PX.min(pixels - q0);
        for j in 0..TILE_PX {
            if j < px.live {
                last = cursor;
                cursor = if cursor[1] + 16 < p.ow { [cursor[0], cursor[1] + 16] } else { [cursor[0] + 1, 0] };
            }
            let [oy, ox] = last;
            px.x[j] = b.wrapping_add(band.pixel(shape, oy, ox));
            px.at[j] = (p.rows[0] + oy) * p.ow + ox;
            px.lanes[j] = 16.min(p.ow - ox);
        }
        // SAFETY: forwarded contract.
        unsafe { tile::<S, OC>(s, shape, band, ch, &px) };
    }
}

/// One tile: `OC` channels x 4 pixel vectors of accumulators over every tap, then the
/// epilogue and the (masked) stores.
///
/// # Safety
/// As [`tiles`], for the tile's pixels.
#[inline(always)]
unsafe fn tile<S: Simd, const OC: usize>(s: S, shape: &ConvShape, band: &RowBand, ch: &Channels, px: &Pixels) {
    let mut acc = [[s.zero(); TILE_PX]; OC];
    let (kx_step, ky_step) = (band.kx_step(shape), shape.dilation[0] * band.row);
    // Offsets and the weight pointer advanced tap by tap (input channel, kernel row, kernel
    // column: the weights' order).
    let mut w = ch.w;
    let mut off_c = 0;
    for _ in 0..shape.ic {
        let mut off_y = off_c;
        for _ in 0..shape.kh {
            let mut off = off_y;
            for _ in 0..shape.kw {
                // SAFETY: this tap of every pixel lies in the band (with its slack vector); the
                // weights hold every tap of the tile's channels.
                unsafe {
                    let xv: [S::V; TILE_PX] = core::array::from_fn(|j| s.load(px.x[j].add(off)));
                    for (i, row) in acc.iter_mut().enumerate() {
                        let wv = s.bcast(w.add(i));
                        for (a, &x) in row.iter_mut().zip(&xv) {
                            *a = s.fmadd(wv, x, *a);
                        }
                    }
                }
                off += kx_step;
                w = w.wrapping_add(16);
            }
            off_y += ky_step;
        }
        off_c += band.channel;
    }
    for (i, row) in acc.iter().enumerate() {
        let (bias, scale, shift) = (s.splat(ch.bias[i]), s.splat(ch.scale[i]), s.splat(ch.shift[i]));
        for (j, &v) in row.iter().enumerate().take(px.live) {
            let mut v = s.add(v, bias);
            if ch.scale_shift {
                v = s.fmadd(v, scale, shift);
            }
            // SAFETY: pixels at..at + lanes of channel i's output and residual planes.
            unsafe {
                if ch.residual {
                    v = s.add(v, s.load_n(ch.res[i].add(px.at[j]), px.lanes[j]));
                }
                s.store_n(ch.y[i].add(px.at[j]), px.lanes[j], act::forward(s, &ch.act, v));
            }
        }
    }
}
