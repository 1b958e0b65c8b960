//! Convolutions and matrix products, forward (with the fused epilogue: bias, residual,
//! activation) and backward (data, with an optional activation mask; weights, in the
//! parameter's stored layout).
//!
//! The general path handles every case the plan can hold (any groups, stride, padding,
//! dilation, activation layout, weight layout): weights are addressed through two tables,
//! `offset(o, i, 0, 0) = wo[o] + wi[i]`, plus `tap * tap_stride` (every layout of
//! `cnnc_ir::WeightLayout` is separable this way), and kernel taps are clipped per output row
//! and column by tables made at compile time. The fast paths take over the convolutions that
//! dominate real models: register tiles in Cranelift IR (`conv/tile.rs`) and dot products
//! for fully connected layers (`conv/gemv.rs`), in both modes where native mode has no
//! kernel.

mod gemv;
mod tile;

use super::{ConvPass, Lowering, Lx, Val};
use crate::emit::{F32, Fx, I32, I64};
use crate::error::{JitError, plan_err};
use crate::vmath;
use cnnc_ir::plan::ParamPlan;
use cnnc_ir::{Activation, Conv, Layout, NodeId, WeightLayout, Window};
use cranelift_codegen::ir::condcodes::IntCC;
use cranelift_codegen::ir::{InstBuilder, Value};

/// The geometry of one convolution (or matrix product, as a 1x1 convolution).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Geo {
    pub c: usize,
    pub h: usize,
    pub w: usize,
    pub o: usize,
    pub oh: usize,
    pub ow: usize,
    pub kh: usize,
    pub kw: usize,
    pub stride: [usize; 2],
    pub pad: [usize; 2],
    pub dil: [usize; 2],
    pub groups: usize,
}

impl Geo {
    /// The padding under which a stride-1 convolution's input gradient is the forward
    /// convolution of `gy` with the rotated, transposed weights: `(k - 1) dilation - pad`
    /// each way; `None` where the padding exceeds the kernel's reach (output pixels no tap of
    /// the input sees).
    pub fn transposed_pad(&self) -> Option<[usize; 2]> {
        let reach = [(self.kh - 1) * self.dil[0], (self.kw - 1) * self.dil[1]];
        Some([reach[0].checked_sub(self.pad[0])?, reach[1].checked_sub(self.pad[1])?])
    }

    pub fn new(conv: &Conv, x: &Val, y: &Val) -> Geo {
        let win = &conv.window;
        Geo {
            c: x.c,
            h: x.h,
            w: x.w,
            o: y.c,
            oh: y.h,
            ow: y.w,
            kh: win.kernel[0],
            kw: win.kernel[1],
            stride: win.stride,
            pad: win.pad,
            dil: win.dilation,
            groups: conv.groups,
        }
    }

    pub fn cg(&self) -> usize {
        self.c / self.groups
    }

    pub fn og(&self) -> usize {
        self.o / self.groups
    }

    pub fn macs(&self, n: usize) -> f64 {
        (n * self.o * self.oh * self.ow * self.cg() * self.kh * self.kw) as f64
    }
}

/// A matrix product as the convolution it is.
pub(crate) fn unit_conv(out: usize, bias: bool) -> Conv {
    let window = Window { kernel: [1, 1], stride: [1, 1], pad: [0, 0], dilation: [1, 1], ceil_mode: false };
    Conv { out_channels: out, window, groups: 1, bias }
}

/// For each output index of one axis, the kernel taps `lo..hi` whose input lies inside.
fn clip(out: usize, size: usize, k: usize, s: usize, p: usize, d: usize) -> Vec<i32> {
    let mut t = Vec::with_capacity(2 * out);
    for o in 0..out {
        let inside = |kk: usize| {
            let i = (o * s + kk * d) as isize - p as isize;
            i >= 0 && (i as usize) < size
        };
        let lo = (0..k).find(|&kk| inside(kk)).unwrap_or(k);
        let hi = (lo..k).find(|&kk| !inside(kk)).unwrap_or(k);
        t.extend([lo as i32, hi.max(lo) as i32]);
    }
    t
}

/// The weight tables of a parameter: `wo[o]`, `wi[i]` (floats) and the tap stride.
fn weight_tables(lx: &mut Lx, p: &ParamPlan) -> Result<(u64, u64, i64), JitError> {
    let layout = p.layout.unwrap_or(WeightLayout::Oihw);
    let dims = &p.dims;
    let (o, i) = match dims[..] {
        [o, i, _, _] | [o, i] => (o, i),
        _ => return Err(plan_err(format!("`{}` is not a weight", p.name))),
    };
    let zero = layout.offset(dims, p.groups, [0, 0, 0, 0]);
    let wo: Vec<i32> = (0..o).map(|a| layout.offset(dims, p.groups, [a, 0, 0, 0]) as i32).collect();
    let wi: Vec<i32> = (0..i).map(|b| (layout.offset(dims, p.groups, [0, b, 0, 0]) - zero) as i32).collect();
    if p.stored_len() > i32::MAX as usize {
        return Err(plan_err(format!("`{}` is too large", p.name)));
    }
    Ok((lx.table(&wo), lx.table(&wi), layout.tap_stride() as i64))
}

fn load_i(fx: &mut Fx, tab: Value, i: Value) -> Value {
    let a = fx.index(tab, i, 4);
    let v = fx.load_ro(I32, a, 0);
    fx.b.ins().sextend(I64, v)
}

fn stored_channels(v: &Val) -> usize {
    match v.layout {
        Layout::Plain => v.c,
        Layout::Blocked16 => v.c.div_ceil(16) * 16,
    }
}

/// Forward of a convolution node (`conv` or `fused_conv`).
pub(crate) fn forward(
    lx: &mut Lx,
    id: NodeId,
    conv: &Conv,
    act: Option<Activation>,
    residual: bool,
) -> Result<(), JitError> {
    let node = &lx.plan.graph[id];
    let x = lx.val(node.inputs[0])?;
    let res = if residual { Some(lx.val(node.inputs[1])?) } else { None };
    let y = lx.val(id)?;
    let (w, wp) = lx.param(id, "weight")?;
    let bias = if conv.bias { Some(lx.param(id, "bias")?.0) } else { None };
    let g = Geo::new(conv, &x, &y);
    let op = ConvForward { g: &g, x, y, res, w, wp: &wp, bias, act };
    if lx.mode == crate::options::Mode::Native {
        let unit = g.kh == 1 && g.kw == 1 && g.stride == [1, 1] && g.pad == [0, 0] && g.groups == 1;
        let how = if unit && x.h * x.w == 1 && super::native::fc(lx, x, y, (w, &wp), bias, act, residual)? {
            Some(Lowering::Kernels)
        } else {
            super::native::conv(lx, &op)?
        };
        if let Some(how) = how {
            lx.lowered(ConvPass::Forward, how);
            return Ok(());
        }
    }
    if gemv::forward(lx, &op)? {
        lx.lowered(ConvPass::Forward, Lowering::DotProducts);
        return Ok(());
    }
    if tile::forward(lx, &op)? {
        lx.lowered(ConvPass::Forward, Lowering::Tiles);
        return Ok(());
    }
    lx.lowered(ConvPass::Forward, Lowering::Loops);
    general_forward(lx, &op)
}

/// The operands of a forward convolution, as each of its lowerings takes them (the kernels',
/// the dot products', the register tiles', the general loop's): the first that fits emits it.
#[derive(Clone, Copy)]
pub(crate) struct ConvForward<'a> {
    pub g: &'a Geo,
    pub x: Val,
    pub y: Val,
    /// The residual added in the epilogue.
    pub res: Option<Val>,
    /// The packed weight's address, and how it is stored.
    pub w: u64,
    pub wp: &'a ParamPlan,
    /// The bias's address.
    pub bias: Option<u64>,
    pub act: Option<Activation>,
}

/// The general forward: one task per run of output planes.
pub(crate) fn general_forward(lx: &mut Lx, op: &ConvForward) -> Result<(), JitError> {
    let ConvForward { g, x, y, res, w, wp, bias, act } = *op;
    let (wo, wi, ts) = weight_tables(lx, wp)?;
    let rows = lx.table(&clip(g.oh, g.h, g.kh, g.stride[0], g.pad[0], g.dil[0]));
    let cols = lx.table(&clip(g.ow, g.w, g.kw, g.stride[1], g.pad[1], g.dil[1]));
    let so = stored_channels(&y);
    let planes = y.n * so;
    let tasks = lx.tasks(planes, g.macs(y.n));
    let g = *g;
    lx.kernel(tasks, |fx| {
        let (lo, hi) = fx.task_range(planes, tasks);
        let (wot, wit, rt, ct) = (fx.aux(wo), fx.aux(wi), fx.aux(rows), fx.aux(cols));
        let wb = fx.abs(w);
        fx.for_range(lo, hi, 1, |fx, u| {
            let n = fx.udiv(u, so as i64);
            let o = fx.urem(u, so as i64);
            let yp = y.plane(fx, n, o);
            let real = fx.icmpi(IntCC::SignedLessThan, o, g.o as i64);
            fx.if_else(
                real,
                |fx| {
                    let grp = fx.udiv(o, g.og() as i64);
                    let c0 = fx.muli(grp, g.cg() as i64);
                    let wrow = load_i(fx, wot, o);
                    let b0 = match bias {
                        Some(b) => {
                            let ba = fx.abs(b);
                            let a = fx.index(ba, o, 4);
                            fx.load(F32, a, 0)
                        }
                        None => fx.fconst(F32, 0.0),
                    };
                    let rp = res.map(|r| r.plane(fx, n, o));
                    fx.for_n(0, g.oh as i64, |fx, oy| {
                        let ky_lo_i = fx_pair(fx, oy, 0);
                        let ky_lo = load_i(fx, rt, ky_lo_i);
                        let ky_hi_i = fx_pair(fx, oy, 1);
                        let ky_hi = load_i(fx, rt, ky_hi_i);
                        let iy0 = fx.muli(oy, g.stride[0] as i64);
                        let iy0 = fx.addi(iy0, -(g.pad[0] as i64));
                        fx.for_n(0, g.ow as i64, |fx, ox| {
                            let kx_lo_i = fx_pair(fx, ox, 0);
                            let kx_lo = load_i(fx, ct, kx_lo_i);
                            let kx_hi_i = fx_pair(fx, ox, 1);
                            let kx_hi = load_i(fx, ct, kx_hi_i);
                            let ix0 = fx.muli(ox, g.stride[1] as i64);
                            let ix0 = fx.addi(ix0, -(g.pad[1] as i64));
                            let acc = fx.var_init(F32, b0);
                            fx.for_n(0, g.cg() as i64, |fx, i| {
                                let ch = fx.add(c0, i);
                                let xp = x.plane(fx, n, ch);
                                let wcol = load_i(fx, wit, i);
                                let wpair = fx.add(wrow, wcol);
                                let wpb = fx.index(wb, wpair, 4);
                                fx.for_range(ky_lo, ky_hi, 1, |fx, ky| {
                                    let dy = fx.muli(ky, g.dil[0] as i64);
                                    let iy = fx.add(iy0, dy);
                                    let xrow = fx.muli(iy, g.w as i64);
                                    let tap0 = fx.muli(ky, g.kw as i64);
                                    fx.for_range(kx_lo, kx_hi, 1, |fx, kx| {
                                        let dx = fx.muli(kx, g.dil[1] as i64);
                                        let ix = fx.add(ix0, dx);
                                        let pix = fx.add(xrow, ix);
                                        let xa = fx.index(xp, pix, 4 * x.es());
                                        let xv = fx.load(F32, xa, 0);
                                        let tap = fx.add(tap0, kx);
                                        let wa = fx.index(wpb, tap, 4 * ts);
                                        let wv = fx.load(F32, wa, 0);
                                        let cur = fx.get(acc);
                                        let s = fx.fma(xv, wv, cur);
                                        fx.set(acc, s);
                                    });
                                });
                            });
                            let mut v = fx.get(acc);
                            let pix = fx.mad(oy, g.ow as i64, ox);
                            if let (Some(rp), Some(r)) = (rp, res) {
                                let ra = fx.index(rp, pix, 4 * r.es());
                                let rv = fx.load(F32, ra, 0);
                                v = fx.fadd(v, rv);
                            }
                            if let Some(a) = act {
                                v = vmath::activation(fx, F32, a, v);
                            }
                            let ya = fx.index(yp, pix, 4 * y.es());
                            fx.store(v, ya, 0);
                        });
                    });
                },
                |fx| zero_plane(fx, yp, g.oh * g.ow, y.es()),
            );
        });
    })
}

/// `2 * i + k` (an index into a table of pairs).
fn fx_pair(fx: &mut Fx, i: Value, k: i64) -> Value {
    let t = fx.muli(i, 2);
    fx.addi(t, k)
}

/// Runs `body(fx, o)` when kernel tap `k` of input position `i` is read from an output
/// position along one axis: `o = (i + pad - k dilation) / stride`, when that is exact and in
/// `0..out` (the transposed convolution's index, solved for rows and columns alike).
fn tap_source(
    fx: &mut Fx,
    i: Value,
    k: Value,
    (pad, dilation, stride): (usize, usize, usize),
    out: usize,
    mut body: impl FnMut(&mut Fx, Value),
) {
    let t = fx.addi(i, pad as i64);
    let kd = fx.muli(k, dilation as i64);
    let t = fx.sub(t, kd);
    let nonneg = fx.icmpi(IntCC::SignedGreaterThanOrEqual, t, 0);
    fx.if_then(nonneg, |fx| {
        let o = fx.udiv(t, stride as i64);
        let r = fx.urem(t, stride as i64);
        let exact = fx.icmpi(IntCC::Equal, r, 0);
        let inside = fx.icmpi(IntCC::SignedLessThan, o, out as i64);
        let ok = fx.b.ins().band(exact, inside);
        fx.if_then(ok, |fx| body(fx, o));
    });
}

fn zero_plane(fx: &mut Fx, p: Value, len: usize, es: i64) {
    let z = fx.fconst(F32, 0.0);
    fx.for_n(0, len as i64, |fx, i| {
        let a = fx.index(p, i, 4 * es);
        fx.store(z, a, 0);
    });
}

/// The input gradient of a convolution from `gy` (and, with a mask, the activation's output
/// as the second operand): `gx(c, iy, ix) = sum gy(o, oy, ox) w(o, c, ky, kx)` over the
/// outputs that read `(iy, ix)`.
pub(crate) fn backward_data(lx: &mut Lx, id: NodeId, conv: &Conv, mask: Option<Activation>) -> Result<(), JitError> {
    let node = &lx.plan.graph[id];
    let gy = lx.val(node.inputs[0])?;
    let my = if mask.is_some() { Some(lx.val(node.inputs[1])?) } else { None };
    let gx = lx.val(id)?;
    let (w, wp) = lx.param(id, "weight")?;
    let g = Geo::new(conv, &gx, &gy);
    data_grad(lx, &g, gy, gx, my, (w, &wp), mask)
}

/// The input gradient through the kernels where they fit, else as register tiles (blocked
/// maps, one group), the activation mask then applied to the result in place (a pass over
/// memory the kernel has just written); else the general loops.
pub(crate) fn data_grad(
    lx: &mut Lx,
    g: &Geo,
    gy: Val,
    gx: Val,
    my: Option<Val>,
    (w, wp): (u64, &ParamPlan),
    mask: Option<Activation>,
) -> Result<(), JitError> {
    let native = lx.mode == crate::options::Mode::Native;
    let kernels = native
        && (super::native_point::backward_data(lx, g, gy, gx, (w, wp))?
            || super::native_bwd::conv_backward_data(lx, g, gy, gx, (w, wp))?
            || super::native_plain::backward_data(lx, g, gy, gx, (w, wp))?);
    let lowering = if kernels {
        Some(Lowering::Kernels)
    } else if gemv::backward_data(lx, g, gy, gx, (w, wp))? {
        Some(Lowering::DotProducts)
    } else if tile::backward_data(lx, g, gy, gx, (w, wp))? {
        Some(Lowering::Tiles)
    } else {
        None
    };
    lx.lowered(ConvPass::BackwardData, lowering.unwrap_or(Lowering::Loops));
    if lowering.is_some() {
        if let (Some(a), Some(m)) = (mask, my) {
            super::eltwise::flat(lx, &[gx, m], gx, |fx, ty, v| {
                let d = vmath::activation_grad_from_output(fx, ty, a, v[1])
                    .unwrap_or_else(|| vmath::activation_grad(fx, ty, a, v[1]));
                fx.fmul(v[0], d)
            })?;
        }
        return Ok(());
    }
    general_backward_data(lx, g, gy, gx, my, (w, wp), mask)
}

pub(crate) fn general_backward_data(
    lx: &mut Lx,
    g: &Geo,
    gy: Val,
    gx: Val,
    my: Option<Val>,
    (w, wp): (u64, &ParamPlan),
    mask: Option<Activation>,
) -> Result<(), JitError> {
    let (wo, wi, ts) = weight_tables(lx, wp)?;
    let sc = stored_channels(&gx);
    let planes = gx.n * sc;
    let tasks = lx.tasks(planes, g.macs(gx.n));
    let g = *g;
    lx.kernel(tasks, |fx| {
        let (lo, hi) = fx.task_range(planes, tasks);
        let (wot, wit) = (fx.aux(wo), fx.aux(wi));
        let wb = fx.abs(w);
        fx.for_range(lo, hi, 1, |fx, u| {
            let n = fx.udiv(u, sc as i64);
            let c = fx.urem(u, sc as i64);
            let xp = gx.plane(fx, n, c);
            let real = fx.icmpi(IntCC::SignedLessThan, c, g.c as i64);
            fx.if_else(
                real,
                |fx| {
                    let grp = fx.udiv(c, g.cg() as i64);
                    let i = fx.urem(c, g.cg() as i64);
                    let wcol = load_i(fx, wit, i);
                    let o0 = fx.muli(grp, g.og() as i64);
                    let mp = my.map(|m| m.plane(fx, n, c));
                    fx.for_n(0, g.h as i64, |fx, iy| {
                        fx.for_n(0, g.w as i64, |fx, ix| {
                            let z = fx.fconst(F32, 0.0);
                            let acc = fx.var_init(F32, z);
                            fx.for_n(0, g.og() as i64, |fx, oo| {
                                let o = fx.add(o0, oo);
                                let gp = gy.plane(fx, n, o);
                                let wrow = load_i(fx, wot, o);
                                let wpair = fx.add(wrow, wcol);
                                let wpb = fx.index(wb, wpair, 4);
                                fx.for_n(0, g.kh as i64, |fx, ky| {
                                    let (ph, dh, sh) = (g.pad[0], g.dil[0], g.stride[0]);
                                    tap_source(fx, iy, ky, (ph, dh, sh), g.oh, |fx, oy| {
                                        fx.for_n(0, g.kw as i64, |fx, kx| {
                                            let (pw, dw, sw) = (g.pad[1], g.dil[1], g.stride[1]);
                                            tap_source(fx, ix, kx, (pw, dw, sw), g.ow, |fx, ox| {
                                                let pix = fx.mad(oy, g.ow as i64, ox);
                                                let ga = fx.index(gp, pix, 4 * gy.es());
                                                let gv = fx.load(F32, ga, 0);
                                                let tap = fx.mad(ky, g.kw as i64, kx);
                                                let wa = fx.index(wpb, tap, 4 * ts);
                                                let wv = fx.load(F32, wa, 0);
                                                let cur = fx.get(acc);
                                                let s = fx.fma(gv, wv, cur);
                                                fx.set(acc, s);
                                            });
                                        });
                                    });
                                });
                            });
                            let mut v = fx.get(acc);
                            let pix = fx.mad(iy, g.w as i64, ix);
                            if let (Some(a), Some(mp), Some(m)) = (mask, mp, my) {
                                let ma = fx.index(mp, pix, 4 * m.es());
                                let yv = fx.load(F32, ma, 0);
                                let d = vmath::activation_grad_from_output(fx, F32, a, yv)
                                    .unwrap_or_else(|| vmath::activation_grad(fx, F32, a, yv));
                                v = fx.fmul(v, d);
                            }
                            let xa = fx.index(xp, pix, 4 * gx.es());
                            fx.store(v, xa, 0);
                        });
                    });
                },
                |fx| zero_plane(fx, xp, g.h * g.w, gx.es()),
            );
        });
    })
}

/// The weight gradient of a convolution from `(x, gy)`, summed over the batch, stored in the
/// weight's layout (its padding zeroed first).
pub(crate) fn backward_weight(lx: &mut Lx, id: NodeId, conv: &Conv) -> Result<(), JitError> {
    let node = &lx.plan.graph[id];
    let x = lx.val(node.inputs[0])?;
    let gy = lx.val(node.inputs[1])?;
    let gw = lx.val(id)?;
    let (_, wp) = lx.param(id, "weight")?;
    let g = Geo::new(conv, &x, &gy);
    let native = lx.mode == crate::options::Mode::Native;
    if native
        && (super::native_point::backward_weights(lx, &g, x, gy, gw, &wp)?
            || super::native_bwd::conv_backward_weights(lx, &g, x, gy, gw, &wp)?
            || super::native_plain::backward_weights(lx, &g, x, gy, gw, &wp)?)
    {
        lx.lowered(ConvPass::BackwardWeights, Lowering::Kernels);
        return Ok(());
    }
    if tile::backward_weight(lx, &g, x, gy, gw, &wp)? {
        lx.lowered(ConvPass::BackwardWeights, Lowering::Tiles);
        return Ok(());
    }
    lx.lowered(ConvPass::BackwardWeights, Lowering::Loops);
    general_backward_weight(lx, &g, x, gy, gw, &wp)
}

pub(crate) fn general_backward_weight(
    lx: &mut Lx,
    g: &Geo,
    x: Val,
    gy: Val,
    gw: Val,
    wp: &ParamPlan,
) -> Result<(), JitError> {
    let len = wp.stored_len();
    if gw.bytes < 4 * len as u64 {
        return Err(plan_err(format!("the gradient of `{}` is shorter than the weight", wp.name)));
    }
    let (wo, wi, ts) = weight_tables(lx, wp)?;
    let rows = lx.table(&clip(g.oh, g.h, g.kh, g.stride[0], g.pad[0], g.dil[0]));
    let cols = lx.table(&clip(g.ow, g.w, g.kw, g.stride[1], g.pad[1], g.dil[1]));
    // The padding of a packed gradient is zero.
    let dst = gw.addr;
    lx.kernel(1, |fx| {
        let z = fx.fconst(F32, 0.0);
        let b = fx.abs(dst);
        fx.for_n(0, len as i64, |fx, i| {
            let a = fx.index(b, i, 4);
            fx.store(z, a, 0);
        });
    })?;
    let tasks = lx.tasks(g.o, g.macs(x.n));
    let g = *g;
    let n_img = x.n;
    lx.kernel(tasks, |fx| {
        let (lo, hi) = fx.task_range(g.o, tasks);
        let (wot, wit, rt, ct) = (fx.aux(wo), fx.aux(wi), fx.aux(rows), fx.aux(cols));
        let wb = fx.abs(dst);
        fx.for_range(lo, hi, 1, |fx, o| {
            let grp = fx.udiv(o, g.og() as i64);
            let c0 = fx.muli(grp, g.cg() as i64);
            let wrow = load_i(fx, wot, o);
            fx.for_n(0, g.cg() as i64, |fx, i| {
                let ch = fx.add(c0, i);
                let wcol = load_i(fx, wit, i);
                let wpair = fx.add(wrow, wcol);
                let wpb = fx.index(wb, wpair, 4);
                fx.for_n(0, g.kh as i64, |fx, ky| {
                    fx.for_n(0, g.kw as i64, |fx, kx| {
                        let z = fx.fconst(F32, 0.0);
                        let acc = fx.var_init(F32, z);
                        fx.for_n(0, n_img as i64, |fx, n| {
                            let xp = x.plane(fx, n, ch);
                            let gp = gy.plane(fx, n, o);
                            fx.for_n(0, g.oh as i64, |fx, oy| {
                                let ky_lo_i = fx_pair(fx, oy, 0);
                                let ky_lo = load_i(fx, rt, ky_lo_i);
                                let ky_hi_i = fx_pair(fx, oy, 1);
                                let ky_hi = load_i(fx, rt, ky_hi_i);
                                let a = fx.icmp(IntCC::SignedGreaterThanOrEqual, ky, ky_lo);
                                let b = fx.icmp(IntCC::SignedLessThan, ky, ky_hi);
                                let ok = fx.b.ins().band(a, b);
                                fx.if_then(ok, |fx| {
                                    let iy = fx.muli(oy, g.stride[0] as i64);
                                    let dy = fx.muli(ky, g.dil[0] as i64);
                                    let iy = fx.add(iy, dy);
                                    let iy = fx.addi(iy, -(g.pad[0] as i64));
                                    fx.for_n(0, g.ow as i64, |fx, ox| {
                                        let kx_lo_i = fx_pair(fx, ox, 0);
                                        let kx_lo = load_i(fx, ct, kx_lo_i);
                                        let kx_hi_i = fx_pair(fx, ox, 1);
                                        let kx_hi = load_i(fx, ct, kx_hi_i);
                                        let a = fx.icmp(IntCC::SignedGreaterThanOrEqual, kx, kx_lo);
                                        let b = fx.icmp(IntCC::SignedLessThan, kx, kx_hi);
                                        let ok = fx.b.ins().band(a, b);
                                        fx.if_then(ok, |fx| {
                                            let ix = fx.muli(ox, g.stride[1] as i64);
                                            let dx = fx.muli(kx, g.dil[1] as i64);
                                            let ix = fx.add(ix, dx);
                                            let ix = fx.addi(ix, -(g.pad[1] as i64));
                                            let pix = fx.mad(iy, g.w as i64, ix);
                                            let xa = fx.index(xp, pix, 4 * x.es());
                                            let xv = fx.load(F32, xa, 0);
                                            let opix = fx.mad(oy, g.ow as i64, ox);
                                            let ga = fx.index(gp, opix, 4 * gy.es());
                                            let gv = fx.load(F32, ga, 0);
                                            let cur = fx.get(acc);
                                            let s = fx.fma(xv, gv, cur);
                                            fx.set(acc, s);
                                        });
                                    });
                                });
                            });
                        });
                        let tap = fx.mad(ky, g.kw as i64, kx);
                        let wa = fx.index(wpb, tap, 4 * ts);
                        let v = fx.get(acc);
                        fx.store(v, wa, 0);
                    });
                });
            });
        });
    })
}
