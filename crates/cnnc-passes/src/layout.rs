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
use cnnc_ir::layout::{LayoutRule, layouts, rule, stored_channels, stored_elements};
use cnnc_ir::{FusedBase, Graph, Layout, NodeId, Op, Shape};
use std::collections::HashMap;

/// The physical layout of a convolution's or matrix product's weights.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum WeightLayout {
    /// Plain convolution weights `[O, I, KH, KW]` (as stored).
    Oihw,
    /// Blocked by 16 input and 16 output channels, for blocked activations and one group.
    OIhw16i16o,
    /// Per group, blocked by 16 input and output channels (grouped convolution).
    GOIhw16i16o,
    /// Depthwise-style groups blocked by 16 groups.
    Goihw16g,
    /// A plain matrix `[O, I]` (gemm on plain data, fc).
    Oi,
    /// A matrix blocked by 16 input and 16 output channels (gemm on blocked maps).
    OI16i16o,
}

impl WeightLayout {
    pub fn name(self) -> &'static str {
        match self {
            WeightLayout::Oihw => "oihw",
            WeightLayout::OIhw16i16o => "OIhw16i16o",
            WeightLayout::GOIhw16i16o => "gOIhw16i16o",
            WeightLayout::Goihw16g => "Goihw16g",
            WeightLayout::Oi => "oi",
            WeightLayout::OI16i16o => "OI16i16o",
        }
    }
}

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
            LayoutRule::Follows => Some(own),
            LayoutRule::PlainOnly => Some(Layout::Plain),
        };
        let mut inputs = Vec::with_capacity(node.inputs.len());
        for &x in &node.inputs {
            let x = b.mapped(x);
            inputs.push(match wanted {
                Some(to) => reorder(&mut b, &mut layout_of, x, to)?,
                None => x,
            });
        }
        b.emit_mapped(id, node.op.clone(), inputs, &[])?;
        layout_of.push(own);
    }
    let mut outputs = Vec::with_capacity(graph.outputs.len());
    for &o in &graph.outputs {
        let o = b.mapped(o);
        outputs.push(reorder(&mut b, &mut layout_of, o, Layout::Plain)?);
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
            let whole_blocks = !matches!(node.op, Op::Concat | Op::ConcatInPlace)
                || node.inputs.iter().all(|&i| graph[i].shape.channels().is_multiple_of(16));
            rule(&node.op, first) == LayoutRule::Follows
                && worth_blocking(&node.shape)
                && node.inputs.iter().all(|&i| worth_blocking(&graph[i].shape))
                && whole_blocks
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
    matches!(op, Op::Conv(_) | Op::Gemm(_) | Op::Fused { .. })
}

/// Moves region edges past nodes where that makes the reorders no larger: a blocked pooling
/// or elementwise node is left plain when the reorders it would then need (its blocked
/// operands in, its value out to blocked readers) are no larger than those it needs blocked
/// (its plain operands in, its value out to plain readers): `conv1 -> relu -> maxpool` reorders
/// the pooled map, a quarter of the size. Convolutions and matrix products stay blocked.
fn shrink(graph: &Graph, blocked: &mut [bool]) {
    let users = graph.users();
    let size = |id: NodeId| stored_elements(Layout::Blocked16, &graph[id].shape);
    loop {
        let mut changed = false;
        for (id, node) in graph.iter() {
            if !blocked[id.index()] || computes(&node.op) {
                continue;
            }
            let readers_blocked = users[id.index()].iter().any(|u| blocked[u.index()]);
            let readers_plain = graph.outputs.contains(&id) || users[id.index()].iter().any(|u| !blocked[u.index()]);
            let operands: Vec<NodeId> = {
                let mut v = node.inputs.clone();
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

/// The weight layout of a convolution or matrix product node, given the graph's layouts
/// (`cnnc_ir::layout::layouts`); `None` for other nodes.
pub fn weight_layout(graph: &Graph, layouts: &[Layout], id: NodeId) -> Option<WeightLayout> {
    let node = &graph[id];
    let blocked = node.inputs.first().is_some_and(|&x| layouts[x.index()] == Layout::Blocked16);
    let conv = match &node.op {
        Op::Conv(conv) | Op::Fused { base: FusedBase::Conv(conv), .. } => conv,
        Op::Gemm(_) | Op::Fused { base: FusedBase::Gemm(_), .. } => {
            return Some(if blocked { WeightLayout::OI16i16o } else { WeightLayout::Oi });
        }
        Op::Fc(_) => return Some(WeightLayout::Oi),
        _ => return None,
    };
    if !blocked {
        return Some(WeightLayout::Oihw);
    }
    let per_group_in = graph[node.inputs[0]].shape.channels() / conv.groups;
    let per_group_out = conv.out_channels / conv.groups;
    Some(if conv.groups == 1 {
        WeightLayout::OIhw16i16o
    } else if per_group_in.is_multiple_of(16) && per_group_out % 16 == 0 {
        WeightLayout::GOIhw16i16o
    } else if conv.groups % 16 == 0 {
        WeightLayout::Goihw16g
    } else {
        WeightLayout::Oihw
    })
}

/// Every weight-owning node's weight layout, by layer name, in node order.
pub fn weight_layouts(graph: &Graph) -> Vec<(String, WeightLayout)> {
    let (layouts, _) = layouts(graph);
    graph.ids().filter_map(|id| weight_layout(graph, &layouts, id).map(|w| (graph[id].name.clone(), w))).collect()
}
