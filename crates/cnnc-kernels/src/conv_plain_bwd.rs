//! Weight gradient of a convolution whose input and output gradient are plain (`nchw`) maps:
//! LeNet-style layers and the first convolution of a network trained on RGB images, where the
//! blocked backward-weights kernel does not apply. `gw` is written in plain `oihw`.
//!
//! `gw[o][t] = sum_p gy[o][p] x_t[p]`, `t` running over the taps (input channel x kernel row x
//! kernel column) and `p` over the batch's output pixels. The vectors run over 16 output
//! pixels of a row, so both operands are contiguous loads: the output gradient's row of a
//! channel, and the input row a tap reads, taken from a per-task band of zero-padded input
//! rows (`conv_plain_rows::RowBand`: with a column stride above 1 it holds each kernel
//! column's pixels compacted).
//! A tile keeps 4 output channels x up to 6 taps of 16-lane partial sums in registers over a
//! chunk of output rows (4 + 6 loads for 24 FMAs), then adds them to the task's partial sums
//! in memory; a last phase sums the lanes and the tasks' partials into `gw`. No patch matrix.

use super::conv::ConvShape;
use super::conv_plain_rows::RowBand;
use super::error::{KernelError, check_len, check_min_len, product};
use super::par::{Parallel, SyncPtr};
use super::simd::{Cpu, Isa, Simd, isa_fn};
use super::view::{Layout, View};

/// Output channels of a tile (a last group repeats its last channel and drops the copies).
const TILE_OC: usize = 4;
/// The most taps of a tile; the taps are cut into groups of at most this many, as even as can be.
const TILE_TAPS: usize = 6;
/// Bytes of one pass's output-gradient rows and band: what a core's second-level cache holds
/// while every tile of the pass reads them again.
const PASS_BYTES: usize = 256 << 10;

/// A checked plain-map weight gradient (made by [`PlainBwdWeightsPlan::new`] only).
#[derive(Clone, Copy, Debug, PartialEq)]
#[repr(C)]
pub struct PlainBwdWeightsPlan {
    pub(crate) shape: ConvShape,
    pub(crate) isa: Isa,
    pub(crate) oh: usize,
    pub(crate) ow: usize,
    /// Input channels x kernel rows x kernel columns.
    pub(crate) taps: usize,
    /// The band of zero-padded input rows of a pass.
    pub(crate) band: RowBand,
    /// Output rows of one pass.
    pub(crate) row_chunk: usize,
    /// Images per image chunk, image chunks (each with its own partial sums), and the output
    /// channel chunks each image chunk is cut into (tasks = the product).
    pub(crate) per_chunk: usize,
    pub(crate) chunks: usize,
    pub(crate) oc_chunk: usize,
    pub(crate) n_oc: usize,
    /// Floats of one image chunk's partial sums (`oc x taps x 16`).
    pub(crate) part: usize,
}

/// Raw operands: `x` and `gy` plain maps with their batch strides, `gw` the `oihw` gradient.
#[derive(Clone, Copy, Debug)]
#[repr(C)]
pub struct PlainBwdWeightsArgs {
    pub x: *const f32,
    pub x_bs: usize,
    pub gy: *const f32,
    pub gy_bs: usize,
    pub gw: *mut f32,
}

// SAFETY: plain pointers; the tasks read x and gy and write disjoint partial sums and
// disjoint channels of gw (`task`'s and `sum_channel`'s contracts).
unsafe impl Sync for PlainBwdWeightsArgs {}
// SAFETY: as above.
unsafe impl Send for PlainBwdWeightsArgs {}

/// The operands of [`backward_weights`]: views of `x` and `gy` in `arena`, `gw` apart.
#[derive(Debug)]
pub struct PlainBwdWeightsIo<'a> {
    pub x: View,
    pub gy: View,
    pub gw: &'a mut [f32],
}

impl PlainBwdWeightsPlan {
    pub fn new(shape: ConvShape, cpu: Cpu, threads: usize) -> Result<PlainBwdWeightsPlan, KernelError> {
        let [oh, ow] = shape.out_hw()?;
        if shape.groups != 1 {
            return Err(KernelError::Unsupported { what: "plain weight gradient with groups" });
        }
        let taps = product("weights", &[shape.ic, shape.kh, shape.kw])?;
        let part = product("partial sums", &[shape.oc, taps, 16])?;
        product("tensor", &[shape.n, shape.ic, shape.ih, shape.iw])?;
        product("tensor", &[shape.n, shape.oc, oh, ow])?;
        let sh = shape.stride[0];
        let band_row = if shape.stride[1] > 1 { shape.kw * ow } else { shape.iw + 2 * shape.pad[1] };
        let per_row = 4 * (shape.oc * ow + shape.ic * sh * band_row);
        let row_chunk = (PASS_BYTES / per_row.max(1)).clamp(1, oh);
        let band = RowBand::new(&shape, ow, row_chunk)?;
        let threads = threads.max(1);
        let chunks = shape.n.min(threads);
        let groups = shape.oc.div_ceil(TILE_OC);
        let n_oc = threads.div_ceil(chunks).min(groups);
        let oc_chunk = groups.div_ceil(n_oc) * TILE_OC;
        let n_oc = shape.oc.div_ceil(oc_chunk);
        product("partial sums", &[part, chunks])?;
        Ok(PlainBwdWeightsPlan {
            shape,
            isa: cpu.isa(),
            oh,
            ow,
            taps,
            band,
            row_chunk,
            per_chunk: shape.n.div_ceil(chunks),
            chunks: shape.n.div_ceil(shape.n.div_ceil(chunks)),
            oc_chunk,
            n_oc,
            part,
        })
    }

    /// Tasks of the first phase (image chunk x output channel chunk).
    pub fn tasks(&self) -> usize {
        self.chunks * self.n_oc
    }
    /// Scratch floats: the partial sums of every image chunk, then a band per thread.
    pub fn scratch_len(&self, threads: usize) -> usize {
        self.chunks * self.part + threads.max(1) * self.band.len
    }
    /// Tasks of the second phase (output channels summed into `gw`).
    pub fn sum_tasks(&self) -> usize {
        self.shape.oc
    }
    pub fn shape(&self) -> &ConvShape {
        &self.shape
    }
}

/// Computes `gw` after checking every operand: `x` and `gy` plain views in `arena`, `gw` of
/// `oc x ic x kh x kw` floats, `scratch` of [`PlainBwdWeightsPlan::scratch_len`].
pub fn backward_weights(
    par: &dyn Parallel,
    plan: &PlainBwdWeightsPlan,
    arena: &[f32],
    io: PlainBwdWeightsIo<'_>,
    scratch: &mut [f32],
) -> Result<(), KernelError> {
    let s = &plan.shape;
    io.x.check_in("input", arena.len())?;
    io.gy.check_in("output gradient", arena.len())?;
    io.x.expect("input", [s.n, s.ic, s.ih, s.iw], Layout::Nchw)?;
    io.gy.expect("output gradient", [s.n, s.oc, plan.oh, plan.ow], Layout::Nchw)?;
    check_len("weight gradient", io.gw.len(), s.oc * plan.taps)?;
    check_min_len("scratch", scratch.len(), plan.scratch_len(par.threads()))?;
    let args = PlainBwdWeightsArgs {
        x: arena.as_ptr().wrapping_add(io.x.offset),
        x_bs: io.x.batch_stride,
        gy: arena.as_ptr().wrapping_add(io.gy.offset),
        gy_bs: io.gy.batch_stride,
        gw: io.gw.as_mut_ptr(),
    };
    // SAFETY: every operand checked above (the plan's instruction set is the CPU's); the
    // phases' tasks write disjoint partial sums (and their thread's band) and disjoint
    // channels of `gw`.
    unsafe { run_phases(par, plan, &args, scratch.as_mut_ptr()) };
    Ok(())
}

/// Both phases on `par`.
///
/// # Safety
/// As [`task`] for every task, with `scratch` of `plan.scratch_len(par.threads())` floats.
pub unsafe fn run_phases(par: &dyn Parallel, plan: &PlainBwdWeightsPlan, a: &PlainBwdWeightsArgs, scratch: *mut f32) {
    let sp = SyncPtr(scratch);
    let bands = plan.chunks * plan.part;
    par.run(plan.tasks(), &|t, thread| {
        let band = sp.get().wrapping_add(bands + thread * plan.band.len);
        // SAFETY: forwarded contract; each thread has its own band.
        unsafe { task(plan, a, t, sp.get(), band) }
    });
    par.run(plan.sum_tasks(), &|o, _| {
        // SAFETY: forwarded contract; channel o's partial sums are complete.
        unsafe { sum_channel(plan, a, o, sp.get()) }
    });
}

/// One task of the first phase: image chunk `t / n_oc`, output channels chunk `t % n_oc`,
/// its partial sums set from its images.
///
/// # Safety
/// `plan` from [`PlainBwdWeightsPlan::new`] on a CPU with its instruction set; `a` valid for
/// the plan's shape (plain images, `gw` of `oc x taps`); `parts` valid for every chunk's
/// partial sums, this task's channels used by no other running task; `band` valid for
/// `plan.band.len` floats used by no other running task.
pub unsafe fn task(plan: &PlainBwdWeightsPlan, a: &PlainBwdWeightsArgs, t: usize, parts: *mut f32, band: *mut f32) {
    let s = &plan.shape;
    let (chunk, oc_i) = (t / plan.n_oc, t % plan.n_oc);
    let o0 = oc_i * plan.oc_chunk;
    let o1 = (o0 + plan.oc_chunk).min(s.oc);
    let part = parts.wrapping_add(chunk * plan.part);
    // SAFETY: channels o0..o1 of this chunk's partial sums belong to this task.
    unsafe { part.add(o0 * plan.taps * 16).write_bytes(0, (o1 - o0) * plan.taps * 16) };
    let n0 = chunk * plan.per_chunk;
    for n in n0..(n0 + plan.per_chunk).min(s.n) {
        for oy0 in (0..plan.oh).step_by(plan.row_chunk) {
            let oy1 = (oy0 + plan.row_chunk).min(plan.oh);
            // SAFETY: forwarded contract.
            unsafe {
                plan.band.copy(s, a.x.wrapping_add(n * a.x_bs), [oy0, oy1], band);
                pass(plan, a, n, [oy0, oy1], [o0, o1], band, part);
            }
        }
    }
}

/// The tiles of output rows `oy0..oy1` of image `n`, channels `o0..o1`, into `part`.
///
/// # Safety
/// As [`task`]; the band holds those rows.
unsafe fn pass(
    plan: &PlainBwdWeightsPlan,
    a: &PlainBwdWeightsArgs,
    n: usize,
    [oy0, oy1]: [usize; 2],
    [o0, o1]: [usize; 2],
    band: *const f32,
    part: *mut f32,
) {
    let s = &plan.shape;
    let ohw = plan.oh * plan.ow;
    let groups = plan.taps.div_ceil(TILE_TAPS);
    let rows = oy1 - oy0;
    let x_row = s.stride[0] * plan.band.row;
    for og in (o0..o1).step_by(TILE_OC) {
        let live = TILE_OC.min(o1 - og);
        let gy: [*const f32; TILE_OC] = core::array::from_fn(|i| {
            let o = og + i.min(live - 1);
            a.gy.wrapping_add(n * a.gy_bs + o * ohw + oy0 * plan.ow)
        });
        let (mut t0, mut offsets) = (0, plan.band.taps(s));
        for g in 0..groups {
            let tt = plan.taps / groups + usize::from(g < plan.taps % groups);
            let mut x = [band; TILE_TAPS];
            for xp in x.iter_mut().take(tt) {
                *xp = band.wrapping_add(offsets.next().unwrap_or(0));
            }
            let out = part.wrapping_add((og * plan.taps + t0) * 16);
            let geo = TileGeo { rows, ow: plan.ow, x_row, out_o: plan.taps * 16, live };
            // SAFETY: the tile reads `rows` rows of `ow` floats from each gradient and band
            // pointer (inside their planes and the band) and adds to partial sums of channels
            // og..og + live, taps t0..t0 + tt.
            unsafe { tile(plan.isa, tt, &gy, &x, &geo, out) };
            t0 += tt;
        }
    }
}

/// The rows a tile runs over and where its sums go: output channel `i` of the tile, tap `j`,
/// at `out + i * out_o + j * 16`; channels from `live` on are copies and are not written.
struct TileGeo {
    rows: usize,
    ow: usize,
    x_row: usize,
    out_o: usize,
    live: usize,
}

/// A tile of `tt` taps (1..=6).
///
/// # Safety
/// As in [`pass`]; `isa` supported by the CPU.
unsafe fn tile(
    isa: Isa,
    tt: usize,
    gy: &[*const f32; TILE_OC],
    x: &[*const f32; TILE_TAPS],
    g: &TileGeo,
    out: *mut f32,
) {
    // SAFETY: forwarded contract.
    unsafe {
        match tt {
            1 => tile_1(isa, gy, x, g, out),
            2 => tile_2(isa, gy, x, g, out),
            3 => tile_3(isa, gy, x, g, out),
            4 => tile_4(isa, gy, x, g, out),
            5 => tile_5(isa, gy, x, g, out),
            _ => tile_6(isa, gy, x, g, out),
        }
    }
}

macro_rules! tiles {
    ($($name:ident, $generic:ident = $tt:literal;)*) => {$(
        #[inline(always)]
        unsafe fn $generic<S: Simd>(s: S, gy: &[*const f32; TILE_OC], x: &[*const f32; TILE_TAPS], g: &TileGeo, out: *mut f32) {
            // SAFETY: forwarded contract.
            unsafe { tile_generic::<S, $tt>(s, gy, x, g, out) }
        }
        isa_fn! {
            /// One tile shape, per instruction set.
            ///
            /// # Safety
            /// As [`tile`].
            unsafe fn $name(gy: &[*const f32; TILE_OC], x: &[*const f32; TILE_TAPS], g: &TileGeo, out: *mut f32) = $generic;
        }
    )*};
}

tiles! {
    tile_1, tile_1_generic = 1;
    tile_2, tile_2_generic = 2;
    tile_3, tile_3_generic = 3;
    tile_4, tile_4_generic = 4;
    tile_5, tile_5_generic = 5;
    tile_6, tile_6_generic = 6;
}

/// The tile body: `TT` taps x 4 channels of accumulators, one gradient load per channel and
/// one band load per tap for each 16 pixels; the last vector of a row is loaded masked.
///
/// # Safety
/// As [`tile`].
#[inline(always)]
unsafe fn tile_generic<S: Simd, const TT: usize>(
    s: S,
    gy: &[*const f32; TILE_OC],
    x: &[*const f32; TILE_TAPS],
    g: &TileGeo,
    out: *mut f32,
) {
    let mut acc = [[s.zero(); TT]; TILE_OC];
    let (full, tail) = (g.ow / 16 * 16, g.ow % 16);
    for r in 0..g.rows {
        let (gr, xr) = (r * g.ow, r * g.x_row);
        let mut v = 0;
        while v < full {
            // SAFETY: pixels v..v + 16 of row r lie inside each plane and band row.
            unsafe {
                let d: [S::V; TILE_OC] = core::array::from_fn(|i| s.load(gy[i].add(gr + v)));
                for j in 0..TT {
                    let xv = s.load(x[j].add(xr + v));
                    for i in 0..TILE_OC {
                        acc[i][j] = s.fmadd(d[i], xv, acc[i][j]);
                    }
                }
            }
            v += 16;
        }
        if tail > 0 {
            // SAFETY: pixels full..ow of row r, as above.
            unsafe {
                let d: [S::V; TILE_OC] = core::array::from_fn(|i| s.load_n(gy[i].add(gr + v), tail));
                for j in 0..TT {
                    let xv = s.load_n(x[j].add(xr + v), tail);
                    for i in 0..TILE_OC {
                        acc[i][j] = s.fmadd(d[i], xv, acc[i][j]);
                    }
                }
            }
        }
    }
    for (i, row) in acc.iter().enumerate().take(g.live) {
        for (j, v) in row.iter().enumerate() {
            let p = out.wrapping_add(i * g.out_o + j * 16);
            // SAFETY: the partial sums of live channel i, tap j (caller).
            unsafe { s.store(p, s.add(s.load(p), *v)) };
        }
    }
}

/// Second phase: `gw[o][t]`, the lanes of every image chunk's partial sums of channel `o`.
///
/// # Safety
/// As [`task`], after every first-phase task finished.
pub unsafe fn sum_channel(plan: &PlainBwdWeightsPlan, a: &PlainBwdWeightsArgs, o: usize, parts: *const f32) {
    for t in 0..plan.taps {
        let mut sum = 0.0f32;
        for chunk in 0..plan.chunks {
            let p = parts.wrapping_add(chunk * plan.part + (o * plan.taps + t) * 16);
            for l in 0..16 {
                // SAFETY: the partial sums of channel o, tap t of this chunk.
                sum += unsafe { *p.add(l) };
            }
        }
        // SAFETY: o < oc, t < taps: inside gw.
        unsafe { *a.gw.add(o * plan.taps + t) = sum };
    }
}
