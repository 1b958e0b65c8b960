//! The driver: validation at the boundary, then forward and backward node by node.

use crate::buf::{Buf, BufMap, TensorLike, checked_buf, elements};
use crate::error::InterpError;
use crate::ops::act::{
    activation_backward, activation_forward, dropout_mask, ncs, prelu_backward, prelu_forward, softmax_backward,
    softmax_forward,
};
use crate::ops::conv::{conv_backward, conv_forward, fc_backward, fc_forward};
use crate::ops::norm::{
    batch_stats, bn_affine_backward, bn_apply, bn_running_update, bn_train_backward, lrn_backward, lrn_forward,
};
use crate::ops::pool::{Bins, pool_backward, pool_forward};
use cnnc_ir::{Conv, Epilogue, FusedBase, Gemm, Graph, Node, NodeId, Op, PoolKind, Window};
use std::collections::BTreeMap;

/// Inference or training semantics for batch norm and dropout.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Batch norm uses the running statistics; dropout is the identity.
    Inference,
    /// Batch norm uses batch statistics and produces updated running statistics; dropout
    /// draws its mask from [`crate::dropout_mask`] with this seed and the node's index.
    Training { seed: u64 },
}

/// How values are stored between nodes. Arithmetic inside a node is always f64.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Precision {
    /// Every stored tensor (inputs, parameters, each node's output, each gradient, updated
    /// running statistics) is rounded to the nearest f32: the semantics of an f32 back end
    /// that accumulates in f64. The normal mode.
    F32,
    /// Everything stays f64 (for finite-difference gradient checks).
    F64,
}

/// How to run a graph.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Options {
    pub mode: Mode,
    pub precision: Precision,
}

impl Options {
    /// Inference mode, f32 storage.
    pub fn inference() -> Options {
        Options { mode: Mode::Inference, precision: Precision::F32 }
    }

    /// Training mode with the given dropout seed, f32 storage.
    pub fn training(seed: u64) -> Options {
        Options { mode: Mode::Training { seed }, precision: Precision::F32 }
    }

    pub fn with_precision(self, precision: Precision) -> Options {
        Options { precision, ..self }
    }
}

impl Default for Options {
    fn default() -> Options {
        Options::inference()
    }
}

/// Everything a forward pass computed, kept for [`backward`] and for inspection.
#[derive(Clone, Debug)]
pub struct Trace {
    options: Options,
    batch: usize,
    /// Each node's output, full shape `[N] ++ node shape`, in node order.
    values: Vec<Buf>,
    /// Training mode: each dropout node's multiplier mask (same shape as its output).
    masks: Vec<Option<Buf>>,
    /// The parameters and buffers the pass used, by full name (as stored: rounded in F32 mode).
    params: BufMap,
    /// Training mode: each batch-norm layer's updated `running_mean` and `running_var`.
    running_stats: BufMap,
    outputs: Vec<NodeId>,
}

impl Trace {
    pub fn options(&self) -> Options {
        self.options
    }

    /// The batch size N of this pass.
    pub fn batch(&self) -> usize {
        self.batch
    }

    /// The graph outputs, in `graph.outputs` order.
    pub fn outputs<T: TensorLike>(&self) -> Vec<T> {
        self.outputs.iter().map(|id| T::from_buf(&self.values[id.index()])).collect()
    }

    /// The output of any node (f64 storage; rounded to f32 values in F32 mode).
    pub fn value(&self, id: NodeId) -> Option<&Buf> {
        self.values.get(id.index())
    }

    /// The multiplier mask of a dropout node in training mode (`0` or `1 / (1 - p)` per
    /// element, full shape); `None` for other nodes and in inference mode.
    pub fn dropout_mask(&self, id: NodeId) -> Option<&Buf> {
        self.masks.get(id.index()).and_then(Option::as_ref)
    }

    /// Training mode: the updated `<layer>.running_mean` and `<layer>.running_var` of every
    /// batch-norm layer (to replace the old ones in the parameter map). Empty in inference.
    pub fn running_stats<T: TensorLike>(&self) -> BTreeMap<String, T> {
        self.running_stats.iter().map(|(k, v)| (k.clone(), T::from_buf(v))).collect()
    }

    /// The parameters and buffers the pass read, by full name, as stored.
    pub fn params(&self) -> &BufMap {
        &self.params
    }
}

/// The gradients of a backward pass, as `T` (f32 [`cnnc_runtime::Tensor`] or f64 [`Buf`]).
#[derive(Clone, Debug, PartialEq)]
pub struct Gradients<T> {
    /// Every trainable parameter (weights, biases, batch-norm gamma/beta, PReLU slopes) by full
    /// name, zero where the outputs do not depend on it. Buffers (running stats) are absent.
    pub params: BTreeMap<String, T>,
    /// One per graph input, in `graph.inputs` order, with the input's full shape.
    pub inputs: Vec<T>,
}

fn malformed(msg: impl Into<String>) -> InterpError {
    InterpError::Malformed(msg.into())
}

/// Checks what `Graph::add` guarantees (with the IR's verifier: topological order, registered
/// inputs, shapes following each op's rule, unique parameter names) so that a hand-edited
/// graph is an error, not a panic. Values nobody reads are fine here: the interpreter computes
/// them anyway. Returns each node's position in `graph.inputs` (for input nodes).
fn check_graph(graph: &Graph) -> Result<Vec<Option<usize>>, InterpError> {
    if let Err(errors) = cnnc_ir::verify::verify(graph) {
        let fatal: Vec<String> = errors
            .iter()
            .filter(|e| !matches!(e, cnnc_ir::verify::VerifyError::DeadNode { .. }))
            .map(ToString::to_string)
            .collect();
        if !fatal.is_empty() {
            return Err(malformed(fatal.join("; ")));
        }
    }
    let mut position = vec![None; graph.len()];
    for (k, &id) in graph.inputs.iter().enumerate() {
        position[id.index()] = Some(k);
    }
    for (_, node) in graph.iter() {
        check_attributes(node)?;
    }
    Ok(position)
}

/// Attribute values the shape rules accept but the arithmetic cannot run.
fn check_attributes(node: &Node) -> Result<(), InterpError> {
    let bad = |message: String| Err(InterpError::BadAttribute { layer: node.name.clone(), message });
    match &node.op {
        Op::Dropout { p } => {
            if !(0.0..=1.0).contains(p) {
                return bad(format!("dropout probability {p} is not in [0, 1]"));
            }
        }
        Op::BatchNorm(bn) => {
            if !bn.eps.is_finite() || bn.eps < 0.0 || !bn.momentum.is_finite() {
                return bad(format!("batch norm eps {} / momentum {} are not usable", bn.eps, bn.momentum));
            }
        }
        Op::Input
        | Op::Conv(_)
        | Op::Pool { .. }
        | Op::GlobalPool(_)
        | Op::AdaptivePool { .. }
        | Op::Spp { .. }
        | Op::Fc(_)
        | Op::Flatten
        | Op::Activation(_)
        | Op::Prelu
        | Op::Softmax
        | Op::Lrn(_)
        | Op::Concat
        | Op::Add
        | Op::Gemm(_)
        | Op::Fused { .. }
        | Op::Reorder(_)
        | Op::ConcatInPlace => {}
    }
    Ok(())
}

/// `[batch] ++ dims`.
fn full_shape(batch: usize, dims: &[usize]) -> Vec<usize> {
    let mut shape = Vec::with_capacity(dims.len() + 1);
    shape.push(batch);
    shape.extend_from_slice(dims);
    shape
}

fn round_if(precision: Precision, mut buf: Buf) -> Buf {
    match precision {
        Precision::F32 => buf.round_to_f32(),
        Precision::F64 => {}
    }
    buf
}

/// Runs the graph forward.
///
/// * `params`: every parameter and buffer of [`Graph::named_params`] by full name (PyTorch
///   `state_dict` names and layouts). Extra entries (such as `num_batches_tracked`) are ignored.
/// * `inputs`: one tensor per graph input, in `graph.inputs` order, each of shape
///   `[N] ++ node shape` with the same `N >= 1`.
///
/// Returns the [`Trace`]: outputs, every intermediate value, dropout masks and (training mode)
/// updated running statistics. Nothing passed in is modified.
pub fn forward<T: TensorLike>(
    graph: &Graph,
    params: &BTreeMap<String, T>,
    inputs: &[T],
    options: Options,
) -> Result<Trace, InterpError> {
    let position = check_graph(graph)?;
    if graph.inputs.is_empty() {
        return Err(InterpError::NoInputs);
    }
    if inputs.len() != graph.inputs.len() {
        return Err(InterpError::InputCount { expected: graph.inputs.len(), found: inputs.len() });
    }
    let precision = options.precision;

    // Inputs: shape [N] ++ node shape, one N for all.
    let mut batch = 0;
    let mut input_bufs = Vec::with_capacity(inputs.len());
    for (k, (tensor, &id)) in inputs.iter().zip(&graph.inputs).enumerate() {
        let node = &graph[id];
        let found = tensor.shape();
        if found.len() != node.shape.rank() + 1 || found[1..] != node.shape.0[..] || found[0] == 0 {
            return Err(InterpError::InputShape {
                index: k,
                name: node.name.clone(),
                expected: node.shape.0.clone(),
                found: found.to_vec(),
            });
        }
        if k == 0 {
            batch = found[0];
        } else if found[0] != batch {
            return Err(InterpError::BatchMismatch {
                index: k,
                name: node.name.clone(),
                expected: batch,
                found: found[0],
            });
        }
        input_bufs.push(round_if(precision, checked_buf(|| format!("input {k} (`{}`)", node.name), tensor)?));
    }
    for (_, node) in graph.iter() {
        if elements(&full_shape(batch, &node.shape.0)).is_none() {
            return Err(InterpError::Overflow { layer: node.name.clone() });
        }
    }

    // Parameters: present, with the right shapes.
    let mut used = BufMap::new();
    for (name, spec) in graph.named_params() {
        let tensor = params
            .get(&name)
            .ok_or_else(|| InterpError::MissingParam { name: name.clone(), expected: spec.dims.clone() })?;
        if tensor.shape() != spec.dims.as_slice() {
            return Err(InterpError::ParamShape { name, expected: spec.dims.clone(), found: tensor.shape().to_vec() });
        }
        let buf = round_if(precision, checked_buf(|| format!("parameter `{name}`"), tensor)?);
        used.insert(name, buf);
    }

    let mut values: Vec<Buf> = Vec::with_capacity(graph.len());
    let mut masks = vec![None; graph.len()];
    let mut running_stats = BufMap::new();
    for (id, node) in graph.iter() {
        let x: Vec<&Buf> = node.inputs.iter().map(|i| &values[i.index()]).collect();
        let out_shape = full_shape(batch, &node.shape.0);
        let param = |suffix: &str| &used[&format!("{}.{suffix}", node.name)];
        let value = match &node.op {
            Op::Input => match position[id.index()] {
                Some(k) => input_bufs[k].clone(),
                None => return Err(malformed("unregistered input")),
            },
            Op::Conv(conv) => {
                let bias = conv.bias.then(|| param("bias"));
                conv_forward(conv, x[0], param("weight"), bias, &out_shape)
            }
            Op::Pool { kind, window } => {
                let bins = Bins::window(window, [x[0].shape[2], x[0].shape[3]], [out_shape[2], out_shape[3]]);
                let mut y = Buf::zeros(&out_shape);
                pool_forward(*kind, x[0], &bins, &mut y, 0);
                y
            }
            Op::GlobalPool(kind) => adaptive(*kind, x[0], [1, 1]),
            Op::AdaptivePool { kind, output } => adaptive(*kind, x[0], *output),
            Op::Spp { kind, levels } => {
                let mut y = Buf::zeros(&out_shape);
                let mut offset = 0;
                for &l in levels {
                    let bins = [Bins::adaptive(l, x[0].shape[2]), Bins::adaptive(l, x[0].shape[3])];
                    pool_forward(*kind, x[0], &bins, &mut y, offset);
                    offset += x[0].shape[1] * l * l;
                }
                y
            }
            Op::Fc(fc) => fc_forward(x[0], param("weight"), fc.bias.then(|| param("bias"))),
            Op::Flatten => Buf { shape: out_shape, data: x[0].data.clone() },
            Op::Activation(a) => activation_forward(*a, x[0]),
            Op::Prelu => prelu_forward(x[0], param("weight")),
            Op::Softmax => softmax_forward(x[0]),
            Op::BatchNorm(bn) => {
                let (weight, bias) = (param("weight"), param("bias"));
                let (rm, rv) = (param("running_mean"), param("running_var"));
                match options.mode {
                    Mode::Inference => bn_apply(x[0], bn.eps, &rm.data, &rv.data, weight, bias),
                    Mode::Training { .. } => {
                        let (n, _, s) = ncs(&x[0].shape);
                        if n * s < 2 {
                            return Err(InterpError::BatchNormTooFewValues { layer: node.name.clone(), values: n * s });
                        }
                        let (mean, var) = batch_stats(x[0]);
                        let (new_mean, new_var) = bn_running_update(bn, rm, rv, &mean, &var, n * s);
                        running_stats.insert(format!("{}.running_mean", node.name), round_if(precision, new_mean));
                        running_stats.insert(format!("{}.running_var", node.name), round_if(precision, new_var));
                        bn_apply(x[0], bn.eps, &mean, &var, weight, bias)
                    }
                }
            }
            Op::Lrn(lrn) => lrn_forward(lrn, x[0]),
            Op::Dropout { p } => match options.mode {
                Mode::Inference => x[0].clone(),
                Mode::Training { seed } => {
                    let mask = Buf { shape: out_shape, data: dropout_mask(seed, id.index(), x[0].len(), *p) };
                    let y = Buf {
                        shape: mask.shape.clone(),
                        data: x[0].data.iter().zip(&mask.data).map(|(v, m)| v * m).collect(),
                    };
                    masks[id.index()] = Some(mask);
                    y
                }
            },
            Op::Concat | Op::ConcatInPlace => concat_forward(&x, &out_shape),
            Op::Reorder(_) => x[0].clone(),
            Op::Gemm(gemm) => base_forward(&FusedBase::Gemm(*gemm), x[0], &param, &out_shape),
            Op::Fused { base, epilogue } => fused_forward(base, epilogue, &x, &param, &out_shape),
            Op::Add => {
                let mut y = x[0].clone();
                for other in &x[1..] {
                    for (a, b) in y.data.iter_mut().zip(&other.data) {
                        *a += b;
                    }
                }
                y
            }
        };
        values.push(round_if(precision, value));
    }

    Ok(Trace { options, batch, values, masks, params: used, running_stats, outputs: graph.outputs.clone() })
}

/// A matrix product on a map is a 1x1 convolution (stride 1, no padding, one group) over the
/// same `[O, C, 1, 1]` weight; on a vector it is an fc layer.
fn gemm_as_conv(gemm: &Gemm) -> Conv {
    let window = Window { kernel: [1, 1], stride: [1, 1], pad: [0, 0], dilation: [1, 1], ceil_mode: false };
    Conv { out_channels: gemm.out, window, groups: 1, bias: gemm.bias }
}

/// The base of a fused node (or a plain `gemm`), bias included.
fn base_forward<'p>(base: &FusedBase, x: &Buf, param: &impl Fn(&str) -> &'p Buf, out_shape: &[usize]) -> Buf {
    match base {
        FusedBase::Conv(conv) => conv_forward(conv, x, param("weight"), conv.bias.then(|| param("bias")), out_shape),
        FusedBase::Gemm(gemm) if x.shape.len() == 4 => {
            conv_forward(&gemm_as_conv(gemm), x, param("weight"), gemm.bias.then(|| param("bias")), out_shape)
        }
        FusedBase::Gemm(gemm) => fc_forward(x, param("weight"), gemm.bias.then(|| param("bias"))),
    }
}

/// The base's result plus the residual operand, before the activation.
fn fused_preactivation<'p>(
    base: &FusedBase,
    epilogue: &Epilogue,
    x: &[&Buf],
    param: &impl Fn(&str) -> &'p Buf,
    out_shape: &[usize],
) -> Buf {
    let mut y = base_forward(base, x[0], param, out_shape);
    if epilogue.residual {
        for (a, b) in y.data.iter_mut().zip(&x[1].data) {
            *a += b;
        }
    }
    y
}

/// A fused node: base, `+ residual`, activation, all in f64 and stored once.
fn fused_forward<'p>(
    base: &FusedBase,
    epilogue: &Epilogue,
    x: &[&Buf],
    param: &impl Fn(&str) -> &'p Buf,
    out_shape: &[usize],
) -> Buf {
    let y = fused_preactivation(base, epilogue, x, param, out_shape);
    match epilogue.activation {
        Some(a) => activation_forward(a, &y),
        None => y,
    }
}

/// Gradients of a fused node's base: `(dx, [(suffix, dparam)])`.
fn base_backward(base: &FusedBase, x: &Buf, weight: &Buf, gy: &Buf) -> (Buf, Vec<(&'static str, Buf)>) {
    let (dx, dw, db) = match base {
        FusedBase::Conv(conv) => conv_backward(conv, x, weight, gy),
        FusedBase::Gemm(gemm) if x.shape.len() == 4 => conv_backward(&gemm_as_conv(gemm), x, weight, gy),
        FusedBase::Gemm(gemm) => fc_backward(x, weight, gemm.bias, gy),
    };
    let mut gp = vec![("weight", dw)];
    if let Some(db) = db {
        gp.push(("bias", db));
    }
    (dx, gp)
}

fn adaptive(kind: PoolKind, x: &Buf, output: [usize; 2]) -> Buf {
    let bins = [Bins::adaptive(output[0], x.shape[2]), Bins::adaptive(output[1], x.shape[3])];
    let mut y = Buf::zeros(&[x.shape[0], x.shape[1], output[0], output[1]]);
    pool_forward(kind, x, &bins, &mut y, 0);
    y
}

/// Concatenation along axis 1: per sample, the inputs' blocks one after another.
fn concat_forward(x: &[&Buf], out_shape: &[usize]) -> Buf {
    let n = out_shape[0];
    let mut y = Buf { shape: out_shape.to_vec(), data: Vec::with_capacity(elements(out_shape).unwrap_or(0)) };
    for b in 0..n {
        for input in x {
            let per = input.len() / n;
            y.data.extend_from_slice(&input.data[b * per..][..per]);
        }
    }
    y
}

/// `dst += src`, rounding the sum when storage is f32.
fn accumulate(slot: &mut Option<Buf>, src: Buf, precision: Precision) {
    match slot {
        None => *slot = Some(src),
        Some(dst) => {
            for (a, b) in dst.data.iter_mut().zip(&src.data) {
                *a += b;
            }
            if precision == Precision::F32 {
                dst.round_to_f32();
            }
        }
    }
}

/// Checks that `trace` was recorded by [`forward`] on this graph.
/// Returns each node's position in `graph.inputs`, as [`check_graph`].
fn check_trace(graph: &Graph, trace: &Trace) -> Result<Vec<Option<usize>>, InterpError> {
    let position = check_graph(graph)?;
    if trace.values.len() != graph.len() || trace.outputs != graph.outputs {
        return Err(InterpError::TraceMismatch(format!(
            "the trace has {} nodes and outputs {:?}, the graph {} nodes and outputs {:?}",
            trace.values.len(),
            trace.outputs,
            graph.len(),
            graph.outputs
        )));
    }
    for (id, node) in graph.iter() {
        let expected = full_shape(trace.batch, &node.shape.0);
        if trace.values[id.index()].shape != expected {
            return Err(InterpError::TraceMismatch(format!(
                "node {id} (`{}`) has shape {expected:?} in the graph but {:?} in the trace",
                node.name,
                trace.values[id.index()].shape
            )));
        }
    }
    for (name, spec) in graph.named_params() {
        match trace.params.get(&name) {
            Some(buf) if buf.shape == spec.dims => {}
            Some(_) | None => {
                return Err(InterpError::TraceMismatch(format!("parameter `{name}` differs from the trace's")));
            }
        }
    }
    Ok(position)
}

/// Backpropagates `grad_outputs` (one per graph output, in `graph.outputs` order, each of the
/// output's full shape: the gradient of some scalar loss with respect to that output) through
/// the pass recorded in `trace`, which must come from [`forward`] on the same graph.
///
/// Batch norm and dropout differentiate what the forward pass did: the full batch-norm
/// backward through the batch statistics in training mode, the affine one in inference mode;
/// the recorded mask for dropout.
pub fn backward<T: TensorLike>(graph: &Graph, trace: &Trace, grad_outputs: &[T]) -> Result<Gradients<T>, InterpError> {
    let position = check_trace(graph, trace)?;
    if grad_outputs.len() != graph.outputs.len() {
        return Err(InterpError::GradOutputCount { expected: graph.outputs.len(), found: grad_outputs.len() });
    }
    let precision = trace.options.precision;
    let mut grads: Vec<Option<Buf>> = vec![None; graph.len()];
    for (k, (g, &id)) in grad_outputs.iter().zip(&graph.outputs).enumerate() {
        let expected = &trace.values[id.index()].shape;
        if g.shape() != expected.as_slice() {
            return Err(InterpError::GradOutputShape {
                index: k,
                expected: expected.clone(),
                found: g.shape().to_vec(),
            });
        }
        let buf = round_if(precision, checked_buf(|| format!("output gradient {k}"), g)?);
        accumulate(&mut grads[id.index()], buf, precision);
    }

    let mut param_grads = BufMap::new();
    for (name, spec) in graph.named_params() {
        if spec.trainable() {
            param_grads.insert(name, Buf::zeros(&spec.dims));
        }
    }
    let mut input_grads: Vec<Option<Buf>> = vec![None; graph.inputs.len()];

    for index in (0..graph.len()).rev() {
        let id = NodeId::from_index(index);
        let node = &graph[id];
        let Some(gy) = grads[id.index()].take() else { continue };
        let x: Vec<&Buf> = node.inputs.iter().map(|i| &trace.values[i.index()]).collect();
        let pname = |suffix: &str| format!("{}.{suffix}", node.name);
        let param = |suffix: &str| &trace.params[&pname(suffix)];
        // Gradients for each input slot, and for parameters by suffix.
        let mut gx: Vec<Buf> = Vec::new();
        let mut gp: Vec<(&str, Buf)> = Vec::new();
        match &node.op {
            Op::Input => {
                if let Some(k) = position[id.index()] {
                    input_grads[k] = Some(gy);
                }
            }
            Op::Conv(conv) => {
                let (dx, dw, db) = conv_backward(conv, x[0], param("weight"), &gy);
                gx.push(dx);
                gp.push(("weight", dw));
                if let Some(db) = db {
                    gp.push(("bias", db));
                }
            }
            Op::Pool { kind, window } => {
                let bins = Bins::window(window, [x[0].shape[2], x[0].shape[3]], [gy.shape[2], gy.shape[3]]);
                let mut dx = Buf::zeros(&x[0].shape);
                pool_backward(*kind, x[0], &bins, &gy, 0, &mut dx);
                gx.push(dx);
            }
            Op::GlobalPool(kind) => gx.push(adaptive_backward(*kind, x[0], [1, 1], &gy)),
            Op::AdaptivePool { kind, output } => gx.push(adaptive_backward(*kind, x[0], *output, &gy)),
            Op::Spp { kind, levels } => {
                let mut dx = Buf::zeros(&x[0].shape);
                let mut offset = 0;
                for &l in levels {
                    let bins = [Bins::adaptive(l, x[0].shape[2]), Bins::adaptive(l, x[0].shape[3])];
                    pool_backward(*kind, x[0], &bins, &gy, offset, &mut dx);
                    offset += x[0].shape[1] * l * l;
                }
                gx.push(dx);
            }
            Op::Fc(fc) => {
                let (dx, dw, db) = fc_backward(x[0], param("weight"), fc.bias, &gy);
                gx.push(dx);
                gp.push(("weight", dw));
                if let Some(db) = db {
                    gp.push(("bias", db));
                }
            }
            Op::Flatten => gx.push(Buf { shape: x[0].shape.clone(), data: gy.data }),
            Op::Activation(a) => gx.push(activation_backward(*a, x[0], &gy)),
            Op::Prelu => {
                let (dx, dw) = prelu_backward(x[0], param("weight"), &gy);
                gx.push(dx);
                gp.push(("weight", dw));
            }
            Op::Softmax => gx.push(softmax_backward(x[0], &gy)),
            Op::BatchNorm(bn) => {
                let (dx, dw, db) = match trace.options.mode {
                    Mode::Inference => {
                        let (rm, rv) = (param("running_mean"), param("running_var"));
                        bn_affine_backward(x[0], bn.eps, &rm.data, &rv.data, param("weight"), &gy)
                    }
                    Mode::Training { .. } => bn_train_backward(x[0], bn.eps, param("weight"), &gy),
                };
                gx.push(dx);
                gp.push(("weight", dw));
                gp.push(("bias", db));
            }
            Op::Lrn(lrn) => gx.push(lrn_backward(lrn, x[0], &gy)),
            Op::Dropout { .. } => match trace.masks[id.index()].as_ref() {
                None => gx.push(gy),
                Some(mask) => {
                    let data = gy.data.iter().zip(&mask.data).map(|(g, m)| g * m).collect();
                    gx.push(Buf { shape: gy.shape.clone(), data });
                }
            },
            Op::Reorder(_) => gx.push(gy),
            Op::Gemm(gemm) => {
                let (dx, dp) = base_backward(&FusedBase::Gemm(*gemm), x[0], param("weight"), &gy);
                gx.push(dx);
                gp.extend(dp);
            }
            Op::Fused { base, epilogue } => {
                // The pre-activation value is recomputed from the operands (the reference
                // trades time for simplicity; back ends derive it from the output).
                let g_pre = match epilogue.activation {
                    Some(a) => {
                        let pre = fused_preactivation(base, epilogue, &x, &param, &gy.shape);
                        activation_backward(a, &pre, &gy)
                    }
                    None => gy,
                };
                let (dx, dp) = base_backward(base, x[0], param("weight"), &g_pre);
                gx.push(dx);
                if epilogue.residual {
                    gx.push(g_pre);
                }
                gp.extend(dp);
            }
            Op::Concat | Op::ConcatInPlace => {
                let n = trace.batch;
                let per_out = gy.len() / n;
                let mut start = 0;
                for input in &x {
                    let per = input.len() / n;
                    let mut dx = Buf { shape: input.shape.clone(), data: Vec::with_capacity(input.len()) };
                    for b in 0..n {
                        dx.data.extend_from_slice(&gy.data[b * per_out + start..][..per]);
                    }
                    start += per;
                    gx.push(dx);
                }
            }
            Op::Add => {
                for _ in &x {
                    gx.push(gy.clone());
                }
            }
        }
        for (slot, dx) in gx.into_iter().enumerate() {
            accumulate(&mut grads[node.inputs[slot].index()], round_if(precision, dx), precision);
        }
        // Parameter names are unique (checked), so each is written once.
        for (suffix, dp) in gp {
            param_grads.insert(pname(suffix), round_if(precision, dp));
        }
    }

    let inputs = graph
        .inputs
        .iter()
        .zip(input_grads)
        .map(|(&id, g)| T::from_buf(&g.unwrap_or_else(|| Buf::zeros(&trace.values[id.index()].shape))))
        .collect();
    let params = param_grads.iter().map(|(k, v)| (k.clone(), T::from_buf(v))).collect();
    Ok(Gradients { params, inputs })
}

fn adaptive_backward(kind: PoolKind, x: &Buf, output: [usize; 2], gy: &Buf) -> Buf {
    let bins = [Bins::adaptive(output[0], x.shape[2]), Bins::adaptive(output[1], x.shape[3])];
    let mut dx = Buf::zeros(&x.shape);
    pool_backward(kind, x, &bins, gy, 0, &mut dx);
    dx
}
