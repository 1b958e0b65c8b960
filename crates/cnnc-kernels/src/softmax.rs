//! Softmax over the channel (feature) axis of plain tensors `[N][C][S]` (`S = 1` for vectors),
//! its backward, and the fused softmax + cross-entropy of a classifier's logits: the loss (mean
//! over the batch of `logsumexp(x_n) - x_n[t_n]`) and `d logits = (softmax - onehot) / N` in
//! one pass. Stabilised by subtracting each row's maximum; `exp` is the crate's polynomial,
//! run over whole rows with the vector math when `S = 1`.

use super::error::{KernelError, check_len};
use super::par::{Parallel, SyncPtr};
use super::simd::{Cpu, Isa, Simd, isa_fn};
use super::vmath;

/// `v[i] = exp(v[i] - shift)` for `len` floats; returns their sum (f64).
///
/// # Safety
/// `v` valid for `len` floats.
#[inline(always)]
unsafe fn exp_sum_generic<S: Simd>(s: S, v: *mut f32, len: usize, shift: f32) -> f64 {
    let sh = s.splat(shift);
    let mut sum = 0.0f64;
    let mut i = 0;
    while i < len {
        let m = (len - i).min(16);
        // SAFETY: i + m <= len.
        unsafe {
            let e = vmath::exp(s, s.sub(s.load_n(v.add(i), m), sh));
            s.store_n(v.add(i), m, e);
            // Lanes past m are exp(0 - shift) garbage in `e`: sum only the stored ones.
            sum += s.v_to_array(e)[..m].iter().map(|&x| x as f64).sum::<f64>();
        }
        i += m;
    }
    sum
}

isa_fn! {
    /// # Safety
    /// `v` valid for `len` floats; `isa` supported.
    unsafe fn exp_sum(v: *mut f32, len: usize, shift: f32) -> f64 = exp_sum_generic;
}

/// The shape of a softmax: `n` rows of `c` classes, `s` positions each (`[N][C][S]`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(C)]
pub struct SoftmaxShape {
    pub n: usize,
    pub c: usize,
    pub s: usize,
}

impl SoftmaxShape {
    fn len(&self) -> Result<usize, KernelError> {
        if self.n == 0 || self.c == 0 || self.s == 0 {
            return Err(KernelError::Shape { what: "softmax sizes must be positive" });
        }
        super::error::product("softmax tensor", &[self.n, self.c, self.s])
    }
}

/// Softmax of row `(n, p)` (`x` and `y` may be the same memory).
///
/// # Safety
/// `x` and `y` valid for the shape's elements.
unsafe fn row(isa: Isa, sh: &SoftmaxShape, x: *const f32, y: *mut f32, n: usize, p: usize) {
    let at = |ch: usize| (n * sh.c + ch) * sh.s + p;
    // SAFETY (block): every index is an element of the shape.
    unsafe {
        let max = (0..sh.c).map(|ch| *x.add(at(ch))).fold(f32::NEG_INFINITY, f32::max);
        if sh.s == 1 {
            let r = y.add(n * sh.c);
            core::ptr::copy(x.add(n * sh.c), r, sh.c);
            let sum = exp_sum(isa, r, sh.c, max);
            let inv = (1.0 / sum) as f32;
            for ch in 0..sh.c {
                *r.add(ch) *= inv;
            }
        } else {
            let mut sum = 0.0f64;
            for ch in 0..sh.c {
                let e = vmath::scalar::exp(*x.add(at(ch)) - max);
                *y.add(at(ch)) = e;
                sum += e as f64;
            }
            let inv = (1.0 / sum) as f32;
            for ch in 0..sh.c {
                *y.add(at(ch)) *= inv;
            }
        }
    }
}

/// `y = softmax(x)` over the class axis; `y` may be `x` itself (same length).
pub fn forward(par: &dyn Parallel, cpu: Cpu, sh: SoftmaxShape, x: &[f32], y: &mut [f32]) -> Result<(), KernelError> {
    let len = sh.len()?;
    check_len("softmax input", x.len(), len)?;
    check_len("softmax output", y.len(), len)?;
    let (xp, yp) = (SyncPtr(x.as_ptr() as *mut f32), SyncPtr(y.as_mut_ptr()));
    par.run(sh.n, &|n, _| {
        for p in 0..sh.s {
            // SAFETY: lengths checked; each task owns its rows.
            unsafe { row(cpu.isa(), &sh, xp.get(), yp.get(), n, p) };
        }
    });
    Ok(())
}

/// In place: `xy = softmax(xy)`.
pub fn forward_in_place(par: &dyn Parallel, cpu: Cpu, sh: SoftmaxShape, xy: &mut [f32]) -> Result<(), KernelError> {
    let len = sh.len()?;
    check_len("softmax tensor", xy.len(), len)?;
    let p = SyncPtr(xy.as_mut_ptr());
    par.run(sh.n, &|n, _| {
        for q in 0..sh.s {
            // SAFETY: length checked; the row is read (max, exp) before each element is
            // rewritten; each task owns its rows.
            unsafe { row(cpu.isa(), &sh, p.get(), p.get(), n, q) };
        }
    });
    Ok(())
}

/// Softmax backward from the forward output `y`: `dx_c = y_c (g_c - sum_c' g_c' y_c')`; `dx`
/// may be `gy` (use [`backward_in_place`]).
pub fn backward(
    par: &dyn Parallel,
    sh: SoftmaxShape,
    y: &[f32],
    gy: &[f32],
    dx: &mut [f32],
) -> Result<(), KernelError> {
    let len = sh.len()?;
    check_len("softmax output", y.len(), len)?;
    check_len("softmax output gradient", gy.len(), len)?;
    check_len("softmax input gradient", dx.len(), len)?;
    let (gp, dp) = (SyncPtr(gy.as_ptr() as *mut f32), SyncPtr(dx.as_mut_ptr()));
    par.run(sh.n, &|n, _| {
        // SAFETY: lengths checked; each task owns its rows.
        unsafe { backward_rows(&sh, y, gp.get(), dp.get(), n) };
    });
    Ok(())
}

/// Softmax backward with the gradient overwritten by the input gradient.
pub fn backward_in_place(par: &dyn Parallel, sh: SoftmaxShape, y: &[f32], g: &mut [f32]) -> Result<(), KernelError> {
    let len = sh.len()?;
    check_len("softmax output", y.len(), len)?;
    check_len("softmax gradient", g.len(), len)?;
    let gp = SyncPtr(g.as_mut_ptr());
    par.run(sh.n, &|n, _| {
        // SAFETY: length checked; each element of a row is read (dot) before it is written.
        unsafe { backward_rows(&sh, y, gp.get(), gp.get(), n) };
    });
    Ok(())
}

/// # Safety
/// `gy`, `dx` valid for the shape (may be equal).
unsafe fn backward_rows(sh: &SoftmaxShape, y: &[f32], gy: *const f32, dx: *mut f32, n: usize) {
    for p in 0..sh.s {
        let at = |ch: usize| (n * sh.c + ch) * sh.s + p;
        // SAFETY: indices are elements of the shape.
        unsafe {
            let dot: f64 = (0..sh.c).map(|ch| *gy.add(at(ch)) as f64 * y[at(ch)] as f64).sum();
            for ch in 0..sh.c {
                *dx.add(at(ch)) = y[at(ch)] * (*gy.add(at(ch)) - dot as f32);
            }
        }
    }
}

/// Fused softmax + cross-entropy on `n x c` logits with class targets: returns the mean loss
/// and writes `(softmax - onehot) / n` into `grad` (which may not alias the logits: use a
/// separate buffer, or pass the logits' copy). Targets must be below `c`.
pub fn cross_entropy(
    cpu: Cpu,
    n: usize,
    c: usize,
    logits: &[f32],
    targets: &[u32],
    grad: &mut [f32],
) -> Result<f32, KernelError> {
    let len = SoftmaxShape { n, c, s: 1 }.len()?;
    check_len("logits", logits.len(), len)?;
    check_len("targets", targets.len(), n)?;
    check_len("logit gradient", grad.len(), len)?;
    if targets.iter().any(|&t| t as usize >= c) {
        return Err(KernelError::Shape { what: "a target class is out of range" });
    }
    let mut total = 0.0f64;
    for b in 0..n {
        let row = &logits[b * c..][..c];
        let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let out = &mut grad[b * c..][..c];
        out.copy_from_slice(row);
        // SAFETY: out holds c floats; the instruction set comes from a Cpu token.
        let sum = unsafe { exp_sum(cpu.isa(), out.as_mut_ptr(), c, max) };
        let t = targets[b] as usize;
        total += max as f64 + vmath::scalar::ln(sum as f32) as f64 - row[t] as f64;
        let scale = (1.0 / (sum * n as f64)) as f32;
        for v in out.iter_mut() {
            *v *= scale;
        }
        out[t] -= 1.0 / n as f32;
    }
    Ok((total / n as f64) as f32)
}
