//! Convolution of a plain (`nchw`) input with few channels: the 7x7/2 stem on an RGB image,
//! LeNet-style first layers. Output `nChw16c` (the fused epilogue in the tile) or `nchw` (the
//! pixel-vector tiles of `conv_plain_rows`, written straight into the channel planes).
//! Weights `Oihw16o`: `[ceil(O/16)][I][KH][KW][16 o]` (`pack::pack_plain_input`), so no FMA is
//! spent on padded input channels (a blocked 3-channel input would waste 13 of 16).
//!
//! Tiles: columns are output pixels of a row, a broadcast per input float; the reduction is
//! input channels x kernel rows x kernel columns (the steps). The halo is a per-task copy of
//! the input rows between zero columns, read with column stride 1 or 2 (the convolution's
//! column stride, a compile-time tile parameter); larger strides copy each kernel column's
//! pixels compacted (as `conv.rs`'s `Taps`).

use super::conv::{ConvShape, Epilogue, best_split, choose_tile};
use super::conv_plain_rows::{RowBand, RowsPass};
use super::error::{KernelError, check_len, check_min_len, product};
use super::par::{Parallel, SyncPtr};
use super::simd::{Cpu, Isa};
use super::tile::{self, Out, Reduce};
use super::view::{Layout, check_apart, check_same_or_apart, pad16};

/// A checked plain-input convolution (made by [`PlainConvPlan::new`] only).
#[derive(Clone, Copy, Debug, PartialEq)]
#[repr(C)]
pub struct PlainConvPlan {
    pub(crate) shape: ConvShape,
    pub(crate) epilogue: Epilogue,
    pub(crate) out: Layout,
    pub(crate) isa: Isa,
    pub(crate) oh: usize,
    pub(crate) ow: usize,
    pub(crate) ocb: usize,
    pub(crate) k: usize,
    pub(crate) nw: usize,
    /// Column stride of the tiles (1 or 2), and whether the band is compacted per tap.
    pub(crate) ac: usize,
    pub(crate) taps: bool,
    pub(crate) band_row: usize,
    pub(crate) band_rows: usize,
    pub(crate) band_ic: usize,
    pub(crate) row_chunk: usize,
    pub(crate) n_rows: usize,
    pub(crate) oc_chunk: usize,
    pub(crate) n_oc: usize,
    pub(crate) tasks: usize,
    /// Plain output: the band of zero-padded rows its pixel-vector tiles read.
    pub(crate) rows_band: RowBand,
    /// Band floats (of the blocked tiles' band, or of `rows_band`).
    pub(crate) scratch: usize,
}

/// Floats of `Oihw16o` weights.
pub fn packed_weight_len(shape: &ConvShape) -> Result<usize, KernelError> {
    product("packed weights", &[shape.oc.div_ceil(16), shape.ic, shape.kh, shape.kw, 16])
}

impl PlainConvPlan {
    pub fn new(
        shape: ConvShape,
        epilogue: Epilogue,
        out: Layout,
        cpu: Cpu,
        threads: usize,
    ) -> Result<PlainConvPlan, KernelError> {
        let [oh, ow] = shape.out_hw()?;
        if shape.groups != 1 {
            return Err(KernelError::Unsupported { what: "plain-input convolution with groups" });
        }
        if !epilogue.act.is_valid() {
            return Err(KernelError::Shape { what: "activation parameters" });
        }
        packed_weight_len(&shape)?;
        product("tensor", &[shape.n, shape.ic, shape.ih, shape.iw])?;
        product("tensor", &[shape.n, pad16(shape.oc), oh, ow])?;
        let isa = cpu.isa();
        let ocb = shape.oc.div_ceil(16);
        let sw = shape.stride[1];
        let taps = sw > 2;
        let ac = if taps { 1 } else { sw };
        let tiles = tile::tiles(isa);
        let set = if ac == 2 { &tiles.a2 } else { &tiles.a1 };
        let (k, nw) = choose_tile(set, ocb, ow);
        let band_row = if taps { shape.kw * ow } else { shape.iw + 2 * shape.pad[1] };
        let mut plan = PlainConvPlan {
            shape,
            epilogue,
            out,
            isa,
            oh,
            ow,
            ocb,
            k,
            nw,
            ac,
            taps,
            band_row,
            band_rows: 0,
            band_ic: 0,
            row_chunk: oh,
            n_rows: 1,
            oc_chunk: ocb,
            n_oc: 1,
            tasks: 0,
            rows_band: RowBand::new(&shape, ow, 1)?,
            scratch: 0,
        };
        let unit = (shape.ic * 16 * shape.kh * shape.kw) as f64 / 2.0;
        let p = &plan;
        let cost = |rc: usize, cc: usize, blocks: usize| {
            unit * (rc * cc * blocks) as f64 + 1.5 * (shape.ic * p.rows_for(rc) * band_row) as f64
        };
        let sp = best_split(shape.n, ocb / k, oh, ow, ow, threads.max(1), &cost, k);
        plan.row_chunk = sp.row_chunk;
        plan.n_rows = sp.n_rows;
        plan.oc_chunk = sp.oc_chunk;
        plan.n_oc = sp.n_oc;
        plan.tasks = sp.tasks;
        plan.band_rows = plan.rows_for(plan.row_chunk);
        plan.band_ic = plan.band_rows * band_row;
        plan.rows_band = RowBand::new(&shape, ow, plan.row_chunk)?;
        plan.scratch = if out == Layout::Nchw { plan.rows_band.len } else { shape.ic * plan.band_ic };
        Ok(plan)
    }

    fn rows_for(&self, rc: usize) -> usize {
        let s = &self.shape;
        ((rc - 1) * s.stride[0] + (s.kh - 1) * s.dilation[0] + 1).min(s.ih)
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
    pub fn tile(&self) -> (usize, usize) {
        (self.k, self.nw)
    }
}

/// Raw operands (as [`super::conv::ConvArgs`]; `x`, and `y` / `res` for a plain output, are
/// `nchw`).
pub use super::conv::ConvArgs as PlainConvArgs;

/// Runs a plain-input convolution after checking every operand: `x` an `nchw` view, `y` and
/// the residual views in the plan's output layout, weights [`packed_weight_len`] floats.
pub fn forward(
    par: &dyn Parallel,
    plan: &PlainConvPlan,
    arena: &mut [f32],
    io: &super::conv::ConvIo<'_>,
    scratch: &mut [f32],
) -> Result<(), KernelError> {
    let s = &plan.shape;
    let len = arena.len();
    io.x.check_in("input", len)?;
    io.y.check_in("output", len)?;
    io.x.expect("input", [s.n, s.ic, s.ih, s.iw], Layout::Nchw)?;
    io.y.expect("output", [s.n, s.oc, plan.oh, plan.ow], plan.out)?;
    check_apart(("output", &io.y), &[("input", &io.x)])?;
    check_len("weights", io.weights.len(), packed_weight_len(s)?)?;
    let e = &plan.epilogue;
    let vector = |what: &'static str, v: Option<&[f32]>, wanted: bool| -> Result<*const f32, KernelError> {
        match (v, wanted) {
            (Some(v), true) => check_len(what, v.len(), s.oc).map(|_| v.as_ptr()),
            (None, false) => Ok(core::ptr::null()),
            _ => Err(KernelError::View { what }),
        }
    };
    let (bias, scale, shift) = (
        vector("bias", io.bias, e.bias)?,
        vector("scale", io.scale, e.scale_shift)?,
        vector("shift", io.shift, e.scale_shift)?,
    );
    let res = match (io.residual, e.residual) {
        (Some(r), true) => {
            r.check_in("residual", len)?;
            r.expect("residual", [s.n, s.oc, plan.oh, plan.ow], plan.out)?;
            check_same_or_apart(("residual", &r), ("output", &io.y))?;
            Some(r)
        }
        (None, false) => None,
        _ => return Err(KernelError::View { what: "residual" }),
    };
    check_min_len("scratch", scratch.len(), plan.scratch_len(par.threads()))?;
    let base = arena.as_mut_ptr();
    let args = PlainConvArgs {
        x: base.wrapping_add(io.x.offset),
        x_bs: io.x.batch_stride,
        w: io.weights.as_ptr(),
        bias,
        scale,
        shift,
        res: res.map_or(core::ptr::null(), |r| base.wrapping_add(r.offset)),
        res_bs: res.map_or(0, |r| r.batch_stride),
        y: base.wrapping_add(io.y.offset),
        y_bs: io.y.batch_stride,
    };
    let scratch = SyncPtr(scratch.as_mut_ptr());
    let per = plan.scratch;
    par.run(plan.tasks, &|task, thread| {
        // SAFETY: every operand checked above; tasks write their own rows and blocks and use
        // their thread's scratch.
        unsafe { forward_task(plan, &args, task, scratch.get().wrapping_add(thread * per)) }
    });
    Ok(())
}

/// Runs one task (a chunk of output rows x a chunk of output blocks of one image).
///
/// # Safety
/// `plan` from [`PlainConvPlan::new`] on a CPU with its instruction set; `a` valid for the
/// plan's shape and layouts (`x` images of `ic x ih x iw`, weights of [`packed_weight_len`],
/// vectors of `oc`, output and residual images in the output layout), the output apart from
/// the input; `scratch` valid for `plan.scratch` floats and used by no other running task.
pub unsafe fn forward_task(plan: &PlainConvPlan, a: &PlainConvArgs, task: usize, scratch: *mut f32) {
    let s = &plan.shape;
    let row_i = task % plan.n_rows;
    let t = task / plan.n_rows;
    let oc_i = t % plan.n_oc;
    let n = t / plan.n_oc;
    let oy0 = row_i * plan.row_chunk;
    let oy1 = (oy0 + plan.row_chunk).min(plan.oh);
    let ob0 = oc_i * plan.oc_chunk;
    if plan.out == Layout::Nchw {
        let band = &plan.rows_band;
        let pass = RowsPass {
            n,
            rows: [oy0, oy1],
            oc: [ob0 * 16, ((ob0 + plan.oc_chunk) * 16).min(s.oc)],
            oh: plan.oh,
            ow: plan.ow,
        };
        // SAFETY: forwarded contract; the scratch holds the rows band.
        unsafe {
            band.copy(s, a.x.wrapping_add(n * a.x_bs), [oy0, oy1], scratch);
            super::conv_plain_rows::forward_pass(plan.isa, s, &plan.epilogue, a, band, scratch, &pass);
        }
        return;
    }
    // SAFETY: forwarded contract.
    let row0 = unsafe { copy_band(plan, a, n, oy0, oy1, scratch) };
    let taps = s.kh * s.kw;
    for ob in (ob0..ob0 + plan.oc_chunk).step_by(plan.k) {
        let mut e = ([0.0f32; 64], [0.0f32; 64], [0.0f32; 64]);
        for i in 0..(16 * plan.k).min(s.oc - ob * 16) {
            // SAFETY: ob * 16 + i < oc; the vectors hold oc floats when present.
            unsafe {
                if !a.bias.is_null() {
                    e.0[i] = *a.bias.add(ob * 16 + i);
                }
                if !a.scale.is_null() {
                    e.1[i] = *a.scale.add(ob * 16 + i);
                    e.2[i] = *a.shift.add(ob * 16 + i);
                }
            }
        }
        let wb = a.w.wrapping_add(ob * s.ic * taps * 16);
        let ohw16 = plan.oh * plan.ow * 16;
        for oy in oy0..oy1 {
            let c = a.y.wrapping_add(n * a.y_bs + ob * ohw16 + oy * plan.ow * 16);
            let mut out = Out::plain(c, 16, ohw16 as isize, false);
            out.act = plan.epilogue.act;
            if plan.epilogue.residual {
                out.res = a.res.wrapping_add(n * a.res_bs + ob * ohw16 + oy * plan.ow * 16);
                out.res_col = 16;
                out.res_blk = ohw16 as isize;
            }
            if plan.epilogue.bias {
                out.bias = e.0.as_ptr();
            }
            if plan.epilogue.scale_shift {
                out.scale = e.1.as_ptr();
                out.shift = e.2.as_ptr();
            }
            // SAFETY: forwarded contract.
            unsafe { row_tiles(plan, scratch, row0, wb, oy, &out) };
        }
    }
}

/// The tiles of output row `oy` into `base` (whose `c` points at the row's first pixel).
///
/// # Safety
/// As [`forward_task`].
unsafe fn row_tiles(plan: &PlainConvPlan, band: *const f32, row0: usize, wb: *const f32, oy: usize, base: &Out) {
    let s = &plan.shape;
    let (sh, dh) = (s.stride[0], s.dilation[0]);
    let top = (oy * sh) as isize - s.pad[0] as isize;
    let kh_lo = if top >= 0 { 0 } else { ((-top) as usize).div_ceil(dh) };
    let kh_hi = s.kh.min(((s.ih as isize - top + dh as isize - 1) / dh as isize).max(0) as usize);
    let in_row = (top + (kh_lo * dh) as isize) as usize - row0;
    let r = Reduce {
        n: [s.ic, kh_hi.saturating_sub(kh_lo), 1],
        a: [plan.band_ic as isize, (dh * plan.band_row) as isize, 0],
        b: [(s.kh * s.kw * 16) as isize, (s.kw * 16) as isize, 0],
        steps: s.kw,
        a_step: if plan.taps { plan.ow } else { s.dilation[1] } as isize,
        b_step: 16,
        b_blk: (s.ic * s.kh * s.kw * 16) as isize,
    };
    let tiles = tile::tiles(plan.isa);
    let set = if plan.ac == 2 { &tiles.a2 } else { &tiles.a1 };
    let ntiles = plan.ow.div_ceil(plan.nw);
    let mut ox = 0;
    for t in 0..ntiles {
        let w = plan.ow / ntiles + usize::from(t < plan.ow % ntiles);
        let mut out = *base;
        out.c = base.c.wrapping_add(ox * 16);
        if !base.res.is_null() {
            out.res = base.res.wrapping_add(ox * 16);
        }
        let ap = band.wrapping_add(in_row * plan.band_row + ox * plan.ac);
        // SAFETY: the reduction reads band rows of this task and weight vectors of these
        // blocks; the tile writes w pixels of the row.
        unsafe { set.get(plan.k, w)(ap, wb.wrapping_add(kh_lo * s.kw * 16), &r, &out) };
        ox += w;
    }
}

/// Copies the input rows that output rows `oy0..oy1` read into the band; returns the first.
///
/// # Safety
/// As [`forward_task`].
unsafe fn copy_band(
    plan: &PlainConvPlan,
    a: &PlainConvArgs,
    n: usize,
    oy0: usize,
    oy1: usize,
    band: *mut f32,
) -> usize {
    let s = &plan.shape;
    let [sh, sw] = s.stride;
    let pw = s.pad[1];
    let first = (oy0 * sh).saturating_sub(s.pad[0]);
    let last = ((oy1 - 1) * sh + (s.kh - 1) * s.dilation[0]).saturating_sub(s.pad[0]).min(s.ih - 1);
    for c in 0..s.ic {
        for iy in first..=last {
            let src = a.x.wrapping_add(n * a.x_bs + (c * s.ih + iy) * s.iw);
            let dst = band.wrapping_add(c * plan.band_ic + (iy - first) * plan.band_row);
            // SAFETY: iy < ih: a row of the input; the destination row is inside the band.
            unsafe {
                if plan.taps {
                    for kx in 0..s.kw {
                        for ox in 0..plan.ow {
                            let ix = (ox * sw + kx * s.dilation[1]) as isize - pw as isize;
                            let v = if ix >= 0 && (ix as usize) < s.iw { *src.add(ix as usize) } else { 0.0 };
                            *dst.add(kx * plan.ow + ox) = v;
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
    first
}
