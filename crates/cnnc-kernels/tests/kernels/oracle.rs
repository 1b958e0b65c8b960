//! The reference interpreter as plain functions on logical NCHW f32 data: the only module of
//! the kernel tests that knows the interpreter's API (single-node graphs, `forward`,
//! `backward`), so that only this file changes when that API does.

use cnnc_interp::{Options, backward, forward};
use cnnc_ir::{Activation, BatchNorm, Conv, Fc, Graph, NodeId, Op, Shape, Window};
use cnnc_runtime::{Tensor, TensorMap};

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
    let trace = forward(&g, &params, &inputs, Options::inference()).expect("oracle forward");
    trace.outputs::<Tensor>().remove(0).data
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
    let trace = forward(&g, &params, &inputs, Options::training(0)).expect("oracle forward");
    let [oh, ow] = cfg.out_hw();
    let grads = backward(&g, &trace, &[tensor(&[cfg.n, cfg.oc, oh, ow], gy)]).expect("oracle backward");
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
    let trace =
        forward(&g, &fc_params(i, o, w, b), &[tensor(&[n, i], x)], Options::inference()).expect("oracle forward");
    trace.outputs::<Tensor>().remove(0).data
}

/// Fully connected gradients `(dx, dw, db)` for output gradient `gy` `[n, o]`.
pub fn fc_backward(n: usize, i: usize, o: usize, x: &[f32], w: &[f32], gy: &[f32]) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let g = fc_graph(i, o, None);
    let params = fc_params(i, o, w, &vec![0.0; o]);
    let trace = forward(&g, &params, &[tensor(&[n, i], x)], Options::training(0)).expect("oracle forward");
    let grads = backward(&g, &trace, &[tensor(&[n, o], gy)]).expect("oracle backward");
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
    let options = if train { Options::training(0) } else { Options::inference() };
    let trace = forward(&g, &pm, &[tensor(&full, x)], options).expect("oracle forward");
    let out: Tensor = trace.outputs::<Tensor>().remove(0);
    let grads = gy.map(|gy| backward(&g, &trace, &[tensor(&out.shape, gy)]).expect("oracle backward"));
    let dx = grads.as_ref().map(|gr| gr.inputs[0].data.clone());
    let mut dparams = grads.map(|gr| gr.params).unwrap_or_default();
    for (k, v) in trace.running_stats::<Tensor>() {
        dparams.insert(format!("stats:{k}"), v);
    }
    (out.data, dx, dparams)
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
    let trace =
        forward(&g, &TensorMap::new(), &[tensor(&full, a), tensor(&full, b)], Options::inference()).expect("oracle");
    trace.outputs::<Tensor>().remove(0).data
}

/// Softmax cross-entropy `(mean loss, d logits)` of `[n, c]` logits.
pub fn cross_entropy(n: usize, c: usize, logits: &[f32], targets: &[usize]) -> (f32, Vec<f32>) {
    let (v, g) = cnnc_interp::loss::cross_entropy(&tensor(&[n, c], logits), targets).expect("oracle loss");
    (v as f32, g.data)
}
