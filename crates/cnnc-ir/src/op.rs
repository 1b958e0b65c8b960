//! The operations a graph node performs, each with its typed attributes.
//!
//! Every `match` over [`Op`] in the compiler is exhaustive (no `_ =>` arm), so adding an op here
//! turns into a list of compile errors across every phase and back end.

/// A `(height, width)` pair: kernel sizes, strides, paddings and dilations may be asymmetric.
pub type Pair = [usize; 2];

/// A sliding window over the spatial axes, shared by convolution and pooling.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Window {
    pub kernel: Pair,
    pub stride: Pair,
    /// Zero padding added on both sides of each axis.
    pub pad: Pair,
    pub dilation: Pair,
    /// Round the output size up instead of down (Caffe's pooling rule); the last window must
    /// still start inside the input or its left padding, as in PyTorch.
    pub ceil_mode: bool,
}

impl Window {
    /// The kernel extent once dilated: `d * (k - 1) + 1`.
    pub fn effective_kernel(&self) -> Pair {
        [0, 1].map(|a| self.dilation[a] * (self.kernel[a] - 1) + 1)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Conv {
    pub out_channels: usize,
    pub window: Window,
    pub groups: usize,
    pub bias: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PoolKind {
    Max,
    /// Average; `include_pad` counts padded zeros in the divisor (PyTorch's default).
    Avg {
        include_pad: bool,
    },
    /// Square root of the sum of squares over the window (LPPool with p = 2).
    L2,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Fc {
    pub out_features: usize,
    pub bias: bool,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Activation {
    Relu,
    LeakyRelu {
        slope: f64,
    },
    Elu {
        alpha: f64,
    },
    Selu,
    Sigmoid,
    Tanh,
    HardTanh {
        min: f64,
        max: f64,
    },
    Softsign,
    /// `log(1 + exp(beta * x)) / beta`, linear above `threshold` (as PyTorch).
    Softplus {
        beta: f64,
        threshold: f64,
    },
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BatchNorm {
    pub eps: f64,
    /// Weight of the new batch statistic in the running average (PyTorch's convention).
    pub momentum: f64,
}

/// Local response normalisation across channels, as PyTorch and Caffe:
/// `x / (k + alpha / size * sum(x^2 over size neighbouring channels))^beta`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Lrn {
    pub size: usize,
    pub alpha: f64,
    pub beta: f64,
    pub k: f64,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Op {
    /// A model input; its shape is the node's shape.
    Input,
    Conv(Conv),
    Pool {
        kind: PoolKind,
        window: Window,
    },
    /// Pools each channel's whole map down to 1x1.
    GlobalPool(PoolKind),
    /// Pools each channel to a fixed `output` size with PyTorch's adaptive bin edges.
    AdaptivePool {
        kind: PoolKind,
        output: Pair,
    },
    /// Spatial pyramid pooling: adaptive pooling to `l x l` for each level, flattened and
    /// concatenated in level order, giving `[C * sum(l^2)]`.
    Spp {
        kind: PoolKind,
        levels: Vec<usize>,
    },
    Fc(Fc),
    /// `[C, H, W]` to `[C * H * W]`, in C, H, W order (as PyTorch).
    Flatten,
    Activation(Activation),
    /// Leaky ReLU with a learned slope per channel.
    Prelu,
    /// Softmax over the channel (or feature) axis.
    Softmax,
    BatchNorm(BatchNorm),
    Lrn(Lrn),
    /// Inverted dropout: identity at inference, scaled random mask in training.
    Dropout {
        p: f64,
    },
    /// Concatenation along the channel axis.
    Concat,
    /// Elementwise sum of tensors of equal shape.
    Add,
}

impl Op {
    /// The layer keyword this op is written with in `.cnn` sources.
    pub fn keyword(&self) -> &'static str {
        match self {
            Op::Input => "input",
            Op::Conv(_) => "conv",
            Op::Pool { kind, .. } => match kind {
                PoolKind::Max => "maxpool",
                PoolKind::Avg { .. } => "avgpool",
                PoolKind::L2 => "l2pool",
            },
            Op::GlobalPool(kind) => match kind {
                PoolKind::Max => "global_maxpool",
                PoolKind::Avg { .. } => "global_avgpool",
                PoolKind::L2 => "global_l2pool",
            },
            Op::AdaptivePool { kind, .. } => match kind {
                PoolKind::Max => "adaptive_maxpool",
                PoolKind::Avg { .. } => "adaptive_avgpool",
                PoolKind::L2 => "adaptive_l2pool",
            },
            Op::Spp { .. } => "spp",
            Op::Fc(_) => "fc",
            Op::Flatten => "flatten",
            Op::Activation(a) => a.keyword(),
            Op::Prelu => "prelu",
            Op::Softmax => "softmax",
            Op::BatchNorm(_) => "bn",
            Op::Lrn(_) => "lrn",
            Op::Dropout { .. } => "dropout",
            Op::Concat => "concat",
            Op::Add => "add",
        }
    }
}

impl Activation {
    pub fn keyword(&self) -> &'static str {
        match self {
            Activation::Relu => "relu",
            Activation::LeakyRelu { .. } => "leaky_relu",
            Activation::Elu { .. } => "elu",
            Activation::Selu => "selu",
            Activation::Sigmoid => "sigmoid",
            Activation::Tanh => "tanh",
            Activation::HardTanh { .. } => "hardtanh",
            Activation::Softsign => "softsign",
            Activation::Softplus { .. } => "softplus",
        }
    }

    /// Whether He initialisation suits the layer feeding this activation (the ReLU family).
    pub fn is_relu_family(&self) -> bool {
        match self {
            Activation::Relu | Activation::LeakyRelu { .. } | Activation::Elu { .. } | Activation::Selu => true,
            Activation::Sigmoid
            | Activation::Tanh
            | Activation::HardTanh { .. }
            | Activation::Softsign
            | Activation::Softplus { .. } => false,
        }
    }
}
