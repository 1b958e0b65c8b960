//! Effects: the optimisers' updates of a parameter and its state from its gradient (SGD,
//! Adam, RMSprop, exactly PyTorch's formulas as `cnnc_interp`'s `update.rs` has them), and
//! batch norm's running-statistics update. Updates are elementwise over the parameter as
//! stored (packed layouts included: their padding is zero in the parameter, its gradient and
//! its state, and stays zero).
//!
//! Native mode runs the kernels' updates (`cnnc_kernels::optim`, 16 lanes, every array read
//! once), and may apply an update inside the kernel that computes its gradient ([`fusable`]):
//! the update op stays the graph's source of truth, the fusion is this lowering's decision,
//! and the update node then emits nothing. Portable mode keeps the Cranelift loops below.

use super::native::{emit_call, keep};
use super::{ARG_LR, ARG_STEP, Lx};
use crate::emit::{F32, F32X4, Fx, I32, I64};
use crate::error::{JitError, plan_err};
use crate::options::Mode;
use cnnc_ir::facts::{param_name, param_reads};
use cnnc_ir::{BatchNorm, NodeId, Op, Optimizer, TrainOp};
use cnnc_kernels::optim::{UpdateArgs, UpdateKind, UpdatePlan};
use cranelift_codegen::ir::condcodes::IntCC;
use cranelift_codegen::ir::{InstBuilder, Type, Value};

/// The update of parameter `<name>` from its gradient operand.
pub(crate) fn optimizer(lx: &mut Lx, id: NodeId, opt: &Optimizer) -> Result<(), JitError> {
    if lx.written.contains(&id) {
        // The kernel that computed the gradient applied the update (see `fusable`).
        return Ok(());
    }
    let g = lx.val(lx.plan.graph[id].inputs[0])?;
    let (p, plan) = lx.param(id, "")?;
    let len = plan.stored_len();
    if g.bytes < 4 * len as u64 {
        return Err(plan_err(format!("the gradient of `{}` is shorter than the parameter", plan.name)));
    }
    if lx.mode == Mode::Native {
        let (up, ua) = kernel_update(lx, id, opt)?;
        let f = cnnc_kernels::ffi::cnnc_update as *const () as u64;
        let (ga, pool) = (g.addr, lx.pool);
        return lx.kernel(1, |fx| {
            let (p, a, g, pl) = (fx.abs(up), fx.abs(ua), fx.abs(ga), fx.abs(pool));
            let (lr, step) = run_scalars(fx);
            emit_call(fx, f, &[p, a, g, lr, step, pl]);
        });
    }
    let state: Vec<u64> = opt.state().iter().map(|s| lx.param(id, s).map(|(a, _)| a)).collect::<Result<_, _>>()?;
    // Adam's bias corrections: two floats per step, written by the wrapper before each run.
    let corr = match opt {
        Optimizer::Adam(a) => {
            let off = lx.alloc(8);
            lx.adam.push((off, a.beta1, a.beta2));
            Some(off)
        }
        Optimizer::Sgd(_) | Optimizer::RmsProp(_) => None,
    };
    let o = *opt;
    let units = len.div_ceil(4096);
    let tasks = lx.tasks(units, (len * 8) as f64);
    lx.kernel(tasks, |fx| {
        let args = fx.aux(0);
        let lr = fx.load(F32, args, ARG_LR as i64);
        let step = fx.load(I64, args, ARG_STEP as i64);
        let corr = corr.map(|off| {
            let a = fx.aux(off);
            (fx.load(F32, a, 0), fx.load(F32, a, 4))
        });
        let (lo, hi) = fx.task_range(units, tasks);
        let pb = fx.abs(p);
        let gb = fx.abs(g.addr);
        let sb: Vec<Value> = state.iter().map(|&s| fx.abs(s)).collect();
        fx.for_range(lo, hi, 1, |fx, u| {
            let start = fx.muli(u, 4096);
            let end = fx.addi(start, 4096);
            let vt = fx.int((len - len % 4) as i64);
            let vend = fx.smin(end, vt);
            fx.for_range(start, vend, 4, |fx, i| element(fx, F32X4, &o, i, pb, gb, &sb, lr, step, corr));
            if !len.is_multiple_of(4) {
                let tot = fx.int(len as i64);
                let tend = fx.smin(end, tot);
                let ts = fx.smax(start, vt);
                fx.for_range(ts, tend, 1, |fx, i| element(fx, F32, &o, i, pb, gb, &sb, lr, step, corr));
            }
        });
    })
}

/// The kernels' plan and operands of update `id` (kept with the code): their addresses.
pub(super) fn kernel_update(lx: &mut Lx, id: NodeId, opt: &Optimizer) -> Result<(u64, u64), JitError> {
    let (p, plan) = lx.param(id, "")?;
    let kind = match *opt {
        Optimizer::Sgd(s) => {
            UpdateKind::Sgd { momentum: s.momentum as f32, weight_decay: s.weight_decay as f32, nesterov: s.nesterov }
        }
        Optimizer::Adam(a) => UpdateKind::Adam {
            beta1: a.beta1 as f32,
            beta2: a.beta2 as f32,
            eps: a.eps as f32,
            weight_decay: a.weight_decay as f32,
        },
        Optimizer::RmsProp(r) => UpdateKind::RmsProp {
            alpha: r.alpha as f32,
            eps: r.eps as f32,
            weight_decay: r.weight_decay as f32,
            momentum: r.momentum as f32,
            centered: false,
        },
    };
    let up = UpdatePlan::new(kind, plan.stored_len(), cnnc_kernels::cpu::best())
        .map_err(|e| plan_err(format!("the update of `{}`: {e}", plan.name)))?;
    // The graph's state names and the kernel's state slots, in the same order for every
    // optimiser (SGD: momentum buffer; Adam: both moments; RMSprop: square average, then
    // the momentum buffer when there is one).
    let names = opt.state();
    let used = up.states();
    if names.len() != used.iter().filter(|&&u| u).count() || used.iter().take(names.len()).any(|&u| !u) {
        return Err(plan_err(format!("the update of `{}`: its state does not match the kernel's", plan.name)));
    }
    let mut slots = [std::ptr::null_mut(); 3];
    for (k, name) in names.iter().enumerate() {
        slots[k] = lx.param(id, name)?.0 as *mut f32;
    }
    let ua = UpdateArgs { p: p as *mut f32, s1: slots[0], s2: slots[1], s3: slots[2] };
    Ok((keep(lx, up), keep(lx, ua)))
}

/// The run's learning rate (an `f32`'s bits in an integer) and step, as the kernels' update
/// entry points take them.
pub(super) fn run_scalars(fx: &mut Fx) -> (Value, Value) {
    let args = fx.aux(0);
    let lr = fx.load(I32, args, ARG_LR as i64);
    let lr = fx.b.ins().uextend(I64, lr);
    let step = fx.load(I64, args, ARG_STEP as i64);
    (lr, step)
}

/// The update that the kernel computing gradient `grad` may apply itself, in native mode:
/// the gradient's only reader is an update of the parameter, the gradient is no output of
/// the plan, and no node scheduled between the two reads or writes the parameter (so the
/// update may run early). The gradient is then never observable, so it need not be stored.
pub(super) fn fusable(lx: &Lx, grad: NodeId) -> Option<(NodeId, Optimizer)> {
    let graph = &lx.plan.graph;
    if lx.mode != Mode::Native || graph.outputs.contains(&grad) {
        return None;
    }
    let mut readers = graph.iter().filter(|(_, n)| n.inputs.contains(&grad));
    let (update, node) = readers.next()?;
    let (None, Op::Train(TrainOp::Update(opt))) = (readers.next(), &node.op) else { return None };
    let param = &node.name;
    let owner = param.rsplit_once('.').map_or(param.as_str(), |(o, _)| o);
    let between = graph.iter().filter(|(v, _)| v.index() > grad.index() && v.index() < update.index());
    let clear = between.into_iter().all(|(_, n)| {
        let reads = param_reads(&n.op).iter().any(|s| param_name(&n.name, s) == *param);
        let owns = !matches!(n.op, Op::Train(_)) && n.name == owner;
        !reads && !owns
    });
    clear.then_some((update, *opt))
}

/// One element (or four) of an update.
#[allow(clippy::too_many_arguments)]
fn element(
    fx: &mut Fx,
    ty: Type,
    opt: &Optimizer,
    i: Value,
    pb: Value,
    gb: Value,
    sb: &[Value],
    lr: Value,
    step: Value,
    corr: Option<(Value, Value)>,
) {
    let pa = fx.index(pb, i, 4);
    let ga = fx.index(gb, i, 4);
    let sa: Vec<Value> = sb.iter().map(|&s| fx.index(s, i, 4)).collect();
    let p = fx.load(ty, pa, 0);
    let g = fx.load(ty, ga, 0);
    let lrv = fx.splat(ty, lr);
    let wd = |fx: &mut Fx, w: f64| {
        let k = fx.fconst(ty, w as f32);
        fx.fma(k, p, g)
    };
    let newp = match opt {
        Optimizer::Sgd(s) => {
            let d = wd(fx, s.weight_decay);
            let dir = if s.momentum == 0.0 {
                d
            } else {
                let buf = fx.load(ty, sa[0], 0);
                let m = fx.fconst(ty, s.momentum as f32);
                let mb = fx.fma(m, buf, d);
                // PyTorch starts the buffer at the first gradient.
                let first = fx.icmpi(IntCC::SignedLessThanOrEqual, step, 1);
                let nb = fx.b.ins().select(first, d, mb);
                fx.store(nb, sa[0], 0);
                if s.nesterov { fx.fma(m, nb, d) } else { nb }
            };
            let delta = fx.fmul(lrv, dir);
            fx.fsub(p, delta)
        }
        Optimizer::Adam(a) => {
            let d = wd(fx, a.weight_decay);
            let (c1, c2s) = corr.expect("Adam has its corrections");
            let m = fx.load(ty, sa[0], 0);
            let v = fx.load(ty, sa[1], 0);
            let b1 = fx.fconst(ty, a.beta1 as f32);
            let ob1 = fx.fconst(ty, (1.0 - a.beta1) as f32);
            let b2 = fx.fconst(ty, a.beta2 as f32);
            let ob2 = fx.fconst(ty, (1.0 - a.beta2) as f32);
            let t = fx.fmul(ob1, d);
            let m = fx.fma(b1, m, t);
            let dd = fx.fmul(d, d);
            let t = fx.fmul(ob2, dd);
            let v = fx.fma(b2, v, t);
            fx.store(m, sa[0], 0);
            fx.store(v, sa[1], 0);
            let sq = fx.sqrt(v);
            let c2 = fx.splat(ty, c2s);
            let den = fx.fdiv(sq, c2);
            let eps = fx.fconst(ty, a.eps as f32);
            let den = fx.fadd(den, eps);
            let c1v = fx.splat(ty, c1);
            let step_size = fx.fdiv(lrv, c1v);
            let q = fx.fdiv(m, den);
            let delta = fx.fmul(step_size, q);
            fx.fsub(p, delta)
        }
        Optimizer::RmsProp(r) => {
            let d = wd(fx, r.weight_decay);
            let v = fx.load(ty, sa[0], 0);
            let al = fx.fconst(ty, r.alpha as f32);
            let oal = fx.fconst(ty, (1.0 - r.alpha) as f32);
            let dd = fx.fmul(d, d);
            let t = fx.fmul(oal, dd);
            let v = fx.fma(al, v, t);
            fx.store(v, sa[0], 0);
            let sq = fx.sqrt(v);
            let eps = fx.fconst(ty, r.eps as f32);
            let avg = fx.fadd(sq, eps);
            let q = fx.fdiv(d, avg);
            let dir = if r.momentum == 0.0 {
                q
            } else {
                let buf = fx.load(ty, sa[1], 0);
                let m = fx.fconst(ty, r.momentum as f32);
                let nb = fx.fma(m, buf, q);
                fx.store(nb, sa[1], 0);
                nb
            };
            let delta = fx.fmul(lrv, dir);
            fx.fsub(p, delta)
        }
    };
    fx.store(newp, pa, 0);
}

/// `running = (1 - m) running + m batch` (the variance unbiased by `n / (n - 1)`) from a
/// `[2, C]` statistics operand.
pub(crate) fn bn_running(lx: &mut Lx, id: NodeId, bn: &BatchNorm, spatial: usize) -> Result<(), JitError> {
    let stats = lx.val(lx.plan.graph[id].inputs[0])?;
    let (rm, p) = lx.param(id, "running_mean")?;
    let (rv, _) = lx.param(id, "running_var")?;
    let c = p.stored_len();
    let count = (lx.batch * spatial) as f64;
    if count < 2.0 {
        return Err(plan_err(format!(
            "batch norm `{}` has {count} value(s) per channel at this batch: no variance",
            lx.plan.graph[id].name
        )));
    }
    let unbias = (count / (count - 1.0)) as f32;
    let m = bn.momentum as f32;
    lx.kernel(1, |fx| {
        let sb = fx.abs(stats.addr);
        let (mb, vb) = (fx.abs(rm), fx.abs(rv));
        let keep = fx.fconst(F32, 1.0 - m);
        let mv = fx.fconst(F32, m);
        let ub = fx.fconst(F32, m * unbias);
        fx.for_n(0, c as i64, |fx, ch| {
            let sa = fx.index(sb, ch, 4);
            let mean = fx.load(F32, sa, 0);
            let var = fx.load(F32, sa, 4 * c as i64);
            let ma = fx.index(mb, ch, 4);
            let old = fx.load(F32, ma, 0);
            let t = fx.fmul(mv, mean);
            let n = fx.fma(keep, old, t);
            fx.store(n, ma, 0);
            let va = fx.index(vb, ch, 4);
            let old = fx.load(F32, va, 0);
            let t = fx.fmul(ub, var);
            let n = fx.fma(keep, old, t);
            fx.store(n, va, 0);
        });
    })
}
