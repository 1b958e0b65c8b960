//! Graph-building shorthands shared by this crate's unit tests.

use crate::op::{BatchNorm, Conv, Fc, Op, PoolKind, Window};
use crate::{Graph, NodeId, Shape};
use cnnc_diag::Span;

/// A square window with dilation 1, floor mode.
pub fn window(k: usize, s: usize, p: usize) -> Window {
    Window { kernel: [k, k], stride: [s, s], pad: [p, p], dilation: [1, 1], ceil_mode: false }
}

pub fn conv(out: usize, k: usize, s: usize, p: usize, bias: bool) -> Op {
    Op::Conv(Conv { out_channels: out, window: window(k, s, p), groups: 1, bias })
}

pub fn maxpool(k: usize, s: usize, p: usize) -> Op {
    Op::Pool { kind: PoolKind::Max, window: window(k, s, p) }
}

pub fn bn() -> Op {
    Op::BatchNorm(BatchNorm { eps: 1e-5, momentum: 0.1 })
}

pub fn fc(out: usize) -> Op {
    Op::Fc(Fc { out_features: out, bias: true })
}

pub fn input(graph: &mut Graph, name: &str, dims: &[usize]) -> NodeId {
    graph.add_input(name, Shape(dims.to_vec()), Span::DUMMY).expect("test input shape is valid")
}

/// Adds a node the test knows to be well-shaped.
pub fn add(graph: &mut Graph, op: Op, inputs: &[NodeId], name: &str) -> NodeId {
    match graph.add(op, inputs.to_vec(), name, Span::DUMMY) {
        Ok((id, _warnings)) => id,
        Err(e) => panic!("test graph node `{name}` is ill-shaped: {e}"),
    }
}

/// `input -> conv -> bn -> relu -> maxpool -> flatten -> fc`, the fc being the output.
pub fn small_cnn() -> Graph {
    let mut g = Graph::new("small");
    let x = input(&mut g, "x", &[3, 32, 32]);
    let c = add(&mut g, conv(16, 3, 1, 1, false), &[x], "features.conv");
    let b = add(&mut g, bn(), &[c], "features.bn");
    let r = add(&mut g, Op::Activation(crate::Activation::Relu), &[b], "features.relu");
    let p = add(&mut g, maxpool(2, 2, 0), &[r], "features.pool");
    let f = add(&mut g, Op::Flatten, &[p], "flatten");
    let y = add(&mut g, fc(10), &[f], "classifier");
    g.outputs.push(y);
    g
}
