//! Batch norm's forward forms (running statistics, batch statistics) and its backward with
//! the statistics held fixed, per channel; local response normalisation and its backward,
//! across channels at each pixel.

use super::reduce::Chans;
use super::{Lx, Val};
use crate::emit::{F32, Fx};
use crate::error::JitError;
use crate::vmath;
use cnnc_ir::{BatchNorm, Layout, Lrn, NodeId};
use cranelift_codegen::ir::Value;
use cranelift_codegen::ir::condcodes::IntCC;

fn operands(lx: &Lx, id: NodeId) -> Result<Vec<Val>, JitError> {
    lx.plan.graph[id].inputs.iter().map(|&i| lx.val(i)).collect()
}

/// A parameter vector's value for channel `q` (parameters are padded to whole vectors).
fn param_vec(fx: &mut Fx, ch: &Chans, addr: u64, q: Value) -> Value {
    let b = fx.abs(addr);
    if ch.blocked {
        let a = fx.index(b, q, 16);
        fx.load(crate::emit::F32X4, a, 0)
    } else {
        let a = fx.index(b, q, 4);
        fx.load(F32, a, 0)
    }
}

/// `y = x * scale + shift` per channel, `scale = w / sqrt(var + eps)`,
/// `shift = b - mean * scale`, with mean and variance from `stats(fx, q)`.
fn affine(
    lx: &mut Lx,
    id: NodeId,
    x: Val,
    eps: f64,
    stats: impl Fn(&mut Fx, &Chans, Value) -> (Value, Value),
) -> Result<(), JitError> {
    let out = lx.val(id)?;
    let (w, _) = lx.param(id, "weight")?;
    let (b, _) = lx.param(id, "bias")?;
    let ch = Chans::of(&x);
    let tasks = lx.tasks(ch.count, (ch.count * ch.n * ch.hw) as f64);
    lx.kernel(tasks, |fx| {
        let (lo, hi) = fx.task_range(ch.count, tasks);
        fx.for_range(lo, hi, 1, |fx, q| {
            let (mean, var) = stats(fx, &ch, q);
            let ty = ch.ty();
            let e = fx.fconst(ty, eps as f32);
            let s = fx.fadd(var, e);
            let r = fx.sqrt(s);
            let wv = param_vec(fx, &ch, w, q);
            let bv = param_vec(fx, &ch, b, q);
            let scale = fx.fdiv(wv, r);
            let ms = fx.fmul(mean, scale);
            let shift = fx.fsub(bv, ms);
            ch.map(fx, &[x], &out, q, &[scale, shift], &|fx, _, c, v| fx.fma(v[0], c[0], c[1]));
        });
    })
}

/// Batch norm with its running statistics (inference).
pub(crate) fn bn_inference(lx: &mut Lx, id: NodeId, bn: &BatchNorm) -> Result<(), JitError> {
    let x = operands(lx, id)?[0];
    let (rm, _) = lx.param(id, "running_mean")?;
    let (rv, _) = lx.param(id, "running_var")?;
    affine(lx, id, x, bn.eps, |fx, ch, q| (param_vec(fx, ch, rm, q), param_vec(fx, ch, rv, q)))
}

/// Batch norm with the batch's statistics, from `(x, stats)`.
pub(crate) fn bn_normalize(lx: &mut Lx, id: NodeId, bn: &BatchNorm) -> Result<(), JitError> {
    let v = operands(lx, id)?;
    let (x, stats) = (v[0], v[1]);
    let c = x.c as u64;
    affine(lx, id, x, bn.eps, |fx, ch, q| {
        let m = fx.abs(stats.addr);
        let va = fx.abs(stats.addr + 4 * c);
        (ch.load_vec(fx, m, q), ch.load_vec(fx, va, q))
    })
}

/// `dx = gy * w / sqrt(running_var + eps)` (the statistics held fixed).
pub(crate) fn bn_backward_affine(lx: &mut Lx, id: NodeId, bn: &BatchNorm) -> Result<(), JitError> {
    let gy = operands(lx, id)?[0];
    let out = lx.val(id)?;
    let (w, _) = lx.param(id, "weight")?;
    let (rv, _) = lx.param(id, "running_var")?;
    let ch = Chans::of(&gy);
    let eps = bn.eps;
    let tasks = lx.tasks(ch.count, (ch.count * ch.n * ch.hw) as f64);
    lx.kernel(tasks, |fx| {
        let (lo, hi) = fx.task_range(ch.count, tasks);
        fx.for_range(lo, hi, 1, |fx, q| {
            let ty = ch.ty();
            let var = param_vec(fx, &ch, rv, q);
            let e = fx.fconst(ty, eps as f32);
            let s = fx.fadd(var, e);
            let r = fx.sqrt(s);
            let wv = param_vec(fx, &ch, w, q);
            let scale = fx.fdiv(wv, r);
            ch.map(fx, &[gy], &out, q, &[scale], &|fx, _, c, v| fx.fmul(v[0], c[0]));
        });
    })
}

/// The channels LRN sums over for channel `c`: `c - size/2 ..= c + (size-1)/2`, clipped.
fn window(fx: &mut Fx, c: Value, size: usize, channels: usize) -> (Value, Value) {
    let lo = fx.addi(c, -((size / 2) as i64));
    let zero = fx.int(0);
    let lo = fx.smax(lo, zero);
    let hi = fx.addi(c, ((size - 1) / 2 + 1) as i64);
    let cc = fx.int(channels as i64);
    let hi = fx.smin(hi, cc);
    (lo, hi)
}

/// The float offset of channel `c` at pixel `p` within an image of `v`.
fn at(fx: &mut Fx, v: &Val, c: Value, p: Value) -> Value {
    let co = v.chan_off(fx, c);
    let po = fx.muli(p, v.es());
    fx.add(co, po)
}

/// `k + alpha / size * sum x[j]^2` over `c`'s window, at the column `img + p`.
fn lrn_scale(fx: &mut Fx, lrn: &Lrn, x: &Val, img: Value, p: Value, c: Value) -> Value {
    let (lo, hi) = window(fx, c, lrn.size, x.c);
    let z = fx.fconst(F32, 0.0);
    let s = fx.var_init(F32, z);
    fx.for_range(lo, hi, 1, |fx, j| {
        let o = at(fx, x, j, p);
        let a = fx.index(img, o, 4);
        let v = fx.load(F32, a, 0);
        let cur = fx.get(s);
        let n = fx.fma(v, v, cur);
        fx.set(s, n);
    });
    let sum = fx.get(s);
    let k = fx.fconst(F32, lrn.k as f32);
    let ak = fx.fconst(F32, lrn.sum_factor() as f32);
    fx.fma(sum, ak, k)
}

/// One task per `(image, pixel range)`; `body(fx, n, p)` per pixel.
fn per_pixel(lx: &mut Lx, v: &Val, cost: usize, body: impl Fn(&mut Fx, Value, Value)) -> Result<(), JitError> {
    let hw = v.hw();
    let total = v.n * hw;
    let tasks = lx.tasks(total, (total * cost) as f64);
    lx.kernel(tasks, |fx| {
        let (lo, hi) = fx.task_range(total, tasks);
        fx.for_range(lo, hi, 1, |fx, u| {
            let n = fx.udiv(u, hw as i64);
            let p = fx.urem(u, hw as i64);
            body(fx, n, p);
        });
    })
}

/// `y[c] = x[c] * scale[c]^-beta` (padding lanes of a blocked result zeroed).
pub(crate) fn lrn(lx: &mut Lx, id: NodeId, lrn: &Lrn) -> Result<(), JitError> {
    let x = operands(lx, id)?[0];
    let y = lx.val(id)?;
    if lx.mode == crate::options::Mode::Native && super::native::lrn(lx, lrn, x, None, y)? {
        return Ok(());
    }
    let l = *lrn;
    let stored_c = if y.layout == Layout::Blocked16 { y.c.div_ceil(16) * 16 } else { y.c };
    per_pixel(lx, &y, x.c * l.size * 4, |fx, n, p| {
        let xi = x.image(fx, n);
        let yi = y.image(fx, n);
        fx.for_n(0, stored_c as i64, |fx, c| {
            let real = fx.icmpi(IntCC::SignedLessThan, c, x.c as i64);
            let o = at(fx, &y, c, p);
            let ya = fx.index(yi, o, 4);
            fx.if_else(
                real,
                |fx| {
                    let s = lrn_scale(fx, &l, &x, xi, p, c);
                    let f = vmath::powf(fx, F32, s, -l.beta as f32);
                    let xo = at(fx, &x, c, p);
                    let xa = fx.index(xi, xo, 4);
                    let xv = fx.load(F32, xa, 0);
                    let r = fx.fmul(xv, f);
                    fx.store(r, ya, 0);
                },
                |fx| {
                    let z = fx.fconst(F32, 0.0);
                    fx.store(z, ya, 0);
                },
            );
        });
    })
}

/// LRN backward from `(x, gy)`: `dx[j] = g[j] s[j]^-b - 2 a b / size x[j] sum_{c: j in
/// window(c)} g[c] x[c] s[c]^(-b-1)`, with a per-thread column of `t[c] = g x s^(-b-1)`.
pub(crate) fn lrn_backward(lx: &mut Lx, id: NodeId, lrn: &Lrn) -> Result<(), JitError> {
    let v = operands(lx, id)?;
    let (x, gy) = (v[0], v[1]);
    let gx = lx.val(id)?;
    if lx.mode == crate::options::Mode::Native && super::native::lrn(lx, lrn, x, Some(gy), gx)? {
        return Ok(());
    }
    let l = *lrn;
    let c = x.c;
    let scratch = lx.scratch(lx.threads * c * 8);
    let stored_c = if gx.layout == Layout::Blocked16 { c.div_ceil(16) * 16 } else { c };
    let factor = (2.0 * l.sum_factor() * l.beta) as f32;
    per_pixel(lx, &gx, c * l.size * 8, |fx, n, p| {
        let col = fx.aux(scratch);
        let th = fx.thread;
        let t = fx.index(col, th, (c * 8) as i64);
        let xi = x.image(fx, n);
        let gi = gy.image(fx, n);
        let oi = gx.image(fx, n);
        // t[c] and s[c]^-b for every channel.
        fx.for_n(0, c as i64, |fx, ch| {
            let s = lrn_scale(fx, &l, &x, xi, p, ch);
            let f = vmath::powf(fx, F32, s, -l.beta as f32);
            let o = at(fx, &x, ch, p);
            let xa = fx.index(xi, o, 4);
            let xv = fx.load(F32, xa, 0);
            let og = at(fx, &gy, ch, p);
            let ga = fx.index(gi, og, 4);
            let g = fx.load(F32, ga, 0);
            let gxv = fx.fmul(g, xv);
            let gf = fx.fmul(gxv, f);
            let tv = fx.fdiv(gf, s);
            let ta = fx.index(t, ch, 8);
            fx.store(tv, ta, 0);
            let gf = fx.fmul(g, f);
            fx.store(gf, ta, 4);
        });
        fx.for_n(0, stored_c as i64, |fx, j| {
            let real = fx.icmpi(IntCC::SignedLessThan, j, c as i64);
            let o = at(fx, &gx, j, p);
            let oa = fx.index(oi, o, 4);
            fx.if_else(
                real,
                |fx| {
                    // Channels whose window holds j: j - (size-1)/2 ..= j + size/2.
                    let lo = fx.addi(j, -(((l.size - 1) / 2) as i64));
                    let zero = fx.int(0);
                    let lo = fx.smax(lo, zero);
                    let hi = fx.addi(j, (l.size / 2 + 1) as i64);
                    let cc = fx.int(c as i64);
                    let hi = fx.smin(hi, cc);
                    let z = fx.fconst(F32, 0.0);
                    let sum = fx.var_init(F32, z);
                    fx.for_range(lo, hi, 1, |fx, k| {
                        let ta = fx.index(t, k, 8);
                        let tv = fx.load(F32, ta, 0);
                        let cur = fx.get(sum);
                        let s = fx.fadd(cur, tv);
                        fx.set(sum, s);
                    });
                    let xo = at(fx, &x, j, p);
                    let xa = fx.index(xi, xo, 4);
                    let xv = fx.load(F32, xa, 0);
                    let ta = fx.index(t, j, 8);
                    let gf = fx.load(F32, ta, 4);
                    let s = fx.get(sum);
                    let fc = fx.fconst(F32, factor);
                    let xs = fx.fmul(xv, s);
                    let xs = fx.fmul(xs, fc);
                    let r = fx.fsub(gf, xs);
                    fx.store(r, oa, 0);
                },
                |fx| {
                    let z = fx.fconst(F32, 0.0);
                    fx.store(z, oa, 0);
                },
            );
        });
    })
}
