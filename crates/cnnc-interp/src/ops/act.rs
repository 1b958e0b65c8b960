//! Elementwise and per-channel ops: activations, PReLU, softmax, dropout; forward and backward.
//!
//! Per-channel ops view a tensor `[N, C, rest...]` (or `[N, F]`, where the feature is the
//! channel) as `N x C x S` with `S` the product of the remaining dimensions.

use crate::buf::Buf;
use cnnc_ir::Activation;

/// SELU's `alpha`, as PyTorch (1.6732632423543772848170429916717 rounded to f64).
pub const SELU_ALPHA: f64 = 1.673_263_242_354_377_2;
/// SELU's `scale`, as PyTorch (1.0507009873554804934193349852946 rounded to f64).
pub const SELU_SCALE: f64 = 1.050_700_987_355_480_5;

/// `(N, C, S)` of a `[N, C, rest...]` shape.
pub(crate) fn ncs(shape: &[usize]) -> (usize, usize, usize) {
    (shape[0], shape[1], shape[2..].iter().product())
}

fn sigmoid(x: f64) -> f64 {
    if x >= 0.0 {
        1.0 / (1.0 + (-x).exp())
    } else {
        let e = x.exp();
        e / (1.0 + e)
    }
}

/// The activation function at `x`.
pub(crate) fn activation(a: Activation, x: f64) -> f64 {
    match a {
        Activation::Relu => {
            if x > 0.0 {
                x
            } else {
                0.0
            }
        }
        Activation::LeakyRelu { slope } => {
            if x > 0.0 {
                x
            } else {
                slope * x
            }
        }
        Activation::Elu { alpha } => {
            if x > 0.0 {
                x
            } else {
                alpha * x.exp_m1()
            }
        }
        Activation::Selu => SELU_SCALE * if x > 0.0 { x } else { SELU_ALPHA * x.exp_m1() },
        Activation::Sigmoid => sigmoid(x),
        Activation::Tanh => x.tanh(),
        Activation::HardTanh { min, max } => x.clamp(min, max),
        Activation::Softsign => x / (1.0 + x.abs()),
        Activation::Softplus { beta, threshold } => {
            if beta * x > threshold {
                x
            } else {
                (beta * x).exp().ln_1p() / beta
            }
        }
    }
}

/// The derivative of the activation at `x` (at kinks, PyTorch's choice: ReLU'(0) = 0,
/// HardTanh' = 0 at and beyond the bounds, LeakyReLU'(0) = slope).
pub(crate) fn activation_grad(a: Activation, x: f64) -> f64 {
    match a {
        Activation::Relu => {
            if x > 0.0 {
                1.0
            } else {
                0.0
            }
        }
        Activation::LeakyRelu { slope } => {
            if x > 0.0 {
                1.0
            } else {
                slope
            }
        }
        Activation::Elu { alpha } => {
            if x > 0.0 {
                1.0
            } else {
                alpha * x.exp()
            }
        }
        Activation::Selu => SELU_SCALE * if x > 0.0 { 1.0 } else { SELU_ALPHA * x.exp() },
        Activation::Sigmoid => {
            let s = sigmoid(x);
            s * (1.0 - s)
        }
        Activation::Tanh => {
            let t = x.tanh();
            1.0 - t * t
        }
        Activation::HardTanh { min, max } => {
            if x > min && x < max {
                1.0
            } else {
                0.0
            }
        }
        Activation::Softsign => {
            let d = 1.0 + x.abs();
            1.0 / (d * d)
        }
        Activation::Softplus { beta, threshold } => {
            if beta * x > threshold {
                1.0
            } else {
                sigmoid(beta * x)
            }
        }
    }
}

pub(crate) fn activation_forward(a: Activation, x: &Buf) -> Buf {
    Buf { shape: x.shape.clone(), data: x.data.iter().map(|&v| activation(a, v)).collect() }
}

/// `dx = gy * f'(x)` from the activation's operand `x`.
pub(crate) fn activation_backward(a: Activation, x: &Buf, gy: &Buf) -> Buf {
    let data = x.data.iter().zip(&gy.data).map(|(&v, &g)| g * activation_grad(a, v)).collect();
    Buf { shape: x.shape.clone(), data }
}

/// The derivative of an activation from its output `y`, for those whose derivative is a
/// function of it (`cnnc_ir::facts::backward_from_output`): ReLU `y > 0` (PyTorch's
/// `threshold_backward`), sigmoid `y (1 - y)`, tanh `1 - y^2`. `None` for the others.
pub(crate) fn activation_grad_from_output(a: Activation, y: f64) -> Option<f64> {
    match a {
        Activation::Relu => Some(if y > 0.0 { 1.0 } else { 0.0 }),
        Activation::Sigmoid => Some(y * (1.0 - y)),
        Activation::Tanh => Some(1.0 - y * y),
        Activation::LeakyRelu { .. }
        | Activation::Elu { .. }
        | Activation::Selu
        | Activation::HardTanh { .. }
        | Activation::Softsign
        | Activation::Softplus { .. } => None,
    }
}

/// Per-channel sums of `gy` over the batch and the spatial axes (the gradient of a bias, of
/// batch norm's beta).
pub(crate) fn channel_sums(gy: &Buf) -> Buf {
    let (n, c, s) = ncs(&gy.shape);
    let mut out = Buf::zeros(&[c]);
    for b in 0..n {
        for ch in 0..c {
            out.data[ch] += gy.data[(b * c + ch) * s..][..s].iter().sum::<f64>();
        }
    }
    out
}

/// PReLU: `x > 0 ? x : slope[c] * x` with one slope per channel (feature, for `[N, F]`).
pub(crate) fn prelu_forward(x: &Buf, slope: &Buf) -> Buf {
    let (n, c, s) = ncs(&x.shape);
    let mut y = x.clone();
    for b in 0..n {
        for ch in 0..c {
            for v in &mut y.data[(b * c + ch) * s..][..s] {
                if *v <= 0.0 {
                    *v *= slope.data[ch];
                }
            }
        }
    }
    y
}

/// Gradients of PReLU: `(d input, d slope)`.
pub(crate) fn prelu_backward(x: &Buf, slope: &Buf, gy: &Buf) -> (Buf, Buf) {
    let (n, c, s) = ncs(&x.shape);
    let mut gx = Buf::zeros(&x.shape);
    let mut gs = Buf::zeros(&slope.shape);
    for b in 0..n {
        for ch in 0..c {
            for i in (b * c + ch) * s..(b * c + ch + 1) * s {
                if x.data[i] > 0.0 {
                    gx.data[i] = gy.data[i];
                } else {
                    gx.data[i] = slope.data[ch] * gy.data[i];
                    gs.data[ch] += x.data[i] * gy.data[i];
                }
            }
        }
    }
    (gx, gs)
}

/// Softmax over axis 1 (channels or features), stabilised by subtracting the maximum.
pub(crate) fn softmax_forward(x: &Buf) -> Buf {
    let (n, c, s) = ncs(&x.shape);
    let mut y = Buf::zeros(&x.shape);
    for b in 0..n {
        for p in 0..s {
            let at = |ch: usize| (b * c + ch) * s + p;
            let max = (0..c).map(|ch| x.data[at(ch)]).fold(f64::NEG_INFINITY, f64::max);
            let mut sum = 0.0;
            for ch in 0..c {
                let e = (x.data[at(ch)] - max).exp();
                y.data[at(ch)] = e;
                sum += e;
            }
            for ch in 0..c {
                y.data[at(ch)] /= sum;
            }
        }
    }
    y
}

/// Softmax backward from its output: `dx_c = y_c * (g_c - sum_c' g_c' * y_c')`.
pub(crate) fn softmax_backward(y: &Buf, gy: &Buf) -> Buf {
    let (n, c, s) = ncs(&y.shape);
    let mut gx = Buf::zeros(&y.shape);
    for b in 0..n {
        for p in 0..s {
            let at = |ch: usize| (b * c + ch) * s + p;
            let dot: f64 = (0..c).map(|ch| gy.data[at(ch)] * y.data[at(ch)]).sum();
            for ch in 0..c {
                gx.data[at(ch)] = y.data[at(ch)] * (gy.data[at(ch)] - dot);
            }
        }
    }
    gx
}

/// Inverted dropout's mask for layer `layer` at training step `step`: each element is
/// `1 / (1 - p)` (kept) or 0 (dropped). Counter-based, so any back end can draw element `i`
/// on its own: with `s = seed ^ fnv1a64(layer) ^ step * 0xD1B5_4A32_D192_ED03` (wrapping),
/// element `i` (row-major over the full `[N, ...]` shape) is dropped when
/// `(splitmix64_mix(s + (i + 1) * 0x9E37_79B9_7F4A_7C15) >> 11) * 2^-53 < p`, which is the
/// `i`-th output of a SplitMix64 generator seeded with `s` ([`Rng`]).
pub fn dropout_mask(seed: u64, layer: &str, step: u64, len: usize, p: f64) -> Vec<f64> {
    let mut rng = Rng::for_layer(seed, layer, step);
    let keep = if p < 1.0 { 1.0 / (1.0 - p) } else { 0.0 };
    (0..len).map(|_| if rng.uniform() < p { 0.0 } else { keep }).collect()
}

/// FNV-1a over the bytes of a name: how a layer's name enters its dropout stream.
pub fn fnv1a64(name: &str) -> u64 {
    name.bytes().fold(0xCBF2_9CE4_8422_2325, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01B3))
}

/// SplitMix64, the interpreter's only source of randomness (dropout masks). Documented exactly
/// so a back end can reproduce the same masks.
#[derive(Clone, Debug)]
pub struct Rng {
    state: u64,
}

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng { state: seed }
    }

    /// The stream of layer `layer` at step `step` (see [`dropout_mask`]).
    pub fn for_layer(seed: u64, layer: &str, step: u64) -> Rng {
        Rng::new(seed ^ fnv1a64(layer) ^ step.wrapping_mul(0xD1B5_4A32_D192_ED03))
    }

    /// The next SplitMix64 output.
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A uniform draw in `[0, 1)`: the top 53 bits of [`Rng::next_u64`] times `2^-53`.
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }
}
