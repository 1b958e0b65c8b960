//! Matrix products (`gemm` on maps and vectors, `fc`), forward and backward, as the 1x1
//! convolutions they are (`conv.rs`), over the same weight (`[O, C, 1, 1]` or `[O, F]`, its
//! bytes the row-major `[O, I]` matrix or a packed `OI16i16o`); on vectors, native mode calls
//! the fully connected kernels.

use super::conv::{self, Geo, unit_conv};
use super::{ConvPass, Lowering, Lx};
use crate::error::JitError;
use crate::options::Mode;
use cnnc_ir::{Activation, Gemm, NodeId};

pub(crate) fn forward(
    lx: &mut Lx,
    id: NodeId,
    gemm: &Gemm,
    act: Option<Activation>,
    residual: bool,
) -> Result<(), JitError> {
    conv::forward(lx, id, &unit_conv(gemm.out, gemm.bias), act, residual)
}

/// `dx = W^T gy`.
pub(crate) fn backward_data(lx: &mut Lx, id: NodeId, gemm: &Gemm) -> Result<(), JitError> {
    let node = &lx.plan.graph[id];
    let gy = lx.val(node.inputs[0])?;
    let gx = lx.val(id)?;
    let (w, wp) = lx.param(id, "weight")?;
    if lx.mode == Mode::Native && super::native_bwd::fc_backward_data(lx, gy, gx, (w, &wp))? {
        lx.lowered(ConvPass::BackwardData, Lowering::Kernels);
        return Ok(());
    }
    let g = Geo::new(&unit_conv(gemm.out, gemm.bias), &gx, &gy);
    conv::data_grad(lx, &g, gy, gx, None, (w, &wp), None)
}

/// `dW = sum_n gy x^T`, in the weight's layout.
pub(crate) fn backward_weight(lx: &mut Lx, id: NodeId, gemm: &Gemm) -> Result<(), JitError> {
    if lx.mode == Mode::Native {
        let node = &lx.plan.graph[id];
        let (x, gy, gw) = (lx.val(node.inputs[0])?, lx.val(node.inputs[1])?, lx.val(id)?);
        let (_, wp) = lx.param(id, "weight")?;
        if super::native_bwd::fc_backward_weights(lx, x, gy, gw, &wp)? {
            lx.lowered(ConvPass::BackwardWeights, Lowering::Kernels);
            return Ok(());
        }
    }
    conv::backward_weight(lx, id, &unit_conv(gemm.out, gemm.bias))
}
