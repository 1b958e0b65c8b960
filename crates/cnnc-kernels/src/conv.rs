//! Direct convolution forward on blocked maps: `nChw16c` in, `nChw16c` out, weights
//! `OIhw16i16o` (one group) or `gOIhw16i16o` (groups of whole blocks), with the fused
//! epilogue (bias, unfolded batch-norm scale and shift, residual, activation).
//!
//! A [`ConvPlan`] is made once per layer (all checks, the tile shape and the split into tasks);
//! `conv_fwd.rs` runs it (`forward`, or `forward_task` for one task). A task is a range of
//! output rows (or, for 1x1 stride-1 convolutions whose pixels are one flat row, a range of
//! pixels) x a range of output-channel blocks of one image and group. Each output tile is one
//! call of the batch-reduce microkernel (`tile.rs`) over input blocks x kernel rows x kernel
//! columns.
//!
//! The halo: rows outside the input are skipped by clipping the kernel-row loop per output
//! row. Columns are made branch-free by a per-task copy of the input rows the task reads (its
//! "band", in per-thread scratch): with stride 1 each row is copied between zero columns
//! (`Padded`); with a column stride the band holds, for each kernel column, the input pixels
//! that output columns read through it, compacted (`Taps`), so that a tile's columns are
//! always 16 floats apart (1x1 convolutions with a row stride and no padding, ResNet's
//! downsamples, copy only the rows they read). Layers with neither padding nor column stride read the input
//! directly. The copy costs about 1 % of a task's time and brings its input into cache.

use super::act::Act;
use super::error::{KernelError, check_len, product};
use super::simd::{Cpu, Isa};
use super::tile;
use super::view::{Layout, View, check_apart, check_same_or_apart, pad16};

/// The shape of a convolution (cross-correlation, as PyTorch): input `n x ic x ih x iw`,
/// `oc` filters of `ic / groups x kh x kw`, zero padding `pad` on both sides of each axis.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(C)]
pub struct ConvShape {
    pub n: usize,
    pub ic: usize,
    pub ih: usize,
    pub iw: usize,
    pub oc: usize,
    pub kh: usize,
    pub kw: usize,
    pub stride: [usize; 2],
    pub pad: [usize; 2],
    pub dilation: [usize; 2],
    pub groups: usize,
}

impl ConvShape {
    /// A convolution with square kernel, stride and padding, no dilation, one group.
    pub fn simple(n: usize, ic: usize, hw: [usize; 2], oc: usize, k: usize, stride: usize, pad: usize) -> ConvShape {
        ConvShape {
            n,
            ic,
            ih: hw[0],
            iw: hw[1],
            oc,
            kh: k,
            kw: k,
            stride: [stride; 2],
            pad: [pad; 2],
            dilation: [1; 2],
            groups: 1,
        }
    }

    /// The output height and width, or an error when the shape is not a valid convolution.
    pub fn out_hw(&self) -> Result<[usize; 2], KernelError> {
        let dims = [self.n, self.ic, self.ih, self.iw, self.oc, self.kh, self.kw, self.groups];
        if dims.contains(&0) || self.stride.contains(&0) || self.dilation.contains(&0) {
            return Err(KernelError::Shape { what: "a convolution size, stride or dilation is zero" });
        }
        if !self.ic.is_multiple_of(self.groups) || !self.oc.is_multiple_of(self.groups) {
            return Err(KernelError::Shape { what: "channels are not a multiple of the groups" });
        }
        let axis = |size: usize, k: usize, s: usize, p: usize, d: usize| -> Result<usize, KernelError> {
            let over = KernelError::Overflow { what: "convolution geometry" };
            let padded = p.checked_mul(2).and_then(|p2| size.checked_add(p2)).ok_or(over)?;
            let extent = (k - 1).checked_mul(d).and_then(|e| e.checked_add(1)).ok_or(over)?;
            if extent > padded {
                return Err(KernelError::Shape { what: "the kernel is larger than the padded input" });
            }
            Ok((padded - extent) / s + 1)
        };
        let oh = axis(self.ih, self.kh, self.stride[0], self.pad[0], self.dilation[0])?;
        let ow = axis(self.iw, self.kw, self.stride[1], self.pad[1], self.dilation[1])?;
        Ok([oh, ow])
    }

    /// Multiply-accumulates of the whole batch.
    pub fn macs(&self) -> f64 {
        let [oh, ow] = self.out_hw().unwrap_or([0, 0]);
        (self.n * self.oc * oh * ow) as f64 * (self.ic / self.groups.max(1) * self.kh * self.kw) as f64
    }
}

/// Output positions `lo..hi` along one axis (of `out`) whose input position `o s - p + off`
/// (tap offset `off`, the tap's index times the dilation) is inside `0..size`: the rectangle
/// backward-weights reduces over for a tap, and what a count of the products that touch the
/// image (not the padding) adds up.
pub fn in_image_outputs(out: usize, size: usize, s: usize, p: usize, off: usize) -> (usize, usize) {
    let lo = p.saturating_sub(off).div_ceil(s);
    let hi = if size + p > off { ((size + p - off - 1) / s + 1).min(out) } else { 0 };
    (lo.min(hi), hi)
}

/// What a convolution or matrix product does to its result before storing it, in this order:
/// `+ bias[o]`, `* scale[o] + shift[o]`, `+ residual` (a tensor of the output's shape and
/// layout, possibly the output's own memory), then the activation.
#[derive(Clone, Copy, Debug, PartialEq)]
#[repr(C)]
pub struct Epilogue {
    pub bias: bool,
    pub scale_shift: bool,
    pub residual: bool,
    pub act: Act,
}

impl Epilogue {
    pub const NONE: Epilogue = Epilogue { bias: false, scale_shift: false, residual: false, act: Act::NONE };
}

/// How a task's tiles read the input (see the module comment).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum Band {
    /// Straight from the input tensor.
    Direct = 0,
    /// A copy of the task's input rows between `pad` zero columns.
    Padded = 1,
    /// A copy per kernel column of the pixels each output column reads through it.
    Taps = 2,
    /// Small maps at batch > 1: the task's images gathered as `[icb][ih][iw][image][16]`,
    /// tiles of one pixel of several images (`conv_small.rs`).
    Span = 3,
}

/// A checked forward convolution on blocked maps and how it is split into tasks. Made by
/// [`ConvPlan::new`] only (the fields are private): the raw entry points trust every field.
#[derive(Clone, Copy, Debug, PartialEq)]
#[repr(C)]
pub struct ConvPlan {
    pub(crate) shape: ConvShape,
    pub(crate) epilogue: Epilogue,
    pub(crate) isa: Isa,
    pub(crate) oh: usize,
    pub(crate) ow: usize,
    /// Input and output channel blocks per group.
    pub(crate) icb: usize,
    pub(crate) ocb: usize,
    pub(crate) band: Band,
    /// The tiled output: `rows x cols` pixels (`1 x oh*ow` when flattened).
    pub(crate) rows: usize,
    pub(crate) cols: usize,
    /// Blocks per tile and the widest tile. With two blocks a tile and an odd block count,
    /// each group's last block is tiled alone (`choose_tile_with_tail`).
    pub(crate) k: usize,
    pub(crate) nw: usize,
    /// Task sizes (rows, pixels, blocks) and counts.
    pub(crate) row_chunk: usize,
    pub(crate) col_chunk: usize,
    pub(crate) oc_chunk: usize,
    pub(crate) n_rows: usize,
    pub(crate) n_cols: usize,
    pub(crate) n_oc: usize,
    pub(crate) tasks: usize,
    /// Band geometry (floats): rows it can hold, its strides, the A distance between taps.
    pub(crate) band_rows: usize,
    /// Input rows between consecutive band rows: the row stride for 1x1 convolutions with
    /// a row stride and no padding, whose rows between nothing reads (not copied); else 1.
    pub(crate) band_row_step: usize,
    pub(crate) band_row: usize,
    pub(crate) band_icb: usize,
    pub(crate) tap_stride: usize,
    /// Scratch floats each thread needs.
    pub(crate) scratch: usize,
    /// Loop order of a task: output-channel blocks outside its rows (see `set_band`).
    pub(crate) blocks_outer: bool,
    /// Pixels of a row whose tiles all block pairs run before the next such block (a
    /// multiple of `nw`; see `set_band`).
    pub(crate) col_block: usize,
    /// Whether tiles prefetch the weights of the block pair a task visits next (see
    /// `set_band`).
    pub(crate) prefetch: bool,
    /// Input blocks per chunk of a block pair's reduction when the blocks are outside the
    /// rows: each chunk runs on all the task's rows (accumulating in the output) before the
    /// next, whose weights stream in meanwhile (see `set_band`); `icb` when uncut.
    pub(crate) chunk: usize,
    /// [`Band::Span`] only: images per task and image chunks (else `shape.n` and 1).
    pub(crate) images: usize,
    pub(crate) n_images: usize,
}

/// Bytes of a task's weights above which its blocks are visited outside its rows (a quarter
/// of the 1 MiB L2 of the x86 machines measured), provided one block pair's weights stay
/// under it too, so that they are re-read from L2 for every row.
const L2_WEIGHTS: usize = 256 << 10;

/// The most that one block pair's weights and the band may take together for a task to
/// sweep the band once per pair: the 1 MiB L2 of those machines and half as much again, which
/// L3 (filled by what L2 evicts) returns fast enough (ResNet-50's layer4 3x3/2, 1.19 MB, ran
/// faster that way with cold weights; VGG's 128-channel 3x3 would sweep a 3.4 MB band).
const L2_BAND: usize = 3 << 19;

/// Bytes of input a block of a row's pixels reads, which every block pair then re-reads
/// from L2 (a quarter of it).
const L2_COLUMNS: usize = 256 << 10;

/// Bytes of one block pair's weights per chunk of its reduction when a task visits its blocks
/// outside its rows: the first chunk of a task is read from memory before any work overlaps
/// it, the others stream in while the chunk before them runs.
const CHUNK_WEIGHTS: usize = 64 << 10;

/// Bytes of one block pair's weights above which its reduction is cut into chunks: half the
/// 1 MiB L2. Pairs of 295 KB (ResNet-50's layer3 3x3) ran no faster cut with cold weights and
/// 3-4 % slower with warm ones (each chunk a tile call and a store of partial sums).
const CHUNKED_PAIRS: usize = 512 << 10;

/// Floats of gathered input a [`Band::Span`] task may hold (1 MiB, the L2 of the x86
/// machines measured): more images are cut into chunks.
pub const SPAN_FLOATS: usize = 1 << 18;

/// How much more efficient (by [`tile::TileSet::efficiency`]) tiles over images must be than
/// tiles over one image's row for a plan to gather the images ([`Band::Span`]; the
/// backward-data plan's the same).
pub const SPAN_GAIN: f64 = 1.1;

/// The operands of one convolution run, as raw pointers (the C-ABI form; null when absent).
/// Batch strides are in floats.
#[derive(Clone, Copy, Debug)]
#[repr(C)]
pub struct ConvArgs {
    pub x: *const f32,
    pub x_bs: usize,
    pub w: *const f32,
    pub bias: *const f32,
    pub scale: *const f32,
    pub shift: *const f32,
    pub res: *const f32,
    pub res_bs: usize,
    pub y: *mut f32,
    pub y_bs: usize,
}

// SAFETY: ConvArgs is plain pointers; the tasks sharing one only read its inputs and write
// disjoint parts of its output (forward_task's contract).
unsafe impl Sync for ConvArgs {}
// SAFETY: as above.
unsafe impl Send for ConvArgs {}

/// The operands of a forward convolution in a workspace arena: input, output and optional
/// residual views (blocked maps), packed weights ([`packed_weight_len`] floats) and the
/// per-channel vectors of the epilogue (`oc` floats each).
#[derive(Clone, Copy, Debug)]
pub struct ConvIo<'a> {
    pub x: View,
    pub y: View,
    pub residual: Option<View>,
    pub weights: &'a [f32],
    pub bias: Option<&'a [f32]>,
    pub scale: Option<&'a [f32]>,
    pub shift: Option<&'a [f32]>,
}

/// The raw operands of a forward convolution on blocked maps (`conv_fwd`, `depthwise`,
/// `winograd`), after checking every one against `shape` (its output `out_hw`) and the
/// epilogue: views inside `arena` with the shape's dimensions in `nChw16c`, the output apart
/// from the input (the residual may be the output itself, or apart from it), `weights` floats
/// of weights, `oc`-float epilogue vectors exactly where the epilogue has them.
pub fn blocked_args(
    shape: &ConvShape,
    out_hw: [usize; 2],
    epilogue: &Epilogue,
    arena: &mut [f32],
    io: &ConvIo<'_>,
    weights: usize,
) -> Result<ConvArgs, KernelError> {
    let s = shape;
    let [oh, ow] = out_hw;
    let len = arena.len();
    io.x.check_in("input", len)?;
    io.y.check_in("output", len)?;
    io.x.expect("input", [s.n, s.ic, s.ih, s.iw], Layout::NChw16c)?;
    io.y.expect("output", [s.n, s.oc, oh, ow], Layout::NChw16c)?;
    check_apart(("output", &io.y), &[("input", &io.x)])?;
    check_len("weights", io.weights.len(), weights)?;
    let vector = |what: &'static str, v: Option<&[f32]>, wanted: bool| -> Result<*const f32, KernelError> {
        match (v, wanted) {
            (Some(v), true) => check_len(what, v.len(), s.oc).map(|_| v.as_ptr()),
            (None, false) => Ok(core::ptr::null()),
            _ => Err(KernelError::View { what }),
        }
    };
    let e = epilogue;
    let (bias, scale, shift) = (
        vector("bias", io.bias, e.bias)?,
        vector("scale", io.scale, e.scale_shift)?,
        vector("shift", io.shift, e.scale_shift)?,
    );
    let res = match (io.residual, e.residual) {
        (Some(r), true) => {
            r.check_in("residual", len)?;
            r.expect("residual", [s.n, s.oc, oh, ow], Layout::NChw16c)?;
            check_same_or_apart(("residual", &r), ("output", &io.y))?;
            Some(r)
        }
        (None, false) => None,
        _ => return Err(KernelError::View { what: "residual" }),
    };
    let base = arena.as_mut_ptr();
    Ok(ConvArgs {
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
    })
}

/// Floats of packed weights the plan reads: `groups x ocb x icb x kh x kw x 256`.
pub fn packed_weight_len(shape: &ConvShape) -> Result<usize, KernelError> {
    let g = shape.groups.max(1);
    let (ocb, icb) = ((shape.oc / g).div_ceil(16), (shape.ic / g).div_ceil(16));
    product("packed weights", &[g, ocb, icb, shape.kh, shape.kw, 256])
}

impl ConvPlan {
    /// Checks the shape and chooses tiles and tasks for `threads` threads.
    pub fn new(shape: ConvShape, epilogue: Epilogue, cpu: Cpu, threads: usize) -> Result<ConvPlan, KernelError> {
        let isa = cpu.isa();
        let [oh, ow] = shape.out_hw()?;
        if shape.groups > 1
            && (!(shape.ic / shape.groups).is_multiple_of(16) || !(shape.oc / shape.groups).is_multiple_of(16))
        {
            return Err(KernelError::Unsupported {
                what: "blocked grouped convolution needs whole blocks per group (use the depthwise or plain kernel)",
            });
        }
        if !epilogue.act.is_valid() {
            return Err(KernelError::Shape { what: "activation parameters" });
        }
        packed_weight_len(&shape)?;
        let elems = |c: usize, h: usize, w: usize| product("tensor", &[shape.n, pad16(c), h, w]);
        elems(shape.ic, shape.ih, shape.iw)?;
        elems(shape.oc, oh, ow)?;
        let g = shape.groups;
        let (icb, ocb) = ((shape.ic / g).div_ceil(16), (shape.oc / g).div_ceil(16));
        let [sh, sw] = shape.stride;
        let [ph, pw] = shape.pad;
        let flat = shape.kh == 1 && shape.kw == 1 && sh == 1 && sw == 1 && ph == 0 && pw == 0;
        let band = if pw == 0 && sw == 1 {
            Band::Direct
        } else if sw == 1 {
            Band::Padded
        } else {
            Band::Taps
        };
        let (rows, cols) = if flat { (1, oh * ow) } else { (oh, ow) };
        let tiles = tile::tiles(isa);
        let (k, nw) = choose_tile_with_tail(&tiles.a16, ocb, cols);
        let mut plan = ConvPlan {
            shape,
            epilogue,
            isa,
            oh,
            ow,
            icb,
            ocb,
            band,
            rows,
            cols,
            k,
            nw,
            row_chunk: rows,
            col_chunk: cols,
            oc_chunk: ocb,
            n_rows: 1,
            n_cols: 1,
            n_oc: 1,
            tasks: 0,
            band_rows: 0,
            band_row_step: 1,
            band_row: 0,
            band_icb: 0,
            tap_stride: 0,
            scratch: 0,
            blocks_outer: false,
            col_block: 0,
            prefetch: false,
            chunk: icb,
            images: shape.n,
            n_images: 1,
        };
        if band == Band::Taps && shape.kh == 1 && ph == 0 {
            plan.band_row_step = sh;
        }
        let row_gain = tiles.a16.efficiency(k, nw);
        if shape.n > 1 && !flat && plan.span_gain() > SPAN_GAIN * row_gain {
            return Ok(plan.with_span(threads));
        }
        plan.split(threads.max(1));
        Ok(plan)
    }

    /// The efficiency of the tiles a [`Band::Span`] plan would use.
    fn span_gain(&self) -> f64 {
        let set = &tile::tiles(self.isa).a16;
        let (k, nw) = choose_tile(set, self.ocb, self.span_images().0);
        set.efficiency(k, nw)
    }

    /// Images per [`Band::Span`] task (as even as can be under [`SPAN_FLOATS`]) and chunks.
    fn span_images(&self) -> (usize, usize) {
        let s = &self.shape;
        let per_image = (self.icb * s.ih * s.iw * 16).max(1);
        let most = (SPAN_FLOATS / per_image).clamp(1, s.n);
        let chunks = s.n.div_ceil(most);
        (s.n.div_ceil(chunks), chunks)
    }

    /// The same plan run as tiles over images ([`Band::Span`], `conv_small.rs`), split for
    /// `threads`: what [`ConvPlan::new`] picks for small maps at batch > 1, and for tests and
    /// tuning on any shape.
    pub fn with_span(mut self, threads: usize) -> ConvPlan {
        (self.images, self.n_images) = self.span_images();
        self.band = Band::Span;
        self.band_row_step = 1;
        (self.rows, self.cols) = (1, self.oh * self.ow);
        (self.k, self.nw) = choose_tile(&tile::tiles(self.isa).a16, self.ocb, self.images);
        self.split(threads.max(1));
        self
    }

    /// Where task `task` works, as `(column chunk, row chunk, block chunk, group, image or
    /// image chunk)`: columns innermost, then rows, blocks, groups and images (a plan over
    /// images has one row chunk).
    pub(crate) fn task_place(&self, task: usize) -> [usize; 5] {
        let mut t = task;
        let col_i = t % self.n_cols;
        t /= self.n_cols;
        let row_i = t % self.n_rows;
        t /= self.n_rows;
        let oc_i = t % self.n_oc;
        t /= self.n_oc;
        [col_i, row_i, oc_i, t % self.shape.groups, t / self.shape.groups]
    }

    /// The same plan with the tile shape forced to `k` blocks x at most `nw` columns (both
    /// clamped to what the instruction set has; two blocks also when they leave a last block
    /// alone), re-split for `threads`: for tuning.
    pub fn with_tile(mut self, k: usize, nw: usize, threads: usize) -> ConvPlan {
        let set = &tile::tiles(self.isa).a16;
        // Tiles over images run whole tiles only (`conv_small.rs`): no lone last block there.
        let fits = self.ocb.is_multiple_of(k) || (k == 2 && self.ocb > 2 && self.band != Band::Span);
        let k = if fits && set.max_width(k) > 0 { k } else { 1 };
        self.k = k;
        self.nw = nw.clamp(1, set.max_width(k));
        self.split(threads.max(1));
        self
    }

    /// The same plan with `row_chunk` output rows and `oc_chunk` blocks per task (clamped; the
    /// blocks rounded to the tile's): for tuning the split.
    pub fn with_split(mut self, row_chunk: usize, oc_chunk: usize) -> ConvPlan {
        if self.band == Band::Span {
            // Its split is over images and pixels (see `split_span`).
            return self;
        }
        let units = self.ocb.div_ceil(self.k);
        let want = (oc_chunk / self.k).clamp(1, units);
        let per = (1..=want).rev().find(|d| units.is_multiple_of(*d)).unwrap_or(1);
        self.oc_chunk = per * self.k;
        self.n_oc = units / per;
        self.row_chunk = row_chunk.clamp(1, self.rows);
        self.n_rows = self.rows.div_ceil(self.row_chunk);
        self.tasks = self.shape.n * self.shape.groups * self.n_oc * self.n_rows * self.n_cols;
        self.set_band();
        self
    }

    /// The same plan with the task's loop order forced (blocks outside rows or not): for
    /// tuning.
    pub fn with_blocks_outer(mut self, blocks_outer: bool) -> ConvPlan {
        self.blocks_outer = blocks_outer;
        self
    }

    /// The same plan with weight prefetching forced on or off: for tuning.
    pub fn with_prefetch(mut self, prefetch: bool) -> ConvPlan {
        self.prefetch = prefetch;
        self
    }

    /// The same plan with its block pairs' reductions cut into chunks of `blocks` input blocks
    /// (clamped to `1..=icb`; a plan with a residual stays uncut, since the residual may be
    /// the output's own memory, which the chunks accumulate in): for tuning. Chunks apply
    /// when the blocks are outside the rows.
    pub fn with_chunk(mut self, blocks: usize) -> ConvPlan {
        self.chunk = if self.epilogue.residual { self.icb } else { blocks.clamp(1, self.icb) };
        self
    }

    /// Input blocks per chunk of a block pair's reduction (`icb` when uncut).
    pub fn chunk(&self) -> usize {
        self.chunk
    }

    /// Whether tiles prefetch the weights of the block pair their task visits next.
    pub fn prefetch(&self) -> bool {
        self.prefetch
    }

    /// The same plan with row blocks of `pixels` pixels (rounded to whole tiles): for tuning.
    pub fn with_col_block(mut self, pixels: usize) -> ConvPlan {
        self.col_block = (pixels / self.nw).max(1) * self.nw;
        self
    }

    /// Pixels per row block (see `set_band`).
    pub fn col_block(&self) -> usize {
        self.col_block
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
    /// Output height and width.
    pub fn out_hw(&self) -> [usize; 2] {
        [self.oh, self.ow]
    }
    /// Blocks per tile and the widest tile (with an odd block count and two blocks a tile,
    /// the last block of a group runs alone).
    pub fn tile(&self) -> (usize, usize) {
        (self.k, self.nw)
    }
    /// The number of tasks of one run.
    pub fn tasks(&self) -> usize {
        self.tasks
    }
    /// How the tasks read the input.
    pub fn band(&self) -> Band {
        self.band
    }
    /// The task split: `(rows per task, pixels per task, blocks per task)`.
    pub fn split_info(&self) -> (usize, usize, usize) {
        (self.row_chunk, self.col_chunk, self.oc_chunk.min(self.ocb))
    }

    /// Input rows a band holds for `rc` output rows.
    fn rows_for(&self, rc: usize) -> usize {
        let s = &self.shape;
        if self.band_row_step > 1 {
            return rc;
        }
        ((rc - 1) * s.stride[0] + (s.kh - 1) * s.dilation[0] + 1).min(s.ih)
    }

    /// Whether a task visits its blocks outside its rows.
    pub fn blocks_outer(&self) -> bool {
        self.blocks_outer
    }

    /// Sets the band geometry and the loop order for the chosen chunks. Rows outermost keep a
    /// row's few band rows in L1 while every block pair uses them (3 % faster on 2 threads for
    /// 64 x 56 x 56 than blocks outermost, which sweeps the whole band once per pair); once
    /// the task's weights outgrow L2 they are streamed from L3 once per row, so then the
    /// blocks go outside if one pair's weights and the band fit [`L2_BAND`] together
    /// (ResNet-50's stride-2 1x1 downsamples: 3-8 % faster on one thread). Such tasks also
    /// prefetch the weights of the pair they
    /// visit next while the current one runs (spread over its tiles), so that weights read
    /// from memory, as inside a whole model whose weights outgrow the last-level cache, stream
    /// while the FMAs run: ResNet-50's layer4 3x3 (590 KB a pair) with cold weights took
    /// 0.47 ms instead of 0.74 (the kernels bench's `--report --cold`, fastest of 200 runs, 2
    /// threads on a shared machine), about what it takes with warm weights.
    ///
    /// Every plan prefetches on a task's first visit of its pairs: inside a whole model the
    /// weights always come from memory, and without it each pair's first tile waited on its
    /// misses (ResNet-50's 128-channel 1x1 layers at 28 x 28, weights of 256 KB: 6-8 % slower
    /// with cold weights than warm, under 1 % with the prefetch; warm unchanged). The first
    /// pair has nothing before it to overlap its reads with, so with blocks outside rows the
    /// reduction of a pair above [`CHUNKED_PAIRS`] is cut into chunks of [`CHUNK_WEIGHTS`]
    /// (unless a residual, possibly in the output's memory, forbids accumulating there), each
    /// prefetching the next: the task waits for one chunk instead of a whole pair, whose first
    /// row read it all at memory speed (ResNet-50's layer4 3x3, 590 KB a pair, with cold
    /// weights: 928 -> 854 us for both tasks, its 3x3/2 1015 -> 940; warm no slower; each task
    /// alone on one thread, fastest of 50-400 runs, medians of 3 alternating rounds, shared
    /// machine).
    fn set_band(&mut self) {
        let s = self.shape;
        match self.band {
            Band::Span => {
                self.band_rows = 0;
                self.band_row = s.iw * self.images * 16;
                self.band_icb = s.ih * self.band_row;
                self.tap_stride = s.dilation[1] * self.images * 16;
                self.scratch = self.icb * self.band_icb;
                self.blocks_outer = false;
                self.prefetch = false;
                self.chunk = self.icb;
                self.col_block = self.cols;
                return;
            }
            Band::Direct => {
                self.band_rows = 0;
                self.band_row = s.iw * 16;
                self.band_icb = s.ih * s.iw * 16;
                self.tap_stride = s.dilation[1] * 16;
                self.scratch = 0;
            }
            Band::Padded | Band::Taps => {
                self.band_rows = self.rows_for(self.row_chunk);
                self.band_row =
                    if self.band == Band::Padded { (s.iw + 2 * s.pad[1]) * 16 } else { s.kw * self.ow * 16 };
                self.band_icb = self.band_rows * self.band_row;
                self.tap_stride = if self.band == Band::Padded { s.dilation[1] * 16 } else { self.ow * 16 };
                self.scratch = self.icb * self.band_icb;
            }
        }
        let pair_weights = 4 * self.k * self.icb * s.kh * s.kw * 256;
        let task_weights = pair_weights * (self.oc_chunk / self.k);
        let band = 4 * self.scratch;
        self.blocks_outer = self.row_chunk > 1 && task_weights > L2_WEIGHTS && pair_weights + band <= L2_BAND;
        self.prefetch = true;
        let chunks =
            if pair_weights > CHUNKED_PAIRS { pair_weights.div_ceil(CHUNK_WEIGHTS).clamp(1, self.icb) } else { 1 };
        self.chunk = if self.epilogue.residual { self.icb } else { self.icb.div_ceil(chunks) };
        // Long rows (the pixels of a 1x1 convolution, flattened: 1568 a task at 56 x 56 with
        // 256 channels, 1.6 MB of input) are cut into blocks each pair re-reads from L2,
        // instead of every pair streaming the whole row from L3.
        let per_pixel = 4 * self.icb * s.kh * 16;
        self.col_block = (L2_COLUMNS / per_pixel / self.nw).max(1) * self.nw;
    }

    /// Chooses the task split: the fewest rounds of equal tasks over `threads`, counting the
    /// band copies and a fixed cost per task.
    fn split(&mut self, threads: usize) {
        if self.band == Band::Span {
            self.split_span(threads);
            return;
        }
        let s = self.shape;
        // Cycles per output pixel x block at the FMA peak (32 MACs a cycle, 16 per block).
        let unit = (self.icb * 16 * s.kh * s.kw) as f64 / 2.0;
        let (band, ow, icb) = (self.band, self.ow, self.icb);
        let copy_row = match band {
            Band::Direct | Band::Span => 0.0,
            Band::Padded => (icb * (s.iw + 2 * s.pad[1])) as f64,
            Band::Taps => (icb * s.kw * ow) as f64,
        };
        let plan = &*self;
        let cost = |rc: usize, cc: usize, oc_chunk: usize| {
            unit * (rc * cc * oc_chunk) as f64 + 1.5 * copy_row * plan.rows_for(rc) as f64
        };
        let units = self.ocb.div_ceil(self.k);
        let sp = best_split(s.n * s.groups, units, self.rows, self.cols, self.nw, threads, &cost, self.k);
        self.n_oc = sp.n_oc;
        self.oc_chunk = sp.oc_chunk;
        self.row_chunk = sp.row_chunk;
        self.n_rows = sp.n_rows;
        self.col_chunk = sp.col_chunk;
        self.n_cols = sp.n_cols;
        self.tasks = sp.tasks;
        self.set_band();
    }
}

impl ConvPlan {
    /// The split of a [`Band::Span`] plan: every task gathers its whole image chunk, so the
    /// threads share the output-channel blocks (the most units up to `threads` dividing
    /// them evenly), and the pixels only when image chunks x groups x blocks are fewer
    /// tasks than threads.
    fn split_span(&mut self, threads: usize) {
        let units = self.ocb / self.k;
        let n_oc = (1..=units.min(threads)).rev().find(|d| units.is_multiple_of(*d)).unwrap_or(1);
        self.n_oc = n_oc;
        self.oc_chunk = units / n_oc * self.k;
        let others = self.n_images * self.shape.groups * n_oc;
        let n_pix = threads.div_ceil(others).clamp(1, self.cols);
        self.col_chunk = self.cols.div_ceil(n_pix);
        self.n_cols = self.cols.div_ceil(self.col_chunk);
        (self.row_chunk, self.n_rows) = (1, 1);
        self.tasks = others * self.n_cols;
        self.set_band();
    }
}

/// Candidate chunk sizes for `len` items: every size up to 64 and the sizes giving up to 64
/// chunks (the smallest size for each count, so chunks are as even as they can be), a bounded
/// set however large `len` is.
fn chunk_sizes(len: usize) -> impl Iterator<Item = usize> {
    let small = 1..=len.min(64);
    let by_count = (1..=len.min(64)).map(move |count| len.div_ceil(count)).filter(|&c| c > 64);
    small.chain(by_count).filter(move |&c| c == 1 || len.div_ceil(c - 1) != len.div_ceil(c))
}

/// A split of `images x oc blocks x rows x columns` into equal tasks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Split {
    pub n_oc: usize,
    pub oc_chunk: usize,
    pub row_chunk: usize,
    pub n_rows: usize,
    pub col_chunk: usize,
    pub n_cols: usize,
    pub tasks: usize,
}

/// The split with the fewest rounds of tasks over `threads` (`cost(rows, cols, blocks)`
/// estimating a task's cycles, plus a fixed 2000 per task): output-channel units (of `k`
/// blocks) divided evenly, rows and column tiles (of `nw`) in chunks.
#[allow(clippy::too_many_arguments)]
pub(crate) fn best_split(
    images: usize,
    oc_units: usize,
    rows: usize,
    cols: usize,
    nw: usize,
    threads: usize,
    cost: &dyn Fn(usize, usize, usize) -> f64,
    k: usize,
) -> Split {
    let col_tiles = cols.div_ceil(nw);
    let mut best = (
        f64::INFINITY,
        Split {
            n_oc: 1,
            oc_chunk: oc_units * k,
            row_chunk: rows,
            n_rows: 1,
            col_chunk: cols,
            n_cols: 1,
            tasks: images,
        },
    );
    for n_oc in (1..=oc_units.min(256)).filter(|d| oc_units.is_multiple_of(*d)) {
        let oc_chunk = oc_units / n_oc * k;
        for rc in chunk_sizes(rows) {
            let n_rows = rows.div_ceil(rc);
            for ct in chunk_sizes(col_tiles) {
                let n_cols = col_tiles.div_ceil(ct);
                let cc = (ct * nw).min(cols);
                let tasks = images.saturating_mul(n_oc).saturating_mul(n_rows).saturating_mul(n_cols);
                let rounds = tasks.div_ceil(threads) as f64;
                let total = rounds * (cost(rc, cc, oc_chunk) + 2000.0);
                if total < best.0 * 0.999 {
                    let n_cols = cols.div_ceil(cc);
                    let tasks = images * n_oc * n_rows * n_cols;
                    best = (total, Split { n_oc, oc_chunk, row_chunk: rc, n_rows, col_chunk: cc, n_cols, tasks });
                }
            }
        }
    }
    best.1
}

/// The tile shape: the block count (4, 2 or 1, dividing `ocb`) and widest tile that minimise
/// the time of a row of `cols` pixels, by the set's measured [`tile::TileSet::efficiency`]
/// (the row is cut into balanced widths).
pub fn choose_tile(set: &tile::TileSet, ocb: usize, cols: usize) -> (usize, usize) {
    choose(set, ocb, cols, false)
}

/// [`choose_tile`] that may also choose two blocks a tile for an odd block count (3 or more),
/// the last block then tiled alone at the same widths: the forward plan's choice. GoogLeNet's
/// odd counts (208 channels = 13 blocks, 112, 144) otherwise run one-block tiles, a load per
/// FMA (82 % of two-block tiles at best with AVX-512).
pub fn choose_tile_with_tail(set: &tile::TileSet, ocb: usize, cols: usize) -> (usize, usize) {
    choose(set, ocb, cols, true)
}

fn choose(set: &tile::TileSet, ocb: usize, cols: usize, tail: bool) -> (usize, usize) {
    let mut best = (f64::INFINITY, 1, 1);
    for k in [2, 4, 1] {
        let rest = ocb % k;
        let with_tail = tail && k == 2 && ocb > 2;
        if (rest != 0 && !with_tail) || set.max_width(k) == 0 {
            continue;
        }
        let max_w = set.max_width(k).min(cols);
        let ntiles = cols.div_ceil(max_w);
        let (wide, narrow) = (cols.div_ceil(ntiles), cols / ntiles);
        let n_wide = cols % ntiles;
        // A block's share of the row time: the last `rest` blocks run in one-block tiles of
        // the same widths.
        let row_time = |k: usize| {
            (n_wide * wide) as f64 / set.efficiency(k, wide)
                + ((ntiles - n_wide) * narrow) as f64 / set.efficiency(k, narrow)
        };
        let time = ((ocb - rest) as f64 * row_time(k) + rest as f64 * row_time(1)) / ocb as f64;
        if time < best.0 * 0.99 {
            best = (time, k, wide);
        }
    }
    (best.1, best.2)
}
