//! Backward fusion (training graphs): the derivative of an activation taken from its output
//! (a ReLU's mask `y > 0`, a sigmoid's `y (1 - y)`, a tanh's `1 - y^2`) folds into the
//! convolution backward-data op that computes its incoming gradient.
//!
//! A ReLU before a convolution, `y = relu(z); conv(y)`, has in the backward pass
//! `dy = conv_backward_data(g)` followed by `dz = dy * (y > 0)`. When `dy` is read by that
//! activation backward alone (and is not an output), both become one
//! `conv_backward_data {mask: relu}` of `(g, y)`: the kernel multiplies by the mask while the
//! result is still in registers, and `dy` is never stored. The fused node keeps the
//! convolution's name and lists the activation as absorbed.

use crate::error::PassError;
use crate::rewrite::{Ctx, Rebuild};
use cnnc_ir::{Graph, NodeId, Op, SavedSide, TrainOp};

/// Fuses every such pair; returns how many.
pub fn run(cx: &mut Ctx) -> Result<usize, PassError> {
    let graph = &cx.graph;
    let pairs = find_pairs(graph);
    if pairs.is_empty() {
        return Ok(0);
    }
    // By backward-data node: the activation backward it absorbs.
    let mut absorbs: Vec<Option<NodeId>> = vec![None; graph.len()];
    let mut absorbed = vec![false; graph.len()];
    for &(data, act) in &pairs {
        absorbs[data.index()] = Some(act);
        absorbed[act.index()] = true;
    }
    let mut b = Rebuild::new("fuse-backward", graph, &cx.origins);
    for (id, node) in graph.iter() {
        if let Some(act) = absorbs[id.index()] {
            let Op::Train(TrainOp::ConvBackwardData { conv, input, mask: None }) = node.op else {
                unreachable!("find_pairs pairs backward-data nodes only")
            };
            let Op::Train(TrainOp::ActivationBackward { activation, .. }) = graph[act].op else {
                unreachable!("find_pairs pairs activation backward nodes only")
            };
            let op = Op::Train(TrainOp::ConvBackwardData { conv, input, mask: Some(activation) });
            let operands = [node.inputs[0], graph[act].inputs[0]];
            b.emit(id, op, &operands, &[act])?;
            b.forward(act, id);
        } else if !absorbed[id.index()] {
            b.copy(id)?;
        }
    }
    let rebuilt = b.finish()?;
    cx.install(rebuilt);
    Ok(pairs.len())
}

/// `(conv_backward_data, activation_backward)` pairs that fuse.
fn find_pairs(graph: &Graph) -> Vec<(NodeId, NodeId)> {
    let users = graph.users();
    let mut is_output = vec![false; graph.len()];
    for o in &graph.outputs {
        is_output[o.index()] = true;
    }
    let mut pairs = Vec::new();
    for (id, node) in graph.iter() {
        let Op::Train(TrainOp::ActivationBackward { from: SavedSide::Output, .. }) = node.op else { continue };
        let (saved, gradient) = (node.inputs[0], node.inputs[1]);
        let fusable = matches!(graph[gradient].op, Op::Train(TrainOp::ConvBackwardData { mask: None, .. }))
            && users[gradient.index()] == [id]
            && !is_output[gradient.index()]
            // The fused node takes the activation's output where the backward-data node is:
            // it must exist by then (it is a forward value, so it always does).
            && saved < gradient;
        if fusable {
            pairs.push((gradient, id));
        }
    }
    pairs
}
