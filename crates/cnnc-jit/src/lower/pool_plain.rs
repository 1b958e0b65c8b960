//! Sliding-window pooling on plain (`nchw`) planes, four output columns per F32X4 vector:
//! the pooling after a plain stem (ResNet's 3x3/2 max pooling, LeNet's 2x2 averages) in both
//! kernel modes. Columns whose windows lie inside the input row, with room for the vector
//! loads, are computed four at a time (stride 1: one unaligned load per tap; stride 2: two
//! loads and their even lanes, `shufps`); the edge columns one at a time. Rows are clipped by
//! the per-row table of `pool.rs`. At stride 2 taps `2j` and `2j + 1` share one pair of loads
//! (their even and odd lanes), so a 2x2/2 pooling needs no float past the row's end and every
//! column of an even-width row is a vector column. The edge columns' taps are known at compile
//! time and unrolled (no per-column table or loop). One pass can write the pooled value and
//! max pooling's argmax together (the two nodes of a training graph's max pooling).
//!
//! Semantics as the general code: a larger value or a NaN takes over (the first maximum wins
//! ties, the last NaN wins), the argmax is the f32 flat index `y * W + x` within the plane,
//! averages divide by the clipped (or padded) window, L2 is the root of the sum of squares.

use super::pool::{Axis, divisor, load3, sliding, table};
use super::{Lx, Val};
use crate::emit::{F32, F32X4, Fx};
use crate::error::JitError;
use cnnc_ir::{Layout, PoolKind, Window};
use cranelift_codegen::ir::condcodes::FloatCC;
use cranelift_codegen::ir::{ConstantData, Endianness, InstBuilder, MemFlagsData, Value, types};

/// The outputs one pass writes: the pooled map, the argmax, or both.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Outs {
    pub y: Option<Val>,
    pub argmax: Option<Val>,
}

/// Whether the vector path takes a pooling of `x` (plain, undilated, stride 1 or 2 across).
pub(crate) fn fits(win: &Window, x: &Val) -> bool {
    x.layout == Layout::Plain && win.dilation == [1, 1] && matches!(win.stride[1], 1 | 2) && win.kernel[1] <= 8
}

/// The columns `lo..lo + 4 m` computed by vectors: every lane's window inside the row and the
/// loads too (stride 1: 4 floats from each tap's column; stride 2: 8 floats from the even tap
/// at or before each tap).
fn vector_columns(ow: usize, w: usize, k: usize, s: usize, p: usize) -> (usize, usize) {
    let lo = p.div_ceil(s).min(ow);
    let last_load = if s == 1 { k - 1 + 4 } else { ((k - 1) & !1) + 8 };
    let mut end = lo;
    while end + 4 <= ow && end * s - p + last_load <= w {
        end += 4;
    }
    (lo, end)
}

fn bits(fx: &mut Fx, to: types::Type, v: Value) -> Value {
    fx.b.ins().bitcast(to, MemFlagsData::new().with_endianness(Endianness::Little), v)
}

/// The even (`odd` false) or odd lanes of `a ++ b` (one `shufps`).
fn alternate(fx: &mut Fx, a: Value, b: Value, odd: bool) -> Value {
    let first = u8::from(odd);
    let mask: Vec<u8> =
        [first, first + 2, first + 4, first + 6].iter().flat_map(|&l| (0..4).map(move |k| 4 * l + k)).collect();
    let imm = fx.b.func.dfg.immediates.push(ConstantData::from(mask));
    let (a, b) = (bits(fx, types::I8X16, a), bits(fx, types::I8X16, b));
    let r = fx.b.ins().shuffle(a, b, imm);
    bits(fx, F32X4, r)
}

/// `[0, s, 2 s, 3 s]` as floats (the lanes' column offsets).
fn lane_offsets(fx: &mut Fx, s: usize) -> Value {
    let z = fx.fconst(F32X4, 0.0);
    (1..4u8).fold(z, |v, l| {
        let c = fx.b.ins().f32const((l as usize * s) as f32);
        fx.b.ins().insertlane(v, c, l)
    })
}

/// Pools `x` into `outs` (see the module comment); `fits` must hold.
pub(crate) fn forward(lx: &mut Lx, kind: PoolKind, win: &Window, x: Val, outs: Outs) -> Result<(), JitError> {
    let first = outs.y.or(outs.argmax).expect("a pass writes something");
    let (oh, ow) = (first.h, first.w);
    let rows: Axis = sliding(oh, x.h, win.kernel[0], win.stride[0], win.pad[0], 1);
    let cols: Axis = sliding(ow, x.w, win.kernel[1], win.stride[1], win.pad[1], 1);
    let rt = table(lx, &rows);
    let (k, s, p) = (win.kernel[1], win.stride[1], win.pad[1]);
    let (vlo, vend) = vector_columns(ow, x.w, k, s, p);
    let planes = x.n * x.c;
    let tasks = lx.tasks(planes, (planes * oh * ow * win.kernel[0] * k) as f64);
    let w = x.w as i64;
    lx.kernel(tasks, |fx| {
        let (lo, hi) = fx.task_range(planes, tasks);
        let rtab = fx.aux(rt);
        let lanes = lane_offsets(fx, s);
        fx.for_range(lo, hi, 1, |fx, u| {
            let n = fx.udiv(u, x.c as i64);
            let ch = fx.urem(u, x.c as i64);
            let xp = x.plane(fx, n, ch);
            let yp = outs.y.map(|y| y.plane(fx, n, ch));
            let ap = outs.argmax.map(|a| a.plane(fx, n, ch));
            fx.for_n(0, oh as i64, |fx, oy| {
                let [rs, rc, rp] = load3(fx, rtab, oy);
                let orow = fx.muli(oy, ow as i64);
                // The edge columns, each with its own taps unrolled.
                let scalar = |fx: &mut Fx, from: usize, to: usize| {
                    for ox in from..to {
                        let [cs, cc, cp] = cols.entries[ox];
                        let (acc, best) = window(fx, F32, kind, xp, w, (rs, rc), |fx, iy, row, body| {
                            let prow = fx.muli(iy, w);
                            for ix in cs as i64..(cs + cc) as i64 {
                                let v = fx.load(F32, row, 4 * ix);
                                let pix = fx.addi(prow, ix);
                                let pf = fx.i2f(pix);
                                body(fx, v, pf);
                            }
                        });
                        let (cc, cp) = (fx.int(cc as i64), fx.int(cp as i64));
                        let o = fx.addi(orow, ox as i64);
                        store(fx, F32, kind, (acc, best), [rc, cc, rp, cp], o, yp, ap);
                    }
                };
                scalar(fx, 0, vlo);
                if vend > vlo {
                    let (start, end) = (fx.int(vlo as i64), fx.int(vend as i64));
                    fx.for_range(start, end, 4, |fx, ox| {
                        let c0 = fx.muli(ox, s as i64);
                        let c0 = fx.addi(c0, -(p as i64));
                        let (acc, best) = window(fx, F32X4, kind, xp, w, (rs, rc), |fx, iy, row, body| {
                            let mut pair = None;
                            for t in 0..k as i64 {
                                let ix = fx.addi(c0, t);
                                let v = if s == 1 {
                                    let a = fx.index(row, ix, 4);
                                    fx.load(F32X4, a, 0)
                                } else {
                                    // Taps 2j and 2j + 1 read the same 8 floats from column 2j.
                                    if t % 2 == 0 {
                                        let a = fx.index(row, ix, 4);
                                        pair = Some((fx.load(F32X4, a, 0), fx.load(F32X4, a, 16)));
                                    }
                                    let (va, vb) = pair.expect("an even tap comes first");
                                    alternate(fx, va, vb, t % 2 == 1)
                                };
                                let pix = fx.mad(iy, w, ix);
                                let pf = fx.i2f(pix);
                                let pv = fx.splat(F32X4, pf);
                                let pv = fx.fadd(pv, lanes);
                                body(fx, v, pv);
                            }
                        });
                        let kk = fx.int(k as i64);
                        let o = fx.add(orow, ox);
                        store(fx, F32X4, kind, (acc, best), [rc, kk, rp, kk], o, yp, ap);
                    });
                }
                scalar(fx, vend, ow);
            });
        });
    })
}

/// One window (or four): `taps(fx, iy, row address, body)` calls `body(value, flat index)` for
/// each tap of input row `iy`, rows `rs..rs + rc`; returns the accumulator and the argmax.
#[allow(clippy::type_complexity)]
fn window(
    fx: &mut Fx,
    ty: types::Type,
    kind: PoolKind,
    xp: Value,
    w: i64,
    (rs, rc): (Value, Value),
    mut taps: impl FnMut(&mut Fx, Value, Value, &mut dyn FnMut(&mut Fx, Value, Value)),
) -> (Value, Value) {
    let init = match kind {
        PoolKind::Max => f32::NEG_INFINITY,
        PoolKind::Avg { .. } | PoolKind::L2 => 0.0,
    };
    let i0 = fx.fconst(ty, init);
    let acc = fx.var_init(ty, i0);
    let m1 = fx.fconst(ty, -1.0);
    let best = fx.var_init(ty, m1);
    let zero = fx.int(0);
    fx.for_range(zero, rc, 1, |fx, r| {
        let iy = fx.add(rs, r);
        let row = fx.index(xp, iy, 4 * w);
        taps(fx, iy, row, &mut |fx, v, pix| {
            let cur = fx.get(acc);
            let next = match kind {
                PoolKind::Max => {
                    let gt = fx.fcmp(FloatCC::GreaterThan, v, cur);
                    let nan = fx.fcmp(FloatCC::Unordered, v, v);
                    let m = fx.b.ins().bor(gt, nan);
                    let b = fx.get(best);
                    let nb = fx.sel(ty, m, pix, b);
                    fx.set(best, nb);
                    fx.sel(ty, m, v, cur)
                }
                PoolKind::Avg { .. } => fx.fadd(cur, v),
                PoolKind::L2 => fx.fma(v, v, cur),
            };
            fx.set(acc, next);
        });
    });
    (fx.get(acc), fx.get(best))
}

/// Stores a result (and the argmax) at output position `o` of the planes.
#[allow(clippy::too_many_arguments)]
fn store(
    fx: &mut Fx,
    ty: types::Type,
    kind: PoolKind,
    (acc, best): (Value, Value),
    counts: [Value; 4],
    o: Value,
    yp: Option<Value>,
    ap: Option<Value>,
) {
    if let Some(yp) = yp {
        let v = match kind {
            PoolKind::Max => acc,
            PoolKind::Avg { include_pad } => {
                let d = divisor(fx, include_pad, counts);
                let d = fx.splat(ty, d);
                fx.fdiv(acc, d)
            }
            PoolKind::L2 => fx.sqrt(acc),
        };
        let a = fx.index(yp, o, 4);
        fx.store(v, a, 0);
    }
    if let Some(ap) = ap {
        let a = fx.index(ap, o, 4);
        fx.store(best, a, 0);
    }
}
