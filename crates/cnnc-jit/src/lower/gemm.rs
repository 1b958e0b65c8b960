//! Matrix products (`gemm` on maps and vectors, `fc`), forward and backward, as the 1x1
//! convolutions they are (`conv.rs`), over the same weight (`[O, C, 1, 1]` or `[O, F]`, its
//! bytes the row-major `[O, I]` matrix or a packed `OI16i16o`).

use super::Lx;
use super::conv::{self, Geo, unit_conv};
use crate::error::JitError;
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
    let g = Geo::new(&unit_conv(gemm.out, gemm.bias), &gx, &gy);
    conv::general_backward_data(lx, &g, gy, gx, None, (w, &wp), None)
}

/// `dW = sum_n gy x^T`, in the weight's layout.
pub(crate) fn backward_weight(lx: &mut Lx, id: NodeId, gemm: &Gemm) -> Result<(), JitError> {
    conv::backward_weight(lx, id, &unit_conv(gemm.out, gemm.bias))
}
