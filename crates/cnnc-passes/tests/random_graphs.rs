//! Random graphs through the whole pipeline: the result verifies, its memory plan checks, and
//! the interpreter (f64) computes the same outputs and, in training, the same gradients.

mod common;

use cnnc_interp::{Buf, BufMap, Options, Precision, backward, forward};
use cnnc_ir::{Activation, Graph, NodeId, Op, PoolKind, Shape};
use cnnc_passes::{Mode, PassOptions, optimize};
use cnnc_runtime::{Rng, init_params};
use common::*;

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

#[test]
fn random_graphs_keep_their_numbers() {
    let mut fired = std::collections::BTreeMap::<&str, usize>::new();
    for seed in 0..200 {
        let mut g = random_graph(seed);
        if let Err(e) = cnnc_ir::verify(&g) {
            assert!(e.iter().all(|e| matches!(e, cnnc_ir::VerifyError::DeadNode { .. })), "{e:?}");
        }
        let w = weights(&g, seed);
        let tensors: cnnc_runtime::TensorMap = w.iter().map(|(k, v)| (k.clone(), v.to_tensor())).collect();
        let mut rng = Rng::seed_from_u64(seed + 1000);
        let x = vec![Buf { shape: vec![2, 3, 6, 6], data: (0..216).map(|_| rng.normal()).collect() }];
        for mode in [Mode::Inference, Mode::Training] {
            if mode == Mode::Training {
                // Dropout masks are drawn per node index, which passes change.
                for id in g.ids() {
                    if let Op::Dropout { .. } = g[id].op {
                        g.node_mut(id).op = Op::Dropout { p: 0.0 };
                    }
                }
            }
            let opt = optimize(&g, Some(&tensors), &PassOptions::all().with_mode(mode))
                .unwrap_or_else(|e| panic!("seed {seed}: {e}\n{}", cnnc_ir::print(&g)));
            opt.plan.check(&opt.graph).unwrap_or_else(|e| panic!("seed {seed} {mode:?}: {e}\n{}", opt.print()));
            for run in &opt.ran {
                *fired.entry(run.pass.name()).or_default() += run.rewrites;
            }
            let new_w: BufMap =
                opt.weights.as_ref().unwrap().iter().map(|(k, v)| (k.clone(), Buf::from_tensor(v))).collect();
            let opts = match mode {
                Mode::Inference => Options::inference(),
                Mode::Training => Options::training(5),
            }
            .with_precision(Precision::F64);
            let before = forward(&g, &w, &x, opts).unwrap();
            let after = forward(&opt.graph, &new_w, &x, opts).unwrap();
            let (want, got): (Vec<Buf>, Vec<Buf>) = (before.outputs(), after.outputs());
            for (k, (a, b)) in got.iter().zip(&want).enumerate() {
                let rtol = if mode == Mode::Inference { 1e-6 } else { 1e-10 };
                close(a, b, rtol, &format!("seed {seed} {mode:?} output {k}\n{}", opt.print()));
            }
            if mode == Mode::Training {
                let seeds: Vec<Buf> = want
                    .iter()
                    .map(|o| Buf { shape: o.shape.clone(), data: (0..o.len()).map(|i| (i % 3) as f64 - 1.0).collect() })
                    .collect();
                let gw = backward(&g, &before, &seeds).unwrap();
                let ga = backward(&opt.graph, &after, &seeds).unwrap();
                for (k, v) in &gw.params {
                    close(&ga.params[k], v, 1e-10, &format!("seed {seed} gradient of {k}"));
                }
                close(&ga.inputs[0], &gw.inputs[0], 1e-10, &format!("seed {seed} input gradient"));
            }
        }
    }
    // Every pass found something to do somewhere.
    for pass in cnnc_passes::Pass::ALL {
        assert!(fired.get(pass.name()).copied().unwrap_or(0) > 0, "{pass} never fired: {fired:?}");
    }
}
