//! Shared helpers: graph building, random data, and the finite-difference gradient checker.

#![allow(dead_code)]

use cnnc_interp::{Buf, BufMap, Gradients, Options, Precision, Rng, gradients, run};
use cnnc_ir::{Activation, BatchNorm, Conv, Graph, Loss, NodeId, Op, ParamRole, PoolKind, Shape, Window};
use cnnc_passes::{Objective, TrainingGraph, TrainingOptions, training_forward, training_graph};

/// How a graph is differentiated: as deployed (batch norm on running statistics, dropout the
/// identity) or as it trains (batch statistics, dropout masks).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Inference,
    Training,
}

/// The seed of dropout masks in the tests' training runs.
pub const SEED: u64 = 42;

/// The vector-Jacobian graph of `g`: the output gradients are inputs after the model's, every
/// parameter gradient and the input gradients are outputs.
pub fn vjp_graph(g: &Graph, mode: Mode) -> TrainingGraph {
    let options = TrainingOptions {
        objective: Objective::OutputGradients,
        batch_stats: mode == Mode::Training,
        input_grads: true,
        ..TrainingOptions::new(Loss::Mse)
    };
    training_graph(g, &options).expect("the training transform accepts the test graph")
}

/// The model's outputs in `mode` (the forward pass of training in training mode).
pub fn forward_outputs(g: &Graph, mode: Mode, params: &BufMap, inputs: &[Buf], precision: Precision) -> Vec<Buf> {
    let opts = Options::new().with_precision(precision).with_seed(SEED);
    let mut state = params.clone();
    match mode {
        Mode::Inference => {
            run(g, &mut state, inputs, &opts).expect("forward").outputs().into_iter().flatten().collect()
        }
        Mode::Training => {
            let t = training_forward(g).expect("training forward");
            let r = run(&t.graph, &mut state, inputs, &opts).expect("forward");
            let g: Gradients<Buf> = gradients(&t.outputs, &r);
            g.outputs
        }
    }
}

/// The outputs and gradients of `g` at `params` and `inputs`, backpropagating `grad_outputs`.
pub fn vjp(
    g: &Graph,
    mode: Mode,
    params: &BufMap,
    inputs: &[Buf],
    grad_outputs: &[Buf],
    precision: Precision,
) -> Gradients<Buf> {
    let t = vjp_graph(g, mode);
    let mut state = params.clone();
    let all: Vec<Buf> = inputs.iter().chain(grad_outputs).cloned().collect();
    let opts = Options::new().with_precision(precision).with_seed(SEED);
    let r = run(&t.graph, &mut state, &all, &opts).expect("the training graph runs");
    gradients(&t.outputs, &r)
}

/// A graph under construction, naming layers `l0`, `l1`, ...
pub struct Builder {
    pub g: Graph,
}

impl Builder {
    pub fn new() -> Builder {
        Builder { g: Graph::new("test") }
    }

    pub fn input(&mut self, dims: &[usize]) -> NodeId {
        let name = format!("in{}", self.g.inputs.len());
        self.g.add_input(name, Shape(dims.to_vec()), Default::default()).expect("valid input")
    }

    pub fn add(&mut self, op: Op, inputs: &[NodeId]) -> NodeId {
        let name = format!("l{}", self.g.len());
        self.g.add(op, inputs.to_vec(), name, Default::default()).expect("valid node").0
    }

    /// Marks the outputs and returns the finished graph.
    pub fn finish(mut self, outputs: &[NodeId]) -> Graph {
        self.g.outputs = outputs.to_vec();
        self.g
    }
}

pub fn window(kernel: [usize; 2], stride: [usize; 2], pad: [usize; 2]) -> Window {
    Window { kernel, stride, pad, dilation: [1, 1], ceil_mode: false }
}

pub fn conv(out_channels: usize, kernel: usize, stride: usize, pad: usize) -> Op {
    Op::Conv(Conv { out_channels, window: window([kernel; 2], [stride; 2], [pad; 2]), groups: 1, bias: true })
}

pub fn pool(kind: PoolKind, w: Window) -> Op {
    Op::Pool { kind, window: w }
}

pub fn relu() -> Op {
    Op::Activation(Activation::Relu)
}

pub fn bn() -> Op {
    Op::BatchNorm(BatchNorm { eps: 1e-5, momentum: 0.1 })
}

pub fn uniform(rng: &mut Rng, lo: f64, hi: f64) -> f64 {
    lo + (hi - lo) * rng.uniform()
}

pub fn random_buf(rng: &mut Rng, shape: &[usize], lo: f64, hi: f64) -> Buf {
    let n = shape.iter().product();
    Buf { shape: shape.to_vec(), data: (0..n).map(|_| uniform(rng, lo, hi)).collect() }
}

/// Random parameters for every tensor of the graph: weights and biases in [-1, 1), running
/// means in [-0.5, 0.5), running variances in [0.5, 1.5).
pub fn random_params(g: &Graph, rng: &mut Rng) -> BufMap {
    g.named_params()
        .into_iter()
        .map(|(name, spec)| {
            let (lo, hi) = match spec.role {
                ParamRole::Weight | ParamRole::Bias => (-1.0, 1.0),
                ParamRole::RunningMean => (-0.5, 0.5),
                ParamRole::RunningVar => (0.5, 1.5),
                ParamRole::OptimizerState => (0.0, 0.0),
            };
            (name, random_buf(rng, &spec.dims, lo, hi))
        })
        .collect()
}

/// `sum_k <r_k, y_k>`: a random projection of the outputs to one scalar.
fn objective(g: &Graph, params: &BufMap, inputs: &[Buf], mode: Mode, r: &[Buf]) -> f64 {
    let outs = forward_outputs(g, mode, params, inputs, Precision::F64);
    outs.iter().zip(r).map(|(y, r)| y.data.iter().zip(&r.data).map(|(a, b)| a * b).sum::<f64>()).sum()
}

const EPS: f64 = 1e-6;
const RTOL: f64 = 1e-6;
/// Checked elements per tensor (all of them when the tensor is smaller).
const MAX_CHECKED: usize = 120;

fn close(analytic: f64, numeric: f64, scale: f64) -> bool {
    (analytic - numeric).abs() <= RTOL * analytic.abs().max(numeric.abs()) + 1e-9 * scale
}

/// Indices to check: everything, or a random subset of `MAX_CHECKED`.
fn chosen(len: usize, rng: &mut Rng) -> Vec<usize> {
    if len <= MAX_CHECKED {
        (0..len).collect()
    } else {
        (0..MAX_CHECKED).map(|_| (rng.next_u64() % len as u64) as usize).collect()
    }
}

/// Finite-difference check of every input and trainable parameter gradient of `g` at random
/// inputs in [-1, 1) (batch `batch`) and random parameters, in f64, central differences.
pub fn gradcheck(g: &Graph, mode: Mode, batch: usize, seed: u64) {
    let mut rng = Rng::new(seed);
    let params = random_params(g, &mut rng);
    let inputs: Vec<Buf> = g
        .inputs
        .iter()
        .map(|&id| {
            let mut shape = vec![batch];
            shape.extend_from_slice(&g[id].shape.0);
            random_buf(&mut rng, &shape, -1.0, 1.0)
        })
        .collect();
    gradcheck_at(g, mode, &params, &inputs, seed);
}

/// As [`gradcheck`], at the given parameters and inputs.
pub fn gradcheck_at(g: &Graph, mode: Mode, params: &BufMap, inputs: &[Buf], seed: u64) {
    let mut rng = Rng::new(seed ^ 0x5555);
    let outs = forward_outputs(g, mode, params, inputs, Precision::F64);
    let r: Vec<Buf> = outs.iter().map(|y| random_buf(&mut rng, &y.shape, -1.0, 1.0)).collect();
    let grads = vjp(g, mode, params, inputs, &r, Precision::F64);
    let base = objective(g, params, inputs, mode, &r);
    let scale = 1.0 + base.abs();

    let trainable: Vec<String> =
        g.named_params().into_iter().filter(|(_, s)| s.trainable()).map(|(name, _)| name).collect();
    assert_eq!(grads.params.keys().cloned().collect::<Vec<_>>(), {
        let mut t = trainable.clone();
        t.sort();
        t
    });
    let mut failures = Vec::new();
    let mut checked = 0;
    for (k, x) in inputs.iter().enumerate() {
        assert_eq!(grads.inputs[&k].shape, x.shape);
        for i in chosen(x.len(), &mut rng) {
            let at = |delta: f64| {
                let mut xs = inputs.to_vec();
                xs[k].data[i] += delta;
                objective(g, params, &xs, mode, &r)
            };
            let numeric = (at(EPS) - at(-EPS)) / (2.0 * EPS);
            let analytic = grads.inputs[&k].data[i];
            checked += 1;
            if !close(analytic, numeric, scale) {
                failures.push(format!("input {k}[{i}]: analytic {analytic:.9e}, numeric {numeric:.9e}"));
            }
        }
    }
    for name in &trainable {
        let p = &params[name];
        assert_eq!(grads.params[name].shape, p.shape);
        for i in chosen(p.len(), &mut rng) {
            let at = |delta: f64| {
                let mut ps = params.clone();
                ps.get_mut(name).unwrap().data[i] += delta;
                objective(g, &ps, inputs, mode, &r)
            };
            let numeric = (at(EPS) - at(-EPS)) / (2.0 * EPS);
            let analytic = grads.params[name].data[i];
            checked += 1;
            if !close(analytic, numeric, scale) {
                failures.push(format!("{name}[{i}]: analytic {analytic:.9e}, numeric {numeric:.9e}"));
            }
        }
    }
    assert!(checked > 0);
    assert!(failures.is_empty(), "{} of {checked} gradients wrong:\n{}", failures.len(), failures.join("\n"));
}

/// Gradient check of a single-op graph on one input of the given (batch-free) shape.
pub fn check_op(op: Op, dims: &[usize], batch: usize, mode: Mode, seed: u64) {
    let mut b = Builder::new();
    let x = b.input(dims);
    let y = b.add(op, &[x]);
    gradcheck(&b.finish(&[y]), mode, batch, seed);
}

pub const INFER: Mode = Mode::Inference;
pub const TRAIN: Mode = Mode::Training;

/// A loss and its gradient with respect to the model's output, through a training graph of
/// the identity model (its output is its input), in f64.
pub fn loss_and_grad(loss: Loss, x: &Buf, target: &Buf) -> (f64, Buf) {
    let mut b = Builder::new();
    let input = b.input(&x.shape[1..]);
    let g = b.finish(&[input]);
    let options = TrainingOptions { input_grads: true, ..TrainingOptions::new(loss) };
    let t = training_graph(&g, &options).unwrap();
    let opts = Options::new().with_precision(Precision::F64);
    let r = run(&t.graph, &mut BufMap::new(), &[x.clone(), target.clone()], &opts).unwrap();
    let grads: Gradients<Buf> = gradients(&t.outputs, &r);
    (grads.loss.unwrap(), grads.inputs[&0].clone())
}
