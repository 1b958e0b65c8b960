//! The operations a graph node performs, each with its typed attributes.
//!
//! Every `match` over [`Op`] in the compiler is exhaustive (no `_ =>` arm), so adding an op here
//! turns into a list of compile errors across every phase and back end. The ops of training
//! graphs are one variant, [`Op::Train`], holding a [`TrainOp`] (defined in [`crate::train`]):
//! code that never sees a training graph handles them in one arm, and code that does matches
//! `TrainOp` exhaustively in turn.

pub use crate::train::TrainOp;

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

/// Local response normalisation across channels:
/// `x / (k + a * sum(x^2 over size neighbouring channels))^beta`, where `a` is `alpha / size`
/// in PyTorch's and Caffe's convention (`alpha_over_size`, the default) and `alpha` itself in
/// the AlexNet paper's (Krizhevsky et al. 2012; also TensorFlow's).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Lrn {
    pub size: usize,
    pub alpha: f64,
    pub beta: f64,
    pub k: f64,
    /// Whether `alpha` is divided by `size` (PyTorch, Caffe) or used as given (the paper).
    pub alpha_over_size: bool,
}

impl Lrn {
    /// The factor of the sum of squares: `alpha / size` or `alpha`.
    pub fn sum_factor(&self) -> f64 {
        if self.alpha_over_size { self.alpha / self.size as f64 } else { self.alpha }
    }
}

/// A matrix product, what the optimiser turns 1x1 convolutions (stride 1, no padding, one
/// group) and fc layers into so that back ends need one fast GEMM for both: on a `[C, H, W]`
/// map, `y[o, p] = b[o] + sum_c w[o, c] x[c, p]` at every pixel `p`; on a `[F]` vector,
/// `y[o] = b[o] + sum_f w[o, f] x[f]`. The weight keeps its source layer's shape (`[out, C, 1, 1]`
/// on maps, `[out, F]` on vectors) and name; its bytes are the row-major `[out, in]` matrix.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Gemm {
    pub out: usize,
    pub bias: bool,
}

/// The computation a fused node starts from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FusedBase {
    Conv(Conv),
    Gemm(Gemm),
}

/// What a fused node does to its base's result (bias included) before storing it: add its
/// last operand (a residual shortcut of the output's shape), then apply an activation.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Epilogue {
    pub residual: bool,
    pub activation: Option<Activation>,
}

/// A physical layout of a `[C, H, W]` activation (batch first): plain `nchw`, or channels
/// blocked by 16 (`nChw16c`: `[N, C/16, H, W, 16]`). Shapes in the IR stay logical; a node's
/// layout is derived (see [`crate::layout`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Layout {
    Plain,
    Blocked16,
}

impl Layout {
    pub fn name(self) -> &'static str {
        match self {
            Layout::Plain => "nchw",
            Layout::Blocked16 => "nChw16c",
        }
    }
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
    /// A matrix product (made by the optimiser from 1x1 convolutions and fc layers).
    Gemm(Gemm),
    /// A convolution or matrix product with its epilogue (made by the optimiser). Operands:
    /// the base's input, then the residual shortcut when `epilogue.residual`.
    Fused {
        base: FusedBase,
        epilogue: Epilogue,
    },
    /// Converts its operand to another physical layout; the logical value is unchanged.
    Reorder(Layout),
    /// A concatenation whose operands were written straight into their channel slices of its
    /// buffer: it moves no data. Each operand is read by this node only, once, and is neither
    /// a model input nor a model output (checked by the verifier).
    ConcatInPlace,
    /// An op of a training graph: the loss, a backward op, an optimiser update, or the
    /// training form of batch norm and dropout (see [`crate::train`]). Made by the training
    /// transform, never written in a source.
    Train(TrainOp),
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
            Op::Gemm(_) => "gemm",
            Op::Fused { base: FusedBase::Conv(_), .. } => "fused_conv",
            Op::Fused { base: FusedBase::Gemm(_), .. } => "fused_gemm",
            Op::Reorder(_) => "reorder",
            Op::ConcatInPlace => "concat_in_place",
            Op::Train(op) => op.keyword(),
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
