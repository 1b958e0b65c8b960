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
        jit_equals_interp_both(&format!("{} inference", g.name), &opt.plan, &weights, &x, RTOL_FORWARD);
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
        jit_equals_interp_both(&format!("{} training ({opt_name})", g.name), &opt.plan, &weights, &inputs, RTOL_GRAD);
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

/// Convolutions on plain maps (few channels, as LeNet): native mode's plain-input kernel
/// forward with weights repacked every step, the input gradient as a convolution of the
/// gradient (stride 1, with padding and dilation) or the portable code (stride 2), the weight
/// gradient by the plain-map kernel; rectangular kernels, odd sizes, a 1x1 output.
#[test]
fn plain_convolutions() {
    // (channels, input, out, kernel, stride, pad, dilation)
    type Case = (usize, [usize; 2], usize, [usize; 2], [usize; 2], [usize; 2], [usize; 2]);
    let cases: &[Case] = &[
        (1, [12, 12], 6, [5, 5], [1, 1], [0, 0], [1, 1]),
        (6, [9, 7], 10, [3, 2], [1, 1], [1, 0], [1, 1]),
        (3, [11, 11], 5, [3, 3], [1, 1], [2, 1], [2, 1]),
        (5, [9, 10], 7, [3, 3], [2, 2], [1, 1], [1, 1]),
        (4, [5, 5], 9, [5, 5], [1, 1], [0, 0], [1, 1]),
    ];
    for (k, &(c, hw, o, kernel, stride, pad, dilation)) in cases.iter().enumerate() {
        let mut g = Graph::new(format!("plain{k}"));
        let x = g.add_input("x", Shape(vec![c, hw[0], hw[1]]), Default::default()).unwrap();
        let window = Window { kernel, stride, pad, dilation, ceil_mode: false };
        let c1 = add(&mut g, Op::Conv(Conv { out_channels: o, window, groups: 1, bias: true }), &[x], "c1");
        let t = add(&mut g, Op::Activation(Activation::Tanh), &[c1], "tanh");
        let c2 = add(&mut g, conv(3, 1, 1, 0), &[t], "c2");
        g.outputs = vec![c2];
        check_graph(&g, 3);
    }
}

/// Pooling on plain maps, wide enough for the vector columns and with edge columns on both
/// sides: every kind, strides 1 and 2, padding, ceil mode, rectangular inputs; inference and
/// a training step (max pooling's value and argmax in one pass).
#[test]
fn plain_pooling() {
    let kinds =
        [PoolKind::Max, PoolKind::Avg { include_pad: true }, PoolKind::Avg { include_pad: false }, PoolKind::L2];
    let cases = [
        (3, 2, 0, false, [9, 23]),
        (3, 2, 1, true, [11, 33]),
        (2, 2, 0, false, [8, 16]),
        (3, 1, 1, false, [5, 19]),
        (3, 2, 1, false, [16, 16]),
        (5, 1, 2, false, [7, 17]),
        (2, 1, 0, false, [3, 6]),
    ];
    for (k, &(kernel, stride, pad, ceil_mode, hw)) in cases.iter().enumerate() {
        for kind in kinds {
            let mut g = Graph::new(format!("pp{k}"));
            let x = g.add_input("x", Shape(vec![2, hw[0], hw[1]]), Default::default()).unwrap();
            let c = add(&mut g, conv(5, 3, 1, 1), &[x], "conv");
            let window = Window { ceil_mode, ..win(kernel, stride, pad) };
            let p = add(&mut g, Op::Pool { kind, window }, &[c], "pool");
            let y = add(&mut g, conv(3, 1, 1, 0), &[p], "head");
            g.outputs = vec![y];
            check_graph(&g, 2);
        }
    }
}

/// Global average pooling before an fc head (its own loop, no tables): 1x1 maps (a copy, as
/// ResNet's head at 32x32), odd maps, channel counts that are not multiples of 16 (blocked maps'
/// padded lanes), both divisors, batch 1 and 3.
#[test]
fn global_average_pooling() {
    for (k, &(c, hw, include_pad, batch)) in
        [(20, [1, 1], true, 3), (16, [5, 3], false, 1), (7, [1, 1], false, 1), (33, [2, 2], true, 3)].iter().enumerate()
    {
        let mut g = Graph::new(format!("gap{k}"));
        let x = g.add_input("x", Shape(vec![3, hw[0], hw[1]]), Default::default()).unwrap();
        let cv = add(&mut g, conv(c, 1, 1, 0), &[x], "conv");
        let p = add(&mut g, Op::GlobalPool(PoolKind::Avg { include_pad }), &[cv], "pool");
        let f = add(&mut g, Op::Flatten, &[p], "flat");
        let y = add(&mut g, Op::Fc(Fc { out_features: 5, bias: true }), &[f], "fc");
        g.outputs = vec![y];
        check_graph(&g, batch);
    }
}

/// Plain max pooling of a ReLU's output (many ties at zero: the first maximum's argmax wins)
/// on maps whose rows are copied into the -inf-padded scratch, batch 1 and 3 channels.
#[test]
fn plain_max_pooling_ties() {
    for (k, &(kernel, stride, pad, hw)) in
        [(3, 2, 1, [16, 16]), (3, 2, 1, [9, 13]), (3, 1, 1, [6, 10])].iter().enumerate()
    {
        let mut g = Graph::new(format!("pt{k}"));
        let x = g.add_input("x", Shape(vec![2, hw[0], hw[1]]), Default::default()).unwrap();
        let c = add(&mut g, conv(3, 3, 1, 1), &[x], "conv");
        let r = add(&mut g, Op::Activation(Activation::Relu), &[c], "relu");
        let p = add(&mut g, Op::Pool { kind: PoolKind::Max, window: win(kernel, stride, pad) }, &[r], "pool");
        let y = add(&mut g, conv(3, 1, 1, 0), &[p], "head");
        g.outputs = vec![y];
        check_graph(&g, 1);
    }
}

/// The blocked stem ([`cnnc_ir::stem`]): a convolution of an RGB input, ReLU and max pooling
/// run in `nChw16c`; the pooling writes into the reorder's place where the plan leaves that
/// free (ResNet-50's stem), so the reorder runs no code in either mode, and otherwise the
/// reorder is a copy (here, where the plan puts the reorder over the convolution's output).
/// The results still match the interpreter's plain stem.
#[test]
fn blocked_stem() {
    let mut g = Graph::new("stem");
    let x = g.add_input("x", Shape(vec![3, 21, 20]), Default::default()).unwrap();
    let c1 = add(&mut g, conv_nb(32, 5, 2, 2), &[x], "conv1");
    let b = add(&mut g, Op::BatchNorm(BatchNorm { eps: 1e-5, momentum: 0.1 }), &[c1], "bn1");
    let r = add(&mut g, Op::Activation(Activation::Relu), &[b], "relu");
    let p = add(&mut g, Op::Pool { kind: PoolKind::Max, window: win(3, 2, 1) }, &[r], "maxpool");
    let y = add(&mut g, conv(16, 3, 1, 1), &[p], "conv2");
    g.outputs = vec![y];
    let resnet = lower_example("resnet50.cnn", &[3, 32, 32], &[]);
    for (g, into_reorder) in [(&g, false), (&resnet, true)] {
        let weights = random_weights(g, 3);
        let opt = optimize(g, Some(&weights), &PassOptions::all()).unwrap();
        let stems = cnnc_ir::stem::blocked_stems(&opt.plan);
        assert_eq!(stems.len(), 1, "{}", opt.plan.render());
        assert_eq!(stems[0].into_reorder, into_reorder, "{}", opt.plan.render());
        let reorder = opt.plan.graph[stems[0].reorder].name.clone();
        let inputs = [batch_of(&g[g.inputs[0]].shape.0, 2, 9)];
        for mode in MODES {
            let model = compile(&opt.plan, 2, mode, &weights);
            let layers = model.profile(&inputs, &cnnc_jit::StepArgs { lr: 0.0, step: 1, seed: 0 }, 1).unwrap();
            let ran = layers.iter().any(|l| l.name == reorder);
            assert_eq!(ran, !into_reorder, "{} ({mode:?}): `{reorder}`", g.name);
        }
        jit_equals_interp_both(&format!("{} stem", g.name), &opt.plan, &weights, &inputs, RTOL_FORWARD);
    }
    check_graph(&g, 2);
}

/// The plain 2x2/2 max pooling between a plain-input convolution and a blocked one (the CIFAR
/// net's first pooling), native mode's one-pass forms (`lower/pool/plain2x2.rs`): forward
/// into the reorder's place, backward from the blocked gradient through the ReLU mask to the
/// bias gradient. The nodes they replace run no code in native mode; both modes match the
/// interpreter. Odd map sizes (a row and a column in no window) and channels not a multiple
/// of 16 included; rows narrower than 16 pixels (the digits net's) keep the separate passes.
#[test]
fn plain_max_pool_between_blocked_layers() {
    use cnnc_ir::TrainOp;
    for (c, h, w) in [(32, 16, 16), (24, 13, 19), (48, 6, 33), (16, 8, 8)] {
        let mut g = Graph::new(format!("p2x2_{c}_{h}x{w}"));
        let x = g.add_input("x", Shape(vec![3, h, w]), Default::default()).unwrap();
        let c1 = add(&mut g, conv(c, 3, 1, 1), &[x], "c1");
        let r1 = add(&mut g, Op::Activation(Activation::Relu), &[c1], "relu1");
        let p = add(&mut g, Op::Pool { kind: PoolKind::Max, window: win(2, 2, 0) }, &[r1], "pool");
        let c2 = add(&mut g, conv(16, 3, 1, 1), &[p], "c2");
        let r2 = add(&mut g, Op::Activation(Activation::Relu), &[c2], "relu2");
        g.outputs = vec![r2];
        check_graph(&g, 3);
        let weights = random_weights(&g, 3);
        let opt = optimize_training(&g, Some(&weights), &PassOptions::all(), &sgd_step(&g)).unwrap();
        let plan = &opt.plan;
        let model = compile(plan, 3, cnnc_jit::Mode::Native, &weights);
        let cnnc_passes::Objective::Loss(loss) = sgd_step(&g).objective else { unreachable!() };
        let inputs = [batch_of(&[3, h, w], 3, 5), target(&g, &loss, 3)];
        let layers = model.profile(&inputs, &cnnc_jit::StepArgs { lr: 0.01, step: 1, seed: 0 }, 1).unwrap();
        let ran = |f: &dyn Fn(&Op) -> bool| layers.iter().filter(|l| f(&plan.graph[l.node].op)).count();
        if cnnc_kernels::cpu::best().isa() == cnnc_kernels::simd::Isa::Avx512 && w >= 16 {
            // The reorder of the pooled map runs no code (that of the gradient reaching the
            // pooling is the step the fused backward pass runs at).
            let reorders = |l: &&cnnc_jit::NodeTime| {
                let node = &plan.graph[l.node];
                matches!(node.op, Op::Reorder(_)) && matches!(plan.graph[node.inputs[0]].op, Op::Pool { .. })
            };
            assert_eq!(layers.iter().filter(reorders).count(), 0, "{}", plan.render());
            assert_eq!(ran(&|op| matches!(op, Op::Train(TrainOp::PoolBackward { .. }))), 0);
            assert_eq!(ran(&|op| matches!(op, Op::Train(TrainOp::ActivationBackward { .. }))), 1, "c2's only");
            assert_eq!(ran(&|op| matches!(op, Op::Train(TrainOp::BiasGrad))), 1, "c2's only");
        }
    }
}
