//! Fully connected layers on plain vectors: `y[n][o] = act(b[o] + sum_i w[o][i] x[n][i])` with
//! `oi` weights (`[O][I]`, PyTorch's layout), and the backward passes.
//!
//! Forward streams each weight row once: a tile of 4 rows x up to 4 samples keeps 16 vector
//! accumulators over the row (at batch 1 the layer is bound by memory bandwidth). The tile's
//! rows are a quarter of the task's chunk apart, so the task reads 4 long sequential streams
//! (each runs on through consecutive rows) rather than 4 rows side by side that end and
//! restart every row, the pattern of the read probe's 4-stream sum (`examples/fc_stream.rs`
//! times the kernel against that sum). Backward-data (`dx = w^T gy`) and backward-weights
//! (`dw += gy^T x`) are matrix products whose vectors run along `i`, the tile kernel's form:
//! backward-weights reads `gy` as broadcast columns (consecutive `o`) and `x` rows as vectors;
//! backward-data needs `gy` transposed (`[O][N]`, in scratch) for its columns. Columns of `i`
//! past the last whole 16 are done by a plain loop.
//!
//! Both backward passes touch every weight once, so like the forward they are bound by memory
//! at small batches, and both walk the weights (or their gradient) along rows: backward-data
//! splits `i` into one wide column chunk per task and sweeps it a block of [`DATA_ROWS`] rows
//! at a time, 64 columns (four blocks) per tile, so each row is read as one contiguous run;
//! backward-weights gives each task a band of rows and writes each row group from left to
//! right. (Tasks of 16 columns over every row, the first form, read one 64-byte line per
//! 36 KB row of AlexNet's fc6: a page per line, 4 GB/s where the forward streams 20.)
//!
//! Samples of `x` (and `dx`) lie `xs` floats apart and those of `y` (and `gy`) `ys` apart
//! ([`FcPlan::with_strides`]; dense by default): the JIT's arena rounds each image up to 64
//! bytes, so a 10-class output is 16 floats apart.

use super::act::{self, Act};
use super::error::{KernelError, check_len, check_min_len, product};
use super::par::{Parallel, SyncPtr};
use super::simd::{Cpu, Isa, Simd, isa_fn};
use super::tile::{self, Out, Reduce};

/// A checked fully connected layer (made by [`FcPlan::new`] only).
#[derive(Clone, Copy, Debug, PartialEq)]
#[repr(C)]
pub struct FcPlan {
    pub(crate) n: usize,
    pub(crate) i: usize,
    pub(crate) o: usize,
    pub(crate) bias: bool,
    pub(crate) act: Act,
    pub(crate) isa: Isa,
    /// Rows per forward task (a multiple of 4 except the last).
    pub(crate) rows: usize,
    pub(crate) tasks: usize,
    /// Columns per backward-data task (a multiple of 16; the last task takes the rest).
    pub(crate) data_cols: usize,
    /// Rows per backward-weights task.
    pub(crate) weight_rows: usize,
    /// Floats between consecutive samples of `x` and `dx` (at least `i`).
    pub(crate) xs: usize,
    /// Floats between consecutive samples of `y` and `gy` (at least `o`).
    pub(crate) ys: usize,
}

impl FcPlan {
    /// `n` samples of `i` features to `o`; `threads` sizes the split.
    pub fn new(
        n: usize,
        i: usize,
        o: usize,
        bias: bool,
        act: Act,
        cpu: Cpu,
        threads: usize,
    ) -> Result<FcPlan, KernelError> {
        if n == 0 || i == 0 || o == 0 {
            return Err(KernelError::Shape { what: "fc sizes must be positive" });
        }
        if !act.is_valid() {
            return Err(KernelError::Shape { what: "activation parameters" });
        }
        product("fc weights", &[o, i])?;
        product("fc input", &[n, i])?;
        product("fc output", &[n, o])?;
        // Enough tasks to balance (8 per thread) but at least 4 rows of 64 floats each.
        let quads = o.div_ceil(4);
        let per = quads.div_ceil(8 * threads.max(1)).max(1);
        let rows = per * 4;
        // The backward passes: about 4 tasks per thread, column chunks of at least 64 floats
        // (a tile's width) and bands of at least 4 rows.
        let split = 4 * threads.max(1);
        let data_cols = i.div_ceil(split).div_ceil(64).max(1) * 64;
        let weight_rows = o.div_ceil(split).max(4);
        Ok(FcPlan {
            n,
            i,
            o,
            bias,
            act,
            isa: cpu.isa(),
            rows,
            tasks: o.div_ceil(rows),
            data_cols,
            weight_rows,
            xs: i,
            ys: o,
        })
    }

    /// The same layer on samples `xs` floats apart in `x` and `dx`, `ys` apart in `y` and `gy`.
    pub fn with_strides(self, xs: usize, ys: usize) -> Result<FcPlan, KernelError> {
        if xs < self.i || ys < self.o {
            return Err(KernelError::Shape { what: "fc sample strides shorter than a sample" });
        }
        span("fc input", self.n, xs, self.i)?;
        span("fc output", self.n, ys, self.o)?;
        Ok(FcPlan { xs, ys, ..self })
    }

    /// Floats `x` (and `dx`) spans: `(n - 1) xs + i`.
    pub fn x_span(&self) -> usize {
        (self.n - 1) * self.xs + self.i
    }

    /// Floats `y` (and `gy`) spans: `(n - 1) ys + o`.
    pub fn y_span(&self) -> usize {
        (self.n - 1) * self.ys + self.o
    }

    pub fn tasks(&self) -> usize {
        self.tasks
    }
    /// Scratch floats for the backward-data pass (the transposed output gradient).
    pub fn backward_scratch_len(&self) -> usize {
        self.n * self.o
    }
    /// Tasks of the backward-data pass: column chunks of `i`.
    pub fn backward_data_tasks(&self) -> usize {
        self.i.div_ceil(self.data_cols)
    }
    /// Tasks of the backward-weights pass: bands of rows.
    pub fn backward_weights_tasks(&self) -> usize {
        self.o.div_ceil(self.weight_rows)
    }
}

/// `(n - 1) stride + len`, or `Overflow`.
fn span(what: &'static str, n: usize, stride: usize, len: usize) -> Result<usize, KernelError> {
    (n - 1).checked_mul(stride).and_then(|a| a.checked_add(len)).ok_or(KernelError::Overflow { what })
}

/// `y[n][o0 + r step]` for `r < R` and samples `n0 .. n0 + NB`.
///
/// # Safety
/// Rows `o0 + r step` (`r < R`) of `w` and samples `n0 .. n0 + NB` of `x`, `y` are valid.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn dot_tile<S: Simd, const R: usize, const NB: usize>(
    s: S,
    p: &FcPlan,
    x: *const f32,
    w: *const f32,
    y: *mut f32,
    o0: usize,
    step: usize,
    n0: usize,
) {
    let i = p.i;
    let mut acc = [[s.zero(); NB]; R];
    let whole = i / 16 * 16;
    let mut k = 0;
    while k < whole {
        // SAFETY: k + 16 <= i for every row and sample of the tile.
        unsafe {
            let xs: [S::V; NB] = core::array::from_fn(|b| s.load(x.add((n0 + b) * p.xs + k)));
            for (r, row) in acc.iter_mut().enumerate() {
                let wv = s.load(w.add((o0 + r * step) * i + k));
                for (b, a) in row.iter_mut().enumerate() {
                    *a = s.fmadd(wv, xs[b], *a);
                }
            }
        }
        k += 16;
    }
    for (r, row) in acc.iter().enumerate() {
        for (b, a) in row.iter().enumerate() {
            let mut sum = s.hsum(*a);
            for kk in whole..i {
                // SAFETY: kk < i.
                unsafe { sum += *w.add((o0 + r * step) * i + kk) * *x.add((n0 + b) * p.xs + kk) };
            }
            // SAFETY: sample n0 + b, row o0 + r step of y are valid.
            unsafe { *y.add((n0 + b) * p.ys + o0 + r * step) = sum };
        }
    }
}

/// Forward rows `o0..o1` for every sample, raw sums: tiles of rows `o0 + j + r q` (`r < 4`,
/// `q` a quarter of the whole fours), then the last rows one at a time.
///
/// # Safety
/// As [`forward_task`].
#[inline(always)]
unsafe fn forward_rows<S: Simd>(s: S, p: &FcPlan, x: *const f32, w: *const f32, y: *mut f32, o0: usize, o1: usize) {
    let q = (o1 - o0) / 4;
    for o in (o0..o0 + q).chain(o0 + 4 * q..o1) {
        let full = o < o0 + q;
        let mut n = 0;
        while n < p.n {
            let nb = (p.n - n).min(4);
            // SAFETY: rows o + r q (r < 4, all below o0 + 4 q <= o1) or o alone, and samples
            // n..n + nb are inside the operands.
            unsafe {
                match (full, nb) {
                    (true, 4) => dot_tile::<S, 4, 4>(s, p, x, w, y, o, q, n),
                    (true, 3) => dot_tile::<S, 4, 3>(s, p, x, w, y, o, q, n),
                    (true, 2) => dot_tile::<S, 4, 2>(s, p, x, w, y, o, q, n),
                    (true, _) => dot_tile::<S, 4, 1>(s, p, x, w, y, o, q, n),
                    (false, _) => dot_tile::<S, 1, 1>(s, p, x, w, y, o, 0, n),
                }
            }
            n += if full { nb } else { 1 };
        }
    }
}

isa_fn! {
    /// # Safety
    /// As [`forward_task`].
    unsafe fn forward_rows_isa(p: &FcPlan, x: *const f32, w: *const f32, y: *mut f32, o0: usize, o1: usize) = forward_rows;
}

/// Runs forward task `task` (a chunk of output rows for all samples), bias and activation
/// included.
///
/// # Safety
/// `p` from [`FcPlan::new`] on a CPU with its instruction set; `x` valid for
/// [`FcPlan::x_span`], `w` for `o x i`, `bias` (when the plan has one) for `o`, `y` for
/// [`FcPlan::y_span`] floats, `y` apart from the
/// others; no other running task writes rows of this task.
pub unsafe fn forward_task(p: &FcPlan, x: *const f32, w: *const f32, bias: *const f32, y: *mut f32, task: usize) {
    let o0 = task * p.rows;
    let o1 = (o0 + p.rows).min(p.o);
    // SAFETY: forwarded contract.
    unsafe { forward_rows_isa(p.isa, p, x, w, y, o0, o1) };
    for n in 0..p.n {
        let row = y.wrapping_add(n * p.ys + o0);
        for r in 0..o1 - o0 {
            if p.bias {
                // SAFETY: o0 + r < o; the row belongs to this task.
                unsafe { *row.add(r) += *bias.add(o0 + r) };
            }
        }
        if p.act != Act::NONE {
            // SAFETY: the task's part of row n.
            unsafe { act::apply_in_place(p.isa, row, o1 - o0, &p.act) };
        }
    }
}

/// Forward: `x` (`n` samples, [`FcPlan::x_span`] floats), `w` (`o x i`), `bias` (`o`), into
/// `y` ([`FcPlan::y_span`] floats).
pub fn forward(
    par: &dyn Parallel,
    p: &FcPlan,
    x: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
    y: &mut [f32],
) -> Result<(), KernelError> {
    check_len("fc input", x.len(), p.x_span())?;
    check_len("fc weights", w.len(), p.o * p.i)?;
    check_len("fc output", y.len(), p.y_span())?;
    let b = match (bias, p.bias) {
        (Some(b), true) => {
            check_len("fc bias", b.len(), p.o)?;
            b.as_ptr()
        }
        (None, false) => core::ptr::null(),
        _ => return Err(KernelError::View { what: "fc bias" }),
    };
    let (xp, wp, bp, yp) = (
        SyncPtr(x.as_ptr() as *mut f32),
        SyncPtr(w.as_ptr() as *mut f32),
        SyncPtr(b as *mut f32),
        SyncPtr(y.as_mut_ptr()),
    );
    par.run(p.tasks, &|t, _| {
        // SAFETY: lengths checked above; y is a separate &mut slice; tasks write disjoint rows.
        unsafe { forward_task(p, xp.get(), wp.get(), bp.get(), yp.get(), t) }
    });
    Ok(())
}

/// Rows of the weights a backward-data tile reduces over before moving right: the rows of a
/// block are read side by side (this many streams), each in runs of 64 columns.
const DATA_ROWS: usize = 8;

/// The most 16-column blocks a tile of `tiles` takes (4, 2 or 1, as the instruction set has
/// them) within `cols` columns (at least 16).
fn blocks_within(tiles: &tile::TileSet, cols: usize) -> usize {
    [4, 2].into_iter().find(|&k| 16 * k <= cols && tiles.max_width(k) > 0).unwrap_or(1)
}

/// Backward-data task `task` (a chunk of [`FcPlan::backward_data_tasks`]'s columns of `i`):
/// `dx (+)= gy w`, reading the transposed gradient `gyt` (`o x n`).
///
/// # Safety
/// `p` from [`FcPlan::new`] on a CPU with its instruction set; `gyt` valid for `o x n`, `w` for
/// `o x i`, `dx` for [`FcPlan::x_span`] floats, apart; no other running task writes these
/// columns.
pub unsafe fn backward_data_task(
    p: &FcPlan,
    gyt: *const f32,
    w: *const f32,
    dx: *mut f32,
    accumulate: bool,
    task: usize,
) {
    let c_lo = task * p.data_cols;
    let c_hi = (c_lo + p.data_cols).min(p.i);
    // The chunk's whole blocks of 16 columns; the rest (under 16, last chunk only) is scalar.
    let c_vec = c_lo + (c_hi - c_lo) / 16 * 16;
    let tiles = &tile::tiles(p.isa).a1;
    let mut o0 = 0;
    while o0 < p.o {
        let rows = (p.o - o0).min(DATA_ROWS);
        let acc = accumulate || o0 > 0;
        let mut c0 = c_lo;
        while c0 < c_vec {
            let k = blocks_within(tiles, c_vec - c0);
            let nw = tiles.max_width(k);
            let r = Reduce {
                n: [1, 1, 1],
                steps: rows,
                a_step: p.n as isize,
                b_step: p.i as isize,
                b_blk: 16,
                ..Reduce::default()
            };
            let mut n0 = 0;
            while n0 < p.n {
                let w_cols = (p.n - n0).min(nw);
                let out = Out::plain(dx.wrapping_add(n0 * p.xs + c0), p.xs as isize, 16, acc);
                // SAFETY: the reduction reads gyt[o0 .. o0 + rows][n0 .. n0 + w_cols] and
                // w[o0 .. o0 + rows][c0 .. c0 + 16 k] (c0 + 16 k <= c_vec <= i); the tile writes
                // dx[n0 ..][c0 .. c0 + 16 k], columns of this task.
                unsafe {
                    tiles.get(k, w_cols)(gyt.wrapping_add(o0 * p.n + n0), w.wrapping_add(o0 * p.i + c0), &r, &out)
                };
                n0 += w_cols;
            }
            c0 += 16 * k;
        }
        o0 += rows;
    }
    for n in 0..p.n {
        for c in c_vec..c_hi {
            // SAFETY: c < i, n < n, every o < o: inside the operands.
            unsafe {
                let sum: f32 = (0..p.o).map(|o| *gyt.add(o * p.n + n) * *w.add(o * p.i + c)).sum();
                let d = dx.add(n * p.xs + c);
                *d = if accumulate { *d + sum } else { sum };
            }
        }
    }
}

/// Rows of `dw` one backward-weights tile computes side by side (at most): the widest tile's
/// width, so that every block count the tiles take has that many.
pub(crate) fn weight_group(p: &FcPlan) -> usize {
    let tiles = &tile::tiles(p.isa).a1;
    tiles.max_width(blocks_within(tiles, (p.i / 16 * 16).max(16)))
}

/// Rows `o0 .. o0 + rows` of `gy^T x` (`rows` at most [`weight_group`]) written (or with
/// `accumulate` added) to `dst`, row `o0 + r` at `dst + r i`, left to right: up to 64 columns
/// a tile, the columns past the last whole 16 by a plain loop.
///
/// # Safety
/// `p` from [`FcPlan::new`] on a CPU with its instruction set; `gy` valid for
/// [`FcPlan::y_span`], `x` for [`FcPlan::x_span`], `dst` for `rows x i` floats apart from
/// them and written by nothing else meanwhile.
pub(crate) unsafe fn weight_rows(
    p: &FcPlan,
    gy: *const f32,
    x: *const f32,
    o0: usize,
    rows: usize,
    dst: *mut f32,
    accumulate: bool,
) {
    let c_vec = p.i / 16 * 16;
    let tiles = &tile::tiles(p.isa).a1;
    let r = Reduce {
        n: [1, 1, 1],
        steps: p.n,
        a_step: p.ys as isize,
        b_step: p.xs as isize,
        b_blk: 16,
        ..Reduce::default()
    };
    let mut c0 = 0;
    while c0 < c_vec {
        let k = blocks_within(tiles, c_vec - c0);
        let out = Out::plain(dst.wrapping_add(c0), p.i as isize, 16, accumulate);
        // SAFETY: reads gy[n][o0 .. o0 + rows] and x[n][c0 .. c0 + 16 k] for every n
        // (c0 + 16 k <= i); writes rows 0 .. rows of dst, columns c0 .. c0 + 16 k.
        unsafe { tiles.get(k, rows)(gy.wrapping_add(o0), x.wrapping_add(c0), &r, &out) };
        c0 += 16 * k;
    }
    for row in 0..rows {
        for c in c_vec..p.i {
            // SAFETY: inside the operands.
            unsafe {
                let sum: f32 = (0..p.n).map(|n| *gy.add(n * p.ys + o0 + row) * *x.add(n * p.xs + c)).sum();
                let d = dst.add(row * p.i + c);
                *d = if accumulate { *d + sum } else { sum };
            }
        }
    }
}

/// `db (+)= sum_n gy[n]`, for task 0 of the backward-weights passes.
///
/// # Safety
/// `gy` valid for [`FcPlan::y_span`] floats, `db` for `o`, apart.
pub(crate) unsafe fn bias_grad(p: &FcPlan, gy: *const f32, db: *mut f32, accumulate: bool) {
    for o in 0..p.o {
        // SAFETY: o < o, every sample n < n.
        unsafe {
            let sum: f32 = (0..p.n).map(|n| *gy.add(n * p.ys + o)).sum();
            *db.add(o) = if accumulate { *db.add(o) + sum } else { sum };
        }
    }
}

/// Backward-weights task `task` (a band of [`FcPlan::backward_weights_tasks`]'s rows of
/// `dw`): `dw (+)= gy^T x`; task 0 also writes `db`.
///
/// # Safety
/// `p` from [`FcPlan::new`] on a CPU with its instruction set; `gy` valid for
/// [`FcPlan::y_span`], `x` for [`FcPlan::x_span`], `dw` for `o x i` and `db` (non-null when the plan has a bias) for `o` floats,
/// outputs apart from inputs; no other running task writes these rows.
pub unsafe fn backward_weights_task(
    p: &FcPlan,
    gy: *const f32,
    x: *const f32,
    dw: *mut f32,
    db: *mut f32,
    accumulate: bool,
    task: usize,
) {
    if task == 0 && !db.is_null() {
        // SAFETY: forwarded contract.
        unsafe { bias_grad(p, gy, db, accumulate) };
    }
    for (o0, rows) in row_groups(p, task) {
        // SAFETY: rows o0 .. o0 + rows of dw are this task's.
        unsafe { weight_rows(p, gy, x, o0, rows, dw.wrapping_add(o0 * p.i), accumulate) };
    }
}

/// The row groups `(first row, rows)` of backward-weights task `task`, in order: its band of
/// rows cut into [`weight_group`]s.
pub(crate) fn row_groups(p: &FcPlan, task: usize) -> impl Iterator<Item = (usize, usize)> {
    let (lo, hi) = (task * p.weight_rows, ((task + 1) * p.weight_rows).min(p.o));
    let group = weight_group(p);
    (lo..hi).step_by(group).map(move |o0| (o0, group.min(hi - o0)))
}

/// The fc backward passes: `dx` (when wanted) from `gy` and `w`, `dw` and `db` (when the plan
/// has a bias) from `gy` and `x`; `accumulate` adds to what the outputs hold. `scratch` holds
/// [`FcPlan::backward_scratch_len`] floats.
#[allow(clippy::too_many_arguments)]
pub fn backward(
    par: &dyn Parallel,
    p: &FcPlan,
    x: &[f32],
    w: &[f32],
    gy: &[f32],
    dx: Option<&mut [f32]>,
    dw: &mut [f32],
    db: Option<&mut [f32]>,
    accumulate: bool,
    scratch: &mut [f32],
) -> Result<(), KernelError> {
    check_len("fc input", x.len(), p.x_span())?;
    check_len("fc weights", w.len(), p.o * p.i)?;
    check_len("fc output gradient", gy.len(), p.y_span())?;
    check_len("fc weight gradient", dw.len(), p.o * p.i)?;
    check_min_len("scratch", scratch.len(), p.backward_scratch_len())?;
    let db = match (db, p.bias) {
        (Some(db), true) => {
            check_len("fc bias gradient", db.len(), p.o)?;
            db.as_mut_ptr()
        }
        (None, false) => core::ptr::null_mut(),
        _ => return Err(KernelError::View { what: "fc bias gradient" }),
    };
    let (xp, wp, gp) =
        (SyncPtr(x.as_ptr() as *mut f32), SyncPtr(w.as_ptr() as *mut f32), SyncPtr(gy.as_ptr() as *mut f32));
    let (dwp, dbp) = (SyncPtr(dw.as_mut_ptr()), SyncPtr(db));
    let dx = match dx {
        Some(dx) => {
            check_len("fc input gradient", dx.len(), p.x_span())?;
            for n in 0..p.n {
                for o in 0..p.o {
                    scratch[o * p.n + n] = gy[n * p.ys + o];
                }
            }
            Some(SyncPtr(dx.as_mut_ptr()))
        }
        None => None,
    };
    let st = SyncPtr(scratch.as_mut_ptr());
    let tasks = p.backward_weights_tasks();
    let data_tasks = if dx.is_some() { p.backward_data_tasks() } else { 0 };
    par.run(tasks + data_tasks, &|t, _| {
        if t < tasks {
            // SAFETY: lengths checked; dw and db are separate &mut slices; tasks own rows.
            unsafe { backward_weights_task(p, gp.get(), xp.get(), dwp.get(), dbp.get(), accumulate, t) };
        } else if let Some(dx) = &dx {
            // SAFETY: as above; the scratch holds gy transposed, written before the run; tasks
            // own columns of dx.
            unsafe { backward_data_task(p, st.get(), wp.get(), dx.get(), accumulate, t - tasks) };
        }
    });
    Ok(())
}
