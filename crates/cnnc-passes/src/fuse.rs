//! Epilogue fusion: a convolution or matrix product absorbs what follows it along a
//! single-user chain: first a residual `add` (the other operand becomes the fused node's
//! residual input), then an activation. ResNet's `conv -> bn -> add(., shortcut) -> relu`
//! is one `fused_conv` after BN folding; `conv -> relu` and `fc -> relu` are one node each.
//!
//! A link of the chain is absorbed only when the value before it is read by that node alone
//! and is not a model output (otherwise it must still be stored). The `add` must have exactly
//! two operands, of equal shape by its shape rule; when both are fusable producers (ResNet's
//! projection blocks: branch and downsample), the first operand (the branch, as written
//! `add(residual, shortcut)`) absorbs it. An activation *before* the add (`relu(conv) + x`)
//! fuses into the conv and the add stays: the epilogue order is residual, then activation.
//!
//! Fc layers fuse as matrix products (`fused_gemm`), their weights unchanged. In training
//! only activations whose derivative is a function of their output fuse (relu, sigmoid,
//! tanh: see [`cnnc_ir::facts::backward_from_output`]), so the backward pass never
//! needs the pre-activation value, which is not stored.
//!
//! The fused node keeps the producer's name and parameters, takes the place of the last node
//! it absorbs (its operands all come earlier), and lists the absorbed layers.

use crate::error::PassError;
use crate::pipeline::Mode;
use crate::rewrite::{Ctx, Rebuild};
use cnnc_ir::facts::backward_from_output;
use cnnc_ir::{Activation, Epilogue, FusedBase, Gemm, Graph, NodeId, Op};
use std::collections::HashMap;

/// One fusion decision: the producer, what it absorbs, and the node it replaces.
struct Group {
    producer: NodeId,
    base: FusedBase,
    /// The add and the residual operand, if any.
    add: Option<(NodeId, NodeId)>,
    activation: Option<(NodeId, Activation)>,
    /// The last absorbed node: where the fused node goes.
    last: NodeId,
}

/// Fuses every chain it can; returns how many nodes were absorbed.
pub fn run(cx: &mut Ctx) -> Result<usize, PassError> {
    let graph = &cx.graph;
    let groups = find_groups(graph, cx.mode);
    let by_last: HashMap<NodeId, &Group> = groups.iter().map(|g| (g.last, g)).collect();
    let mut skipped: Vec<bool> = vec![false; graph.len()];
    for g in &groups {
        skipped[g.producer.index()] = true;
        if let Some((add, _)) = g.add {
            skipped[add.index()] = true;
        }
        if let Some((act, _)) = g.activation {
            skipped[act.index()] = true;
        }
    }
    let mut b = Rebuild::new("fuse-epilogue", graph, &cx.origins);
    let mut absorbed_count = 0;
    for (id, _) in graph.iter() {
        if let Some(g) = by_last.get(&id) {
            let mut inputs = vec![graph[g.producer].inputs[0]];
            let mut absorbed = Vec::new();
            if let Some((add, residual)) = g.add {
                inputs.push(residual);
                absorbed.push(add);
            }
            if let Some((act, _)) = g.activation {
                absorbed.push(act);
            }
            let epilogue = Epilogue { residual: g.add.is_some(), activation: g.activation.map(|(_, a)| a) };
            let new = b.emit(g.producer, Op::Fused { base: g.base, epilogue }, &inputs, &absorbed)?;
            for &a in &absorbed {
                b.forward(a, g.producer);
            }
            debug_assert_eq!(b.mapped(id), new);
            absorbed_count += absorbed.len();
        } else if !skipped[id.index()] {
            b.copy(id)?;
        }
    }
    let rebuilt = b.finish()?;
    cx.install(rebuilt);
    Ok(absorbed_count)
}

/// The base a producer fuses as, if it can absorb anything.
fn base_of(op: &Op) -> Option<FusedBase> {
    match op {
        Op::Conv(conv) => Some(FusedBase::Conv(*conv)),
        Op::Gemm(gemm) => Some(FusedBase::Gemm(*gemm)),
        Op::Fc(fc) => Some(FusedBase::Gemm(Gemm { out: fc.out_features, bias: fc.bias })),
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
        | Op::Fused { .. }
        | Op::Reorder(_)
        | Op::ConcatInPlace
        | Op::Train(_) => None,
    }
}

/// Side tables of the graph the pass reads: each node's readers, and whether it is an output.
struct Uses {
    users: Vec<Vec<NodeId>>,
    is_output: Vec<bool>,
}

impl Uses {
    /// The only reader of `id`, when `id` is not a model output.
    fn sole_user(&self, id: NodeId) -> Option<NodeId> {
        match self.users[id.index()][..] {
            [only] if !self.is_output[id.index()] => Some(only),
            _ => None,
        }
    }
}

fn find_groups(graph: &Graph, mode: Mode) -> Vec<Group> {
    let uses = Uses { users: graph.users(), is_output: graph.output_flags() };
    let mut taken = vec![false; graph.len()];
    let mut groups = Vec::new();
    for (id, node) in graph.iter() {
        let Some(base) = base_of(&node.op) else { continue };
        let mut head = id;
        let mut add = None;
        if let Some(next) = uses.sole_user(head) {
            let next_node = &graph[next];
            if next_node.op == Op::Add && next_node.inputs.len() == 2 && !taken[next.index()] {
                let other = if next_node.inputs[0] == id { next_node.inputs[1] } else { next_node.inputs[0] };
                // `add(x, x)` reads the producer twice; its value would be needed as the residual.
                // When both operands could fuse, the first one absorbs the add.
                let first_claims = next_node.inputs[0] != id
                    && base_of(&graph[other].op).is_some()
                    && uses.sole_user(other) == Some(next);
                if other != id && !first_claims {
                    add = Some((next, other));
                    head = next;
                }
            }
        }
        let mut activation = None;
        if let Some(next) = uses.sole_user(head)
            && let Op::Activation(a) = graph[next].op
            && (mode == Mode::Inference || backward_from_output(&a))
        {
            activation = Some((next, a));
            head = next;
        }
        if head == id {
            continue;
        }
        if let Some((a, _)) = add {
            taken[a.index()] = true;
        }
        groups.push(Group { producer: id, base, add, activation, last: head });
    }
    groups
}
