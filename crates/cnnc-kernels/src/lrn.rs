//! Local response normalisation across channels (PyTorch's and Caffe's):
//! `y[c] = x[c] * s[c]^-beta`, `s[c] = k + alpha / size * sum of x[c']^2 over
//! `c' in c - size/2 ..= c + (size-1)/2` (clipped), and its backward
//! `dx[j] = g[j] s[j]^-beta - 2 alpha beta / size * x[j] * sum over c whose window holds j of
//! g[c] x[c] s[c]^(-beta-1)`, on `nchw` or `nChw16c` maps.
//!
//! On `nchw` the vectors run over 16 pixels of a plane and a window sum adds neighbouring
//! planes; on `nChw16c` they run over a block's 16 channels and a window sum is `size`
//! unaligned loads from a zero-padded copy of the pixel's column of squares (the window runs
//! across channel blocks). `s^-beta` is `exp(-beta ln s)` with the vector math. Tasks are
//! ranges of pixels of one image.

use super::error::{KernelError, check_min_len};
use super::par::{Parallel, SyncPtr};
use super::simd::{Cpu, Isa, Simd, isa_fn};
use super::view::{Layout, View, check_apart};
use super::vmath;

/// A checked LRN layer (made by [`LrnPlan::new`] only).
#[derive(Clone, Copy, Debug, PartialEq)]
#[repr(C)]
pub struct LrnPlan {
    pub(crate) n: usize,
    pub(crate) c: usize,
    pub(crate) h: usize,
    pub(crate) w: usize,
    pub(crate) layout: Layout,
    pub(crate) size: usize,
    pub(crate) alpha: f32,
    pub(crate) beta: f32,
    pub(crate) k: f32,
    pub(crate) isa: Isa,
    pub(crate) chunk: usize,
    pub(crate) tasks: usize,
}

impl LrnPlan {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        n: usize,
        c: usize,
        hw: [usize; 2],
        layout: Layout,
        size: usize,
        alpha: f32,
        beta: f32,
        k: f32,
        cpu: Cpu,
        threads: usize,
    ) -> Result<LrnPlan, KernelError> {
        if n == 0 || c == 0 || hw.contains(&0) || size == 0 {
            return Err(KernelError::Shape { what: "LRN sizes must be positive" });
        }
        if !(alpha.is_finite() && beta.is_finite() && k.is_finite() && k > 0.0 && alpha >= 0.0) {
            return Err(KernelError::Shape { what: "LRN needs finite alpha >= 0, beta, and k > 0" });
        }
        super::error::product("tensor", &[n, super::view::pad16(c), hw[0], hw[1]])?;
        let pixels = hw[0] * hw[1];
        let chunk = (n * pixels).div_ceil(8 * threads.max(1)).clamp(1, pixels);
        // Planar tasks run 16 pixels per vector: whole vectors but for each task's last.
        let chunk = match layout {
            Layout::Nchw => chunk.next_multiple_of(16).min(pixels),
            Layout::NChw16c => chunk,
        };
        Ok(LrnPlan {
            n,
            c,
            h: hw[0],
            w: hw[1],
            layout,
            size,
            alpha,
            beta,
            k,
            isa: cpu.isa(),
            chunk,
            tasks: n * pixels.div_ceil(chunk),
        })
    }

    /// Scratch floats per thread: on `nchw`, two rows of 16 pixels per channel; on `nChw16c`,
    /// two zero-padded channel columns and one plain one.
    pub fn scratch(&self) -> usize {
        match self.layout {
            Layout::Nchw => 32 * self.c,
            Layout::NChw16c => 3 * super::view::pad16(self.c) + 4 * column_pad(self.size),
        }
    }
    pub fn scratch_len(&self, threads: usize) -> usize {
        self.scratch() * threads
    }
    pub fn tasks(&self) -> usize {
        self.tasks
    }

    /// `lo..hi`: the channels of `ch`'s window.
    fn window(&self, ch: usize) -> (usize, usize) {
        (ch.saturating_sub(self.size / 2), (ch + (self.size - 1) / 2 + 1).min(self.c))
    }
}

/// Zero floats before and after each padded channel column of the blocked path: at least the
/// window's reach on either side, so a window is one unaligned 16-lane load per tap with the
/// clipped channels reading zeros.
fn column_pad(size: usize) -> usize {
    super::view::pad16(size / 2)
}

/// `y = x * (k + f * s)^-beta` per lane, with `s` the window sums; also returns the scale.
#[inline(always)]
fn scale_pow<S: Simd>(s: S, sum: S::V, f: S::V, k: S::V, nb: S::V) -> (S::V, S::V) {
    let scale = s.add(k, s.mul(f, sum));
    (scale, vmath::exp(s, s.mul(nb, vmath::ln(s, scale))))
}

/// One task on `nChw16c` maps, vectorised over the 16 channels of a block: each pixel's column
/// of squares is copied into a zero-padded scratch column, so the window sum of a block is
/// `size` unaligned loads (channels past `c` and outside the tensor read zeros).
///
/// # Safety
/// As [`task`].
#[inline(always)]
unsafe fn task_blocked<S: Simd>(s: S, p: &LrnPlan, a: &LrnArgs, task: usize, scratch: *mut f32) {
    let pixels = p.h * p.w;
    let per = pixels.div_ceil(p.chunk);
    let (n, i) = (task / per, task % per);
    let (c16, pad) = (super::view::pad16(p.c), column_pad(p.size));
    let blocks = c16 / 16;
    let last = p.c - (blocks - 1) * 16;
    let (before, after) = (p.size / 2, (p.size - 1) / 2);
    let col = c16 + 2 * pad;
    // sq and u: padded columns; t: s^-beta per channel.
    let (sq, u, t) = (scratch, scratch.wrapping_add(col), scratch.wrapping_add(2 * col));
    let backward = !a.gy.is_null();
    let (f, k, nb) = (s.splat(p.alpha / p.size as f32), s.splat(p.k), s.splat(-p.beta));
    let factor = s.splat(2.0 * p.alpha * p.beta / p.size as f32);
    // SAFETY: the pads lie inside this thread's scratch (2 columns of `col` floats); nothing
    // else writes them, so they stay zero for the whole task.
    unsafe {
        for q in 0..pad {
            for base in [sq, u] {
                *base.add(q) = 0.0;
                *base.add(pad + c16 + q) = 0.0;
            }
        }
    }
    let lanes = |b: usize| if b + 1 == blocks { last } else { 16 };
    for px in i * p.chunk..((i + 1) * p.chunk).min(pixels) {
        let at = |b: usize| (b * pixels + px) * 16;
        // SAFETY: block b < blocks of pixel px of image n lies inside every operand (padding
        // lanes included, read with `load_n` so they count as zero); scratch offsets stay
        // inside the three columns.
        unsafe {
            let (x, y) = (a.x.add(n * a.x_bs), a.y.add(n * a.y_bs));
            for b in 0..blocks {
                let v = s.load_n(x.add(at(b)), lanes(b));
                s.store(sq.add(pad + 16 * b), s.mul(v, v));
            }
            for b in 0..blocks {
                let mut sum = s.zero();
                for d in 0..p.size {
                    sum = s.add(sum, s.load(sq.add(pad + 16 * b + d - before)));
                }
                let (scale, tv) = scale_pow(s, sum, f, k, nb);
                let xv = s.load_n(x.add(at(b)), lanes(b));
                if backward {
                    let g = s.load_n(a.gy.add(n * a.gy_bs + at(b)), lanes(b));
                    // u = g x s^(-beta-1)
                    s.store(u.add(pad + 16 * b), s.div(s.mul(s.mul(g, xv), tv), scale));
                    s.store(t.add(16 * b), tv);
                } else {
                    s.store(y.add(at(b)), s.mul(xv, tv));
                }
            }
            if backward {
                for b in 0..blocks {
                    // The channels whose window holds j: j - after ..= j + before.
                    let mut sum = s.zero();
                    for d in 0..p.size {
                        sum = s.add(sum, s.load(u.add(pad + 16 * b + d - after)));
                    }
                    let xv = s.load_n(x.add(at(b)), lanes(b));
                    let g = s.load_n(a.gy.add(n * a.gy_bs + at(b)), lanes(b));
                    let tv = s.load(t.add(16 * b));
                    s.store(y.add(at(b)), s.sub(s.mul(g, tv), s.mul(factor, s.mul(xv, sum))));
                }
            }
        }
    }
}

/// One task on `nchw` maps, vectorised over 16 pixels of a row-major plane: a channel's window
/// sum is `size` loads of neighbouring planes at the same pixels.
///
/// # Safety
/// As [`task`].
#[inline(always)]
unsafe fn task_planar<S: Simd>(s: S, p: &LrnPlan, a: &LrnArgs, task: usize, scratch: *mut f32) {
    let pixels = p.h * p.w;
    let per = pixels.div_ceil(p.chunk);
    let (n, i) = (task / per, task % per);
    // u and t: 16 pixels per channel.
    let (u, t) = (scratch, scratch.wrapping_add(16 * p.c));
    let backward = !a.gy.is_null();
    let (f, k, nb) = (s.splat(p.alpha / p.size as f32), s.splat(p.k), s.splat(-p.beta));
    let factor = s.splat(2.0 * p.alpha * p.beta / p.size as f32);
    let (start, end) = (i * p.chunk, ((i + 1) * p.chunk).min(pixels));
    let mut px = start;
    while px < end {
        let m = (end - px).min(16);
        // SAFETY: pixels px..px + m of every channel of image n lie inside every operand;
        // the scratch rows hold 16 floats for each of the c channels.
        unsafe {
            let plane = |base: *const f32, bs: usize, ch: usize| base.add(n * bs + ch * pixels + px);
            for ch in 0..p.c {
                let (lo, hi) = p.window(ch);
                let mut sum = s.zero();
                for j in lo..hi {
                    let v = s.load_n(plane(a.x, a.x_bs, j), m);
                    sum = s.add(sum, s.mul(v, v));
                }
                let (scale, tv) = scale_pow(s, sum, f, k, nb);
                let xv = s.load_n(plane(a.x, a.x_bs, ch), m);
                if backward {
                    let g = s.load_n(plane(a.gy, a.gy_bs, ch), m);
                    s.store(u.add(16 * ch), s.div(s.mul(s.mul(g, xv), tv), scale));
                    s.store(t.add(16 * ch), tv);
                } else {
                    s.store_n(a.y.add(n * a.y_bs + ch * pixels + px), m, s.mul(xv, tv));
                }
            }
            if backward {
                for j in 0..p.c {
                    let lo = j.saturating_sub((p.size - 1) / 2);
                    let hi = (j + p.size / 2 + 1).min(p.c);
                    let mut sum = s.zero();
                    for c in lo..hi {
                        sum = s.add(sum, s.load(u.add(16 * c)));
                    }
                    let xv = s.load_n(plane(a.x, a.x_bs, j), m);
                    let g = s.load_n(plane(a.gy, a.gy_bs, j), m);
                    let tv = s.load(t.add(16 * j));
                    let dx = s.sub(s.mul(g, tv), s.mul(factor, s.mul(xv, sum)));
                    s.store_n(a.y.add(n * a.y_bs + j * pixels + px), m, dx);
                }
            }
        }
        px += m;
    }
}

/// # Safety
/// As [`task`].
#[inline(always)]
unsafe fn task_generic<S: Simd>(s: S, p: &LrnPlan, a: &LrnArgs, task: usize, scratch: *mut f32) {
    // SAFETY: forwarded.
    unsafe {
        match p.layout {
            Layout::Nchw => task_planar(s, p, a, task, scratch),
            Layout::NChw16c => task_blocked(s, p, a, task, scratch),
        }
    }
}

isa_fn! {
    /// # Safety
    /// As [`task`]; `isa` supported.
    unsafe fn task_isa(p: &LrnPlan, a: &LrnArgs, task: usize, scratch: *mut f32) = task_generic;
}

/// Raw operands: image strides in floats; `gy` and `dx` for backward (null forward).
#[derive(Clone, Copy, Debug)]
#[repr(C)]
pub struct LrnArgs {
    pub x: *const f32,
    pub x_bs: usize,
    pub y: *mut f32,
    pub y_bs: usize,
    pub gy: *const f32,
    pub gy_bs: usize,
}

// SAFETY: plain pointers; tasks write their own pixels.
unsafe impl Sync for LrnArgs {}
// SAFETY: as above.
unsafe impl Send for LrnArgs {}

/// Runs task `task`: forward (`gy` null: `y` is the output) or backward (`y` is `dx`).
///
/// # Safety
/// `p` from [`LrnPlan::new`] on a CPU with its instruction set; the pointers valid for the
/// plan's images in its layout (padding lanes included), `y` apart from `x` and `gy`;
/// `scratch` valid for [`LrnPlan::scratch`] floats, used by no other running task.
pub unsafe fn task(p: &LrnPlan, a: &LrnArgs, task: usize, scratch: *mut f32) {
    // SAFETY: forwarded; the plan's instruction set is the CPU's (its contract).
    unsafe { task_isa(p.isa, p, a, task, scratch) }
}

fn run(
    par: &dyn Parallel,
    p: &LrnPlan,
    arena: &mut [f32],
    views: (View, View, Option<View>),
    scratch: &mut [f32],
) -> Result<(), KernelError> {
    let (x, y, gy) = views;
    let dims = [p.n, p.c, p.h, p.w];
    for (what, v) in [("input", Some(x)), ("output", Some(y)), ("output gradient", gy)] {
        if let Some(v) = v {
            v.check_in(what, arena.len())?;
            v.expect(what, dims, p.layout)?;
        }
    }
    match gy {
        Some(g) => check_apart(("input gradient", &y), &[("input", &x), ("output gradient", &g)])?,
        None => check_apart(("output", &y), &[("input", &x)])?,
    }
    check_min_len("scratch", scratch.len(), p.scratch_len(par.threads()))?;
    let base = arena.as_mut_ptr();
    let args = LrnArgs {
        x: base.wrapping_add(x.offset),
        x_bs: x.batch_stride,
        y: base.wrapping_add(y.offset),
        y_bs: y.batch_stride,
        gy: gy.map_or(core::ptr::null(), |g| base.wrapping_add(g.offset) as *const f32),
        gy_bs: gy.map_or(0, |g| g.batch_stride),
    };
    let sp = SyncPtr(scratch.as_mut_ptr());
    let per = p.scratch();
    par.run(p.tasks, &|t, thread| {
        // SAFETY: views checked above; each task writes its own pixels and uses its thread's
        // scratch.
        unsafe { task(p, &args, t, sp.get().wrapping_add(thread * per)) }
    });
    Ok(())
}

/// `y = lrn(x)`.
pub fn forward(
    par: &dyn Parallel,
    p: &LrnPlan,
    arena: &mut [f32],
    x: View,
    y: View,
    scratch: &mut [f32],
) -> Result<(), KernelError> {
    run(par, p, arena, (x, y, None), scratch)
}

/// `dx` from `x` and `gy`.
pub fn backward(
    par: &dyn Parallel,
    p: &LrnPlan,
    arena: &mut [f32],
    x: View,
    gy: View,
    dx: View,
    scratch: &mut [f32],
) -> Result<(), KernelError> {
    run(par, p, arena, (x, dx, Some(gy)), scratch)
}
