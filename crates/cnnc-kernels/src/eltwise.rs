//! Elementwise kernels on views of an arena, each allowing its output to be one of its inputs
//! (same view: in place): activation forward, activation backward (from the forward input or,
//! for ReLU, sigmoid and tanh, the output; the ReLU mask of a fused conv + ReLU is this with
//! `y`), the sum of tensors (a residual add), PReLU forward and backward, and a copy (a
//! concatenation's operand into its slice).
//!
//! Views of one image are processed as their stored floats (padding lanes of blocked maps
//! included: finite in, finite out), except where the channel matters (PReLU).

use super::act::{self, Act};
use super::error::{KernelError, check_len};
use super::par::{Parallel, SyncPtr};
use super::simd::{Cpu, Simd, isa_fn};
use super::view::{Layout, View, check_same_or_apart};

/// Floats per task: long enough to amortise a dispatch, short enough to balance.
const CHUNK: usize = 1 << 15;

/// Checks that all views have `first`'s dimensions and layout and lie in the arena; the
/// output (`views[0]`) may equal any input or must be apart from it.
fn check_all(len: usize, views: &[(&'static str, &View)]) -> Result<(), KernelError> {
    let first = views[0].1;
    for (what, v) in views {
        v.check_in(what, len)?;
        v.expect(what, [first.n, first.c, first.h, first.w], first.layout)?;
    }
    for other in &views[1..] {
        check_same_or_apart(views[0], *other)?;
    }
    Ok(())
}

/// Runs `f(image, start, len)` over chunks of every image's stored floats.
fn chunks(par: &dyn Parallel, v: &View, f: &(dyn Fn(usize, usize, usize) + Sync)) {
    let image = v.image_len().unwrap_or(0);
    let per = image.div_ceil(CHUNK).max(1);
    par.run(v.n * per, &|t, _| {
        let (n, c) = (t / per, t % per);
        let start = c * CHUNK;
        f(n, start, CHUNK.min(image - start));
    });
}

/// `y = act(x)`; `y` may be `x`.
pub fn activation(
    par: &dyn Parallel,
    cpu: Cpu,
    arena: &mut [f32],
    act: Act,
    x: View,
    y: View,
) -> Result<(), KernelError> {
    if !act.is_valid() {
        return Err(KernelError::Shape { what: "activation parameters" });
    }
    check_all(arena.len(), &[("output", &y), ("input", &x)])?;
    let base = SyncPtr(arena.as_mut_ptr());
    chunks(par, &x, &|n, start, len| {
        let b = base.get();
        let (src, dst) = (
            b.wrapping_add(x.offset + n * x.batch_stride + start),
            b.wrapping_add(y.offset + n * y.batch_stride + start),
        );
        // SAFETY: both ranges are inside their (checked) views; equal or apart; each task its
        // own chunk.
        unsafe {
            if src != dst {
                core::ptr::copy_nonoverlapping(src, dst, len);
            }
            act::apply_in_place(cpu.isa(), dst, len, &act);
        }
    });
    Ok(())
}

/// `dx = gy * act'(src)`, `src` the forward input, or the output when `from_output` (only
/// for activations whose derivative the output gives). `dx` may be `gy` or `src`.
#[allow(clippy::too_many_arguments)]
pub fn activation_backward(
    par: &dyn Parallel,
    cpu: Cpu,
    arena: &mut [f32],
    act: Act,
    from_output: bool,
    src: View,
    gy: View,
    dx: View,
) -> Result<(), KernelError> {
    if from_output && !act.grad_from_output() {
        return Err(KernelError::Unsupported { what: "this activation's derivative needs the input, not the output" });
    }
    if !act.is_valid() {
        return Err(KernelError::Shape { what: "activation parameters" });
    }
    check_all(arena.len(), &[("input gradient", &dx), ("forward value", &src), ("output gradient", &gy)])?;
    let base = SyncPtr(arena.as_mut_ptr());
    chunks(par, &dx, &|n, start, len| {
        let b = base.get();
        let at = |v: &View| b.wrapping_add(v.offset + n * v.batch_stride + start);
        // SAFETY: ranges inside their views; dx equal to or apart from each input.
        unsafe { act::backward_raw(cpu.isa(), at(&src), at(&gy), at(&dx), len, &act, from_output) };
    });
    Ok(())
}

/// `y = a + b`; `y` may be `a` or `b`.
pub fn add(par: &dyn Parallel, cpu: Cpu, arena: &mut [f32], a: View, b: View, y: View) -> Result<(), KernelError> {
    check_all(arena.len(), &[("output", &y), ("first operand", &a), ("second operand", &b)])?;
    let base = SyncPtr(arena.as_mut_ptr());
    chunks(par, &y, &|n, start, len| {
        let p = base.get();
        let at = |v: &View| p.wrapping_add(v.offset + n * v.batch_stride + start);
        // SAFETY: ranges inside their views; y equal to or apart from each operand.
        unsafe { add_raw(cpu.isa(), at(&a), at(&b), at(&y), len) };
    });
    Ok(())
}

/// # Safety
/// `a`, `b` readable, `y` writable for `len` floats; `y` equal to or apart from each.
#[inline(always)]
unsafe fn add_generic<S: Simd>(s: S, a: *const f32, b: *const f32, y: *mut f32, len: usize) {
    let mut i = 0;
    while i < len {
        let m = (len - i).min(16);
        // SAFETY: i + m <= len.
        unsafe { s.store_n(y.add(i), m, s.add(s.load_n(a.add(i), m), s.load_n(b.add(i), m))) };
        i += m;
    }
}

isa_fn! {
    /// `y[i] = a[i] + b[i]` for `len` floats.
    ///
    /// # Safety
    /// As `add_generic`; `isa` supported.
    pub unsafe fn add_raw(a: *const f32, b: *const f32, y: *mut f32, len: usize) = add_generic;
}

/// The channel of stored float `i` of an image of `v`, or `None` for a padding lane.
fn channel(v: &View, i: usize) -> Option<usize> {
    let hw = v.h * v.w;
    let ch = match v.layout {
        Layout::Nchw => i / hw,
        Layout::NChw16c => (i / (hw * 16)) * 16 + i % 16,
    };
    (ch < v.c).then_some(ch)
}

/// PReLU: `y = x > 0 ? x : slope[c] * x` (`slope` of `c` floats); `y` may be `x`.
pub fn prelu(par: &dyn Parallel, arena: &mut [f32], slope: &[f32], x: View, y: View) -> Result<(), KernelError> {
    check_all(arena.len(), &[("output", &y), ("input", &x)])?;
    check_len("prelu slope", slope.len(), x.c)?;
    let base = SyncPtr(arena.as_mut_ptr());
    chunks(par, &x, &|n, start, len| {
        let b = base.get();
        for i in start..start + len {
            let s = channel(&x, i).map_or(0.0, |c| slope[c]);
            // SAFETY: i is a stored float of image n of both views.
            unsafe {
                let v = *b.add(x.offset + n * x.batch_stride + i);
                *b.add(y.offset + n * y.batch_stride + i) = if v > 0.0 { v } else { s * v };
            }
        }
    });
    Ok(())
}

/// PReLU backward: `dx` (may be `gy`) and `dslope[c] = sum of x * gy where x <= 0`.
pub fn prelu_backward(
    arena: &mut [f32],
    slope: &[f32],
    x: View,
    gy: View,
    dx: View,
    dslope: &mut [f32],
) -> Result<(), KernelError> {
    check_all(arena.len(), &[("input gradient", &dx), ("input", &x), ("output gradient", &gy)])?;
    check_len("prelu slope", slope.len(), x.c)?;
    check_len("prelu slope gradient", dslope.len(), x.c)?;
    dslope.fill(0.0);
    let image = x.image_len().unwrap_or(0);
    for n in 0..x.n {
        for i in 0..image {
            let (xv, g) = (arena[x.offset + n * x.batch_stride + i], arena[gy.offset + n * gy.batch_stride + i]);
            let ch = channel(&x, i);
            let d = if xv > 0.0 {
                g
            } else {
                if let Some(c) = ch {
                    dslope[c] += xv * g;
                }
                ch.map_or(0.0, |c| slope[c]) * g
            };
            arena[dx.offset + n * dx.batch_stride + i] = d;
        }
    }
    Ok(())
}

/// Copies `src` into `dst` (same dimensions and layout), e.g. an operand into its slice of a
/// concatenation buffer.
pub fn copy(par: &dyn Parallel, arena: &mut [f32], src: View, dst: View) -> Result<(), KernelError> {
    check_all(arena.len(), &[("destination", &dst), ("source", &src)])?;
    let base = SyncPtr(arena.as_mut_ptr());
    chunks(par, &src, &|n, start, len| {
        let b = base.get();
        // SAFETY: both ranges inside their views; equal (no-op copy) or apart.
        unsafe {
            core::ptr::copy(
                b.add(src.offset + n * src.batch_stride + start),
                b.add(dst.offset + n * dst.batch_stride + start),
                len,
            )
        };
    });
    Ok(())
}
