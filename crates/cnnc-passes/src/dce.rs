//! Dead-node elimination: removes every node whose value reaches no model output.
//!
//! Model inputs stay even when unused (they are the model's signature). Every other pass
//! already removes what it orphans (the graph rebuilder prunes on finishing); this pass cleans
//! graphs that arrive with dead nodes (hand-built ones; lowering prunes its own).

use crate::error::PassError;
use crate::rewrite::{Ctx, live, prune};

/// Removes dead nodes; returns how many.
pub fn run(cx: &mut Ctx) -> Result<usize, PassError> {
    let dead = live(&cx.graph).iter().filter(|&&l| !l).count();
    if dead > 0 {
        let graph = std::mem::take(&mut cx.graph);
        let origins = std::mem::take(&mut cx.origins);
        cx.install(prune("dce", graph, origins)?);
    }
    Ok(dead)
}
