//! Pooling of every kind and geometry (sliding windows, global, adaptive, spatial pyramid),
//! forward, argmax and backward, driven by per-axis tables made at compile time: for each
//! output row (column) the first input row (column) its window reads, how many, and how many
//! window positions lie in the input or its padding (the `include_pad` divisor), exactly as
//! the interpreter's `Bins`. Blocked maps pool four channels at once (one vector per pixel).
//! In native mode, blocked max pooling writes its value and its argmax in one call of
//! `cnnc-kernels`' pool (16 channels a vector), and every backward pass but a pyramid's runs
//! the kernels' `pool_bwd` (blocked or plain).

pub(super) mod plain2x2;

use super::native::{self, Arg};
use super::pool_plain::Outs;
use super::{Lx, Val};
use crate::emit::{F32, F32X4, Fx, I32};
use crate::error::{JitError, plan_err};
use cnnc_ir::{Layout, NodeId, Op, PoolGeometry, PoolKind, TrainOp, Window};
use cnnc_kernels::pool::{PoolArgs, PoolPlan};
use cnnc_kernels::pool_bwd::PoolBwdArgs;
use cnnc_kernels::view::Layout as KLayout;
use cranelift_codegen::ir::condcodes::{FloatCC, IntCC};
use cranelift_codegen::ir::{InstBuilder, Value};

/// One axis: for each output index `(start, count, padded)`; taps are `start + k * step`.
pub(super) struct Axis {
    pub entries: Vec<[i32; 3]>,
    pub step: usize,
}

pub(super) fn sliding(out: usize, size: usize, kernel: usize, stride: usize, pad: usize, dilation: usize) -> Axis {
    let mut entries = Vec::with_capacity(out);
    for o in 0..out {
        let (mut first, mut count, mut padded) = (None, 0, 0);
        for k in 0..kernel {
            let pos = o * stride + k * dilation;
            if pos < size + 2 * pad {
                padded += 1;
            }
            if pos >= pad && pos - pad < size {
                first.get_or_insert(pos - pad);
                count += 1;
            }
        }
        entries.push([first.unwrap_or(0) as i32, count, padded]);
    }
    Axis { entries, step: dilation }
}

fn adaptive(out: usize, size: usize) -> Axis {
    let entries = (0..out)
        .map(|i| {
            let start = i * size / out;
            let end = ((i + 1) * size).div_ceil(out);
            [start as i32, (end - start) as i32, (end - start) as i32]
        })
        .collect();
    Axis { entries, step: 1 }
}

/// The levels of a geometry on a `h x w` input: the two axes and the level's offset (in
/// floats of one image of a pyramid's flat output; 0 otherwise).
fn levels(geometry: &PoolGeometry, c: usize, h: usize, w: usize) -> Result<Vec<(Axis, Axis, usize)>, JitError> {
    Ok(match geometry {
        PoolGeometry::Window(win) => {
            let out = window_out(win, h, w)?;
            vec![(
                sliding(out[0], h, win.kernel[0], win.stride[0], win.pad[0], win.dilation[0]),
                sliding(out[1], w, win.kernel[1], win.stride[1], win.pad[1], win.dilation[1]),
                0,
            )]
        }
        PoolGeometry::Global => vec![(adaptive(1, h), adaptive(1, w), 0)],
        PoolGeometry::Adaptive(o) => vec![(adaptive(o[0], h), adaptive(o[1], w), 0)],
        PoolGeometry::Pyramid(ls) => {
            let mut off = 0;
            let mut v = Vec::new();
            for &l in ls {
                v.push((adaptive(l, h), adaptive(l, w), off));
                off += c * l * l;
            }
            v
        }
    })
}

pub(super) fn window_out(win: &Window, h: usize, w: usize) -> Result<[usize; 2], JitError> {
    let shape = cnnc_ir::Shape(vec![1, h, w]);
    cnnc_ir::shape::window_output(win, [h, w], &shape, &mut Vec::new()).map_err(|e| plan_err(e.to_string()))
}

/// A table of `(start, count, padded)` triples in the auxiliary buffer.
pub(super) fn table(lx: &mut Lx, a: &Axis) -> u64 {
    let flat: Vec<i32> = a.entries.iter().flatten().copied().collect();
    lx.table(&flat)
}

pub(super) fn load3(fx: &mut Fx, tab: Value, i: Value) -> [Value; 3] {
    let at = fx.index(tab, i, 12);
    [0, 4, 8].map(|o| {
        let v = fx.load_ro(I32, at, o);
        fx.b.ins().sextend(crate::emit::I64, v)
    })
}

/// Pooling forward (or, with `argmax`, max pooling's argmax: `h * W + w` of the first
/// maximum, as f32).
pub(crate) fn forward(
    lx: &mut Lx,
    id: NodeId,
    kind: PoolKind,
    geometry: &PoolGeometry,
    argmax: bool,
) -> Result<(), JitError> {
    let x = lx.val(lx.plan.graph[id].inputs[0])?;
    let y = lx.val(id)?;
    if lx.written.contains(&id) {
        return Ok(());
    }
    if let PoolGeometry::Window(win) = geometry
        && !argmax
        && kind == PoolKind::Max
        && plain2x2::forward(lx, id, win, x, sibling(lx, id, geometry))?
    {
        return Ok(());
    }
    if let PoolGeometry::Window(win) = geometry
        && super::pool_plain::fits(win, &x)
    {
        let outs = if argmax {
            Outs { y: None, argmax: Some(y) }
        } else {
            let sibling = if kind == PoolKind::Max { argmax_sibling(lx, id, geometry)? } else { None };
            Outs { y: Some(y), argmax: sibling }
        };
        return super::pool_plain::forward(lx, kind, win, x, outs);
    }
    if !argmax
        && matches!(geometry, PoolGeometry::Global)
        && matches!(kind, PoolKind::Avg { .. })
        && y.c == x.c
        && y.h * y.w == 1
    {
        return global_avg(lx, x, y);
    }
    let native = lx.mode == crate::options::Mode::Native;
    if native
        && !argmax
        && kind == PoolKind::Max
        && x.layout == Layout::Blocked16
        && native_max(lx, id, geometry, x, y)?
    {
        return Ok(());
    }
    if native && !argmax && super::native::pool(lx, id, kind, geometry, x, y)? {
        return Ok(());
    }
    let blocked = x.layout == Layout::Blocked16;
    let (ty, nq) = if blocked { (F32X4, x.c.div_ceil(16) * 4) } else { (F32, x.c) };
    for (ra, ca, level_off) in levels(geometry, x.c, x.h, x.w)? {
        let (oh, ow) = (ra.entries.len(), ca.entries.len());
        // The output of this level as a map (a pyramid's is a plain run of the flat vector).
        let out = if y.h * y.w == oh * ow && y.c == x.c {
            y
        } else {
            Val { addr: y.addr + 4 * level_off as u64, c: x.c, h: oh, w: ow, layout: Layout::Plain, ..y }
        };
        let (rt, ct) = (table(lx, &ra), table(lx, &ca));
        let (dh, dw) = (ra.step as i64, ca.step as i64);
        let planes = x.n * nq;
        let window =
            ra.entries.iter().map(|e| e[1]).max().unwrap_or(1) * ca.entries.iter().map(|e| e[1]).max().unwrap_or(1);
        let tasks = lx.tasks(planes, (planes * oh * ow * window as usize) as f64);
        lx.kernel(tasks, |fx| {
            let (lo, hi) = fx.task_range(planes, tasks);
            let rtab = fx.aux(rt);
            let ctab = fx.aux(ct);
            fx.for_range(lo, hi, 1, |fx, u| {
                let n = fx.udiv(u, nq as i64);
                let q = fx.urem(u, nq as i64);
                let (xp, yp) = plane_pair(fx, &x, &out, n, q, blocked);
                fx.for_n(0, oh as i64, |fx, oy| {
                    let [rs, rc, rp] = load3(fx, rtab, oy);
                    fx.for_n(0, ow as i64, |fx, ox| {
                        let [cs, cc, cp] = load3(fx, ctab, ox);
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
                            let ry = fx.muli(r, dh);
                            let iy = fx.add(rs, ry);
                            let row = fx.muli(iy, x.w as i64);
                            let zero = fx.int(0);
                            fx.for_range(zero, cc, 1, |fx, k| {
                                let kx = fx.muli(k, dw);
                                let ix = fx.add(cs, kx);
                                let pix = fx.add(row, ix);
                                let a = fx.index(xp, pix, 4 * x.es());
                                let v = fx.load(ty, a, 0);
                                let cur = fx.get(acc);
                                let next = match kind {
                                    PoolKind::Max => {
                                        // A larger value, or a NaN, takes over (the first maximum wins ties).
                                        let gt = fx.fcmp(FloatCC::GreaterThan, v, cur);
                                        let nan = fx.fcmp(FloatCC::Unordered, v, v);
                                        let m = fx.b.ins().bor(gt, nan);
                                        if argmax {
                                            let pf = fx.i2f(pix);
                                            let pv = fx.splat(ty, pf);
                                            let b = fx.get(best);
                                            let nb = fx.sel(ty, m, pv, b);
                                            fx.set(best, nb);
                                        }
                                        fx.sel(ty, m, v, cur)
                                    }
                                    PoolKind::Avg { .. } => fx.fadd(cur, v),
                                    PoolKind::L2 => fx.fma(v, v, cur),
                                };
                                fx.set(acc, next);
                            });
                        });
                        let a = fx.get(acc);
                        let result = if argmax {
                            fx.get(best)
                        } else {
                            match kind {
                                PoolKind::Max => a,
                                PoolKind::Avg { include_pad } => {
                                    let d = divisor(fx, include_pad, [rc, cc, rp, cp]);
                                    let d = fx.splat(ty, d);
                                    fx.fdiv(a, d)
                                }
                                PoolKind::L2 => fx.sqrt(a),
                            }
                        };
                        let opix = fx.mad(oy, ow as i64, ox);
                        let oa = fx.index(yp, opix, 4 * out.es());
                        fx.store(result, oa, 0);
                    });
                });
            });
        })?;
    }
    Ok(())
}

/// Global average pooling: each plane (four channels of a blocked map) summed pixel by pixel
/// in order and divided by `h * w`, as the table-driven loops do but without their tables and
/// per-window loops (ResNet's head pools 1x1 maps: a copy).
fn global_avg(lx: &mut Lx, x: Val, y: Val) -> Result<(), JitError> {
    let blocked = x.layout == Layout::Blocked16;
    let (ty, nq) = if blocked { (F32X4, x.c.div_ceil(16) * 4) } else { (F32, x.c) };
    let hw = x.h * x.w;
    if hw == 1 && !blocked && y.layout == Layout::Plain {
        return copy_channels(lx, x, y);
    }
    let planes = x.n * nq;
    let tasks = lx.tasks(planes, (planes * hw) as f64);
    let step = 4 * x.es();
    lx.kernel(tasks, |fx| {
        let (lo, hi) = fx.task_range(planes, tasks);
        fx.for_range(lo, hi, 1, |fx, u| {
            let n = fx.udiv(u, nq as i64);
            let q = fx.urem(u, nq as i64);
            let (xp, yp) = plane_pair(fx, &x, &y, n, q, blocked);
            let zero = fx.fconst(ty, 0.0);
            let acc = fx.var_init(ty, zero);
            fx.for_step(0, hw as i64, 1, |fx, p| {
                let a = fx.index(xp, p, step);
                let v = fx.load(ty, a, 0);
                let cur = fx.get(acc);
                let next = fx.fadd(cur, v);
                fx.set(acc, next);
            });
            let sum = fx.get(acc);
            // A division by 1 is exact (a 1x1 map's pooling is `0 + x`).
            let result = if hw == 1 {
                sum
            } else {
                let d = fx.fconst(ty, hw as f32);
                fx.fdiv(sum, d)
            };
            fx.store(result, yp, 0);
        });
    })
}

/// The global average of plain 1x1 maps (or its gradient): `0 + x` of each image's `c`
/// contiguous floats, four at a time (the kernels' pooling took 10 ns a channel).
fn copy_channels(lx: &mut Lx, x: Val, y: Val) -> Result<(), JitError> {
    let c = x.c as i64;
    let tasks = lx.tasks(x.n, (x.n * x.c) as f64);
    lx.kernel(tasks, |fx| {
        let (lo, hi) = fx.task_range(x.n, tasks);
        fx.for_range(lo, hi, 1, |fx, n| {
            let (xi, yi) = (x.image(fx, n), y.image(fx, n));
            let zero4 = fx.fconst(F32X4, 0.0);
            fx.for_step(0, c / 4 * 4, 4, |fx, i| {
                let a = fx.index(xi, i, 4);
                let v = fx.load(F32X4, a, 0);
                let v = fx.fadd(zero4, v);
                let b = fx.index(yi, i, 4);
                fx.store(v, b, 0);
            });
            let zero = fx.fconst(F32, 0.0);
            for i in c / 4 * 4..c {
                let v = fx.load(F32, xi, 4 * i);
                let v = fx.fadd(zero, v);
                fx.store(v, yi, 4 * i);
            }
        });
    })
}

/// The argmax node of max pooling `id` (same input and geometry, a few nodes on, as the
/// training transform makes it), when its value can be written with the pooled one: its
/// value, and the node recorded as written.
fn argmax_sibling(lx: &mut Lx, id: NodeId, geometry: &PoolGeometry) -> Result<Option<Val>, JitError> {
    match sibling(lx, id, geometry) {
        Some(j) if lx.early_ok(j, id) => {
            lx.written.insert(j);
            Ok(Some(lx.val(j)?))
        }
        _ => Ok(None),
    }
}

/// The kernels' plan of a pooling of `x` (`n x c x h x w` in `layout`), when the kernels take
/// the geometry (a pyramid they do not) and its output is `out_hw`.
fn kernel_plan(
    kind: PoolKind,
    geometry: &PoolGeometry,
    [n, c, h, w]: [usize; 4],
    layout: Layout,
    out_hw: [usize; 2],
) -> Option<PoolPlan> {
    let (k, win) = native::kernel_pooling(kind, geometry)?;
    let layout = match layout {
        Layout::Plain => KLayout::Nchw,
        Layout::Blocked16 => KLayout::NChw16c,
    };
    let plan = PoolPlan::new(n, c, [h, w], k, win, layout, cnnc_kernels::cpu::best()).ok()?;
    (plan.out_hw() == out_hw).then_some(plan)
}

/// Float stride between images of a value.
fn image_floats(v: &Val) -> usize {
    (v.bs / 4) as usize
}

/// Blocked max pooling through the kernels, writing the argmax of the node after it too when
/// it has one (a training graph's): one pass instead of two.
fn native_max(lx: &mut Lx, id: NodeId, geometry: &PoolGeometry, x: Val, y: Val) -> Result<bool, JitError> {
    if y.layout != x.layout || y.c != x.c {
        return Ok(false);
    }
    let Some(plan) = kernel_plan(PoolKind::Max, geometry, [x.n, x.c, x.h, x.w], x.layout, [y.h, y.w]) else {
        return Ok(false);
    };
    let argmax = match sibling(lx, id, geometry) {
        Some(j) if lx.early_ok(j, id) => {
            let a = lx.val(j)?;
            if a.layout != y.layout || (a.c, a.h, a.w) != (y.c, y.h, y.w) {
                return Ok(false);
            }
            lx.written.insert(j);
            Some(a)
        }
        _ => None,
    };
    let args = PoolArgs {
        x: x.addr as *const f32,
        x_bs: image_floats(&x),
        y: y.addr as *mut f32,
        y_bs: image_floats(&y),
        argmax: argmax.map_or(std::ptr::null_mut(), |a| a.addr as *mut f32),
        argmax_bs: argmax.map_or(0, |a| image_floats(&a)),
    };
    let (p, a) = (native::keep(lx, plan), native::keep(lx, args));
    let f = cnnc_kernels::ffi::cnnc_pool_forward as *const () as u64;
    native::call(lx, f, &[Arg::Abs(p), Arg::Abs(a), Arg::Abs(lx.pool)])?;
    Ok(true)
}

/// A pooling backward pass through the kernels (native mode, any layout, no pyramid); `false`
/// when they do not take it.
fn native_backward(
    lx: &mut Lx,
    kind: PoolKind,
    geometry: &PoolGeometry,
    ins: &[Val],
    gx: Val,
    [c, h, w]: [usize; 3],
) -> Result<bool, JitError> {
    let (gy, x, y, argmax) = match kind {
        PoolKind::Max => (ins[0], None, None, Some(ins[1])),
        PoolKind::Avg { .. } => (ins[0], None, None, None),
        PoolKind::L2 => (ins[2], Some(ins[0]), Some(ins[1]), None),
    };
    let same = |v: &Val, [vc, vh, vw]: [usize; 3]| v.layout == gx.layout && (v.c, v.h, v.w) == (vc, vh, vw);
    let out = [c, gy.h, gy.w];
    if !same(&gx, [c, h, w])
        || !same(&gy, out)
        || !x.is_none_or(|v| same(&v, [c, h, w]))
        || !y.is_none_or(|v| same(&v, out))
        || !argmax.is_none_or(|v| same(&v, out))
    {
        return Ok(false);
    }
    let Some(plan) = kernel_plan(kind, geometry, [gx.n, c, h, w], gx.layout, [gy.h, gy.w]) else {
        return Ok(false);
    };
    let ptr = |v: Option<Val>| v.map_or(std::ptr::null(), |v| v.addr as *const f32);
    let bs = |v: Option<Val>| v.map_or(0, |v| image_floats(&v));
    let args = PoolBwdArgs {
        gy: gy.addr as *const f32,
        gy_bs: image_floats(&gy),
        x: ptr(x),
        x_bs: bs(x),
        y: ptr(y),
        y_bs: bs(y),
        argmax: ptr(argmax),
        argmax_bs: bs(argmax),
        dx: gx.addr as *mut f32,
        dx_bs: image_floats(&gx),
        accumulate: false,
    };
    let (p, a) = (native::keep(lx, plan), native::keep(lx, args));
    let f = cnnc_kernels::ffi::cnnc_pool_backward as *const () as u64;
    native::call(lx, f, &[Arg::Abs(p), Arg::Abs(a), Arg::Abs(lx.pool)])?;
    Ok(true)
}

/// The argmax node of max pooling `id`: the same input and geometry, a few nodes on.
fn sibling(lx: &Lx, id: NodeId, geometry: &PoolGeometry) -> Option<NodeId> {
    let graph = &lx.plan.graph;
    let input = graph[id].inputs[0];
    (id.index() + 1..(id.index() + 4).min(graph.len())).map(NodeId::from_index).find(|&j| {
        matches!(&graph[j].op, Op::Train(TrainOp::PoolArgmax(g)) if g == geometry) && graph[j].inputs[0] == input
    })
}

/// The divisor of an average window, `max(1, ...)`, as f32.
pub(super) fn divisor(fx: &mut Fx, include_pad: bool, [rc, cc, rp, cp]: [Value; 4]) -> Value {
    let d = if include_pad { fx.mul(rp, cp) } else { fx.mul(rc, cc) };
    let one = fx.int(1);
    let d = fx.smax(d, one);
    fx.i2f(d)
}

/// The plane addresses of channel (vector channel) `q` of image `n` in `x` and `y`.
fn plane_pair(fx: &mut Fx, x: &Val, y: &Val, n: Value, q: Value, blocked: bool) -> (Value, Value) {
    if blocked {
        // Vector channel q: block q / 4, lanes 4 (q % 4) ..
        let blk = fx.udiv(q, 4);
        let lane = fx.urem(q, 4);
        let l = fx.muli(lane, 16);
        let xi = x.image(fx, n);
        let xo = fx.index(xi, blk, (x.hw() * 64) as i64);
        let xp = fx.add(xo, l);
        let yi = y.image(fx, n);
        let yo = fx.index(yi, blk, (y.hw() * 64) as i64);
        let yp = fx.add(yo, l);
        (xp, yp)
    } else {
        (x.plane(fx, n, q), y.plane(fx, n, q))
    }
}

/// Pooling backward: the input gradient, zeroed, then each output gradient sent back
/// through its window (max: to the recorded argmax; average: shared; L2: `gy * x / y`).
/// Operands by kind: max `(gy, argmax)`, average `(gy)`, L2 `(x, y, gy)`.
pub(crate) fn backward(
    lx: &mut Lx,
    id: NodeId,
    kind: PoolKind,
    geometry: &PoolGeometry,
    input: [usize; 3],
) -> Result<(), JitError> {
    if lx.written.contains(&id) {
        return Ok(());
    }
    let ins: Vec<Val> = lx.plan.graph[id].inputs.iter().map(|&i| lx.val(i)).collect::<Result<_, _>>()?;
    let gx = lx.val(id)?;
    // A global average of plain 1x1 maps passes its gradient through (divided by 1).
    if matches!((kind, geometry), (PoolKind::Avg { .. }, PoolGeometry::Global))
        && input[1] * input[2] == 1
        && [gx, ins[0]].iter().all(|v| v.layout == Layout::Plain && v.c == input[0] && v.h * v.w == 1)
    {
        return copy_channels(lx, ins[0], gx);
    }
    if lx.mode == crate::options::Mode::Native && native_backward(lx, kind, geometry, &ins, gx, input)? {
        return Ok(());
    }
    let gy = match kind {
        PoolKind::Max | PoolKind::Avg { .. } => ins[0],
        PoolKind::L2 => ins[2],
    };
    let [c, h, w] = input;
    let stored_c = match gx.layout {
        Layout::Plain => c,
        Layout::Blocked16 => c.div_ceil(16) * 16,
    };
    let lv = levels(geometry, c, h, w)?;
    let mut tabs = Vec::new();
    for (ra, ca, off) in &lv {
        tabs.push((
            table(lx, ra),
            table(lx, ca),
            ra.entries.len(),
            ca.entries.len(),
            ra.step as i64,
            ca.step as i64,
            *off,
        ));
    }
    let planes = gx.n * stored_c;
    let tasks = lx.tasks(planes, (planes * h * w * 4) as f64);
    let pyramid = matches!(geometry, PoolGeometry::Pyramid(_));
    lx.kernel(tasks, |fx| {
        let (lo, hi) = fx.task_range(planes, tasks);
        fx.for_range(lo, hi, 1, |fx, u| {
            let n = fx.udiv(u, stored_c as i64);
            let ch = fx.urem(u, stored_c as i64);
            let gxp = gx.plane(fx, n, ch);
            let zero = fx.fconst(F32, 0.0);
            fx.for_n(0, (h * w) as i64, |fx, p| {
                let a = fx.index(gxp, p, 4 * gx.es());
                fx.store(zero, a, 0);
            });
            let real = fx.icmpi(IntCC::SignedLessThan, ch, c as i64);
            fx.if_then(real, |fx| {
                for &(rt, ct, oh, ow, dh, dw, off) in &tabs {
                    // The output-side values of this level, as maps.
                    let level = |v: &Val| {
                        if pyramid {
                            Val { addr: v.addr + 4 * off as u64, c, h: oh, w: ow, layout: Layout::Plain, ..*v }
                        } else {
                            *v
                        }
                    };
                    let gyl = level(&gy);
                    let gyp = gyl.plane(fx, n, ch);
                    let rtab = fx.aux(rt);
                    let ctab = fx.aux(ct);
                    match kind {
                        PoolKind::Max => {
                            let am = level(&ins[1]);
                            let amp = am.plane(fx, n, ch);
                            fx.for_n(0, (oh * ow) as i64, |fx, k| {
                                let ga = fx.index(gyp, k, 4 * gyl.es());
                                let g = fx.load(F32, ga, 0);
                                let ia = fx.index(amp, k, 4 * am.es());
                                let idx = fx.load(F32, ia, 0);
                                let i = fx.b.ins().fcvt_to_sint_sat(crate::emit::I64, idx);
                                // Only indices inside the plane (the argmax kernel makes no others).
                                let ok = fx.icmpi(IntCC::UnsignedLessThan, i, (h * w) as i64);
                                fx.if_then(ok, |fx| {
                                    let xa = fx.index(gxp, i, 4 * gx.es());
                                    let old = fx.load(F32, xa, 0);
                                    let new = fx.fadd(old, g);
                                    fx.store(new, xa, 0);
                                });
                            });
                        }
                        PoolKind::Avg { .. } | PoolKind::L2 => {
                            let (xv, yv) = if let PoolKind::L2 = kind {
                                (Some(ins[0]), Some(level(&ins[1])))
                            } else {
                                (None, None)
                            };
                            let xp = xv.map(|v| v.plane(fx, n, ch));
                            let yp = yv.map(|v| v.plane(fx, n, ch));
                            fx.for_n(0, oh as i64, |fx, oy| {
                                let [rs, rc, rp] = load3(fx, rtab, oy);
                                fx.for_n(0, ow as i64, |fx, ox| {
                                    let [cs, cc, cp] = load3(fx, ctab, ox);
                                    let k = fx.mad(oy, ow as i64, ox);
                                    let ga = fx.index(gyp, k, 4 * gyl.es());
                                    let g = fx.load(F32, ga, 0);
                                    let (share, out) = match kind {
                                        PoolKind::Avg { include_pad } => {
                                            let d = divisor(fx, include_pad, [rc, cc, rp, cp]);
                                            (fx.fdiv(g, d), None)
                                        }
                                        PoolKind::L2 | PoolKind::Max => {
                                            let yv = yv.expect("L2 has its output");
                                            let ya = fx.index(yp.expect("L2"), k, 4 * yv.es());
                                            (g, Some(fx.load(F32, ya, 0)))
                                        }
                                    };
                                    let positive = match out {
                                        Some(o) => {
                                            let z = fx.fconst(F32, 0.0);
                                            fx.fcmp(FloatCC::GreaterThan, o, z)
                                        }
                                        None => fx.b.ins().iconst(cranelift_codegen::ir::types::I8, 1),
                                    };
                                    fx.if_then(positive, |fx| {
                                        let zero = fx.int(0);
                                        fx.for_range(zero, rc, 1, |fx, r| {
                                            let ry = fx.muli(r, dh);
                                            let iy = fx.add(rs, ry);
                                            let row = fx.muli(iy, w as i64);
                                            let zero = fx.int(0);
                                            fx.for_range(zero, cc, 1, |fx, kk| {
                                                let kx = fx.muli(kk, dw);
                                                let ix = fx.add(cs, kx);
                                                let pix = fx.add(row, ix);
                                                let xa = fx.index(gxp, pix, 4 * gx.es());
                                                let old = fx.load(F32, xa, 0);
                                                let add = match (out, xp) {
                                                    (Some(o), Some(xp)) => {
                                                        let xv = xv.expect("L2 has its operand");
                                                        let va = fx.index(xp, pix, 4 * xv.es());
                                                        let v = fx.load(F32, va, 0);
                                                        let gv = fx.fmul(share, v);
                                                        fx.fdiv(gv, o)
                                                    }
                                                    _ => share,
                                                };
                                                let new = fx.fadd(old, add);
                                                fx.store(new, xa, 0);
                                            });
                                        });
                                    });
                                });
                            });
                        }
                    }
                }
            });
        });
    })
}
