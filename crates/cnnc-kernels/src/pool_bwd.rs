//! Pooling backward (see `pool.rs`): max scatters `gy` to the saved argmax, average spreads
//! `gy / divisor` over each window, L2 adds `gy * x / y` where `y > 0`. Each task owns whole
//! planes (an image x 16-channel block), so overlapping windows accumulate without races;
//! `dx` is cleared first unless the pass accumulates. Max and average pooling whose windows do
//! not overlap (stride = kernel, no padding or dilation: the usual 2x2/2) write each input
//! pixel once (max: the gradient where the argmax is that pixel, else 0; average: the window's
//! share), 16 channels a vector on blocked maps (average also on plain ones), instead of
//! clearing and scattering or accumulating. An argmax entry outside its plane (the forward pass
//! makes none) sends its gradient nowhere.

use super::error::KernelError;
use super::par::Parallel;
use super::pool::{Plane, PoolKind, PoolPlan, check_views, planes};
use super::simd::{Simd, isa_fn};
use super::view::{Layout, View, check_apart};

/// Raw operands of a backward pass (image strides in floats); `x` and `y` for L2, `argmax`
/// for max, null otherwise.
#[derive(Clone, Copy, Debug)]
#[repr(C)]
pub struct PoolBwdArgs {
    pub gy: *const f32,
    pub gy_bs: usize,
    pub x: *const f32,
    pub x_bs: usize,
    pub y: *const f32,
    pub y_bs: usize,
    pub argmax: *const f32,
    pub argmax_bs: usize,
    pub dx: *mut f32,
    pub dx_bs: usize,
    pub accumulate: bool,
}

// SAFETY: plain pointers; tasks read the inputs and write their own planes of dx.
unsafe impl Sync for PoolBwdArgs {}
// SAFETY: as above.
unsafe impl Send for PoolBwdArgs {}

/// Backward of one task with 16 lanes per vector (blocked).
///
/// # Safety
/// As [`backward_task`], blocked layout.
#[inline(always)]
unsafe fn backward_blocked<S: Simd>(s: S, p: &PoolPlan, a: &PoolBwdArgs, task: usize) {
    let (n, _, ip, op) = planes(p, task, 0);
    let dx = a.dx.wrapping_add(n * a.dx_bs);
    let gy = a.gy.wrapping_add(n * a.gy_bs);
    if disjoint(p) {
        // SAFETY: forwarded contract.
        unsafe { backward_disjoint(s, p, a, n, ip, op) };
        return;
    }
    let plane = p.ih * p.iw;
    if !a.accumulate {
        // SAFETY: forwarded contract: `dx` holds this task's input plane.
        unsafe { clear_plane(s, p, dx, ip) };
    }
    for oy in 0..p.oh {
        let by = p.bin(0, oy);
        for ox in 0..p.ow {
            let bx = p.bin(1, ox);
            // SAFETY: (oy, ox) inside the output planes; taps inside the input planes; the
            // argmax of a real window is the flat index of an input pixel (or -1: no tap).
            unsafe {
                let g = s.load(gy.add(op.at(oy, ox)));
                match p.kind {
                    PoolKind::Max => {
                        let m = s.v_to_array(s.load(a.argmax.add(n * a.argmax_bs + op.at(oy, ox))));
                        let gv = s.v_to_array(g);
                        for l in 0..16 {
                            if m[l] >= 0.0 && (m[l] as usize) < plane {
                                *dx.add(ip.base + m[l] as usize * 16 + l) += gv[l];
                            }
                        }
                    }
                    PoolKind::Avg | PoolKind::AvgExcludePad => {
                        let share = s.div(g, s.splat(p.divisor(by, bx)));
                        for ty in 0..by.count {
                            for tx in 0..bx.count {
                                let d = dx.add(ip.at(by.first + ty * by.step, bx.first + tx * bx.step));
                                s.store(d, s.add(s.load(d), share));
                            }
                        }
                    }
                    PoolKind::L2 => {
                        let yv = s.load(a.y.add(n * a.y_bs + op.at(oy, ox)));
                        let positive = s.lt(s.zero(), yv);
                        let scale = s.select(positive, s.div(g, yv), s.zero());
                        for ty in 0..by.count {
                            for tx in 0..bx.count {
                                let at = ip.at(by.first + ty * by.step, bx.first + tx * bx.step);
                                let d = dx.add(at);
                                let xv = s.load(a.x.add(n * a.x_bs + at));
                                s.store(d, s.fmadd(xv, scale, s.load(d)));
                            }
                        }
                    }
                }
            }
        }
    }
}

/// Zeroes the blocked input plane `ip` of `dx` (16 lanes a pixel).
///
/// # Safety
/// `dx` holds the plane: `ih x iw` pixels of 16 floats from `ip.base`.
#[inline(always)]
unsafe fn clear_plane<S: Simd>(s: S, p: &PoolPlan, dx: *mut f32, ip: super::pool::Plane) {
    for i in 0..p.ih * p.iw {
        // SAFETY: pixel i of the plane, by the contract.
        unsafe { s.store(dx.add(ip.base + i * 16), s.zero()) };
    }
}

/// Whether a plan is max or average pooling with windows that do not overlap (see the module
/// comment). Without padding both average divisors are the window's taps inside the image.
fn disjoint(p: &PoolPlan) -> bool {
    let w = &p.win;
    p.kind != PoolKind::L2 && !w.adaptive && w.stride == w.kernel && w.pad == [0, 0] && w.dilation == [1, 1]
}

/// Max or average backward of one blocked task whose windows do not overlap: each input pixel
/// written once from the one window holding it; pixels in no window (past the last whole
/// window) cleared.
///
/// # Safety
/// As [`backward_task`], blocked layout, [`disjoint`] plan; `ip` and `op` the task's planes of
/// image `n`.
#[inline(always)]
unsafe fn backward_disjoint<S: Simd>(
    s: S,
    p: &PoolPlan,
    a: &PoolBwdArgs,
    n: usize,
    ip: super::pool::Plane,
    op: super::pool::Plane,
) {
    let dx = a.dx.wrapping_add(n * a.dx_bs);
    let gy = a.gy.wrapping_add(n * a.gy_bs);
    let am = a.argmax.wrapping_add(n * a.argmax_bs);
    let covered = p.oh * p.win.kernel[0] >= p.ih && p.ow * p.win.kernel[1] >= p.iw;
    if !a.accumulate && !covered {
        // SAFETY: forwarded contract: `dx` holds this task's input plane.
        unsafe { clear_plane(s, p, dx, ip) };
    }
    for oy in 0..p.oh {
        let by = p.bin(0, oy);
        for ox in 0..p.ow {
            let bx = p.bin(1, ox);
            // SAFETY: (oy, ox) inside the output planes, the taps inside the input planes; the
            // argmax is read for max pooling only (the caller's contract gives it then).
            unsafe {
                let g = s.load(gy.add(op.at(oy, ox)));
                let max = p.kind == PoolKind::Max;
                let m = if max { s.load(am.add(op.at(oy, ox))) } else { s.zero() };
                let share = if max { g } else { s.div(g, s.splat(p.divisor(by, bx))) };
                for ty in 0..by.count {
                    let iy = by.first + ty;
                    for tx in 0..bx.count {
                        let ix = bx.first + tx;
                        let v =
                            if max { s.select(s.eq(m, s.splat((iy * p.iw + ix) as f32)), g, s.zero()) } else { share };
                        let d = dx.add(ip.at(iy, ix));
                        s.store(d, if a.accumulate { s.add(s.load(d), v) } else { v });
                    }
                }
            }
        }
    }
}

/// Average backward of one plain plane whose windows do not overlap: each input pixel written
/// once (or added to once), output by output, from the one window holding it; pixels in no
/// window (past the last whole window) cleared. (Plain max pooling keeps its clear-and-scatter
/// pass: a memset and one store per output beat comparing every pixel with the argmax.)
///
/// # Safety
/// As [`backward_task`], plain layout, [`disjoint`] average plan; `ip` and `op` the planes of
/// image `n` of this task's channel.
unsafe fn backward_disjoint_avg_plain(p: &PoolPlan, a: &PoolBwdArgs, n: usize, ip: Plane, op: Plane) {
    let [kh, kw] = p.win.kernel;
    let covered = p.oh * kh >= p.ih && p.ow * kw >= p.iw;
    // SAFETY (whole block): rows oy kh .. + ry and columns ox kw .. + rx are inside the input
    // plane (every window starts inside it: the plan's output rule), (oy, ox) inside the output
    // plane; gy and dx valid for image n by the contract.
    unsafe {
        let dx = a.dx.add(n * a.dx_bs + ip.base);
        if !a.accumulate && !covered {
            dx.write_bytes(0, p.ih * p.iw);
        }
        for oy in 0..p.oh {
            let (y0, ry) = (oy * kh, kh.min(p.ih - oy * kh));
            let gy = core::slice::from_raw_parts(a.gy.add(n * a.gy_bs + op.base + oy * p.ow), p.ow);
            for ty in 0..ry {
                let row = core::slice::from_raw_parts_mut(dx.add((y0 + ty) * p.iw), p.iw);
                spread_row(row, gy, kw, ry, a.accumulate);
            }
        }
    }
}

/// One input row of a disjoint average backward: column `ox kw + tx` gets `gy[ox] / (ry rx)`
/// (`rx` the window's columns inside the row); the 2-wide windows in a loop the compiler
/// vectorises. Columns past the last window are left alone.
fn spread_row(row: &mut [f32], gy: &[f32], kw: usize, ry: usize, accumulate: bool) {
    let whole = (row.len() / kw).min(gy.len());
    let full = (ry * kw) as f32;
    if kw == 2 && !accumulate {
        for (pair, &g) in row.chunks_exact_mut(2).zip(&gy[..whole]) {
            let share = g / full;
            pair[0] = share;
            pair[1] = share;
        }
    } else {
        for (win, &g) in row.chunks_exact_mut(kw).zip(&gy[..whole]) {
            let share = g / full;
            for d in win {
                *d = if accumulate { *d + share } else { share };
            }
        }
    }
    // A last window clipped by the row's end (ceil mode).
    if whole < gy.len() {
        let x0 = whole * kw;
        let share = gy[whole] / (ry * (row.len() - x0)).max(1) as f32;
        for d in &mut row[x0..] {
            *d = if accumulate { *d + share } else { share };
        }
    }
}

/// Backward of one task on plain planes.
///
/// # Safety
/// As [`backward_task`], plain layout.
unsafe fn backward_plain(p: &PoolPlan, a: &PoolBwdArgs, task: usize) {
    for lane in 0..16 {
        let (n, c, ip, op) = planes(p, task, lane);
        if c >= p.c {
            break;
        }
        if disjoint(p) && p.kind != PoolKind::Max {
            // SAFETY: forwarded contract; the planes are this task's channel's.
            unsafe { backward_disjoint_avg_plain(p, a, n, ip, op) };
            continue;
        }
        let dx = a.dx.wrapping_add(n * a.dx_bs);
        // SAFETY (whole block): every index below is inside this channel's planes, as above.
        unsafe {
            if !a.accumulate {
                dx.add(ip.base).write_bytes(0, p.ih * p.iw);
            }
            if p.kind == PoolKind::Max {
                // No windows needed: each output sends its gradient to its argmax.
                let plane = p.ih * p.iw;
                let (gy, am) = (a.gy.add(n * a.gy_bs + op.base), a.argmax.add(n * a.argmax_bs + op.base));
                for k in 0..p.oh * p.ow {
                    let m = *am.add(k);
                    if m >= 0.0 && (m as usize) < plane {
                        *dx.add(ip.base + m as usize) += *gy.add(k);
                    }
                }
                continue;
            }
            for oy in 0..p.oh {
                let by = p.bin(0, oy);
                for ox in 0..p.ow {
                    let bx = p.bin(1, ox);
                    let g = *a.gy.add(n * a.gy_bs + op.at(oy, ox));
                    match p.kind {
                        // Sent to the argmax above.
                        PoolKind::Max => {}
                        PoolKind::Avg | PoolKind::AvgExcludePad => {
                            let share = g / p.divisor(by, bx);
                            for ty in 0..by.count {
                                for tx in 0..bx.count {
                                    *dx.add(ip.at(by.first + ty * by.step, bx.first + tx * bx.step)) += share;
                                }
                            }
                        }
                        PoolKind::L2 => {
                            let y = *a.y.add(n * a.y_bs + op.at(oy, ox));
                            if y > 0.0 {
                                for ty in 0..by.count {
                                    for tx in 0..bx.count {
                                        let at = ip.at(by.first + ty * by.step, bx.first + tx * bx.step);
                                        *dx.add(at) += g * *a.x.add(n * a.x_bs + at) / y;
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

isa_fn! {
    /// # Safety
    /// As [`backward_task`].
    unsafe fn backward_blocked_isa(p: &PoolPlan, a: &PoolBwdArgs, task: usize) = backward_blocked;
}

/// Runs backward task `task` (one image x 16-channel block).
///
/// # Safety
/// `p` from [`PoolPlan::new`] on a CPU with its instruction set; the pointers valid for the
/// plan's images (gy, y, argmax: output shape; x, dx: input shape; the layout's padding lanes
/// included), `argmax` (max) holding what the forward pass wrote, dx apart from the inputs.
pub unsafe fn backward_task(p: &PoolPlan, a: &PoolBwdArgs, task: usize) {
    // SAFETY: forwarded contract.
    unsafe {
        match p.layout {
            Layout::NChw16c => backward_blocked_isa(p.isa, p, a, task),
            Layout::Nchw => backward_plain(p, a, task),
        }
    }
}

/// The operands of a pooling backward pass: `gy` and `dx`, plus `argmax` (max) or `x` and `y`
/// (L2), all views of the plan's shapes and layout.
#[derive(Clone, Copy, Debug)]
pub struct PoolBwdIo {
    pub gy: View,
    pub dx: View,
    pub x: Option<View>,
    pub y: Option<View>,
    pub argmax: Option<View>,
    pub accumulate: bool,
}

/// Runs a pooling backward pass after checking the operands. The argmax must come from the
/// forward pass of the same plan on the same input (its entries index the input planes).
pub fn backward(par: &dyn Parallel, p: &PoolPlan, arena: &mut [f32], io: &PoolBwdIo) -> Result<(), KernelError> {
    let len = arena.len();
    check_views(p, len, &io.dx, &io.gy, ("input gradient", "output gradient"))?;
    check_apart(("input gradient", &io.dx), &[("output gradient", &io.gy)])?;
    let need =
        |v: Option<View>, wanted: bool, what: &'static str, dims: [usize; 2]| -> Result<Option<View>, KernelError> {
            match (v, wanted) {
                (Some(v), true) => {
                    v.check_in(what, len)?;
                    v.expect(what, [p.n, p.c, dims[0], dims[1]], p.layout)?;
                    check_apart(("input gradient", &io.dx), &[(what, &v)])?;
                    Ok(Some(v))
                }
                (None, false) => Ok(None),
                _ => Err(KernelError::View { what }),
            }
        };
    let l2 = p.kind == PoolKind::L2;
    let x = need(io.x, l2, "input", [p.ih, p.iw])?;
    let y = need(io.y, l2, "output", [p.oh, p.ow])?;
    let m = need(io.argmax, p.kind == PoolKind::Max, "argmax", [p.oh, p.ow])?;
    if let Some(m) = m {
        // The scatter trusts every index: check them once (finite, whole, inside the plane).
        let plane = (p.ih * p.iw) as f32;
        let ok = (0..p.n).all(|n| {
            let image = &arena[m.offset + n * m.batch_stride..][..m.image_len().unwrap_or(0)];
            image.iter().all(|&v| v == -1.0 || (v >= 0.0 && v < plane && super::fmath::is_whole(v)))
        });
        if !ok {
            return Err(KernelError::View { what: "argmax (an entry is not an index into its plane)" });
        }
    }
    let base = arena.as_mut_ptr();
    let ptr = |v: Option<View>| v.map_or(core::ptr::null(), |v| base.wrapping_add(v.offset) as *const f32);
    let args = PoolBwdArgs {
        gy: base.wrapping_add(io.gy.offset),
        gy_bs: io.gy.batch_stride,
        x: ptr(x),
        x_bs: x.map_or(0, |v| v.batch_stride),
        y: ptr(y),
        y_bs: y.map_or(0, |v| v.batch_stride),
        argmax: ptr(m),
        argmax_bs: m.map_or(0, |v| v.batch_stride),
        dx: base.wrapping_add(io.dx.offset),
        dx_bs: io.dx.batch_stride,
        accumulate: io.accumulate,
    };
    par.run(p.tasks(), &|t, _| {
        // SAFETY: views checked above, argmax entries checked; tasks write their own planes.
        unsafe { backward_task(p, &args, t) }
    });
    Ok(())
}
