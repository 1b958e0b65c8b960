//! Losses on a model's output, each returning `(value, d value / d output)`, computed in f64.
//!
//! All are means over the batch, matching PyTorch's default `reduction = "mean"`:
//!
//! | loss | value | PyTorch |
//! |------|-------|---------|
//! | [`cross_entropy`] | `1/N sum_n (logsumexp(x_n) - x_n[y_n])` | `CrossEntropyLoss()` |
//! | [`mse`] | `1/E sum_i (x_i - t_i)^2` | `MSELoss()` |
//! | [`l1`] | `1/E sum_i abs(x_i - t_i)` | `L1Loss()` |
//! | [`huber`] | `1/E sum_i h(x_i - t_i)`, `h(d) = d^2/2` if `abs(d) < 1` else `abs(d) - 1/2` | `HuberLoss(delta=1)` |
//! | [`multi_margin`] | `1/N sum_n 1/C sum_{j != y_n} max(0, 1 - x_n[y_n] + x_n[j])` | `MultiMarginLoss()` |
//!
//! `E` is the total number of elements (batch included), so for the regression losses the
//! mean over elements is also the mean over the batch of per-sample means. Class losses take
//! outputs `[N, C]` (or `[N, C, 1, 1]`, the output of a global pool) and one class index in
//! `0..C` per sample; an index out of range is an error.
//!
//! Gradients at kinks follow PyTorch: `sign(0) = 0` for L1, the hinge is active only where
//! `1 - x_y + x_j > 0`.

use crate::buf::{Buf, TensorLike, checked_buf};
use crate::error::InterpError;

/// Checks a class-loss output (`[N, C]`, trailing 1s allowed) against its targets; returns
/// `(N, C)` and the output as f64.
fn class_output<T: TensorLike>(output: &T, targets: &[usize]) -> Result<(usize, usize, Buf), InterpError> {
    let x = checked_buf(|| "loss output".into(), output)?;
    let shape = &x.shape;
    if shape.len() < 2 || shape[2..].iter().any(|&d| d != 1) || shape[0] == 0 || shape[1] == 0 {
        return Err(InterpError::LossShape(format!(
            "expected an output of shape [N, C] (or [N, C, 1, 1]) with N, C >= 1, found {shape:?}"
        )));
    }
    let (n, c) = (shape[0], shape[1]);
    if targets.len() != n {
        return Err(InterpError::LossShape(format!("{} targets for a batch of {n}", targets.len())));
    }
    if let Some((sample, &target)) = targets.iter().enumerate().find(|&(_, &t)| t >= c) {
        return Err(InterpError::TargetOutOfRange { sample, target, classes: c });
    }
    Ok((n, c, x))
}

/// Checks that a regression output and target have the same shape and data; returns both.
fn pair<T: TensorLike>(output: &T, target: &T) -> Result<(Buf, Buf), InterpError> {
    let x = checked_buf(|| "loss output".into(), output)?;
    let t = checked_buf(|| "loss target".into(), target)?;
    if x.shape != t.shape {
        return Err(InterpError::LossShape(format!(
            "output shape {:?} differs from target shape {:?}",
            x.shape, t.shape
        )));
    }
    if x.is_empty() {
        return Err(InterpError::LossShape(format!("empty output of shape {:?}", x.shape)));
    }
    Ok((x, t))
}

/// Softmax cross-entropy on logits with class-index targets:
/// `1/N sum_n (log sum_c exp(x_n[c]) - x_n[y_n])`, gradient `(softmax(x_n) - onehot(y_n)) / N`.
/// The log-sum-exp subtracts the row maximum first.
pub fn cross_entropy<T: TensorLike>(logits: &T, targets: &[usize]) -> Result<(f64, T), InterpError> {
    let (n, c, x) = class_output(logits, targets)?;
    let mut grad = Buf::zeros(&x.shape);
    let mut total = 0.0;
    for b in 0..n {
        let row = &x.data[b * c..][..c];
        let max = row.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let sum: f64 = row.iter().map(|v| (v - max).exp()).sum();
        let lse = max + sum.ln();
        total += lse - row[targets[b]];
        for j in 0..c {
            let p = (row[j] - lse).exp();
            let onehot = if j == targets[b] { 1.0 } else { 0.0 };
            grad.data[b * c + j] = (p - onehot) / n as f64;
        }
    }
    Ok((total / n as f64, T::from_buf(&grad)))
}

/// Elementwise loss `f(d)` with derivative `f'(d)`, `d = x - t`, averaged over all elements.
fn elementwise<T: TensorLike>(output: &T, target: &T, f: impl Fn(f64) -> (f64, f64)) -> Result<(f64, T), InterpError> {
    let (x, t) = pair(output, target)?;
    let e = x.len() as f64;
    let mut grad = Buf::zeros(&x.shape);
    let mut total = 0.0;
    for i in 0..x.len() {
        let (value, slope) = f(x.data[i] - t.data[i]);
        total += value;
        grad.data[i] = slope / e;
    }
    Ok((total / e, T::from_buf(&grad)))
}

/// Mean squared error: `1/E sum (x - t)^2`, gradient `2 (x - t) / E`.
pub fn mse<T: TensorLike>(output: &T, target: &T) -> Result<(f64, T), InterpError> {
    elementwise(output, target, |d| (d * d, 2.0 * d))
}

/// Mean absolute error: `1/E sum abs(x - t)`, gradient `sign(x - t) / E` (0 at 0).
pub fn l1<T: TensorLike>(output: &T, target: &T) -> Result<(f64, T), InterpError> {
    elementwise(output, target, |d| {
        let sign = if d > 0.0 {
            1.0
        } else if d < 0.0 {
            -1.0
        } else {
            0.0
        };
        (d.abs(), sign)
    })
}

/// Huber loss with delta 1: `h(d) = d^2 / 2` for `abs(d) < 1`, `abs(d) - 1/2` otherwise,
/// averaged over all elements; gradient `clamp(d, -1, 1) / E`.
pub fn huber<T: TensorLike>(output: &T, target: &T) -> Result<(f64, T), InterpError> {
    elementwise(output, target, |d| {
        let value = if d.abs() < 1.0 { 0.5 * d * d } else { d.abs() - 0.5 };
        (value, d.clamp(-1.0, 1.0))
    })
}

/// Multi-class hinge (PyTorch `MultiMarginLoss(p=1, margin=1)`):
/// `1/N sum_n 1/C sum_{j != y_n} max(0, 1 - x_n[y_n] + x_n[j])`. Each active term
/// (`1 - x_y + x_j > 0`) adds `1/(N C)` to the gradient of `x_j` and subtracts it from `x_y`.
pub fn multi_margin<T: TensorLike>(output: &T, targets: &[usize]) -> Result<(f64, T), InterpError> {
    let (n, c, x) = class_output(output, targets)?;
    let mut grad = Buf::zeros(&x.shape);
    let mut total = 0.0;
    let scale = 1.0 / (n * c) as f64;
    for b in 0..n {
        let row = &x.data[b * c..][..c];
        let y = targets[b];
        for j in 0..c {
            if j == y {
                continue;
            }
            let z = 1.0 - row[y] + row[j];
            if z > 0.0 {
                total += z;
                grad.data[b * c + j] += scale;
                grad.data[b * c + y] -= scale;
            }
        }
    }
    Ok((total * scale, T::from_buf(&grad)))
}
