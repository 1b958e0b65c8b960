//! Single ops and small graphs, forward and backward, against the interpreter.

use crate::common::*;
use cnnc_ir::{Activation, BatchNorm, Conv, Fc, Graph, Loss, NodeId, Op, PoolKind, Shape, Window};
use cnnc_passes::{PassOptions, TrainingOptions, optimize, optimize_training};

pub fn win(k: usize, s: usize, p: usize) -> Window {
    Window { kernel: [k, k], stride: [s, s], pad: [p, p], dilation: [1, 1], ceil_mode: false }
}

pub fn add(g: &mut Graph, op: Op, inputs: &[NodeId], name: &str) -> NodeId {
    g.add(op, inputs.to_vec(), name, Default::default()).unwrap_or_else(|e| panic!("{name}: {e}")).0
}

/// Inference (every pass, and none) and a training step (MSE, or cross-entropy on vectors,
/// with input gradients and SGD) of `g`, in both modes at `batch`.
pub fn check_graph(g: &Graph, batch: usize) {
    let weights = random_weights(g, 3);
    let x: Vec<_> = g.inputs.iter().enumerate().map(|(k, &i)| batch_of(&g[i].shape.0, batch, 20 + k as u64)).collect();
    for passes in [PassOptions::all(), PassOptions::none()] {
        let opt = optimize(g, Some(&weights), &passes).unwrap();
        for mode in MODES {
            jit_equals_interp(&format!("{} inference", g.name), &opt.plan, &weights, &x, mode, RTOL_FORWARD);
        }
    }
    let mut training = sgd_step(g);
    training.input_grads = true;
    for opt_name in ["sgd", "grads"] {
        let t = if opt_name == "grads" {
            TrainingOptions { optimizer: None, ..training.clone() }
        } else {
            training.clone()
        };
        let opt = optimize_training(g, Some(&weights), &PassOptions::all(), &t).unwrap();
        let cnnc_passes::Objective::Loss(loss) = t.objective else { unreachable!() };
        let mut inputs = x.clone();
        inputs.push(target(g, &loss, batch));
        for mode in MODES {
            jit_equals_interp(
                &format!("{} training ({opt_name})", g.name),
                &opt.plan,
                &weights,
                &inputs,
                mode,
                RTOL_GRAD,
            );
        }
    }
}

fn conv(out: usize, k: usize, s: usize, p: usize) -> Op {
    Op::Conv(Conv { out_channels: out, window: win(k, s, p), groups: 1, bias: true })
}

fn conv_nb(out: usize, k: usize, s: usize, p: usize) -> Op {
    Op::Conv(Conv { out_channels: out, window: win(k, s, p), groups: 1, bias: false })
}

#[test]
fn conv_bn_relu_pool_fc() {
    let mut g = Graph::new("cbr");
    let x = g.add_input("x", Shape(vec![3, 8, 8]), Default::default()).unwrap();
    let c = add(&mut g, conv(16, 3, 1, 1), &[x], "conv");
    let b = add(&mut g, Op::BatchNorm(BatchNorm { eps: 1e-5, momentum: 0.1 }), &[c], "bn");
    let r = add(&mut g, Op::Activation(Activation::Relu), &[b], "relu");
    let p = add(&mut g, Op::GlobalPool(PoolKind::Avg { include_pad: true }), &[r], "pool");
    let f = add(&mut g, Op::Flatten, &[p], "flat");
    let y = add(&mut g, Op::Fc(Fc { out_features: 5, bias: true }), &[f], "fc");
    g.outputs = vec![y];
    check_graph(&g, 2);
    let _ = Loss::Mse;
}

/// Batch norm on blocked maps (20 channels: a partial last block), 1x1 and 3x3 maps.
#[test]
fn blocked_batch_norm() {
    for hw in [1, 3] {
        let mut g = Graph::new("bnb");
        let x = g.add_input("x", Shape(vec![16, hw, hw]), Default::default()).unwrap();
        let c = add(&mut g, conv(20, 1, 1, 0), &[x], "conv");
        let b = add(&mut g, Op::BatchNorm(BatchNorm { eps: 1e-5, momentum: 0.1 }), &[c], "bn");
        let r = add(&mut g, Op::Activation(Activation::Relu), &[b], "relu");
        let c2 = add(&mut g, conv(16, 3, 1, 1), &[r], "conv2");
        g.outputs = vec![c2];
        // Eight values per channel at 1x1: see the examples' comment on conditioning.
        check_graph(&g, if hw == 1 { 8 } else { 2 });
    }
}

/// A residual block with a strided projection, max pooling and batch norms.
#[test]
fn residual_block() {
    let mut g = Graph::new("res");
    let bn = || Op::BatchNorm(BatchNorm { eps: 1e-5, momentum: 0.1 });
    let relu = || Op::Activation(Activation::Relu);
    let x = g.add_input("x", Shape(vec![3, 16, 16]), Default::default()).unwrap();
    let c = add(&mut g, conv(16, 7, 2, 3), &[x], "conv1");
    let b = add(&mut g, bn(), &[c], "bn1");
    let r = add(&mut g, relu(), &[b], "relu1");
    let m = add(&mut g, Op::Pool { kind: PoolKind::Max, window: win(3, 2, 1) }, &[r], "maxpool");
    let c2 = add(&mut g, conv_nb(32, 3, 2, 1), &[m], "conv2");
    let b2 = add(&mut g, bn(), &[c2], "bn2");
    let d = add(&mut g, conv_nb(32, 1, 2, 0), &[m], "down");
    let bd = add(&mut g, bn(), &[d], "bnd");
    let s = add(&mut g, Op::Add, &[b2, bd], "add");
    let r2 = add(&mut g, relu(), &[s], "relu2");
    let p = add(&mut g, Op::GlobalPool(PoolKind::Avg { include_pad: true }), &[r2], "pool");
    let f = add(&mut g, Op::Flatten, &[p], "flat");
    let y = add(&mut g, Op::Fc(Fc { out_features: 5, bias: true }), &[f], "fc");
    g.outputs = vec![y];
    check_graph(&g, 2);
}

/// LRN in both conventions (alpha / size as PyTorch and Caffe, alpha itself as the AlexNet
/// paper), forward and backward, on plain and blocked maps.
#[test]
fn lrn_both_conventions() {
    for alpha_over_size in [true, false] {
        let mut g = Graph::new(if alpha_over_size { "lrn_pytorch" } else { "lrn_paper" });
        let x = g.add_input("x", Shape(vec![3, 6, 6]), Default::default()).unwrap();
        let c = add(&mut g, conv(20, 3, 1, 1), &[x], "conv");
        let lrn = cnnc_ir::Lrn { size: 5, alpha: 1e-2, beta: 0.75, k: 2.0, alpha_over_size };
        let l = add(&mut g, Op::Lrn(lrn), &[c], "lrn");
        let y = add(&mut g, conv(4, 1, 1, 0), &[l], "head");
        g.outputs = vec![y];
        check_graph(&g, 2);
    }
}
