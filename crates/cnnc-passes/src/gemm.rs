//! GEMM lowering: 1x1 convolutions with stride 1, no padding and one group, and fc layers,
//! become `gemm` nodes (see [`cnnc_ir::Gemm`]), so back ends need one fast matrix product for
//! both. Weights are untouched: a `gemm` keeps its source layer's weight name and shape.
//! Fused convolutions of that shape become fused matrix products.

use crate::error::PassError;
use crate::rewrite::{Ctx, Rebuild};
use cnnc_ir::{Conv, FusedBase, Gemm, Op};

/// Lowers every eligible convolution and fc layer; returns how many.
pub fn run(cx: &mut Ctx) -> Result<usize, PassError> {
    let graph = &cx.graph;
    let mut b = Rebuild::new("to-gemm", graph, &cx.origins);
    let mut lowered = 0;
    for (id, node) in graph.iter() {
        let op = match &node.op {
            Op::Conv(conv) => as_gemm(conv).map(Op::Gemm),
            Op::Fc(fc) => Some(Op::Gemm(Gemm { out: fc.out_features, bias: fc.bias })),
            Op::Fused { base: FusedBase::Conv(conv), epilogue } => {
                as_gemm(conv).map(|gemm| Op::Fused { base: FusedBase::Gemm(gemm), epilogue: *epilogue })
            }
            Op::Fused { base: FusedBase::Gemm(_), .. }
            | Op::Input
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
            | Op::Gemm(_)
            | Op::Reorder(_)
            | Op::ConcatInPlace
            | Op::Train(_) => None,
        };
        match op {
            Some(op) => {
                b.emit(id, op, &node.inputs, &[])?;
                lowered += 1;
            }
            None => {
                b.copy(id)?;
            }
        }
    }
    let rebuilt = b.finish()?;
    cx.install(rebuilt);
    Ok(lowered)
}

/// The matrix product a convolution is, if it is one: kernel 1x1, stride 1, no padding, one
/// group (dilation and ceil mode do not matter for a 1x1 kernel without padding).
pub fn as_gemm(conv: &Conv) -> Option<Gemm> {
    let w = &conv.window;
    (w.kernel == [1, 1] && w.stride == [1, 1] && w.pad == [0, 0] && conv.groups == 1)
        .then_some(Gemm { out: conv.out_channels, bias: conv.bias })
}
