//! Local response normalisation across channels (PyTorch's and Caffe's):
//! `y[c] = x[c] * s[c]^-beta`, `s[c] = k + alpha / size * sum of x[c']^2 over
//! `c' in c - size/2 ..= c + (size-1)/2` (clipped), and its backward
//! `dx[j] = g[j] s[j]^-beta - 2 alpha beta / size * x[j] * sum over c whose window holds j of
//! g[c] x[c] s[c]^(-beta-1)`, on `nchw` or `nChw16c` maps.
//!
//! Each pixel's channel column is gathered into per-thread scratch (the window runs across
//! channel blocks), its scales computed there and `s^-beta` evaluated as `exp(-beta ln s)` with
//! the vector math over the whole column. Tasks are ranges of pixels of one image.

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

    /// Scratch floats per thread: four channel columns.
    pub fn scratch(&self) -> usize {
        4 * super::view::pad16(self.c)
    }
    pub fn scratch_len(&self, threads: usize) -> usize {
        self.scratch() * threads
    }
    pub fn tasks(&self) -> usize {
        self.tasks
    }

    fn at(&self, ch: usize, p: usize) -> usize {
        let hw = self.h * self.w;
        match self.layout {
            Layout::Nchw => ch * hw + p,
            Layout::NChw16c => ((ch / 16) * hw + p) * 16 + ch % 16,
        }
    }

    /// `lo..hi`: the channels of `ch`'s window.
    fn window(&self, ch: usize) -> (usize, usize) {
        (ch.saturating_sub(self.size / 2), (ch + (self.size - 1) / 2 + 1).min(self.c))
    }
}

/// `v[i] = v[i]^-beta` for `len` floats (all positive).
///
/// # Safety
/// `v` valid for `len` floats.
#[inline(always)]
unsafe fn pow_neg_generic<S: Simd>(s: S, v: *mut f32, len: usize, beta: f32) {
    let nb = s.splat(-beta);
    let mut i = 0;
    while i < len {
        let m = (len - i).min(16);
        // SAFETY: i + m <= len.
        unsafe {
            let x = s.load_n(v.add(i), m);
            s.store_n(v.add(i), m, vmath::exp(s, s.mul(nb, vmath::ln(s, x))));
        }
        i += m;
    }
}

isa_fn! {
    /// # Safety
    /// `v` valid for `len` floats; `isa` supported.
    unsafe fn pow_neg(v: *mut f32, len: usize, beta: f32) = pow_neg_generic;
}

/// Fills `scale[..c]` with `k + alpha / size * window sum of col^2` and `t[..c]` with
/// `scale^-beta`.
///
/// # Safety
/// `col`, `scale`, `t` valid for `c` floats.
unsafe fn scales(p: &LrnPlan, col: *const f32, scale: *mut f32, t: *mut f32) {
    let f = p.alpha / p.size as f32;
    for ch in 0..p.c {
        let (lo, hi) = p.window(ch);
        // SAFETY: lo..hi within 0..c.
        unsafe {
            let sum: f32 = (lo..hi).map(|j| *col.add(j) * *col.add(j)).sum();
            *scale.add(ch) = p.k + f * sum;
            *t.add(ch) = *scale.add(ch);
        }
    }
    // SAFETY: t holds c floats.
    unsafe { pow_neg(p.isa, t, p.c, p.beta) };
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
    let pixels = p.h * p.w;
    let per = pixels.div_ceil(p.chunk);
    let (n, i) = (task / per, task % per);
    let c16 = super::view::pad16(p.c);
    let (col, scale, t, g) =
        (scratch, scratch.wrapping_add(c16), scratch.wrapping_add(2 * c16), scratch.wrapping_add(3 * c16));
    let backward = !a.gy.is_null();
    let factor = 2.0 * p.alpha * p.beta / p.size as f32;
    for px in i * p.chunk..((i + 1) * p.chunk).min(pixels) {
        // SAFETY: channel ch < c of pixel px of image n is inside every operand; the columns
        // hold c16 floats each.
        unsafe {
            for ch in 0..p.c {
                *col.add(ch) = *a.x.add(n * a.x_bs + p.at(ch, px));
                if backward {
                    *g.add(ch) = *a.gy.add(n * a.gy_bs + p.at(ch, px));
                }
            }
            scales(p, col, scale, t);
            if backward {
                // u[c] = g[c] x[c] s[c]^(-beta-1), kept in `scale`.
                for ch in 0..p.c {
                    *scale.add(ch) = *g.add(ch) * *col.add(ch) * *t.add(ch) / *scale.add(ch);
                }
            }
            for j in 0..p.c {
                let v = if backward {
                    // The channels c whose window holds j.
                    let lo = j.saturating_sub((p.size - 1) / 2);
                    let hi = (j + p.size / 2 + 1).min(p.c);
                    let sum: f32 = (lo..hi).map(|c| *scale.add(c)).sum();
                    *g.add(j) * *t.add(j) - factor * *col.add(j) * sum
                } else {
                    *col.add(j) * *t.add(j)
                };
                *a.y.add(n * a.y_bs + p.at(j, px)) = v;
            }
            if p.layout == Layout::NChw16c {
                for ch in p.c..c16 {
                    *a.y.add(n * a.y_bs + p.at(ch, px)) = 0.0;
                }
            }
        }
    }
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
