//! Layout selection: activations in channel-blocked `nChw16c` wherever the back ends' fast
//! kernels can use it, with a `reorder` at each edge between the blocked region and plain data.
//!
//! A node may be blocked when its op works in either layout ([`cnnc_ir::layout::LayoutRule`]
//! `Follows`: convolutions, matrix products on maps, pooling, elementwise ops, batch norm, LRN,
//! concat, add) and blocking pads its value and its operands by at most half (channels a
//! multiple of 16, or at least 24: GoogLeNet's 24-channel 5x5 reductions are stored as 32;
//! an RGB image's 3 channels are not stored as 16), and, for a concat, every operand is a
//! whole number of blocks. Such nodes form connected regions; a region is blocked only if it
//! holds a convolution or matrix product, the kernels that gain from blocking (an isolated
//! pooling or activation would only pay for two reorders). Then the region's edges move past
//! pooling and elementwise nodes where that makes the reorder smaller (`conv1 -> maxpool`:
//! the pooled map is reordered, a quarter of the size). Everything else stays plain: model
//! inputs and outputs, the first convolution of an RGB image, flatten, fc on vectors, softmax,
//! SPP. A reorder is inserted once per value and target layout, named `<producer>.to_<layout>`;
//! model outputs are reordered back to plain.
//!
//! Convolutions and matrix products reading blocked data use blocked weights
//! ([`weight_layout`]); the stored weights stay OIHW and the back end reorders them once when
//! it loads them. The pass removes any reorders already present first, so it is idempotent.

use crate::error::PassError;
use crate::rewrite::{Ctx, Rebuild};
use cnnc_ir::facts::{ValueKind, computes_products, value_kind};
use cnnc_ir::layout::{LayoutRule, WeightLayout, layouts, rule, stored_channels, stored_elements, weight_layout};
use cnnc_ir::{Graph, Layout, NodeId, Op, Shape, TrainOp};
use std::collections::HashMap;

/// Chooses layouts and inserts reorders; returns how many reorders the graph holds after.
pub fn run(cx: &mut Ctx) -> Result<usize, PassError> {
    strip_reorders(cx)?;
    let graph = &cx.graph;
    let blocked = blocked_nodes(graph);
    let mut b = Rebuild::new("layout", graph, &cx.origins);
    let mut layout_of: Vec<Layout> = Vec::new();
    let mut reorders: HashMap<(NodeId, Layout), NodeId> = HashMap::new();
    let mut reorder =
        |b: &mut Rebuild, layout_of: &mut Vec<Layout>, x: NodeId, to: Layout| -> Result<NodeId, PassError> {
            if layout_of[x.index()] == to {
                return Ok(x);
            }
            if let Some(&r) = reorders.get(&(x, to)) {
                return Ok(r);
            }
            let source = &b.new_graph()[x];
            let (name, span) = (format!("{}.to_{}", source.name, to.name()), source.span);
            let r = b.fresh(Op::Reorder(to), vec![x], name, span)?;
            layout_of.push(to);
            reorders.insert((x, to), r);
            Ok(r)
        };
    for (id, node) in graph.iter() {
        let own = if blocked[id.index()] { Layout::Blocked16 } else { Layout::Plain };
        let first = node.inputs.first().map(|&i| &graph[i].shape);
        let wanted = match rule(&node.op, first) {
            LayoutRule::Source | LayoutRule::Converts(_) => None,
            LayoutRule::Follows | LayoutRule::Reduces => Some(own),
            LayoutRule::PlainOnly => Some(Layout::Plain),
        };
        let mut inputs = Vec::with_capacity(node.inputs.len());
        for &x in &node.inputs {
            let batched = value_kind(&graph[x].op) == ValueKind::Batched;
            let x = b.mapped(x);
            inputs.push(match wanted {
                Some(to) if batched => reorder(&mut b, &mut layout_of, x, to)?,
                Some(_) | None => x,
            });
        }
        b.emit_mapped(id, node.op.clone(), inputs, &[])?;
        // Only batched values have layouts; the rest count as plain.
        let batched = value_kind(&node.op) == ValueKind::Batched;
        layout_of.push(if batched { own } else { Layout::Plain });
    }
    let mut outputs = Vec::with_capacity(graph.outputs.len());
    for &o in &graph.outputs {
        let batched = value_kind(&graph[o].op) == ValueKind::Batched;
        let o = b.mapped(o);
        outputs.push(if batched { reorder(&mut b, &mut layout_of, o, Layout::Plain)? } else { o });
    }
    let rebuilt = b.finish_with_outputs(outputs)?;
    let count = rebuilt.0.iter().filter(|(_, n)| matches!(n.op, Op::Reorder(_))).count();
    cx.install(rebuilt);
    Ok(count)
}

/// Removes every reorder (its readers read its operand).
fn strip_reorders(cx: &mut Ctx) -> Result<(), PassError> {
    if !cx.graph.iter().any(|(_, n)| matches!(n.op, Op::Reorder(_))) {
        return Ok(());
    }
    let graph = &cx.graph;
    let mut b = Rebuild::new("layout", graph, &cx.origins);
    for (id, node) in graph.iter() {
        if let Op::Reorder(_) = node.op {
            b.forward(id, node.inputs[0]);
        } else {
            b.copy(id)?;
        }
    }
    let rebuilt = b.finish()?;
    cx.install(rebuilt);
    Ok(())
}

/// Whether blocking a value of this shape pads it by at most half (`C` a multiple of 16, or
/// large enough: 24 channels stored as 32 is fine, 3 as 16 is not).
fn worth_blocking(shape: &Shape) -> bool {
    shape.rank() == 3 && 2 * stored_channels(Layout::Blocked16, shape.channels()) <= 3 * shape.channels()
}

/// Which nodes the pass puts in `nChw16c` (see the module documentation).
pub fn blocked_nodes(graph: &Graph) -> Vec<bool> {
    let n = graph.len();
    let candidate: Vec<bool> = graph
        .iter()
        .map(|(_, node)| {
            let first = node.inputs.first().map(|&i| &graph[i].shape);
            let batched = |i: &&NodeId| value_kind(&graph[**i].op) == ValueKind::Batched;
            let operands_fit = node.inputs.iter().filter(batched).all(|&i| worth_blocking(&graph[i].shape));
            match rule(&node.op, first) {
                LayoutRule::Follows => worth_blocking(&node.shape) && operands_fit && whole_blocks(graph, node),
                // A reduction's value is whole-batch: only its operands' layout is chosen.
                LayoutRule::Reduces => operands_fit && node.inputs.iter().any(|i| batched(&i)),
                LayoutRule::Source | LayoutRule::Converts(_) | LayoutRule::PlainOnly => false,
            }
        })
        .collect();
    // Connected regions of candidates (union-find over candidate-to-candidate edges).
    let mut parent: Vec<usize> = (0..n).collect();
    fn root(parent: &mut [usize], mut i: usize) -> usize {
        while parent[i] != i {
            parent[i] = parent[parent[i]];
            i = parent[i];
        }
        i
    }
    for (id, node) in graph.iter() {
        if !candidate[id.index()] {
            continue;
        }
        for &x in &node.inputs {
            if candidate[x.index()] {
                let (a, b) = (root(&mut parent, id.index()), root(&mut parent, x.index()));
                parent[a] = b;
            }
        }
    }
    let mut worth = vec![false; n];
    for (id, node) in graph.iter() {
        if candidate[id.index()] && computes(&node.op) {
            let r = root(&mut parent, id.index());
            worth[r] = true;
        }
    }
    let mut blocked: Vec<bool> = (0..n).map(|i| candidate[i] && worth[root(&mut parent, i)]).collect();
    shrink(graph, &mut blocked);
    blocked
}

fn computes(op: &Op) -> bool {
    computes_products(op) && !matches!(op, Op::Fc(_))
}

/// A blocked concatenation or channel slice moves whole blocks only.
fn whole_blocks(graph: &Graph, node: &cnnc_ir::Node) -> bool {
    if matches!(node.op, Op::Concat | Op::ConcatInPlace) {
        return node.inputs.iter().all(|&i| graph[i].shape.channels().is_multiple_of(16));
    }
    if let Op::Train(TrainOp::Slice { start, len }) = node.op {
        return start.is_multiple_of(16) && len.is_multiple_of(16);
    }
    true
}

/// Moves region edges past nodes where that makes the reorders no larger: a blocked pooling
/// or elementwise node is left plain when the reorders it would then need (its blocked
/// operands in, its value out to blocked readers) are no larger than those it needs blocked
/// (its plain operands in, its value out to plain readers): `conv1 -> relu -> maxpool` reorders
/// the pooled map, a quarter of the size. Convolutions and matrix products stay blocked.
fn shrink(graph: &Graph, blocked: &mut [bool]) {
    let users = graph.users();
    let mut is_output = vec![false; graph.len()];
    for o in &graph.outputs {
        is_output[o.index()] = true;
    }
    let batched = |id: NodeId| value_kind(&graph[id].op) == ValueKind::Batched;
    // Reorders move batched values only: a whole-batch value costs nothing to "convert".
    let size = |id: NodeId| if batched(id) { stored_elements(Layout::Blocked16, &graph[id].shape) } else { 0 };
    loop {
        let mut changed = false;
        for (id, node) in graph.iter() {
            if !blocked[id.index()] || computes(&node.op) {
                continue;
            }
            let readers_blocked = users[id.index()].iter().any(|u| blocked[u.index()]);
            let readers_plain = is_output[id.index()] || users[id.index()].iter().any(|u| !blocked[u.index()]);
            let operands: Vec<NodeId> = {
                let mut v: Vec<NodeId> = node.inputs.iter().copied().filter(|&x| batched(x)).collect();
                v.sort();
                v.dedup();
                v
            };
            let in_cost: usize = operands.iter().filter(|x| !blocked[x.index()]).map(|&x| size(x)).sum();
            let blocked_in_cost: usize = operands.iter().filter(|x| blocked[x.index()]).map(|&x| size(x)).sum();
            // Reorder elements with the node blocked, and with it plain.
            let now = in_cost + if readers_plain { size(id) } else { 0 };
            let plain = blocked_in_cost + if readers_blocked { size(id) } else { 0 };
            // Ties move the edge too: the node costs the same either way, and moving on may
            // reach a pooling node that shrinks the reorder (`conv -> relu -> maxpool`).
            if plain <= now {
                blocked[id.index()] = false;
                changed = true;
            }
        }
        if !changed {
            break;
        }
    }
}

/// Every weight-owning node's weight layout, by layer name, in node order.
pub fn weight_layouts(graph: &Graph) -> Vec<(String, WeightLayout)> {
    let (layouts, _) = layouts(graph);
    graph.ids().filter_map(|id| weight_layout(graph, &layouts, id).map(|w| (graph[id].name.clone(), w))).collect()
}
