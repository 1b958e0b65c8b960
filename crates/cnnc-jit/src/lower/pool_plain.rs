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
//! Max pooling instead copies each window's input rows into a per-thread scratch padded with
//! -inf (`Padded`), so every column but the last `ow % 4` is a vector column and no column
//! needs clipped taps (ResNet's stem pooling on 16x16 maps had half its columns scalar).
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
    if kind == PoolKind::Max {
        let first = outs.y.or(outs.argmax).expect("a pass writes something");
        if let Some(geo) = Padded::of(win, &x, first.w) {
            return forward_padded(lx, win, x, outs, geo);
        }
    }
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
            let (xp, yp, ap) = planes_of(fx, &x, outs, u);
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
                                let (v, pv) = tap_vector(fx, (row, ix), (iy, w, ix), (t, s), lanes, &mut pair);
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

/// Max pooling from a scratch copy of the window's rows padded with -inf on both sides, so
/// every column of a row (but the last `ow % 4`) is a vector column: a padded tap never takes
/// over (it is neither larger than the running maximum nor a NaN), so the results and argmaxes
/// are those of the clipped windows. Each of an output row's input rows is copied once.
#[derive(Clone, Copy, Debug)]
struct Padded {
    /// Floats in a scratch row: `pad` of -inf, the input row, -inf up to the last vector load.
    len: usize,
    /// The columns `0..vend` computed by vectors.
    vend: usize,
}

impl Padded {
    /// The largest scratch (all threads' rows of one window) the padded path takes, in bytes.
    const MAX_SCRATCH: usize = 64 << 10;

    fn of(win: &Window, x: &Val, ow: usize) -> Option<Padded> {
        let (k, s, p) = (win.kernel[1], win.stride[1], win.pad[1]);
        let vend = ow / 4 * 4;
        // Where the loads from the input rows already cover these columns the copies only cost.
        if vend == 0 || vector_columns(ow, x.w, k, s, p) == (0, vend) {
            return None;
        }
        let last_load = if s == 1 { k - 1 + 4 } else { ((k - 1) & !1) + 8 };
        let len = (p + x.w).max((vend - 4) * s + last_load);
        (win.kernel[0] * len * 4 <= Self::MAX_SCRATCH).then_some(Padded { len, vend })
    }
}

fn forward_padded(lx: &mut Lx, win: &Window, x: Val, outs: Outs, geo: Padded) -> Result<(), JitError> {
    let first = outs.y.or(outs.argmax).expect("a pass writes something");
    let (oh, ow) = (first.h, first.w);
    let rows: Axis = sliding(oh, x.h, win.kernel[0], win.stride[0], win.pad[0], 1);
    let cols: Axis = sliding(ow, x.w, win.kernel[1], win.stride[1], win.pad[1], 1);
    let rt = table(lx, &rows);
    let (k, s, p) = (win.kernel[1], win.stride[1], win.pad[1]);
    let (kh, len) = (win.kernel[0], geo.len);
    let per_thread = kh * len * 4;
    let scratch = lx.scratch(lx.threads * per_thread);
    let planes = x.n * x.c;
    let tasks = lx.tasks(planes, (planes * oh * ow * kh * k) as f64);
    let w = x.w as i64;
    lx.kernel(tasks, |fx| {
        let (lo, hi) = fx.task_range(planes, tasks);
        let rtab = fx.aux(rt);
        let lanes = lane_offsets(fx, s);
        let base = fx.aux(scratch);
        let th = fx.thread;
        let sp = fx.index(base, th, per_thread as i64);
        // The padding: -inf everywhere once; the row copies overwrite only the interiors.
        let ninf = fx.fconst(F32, f32::NEG_INFINITY);
        fx.for_n(0, (kh * len) as i64, |fx, i| {
            let a = fx.index(sp, i, 4);
            fx.store(ninf, a, 0);
        });
        fx.for_range(lo, hi, 1, |fx, u| {
            let (xp, yp, ap) = planes_of(fx, &x, outs, u);
            fx.for_n(0, oh as i64, |fx, oy| {
                let [rs, rc, rp] = load3(fx, rtab, oy);
                let zero = fx.int(0);
                fx.for_range(zero, rc, 1, |fx, r| {
                    let iy = fx.add(rs, r);
                    let from = fx.index(xp, iy, 4 * w);
                    let to = fx.index(sp, r, 4 * len as i64);
                    copy_row(fx, from, to, p, x.w);
                });
                let orow = fx.muli(oy, ow as i64);
                let (start, end) = (fx.int(0), fx.int(geo.vend as i64));
                fx.for_range(start, end, 4, |fx, ox| {
                    // `c0` is the first tap's scratch column; `c0 - p` its input column.
                    let c0 = fx.muli(ox, s as i64);
                    let (acc, best) =
                        window_rows(fx, F32X4, PoolKind::Max, (sp, len as i64), (rs, rc), |fx, iy, row, body| {
                            let mut pair = None;
                            for t in 0..k as i64 {
                                let sx = fx.addi(c0, t);
                                let ix = fx.addi(sx, -(p as i64));
                                let (v, pv) = tap_vector(fx, (row, sx), (iy, w, ix), (t, s), lanes, &mut pair);
                                body(fx, v, pv);
                            }
                        });
                    let kk = fx.int(k as i64);
                    let o = fx.add(orow, ox);
                    store(fx, F32X4, PoolKind::Max, (acc, best), [rc, kk, rp, kk], o, yp, ap);
                });
                // The last `ow % 4` columns one at a time, from the padded rows too.
                for ox in geo.vend..ow {
                    let [cs, cc, cp] = cols.entries[ox];
                    let (acc, best) =
                        window_rows(fx, F32, PoolKind::Max, (sp, len as i64), (rs, rc), |fx, iy, row, body| {
                            let prow = fx.muli(iy, w);
                            for ix in cs as i64..(cs + cc) as i64 {
                                let v = fx.load(F32, row, 4 * (ix + p as i64));
                                let pix = fx.addi(prow, ix);
                                let pf = fx.i2f(pix);
                                body(fx, v, pf);
                            }
                        });
                    let (cc, cp) = (fx.int(cc as i64), fx.int(cp as i64));
                    let o = fx.addi(orow, ox as i64);
                    store(fx, F32, PoolKind::Max, (acc, best), [rc, cc, rp, cp], o, yp, ap);
                }
            });
        });
    })
}

/// Copies the `w` floats at `from` to `to + 4 pad` (four at a time, then one at a time).
fn copy_row(fx: &mut Fx, from: Value, to: Value, pad: usize, w: usize) {
    let to = fx.addi(to, 4 * pad as i64);
    let full = w / 4 * 4;
    if full > 0 {
        fx.for_step(0, full as i64, 4, |fx, i| {
            let a = fx.index(from, i, 4);
            let v = fx.load(F32X4, a, 0);
            let b = fx.index(to, i, 4);
            fx.store(v, b, 0);
        });
    }
    for i in full..w {
        let v = fx.load(F32, from, 4 * i as i64);
        fx.store(v, to, 4 * i as i64);
    }
}

/// Plane `u` (image `u / C`, channel `u % C`) of the input, the pooled map and the argmax.
fn planes_of(fx: &mut Fx, x: &Val, outs: Outs, u: Value) -> (Value, Option<Value>, Option<Value>) {
    let n = fx.udiv(u, x.c as i64);
    let ch = fx.urem(u, x.c as i64);
    let xp = x.plane(fx, n, ch);
    (xp, outs.y.map(|y| y.plane(fx, n, ch)), outs.argmax.map(|a| a.plane(fx, n, ch)))
}

/// Tap `t` of four vector columns: the values at `row[col..]` (stride 1: one load; stride 2:
/// taps `2j` and `2j + 1` share the 8 floats loaded at tap `2j`, kept in `pair`, and take their
/// even and odd lanes) and the lanes' flat input indices `iy * w + ix + lanes`.
fn tap_vector(
    fx: &mut Fx,
    (row, col): (Value, Value),
    (iy, w, ix): (Value, i64, Value),
    (t, s): (i64, usize),
    lanes: Value,
    pair: &mut Option<(Value, Value)>,
) -> (Value, Value) {
    let v = if s == 1 {
        let a = fx.index(row, col, 4);
        fx.load(F32X4, a, 0)
    } else {
        if t % 2 == 0 {
            let a = fx.index(row, col, 4);
            *pair = Some((fx.load(F32X4, a, 0), fx.load(F32X4, a, 16)));
        }
        let (va, vb) = pair.expect("an even tap comes first");
        alternate(fx, va, vb, t % 2 == 1)
    };
    let pix = fx.mad(iy, w, ix);
    let pf = fx.i2f(pix);
    let pv = fx.splat(F32X4, pf);
    (v, fx.fadd(pv, lanes))
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
    rows: (Value, Value),
    taps: impl FnMut(&mut Fx, Value, Value, &mut dyn FnMut(&mut Fx, Value, Value)),
) -> (Value, Value) {
    window_in(fx, ty, kind, (xp, w), None, rows, taps)
}

/// As [`window`], row `r` of the window read from scratch row `r` (`len` floats a row) of `sp`.
#[allow(clippy::type_complexity)]
fn window_rows(
    fx: &mut Fx,
    ty: types::Type,
    kind: PoolKind,
    (sp, len): (Value, i64),
    rows: (Value, Value),
    taps: impl FnMut(&mut Fx, Value, Value, &mut dyn FnMut(&mut Fx, Value, Value)),
) -> (Value, Value) {
    window_in(fx, ty, kind, (sp, 0), Some((sp, len)), rows, taps)
}

#[allow(clippy::type_complexity)]
fn window_in(
    fx: &mut Fx,
    ty: types::Type,
    kind: PoolKind,
    (xp, w): (Value, i64),
    scratch: Option<(Value, i64)>,
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
        let row = match scratch {
            Some((sp, len)) => fx.index(sp, r, 4 * len),
            None => fx.index(xp, iy, 4 * w),
        };
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
