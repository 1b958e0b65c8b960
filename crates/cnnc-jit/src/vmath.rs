//! Transcendental functions and activations in Cranelift IR, lane-generic (`F32` or `F32X4`):
//! `exp` and `log` by range reduction and Cephes' single-precision polynomials (about 2 ulp),
//! and every activation of the IR with its derivatives built on them. No libm call: the code
//! is the same on every Cranelift target.

use crate::emit::{F32, Fx, I32};
use cnnc_ir::Activation;
use cranelift_codegen::ir::condcodes::FloatCC;
use cranelift_codegen::ir::{InstBuilder, MemFlagsData, Type, Value, types};

/// SELU's constants, as PyTorch (and the interpreter).
const SELU_ALPHA: f32 = 1.673_263_2;
const SELU_SCALE: f32 = 1.050_701;

fn int_ty(ty: Type) -> Type {
    if ty == F32 { I32 } else { types::I32X4 }
}

fn bitcast(fx: &mut Fx, to: Type, v: Value) -> Value {
    let le = MemFlagsData::new().with_endianness(cranelift_codegen::ir::Endianness::Little);
    fx.b.ins().bitcast(to, le, v)
}

fn iconst(fx: &mut Fx, ty: Type, v: i32) -> Value {
    let s = fx.b.ins().iconst(I32, i64::from(v));
    if ty == I32 { s } else { fx.b.ins().splat(ty, s) }
}

/// `p(x)` by Horner's rule, coefficients from the highest degree.
fn horner(fx: &mut Fx, ty: Type, x: Value, coefficients: &[f32]) -> Value {
    let mut p = fx.fconst(ty, coefficients[0]);
    for &c in &coefficients[1..] {
        let k = fx.fconst(ty, c);
        p = fx.fma(p, x, k);
    }
    p
}

/// `e^x`, clamped to the normal range of f32.
pub(crate) fn exp(fx: &mut Fx, ty: Type, x: Value) -> Value {
    let hi = fx.fconst(ty, 88.376_26);
    let lo = fx.fconst(ty, -87.336_55);
    let x = fx.b.ins().fmin(x, hi);
    let x = fx.b.ins().fmax(x, lo);
    let log2e = fx.fconst(ty, std::f32::consts::LOG2_E);
    let t = fx.fmul(x, log2e);
    let n = fx.b.ins().nearest(t);
    let c1 = fx.fconst(ty, -0.693_359_4);
    let c2 = fx.fconst(ty, 2.121_944_4e-4);
    let r = fx.fma(n, c1, x);
    let r = fx.fma(n, c2, r);
    let p = horner(fx, ty, r, &[1.987_569_1e-4, 1.398_2e-3, 8.333_452e-3, 4.166_579_6e-2, 0.166_666_65, 0.5]);
    let r2 = fx.fmul(r, r);
    let one = fx.fconst(ty, 1.0);
    let y = fx.fma(p, r2, r);
    let y = fx.fadd(y, one);
    let ity = int_ty(ty);
    let ni = fx.b.ins().fcvt_to_sint_sat(ity, n);
    let bias = iconst(fx, ity, 127);
    let e = fx.b.ins().iadd(ni, bias);
    let e = fx.b.ins().ishl_imm_s(e, 23);
    let scale = bitcast(fx, ty, e);
    fx.fmul(y, scale)
}

/// `ln x` for positive normal `x` (Cephes' logf).
pub(crate) fn log(fx: &mut Fx, ty: Type, x: Value) -> Value {
    let ity = int_ty(ty);
    let bits = bitcast(fx, ity, x);
    let e = fx.b.ins().ushr_imm_s(bits, 23);
    let k126 = iconst(fx, ity, 126);
    let e = fx.b.ins().isub(e, k126);
    let mant_mask = iconst(fx, ity, 0x007f_ffff);
    let half_bits = iconst(fx, ity, 0x3f00_0000);
    let m = fx.b.ins().band(bits, mant_mask);
    let m = fx.b.ins().bor(m, half_bits);
    let m = bitcast(fx, ty, m); // in [0.5, 1)
    let ef = fx.b.ins().fcvt_from_sint(ty, e);
    let sqrthf = fx.fconst(ty, std::f32::consts::FRAC_1_SQRT_2);
    let small = fx.fcmp(FloatCC::LessThan, m, sqrthf);
    let one = fx.fconst(ty, 1.0);
    let ef_minus = fx.fsub(ef, one);
    let ef = fx.sel(ty, small, ef_minus, ef);
    let m2 = fx.fadd(m, m);
    let mm = fx.sel(ty, small, m2, m);
    let xr = fx.fsub(mm, one);
    let z = fx.fmul(xr, xr);
    let p = horner(
        fx,
        ty,
        xr,
        &[
            7.037_683_6e-2,
            -1.151_461e-1,
            1.167_699_9e-1,
            -1.242_014_1e-1,
            1.424_932_3e-1,
            -1.666_805_8e-1,
            2.000_071_5e-1,
            -2.499_999_4e-1,
            0.333_333_33,
        ],
    );
    let y = fx.fmul(p, xr);
    let y = fx.fmul(y, z);
    let q1 = fx.fconst(ty, -2.121_944_4e-4);
    let y = fx.fma(ef, q1, y);
    let mhalf = fx.fconst(ty, -0.5);
    let y = fx.fma(z, mhalf, y);
    let r = fx.fadd(xr, y);
    let q2 = fx.fconst(ty, 0.693_359_4);
    fx.fma(ef, q2, r)
}

fn sigmoid(fx: &mut Fx, ty: Type, x: Value) -> Value {
    let nx = fx.fneg(x);
    let e = exp(fx, ty, nx);
    let one = fx.fconst(ty, 1.0);
    let d = fx.fadd(one, e);
    fx.fdiv(one, d)
}

fn tanh(fx: &mut Fx, ty: Type, x: Value) -> Value {
    let a = fx.fabs(x);
    let m2 = fx.fconst(ty, -2.0);
    let t = fx.fmul(a, m2);
    let t = exp(fx, ty, t);
    let one = fx.fconst(ty, 1.0);
    let num = fx.fsub(one, t);
    let den = fx.fadd(one, t);
    let r = fx.fdiv(num, den);
    let zero = fx.fconst(ty, 0.0);
    let neg = fx.fcmp(FloatCC::LessThan, x, zero);
    let nr = fx.fneg(r);
    fx.sel(ty, neg, nr, r)
}

/// `mask ? a : b` where `mask` is `x > 0`.
fn positive(fx: &mut Fx, ty: Type, x: Value, a: Value, b: Value) -> Value {
    let zero = fx.fconst(ty, 0.0);
    let m = fx.fcmp(FloatCC::GreaterThan, x, zero);
    fx.sel(ty, m, a, b)
}

/// The activation at `x`, as the interpreter defines it (`ops/act.rs`).
pub(crate) fn activation(fx: &mut Fx, ty: Type, a: Activation, x: Value) -> Value {
    match a {
        Activation::Relu => {
            let zero = fx.fconst(ty, 0.0);
            positive(fx, ty, x, x, zero)
        }
        Activation::LeakyRelu { slope } => {
            let s = fx.fconst(ty, slope as f32);
            let sx = fx.fmul(s, x);
            positive(fx, ty, x, x, sx)
        }
        Activation::Elu { alpha } => {
            let e = expm1(fx, ty, x);
            let al = fx.fconst(ty, alpha as f32);
            let n = fx.fmul(al, e);
            positive(fx, ty, x, x, n)
        }
        Activation::Selu => {
            let e = expm1(fx, ty, x);
            let al = fx.fconst(ty, SELU_ALPHA);
            let n = fx.fmul(al, e);
            let v = positive(fx, ty, x, x, n);
            let s = fx.fconst(ty, SELU_SCALE);
            fx.fmul(s, v)
        }
        Activation::Sigmoid => sigmoid(fx, ty, x),
        Activation::Tanh => tanh(fx, ty, x),
        Activation::HardTanh { min, max } => {
            // x.clamp(min, max): max(min, min(x, max)) by compares, as f64::clamp.
            let lo = fx.fconst(ty, min as f32);
            let hi = fx.fconst(ty, max as f32);
            let over = fx.fcmp(FloatCC::GreaterThan, x, hi);
            let v = fx.sel(ty, over, hi, x);
            let under = fx.fcmp(FloatCC::LessThan, v, lo);
            fx.sel(ty, under, lo, v)
        }
        Activation::Softsign => {
            let a = fx.fabs(x);
            let one = fx.fconst(ty, 1.0);
            let d = fx.fadd(one, a);
            fx.fdiv(x, d)
        }
        Activation::Softplus { beta, threshold } => {
            let b = fx.fconst(ty, beta as f32);
            let bx = fx.fmul(b, x);
            let e = exp(fx, ty, bx);
            let one = fx.fconst(ty, 1.0);
            let s = fx.fadd(one, e);
            let l = log(fx, ty, s);
            let v = fx.fdiv(l, b);
            let th = fx.fconst(ty, threshold as f32);
            let big = fx.fcmp(FloatCC::GreaterThan, bx, th);
            fx.sel(ty, big, x, v)
        }
    }
}

/// `e^x - 1` (accurate enough near 0 for the tolerances of an f32 back end).
fn expm1(fx: &mut Fx, ty: Type, x: Value) -> Value {
    let e = exp(fx, ty, x);
    let one = fx.fconst(ty, 1.0);
    fx.fsub(e, one)
}

/// The derivative of the activation at its operand `x`.
pub(crate) fn activation_grad(fx: &mut Fx, ty: Type, a: Activation, x: Value) -> Value {
    let one = fx.fconst(ty, 1.0);
    let zero = fx.fconst(ty, 0.0);
    match a {
        Activation::Relu => positive(fx, ty, x, one, zero),
        Activation::LeakyRelu { slope } => {
            let s = fx.fconst(ty, slope as f32);
            positive(fx, ty, x, one, s)
        }
        Activation::Elu { alpha } => {
            let e = exp(fx, ty, x);
            let al = fx.fconst(ty, alpha as f32);
            let n = fx.fmul(al, e);
            positive(fx, ty, x, one, n)
        }
        Activation::Selu => {
            let e = exp(fx, ty, x);
            let al = fx.fconst(ty, SELU_ALPHA);
            let n = fx.fmul(al, e);
            let v = positive(fx, ty, x, one, n);
            let s = fx.fconst(ty, SELU_SCALE);
            fx.fmul(s, v)
        }
        Activation::Sigmoid => {
            let s = sigmoid(fx, ty, x);
            let d = fx.fsub(one, s);
            fx.fmul(s, d)
        }
        Activation::Tanh => {
            let t = tanh(fx, ty, x);
            let t2 = fx.fmul(t, t);
            fx.fsub(one, t2)
        }
        Activation::HardTanh { min, max } => {
            let lo = fx.fconst(ty, min as f32);
            let hi = fx.fconst(ty, max as f32);
            let above = fx.fcmp(FloatCC::GreaterThan, x, lo);
            let v = fx.sel(ty, above, one, zero);
            let below = fx.fcmp(FloatCC::LessThan, x, hi);
            fx.sel(ty, below, v, zero)
        }
        Activation::Softsign => {
            let a = fx.fabs(x);
            let d = fx.fadd(one, a);
            let d2 = fx.fmul(d, d);
            fx.fdiv(one, d2)
        }
        Activation::Softplus { beta, threshold } => {
            let b = fx.fconst(ty, beta as f32);
            let bx = fx.fmul(b, x);
            let s = sigmoid(fx, ty, bx);
            let th = fx.fconst(ty, threshold as f32);
            let big = fx.fcmp(FloatCC::GreaterThan, bx, th);
            fx.sel(ty, big, one, s)
        }
    }
}

/// The derivative from the activation's output `y`, for the activations whose derivative is
/// a function of it (`cnnc_ir::facts::backward_from_output`); `None` for the others.
pub(crate) fn activation_grad_from_output(fx: &mut Fx, ty: Type, a: Activation, y: Value) -> Option<Value> {
    let one = fx.fconst(ty, 1.0);
    let zero = fx.fconst(ty, 0.0);
    Some(match a {
        Activation::Relu => positive(fx, ty, y, one, zero),
        Activation::Sigmoid => {
            let d = fx.fsub(one, y);
            fx.fmul(y, d)
        }
        Activation::Tanh => {
            let y2 = fx.fmul(y, y);
            fx.fsub(one, y2)
        }
        Activation::LeakyRelu { .. }
        | Activation::Elu { .. }
        | Activation::Selu
        | Activation::HardTanh { .. }
        | Activation::Softsign
        | Activation::Softplus { .. } => return None,
    })
}

/// `x^p` for positive `x`, as `e^(p ln x)`.
pub(crate) fn powf(fx: &mut Fx, ty: Type, x: Value, p: f32) -> Value {
    let l = log(fx, ty, x);
    let pc = fx.fconst(ty, p);
    let t = fx.fmul(l, pc);
    exp(fx, ty, t)
}
