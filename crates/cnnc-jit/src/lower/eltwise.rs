//! Elementwise and per-channel nodes: activations and their backward, sums and products,
//! PReLU, copies (views that the plan did not alias, dropout at inference, concatenation
//! into slices), reorders between layouts and dropout masks.
//!
//! Operands of an elementwise node share its layout (the layout rule `Follows`), so one flat
//! loop over the stored floats of each image serves every layout; padding lanes of blocked
//! values are computed like the others (they hold finite values, which stay finite).

use super::reduce::map_pixels;
use super::{Lx, Val};
use crate::emit::{F32, F32X4, Fx, I64};
use crate::error::JitError;
use crate::vmath;
use cnnc_ir::plan::Alias;
use cnnc_ir::{Activation, Layout, NodeId, SavedSide};
use cranelift_codegen::ir::condcodes::IntCC;
use cranelift_codegen::ir::{InstBuilder, Type, Value};

/// Floats per unit of flat work (a task does whole units).
const CHUNK: usize = 4096;

/// `out[i] = f(ins[0][i], ...)` over every stored float of every image; `f` is lane-generic.
pub(crate) fn flat(
    lx: &mut Lx,
    ins: &[Val],
    out: Val,
    f: impl Fn(&mut Fx, Type, &[Value]) -> Value,
) -> Result<(), JitError> {
    let stored = out.stored();
    let per = stored.div_ceil(CHUNK);
    let units = out.n * per;
    let tasks = lx.tasks(units, (units * CHUNK) as f64);
    let ins = ins.to_vec();
    lx.kernel(tasks, |fx| {
        let (lo, hi) = fx.task_range(units, tasks);
        fx.for_range(lo, hi, 1, |fx, u| {
            let n = fx.udiv(u, per as i64);
            let chunk = fx.urem(u, per as i64);
            let start = fx.muli(chunk, CHUNK as i64);
            let end = fx.addi(start, CHUNK as i64);
            let vec_total = (stored - stored % 4) as i64;
            let vt = fx.int(vec_total);
            let vend = fx.smin(end, vt);
            let bases: Vec<Value> = ins.iter().map(|v| v.image(fx, n)).collect();
            let obase = out.image(fx, n);
            fx.for_range(start, vend, 4, |fx, i| {
                let xs: Vec<Value> = bases
                    .iter()
                    .map(|&b| {
                        let a = fx.index(b, i, 4);
                        fx.load(F32X4, a, 0)
                    })
                    .collect();
                let y = f(fx, F32X4, &xs);
                let a = fx.index(obase, i, 4);
                fx.store(y, a, 0);
            });
            if !stored.is_multiple_of(4) {
                let tot = fx.int(stored as i64);
                let tend = fx.smin(end, tot);
                let tstart = fx.smax(start, vt);
                fx.for_range(tstart, tend, 1, |fx, i| {
                    let xs: Vec<Value> = bases
                        .iter()
                        .map(|&b| {
                            let a = fx.index(b, i, 4);
                            fx.load(F32, a, 0)
                        })
                        .collect();
                    let y = f(fx, F32, &xs);
                    let a = fx.index(obase, i, 4);
                    fx.store(y, a, 0);
                });
            }
        });
    })
}

/// Where a per-channel coefficient array is: a parameter.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Coef {
    Abs(u64),
}

impl Coef {
    pub fn addr(self, fx: &mut Fx) -> Value {
        match self {
            Coef::Abs(a) => fx.abs(a),
        }
    }
}

/// `out[n, c, p] = f(coef[c]..., ins[n, c, p]...)` for every channel plane: plain values
/// four pixels at a time (coefficients broadcast), blocked ones four channels of a pixel at a
/// time. Coefficient arrays must hold a multiple of 16 floats, zero past the channel count.
pub(crate) fn chanwise(
    lx: &mut Lx,
    coefs: &[Coef],
    ins: &[Val],
    out: Val,
    f: impl Fn(&mut Fx, Type, &[Value], &[Value]) -> Value,
) -> Result<(), JitError> {
    let blocked = out.layout == Layout::Blocked16;
    let nq = if blocked { out.c.div_ceil(16) * 4 } else { out.c };
    let hw = out.hw();
    let planes = out.n * nq;
    let tasks = lx.tasks(planes, (planes * hw) as f64);
    let ins = ins.to_vec();
    let coefs = coefs.to_vec();
    lx.kernel(tasks, |fx| {
        let (lo, hi) = fx.task_range(planes, tasks);
        let cbase: Vec<Value> = coefs.iter().map(|c| c.addr(fx)).collect();
        fx.for_range(lo, hi, 1, |fx, u| {
            let n = fx.udiv(u, nq as i64);
            let q = fx.urem(u, nq as i64);
            // The plane's float offset within an image.
            let off = if blocked {
                let blk = fx.udiv(q, 4);
                let lane = fx.urem(q, 4);
                let o = fx.muli(blk, (hw * 16) as i64);
                let l = fx.muli(lane, 4);
                fx.add(o, l)
            } else {
                fx.muli(q, hw as i64)
            };
            let bases: Vec<Value> = ins
                .iter()
                .map(|v| {
                    let img = v.image(fx, n);
                    fx.index(img, off, 4)
                })
                .collect();
            let img = out.image(fx, n);
            let obase = fx.index(img, off, 4);
            if blocked {
                let cs: Vec<Value> = cbase
                    .iter()
                    .map(|&c| {
                        let a = fx.index(c, q, 16);
                        fx.load(F32X4, a, 0)
                    })
                    .collect();
                map_pixels(fx, F32X4, (0, hw as i64, 1), 64, (&bases, obase), &cs, &f);
            } else {
                let cs1: Vec<Value> = cbase
                    .iter()
                    .map(|&c| {
                        let a = fx.index(c, q, 4);
                        fx.load(F32, a, 0)
                    })
                    .collect();
                let cs4: Vec<Value> = cs1.iter().map(|&c| fx.splat(F32X4, c)).collect();
                let hv = (hw - hw % 4) as i64;
                map_pixels(fx, F32X4, (0, hv, 4), 4, (&bases, obase), &cs4, &f);
                map_pixels(fx, F32, (hv, hw as i64, 1), 4, (&bases, obase), &cs1, &f);
            }
        });
    })
}

fn operands(lx: &Lx, id: NodeId) -> Result<Vec<Val>, JitError> {
    lx.plan.graph[id].inputs.iter().map(|&i| lx.val(i)).collect()
}

pub(crate) fn activation(lx: &mut Lx, id: NodeId, a: Activation) -> Result<(), JitError> {
    let x = operands(lx, id)?;
    let y = lx.val(id)?;
    flat(lx, &x, y, |fx, ty, v| vmath::activation(fx, ty, a, v[0]))
}

pub(crate) fn activation_backward(lx: &mut Lx, id: NodeId, a: Activation, from: SavedSide) -> Result<(), JitError> {
    if lx.written.contains(&id) {
        return Ok(());
    }
    let x = operands(lx, id)?;
    let y = lx.val(id)?;
    flat(lx, &x, y, |fx, ty, v| {
        let d = match from {
            SavedSide::Operand => vmath::activation_grad(fx, ty, a, v[0]),
            SavedSide::Output => vmath::activation_grad_from_output(fx, ty, a, v[0])
                .unwrap_or_else(|| vmath::activation_grad(fx, ty, a, v[0])),
        };
        fx.fmul(v[1], d)
    })
}

pub(crate) fn add(lx: &mut Lx, id: NodeId) -> Result<(), JitError> {
    let x = operands(lx, id)?;
    let y = lx.val(id)?;
    flat(lx, &x, y, |fx, _, v| v[1..].iter().fold(v[0], |acc, &b| fx.fadd(acc, b)))
}

pub(crate) fn mul(lx: &mut Lx, id: NodeId) -> Result<(), JitError> {
    let x = operands(lx, id)?;
    let y = lx.val(id)?;
    flat(lx, &x, y, |fx, _, v| fx.fmul(v[0], v[1]))
}

/// The identity (dropout at inference), unless the plan wrote it over its operand.
pub(crate) fn copy(lx: &mut Lx, id: NodeId) -> Result<(), JitError> {
    let x = operands(lx, id)?;
    let y = lx.val(id)?;
    if x[0].addr == y.addr && x[0].bs == y.bs {
        return Ok(());
    }
    flat(lx, &x[..1], y, |_, _, v| v[0])
}

/// A view (flatten, reshape, channel slice): nothing to do where the plan aliases it;
/// otherwise the viewed bytes are copied.
pub(crate) fn view_or_copy(lx: &mut Lx, id: NodeId) -> Result<(), JitError> {
    if lx.plan.memory.place(id).is_some_and(|p| matches!(p.alias, Alias::View(_))) {
        return Ok(());
    }
    let x = operands(lx, id)?[0];
    let y = lx.val(id)?;
    let start =
        if let cnnc_ir::Op::Train(cnnc_ir::TrainOp::Slice { start, .. }) = lx.plan.graph[id].op { start } else { 0 };
    let src = Val { addr: x.addr + 4 * x.at(start, 0, 0) as u64, ..y };
    let src = Val { bs: x.bs, ..src };
    flat(lx, &[src], y, |_, _, v| v[0])
}

/// Each operand copied into its channel slice of the output.
pub(crate) fn concat(lx: &mut Lx, id: NodeId) -> Result<(), JitError> {
    let x = operands(lx, id)?;
    let y = lx.val(id)?;
    let mut start = 0;
    for v in x {
        let dst = Val { addr: y.addr + 4 * y.at(start, 0, 0) as u64, c: v.c, ..y };
        flat(lx, &[v], dst, |_, _, s| s[0])?;
        start += v.c;
    }
    Ok(())
}

pub(crate) fn prelu(lx: &mut Lx, id: NodeId) -> Result<(), JitError> {
    let x = operands(lx, id)?;
    let y = lx.val(id)?;
    let (slope, _) = lx.param(id, "weight")?;
    chanwise(lx, &[Coef::Abs(slope)], &x, y, |fx, ty, c, v| {
        let zero = fx.fconst(ty, 0.0);
        let sx = fx.fmul(c[0], v[0]);
        fx.gt_sel(ty, v[0], zero, v[0], sx)
    })
}

/// `(x, gy) -> x > 0 ? gy : slope * gy`.
pub(crate) fn prelu_backward_data(lx: &mut Lx, id: NodeId) -> Result<(), JitError> {
    let x = operands(lx, id)?;
    let y = lx.val(id)?;
    let (slope, _) = lx.param(id, "weight")?;
    chanwise(lx, &[Coef::Abs(slope)], &x, y, |fx, ty, c, v| {
        let zero = fx.fconst(ty, 0.0);
        let sg = fx.fmul(c[0], v[1]);
        fx.gt_sel(ty, v[0], zero, v[1], sg)
    })
}

/// Between `nchw` and `nChw16c`: padding lanes of a blocked result are zeroed. After a
/// blocked stem both sides are blocked: a copy, or nothing when the stem wrote in place.
pub(crate) fn reorder(lx: &mut Lx, id: NodeId) -> Result<(), JitError> {
    // Written by the pooling before it, or run with the pooling backward after it.
    if lx.written.contains(&id) || super::pool::plain2x2::backward(lx, id)? {
        return Ok(());
    }
    let x = operands(lx, id)?[0];
    let y = lx.val(id)?;
    if x.layout == y.layout {
        return copy(lx, id);
    }
    let (c, hw) = (y.c, y.hw());
    let cb = c.div_ceil(16);
    let planes = y.n * cb;
    let tasks = lx.tasks(planes, (planes * hw * 16) as f64);
    let to_blocked = y.layout == Layout::Blocked16;
    let (blk, pln) = if to_blocked { (y, x) } else { (x, y) };
    lx.kernel(tasks, |fx| {
        let (lo, hi) = fx.task_range(planes, tasks);
        fx.for_range(lo, hi, 1, |fx, u| {
            let n = fx.udiv(u, cb as i64);
            let b = fx.urem(u, cb as i64);
            let bimg = blk.image(fx, n);
            let boff = fx.muli(b, (hw * 64) as i64);
            let bbase = fx.add(bimg, boff);
            let pimg = pln.image(fx, n);
            let c0 = fx.muli(b, 16);
            fx.for_n(0, 16, |fx, l| {
                let ch = fx.add(c0, l);
                let real = fx.icmpi(IntCC::SignedLessThan, ch, c as i64);
                let pbase = fx.index(pimg, ch, (hw * 4) as i64);
                let lb = fx.index(bbase, l, 4);
                fx.if_else(
                    real,
                    |fx| {
                        fx.for_n(0, hw as i64, |fx, p| {
                            let pa = fx.index(pbase, p, 4);
                            let ba = fx.index(lb, p, 64);
                            if to_blocked {
                                let v = fx.load(F32, pa, 0);
                                fx.store(v, ba, 0);
                            } else {
                                let v = fx.load(F32, ba, 0);
                                fx.store(v, pa, 0);
                            }
                        });
                    },
                    |fx| {
                        if to_blocked {
                            let zero = fx.fconst(F32, 0.0);
                            fx.for_n(0, hw as i64, |fx, p| {
                                let ba = fx.index(lb, p, 64);
                                fx.store(zero, ba, 0);
                            });
                        }
                    },
                );
            });
        });
    })
}

/// Inverted dropout's mask with the interpreter's counter-based SplitMix64 (see
/// `cnnc_interp::dropout_mask`): logical element `i` (row-major over `[N, C, H, W]`) is
/// dropped when `mix(s + (i + 1) * GOLDEN) >> 11 < p * 2^53`, with
/// `s = seed ^ fnv1a64(name) ^ step * 0xD1B5_4A32_D192_ED03`.
pub(crate) fn dropout_mask(lx: &mut Lx, id: NodeId, p: f64) -> Result<(), JitError> {
    let y = lx.val(id)?;
    let name_hash = fnv1a64(&lx.plan.graph[id].name);
    let keep = if p < 1.0 { (1.0 / (1.0 - p)) as f32 } else { 0.0 };
    // uniform < p exactly: the top 53 bits as an integer against ceil(p * 2^53).
    let threshold = (p * (1u64 << 53) as f64).ceil().min((1u64 << 53) as f64) as i64;
    let stored_c = match y.layout {
        Layout::Plain => y.c,
        Layout::Blocked16 => y.c.div_ceil(16) * 16,
    };
    let (c, hw) = (y.c, y.hw());
    let planes = y.n * stored_c;
    let tasks = lx.tasks(planes, (planes * hw * 8) as f64);
    lx.kernel(tasks, |fx| {
        let seed_a = fx.aux(super::ARG_SEED);
        let seed = fx.load(I64, seed_a, 0);
        let step = fx.load(I64, seed_a, (super::ARG_STEP - super::ARG_SEED) as i64);
        let m = fx.muli(step, 0xD1B5_4A32_D192_ED03u64 as i64);
        let h = fx.int(name_hash as i64);
        let s = fx.b.ins().bxor(seed, h);
        let s = fx.b.ins().bxor(s, m);
        let (lo, hi) = fx.task_range(planes, tasks);
        let keepv = fx.fconst(F32, keep);
        let zero = fx.fconst(F32, 0.0);
        fx.for_range(lo, hi, 1, |fx, u| {
            let n = fx.udiv(u, stored_c as i64);
            let ch = fx.urem(u, stored_c as i64);
            let base = y.plane(fx, n, ch);
            let real = fx.icmpi(IntCC::SignedLessThan, ch, c as i64);
            // Logical index of the plane's first element.
            let nc = fx.mad(n, c as i64, ch);
            let i0 = fx.muli(nc, hw as i64);
            fx.for_n(0, hw as i64, |fx, px| {
                let i = fx.add(i0, px);
                let i1 = fx.addi(i, 1);
                let g = fx.muli(i1, 0x9E37_79B9_7F4A_7C15u64 as i64);
                let z = fx.add(s, g);
                let z = mix(fx, z);
                let top = fx.b.ins().ushr_imm_s(z, 11);
                let dropped = fx.icmpi(IntCC::UnsignedLessThan, top, threshold);
                let v = fx.b.ins().select(dropped, zero, keepv);
                let v = fx.b.ins().select(real, v, zero);
                let a = fx.index(base, px, 4 * y.es());
                fx.store(v, a, 0);
            });
        });
    })
}

/// FNV-1a over the bytes of a layer name: how the name enters its dropout stream (the
/// interpreter's definition).
fn fnv1a64(name: &str) -> u64 {
    name.bytes().fold(0xCBF2_9CE4_8422_2325, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01B3))
}

/// SplitMix64's output function.
fn mix(fx: &mut Fx, z: Value) -> Value {
    let a = fx.b.ins().ushr_imm_s(z, 30);
    let z = fx.b.ins().bxor(z, a);
    let z = fx.muli(z, 0xBF58_476D_1CE4_E5B9u64 as i64);
    let a = fx.b.ins().ushr_imm_s(z, 27);
    let z = fx.b.ins().bxor(z, a);
    let z = fx.muli(z, 0x94D0_49BB_1331_11EBu64 as i64);
    let a = fx.b.ins().ushr_imm_s(z, 31);
    fx.b.ins().bxor(z, a)
}
