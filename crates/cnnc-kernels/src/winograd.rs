//! Winograd convolution F(m x m, 3x3) forward on blocked maps, m = 2 or 4: 3x3, stride 1, no
//! dilation, one group, `nChw16c` in and out, with the fused epilogue of the direct kernel
//! (bias, unfolded batch-norm scale and shift, residual, activation).
//!
//! Each m x m block of outputs ("tile") is computed from the (m+2) x (m+2) input patch under it
//! as `Y = A^T [ (G g G^T) . (B^T d B) ] A` (Lavin and Gray, "Fast Algorithms for Convolutional
//! Neural Networks", 2016): (m+2)^2 products per tile and channel pair instead of 9 m^2, 2.25
//! times fewer multiply-adds than the direct convolution for m = 2, 4 times for m = 4. The
//! transformed weights `U = G g G^T` (`[(m+2)^2 positions][ocb][icb][16 i][16 o]`,
//! [`weight_len`] floats) are made once from the weights ([`transform_weights`], in f64), by
//! the back end when weights load. F(2x2, 3x3)'s coefficients are 0, +-1 and +-1/2, as exact as
//! the direct convolution; F(4x4, 3x3)'s reach 8 and 1/24 and cost about a decimal digit
//! (relative errors of 1e-6 against 1e-7 on ResNet-sized sums).
//!
//! A task is a band of tile rows x a chunk of output-channel blocks of one image, and runs in
//! three steps on its thread's scratch: the input transform of the band (`V`, `[pos][icb]
//! [tiles][16]`, zero outside the input, so the halo costs no branch in the products), one
//! product `M[p] = V[p] . U[p]` per position `p` (a batch-reduce over the input blocks run by
//! the register tiles of `tile.rs`, the tiles being the columns), then the output transform of
//! `M` with the epilogue, written once. The band's `V` and `M` stay in L2, and every weight
//! vector the tiles load serves all the band's tiles.

use super::act;
use super::conv::{ConvArgs, ConvIo, ConvShape, Epilogue, blocked_args, choose_tile, packed_weight_len};
use super::error::{KernelError, check_len, check_min_len, product};
use super::par::{Parallel, SyncPtr};
use super::simd::{Cpu, Isa, Simd, isa_fn};
use super::tile::{self, Out, Reduce};
use super::view::pad16;

/// Floats a thread's `V` and `M` may take together (1.25 MiB; the products sweep them one
/// position at a time, so they need not fit L2 whole): bands are cut to fit. On Zen 5,
/// ResNet-50's 3x3 256 -> 256 at 14 x 14 ran 14 % faster as one band of 1.2 MB a task (the
/// blocks split in two) than as two bands of half as many tiles.
const SCRATCH_FLOATS: usize = 320 << 10;

/// Bytes of transformed weights above which they come from memory in a model.
const BIG_WEIGHTS: usize = 8 << 20;

/// Tiles a band should hold at least, when the map has them: each weight vector a tile loads
/// serves this many tiles, so the products are not bound by the weights' stream from L2/L3.
const MIN_TILES: usize = 24;

/// Bytes of transformed weights from which tasks prefetch the weights they read next.
const PREFETCH_BYTES: usize = 2 << 20;

/// Whether the Winograd kernel can run `shape` (3x3, stride 1, no dilation, one group, padding
/// at most 2 on each axis).
pub fn applies(shape: &ConvShape) -> bool {
    shape.kh == 3
        && shape.kw == 3
        && shape.stride == [1, 1]
        && shape.dilation == [1, 1]
        && shape.groups == 1
        && shape.pad[0] <= 2
        && shape.pad[1] <= 2
        && shape.out_hw().is_ok()
}

/// The output tile (2 or 4) a back end should run `shape` with through Winograd, or `None`
/// where the direct kernel is faster: it [`applies`], and for maps of fewer than 7 x 7 tiles,
/// whose few tiles reuse each weight little, the transformed weights of F(2x2, 3x3) (16/9 of
/// the direct kernel's) stay under 4 MiB. Measured on Zen 5 with warm weights, 2 threads:
/// F(2x2, 3x3) ran ResNet-50's 3x3 layers at 56, 28 and 14 pixels 1.6-1.9 times as fast as the
/// direct kernel, 1.1-1.3 at 512 channels on 7 x 7, where 16 MB of weights stream from memory
/// (and more in a model, where they are cold).
pub fn preferred(shape: &ConvShape) -> Option<usize> {
    let Ok([oh, ow]) = shape.out_hw() else { return None };
    let tiles = |m: usize| oh.div_ceil(m) * ow.div_ceil(m);
    let blocks = shape.ic.div_ceil(16) * shape.oc.div_ceil(16);
    // Below one input block the transforms weigh as much as the products (not measured).
    if !applies(shape) || shape.ic < 16 || (tiles(2) < 49 && blocks > 256) {
        return None;
    }
    // F(4x4, 3x3) where maps have 7 x 7 of its tiles or more (1.4-1.6 times F(2x2, 3x3)'s speed
    // on ResNet-50's, GoogLeNet's and VGG-16's layers at 28 pixels and more, 64 to 512 channels);
    // on 14 x 14 maps (16 tiles, 30 % of them past the map) the two tie.
    Some(if tiles(4) >= 49 { 4 } else { 2 })
}

/// The positions of a transformed tile for output tiles of `m x m`: `(m + 2)^2`, or an error
/// for a tile size other than 2 and 4.
fn positions(m: usize) -> Result<usize, KernelError> {
    match m {
        2 | 4 => Ok((m + 2) * (m + 2)),
        _ => Err(KernelError::Unsupported { what: "winograd output tiles are 2x2 or 4x4" }),
    }
}

/// Floats of transformed weights for output tiles of `m x m`: `(m+2)^2 x ocb x icb x 256`.
pub fn weight_len(shape: &ConvShape, m: usize) -> Result<usize, KernelError> {
    product("winograd weights", &[positions(m)?, shape.oc.div_ceil(16), shape.ic.div_ceil(16), 256])
}

/// `G` of F(2x2, 3x3).
const G2: [[f64; 3]; 4] = [[1.0, 0.0, 0.0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0.0, 0.0, 1.0]];

/// `G` of F(4x4, 3x3) (interpolation points 0, 1, -1, 2, -2 and infinity).
const G4: [[f64; 3]; 6] = [
    [1.0 / 4.0, 0.0, 0.0],
    [-1.0 / 6.0, -1.0 / 6.0, -1.0 / 6.0],
    [-1.0 / 6.0, 1.0 / 6.0, -1.0 / 6.0],
    [1.0 / 24.0, 1.0 / 12.0, 1.0 / 6.0],
    [1.0 / 24.0, -1.0 / 12.0, 1.0 / 6.0],
    [0.0, 0.0, 1.0],
];

/// `U = G g G^T` for every filter pair, from weights `w(o, i, y, x)` (a 3x3 kernel), in f64.
fn transform_with(shape: &ConvShape, m: usize, dst: &mut [f32], w: impl Fn(usize, usize, usize, usize) -> f32) {
    let (ocb, icb) = (shape.oc.div_ceil(16), shape.ic.div_ceil(16));
    let g_rows: &[[f64; 3]] = if m == 4 { &G4 } else { &G2 };
    let t = g_rows.len();
    dst.fill(0.0);
    for o in 0..shape.oc {
        for i in 0..shape.ic {
            let g: [[f64; 3]; 3] = core::array::from_fn(|y| core::array::from_fn(|x| f64::from(w(o, i, y, x))));
            // G g: t x 3.
            let mut gg = [[0f64; 3]; 6];
            for (r, grow) in g_rows.iter().enumerate() {
                for c in 0..3 {
                    gg[r][c] = grow[0] * g[0][c] + grow[1] * g[1][c] + grow[2] * g[2][c];
                }
            }
            for (r, ggrow) in gg.iter().take(t).enumerate() {
                for (c, gcol) in g_rows.iter().enumerate() {
                    let u = ggrow[0] * gcol[0] + ggrow[1] * gcol[1] + ggrow[2] * gcol[2];
                    let at = ((((r * t + c) * ocb + o / 16) * icb + i / 16) * 16 + i % 16) * 16 + o % 16;
                    dst[at] = u as f32;
                }
            }
        }
    }
}

fn check_weights(shape: &ConvShape, m: usize, src: usize, expected: usize, dst: usize) -> Result<(), KernelError> {
    if !applies(shape) {
        return Err(KernelError::Unsupported { what: "winograd needs a 3x3 stride-1 convolution of one group" });
    }
    check_len("weights", src, expected)?;
    check_len("winograd weights", dst, weight_len(shape, m)?)
}

/// [`weight_len`] floats of transformed weights for `m x m` output tiles from the packed
/// `OIhw16i16o` weights of `shape` (what the direct kernel reads).
pub fn transform_weights(shape: &ConvShape, m: usize, packed: &[f32], dst: &mut [f32]) -> Result<(), KernelError> {
    check_weights(shape, m, packed.len(), packed_weight_len(shape)?, dst.len())?;
    let icb = shape.ic.div_ceil(16);
    transform_with(shape, m, dst, |o, i, y, x| {
        packed[((((o / 16) * icb + i / 16) * 3 + y) * 3 + x) * 256 + (i % 16) * 16 + o % 16]
    });
    Ok(())
}

/// [`weight_len`] floats of transformed weights for `m x m` output tiles from PyTorch's
/// `oihw` weights of `shape`.
pub fn transform_plain_weights(shape: &ConvShape, m: usize, oihw: &[f32], dst: &mut [f32]) -> Result<(), KernelError> {
    check_weights(shape, m, oihw.len(), product("weights", &[shape.oc, shape.ic, 9])?, dst.len())?;
    transform_with(shape, m, dst, |o, i, y, x| oihw[((o * shape.ic + i) * 3 + y) * 3 + x]);
    Ok(())
}

/// A checked Winograd convolution and its split into tasks. Made by [`WinoPlan::new`] only:
/// the raw entry points trust every field.
#[derive(Clone, Copy, Debug, PartialEq)]
#[repr(C)]
pub struct WinoPlan {
    pub(crate) shape: ConvShape,
    pub(crate) epilogue: Epilogue,
    pub(crate) isa: Isa,
    pub(crate) oh: usize,
    pub(crate) ow: usize,
    pub(crate) icb: usize,
    pub(crate) ocb: usize,
    /// Output tiles of `m x m` pixels (2 or 4) and the positions of a transformed tile.
    pub(crate) m: usize,
    pub(crate) pos: usize,
    /// Tile rows and columns: `ceil(oh / m) x ceil(ow / m)`.
    pub(crate) th: usize,
    pub(crate) tw: usize,
    /// Blocks per register tile and its widest width (in tiles).
    pub(crate) k: usize,
    pub(crate) nw: usize,
    /// Tile rows per band, output-channel blocks per chunk, and their counts.
    pub(crate) band: usize,
    pub(crate) n_bands: usize,
    pub(crate) oc_chunk: usize,
    pub(crate) n_oc: usize,
    pub(crate) tasks: usize,
    /// Scratch floats each thread needs (`V` then `M`).
    pub(crate) scratch: usize,
}

impl WinoPlan {
    /// Checks the shape and chooses tiles and tasks for `threads` threads, with output tiles of
    /// `m x m` pixels (2 or 4; [`preferred`] says which).
    pub fn new(
        shape: ConvShape,
        m: usize,
        epilogue: Epilogue,
        cpu: Cpu,
        threads: usize,
    ) -> Result<WinoPlan, KernelError> {
        let pos = positions(m)?;
        if !applies(&shape) {
            return Err(KernelError::Unsupported { what: "winograd needs a 3x3 stride-1 convolution of one group" });
        }
        if !epilogue.act.is_valid() {
            return Err(KernelError::Shape { what: "activation parameters" });
        }
        let [oh, ow] = shape.out_hw()?;
        weight_len(&shape, m)?;
        product("tensor", &[shape.n, pad16(shape.ic), shape.ih, shape.iw])?;
        product("tensor", &[shape.n, pad16(shape.oc), oh, ow])?;
        let (icb, ocb) = (shape.ic.div_ceil(16), shape.oc.div_ceil(16));
        let (th, tw) = (oh.div_ceil(m), ow.div_ceil(m));
        let set = &tile::tiles(cpu.isa()).a16;
        let (k, nw) = choose_tile(set, ocb, tw.max(MIN_TILES.min(th * tw)));
        let plan = WinoPlan {
            shape,
            epilogue,
            isa: cpu.isa(),
            oh,
            ow,
            icb,
            ocb,
            m,
            pos,
            th,
            tw,
            k,
            nw,
            band: th,
            n_bands: 1,
            oc_chunk: ocb,
            n_oc: 1,
            tasks: 0,
            scratch: 0,
        };
        let (band, oc_chunk) = plan.choose_split(threads.max(1));
        Ok(plan.with_split(band, oc_chunk))
    }

    /// The split with the least estimated time: the busiest thread's tiles x block pairs,
    /// weighted by the weights' stream (one pass over the chunk's weights per band, spread
    /// over its tiles) and the input transform each chunk repeats.
    fn choose_split(&self, threads: usize) -> (usize, usize) {
        let units = self.ocb / self.k;
        // Each task streams its blocks' weights once: from L2 and L3 while they fit there
        // (about 4 tiles' work a block pair), from memory past that (cold weights in a model
        // at about 15 GB/s a core: some 30 tiles' work). Bands of many tiles, and the scratch
        // they need, pay off then: VGG-16's 512-channel F(4x4, 3x3) layer at 28 x 28 (37 MB of
        // weights) ran 20 % faster as bands of 4 tile rows than of 2.
        let weight_bytes = self.pos * self.ocb * self.icb * 1024;
        let (reload, most_tiles, scratch_floats) = if weight_bytes > BIG_WEIGHTS {
            (30.0, 4 * MIN_TILES, 4 * SCRATCH_FLOATS)
        } else {
            (4.0, 2 * MIN_TILES, SCRATCH_FLOATS)
        };
        let mut best = (f64::INFINITY, self.th, self.ocb);
        for band in 1..=self.th {
            let n_bands = self.th.div_ceil(band);
            let tiles = band * self.tw;
            if band > 1 && self.floats(band, self.k) > scratch_floats {
                break;
            }
            for per in (1..=units).filter(|d| units.is_multiple_of(*d)) {
                let chunk = per * self.k;
                let tasks = self.shape.n * n_bands * (units / per);
                let rounds = tasks.div_ceil(threads) as f64;
                let stream = 1.0 + reload / tiles.min(most_tiles) as f64;
                let transform = 1.0 + 0.03 * (self.icb as f64 / chunk as f64);
                let time = rounds * (tiles * chunk) as f64 * stream * transform;
                if time < best.0 * 0.999 {
                    best = (time, band, chunk);
                }
            }
        }
        (best.1, best.2)
    }

    /// Scratch floats of a task of `band` tile rows and `chunk` blocks.
    fn floats(&self, band: usize, chunk: usize) -> usize {
        self.pos * (self.icb + chunk) * band * self.tw * 16
    }

    /// The same plan with `band` tile rows and `oc_chunk` blocks per task (clamped; the blocks
    /// rounded to the tile's): for tuning.
    pub fn with_split(mut self, band: usize, oc_chunk: usize) -> WinoPlan {
        let units = self.ocb / self.k;
        let want = (oc_chunk / self.k).clamp(1, units);
        let per = (1..=want).rev().find(|d| units.is_multiple_of(*d)).unwrap_or(1);
        self.oc_chunk = per * self.k;
        self.n_oc = units / per;
        self.band = band.clamp(1, self.th);
        self.n_bands = self.th.div_ceil(self.band);
        self.tasks = self.shape.n * self.n_bands * self.n_oc;
        self.scratch = self.floats(self.band, self.oc_chunk);
        self
    }

    /// Scratch floats for running the plan on `threads` threads.
    pub fn scratch_len(&self, threads: usize) -> usize {
        self.scratch * threads
    }
    pub fn shape(&self) -> &ConvShape {
        &self.shape
    }
    pub fn epilogue(&self) -> &Epilogue {
        &self.epilogue
    }
    pub fn isa(&self) -> Isa {
        self.isa
    }
    pub fn out_hw(&self) -> [usize; 2] {
        [self.oh, self.ow]
    }
    pub fn tasks(&self) -> usize {
        self.tasks
    }
    /// Output tiles of `m x m` pixels.
    pub fn output_tile(&self) -> usize {
        self.m
    }
    /// Blocks per register tile and its widest width, in output tiles.
    pub fn tile(&self) -> (usize, usize) {
        (self.k, self.nw)
    }
    /// The task split: `(tile rows per task, blocks per task)`.
    pub fn split_info(&self) -> (usize, usize) {
        (self.band, self.oc_chunk)
    }
}

/// Runs a Winograd convolution on `par`'s threads after checking every operand against the
/// plan, as `conv_fwd::forward` does, with `io.weights` the transformed weights
/// ([`weight_len`] floats) and scratch of [`WinoPlan::scratch_len`]`(par.threads())` floats.
pub fn forward(
    par: &dyn Parallel,
    plan: &WinoPlan,
    arena: &mut [f32],
    io: &ConvIo<'_>,
    scratch: &mut [f32],
) -> Result<(), KernelError> {
    let weights = weight_len(&plan.shape, plan.m)?;
    let args = blocked_args(&plan.shape, [plan.oh, plan.ow], &plan.epilogue, arena, io, weights)?;
    check_min_len("scratch", scratch.len(), plan.scratch_len(par.threads()))?;
    let scratch = SyncPtr(scratch.as_mut_ptr());
    let per = plan.scratch;
    par.run(plan.tasks, &|task, thread| {
        // SAFETY: every view and slice was checked against the plan above; the output is
        // apart from the input and the weights (a separate slice); each task writes its own
        // tiles' outputs of its own blocks and uses the scratch of its thread, which no other
        // running task uses (Parallel's contract), and the scratch holds per floats a thread.
        unsafe { forward_task(plan, &args, task, scratch.get().wrapping_add(thread * per)) }
    });
    Ok(())
}

/// Runs task `task` of `plan`.
///
/// # Safety
/// `plan` must come from [`WinoPlan::new`] with an instruction set the CPU supports; `a` must
/// hold valid pointers for `plan.shape` (input `n` images of `pad16(ic) x ih x iw` floats at
/// `x + i * x_bs`, transformed weights of [`weight_len`] floats, per-channel vectors of `oc`
/// floats where the epilogue has them, output and residual images of `pad16(oc) x oh x ow`
/// floats), the output must not overlap the input or the weights (the residual may be the
/// output itself), no other task of the same run may write what this one reads, and `scratch`
/// must be valid for `plan.scratch` floats used by no other running task.
pub unsafe fn forward_task(plan: &WinoPlan, a: &ConvArgs, task: usize, scratch: *mut f32) {
    // SAFETY: forwarded contract.
    unsafe { task_isa(plan.isa, plan, a, task, scratch) }
}

isa_fn! {
    unsafe fn task_isa(plan: &WinoPlan, a: &ConvArgs, task: usize, scratch: *mut f32) = task_generic;
}

/// See [`forward_task`].
#[inline(always)]
unsafe fn task_generic<S: Simd>(s: S, plan: &WinoPlan, a: &ConvArgs, task: usize, scratch: *mut f32) {
    let oc_i = task % plan.n_oc;
    let band_i = (task / plan.n_oc) % plan.n_bands;
    let n = task / (plan.n_oc * plan.n_bands);
    let ty0 = band_i * plan.band;
    let ty1 = (ty0 + plan.band).min(plan.th);
    let tiles = (ty1 - ty0) * plan.tw;
    let ob0 = oc_i * plan.oc_chunk;
    let chunk = plan.oc_chunk;
    // V: [pos][icb][tiles][16]; M: [pos][chunk][tiles][16].
    let v = scratch;
    let m = scratch.wrapping_add(plan.pos * plan.icb * tiles * 16);
    let x = a.x.wrapping_add(n * a.x_bs);
    // SAFETY: the band's tiles, the task's blocks and image are inside the plan (task < tasks);
    // V and M fit plan.scratch floats (floats() of the plan's band and chunk); the caller's
    // contract covers every operand.
    unsafe {
        if plan.m == 4 {
            input_transform::<S, 6>(s, plan, x, ty0, ty1, v);
            products(plan, a.w, v, m, tiles, ob0);
            output_transform::<S, 6>(s, plan, a, n, ty0, ty1, ob0, chunk, m);
        } else {
            input_transform::<S, 4>(s, plan, x, ty0, ty1, v);
            products(plan, a.w, v, m, tiles, ob0);
            output_transform::<S, 4>(s, plan, a, n, ty0, ty1, ob0, chunk, m);
        }
    }
}

/// `B^T d` for a column `d` of `T` values (`T = m + 2`): for F(2x2, 3x3) the rows of `B^T` are
/// `[1, 0, -1, 0]`, `[0, 1, 1, 0]`, `[0, -1, 1, 0]`, `[0, 1, 0, -1]`; for F(4x4, 3x3)
/// `[4, 0, -5, 0, 1, 0]`, `[0, -4, -4, 1, 1, 0]`, `[0, 4, -4, -1, 1, 0]`, `[0, -2, -1, 2, 1, 0]`,
/// `[0, 2, -1, -2, 1, 0]`, `[0, 4, 0, -5, 0, 1]`.
#[inline(always)]
fn bt<S: Simd, const T: usize>(s: S, d: [S::V; T]) -> [S::V; T] {
    let mut r = [s.zero(); T];
    if T == 4 {
        r[0] = s.sub(d[0], d[2]);
        r[1] = s.add(d[1], d[2]);
        r[2] = s.sub(d[2], d[1]);
        r[3] = s.sub(d[1], d[3]);
    } else {
        let (four, five, two) = (s.splat(4.0), s.splat(5.0), s.splat(2.0));
        // Shared terms: d4 - 4 d2, d3 - 4 d1, d4 - d2, 2 (d3 - d1).
        let a = s.fnmadd(four, d[2], d[4]);
        let b = s.fnmadd(four, d[1], d[3]);
        let c = s.sub(d[4], d[2]);
        let e = s.mul(two, s.sub(d[3], d[1]));
        r[0] = s.fnmadd(five, d[2], s.fmadd(four, d[0], d[4]));
        r[1] = s.add(a, b);
        r[2] = s.sub(a, b);
        r[3] = s.add(c, e);
        r[4] = s.sub(c, e);
        r[5] = s.fnmadd(five, d[3], s.fmadd(four, d[1], d[5]));
    }
    r
}

/// `A^T m` for a column `m` of `T` values, its first `T - 2` entries: for F(2x2, 3x3) the rows
/// of `A^T` are `[1, 1, 1, 0]`, `[0, 1, -1, -1]`; for F(4x4, 3x3) `[1, 1, 1, 1, 1, 0]`,
/// `[0, 1, -1, 2, -2, 0]`, `[0, 1, 1, 4, 4, 0]`, `[0, 1, -1, 8, -8, 1]`.
#[inline(always)]
fn at<S: Simd, const T: usize>(s: S, m: [S::V; T]) -> [S::V; 4] {
    let mut y = [s.zero(); 4];
    if T == 4 {
        y[0] = s.add(s.add(m[0], m[1]), m[2]);
        y[1] = s.sub(s.sub(m[1], m[2]), m[3]);
    } else {
        let (p12, m12) = (s.add(m[1], m[2]), s.sub(m[1], m[2]));
        let (p34, m34) = (s.add(m[3], m[4]), s.sub(m[3], m[4]));
        y[0] = s.add(s.add(m[0], p12), p34);
        y[1] = s.fmadd(s.splat(2.0), m34, m12);
        y[2] = s.fmadd(s.splat(4.0), p34, p12);
        y[3] = s.add(s.fmadd(s.splat(8.0), m34, m12), m[5]);
    }
    y
}

/// `V[p][ib][t] = (B^T d B)[p]` for the band's tiles `t` (tile rows `ty0..ty1`), `d` the
/// `T x T` input patch of tile `t` in block `ib`, zero outside the input (see [`bt`]).
///
/// # Safety
/// `x` is one image of the plan's input; `v` holds `pos x icb x tiles x 16` floats; `T` is
/// the plan's `m + 2`.
// The column index addresses the same column of several row vectors.
#[allow(clippy::needless_range_loop)]
#[inline(always)]
unsafe fn input_transform<S: Simd, const T: usize>(
    s: S,
    plan: &WinoPlan,
    x: *const f32,
    ty0: usize,
    ty1: usize,
    v: *mut f32,
) {
    let sh = &plan.shape;
    let tiles = (ty1 - ty0) * plan.tw;
    let pos_stride = plan.icb * tiles * 16;
    let (ih, iw) = (sh.ih as isize, sh.iw as isize);
    let (ph, pw) = (sh.pad[0] as isize, sh.pad[1] as isize);
    let m = plan.m as isize;
    for ib in 0..plan.icb {
        let plane = x.wrapping_add(ib * sh.ih * sh.iw * 16);
        for ty in ty0..ty1 {
            let iy0 = m * ty as isize - ph;
            for tx in 0..plan.tw {
                let ix0 = m * tx as isize - pw;
                let t = (ty - ty0) * plan.tw + tx;
                // Rows of B^T d, one column of d at a time: r[i][c].
                let mut r = [[s.zero(); T]; T];
                for c in 0..T {
                    let ix = ix0 + c as isize;
                    let mut d = [s.zero(); T];
                    if ix >= 0 && ix < iw {
                        for (j, dj) in d.iter_mut().enumerate() {
                            let iy = iy0 + j as isize;
                            if iy >= 0 && iy < ih {
                                // SAFETY: (iy, ix) is a pixel of the image's block ib.
                                *dj = unsafe { s.load(plane.add(((iy * iw + ix) * 16) as usize)) };
                            }
                        }
                    }
                    let col = bt(s, d);
                    for i in 0..T {
                        r[i][c] = col[i];
                    }
                }
                // (B^T d) B: the same combination of each row's columns.
                let out = v.wrapping_add((ib * tiles + t) * 16);
                for (i, row) in r.into_iter().enumerate() {
                    for (j, q) in bt(s, row).into_iter().enumerate() {
                        // SAFETY: position i*T+j, block ib, tile t are inside V.
                        unsafe { s.store(out.add((i * T + j) * pos_stride), q) };
                    }
                }
            }
        }
    }
}

/// `M[p][b][t] = sum over ib, i of V[p][ib][t][i] * U[p][ob0 + b][ib][i][..]` for the task's
/// blocks, through the register tiles (columns = tiles, steps = the 16 input channels of a
/// block, block pairs = the input blocks).
///
/// # Safety
/// `v` and `m` as [`task_generic`] lays them out; the plan's weights at `a.w`.
#[inline(always)]
unsafe fn products(plan: &WinoPlan, w: *const f32, v: *const f32, m: *mut f32, tiles: usize, ob0: usize) {
    let set = &tile::tiles(plan.isa).a16;
    let u = |p: usize, ob: usize| (p * plan.ocb + ob) * plan.icb * 256;
    let reduce = Reduce {
        n: [plan.icb, 1, 1],
        a: [(tiles * 16) as isize, 0, 0],
        b: [256, 0, 0],
        steps: 16,
        a_step: 1,
        b_step: 16,
        b_blk: (plan.icb * 256) as isize,
    };
    // Balanced widths: ceil(tiles / nw) tiles of sizes differing by at most one.
    let ntiles = tiles.div_ceil(plan.nw);
    let (q, extra) = (tiles / ntiles, tiles % ntiles);
    let chunk = plan.oc_chunk;
    // Each group of blocks' weights (`k x icb` KiB) are read once per task: in a model, where
    // weights of more than L2 come from memory, the tiles of a group prefetch the next group's,
    // each its share of the lines of every block (ResNet-50's layer3, 4 MiB of weights: 0.40
    // -> 0.35 ms a layer; no gain for layer2's 1 MiB, which L2 and L3 hold).
    let prefetch = plan.icb * plan.ocb * plan.pos * 256 * 4 >= PREFETCH_BYTES;
    let lines = plan.icb * 16;
    let share = lines.div_ceil(ntiles);
    for p in 0..plan.pos {
        let vp = v.wrapping_add(p * plan.icb * tiles * 16);
        let mp = m.wrapping_add(p * chunk * tiles * 16);
        for b in (0..chunk).step_by(plan.k) {
            let wb = w.wrapping_add(u(p, ob0 + b));
            let next = match (b + plan.k < chunk, p + 1 < plan.pos) {
                (true, _) => Some(u(p, ob0 + b + plan.k)),
                (false, true) => Some(u(p + 1, ob0)),
                (false, false) => None,
            };
            let mut t0 = 0;
            for i in 0..ntiles {
                let width = q + usize::from(i < extra);
                let mut out = Out::plain(mp.wrapping_add((b * tiles + t0) * 16), 16, (tiles * 16) as isize, false);
                if let (Some(next), true) = (next, prefetch) {
                    // Prefetches are hints: the addresses need not be inside the weights.
                    out.pf = w.wrapping_add(next + i * share * 16);
                    out.pf_lines = share.min(lines.saturating_sub(i * share));
                    out.pf_copies = plan.k;
                    out.pf_blk = (plan.icb * 256) as isize;
                }
                // SAFETY: the tile reads V's tiles t0..t0+width of position p over every input
                // block and U's blocks ob0+b.. (k of them) of position p, all inside the
                // buffers; it writes M's tiles t0.. of blocks b..b+k. The set belongs to the
                // plan's instruction set, which the CPU supports (caller).
                unsafe { set.get(plan.k, width)(vp.wrapping_add(t0 * 16), wb, &reduce, &out) };
                t0 += width;
            }
        }
    }
}

/// The output transform `Y = A^T M A` of the task's tiles and blocks (see [`at`]), with the
/// epilogue, written where the tile lies inside the output.
///
/// # Safety
/// `m` as [`task_generic`] lays it out; the caller's contract for `a`; `T` is the plan's
/// `m + 2`.
// The column index addresses the same column of several row vectors.
#[allow(clippy::too_many_arguments, clippy::needless_range_loop)]
#[inline(always)]
unsafe fn output_transform<S: Simd, const T: usize>(
    s: S,
    plan: &WinoPlan,
    a: &ConvArgs,
    n: usize,
    ty0: usize,
    ty1: usize,
    ob0: usize,
    chunk: usize,
    m: *const f32,
) {
    let e = &plan.epilogue;
    let tiles = (ty1 - ty0) * plan.tw;
    let pos_stride = chunk * tiles * 16;
    let plane = plan.oh * plan.ow * 16;
    let y = a.y.wrapping_add(n * a.y_bs);
    let res = a.res.wrapping_add(n * a.res_bs);
    let mt = plan.m;
    for b in 0..chunk {
        let ob = ob0 + b;
        let vec_of = |p: *const f32| {
            let mut lanes = [0f32; 16];
            if !p.is_null() {
                for (l, lane) in lanes.iter_mut().enumerate().take(plan.shape.oc.saturating_sub(ob * 16)) {
                    // SAFETY: ob * 16 + l < oc, and the vector holds oc floats.
                    *lane = unsafe { *p.add(ob * 16 + l) };
                }
            }
            s.array_to_v(lanes)
        };
        let (bias, scale, shift) = (vec_of(a.bias), vec_of(a.scale), vec_of(a.shift));
        for ty in ty0..ty1 {
            for tx in 0..plan.tw {
                let t = (ty - ty0) * plan.tw + tx;
                let at_t = m.wrapping_add((b * tiles + t) * 16);
                // A^T M, one column of M at a time: r[i][c].
                let mut r = [[s.zero(); T]; 4];
                for c in 0..T {
                    // SAFETY: positions j*T+c of tile t, block b, are inside M.
                    let col: [S::V; T] =
                        core::array::from_fn(|j| unsafe { s.load(at_t.add((j * T + c) * pos_stride)) });
                    let rows = at(s, col);
                    for i in 0..mt {
                        r[i][c] = rows[i];
                    }
                }
                for (i, row) in r.into_iter().take(mt).enumerate() {
                    let oy = mt * ty + i;
                    if oy >= plan.oh {
                        continue;
                    }
                    for (j, mut val) in at(s, row).into_iter().take(mt).enumerate() {
                        let ox = mt * tx + j;
                        if ox >= plan.ow {
                            continue;
                        }
                        let off = ob * plane + (oy * plan.ow + ox) * 16;
                        if e.bias {
                            val = s.add(val, bias);
                        }
                        if e.scale_shift {
                            val = s.fmadd(val, scale, shift);
                        }
                        if e.residual {
                            // SAFETY: (ob, oy, ox) is inside the residual image.
                            val = s.add(val, unsafe { s.load(res.add(off)) });
                        }
                        val = act::forward(s, &e.act, val);
                        // SAFETY: (ob, oy, ox) is inside the output image; this task alone
                        // writes it.
                        unsafe { s.store(y.add(off), val) };
                    }
                }
            }
        }
    }
}
