//! Running a forward-convolution plan: the checked safe entry [`forward`], and the raw
//! [`forward_task`] with the band copy, the output rows and their tiles (see `conv.rs` for the
//! plan and the halo strategy).

use super::conv::{Band, ConvArgs, ConvIo, ConvPlan, blocked_args, packed_weight_len};
use super::error::{KernelError, check_min_len};
use super::par::{Parallel, SyncPtr};
use super::tile::{self, Out, Reduce};

/// Runs a forward convolution on `par`'s threads after checking every operand against the
/// plan: views inside `arena` with the plan's dimensions and layout, the output apart from the
/// input (the residual may be the output itself, or apart from it), slice lengths, scratch of
/// [`ConvPlan::scratch_len`]`(par.threads())` floats.
pub fn forward(
    par: &dyn Parallel,
    plan: &ConvPlan,
    arena: &mut [f32],
    io: &ConvIo<'_>,
    scratch: &mut [f32],
) -> Result<(), KernelError> {
    let weights = packed_weight_len(&plan.shape)?;
    let args = blocked_args(&plan.shape, [plan.oh, plan.ow], &plan.epilogue, arena, io, weights)?;
    check_min_len("scratch", scratch.len(), plan.scratch_len(par.threads()))?;
    let scratch = SyncPtr(scratch.as_mut_ptr());
    let per = plan.scratch;
    par.run(plan.tasks, &|task, thread| {
        // SAFETY: every view and slice was checked against the plan above; the output is
        // apart from the input and weights (a separate slice); each task writes its own output
        // tiles and uses the scratch of its thread, which no other running task uses
        // (Parallel's contract), and the scratch holds per floats for every thread.
        unsafe { forward_task(plan, &args, task, scratch.get().wrapping_add(thread * per)) }
    });
    Ok(())
}

/// Per-block copies of the epilogue vectors of blocks `o0 / 16 ..` (zero-padded past `oc`).
struct EpiVectors {
    bias: [f32; 64],
    scale: [f32; 64],
    shift: [f32; 64],
}

impl EpiVectors {
    /// # Safety
    /// Non-null pointers must be valid for `oc` floats.
    unsafe fn load(a: &ConvArgs, o0: usize, k: usize, oc: usize) -> EpiVectors {
        let mut e = EpiVectors { bias: [0.0; 64], scale: [0.0; 64], shift: [0.0; 64] };
        for i in 0..(16 * k).min(oc.saturating_sub(o0)) {
            // SAFETY: o0 + i < oc and the pointers hold oc floats (caller).
            unsafe {
                if !a.bias.is_null() {
                    e.bias[i] = *a.bias.add(o0 + i);
                }
                if !a.scale.is_null() {
                    e.scale[i] = *a.scale.add(o0 + i);
                    e.shift[i] = *a.shift.add(o0 + i);
                }
            }
        }
        e
    }
}

/// Runs task `task` of `plan`.
///
/// # Safety
/// `plan` must come from [`ConvPlan::new`] with an instruction set the CPU supports; `a` must
/// hold valid pointers for `plan.shape` (input `n` images of `pad16(ic) x ih x iw` floats at
/// `x + i * x_bs`, packed weights of [`packed_weight_len`] floats, per-channel vectors of `oc`
/// floats where the epilogue has them, output and residual images of `pad16(oc) x oh x ow`
/// floats), the output must not overlap the input or the weights (the residual may be the
/// output itself), no other task of the same run may be writing what this one reads, and
/// `scratch` must be valid for `plan.scratch` floats used by no other running task.
pub unsafe fn forward_task(plan: &ConvPlan, a: &ConvArgs, task: usize, scratch: *mut f32) {
    let s = &plan.shape;
    let [col_i, row_i, oc_i, g, n] = plan.task_place(task);
    let oy0 = row_i * plan.row_chunk;
    let oy1 = (oy0 + plan.row_chunk).min(plan.rows);
    let c0 = col_i * plan.col_chunk;
    let c1 = (c0 + plan.col_chunk).min(plan.cols);
    let (x, row0) = match plan.band {
        // SAFETY: the image and group offsets stay inside the input (caller's contract).
        Band::Direct => (a.x.wrapping_add(n * a.x_bs + g * plan.icb * s.ih * s.iw * 16), 0),
        // SAFETY: the band fits plan.scratch floats; the rows copied are inside the input.
        Band::Padded | Band::Taps => unsafe { copy_band(plan, a, n, g, oy0, oy1, scratch) },
        // SAFETY: forwarded contract (tiles over images, `conv_small.rs`).
        Band::Span => return unsafe { super::conv_small::forward_task(plan, a, task, scratch) },
    };
    let ob0 = g * plan.ocb + oc_i * plan.oc_chunk;
    // The group's last task may hold a last block alone (an odd count with two a tile).
    let at = TaskAt { x, row0, n, ob_end: (ob0 + plan.oc_chunk).min((g + 1) * plan.ocb) };
    let pairs = (ob0..at.ob_end).step_by(plan.k);
    if plan.blocks_outer {
        for ob in pairs {
            // SAFETY: forwarded contract; the rows and pixels are the task's.
            unsafe { pair_pass(plan, a, &at, ob, oy0..oy1, [c0, c1], plan.chunk, plan.prefetch, None) };
        }
    } else {
        for oy in oy0..oy1 {
            for b0 in (c0..c1).step_by(plan.col_block) {
                let b1 = (b0 + plan.col_block).min(c1);
                // The first visit of the pairs streams the task's weights from memory, each
                // pair prefetching the next; later rows (or row blocks) find them in the caches
                // (prefetching them again measured slower). The reduction stays whole: cut
                // into chunks on the first visit, ResNet-50's 1x1 layers of layer3 and 4 ran
                // no faster with cold weights.
                let first = oy == oy0 && b0 == c0;
                // Direct input read as one flat row (1x1, stride 1): the next row block's
                // input, residual and output are fetched while this one runs, unless the
                // weights are being fetched.
                let next = (b1, (b1 + plan.col_block).min(c1));
                let flat = s.kh == 1 && s.kw == 1 && s.stride == [1, 1] && s.pad == [0, 0];
                let fetch_next = flat && next.0 < next.1 && !(first && plan.prefetch);
                let npairs = (at.ob_end - ob0).div_ceil(plan.k);
                for (pi, ob) in pairs.clone().enumerate() {
                    let fetch = fetch_next.then(|| RowFetch::next_block(plan, a, &at, ob, pi, npairs, next));
                    // SAFETY: as above; b0..b1 is inside c0..c1.
                    unsafe {
                        let pf = first && plan.prefetch;
                        pair_pass(plan, a, &at, ob, oy..oy + 1, [b0, b1], plan.icb, pf, fetch.as_ref())
                    };
                }
            }
        }
    }
}

/// What a task's passes share: the band (or input image) whose first row is input row `row0`,
/// the image, and the end of the task's output-channel blocks.
struct TaskAt {
    x: *const f32,
    row0: usize,
    n: usize,
    ob_end: usize,
}

impl TaskAt {
    /// Blocks of the tiles starting at block `ob`: the plan's `k`, or fewer at the end of an
    /// odd count (one, with two a tile: the tile sets hold every width of one-block tiles
    /// that they hold of two-block ones).
    fn blocks(&self, plan: &ConvPlan, ob: usize) -> usize {
        let kk = plan.k.min(self.ob_end - ob);
        debug_assert!(kk == plan.k || kk == 1, "a tail of {kk} blocks with {} a tile", plan.k);
        kk
    }
}

/// One set of lines to prefetch: `streams` runs of `lines` 64-byte lines from `x`, `stride`
/// floats apart.
#[derive(Clone, Copy)]
struct Fetch {
    x: *const f32,
    stride: usize,
    streams: usize,
    lines: usize,
}

/// What a flat 1x1 row block's tiles prefetch for the block after theirs (at most three sets:
/// this pair's share of the input, its residual and its output), the tiles dealt out to the
/// sets in proportion to their lines, each tile taking a range of lines of every stream of its
/// set. At batch 8 ResNet-50's 1x1 layers read and write maps larger than the caches; without
/// these hints they ran at 43-61 % of the peak in the model.
struct RowFetch {
    sets: [Fetch; 3],
    count: usize,
}

impl RowFetch {
    /// The next row block `next` (pixels) of pair `pi` of `npairs` (blocks `ob ..`).
    fn next_block(
        plan: &ConvPlan,
        a: &ConvArgs,
        at: &TaskAt,
        ob: usize,
        pi: usize,
        npairs: usize,
        next: (usize, usize),
    ) -> RowFetch {
        let s = &plan.shape;
        let lines = next.1 - next.0;
        let plane_out = plan.oh * plan.ow * 16;
        // The pair's share of the input's channel blocks.
        let (i0, i1) = (pi * plan.icb / npairs, (pi + 1) * plan.icb / npairs);
        let input = Fetch {
            x: at.x.wrapping_add(i0 * s.ih * s.iw * 16 + next.0 * 16),
            stride: s.ih * s.iw * 16,
            streams: i1 - i0,
            lines,
        };
        let blocks = |base: *const f32, bs: usize| Fetch {
            x: base.wrapping_add(at.n * bs + ob * plane_out + next.0 * 16),
            stride: plane_out,
            streams: at.blocks(plan, ob),
            lines,
        };
        let output = blocks(a.y as *const f32, a.y_bs);
        match plan.epilogue.residual {
            true => RowFetch { sets: [input, blocks(a.res, a.res_bs), output], count: 3 },
            false => RowFetch { sets: [input, output, output], count: 2 },
        }
    }

    /// The prefetch of tile `t` of `ntiles` into `out`.
    fn deal(&self, t: usize, ntiles: usize, out: &mut Out) {
        out.pf_lines = 0;
        let total: usize = self.sets[..self.count].iter().map(|f| f.streams * f.lines).sum();
        let mut first = 0;
        for f in &self.sets[..self.count] {
            let share = (ntiles * f.streams * f.lines).div_ceil(total.max(1)).max(1);
            if t < first + share {
                let per = f.lines.div_ceil(share);
                let l0 = (t - first) * per;
                if l0 < f.lines && f.streams > 0 {
                    out.pf = f.x.wrapping_add(l0 * 16);
                    out.pf_lines = per.min(f.lines - l0);
                    out.pf_copies = f.streams;
                    out.pf_blk = f.stride as isize;
                }
                return;
            }
            first += share;
        }
    }
}

/// Blocks `ob .. ob + k` on output rows `rows`, pixels `cols`, with the reduction in chunks of
/// `chunk` input blocks, each run on all the rows before the next: the first chunk stores its
/// sums, the others add to them, the last with the epilogue. With `prefetch`, the weights of
/// the next chunk (of this pair, or the first of the task's next pair) are fetched meanwhile, a
/// share per row, the same lines of each of the pair's blocks.
///
/// # Safety
/// As [`forward_task`]; `at`, the rows and the pixels are the task's; `chunk` is in
/// `1..=plan.icb`, and below `plan.icb` only without a residual (whose memory may be the
/// output's, which the chunks accumulate in).
#[allow(clippy::too_many_arguments)]
unsafe fn pair_pass(
    plan: &ConvPlan,
    a: &ConvArgs,
    at: &TaskAt,
    ob: usize,
    rows: core::ops::Range<usize>,
    cols: [usize; 2],
    chunk: usize,
    prefetch: bool,
    fetch: Option<&RowFetch>,
) {
    let (s, kk) = (&plan.shape, at.blocks(plan, ob));
    let tap_floats = s.kh * s.kw * 256;
    let w_ocb = plan.icb * tap_floats;
    let block_w = |ob: usize| a.w.wrapping_add(ob * w_ocb);
    let chunk_of = |c: usize| c * chunk..((c + 1) * chunk).min(plan.icb);
    let chunks = plan.icb.div_ceil(chunk);
    // Groups hold whole blocks, so block ob's first channel is ob * 16.
    // SAFETY: the vectors hold oc floats (caller).
    let e = unsafe { EpiVectors::load(a, ob * 16, kk, s.oc) };
    let full = block_out(plan, a, at.n, ob, &e);
    for c in 0..chunks {
        let mut out = if c + 1 == chunks { full } else { Out::plain(full.c, full.c_col, full.c_blk, false) };
        out.accumulate = c > 0;
        let next = if c + 1 < chunks { Some((ob, c + 1)) } else { (ob + kk < at.ob_end).then_some((ob + kk, 0)) };
        let (pf, lines, copies) = match next {
            Some((nb, nc)) if prefetch => {
                let icbs = chunk_of(nc);
                (block_w(nb).wrapping_add(icbs.start * tap_floats), icbs.len() * tap_floats / 16, at.blocks(plan, nb))
            }
            _ => (core::ptr::null(), 0, 1),
        };
        let share = lines.div_ceil(rows.len());
        out.pf_copies = copies;
        out.pf_blk = w_ocb as isize;
        for (i, oy) in rows.clone().enumerate() {
            out.pf = pf.wrapping_add(i * share * 16);
            out.pf_lines = share.min(lines - (i * share).min(lines));
            // SAFETY: forwarded contract; the row's tiles lie inside the output, and the
            // chunk's input blocks are the plan's.
            unsafe { row(plan, a, &out, at, block_w(ob), ob, oy, cols, chunk_of(c), fetch) };
        }
    }
}

/// The output of blocks `ob .. ob + k` of image `n`, with the epilogue reading `e` (which
/// must outlive the tiles using the result).
fn block_out(plan: &ConvPlan, a: &ConvArgs, n: usize, ob: usize, e: &EpiVectors) -> Out {
    let pix0 = n * a.y_bs + ob * plan.oh * plan.ow * 16;
    let mut out = Out::plain(a.y.wrapping_add(pix0), 16, (plan.oh * plan.ow * 16) as isize, false);
    out.act = plan.epilogue.act;
    if plan.epilogue.bias {
        out.bias = e.bias.as_ptr();
    }
    if plan.epilogue.scale_shift {
        out.scale = e.scale.as_ptr();
        out.shift = e.shift.as_ptr();
    }
    out
}

/// The tiles of output row `oy`, pixels `c0..c1`, blocks `ob .. ob + k` (fewer at the end of
/// the task's blocks), reducing over input blocks `icbs` (of the group).
///
/// # Safety
/// As [`forward_task`]; `at` is the task's; `icbs` lies inside `0..plan.icb`.
#[allow(clippy::too_many_arguments)]
unsafe fn row(
    plan: &ConvPlan,
    a: &ConvArgs,
    base: &Out,
    at: &TaskAt,
    wb: *const f32,
    ob: usize,
    oy: usize,
    [c0, c1]: [usize; 2],
    icbs: core::ops::Range<usize>,
    fetch: Option<&RowFetch>,
) {
    let s = &plan.shape;
    let (x, row0, n, kk) = (at.x, at.row0, at.n, at.blocks(plan, ob));
    let sh = s.stride[0];
    let dh = s.dilation[0];
    // Kernel rows whose input row is inside the image.
    let top = (oy * sh) as isize - s.pad[0] as isize;
    let kh_lo = if top >= 0 { 0 } else { ((-top) as usize).div_ceil(dh) };
    let kh_hi = s.kh.min(((s.ih as isize - top + dh as isize - 1) / dh as isize).max(0) as usize);
    let pix_row = oy * plan.cols;
    let r = Reduce {
        n: [icbs.len(), kh_hi.saturating_sub(kh_lo), s.kw],
        a: [plan.band_icb as isize, (dh * plan.band_row) as isize, plan.tap_stride as isize],
        b: [(s.kh * s.kw * 256) as isize, (s.kw * 256) as isize, 256],
        steps: 16,
        a_step: 1,
        b_step: 16,
        b_blk: (plan.icb * s.kh * s.kw * 256) as isize,
    };
    let in_row = ((top + (kh_lo * dh) as isize).max(0) as usize - row0) / plan.band_row_step;
    // The chunk's first input block, in the band (or input) and in the weights.
    let x = x.wrapping_add(icbs.start * plan.band_icb);
    let wb = wb.wrapping_add(icbs.start * s.kh * s.kw * 256);
    let tiles = &tile::tiles(plan.isa).a16;
    let ntiles = (c1 - c0).div_ceil(plan.nw);
    // The row's prefetches, a share per tile.
    let pf_share = base.pf_lines.div_ceil(ntiles);
    let mut ox = c0;
    for t in 0..ntiles {
        // Balanced widths: the first (c1 - c0) % ntiles tiles are one column wider.
        let w = (c1 - c0) / ntiles + usize::from(t < (c1 - c0) % ntiles);
        // Every band mode puts output column ox's first tap at column ox (stride 1 or Taps).
        let ap = x.wrapping_add(in_row * plan.band_row + ox * 16);
        let mut out = *base;
        match fetch {
            Some(f) if base.pf_lines == 0 => f.deal(t, ntiles, &mut out),
            _ => {
                out.pf = base.pf.wrapping_add(t * pf_share * 16);
                out.pf_lines = pf_share.min(base.pf_lines - (t * pf_share).min(base.pf_lines));
            }
        }
        let pix = (pix_row + ox) * 16;
        out.c = base.c.wrapping_add(pix);
        if plan.epilogue.residual {
            out.res = a.res.wrapping_add(n * a.res_bs + ob * plan.oh * plan.ow * 16 + pix);
            out.res_col = 16;
            out.res_blk = base.c_blk;
        }
        // SAFETY: the reduction visits band (or input) floats and weight vectors inside their
        // buffers, the tile's output and residual vectors lie in the output row (caller).
        unsafe { tiles.get(kk, w)(ap, wb.wrapping_add(kh_lo * s.kw * 256), &r, &out) };
        ox += w;
    }
}

/// Copies the input rows that output rows `oy0..oy1` read into the band at `band`; returns the
/// band and its first input row.
///
/// # Safety
/// As [`forward_task`].
unsafe fn copy_band(
    plan: &ConvPlan,
    a: &ConvArgs,
    n: usize,
    g: usize,
    oy0: usize,
    oy1: usize,
    band: *mut f32,
) -> (*const f32, usize) {
    let s = &plan.shape;
    let [sh, sw] = s.stride;
    let [ph, pw] = s.pad;
    let first = (oy0 * sh).saturating_sub(ph);
    let last = ((oy1 - 1) * sh + (s.kh - 1) * s.dilation[0]).saturating_sub(ph).min(s.ih - 1);
    let x = a.x.wrapping_add(n * a.x_bs + g * plan.icb * s.ih * s.iw * 16);
    let step = plan.band_row_step;
    for icb in 0..plan.icb {
        for iy in (first..=last).step_by(step) {
            let src = x.wrapping_add((icb * s.ih + iy) * s.iw * 16);
            let dst = band.wrapping_add(icb * plan.band_icb + (iy - first) / step * plan.band_row);
            // SAFETY: iy < ih, so the source row is inside the input image; the destination
            // row is inside the band (rows_for bounds (last - first) / step + 1 by band_rows).
            unsafe {
                match plan.band {
                    Band::Padded => {
                        dst.write_bytes(0, pw * 16);
                        core::ptr::copy_nonoverlapping(src, dst.add(pw * 16), s.iw * 16);
                        dst.add((pw + s.iw) * 16).write_bytes(0, pw * 16);
                    }
                    Band::Taps => {
                        for kx in 0..s.kw {
                            for ox in 0..plan.ow {
                                let d = dst.add((kx * plan.ow + ox) * 16);
                                let ix = (ox * sw + kx * s.dilation[1]) as isize - pw as isize;
                                if ix >= 0 && (ix as usize) < s.iw {
                                    core::ptr::copy_nonoverlapping(src.add(ix as usize * 16), d, 16);
                                } else {
                                    d.write_bytes(0, 16);
                                }
                            }
                        }
                    }
                    Band::Direct | Band::Span => {}
                }
            }
        }
    }
    (band, first)
}
