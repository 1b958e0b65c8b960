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
//!
//! The JIT runs updates through an [`UpdatePlan`] (the optimiser's hyper-parameters, fixed
//! when a model compiles) and [`UpdateArgs`] (the parameter and its state), with the learning
//! rate and step of each run turned into a [`StepRule`]: as a pass of its own over a gradient
//! ([`update_task`]), or from inside the kernel that computes the gradient ([`update_at`], on a
//! block while it is still in cache: the gradient never goes to memory), where a null gradient
//! stands for zeros (the kernel taps of a convolution that meet only padding).

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
    Sgd { o: Sgd, first: bool, nesterov: bool },
    Adam { o: Adam, step_size: f32, bc2_sqrt: f32 },
    Rms { o: RmsProp },
}

impl Rule {
    /// Whether a zero gradient leaves a finite parameter with all-zero state exactly as it is:
    /// no weight decay, and finite hyper-parameters that turn zeros into zeros (a positive
    /// `eps` and bias correction, so no `0 / 0`).
    fn zero_gradient_is_identity(&self) -> bool {
        let fin = |v: &[f32]| v.iter().all(|x| x.is_finite());
        match self {
            Rule::Sgd { o, .. } => o.weight_decay == 0.0 && fin(&[o.lr, o.momentum]),
            Rule::Adam { o, step_size, bc2_sqrt } => {
                o.weight_decay == 0.0
                    && o.eps > 0.0
                    && *bc2_sqrt > 0.0
                    && fin(&[o.lr, o.beta1, o.beta2, o.eps, *step_size, *bc2_sqrt])
            }
            Rule::Rms { o } => o.weight_decay == 0.0 && o.eps > 0.0 && fin(&[o.lr, o.alpha, o.eps, o.momentum]),
        }
    }

    /// Which of `s1`, `s2`, `s3` the rule reads and writes.
    fn states(&self) -> [bool; 3] {
        match self {
            Rule::Sgd { o, .. } => [o.momentum != 0.0, false, false],
            Rule::Adam { .. } => [true, true, false],
            Rule::Rms { o } => [true, o.momentum > 0.0, o.centered],
        }
    }
}

/// # Safety
/// `p`, `s1`, `s2`, `s3` valid for reading and writing `len` floats where the rule uses them
/// (`s1`: momentum buffer / first moment / square average; `s2`: second moment / momentum
/// buffer; `s3`: centred gradient average), `g` for reading (or null: a zero gradient).
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
    if g.is_null() && rule.zero_gradient_is_identity() {
        // A zero gradient without weight decay leaves a parameter unchanged wherever its
        // state is all zeros (+0.0) and it is finite, whatever the optimiser: such blocks are
        // only read (the kernel taps of a convolution that meet only padding, every step).
        let used = rule.states();
        let mut at = 0;
        while at < len {
            let n = IDLE_BLOCK.min(len - at);
            // SAFETY: at + n <= len for every buffer the rule uses (the others are unread).
            unsafe {
                if !unchanged(p, [s1, s2, s3], used, at, n) {
                    let q = |x: *mut f32| x.wrapping_add(at);
                    dense(s, rule, [q(p), g as *mut f32, q(s1), q(s2), q(s3)], n);
                }
            }
            at += n;
        }
        return;
    }
    // SAFETY: forwarded contract.
    unsafe { dense(s, rule, [p, g as *mut f32, s1, s2, s3], len) };
}

/// Floats per block of the unchanged-parameter test (blocks of 256 ran the test at about
/// two thirds of the speed on 2.4 M floats: the loop restarts too often).
const IDLE_BLOCK: usize = 4096;

/// Whether floats `at..at + n` of `p` are finite and those of every used state are +0.0.
///
/// # Safety
/// `p` and the used states valid for reading `at + n` floats.
#[inline(always)]
unsafe fn unchanged(p: *mut f32, states: [*mut f32; 3], used: [bool; 3], at: usize, n: usize) -> bool {
    // SAFETY: forwarded contract (whole slices of the caller's buffers).
    let slice = |q: *mut f32| unsafe { core::slice::from_raw_parts(q.add(at), n) };
    let zero = states.iter().zip(used).all(|(&q, u)| !u || slice(q).iter().fold(0, |acc, x| acc | x.to_bits()) == 0);
    zero && slice(p).iter().fold(true, |ok, x| ok & x.is_finite())
}

/// The rule over `len` floats of `[p, g, s1, s2, s3]` (`g` null: zero).
///
/// # Safety
/// As [`update_generic`].
#[inline(always)]
unsafe fn dense<S: Simd>(s: S, rule: &Rule, ptrs: [*mut f32; 5], len: usize) {
    // Whole vectors with plain loads and stores (masked stores are slow on some CPUs), then
    // the tail masked.
    let mut i = 0;
    while i + 16 <= len {
        // SAFETY: i + 16 <= len for every buffer the rule touches.
        unsafe { lanes::<S, true>(s, rule, ptrs, i, 16) };
        i += 16;
    }
    if i < len {
        // SAFETY: i + (len - i) = len.
        unsafe { lanes::<S, false>(s, rule, ptrs, i, len - i) };
    }
}

/// `m` floats (all 16 when `FULL`) from `at` of `p`: a vector.
///
/// # Safety
/// `p + at` valid for reading `m` floats.
#[inline(always)]
unsafe fn ld<S: Simd, const FULL: bool>(s: S, p: *const f32, at: usize, m: usize) -> S::V {
    // SAFETY: forwarded contract.
    unsafe { if FULL { s.load(p.add(at)) } else { s.load_n(p.add(at), m) } }
}

/// Stores `m` lanes (all 16 when `FULL`) of `v` at `at` of `p`.
///
/// # Safety
/// `p + at` valid for writing `m` floats.
#[inline(always)]
unsafe fn st<S: Simd, const FULL: bool>(s: S, p: *mut f32, at: usize, m: usize, v: S::V) {
    // SAFETY: forwarded contract.
    unsafe { if FULL { s.store(p.add(at), v) } else { s.store_n(p.add(at), m, v) } }
}

/// The rule on floats `i..i + m` (`m = 16` when `FULL`) of `[p, g, s1, s2, s3]`.
///
/// # Safety
/// As [`update_generic`], `i + m <= len`.
#[inline(always)]
unsafe fn lanes<S: Simd, const FULL: bool>(s: S, rule: &Rule, ptrs: [*mut f32; 5], i: usize, m: usize) {
    let [p, g, s1, s2, s3] = ptrs;
    // SAFETY (both closures): called only on `p`, `g` (not null) and the states the rule
    // uses, each valid for floats `i..i + m` (the caller's contract).
    let ld = |q: *mut f32| unsafe { ld::<S, FULL>(s, q, i, m) };
    let st = |q: *mut f32, v| unsafe { st::<S, FULL>(s, q, i, m, v) };
    let pv = ld(p);
    let gv = if g.is_null() { s.zero() } else { ld(g) };
    let next = match rule {
        Rule::Sgd { o, first, nesterov } => {
            let gv = s.fmadd(s.splat(o.weight_decay), pv, gv);
            let step = if o.momentum == 0.0 {
                gv
            } else {
                let b = if *first { gv } else { s.fmadd(s.splat(o.momentum), ld(s1), gv) };
                st(s1, b);
                if *nesterov { s.fmadd(s.splat(o.momentum), b, gv) } else { b }
            };
            s.fnmadd(s.splat(o.lr), step, pv)
        }
        Rule::Adam { o, step_size, bc2_sqrt } => {
            let gv = s.fmadd(s.splat(o.weight_decay), pv, gv);
            let mv = s.fmadd(s.splat(o.beta1), ld(s1), s.mul(s.splat(1.0 - o.beta1), gv));
            let vv = s.fmadd(s.splat(o.beta2), ld(s2), s.mul(s.splat(1.0 - o.beta2), s.mul(gv, gv)));
            st(s1, mv);
            st(s2, vv);
            let denom = s.add(s.div(s.sqrt(vv), s.splat(*bc2_sqrt)), s.splat(o.eps));
            s.fnmadd(s.splat(*step_size), s.div(mv, denom), pv)
        }
        Rule::Rms { o } => {
            let gv = s.fmadd(s.splat(o.weight_decay), pv, gv);
            let a = s.splat(o.alpha);
            let a1 = s.splat(1.0 - o.alpha);
            let sq = s.fmadd(a, ld(s1), s.mul(a1, s.mul(gv, gv)));
            st(s1, sq);
            let var = if o.centered {
                let ga = s.fmadd(a, ld(s3), s.mul(a1, gv));
                st(s3, ga);
                s.fnmadd(ga, ga, sq)
            } else {
                sq
            };
            let q = s.div(gv, s.add(s.sqrt(var), s.splat(o.eps)));
            let step = if o.momentum > 0.0 {
                let b = s.fmadd(s.splat(o.momentum), ld(s2), q);
                st(s2, b);
                b
            } else {
                q
            };
            s.fnmadd(s.splat(o.lr), step, pv)
        }
    };
    st(p, next);
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
    run(
        par,
        cpu,
        Rule::Sgd { o: *o, first: first_step, nesterov: false },
        params,
        grad,
        [momentum_buf, &mut [], &mut []],
    );
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

/// An optimiser's hyper-parameters as an [`UpdatePlan`] holds them (the learning rate comes
/// with each run).
#[derive(Clone, Copy, Debug, PartialEq)]
#[repr(C)]
pub enum UpdateKind {
    /// `nesterov`: the step is `g + momentum buf` (PyTorch's `nesterov=True`).
    Sgd {
        momentum: f32,
        weight_decay: f32,
        nesterov: bool,
    },
    Adam {
        beta1: f32,
        beta2: f32,
        eps: f32,
        weight_decay: f32,
    },
    RmsProp {
        alpha: f32,
        eps: f32,
        weight_decay: f32,
        momentum: f32,
        centered: bool,
    },
}

impl UpdateKind {
    /// How many state buffers of the parameter's length the rule reads and writes, in the
    /// order of [`UpdateArgs`]' `s1..s3` (SGD: the momentum buffer; Adam: both moments;
    /// RMSprop: the square average, then the momentum buffer and the centred average, each
    /// when used).
    fn states(&self) -> [bool; 3] {
        match *self {
            UpdateKind::Sgd { momentum, .. } => [momentum != 0.0, false, false],
            UpdateKind::Adam { .. } => [true, true, false],
            UpdateKind::RmsProp { momentum, centered, .. } => [true, momentum > 0.0, centered],
        }
    }
}

/// A checked update of one parameter of `len` floats (made by [`UpdatePlan::new`] only).
#[derive(Clone, Copy, Debug, PartialEq)]
#[repr(C)]
pub struct UpdatePlan {
    kind: UpdateKind,
    isa: super::simd::Isa,
    len: usize,
}

/// The parameter an update writes and its state buffers (`len` floats each; null where the
/// rule has no such state).
#[derive(Clone, Copy, Debug)]
#[repr(C)]
pub struct UpdateArgs {
    pub p: *mut f32,
    pub s1: *mut f32,
    pub s2: *mut f32,
    pub s3: *mut f32,
}

// SAFETY: plain pointers; tasks write disjoint ranges of the parameter and its state.
unsafe impl Sync for UpdateArgs {}
// SAFETY: as above.
unsafe impl Send for UpdateArgs {}

/// One run's rule: a plan's hyper-parameters with that run's learning rate and step.
#[derive(Clone, Copy)]
pub struct StepRule {
    rule: Rule,
    isa: super::simd::Isa,
}

impl UpdatePlan {
    pub fn new(kind: UpdateKind, len: usize, cpu: Cpu) -> Result<UpdatePlan, KernelError> {
        product_len(len)?;
        Ok(UpdatePlan { kind, isa: cpu.isa(), len })
    }

    pub fn len(&self) -> usize {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    /// Tasks of a pass of its own ([`update_task`]).
    pub fn tasks(&self) -> usize {
        self.len.div_ceil(CHUNK)
    }
    /// Which of [`UpdateArgs`]' state pointers the rule uses.
    pub fn states(&self) -> [bool; 3] {
        self.kind.states()
    }

    /// The rule of a run at learning rate `lr` and step `step` (from 1; 0 is taken as 1, and
    /// SGD's momentum buffer starts at the gradient on step 1).
    pub fn rule(&self, lr: f32, step: u64) -> StepRule {
        let step = step.max(1);
        let rule = match self.kind {
            UpdateKind::Sgd { momentum, weight_decay, nesterov } => {
                Rule::Sgd { o: Sgd { lr, momentum, weight_decay }, first: step == 1, nesterov }
            }
            UpdateKind::Adam { beta1, beta2, eps, weight_decay } => {
                let t = step.min(u32::MAX as u64) as u32;
                let bc1 = 1.0 - powi64(beta1 as f64, t);
                let bc2 = 1.0 - powi64(beta2 as f64, t);
                let o = Adam { lr, beta1, beta2, eps, weight_decay };
                Rule::Adam { o, step_size: (lr as f64 / bc1) as f32, bc2_sqrt: sqrt64(bc2) as f32 }
            }
            UpdateKind::RmsProp { alpha, eps, weight_decay, momentum, centered } => {
                Rule::Rms { o: RmsProp { lr, alpha, eps, weight_decay, momentum, centered } }
            }
        };
        StepRule { rule, isa: self.isa }
    }
}

/// Checks that `len` floats have a byte size.
fn product_len(len: usize) -> Result<(), KernelError> {
    super::error::product("parameter", &[len, 4]).map(|_| ())
}

/// Floats `at..at + len` of the parameter and its state updated from `g` (`len` floats, or
/// null for a zero gradient).
///
/// # Safety
/// `rule` from a plan made on this CPU; `at + len <= plan.len()` of the plan whose `a` this
/// is: `a.p` and each state the plan uses valid for that many floats, `g` for `len`; nothing
/// else accesses those ranges meanwhile.
pub unsafe fn update_at(rule: &StepRule, a: &UpdateArgs, at: usize, g: *const f32, len: usize) {
    let off = |q: *mut f32| if q.is_null() { q } else { q.wrapping_add(at) };
    // SAFETY: forwarded contract; unused states are never touched by the rule.
    unsafe { update(rule.isa, &rule.rule, off(a.p), g, off(a.s1), off(a.s2), off(a.s3), len) };
}

/// Task `task` of a pass of its own ([`UpdatePlan::tasks`]) from the gradient `g`.
///
/// # Safety
/// As [`update_at`] for every float of the plan, `g` holding `plan.len()` floats.
pub unsafe fn update_task(plan: &UpdatePlan, rule: &StepRule, a: &UpdateArgs, g: *const f32, task: usize) {
    let at = task * CHUNK;
    let n = CHUNK.min(plan.len.saturating_sub(at));
    // SAFETY: at + n <= plan.len; forwarded contract.
    unsafe { update_at(rule, a, at, g.wrapping_add(at), n) };
}

/// A whole update from `g` on `par`, after checking every slice the rule uses (`states` in
/// the order of [`UpdateArgs`]; the unused ones may be empty).
pub fn update_all(
    par: &dyn Parallel,
    plan: &UpdatePlan,
    (lr, step): (f32, u64),
    params: &mut [f32],
    grad: &[f32],
    states: [&mut [f32]; 3],
) -> Result<(), KernelError> {
    check_len("parameter", params.len(), plan.len)?;
    check_len("gradient", grad.len(), plan.len)?;
    let used = plan.states();
    let mut ptrs = [core::ptr::null_mut(); 3];
    for (k, s) in states.into_iter().enumerate() {
        if used[k] {
            check_len("optimiser state", s.len(), plan.len)?;
            ptrs[k] = s.as_mut_ptr();
        }
    }
    let a = UpdateArgs { p: params.as_mut_ptr(), s1: ptrs[0], s2: ptrs[1], s3: ptrs[2] };
    let rule = plan.rule(lr, step);
    let g = SyncPtr(grad.as_ptr() as *mut f32);
    par.run(plan.tasks(), &|t, _| {
        // SAFETY: every used slice holds plan.len floats (checked above); tasks are disjoint.
        unsafe { update_task(plan, &rule, &a, g.get(), t) }
    });
    Ok(())
}

/// Where the gradient of a packed `OIhw16i16o` weight (`o` x `c` channels, whole blocks of
/// 16, `taps` kernel taps) lies when only some taps meet the input: an `io` matrix (row
/// `j c + i` for the `j`-th live tap's input channel `i`, `o` columns), the other taps' gradient
/// zero. `live[t]` is tap `t`'s row group `j`, or -1.
#[derive(Clone, Copy, Debug)]
#[repr(C)]
pub struct LiveTapGrad {
    pub io: *const f32,
    pub live: *const i32,
    pub o: usize,
    pub c: usize,
    pub taps: usize,
}

// SAFETY: plain pointers, only read.
unsafe impl Sync for LiveTapGrad {}
// SAFETY: as above.
unsafe impl Send for LiveTapGrad {}

/// Tasks of [`update_live_taps_task`]: one per output block.
pub fn live_taps_tasks(g: &LiveTapGrad) -> usize {
    g.o / 16
}

/// The update of output block `task` (16 output channels: all their input blocks and taps)
/// of a packed weight from its live-tap gradient, its blocks in memory order: each run of
/// dead taps (across input blocks too) one call with a zero gradient (mostly only read, see
/// `update_generic`), each live block one call on its gradient rows.
///
/// # Safety
/// As [`update_at`] for the plan's `o c taps` floats (the plan's length); `g.io` valid for
/// `(live taps) c o` floats, `g.live` for `taps` entries each -1 or a live row group below
/// the number of live taps; `o` and `c` multiples of 16; `task < o / 16`.
pub unsafe fn update_live_taps_task(rule: &StepRule, a: &UpdateArgs, g: &LiveTapGrad, task: usize) {
    let (icb, taps) = (g.c / 16, g.taps);
    // SAFETY: the table holds `taps` entries.
    let live = |t: usize| unsafe { *g.live.add(t) };
    let (first, blocks) = (task * icb * taps, icb * taps);
    let mut b = 0;
    while b < blocks {
        let at = (first + b) * 256;
        let j = live(b % taps);
        if j < 0 {
            let end = (b + 1..blocks).find(|&e| live(e % taps) >= 0).unwrap_or(blocks);
            // SAFETY: the run's blocks are inside the weight.
            unsafe { update_at(rule, a, at, core::ptr::null(), (end - b) * 256) };
            b = end;
            continue;
        }
        // The block's 16 gradient rows, gathered so that one call updates the block.
        let ib = b / taps;
        let mut blk = [0.0f32; 256];
        for (ii, dst) in blk.chunks_exact_mut(16).enumerate() {
            let row = j as usize * g.c + ib * 16 + ii;
            // SAFETY: row < live taps x c and the 16 columns of output block `task` are
            // inside the matrix.
            let src = unsafe { core::slice::from_raw_parts(g.io.add(row * g.o + task * 16), 16) };
            dst.copy_from_slice(src);
        }
        // SAFETY: the block's 256 floats are inside the weight.
        unsafe { update_at(rule, a, at, blk.as_ptr(), 256) };
        b += 1;
    }
}
