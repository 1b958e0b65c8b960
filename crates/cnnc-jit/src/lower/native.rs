//! Native mode: nodes that `cnnc-kernels` has a kernel for become a call from the JIT code
//! into the kernel's C-ABI entry point (`cnnc_kernels::ffi`), with a plan made here at compile
//! time (it checks the shape and chooses tiles and the split into tasks for the pool's
//! threads) and an argument block of absolute addresses; both are copied into the auxiliary
//! buffer, so the generated code passes `ctx`-relative pointers. The kernel runs its tasks on
//! the same pool. Blocked convolutions and matrix products on maps (`OIhw16i16o`,
//! `gOIhw16i16o`, `OI16i16o` weights: the plan's own packed layouts), plain-input convolutions
//! (weights repacked to the kernel's `Oihw16o` when loaded, or before every run for parameters
//! the plan updates), fully connected layers, pooling forward, and local response
//! normalisation forward and backward.

use super::conv::{ConvForward, Geo};
use super::{Lowering, Lx, Val};
use crate::emit::I64;
use crate::error::JitError;
use cnnc_ir::plan::ParamPlan;
use cnnc_ir::{Activation, Layout, NodeId, Op, PoolGeometry, PoolKind, TrainOp, WeightLayout};
use cnnc_kernels::act::{Act, ActKind};
use cnnc_kernels::conv::{ConvArgs, ConvPlan, ConvShape, Epilogue};
use cnnc_kernels::conv_plain::PlainConvPlan;
use cnnc_kernels::fc::FcPlan;
use cnnc_kernels::lrn::{LrnArgs, LrnPlan};
use cnnc_kernels::pool::{PoolArgs, PoolPlan, PoolWindow};
use cnnc_kernels::view::Layout as KLayout;
use cnnc_kernels::winograd::{self, WinoPlan};
use cranelift_codegen::ir::{AbiParam, InstBuilder};

/// The kernels' activation for an IR activation.
pub(super) fn act(a: Option<Activation>) -> Act {
    match a {
        None => Act::NONE,
        Some(a) => match a {
            Activation::Relu => Act::RELU,
            Activation::LeakyRelu { slope } => Act::leaky_relu(slope as f32),
            Activation::Elu { alpha } => Act::elu(alpha as f32),
            Activation::Selu => Act::new(ActKind::Selu),
            Activation::Sigmoid => Act::new(ActKind::Sigmoid),
            Activation::Tanh => Act::new(ActKind::Tanh),
            Activation::HardTanh { min, max } => Act::hardtanh(min as f32, max as f32),
            Activation::Softsign => Act::new(ActKind::Softsign),
            Activation::Softplus { beta, threshold } => Act::softplus(beta as f32, threshold as f32),
        },
    }
}

/// Keeps a plan or argument block alive as long as the code, at a fixed address.
pub(super) fn keep<T: Send + 'static>(lx: &mut Lx, v: T) -> u64 {
    let b = Box::new(v);
    let addr = &*b as *const T as u64;
    lx.keep.push(b);
    addr
}

/// An argument of a kernel call: `ctx`-relative, absolute, or null.
#[derive(Clone, Copy)]
pub(super) enum Arg {
    Aux(u64),
    Abs(u64),
}

/// A single-task step that calls the C-ABI function at `f` with `args`.
pub(super) fn call(lx: &mut Lx, f: u64, args: &[Arg]) -> Result<(), JitError> {
    calls(lx, &[(f, args)])
}

/// A single-task step that calls each C-ABI function in turn with its arguments.
pub(super) fn calls(lx: &mut Lx, list: &[(u64, &[Arg])]) -> Result<(), JitError> {
    let list: Vec<(u64, Vec<Arg>)> = list.iter().map(|(f, a)| (*f, a.to_vec())).collect();
    lx.kernel(1, |fx| {
        for (f, args) in &list {
            let vals: Vec<_> = args
                .iter()
                .map(|a| match *a {
                    Arg::Aux(off) => fx.aux(off),
                    Arg::Abs(v) => fx.abs(v),
                })
                .collect();
            emit_call(fx, *f, &vals);
        }
    })
}

/// A call, from generated code, of the C-ABI function at `f` with pointer-sized arguments.
pub(super) fn emit_call(fx: &mut crate::emit::Fx, f: u64, vals: &[cranelift_codegen::ir::Value]) {
    let mut sig = cranelift_codegen::ir::Signature::new(cranelift_codegen::isa::CallConv::SystemV);
    for _ in vals {
        sig.params.push(AbiParam::new(I64));
    }
    let sref = fx.b.import_signature(sig);
    let callee = fx.abs(f);
    fx.b.ins().call_indirect(sref, callee, vals);
}

/// Keeps `items` alive with the code; the address of the first (they are contiguous).
pub(super) fn keep_all<T: Send + 'static>(lx: &mut Lx, items: Vec<T>) -> u64 {
    let addr = items.as_ptr() as u64;
    lx.keep.push(Box::new(items));
    addr
}

pub(super) fn shape(g: &Geo, n: usize) -> ConvShape {
    ConvShape {
        n,
        ic: g.c,
        ih: g.h,
        iw: g.w,
        oc: g.o,
        kh: g.kh,
        kw: g.kw,
        stride: g.stride,
        pad: g.pad,
        dilation: g.dil,
        groups: g.groups,
    }
}

/// Whether any node of the plan writes parameter `name` (an optimiser update).
pub(crate) fn updated(lx: &Lx, name: &str) -> bool {
    lx.plan.graph.iter().any(|(_, n)| matches!(n.op, Op::Train(TrainOp::Update(_))) && n.name == name)
}

/// A forward convolution (or matrix product on maps) through the kernels, when one fits.
pub(crate) fn conv(lx: &mut Lx, op: &ConvForward) -> Result<Option<Lowering>, JitError> {
    if super::native_point::forward(lx, op)? {
        return Ok(Some(Lowering::Kernels));
    }
    let ConvForward { g, x, y, res, w, wp, bias, act: a } = *op;
    let epi = Epilogue { bias: bias.is_some(), scale_shift: false, residual: res.is_some(), act: act(a) };
    let s = shape(g, x.n);
    let cpu = cnnc_kernels::cpu::best();
    let args = |w: u64| ConvArgs {
        x: x.addr as *const f32,
        x_bs: (x.bs / 4) as usize,
        w: w as *const f32,
        bias: bias.unwrap_or(0) as *const f32,
        scale: std::ptr::null(),
        shift: std::ptr::null(),
        res: res.map_or(0, |r| r.addr) as *const f32,
        res_bs: res.map_or(0, |r| (r.bs / 4) as usize),
        y: y.addr as *mut f32,
        y_bs: (y.bs / 4) as usize,
    };
    let blocked_weights =
        matches!(wp.layout, Some(WeightLayout::OIhw16i16o | WeightLayout::GOIhw16i16o | WeightLayout::OI16i16o));
    if x.layout == Layout::Blocked16 && y.layout == Layout::Blocked16 && blocked_weights {
        // Winograd where it pays, on weights no step updates (inference): its transformed
        // weights are made when weights load.
        if lx.winograd
            && let Some(m) = winograd::preferred(&s)
            && !updated(lx, &wp.name)
            && let Ok(plan) = WinoPlan::new(s, m, epi, cpu, lx.threads)
        {
            let u = lx.winograd_weights(&wp.name, s, m)?;
            let scratch = lx.scratch(plan.scratch_len(lx.threads) * 4);
            let (p, ar) = (keep(lx, plan), keep(lx, args(u)));
            let f = cnnc_kernels::ffi::cnnc_winograd_forward as *const () as u64;
            call(lx, f, &[Arg::Abs(p), Arg::Abs(ar), Arg::Aux(scratch), Arg::Abs(lx.pool)])?;
            return Ok(Some(Lowering::Winograd { tile: m }));
        }
        let Ok(plan) = ConvPlan::new(s, epi, cpu, lx.threads) else { return Ok(None) };
        let scratch = lx.scratch(plan.scratch_len(lx.threads) * 4);
        let (p, ar) = (keep(lx, plan), keep(lx, args(w)));
        let f = cnnc_kernels::ffi::cnnc_conv_forward as *const () as u64;
        call(lx, f, &[Arg::Abs(p), Arg::Abs(ar), Arg::Aux(scratch), Arg::Abs(lx.pool)])?;
        return Ok(Some(Lowering::Kernels));
    }
    let plain_weights = wp.layout.is_none_or(|l| l == WeightLayout::Oihw) && g.groups == 1;
    if x.layout == Layout::Plain && plain_weights && res.is_none_or(|r| r.layout == y.layout) {
        let out = if y.layout == Layout::Plain { KLayout::Nchw } else { KLayout::NChw16c };
        let Ok(plan) = PlainConvPlan::new(s, epi, out, cpu, lx.threads) else { return Ok(None) };
        let Ok(len) = cnnc_kernels::conv_plain::packed_weight_len(&s) else { return Ok(None) };
        let packed = lx.plain_input_weights(&wp.name, w, [g.o, g.c, g.kh, g.kw], s, len)?;
        let scratch = lx.scratch(plan.scratch_len(lx.threads) * 4);
        let (p, ar) = (keep(lx, plan), keep(lx, args(packed)));
        let f = cnnc_kernels::ffi::cnnc_conv_plain_forward as *const () as u64;
        call(lx, f, &[Arg::Abs(p), Arg::Abs(ar), Arg::Aux(scratch), Arg::Abs(lx.pool)])?;
        return Ok(Some(Lowering::Kernels));
    }
    Ok(None)
}

/// A fully connected layer (`gemm` on vectors) through the kernels.
pub(crate) fn fc(
    lx: &mut Lx,
    x: Val,
    y: Val,
    (w, wp): (u64, &ParamPlan),
    bias: Option<u64>,
    a: Option<Activation>,
    residual: bool,
) -> Result<bool, JitError> {
    // Samples a whole number of floats apart (the arena rounds images up to 64 bytes).
    let apart = |v: &Val| v.bs.is_multiple_of(4) && v.bs >= 4 * v.c as u64;
    if residual
        || !apart(&x)
        || !apart(&y)
        || x.layout != Layout::Plain
        || wp.layout.is_some_and(|l| l != WeightLayout::Oi)
    {
        return Ok(false);
    }
    let plan = FcPlan::new(x.n, x.c, y.c, bias.is_some(), act(a), cnnc_kernels::cpu::best(), lx.threads)
        .and_then(|p| p.with_strides((x.bs / 4) as usize, (y.bs / 4) as usize));
    let Ok(plan) = plan else { return Ok(false) };
    let p = keep(lx, plan);
    let f = cnnc_kernels::ffi::cnnc_fc_forward as *const () as u64;
    let args =
        [Arg::Abs(p), Arg::Abs(x.addr), Arg::Abs(w), Arg::Abs(bias.unwrap_or(0)), Arg::Abs(y.addr), Arg::Abs(lx.pool)];
    call(lx, f, &args)?;
    Ok(true)
}

/// The kernels' kind and window of a pooling; `None` for a pyramid (several windows: the
/// JIT's own loops).
pub(crate) fn kernel_pooling(
    kind: PoolKind,
    geometry: &PoolGeometry,
) -> Option<(cnnc_kernels::pool::PoolKind, PoolWindow)> {
    let k = match kind {
        PoolKind::Max => cnnc_kernels::pool::PoolKind::Max,
        PoolKind::Avg { include_pad: true } => cnnc_kernels::pool::PoolKind::Avg,
        PoolKind::Avg { include_pad: false } => cnnc_kernels::pool::PoolKind::AvgExcludePad,
        PoolKind::L2 => cnnc_kernels::pool::PoolKind::L2,
    };
    let win = match geometry {
        PoolGeometry::Window(w) => PoolWindow {
            kernel: w.kernel,
            stride: w.stride,
            pad: w.pad,
            dilation: w.dilation,
            ceil_mode: w.ceil_mode,
            adaptive: false,
        },
        PoolGeometry::Global => PoolWindow::adaptive(1, 1),
        PoolGeometry::Adaptive(o) => PoolWindow::adaptive(o[0], o[1]),
        PoolGeometry::Pyramid(_) => return None,
    };
    Some((k, win))
}

/// Pooling forward (no argmax) through the kernels.
pub(crate) fn pool(
    lx: &mut Lx,
    _id: NodeId,
    kind: PoolKind,
    geometry: &PoolGeometry,
    x: Val,
    y: Val,
) -> Result<bool, JitError> {
    let Some((k, win)) = kernel_pooling(kind, geometry) else { return Ok(false) };
    if y.layout != x.layout || y.h * y.w == 0 {
        return Ok(false);
    }
    let layout = if x.layout == Layout::Plain { KLayout::Nchw } else { KLayout::NChw16c };
    let Ok(plan) = PoolPlan::new(x.n, x.c, [x.h, x.w], k, win, layout, cnnc_kernels::cpu::best()) else {
        return Ok(false);
    };
    let args = PoolArgs {
        x: x.addr as *const f32,
        x_bs: (x.bs / 4) as usize,
        y: y.addr as *mut f32,
        y_bs: (y.bs / 4) as usize,
        argmax: std::ptr::null_mut(),
        argmax_bs: 0,
    };
    let (p, ar) = (keep(lx, plan), keep(lx, args));
    let f = cnnc_kernels::ffi::cnnc_pool_forward as *const () as u64;
    call(lx, f, &[Arg::Abs(p), Arg::Abs(ar), Arg::Abs(lx.pool)])?;
    Ok(true)
}

/// Local response normalisation through the kernel, forward (`gy` none: `out` is `y`) or
/// backward (`out` is the input gradient), when every operand has the input's layout.
pub(crate) fn lrn(lx: &mut Lx, lrn: &cnnc_ir::Lrn, x: Val, gy: Option<Val>, out: Val) -> Result<bool, JitError> {
    let floats = |v: &Val| v.bs.is_multiple_of(4);
    // The kernel reads a window of channels around the one it writes: the output apart.
    let span = |v: &Val| v.addr..v.addr + v.n as u64 * v.bs;
    let apart = |a: &Val, b: &Val| span(a).end <= span(b).start || span(b).end <= span(a).start;
    if !apart(&out, &x) || gy.is_some_and(|g| !apart(&out, &g)) {
        return Ok(false);
    }
    if out.layout != x.layout || gy.is_some_and(|g| g.layout != x.layout || !floats(&g)) || !floats(&x) || !floats(&out)
    {
        return Ok(false);
    }
    let layout = if x.layout == Layout::Plain { KLayout::Nchw } else { KLayout::NChw16c };
    // The kernel divides alpha by the size (PyTorch's convention); the paper's alpha is used
    // as given.
    let alpha = (lrn.sum_factor() * lrn.size as f64) as f32;
    let cpu = cnnc_kernels::cpu::best();
    let plan =
        LrnPlan::new(x.n, x.c, [x.h, x.w], layout, lrn.size, alpha, lrn.beta as f32, lrn.k as f32, cpu, lx.threads);
    let Ok(plan) = plan else { return Ok(false) };
    let scratch = lx.scratch(plan.scratch_len(lx.threads) * 4);
    let args = LrnArgs {
        x: x.addr as *const f32,
        x_bs: (x.bs / 4) as usize,
        y: out.addr as *mut f32,
        y_bs: (out.bs / 4) as usize,
        gy: gy.map_or(0, |g| g.addr) as *const f32,
        gy_bs: gy.map_or(0, |g| (g.bs / 4) as usize),
    };
    let (p, a) = (keep(lx, plan), keep(lx, args));
    let f = cnnc_kernels::ffi::cnnc_lrn as *const () as u64;
    call(lx, f, &[Arg::Abs(p), Arg::Abs(a), Arg::Aux(scratch), Arg::Abs(lx.pool)])?;
    Ok(true)
}
