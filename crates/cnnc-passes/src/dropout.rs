//! Dropout removal: inverted dropout is the identity at inference, so every use of a dropout
//! node becomes a use of its operand. Inference only (in training the mask is random).

use crate::error::PassError;
use crate::rewrite::{Ctx, Rebuild};
use cnnc_ir::Op;

/// Removes every dropout node; returns how many.
pub fn run(cx: &mut Ctx) -> Result<usize, PassError> {
    let graph = &cx.graph;
    let mut b = Rebuild::new("remove-dropout", graph, &cx.origins);
    let mut removed = 0;
    for (id, node) in graph.iter() {
        if let Op::Dropout { .. } = node.op {
            b.forward(id, node.inputs[0]);
            removed += 1;
        } else {
            b.copy(id)?;
        }
    }
    let rebuilt = b.finish()?;
    cx.install(rebuilt);
    Ok(removed)
}
