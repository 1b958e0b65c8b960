//! Softmax over channels (forward and backward) and the losses with their gradients, on
//! plain values: `[N, C]` class scores (or `[N, C, 1, 1]`) with labels, or any shape with a
//! target of the same shape. A loss value is one whole-batch float, summed by one task.

use super::{Lx, Val};
use crate::emit::{F32, Fx, I64};
use crate::error::JitError;
use crate::vmath;
use cnnc_ir::{HingeForm, Loss, NodeId};
use cranelift_codegen::ir::condcodes::{FloatCC, IntCC};
use cranelift_codegen::ir::{InstBuilder, Value};

fn operands(lx: &Lx, id: NodeId) -> Result<Vec<Val>, JitError> {
    lx.plan.graph[id].inputs.iter().map(|&i| lx.val(i)).collect()
}

/// Address of channel `c` at pixel `p` of image `n` (plain).
fn elem(fx: &mut Fx, v: &Val, n: Value, c: Value, p: Value) -> Value {
    let img = v.image(fx, n);
    let o = fx.mad(c, v.hw() as i64, p);
    fx.index(img, o, 4)
}

fn per_column(lx: &mut Lx, v: &Val, body: impl Fn(&mut Fx, Value, Value)) -> Result<(), JitError> {
    let hw = v.hw();
    let total = v.n * hw;
    let tasks = lx.tasks(total, (total * v.c * 20) as f64);
    lx.kernel(tasks, |fx| {
        let (lo, hi) = fx.task_range(total, tasks);
        fx.for_range(lo, hi, 1, |fx, u| {
            let n = fx.udiv(u, hw as i64);
            let p = fx.urem(u, hw as i64);
            body(fx, n, p);
        });
    })
}

/// Softmax over channels, stabilised by the maximum.
pub(crate) fn forward(lx: &mut Lx, id: NodeId) -> Result<(), JitError> {
    let x = operands(lx, id)?[0];
    let y = lx.val(id)?;
    let c = x.c as i64;
    per_column(lx, &y, |fx, n, p| {
        let ninf = fx.fconst(F32, f32::NEG_INFINITY);
        let m = fx.var_init(F32, ninf);
        fx.for_n(0, c, |fx, ch| {
            let a = elem(fx, &x, n, ch, p);
            let v = fx.load(F32, a, 0);
            let cur = fx.get(m);
            let mx = fx.b.ins().fmax(cur, v);
            fx.set(m, mx);
        });
        let mx = fx.get(m);
        let z = fx.fconst(F32, 0.0);
        let s = fx.var_init(F32, z);
        fx.for_n(0, c, |fx, ch| {
            let a = elem(fx, &x, n, ch, p);
            let v = fx.load(F32, a, 0);
            let d = fx.fsub(v, mx);
            let e = vmath::exp(fx, F32, d);
            let o = elem(fx, &y, n, ch, p);
            fx.store(e, o, 0);
            let cur = fx.get(s);
            let t = fx.fadd(cur, e);
            fx.set(s, t);
        });
        let sum = fx.get(s);
        fx.for_n(0, c, |fx, ch| {
            let o = elem(fx, &y, n, ch, p);
            let e = fx.load(F32, o, 0);
            let r = fx.fdiv(e, sum);
            fx.store(r, o, 0);
        });
    })
}

/// `dx_c = y_c (g_c - sum g y)` from `(y, gy)`.
pub(crate) fn backward(lx: &mut Lx, id: NodeId) -> Result<(), JitError> {
    let v = operands(lx, id)?;
    let (y, gy) = (v[0], v[1]);
    let gx = lx.val(id)?;
    let c = y.c as i64;
    per_column(lx, &gx, |fx, n, p| {
        let z = fx.fconst(F32, 0.0);
        let s = fx.var_init(F32, z);
        fx.for_n(0, c, |fx, ch| {
            let ya = elem(fx, &y, n, ch, p);
            let yv = fx.load(F32, ya, 0);
            let ga = elem(fx, &gy, n, ch, p);
            let g = fx.load(F32, ga, 0);
            let cur = fx.get(s);
            let t = fx.fma(g, yv, cur);
            fx.set(s, t);
        });
        let dot = fx.get(s);
        fx.for_n(0, c, |fx, ch| {
            let ya = elem(fx, &y, n, ch, p);
            let yv = fx.load(F32, ya, 0);
            let ga = elem(fx, &gy, n, ch, p);
            let g = fx.load(F32, ga, 0);
            let d = fx.fsub(g, dot);
            let r = fx.fmul(yv, d);
            let o = elem(fx, &gx, n, ch, p);
            fx.store(r, o, 0);
        });
    })
}

/// The label of sample `n` as an index, clamped into `0..classes` (labels are checked before
/// a run; the clamp keeps every address in bounds whatever they hold).
fn label(fx: &mut Fx, t: &Val, n: Value, classes: usize) -> Value {
    let a = t.image(fx, n);
    let v = fx.load(F32, a, 0);
    let i = fx.b.ins().fcvt_to_sint_sat(I64, v);
    let zero = fx.int(0);
    let i = fx.smax(i, zero);
    let top = fx.int(classes as i64 - 1);
    fx.smin(i, top)
}

/// `(value, derivative)` of an elementwise loss of `d = x - t`.
fn elementwise(fx: &mut Fx, loss: &Loss, d: Value) -> (Value, Value) {
    match *loss {
        Loss::Mse => {
            let two = fx.fconst(F32, 2.0);
            (fx.fmul(d, d), fx.fmul(two, d))
        }
        Loss::L1 => {
            let a = fx.fabs(d);
            let zero = fx.fconst(F32, 0.0);
            let one = fx.fconst(F32, 1.0);
            let mone = fx.fconst(F32, -1.0);
            let pos = fx.fcmp(FloatCC::GreaterThan, d, zero);
            let neg = fx.fcmp(FloatCC::LessThan, d, zero);
            let s = fx.b.ins().select(neg, mone, zero);
            (a, fx.b.ins().select(pos, one, s))
        }
        Loss::Huber { delta } => {
            let a = fx.fabs(d);
            let dl = fx.fconst(F32, delta as f32);
            let half = fx.fconst(F32, 0.5);
            let small = fx.fcmp(FloatCC::LessThan, a, dl);
            let q = fx.fmul(d, d);
            let q = fx.fmul(q, half);
            let hd = fx.fmul(half, dl);
            let l = fx.fsub(a, hd);
            let l = fx.fmul(dl, l);
            let v = fx.b.ins().select(small, q, l);
            let mdl = fx.fneg(dl);
            let g = fx.b.ins().fmin(d, dl);
            let g = fx.b.ins().fmax(g, mdl);
            (v, g)
        }
        Loss::CrossEntropy | Loss::Hinge { .. } => unreachable!("class losses are not elementwise"),
    }
}

/// A loss (`grad` false: its value) or its gradient, from `(x, target)`.
pub(crate) fn loss(lx: &mut Lx, id: NodeId, loss: &Loss, grad: bool) -> Result<(), JitError> {
    let v = operands(lx, id)?;
    let (x, t) = (v[0], v[1]);
    let out = lx.val(id)?;
    let n = x.n;
    match *loss {
        Loss::CrossEntropy | Loss::Hinge { .. } => {
            let c = x.c * x.hw();
            let classes = c;
            let (margin, scale) = match *loss {
                Loss::Hinge { margin, form: HingeForm::Sum } => (margin as f32, 1.0 / n as f32),
                Loss::Hinge { margin, form: HingeForm::MeanOverClasses } => (margin as f32, 1.0 / (n * c) as f32),
                _ => (0.0, 1.0 / n as f32),
            };
            let ce = matches!(loss, Loss::CrossEntropy);
            lx.kernel(1, |fx| {
                let z = fx.fconst(F32, 0.0);
                let total = fx.var_init(F32, z);
                fx.for_n(0, n as i64, |fx, b| {
                    let y = label(fx, &t, b, classes);
                    let row = x.image(fx, b);
                    let yo = fx.index(row, y, 4);
                    let xy = fx.load(F32, yo, 0);
                    let orow = out.image(fx, b);
                    if ce {
                        let ninf = fx.fconst(F32, f32::NEG_INFINITY);
                        let m = fx.var_init(F32, ninf);
                        fx.for_n(0, c as i64, |fx, j| {
                            let a = fx.index(row, j, 4);
                            let v = fx.load(F32, a, 0);
                            let cur = fx.get(m);
                            let mx = fx.b.ins().fmax(cur, v);
                            fx.set(m, mx);
                        });
                        let mx = fx.get(m);
                        let z = fx.fconst(F32, 0.0);
                        let s = fx.var_init(F32, z);
                        fx.for_n(0, c as i64, |fx, j| {
                            let a = fx.index(row, j, 4);
                            let v = fx.load(F32, a, 0);
                            let d = fx.fsub(v, mx);
                            let e = vmath::exp(fx, F32, d);
                            let cur = fx.get(s);
                            let t = fx.fadd(cur, e);
                            fx.set(s, t);
                        });
                        let sum = fx.get(s);
                        let ls = vmath::log(fx, F32, sum);
                        let lse = fx.fadd(mx, ls);
                        if grad {
                            let inv = fx.fconst(F32, scale);
                            fx.for_n(0, c as i64, |fx, j| {
                                let a = fx.index(row, j, 4);
                                let v = fx.load(F32, a, 0);
                                let d = fx.fsub(v, lse);
                                let p = vmath::exp(fx, F32, d);
                                let is_y = fx.icmp(IntCC::Equal, j, y);
                                let one = fx.fconst(F32, 1.0);
                                let zero = fx.fconst(F32, 0.0);
                                let oh = fx.b.ins().select(is_y, one, zero);
                                let g = fx.fsub(p, oh);
                                let g = fx.fmul(g, inv);
                                let o = fx.index(orow, j, 4);
                                fx.store(g, o, 0);
                            });
                        } else {
                            let l = fx.fsub(lse, xy);
                            let cur = fx.get(total);
                            let s = fx.fadd(cur, l);
                            fx.set(total, s);
                        }
                    } else {
                        if grad {
                            let zero = fx.fconst(F32, 0.0);
                            fx.for_n(0, c as i64, |fx, j| {
                                let o = fx.index(orow, j, 4);
                                fx.store(zero, o, 0);
                            });
                        }
                        let mg = fx.fconst(F32, margin);
                        let sc = fx.fconst(F32, scale);
                        fx.for_n(0, c as i64, |fx, j| {
                            let not_y = fx.icmp(IntCC::NotEqual, j, y);
                            let a = fx.index(row, j, 4);
                            let xj = fx.load(F32, a, 0);
                            let zz = fx.fsub(mg, xy);
                            let zz = fx.fadd(zz, xj);
                            let zero = fx.fconst(F32, 0.0);
                            let pos = fx.fcmp(FloatCC::GreaterThan, zz, zero);
                            let active = fx.b.ins().band(pos, not_y);
                            fx.if_then(active, |fx| {
                                if grad {
                                    let o = fx.index(orow, j, 4);
                                    let g = fx.load(F32, o, 0);
                                    let g = fx.fadd(g, sc);
                                    fx.store(g, o, 0);
                                    let oy = fx.index(orow, y, 4);
                                    let gy = fx.load(F32, oy, 0);
                                    let gy = fx.fsub(gy, sc);
                                    fx.store(gy, oy, 0);
                                } else {
                                    let cur = fx.get(total);
                                    let s = fx.fadd(cur, zz);
                                    fx.set(total, s);
                                }
                            });
                        });
                    }
                });
                if !grad {
                    let tv = fx.get(total);
                    let sc = fx.fconst(F32, scale);
                    let r = fx.fmul(tv, sc);
                    let o = fx.abs(out.addr);
                    fx.store(r, o, 0);
                }
            })
        }
        Loss::Mse | Loss::L1 | Loss::Huber { .. } => {
            let per = x.c * x.hw();
            let e = (n * per) as f32;
            let l = *loss;
            if grad {
                super::eltwise::flat(lx, &[x, t], out, |fx, ty, v| {
                    // Scalar arithmetic per lane keeps one definition of each loss.
                    if ty == F32 {
                        let d = fx.fsub(v[0], v[1]);
                        let (_, g) = elementwise(fx, &l, d);
                        let inv = fx.fconst(F32, 1.0 / e);
                        fx.fmul(g, inv)
                    } else {
                        let mut r = fx.fconst(ty, 0.0);
                        for lane in 0..4u8 {
                            let a = fx.b.ins().extractlane(v[0], lane);
                            let b = fx.b.ins().extractlane(v[1], lane);
                            let d = fx.fsub(a, b);
                            let (_, g) = elementwise(fx, &l, d);
                            let inv = fx.fconst(F32, 1.0 / e);
                            let g = fx.fmul(g, inv);
                            r = fx.b.ins().insertlane(r, g, lane);
                        }
                        r
                    }
                })
            } else {
                lx.kernel(1, |fx| {
                    let z = fx.fconst(F32, 0.0);
                    let total = fx.var_init(F32, z);
                    fx.for_n(0, n as i64, |fx, b| {
                        let xi = x.image(fx, b);
                        let ti = t.image(fx, b);
                        fx.for_n(0, per as i64, |fx, i| {
                            let xa = fx.index(xi, i, 4);
                            let xv = fx.load(F32, xa, 0);
                            let ta = fx.index(ti, i, 4);
                            let tv = fx.load(F32, ta, 0);
                            let d = fx.fsub(xv, tv);
                            let (val, _) = elementwise(fx, &l, d);
                            let cur = fx.get(total);
                            let s = fx.fadd(cur, val);
                            fx.set(total, s);
                        });
                    });
                    let tv = fx.get(total);
                    let inv = fx.fconst(F32, 1.0 / e);
                    let r = fx.fmul(tv, inv);
                    let o = fx.abs(out.addr);
                    fx.store(r, o, 0);
                })
            }
        }
    }
}
