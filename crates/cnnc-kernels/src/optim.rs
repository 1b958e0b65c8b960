//! Optimiser updates over a parameter slice, its gradient and its state, with PyTorch's
//! semantics (`torch.optim`), the learning rate and step always run-time arguments:
//!
//! * [`sgd`] (`SGD`, dampening 0, not Nesterov): `g += wd p; buf = momentum buf + g` (`buf = g`
//!   on the first step; no buffer without momentum); `p -= lr buf`.
//! * [`adam`] (`Adam`, not AMSGrad): `g += wd p; m = b1 m + (1 - b1) g; v = b2 v + (1 - b2) g^2;
//!   p -= lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)`, step `t >= 1`.
//! * [`rmsprop`] (`RMSprop`): `g += wd p; sq = alpha sq + (1 - alpha) g^2`; centered:
//!   `ga = alpha ga + (1 - alpha) g`, `avg = sqrt(sq - ga^2) + eps`, else `sqrt(sq) + eps`;
//!   with momentum `buf = momentum buf + g / avg; p -= lr buf`, else `p -= lr g / avg`.
//!
//! Vectorised over 16 lanes, split over threads in chunks; the gradient is only read.

use super::error::{KernelError, check_len};
use super::fmath::{powi64, sqrt64};
use super::par::{Parallel, SyncPtr};
use super::simd::{Cpu, Simd, isa_fn};

const CHUNK: usize = 1 << 14;

/// SGD hyper-parameters.
#[derive(Clone, Copy, Debug, PartialEq)]
#[repr(C)]
pub struct Sgd {
    pub lr: f32,
    pub momentum: f32,
    pub weight_decay: f32,
}

/// Adam hyper-parameters.
#[derive(Clone, Copy, Debug, PartialEq)]
#[repr(C)]
pub struct Adam {
    pub lr: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    pub weight_decay: f32,
}

/// RMSprop hyper-parameters.
#[derive(Clone, Copy, Debug, PartialEq)]
#[repr(C)]
pub struct RmsProp {
    pub lr: f32,
    pub alpha: f32,
    pub eps: f32,
    pub weight_decay: f32,
    pub momentum: f32,
    pub centered: bool,
}

/// The per-element update of one optimiser over `len` floats from offset 0 of each pointer.
#[derive(Clone, Copy)]
enum Rule {
    Sgd { o: Sgd, first: bool },
    Adam { o: Adam, step_size: f32, bc2_sqrt: f32 },
    Rms { o: RmsProp },
}

/// # Safety
/// `p`, `s1`, `s2`, `s3` valid for reading and writing `len` floats where the rule uses them
/// (`s1`: momentum buffer / first moment / square average; `s2`: second moment / momentum
/// buffer; `s3`: centred gradient average), `g` for reading.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn update_generic<S: Simd>(
    s: S,
    rule: &Rule,
    p: *mut f32,
    g: *const f32,
    s1: *mut f32,
    s2: *mut f32,
    s3: *mut f32,
    len: usize,
) {
    let mut i = 0;
    while i < len {
        let m = (len - i).min(16);
        // SAFETY: i + m <= len for every buffer the rule touches.
        unsafe {
            let pv = s.load_n(p.add(i), m);
            let gv = s.load_n(g.add(i), m);
            let next = match rule {
                Rule::Sgd { o, first } => {
                    let gv = s.fmadd(s.splat(o.weight_decay), pv, gv);
                    let step = if o.momentum == 0.0 {
                        gv
                    } else {
                        let b = if *first { gv } else { s.fmadd(s.splat(o.momentum), s.load_n(s1.add(i), m), gv) };
                        s.store_n(s1.add(i), m, b);
                        b
                    };
                    s.fnmadd(s.splat(o.lr), step, pv)
                }
                Rule::Adam { o, step_size, bc2_sqrt } => {
                    let gv = s.fmadd(s.splat(o.weight_decay), pv, gv);
                    let mv = s.fmadd(s.splat(o.beta1), s.load_n(s1.add(i), m), s.mul(s.splat(1.0 - o.beta1), gv));
                    let vv =
                        s.fmadd(s.splat(o.beta2), s.load_n(s2.add(i), m), s.mul(s.splat(1.0 - o.beta2), s.mul(gv, gv)));
                    s.store_n(s1.add(i), m, mv);
                    s.store_n(s2.add(i), m, vv);
                    let denom = s.add(s.div(s.sqrt(vv), s.splat(*bc2_sqrt)), s.splat(o.eps));
                    s.fnmadd(s.splat(*step_size), s.div(mv, denom), pv)
                }
                Rule::Rms { o } => {
                    let gv = s.fmadd(s.splat(o.weight_decay), pv, gv);
                    let a = s.splat(o.alpha);
                    let a1 = s.splat(1.0 - o.alpha);
                    let sq = s.fmadd(a, s.load_n(s1.add(i), m), s.mul(a1, s.mul(gv, gv)));
                    s.store_n(s1.add(i), m, sq);
                    let var = if o.centered {
                        let ga = s.fmadd(a, s.load_n(s3.add(i), m), s.mul(a1, gv));
                        s.store_n(s3.add(i), m, ga);
                        s.fnmadd(ga, ga, sq)
                    } else {
                        sq
                    };
                    let q = s.div(gv, s.add(s.sqrt(var), s.splat(o.eps)));
                    let step = if o.momentum > 0.0 {
                        let b = s.fmadd(s.splat(o.momentum), s.load_n(s2.add(i), m), q);
                        s.store_n(s2.add(i), m, b);
                        b
                    } else {
                        q
                    };
                    s.fnmadd(s.splat(o.lr), step, pv)
                }
            };
            s.store_n(p.add(i), m, next);
        }
        i += m;
    }
}

isa_fn! {
    /// # Safety
    /// As `update_generic`; `isa` supported.
    unsafe fn update(rule: &Rule, p: *mut f32, g: *const f32, s1: *mut f32, s2: *mut f32, s3: *mut f32, len: usize) = update_generic;
}

/// Runs `rule` over every element in chunks on `par`.
fn run(par: &dyn Parallel, cpu: Cpu, rule: Rule, p: &mut [f32], g: &[f32], states: [&mut [f32]; 3]) {
    let len = p.len();
    let [a, b, c] = states;
    let ptrs = (
        SyncPtr(p.as_mut_ptr()),
        SyncPtr(g.as_ptr() as *mut f32),
        SyncPtr(a.as_mut_ptr()),
        SyncPtr(b.as_mut_ptr()),
        SyncPtr(c.as_mut_ptr()),
    );
    par.run(len.div_ceil(CHUNK), &|t, _| {
        let at = |q: &SyncPtr<f32>| q.get().wrapping_add(t * CHUNK);
        let n = CHUNK.min(len - t * CHUNK);
        // SAFETY: the callers checked every used slice to hold `len` floats (unused state
        // slices are never touched by the rule); chunks are disjoint.
        unsafe { update(cpu.isa(), &rule, at(&ptrs.0), at(&ptrs.1), at(&ptrs.2), at(&ptrs.3), at(&ptrs.4), n) };
    });
}

/// One SGD step; `momentum_buf` holds `params.len()` floats when `momentum != 0` (read unless
/// `first_step`), and may be empty otherwise.
pub fn sgd(
    par: &dyn Parallel,
    cpu: Cpu,
    o: &Sgd,
    first_step: bool,
    params: &mut [f32],
    grad: &[f32],
    momentum_buf: &mut [f32],
) -> Result<(), KernelError> {
    check_len("gradient", grad.len(), params.len())?;
    if o.momentum != 0.0 {
        check_len("momentum buffer", momentum_buf.len(), params.len())?;
    }
    run(par, cpu, Rule::Sgd { o: *o, first: first_step }, params, grad, [momentum_buf, &mut [], &mut []]);
    Ok(())
}

/// One Adam step number `step` (from 1) with the moment buffers `m` and `v`.
#[allow(clippy::too_many_arguments)]
pub fn adam(
    par: &dyn Parallel,
    cpu: Cpu,
    o: &Adam,
    step: u64,
    params: &mut [f32],
    grad: &[f32],
    m: &mut [f32],
    v: &mut [f32],
) -> Result<(), KernelError> {
    if step == 0 {
        return Err(KernelError::Shape { what: "Adam's step counter starts at 1" });
    }
    for (what, l) in [("gradient", grad.len()), ("first moment", m.len()), ("second moment", v.len())] {
        check_len(what, l, params.len())?;
    }
    let t = step.min(u32::MAX as u64) as u32;
    let bc1 = 1.0 - powi64(o.beta1 as f64, t);
    let bc2 = 1.0 - powi64(o.beta2 as f64, t);
    let rule = Rule::Adam { o: *o, step_size: (o.lr as f64 / bc1) as f32, bc2_sqrt: sqrt64(bc2) as f32 };
    run(par, cpu, rule, params, grad, [m, v, &mut []]);
    Ok(())
}

/// One RMSprop step with the square average `sq`, the momentum buffer `buf` (`momentum > 0`,
/// else may be empty) and the centred gradient average `grad_avg` (`centered`, else may be
/// empty).
#[allow(clippy::too_many_arguments)]
pub fn rmsprop(
    par: &dyn Parallel,
    cpu: Cpu,
    o: &RmsProp,
    params: &mut [f32],
    grad: &[f32],
    sq: &mut [f32],
    buf: &mut [f32],
    grad_avg: &mut [f32],
) -> Result<(), KernelError> {
    check_len("gradient", grad.len(), params.len())?;
    check_len("square average", sq.len(), params.len())?;
    if o.momentum > 0.0 {
        check_len("momentum buffer", buf.len(), params.len())?;
    }
    if o.centered {
        check_len("gradient average", grad_avg.len(), params.len())?;
    }
    run(par, cpu, Rule::Rms { o: *o }, params, grad, [sq, buf, grad_avg]);
    Ok(())
}
