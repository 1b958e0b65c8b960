//! Convolution backward-data on blocked maps: `dx = conv_transpose(gy, w)`, with an optional
//! ReLU-mask prologue (`gy * (y > 0)` from the forward output `y`, applied while the gradient
//! is copied in), optional accumulation into `dx`, any stride, padding, dilation and groups of
//! whole blocks. Weights are packed `gIOhw16o16i` rotated ([`pack::Blocked::BackwardData`]).
//!
//! A strided convolution's input gradient splits into `sh x sw` phases: the input rows
//! `iy = ry + sh * q` receive gradient from the kernel rows `kh` with `(ry + ph - kh dh)`
//! divisible by `sh`, an arithmetic progression, through output rows `q - const`. Each phase is
//! thus a stride-1 correlation of `gy` with a sub-kernel, run by the same tile kernel as the
//! forward pass: tile columns are consecutive input columns of one phase (written `sw * 16`
//! floats apart), the reduction runs over output blocks x the phase's kernel rows x its kernel
//! columns, reading a per-task band of `gy` rows between zero columns. Phases with no taps
//! (a 1x1 stride-2 layer's odd rows) come out as zero from an empty reduction.
//!
//! Taps that reach only padding are skipped, as the forward pass skips them: kernel rows per
//! dx row, kernel columns per tile (those reaching no `gy` column inside the map for any of
//! the tile's columns). The plan records the taps any position reads ([`BwdDataPlan::taps`]),
//! so a training step rewrites only those weights: on a 1x1 map with padding 1, one of a 3x3
//! kernel's nine. On small maps, where a task's weights outweigh its image's gradients, a
//! task takes several images and runs each block of weights over all of them.
//!
//! A layer whose output is one pixel (ResNet's last stage on small inputs, LeNet-5's C5) is a
//! matrix product instead: each dx pixel receives gradient through one tap at most, `dx[n][.]
//! [pixel] = sum over o of gy[n][o] w[o][.][tap]`. Its tiles take the images as columns (the
//! batch's gy re-blocked once per task as `[ob][n][16]`) so that each weight vector serves a
//! whole tile of images, where the general path, one pixel per image, read every weight
//! vector for a single FMA row.
//!
//! Small maps at batch > 1 with stride 1 (ResNet-18's layer3 at 3x32x32) gather the task's gy
//! the same way as the forward pass's tiles over images (`conv_small.rs`): one dx pixel of
//! several images a tile ([`BwdDataPlan::with_span`]).
//!
//! [`pack::Blocked::BackwardData`]: super::pack::Blocked::BackwardData

use super::conv::{ConvShape, SPAN_FLOATS, SPAN_GAIN, best_split, choose_tile};
use super::conv_small;
use super::error::{KernelError, check_len, check_min_len, product};
use super::par::{Parallel, SyncPtr};
use super::simd::{Cpu, Isa};
use super::tile::{self, Out, Reduce};
use super::view::{Layout, View, check_apart, pad16};

/// What the backward-data pass does besides the transposed convolution.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
#[repr(C)]
pub struct BwdDataOptions {
    /// Multiply `gy` by `y > 0` (the forward output) while reading it: the ReLU of a fused
    /// conv + ReLU.
    pub relu_mask: bool,
    /// Add to `dx` instead of overwriting it (gradients of a tensor with several consumers).
    pub accumulate: bool,
}

/// A checked backward-data pass and its split into tasks (made by [`BwdDataPlan::new`] only).
#[derive(Clone, Copy, Debug, PartialEq)]
#[repr(C)]
pub struct BwdDataPlan {
    pub(crate) shape: ConvShape,
    pub(crate) options: BwdDataOptions,
    pub(crate) isa: Isa,
    pub(crate) oh: usize,
    pub(crate) ow: usize,
    /// Input (dx) and output (gy) blocks per group.
    pub(crate) icb: usize,
    pub(crate) ocb: usize,
    pub(crate) k: usize,
    pub(crate) nw: usize,
    /// Zero columns on each side of a band row.
    pub(crate) pad_cols: usize,
    pub(crate) band_row: usize,
    pub(crate) band_rows: usize,
    pub(crate) band_ocb: usize,
    pub(crate) row_chunk: usize,
    pub(crate) n_rows: usize,
    pub(crate) ib_chunk: usize,
    pub(crate) n_ib: usize,
    pub(crate) tasks: usize,
    /// Images per task, each with its own band: more than one where the weights a task reads
    /// outweigh its images' gradients (small maps), so that each weight block serves them all
    /// while it is in cache.
    pub(crate) images: usize,
    /// Floats of one image's band (all output blocks), and of a task's scratch.
    pub(crate) band_image: usize,
    pub(crate) scratch: usize,
    /// The kernel rows and columns (forward indices, `start..end`) that reach a gradient
    /// inside the output map from some input position: the only taps the pass reads, so the
    /// only ones a weight rewrite must produce (on a 1x1 map with padding 1, a 3x3 kernel's
    /// centre).
    pub(crate) taps_h: [usize; 2],
    pub(crate) taps_w: [usize; 2],
    /// The output is one pixel (and one group): tasks are dx pixels x runs of `k` input
    /// blocks, tiles have images as columns (see the module comment).
    pub(crate) one_pixel: bool,
    /// Small maps at batch > 1, stride 1: tiles over images (see [`BwdDataPlan::with_span`]).
    pub(crate) span: bool,
}

/// Raw operands (null where absent), batch strides in floats.
#[derive(Clone, Copy, Debug)]
#[repr(C)]
pub struct BwdDataArgs {
    pub gy: *const f32,
    pub gy_bs: usize,
    /// The forward output, for the ReLU mask.
    pub y: *const f32,
    pub y_bs: usize,
    pub w: *const f32,
    pub dx: *mut f32,
    pub dx_bs: usize,
}

// SAFETY: plain pointers; tasks only read gy, y and w and write disjoint rows of dx.
unsafe impl Sync for BwdDataArgs {}
// SAFETY: as above.
unsafe impl Send for BwdDataArgs {}

/// The most floats of gradient bands a task of several images holds (256 KiB: a quarter of
/// the second-level cache, leaving the rest to the weight blocks the images share).
const BATCH_BANDS: usize = 64 << 10;

fn gcd(a: usize, b: usize) -> usize {
    if b == 0 { a } else { gcd(b, a % b) }
}

/// The taps of one phase along one axis: kernel indices `k` with `(r + p - k d) % s == 0`,
/// largest first (the rotated weights' order), and the output offset of each.
struct Taps {
    /// Largest kernel index of the phase (`None`: no taps).
    first: Option<usize>,
    /// Kernel-index step between taps, and the output-index step it makes.
    step: usize,
    out_step: usize,
    count: usize,
}

/// The hull `[start, end)` of the kernel indices of one axis that connect some input position
/// `i < size` to an output `(i + p - kk d) / s` inside `0..o` (exactly divisible).
fn used_taps(size: usize, p: usize, k: usize, d: usize, s: usize, o: usize) -> [usize; 2] {
    let used = |kk: usize| {
        (0..size).any(|i| {
            let num = (i + p) as isize - (kk * d) as isize;
            num >= 0 && num % s as isize == 0 && ((num / s as isize) as usize) < o
        })
    };
    match ((0..k).find(|&kk| used(kk)), (0..k).rev().find(|&kk| used(kk))) {
        (Some(lo), Some(hi)) => [lo, hi + 1],
        _ => [0, 0],
    }
}

fn taps(r: usize, p: usize, k: usize, d: usize, s: usize) -> Taps {
    let step = s / gcd(s, d);
    let first = (0..k).rev().find(|&kk| ((r + p) as isize - (kk * d) as isize).rem_euclid(s as isize) == 0);
    let count = first.map_or(0, |f| f / step + 1);
    Taps { first, step, out_step: step * d / s, count }
}

impl BwdDataPlan {
    pub fn new(
        shape: ConvShape,
        options: BwdDataOptions,
        cpu: Cpu,
        threads: usize,
    ) -> Result<BwdDataPlan, KernelError> {
        let [oh, ow] = shape.out_hw()?;
        let g = shape.groups;
        if g > 1 && (!(shape.ic / g).is_multiple_of(16) || !(shape.oc / g).is_multiple_of(16)) {
            return Err(KernelError::Unsupported { what: "blocked grouped convolution needs whole blocks per group" });
        }
        super::conv::packed_weight_len(&shape)?;
        product("tensor", &[shape.n, pad16(shape.ic), shape.ih, shape.iw])?;
        product("tensor", &[shape.n, pad16(shape.oc), oh, ow])?;
        let isa = cpu.isa();
        let (icb, ocb) = ((shape.ic / g).div_ceil(16), (shape.oc / g).div_ceil(16));
        let [sh, sw] = shape.stride;
        let cols = shape.iw.div_ceil(sw);
        let (k, nw) = choose_tile(&tile::tiles(isa).a16, icb, cols);
        let pad_cols = ((shape.kw - 1) * shape.dilation[1] + shape.pad[1]).div_ceil(sw) + 1;
        let band_row = (ow + 2 * pad_cols) * 16;
        let mut plan = BwdDataPlan {
            shape,
            options,
            isa,
            oh,
            ow,
            icb,
            ocb,
            k,
            nw,
            pad_cols,
            band_row,
            band_rows: 0,
            band_ocb: 0,
            row_chunk: shape.ih,
            n_rows: 1,
            ib_chunk: icb,
            n_ib: 1,
            tasks: 0,
            images: 1,
            band_image: 0,
            scratch: 0,
            taps_h: used_taps(shape.ih, shape.pad[0], shape.kh, shape.dilation[0], sh, oh),
            taps_w: used_taps(shape.iw, shape.pad[1], shape.kw, shape.dilation[1], sw, ow),
            one_pixel: false,
            span: false,
        };
        if oh == 1 && ow == 1 && g == 1 {
            let (k, nw) = choose_tile(&tile::tiles(isa).a16, icb, shape.n);
            let tasks = product("tasks", &[shape.ih, shape.iw, icb / k])?;
            let scratch = product("scratch", &[ocb, shape.n, 16])?;
            return Ok(BwdDataPlan { k, nw, tasks, images: shape.n, scratch, one_pixel: true, ..plan });
        }
        let span = plan.with_span(threads);
        let set = &tile::tiles(isa).a16;
        if shape.n > 1 && span.span && set.efficiency(span.k, span.nw) > SPAN_GAIN * set.efficiency(k, nw) {
            return Ok(span);
        }
        plan.images = plan.images_per_task();
        let unit = (ocb * 16 * shape.kh * shape.kw) as f64 / (2.0 * (sh * sw) as f64);
        let p = &plan;
        let cost = |rc: usize, _cc: usize, blocks: usize| {
            let image =
                unit * (rc * shape.iw * blocks) as f64 + 1.5 * (ocb * p.gy_rows(rc) * (ow + 2 * pad_cols)) as f64;
            image * p.images as f64
        };
        let batches = shape.n.div_ceil(plan.images);
        let sp = best_split(batches * g, icb / k, shape.ih, 1, 1, threads.max(1), &cost, k);
        plan.row_chunk = sp.row_chunk;
        plan.n_rows = sp.n_rows;
        plan.ib_chunk = sp.oc_chunk;
        plan.n_ib = sp.n_oc;
        plan.tasks = sp.tasks;
        plan.band_rows = plan.gy_rows(plan.row_chunk);
        plan.band_ocb = plan.band_rows * band_row;
        plan.band_image = ocb * plan.band_ocb;
        plan.scratch = plan.images * plan.band_image;
        Ok(plan)
    }

    /// The same plan run as tiles over images, as the forward pass on small maps
    /// (`conv_small.rs`): a task gathers its images' gy (masked) as `[ob][oy][ox][image][16]`
    /// and runs, for each run of `k` input blocks, one dx pixel of up to `nw` images a tile
    /// through the rotated taps that reach gy inside the map, written in place (`c_col` = the
    /// image stride). Stride 1 only (a strided layer is left as it is); the threads share the
    /// input blocks, and the pixels when those are too few. For tests and tuning on any shape;
    /// [`BwdDataPlan::new`] picks it for small maps at batch > 1.
    pub fn with_span(mut self, threads: usize) -> BwdDataPlan {
        let s = self.shape;
        if s.stride != [1, 1] || self.one_pixel {
            return self;
        }
        let threads = threads.max(1);
        let per_image = (self.ocb * self.oh * self.ow * 16).max(1);
        let chunks = s.n.div_ceil((SPAN_FLOATS / per_image).clamp(1, s.n));
        self.images = s.n.div_ceil(chunks);
        (self.k, self.nw) = choose_tile(&tile::tiles(self.isa).a16, self.icb, self.images);
        let units = self.icb / self.k;
        self.n_ib = (1..=units.min(threads)).rev().find(|d| units.is_multiple_of(*d)).unwrap_or(1);
        self.ib_chunk = units / self.n_ib * self.k;
        let others = chunks * s.groups * self.n_ib;
        let pixels = s.ih * s.iw;
        self.row_chunk = pixels.div_ceil(threads.div_ceil(others).clamp(1, pixels));
        self.n_rows = pixels.div_ceil(self.row_chunk);
        self.tasks = others * self.n_rows;
        self.band_image = per_image;
        self.scratch = self.images * per_image;
        self.span = true;
        self
    }

    /// Images a task takes: one, unless the weights of the used taps (read once per image of
    /// a task) exceed four times an image's gradients in and out; then as many as keep the
    /// task's bands within [`BATCH_BANDS`] floats, the batch shared evenly between tasks.
    fn images_per_task(&self) -> usize {
        let s = &self.shape;
        let ([h0, h1], [w0, w1]) = (self.taps_h, self.taps_w);
        let weights = self.icb * self.ocb * 256 * (h1 - h0) * (w1 - w0);
        let band = self.ocb * self.gy_rows(s.ih) * self.band_row;
        let image = band + self.icb * 16 * s.ih * s.iw;
        if weights <= 4 * image {
            return 1;
        }
        // Balanced: 16 images at most 14 a task make two tasks of 8.
        let most = (BATCH_BANDS / band).clamp(1, s.n);
        s.n.div_ceil(s.n.div_ceil(most))
    }

    /// Output-gradient rows a task of `rc` input rows reads (at most).
    fn gy_rows(&self, rc: usize) -> usize {
        let s = &self.shape;
        ((rc - 1 + (s.kh - 1) * s.dilation[0]) / s.stride[0] + 2).min(self.oh)
    }

    pub fn scratch_len(&self, threads: usize) -> usize {
        self.scratch * threads
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
    /// The kernel rows and columns the pass reads (forward indices, `[start, end)`).
    pub fn taps(&self) -> ([usize; 2], [usize; 2]) {
        (self.taps_h, self.taps_w)
    }
}

/// The operands of a backward-data pass in an arena: `gy` and `dx` (and `y` for the mask)
/// blocked views; packed `gIOhw16o16i` weights.
#[derive(Clone, Copy, Debug)]
pub struct BwdDataIo<'a> {
    pub gy: View,
    pub y: Option<View>,
    pub dx: View,
    pub weights: &'a [f32],
}

/// Runs a backward-data pass after checking every operand against the plan.
pub fn backward_data(
    par: &dyn Parallel,
    plan: &BwdDataPlan,
    arena: &mut [f32],
    io: &BwdDataIo<'_>,
    scratch: &mut [f32],
) -> Result<(), KernelError> {
    let s = &plan.shape;
    let len = arena.len();
    io.gy.check_in("output gradient", len)?;
    io.dx.check_in("input gradient", len)?;
    io.gy.expect("output gradient", [s.n, s.oc, plan.oh, plan.ow], Layout::NChw16c)?;
    io.dx.expect("input gradient", [s.n, s.ic, s.ih, s.iw], Layout::NChw16c)?;
    check_apart(("input gradient", &io.dx), &[("output gradient", &io.gy)])?;
    let (y_off, y_bs) = match (io.y, plan.options.relu_mask) {
        (Some(y), true) => {
            y.check_in("forward output", len)?;
            y.expect("forward output", [s.n, s.oc, plan.oh, plan.ow], Layout::NChw16c)?;
            check_apart(("input gradient", &io.dx), &[("forward output", &y)])?;
            (y.offset, y.batch_stride)
        }
        (None, false) => (0, 0),
        _ => return Err(KernelError::View { what: "forward output (ReLU mask)" }),
    };
    check_len("weights", io.weights.len(), super::conv::packed_weight_len(s)?)?;
    check_min_len("scratch", scratch.len(), plan.scratch_len(par.threads()))?;
    let base = arena.as_mut_ptr();
    let args = BwdDataArgs {
        gy: base.wrapping_add(io.gy.offset),
        gy_bs: io.gy.batch_stride,
        y: if plan.options.relu_mask { base.wrapping_add(y_off) } else { core::ptr::null() },
        y_bs,
        w: io.weights.as_ptr(),
        dx: base.wrapping_add(io.dx.offset),
        dx_bs: io.dx.batch_stride,
    };
    let scratch = SyncPtr(scratch.as_mut_ptr());
    let per = plan.scratch;
    par.run(plan.tasks, &|task, thread| {
        // SAFETY: views and slices checked above; dx apart from every input; each task writes
        // its own rows and blocks of dx and uses its thread's scratch.
        unsafe { backward_data_task(plan, &args, task, scratch.get().wrapping_add(thread * per)) }
    });
    Ok(())
}

/// Runs one task of a backward-data plan.
///
/// # Safety
/// `plan` from [`BwdDataPlan::new`] on a CPU with its instruction set; `a` valid for the
/// plan's shape (gy and y images of `pad16(oc) x oh x ow`, dx images of `pad16(ic) x ih x iw`,
/// weights of `packed_weight_len`), dx apart from the inputs, `scratch` valid for
/// `plan.scratch` floats and used by no other running task.
pub unsafe fn backward_data_task(plan: &BwdDataPlan, a: &BwdDataArgs, task: usize, scratch: *mut f32) {
    if plan.one_pixel {
        // SAFETY: forwarded contract.
        unsafe { one_pixel_task(plan, a, task, scratch) };
        return;
    }
    if plan.span {
        // SAFETY: forwarded contract.
        unsafe { span_task(plan, a, task, scratch) };
        return;
    }
    let s = &plan.shape;
    let TaskAt { chunk: row_i, ib_i, g, n0, n1 } = plan.task_at(task);
    let iy0 = row_i * plan.row_chunk;
    let iy1 = (iy0 + plan.row_chunk).min(s.ih);
    let band = |n: usize| scratch.wrapping_add((n - n0) * plan.band_image);
    let mut oy_first = 0;
    for n in n0..n1 {
        // SAFETY: forwarded contract; image n's band fits the scratch (n - n0 < images).
        oy_first = unsafe { copy_band(plan, a, n, g, iy0, iy1, band(n)) };
    }
    // Each block of weights serves every image of the task before the next is read.
    let ib0 = g * plan.icb + ib_i * plan.ib_chunk;
    for ib in (ib0..ib0 + plan.ib_chunk).step_by(plan.k) {
        for n in n0..n1 {
            for iy in iy0..iy1 {
                // SAFETY: forwarded contract.
                unsafe { dx_row(plan, a, band(n), oy_first, n, ib, iy) };
            }
        }
    }
}

/// Where a task of a row-band or span plan works: its chunk of rows (or pixels), its run of
/// input blocks, its group and its images `n0..n1`.
struct TaskAt {
    chunk: usize,
    ib_i: usize,
    g: usize,
    n0: usize,
    n1: usize,
}

impl BwdDataPlan {
    /// Task `task`'s place: chunks innermost, then input-block runs, groups and image chunks.
    fn task_at(&self, task: usize) -> TaskAt {
        let s = &self.shape;
        let t = task / self.n_rows;
        let t2 = t / self.n_ib;
        let n0 = t2 / s.groups * self.images;
        TaskAt { chunk: task % self.n_rows, ib_i: t % self.n_ib, g: t2 % s.groups, n0, n1: (n0 + self.images).min(s.n) }
    }
}

/// One task of a [`BwdDataPlan::with_span`] plan: dx pixels (a chunk of `row_chunk`) x a run
/// of input blocks x an image chunk of a group.
///
/// # Safety
/// As [`backward_data_task`], `plan.span`.
unsafe fn span_task(plan: &BwdDataPlan, a: &BwdDataArgs, task: usize, scratch: *mut f32) {
    let s = &plan.shape;
    let TaskAt { chunk: pix_i, ib_i, g, n0, n1 } = plan.task_at(task);
    let (p0, pixels) = (pix_i * plan.row_chunk, s.ih * s.iw);
    let p1 = (p0 + plan.row_chunk).min(pixels);
    let ohw = plan.oh * plan.ow;
    let gy = a.gy.wrapping_add(g * plan.ocb * ohw * 16);
    let mask = if plan.options.relu_mask { a.y.wrapping_add(g * plan.ocb * ohw * 16) } else { core::ptr::null() };
    // SAFETY: the group's blocks of images n0..n1 are inside gy (and y); the scratch holds
    // images x ocb x oh x ow x 16 floats.
    unsafe { conv_small::gather(gy, a.gy_bs, mask, a.y_bs, plan.ocb, ohw, n0..n1, plan.images, scratch) };
    let (taps_all, img16) = (s.kh * s.kw * 256, plan.images * 16);
    let [dh, dw] = s.dilation;
    // dx row iy reads gy row iy + ph - (KH - 1) dh + rh dh through rotated kernel row rh.
    let reach = |i: usize, p: usize, k: usize, d: usize| i as isize + p as isize - ((k - 1) * d) as isize;
    let ihw16 = pixels * 16;
    let tiles = &tile::tiles(plan.isa).a16;
    let rotated = |pix: usize| {
        let (top, left) = (reach(pix / s.iw, s.pad[0], s.kh, dh), reach(pix % s.iw, s.pad[1], s.kw, dw));
        let taps = (conv_small::axis_taps(top, s.kh, dh, plan.oh), conv_small::axis_taps(left, s.kw, dw, plan.ow));
        (top, left, taps)
    };
    // Unlike the forward pass, prefetching the next run's weights (conv_small::NextPair)
    // measured no faster here: ResNet-18's layer3 at batch 16, 1.48-1.66 ms with and
    // 1.49-1.57 without (shared machine, alternating runs).
    let ib0 = g * plan.icb + ib_i * plan.ib_chunk;
    for ib in (ib0..ib0 + plan.ib_chunk).step_by(plan.k) {
        for pix in p0..p1 {
            let (top, left, ([rh0, rh1], [rw0, rw1])) = rotated(pix);
            let r = Reduce {
                n: [plan.ocb, rh1 - rh0, rw1 - rw0],
                a: [(ohw * img16) as isize, (dh * plan.ow * img16) as isize, (dw * img16) as isize],
                b: [taps_all as isize, (s.kw * 256) as isize, 256],
                steps: 16,
                a_step: 1,
                b_step: 16,
                b_blk: (plan.ocb * taps_all) as isize,
            };
            // The first tap's gy pixel (any in-range one when the reduction is empty).
            let oy = (top + (rh0 * dh) as isize).clamp(0, plan.oh as isize - 1) as usize;
            let ox = (left + (rw0 * dw) as isize).clamp(0, plan.ow as isize - 1) as usize;
            let x = scratch.wrapping_add((oy * plan.ow + ox) * img16);
            let wp = a.w.wrapping_add(ib * plan.ocb * taps_all + (rh0 * s.kw + rw0) * 256);
            let c = a.dx.wrapping_add(n0 * a.dx_bs + ib * ihw16 + pix * 16);
            let out = Out::plain(c, a.dx_bs as isize, ihw16 as isize, plan.options.accumulate);
            // SAFETY: the reduction reads the gathered gy of the taps inside the map and the
            // rotated weights of those taps (used ones: the plan's hull holds them) for input
            // blocks ib .. ib + k; the tiles write pixel pix of those blocks in images n0..n1.
            unsafe { conv_small::image_tiles(tiles, plan.k, plan.nw, x, wp, &r, &out, n1 - n0, &|_, _| {}) };
        }
    }
}

/// Copies (and masks) the gy rows that dx rows `iy0..iy1` read; returns the first row.
///
/// # Safety
/// As [`backward_data_task`].
unsafe fn copy_band(
    plan: &BwdDataPlan,
    a: &BwdDataArgs,
    n: usize,
    g: usize,
    iy0: usize,
    iy1: usize,
    band: *mut f32,
) -> usize {
    let s = &plan.shape;
    let [sh, _] = s.stride;
    let (ph, dh) = (s.pad[0], s.dilation[0]);
    let reach = (s.kh - 1) * dh;
    let first = (iy0 + ph).saturating_sub(reach).div_ceil(sh);
    let last = ((iy1 - 1 + ph) / sh).min(plan.oh - 1);
    let ohw16 = plan.oh * plan.ow * 16;
    let pc = plan.pad_cols * 16;
    for ob in 0..plan.ocb {
        let blk = (g * plan.ocb + ob) * ohw16;
        for oy in first..last + 1 {
            let dst = band.wrapping_add(ob * plan.band_ocb + (oy - first) * plan.band_row);
            let src = a.gy.wrapping_add(n * a.gy_bs + blk + oy * plan.ow * 16);
            // SAFETY: the band row (2 pc + ow * 16 floats) is inside the scratch (gy_rows bounds
            // last - first + 1); the source row is inside gy (oy < oh), y likewise.
            unsafe {
                dst.write_bytes(0, pc);
                let body = dst.add(pc);
                if plan.options.relu_mask {
                    let y = a.y.wrapping_add(n * a.y_bs + blk + oy * plan.ow * 16);
                    for i in 0..plan.ow * 16 {
                        *body.add(i) = if *y.add(i) > 0.0 { *src.add(i) } else { 0.0 };
                    }
                } else {
                    core::ptr::copy_nonoverlapping(src, body, plan.ow * 16);
                }
                body.add(plan.ow * 16).write_bytes(0, pc);
            }
        }
    }
    first
}

/// Every phase's tiles of dx row `iy`, blocks `ib .. ib + k`.
///
/// # Safety
/// As [`backward_data_task`]; the band holds gy rows from `oy_first`.
#[allow(clippy::too_many_arguments)]
unsafe fn dx_row(
    plan: &BwdDataPlan,
    a: &BwdDataArgs,
    band: *const f32,
    oy_first: usize,
    n: usize,
    ib: usize,
    iy: usize,
) {
    let s = &plan.shape;
    let [sh, sw] = s.stride;
    let [ph, pw] = s.pad;
    let [dh, dw] = s.dilation;
    // Row taps of this row's phase, clipped to output rows inside gy.
    let th = taps(iy % sh, ph, s.kh, dh, sh);
    let (mut kh_first, mut count_h, mut oy_start) = (0, 0, 0);
    if let Some(f) = th.first {
        for t in 0..th.count {
            let kh = f - t * th.step;
            let num = (iy + ph) as isize - (kh * dh) as isize;
            let oy = num.div_euclid(sh as isize);
            if num >= 0 && (oy as usize) < plan.oh {
                if count_h == 0 {
                    kh_first = kh;
                    oy_start = oy as usize;
                }
                count_h += 1;
            }
        }
    }
    let rows = (oy_start.saturating_sub(oy_first), kh_first, count_h);
    for rx in 0..sw.min(s.iw) {
        let tw = taps(rx, pw, s.kw, dw, sw);
        let cols = (s.iw - rx).div_ceil(sw);
        let ntiles = cols.div_ceil(plan.nw);
        let mut qx = 0;
        for t in 0..ntiles {
            let w = cols / ntiles + usize::from(t < cols % ntiles);
            let ix = rx + sw * qx;
            // SAFETY: forwarded contract.
            unsafe { dx_tile(plan, a, band, rows, &th, &tw, n, ib, [iy, ix, w]) };
            qx += w;
        }
    }
}

/// One tile of dx: `w` columns of phase `ix % sw` from column `ix` in row `iy`, blocks
/// `ib .. ib + k`, reducing over the row taps `count_h` from `kh_first` (band row `band_y`)
/// and the column taps of `tw` that reach a gradient column inside the map for some column
/// of the tile (the others would read only the band's zero columns).
///
/// # Safety
/// As [`dx_row`].
#[allow(clippy::too_many_arguments)]
unsafe fn dx_tile(
    plan: &BwdDataPlan,
    a: &BwdDataArgs,
    band: *const f32,
    (band_y, kh_first, count_h): (usize, usize, usize),
    th: &Taps,
    tw: &Taps,
    n: usize,
    ib: usize,
    [iy, ix, w]: [usize; 3],
) {
    let s = &plan.shape;
    let sw = s.stride[1];
    let (pw, dw) = (s.pad[1], s.dilation[1]);
    let taps_w_all = s.kh * s.kw * 256;
    // The gy column the tile's first column reads through kernel column kw.
    let ox_of = |kw: usize| ((ix + pw) as isize - (kw * dw) as isize).div_euclid(sw as isize);
    // The tile's columns read gy columns ox0 .. ox0 + w of a tap; ox0 grows with t.
    let (mut kw_first, mut count_w) = (tw.first.unwrap_or(0), 0);
    if let Some(f) = tw.first {
        let reaches = |t: &usize| {
            let ox = ox_of(f - t * tw.step);
            ox + w as isize > 0 && ox < plan.ow as isize
        };
        if let (Some(lo), Some(hi)) = ((0..tw.count).find(reaches), (0..tw.count).rfind(reaches)) {
            kw_first = f - lo * tw.step;
            count_w = hi - lo + 1;
        }
    }
    let r = Reduce {
        n: [plan.ocb, count_h, count_w],
        a: [plan.band_ocb as isize, (th.out_step * plan.band_row) as isize, (tw.out_step * 16) as isize],
        b: [taps_w_all as isize, (th.step * s.kw * 256) as isize, (tw.step * 256) as isize],
        steps: 16,
        a_step: 1,
        b_step: 16,
        b_blk: (plan.ocb * taps_w_all) as isize,
    };
    // Rotated weights: kernel row kh sits at KH - 1 - kh.
    let (rh, rw) = (s.kh - 1 - kh_first, s.kw - 1 - kw_first);
    let wp = a.w.wrapping_add((ib * plan.ocb) * taps_w_all + (rh * s.kw + rw) * 256);
    // gy column of the first tap, shifted by the band's zero columns (never negative:
    // pad_cols covers the reach of the kernel).
    let col = (ox_of(kw_first) + plan.pad_cols as isize) as usize;
    let ap = band.wrapping_add(band_y * plan.band_row + col * 16);
    let ihw16 = (s.ih * s.iw * 16) as isize;
    let c = a.dx.wrapping_add(n * a.dx_bs + ib * (ihw16 as usize) + (iy * s.iw + ix) * 16);
    let out = Out::plain(c, (sw * 16) as isize, ihw16, plan.options.accumulate);
    // SAFETY: the reduction reads band rows from band_y (inside the band: the task's rows),
    // band columns within the zero padding (a subset of the unclipped taps' columns), weight
    // vectors of this group inside the plan's used taps; the tile writes w columns of this
    // phase in dx row iy.
    unsafe { tile::tiles(plan.isa).a16.get(plan.k, w)(ap, wp, &r, &out) };
}

/// One task of a one-pixel plan: dx pixel `task / units`, input blocks from `k (task % units)`
/// for every image, each tile `nw` images x `k` blocks reducing over the output blocks through
/// the pixel's one tap (none: an empty reduction writes zeros).
///
/// # Safety
/// As [`backward_data_task`], `plan.one_pixel`.
unsafe fn one_pixel_task(plan: &BwdDataPlan, a: &BwdDataArgs, task: usize, scratch: *mut f32) {
    let s = &plan.shape;
    let units = plan.icb / plan.k;
    let (pixel, ib) = (task / units, task % units * plan.k);
    let (iy, ix) = (pixel / s.iw, pixel % s.iw);
    // The gy of every image, re-blocked as [ob][n][16] (masked by the ReLU when asked).
    for n in 0..s.n {
        for ob in 0..plan.ocb {
            let (src, dst) = (a.gy.wrapping_add(n * a.gy_bs + ob * 16), scratch.wrapping_add((ob * s.n + n) * 16));
            let y = a.y.wrapping_add(n * a.y_bs + ob * 16);
            for l in 0..16 {
                // SAFETY: vector ob of image n's one pixel is inside gy (and y when masking);
                // the scratch holds ocb x n x 16 floats.
                unsafe { *dst.add(l) = if !plan.options.relu_mask || *y.add(l) > 0.0 { *src.add(l) } else { 0.0 } };
            }
        }
    }
    // Forward: iy = 0 * sh - ph + kh dh; a pixel reached by no kernel row or column gets none.
    let tap = |i: usize, p: usize, d: usize, k: usize| {
        let num = i + p;
        (num.is_multiple_of(d) && num / d < k).then_some(num / d)
    };
    let kernel = tap(iy, s.pad[0], s.dilation[0], s.kh).zip(tap(ix, s.pad[1], s.dilation[1], s.kw));
    let taps_all = s.kh * s.kw * 256;
    // Rotated weights: tap (kh, kw) sits at (KH - 1 - kh, KW - 1 - kw).
    let rotated = kernel.map_or(0, |(kh, kw)| (s.kh - 1 - kh) * s.kw + (s.kw - 1 - kw));
    let r = Reduce {
        n: [if kernel.is_some() { plan.ocb } else { 0 }, 1, 1],
        a: [(s.n * 16) as isize, 0, 0],
        b: [taps_all as isize, 0, 0],
        steps: 16,
        a_step: 1,
        b_step: 16,
        b_blk: (plan.ocb * taps_all) as isize,
    };
    let wp = a.w.wrapping_add(ib * plan.ocb * taps_all + rotated * 256);
    let ihw16 = s.ih * s.iw * 16;
    let ntiles = s.n.div_ceil(plan.nw);
    let mut n0 = 0;
    for t in 0..ntiles {
        let w = s.n / ntiles + usize::from(t < s.n % ntiles);
        let c = a.dx.wrapping_add(n0 * a.dx_bs + ib * ihw16 + pixel * 16);
        let out = Out::plain(c, a.dx_bs as isize, ihw16 as isize, plan.options.accumulate);
        // SAFETY: the reduction reads the scratch's images n0 .. n0 + w of every output block
        // and weight vectors of the pixel's tap (a used tap: the plan's hull holds it) for
        // input blocks ib .. ib + k; the tile writes that pixel of those blocks in w images.
        unsafe { tile::tiles(plan.isa).a16.get(plan.k, w)(scratch.wrapping_add(n0 * 16), wp, &r, &out) };
        n0 += w;
    }
}
