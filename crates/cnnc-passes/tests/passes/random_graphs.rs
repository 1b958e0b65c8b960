//! Random graphs through the whole pipeline: the result verifies, its memory plan checks, the
//! interpreter (f64) computes the same outputs and, through the training graphs, the same
//! gradients; and each plan, run physically, equals its graph run logically, bit for bit.

use crate::common::*;
use cnnc_interp::{Buf, BufMap, Options, Precision, gradients, run, run_plan};
use cnnc_ir::{Activation, Graph, Loss, NodeId, Op, PoolKind, Shape};
use cnnc_passes::memory::check;
use cnnc_passes::{Objective, PassOptions, TrainingOptions, optimize, optimize_training, training_graph};
use cnnc_runtime::{Rng, Tensor, TensorMap, init_params};

struct Gen {
    g: Graph,
    rng: Rng,
    nodes: Vec<NodeId>,
}

impl Gen {
    fn pick(&mut self, n: usize) -> usize {
        (self.rng.next_u64() % n as u64) as usize
    }

    fn node(&mut self, op: Op, inputs: &[NodeId]) -> NodeId {
        let name = format!("n{}", self.g.len());
        let id = add(&mut self.g, op, inputs, &name);
        self.nodes.push(id);
        id
    }

    fn channels(&mut self) -> usize {
        [8, 16, 24, 32][self.pick(4)]
    }

    fn activation(&mut self) -> Op {
        Op::Activation(match self.pick(4) {
            0 => Activation::Sigmoid,
            1 => Activation::LeakyRelu { slope: 0.1 },
            _ => Activation::Relu,
        })
    }
}

/// A random DAG over `[C, 6, 6]` maps exercising every pass: conv/bn/activation chains,
/// residual adds, inception-like concats, pooling, dropout, then a classifier head.
fn random_graph(seed: u64) -> Graph {
    let mut b = Gen { g: Graph::new(format!("random{seed}")), rng: Rng::seed_from_u64(seed), nodes: Vec::new() };
    let x = b.g.add_input("x", Shape(vec![3, 6, 6]), Default::default()).unwrap();
    let first = b.channels();
    b.node(conv(first, 3, 1, 1, true), &[x]);
    let steps = 4 + b.pick(8);
    for _ in 0..steps {
        let k = b.pick(b.nodes.len());
        let a = b.nodes[k];
        let c = b.g[a].shape.channels();
        match b.pick(9) {
            0 => {
                let out = b.channels();
                let k = [1, 3][b.pick(2)];
                let bias = b.pick(2) == 0;
                let v = b.node(conv(out, k, 1, k / 2, bias), &[a]);
                if b.pick(2) == 0 {
                    b.node(bn(), &[v]);
                }
            }
            1 => {
                let act = b.activation();
                b.node(act, &[a]);
            }
            2 => {
                b.node(bn(), &[a]);
            }
            3 => {
                b.node(maxpool(3, 1, 1), &[a]);
            }
            4 => {
                let same: Vec<NodeId> = b.nodes.iter().copied().filter(|&n| b.g[n].shape.channels() == c).collect();
                let other = same[b.pick(same.len())];
                b.node(Op::Add, &[a, other]);
            }
            5 => {
                // Inception-like: private branches, concatenated.
                let branches = 2 + b.pick(2);
                let mut outs = Vec::new();
                for _ in 0..branches {
                    let out = [16, 32, 8][b.pick(3)];
                    let v = b.node(conv(out, 1, 1, 0, true), &[a]);
                    let act = b.activation();
                    outs.push(b.node(act, &[v]));
                }
                b.node(Op::Concat, &outs);
            }
            6 => {
                b.node(Op::Dropout { p: 0.3 }, &[a]);
            }
            7 => {
                // A residual block.
                let v = b.node(conv(c, 3, 1, 1, false), &[a]);
                let v = b.node(bn(), &[v]);
                let v = b.node(Op::Add, &[v, a]);
                b.node(Op::Activation(Activation::Relu), &[v]);
            }
            _ => {
                let s = b.node(Op::Concat, &[a, a]);
                b.node(Op::Pool { kind: PoolKind::Avg { include_pad: true }, window: window(3, 1, 1) }, &[s]);
            }
        }
    }
    let last = *b.nodes.last().unwrap();
    let p = b.node(Op::GlobalPool(PoolKind::Avg { include_pad: true }), &[last]);
    let f = b.node(Op::Flatten, &[p]);
    let y = b.node(fc(5, true), &[f]);
    let users = b.g.users();
    let mut outputs = vec![y];
    outputs.extend(b.g.ids().filter(|&i| i != x && users[i.index()].is_empty() && i != y));
    b.g.outputs = outputs;
    if seed % 2 == 1 {
        // A dead node, for DCE.
        b.node(Op::Activation(Activation::Tanh), &[last]);
    }
    b.g
}

fn weights(g: &Graph, seed: u64) -> BufMap {
    let mut rng = Rng::seed_from_u64(seed);
    init_params(g, seed)
        .into_iter()
        .map(|(name, t)| {
            let mut b = Buf::from_tensor(&t);
            if name.ends_with("running_var") || (name.ends_with(".weight") && b.shape.len() == 1) {
                b.data.iter_mut().for_each(|v| *v = 0.5 + rng.next_f64());
            } else if name.ends_with("running_mean") || name.ends_with(".bias") {
                b.data.iter_mut().for_each(|v| *v = 0.2 * rng.normal());
            }
            // Rounded to f32, as the weights handed to the passes are.
            (name, Buf::from_tensor(&b.to_tensor()))
        })
        .collect()
}

/// Agreement to `rtol` of the largest magnitude. Folded weights are rounded to f32 once, so
/// inference agrees to ~1e-7; training (nothing folded) to f64 rounding.
fn close(a: &Buf, b: &Buf, rtol: f64, what: &str) {
    assert_eq!(a.shape, b.shape, "{what}");
    let scale = b.data.iter().fold(0f64, |m, x| m.max(x.abs())).max(1e-300);
    for (p, q) in a.data.iter().zip(&b.data) {
        // An absolute floor for tensors that are zero up to rounding (a bias before a
        // training-mode batch norm has no gradient).
        assert!((p - q).abs() <= rtol * scale + 1e-12, "{what}: {p} vs {q}");
    }
}

/// The outputs and the gradients (vector-Jacobian product with fixed seeds) of a graph,
/// logically, in f64; and the training graph's plan for a physical run.
fn vjp_options() -> TrainingOptions {
    TrainingOptions { objective: Objective::OutputGradients, input_grads: true, ..TrainingOptions::new(Loss::Mse) }
}

fn seeds(outputs: &[Buf]) -> Vec<Buf> {
    outputs
        .iter()
        .map(|o| Buf { shape: o.shape.clone(), data: (0..o.len()).map(|i| (i % 3) as f64 - 1.0).collect() })
        .collect()
}

fn outputs_of(r: &cnnc_interp::Run) -> Vec<Buf> {
    r.outputs().into_iter().flatten().collect()
}

#[test]
fn random_graphs_keep_their_numbers() {
    let mut fired = std::collections::BTreeMap::<&str, usize>::new();
    for seed in 0..200 {
        let g = random_graph(seed);
        if let Err(e) = cnnc_ir::verify(&g) {
            assert!(e.iter().all(|e| matches!(e, cnnc_ir::VerifyError::DeadNode { .. })), "{e:?}");
        }
        let w = weights(&g, seed);
        let tensors: TensorMap = w.iter().map(|(k, v)| (k.clone(), v.to_tensor())).collect();
        let mut rng = Rng::seed_from_u64(seed + 1000);
        let x = vec![Buf { shape: vec![3, 3, 6, 6], data: (0..324).map(|_| rng.normal()).collect() }];
        let f64_options = Options::new().with_precision(Precision::F64).with_seed(5);

        // Inference: the optimised graph's outputs.
        let opt = optimize(&g, Some(&tensors), &PassOptions::all())
            .unwrap_or_else(|e| panic!("seed {seed}: {e}\n{}", cnnc_ir::print(&g)));
        check(opt.graph(), &opt.plan.memory).unwrap_or_else(|e| panic!("seed {seed}: {e}\n{}", opt.print()));
        let new_w: BufMap =
            opt.weights.as_ref().unwrap().iter().map(|(k, v)| (k.clone(), Buf::from_tensor(v))).collect();
        let want = outputs_of(&run(&g, &mut w.clone(), &x, &f64_options).unwrap());
        let got = outputs_of(&run(opt.graph(), &mut new_w.clone(), &x, &f64_options).unwrap());
        for (k, (a, b)) in got.iter().zip(&want).enumerate() {
            close(a, b, 1e-6, &format!("seed {seed} inference output {k}\n{}", opt.print()));
        }
        record(&mut fired, &opt);
        let x32: Vec<Tensor> = x.iter().map(Buf::to_tensor).collect();
        physical_equals_logical(seed, &opt, &tensors, &x32);

        // Training: the vector-Jacobian graph of the source and the optimised one, with
        // batch statistics and dropout masks (keyed by layer name and step: the passes
        // cannot change them).
        let source = training_graph(&g, &vjp_options()).unwrap();
        let opt = optimize_training(&g, Some(&tensors), &PassOptions::all(), &vjp_options())
            .unwrap_or_else(|e| panic!("seed {seed} training: {e}\n{}", cnnc_ir::print(&g)));
        check(opt.graph(), &opt.plan.memory).unwrap_or_else(|e| panic!("seed {seed} training: {e}\n{}", opt.print()));
        record(&mut fired, &opt);
        let mut inputs = x.clone();
        inputs.extend(seeds(&want));
        let before =
            gradients::<Buf>(&source.outputs, &run(&source.graph, &mut w.clone(), &inputs, &f64_options).unwrap());
        let after =
            gradients::<Buf>(&opt.plan.outputs, &run(opt.graph(), &mut w.clone(), &inputs, &f64_options).unwrap());
        for (k, (a, b)) in after.outputs.iter().zip(&before.outputs).enumerate() {
            close(a, b, 1e-10, &format!("seed {seed} training output {k}"));
        }
        assert_eq!(after.params.keys().collect::<Vec<_>>(), before.params.keys().collect::<Vec<_>>());
        for (k, v) in &before.params {
            close(&after.params[k], v, 1e-10, &format!("seed {seed} gradient of {k}"));
        }
        close(&after.inputs[&0], &before.inputs[&0], 1e-10, &format!("seed {seed} input gradient"));
        let inputs32: Vec<Tensor> = inputs.iter().map(Buf::to_tensor).collect();
        physical_equals_logical(seed, &opt, &tensors, &inputs32);
    }
    // Every pass found something to do somewhere.
    for pass in cnnc_passes::Pass::ALL {
        assert!(fired.get(pass.name()).copied().unwrap_or(0) > 0, "{pass} never fired: {fired:?}");
    }
}

fn record(fired: &mut std::collections::BTreeMap<&'static str, usize>, opt: &cnnc_passes::Optimized) {
    for run in &opt.ran {
        *fired.entry(run.pass.name()).or_default() += run.rewrites;
    }
}

/// The plan run physically equals its graph run logically, bit for bit, at batch 3 (the
/// inputs') and batch 1 where batch norm allows it.
fn physical_equals_logical(seed: u64, opt: &cnnc_passes::Optimized, source: &TensorMap, inputs: &[Tensor]) {
    let options = Options::new().with_seed(5);
    for batch in [inputs[0].shape[0], 1] {
        let inputs: Vec<Tensor> = inputs
            .iter()
            .map(|t| {
                let per = t.data.len() / t.shape[0];
                let mut shape = t.shape.clone();
                shape[0] = batch;
                Tensor { shape, data: t.data[..per * batch].to_vec() }
            })
            .collect();
        let mut state = opt.weights.clone().unwrap();
        let logical = match run(opt.graph(), &mut state, &inputs, &options) {
            Ok(r) => r,
            Err(cnnc_interp::InterpError::BatchNormTooFewValues { .. }) => continue,
            Err(e) => panic!("seed {seed}: {e}"),
        };
        let physical = run_plan(&opt.plan, &mut source.clone(), &inputs, &options)
            .unwrap_or_else(|e| panic!("seed {seed}: {e}\n{}", opt.plan.render()));
        let bits = |t: &Option<Tensor>| t.as_ref().map(|t| t.data.iter().map(|v| v.to_bits()).collect::<Vec<u32>>());
        for (k, (p, l)) in physical.outputs::<Tensor>().iter().zip(logical.outputs::<Tensor>()).enumerate() {
            assert_eq!(
                bits(p),
                bits(&l),
                "seed {seed} batch {batch}: output {k} differs physically\n{}",
                opt.plan.render()
            );
        }
    }
}
