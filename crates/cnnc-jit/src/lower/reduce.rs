//! Per-channel reductions over the batch and the pixels: batch-norm statistics, bias and
//! gamma gradients, PReLU's slope gradient, and batch norm's backward through its batch
//! statistics (two sums, then the elementwise pass), each channel (four channels of a block)
//! by one task, in f32 with four-lane partial sums.

use super::{Lx, Val};
use crate::emit::{F32, F32X4, Fx};
use crate::error::JitError;
use cnnc_ir::{BatchNorm, Layout, NodeId};
use cranelift_codegen::ir::{Type, Value};
use cranelift_frontend::Variable;

/// A lane-generic per-pixel function of per-channel values and pixel values.
pub(crate) type PixelFn<'a> = &'a dyn Fn(&mut Fx, Type, &[Value], &[Value]) -> Value;

/// How the channels of a map are walked: plain channel by channel (pixels four at a time),
/// blocked four channels at a time (one vector per pixel).
#[derive(Clone, Copy)]
pub(crate) struct Chans {
    pub blocked: bool,
    /// Channels (plain) or vector channels (blocked).
    pub count: usize,
    pub c: usize,
    pub hw: usize,
    pub n: usize,
}

impl Chans {
    pub fn of(v: &Val) -> Chans {
        let blocked = v.layout == Layout::Blocked16;
        Chans { blocked, count: if blocked { v.c.div_ceil(16) * 4 } else { v.c }, c: v.c, hw: v.hw(), n: v.n }
    }

    /// The lane type of per-channel values.
    pub fn ty(&self) -> Type {
        if self.blocked { F32X4 } else { F32 }
    }

    /// Address of pixel 0 of channel (vector channel) `q` of image `n` in `v`.
    pub fn plane(&self, fx: &mut Fx, v: &Val, n: Value, q: Value) -> Value {
        if self.blocked {
            let blk = fx.udiv(q, 4);
            let lane = fx.urem(q, 4);
            let img = v.image(fx, n);
            let o = fx.index(img, blk, (v.hw() * 64) as i64);
            fx.index(o, lane, 16)
        } else {
            v.plane(fx, n, q)
        }
    }

    /// Loads the per-channel value of `q` from a plain array of at least `c` floats (only the
    /// real channels are read; missing lanes are zero).
    pub fn load_vec(&self, fx: &mut Fx, base: Value, q: Value) -> Value {
        if self.blocked {
            let a = fx.index(base, q, 16);
            // The last vector may run past `c`: load lane by lane there.
            let full = self.c.is_multiple_of(4);
            if full { fx.load(F32X4, a, 0) } else { self.guarded_lanes(fx, a, q) }
        } else {
            let a = fx.index(base, q, 4);
            fx.load(F32, a, 0)
        }
    }

    fn guarded_lanes(&self, fx: &mut Fx, a: Value, q: Value) -> Value {
        use cranelift_codegen::ir::InstBuilder;
        let mut v = fx.fconst(F32X4, 0.0);
        for l in 0..4u8 {
            let ch = fx.muli(q, 4);
            let ch = fx.addi(ch, i64::from(l));
            let ok = fx.icmpi(cranelift_codegen::ir::condcodes::IntCC::SignedLessThan, ch, self.c as i64);
            let zero = fx.fconst(F32, 0.0);
            let var = fx.var_init(F32, zero);
            fx.if_then(ok, |fx| {
                let s = fx.load(F32, a, 4 * i64::from(l));
                fx.set(var, s);
            });
            let s = fx.get(var);
            v = fx.b.ins().insertlane(v, s, l);
        }
        v
    }

    /// Stores the real channels of `q`'s value into a plain array.
    pub fn store_vec(&self, fx: &mut Fx, v: Value, base: Value, q: Value) {
        if self.blocked {
            let a = fx.index(base, q, 16);
            if self.c.is_multiple_of(4) {
                fx.store(v, a, 0);
            } else {
                use cranelift_codegen::ir::InstBuilder;
                for l in 0..4u8 {
                    let ch = fx.muli(q, 4);
                    let ch = fx.addi(ch, i64::from(l));
                    let ok = fx.icmpi(cranelift_codegen::ir::condcodes::IntCC::SignedLessThan, ch, self.c as i64);
                    fx.if_then(ok, |fx| {
                        let s = fx.b.ins().extractlane(v, l);
                        fx.store(s, a, 4 * i64::from(l));
                    });
                }
            }
        } else {
            let a = fx.index(base, q, 4);
            fx.store(v, a, 0);
        }
    }

    /// `sum over images and pixels of f(values at the pixel)` for channel `q`, as the lane
    /// type of [`Chans::ty`] (plain: four pixels per vector, reduced at the end), in order.
    pub fn sum(&self, fx: &mut Fx, vals: &[Val], q: Value, f: &dyn Fn(&mut Fx, Type, &[Value]) -> Value) -> Value {
        self.sum_by(fx, vals, q, f, 1)
    }

    /// [`Chans::sum`] with `accs` accumulators taking turns (vector `accs j + k` goes to
    /// accumulator `k`), so the additions overlap instead of waiting for each other. The
    /// order of the additions changes with `accs`: batch norm's backward pass, whose sums
    /// cancel to rounding noise on small batches, keeps the single in-order sum.
    pub fn sum_by(
        &self,
        fx: &mut Fx,
        vals: &[Val],
        q: Value,
        f: &dyn Fn(&mut Fx, Type, &[Value]) -> Value,
        accs: usize,
    ) -> Value {
        let z = fx.fconst(F32X4, 0.0);
        let accs: Vec<Variable> = (0..accs.max(1)).map(|_| fx.var_init(F32X4, z)).collect();
        let count = accs.len() as i64;
        let zs = fx.fconst(F32, 0.0);
        let tail = fx.var_init(F32, zs);
        let hw = self.hw as i64;
        let this = *self;
        // Floats between the vectors of one channel, and pixels per vector.
        let (stride, per) = if self.blocked { (16, 1) } else { (1, 4) };
        // Adds f of the vector at element `p` (+ `k` vectors) to accumulator `k`.
        let add = |fx: &mut Fx, bases: &[Value], p: Value, ty: Type, acc: Variable, k: i64| {
            let xs: Vec<Value> = bases
                .iter()
                .map(|&b| {
                    let a = fx.index(b, p, 4 * stride);
                    fx.load(ty, a, 4 * stride * per * k)
                })
                .collect();
            let t = f(fx, ty, &xs);
            let a = fx.get(acc);
            let s = fx.fadd(a, t);
            fx.set(acc, s);
        };
        fx.for_n(0, self.n as i64, |fx, n| {
            let bases: Vec<Value> = vals.iter().map(|v| this.plane(fx, v, n, q)).collect();
            let vectors = hw / per;
            let grouped = vectors - vectors % count;
            fx.for_step(0, grouped * per, count * per, |fx, p| {
                for (k, &acc) in accs.iter().enumerate() {
                    add(fx, &bases, p, F32X4, acc, k as i64);
                }
            });
            fx.for_step(grouped * per, vectors * per, per, |fx, p| add(fx, &bases, p, F32X4, accs[0], 0));
            if !this.blocked {
                fx.for_n(vectors * per, hw, |fx, p| add(fx, &bases, p, F32, tail, 0));
            }
        });
        let mut parts: Vec<Value> = accs.iter().map(|&a| fx.get(a)).collect();
        while parts.len() > 1 {
            let pairs: Vec<Value> =
                parts.chunks(2).map(|c| if c.len() == 2 { fx.fadd(c[0], c[1]) } else { c[0] }).collect();
            parts = pairs;
        }
        let a = parts[0];
        if self.blocked {
            a
        } else {
            let h = fx.hsum(a);
            let t = fx.get(tail);
            fx.fadd(h, t)
        }
    }

    /// `out = f(per-channel values, values)` at every pixel of channel `q`.
    pub fn map(&self, fx: &mut Fx, vals: &[Val], out: &Val, q: Value, coefs: &[Value], f: PixelFn) {
        let this = *self;
        let hw = self.hw;
        fx.for_n(0, self.n as i64, |fx, n| {
            let bases: Vec<Value> = vals.iter().map(|v| this.plane(fx, v, n, q)).collect();
            let ob = this.plane(fx, out, n, q);
            if this.blocked {
                map_pixels(fx, F32X4, (0, hw as i64, 1), 64, (&bases, ob), coefs, f);
            } else {
                let c4: Vec<Value> = coefs.iter().map(|&c| fx.splat(F32X4, c)).collect();
                let hv = (hw - hw % 4) as i64;
                map_pixels(fx, F32X4, (0, hv, 4), 4, (&bases, ob), &c4, f);
                map_pixels(fx, F32, (hv, hw as i64, 1), 4, (&bases, ob), coefs, f);
            }
        });
    }
}

/// `out[p] = f(x_0[p], x_1[p], ..)` for `p` in `lo..hi` by `step`: every operand and the
/// output loaded and stored as `ty` at `stride` bytes per `p` (a blocked plane's pixel is one
/// F32X4 at 64 bytes; a plain plane takes four pixels per F32X4, then a scalar tail).
pub(crate) fn map_pixels(
    fx: &mut Fx,
    ty: Type,
    (lo, hi, step): (i64, i64, i64),
    stride: i64,
    (bases, out): (&[Value], Value),
    consts: &[Value],
    f: PixelFn,
) {
    fx.for_step(lo, hi, step, |fx, p| {
        let xs: Vec<Value> = bases
            .iter()
            .map(|&b| {
                let a = fx.index(b, p, stride);
                fx.load(ty, a, 0)
            })
            .collect();
        let y = f(fx, ty, consts, &xs);
        let a = fx.index(out, p, stride);
        fx.store(y, a, 0);
    });
}

fn operands(lx: &Lx, id: NodeId) -> Result<Vec<Val>, JitError> {
    lx.plan.graph[id].inputs.iter().map(|&i| lx.val(i)).collect()
}

/// One kernel over the channels of `ch`, `body(fx, q)` per channel.
fn per_channel(lx: &mut Lx, ch: Chans, body: impl Fn(&mut Fx, Value)) -> Result<(), JitError> {
    let tasks = lx.tasks(ch.count, (ch.count * ch.n * ch.hw * 4) as f64);
    lx.kernel(tasks, |fx| {
        let (lo, hi) = fx.task_range(ch.count, tasks);
        fx.for_range(lo, hi, 1, |fx, q| body(fx, q));
    })
}

/// `[2, C]`: the batch mean and biased variance of each channel (two passes).
pub(crate) fn bn_stats(lx: &mut Lx, id: NodeId) -> Result<(), JitError> {
    let x = operands(lx, id)?[0];
    let out = lx.val(id)?;
    let ch = Chans::of(&x);
    let count = (ch.n * ch.hw) as f32;
    per_channel(lx, ch, |fx, q| {
        let s = ch.sum(fx, &[x], q, &|_, _, v| v[0]);
        let ty = ch.ty();
        let inv = fx.fconst(ty, 1.0 / count);
        let mean = fx.fmul(s, inv);
        let m4 = if ch.blocked { mean } else { fx.splat(F32X4, mean) };
        let v = ch.sum(fx, &[x], q, &|fx, ty, v| {
            let m = if ty == F32X4 { m4 } else { mean };
            let d = fx.fsub(v[0], m);
            fx.fmul(d, d)
        });
        let var = fx.fmul(v, inv);
        let base = fx.abs(out.addr);
        ch.store_vec(fx, mean, base, q);
        let vb = fx.abs(out.addr + 4 * ch.c as u64);
        ch.store_vec(fx, var, vb, q);
    })
}

/// `[C]`: `gy` summed over the batch and pixels.
pub(crate) fn bias_grad(lx: &mut Lx, id: NodeId) -> Result<(), JitError> {
    if lx.written.contains(&id) {
        return Ok(());
    }
    let gy = operands(lx, id)?[0];
    let out = lx.val(id)?;
    let ch = Chans::of(&gy);
    per_channel(lx, ch, |fx, q| {
        // Four accumulators: a plain sum, the ReLU stem's (2M floats at batch 64) was
        // bound by one addition's latency.
        let s = ch.sum_by(fx, &[gy], q, &|_, _, v| v[0], 4);
        let base = fx.abs(out.addr);
        ch.store_vec(fx, s, base, q);
    })
}

/// `[C]`: PReLU's slope gradient, `sum x * gy` where `x <= 0`, from `(x, gy)`.
pub(crate) fn prelu_weight_grad(lx: &mut Lx, id: NodeId) -> Result<(), JitError> {
    let v = operands(lx, id)?;
    let out = lx.val(id)?;
    let ch = Chans::of(&v[0]);
    per_channel(lx, ch, |fx, q| {
        let s = ch.sum(fx, &v, q, &|fx, ty, v| {
            let zero = fx.fconst(ty, 0.0);
            let p = fx.fmul(v[0], v[1]);
            fx.gt_sel(ty, v[0], zero, zero, p)
        });
        let base = fx.abs(out.addr);
        ch.store_vec(fx, s, base, q);
    })
}

/// Mean and `1 / sqrt(var + eps)` of channel `q`: from a `[2, C]` statistics value, or from
/// the running statistics (parameters padded to whole vectors).
fn mean_inv(fx: &mut Fx, ch: &Chans, q: Value, mean: Value, var: Value, eps: f64) -> (Value, Value) {
    let m = ch.load_vec(fx, mean, q);
    let v = ch.load_vec(fx, var, q);
    let ty = ch.ty();
    let e = fx.fconst(ty, eps as f32);
    let s = fx.fadd(v, e);
    let r = fx.sqrt(s);
    let one = fx.fconst(ty, 1.0);
    (m, fx.fdiv(one, r))
}

/// Gamma's gradient `sum gy * (x - mean) * inv`, from `(x, stats, gy)` or `(x, gy)` with the
/// running statistics.
pub(crate) fn bn_gamma_grad(lx: &mut Lx, id: NodeId, bn: &BatchNorm, batch_stats: bool) -> Result<(), JitError> {
    let v = operands(lx, id)?;
    let out = lx.val(id)?;
    let x = v[0];
    let gy = if batch_stats { v[2] } else { v[1] };
    let ch = Chans::of(&x);
    let (mean_addr, var_addr) = if batch_stats {
        (v[1].addr, v[1].addr + 4 * ch.c as u64)
    } else {
        (lx.param(id, "running_mean")?.0, lx.param(id, "running_var")?.0)
    };
    let eps = bn.eps;
    per_channel(lx, ch, |fx, q| {
        let (mb, vb) = (fx.abs(mean_addr), fx.abs(var_addr));
        let (m, inv) = mean_inv(fx, &ch, q, mb, vb, eps);
        let (m4, i4) = if ch.blocked { (m, inv) } else { (fx.splat(F32X4, m), fx.splat(F32X4, inv)) };
        let s = ch.sum(fx, &[x, gy], q, &|fx, ty, v| {
            let (mm, ii) = if ty == F32X4 { (m4, i4) } else { (m, inv) };
            let d = fx.fsub(v[0], mm);
            let xh = fx.fmul(d, ii);
            fx.fmul(v[1], xh)
        });
        let base = fx.abs(out.addr);
        ch.store_vec(fx, s, base, q);
    })
}

/// Batch norm's input gradient through its batch statistics, from `(x, stats, gy)`:
/// `dx = w inv / m (m g - sum g - x^ sum(g x^))`.
pub(crate) fn bn_backward_train(lx: &mut Lx, id: NodeId, bn: &BatchNorm) -> Result<(), JitError> {
    let v = operands(lx, id)?;
    let out = lx.val(id)?;
    let (x, stats, gy) = (v[0], v[1], v[2]);
    let ch = Chans::of(&x);
    let (w, _) = lx.param(id, "weight")?;
    let m = (ch.n * ch.hw) as f32;
    let eps = bn.eps;
    per_channel(lx, ch, |fx, q| {
        let (mb, vb) = (fx.abs(stats.addr), fx.abs(stats.addr + 4 * ch.c as u64));
        let (mean, inv) = mean_inv(fx, &ch, q, mb, vb, eps);
        let (m4, i4) = if ch.blocked { (mean, inv) } else { (fx.splat(F32X4, mean), fx.splat(F32X4, inv)) };
        let sum_g = ch.sum(fx, &[gy], q, &|_, _, v| v[0]);
        let sum_gx = ch.sum(fx, &[x, gy], q, &|fx, ty, v| {
            let (mm, ii) = if ty == F32X4 { (m4, i4) } else { (mean, inv) };
            let d = fx.fsub(v[0], mm);
            let xh = fx.fmul(d, ii);
            fx.fmul(v[1], xh)
        });
        let wb = fx.abs(w);
        let wv = if ch.blocked {
            let a = fx.index(wb, q, 16);
            fx.load(F32X4, a, 0)
        } else {
            let a = fx.index(wb, q, 4);
            fx.load(F32, a, 0)
        };
        let ty = ch.ty();
        let mc = fx.fconst(ty, 1.0 / m);
        let k = fx.fmul(wv, inv);
        let k = fx.fmul(k, mc);
        ch.map(fx, &[x, gy], &out, q, &[mean, inv, sum_g, sum_gx, k], &|fx, ty, c, v| {
            let mm = fx.fconst(ty, m);
            let d = fx.fsub(v[0], c[0]);
            let xh = fx.fmul(d, c[1]);
            let t = fx.fmul(mm, v[1]);
            let t = fx.fsub(t, c[2]);
            let u = fx.fmul(xh, c[3]);
            let t = fx.fsub(t, u);
            fx.fmul(c[4], t)
        });
    })
}
