//! One function body per node of a plan, by op family: each family is one module with one
//! `quote!` fragment per kernel it calls. [`body`] is the exhaustive dispatch over `Op` and
//! `TrainOp` (no catch-all arm: a new op is a compile error here).

mod backward;
mod conv;
mod eltwise;
mod loss;
mod norm;
mod pool;
mod update;

use crate::context::Gen;
use crate::error::CodegenError;
use cnnc_ir::{Activation, Epilogue, Fc, FusedBase, Gemm, NodeId, Op, PoolGeometry, TrainOp};
use cnnc_kernels::act::{Act, ActKind};
use proc_macro2::TokenStream;

/// The statements of node `id`'s function (ending in `Ok(())`), or `None` when the node moves
/// no data (inputs, views, in-place concatenations, values the plan already put in place).
pub fn body(g: &mut Gen<'_>, id: NodeId) -> Result<Option<TokenStream>, CodegenError> {
    g.begin_node();
    let node = &g.graph()[id];
    let none = Epilogue { residual: false, activation: None };
    match &node.op {
        Op::Input => Ok(None),
        Op::Conv(conv) => conv::forward(g, id, FusedBase::Conv(*conv), none),
        Op::Fused { base, epilogue } => conv::forward(g, id, *base, *epilogue),
        Op::Gemm(gemm) => conv::forward(g, id, FusedBase::Gemm(*gemm), none),
        Op::Fc(Fc { out_features, bias }) => {
            conv::forward(g, id, FusedBase::Gemm(Gemm { out: *out_features, bias: *bias }), none)
        }
        Op::Pool { kind, window } => pool::forward(g, id, *kind, &PoolGeometry::Window(*window)),
        Op::GlobalPool(kind) => pool::forward(g, id, *kind, &PoolGeometry::Global),
        Op::AdaptivePool { kind, output } => pool::forward(g, id, *kind, &PoolGeometry::Adaptive(*output)),
        Op::Spp { kind, levels } => pool::forward(g, id, *kind, &PoolGeometry::Pyramid(levels.clone())),
        Op::Activation(a) => eltwise::activation(g, id, *a),
        Op::Prelu => eltwise::prelu(g, id),
        Op::Softmax => eltwise::softmax(g, id),
        Op::BatchNorm(bn) => norm::batch_norm(g, id, bn),
        Op::Lrn(lrn) => norm::lrn(g, id, lrn),
        // Identity at inference; flatten keeps the bytes of a plain map.
        Op::Dropout { .. } | Op::Flatten => eltwise::copy(g, id),
        Op::Concat => eltwise::concat(g, id),
        Op::ConcatInPlace => Ok(None),
        Op::Add => eltwise::add(g, id),
        Op::Reorder(_) => eltwise::reorder(g, id),
        Op::Train(t) => match t {
            TrainOp::Labels { .. } => Ok(None),
            TrainOp::Loss(l) => loss::loss(g, id, l, false),
            TrainOp::LossGrad(l) => loss::loss(g, id, l, true),
            TrainOp::BnStats => norm::stats(g, id),
            TrainOp::BnNormalize(bn) => norm::normalize(g, id, bn),
            TrainOp::BnRunningUpdate { bn, spatial } => norm::running_update(g, id, bn, *spatial),
            TrainOp::DropoutMask { p } => eltwise::dropout_mask(g, id, *p),
            TrainOp::Mul => eltwise::mul(g, id),
            TrainOp::PoolArgmax(geometry) => pool::argmax(g, id, geometry),
            TrainOp::PoolBackward { kind, geometry, input } => pool::backward(g, id, *kind, geometry, input),
            TrainOp::ConvBackwardData { conv, input, mask } => backward::conv_data(g, id, conv, input, *mask),
            TrainOp::ConvBackwardWeight(conv) => backward::conv_weight(g, id, conv),
            TrainOp::GemmBackwardData { gemm, input } => backward::gemm_data(g, id, gemm, *input),
            TrainOp::GemmBackwardWeight(gemm) => backward::gemm_weight(g, id, gemm),
            TrainOp::BiasGrad => backward::bias_grad(g, id),
            TrainOp::ActivationBackward { activation, from } => eltwise::activation_backward(g, id, *activation, *from),
            TrainOp::PreluBackwardData => eltwise::prelu_backward(g, id, false),
            TrainOp::PreluBackwardWeight => eltwise::prelu_backward(g, id, true),
            TrainOp::SoftmaxBackward => eltwise::softmax_backward(g, id),
            TrainOp::BnBackwardData { bn, batch_stats } => norm::backward(g, id, bn, *batch_stats, false),
            TrainOp::BnGammaGrad { bn, batch_stats } => norm::backward(g, id, bn, *batch_stats, true),
            TrainOp::LrnBackward(lrn) => norm::lrn_backward(g, id, lrn),
            TrainOp::Reshape(_) | TrainOp::Slice { .. } => eltwise::copy(g, id),
            TrainOp::Update(optimizer) => update::update(g, id, optimizer),
        },
    }
}

/// The kernels' descriptor of an activation (none: the identity).
pub fn act(a: Option<Activation>) -> Act {
    match a {
        None => Act::NONE,
        Some(Activation::Relu) => Act::RELU,
        Some(Activation::LeakyRelu { slope }) => Act::leaky_relu(slope as f32),
        Some(Activation::Elu { alpha }) => Act::elu(alpha as f32),
        Some(Activation::Selu) => Act::new(ActKind::Selu),
        Some(Activation::Sigmoid) => Act::new(ActKind::Sigmoid),
        Some(Activation::Tanh) => Act::new(ActKind::Tanh),
        Some(Activation::HardTanh { min, max }) => Act::hardtanh(min as f32, max as f32),
        Some(Activation::Softsign) => Act::new(ActKind::Softsign),
        Some(Activation::Softplus { beta, threshold }) => Act::softplus(beta as f32, threshold as f32),
    }
}

/// `.map_err(|e| Error::kernel(LAYER, e))?`: every kernel call's error names its layer.
pub fn check() -> TokenStream {
    quote::quote!(.map_err(|e| Error::kernel(LAYER, e))?)
}
