//! Running a graph on logical tensors: validation at the boundary, then every node in order.

use crate::buf::{Buf, BufMap, TensorLike, checked_buf, elements};
use crate::error::InterpError;
use crate::eval::{Ctx, Output, Params, eval, full_shape};
use cnnc_ir::facts::{ValueKind, is_source, value_kind};
use cnnc_ir::plan::OutputRole;
use cnnc_ir::{Graph, Node, NodeId, Op, ParamRole, TrainOp};
use std::borrow::Cow;
use std::collections::BTreeMap;

/// How values are stored between nodes. Arithmetic inside a node is always f64.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Precision {
    /// Every stored tensor (inputs, parameters, each node's value, every parameter or state
    /// an effect writes) is rounded to the nearest f32: the semantics of an f32 back end that
    /// accumulates in f64. The normal mode.
    F32,
    /// Everything stays f64 (for finite-difference gradient checks).
    F64,
}

/// The run-time arguments of a run.
#[derive(Clone, Debug, PartialEq)]
pub struct Options {
    pub precision: Precision,
    /// The seed of dropout masks ([`crate::dropout_mask`]).
    pub seed: u64,
    /// The training step, from 1: Adam's bias correction, SGD's first momentum step and
    /// dropout masks depend on it.
    pub step: u64,
    /// The learning rate of optimiser updates.
    pub lr: f64,
    /// Keep every node's value in the [`Run`] (for inspection and dumps); otherwise each
    /// value is dropped after its last reader, as an executor's memory plan would, and only
    /// the graph's outputs remain.
    pub keep_values: bool,
    /// When given, checked before each node: once it is set the run stops with
    /// [`InterpError::Cancelled`], and `state` is left as it was (effects are written back
    /// only when a run completes).
    pub cancel: Option<cnnc_runtime::Cancel>,
}

impl Options {
    /// f32 storage, seed 0, step 1, learning rate 0, no cancelling.
    pub fn new() -> Options {
        Options { precision: Precision::F32, seed: 0, step: 1, lr: 0.0, keep_values: false, cancel: None }
    }

    pub fn with_precision(self, precision: Precision) -> Options {
        Options { precision, ..self }
    }

    pub fn with_seed(self, seed: u64) -> Options {
        Options { seed, ..self }
    }

    pub fn with_step(self, step: u64) -> Options {
        Options { step, ..self }
    }

    pub fn with_lr(self, lr: f64) -> Options {
        Options { lr, ..self }
    }

    pub fn keeping_values(self) -> Options {
        Options { keep_values: true, ..self }
    }

    pub fn with_cancel(self, cancel: cnnc_runtime::Cancel) -> Options {
        Options { cancel: Some(cancel), ..self }
    }
}

impl Default for Options {
    fn default() -> Options {
        Options::new()
    }
}

/// Everything a run computed: each node's value (none for effects), for inspection.
#[derive(Clone, Debug)]
pub struct Run {
    pub(crate) batch: usize,
    pub(crate) values: Vec<Option<Buf>>,
    pub(crate) outputs: Vec<NodeId>,
}

impl Run {
    /// The batch size N of this run.
    pub fn batch(&self) -> usize {
        self.batch
    }

    /// The value of any node (full shape: `[N] ++ shape` when batched); `None` for effects,
    /// and for values dropped after their last use (unless [`Options::keep_values`]).
    pub fn value(&self, id: NodeId) -> Option<&Buf> {
        self.values.get(id.index()).and_then(Option::as_ref)
    }

    /// The `k`-th graph output's value; `None` for an effect.
    pub fn output<T: TensorLike>(&self, k: usize) -> Option<T> {
        self.outputs.get(k).and_then(|&id| self.value(id)).map(T::from_buf)
    }

    /// Every graph output's value, in order (`None` for effects).
    pub fn outputs<T: TensorLike>(&self) -> Vec<Option<T>> {
        (0..self.outputs.len()).map(|k| self.output(k)).collect()
    }
}

/// The results of a training graph's run, sorted by what its outputs are (see
/// `cnnc_passes::grad`).
#[derive(Clone, Debug, PartialEq)]
pub struct Gradients<T> {
    /// The loss (the mean over the batch), if the graph computes one.
    pub loss: Option<f64>,
    /// The model's outputs, in order.
    pub outputs: Vec<T>,
    /// Every parameter gradient output, by parameter name.
    pub params: BTreeMap<String, T>,
    /// The gradient of each model input that has one, by input position.
    pub inputs: BTreeMap<usize, T>,
}

/// Sorts a run's outputs by their roles (`roles[k]` describes output `k`).
pub fn gradients<T: TensorLike>(roles: &[OutputRole], run: &Run) -> Gradients<T> {
    let mut g = Gradients { loss: None, outputs: Vec::new(), params: BTreeMap::new(), inputs: BTreeMap::new() };
    for (k, role) in roles.iter().enumerate() {
        let Some(value) = run.outputs.get(k).and_then(|&id| run.value(id)) else { continue };
        match role {
            OutputRole::Loss => g.loss = value.data.first().copied(),
            OutputRole::Model(_) => g.outputs.push(T::from_buf(value)),
            OutputRole::ParamGrad(name) => {
                g.params.insert(name.clone(), T::from_buf(value));
            }
            OutputRole::InputGrad(i) => {
                g.inputs.insert(*i, T::from_buf(value));
            }
            OutputRole::Update(_) => {}
        }
    }
    g
}

/// [`InterpError::Cancelled`] once the run's token is set: the check before each node.
pub(crate) fn check_cancel(options: &Options) -> Result<(), InterpError> {
    if cnnc_runtime::cancel_requested(options.cancel.as_ref()) { Err(InterpError::Cancelled) } else { Ok(()) }
}

pub(crate) fn malformed(msg: impl Into<String>) -> InterpError {
    InterpError::Malformed(msg.into())
}

/// Checks what `Graph::add` guarantees (with the IR's verifier) so that a hand-edited graph
/// is an error, not a panic; values nobody reads are fine here. Then the attributes the shape
/// rules accept but the arithmetic cannot run.
pub(crate) fn check_graph(graph: &Graph) -> Result<(), InterpError> {
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
    if graph.inputs.is_empty() {
        return Err(InterpError::NoInputs);
    }
    for (_, node) in graph.iter() {
        check_attributes(node)?;
    }
    Ok(())
}

fn check_attributes(node: &Node) -> Result<(), InterpError> {
    let bad = |message: String| Err(InterpError::BadAttribute { layer: node.name.clone(), message });
    if let Op::Dropout { p } = node.op
        && !(0.0..=1.0).contains(&p)
    {
        return bad(format!("dropout probability {p} is not in [0, 1]"));
    }
    if let Op::BatchNorm(bn) | Op::Train(TrainOp::BnNormalize(bn) | TrainOp::BnRunningUpdate { bn, .. }) = node.op
        && !(bn.eps.is_finite() && bn.eps >= 0.0 && bn.momentum.is_finite())
    {
        return bad(format!("batch norm eps {} / momentum {} are not usable", bn.eps, bn.momentum));
    }
    Ok(())
}

/// Checks the inputs against the graph's sources and returns them as buffers with the batch
/// size: data inputs `[N] ++ shape`, labels `[N]` holding integers in `0..classes`.
pub(crate) fn check_inputs<T: TensorLike>(
    graph: &Graph,
    inputs: &[T],
    precision: Precision,
) -> Result<(usize, Vec<Buf>), InterpError> {
    if inputs.len() != graph.inputs.len() {
        return Err(InterpError::InputCount { expected: graph.inputs.len(), found: inputs.len() });
    }
    let mut batch = 0;
    let mut bufs = Vec::with_capacity(inputs.len());
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
        let buf = round_if(precision, checked_buf(|| format!("input {k} (`{}`)", node.name), tensor)?);
        if let Op::Train(TrainOp::Labels { classes }) = node.op
            && let Some((sample, &value)) =
                buf.data.iter().enumerate().find(|&(_, &v)| !(v >= 0.0 && v < classes as f64 && v.fract() == 0.0))
        {
            return Err(InterpError::BadLabel { sample, value, classes });
        }
        bufs.push(buf);
    }
    for (_, node) in graph.iter() {
        if value_kind(&node.op) == ValueKind::Batched && elements(&full_shape(batch, &node.shape.0)).is_none() {
            return Err(InterpError::Overflow { layer: node.name.clone() });
        }
        if let Op::Train(TrainOp::BnStats) = node.op {
            let values = batch * spatial(graph, node);
            if values < 2 {
                return Err(InterpError::BatchNormTooFewValues { layer: node.name.clone(), values });
            }
        }
    }
    Ok((batch, bufs))
}

/// The spatial size of a `bn_stats` node's operand (1 for a vector).
fn spatial(graph: &Graph, node: &Node) -> usize {
    graph[node.inputs[0]].shape.0.iter().skip(1).product()
}

/// The parameters the graph owns, from `state`: present with the right shapes (optimiser
/// state may be absent: it starts at zero), converted and rounded.
pub(crate) fn check_params<T: TensorLike>(
    graph: &Graph,
    state: &BTreeMap<String, T>,
    precision: Precision,
) -> Result<BufMap, InterpError> {
    let mut used = BufMap::new();
    for (name, spec) in graph.named_params() {
        let Some(tensor) = state.get(&name) else {
            if spec.role == ParamRole::OptimizerState {
                continue;
            }
            return Err(InterpError::MissingParam { name, expected: spec.dims.clone() });
        };
        if tensor.shape() != spec.dims.as_slice() {
            return Err(InterpError::ParamShape { name, expected: spec.dims.clone(), found: tensor.shape().to_vec() });
        }
        let buf = round_if(precision, checked_buf(|| format!("parameter `{name}`"), tensor)?);
        used.insert(name, buf);
    }
    Ok(used)
}

pub(crate) fn round_if(precision: Precision, mut buf: Buf) -> Buf {
    match precision {
        Precision::F32 => buf.round_to_f32(),
        Precision::F64 => {}
    }
    buf
}

/// For each step, the values whose last reader it is (none when every value is kept; graph
/// outputs are always kept).
pub(crate) fn last_uses(graph: &Graph, keep_all: bool) -> Vec<Vec<NodeId>> {
    let mut dying = vec![Vec::new(); graph.len()];
    if keep_all {
        return dying;
    }
    let mut is_output = vec![false; graph.len()];
    for o in &graph.outputs {
        is_output[o.index()] = true;
    }
    let mut last: Vec<Option<usize>> = vec![None; graph.len()];
    for (id, node) in graph.iter() {
        for i in &node.inputs {
            last[i.index()] = Some(id.index());
        }
    }
    for (k, l) in last.into_iter().enumerate() {
        if let Some(step) = l
            && !is_output[k]
        {
            dying[step].push(NodeId::from_index(k));
        }
    }
    dying
}

/// Parameters as logical f64 tensors in a map.
pub(crate) struct MapParams(pub BufMap);

impl Params for MapParams {
    fn get(&self, name: &str) -> Result<Cow<'_, Buf>, InterpError> {
        self.0
            .get(name)
            .map(Cow::Borrowed)
            .ok_or_else(|| InterpError::MissingParam { name: name.into(), expected: vec![] })
    }

    fn get_or_zeros(&self, name: &str, dims: &[usize]) -> Result<Buf, InterpError> {
        Ok(self.0.get(name).cloned().unwrap_or_else(|| Buf::zeros(dims)))
    }
}

/// Runs `graph` on `inputs` (one per graph input, in `graph.inputs` order: `[N] ++ shape` with
/// one `N` for all, labels `[N]`). Parameters are read from `state` by full name (PyTorch's
/// `state_dict` names; extra entries are ignored); the effects of a training graph (optimiser
/// updates, running statistics) write their new values back into it once the run succeeds.
pub fn run<T: TensorLike>(
    graph: &Graph,
    state: &mut BTreeMap<String, T>,
    inputs: &[T],
    options: &Options,
) -> Result<Run, InterpError> {
    check_graph(graph)?;
    let precision = options.precision;
    let (batch, input_bufs) = check_inputs(graph, inputs, precision)?;
    let mut params = MapParams(check_params(graph, state, precision)?);
    let cx = Ctx { batch, seed: options.seed, step: options.step, lr: options.lr };
    let mut position = vec![None; graph.len()];
    for (k, &id) in graph.inputs.iter().enumerate() {
        position[id.index()] = Some(k);
    }
    let mut values: Vec<Option<Buf>> = Vec::with_capacity(graph.len());
    let mut written: Vec<String> = Vec::new();
    let dying = last_uses(graph, options.keep_values);
    for (id, node) in graph.iter() {
        check_cancel(options)?;
        if is_source(&node.op) {
            let k = position[id.index()].ok_or_else(|| malformed("unregistered input"))?;
            values.push(Some(input_bufs[k].clone()));
            continue;
        }
        let x: Vec<&Buf> = node
            .inputs
            .iter()
            .map(|i| values[i.index()].as_ref().ok_or_else(|| malformed(format!("{id} reads an effect"))))
            .collect::<Result<_, _>>()?;
        match eval(node, &x, &params, &cx)? {
            Output::Value(v) => values.push(Some(round_if(precision, v))),
            Output::Writes(writes) => {
                for (name, buf) in writes {
                    params.0.insert(name.clone(), round_if(precision, buf));
                    written.push(name);
                }
                values.push(None);
            }
        }
        for &dead in &dying[id.index()] {
            values[dead.index()] = None;
        }
    }
    for name in written {
        state.insert(name.clone(), T::from_buf(&params.0[&name]));
    }
    Ok(Run { batch, values, outputs: graph.outputs.clone() })
}
