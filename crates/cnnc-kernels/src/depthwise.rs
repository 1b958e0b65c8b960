//! Depthwise convolution (groups = input channels = output channels) on blocked maps, weights
//! `Goihw16g` (`[ceil(C/16)][KH][KW][16]`), with the fused epilogue; any stride, padding and
//! dilation.
//!
//! Each channel is its own filter, so the vectors run along 16 channels and nothing is
//! broadcast: a tile of 8 output pixels of one block loads one weight vector per tap and one
//! input vector per pixel and tap (one load per FMA: the layer is bound by the load ports,
//! not the FMAs). The halo is a per-task copy of the block's input rows between zero columns.

use super::conv::{ConvArgs, ConvIo, ConvShape, Epilogue, blocked_args};
use super::error::{KernelError, check_min_len, product};
use super::par::{Parallel, SyncPtr};
use super::simd::{Cpu, Isa, Simd, isa_fn};
use super::tile::{self, Out};
use super::view::pad16;

/// Output pixels per depthwise tile.
const TILE: usize = 8;

/// A checked depthwise convolution (made by [`DepthwisePlan::new`] only).
#[derive(Clone, Copy, Debug, PartialEq)]
#[repr(C)]
pub struct DepthwisePlan {
    pub(crate) shape: ConvShape,
    pub(crate) epilogue: Epilogue,
    pub(crate) isa: Isa,
    pub(crate) oh: usize,
    pub(crate) ow: usize,
    pub(crate) cb: usize,
    pub(crate) band_row: usize,
    pub(crate) band_rows: usize,
    pub(crate) row_chunk: usize,
    pub(crate) n_rows: usize,
    pub(crate) tasks: usize,
    pub(crate) scratch: usize,
}

impl DepthwisePlan {
    pub fn new(shape: ConvShape, epilogue: Epilogue, cpu: Cpu, threads: usize) -> Result<DepthwisePlan, KernelError> {
        let [oh, ow] = shape.out_hw()?;
        if shape.groups != shape.ic || shape.oc != shape.ic {
            return Err(KernelError::Unsupported { what: "depthwise needs groups = input = output channels" });
        }
        if !epilogue.act.is_valid() {
            return Err(KernelError::Shape { what: "activation parameters" });
        }
        product("tensor", &[shape.n, pad16(shape.ic), shape.ih, shape.iw])?;
        product("tensor", &[shape.n, pad16(shape.oc), oh, ow])?;
        super::pack::depthwise_len(shape.ic, shape.kh, shape.kw)?;
        let cb = shape.ic.div_ceil(16);
        let band_row = (shape.iw + 2 * shape.pad[1]) * 16;
        // Rows per task: enough tasks to balance (8 per thread), whole rows.
        let units = shape.n * cb * oh;
        let row_chunk = units.div_ceil(8 * threads.max(1) * shape.n * cb).clamp(1, oh);
        let n_rows = oh.div_ceil(row_chunk);
        let band_rows = ((row_chunk - 1) * shape.stride[0] + (shape.kh - 1) * shape.dilation[0] + 1).min(shape.ih);
        Ok(DepthwisePlan {
            shape,
            epilogue,
            isa: cpu.isa(),
            oh,
            ow,
            cb,
            band_row,
            band_rows,
            row_chunk,
            n_rows,
            tasks: shape.n * cb * n_rows,
            scratch: band_rows * band_row,
        })
    }

    pub fn scratch_len(&self, threads: usize) -> usize {
        self.scratch * threads
    }
    pub fn tasks(&self) -> usize {
        self.tasks
    }
    pub fn out_hw(&self) -> [usize; 2] {
        [self.oh, self.ow]
    }
}

/// Runs a depthwise convolution after checking every operand (blocked `x`, `y`, residual;
/// [`super::pack::depthwise_len`] weight floats; `oc`-float epilogue vectors).
pub fn forward(
    par: &dyn Parallel,
    plan: &DepthwisePlan,
    arena: &mut [f32],
    io: &ConvIo<'_>,
    scratch: &mut [f32],
) -> Result<(), KernelError> {
    let s = &plan.shape;
    let weights = super::pack::depthwise_len(s.ic, s.kh, s.kw)?;
    let args = blocked_args(s, [plan.oh, plan.ow], &plan.epilogue, arena, io, weights)?;
    check_min_len("scratch", scratch.len(), plan.scratch_len(par.threads()))?;
    let scratch = SyncPtr(scratch.as_mut_ptr());
    let per = plan.scratch;
    par.run(plan.tasks, &|task, thread| {
        // SAFETY: operands checked above; each task writes its own rows of one block and uses
        // its thread's scratch.
        unsafe { forward_task(plan.isa, plan, &args, task, scratch.get().wrapping_add(thread * per)) }
    });
    Ok(())
}

/// One tile: `W` output pixels of row `oy`, block `cb`, starting at column `ox0`.
///
/// # Safety
/// As [`forward_task`].
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn tile_w<S: Simd, const W: usize>(
    s: S,
    p: &DepthwisePlan,
    band: *const f32,
    row0: usize,
    wb: *const f32,
    oy: usize,
    ox0: usize,
    buf: &mut [f32; 16 * TILE],
) {
    let sh = &p.shape;
    let top = (oy * sh.stride[0]) as isize - sh.pad[0] as isize;
    let mut acc = [s.zero(); W];
    for kh in 0..sh.kh {
        let iy = top + (kh * sh.dilation[0]) as isize;
        if iy < 0 || iy >= sh.ih as isize {
            continue;
        }
        let row = band.wrapping_add((iy as usize - row0) * p.band_row);
        for kw in 0..sh.kw {
            // SAFETY: tap (kh, kw) of block cb's weights; band pixels of this row inside the
            // padded width (the output size formula bounds them).
            unsafe {
                let wv = s.load(wb.add((kh * sh.kw + kw) * 16));
                for (j, a) in acc.iter_mut().enumerate() {
                    let col = (ox0 + j) * sh.stride[1] + kw * sh.dilation[1];
                    *a = s.fmadd(s.load(row.add(col * 16)), wv, *a);
                }
            }
        }
    }
    for (j, a) in acc.iter().enumerate() {
        // SAFETY: j < W <= TILE.
        unsafe { s.store(buf.as_mut_ptr().add(j * 16), *a) };
    }
}

/// The raw sums of row `oy` of block `cb` into `out` tiles, each finished by the shared tile
/// epilogue.
///
/// # Safety
/// As [`forward_task`].
#[inline(always)]
unsafe fn row_generic<S: Simd>(
    s: S,
    p: &DepthwisePlan,
    band: *const f32,
    row0: usize,
    wb: *const f32,
    oy: usize,
    out: &Out,
) {
    let mut buf = [0.0f32; 16 * TILE];
    let mut ox = 0;
    while ox < p.ow {
        let w = (p.ow - ox).min(TILE);
        // SAFETY: forwarded contract.
        unsafe {
            if w == TILE {
                tile_w::<S, TILE>(s, p, band, row0, wb, oy, ox, &mut buf);
            } else {
                tile_w::<S, 1>(s, p, band, row0, wb, oy, ox, &mut buf);
            }
        }
        let w = if w == TILE { TILE } else { 1 };
        let mut o = *out;
        o.c = out.c.wrapping_add(ox * 16);
        if !out.res.is_null() {
            o.res = out.res.wrapping_add(ox * 16);
        }
        // SAFETY: buf holds w vectors; the output (and residual) pixels exist.
        unsafe { tile::finish(S::ISA, buf.as_ptr(), w, 1, &o) };
        ox += w;
    }
}

isa_fn! {
    /// # Safety
    /// As [`forward_task`].
    unsafe fn row_isa(p: &DepthwisePlan, band: *const f32, row0: usize, wb: *const f32, oy: usize, out: &Out) = row_generic;
}

/// Runs one task (rows of one block of one image).
///
/// # Safety
/// `plan` from [`DepthwisePlan::new`]; `isa` its instruction set, supported by the CPU; `a`
/// valid for the plan's shape (blocked images, [`super::pack::depthwise_len`] weights,
/// `oc`-float vectors), the output apart from the input; `scratch` valid for `plan.scratch`
/// floats and used by no other running task.
pub unsafe fn forward_task(isa: Isa, plan: &DepthwisePlan, a: &ConvArgs, task: usize, scratch: *mut f32) {
    let s = &plan.shape;
    let row_i = task % plan.n_rows;
    let cb = (task / plan.n_rows) % plan.cb;
    let n = task / plan.n_rows / plan.cb;
    let oy0 = row_i * plan.row_chunk;
    let oy1 = (oy0 + plan.row_chunk).min(plan.oh);
    let first = (oy0 * s.stride[0]).saturating_sub(s.pad[0]);
    let last = ((oy1 - 1) * s.stride[0] + (s.kh - 1) * s.dilation[0]).saturating_sub(s.pad[0]).min(s.ih - 1);
    let pw16 = s.pad[1] * 16;
    for iy in first..=last {
        let src = a.x.wrapping_add(n * a.x_bs + (cb * s.ih + iy) * s.iw * 16);
        let dst = scratch.wrapping_add((iy - first) * plan.band_row);
        // SAFETY: an input row of block cb; a band row inside the scratch.
        unsafe {
            dst.write_bytes(0, pw16);
            core::ptr::copy_nonoverlapping(src, dst.add(pw16), s.iw * 16);
            dst.add(pw16 + s.iw * 16).write_bytes(0, pw16);
        }
    }
    let mut e = ([0.0f32; 16], [0.0f32; 16], [0.0f32; 16]);
    for l in 0..16.min(s.oc - cb * 16) {
        // SAFETY: cb * 16 + l < oc.
        unsafe {
            if !a.bias.is_null() {
                e.0[l] = *a.bias.add(cb * 16 + l);
            }
            if !a.scale.is_null() {
                e.1[l] = *a.scale.add(cb * 16 + l);
                e.2[l] = *a.shift.add(cb * 16 + l);
            }
        }
    }
    let ohw16 = plan.oh * plan.ow * 16;
    let wb = a.w.wrapping_add(cb * s.kh * s.kw * 16);
    for oy in oy0..oy1 {
        let at = n * a.y_bs + cb * ohw16 + oy * plan.ow * 16;
        let mut out = Out::plain(a.y.wrapping_add(at), 16, ohw16 as isize, false);
        out.act = plan.epilogue.act;
        if plan.epilogue.bias {
            out.bias = e.0.as_ptr();
        }
        if plan.epilogue.scale_shift {
            out.scale = e.1.as_ptr();
            out.shift = e.2.as_ptr();
        }
        if plan.epilogue.residual {
            out.res = a.res.wrapping_add(n * a.res_bs + cb * ohw16 + oy * plan.ow * 16);
            out.res_col = 16;
            out.res_blk = ohw16 as isize;
        }
        // SAFETY: forwarded contract; the band holds input rows from `first`.
        unsafe { row_isa(isa, plan, scratch, first, wb, oy, &out) };
    }
}
