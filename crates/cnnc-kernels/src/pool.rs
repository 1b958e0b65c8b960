//! Pooling, forward and backward, on `nchw` or `nChw16c` maps: max (optionally writing the
//! argmax: the f32 value of the flat index `h * W + w` of the first maximum within its input
//! plane, exact below 2^24, or -1 for a window with no input), average (padding counted in the
//! divisor or not), L2 (`sqrt` of the sum of squares), over sliding windows (padding,
//! dilation, ceil mode) or PyTorch's adaptive bins (global pooling is adaptive to 1 x 1).
//! Semantics as the interpreter's `ops/pool.rs`: padding is -inf for max (NaN wins, the last
//! NaN), 0 for the sums; an include-pad divisor counts the window clipped to input + padding.
//!
//! Blocked maps pool 16 channels per vector; plain maps one plane at a time with scalars.
//! Backward: max scatters the output gradient to the saved argmax, average spreads
//! `gy / divisor` over the window, L2 adds `gy * x / y` (where `y > 0`, from the forward output).

use super::error::KernelError;
use super::par::Parallel;
use super::simd::{Cpu, Isa, Simd, isa_fn};
use super::view::{Layout, View, check_apart, pad16};

/// What a pool computes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum PoolKind {
    Max = 0,
    /// Average, padded positions counted in the divisor (PyTorch's default).
    Avg = 1,
    /// Average over the real input positions only.
    AvgExcludePad = 2,
    L2 = 3,
}

/// The windows of a pool.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(C)]
pub struct PoolWindow {
    /// `[kh, kw]`; with `adaptive`, the output size instead.
    pub kernel: [usize; 2],
    pub stride: [usize; 2],
    pub pad: [usize; 2],
    pub dilation: [usize; 2],
    pub ceil_mode: bool,
    /// PyTorch's adaptive bins to an output of `kernel` (stride, pad, dilation ignored).
    pub adaptive: bool,
}

impl PoolWindow {
    /// Adaptive pooling to `oh x ow` (global pooling: 1 x 1).
    pub fn adaptive(oh: usize, ow: usize) -> PoolWindow {
        PoolWindow { kernel: [oh, ow], stride: [1, 1], pad: [0, 0], dilation: [1, 1], ceil_mode: false, adaptive: true }
    }

    /// A sliding window with square kernel, stride and padding.
    pub fn sliding(k: usize, stride: usize, pad: usize, ceil_mode: bool) -> PoolWindow {
        PoolWindow { kernel: [k, k], stride: [stride; 2], pad: [pad; 2], dilation: [1, 1], ceil_mode, adaptive: false }
    }
}

/// A checked pooling layer (made by [`PoolPlan::new`] only).
#[derive(Clone, Copy, Debug, PartialEq)]
#[repr(C)]
pub struct PoolPlan {
    pub(crate) n: usize,
    pub(crate) c: usize,
    pub(crate) ih: usize,
    pub(crate) iw: usize,
    pub(crate) oh: usize,
    pub(crate) ow: usize,
    pub(crate) kind: PoolKind,
    pub(crate) win: PoolWindow,
    pub(crate) layout: Layout,
    pub(crate) isa: Isa,
}

/// One output index's window along an axis: input positions `first, first + step, ...`
/// (`count` of them) and the positions inside input + padding (the include-pad divisor).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Bin {
    pub(crate) first: usize,
    pub(crate) count: usize,
    pub(crate) step: usize,
    pub(crate) padded: usize,
}

impl PoolPlan {
    /// Pools `n x c x ih x iw` in `layout`; the output size follows the IR's rule (floor, or ceil
    /// with the last window starting inside the input or its left padding).
    pub fn new(
        n: usize,
        c: usize,
        hw: [usize; 2],
        kind: PoolKind,
        win: PoolWindow,
        layout: Layout,
        cpu: Cpu,
    ) -> Result<PoolPlan, KernelError> {
        if n == 0 || c == 0 || hw.contains(&0) {
            return Err(KernelError::Shape { what: "pooling sizes must be positive" });
        }
        let mut out = [0; 2];
        for a in 0..2 {
            let (k, s, p, d) = (win.kernel[a], win.stride[a], win.pad[a], win.dilation[a]);
            if win.adaptive {
                if k == 0 {
                    return Err(KernelError::Shape { what: "adaptive output size is zero" });
                }
                out[a] = k;
                continue;
            }
            if k == 0 || s == 0 || d == 0 {
                return Err(KernelError::Shape { what: "pooling kernel, stride or dilation is zero" });
            }
            let over = KernelError::Overflow { what: "pooling geometry" };
            let eff = (k - 1).checked_mul(d).and_then(|e| e.checked_add(1)).ok_or(over)?;
            let padded = p.checked_mul(2).and_then(|p2| p2.checked_add(hw[a])).ok_or(over)?;
            if eff > padded {
                return Err(KernelError::Shape { what: "the pooling window is larger than the padded input" });
            }
            let span = padded - eff;
            let mut o = if win.ceil_mode { span.div_ceil(s) + 1 } else { span / s + 1 };
            // In ceil mode the last window must start inside the input or its left padding
            // (a start past usize is past it too).
            if win.ceil_mode && (o - 1).checked_mul(s).is_none_or(|start| start >= hw[a] + p) {
                o -= 1;
            }
            out[a] = o;
        }
        super::error::product("tensor", &[n, pad16(c), hw[0], hw[1]])?;
        super::error::product("tensor", &[n, pad16(c), out[0], out[1]])?;
        Ok(PoolPlan { n, c, ih: hw[0], iw: hw[1], oh: out[0], ow: out[1], kind, win, layout, isa: cpu.isa() })
    }

    pub fn out_hw(&self) -> [usize; 2] {
        [self.oh, self.ow]
    }

    /// Tasks of a run: one per image and 16-channel block.
    pub fn tasks(&self) -> usize {
        self.n * self.c.div_ceil(16)
    }

    pub(crate) fn bin(&self, axis: usize, o: usize) -> Bin {
        let size = [self.ih, self.iw][axis];
        let out = [self.oh, self.ow][axis];
        if self.win.adaptive {
            let first = o * size / out;
            let end = ((o + 1) * size).div_ceil(out);
            return Bin { first, count: end - first, step: 1, padded: end - first };
        }
        let (k, s, p, d) = (self.win.kernel[axis], self.win.stride[axis], self.win.pad[axis], self.win.dilation[axis]);
        let start = o * s; // in padded coordinates
        let padded = (0..k).filter(|&t| start + t * d < size + 2 * p).count();
        let lo = (0..k).find(|&t| start + t * d >= p);
        let (first, count) = match lo {
            Some(t0) => {
                let count = (t0..k).take_while(|&t| start + t * d < p + size).count();
                (start + t0 * d - p, count)
            }
            None => (0, 0),
        };
        Bin { first, count, step: d, padded }
    }

    /// The output columns whose window lies wholly inside the input (no padding, no clipping):
    /// their [`PoolPlan::bin`] is [`PoolPlan::inner_bin`], without the general search.
    pub(crate) fn inner_columns(&self) -> core::ops::Range<usize> {
        if self.win.adaptive {
            return 0..0;
        }
        let (k, s, p, d) = (self.win.kernel[1], self.win.stride[1], self.win.pad[1], self.win.dilation[1]);
        let reach = (k - 1) * d;
        // ox * s >= p, and ox * s - p + reach < iw.
        let lo = p.div_ceil(s);
        if self.iw + p < reach + 1 {
            return 0..0;
        }
        let hi = ((self.iw + p - 1 - reach) / s + 1).min(self.ow);
        lo.min(hi)..hi
    }

    /// [`PoolPlan::bin`] along the columns for `ox` in [`PoolPlan::inner_columns`].
    pub(crate) fn inner_bin(&self, ox: usize) -> Bin {
        let (k, s, p, d) = (self.win.kernel[1], self.win.stride[1], self.win.pad[1], self.win.dilation[1]);
        Bin { first: ox * s - p, count: k, step: d, padded: k }
    }

    pub(crate) fn divisor(&self, by: Bin, bx: Bin) -> f32 {
        let d = match self.kind {
            PoolKind::Avg => by.padded * bx.padded,
            _ => by.count * bx.count,
        };
        d.max(1) as f32
    }
}

/// Where channel `lane` of block (or plane) `p` lives: element `(y, x)` of a plane is at
/// `base + (y * w + x) * pix` with `pix` 16 (blocked) or 1 (plain).
#[derive(Clone, Copy)]
pub(crate) struct Plane {
    pub(crate) base: usize,
    pub(crate) pix: usize,
    pub(crate) w: usize,
}

impl Plane {
    pub(crate) fn at(&self, y: usize, x: usize) -> usize {
        self.base + (y * self.w + x) * self.pix
    }
}

/// Raw operands: image strides in floats; `argmax` (max, optional) and, for backward, `x` and
/// `y` (L2) null when absent.
#[derive(Clone, Copy, Debug)]
#[repr(C)]
pub struct PoolArgs {
    pub x: *const f32,
    pub x_bs: usize,
    pub y: *mut f32,
    pub y_bs: usize,
    pub argmax: *mut f32,
    pub argmax_bs: usize,
}

// SAFETY: plain pointers; tasks read the inputs and write their own blocks of the outputs.
unsafe impl Sync for PoolArgs {}
// SAFETY: as above.
unsafe impl Send for PoolArgs {}

/// The input and output planes of task `task` for a layout: `(image, first channel, lanes,
/// input plane, output plane)` offsets within their images.
pub(crate) fn planes(p: &PoolPlan, task: usize, lane: usize) -> (usize, usize, Plane, Plane) {
    let blocks = p.c.div_ceil(16);
    let (n, cb) = (task / blocks, task % blocks);
    match p.layout {
        Layout::NChw16c => (
            n,
            cb * 16,
            Plane { base: cb * p.ih * p.iw * 16 + lane, pix: 16, w: p.iw },
            Plane { base: cb * p.oh * p.ow * 16 + lane, pix: 16, w: p.ow },
        ),
        Layout::Nchw => {
            let c = cb * 16 + lane;
            (n, c, Plane { base: c * p.ih * p.iw, pix: 1, w: p.iw }, Plane { base: c * p.oh * p.ow, pix: 1, w: p.ow })
        }
    }
}

/// Forward of one task, 16 channels as one vector (blocked layout).
///
/// # Safety
/// As [`forward_task`], blocked layout.
#[inline(always)]
unsafe fn forward_blocked<S: Simd>(s: S, p: &PoolPlan, a: &PoolArgs, task: usize) {
    let (n, _, ip, op) = planes(p, task, 0);
    let x = a.x.wrapping_add(n * a.x_bs);
    let y = a.y.wrapping_add(n * a.y_bs);
    let am = a.argmax.wrapping_add(n * a.argmax_bs);
    let inner = p.inner_columns();
    let argmax = !a.argmax.is_null();
    for oy in 0..p.oh {
        let by = p.bin(0, oy);
        for ox in 0..p.ow {
            let bx = if inner.contains(&ox) { p.inner_bin(ox) } else { p.bin(1, ox) };
            debug_assert_eq!(bx, p.bin(1, ox), "inner column {ox} of {inner:?}");
            let mut acc = if p.kind == PoolKind::Max { s.splat(f32::NEG_INFINITY) } else { s.zero() };
            let mut idx = s.splat(-1.0);
            for ty in 0..by.count {
                let iy = by.first + ty * by.step;
                for tx in 0..bx.count {
                    let ix = bx.first + tx * bx.step;
                    // SAFETY: (iy, ix) is inside the input plane.
                    let v = unsafe { s.load(x.add(ip.at(iy, ix))) };
                    match p.kind {
                        PoolKind::Max => {
                            // The first NaN wins, as in the interpreter.
                            let take = s.mask_or(s.lt(acc, v), s.is_nan(v));
                            acc = s.select(take, v, acc);
                            if argmax {
                                idx = s.select(take, s.splat((iy * p.iw + ix) as f32), idx);
                            }
                        }
                        PoolKind::Avg | PoolKind::AvgExcludePad => acc = s.add(acc, v),
                        PoolKind::L2 => acc = s.fmadd(v, v, acc),
                    }
                }
            }
            let out = match p.kind {
                PoolKind::Max => acc,
                PoolKind::Avg | PoolKind::AvgExcludePad => s.div(acc, s.splat(p.divisor(by, bx))),
                PoolKind::L2 => s.sqrt(acc),
            };
            // SAFETY: (oy, ox) is inside the output plane (and the argmax plane).
            unsafe {
                s.store(y.add(op.at(oy, ox)), out);
                if argmax {
                    s.store(am.add(op.at(oy, ox)), idx);
                }
            }
        }
    }
}

/// Forward of one task on plain planes, one channel at a time.
///
/// # Safety
/// As [`forward_task`], plain layout.
unsafe fn forward_plain(p: &PoolPlan, a: &PoolArgs, task: usize) {
    for lane in 0..16 {
        let (n, c, ip, op) = planes(p, task, lane);
        if c >= p.c {
            break;
        }
        let x = a.x.wrapping_add(n * a.x_bs);
        for oy in 0..p.oh {
            let by = p.bin(0, oy);
            for ox in 0..p.ow {
                let bx = p.bin(1, ox);
                let (mut acc, mut idx) = (if p.kind == PoolKind::Max { f32::NEG_INFINITY } else { 0.0 }, -1.0f32);
                for ty in 0..by.count {
                    let iy = by.first + ty * by.step;
                    for tx in 0..bx.count {
                        let ix = bx.first + tx * bx.step;
                        // SAFETY: (iy, ix) is inside the plane.
                        let v = unsafe { *x.add(ip.at(iy, ix)) };
                        match p.kind {
                            PoolKind::Max => {
                                if v > acc || v.is_nan() {
                                    acc = v;
                                    idx = (iy * p.iw + ix) as f32;
                                }
                            }
                            PoolKind::Avg | PoolKind::AvgExcludePad => acc += v,
                            PoolKind::L2 => acc += v * v,
                        }
                    }
                }
                let out = match p.kind {
                    PoolKind::Max => acc,
                    PoolKind::Avg | PoolKind::AvgExcludePad => acc / p.divisor(by, bx),
                    PoolKind::L2 => super::fmath::sqrt32(acc),
                };
                // SAFETY: inside the output (and argmax) plane.
                unsafe {
                    *a.y.add(n * a.y_bs + op.at(oy, ox)) = out;
                    if !a.argmax.is_null() {
                        *a.argmax.add(n * a.argmax_bs + op.at(oy, ox)) = idx;
                    }
                }
            }
        }
    }
}

isa_fn! {
    /// # Safety
    /// As [`forward_task`].
    unsafe fn forward_blocked_isa(p: &PoolPlan, a: &PoolArgs, task: usize) = forward_blocked;
}

/// Runs forward task `task` (one image x 16-channel block).
///
/// # Safety
/// `p` from [`PoolPlan::new`] on a CPU with its instruction set; `a.x` valid for `n` images of
/// the input in the plan's layout at stride `x_bs`, `a.y` (and `a.argmax` unless null) for the
/// output images, outputs apart from the input and from each other.
pub unsafe fn forward_task(p: &PoolPlan, a: &PoolArgs, task: usize) {
    // SAFETY: forwarded contract.
    unsafe {
        match p.layout {
            Layout::NChw16c => forward_blocked_isa(p.isa, p, a, task),
            Layout::Nchw => forward_plain(p, a, task),
        }
    }
}

pub(crate) fn check_views(
    p: &PoolPlan,
    len: usize,
    x: &View,
    y: &View,
    what: (&'static str, &'static str),
) -> Result<(), KernelError> {
    x.check_in(what.0, len)?;
    y.check_in(what.1, len)?;
    x.expect(what.0, [p.n, p.c, p.ih, p.iw], p.layout)?;
    y.expect(what.1, [p.n, p.c, p.oh, p.ow], p.layout)
}

/// Pools `x` into `y` (and the argmax, for max pooling when given) inside `arena`.
pub fn forward(
    par: &dyn Parallel,
    p: &PoolPlan,
    arena: &mut [f32],
    x: View,
    y: View,
    argmax: Option<View>,
) -> Result<(), KernelError> {
    check_views(p, arena.len(), &x, &y, ("input", "output"))?;
    check_apart(("output", &y), &[("input", &x)])?;
    if let Some(m) = argmax {
        if p.kind != PoolKind::Max {
            return Err(KernelError::View { what: "argmax (only max pooling has one)" });
        }
        m.check_in("argmax", arena.len())?;
        m.expect("argmax", [p.n, p.c, p.oh, p.ow], p.layout)?;
        check_apart(("argmax", &m), &[("input", &x), ("output", &y)])?;
    }
    let base = arena.as_mut_ptr();
    let args = PoolArgs {
        x: base.wrapping_add(x.offset),
        x_bs: x.batch_stride,
        y: base.wrapping_add(y.offset),
        y_bs: y.batch_stride,
        argmax: argmax.map_or(core::ptr::null_mut(), |m| base.wrapping_add(m.offset)),
        argmax_bs: argmax.map_or(0, |m| m.batch_stride),
    };
    par.run(p.tasks(), &|t, _| {
        // SAFETY: views checked above; tasks write their own blocks.
        unsafe { forward_task(p, &args, t) }
    });
    Ok(())
}
