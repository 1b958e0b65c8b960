//! Common-subexpression elimination: a node computing the same op, with the same attributes,
//! on the same operands as an earlier node is replaced by that node.
//!
//! Never merged: model inputs (distinct values whatever their shapes), ops that own
//! parameters (two convolutions with equal attributes have different weights), and dropout
//! (its mask is random in training). Attributes compare exactly, floats by their bits. The
//! two operands of a two-way `add` are compared as a set (`a + b == b + a` exactly in floating
//! point; longer sums are not reordered, their rounding depends on the order).

use crate::error::PassError;
use crate::rewrite::{Ctx, Rebuild};
use cnnc_ir::{Activation, Graph, NodeId, Op, PoolKind, Window};
use std::collections::HashMap;
use std::fmt::Write;

/// Merges duplicate nodes; returns how many were removed.
pub fn run(cx: &mut Ctx) -> Result<usize, PassError> {
    let graph = &cx.graph;
    let mut b = Rebuild::new("cse", graph, &cx.origins);
    // Key: the op's exact attributes and the new operand handles.
    let mut seen: HashMap<(String, Vec<NodeId>), NodeId> = HashMap::new();
    let mut merged = 0;
    for (id, node) in graph.iter() {
        let Some(key) = mergeable_key(graph, id) else {
            b.copy(id)?;
            continue;
        };
        let mut operands: Vec<NodeId> = node.inputs.iter().map(|&i| b.mapped(i)).collect();
        if node.op == Op::Add && operands.len() == 2 {
            operands.sort();
        }
        match seen.get(&(key.clone(), operands.clone())) {
            Some(&earlier) => {
                b.forward(id, earlier);
                merged += 1;
            }
            None => {
                b.copy(id)?;
                seen.insert((key, operands), id);
            }
        }
    }
    let rebuilt = b.finish()?;
    cx.install(rebuilt);
    Ok(merged)
}

/// The exact text of the op's attributes (floats as bit patterns), or `None` when the node
/// must never be merged.
fn mergeable_key(graph: &Graph, id: NodeId) -> Option<String> {
    if !graph.params(id).is_empty() {
        return None;
    }
    let op = &graph[id].op;
    let mut key = op.keyword().to_string();
    // Writing into a String cannot fail.
    let mut put = |x: &dyn std::fmt::Debug| write!(key, ":{x:?}").unwrap_or(());
    match op {
        // Training ops are made once per need by the training transform; effects and random
        // masks must never merge.
        Op::Input | Op::Dropout { .. } | Op::Train(_) => return None,
        // Owners of parameters returned above; listed so that a new op is a compile error here.
        Op::Conv(_) | Op::Fc(_) | Op::BatchNorm(_) | Op::Prelu | Op::Gemm(_) | Op::Fused { .. } => return None,
        // Its operands are private to it: no other node can read the same ones.
        Op::ConcatInPlace => return None,
        Op::Reorder(layout) => put(layout),
        Op::Pool { kind, window } => {
            put(&pool_bits(kind));
            put(&window_bits(window));
        }
        Op::GlobalPool(kind) => put(&pool_bits(kind)),
        Op::AdaptivePool { kind, output } => {
            put(&pool_bits(kind));
            put(output);
        }
        Op::Spp { kind, levels } => {
            put(&pool_bits(kind));
            put(levels);
        }
        Op::Activation(a) => put(&activation_bits(a)),
        Op::Lrn(lrn) => put(&[
            lrn.size as u64,
            lrn.alpha.to_bits(),
            lrn.beta.to_bits(),
            lrn.k.to_bits(),
            u64::from(lrn.alpha_over_size),
        ]),
        Op::Flatten | Op::Softmax | Op::Concat | Op::Add => {}
    }
    Some(key)
}

fn pool_bits(kind: &PoolKind) -> u64 {
    match kind {
        PoolKind::Max => 0,
        PoolKind::Avg { include_pad: false } => 1,
        PoolKind::Avg { include_pad: true } => 2,
        PoolKind::L2 => 3,
    }
}

fn window_bits(w: &Window) -> [usize; 9] {
    let [kh, kw] = w.kernel;
    let [sh, sw] = w.stride;
    let [ph, pw] = w.pad;
    let [dh, dw] = w.dilation;
    [kh, kw, sh, sw, ph, pw, dh, dw, usize::from(w.ceil_mode)]
}

/// The activation's kind and its float parameters' bits.
fn activation_bits(a: &Activation) -> (&'static str, Vec<u64>) {
    let bits = match *a {
        Activation::Relu | Activation::Selu | Activation::Sigmoid | Activation::Tanh | Activation::Softsign => vec![],
        Activation::LeakyRelu { slope } => vec![slope.to_bits()],
        Activation::Elu { alpha } => vec![alpha.to_bits()],
        Activation::HardTanh { min, max } => vec![min.to_bits(), max.to_bits()],
        Activation::Softplus { beta, threshold } => vec![beta.to_bits(), threshold.to_bits()],
    };
    (a.keyword(), bits)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::Mode;
    use cnnc_ir::{Lrn, Shape};

    #[test]
    fn lrn_conventions_are_not_merged() {
        let mut g = Graph::new("lrn");
        let x = g.add_input("x", Shape(vec![4, 2, 2]), Default::default()).unwrap();
        let lrn = |alpha_over_size| Op::Lrn(Lrn { size: 3, alpha: 1e-4, beta: 0.75, k: 2.0, alpha_over_size });
        let mut add = |op: Op, name: &str| g.add(op, vec![x], name, Default::default()).unwrap().0;
        let a = add(lrn(true), "a");
        let b = add(lrn(false), "b");
        let c = add(lrn(true), "c");
        let (cat, _) = g.add(Op::Concat, vec![a, b, c], "cat", Default::default()).unwrap();
        g.outputs = vec![cat];
        let mut cx = Ctx::new(g, None, Mode::Inference);
        assert_eq!(run(&mut cx).unwrap(), 1, "only `c` repeats `a`");
        let names: Vec<&str> = cx.graph.iter().map(|(_, n)| n.name.as_str()).collect();
        assert_eq!(names, ["x", "a", "b", "cat"]);
    }
}
