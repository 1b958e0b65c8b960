//! Optimiser updates on flat slices: elementwise, so they run the same on a parameter in its
//! checkpoint layout and in a packed one (whose padding, zero in the parameter, its gradient
//! and its state, stays zero).

use cnnc_ir::Optimizer;

/// Updates parameter `p` from gradient `g` and its state (the slices of
/// [`Optimizer::state`], in that order) at step `step >= 1` with learning rate `lr`, exactly
/// as PyTorch's optimisers do (see [`cnnc_ir::Sgd`], [`cnnc_ir::Adam`], [`cnnc_ir::RmsProp`]).
pub(crate) fn update(optimizer: &Optimizer, p: &mut [f64], g: &[f64], state: &mut [&mut [f64]], lr: f64, step: u64) {
    match optimizer {
        Optimizer::Sgd(sgd) => {
            for i in 0..p.len() {
                let d = g[i] + sgd.weight_decay * p[i];
                let step_dir = if sgd.momentum == 0.0 {
                    d
                } else {
                    let buf = &mut state[0][i];
                    // PyTorch starts the buffer at the first gradient, not at zero.
                    *buf = if step <= 1 { d } else { sgd.momentum * *buf + d };
                    if sgd.nesterov { d + sgd.momentum * *buf } else { *buf }
                };
                p[i] -= lr * step_dir;
            }
        }
        Optimizer::Adam(adam) => {
            let t = step.max(1) as i32;
            let correction1 = 1.0 - adam.beta1.powi(t);
            let correction2_sqrt = (1.0 - adam.beta2.powi(t)).sqrt();
            let (m, rest) = state.split_at_mut(1);
            let (m, v) = (&mut *m[0], &mut *rest[0]);
            for i in 0..p.len() {
                let d = g[i] + adam.weight_decay * p[i];
                m[i] = adam.beta1 * m[i] + (1.0 - adam.beta1) * d;
                v[i] = adam.beta2 * v[i] + (1.0 - adam.beta2) * d * d;
                let denom = v[i].sqrt() / correction2_sqrt + adam.eps;
                p[i] -= lr / correction1 * m[i] / denom;
            }
        }
        Optimizer::RmsProp(rms) => {
            let (v, rest) = state.split_at_mut(1);
            let v = &mut *v[0];
            for i in 0..p.len() {
                let d = g[i] + rms.weight_decay * p[i];
                v[i] = rms.alpha * v[i] + (1.0 - rms.alpha) * d * d;
                let avg = v[i].sqrt() + rms.eps;
                if rms.momentum == 0.0 {
                    p[i] -= lr * d / avg;
                } else {
                    let buf = &mut rest[0][i];
                    *buf = rms.momentum * *buf + d / avg;
                    p[i] -= lr * *buf;
                }
            }
        }
    }
}
