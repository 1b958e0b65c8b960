//! Batch normalisation and local response normalisation, forward and backward.

use crate::buf::Buf;
use crate::ops::act::ncs;
use cnnc_ir::{BatchNorm, Lrn};

/// Per-channel mean and biased variance over `(N, H, W)` (over `N` for `[N, F]`), two-pass.
pub(crate) fn batch_stats(x: &Buf) -> (Vec<f64>, Vec<f64>) {
    let (n, c, s) = ncs(&x.shape);
    let count = (n * s) as f64;
    let mut mean = vec![0.0; c];
    let mut var = vec![0.0; c];
    for ch in 0..c {
        let values = || (0..n).flat_map(move |b| &x.data[(b * c + ch) * s..][..s]);
        mean[ch] = values().sum::<f64>() / count;
        var[ch] = values().map(|v| (v - mean[ch]) * (v - mean[ch])).sum::<f64>() / count;
    }
    (mean, var)
}

/// `y = (x - mean[c]) / sqrt(var[c] + eps) * weight[c] + bias[c]`.
pub(crate) fn bn_apply(x: &Buf, eps: f64, mean: &[f64], var: &[f64], weight: &Buf, bias: &Buf) -> Buf {
    let (n, c, s) = ncs(&x.shape);
    let mut y = Buf::zeros(&x.shape);
    for b in 0..n {
        for ch in 0..c {
            let inv = 1.0 / (var[ch] + eps).sqrt();
            for i in (b * c + ch) * s..(b * c + ch + 1) * s {
                y.data[i] = (x.data[i] - mean[ch]) * inv * weight.data[ch] + bias.data[ch];
            }
        }
    }
    y
}

/// The running statistics after one training step:
/// `new = (1 - momentum) * old + momentum * batch`, the batch variance being the unbiased one
/// (`var * n / (n - 1)`, with `n` the number of values per channel; the caller ensures n > 1).
pub(crate) fn bn_running_update(
    bn: &BatchNorm,
    running_mean: &Buf,
    running_var: &Buf,
    mean: &[f64],
    var: &[f64],
    n: usize,
) -> (Buf, Buf) {
    let m = bn.momentum;
    let unbias = n as f64 / (n as f64 - 1.0);
    let mut new_mean = running_mean.clone();
    let mut new_var = running_var.clone();
    for ch in 0..mean.len() {
        new_mean.data[ch] = (1.0 - m) * running_mean.data[ch] + m * mean[ch];
        new_var.data[ch] = (1.0 - m) * running_var.data[ch] + m * var[ch] * unbias;
    }
    (new_mean, new_var)
}

/// The input gradient of [`bn_apply`] with the statistics held fixed (the running ones, at
/// inference): `dx = g * weight * inv`, `inv = 1 / sqrt(var + eps)`.
pub(crate) fn bn_affine_backward_data(eps: f64, var: &[f64], weight: &Buf, gy: &Buf) -> Buf {
    let (n, c, s) = ncs(&gy.shape);
    let mut gx = Buf::zeros(&gy.shape);
    for b in 0..n {
        for ch in 0..c {
            let scale = weight.data[ch] / (var[ch] + eps).sqrt();
            for i in (b * c + ch) * s..(b * c + ch + 1) * s {
                gx.data[i] = gy.data[i] * scale;
            }
        }
    }
    gx
}

/// Gamma's gradient: `sum g * x^` per channel, `x^ = (x - mean) / sqrt(var + eps)`, with the
/// given statistics (batch or running).
pub(crate) fn bn_gamma_grad(x: &Buf, eps: f64, mean: &[f64], var: &[f64], gy: &Buf) -> Buf {
    let (n, c, s) = ncs(&x.shape);
    let mut gw = Buf::zeros(&[c]);
    for b in 0..n {
        for ch in 0..c {
            let inv = 1.0 / (var[ch] + eps).sqrt();
            for i in (b * c + ch) * s..(b * c + ch + 1) * s {
                gw.data[ch] += gy.data[i] * (x.data[i] - mean[ch]) * inv;
            }
        }
    }
    gw
}

/// The input gradient of training-mode batch norm, where the mean and variance (`mean`,
/// `var`: the batch's, as the forward computed them) are functions of the input: with `m`
/// values per channel, `x^ = (x - mean) * inv`, `inv = 1 / sqrt(var + eps)`,
/// `dx = weight * inv / m * (m * g - sum(g) - x^ * sum(g * x^))`.
pub(crate) fn bn_train_backward_data(x: &Buf, eps: f64, mean: &[f64], var: &[f64], weight: &Buf, gy: &Buf) -> Buf {
    let (n, c, s) = ncs(&x.shape);
    let m = (n * s) as f64;
    let mut gx = Buf::zeros(&x.shape);
    for ch in 0..c {
        let inv = 1.0 / (var[ch] + eps).sqrt();
        let idx = || (0..n).flat_map(move |b| (b * c + ch) * s..(b * c + ch + 1) * s);
        let mut sum_g = 0.0;
        let mut sum_gxhat = 0.0;
        for i in idx() {
            sum_g += gy.data[i];
            sum_gxhat += gy.data[i] * (x.data[i] - mean[ch]) * inv;
        }
        for i in idx() {
            let xhat = (x.data[i] - mean[ch]) * inv;
            gx.data[i] = weight.data[ch] * inv / m * (m * gy.data[i] - sum_g - xhat * sum_gxhat);
        }
    }
    gx
}

/// The channels LRN sums over for output channel `ch` of `c`: `ch - size/2 ..= ch + (size-1)/2`
/// clipped to the tensor, as `torch.nn.functional.local_response_norm` (which zero-pads
/// `size/2` channels before and `(size-1)/2` after).
fn lrn_window(ch: usize, size: usize, c: usize) -> std::ops::Range<usize> {
    ch.saturating_sub(size / 2)..(ch + (size - 1) / 2 + 1).min(c)
}

/// `scale[c] = k + a * sum_{c' in window(c)} x[c']^2` for every channel of one `(n, position)`
/// column, `a` being `alpha / size` (PyTorch, Caffe) or `alpha` (the AlexNet paper):
/// [`Lrn::sum_factor`].
fn lrn_scales(lrn: &Lrn, column: &[f64]) -> Vec<f64> {
    let c = column.len();
    (0..c)
        .map(|ch| {
            let sum: f64 = lrn_window(ch, lrn.size, c).map(|j| column[j] * column[j]).sum();
            lrn.k + lrn.sum_factor() * sum
        })
        .collect()
}

/// Gathers the channel column at `(b, p)` of an `N x C x S` tensor.
fn column(x: &Buf, b: usize, p: usize) -> Vec<f64> {
    let (_, c, s) = ncs(&x.shape);
    (0..c).map(|ch| x.data[(b * c + ch) * s + p]).collect()
}

/// LRN: `y[c] = x[c] * scale[c]^-beta`.
pub(crate) fn lrn_forward(lrn: &Lrn, x: &Buf) -> Buf {
    let (n, c, s) = ncs(&x.shape);
    let mut y = Buf::zeros(&x.shape);
    for b in 0..n {
        for p in 0..s {
            let col = column(x, b, p);
            let scale = lrn_scales(lrn, &col);
            for ch in 0..c {
                y.data[(b * c + ch) * s + p] = col[ch] * scale[ch].powf(-lrn.beta);
            }
        }
    }
    y
}

/// LRN backward: `dx[j] = g[j] * scale[j]^-beta
///   - 2 * a * beta * x[j] * sum_{c : j in window(c)} g[c] * x[c] * scale[c]^(-beta-1)`, `a` as in
///   [`lrn_scales`].
pub(crate) fn lrn_backward(lrn: &Lrn, x: &Buf, gy: &Buf) -> Buf {
    let (n, c, s) = ncs(&x.shape);
    let mut gx = Buf::zeros(&x.shape);
    let factor = 2.0 * lrn.sum_factor() * lrn.beta;
    for b in 0..n {
        for p in 0..s {
            let col = column(x, b, p);
            let g = column(gy, b, p);
            let scale = lrn_scales(lrn, &col);
            let mut out = vec![0.0; c];
            for ch in 0..c {
                out[ch] += g[ch] * scale[ch].powf(-lrn.beta);
                let t = factor * g[ch] * col[ch] * scale[ch].powf(-lrn.beta - 1.0);
                for j in lrn_window(ch, lrn.size, c) {
                    out[j] -= t * col[j];
                }
            }
            for ch in 0..c {
                gx.data[(b * c + ch) * s + p] = out[ch];
            }
        }
    }
    gx
}
