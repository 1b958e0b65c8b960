//! Native mode's 2x2/2 max pooling of a plain map beside channel-blocked values (the CIFAR
//! net's first pooling, after the plain-input convolution), through `cnnc-kernels`' `pool2x2`:
//!
//! - forward: `maxpool(x)`, its `pool_argmax(x)` and the `reorder` to `nChw16c` that is the
//!   pooled map's only reader become one pass: the pooled map written blocked in the reorder's
//!   place, the argmax plain (neither the plain pooled map nor the reorder runs);
//! - backward: the `reorder` to `nchw` of the blocked output gradient, the `pool_backward`
//!   reading it, the ReLU `activation_backward` reading that, and the `bias_grad` of its
//!   value become one pass writing the activation backward's value once (full vectors) and
//!   the bias gradient.
//!
//! Each applies only where every value it skips has no other reader, and the values it
//! writes early are free from its step on ([`Lx::early_ok`]); otherwise the nodes run one by
//! one as before.

use super::super::native::{self, Arg};
use super::super::{Lx, Val};
use crate::error::JitError;
use crate::options::Mode;
use cnnc_ir::plan::Alias;
use cnnc_ir::{Activation, Layout, NodeId, Op, PoolGeometry, PoolKind, TrainOp, Window};
use cnnc_kernels::pool2x2::{Max2BwdArgs, Max2FwdArgs, Max2Plan};
use cnnc_kernels::simd::Isa;

/// Whether `win` is a 2x2/2 window without padding or dilation.
fn two_by_two(win: &Window) -> bool {
    win.kernel == [2, 2] && win.stride == [2, 2] && win.pad == [0, 0] && win.dilation == [1, 1]
}

/// The kernels' plan for an `n x c x h x w` input, on AVX-512 and rows of at least 16 pixels
/// only: elsewhere the separate passes are as fast (the kernel's partial vectors need masked
/// stores, which made the digits net's 8x8 maps 5 % slower).
fn plan(n: usize, c: usize, h: usize, w: usize) -> Option<Max2Plan> {
    let cpu = cnnc_kernels::cpu::best();
    if cpu.isa() != Isa::Avx512 || w < 16 {
        return None;
    }
    Max2Plan::new(n, c, [h, w], cpu).ok()
}

/// The only reader of `id`, when it has exactly one and `id` is no output.
fn only_user(lx: &Lx, users: &[Vec<NodeId>], id: NodeId) -> Option<NodeId> {
    match users[id.index()][..] {
        [u] if !lx.plan.graph.outputs.contains(&id) => Some(u),
        _ => None,
    }
}

/// Whether the value of `id`, placed over its operand `over` (an in-place activation
/// backward over the saved map), may be written at the earlier step `at`: `over` has no
/// reader between `at` and `id`, and no other value alive at any step from `at` to `id`
/// shares `id`'s bytes (as [`Lx::early_ok`], `over` excepted: the kernel reads each of its
/// vectors before writing the same vector of `id`).
fn in_place_ok(lx: &Lx, users: &[Vec<NodeId>], id: NodeId, at: NodeId, over: NodeId) -> bool {
    let memory = &lx.plan.memory;
    let Some(place) = memory.place(id) else { return false };
    if place.alias != Alias::InPlace(over) || place.first != id.index() || at.index() >= id.index() {
        return false;
    }
    if users[over.index()].iter().any(|&u| u != id && u.index() >= at.index()) {
        return false;
    }
    let span = |v: &Val| (v.addr, v.addr + (v.n as u64 - 1) * v.bs + v.bytes);
    let (Ok(v), Ok(o)) = (lx.val(id), lx.val(over)) else { return false };
    if (v.addr, v.bs) != (o.addr, o.bs) {
        return false;
    }
    let (lo, hi) = span(&v);
    lx.plan.graph.ids().all(|u| {
        let Some(p) = memory.place(u) else { return true };
        let alive = p.first < id.index() && p.last >= at.index();
        if u == id || u == over || !alive {
            return true;
        }
        // A value without an address of its own (an effect) holds no bytes.
        let Ok(uv) = lx.val(u) else { return true };
        let (a, b) = span(&uv);
        b <= lo || hi <= a
    })
}

fn floats(v: &Val) -> usize {
    (v.bs / 4) as usize
}

/// The forward fusion at max pooling `id` with argmax node `argmax` (see the module comment);
/// `false` when it does not apply.
pub(crate) fn forward(lx: &mut Lx, id: NodeId, win: &Window, x: Val, argmax: Option<NodeId>) -> Result<bool, JitError> {
    let Some(j) = argmax else { return Ok(false) };
    if lx.mode != Mode::Native || !two_by_two(win) || x.layout != Layout::Plain {
        return Ok(false);
    }
    let users = lx.plan.graph.users();
    let Some(r) = only_user(lx, &users, id) else { return Ok(false) };
    if lx.plan.graph[r].op != Op::Reorder(Layout::Blocked16) || !lx.early_ok(r, id) || !lx.early_ok(j, id) {
        return Ok(false);
    }
    let (y, a) = (lx.val(r)?, lx.val(j)?);
    let out = [x.h / 2, x.w / 2];
    if y.layout != Layout::Blocked16 || a.layout != Layout::Plain || [y.h, y.w] != out || [a.h, a.w] != out {
        return Ok(false);
    }
    let Some(p) = plan(x.n, x.c, x.h, x.w) else { return Ok(false) };
    let args = Max2FwdArgs {
        x: x.addr as *const f32,
        x_bs: floats(&x),
        y: y.addr as *mut f32,
        y_bs: floats(&y),
        argmax: a.addr as *mut f32,
        argmax_bs: floats(&a),
    };
    lx.written.extend([r, j]);
    let (p, a) = (native::keep(lx, p), native::keep(lx, args));
    let f = cnnc_kernels::ffi::cnnc_max2_forward as *const () as u64;
    native::call(lx, f, &[Arg::Abs(p), Arg::Abs(a), Arg::Abs(lx.pool)])?;
    Ok(true)
}

/// The backward fusion at reorder `r` (see the module comment); `false` when it does not
/// apply.
pub(crate) fn backward(lx: &mut Lx, r: NodeId) -> Result<bool, JitError> {
    if lx.mode != Mode::Native || lx.plan.graph[r].op != Op::Reorder(Layout::Plain) {
        return Ok(false);
    }
    let graph = &lx.plan.graph;
    let users = graph.users();
    let Some(pb) = only_user(lx, &users, r) else { return Ok(false) };
    let Op::Train(TrainOp::PoolBackward { kind: PoolKind::Max, geometry: PoolGeometry::Window(win), .. }) =
        &graph[pb].op
    else {
        return Ok(false);
    };
    if !two_by_two(win) || graph[pb].inputs[0] != r {
        return Ok(false);
    }
    let Some(ab) = only_user(lx, &users, pb) else { return Ok(false) };
    let Op::Train(TrainOp::ActivationBackward { activation: Activation::Relu, .. }) = graph[ab].op else {
        return Ok(false);
    };
    if graph[ab].inputs[1] != pb || graph[ab].inputs[0] == pb {
        return Ok(false);
    }
    let (argmax, mask) = (graph[pb].inputs[1], graph[ab].inputs[0]);
    let bias = users[ab.index()].iter().copied().find(|&u| graph[u].op == Op::Train(TrainOp::BiasGrad));
    if !(lx.early_ok(ab, r) || in_place_ok(lx, &users, ab, r, mask)) || bias.is_some_and(|b| !lx.early_ok(b, r)) {
        return Ok(false);
    }
    let gy = lx.val(graph[r].inputs[0])?;
    let (am, m, dx) = (lx.val(argmax)?, lx.val(mask)?, lx.val(ab)?);
    let bias_val = bias.map(|b| lx.val(b)).transpose()?;
    let (c, h, w) = (dx.c, dx.h, dx.w);
    let out = [h / 2, w / 2];
    let plain = |v: &Val, hw: [usize; 2]| v.layout == Layout::Plain && v.c == c && [v.h, v.w] == hw;
    if gy.layout != Layout::Blocked16
        || gy.c != c
        || [gy.h, gy.w] != out
        || !plain(&am, out)
        || !plain(&m, [h, w])
        || !plain(&dx, [h, w])
        || bias_val.is_some_and(|b| b.c * b.h * b.w != c)
    {
        return Ok(false);
    }
    let Some(p) = plan(dx.n, c, h, w) else { return Ok(false) };
    let args = Max2BwdArgs {
        gy: gy.addr as *const f32,
        gy_bs: floats(&gy),
        argmax: am.addr as *const f32,
        argmax_bs: floats(&am),
        mask: m.addr as *const f32,
        mask_bs: floats(&m),
        dx: dx.addr as *mut f32,
        dx_bs: floats(&dx),
        bias: bias_val.map_or(std::ptr::null_mut(), |b| b.addr as *mut f32),
    };
    lx.written.extend([pb, ab]);
    lx.written.extend(bias);
    let (p, a) = (native::keep(lx, p), native::keep(lx, args));
    let f = cnnc_kernels::ffi::cnnc_max2_backward as *const () as u64;
    native::call(lx, f, &[Arg::Abs(p), Arg::Abs(a), Arg::Abs(lx.pool)])?;
    Ok(true)
}
