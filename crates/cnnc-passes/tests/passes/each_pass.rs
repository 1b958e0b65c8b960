//! Each pass on small hand-built graphs: where its pattern fires, where it must not, and a
//! focused snapshot of the IR before and after.

use crate::common::*;
use cnnc_ir::{Activation, Conv, Graph, Op, print};
use cnnc_passes::{Mode, cse, dce, dropout, fold_bn};
use cnnc_runtime::{Rng, Tensor, TensorMap, init_params};

fn before_after(before: &Graph, after: &Graph) -> String {
    format!("{}--- after ---\n{}", print(before), print(after))
}

// ---------------------------------------------------------------- dce

#[test]
fn dce_removes_what_reaches_no_output_but_keeps_inputs() {
    let mut g = Graph::new("dead");
    let x = input(&mut g, "x", &[4, 8, 8]);
    let _unused = input(&mut g, "unused", &[3]);
    let c = add(&mut g, conv(4, 3, 1, 1, true), &[x], "conv");
    let r = add(&mut g, relu(), &[c], "relu");
    let p = add(&mut g, maxpool(2, 2, 0), &[c], "pool");
    add(&mut g, relu(), &[p], "pool_relu");
    g.outputs = vec![r];
    let (after, removed) = run_one(&g, None, Mode::Inference, dce::run);
    assert_eq!(removed, 2);
    assert_eq!(after.len(), 4);
    assert_eq!(after.inputs.len(), 2);
    insta::assert_snapshot!("dce", before_after(&g, &after));
}

// ---------------------------------------------------------------- remove-dropout

#[test]
fn dropout_disappears_even_as_an_output() {
    let mut g = Graph::new("drop");
    let x = input(&mut g, "x", &[16]);
    let d0 = add(&mut g, Op::Dropout { p: 0.5 }, &[x], "drop0");
    let f = add(&mut g, fc(8, true), &[d0], "fc1");
    let r = add(&mut g, relu(), &[f], "relu");
    let d1 = add(&mut g, Op::Dropout { p: 0.2 }, &[r], "drop1");
    let y = add(&mut g, fc(4, true), &[d1], "fc2");
    let d2 = add(&mut g, Op::Dropout { p: 0.1 }, &[y], "drop2");
    g.outputs = vec![d2, r];
    let (after, removed) = run_one(&g, None, Mode::Inference, dropout::run);
    assert_eq!(removed, 3);
    assert!(after.iter().all(|(_, n)| !matches!(n.op, Op::Dropout { .. })));
    insta::assert_snapshot!("remove_dropout", before_after(&g, &after));
}

// ---------------------------------------------------------------- cse

#[test]
fn cse_merges_equal_ops_on_equal_operands() {
    let mut g = Graph::new("cse");
    let x = input(&mut g, "x", &[8, 8, 8]);
    let a = add(&mut g, relu(), &[x], "a");
    let b = add(&mut g, relu(), &[x], "b");
    let pa = add(&mut g, maxpool(2, 2, 0), &[a], "pa");
    let pb = add(&mut g, maxpool(2, 2, 0), &[b], "pb");
    // Commuted two-way add: the same value.
    let s1 = add(&mut g, Op::Add, &[pa, pb], "s1");
    let s2 = add(&mut g, Op::Add, &[pb, pa], "s2");
    let cat = add(&mut g, Op::Concat, &[s1, s2], "cat");
    g.outputs = vec![cat];
    let (after, merged) = run_one(&g, None, Mode::Inference, cse::run);
    assert_eq!(merged, 3, "{}", print(&after));
    assert_eq!(after.len(), 5);
    insta::assert_snapshot!("cse", before_after(&g, &after));
}

#[test]
fn cse_never_merges_parameters_inputs_dropout_or_different_attributes() {
    let mut g = Graph::new("distinct");
    let x = input(&mut g, "x", &[4, 8, 8]);
    let y = input(&mut g, "y", &[4, 8, 8]);
    // Two convolutions with equal attributes own different weights.
    let c1 = add(&mut g, conv(4, 3, 1, 1, true), &[x], "c1");
    let c2 = add(&mut g, conv(4, 3, 1, 1, true), &[x], "c2");
    let b1 = add(&mut g, bn(), &[x], "bn1");
    let b2 = add(&mut g, bn(), &[x], "bn2");
    let p1 = add(&mut g, Op::Prelu, &[x], "pr1");
    let p2 = add(&mut g, Op::Prelu, &[x], "pr2");
    // Slopes differing only in sign bit: 0.0 and -0.0 compare equal as floats, not as bits.
    let l1 = add(&mut g, Op::Activation(Activation::LeakyRelu { slope: 0.0 }), &[x], "l1");
    let l2 = add(&mut g, Op::Activation(Activation::LeakyRelu { slope: -0.0 }), &[x], "l2");
    let m1 = add(&mut g, maxpool(3, 1, 1), &[x], "m1");
    let m2 = add(
        &mut g,
        Op::Pool { kind: cnnc_ir::PoolKind::Avg { include_pad: true }, window: window(3, 1, 1) },
        &[x],
        "m2",
    );
    let d1 = add(&mut g, Op::Dropout { p: 0.5 }, &[x], "d1");
    let d2 = add(&mut g, Op::Dropout { p: 0.5 }, &[x], "d2");
    // Concat is not commutative.
    let k1 = add(&mut g, Op::Concat, &[x, y], "k1");
    let k2 = add(&mut g, Op::Concat, &[y, x], "k2");
    let k = add(&mut g, Op::Concat, &[c1, c2, b1, b2, p1, p2, l1, l2, m1, m2, d1, d2, k1, k2], "all");
    g.outputs = vec![k];
    let (after, merged) = run_one(&g, None, Mode::Training, cse::run);
    assert_eq!(merged, 0, "{}", print(&after));
    assert_eq!(after, g);
}

// ---------------------------------------------------------------- fold-bn

/// `x -> conv -> bn -> relu`, and `flatten -> fc -> bn` at the end.
fn conv_bn_fc_bn(conv_bias: bool) -> Graph {
    let mut g = Graph::new("fold");
    let x = input(&mut g, "x", &[3, 9, 9]);
    let op = Op::Conv(Conv {
        out_channels: 6,
        window: cnnc_ir::Window { dilation: [2, 1], ..window(3, 2, 1) },
        groups: 3,
        bias: conv_bias,
    });
    let c = add(&mut g, op, &[x], "conv");
    let b = add(&mut g, bn(), &[c], "bn");
    let r = add(&mut g, relu(), &[b], "relu");
    let f = add(&mut g, Op::Flatten, &[r], "flatten");
    let l = add(&mut g, fc(5, false), &[f], "fc");
    let o = add(&mut g, Op::BatchNorm(cnnc_ir::BatchNorm { eps: 1e-3, momentum: 0.1 }), &[l], "fc_bn");
    g.outputs = vec![o];
    g
}

/// Random weights, batch-norm statistics included (initialisation makes BN the identity).
fn random_weights(g: &Graph, seed: u64) -> TensorMap {
    let mut w = init_params(g, seed);
    for (name, t) in w.iter_mut() {
        let mut rng = Rng::for_name(seed + 1, name);
        for x in &mut t.data {
            *x =
                if name.ends_with("running_var") { (0.5 + rng.next_f64()) as f32 } else { (rng.normal() * 0.5) as f32 };
        }
    }
    w
}

#[test]
fn fold_bn_fires_on_conv_and_fc_and_gives_the_same_numbers() {
    for conv_bias in [false, true] {
        let g = conv_bn_fc_bn(conv_bias);
        let mut weights = random_weights(&g, 7);
        let (after, folded) = run_one(&g, Some(&mut weights), Mode::Inference, fold_bn::run);
        assert_eq!(folded, 2);
        assert_eq!(after.len(), 5);
        cnnc_runtime::check_weights(&after, &weights).unwrap();
        assert!(!weights.keys().any(|k| k.starts_with("bn.") || k.starts_with("fc_bn.")), "{:?}", weights.keys());

        let original = random_weights(&g, 7);
        let x = random_input(&[2, 3, 9, 9], 3);
        let want = reference::run(&g, &original, &x);
        let got = reference::run(&after, &weights, &x);
        assert_close(&got, &want, 1e-5);
        if !conv_bias {
            insta::assert_snapshot!("fold_bn", before_after(&g, &after));
        }
    }
}

#[test]
fn fold_bn_without_weights_changes_only_the_graph() {
    let g = conv_bn_fc_bn(false);
    let (after, folded) = run_one(&g, None, Mode::Inference, fold_bn::run);
    assert_eq!(folded, 2);
    assert!(matches!(after[cnnc_ir::NodeId::from_index(1)].op, Op::Conv(Conv { bias: true, .. })));
}

#[test]
fn fold_bn_does_not_fire_where_it_must_not() {
    let mut g = Graph::new("nofold");
    let x = input(&mut g, "x", &[4, 8, 8]);
    // The conv's output has a second user: the unnormalised value is still needed.
    let c1 = add(&mut g, conv(4, 3, 1, 1, false), &[x], "c1");
    let b1 = add(&mut g, bn(), &[c1], "b1");
    let s = add(&mut g, Op::Add, &[b1, c1], "s");
    // Batch norm after an activation, and on a model input.
    let r = add(&mut g, relu(), &[s], "r");
    let b2 = add(&mut g, bn(), &[r], "b2");
    let b3 = add(&mut g, bn(), &[x], "b3");
    // The conv's output is a model output.
    let c4 = add(&mut g, conv(4, 1, 1, 0, true), &[b2], "c4");
    let b4 = add(&mut g, bn(), &[c4], "b4");
    // Two batch norms reading one conv.
    let c5 = add(&mut g, conv(4, 1, 1, 0, true), &[b3], "c5");
    let b5a = add(&mut g, bn(), &[c5], "b5a");
    let b5b = add(&mut g, bn(), &[c5], "b5b");
    g.outputs = vec![b4, c4, b5a, b5b];
    let mut weights = random_weights(&g, 1);
    let before = weights.clone();
    let (after, folded) = run_one(&g, Some(&mut weights), Mode::Inference, fold_bn::run);
    assert_eq!(folded, 0);
    assert_eq!(after, g);
    assert_eq!(weights, before);
}

#[test]
fn fold_bn_reports_missing_and_misshapen_weights() {
    let g = conv_bn_fc_bn(false);
    let mut weights = random_weights(&g, 1);
    weights.remove("bn.running_var");
    let mut cx = cnnc_passes::Ctx::new(g.clone(), Some(&mut weights), Mode::Inference);
    let e = fold_bn::run(&mut cx).unwrap_err();
    assert_eq!(e.to_string(), "pass `fold-bn`: weight `bn.running_var` is missing");
    let mut weights = random_weights(&g, 1);
    weights.insert("conv.weight".into(), Tensor::zeros(&[6, 3, 3, 3]));
    let mut cx = cnnc_passes::Ctx::new(g, Some(&mut weights), Mode::Inference);
    let e = fold_bn::run(&mut cx).unwrap_err();
    assert_eq!(e.to_string(), "pass `fold-bn`: weight `conv.weight` has shape [6, 3, 3, 3], expected [6, 1, 3, 3]");
}

fn random_input(shape: &[usize], seed: u64) -> Tensor {
    let mut rng = Rng::seed_from_u64(seed);
    let n = shape.iter().product();
    Tensor { shape: shape.to_vec(), data: (0..n).map(|_| rng.normal() as f32).collect() }
}

fn assert_close(got: &[Vec<f64>], want: &[Vec<f64>], rtol: f64) {
    assert_eq!(got.len(), want.len());
    for (g, w) in got.iter().zip(want) {
        assert_eq!(g.len(), w.len());
        let scale = w.iter().fold(0f64, |m, x| m.max(x.abs())).max(1e-30);
        for (a, b) in g.iter().zip(w) {
            assert!((a - b).abs() <= rtol * scale, "{a} vs {b} (scale {scale})");
        }
    }
}

/// A tiny f64 reference for the ops these tests use (conv, bn at inference, relu, flatten,
/// fc), independent of the interpreter.
mod reference {
    use cnnc_ir::{Graph, Op};
    use cnnc_runtime::{Tensor, TensorMap};

    pub fn run(g: &Graph, w: &TensorMap, x: &Tensor) -> Vec<Vec<f64>> {
        let n = x.shape[0];
        let mut vals: Vec<Vec<f64>> = Vec::new();
        let p = |name: &str, suffix: &str| -> Option<Vec<f64>> {
            w.get(&format!("{name}.{suffix}")).map(|t| t.data.iter().map(|&v| f64::from(v)).collect())
        };
        for (_, node) in g.iter() {
            let input = node.inputs.first().map(|i| (&vals[i.index()], &g[*i].shape));
            let out = match &node.op {
                Op::Input => x.data.iter().map(|&v| f64::from(v)).collect(),
                Op::Conv(c) => {
                    let (xv, xs) = input.unwrap();
                    let [ci, hi, wi] = [xs.0[0], xs.0[1], xs.0[2]];
                    let [co, ho, wo] = [node.shape.0[0], node.shape.0[1], node.shape.0[2]];
                    let wt = p(&node.name, "weight").unwrap();
                    let bias = p(&node.name, "bias");
                    let [kh, kw] = c.window.kernel;
                    let cig = ci / c.groups;
                    let cog = co / c.groups;
                    let mut out = vec![0.0; n * co * ho * wo];
                    for b in 0..n {
                        for o in 0..co {
                            let grp = o / cog;
                            for y in 0..ho {
                                for xx in 0..wo {
                                    let mut acc = bias.as_ref().map_or(0.0, |bb| bb[o]);
                                    for cc in 0..cig {
                                        let ic = grp * cig + cc;
                                        for ky in 0..kh {
                                            for kx in 0..kw {
                                                let iy = (y * c.window.stride[0] + ky * c.window.dilation[0]) as isize
                                                    - c.window.pad[0] as isize;
                                                let ix = (xx * c.window.stride[1] + kx * c.window.dilation[1]) as isize
                                                    - c.window.pad[1] as isize;
                                                if iy < 0 || ix < 0 || iy >= hi as isize || ix >= wi as isize {
                                                    continue;
                                                }
                                                let xi = ((b * ci + ic) * hi + iy as usize) * wi + ix as usize;
                                                let wi_ = ((o * cig + cc) * kh + ky) * kw + kx;
                                                acc += xv[xi] * wt[wi_];
                                            }
                                        }
                                    }
                                    out[((b * co + o) * ho + y) * wo + xx] = acc;
                                }
                            }
                        }
                    }
                    out
                }
                Op::BatchNorm(bn) => {
                    let (xv, xs) = input.unwrap();
                    let c = xs.0[0];
                    let per = xs.elements() / c;
                    let [gm, bt, mn, vr] =
                        ["weight", "bias", "running_mean", "running_var"].map(|s| p(&node.name, s).unwrap());
                    xv.iter()
                        .enumerate()
                        .map(|(i, &v)| {
                            let ch = (i / per) % c;
                            (v - mn[ch]) / (vr[ch] + bn.eps).sqrt() * gm[ch] + bt[ch]
                        })
                        .collect()
                }
                Op::Activation(cnnc_ir::Activation::Relu) => input.unwrap().0.iter().map(|&v| v.max(0.0)).collect(),
                Op::Flatten => input.unwrap().0.clone(),
                Op::Fc(_) => {
                    let (xv, xs) = input.unwrap();
                    let fi = xs.0[0];
                    let fo = node.shape.0[0];
                    let wt = p(&node.name, "weight").unwrap();
                    let bias = p(&node.name, "bias");
                    let mut out = vec![0.0; n * fo];
                    for b in 0..n {
                        for o in 0..fo {
                            out[b * fo + o] = bias.as_ref().map_or(0.0, |bb| bb[o])
                                + (0..fi).map(|i| xv[b * fi + i] * wt[o * fi + i]).sum::<f64>();
                        }
                    }
                    out
                }
                other => panic!("reference has no {}", other.keyword()),
            };
            vals.push(out);
        }
        g.outputs.iter().map(|o| vals[o.index()].clone()).collect()
    }
}

// ---------------------------------------------------------------- shared by the passes below

/// Runs `graph` and `after` on the interpreter (f64) with the same weights and input, and
/// checks the outputs agree; in training, through their training graphs (batch statistics,
/// dropout masks, fixed output gradients), every gradient too.
fn same_numbers(graph: &Graph, after: &Graph, weights: &TensorMap, mode: Mode) {
    use cnnc_interp::{Buf, BufMap, Gradients, Options, Precision, gradients, run};
    use cnnc_passes::{Objective, TrainingOptions, training_graph};
    let weights: BufMap = weights.iter().map(|(k, v)| (k.clone(), Buf::from_tensor(v))).collect();
    let x: Vec<Buf> = graph
        .inputs
        .iter()
        .enumerate()
        .map(|(k, &i)| {
            let mut shape = vec![2];
            shape.extend_from_slice(&graph[i].shape.0);
            Buf::from_tensor(&random_input(&shape, 50 + k as u64))
        })
        .collect();
    let opts = Options::new().with_precision(Precision::F64).with_seed(1);
    let vjp = TrainingOptions {
        objective: Objective::OutputGradients,
        input_grads: true,
        ..TrainingOptions::new(cnnc_ir::Loss::Mse)
    };
    let run_on = |g: &Graph| -> Gradients<Buf> {
        match mode {
            Mode::Inference => {
                let r = run(g, &mut weights.clone(), &x, &opts).unwrap();
                let outputs = r.outputs().into_iter().flatten().collect();
                Gradients { loss: None, outputs, params: Default::default(), inputs: Default::default() }
            }
            Mode::Training => {
                let t = training_graph(g, &vjp).unwrap();
                let mut inputs = x.clone();
                for &o in &g.outputs {
                    let mut shape = vec![2];
                    shape.extend_from_slice(&g[o].shape.0);
                    let n: usize = shape.iter().product();
                    inputs.push(Buf { shape, data: (0..n).map(|i| (i % 5) as f64 - 2.0).collect() });
                }
                gradients(&t.outputs, &run(&t.graph, &mut weights.clone(), &inputs, &opts).unwrap())
            }
        }
    };
    let (want, got) = (run_on(graph), run_on(after));
    let close = |a: &Buf, b: &Buf, what: &str| {
        let scale = b.data.iter().fold(0f64, |m, x| m.max(x.abs())).max(1e-300);
        for (p, q) in a.data.iter().zip(&b.data) {
            assert!((p - q).abs() <= 1e-10 * scale, "{what}: {p} vs {q}");
        }
    };
    for (a, b) in got.outputs.iter().zip(&want.outputs) {
        close(a, b, "output");
    }
    assert_eq!(got.params.keys().collect::<Vec<_>>(), want.params.keys().collect::<Vec<_>>());
    for (k, v) in &want.params {
        close(&got.params[k], v, k);
    }
    for (p, q) in got.inputs.values().zip(want.inputs.values()) {
        close(p, q, "input gradient");
    }
}

// ---------------------------------------------------------------- to-gemm

#[test]
fn to_gemm_takes_pointwise_convolutions_and_fc_layers_only() {
    let mut g = Graph::new("gemm");
    let x = input(&mut g, "x", &[8, 6, 6]);
    let a = add(&mut g, conv(16, 1, 1, 0, true), &[x], "pointwise");
    let b = add(&mut g, conv(16, 1, 1, 0, false), &[a], "pointwise_nobias");
    let c = add(&mut g, conv(16, 1, 2, 0, true), &[b], "strided"); // ResNet's downsample
    let d = add(&mut g, conv(16, 1, 1, 1, true), &[c], "padded");
    let grouped = Op::Conv(Conv { out_channels: 16, window: window(1, 1, 0), groups: 2, bias: true });
    let e = add(&mut g, grouped, &[d], "grouped");
    let f = add(&mut g, conv(16, 3, 1, 1, true), &[e], "three");
    let flat = add(&mut g, Op::Flatten, &[f], "flatten");
    let y = add(&mut g, fc(10, true), &[flat], "fc");
    g.outputs = vec![y];
    let (after, lowered) = run_one(&g, None, Mode::Inference, cnnc_passes::gemm::run);
    assert_eq!(lowered, 3);
    let ops: Vec<&str> = after.iter().map(|(_, n)| n.op.keyword()).collect();
    assert_eq!(ops, ["input", "gemm", "gemm", "conv", "conv", "conv", "conv", "flatten", "gemm"]);
    // Same parameters, same names and shapes: the weights load unchanged.
    assert_eq!(after.named_params(), g.named_params());
    let weights = random_weights(&g, 2);
    same_numbers(&g, &after, &weights, Mode::Training);
    insta::assert_snapshot!("to_gemm", before_after(&g, &after));
}

// ---------------------------------------------------------------- fuse-epilogue

/// ResNet's basic block tail and a projection block, with batch norms:
/// `x -> conv -> bn -> relu -> conv -> bn -> add(., x) -> relu -> [conv -> bn, 1x1 conv -> bn] -> add -> relu`.
fn residual_blocks() -> Graph {
    let mut g = Graph::new("res");
    let x = input(&mut g, "x", &[8, 8, 8]);
    let c1 = add(&mut g, conv(8, 3, 1, 1, false), &[x], "b1.conv1");
    let n1 = add(&mut g, bn(), &[c1], "b1.bn1");
    let r1 = add(&mut g, relu(), &[n1], "b1.relu1");
    let c2 = add(&mut g, conv(8, 3, 1, 1, false), &[r1], "b1.conv2");
    let n2 = add(&mut g, bn(), &[c2], "b1.bn2");
    let s = add(&mut g, Op::Add, &[n2, x], "b1.add");
    let r = add(&mut g, relu(), &[s], "b1.relu2");
    let c3 = add(&mut g, conv(16, 3, 2, 1, false), &[r], "b2.conv1");
    let n3 = add(&mut g, bn(), &[c3], "b2.bn1");
    let d = add(&mut g, conv(16, 1, 2, 0, false), &[r], "b2.downsample.0");
    let dn = add(&mut g, bn(), &[d], "b2.downsample.1");
    let s2 = add(&mut g, Op::Add, &[n3, dn], "b2.add");
    let r2 = add(&mut g, relu(), &[s2], "b2.relu");
    g.outputs = vec![r2];
    g
}

#[test]
fn resnet_blocks_end_as_one_node_after_folding() {
    let g = residual_blocks();
    let mut weights = random_weights(&g, 4);
    let (folded, _) = run_one(&g, Some(&mut weights), Mode::Inference, fold_bn::run);
    let (after, absorbed) = run_one(&folded, None, Mode::Inference, cnnc_passes::fuse::run);
    assert_eq!(absorbed, 5);
    assert_eq!(after.len(), 5, "{}", print(&after));
    let last = after.outputs[0];
    assert_eq!(after[last].name, "b2.conv1");
    assert_eq!(after[last].absorbed, ["b2.bn1", "b2.add", "b2.relu"]);
    // fold-bn's numbers are checked above; here fusion against the folded graph.
    same_numbers(&folded, &after, &weights, Mode::Inference);
    insta::assert_snapshot!("fuse_epilogue", before_after(&folded, &after));
}

#[test]
fn fusion_does_not_fire_where_it_must_not() {
    let mut g = Graph::new("nofuse");
    let x = input(&mut g, "x", &[8, 6, 6]);
    // ReLU before the add: the relu fuses into the conv, the add stays.
    let c1 = add(&mut g, conv(8, 3, 1, 1, true), &[x], "c1");
    let r1 = add(&mut g, relu(), &[c1], "r1");
    let s1 = add(&mut g, Op::Add, &[r1, x], "s1");
    // The conv's value has a second reader: nothing fuses.
    let c2 = add(&mut g, conv(8, 3, 1, 1, true), &[s1], "c2");
    let r2 = add(&mut g, relu(), &[c2], "r2");
    let m2 = add(&mut g, maxpool(3, 1, 1), &[c2], "m2");
    let s2 = add(&mut g, Op::Add, &[r2, m2], "s2");
    // A three-way add is no residual; the relu after it does not reach the conv.
    let c3 = add(&mut g, conv(8, 1, 1, 0, true), &[s2], "c3");
    let s3 = add(&mut g, Op::Add, &[c3, s2, x], "s3");
    let r3 = add(&mut g, relu(), &[s3], "r3");
    // `add(c, c)` reads the conv twice; the conv's value is a model output elsewhere.
    let c4 = add(&mut g, conv(8, 1, 1, 0, true), &[r3], "c4");
    let s4 = add(&mut g, Op::Add, &[c4, c4], "s4");
    let c5 = add(&mut g, conv(8, 3, 1, 1, true), &[s4], "c5");
    let r5 = add(&mut g, relu(), &[c5], "r5");
    g.outputs = vec![r5, c5];
    let (after, absorbed) = run_one(&g, None, Mode::Inference, cnnc_passes::fuse::run);
    assert_eq!(absorbed, 1, "{}", print(&after));
    assert_eq!(after[cnnc_ir::NodeId::from_index(1)].absorbed, ["r1"]);
    insta::assert_snapshot!("fuse_epilogue_negative", before_after(&g, &after));

    // An add of operands of different shapes cannot exist, nor a fused residual of another shape.
    let mut g = Graph::new("shapes");
    let x = input(&mut g, "x", &[8, 6, 6]);
    let c = add(&mut g, conv(8, 3, 2, 1, true), &[x], "c");
    let e = g.add(Op::Add, vec![c, x], "s", Default::default()).unwrap_err();
    assert_eq!(e.to_string(), "cannot add [8, 3, 3] and [8, 6, 6]");
    let fused = Op::Fused {
        base: cnnc_ir::FusedBase::Conv(Conv { out_channels: 8, window: window(3, 2, 1), groups: 1, bias: true }),
        epilogue: cnnc_ir::Epilogue { residual: true, activation: None },
    };
    assert!(g.add(fused, vec![x, x], "f", Default::default()).is_err());
}

#[test]
fn fusion_in_training_keeps_only_activations_derived_from_their_output() {
    let mut g = Graph::new("train");
    let x = input(&mut g, "x", &[8, 6, 6]);
    let c1 = add(&mut g, conv(8, 3, 1, 1, true), &[x], "c1");
    let s1 = add(&mut g, Op::Add, &[c1, x], "s1");
    let r1 = add(&mut g, relu(), &[s1], "r1");
    let c2 = add(&mut g, conv(8, 3, 1, 1, true), &[r1], "c2");
    let l2 = add(&mut g, Op::Activation(Activation::LeakyRelu { slope: 0.1 }), &[c2], "leaky");
    let f = add(&mut g, Op::Flatten, &[l2], "flat");
    let y = add(&mut g, fc(4, true), &[f], "fc");
    let t = add(&mut g, Op::Activation(Activation::Tanh), &[y], "tanh");
    g.outputs = vec![t];
    let (after, absorbed) = run_one(&g, None, Mode::Training, cnnc_passes::fuse::run);
    // c1 absorbs the add and the relu, fc the tanh; the leaky relu stays (its derivative needs
    // its operand, which fusion would not store).
    assert_eq!(absorbed, 3, "{}", print(&after));
    let weights = random_weights(&g, 9);
    same_numbers(&g, &after, &weights, Mode::Training);
    let (after_inf, absorbed) = run_one(&g, None, Mode::Inference, cnnc_passes::fuse::run);
    assert_eq!(absorbed, 4);
    same_numbers(&g, &after_inf, &weights, Mode::Inference);
}

// ---------------------------------------------------------------- concat-in-place

fn inception(extra_reader: bool) -> Graph {
    let mut g = Graph::new("inception");
    let x = input(&mut g, "x", &[16, 8, 8]);
    let a = add(&mut g, conv(16, 1, 1, 0, true), &[x], "b1");
    let b = add(&mut g, conv(8, 1, 1, 0, true), &[x], "b2.reduce");
    let b = add(&mut g, relu(), &[b], "b2.relu");
    let b = add(&mut g, conv(16, 3, 1, 1, true), &[b], "b2.conv");
    let c = add(&mut g, maxpool(3, 1, 1), &[x], "b3.pool");
    let c = add(&mut g, conv(16, 1, 1, 0, true), &[c], "b3.proj");
    let cat = add(&mut g, Op::Concat, &[a, b, c], "cat");
    let y = add(&mut g, maxpool(2, 2, 0), &[cat], "pool");
    g.outputs = vec![y];
    if extra_reader {
        let r = add(&mut g, relu(), &[b], "extra");
        g.outputs.push(r);
    }
    g
}

#[test]
fn concat_in_place_fires_when_every_operand_is_private() {
    let g = inception(false);
    let (after, marked) = run_one(&g, None, Mode::Inference, cnnc_passes::concat::run);
    assert_eq!(marked, 1);
    insta::assert_snapshot!("concat_in_place", before_after(&g, &after));
    let weights = random_weights(&g, 5);
    same_numbers(&g, &after, &weights, Mode::Training);
    let plan = plan_of(&after, true);
    assert_eq!(plan.memory.slices().len(), 3);
}

#[test]
fn concat_in_place_does_not_fire_on_shared_repeated_input_or_output_operands() {
    let (_, marked) = run_one(&inception(true), None, Mode::Inference, cnnc_passes::concat::run);
    assert_eq!(marked, 0);
    let mut g = Graph::new("cats");
    let x = input(&mut g, "x", &[16, 4, 4]);
    let a = add(&mut g, relu(), &[x], "a");
    let k1 = add(&mut g, Op::Concat, &[x, a], "with_input");
    let b = add(&mut g, relu(), &[x], "b");
    let k2 = add(&mut g, Op::Concat, &[b, b], "repeated");
    let c = add(&mut g, relu(), &[x], "c");
    let d = add(&mut g, relu(), &[x], "d");
    let k3 = add(&mut g, Op::Concat, &[c, d], "with_output");
    g.outputs = vec![k1, k2, k3, d];
    let (after, marked) = run_one(&g, None, Mode::Inference, cnnc_passes::concat::run);
    assert_eq!(marked, 0);
    assert_eq!(after, g);
}

// ---------------------------------------------------------------- layout

/// `x[3] -> conv 32 -> relu -> maxpool -> conv 24 -> relu -> conv 32 -> gap -> flatten -> fc`,
/// with an 8-channel side branch.
fn layout_graph() -> Graph {
    let mut g = Graph::new("layout");
    let x = input(&mut g, "x", &[3, 16, 16]);
    let c1 = add(&mut g, conv(32, 3, 1, 1, true), &[x], "conv1");
    let r1 = add(&mut g, relu(), &[c1], "relu1");
    let p = add(&mut g, maxpool(2, 2, 0), &[r1], "pool");
    let c2 = add(&mut g, conv(24, 3, 1, 1, true), &[p], "conv2");
    let r2 = add(&mut g, relu(), &[c2], "relu2");
    let c3 = add(&mut g, conv(32, 3, 1, 1, true), &[r2], "conv3");
    let s = add(&mut g, Op::Add, &[c3, p], "add");
    let side = add(&mut g, conv(8, 1, 1, 0, true), &[s], "side");
    let side = add(&mut g, relu(), &[side], "side_relu");
    let gp = add(&mut g, Op::GlobalPool(cnnc_ir::PoolKind::Avg { include_pad: true }), &[s], "gap");
    let f = add(&mut g, Op::Flatten, &[gp], "flatten");
    let y = add(&mut g, fc(10, true), &[f], "fc");
    g.outputs = vec![y, side];
    g
}

#[test]
fn layout_blocks_the_conv_region_and_reorders_at_its_edges() {
    let g = layout_graph();
    let (after, reorders) = run_one(&g, None, Mode::Inference, cnnc_passes::layout::run);
    // Into the region after the pool (its operand, conv1's output, is 4x larger), out of it
    // after conv3: the add costs the same reorders blocked or plain, and plain it lets the
    // 8-channel side conv and the pooling before flatten read plain data.
    assert_eq!(reorders, 2, "{}", print(&after));
    insta::assert_snapshot!("layout", before_after(&g, &after));
    let weights = random_weights(&g, 6);
    same_numbers(&g, &after, &weights, Mode::Training);
    let layouts: Vec<(String, &str)> =
        cnnc_passes::layout::weight_layouts(&after).into_iter().map(|(n, w)| (n, w.name())).collect();
    assert_eq!(
        layouts,
        [("conv1", "oihw"), ("conv2", "OIhw16i16o"), ("conv3", "OIhw16i16o"), ("side", "oihw"), ("fc", "oi")]
            .map(|(n, w)| (n.to_string(), w))
    );
    // Idempotent: a second run finds the same layouts.
    let (again, _) = run_one(&after, None, Mode::Inference, cnnc_passes::layout::run);
    assert_eq!(again, after);
    // The 24-channel value is stored padded to 32 channels.
    let plan = plan_of(&after, true);
    let conv2 = after.iter().find(|(_, n)| n.name == "conv2").unwrap().0;
    assert_eq!(plan.memory.place(conv2).unwrap().bytes, 32 * 8 * 8 * 4);
}

#[test]
fn layout_leaves_regions_without_convolutions_plain() {
    let mut g = Graph::new("noconv");
    let x = input(&mut g, "x", &[32, 8, 8]);
    let p = add(&mut g, maxpool(2, 2, 0), &[x], "pool");
    let r = add(&mut g, relu(), &[p], "relu");
    g.outputs = vec![r];
    let (after, reorders) = run_one(&g, None, Mode::Inference, cnnc_passes::layout::run);
    assert_eq!(reorders, 0);
    assert_eq!(after, g);
}

// ---------------------------------------------------------------- training graph maps

/// `values` and `value_grads` name, for every forward layer, the training node holding its
/// output and its output's gradient (what `--dump` reads): the values are the forward pass's
/// own numbers, the gradient of the logits is softmax minus one-hot over N, and the input's is
/// the graph's input-gradient output.
#[test]
fn training_graph_maps_each_layer_to_its_value_and_gradient() {
    use cnnc_interp::{Buf, BufMap, Options, Precision, gradients, run};
    use cnnc_passes::{TrainingOptions, training_graph};
    let mut g = Graph::new("maps");
    let x = input(&mut g, "x", &[3, 6, 6]);
    let c = add(&mut g, conv(4, 3, 1, 1, true), &[x], "conv");
    let b = add(&mut g, bn(), &[c], "bn");
    let r = add(&mut g, relu(), &[b], "relu");
    // Two uses: the gradient of `conv` is the sum of two contributions.
    let sum = add(&mut g, Op::Add, &[r, c], "sum");
    let p = add(&mut g, maxpool(2, 2, 0), &[sum], "pool");
    let f = add(&mut g, Op::Flatten, &[p], "flatten");
    let l = add(&mut g, fc(5, true), &[f], "fc");
    g.outputs = vec![l];
    let options =
        TrainingOptions { batch_stats: false, input_grads: true, ..TrainingOptions::new(cnnc_ir::Loss::CrossEntropy) };
    let t = training_graph(&g, &options).unwrap();
    assert_eq!((t.values.len(), t.value_grads.len()), (g.len(), g.len()));
    for (id, node) in g.iter() {
        let value = t.values[id.index()].unwrap_or_else(|| panic!("{} has a value", node.name));
        let grad = t.value_grads[id.index()].unwrap_or_else(|| panic!("{} has a gradient", node.name));
        assert_eq!(t.graph[value].shape, node.shape, "{}", node.name);
        assert_eq!(t.graph[grad].shape, node.shape, "{}'s gradient", node.name);
    }

    let weights: BufMap = random_weights(&g, 3).iter().map(|(k, v)| (k.clone(), Buf::from_tensor(v))).collect();
    let xs = Buf::from_tensor(&random_input(&[2, 3, 6, 6], 4));
    let labels = Buf { shape: vec![2], data: vec![4.0, 1.0] };
    let opts = Options::new().with_precision(Precision::F64).keeping_values();
    let inference = run(&g, &mut weights.clone(), std::slice::from_ref(&xs), &opts).unwrap();
    let training = run(&t.graph, &mut weights.clone(), &[xs, labels.clone()], &opts).unwrap();
    for (id, node) in g.iter() {
        let want = inference.value(id).unwrap();
        let got = training.value(t.values[id.index()].unwrap()).unwrap();
        assert_eq!(got.data, want.data, "{}", node.name);
    }
    let logits = training.value(t.values[l.index()].unwrap()).unwrap();
    let dlogits = training.value(t.value_grads[l.index()].unwrap()).unwrap();
    for (n, row) in logits.data.chunks(5).enumerate() {
        let max = row.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let z: f64 = row.iter().map(|v| (v - max).exp()).sum();
        for (j, v) in row.iter().enumerate() {
            let onehot = if j as f64 == labels.data[n] { 1.0 } else { 0.0 };
            let want = ((v - max).exp() / z - onehot) / 2.0;
            assert!((dlogits.data[n * 5 + j] - want).abs() < 1e-12, "d logits[{n}, {j}]");
        }
    }
    let input_grad = gradients::<Buf>(&t.outputs, &training).inputs.remove(&0).unwrap();
    assert_eq!(training.value(t.value_grads[x.index()].unwrap()).unwrap().data, input_grad.data);
}

// ---------------------------------------------------------------- taps

/// A plan with taps runs the same graph and also returns the tapped values, which are the
/// logical run's values of those nodes (in the physical mode, through the replanned arena).
#[test]
fn taps_keep_values_to_the_end_without_changing_the_numbers() {
    use cnnc_interp::{Options, TensorLike, run, run_plan};
    let g = conv_bn_fc_bn(true);
    let weights = random_weights(&g, 8);
    let opt = cnnc_passes::optimize(&g, Some(&weights), &cnnc_passes::PassOptions::all()).unwrap();
    let plan = &opt.plan;
    let taps: Vec<cnnc_ir::NodeId> = plan.graph.ids().filter(|&id| plan.graph[id].op != Op::Input).collect();
    assert!(taps.len() >= 3, "{}", plan.render());
    let tapped = cnnc_passes::plan::with_taps(plan, &taps);
    assert_eq!(tapped.graph.outputs.len(), plan.graph.outputs.len() + taps.len());
    assert_eq!(tapped.transforms, plan.transforms, "the same weights, packed once");
    cnnc_passes::memory::check(&tapped.graph, &tapped.memory).unwrap();
    let x = random_input(&[2, 3, 9, 9], 5);
    let physical = run_plan(&tapped, &mut weights.clone(), std::slice::from_ref(&x), &Options::new()).unwrap();
    let mut folded = opt.weights.clone().unwrap();
    let logical = run(&plan.graph, &mut folded, std::slice::from_ref(&x), &Options::new().keeping_values()).unwrap();
    let model = plan.graph.outputs.len();
    for (k, &tap) in taps.iter().enumerate() {
        let got: Tensor = physical.output(model + k).unwrap();
        let want = Tensor::from_buf(logical.value(tap).unwrap());
        assert_eq!(got, want, "{}", plan.graph[tap].name);
    }
}
