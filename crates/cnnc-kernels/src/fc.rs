//! Fully connected layers on plain vectors: `y[n][o] = act(b[o] + sum_i w[o][i] x[n][i])` with
//! `oi` weights (`[O][I]`, PyTorch's layout), and the backward passes.
//!
//! Forward streams each weight row once: a tile of 4 rows x up to 4 samples keeps 16 vector
//! accumulators over the row (at batch 1 the layer is bound by memory bandwidth, and the
//! 4-row tile reads 4 sequential streams). Backward-data (`dx = w^T gy`) and backward-weights
//! (`dw += gy^T x`) are matrix products whose vectors run along `i`, the tile kernel's form:
//! backward-weights reads `gy` as broadcast columns (consecutive `o`) and `x` rows as vectors;
//! backward-data needs `gy` transposed (`[O][N]`, in scratch) for its columns. Columns of `i`
//! past the last whole 16 are done by a plain loop.
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
        Ok(FcPlan { n, i, o, bias, act, isa: cpu.isa(), rows, tasks: o.div_ceil(rows), xs: i, ys: o })
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
    /// Tasks of the backward passes: 16-wide column chunks of `i` (and one for the tail).
    pub fn backward_tasks(&self) -> usize {
        self.i.div_ceil(16)
    }
}

/// `(n - 1) stride + len`, or `Overflow`.
fn span(what: &'static str, n: usize, stride: usize, len: usize) -> Result<usize, KernelError> {
    (n - 1).checked_mul(stride).and_then(|a| a.checked_add(len)).ok_or(KernelError::Overflow { what })
}

/// `y[n][o0 .. o0 + R]` for samples `n0 .. n0 + NB`.
///
/// # Safety
/// Rows `o0 .. o0 + R` of `w` and samples `n0 .. n0 + NB` of `x`, `y` are valid.
#[inline(always)]
unsafe fn dot_tile<S: Simd, const R: usize, const NB: usize>(
    s: S,
    p: &FcPlan,
    x: *const f32,
    w: *const f32,
    y: *mut f32,
    o0: usize,
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
                let wv = s.load(w.add((o0 + r) * i + k));
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
                unsafe { sum += *w.add((o0 + r) * i + kk) * *x.add((n0 + b) * p.xs + kk) };
            }
            // SAFETY: sample n0 + b, row o0 + r of y are valid.
            unsafe { *y.add((n0 + b) * p.ys + o0 + r) = sum };
        }
    }
}

/// Forward rows `o0..o1` for every sample, raw sums.
///
/// # Safety
/// As [`forward_task`].
#[inline(always)]
unsafe fn forward_rows<S: Simd>(s: S, p: &FcPlan, x: *const f32, w: *const f32, y: *mut f32, o0: usize, o1: usize) {
    let mut o = o0;
    while o < o1 {
        let full = o + 4 <= o1;
        let mut n = 0;
        while n < p.n {
            let nb = (p.n - n).min(4);
            // SAFETY: rows o..o + 4 (or o) and samples n..n + nb are inside the operands.
            unsafe {
                match (full, nb) {
                    (true, 4) => dot_tile::<S, 4, 4>(s, p, x, w, y, o, n),
                    (true, 3) => dot_tile::<S, 4, 3>(s, p, x, w, y, o, n),
                    (true, 2) => dot_tile::<S, 4, 2>(s, p, x, w, y, o, n),
                    (true, _) => dot_tile::<S, 4, 1>(s, p, x, w, y, o, n),
                    (false, _) => dot_tile::<S, 1, 1>(s, p, x, w, y, o, n),
                }
            }
            n += if full { nb } else { 1 };
        }
        o += if full { 4 } else { 1 };
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

/// Backward-data task `task` (16 columns of `i`, or the tail): `dx (+)= gy w`, reading the
/// transposed gradient `gyt` (`o x n`).
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
    let c0 = task * 16;
    if c0 + 16 > p.i {
        for n in 0..p.n {
            for c in c0..p.i {
                // SAFETY: c < i, n < n, every o < o: inside the operands.
                unsafe {
                    let sum: f32 = (0..p.o).map(|o| *gyt.add(o * p.n + n) * *w.add(o * p.i + c)).sum();
                    let d = dx.add(n * p.xs + c);
                    *d = if accumulate { *d + sum } else { sum };
                }
            }
        }
        return;
    }
    let tiles = &tile::tiles(p.isa).a1;
    let nw = tiles.max_width(1);
    let r =
        Reduce { n: [1, 1, 1], steps: p.o, a_step: p.n as isize, b_step: p.i as isize, b_blk: 16, ..Reduce::default() };
    let mut n0 = 0;
    while n0 < p.n {
        let w_cols = (p.n - n0).min(nw);
        let out = Out::plain(dx.wrapping_add(n0 * p.xs + c0), p.xs as isize, 16, accumulate);
        // SAFETY: the reduction reads gyt[o][n0 .. n0 + w_cols] and w[o][c0 .. c0 + 16] for every
        // o; the tile writes dx[n0 ..][c0 .. c0 + 16].
        unsafe { tiles.get(1, w_cols)(gyt.wrapping_add(n0), w.wrapping_add(c0), &r, &out) };
        n0 += w_cols;
    }
}

/// Backward-weights task `task` (16 columns of `i`, or the tail): `dw (+)= gy^T x`; task 0
/// also writes `db`.
///
/// # Safety
/// `p` from [`FcPlan::new`] on a CPU with its instruction set; `gy` valid for
/// [`FcPlan::y_span`], `x` for [`FcPlan::x_span`], `dw` for `o x i` and `db` (non-null when the plan has a bias) for `o` floats,
/// outputs apart from inputs; no other running task writes these columns.
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
        for o in 0..p.o {
            // SAFETY: o < o, every sample n < n.
            unsafe {
                let sum: f32 = (0..p.n).map(|n| *gy.add(n * p.ys + o)).sum();
                *db.add(o) = if accumulate { *db.add(o) + sum } else { sum };
            }
        }
    }
    let c0 = task * 16;
    if c0 + 16 > p.i {
        for o in 0..p.o {
            for c in c0..p.i {
                // SAFETY: inside the operands.
                unsafe {
                    let sum: f32 = (0..p.n).map(|n| *gy.add(n * p.ys + o) * *x.add(n * p.xs + c)).sum();
                    let d = dw.add(o * p.i + c);
                    *d = if accumulate { *d + sum } else { sum };
                }
            }
        }
        return;
    }
    let tiles = &tile::tiles(p.isa).a1;
    let nw = tiles.max_width(1);
    let r = Reduce {
        n: [1, 1, 1],
        steps: p.n,
        a_step: p.ys as isize,
        b_step: p.xs as isize,
        b_blk: 16,
        ..Reduce::default()
    };
    let mut o0 = 0;
    while o0 < p.o {
        let w_cols = (p.o - o0).min(nw);
        let out = Out::plain(dw.wrapping_add(o0 * p.i + c0), p.i as isize, 16, accumulate);
        // SAFETY: reads gy[n][o0 .. o0 + w_cols] and x[n][c0 .. c0 + 16] for every n; writes
        // dw[o0 ..][c0 .. c0 + 16].
        unsafe { tiles.get(1, w_cols)(gy.wrapping_add(o0), x.wrapping_add(c0), &r, &out) };
        o0 += w_cols;
    }
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
    let tasks = p.backward_tasks();
    par.run(if dx.is_some() { 2 * tasks } else { tasks }, &|t, _| {
        if t < tasks {
            // SAFETY: lengths checked; dw and db are separate &mut slices; tasks own columns.
            unsafe { backward_weights_task(p, gp.get(), xp.get(), dwp.get(), dbp.get(), accumulate, t) };
        } else if let Some(dx) = &dx {
            // SAFETY: as above; the scratch holds gy transposed, written before the run.
            unsafe { backward_data_task(p, st.get(), wp.get(), dx.get(), accumulate, t - tasks) };
        }
    });
    Ok(())
}
