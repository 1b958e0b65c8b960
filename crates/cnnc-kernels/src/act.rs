//! Activations: the descriptor the kernels take ([`Act`]), their values and derivatives on
//! vectors, and the elementwise kernels (forward, backward from the input or the output,
//! PReLU), all with the formulas of the reference interpreter (`cnnc-interp`'s `ops/act.rs`).
//!
//! Values at the edges follow the interpreter too: ReLU of NaN is 0 (it tests `x > 0`), the
//! derivative at a kink is PyTorch's (ReLU'(0) = 0, LeakyReLU'(0) = slope, HardTanh' = 0 at the
//! bounds).

use super::simd::{Simd, isa_fn};
use super::vmath;

/// SELU's `alpha` (PyTorch's, rounded to f32).
pub const SELU_ALPHA: f32 = 1.673_263_2;
/// SELU's `scale` (PyTorch's, rounded to f32).
pub const SELU_SCALE: f32 = 1.050_701;

/// Which activation; the parameters live in [`Act`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum ActKind {
    /// The identity (no activation).
    None = 0,
    Relu = 1,
    /// `x > 0 ? x : a * x` (`a` the slope).
    LeakyRelu = 2,
    /// `x > 0 ? x : a * (e^x - 1)` (`a` = alpha).
    Elu = 3,
    Selu = 4,
    Sigmoid = 5,
    Tanh = 6,
    /// `clamp(x, a, b)`.
    HardTanh = 7,
    /// `x / (1 + |x|)`.
    Softsign = 8,
    /// `a * x > b ? x : ln(1 + e^(a x)) / a` (`a` = beta, `b` = threshold).
    Softplus = 9,
}

/// An activation with its parameters (`a`, `b`: see [`ActKind`]; unused ones are 0).
#[derive(Clone, Copy, Debug, PartialEq)]
#[repr(C)]
pub struct Act {
    pub kind: ActKind,
    pub a: f32,
    pub b: f32,
}

impl Act {
    pub const NONE: Act = Act { kind: ActKind::None, a: 0.0, b: 0.0 };
    pub const RELU: Act = Act { kind: ActKind::Relu, a: 0.0, b: 0.0 };

    pub fn new(kind: ActKind) -> Act {
        Act { kind, a: 0.0, b: 0.0 }
    }
    pub fn leaky_relu(slope: f32) -> Act {
        Act { kind: ActKind::LeakyRelu, a: slope, b: 0.0 }
    }
    pub fn elu(alpha: f32) -> Act {
        Act { kind: ActKind::Elu, a: alpha, b: 0.0 }
    }
    pub fn hardtanh(min: f32, max: f32) -> Act {
        Act { kind: ActKind::HardTanh, a: min, b: max }
    }
    pub fn softplus(beta: f32, threshold: f32) -> Act {
        Act { kind: ActKind::Softplus, a: beta, b: threshold }
    }

    /// Whether the activation is piecewise linear (cheap enough to apply to every vector of a
    /// tile in registers; the others run over the stored tile while it is in L1).
    pub fn is_cheap(&self) -> bool {
        match self.kind {
            ActKind::None | ActKind::Relu | ActKind::LeakyRelu | ActKind::HardTanh => true,
            ActKind::Elu | ActKind::Selu | ActKind::Sigmoid | ActKind::Tanh | ActKind::Softsign | ActKind::Softplus => {
                false
            }
        }
    }

    /// Whether the derivative is a function of the output alone (ReLU, sigmoid, tanh, none),
    /// so that the backward pass needs only the forward output.
    pub fn grad_from_output(&self) -> bool {
        match self.kind {
            ActKind::None | ActKind::Relu | ActKind::Sigmoid | ActKind::Tanh => true,
            ActKind::LeakyRelu
            | ActKind::Elu
            | ActKind::Selu
            | ActKind::HardTanh
            | ActKind::Softsign
            | ActKind::Softplus => false,
        }
    }

    /// Whether the parameters are usable (finite; a softplus beta other than 0).
    pub fn is_valid(&self) -> bool {
        let finite = self.a.is_finite() && self.b.is_finite();
        match self.kind {
            ActKind::Softplus => finite && self.a != 0.0,
            ActKind::HardTanh => finite && self.a <= self.b,
            _ => finite,
        }
    }
}

/// The activation of `x`.
#[inline(always)]
pub fn forward<S: Simd>(s: S, act: &Act, x: S::V) -> S::V {
    let zero = s.zero();
    let positive = s.lt(zero, x);
    match act.kind {
        ActKind::None => x,
        // max(x, 0) returns 0 for NaN, as the interpreter's `x > 0 ? x : 0`.
        ActKind::Relu => s.max(x, zero),
        ActKind::LeakyRelu => s.select(positive, x, s.mul(s.splat(act.a), x)),
        ActKind::Elu => s.select(positive, x, s.mul(s.splat(act.a), vmath::expm1(s, x))),
        ActKind::Selu => {
            let neg = s.mul(s.splat(SELU_ALPHA), vmath::expm1(s, x));
            s.mul(s.splat(SELU_SCALE), s.select(positive, x, neg))
        }
        ActKind::Sigmoid => vmath::sigmoid(s, x),
        ActKind::Tanh => vmath::tanh(s, x),
        ActKind::HardTanh => vmath::clamp(s, x, act.a, act.b),
        ActKind::Softsign => s.div(x, s.add(s.splat(1.0), s.abs(x))),
        ActKind::Softplus => {
            let z = s.mul(s.splat(act.a), x);
            // Above 30, ln(1 + e^z) = z to f32 precision (and e^z may overflow).
            let sp = s.select(s.lt(s.splat(30.0), z), z, vmath::log1p(s, vmath::exp(s, z)));
            s.select(s.lt(s.splat(act.b), z), x, s.div(sp, s.splat(act.a)))
        }
    }
}

/// The derivative of the activation at input `x`.
#[inline(always)]
pub fn grad_from_input<S: Simd>(s: S, act: &Act, x: S::V) -> S::V {
    let zero = s.zero();
    let one = s.splat(1.0);
    let positive = s.lt(zero, x);
    match act.kind {
        ActKind::None => one,
        ActKind::Relu => s.select(positive, one, zero),
        ActKind::LeakyRelu => s.select(positive, one, s.splat(act.a)),
        ActKind::Elu => s.select(positive, one, s.mul(s.splat(act.a), vmath::exp(s, x))),
        ActKind::Selu => {
            let neg = s.mul(s.splat(SELU_ALPHA), vmath::exp(s, x));
            s.mul(s.splat(SELU_SCALE), s.select(positive, one, neg))
        }
        ActKind::Sigmoid => {
            let y = vmath::sigmoid(s, x);
            s.mul(y, s.sub(one, y))
        }
        ActKind::Tanh => {
            let t = vmath::tanh(s, x);
            s.fnmadd(t, t, one)
        }
        ActKind::HardTanh => {
            let inside = s.mask_and(s.lt(s.splat(act.a), x), s.lt(x, s.splat(act.b)));
            s.select(inside, one, zero)
        }
        ActKind::Softsign => {
            let d = s.add(one, s.abs(x));
            s.div(one, s.mul(d, d))
        }
        ActKind::Softplus => {
            let z = s.mul(s.splat(act.a), x);
            s.select(s.lt(s.splat(act.b), z), one, vmath::sigmoid(s, z))
        }
    }
}

/// The derivative at the point whose output is `y`, for [`Act::grad_from_output`] activations
/// (others return the input-based formula applied to `y`, which callers must not rely on).
#[inline(always)]
pub fn grad_from_output<S: Simd>(s: S, act: &Act, y: S::V) -> S::V {
    let one = s.splat(1.0);
    match act.kind {
        ActKind::None => one,
        ActKind::Relu => s.select(s.lt(s.zero(), y), one, s.zero()),
        ActKind::Sigmoid => s.mul(y, s.sub(one, y)),
        ActKind::Tanh => s.fnmadd(y, y, one),
        ActKind::LeakyRelu
        | ActKind::Elu
        | ActKind::Selu
        | ActKind::HardTanh
        | ActKind::Softsign
        | ActKind::Softplus => grad_from_input(s, act, y),
    }
}

/// Applies `act` to `len` floats at `p` in place.
///
/// # Safety
/// `p` must be valid for reading and writing `len` floats.
#[inline(always)]
unsafe fn apply_generic<S: Simd>(s: S, p: *mut f32, len: usize, act: &Act) {
    let mut i = 0;
    while i + 16 <= len {
        // SAFETY: i + 16 <= len.
        unsafe { s.store(p.add(i), forward(s, act, s.load(p.add(i)))) };
        i += 16;
    }
    if i < len {
        // SAFETY: the masked load and store touch only the len - i floats left.
        unsafe { s.store_n(p.add(i), len - i, forward(s, act, s.load_n(p.add(i), len - i))) };
    }
}

isa_fn! {
    /// Applies `act` in place to `len` floats at `p`.
    ///
    /// # Safety
    /// `p` valid for reading and writing `len` floats; `isa` supported by the CPU.
    pub unsafe fn apply_in_place(p: *mut f32, len: usize, act: &Act) = apply_generic;
}

/// `dst[i] = gy[i] * act'(src[i])`, `src` the forward input or (when `from_output`) output.
///
/// # Safety
/// `src`, `gy` valid for reading and `dst` for writing `len` floats; `dst` may equal `gy` or
/// `src` exactly (elementwise, each element read before it is written) but not overlap
/// them otherwise.
#[inline(always)]
unsafe fn backward_generic<S: Simd>(
    s: S,
    src: *const f32,
    gy: *const f32,
    dst: *mut f32,
    len: usize,
    act: &Act,
    from_output: bool,
) {
    let grad = |v: S::V| if from_output { grad_from_output(s, act, v) } else { grad_from_input(s, act, v) };
    let mut i = 0;
    while i + 16 <= len {
        // SAFETY: i + 16 <= len for all three buffers.
        unsafe {
            let g = s.mul(s.load(gy.add(i)), grad(s.load(src.add(i))));
            s.store(dst.add(i), g);
        }
        i += 16;
    }
    if i < len {
        let n = len - i;
        // SAFETY: masked accesses of the n floats left.
        unsafe {
            let g = s.mul(s.load_n(gy.add(i), n), grad(s.load_n(src.add(i), n)));
            s.store_n(dst.add(i), n, g);
        }
    }
}

isa_fn! {
    /// Activation backward over `len` floats (see `backward_generic`).
    ///
    /// # Safety
    /// As `backward_generic`; `isa` supported by the CPU.
    pub unsafe fn backward_raw(
        src: *const f32,
        gy: *const f32,
        dst: *mut f32,
        len: usize,
        act: &Act,
        from_output: bool,
    ) = backward_generic;
}
