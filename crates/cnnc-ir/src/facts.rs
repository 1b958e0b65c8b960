//! Per-op facts that several phases need, in one place: what kind of value an op produces,
//! which operands it reads elementwise (so that it may write over them), which ops are views,
//! what the backward pass of each forward op reads, and which parameters an op reads without
//! owning them. The passes, the memory planner, the training transform and every back end ask
//! here instead of keeping their own tables.

use crate::op::{Activation, FusedBase, Op, PoolKind};
use crate::train::{Optimizer, TrainOp};

/// What an op's node holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ValueKind {
    /// One value per sample: `[N] ++ shape`.
    Batched,
    /// One value for the whole batch (parameter gradients, batch statistics, the loss).
    WholeBatch,
    /// No value: the op updates parameters or state in place.
    Effect,
}

pub fn value_kind(op: &Op) -> ValueKind {
    match op {
        Op::Train(t) => match t {
            TrainOp::Loss(_)
            | TrainOp::BnStats
            | TrainOp::ConvBackwardWeight(_)
            | TrainOp::GemmBackwardWeight(_)
            | TrainOp::BiasGrad
            | TrainOp::PreluBackwardWeight
            | TrainOp::BnGammaGrad { .. } => ValueKind::WholeBatch,
            TrainOp::BnRunningUpdate { .. } | TrainOp::Update(_) => ValueKind::Effect,
            TrainOp::Labels { .. }
            | TrainOp::LossGrad(_)
            | TrainOp::BnNormalize(_)
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
            | TrainOp::Slice { .. } => ValueKind::Batched,
        },
        Op::Input
        | Op::Conv(_)
        | Op::Pool { .. }
        | Op::GlobalPool(_)
        | Op::AdaptivePool { .. }
        | Op::Spp { .. }
        | Op::Fc(_)
        | Op::Flatten
        | Op::Activation(_)
        | Op::Prelu
        | Op::Softmax
        | Op::BatchNorm(_)
        | Op::Lrn(_)
        | Op::Dropout { .. }
        | Op::Concat
        | Op::Add
        | Op::Gemm(_)
        | Op::Fused { .. }
        | Op::Reorder(_)
        | Op::ConcatInPlace => ValueKind::Batched,
    }
}

/// Model inputs: data (`input`) and class labels (`labels`). Their values are the caller's.
pub fn is_source(op: &Op) -> bool {
    matches!(op, Op::Input | Op::Train(TrainOp::Labels { .. }))
}

/// Activations whose derivative is a function of their output alone (`y > 0`, `y (1 - y)`,
/// `1 - y^2`): their backward reads the output, so the operand need not be kept, and they may
/// fuse into a producer in training (the pre-activation value is never stored).
pub fn backward_from_output(a: &Activation) -> bool {
    match a {
        Activation::Relu | Activation::Sigmoid | Activation::Tanh => true,
        Activation::LeakyRelu { .. }
        | Activation::Elu { .. }
        | Activation::Selu
        | Activation::HardTanh { .. }
        | Activation::Softsign
        | Activation::Softplus { .. } => false,
    }
}

/// The operand positions an op reads elementwise: it reads each element of such an operand
/// only to compute the same element of its output, so it may write its output over that
/// operand once nothing else needs it.
pub fn elementwise_operands(op: &Op, arity: usize) -> Vec<usize> {
    match op {
        Op::Activation(_) | Op::Prelu | Op::BatchNorm(_) | Op::Dropout { .. } => vec![0],
        Op::Add => (0..arity).collect(),
        // Only the residual: the base reads a neighbourhood (or every channel) of its operand.
        Op::Fused { epilogue, .. } if epilogue.residual => vec![1],
        Op::Train(t) => match t {
            TrainOp::Mul | TrainOp::ActivationBackward { .. } | TrainOp::PreluBackwardData => vec![0, 1],
            TrainOp::BnNormalize(_) => vec![0],
            // Mean and variance are per channel and computed before the elementwise pass.
            TrainOp::BnBackwardData { batch_stats: true, .. } => vec![0, 2],
            TrainOp::BnBackwardData { batch_stats: false, .. } => vec![0],
            TrainOp::LossGrad(loss) if !loss.takes_labels() => vec![0, 1],
            // The mask multiplies the result elementwise after the whole reduction.
            TrainOp::ConvBackwardData { mask: Some(_), .. } => Vec::new(),
            TrainOp::Labels { .. }
            | TrainOp::Loss(_)
            | TrainOp::LossGrad(_)
            | TrainOp::BnStats
            | TrainOp::BnRunningUpdate { .. }
            | TrainOp::DropoutMask { .. }
            | TrainOp::PoolArgmax(_)
            | TrainOp::PoolBackward { .. }
            | TrainOp::ConvBackwardData { .. }
            | TrainOp::ConvBackwardWeight(_)
            | TrainOp::GemmBackwardData { .. }
            | TrainOp::GemmBackwardWeight(_)
            | TrainOp::BiasGrad
            | TrainOp::PreluBackwardWeight
            | TrainOp::SoftmaxBackward
            | TrainOp::BnGammaGrad { .. }
            | TrainOp::LrnBackward(_)
            | TrainOp::Reshape(_)
            | TrainOp::Slice { .. }
            | TrainOp::Update(_) => Vec::new(),
        },
        Op::Fused { .. }
        | Op::Gemm(_)
        | Op::Reorder(_)
        | Op::ConcatInPlace
        | Op::Input
        | Op::Conv(_)
        | Op::Pool { .. }
        | Op::GlobalPool(_)
        | Op::AdaptivePool { .. }
        | Op::Spp { .. }
        | Op::Fc(_)
        | Op::Flatten
        | Op::Softmax
        | Op::Lrn(_)
        | Op::Concat => Vec::new(),
    }
}

/// The operand positions where an op reads a whole-batch value (batch-norm statistics, an
/// update's gradient); every other operand is batched.
pub fn whole_batch_operands(op: &Op) -> &'static [usize] {
    match op {
        Op::Train(t) => match t {
            TrainOp::BnNormalize(_)
            | TrainOp::BnBackwardData { batch_stats: true, .. }
            | TrainOp::BnGammaGrad { batch_stats: true, .. } => &[1],
            TrainOp::BnRunningUpdate { .. } | TrainOp::Update(_) => &[0],
            TrainOp::Labels { .. }
            | TrainOp::Loss(_)
            | TrainOp::LossGrad(_)
            | TrainOp::BnStats
            | TrainOp::DropoutMask { .. }
            | TrainOp::Mul
            | TrainOp::PoolArgmax(_)
            | TrainOp::PoolBackward { .. }
            | TrainOp::ConvBackwardData { .. }
            | TrainOp::ConvBackwardWeight(_)
            | TrainOp::GemmBackwardData { .. }
            | TrainOp::GemmBackwardWeight(_)
            | TrainOp::BiasGrad
            | TrainOp::ActivationBackward { .. }
            | TrainOp::PreluBackwardData
            | TrainOp::PreluBackwardWeight
            | TrainOp::SoftmaxBackward
            | TrainOp::BnBackwardData { batch_stats: false, .. }
            | TrainOp::BnGammaGrad { batch_stats: false, .. }
            | TrainOp::LrnBackward(_)
            | TrainOp::Reshape(_)
            | TrainOp::Slice { .. } => &[],
        },
        Op::Input
        | Op::Conv(_)
        | Op::Pool { .. }
        | Op::GlobalPool(_)
        | Op::AdaptivePool { .. }
        | Op::Spp { .. }
        | Op::Fc(_)
        | Op::Flatten
        | Op::Activation(_)
        | Op::Prelu
        | Op::Softmax
        | Op::BatchNorm(_)
        | Op::Lrn(_)
        | Op::Dropout { .. }
        | Op::Concat
        | Op::Add
        | Op::Gemm(_)
        | Op::Fused { .. }
        | Op::Reorder(_)
        | Op::ConcatInPlace => &[],
    }
}

/// Ops whose value is (part of) their operand's bytes, read-only: no data moves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum View {
    /// The same bytes in another shape (flatten, reshape).
    Whole,
    /// Channels from `start` on: per image, a contiguous run of the operand's bytes.
    Channels { start: usize },
}

pub fn view(op: &Op) -> Option<View> {
    match op {
        Op::Flatten => Some(View::Whole),
        Op::Train(t) => match t {
            TrainOp::Reshape(_) => Some(View::Whole),
            TrainOp::Slice { start, .. } => Some(View::Channels { start: *start }),
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
            | TrainOp::ConvBackwardWeight(_)
            | TrainOp::GemmBackwardData { .. }
            | TrainOp::GemmBackwardWeight(_)
            | TrainOp::BiasGrad
            | TrainOp::ActivationBackward { .. }
            | TrainOp::PreluBackwardData
            | TrainOp::PreluBackwardWeight
            | TrainOp::SoftmaxBackward
            | TrainOp::BnBackwardData { .. }
            | TrainOp::BnGammaGrad { .. }
            | TrainOp::LrnBackward(_)
            | TrainOp::Update(_) => None,
        },
        Op::Input
        | Op::Conv(_)
        | Op::Pool { .. }
        | Op::GlobalPool(_)
        | Op::AdaptivePool { .. }
        | Op::Spp { .. }
        | Op::Fc(_)
        | Op::Activation(_)
        | Op::Prelu
        | Op::Softmax
        | Op::BatchNorm(_)
        | Op::Lrn(_)
        | Op::Dropout { .. }
        | Op::Concat
        | Op::Add
        | Op::Gemm(_)
        | Op::Fused { .. }
        | Op::Reorder(_)
        | Op::ConcatInPlace => None,
    }
}

/// What the backward pass of a forward op reads besides its output's gradient and the layer's
/// parameters: the operand, the output, or a value the forward pass of training computes for
/// it (max pooling's argmax, batch norm's statistics, dropout's mask). The training transform
/// wires these; the memory planner sees them as ordinary reads.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Saved {
    pub operand: bool,
    pub output: bool,
    pub argmax: bool,
    pub stats: bool,
    pub mask: bool,
}

/// See [`Saved`]; `batch_stats` says whether batch norm runs on batch statistics (training)
/// or the running ones. `None` for ops that have no backward (the ops of training graphs).
pub fn saved_for_backward(op: &Op, batch_stats: bool) -> Option<Saved> {
    let none = Saved::default();
    let operand = Saved { operand: true, ..none };
    let output = Saved { output: true, ..none };
    let pool = |kind: &PoolKind| match kind {
        PoolKind::Max => Saved { argmax: true, ..none },
        PoolKind::Avg { .. } => none,
        PoolKind::L2 => Saved { operand: true, output: true, ..none },
    };
    Some(match op {
        Op::Input | Op::Flatten | Op::Concat | Op::Add | Op::Reorder(_) | Op::ConcatInPlace => none,
        Op::Conv(_) | Op::Fc(_) | Op::Gemm(_) | Op::Prelu | Op::Lrn(_) => operand,
        Op::Fused { epilogue, .. } => Saved { operand: true, output: epilogue.activation.is_some(), ..none },
        Op::Pool { kind, .. } | Op::GlobalPool(kind) | Op::AdaptivePool { kind, .. } | Op::Spp { kind, .. } => {
            pool(kind)
        }
        Op::Activation(a) => {
            if backward_from_output(a) {
                output
            } else {
                operand
            }
        }
        Op::Softmax => output,
        Op::BatchNorm(_) => Saved { operand: true, stats: batch_stats, ..none },
        Op::Dropout { .. } => Saved { mask: batch_stats, ..none },
        Op::Train(_) => return None,
    })
}

/// The parameters (and buffers) an op reads or writes without owning them, as suffixes of
/// its node's name (`""` is the node's name itself: an optimiser update's parameter).
pub fn param_reads(op: &Op) -> &'static [&'static str] {
    match op {
        Op::Train(t) => match t {
            TrainOp::ConvBackwardData { .. }
            | TrainOp::GemmBackwardData { .. }
            | TrainOp::PreluBackwardData
            | TrainOp::BnBackwardData { batch_stats: true, .. } => &["weight"],
            TrainOp::BnBackwardData { batch_stats: false, .. } => &["weight", "running_var"],
            TrainOp::BnGammaGrad { batch_stats: false, .. } => &["running_mean", "running_var"],
            TrainOp::BnRunningUpdate { .. } => &["running_mean", "running_var"],
            TrainOp::Update(_) => &[""],
            TrainOp::Labels { .. }
            | TrainOp::Loss(_)
            | TrainOp::LossGrad(_)
            | TrainOp::BnStats
            | TrainOp::BnNormalize(_)
            | TrainOp::DropoutMask { .. }
            | TrainOp::Mul
            | TrainOp::PoolArgmax(_)
            | TrainOp::PoolBackward { .. }
            | TrainOp::ConvBackwardWeight(_)
            | TrainOp::GemmBackwardWeight(_)
            | TrainOp::BiasGrad
            | TrainOp::ActivationBackward { .. }
            | TrainOp::PreluBackwardWeight
            | TrainOp::SoftmaxBackward
            | TrainOp::BnGammaGrad { batch_stats: true, .. }
            | TrainOp::LrnBackward(_)
            | TrainOp::Reshape(_)
            | TrainOp::Slice { .. } => &[],
        },
        Op::Input
        | Op::Conv(_)
        | Op::Pool { .. }
        | Op::GlobalPool(_)
        | Op::AdaptivePool { .. }
        | Op::Spp { .. }
        | Op::Fc(_)
        | Op::Flatten
        | Op::Activation(_)
        | Op::Prelu
        | Op::Softmax
        | Op::BatchNorm(_)
        | Op::Lrn(_)
        | Op::Dropout { .. }
        | Op::Concat
        | Op::Add
        | Op::Gemm(_)
        | Op::Fused { .. }
        | Op::Reorder(_)
        | Op::ConcatInPlace => &[],
    }
}

/// The full name of a parameter an op reads: `<node name>.<suffix>`, or the node's name for
/// the empty suffix.
pub fn param_name(node_name: &str, suffix: &str) -> String {
    if suffix.is_empty() { node_name.to_string() } else { format!("{node_name}.{suffix}") }
}

/// Whether the op computes a convolution or a matrix product (the layers that own weights
/// in the kernels' packed layouts, and that gain from blocked activations).
pub fn computes_products(op: &Op) -> bool {
    match op {
        Op::Conv(_) | Op::Fc(_) | Op::Gemm(_) | Op::Fused { .. } => true,
        Op::Train(t) => matches!(
            t,
            TrainOp::ConvBackwardData { .. }
                | TrainOp::ConvBackwardWeight(_)
                | TrainOp::GemmBackwardData { .. }
                | TrainOp::GemmBackwardWeight(_)
        ),
        Op::Input
        | Op::Pool { .. }
        | Op::GlobalPool(_)
        | Op::AdaptivePool { .. }
        | Op::Spp { .. }
        | Op::Flatten
        | Op::Activation(_)
        | Op::Prelu
        | Op::Softmax
        | Op::BatchNorm(_)
        | Op::Lrn(_)
        | Op::Dropout { .. }
        | Op::Concat
        | Op::Add
        | Op::Reorder(_)
        | Op::ConcatInPlace => false,
    }
}

/// The base of a fused node as the plain op it extends.
pub fn fused_base_op(base: &FusedBase) -> Op {
    match base {
        FusedBase::Conv(conv) => Op::Conv(*conv),
        FusedBase::Gemm(gemm) => Op::Gemm(*gemm),
    }
}

/// The optimiser of an update op.
pub fn optimizer(op: &Op) -> Option<&Optimizer> {
    if let Op::Train(TrainOp::Update(o)) = op { Some(o) } else { None }
}
