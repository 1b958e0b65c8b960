//! Batch normalisation on `nchw` or `nChw16c` maps (and `[N][F]` vectors as `F x 1 x 1`):
//! training statistics (per-channel mean and biased variance over N, H, W, two passes), the
//! running-statistics update, the per-channel affine `y = x * scale + shift` (in place allowed)
//! with `scale`, `shift` from gamma, beta, mean, variance, and the backward passes (training:
//! through the batch statistics; inference: the affine map), as the interpreter's
//! `ops/norm.rs`.
//!
//! Work is split by channel blocks of 16 (all images and pixels of a block in one task), so
//! every reduction is one task's; blocked maps use one vector per pixel, plain maps scalars.
//! Channel vectors are `c` floats; padding lanes of a blocked result are written as zeros.

use super::error::{KernelError, check_len};
use super::fmath::sqrt64;
use super::par::{Parallel, SyncPtr};
use super::view::{Layout, View, check_same_or_apart};

/// The geometry all batch-norm kernels share: `n` images of `c` channels of `hw` pixels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(C)]
pub struct BnShape {
    pub n: usize,
    pub c: usize,
    pub hw: usize,
    pub layout: Layout,
}

impl BnShape {
    /// The shape of a view (its `h x w` pixels).
    pub fn of(v: &View) -> BnShape {
        BnShape { n: v.n, c: v.c, hw: v.h * v.w, layout: v.layout }
    }

    /// Tasks: one per block of 16 channels.
    pub fn tasks(&self) -> usize {
        self.c.div_ceil(16)
    }

    /// Offset (within image `n`'s storage) of channel `ch`, pixel `p`.
    fn at(&self, ch: usize, p: usize) -> usize {
        match self.layout {
            Layout::Nchw => ch * self.hw + p,
            Layout::NChw16c => ((ch / 16) * self.hw + p) * 16 + ch % 16,
        }
    }

    fn count(&self) -> f64 {
        (self.n * self.hw) as f64
    }
}

/// Calls `f(image, channel, offset within the image)` for every element of the real channels
/// of block `blk`, in memory order.
fn each(s: &BnShape, blk: usize, mut f: impl FnMut(usize, usize, usize)) {
    let hi = (blk * 16 + 16).min(s.c);
    for n in 0..s.n {
        match s.layout {
            Layout::Nchw => {
                for ch in blk * 16..hi {
                    for p in 0..s.hw {
                        f(n, ch, s.at(ch, p));
                    }
                }
            }
            Layout::NChw16c => {
                for p in 0..s.hw {
                    for ch in blk * 16..hi {
                        f(n, ch, s.at(ch, p));
                    }
                }
            }
        }
    }
}

/// An operand of a view: element `(image, offset)` at `base + offset + image * batch_stride`.
#[derive(Clone, Copy)]
struct Operand {
    base: *mut f32,
    bs: usize,
}

impl Operand {
    fn of(arena: *mut f32, v: &View) -> Operand {
        Operand { base: arena.wrapping_add(v.offset), bs: v.batch_stride }
    }

    /// # Safety
    /// `(n, w)` must be an element of the (checked) view.
    unsafe fn get(&self, n: usize, w: usize) -> f32 {
        // SAFETY: the caller's element is inside the view, which is inside the arena.
        unsafe { *self.base.add(n * self.bs + w) }
    }

    /// # Safety
    /// As [`Operand::get`]; no other running task writes the element.
    unsafe fn set(&self, n: usize, w: usize, v: f32) {
        // SAFETY: as above.
        unsafe { *self.base.add(n * self.bs + w) = v }
    }
}

/// Zeroes the padding lanes of block `blk` (blocked layout).
///
/// # Safety
/// `y` valid for the images of `s` at stride `bs`.
unsafe fn zero_pad_lanes(s: &BnShape, y: *mut f32, bs: usize, blk: usize) {
    if s.layout != Layout::NChw16c || blk * 16 + 16 <= s.c {
        return;
    }
    for n in 0..s.n {
        for p in 0..s.hw {
            for l in s.c % 16..16 {
                // SAFETY: a padding lane of pixel p of the last block.
                unsafe { *y.add(n * bs + (blk * s.hw + p) * 16 + l) = 0.0 };
            }
        }
    }
}

/// Checks `v` against `s` inside an arena of `len`.
fn check(what: &'static str, v: &View, s: &BnShape, len: usize) -> Result<(), KernelError> {
    v.check_in(what, len)?;
    if BnShape::of(v) != *s {
        return Err(KernelError::View { what });
    }
    Ok(())
}

/// Per-channel mean and biased variance of `x` over images and pixels, into `mean` and `var`
/// (`c` floats each); sums in f64.
pub fn stats(par: &dyn Parallel, arena: &[f32], x: View, mean: &mut [f32], var: &mut [f32]) -> Result<(), KernelError> {
    let s = BnShape::of(&x);
    check("input", &x, &s, arena.len())?;
    check_len("mean", mean.len(), s.c)?;
    check_len("variance", var.len(), s.c)?;
    let xs = &arena[x.offset..];
    let (mp, vp) = (SyncPtr(mean.as_mut_ptr()), SyncPtr(var.as_mut_ptr()));
    par.run(s.tasks(), &|blk, _| {
        let at = |n: usize, w: usize| xs[n * x.batch_stride + w] as f64;
        let mut sum = [0.0f64; 16];
        each(&s, blk, |n, ch, w| sum[ch % 16] += at(n, w));
        let m: [f64; 16] = core::array::from_fn(|l| sum[l] / s.count());
        let mut sq = [0.0f64; 16];
        each(&s, blk, |n, ch, w| {
            let d = at(n, w) - m[ch % 16];
            sq[ch % 16] += d * d;
        });
        for ch in blk * 16..(blk * 16 + 16).min(s.c) {
            // SAFETY: ch < c; block blk's channels are this task's alone.
            unsafe {
                *mp.get().add(ch) = m[ch % 16] as f32;
                *vp.get().add(ch) = (sq[ch % 16] / s.count()) as f32;
            }
        }
    });
    Ok(())
}

/// The running statistics after a training step (PyTorch's rule): `new = (1 - momentum) old +
/// momentum batch`, the batch variance made unbiased (`var * m / (m - 1)`, `m` values per
/// channel, which must be at least 2).
pub fn update_running(
    running_mean: &mut [f32],
    running_var: &mut [f32],
    mean: &[f32],
    var: &[f32],
    momentum: f32,
    values: usize,
) -> Result<(), KernelError> {
    let c = running_mean.len();
    check_len("running variance", running_var.len(), c)?;
    check_len("mean", mean.len(), c)?;
    check_len("variance", var.len(), c)?;
    if values < 2 {
        return Err(KernelError::Shape { what: "batch norm needs at least 2 values per channel" });
    }
    let unbias = values as f64 / (values as f64 - 1.0);
    let m = momentum as f64;
    for ch in 0..c {
        running_mean[ch] = ((1.0 - m) * running_mean[ch] as f64 + m * mean[ch] as f64) as f32;
        running_var[ch] = ((1.0 - m) * running_var[ch] as f64 + m * var[ch] as f64 * unbias) as f32;
    }
    Ok(())
}

/// `scale = gamma / sqrt(var + eps)`, `shift = beta - mean * scale` (computed in f64).
pub fn affine(
    gamma: &[f32],
    beta: &[f32],
    mean: &[f32],
    var: &[f32],
    eps: f32,
    scale: &mut [f32],
    shift: &mut [f32],
) -> Result<(), KernelError> {
    let c = gamma.len();
    for (what, l) in [
        ("beta", beta.len()),
        ("mean", mean.len()),
        ("variance", var.len()),
        ("scale", scale.len()),
        ("shift", shift.len()),
    ] {
        check_len(what, l, c)?;
    }
    for ch in 0..c {
        let inv = 1.0 / sqrt64(var[ch] as f64 + eps as f64);
        scale[ch] = (gamma[ch] as f64 * inv) as f32;
        shift[ch] = (beta[ch] as f64 - mean[ch] as f64 * gamma[ch] as f64 * inv) as f32;
    }
    Ok(())
}

/// `y = x * scale[c] + shift[c]`; `y` may be `x` itself.
pub fn apply(
    par: &dyn Parallel,
    arena: &mut [f32],
    x: View,
    y: View,
    scale: &[f32],
    shift: &[f32],
) -> Result<(), KernelError> {
    let s = BnShape::of(&x);
    check("input", &x, &s, arena.len())?;
    check("output", &y, &s, arena.len())?;
    check_same_or_apart(("output", &y), ("input", &x))?;
    check_len("scale", scale.len(), s.c)?;
    check_len("shift", shift.len(), s.c)?;
    let base = SyncPtr(arena.as_mut_ptr());
    par.run(s.tasks(), &|blk, _| {
        let (xo, yo) = (Operand::of(base.get(), &x), Operand::of(base.get(), &y));
        each(&s, blk, |n, ch, w| {
            // SAFETY: (n, w) is an element of both views (same shape and layout); block blk
            // is this task's; with y == x each element is read before it is written.
            unsafe { yo.set(n, w, xo.get(n, w) * scale[ch] + shift[ch]) };
        });
        // SAFETY: y's images.
        unsafe { zero_pad_lanes(&s, yo.base, yo.bs, blk) };
    });
    Ok(())
}

/// Gradients of training-mode batch norm for output gradient `gy`: `dx` (may be `gy`'s memory),
/// `dgamma`, `dbeta`, with the batch statistics of `x` recomputed in f64.
#[allow(clippy::too_many_arguments)]
pub fn backward_training(
    par: &dyn Parallel,
    arena: &mut [f32],
    x: View,
    gy: View,
    dx: View,
    gamma: &[f32],
    eps: f32,
    dgamma: &mut [f32],
    dbeta: &mut [f32],
) -> Result<(), KernelError> {
    backward(par, arena, x, gy, dx, gamma, eps, None, dgamma, dbeta)
}

/// Gradients of inference-mode batch norm (the running statistics are constants).
#[allow(clippy::too_many_arguments)]
pub fn backward_inference(
    par: &dyn Parallel,
    arena: &mut [f32],
    x: View,
    gy: View,
    dx: View,
    gamma: &[f32],
    eps: f32,
    running: (&[f32], &[f32]),
    dgamma: &mut [f32],
    dbeta: &mut [f32],
) -> Result<(), KernelError> {
    backward(par, arena, x, gy, dx, gamma, eps, Some(running), dgamma, dbeta)
}

#[allow(clippy::too_many_arguments)]
fn backward(
    par: &dyn Parallel,
    arena: &mut [f32],
    x: View,
    gy: View,
    dx: View,
    gamma: &[f32],
    eps: f32,
    running: Option<(&[f32], &[f32])>,
    dgamma: &mut [f32],
    dbeta: &mut [f32],
) -> Result<(), KernelError> {
    let s = BnShape::of(&x);
    for (what, v) in [("input", &x), ("output gradient", &gy), ("input gradient", &dx)] {
        check(what, v, &s, arena.len())?;
    }
    check_same_or_apart(("input gradient", &dx), ("output gradient", &gy))?;
    super::view::check_apart(("input gradient", &dx), &[("input", &x)])?;
    for (what, l) in [("gamma", gamma.len()), ("dgamma", dgamma.len()), ("dbeta", dbeta.len())] {
        check_len(what, l, s.c)?;
    }
    if let Some((m, v)) = running {
        check_len("running mean", m.len(), s.c)?;
        check_len("running variance", v.len(), s.c)?;
    }
    let base = SyncPtr(arena.as_mut_ptr());
    let (dgp, dbp) = (SyncPtr(dgamma.as_mut_ptr()), SyncPtr(dbeta.as_mut_ptr()));
    par.run(s.tasks(), &|blk, _| {
        let (xo, go, dp) = (Operand::of(base.get(), &x), Operand::of(base.get(), &gy), Operand::of(base.get(), &dx));
        // SAFETY (the closures below): every (n, w) comes from `each` over the shape the three
        // views share.
        let xv = |n: usize, w: usize| unsafe { xo.get(n, w) } as f64;
        let gv = |n: usize, w: usize| unsafe { go.get(n, w) } as f64;
        let (mut mean, mut inv) = ([0.0f64; 16], [0.0f64; 16]);
        match running {
            Some((m, v)) => {
                for ch in blk * 16..(blk * 16 + 16).min(s.c) {
                    mean[ch % 16] = m[ch] as f64;
                    inv[ch % 16] = 1.0 / sqrt64(v[ch] as f64 + eps as f64);
                }
            }
            None => {
                let mut sum = [0.0f64; 16];
                each(&s, blk, |n, ch, w| sum[ch % 16] += xv(n, w));
                mean = core::array::from_fn(|l| sum[l] / s.count());
                let mut sq = [0.0f64; 16];
                each(&s, blk, |n, ch, w| {
                    let d = xv(n, w) - mean[ch % 16];
                    sq[ch % 16] += d * d;
                });
                inv = core::array::from_fn(|l| 1.0 / sqrt64(sq[l] / s.count() + eps as f64));
            }
        }
        let (mut sg, mut sgx) = ([0.0f64; 16], [0.0f64; 16]);
        each(&s, blk, |n, ch, w| {
            let l = ch % 16;
            sg[l] += gv(n, w);
            sgx[l] += gv(n, w) * (xv(n, w) - mean[l]) * inv[l];
        });
        let m = s.count();
        each(&s, blk, |n, ch, w| {
            let l = ch % 16;
            let gm = gamma[ch] as f64 * inv[l];
            let v = match running {
                Some(_) => gv(n, w) * gm,
                None => {
                    let xhat = (xv(n, w) - mean[l]) * inv[l];
                    gm / m * (m * gv(n, w) - sg[l] - xhat * sgx[l])
                }
            };
            // SAFETY: as above; dx may be gy's memory: this element of gy was read above.
            unsafe { dp.set(n, w, v as f32) };
        });
        // SAFETY: dx's images.
        unsafe { zero_pad_lanes(&s, dp.base, dp.bs, blk) };
        for ch in blk * 16..(blk * 16 + 16).min(s.c) {
            // SAFETY: ch < c, this task's channels.
            unsafe {
                *dgp.get().add(ch) = sgx[ch % 16] as f32;
                *dbp.get().add(ch) = sg[ch % 16] as f32;
            }
        }
    });
    Ok(())
}
