//! The fallback convolution: any groups, any layout of input and output (`nchw` or `nChw16c`,
//! independently), plain `oihw` weights, forward with the fused epilogue and both backward
//! passes, as plain loops (vectorised only as far as the compiler manages). It covers what the
//! fast kernels do not: grouped convolutions whose groups are not whole blocks (ResNeXt's
//! 32 x 4), depthwise with a channel multiplier, and the backward passes of plain-layout
//! convolutions (LeNet-sized training). Tasks: one per image x output (forward, weights) or
//! input (data) channel.

use super::act::{self, Act};
use super::conv::{ConvShape, Epilogue};
use super::error::{KernelError, check_len};
use super::par::{Parallel, SyncPtr};
use super::simd::Cpu;
use super::view::{Layout, View, check_apart, check_same_or_apart};

/// Where element `(c, y, x)` of an image of `c_total` channels and `h x w` pixels lives.
fn at(layout: Layout, h: usize, w: usize, c: usize, y: usize, x: usize) -> usize {
    match layout {
        Layout::Nchw => (c * h + y) * w + x,
        Layout::NChw16c => (((c / 16) * h + y) * w + x) * 16 + c % 16,
    }
}

/// Input position of output position `o` through tap `k` (`None` in the padding).
fn tap(o: usize, k: usize, s: usize, p: usize, d: usize, size: usize) -> Option<usize> {
    (o * s + k * d).checked_sub(p).filter(|&i| i < size)
}

fn check_shape(
    s: &ConvShape,
    x: &View,
    y: &View,
    len: usize,
    names: (&'static str, &'static str),
) -> Result<[usize; 2], KernelError> {
    let [oh, ow] = s.out_hw()?;
    x.check_in(names.0, len)?;
    y.check_in(names.1, len)?;
    x.expect(names.0, [s.n, s.ic, s.ih, s.iw], x.layout)?;
    y.expect(names.1, [s.n, s.oc, oh, ow], y.layout)?;
    Ok([oh, ow])
}

/// The per-channel vectors of an epilogue: the bias, and the scale and shift.
pub type EpiVectors<'a> = (Option<&'a [f32]>, Option<(&'a [f32], &'a [f32])>);

/// Forward: `y = act(conv(x, w) + bias) * ...` with the [`Epilogue`]'s order; `w` is `oihw`
/// (`oc x ic / groups x kh x kw`), vectors `oc` floats, the residual a view like `y` (or `y`
/// itself). Padding lanes of a blocked output are written as zeros.
#[allow(clippy::too_many_arguments)]
pub fn forward(
    par: &dyn Parallel,
    cpu: Cpu,
    s: &ConvShape,
    epi: &Epilogue,
    arena: &mut [f32],
    x: View,
    y: View,
    residual: Option<View>,
    w: &[f32],
    vectors: EpiVectors<'_>,
) -> Result<(), KernelError> {
    let [oh, ow] = check_shape(s, &x, &y, arena.len(), ("input", "output"))?;
    check_apart(("output", &y), &[("input", &x)])?;
    let (cg, og) = (s.ic / s.groups, s.oc / s.groups);
    check_len("weights", w.len(), s.oc * cg * s.kh * s.kw)?;
    let (bias, ss) = vectors;
    if bias.is_some() != epi.bias || ss.is_some() != epi.scale_shift || residual.is_some() != epi.residual {
        return Err(KernelError::View { what: "epilogue operands differ from the epilogue" });
    }
    if let Some(b) = bias {
        check_len("bias", b.len(), s.oc)?;
    }
    if let Some((a, b)) = ss {
        check_len("scale", a.len(), s.oc)?;
        check_len("shift", b.len(), s.oc)?;
    }
    if let Some(r) = residual {
        r.check_in("residual", arena.len())?;
        r.expect("residual", [s.n, s.oc, oh, ow], y.layout)?;
        check_same_or_apart(("residual", &r), ("output", &y))?;
    }
    if !epi.act.is_valid() {
        return Err(KernelError::Shape { what: "activation parameters" });
    }
    let base = SyncPtr(arena.as_mut_ptr());
    par.run(s.n * s.oc, &|task, _| {
        let (n, o) = (task / s.oc, task % s.oc);
        let g = o / og;
        let b = base.get();
        for oy in 0..oh {
            for ox in 0..ow {
                let mut sum = 0.0f32;
                for ci in 0..cg {
                    for ky in 0..s.kh {
                        let Some(iy) = tap(oy, ky, s.stride[0], s.pad[0], s.dilation[0], s.ih) else { continue };
                        for kx in 0..s.kw {
                            let Some(ix) = tap(ox, kx, s.stride[1], s.pad[1], s.dilation[1], s.iw) else { continue };
                            let xi = x.offset + n * x.batch_stride + at(x.layout, s.ih, s.iw, g * cg + ci, iy, ix);
                            // SAFETY: an element of the checked input view.
                            sum += w[((o * cg + ci) * s.kh + ky) * s.kw + kx] * unsafe { *b.add(xi) };
                        }
                    }
                }
                let mut v = sum + bias.map_or(0.0, |b| b[o]);
                if let Some((sc, sh)) = ss {
                    v = v * sc[o] + sh[o];
                }
                let yi = at(y.layout, oh, ow, o, oy, ox);
                if let Some(r) = residual {
                    // SAFETY: an element of the checked residual view (read before the write
                    // below when it is the output itself).
                    v += unsafe { *b.add(r.offset + n * r.batch_stride + yi) };
                }
                // SAFETY: an element of the output view, this task's channel.
                unsafe { *b.add(y.offset + n * y.batch_stride + yi) = v };
            }
        }
        if epi.act != Act::NONE {
            for oy in 0..oh {
                for ox in 0..ow {
                    let p = b.wrapping_add(y.offset + n * y.batch_stride + at(y.layout, oh, ow, o, oy, ox));
                    // SAFETY: one element of this task's output channel.
                    unsafe { act::apply_in_place(cpu.isa(), p, 1, &epi.act) };
                }
            }
        }
        zero_lanes(b, &y, n, o, oh * ow);
    });
    Ok(())
}

/// Zeroes the padding lanes of the last block when its last real channel `o` is done.
fn zero_lanes(b: *mut f32, v: &View, n: usize, o: usize, hw: usize) {
    if v.layout != Layout::NChw16c || o + 1 != v.c || v.c.is_multiple_of(16) {
        return;
    }
    for p in 0..hw {
        for l in v.c % 16..16 {
            // SAFETY: a padding lane of the view's last block (the task owning its last channel
            // writes them).
            unsafe { *b.add(v.offset + n * v.batch_stride + ((v.c / 16) * hw + p) * 16 + l) = 0.0 };
        }
    }
}

/// Backward-data: `dx` (a view like `x`, overwritten or, with `accumulate`, added to) from
/// `gy` (a view like `y`) and `oihw` weights.
pub fn backward_data(
    par: &dyn Parallel,
    s: &ConvShape,
    arena: &mut [f32],
    gy: View,
    dx: View,
    w: &[f32],
    accumulate: bool,
) -> Result<(), KernelError> {
    let [oh, ow] = check_shape(s, &dx, &gy, arena.len(), ("input gradient", "output gradient"))?;
    check_apart(("input gradient", &dx), &[("output gradient", &gy)])?;
    let (cg, og) = (s.ic / s.groups, s.oc / s.groups);
    check_len("weights", w.len(), s.oc * cg * s.kh * s.kw)?;
    let base = SyncPtr(arena.as_mut_ptr());
    par.run(s.n * s.ic, &|task, _| {
        let (n, c) = (task / s.ic, task % s.ic);
        let (g, ci) = (c / cg, c % cg);
        let b = base.get();
        for iy in 0..s.ih {
            for ix in 0..s.iw {
                let mut sum = 0.0f32;
                for ky in 0..s.kh {
                    let ny = iy + s.pad[0];
                    let Some(ty) = ny.checked_sub(ky * s.dilation[0]) else { continue };
                    if ty % s.stride[0] != 0 || ty / s.stride[0] >= oh {
                        continue;
                    }
                    for kx in 0..s.kw {
                        let nx = ix + s.pad[1];
                        let Some(tx) = nx.checked_sub(kx * s.dilation[1]) else { continue };
                        if tx % s.stride[1] != 0 || tx / s.stride[1] >= ow {
                            continue;
                        }
                        for oo in 0..og {
                            let o = g * og + oo;
                            let gi = gy.offset
                                + n * gy.batch_stride
                                + at(gy.layout, oh, ow, o, ty / s.stride[0], tx / s.stride[1]);
                            // SAFETY: an element of the checked gradient view.
                            sum += w[((o * cg + ci) * s.kh + ky) * s.kw + kx] * unsafe { *b.add(gi) };
                        }
                    }
                }
                let di = b.wrapping_add(dx.offset + n * dx.batch_stride + at(dx.layout, s.ih, s.iw, c, iy, ix));
                // SAFETY: an element of dx, this task's channel.
                unsafe { *di = if accumulate { *di + sum } else { sum } };
            }
        }
        if !accumulate {
            zero_lanes(b, &dx, n, c, s.ih * s.iw);
        }
    });
    Ok(())
}

/// Backward-weights: `dw` (`oihw`) and `db` (`oc`, when given) from `x` and `gy`, overwritten
/// or (with `accumulate`) added to.
#[allow(clippy::too_many_arguments)]
pub fn backward_weights(
    par: &dyn Parallel,
    s: &ConvShape,
    arena: &[f32],
    x: View,
    gy: View,
    dw: &mut [f32],
    db: Option<&mut [f32]>,
    accumulate: bool,
) -> Result<(), KernelError> {
    let [oh, ow] = check_shape(s, &x, &gy, arena.len(), ("input", "output gradient"))?;
    let (cg, og) = (s.ic / s.groups, s.oc / s.groups);
    let per = cg * s.kh * s.kw;
    check_len("weight gradient", dw.len(), s.oc * per)?;
    if let Some(db) = &db {
        check_len("bias gradient", db.len(), s.oc)?;
    }
    let (dwp, dbp) = (SyncPtr(dw.as_mut_ptr()), SyncPtr(db.map_or(core::ptr::null_mut(), |d| d.as_mut_ptr())));
    par.run(s.oc, &|o, _| {
        let g = o / og;
        let gat =
            |n: usize, oy: usize, ox: usize| arena[gy.offset + n * gy.batch_stride + at(gy.layout, oh, ow, o, oy, ox)];
        for ci in 0..cg {
            for ky in 0..s.kh {
                for kx in 0..s.kw {
                    let mut sum = 0.0f64;
                    for n in 0..s.n {
                        for oy in 0..oh {
                            let Some(iy) = tap(oy, ky, s.stride[0], s.pad[0], s.dilation[0], s.ih) else { continue };
                            for ox in 0..ow {
                                let Some(ix) = tap(ox, kx, s.stride[1], s.pad[1], s.dilation[1], s.iw) else {
                                    continue;
                                };
                                let xv = arena
                                    [x.offset + n * x.batch_stride + at(x.layout, s.ih, s.iw, g * cg + ci, iy, ix)];
                                sum += (xv * gat(n, oy, ox)) as f64;
                            }
                        }
                    }
                    let i = o * per + (ci * s.kh + ky) * s.kw + kx;
                    // SAFETY: row o of dw is this task's alone.
                    unsafe {
                        let d = dwp.get().add(i);
                        *d = if accumulate { *d + sum as f32 } else { sum as f32 };
                    }
                }
            }
        }
        if !dbp.get().is_null() {
            let sum: f64 = (0..s.n)
                .flat_map(|n| (0..oh).flat_map(move |oy| (0..ow).map(move |ox| (n, oy, ox))))
                .map(|(n, oy, ox)| gat(n, oy, ox) as f64)
                .sum();
            // SAFETY: db holds oc floats; entry o is this task's.
            unsafe {
                let d = dbp.get().add(o);
                *d = if accumulate { *d + sum as f32 } else { sum as f32 };
            }
        }
    });
    Ok(())
}
