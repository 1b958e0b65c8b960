//! The ops of training graphs: losses, backward ops, optimiser updates, and the training forms
//! of batch norm and dropout. The training transform (`cnnc_passes::grad`) makes them; back ends
//! implement them like any other op and never differentiate anything themselves.
//!
//! # Values
//!
//! Most of these ops produce a batched value like every forward op (`[N] ++ shape`). Three
//! kinds differ ([`crate::facts::value_kind`]):
//!
//! - whole-batch values, with no batch axis: a parameter's gradient (summed over the batch),
//!   batch-norm statistics `[2, C]` (row 0 the batch mean, row 1 the biased variance), and the
//!   loss (shape `[]`, the mean over the batch);
//! - effects, which produce no value: optimiser updates and batch norm's running-statistics
//!   update write parameters and state in place;
//! - labels, a source like `input`: one class index per sample (shape `[]`), stored as an
//!   exact f32 integer.
//!
//! # Parameters
//!
//! A node reads the parameters of the layer it is named after: a backward op is named like
//! its forward layer (`conv1`), so `conv_backward_data` of `conv1` reads `conv1.weight`. Only
//! forward ops own parameters, except that an optimiser update, named after the full name of
//! the parameter it updates (`conv1.weight`), owns that parameter's optimiser state
//! (`conv1.weight.momentum_buffer`, `conv1.weight.exp_avg`, ...). The parameter a gradient op
//! computes the gradient of is `<name>.<suffix>` with the suffix of
//! [`TrainOp::grad_of_param`].
//!
//! # Run-time arguments
//!
//! The learning rate, the step number (Adam's bias correction, dropout masks) and the random
//! seed are arguments of each training step, never attributes: a schedule changes the learning
//! rate without recompiling anything.

use crate::op::{Activation, BatchNorm, Conv, Gemm, Lrn, Op, Pair, PoolKind, Window};
use crate::shape::{Shape, ShapeError, infer};

/// A loss on the model's output, averaged over the batch (PyTorch's `reduction = "mean"`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Loss {
    /// Softmax cross-entropy on logits with class labels.
    CrossEntropy,
    /// Mean squared error over every element.
    Mse,
    /// Mean absolute error over every element.
    L1,
    /// Huber over every element: `d^2 / 2` where `abs(d) < delta`, else `delta (abs(d) - delta / 2)`.
    Huber { delta: f64 },
    /// Multi-class hinge with class labels; see [`HingeForm`].
    Hinge { margin: f64, form: HingeForm },
}

/// The two common multi-class hinge losses, per sample with label `y` and scores `s`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum HingeForm {
    /// CS231n's (Weston and Watkins): `sum_{j != y} max(0, margin - s_y + s_j)`.
    Sum,
    /// PyTorch's `MultiMarginLoss`: the same sum divided by the number of classes.
    MeanOverClasses,
}

impl Loss {
    /// Whether the target is one class label per sample (otherwise a tensor like the output).
    pub fn takes_labels(&self) -> bool {
        match self {
            Loss::CrossEntropy | Loss::Hinge { .. } => true,
            Loss::Mse | Loss::L1 | Loss::Huber { .. } => false,
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            Loss::CrossEntropy => "ce",
            Loss::Mse => "mse",
            Loss::L1 => "l1",
            Loss::Huber { .. } => "huber",
            Loss::Hinge { form: HingeForm::Sum, .. } => "hinge",
            Loss::Hinge { form: HingeForm::MeanOverClasses, .. } => "multi-margin",
        }
    }
}

/// Stochastic gradient descent as `torch.optim.SGD` (dampening 0): `g += weight_decay * p`;
/// `buf = momentum * buf + g` (`buf = g` at step 1); `p -= lr * (nesterov ? g + momentum * buf : buf)`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Sgd {
    pub momentum: f64,
    pub weight_decay: f64,
    pub nesterov: bool,
}

/// Adam as `torch.optim.Adam` (L2 weight decay added to the gradient, no AMSGrad), with bias
/// correction from the step number `t >= 1`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Adam {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

/// RMSprop as `torch.optim.RMSprop` (not centered): `v = alpha v + (1 - alpha) g^2`; with
/// momentum `buf = momentum buf + g / (sqrt(v) + eps)` and `p -= lr buf`, else
/// `p -= lr g / (sqrt(v) + eps)`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RmsProp {
    pub alpha: f64,
    pub eps: f64,
    pub momentum: f64,
    pub weight_decay: f64,
}

/// An optimiser: how each trainable parameter is updated from its gradient.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Optimizer {
    Sgd(Sgd),
    Adam(Adam),
    RmsProp(RmsProp),
}

/// Where a pooling op's windows lie: the geometry shared by its forward and backward ops.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum PoolGeometry {
    Window(Window),
    /// The whole map (global pooling).
    Global,
    /// PyTorch's adaptive bins to a fixed output size.
    Adaptive(Pair),
    /// Spatial pyramid levels, flattened and concatenated in level order.
    Pyramid(Vec<usize>),
}

/// Which value an activation's backward reads: its operand, or (for the activations whose
/// derivative is a function of their output, [`crate::facts::backward_from_output`]) its output.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SavedSide {
    Operand,
    Output,
}

#[derive(Clone, Debug, PartialEq)]
pub enum TrainOp {
    /// A model input of class labels, one per sample (shape `[]`), each in `0..classes`.
    Labels { classes: usize },
    /// The loss of `(output, target)`, a whole-batch scalar (shape `[]`).
    Loss(Loss),
    /// `d loss / d output` of `(output, target)`, the mean over the batch included; for
    /// cross-entropy the fused `(softmax(x) - onehot(y)) / N`.
    LossGrad(Loss),

    /// Batch statistics of `x`: whole-batch `[2, C]`, the mean and the biased variance of
    /// each channel over the batch and the spatial axes.
    BnStats,
    /// Batch norm of `x` with the statistics operand (`bn_stats` of the same `x`) instead of
    /// the running ones; owns the layer's parameters and buffers as `bn` does.
    BnNormalize(BatchNorm),
    /// Effect: `running = (1 - momentum) running + momentum batch`, the variance unbiased
    /// (times `n / (n - 1)`, `n = N * spatial` the values per channel), from a `bn_stats`
    /// operand; `spatial` is the normalised value's spatial size (1 for a vector).
    BnRunningUpdate { bn: BatchNorm, spatial: usize },
    /// Inverted dropout's mask for the operand's shape: each element `1 / (1 - p)` with
    /// probability `1 - p`, else 0, drawn from the run's seed, the step and this node's name.
    DropoutMask { p: f64 },
    /// Elementwise product of two tensors of one shape (dropout forward and backward).
    Mul,

    /// The flat index `h * W + w` of each max pooling window's first maximum in its input
    /// plane (what the max pooling of the same operand and geometry reads), as exact f32.
    PoolArgmax(PoolGeometry),
    /// The gradient of a pooling layer's operand, of shape `input`. Operands by kind: max
    /// `(gy, argmax)`, average `(gy)`, L2 `(x, y, gy)`.
    PoolBackward { kind: PoolKind, geometry: PoolGeometry, input: [usize; 3] },

    /// `d x` of a convolution from `(gy)`, reading the layer's weight; `input` is `x`'s shape.
    /// With `mask`, the result is multiplied by the derivative of that activation taken from
    /// the second operand, the activation's output (a ReLU before the convolution, fused).
    ConvBackwardData { conv: Conv, input: [usize; 3], mask: Option<Activation> },
    /// The weight gradient of a convolution from `(x, gy)`, whole-batch, the weight's shape.
    ConvBackwardWeight(Conv),
    /// `d x` of a matrix product (1x1 convolution or fc) from `(gy)`, reading the weight;
    /// `input` is `x`'s channel (or feature) count.
    GemmBackwardData { gemm: Gemm, input: usize },
    /// The weight gradient of a matrix product from `(x, gy)`, whole-batch, the weight's shape.
    GemmBackwardWeight(Gemm),
    /// The gradient of a per-channel bias (or batch-norm beta) from `(gy)`: `gy` summed over
    /// the batch and the spatial axes, whole-batch `[C]`.
    BiasGrad,

    /// `d x` of an activation from `(x or y, gy)` (see [`SavedSide`]).
    ActivationBackward { activation: Activation, from: SavedSide },
    /// `d x` of PReLU from `(x, gy)`, reading the slope.
    PreluBackwardData,
    /// The slope gradient of PReLU from `(x, gy)`, whole-batch `[C]`.
    PreluBackwardWeight,
    /// `d x` of softmax from `(y, gy)`.
    SoftmaxBackward,
    /// `d x` of batch norm. With batch statistics, from `(x, stats, gy)` through the
    /// statistics; with the running ones (a gradient of the model at inference), the affine
    /// map's from `(gy)`. Reads gamma (and the running variance).
    BnBackwardData { bn: BatchNorm, batch_stats: bool },
    /// Gamma's gradient, whole-batch `[C]`: `sum gy * x_hat`, from `(x, stats, gy)` with batch
    /// statistics or `(x, gy)` with the running ones.
    BnGammaGrad { bn: BatchNorm, batch_stats: bool },
    /// `d x` of LRN from `(x, gy)`.
    LrnBackward(Lrn),
    /// The same values in another shape of as many elements (the backward of flatten).
    Reshape(Vec<usize>),
    /// Channels `start .. start + len` of the operand (the backward of concat).
    Slice { start: usize, len: usize },

    /// Effect: updates the parameter named by this node from `(grad)`; owns its state.
    Update(Optimizer),
}

impl TrainOp {
    pub fn keyword(&self) -> &'static str {
        match self {
            TrainOp::Labels { .. } => "labels",
            TrainOp::Loss(_) => "loss",
            TrainOp::LossGrad(_) => "loss_grad",
            TrainOp::BnStats => "bn_stats",
            TrainOp::BnNormalize(_) => "bn_normalize",
            TrainOp::BnRunningUpdate { .. } => "bn_running_update",
            TrainOp::DropoutMask { .. } => "dropout_mask",
            TrainOp::Mul => "mul",
            TrainOp::PoolArgmax(_) => "pool_argmax",
            TrainOp::PoolBackward { .. } => "pool_backward",
            TrainOp::ConvBackwardData { .. } => "conv_backward_data",
            TrainOp::ConvBackwardWeight(_) => "conv_backward_weight",
            TrainOp::GemmBackwardData { .. } => "gemm_backward_data",
            TrainOp::GemmBackwardWeight(_) => "gemm_backward_weight",
            TrainOp::BiasGrad => "bias_grad",
            TrainOp::ActivationBackward { .. } => "activation_backward",
            TrainOp::PreluBackwardData => "prelu_backward_data",
            TrainOp::PreluBackwardWeight => "prelu_backward_weight",
            TrainOp::SoftmaxBackward => "softmax_backward",
            TrainOp::BnBackwardData { .. } => "bn_backward_data",
            TrainOp::BnGammaGrad { .. } => "bn_gamma_grad",
            TrainOp::LrnBackward(_) => "lrn_backward",
            TrainOp::Reshape(_) => "reshape",
            TrainOp::Slice { .. } => "slice",
            TrainOp::Update(Optimizer::Sgd(_)) => "sgd_update",
            TrainOp::Update(Optimizer::Adam(_)) => "adam_update",
            TrainOp::Update(Optimizer::RmsProp(_)) => "rmsprop_update",
        }
    }

    /// The suffix of the parameter whose gradient this op computes (`<name>.<suffix>`).
    pub fn grad_of_param(&self) -> Option<&'static str> {
        match self {
            TrainOp::ConvBackwardWeight(_)
            | TrainOp::GemmBackwardWeight(_)
            | TrainOp::PreluBackwardWeight
            | TrainOp::BnGammaGrad { .. } => Some("weight"),
            TrainOp::BiasGrad => Some("bias"),
            TrainOp::Labels { .. }
            | TrainOp::Loss(_)
            | TrainOp::LossGrad(_)
            | TrainOp::BnStats
            | TrainOp::BnNormalize(_)
            | TrainOp::BnRunningUpdate { .. }
            | TrainOp::DropoutMask { .. }
            | TrainOp::Mul
            | TrainOp::PoolArgmax(_)
            | TrainOp::PoolBackward { .. }
            | TrainOp::ConvBackwardData { .. }
            | TrainOp::GemmBackwardData { .. }
            | TrainOp::ActivationBackward { .. }
            | TrainOp::PreluBackwardData
            | TrainOp::SoftmaxBackward
            | TrainOp::BnBackwardData { .. }
            | TrainOp::LrnBackward(_)
            | TrainOp::Reshape(_)
            | TrainOp::Slice { .. }
            | TrainOp::Update(_) => None,
        }
    }
}

impl Optimizer {
    /// The state each parameter carries, as suffixes of the parameter's full name.
    pub fn state(&self) -> &'static [&'static str] {
        match self {
            Optimizer::Sgd(sgd) if sgd.momentum == 0.0 => &[],
            Optimizer::Sgd(_) => &["momentum_buffer"],
            Optimizer::Adam(_) => &["exp_avg", "exp_avg_sq"],
            Optimizer::RmsProp(rms) if rms.momentum == 0.0 => &["square_avg"],
            Optimizer::RmsProp(_) => &["square_avg", "momentum_buffer"],
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            Optimizer::Sgd(_) => "sgd",
            Optimizer::Adam(_) => "adam",
            Optimizer::RmsProp(_) => "rmsprop",
        }
    }
}

/// The shape rule of a training op, given its operands' shapes (batch excluded for batched
/// operands, the whole shape for whole-batch ones).
pub(crate) fn infer_train(op: &TrainOp, inputs: &[&Shape]) -> Result<Shape, ShapeError> {
    let arity = |n: usize, expected: &'static str| {
        if inputs.len() == n { Ok(()) } else { Err(ShapeError::Arity { expected, found: inputs.len() }) }
    };
    let same = |a: &Shape, b: &Shape| {
        if a == b { Ok(()) } else { Err(ShapeError::AddMismatch { first: a.clone(), other: b.clone(), index: 1 }) }
    };
    let shape = match op {
        TrainOp::Labels { .. } => {
            return Err(ShapeError::BadConfig("labels are added with Graph::add_labels".into()));
        }
        TrainOp::Loss(loss) | TrainOp::LossGrad(loss) => {
            arity(2, "2 (output and target)")?;
            let (out, target) = (inputs[0], inputs[1]);
            if loss.takes_labels() {
                if out.rank() == 0 || out.0[1..].iter().any(|&d| d != 1) {
                    return Err(ShapeError::Rank { expected: "a [classes] (or [classes, 1, 1])", found: out.clone() });
                }
                if target.rank() != 0 {
                    return Err(ShapeError::BadConfig(format!(
                        "the {} loss takes one class label per sample, found a target of shape {target}",
                        loss.name()
                    )));
                }
            } else {
                same(out, target)?;
            }
            if let TrainOp::Loss(_) = op { Shape(Vec::new()) } else { out.clone() }
        }
        TrainOp::BnStats => {
            arity(1, "1")?;
            Shape(vec![2, inputs[0].channels_checked()?])
        }
        TrainOp::BnNormalize(_) => {
            arity(2, "2 (operand and statistics)")?;
            stats_of(inputs[1], inputs[0])?;
            inputs[0].clone()
        }
        TrainOp::BnRunningUpdate { .. } => {
            arity(1, "1 (statistics)")?;
            if inputs[0].rank() != 2 || inputs[0].0[0] != 2 {
                return Err(ShapeError::Rank { expected: "[2, channels] statistics", found: inputs[0].clone() });
            }
            Shape(Vec::new())
        }
        TrainOp::DropoutMask { p } => {
            arity(1, "1")?;
            if !(0.0..=1.0).contains(p) {
                return Err(ShapeError::BadConfig(format!("dropout probability {p} is not in [0, 1]")));
            }
            inputs[0].clone()
        }
        TrainOp::Mul => {
            arity(2, "2")?;
            same(inputs[0], inputs[1])?;
            inputs[0].clone()
        }
        TrainOp::PoolArgmax(geometry) => {
            arity(1, "1")?;
            pooled(geometry, inputs[0])?
        }
        TrainOp::PoolBackward { kind, geometry, input } => {
            let x = Shape(input.to_vec());
            let y = pooled(geometry, &x)?;
            let gy = match kind {
                PoolKind::Max => {
                    arity(2, "2 (gradient and argmax)")?;
                    same(inputs[1], &y)?;
                    inputs[0]
                }
                PoolKind::Avg { .. } => {
                    arity(1, "1 (gradient)")?;
                    inputs[0]
                }
                PoolKind::L2 => {
                    arity(3, "3 (operand, output and gradient)")?;
                    same(inputs[0], &x)?;
                    same(inputs[1], &y)?;
                    inputs[2]
                }
            };
            same(gy, &y)?;
            x
        }
        TrainOp::ConvBackwardData { conv, input, mask } => {
            arity(if mask.is_some() { 2 } else { 1 }, if mask.is_some() { "2 (gradient, mask source)" } else { "1" })?;
            let x = Shape(input.to_vec());
            let y = infer(&Op::Conv(*conv), &[&x])?.0;
            same(inputs[0], &y)?;
            if mask.is_some() {
                same(inputs[1], &x)?;
            }
            x
        }
        TrainOp::ConvBackwardWeight(conv) => {
            arity(2, "2 (operand and gradient)")?;
            let y = infer(&Op::Conv(*conv), &[inputs[0]])?.0;
            same(inputs[1], &y)?;
            let [kh, kw] = conv.window.kernel;
            Shape(vec![conv.out_channels, inputs[0].channels() / conv.groups, kh, kw])
        }
        TrainOp::GemmBackwardData { gemm, input } => {
            arity(1, "1")?;
            let gy = inputs[0];
            if gy.rank() == 0 || gy.channels() != gemm.out || *input == 0 {
                return Err(ShapeError::Rank { expected: "a gradient with the product's outputs", found: gy.clone() });
            }
            let mut dims = gy.0.clone();
            dims[0] = *input;
            Shape(dims)
        }
        TrainOp::GemmBackwardWeight(gemm) => {
            arity(2, "2 (operand and gradient)")?;
            let y = infer(&Op::Gemm(*gemm), &[inputs[0]])?.0;
            same(inputs[1], &y)?;
            match inputs[0].0[..] {
                [c, _, _] => Shape(vec![gemm.out, c, 1, 1]),
                _ => Shape(vec![gemm.out, inputs[0].channels()]),
            }
        }
        TrainOp::BiasGrad | TrainOp::PreluBackwardWeight => {
            let gy = if let TrainOp::BiasGrad = op {
                arity(1, "1 (gradient)")?;
                inputs[0]
            } else {
                arity(2, "2 (operand and gradient)")?;
                same(inputs[0], inputs[1])?;
                inputs[1]
            };
            Shape(vec![gy.channels_checked()?])
        }
        TrainOp::ActivationBackward { .. }
        | TrainOp::PreluBackwardData
        | TrainOp::SoftmaxBackward
        | TrainOp::LrnBackward(_) => {
            arity(2, "2 (saved value and gradient)")?;
            same(inputs[0], inputs[1])?;
            inputs[0].clone()
        }
        TrainOp::BnBackwardData { batch_stats, .. } | TrainOp::BnGammaGrad { batch_stats, .. } => {
            let grad_of_data = matches!(op, TrainOp::BnBackwardData { .. });
            let gy = match (grad_of_data, batch_stats) {
                (_, true) => {
                    arity(3, "3 (operand, statistics and gradient)")?;
                    same(inputs[0], inputs[2])?;
                    stats_of(inputs[1], inputs[0])?;
                    inputs[2]
                }
                (true, false) => {
                    arity(1, "1 (gradient)")?;
                    inputs[0]
                }
                (false, false) => {
                    arity(2, "2 (operand and gradient)")?;
                    same(inputs[0], inputs[1])?;
                    inputs[1]
                }
            };
            if grad_of_data { gy.clone() } else { Shape(vec![gy.channels_checked()?]) }
        }
        TrainOp::Reshape(dims) => {
            arity(1, "1")?;
            let to = Shape(dims.clone());
            if to.checked_elements() != inputs[0].checked_elements() {
                return Err(ShapeError::BadConfig(format!("cannot reshape {} to {to}", inputs[0])));
            }
            to
        }
        TrainOp::Slice { start, len } => {
            arity(1, "1")?;
            let x = inputs[0];
            let channels = x.channels_checked()?;
            if *len == 0 || start.checked_add(*len).is_none_or(|end| end > channels) {
                return Err(ShapeError::BadConfig(format!(
                    "channels {start}..{} are outside the operand's {channels}",
                    start.saturating_add(*len)
                )));
            }
            let mut dims = x.0.clone();
            dims[0] = *len;
            Shape(dims)
        }
        TrainOp::Update(_) => {
            arity(1, "1 (gradient)")?;
            Shape(Vec::new())
        }
    };
    Ok(shape)
}

/// The output of a pooling geometry on a `[C, H, W]` operand (the forward ops' shape rules).
fn pooled(geometry: &PoolGeometry, x: &Shape) -> Result<Shape, ShapeError> {
    let op = match geometry {
        PoolGeometry::Window(window) => Op::Pool { kind: PoolKind::Max, window: *window },
        PoolGeometry::Global => Op::GlobalPool(PoolKind::Max),
        PoolGeometry::Adaptive(output) => Op::AdaptivePool { kind: PoolKind::Max, output: *output },
        PoolGeometry::Pyramid(levels) => Op::Spp { kind: PoolKind::Max, levels: levels.clone() },
    };
    Ok(infer(&op, &[x])?.0)
}

/// `stats` must be the `[2, C]` statistics of `x`.
fn stats_of(stats: &Shape, x: &Shape) -> Result<(), ShapeError> {
    let c = x.channels_checked()?;
    if stats.0 != [2, c] {
        return Err(ShapeError::BadConfig(format!("statistics {stats} do not fit an operand of shape {x}")));
    }
    Ok(())
}
