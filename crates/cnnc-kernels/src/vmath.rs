//! Polynomial `exp`, `expm1`, `ln`, `log1p`, `tanh` and `sigmoid` on 16-lane vectors, written
//! once over [`Simd`]; the same code serves every instruction set and, through
//! [`scalar`], single values.
//!
//! Method: `exp` and `expm1` reduce `x = n ln2 + r` with `|r| <= ln2 / 2` (Cody-Waite: `ln2`
//! split so that `n * LN2_HI` is exact) and evaluate `expm1(r) = r + r^2 P(r)`, `P` of degree 5;
//! `ln` splits `x = m 2^e` with `m` in `[sqrt(1/2), sqrt(2))` and evaluates
//! `ln(1 + f) = f - f^2 / 2 + f^3 Q(f)`, `Q` of degree 8. `P` and `Q` were fitted for this crate
//! (Lawson-weighted least squares towards the minimax relative error; fit errors 2.4e-10 and
//! 7.5e-10, far below f32's 6e-8), so the results are within a few ulp: the test
//! `vmath_max_ulp` measures the maximum error against f64 on every instruction set.
//! `tanh(x) = t / (t + 2)` with `t = expm1(2 |x|)` (no cancellation near 0), `sigmoid` from
//! `exp(-|x|)`, `log1p(y) = ln(u) * y / (u - 1)` with `u = 1 + y` (exact when `u` rounds).
//! Overflow gives infinity, underflow zero or the correctly scaled subnormal, NaN stays NaN.

use super::simd::{Cpu, Portable, Simd, isa_fn};

const LOG2E: f32 = core::f32::consts::LOG2_E;
/// `ln 2` to 9 significant bits: `n * LN2_HI` is exact for `|n| < 2^15`.
const LN2_HI: f32 = 0.693_359_4;
/// `ln 2 - LN2_HI`.
const LN2_LO: f32 = -2.121_944_4e-4;
/// `expm1(r) = r + r^2 P(r)` on `|r| <= ln2 / 2`, coefficients of `r^0 ..= r^5`.
const EXPM1_P: [f32; 6] = [0.5, 0.166_666_66, 0.041_666_362, 0.008_333_39, 0.001_394_061_7, 0.000_198_458_95];
/// `ln(1 + f) = f - f^2 / 2 + f^3 Q(f)` on `f` in `[sqrt(1/2) - 1, sqrt(2) - 1]`, `f^0 ..= f^8`.
const LOG_Q: [f32; 9] = [
    0.333_333_13,
    -0.250_000_1,
    0.200_021_19,
    -0.166_679_96,
    0.142_195_53,
    -0.124_055_77,
    0.118_881_516,
    -0.116_757_11,
    0.067_467_25,
];

/// Horner's rule, highest coefficient first.
#[inline(always)]
fn horner<S: Simd, const N: usize>(s: S, x: S::V, c: &[f32; N]) -> S::V {
    let mut p = s.splat(c[N - 1]);
    for k in (0..N - 1).rev() {
        p = s.fmadd(p, x, s.splat(c[k]));
    }
    p
}

/// `x` clamped to `[lo, hi]`, NaN kept (the clamped operand goes second).
#[inline(always)]
pub fn clamp<S: Simd>(s: S, x: S::V, lo: f32, hi: f32) -> S::V {
    s.min(s.splat(hi), s.max(s.splat(lo), x))
}

/// `(n, r)` with `x = n ln2 + r`, `n` integral.
#[inline(always)]
fn reduce<S: Simd>(s: S, x: S::V) -> (S::V, S::V) {
    let n = s.round(s.mul(x, s.splat(LOG2E)));
    let r = s.fnmadd(n, s.splat(LN2_HI), x);
    (n, s.fnmadd(n, s.splat(LN2_LO), r))
}

/// `expm1(r)` for `|r| <= ln2 / 2`.
#[inline(always)]
fn expm1_small<S: Simd>(s: S, r: S::V) -> S::V {
    s.fmadd(s.mul(r, r), horner(s, r, &EXPM1_P), r)
}

/// `e^x`.
#[inline(always)]
pub fn exp<S: Simd>(s: S, x: S::V) -> S::V {
    // exp(-104) rounds to 0 and exp(89) overflows, so the clamp changes no result.
    let (n, r) = reduce(s, clamp(s, x, -104.0, 89.0));
    s.ldexp(s.add(expm1_small(s, r), s.splat(1.0)), n)
}

/// `e^x - 1`, accurate near 0.
#[inline(always)]
pub fn expm1<S: Simd>(s: S, x: S::V) -> S::V {
    let (n, r) = reduce(s, clamp(s, x, -104.0, 89.0));
    let p = expm1_small(s, r);
    let one = s.splat(1.0);
    // 2^n p + (2^n - 1) keeps every bit of p for small n; for large n, 2^n (p + 1) - 1
    // avoids 2^n overflowing on its own.
    let t = s.ldexp(one, n);
    let small = s.fmadd(t, p, s.sub(t, one));
    let large = s.sub(s.ldexp(s.add(p, one), n), one);
    let r = s.select(s.lt(s.splat(20.0), n), large, small);
    // expm1(-0) = -0: the sum above would round it to +0.
    s.select(s.eq(x, s.zero()), x, r)
}

/// Natural logarithm: `-inf` at 0, NaN below 0, `inf` at `inf`.
#[inline(always)]
pub fn ln<S: Simd>(s: S, x: S::V) -> S::V {
    let zero = s.zero();
    let one = s.splat(1.0);
    let positive = s.lt(zero, x);
    // Keep the bit tricks on a positive finite value; special lanes are fixed at the end.
    let xs = s.select(positive, s.min(s.splat(f32::MAX), x), one);
    let (m, e) = s.frexp(xs);
    let big = s.lt(s.splat(core::f32::consts::SQRT_2), m);
    let m = s.select(big, s.mul(m, s.splat(0.5)), m);
    let e = s.select(big, s.add(e, one), e);
    let f = s.sub(m, one);
    let f2 = s.mul(f, f);
    let tail = s.fnmadd(s.splat(0.5), f2, s.mul(s.mul(f2, f), horner(s, f, &LOG_Q)));
    let y = s.add(f, s.fmadd(e, s.splat(LN2_LO), tail));
    let y = s.fmadd(e, s.splat(LN2_HI), y);
    let y = s.select(s.eq(x, s.splat(f32::INFINITY)), x, y);
    let y = s.select(s.eq(x, zero), s.splat(f32::NEG_INFINITY), y);
    let bad = s.mask_or(s.lt(x, zero), s.is_nan(x));
    s.select(bad, s.splat(f32::NAN), y)
}

/// `ln(1 + y)` for `y >= -1`, accurate near 0.
#[inline(always)]
pub fn log1p<S: Simd>(s: S, y: S::V) -> S::V {
    let one = s.splat(1.0);
    let u = s.add(one, y);
    let d = s.sub(u, one);
    // Where u rounded to 1, ln(1 + y) = y; elsewhere ln(u) scaled by the rounding of u.
    let exact = s.eq(d, s.zero());
    let safe_d = s.select(exact, one, d);
    let r = s.mul(ln(s, u), s.div(y, safe_d));
    let r = s.select(s.eq(u, s.splat(f32::INFINITY)), u, r);
    s.select(exact, y, r)
}

/// `tanh(x)`.
#[inline(always)]
pub fn tanh<S: Simd>(s: S, x: S::V) -> S::V {
    // tanh(9.5) rounds to 1, so the clamp changes no result and keeps t finite.
    let ax = s.min(s.splat(9.5), s.abs(x));
    let t = expm1(s, s.add(ax, ax));
    s.copysign(s.div(t, s.add(t, s.splat(2.0))), x)
}

/// `1 / (1 + e^-x)`, without overflow for large negative `x`.
#[inline(always)]
pub fn sigmoid<S: Simd>(s: S, x: S::V) -> S::V {
    let e = exp(s, s.sub(s.zero(), s.abs(x)));
    let num = s.select(s.le(s.zero(), x), s.splat(1.0), e);
    s.div(num, s.add(s.splat(1.0), e))
}

/// The functions, for [`eval`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Func {
    Exp,
    Expm1,
    Ln,
    Log1p,
    Tanh,
    Sigmoid,
}

/// # Safety
/// `x` readable and `y` writable for `len` floats.
#[inline(always)]
unsafe fn eval_generic<S: Simd>(s: S, f: Func, x: *const f32, y: *mut f32, len: usize) {
    let mut i = 0;
    while i < len {
        let m = (len - i).min(16);
        // SAFETY: i + m <= len.
        unsafe {
            let v = s.load_n(x.add(i), m);
            let r = match f {
                Func::Exp => exp(s, v),
                Func::Expm1 => expm1(s, v),
                Func::Ln => ln(s, v),
                Func::Log1p => log1p(s, v),
                Func::Tanh => tanh(s, v),
                Func::Sigmoid => sigmoid(s, v),
            };
            s.store_n(y.add(i), m, r);
        }
        i += m;
    }
}

isa_fn! {
    /// # Safety
    /// As `eval_generic`; `isa` supported.
    unsafe fn eval_raw(f: Func, x: *const f32, y: *mut f32, len: usize) = eval_generic;
}

/// `y[i] = f(x[i])` with `cpu`'s instruction set (the vectors every kernel uses).
pub fn eval(cpu: Cpu, f: Func, x: &[f32], y: &mut [f32]) {
    let len = x.len().min(y.len());
    // SAFETY: both slices hold len floats; the instruction set comes from a Cpu token.
    unsafe { eval_raw(cpu.isa(), f, x.as_ptr(), y.as_mut_ptr(), len) }
}

/// The same functions on one `f32` (portable code, lane 0), for scalar tails and tests.
pub mod scalar {
    use super::{Portable, Simd};

    #[inline(always)]
    fn one(f: impl Fn(Portable, [f32; 16]) -> [f32; 16], x: f32) -> f32 {
        f(Portable, Portable.splat(x))[0]
    }

    pub fn exp(x: f32) -> f32 {
        one(super::exp, x)
    }
    pub fn expm1(x: f32) -> f32 {
        one(super::expm1, x)
    }
    pub fn ln(x: f32) -> f32 {
        one(super::ln, x)
    }
    pub fn log1p(x: f32) -> f32 {
        one(super::log1p, x)
    }
    pub fn tanh(x: f32) -> f32 {
        one(super::tanh, x)
    }
    pub fn sigmoid(x: f32) -> f32 {
        one(super::sigmoid, x)
    }
}
