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
use std::collections::{HashMap, VecDeque};

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
///
/// Unblocking a node only makes its neighbours' test easier to pass (their plain operands or
/// plain readers grow, their blocked ones shrink), so the nodes that end up plain do not depend
/// on the order they are looked at. A worklist re-examines only the neighbours of each node
/// that changed, and running sums ([`Edges`]) keep each test constant-time, so the whole is
/// linear in the edges. (Sweeping the graph until nothing changed moved a long chain's edge one
/// node per sweep: quadratic.)
fn shrink(graph: &Graph, blocked: &mut [bool]) {
    let mut edges = Edges::new(graph, blocked);
    let movable = |id: NodeId, blocked: &[bool]| blocked[id.index()] && !computes(&graph[id].op);
    let mut work: VecDeque<NodeId> = graph.ids().filter(|&id| movable(id, blocked)).collect();
    let mut queued: Vec<bool> = graph.ids().map(|id| movable(id, blocked)).collect();
    while let Some(id) = work.pop_front() {
        queued[id.index()] = false;
        if !movable(id, blocked) || !edges.cheaper_plain(id) {
            continue;
        }
        blocked[id.index()] = false;
        for x in edges.unblock(id) {
            if movable(x, blocked) && !queued[x.index()] {
                queued[x.index()] = true;
                work.push_back(x);
            }
        }
    }
}

/// The reorder costs [`shrink`] weighs, kept up to date as nodes leave the blocked region.
struct Edges {
    /// Stored elements of each node's value in `nChw16c`.
    size: Vec<usize>,
    is_output: Vec<bool>,
    /// Each node's distinct operands.
    operands: Vec<Vec<NodeId>>,
    /// For each node, its readers with how often each reads it, adjacent repeats of an operand
    /// counted once (`add(x, x)` pays for one reorder of `x`).
    readers: Vec<Vec<(NodeId, usize)>>,
    /// Per node: the stored size of its plain operands, and of its blocked ones.
    plain_in: Vec<usize>,
    blocked_in: Vec<usize>,
    /// Per node: how many of its distinct readers are blocked, and how many plain.
    blocked_readers: Vec<usize>,
    plain_readers: Vec<usize>,
}

impl Edges {
    fn new(graph: &Graph, blocked: &[bool]) -> Edges {
        let n = graph.len();
        // Reorders move batched values only: a whole-batch value (a gradient, statistics)
        // costs nothing to "convert" and constrains nobody.
        let batched = |id: NodeId| value_kind(&graph[id].op) == ValueKind::Batched;
        let size: Vec<usize> = graph
            .iter()
            .map(|(id, node)| if batched(id) { stored_elements(Layout::Blocked16, &node.shape) } else { 0 })
            .collect();
        let mut readers: Vec<Vec<(NodeId, usize)>> = vec![Vec::new(); n];
        let mut operands = Vec::with_capacity(n);
        for (id, node) in graph.iter() {
            let mut merged: Vec<NodeId> = node.inputs.iter().copied().filter(|&x| batched(x)).collect();
            merged.dedup();
            for &x in &merged {
                match readers[x.index()].last_mut() {
                    Some((u, count)) if *u == id => *count += 1,
                    _ => readers[x.index()].push((id, 1)),
                }
            }
            merged.sort_unstable();
            merged.dedup();
            operands.push(merged);
        }
        let mut edges = Edges {
            size,
            is_output: graph.output_flags(),
            operands,
            readers,
            plain_in: vec![0; n],
            blocked_in: vec![0; n],
            blocked_readers: vec![0; n],
            plain_readers: vec![0; n],
        };
        for x in 0..n {
            for &(u, count) in &edges.readers[x] {
                let inputs = if blocked[x] { &mut edges.blocked_in } else { &mut edges.plain_in };
                inputs[u.index()] += count * edges.size[x];
                let readers = if blocked[u.index()] { &mut edges.blocked_readers } else { &mut edges.plain_readers };
                readers[x] += 1;
            }
        }
        edges
    }

    /// Whether blocked node `id` needs no more reorder elements plain than blocked. Ties move
    /// the edge too: the node costs the same either way, and moving on may reach a pooling node
    /// that shrinks the reorder (`conv -> relu -> maxpool`).
    fn cheaper_plain(&self, id: NodeId) -> bool {
        let i = id.index();
        let readers_plain = self.is_output[i] || self.plain_readers[i] > 0;
        let readers_blocked = self.blocked_readers[i] > 0;
        let now = self.plain_in[i] + if readers_plain { self.size[i] } else { 0 };
        let plain = self.blocked_in[i] + if readers_blocked { self.size[i] } else { 0 };
        plain <= now
    }

    /// Records that `id` is now plain; returns its neighbours, whose costs changed.
    fn unblock(&mut self, id: NodeId) -> Vec<NodeId> {
        let i = id.index();
        let mut changed = Vec::with_capacity(self.readers[i].len() + self.operands[i].len());
        for &(u, count) in &self.readers[i] {
            self.blocked_in[u.index()] -= count * self.size[i];
            self.plain_in[u.index()] += count * self.size[i];
            changed.push(u);
        }
        for &x in &self.operands[i] {
            self.blocked_readers[x.index()] -= 1;
            self.plain_readers[x.index()] += 1;
            changed.push(x);
        }
        changed
    }
}

/// Every weight-owning node's weight layout, by layer name, in node order.
pub fn weight_layouts(graph: &Graph) -> Vec<(String, WeightLayout)> {
    let (layouts, _) = layouts(graph);
    graph.ids().filter_map(|id| weight_layout(graph, &layouts, id).map(|w| (graph[id].name.clone(), w))).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use cnnc_ir::{Activation, Conv, PoolKind, Window};
    use cnnc_runtime::Rng;

    /// The edge moving as it was first written: sweep the graph until nothing changes. The
    /// worklist must end where this ends.
    fn shrink_by_sweeps(graph: &Graph, blocked: &mut [bool]) {
        let users = graph.users();
        let size = |id: NodeId| stored_elements(Layout::Blocked16, &graph[id].shape);
        loop {
            let mut changed = false;
            for (id, node) in graph.iter() {
                if !blocked[id.index()] || computes(&node.op) {
                    continue;
                }
                let readers_blocked = users[id.index()].iter().any(|u| blocked[u.index()]);
                let readers_plain =
                    graph.outputs.contains(&id) || users[id.index()].iter().any(|u| !blocked[u.index()]);
                let mut operands = node.inputs.clone();
                operands.dedup();
                let in_cost: usize = operands.iter().filter(|x| !blocked[x.index()]).map(|&x| size(x)).sum();
                let blocked_in_cost: usize = operands.iter().filter(|x| blocked[x.index()]).map(|&x| size(x)).sum();
                let now = in_cost + if readers_plain { size(id) } else { 0 };
                let plain = blocked_in_cost + if readers_blocked { size(id) } else { 0 };
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

    /// A random DAG over `[16, 4, 4]` and `[16, 2, 2]` maps: convolutions, activations,
    /// poolings, adds (repeated operands included) and concats.
    fn random_graph(seed: u64) -> Graph {
        let mut rng = Rng::seed_from_u64(seed);
        let mut pick = |n: usize| (rng.next_u64() % n as u64) as usize;
        let mut g = Graph::new("g");
        let x = g.add_input("x", Shape(vec![16, 4, 4]), Default::default()).unwrap();
        let mut nodes = vec![x];
        let window = |k, s| Window { kernel: [k, k], stride: [s, s], pad: [0, 0], dilation: [1, 1], ceil_mode: false };
        for i in 0..40 {
            let a = nodes[pick(nodes.len())];
            let shape = g[a].shape.clone();
            let same: Vec<NodeId> = nodes.iter().copied().filter(|&n| g[n].shape == shape).collect();
            let b = same[pick(same.len())];
            let op_inputs = match pick(6) {
                0 => (Op::Conv(Conv { out_channels: 16, window: window(1, 1), groups: 1, bias: false }), vec![a]),
                1 => (Op::Activation(Activation::Relu), vec![a]),
                2 if shape.0[1] == 4 => (Op::Pool { kind: PoolKind::Max, window: window(2, 2) }, vec![a]),
                3 => (Op::Add, vec![a, b, a]),
                4 => (Op::Add, vec![a, a]),
                _ => (Op::Add, vec![a, b]),
            };
            let (id, _) = g.add(op_inputs.0, op_inputs.1, format!("n{i}"), Default::default()).unwrap();
            nodes.push(id);
        }
        let users = g.users();
        g.outputs = g.ids().filter(|&i| i != x && (users[i.index()].is_empty() || pick(8) == 0)).collect();
        g
    }

    #[test]
    fn the_worklist_ends_where_sweeping_ends() {
        let mut moved = 0;
        for seed in 0..200 {
            let g = random_graph(seed);
            let mut rng = Rng::seed_from_u64(seed ^ 0x5eed);
            let start: Vec<bool> =
                g.iter().map(|(_, n)| n.op != Op::Input && !rng.next_u64().is_multiple_of(4)).collect();
            let (mut fast, mut slow) = (start.clone(), start.clone());
            shrink(&g, &mut fast);
            shrink_by_sweeps(&g, &mut slow);
            assert_eq!(fast, slow, "seed {seed}\n{}", cnnc_ir::print(&g));
            moved += start.iter().zip(&fast).filter(|(a, b)| a != b).count();
        }
        assert!(moved > 1000, "the graphs exercise the edge moves: {moved} nodes moved");
    }

    #[test]
    fn a_long_chain_after_a_convolution_leaves_the_region_at_once() {
        // conv -> 20,000 relus: every relu moves out of the blocked region (the output must
        // be plain, and each relu is the same size), and quickly.
        let mut g = Graph::new("chain");
        let x = g.add_input("x", Shape(vec![16, 4, 4]), Default::default()).unwrap();
        let w = Window { kernel: [3, 3], stride: [1, 1], pad: [1, 1], dilation: [1, 1], ceil_mode: false };
        let conv = Op::Conv(Conv { out_channels: 16, window: w, groups: 1, bias: true });
        let mut last = g.add(conv, vec![x], "conv", Default::default()).unwrap().0;
        for i in 0..20_000 {
            last = g.add(Op::Activation(Activation::Relu), vec![last], format!("r{i}"), Default::default()).unwrap().0;
        }
        g.outputs = vec![last];
        let blocked = blocked_nodes(&g);
        assert_eq!(blocked.iter().filter(|&&b| b).count(), 1, "only the convolution stays blocked");
        assert!(blocked[1]);
    }
}
