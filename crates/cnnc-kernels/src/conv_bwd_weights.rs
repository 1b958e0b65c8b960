//! Convolution backward-weights on blocked maps, with the bias gradient in the same run:
//! `dw[o][i][kh][kw] = sum over n, oy, ox of gy[n][o][oy][ox] * x[n][i][iy][ix]` with
//! `iy = oy sh - ph + kh dh`, written as packed `gOIhw16i16o` (the layout the forward pass and
//! the optimiser read), optionally added to what is there; `db[o] = sum of gy[n][o]`.
//!
//! The tile kernel again: for one kernel tap and one pair (input block, `k` output blocks) a
//! tile's columns are the 16 input channels of a pixel (one float apart), each step one output
//! pixel (a broadcast of each input channel, one gy vector per output block), the reduction
//! over images x output rows x output columns. The halo needs no copy here: for each tap the
//! output pixels whose input pixel lies inside the image form a rectangle, and the reduction
//! runs over exactly that rectangle. The padded positions of the packed gradient are written
//! as zeros (the padding lanes of x and gy hold arbitrary finite values).
//!
//! The backward of a fused conv + ReLU (+ residual) starts here: with a mask the run first
//! writes `gy * (y > 0)` where the shortcut's gradient goes (the residual split), then reduces
//! that; backward-data reads the same split gradient (or masks `gy` itself while copying it).
//!
//! A training step whose update is the gradient's only reader runs
//! [`backward_weights_update_task`] instead: each task writes its blocks into a scratch
//! buffer of its thread's and applies the optimiser's update from there while they are in
//! cache, so the gradient never goes to memory and the update reads no gradient array.

use super::conv::{ConvShape, choose_tile, in_image_outputs, packed_weight_len};
use super::error::{KernelError, check_len, product};
use super::optim::{StepRule, UpdateArgs, update_at};
use super::par::{Parallel, SyncPtr};
use super::simd::{Cpu, Isa};
use super::tile::{self, Out, Reduce};
use super::view::{Layout, View, check_apart, check_same_or_apart, pad16};

/// Floats per task of the masking pass.
const MASK_CHUNK: usize = 1 << 15;

/// A checked backward-weights pass (made by [`BwdWeightsPlan::new`] only).
#[derive(Clone, Copy, Debug, PartialEq)]
#[repr(C)]
pub struct BwdWeightsPlan {
    pub(crate) shape: ConvShape,
    pub(crate) isa: Isa,
    pub(crate) oh: usize,
    pub(crate) ow: usize,
    pub(crate) icb: usize,
    pub(crate) ocb: usize,
    pub(crate) k: usize,
    pub(crate) nw: usize,
    pub(crate) bias: bool,
    pub(crate) accumulate: bool,
    /// Weight tasks (group x output-block unit x input block), then one bias task per block.
    pub(crate) w_tasks: usize,
    pub(crate) tasks: usize,
}

/// Raw operands, batch strides in floats; `db` null without a bias.
#[derive(Clone, Copy, Debug)]
#[repr(C)]
pub struct BwdWeightsArgs {
    pub x: *const f32,
    pub x_bs: usize,
    pub gy: *const f32,
    pub gy_bs: usize,
    pub dw: *mut f32,
    pub db: *mut f32,
}

// SAFETY: plain pointers; tasks read x and gy and write disjoint blocks of dw and db.
unsafe impl Sync for BwdWeightsArgs {}
// SAFETY: as above.
unsafe impl Send for BwdWeightsArgs {}

impl BwdWeightsPlan {
    /// `bias`: also compute the bias gradient; `accumulate`: add to `dw` (and `db`).
    pub fn new(shape: ConvShape, bias: bool, accumulate: bool, cpu: Cpu) -> Result<BwdWeightsPlan, KernelError> {
        let [oh, ow] = shape.out_hw()?;
        let g = shape.groups;
        if g > 1 && (!(shape.ic / g).is_multiple_of(16) || !(shape.oc / g).is_multiple_of(16)) {
            return Err(KernelError::Unsupported { what: "blocked grouped convolution needs whole blocks per group" });
        }
        packed_weight_len(&shape)?;
        product("tensor", &[shape.n, pad16(shape.ic), shape.ih, shape.iw])?;
        product("tensor", &[shape.n, pad16(shape.oc), oh, ow])?;
        let isa = cpu.isa();
        let (icb, ocb) = ((shape.ic / g).div_ceil(16), (shape.oc / g).div_ceil(16));
        let (k, nw) = choose_tile(&tile::tiles(isa).a1, ocb, 16);
        let w_tasks = g * (ocb / k) * icb;
        let tasks = w_tasks + if bias { g * ocb } else { 0 };
        Ok(BwdWeightsPlan { shape, isa, oh, ow, icb, ocb, k, nw, bias, accumulate, w_tasks, tasks })
    }

    pub fn tasks(&self) -> usize {
        self.tasks
    }
    pub fn shape(&self) -> &ConvShape {
        &self.shape
    }
    pub fn tile(&self) -> (usize, usize) {
        (self.k, self.nw)
    }
    /// Floats of a task's scratch in [`backward_weights_update_task`]: its weight blocks.
    pub fn update_scratch_len(&self) -> usize {
        self.k * self.shape.kh * self.shape.kw * 256
    }
}

/// The operands of a backward-weights pass: `x` and `gy` blocked views in an arena, and
/// optionally the ReLU mask with the residual split: with `relu` = `(y, split)`, the pass first
/// writes `gy * (y > 0)` (`y` the fused conv + ReLU's forward output) into `split` (the
/// gradient the residual shortcut also receives; `split` may be `gy` itself), then computes
/// the weight and bias gradients from it.
#[derive(Clone, Copy, Debug)]
pub struct BwdWeightsIo {
    pub x: View,
    pub gy: View,
    pub relu: Option<(View, View)>,
}

/// Runs a backward-weights pass into `dw` (packed, [`packed_weight_len`] floats) and `db`
/// (`oc` floats, when the plan has a bias) after checking every operand.
pub fn backward_weights(
    par: &dyn Parallel,
    plan: &BwdWeightsPlan,
    arena: &mut [f32],
    io: &BwdWeightsIo,
    dw: &mut [f32],
    db: Option<&mut [f32]>,
) -> Result<(), KernelError> {
    let s = &plan.shape;
    io.x.check_in("input", arena.len())?;
    io.gy.check_in("output gradient", arena.len())?;
    io.x.expect("input", [s.n, s.ic, s.ih, s.iw], Layout::NChw16c)?;
    io.gy.expect("output gradient", [s.n, s.oc, plan.oh, plan.ow], Layout::NChw16c)?;
    check_len("weight gradient", dw.len(), packed_weight_len(s)?)?;
    let dims = [s.n, s.oc, plan.oh, plan.ow];
    let gy = match io.relu {
        Some((y, split)) => {
            y.check_in("forward output", arena.len())?;
            split.check_in("split gradient", arena.len())?;
            y.expect("forward output", dims, Layout::NChw16c)?;
            split.expect("split gradient", dims, Layout::NChw16c)?;
            check_same_or_apart(("split gradient", &split), ("output gradient", &io.gy))?;
            check_apart(("split gradient", &split), &[("forward output", &y), ("input", &io.x)])?;
            split
        }
        None => io.gy,
    };
    let db = match (db, plan.bias) {
        (Some(db), true) => {
            check_len("bias gradient", db.len(), s.oc)?;
            db.as_mut_ptr()
        }
        (None, false) => core::ptr::null_mut(),
        _ => return Err(KernelError::View { what: "bias gradient" }),
    };
    if let Some((y, split)) = io.relu {
        let base = SyncPtr(arena.as_mut_ptr());
        let (g, image) = (io.gy, io.gy.image_len().unwrap_or(0));
        let chunks = image.div_ceil(MASK_CHUNK);
        par.run(s.n * chunks, &|t, _| {
            let (n, c) = (t / chunks, t % chunks);
            let b = base.get();
            for i in c * MASK_CHUNK..((c + 1) * MASK_CHUNK).min(image) {
                // SAFETY: i is a stored float of image n of three views of one shape, checked
                // above; split is gy itself or apart from it, apart from y; chunks are disjoint.
                unsafe {
                    let v = if *b.add(y.offset + n * y.batch_stride + i) > 0.0 {
                        *b.add(g.offset + n * g.batch_stride + i)
                    } else {
                        0.0
                    };
                    *b.add(split.offset + n * split.batch_stride + i) = v;
                }
            }
        });
    }
    let base = arena.as_ptr();
    let args = BwdWeightsArgs {
        x: base.wrapping_add(io.x.offset),
        x_bs: io.x.batch_stride,
        gy: base.wrapping_add(gy.offset),
        gy_bs: gy.batch_stride,
        dw: dw.as_mut_ptr(),
        db,
    };
    par.run(plan.tasks, &|task, _| {
        // SAFETY: views and slices checked above; dw and db are separate slices written in
        // disjoint blocks by the tasks.
        unsafe { backward_weights_task(plan, &args, task) }
    });
    Ok(())
}

/// Runs one task of a backward-weights plan.
///
/// # Safety
/// `plan` from [`BwdWeightsPlan::new`] on a CPU with its instruction set; `a` valid for the
/// plan's shape (x and gy images as in the forward pass, `dw` of `packed_weight_len` floats,
/// `db` of `oc` floats when the plan has a bias), `dw` and `db` apart from x and gy.
pub unsafe fn backward_weights_task(plan: &BwdWeightsPlan, a: &BwdWeightsArgs, task: usize) {
    if task >= plan.w_tasks {
        // SAFETY: forwarded contract.
        unsafe { bias_task(plan, a, task - plan.w_tasks) };
        return;
    }
    // SAFETY: forwarded contract.
    unsafe { weights_into(plan, a, task, None) };
}

/// Runs one task of a backward-weights plan and the optimiser's update of the weight blocks
/// it computed, from `scratch` ([`BwdWeightsPlan::update_scratch_len`] floats, the task's
/// own), where the task writes them instead of `dw`: the gradient stays in cache and never
/// goes to memory. Bias tasks write `db` as [`backward_weights_task`] does.
///
/// # Safety
/// As [`backward_weights_task`] (`a.dw` unused); `rule` and `ua` as
/// [`super::optim::update_at`] takes them for a parameter of [`packed_weight_len`] floats;
/// `scratch` valid for writing its length and used by nothing else meanwhile.
pub unsafe fn backward_weights_update_task(
    plan: &BwdWeightsPlan,
    a: &BwdWeightsArgs,
    (rule, ua): (&StepRule, &UpdateArgs),
    task: usize,
    scratch: *mut f32,
) {
    if task >= plan.w_tasks {
        // SAFETY: forwarded contract.
        unsafe { bias_task(plan, a, task - plan.w_tasks) };
        return;
    }
    // SAFETY: forwarded contract.
    let (g, ob, ib) = unsafe { weights_into(plan, a, task, Some(scratch)) };
    let taps = plan.shape.kh * plan.shape.kw;
    for kk in 0..plan.k {
        let at = ((g * plan.ocb + ob + kk) * plan.icb + ib) * taps * 256;
        // SAFETY: block (g, ob + kk, ib)'s taps lie inside the packed weight; the task's
        // gradient of it is at `kk taps 256` in the scratch.
        unsafe { update_at(rule, ua, at, scratch.add(kk * taps * 256), taps * 256) };
    }
}

/// The weight blocks of task `task` (group `g`, output blocks `ob..ob + k`, input block `ib`:
/// returned), written into the packed `dw`, or with `compact` into that buffer, block `kk`'s
/// taps at `kk taps 256`.
///
/// # Safety
/// As [`backward_weights_task`]; `compact` valid for `k taps 256` floats.
unsafe fn weights_into(
    plan: &BwdWeightsPlan,
    a: &BwdWeightsArgs,
    task: usize,
    compact: Option<*mut f32>,
) -> (usize, usize, usize) {
    let s = &plan.shape;
    let ib = task % plan.icb;
    let t = task / plan.icb;
    let units = plan.ocb / plan.k;
    let ob = (t % units) * plan.k;
    let g = t / units;
    let taps = s.kh * s.kw;
    let tiles = &tile::tiles(plan.isa).a1;
    let (ihw16, ohw16) = (s.ih * s.iw * 16, plan.oh * plan.ow * 16);
    let c_blk = if compact.is_some() { taps * 256 } else { plan.icb * taps * 256 } as isize;
    for kh in 0..s.kh {
        let (oy_lo, oy_hi) = in_image_outputs(plan.oh, s.ih, s.stride[0], s.pad[0], kh * s.dilation[0]);
        for kw in 0..s.kw {
            let (ox_lo, ox_hi) = in_image_outputs(plan.ow, s.iw, s.stride[1], s.pad[1], kw * s.dilation[1]);
            let rows = oy_hi.saturating_sub(oy_lo);
            let cols = ox_hi.saturating_sub(ox_lo);
            let r = Reduce {
                n: [s.n, if cols == 0 { 0 } else { rows }, 1],
                a: [a.x_bs as isize, (s.stride[0] * s.iw * 16) as isize, 0],
                b: [a.gy_bs as isize, (plan.ow * 16) as isize, 0],
                steps: cols,
                a_step: (s.stride[1] * 16) as isize,
                b_step: 16,
                b_blk: ohw16 as isize,
            };
            let iy = (oy_lo * s.stride[0] + kh * s.dilation[0]).saturating_sub(s.pad[0]);
            let ix = (ox_lo * s.stride[1] + kw * s.dilation[1]).saturating_sub(s.pad[1]);
            let xa = a.x.wrapping_add((g * plan.icb + ib) * ihw16 + (iy * s.iw + ix) * 16);
            let gb = a.gy.wrapping_add((g * plan.ocb + ob) * ohw16 + (oy_lo * plan.ow + ox_lo) * 16);
            let blk = ((g * plan.ocb + ob) * plan.icb + ib) * taps + kh * s.kw + kw;
            let ntiles = 16usize.div_ceil(plan.nw);
            let mut i0 = 0;
            for t in 0..ntiles {
                let w = 16 / ntiles + usize::from(t < 16 % ntiles);
                let first = match compact {
                    Some(c) => c.wrapping_add((kh * s.kw + kw) * 256),
                    None => a.dw.wrapping_add(blk * 256),
                };
                let out = Out::plain(first.wrapping_add(i0 * 16), 16, c_blk, plan.accumulate && compact.is_none());
                // SAFETY: for this tap the rectangle oy_lo..oy_hi x ox_lo..ox_hi maps into the
                // input image, so every x float and gy vector read is inside its image; the
                // tile writes rows i0..i0 + w of k blocks of dw.
                unsafe { tiles.get(plan.k, w)(xa.wrapping_add(i0), gb, &r, &out) };
                i0 += w;
            }
        }
    }
    // SAFETY: forwarded contract; the blocks are this task's.
    unsafe { zero_padding(plan, a, (g, ob, ib), compact) };
    (g, ob, ib)
}

/// Zeroes the padded rows (input channels past the group's) and lanes (output channels past
/// it) of the blocks task `(g, ob.., ib)` wrote.
///
/// # Safety
/// As [`backward_weights_task`].
unsafe fn zero_padding(
    plan: &BwdWeightsPlan,
    a: &BwdWeightsArgs,
    (g, ob, ib): (usize, usize, usize),
    compact: Option<*mut f32>,
) {
    let s = &plan.shape;
    let (ci, co) = (s.ic / s.groups, s.oc / s.groups);
    let taps = s.kh * s.kw;
    for b in ob..ob + plan.k {
        let real_i = (ci - ib * 16).min(16);
        let real_o = co.saturating_sub(b * 16).min(16);
        if real_i == 16 && real_o == 16 {
            continue;
        }
        let (base, first) = match compact {
            Some(c) => (c, (b - ob) * taps * 256),
            None => (a.dw, ((g * plan.ocb + b) * plan.icb + ib) * taps * 256),
        };
        for t in 0..taps {
            for i in 0..16 {
                for o in 0..16 {
                    if i >= real_i || o >= real_o {
                        // SAFETY: inside the block this task wrote.
                        unsafe { *base.add(first + (t * 16 + i) * 16 + o) = 0.0 };
                    }
                }
            }
        }
    }
}

/// `db` for output block `task` (of all groups): the sum of gy over images and pixels, row
/// sums first to keep the f32 sums short.
///
/// # Safety
/// As [`backward_weights_task`].
unsafe fn bias_task(plan: &BwdWeightsPlan, a: &BwdWeightsArgs, task: usize) {
    let ohw = plan.oh * plan.ow;
    let mut total = [0.0f64; 16];
    for n in 0..plan.shape.n {
        let blk = a.gy.wrapping_add(n * a.gy_bs + task * ohw * 16);
        for y in 0..plan.oh {
            let mut row = [0.0f32; 16];
            for x in 0..plan.ow {
                for (l, r) in row.iter_mut().enumerate() {
                    // SAFETY: pixel (y, x) of block `task` of image n is inside gy.
                    *r += unsafe { *blk.add((y * plan.ow + x) * 16 + l) };
                }
            }
            for (t, r) in total.iter_mut().zip(row) {
                *t += r as f64;
            }
        }
    }
    let oc = plan.shape.oc;
    for (l, t) in total.iter().enumerate() {
        let o = task * 16 + l;
        if o < oc {
            // SAFETY: o < oc, and db holds oc floats; block `task` is this task's alone.
            unsafe {
                let p = a.db.add(o);
                *p = if plan.accumulate { *p + *t as f32 } else { *t as f32 };
            }
        }
    }
}
