//! Losses on a model's output, each giving `(value, d value / d output)`, computed in f64.
//!
//! All are means over the batch, matching PyTorch's default `reduction = "mean"`:
//!
//! | loss | value | PyTorch |
//! |------|-------|---------|
//! | cross-entropy | `1/N sum_n (logsumexp(x_n) - x_n[y_n])` | `CrossEntropyLoss()` |
//! | mse | `1/E sum_i (x_i - t_i)^2` | `MSELoss()` |
//! | l1 | `1/E sum_i abs(x_i - t_i)` | `L1Loss()` |
//! | huber | `1/E sum_i h(x_i - t_i)`, `h(d) = d^2/2` if `abs(d) < delta` else `delta (abs(d) - delta/2)` | `HuberLoss(delta)` |
//! | hinge (sum) | `1/N sum_n sum_{j != y_n} max(0, margin - x_n[y_n] + x_n[j])` | (CS231n's multiclass SVM) |
//! | hinge (mean over classes) | the same, each sample's sum divided by `C` | `MultiMarginLoss(margin=margin)` |
//!
//! `E` is the total number of elements (batch included), so for the regression losses the
//! mean over elements is also the mean over the batch of per-sample means. Class losses take
//! outputs `[N, C]` (or `[N, C, 1, 1]`, the output of a global pool) and one class label per
//! sample, checked at the graph's boundary to be an integer in `0..C`.
//!
//! Gradients at kinks follow PyTorch: `sign(0) = 0` for L1, a hinge term is active only where
//! `margin - x_y + x_j > 0`.

use crate::buf::Buf;
use cnnc_ir::{HingeForm, Loss};

/// The loss of `x` against `target` and its gradient with respect to `x` (shapes checked by
/// the graph's shape rules, labels at its boundary).
pub(crate) fn evaluate(loss: &Loss, x: &Buf, target: &Buf) -> (f64, Buf) {
    match *loss {
        Loss::CrossEntropy => cross_entropy(x, target),
        Loss::Mse => elementwise(x, target, |d| (d * d, 2.0 * d)),
        Loss::L1 => elementwise(x, target, |d| (d.abs(), sign(d))),
        Loss::Huber { delta } => elementwise(x, target, |d| {
            let value = if d.abs() < delta { 0.5 * d * d } else { delta * (d.abs() - 0.5 * delta) };
            (value, d.clamp(-delta, delta))
        }),
        Loss::Hinge { margin, form } => hinge(x, target, margin, form),
    }
}

fn sign(d: f64) -> f64 {
    if d > 0.0 {
        1.0
    } else if d < 0.0 {
        -1.0
    } else {
        0.0
    }
}

/// `(N, C)` of a class output.
fn classes(x: &Buf) -> (usize, usize) {
    (x.shape[0], x.shape[1])
}

/// Softmax cross-entropy on logits with class labels:
/// `1/N sum_n (log sum_c exp(x_n[c]) - x_n[y_n])`, gradient `(softmax(x_n) - onehot(y_n)) / N`.
/// The log-sum-exp subtracts the row maximum first.
fn cross_entropy(x: &Buf, labels: &Buf) -> (f64, Buf) {
    let (n, c) = classes(x);
    let mut grad = Buf::zeros(&x.shape);
    let mut total = 0.0;
    for b in 0..n {
        let y = labels.data[b] as usize;
        let row = &x.data[b * c..][..c];
        let max = row.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let sum: f64 = row.iter().map(|v| (v - max).exp()).sum();
        let lse = max + sum.ln();
        total += lse - row[y];
        for j in 0..c {
            let p = (row[j] - lse).exp();
            let onehot = if j == y { 1.0 } else { 0.0 };
            grad.data[b * c + j] = (p - onehot) / n as f64;
        }
    }
    (total / n as f64, grad)
}

/// Elementwise loss `f(d)` with derivative `f'(d)`, `d = x - t`, averaged over all elements.
fn elementwise(x: &Buf, t: &Buf, f: impl Fn(f64) -> (f64, f64)) -> (f64, Buf) {
    let e = x.len() as f64;
    let mut grad = Buf::zeros(&x.shape);
    let mut total = 0.0;
    for i in 0..x.len() {
        let (value, slope) = f(x.data[i] - t.data[i]);
        total += value;
        grad.data[i] = slope / e;
    }
    (total / e, grad)
}

/// Multi-class hinge: each active term (`margin - x_y + x_j > 0`, `j != y`) adds `scale` to
/// the gradient of `x_j` and subtracts it from `x_y`, with `scale = 1/N` for the sum form and
/// `1/(N C)` for the mean over classes.
fn hinge(x: &Buf, labels: &Buf, margin: f64, form: HingeForm) -> (f64, Buf) {
    let (n, c) = classes(x);
    let mut grad = Buf::zeros(&x.shape);
    let mut total = 0.0;
    let scale = match form {
        HingeForm::Sum => 1.0 / n as f64,
        HingeForm::MeanOverClasses => 1.0 / (n * c) as f64,
    };
    for b in 0..n {
        let row = &x.data[b * c..][..c];
        let y = labels.data[b] as usize;
        for j in (0..c).filter(|&j| j != y) {
            let z = margin - row[y] + row[j];
            if z > 0.0 {
                total += z;
                grad.data[b * c + j] += scale;
                grad.data[b * c + y] -= scale;
            }
        }
    }
    (total * scale, grad)
}
