//! The reference interpreter as plain functions on logical NCHW f32 data: the only module of
//! the kernel tests that knows the interpreter's API (single-node graphs run with
//! `cnnc_interp::run`, their gradients through the training transform with the output
//! gradient as an input), so that only this file changes when that API does.

use cnnc_interp::{Options, gradients, run};
use cnnc_ir::{Activation, BatchNorm, Conv, Fc, Graph, Loss, NodeId, Op, Shape, Window};
use cnnc_passes::{Objective, TrainingOptions, training_graph};
use cnnc_runtime::{Tensor, TensorMap};

/// The graph's outputs in inference mode.
fn forward(g: &Graph, params: &TensorMap, inputs: &[Tensor]) -> Vec<Tensor> {
    let result = run(g, &mut params.clone(), inputs, &Options::new()).expect("oracle forward");
    result.outputs::<Tensor>().into_iter().map(|o| o.expect("an output is a value")).collect()
}

/// What one vector-Jacobian product gives: the outputs, `d sum(y * gy)` for each input (by
/// position) and parameter, and the state after the run (running statistics updated in
/// training mode).
struct Vjp {
    outputs: Vec<Tensor>,
    inputs: Vec<Tensor>,
    params: TensorMap,
    state: TensorMap,
}

/// The gradients of `sum(output * gy)` (one output), in training mode (batch statistics) or
/// not.
fn vjp(g: &Graph, params: &TensorMap, inputs: &[Tensor], gy: &Tensor, train: bool) -> Vjp {
    let options = TrainingOptions {
        objective: Objective::OutputGradients,
        batch_stats: train,
        input_grads: true,
        ..TrainingOptions::new(Loss::Mse)
    };
    let t = training_graph(g, &options).expect("oracle training graph");
    let mut all = inputs.to_vec();
    all.push(gy.clone());
    let mut state = params.clone();
    let result = run(&t.graph, &mut state, &all, &Options::new()).expect("oracle backward");
    let grads = gradients::<Tensor>(&t.outputs, &result);
    Vjp { outputs: grads.outputs, inputs: grads.inputs.into_values().collect(), params: grads.params, state }
}

/// A convolution's configuration, in the interpreter's terms.
#[derive(Clone, Copy, Debug)]
pub struct ConvCfg {
    pub n: usize,
    pub ic: usize,
    pub ih: usize,
    pub iw: usize,
    pub oc: usize,
    pub k: [usize; 2],
    pub stride: [usize; 2],
    pub pad: [usize; 2],
    pub dilation: [usize; 2],
    pub groups: usize,
}

impl ConvCfg {
    pub fn out_hw(&self) -> [usize; 2] {
        let o = |a: usize| {
            let extent = self.dilation[a] * (self.k[a] - 1) + 1;
            ([self.ih, self.iw][a] + 2 * self.pad[a] - extent) / self.stride[a] + 1
        };
        [o(0), o(1)]
    }

    fn op(&self, bias: bool) -> Op {
        let window =
            Window { kernel: self.k, stride: self.stride, pad: self.pad, dilation: self.dilation, ceil_mode: false };
        Op::Conv(Conv { out_channels: self.oc, window, groups: self.groups, bias })
    }
}

/// The epilogue applied after a convolution: per-channel scale and shift, residual, activation.
#[derive(Clone, Debug, Default)]
pub struct Post<'a> {
    pub scale_shift: Option<(&'a [f32], &'a [f32])>,
    pub residual: Option<&'a [f32]>,
    pub act: Option<Activation>,
}

fn tensor(shape: &[usize], data: &[f32]) -> Tensor {
    Tensor::from_vec(shape, data.to_vec()).expect("oracle tensor shape")
}

fn add(g: &mut Graph, op: Op, inputs: Vec<NodeId>, name: &str) -> NodeId {
    g.add(op, inputs, name, Default::default()).expect("oracle graph").0
}

/// Convolution forward with bias and the epilogue: `x` is `[n, ic, ih, iw]`, `w` `[oc, ic /
/// groups, kh, kw]`; returns `[n, oc, oh, ow]`.
pub fn conv_forward(cfg: &ConvCfg, x: &[f32], w: &[f32], bias: Option<&[f32]>, post: &Post<'_>) -> Vec<f32> {
    let [oh, ow] = cfg.out_hw();
    let mut g = Graph::new("conv");
    let xi = g.add_input("x", Shape(vec![cfg.ic, cfg.ih, cfg.iw]), Default::default()).expect("input");
    let mut inputs = vec![tensor(&[cfg.n, cfg.ic, cfg.ih, cfg.iw], x)];
    let mut params = TensorMap::new();
    params.insert("conv.weight".into(), tensor(&[cfg.oc, cfg.ic / cfg.groups, cfg.k[0], cfg.k[1]], w));
    if let Some(b) = bias {
        params.insert("conv.bias".into(), tensor(&[cfg.oc], b));
    }
    let mut y = add(&mut g, cfg.op(bias.is_some()), vec![xi], "conv");
    if let Some((scale, shift)) = post.scale_shift {
        // Batch norm with mean 0, variance 1 and eps 0 is exactly `* scale + shift`.
        y = add(&mut g, Op::BatchNorm(BatchNorm { eps: 0.0, momentum: 0.1 }), vec![y], "bn");
        params.insert("bn.weight".into(), tensor(&[cfg.oc], scale));
        params.insert("bn.bias".into(), tensor(&[cfg.oc], shift));
        params.insert("bn.running_mean".into(), Tensor::zeros(&[cfg.oc]));
        params.insert("bn.running_var".into(), tensor(&[cfg.oc], &vec![1.0; cfg.oc]));
    }
    if let Some(r) = post.residual {
        let ri = g.add_input("r", Shape(vec![cfg.oc, oh, ow]), Default::default()).expect("input");
        inputs.push(tensor(&[cfg.n, cfg.oc, oh, ow], r));
        y = add(&mut g, Op::Add, vec![y, ri], "add");
    }
    if let Some(a) = post.act {
        y = add(&mut g, Op::Activation(a), vec![y], "act");
    }
    g.outputs = vec![y];
    forward(&g, &params, &inputs).remove(0).data
}

/// Convolution gradients for output gradient `gy`: `(dx, dw, db)`.
pub fn conv_backward(cfg: &ConvCfg, x: &[f32], w: &[f32], gy: &[f32]) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let mut g = Graph::new("conv");
    let xi = g.add_input("x", Shape(vec![cfg.ic, cfg.ih, cfg.iw]), Default::default()).expect("input");
    let y = add(&mut g, cfg.op(true), vec![xi], "conv");
    g.outputs = vec![y];
    let mut params = TensorMap::new();
    params.insert("conv.weight".into(), tensor(&[cfg.oc, cfg.ic / cfg.groups, cfg.k[0], cfg.k[1]], w));
    params.insert("conv.bias".into(), Tensor::zeros(&[cfg.oc]));
    let inputs = [tensor(&[cfg.n, cfg.ic, cfg.ih, cfg.iw], x)];
    let [oh, ow] = cfg.out_hw();
    let grads = vjp(&g, &params, &inputs, &tensor(&[cfg.n, cfg.oc, oh, ow], gy), true);
    (grads.inputs[0].data.clone(), grads.params["conv.weight"].data.clone(), grads.params["conv.bias"].data.clone())
}

fn fc_graph(i: usize, o: usize, act: Option<Activation>) -> Graph {
    let mut g = Graph::new("fc");
    let x = g.add_input("x", Shape(vec![i]), Default::default()).expect("input");
    let mut y = add(&mut g, Op::Fc(Fc { out_features: o, bias: true }), vec![x], "fc");
    if let Some(a) = act {
        y = add(&mut g, Op::Activation(a), vec![y], "act");
    }
    g.outputs = vec![y];
    g
}

fn fc_params(i: usize, o: usize, w: &[f32], b: &[f32]) -> TensorMap {
    let mut params = TensorMap::new();
    params.insert("fc.weight".into(), tensor(&[o, i], w));
    params.insert("fc.bias".into(), tensor(&[o], b));
    params
}

/// Fully connected forward: `x` `[n, i]`, `w` `[o, i]`, bias `[o]`, then the activation.
pub fn fc_forward(n: usize, i: usize, o: usize, x: &[f32], w: &[f32], b: &[f32], act: Option<Activation>) -> Vec<f32> {
    let g = fc_graph(i, o, act);
    forward(&g, &fc_params(i, o, w, b), &[tensor(&[n, i], x)]).remove(0).data
}

/// Fully connected gradients `(dx, dw, db)` for output gradient `gy` `[n, o]`.
pub fn fc_backward(n: usize, i: usize, o: usize, x: &[f32], w: &[f32], gy: &[f32]) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let g = fc_graph(i, o, None);
    let params = fc_params(i, o, w, &vec![0.0; o]);
    let grads = vjp(&g, &params, &[tensor(&[n, i], x)], &tensor(&[n, o], gy), true);
    (grads.inputs[0].data.clone(), grads.params["fc.weight"].data.clone(), grads.params["fc.bias"].data.clone())
}

/// A single-op graph on a `[c, h, w]` (or `[f]`) input, forward then backward with `gy`:
/// `(y, dx)`. `params` are the op's parameters by suffix (`weight`, `bias`, ...).
pub fn unary(
    op: Op,
    dims: &[usize],
    n: usize,
    x: &[f32],
    params: &[(&str, &[usize], &[f32])],
    gy: Option<&[f32]>,
    train: bool,
) -> (Vec<f32>, Option<Vec<f32>>, TensorMap) {
    let mut g = Graph::new("op");
    let xi = g.add_input("x", Shape(dims.to_vec()), Default::default()).expect("input");
    let y = add(&mut g, op, vec![xi], "op");
    g.outputs = vec![y];
    let mut pm = TensorMap::new();
    for (suffix, shape, data) in params {
        pm.insert(format!("op.{suffix}"), tensor(shape, data));
    }
    let mut full = vec![n];
    full.extend_from_slice(dims);
    let x = tensor(&full, x);
    let Some(gy) = gy else {
        if train {
            // The forward pass of training: batch statistics, running statistics updated.
            let t = cnnc_passes::training_forward(&g).expect("oracle training forward");
            let mut state = pm.clone();
            let result = run(&t.graph, &mut state, &[x], &Options::new()).expect("oracle forward");
            let out = result.output::<Tensor>(0).expect("the output is a value");
            return (out.data, None, running_stats(&state));
        }
        return (forward(&g, &pm, &[x]).remove(0).data, None, TensorMap::new());
    };
    let out_shape = {
        let mut shape = vec![n];
        shape.extend_from_slice(&g[y].shape.0);
        shape
    };
    let grads = vjp(&g, &pm, &[x], &tensor(&out_shape, gy), train);
    let mut dparams = grads.params;
    if train {
        dparams.extend(running_stats(&grads.state));
    }
    let out = grads.outputs.into_iter().next().expect("one output");
    (out.data, grads.inputs.into_iter().next().map(|t| t.data), dparams)
}

/// The running statistics after a training-mode run, as `stats:<name>`.
fn running_stats(after: &TensorMap) -> TensorMap {
    after
        .iter()
        .filter(|(k, _)| k.ends_with(".running_mean") || k.ends_with(".running_var"))
        .map(|(k, v)| (format!("stats:{k}"), v.clone()))
        .collect()
}

/// `a + b` through the interpreter's `add`.
pub fn add2(dims: &[usize], n: usize, a: &[f32], b: &[f32]) -> Vec<f32> {
    let mut g = Graph::new("add");
    let ai = g.add_input("a", Shape(dims.to_vec()), Default::default()).expect("input");
    let bi = g.add_input("b", Shape(dims.to_vec()), Default::default()).expect("input");
    let y = add(&mut g, Op::Add, vec![ai, bi], "add");
    g.outputs = vec![y];
    let mut full = vec![n];
    full.extend_from_slice(dims);
    forward(&g, &TensorMap::new(), &[tensor(&full, a), tensor(&full, b)]).remove(0).data
}

/// Softmax cross-entropy `(mean loss, d logits)` of `[n, c]` logits.
pub fn cross_entropy(n: usize, c: usize, logits: &[f32], targets: &[usize]) -> (f32, Vec<f32>) {
    // The loss of the input itself: an input [c] that is the model's output.
    let mut g = Graph::new("ce");
    let x = g.add_input("x", Shape(vec![c]), Default::default()).expect("input");
    g.outputs = vec![x];
    let options = TrainingOptions { input_grads: true, ..TrainingOptions::new(Loss::CrossEntropy) };
    let t = training_graph(&g, &options).expect("oracle loss graph");
    let labels = Tensor { shape: vec![n], data: targets.iter().map(|&t| t as f32).collect() };
    let inputs = [tensor(&[n, c], logits), labels];
    let result = run(&t.graph, &mut TensorMap::new(), &inputs, &Options::new()).expect("oracle loss");
    let grads = gradients::<Tensor>(&t.outputs, &result);
    let loss = grads.loss.expect("a loss");
    (loss as f32, grads.inputs.into_values().next().expect("the logits' gradient").data)
}
