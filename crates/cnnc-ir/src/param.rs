//! The parameters and buffers each op owns, named as PyTorch's `state_dict` names them.

use crate::op::{FusedBase, Op, TrainOp};
use crate::shape::Shape;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ParamRole {
    /// Convolution or fc weight, batch-norm gamma, PReLU slope.
    Weight,
    /// Convolution or fc bias, batch-norm beta.
    Bias,
    /// Batch-norm running statistics: buffers, not trained by gradient descent.
    RunningMean,
    RunningVar,
    /// An optimiser's per-parameter state (momentum, Adam's moments), owned by the parameter's
    /// update op in a training graph; zero before the first step.
    OptimizerState,
}

/// One tensor a layer owns: its full name is `<layer name>.<suffix>`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParamSpec {
    pub suffix: &'static str,
    pub dims: Vec<usize>,
    pub role: ParamRole,
}

impl ParamSpec {
    pub fn trainable(&self) -> bool {
        match self.role {
            ParamRole::Weight | ParamRole::Bias => true,
            ParamRole::RunningMean | ParamRole::RunningVar | ParamRole::OptimizerState => false,
        }
    }

    pub fn elements(&self) -> usize {
        self.dims.iter().product()
    }
}

/// The tensors `op` owns when applied to inputs of the given shapes (already shape-checked).
pub fn params(op: &Op, inputs: &[&Shape]) -> Vec<ParamSpec> {
    let spec = |suffix, dims, role| ParamSpec { suffix, dims, role };
    match op {
        Op::Fused { base: FusedBase::Conv(conv), .. } => params(&Op::Conv(*conv), inputs),
        Op::Fused { base: FusedBase::Gemm(gemm), .. } => params(&Op::Gemm(*gemm), inputs),
        Op::Gemm(gemm) => {
            // The source layer's shape: a 1x1 convolution's OIHW, or an fc layer's [out, in].
            let dims = match inputs[0].0[..] {
                [c, _, _] => vec![gemm.out, c, 1, 1],
                _ => vec![gemm.out, inputs[0].0[0]],
            };
            let mut out = vec![spec("weight", dims, ParamRole::Weight)];
            if gemm.bias {
                out.push(spec("bias", vec![gemm.out], ParamRole::Bias));
            }
            out
        }
        Op::Conv(conv) => {
            let [kh, kw] = conv.window.kernel;
            let per_group = inputs[0].channels() / conv.groups;
            let mut out = vec![spec("weight", vec![conv.out_channels, per_group, kh, kw], ParamRole::Weight)];
            if conv.bias {
                out.push(spec("bias", vec![conv.out_channels], ParamRole::Bias));
            }
            out
        }
        Op::Fc(fc) => {
            let mut out = vec![spec("weight", vec![fc.out_features, inputs[0].0[0]], ParamRole::Weight)];
            if fc.bias {
                out.push(spec("bias", vec![fc.out_features], ParamRole::Bias));
            }
            out
        }
        Op::BatchNorm(_) | Op::Train(TrainOp::BnNormalize(_)) => {
            let c = inputs[0].channels();
            vec![
                spec("weight", vec![c], ParamRole::Weight),
                spec("bias", vec![c], ParamRole::Bias),
                spec("running_mean", vec![c], ParamRole::RunningMean),
                spec("running_var", vec![c], ParamRole::RunningVar),
            ]
        }
        Op::Prelu => vec![spec("weight", vec![inputs[0].channels()], ParamRole::Weight)],
        Op::Train(TrainOp::Update(optimizer)) => optimizer
            .state()
            .iter()
            .map(|&suffix| spec(suffix, inputs[0].0.clone(), ParamRole::OptimizerState))
            .collect(),
        Op::Train(
            TrainOp::Labels { .. }
            | TrainOp::Loss(_)
            | TrainOp::LossGrad(_)
            | TrainOp::BnStats
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
            | TrainOp::Reshape(_)
            | TrainOp::Slice { .. },
        ) => Vec::new(),
        Op::Input
        | Op::Pool { .. }
        | Op::GlobalPool(_)
        | Op::AdaptivePool { .. }
        | Op::Spp { .. }
        | Op::Flatten
        | Op::Activation(_)
        | Op::Softmax
        | Op::Lrn(_)
        | Op::Dropout { .. }
        | Op::Concat
        | Op::Add
        | Op::Reorder(_)
        | Op::ConcatInPlace => Vec::new(),
    }
}
