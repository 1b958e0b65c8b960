//! The training transform: a forward graph becomes a training graph with the loss, explicit
//! backward ops and the optimiser's updates, so that no back end ever differentiates anything.
//!
//! # What the training graph holds, in order
//!
//! 1. The forward pass, with training's semantics made explicit (when
//!    [`TrainingOptions::batch_stats`]): each batch norm becomes `bn_stats` (the batch mean
//!    and variance), `bn_normalize` (normalising with them; it owns the layer's parameters)
//!    and a `bn_running_update` effect; each dropout with `p > 0` becomes a `dropout_mask` and
//!    a `mul`. Without batch statistics batch norm keeps its running statistics and dropout
//!    is the identity: the gradient of the model as deployed. Max pooling on the gradient path
//!    also records its `pool_argmax`, which its backward reads. A fused node whose
//!    activation's derivative needs its input (made by inference-mode fusion) is split into
//!    the fused base and the activation, so that the pre-activation value exists.
//! 2. The target (`labels` for the class losses, an `input` shaped like the output for the
//!    regression ones), the `loss` and its gradient `loss_grad` (cross-entropy's fused with the
//!    softmax); or, for [`Objective::OutputGradients`], one input per model output holding the
//!    gradient the backward pass starts from.
//! 3. The backward pass, node by node in reverse order: each forward op's backward ops (see
//!    [`cnnc_ir::facts::saved_for_backward`] for what they read), gradient contributions of a
//!    value read by several nodes summed by an `add`, the gradient of each trainable
//!    parameter, and (with an optimiser) that parameter's update right after its gradient, so
//!    the gradient dies at once.
//!
//! Only what the loss needs is built: a node gets a backward op when a trainable parameter
//! (not frozen) or a model input whose gradient is wanted lies at or above it.
//!
//! # Names and outputs
//!
//! Every node is named after the forward layer it belongs to (a backward op reads that layer's
//! parameters, see [`cnnc_ir::train`]), except the updates, named after the parameter they
//! update. The outputs are, in order (each described by an [`OutputRole`]): the loss, the
//! model's outputs, the input gradients, then each parameter's gradient (without an
//! optimiser) or update (with one) in the order they are computed, then the running-statistics
//! updates.

use crate::error::PassError;
use cnnc_diag::Span;
use cnnc_ir::facts::{backward_from_output, saved_for_backward};
use cnnc_ir::layout::layouts;
use cnnc_ir::plan::OutputRole;
use cnnc_ir::{
    Epilogue, FusedBase, Gemm, Graph, Layout, Loss, NodeId, Op, Optimizer, PoolGeometry, PoolKind, SavedSide, Shape,
    TrainOp,
};
use std::collections::BTreeSet;

/// Where the backward pass starts.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Objective {
    /// A loss on the model's one output, against a target input.
    Loss(Loss),
    /// The gradient of some scalar with respect to each model output, given as inputs (named
    /// `output_grad.<k>`, after the model's inputs): the vector-Jacobian product, for tests
    /// against frameworks' `y.backward(g)` and for gradient checks.
    OutputGradients,
}

/// What to train and how.
#[derive(Clone, Debug, PartialEq)]
pub struct TrainingOptions {
    pub objective: Objective,
    /// With an optimiser, each parameter is updated in the graph; without one, the parameter
    /// gradients are outputs (`cnnc grad`).
    pub optimizer: Option<Optimizer>,
    /// Batch norm on batch statistics (with running-statistics updates) and dropout active:
    /// training. Otherwise the model's inference semantics are differentiated.
    pub batch_stats: bool,
    /// Parameters that are not trained, by full name: no gradient, no update.
    pub frozen: BTreeSet<String>,
    /// Whether the gradient of each model input is an output.
    pub input_grads: bool,
}

impl TrainingOptions {
    /// A loss, with batch statistics, no optimiser, no input gradients.
    pub fn new(loss: Loss) -> TrainingOptions {
        TrainingOptions {
            objective: Objective::Loss(loss),
            optimizer: None,
            batch_stats: true,
            frozen: BTreeSet::new(),
            input_grads: false,
        }
    }
}

/// A graph made by this transform, with what its outputs are.
#[derive(Clone, Debug, PartialEq)]
pub struct TrainingGraph {
    pub graph: Graph,
    pub outputs: Vec<OutputRole>,
    /// For each node of `graph`, the node of the forward graph it was made from (forward
    /// copies and training forms of the forward ops); `None` for the target, the loss and the
    /// backward and update ops.
    pub forward_origin: Vec<Option<NodeId>>,
    /// For each node of the forward graph, the node of `graph` holding its value (`None` when
    /// nothing needs it). What `--dump` reads a layer's output from.
    pub values: Vec<Option<NodeId>>,
    /// For each node of the forward graph, the node of `graph` holding the gradient of the
    /// objective with respect to its value (`None` where no gradient flows).
    pub value_grads: Vec<Option<NodeId>>,
}

/// The forward pass of training alone (batch statistics with running-statistics updates,
/// dropout masks; no loss, no backward): what `cnnc run --train` runs. Outputs: the model's,
/// then the running-statistics updates.
pub fn training_forward(forward: &Graph) -> Result<TrainingGraph, PassError> {
    let mut b = Builder::new(forward, true)?;
    b.forward_pass(&vec![false; forward.len()])?;
    let mut outputs: Vec<(NodeId, OutputRole)> =
        forward.outputs.iter().enumerate().map(|(k, &o)| (b.value[o.index()], OutputRole::Model(k))).collect();
    outputs.append(&mut b.effects);
    b.finish(outputs)
}

/// The training graph of `forward` (see the module documentation).
pub fn training_graph(forward: &Graph, options: &TrainingOptions) -> Result<TrainingGraph, PassError> {
    let needs = needs_gradient(forward, options);
    let mut b = Builder::new(forward, options.batch_stats)?;
    b.forward_pass(&needs)?;
    let mut grads = Grads { contributions: vec![Vec::new(); forward.len()], params: Vec::new(), inputs: Vec::new() };
    let mut outputs = Vec::new();
    match options.objective {
        Objective::Loss(loss) => {
            let &[output] = &forward.outputs[..] else {
                return Err(PassError::Training(format!(
                    "a loss needs a model with one output; `{}` has {}",
                    forward.name,
                    forward.outputs.len()
                )));
            };
            let out = b.value[output.index()];
            let out_shape = forward[output].shape.clone();
            let target = if loss.takes_labels() {
                let classes = out_shape.0.first().copied().unwrap_or(0);
                b.graph.add_labels("target", classes, Span::DUMMY)
            } else {
                b.graph.add_input("target", out_shape, Span::DUMMY)
            }
            .map_err(|e| {
                PassError::Training(format!("the {} loss cannot take this model's output: {e}", loss.name()))
            })?;
            b.origin.push(None);
            let value = b.add(TrainOp::Loss(loss), vec![out, target], "loss")?;
            let loss_grad = b.add(TrainOp::LossGrad(loss), vec![out, target], "loss")?;
            outputs.push((value, OutputRole::Loss));
            outputs.push((out, OutputRole::Model(0)));
            grads.contributions[output.index()].push(loss_grad);
        }
        Objective::OutputGradients => {
            for (k, &output) in forward.outputs.iter().enumerate() {
                let shape = forward[output].shape.clone();
                let g = b
                    .graph
                    .add_input(format!("output_grad.{k}"), shape, Span::DUMMY)
                    .map_err(|error| PassError::Shape { pass: "training", node: format!("output_grad.{k}"), error })?;
                b.origin.push(None);
                outputs.push((b.value[output.index()], OutputRole::Model(k)));
                grads.contributions[output.index()].push(g);
            }
        }
    }
    for index in (0..forward.len()).rev() {
        let id = NodeId::from_index(index);
        if needs[index] {
            b.backward(id, &needs, options, &mut grads)?;
        }
    }
    grads.inputs.sort();
    outputs.extend(grads.inputs.into_iter().map(|(k, node)| (node, OutputRole::InputGrad(k))));
    outputs.append(&mut grads.params);
    outputs.append(&mut b.effects);
    b.finish(outputs)
}

/// For each forward node, whether the loss's gradient must flow through it: a trainable,
/// unfrozen parameter or a wanted input gradient lies at or above it.
fn needs_gradient(forward: &Graph, options: &TrainingOptions) -> Vec<bool> {
    let mut needs = vec![false; forward.len()];
    for (id, node) in forward.iter() {
        needs[id.index()] = if node.op == Op::Input {
            options.input_grads
        } else {
            let own = forward
                .params(id)
                .iter()
                .any(|p| p.trainable() && !options.frozen.contains(&format!("{}.{}", node.name, p.suffix)));
            own || node.inputs.iter().any(|i| needs[i.index()])
        };
    }
    needs
}

/// Gradients collected during the backward walk.
struct Grads {
    /// Per forward node, the gradient contributions to its value, to be summed.
    contributions: Vec<Vec<NodeId>>,
    /// Parameter gradients (or updates) in the order they are made.
    params: Vec<(NodeId, OutputRole)>,
    /// `(input position, gradient)`.
    inputs: Vec<(usize, NodeId)>,
}

/// What the forward pass of training recorded for a node's backward.
#[derive(Clone, Copy, Default)]
struct Recorded {
    argmax: Option<NodeId>,
    stats: Option<NodeId>,
    mask: Option<NodeId>,
    /// A fused node whose activation's derivative needs its operand is split in two (the
    /// base with its residual, then the activation); this is the first half.
    pre_activation: Option<NodeId>,
}

struct Builder<'f> {
    forward: &'f Graph,
    forward_layouts: Vec<Layout>,
    batch_stats: bool,
    graph: Graph,
    /// Per forward node, the training graph node holding its value.
    value: Vec<NodeId>,
    /// Per forward node, the training graph node holding the gradient of its value.
    value_grad: Vec<Option<NodeId>>,
    recorded: Vec<Recorded>,
    origin: Vec<Option<NodeId>>,
    effects: Vec<(NodeId, OutputRole)>,
    /// The forward node being translated (the origin of what is added).
    current: Option<NodeId>,
    /// Where the layer being translated or differentiated is written in the source.
    span: Span,
}

impl<'f> Builder<'f> {
    fn new(forward: &'f Graph, batch_stats: bool) -> Result<Builder<'f>, PassError> {
        if let Some((_, node)) = forward.iter().find(|(_, n)| matches!(n.op, Op::Train(_))) {
            return Err(PassError::Training(format!(
                "`{}` is already a training graph (it holds `{}`)",
                forward.name,
                node.op.keyword()
            )));
        }
        Ok(Builder {
            forward,
            forward_layouts: layouts(forward).0,
            batch_stats,
            graph: Graph::new(forward.name.clone()),
            value: Vec::with_capacity(forward.len()),
            value_grad: vec![None; forward.len()],
            recorded: vec![Recorded::default(); forward.len()],
            origin: Vec::new(),
            effects: Vec::new(),
            current: None,
            span: Span::DUMMY,
        })
    }

    fn add_op(&mut self, op: Op, inputs: Vec<NodeId>, name: &str) -> Result<NodeId, PassError> {
        let (id, _) = self.graph.add(op, inputs, name, self.span).map_err(|error| PassError::Shape {
            pass: "training",
            node: name.to_string(),
            error,
        })?;
        self.origin.push(self.current);
        Ok(id)
    }

    fn add(&mut self, op: TrainOp, inputs: Vec<NodeId>, name: &str) -> Result<NodeId, PassError> {
        self.add_op(Op::Train(op), inputs, name)
    }

    /// Copies the forward graph, in training form where `batch_stats` asks for it. `needs`
    /// says which nodes the backward pass will differentiate (max pooling records its argmax
    /// for those).
    fn forward_pass(&mut self, needs: &[bool]) -> Result<(), PassError> {
        for (id, node) in self.forward.iter() {
            self.current = Some(id);
            self.span = node.span;
            let x: Vec<NodeId> = node.inputs.iter().map(|i| self.value[i.index()]).collect();
            let name = node.name.as_str();
            let value = match &node.op {
                Op::Input => {
                    let id = self
                        .graph
                        .add_input(name, node.shape.clone(), node.span)
                        .map_err(|error| PassError::Shape { pass: "training", node: name.to_string(), error })?;
                    self.origin.push(self.current);
                    id
                }
                Op::BatchNorm(bn) if self.batch_stats => {
                    let stats = self.add(TrainOp::BnStats, vec![x[0]], name)?;
                    let y = self.add(TrainOp::BnNormalize(*bn), vec![x[0], stats], name)?;
                    let spatial = node.shape.0.iter().skip(1).product();
                    let update = self.add(TrainOp::BnRunningUpdate { bn: *bn, spatial }, vec![stats], name)?;
                    self.effects.push((update, OutputRole::Update(name.to_string())));
                    self.recorded[id.index()].stats = Some(stats);
                    y
                }
                Op::Dropout { p } if self.batch_stats && *p > 0.0 => {
                    let mask = self.add(TrainOp::DropoutMask { p: *p }, vec![x[0]], name)?;
                    self.recorded[id.index()].mask = Some(mask);
                    self.add(TrainOp::Mul, vec![x[0], mask], name)?
                }
                Op::Fused { base, epilogue: Epilogue { residual, activation: Some(a) } }
                    if !backward_from_output(a) && needs[id.index()] =>
                {
                    let epilogue = Epilogue { residual: *residual, activation: None };
                    let pre = self.add_op(Op::Fused { base: *base, epilogue }, x.clone(), name)?;
                    self.recorded[id.index()].pre_activation = Some(pre);
                    self.add_op(Op::Activation(*a), vec![pre], name)?
                }
                // Its operands may now have other readers (their backward ops): whether the
                // concatenation can stay in place is decided again on the training graph.
                Op::ConcatInPlace => self.add_op(Op::Concat, x.clone(), name)?,
                Op::Pool { .. } | Op::GlobalPool(_) | Op::AdaptivePool { .. } | Op::Spp { .. } => {
                    let y = self.add_op(node.op.clone(), x.clone(), name)?;
                    if let Some((PoolKind::Max, geometry)) = pooling(&node.op)
                        && needs[node.inputs[0].index()]
                    {
                        let argmax = self.add(TrainOp::PoolArgmax(geometry), vec![x[0]], name)?;
                        self.recorded[id.index()].argmax = Some(argmax);
                    }
                    y
                }
                // The same op: its training semantics are its inference semantics (or, for
                // batch norm and dropout above, the model is differentiated as deployed).
                Op::Conv(_)
                | Op::Fc(_)
                | Op::Flatten
                | Op::Activation(_)
                | Op::Prelu
                | Op::Softmax
                | Op::BatchNorm(_)
                | Op::Lrn(_)
                | Op::Dropout { .. }
                | Op::Concat
                | Op::Add
                | Op::Gemm(_)
                | Op::Fused { .. }
                | Op::Reorder(_) => self.add_op(node.op.clone(), x.clone(), name)?,
                Op::Train(_) => unreachable!("Builder::new refuses training graphs"),
            };
            // The layers the optimiser merged into this one stay listed on it (on the fused
            // base when its activation was split off).
            let primary = self.recorded[id.index()].pre_activation.unwrap_or(value);
            self.graph.node_mut(primary).absorbed = node.absorbed.clone();
            self.value.push(value);
        }
        self.current = None;
        self.span = Span::DUMMY;
        Ok(())
    }

    /// Emits the backward ops of forward node `id`.
    fn backward(
        &mut self,
        id: NodeId,
        needs: &[bool],
        options: &TrainingOptions,
        grads: &mut Grads,
    ) -> Result<(), PassError> {
        let node = &self.forward[id];
        let name = node.name.as_str();
        self.span = node.span;
        let gy = match std::mem::take(&mut grads.contributions[id.index()])[..] {
            [] => return Ok(()),
            [one] => one,
            ref many => self.add_op(Op::Add, many.to_vec(), name)?,
        };
        self.value_grad[id.index()] = Some(gy);
        let saved = saved_for_backward(&node.op, self.batch_stats).expect("forward graphs hold no training ops");
        let x = node.inputs.first().map(|i| self.value[i.index()]);
        let y = self.value[id.index()];
        let rec = self.recorded[id.index()];
        let wants = |k: usize| node.inputs.get(k).is_some_and(|i| needs[i.index()]);
        let trains = |suffix: &str| {
            let full = format!("{name}.{suffix}");
            self.forward.params(id).iter().any(|p| p.suffix == suffix && p.trainable())
                && !options.frozen.contains(&full)
        };
        let (train_weight, train_bias) = (trains("weight"), trains("bias"));
        let in_shape = |k: usize| self.forward[node.inputs[k]].shape.clone();
        // Gradients for operands by position, and for parameters by suffix.
        let mut dx: Vec<(usize, NodeId)> = Vec::new();
        let mut dp: Vec<(&'static str, NodeId)> = Vec::new();
        debug_assert!(!saved.operand || x.is_some());
        match &node.op {
            Op::Input => {
                let k = self.forward.inputs.iter().position(|&i| i == id).expect("inputs are listed");
                grads.inputs.push((k, gy));
                return Ok(());
            }
            Op::Conv(conv) => {
                if wants(0) {
                    let input = map3(&in_shape(0))?;
                    dx.push((
                        0,
                        self.add(TrainOp::ConvBackwardData { conv: *conv, input, mask: None }, vec![gy], name)?,
                    ));
                }
                if train_weight {
                    dp.push((
                        "weight",
                        self.add(TrainOp::ConvBackwardWeight(*conv), vec![x.expect("operand"), gy], name)?,
                    ));
                }
                if conv.bias && train_bias {
                    dp.push(("bias", self.add(TrainOp::BiasGrad, vec![gy], name)?));
                }
            }
            Op::Fc(fc) => {
                let gemm = Gemm { out: fc.out_features, bias: fc.bias };
                self.gemm_backward(
                    &gemm,
                    x.expect("operand"),
                    gy,
                    in_shape(0).channels(),
                    wants(0),
                    (train_weight, train_bias),
                    name,
                    &mut dx,
                    &mut dp,
                )?;
            }
            Op::Gemm(gemm) => {
                self.gemm_backward(
                    gemm,
                    x.expect("operand"),
                    gy,
                    in_shape(0).channels(),
                    wants(0),
                    (train_weight, train_bias),
                    name,
                    &mut dx,
                    &mut dp,
                )?;
            }
            Op::Fused { base, epilogue } => {
                let g_pre = match (epilogue.activation, rec.pre_activation) {
                    (Some(a), Some(pre)) => {
                        let op = TrainOp::ActivationBackward { activation: a, from: SavedSide::Operand };
                        self.add(op, vec![pre, gy], name)?
                    }
                    (Some(a), None) => {
                        let op = TrainOp::ActivationBackward { activation: a, from: SavedSide::Output };
                        self.add(op, vec![y, gy], name)?
                    }
                    (None, _) => gy,
                };
                let x = x.expect("operand");
                match base {
                    FusedBase::Conv(conv) => {
                        if wants(0) {
                            let input = map3(&in_shape(0))?;
                            let op = TrainOp::ConvBackwardData { conv: *conv, input, mask: None };
                            dx.push((0, self.add(op, vec![g_pre], name)?));
                        }
                        if train_weight {
                            dp.push(("weight", self.add(TrainOp::ConvBackwardWeight(*conv), vec![x, g_pre], name)?));
                        }
                        if conv.bias && train_bias {
                            dp.push(("bias", self.add(TrainOp::BiasGrad, vec![g_pre], name)?));
                        }
                    }
                    FusedBase::Gemm(gemm) => {
                        let flags = (train_weight, train_bias);
                        self.gemm_backward(
                            gemm,
                            x,
                            g_pre,
                            in_shape(0).channels(),
                            wants(0),
                            flags,
                            name,
                            &mut dx,
                            &mut dp,
                        )?;
                    }
                }
                if epilogue.residual && wants(1) {
                    dx.push((1, g_pre));
                }
            }
            Op::Pool { kind, .. } | Op::GlobalPool(kind) | Op::AdaptivePool { kind, .. } | Op::Spp { kind, .. } => {
                if wants(0) {
                    let (_, geometry) = pooling(&node.op).expect("pooling ops have a geometry");
                    let operands = match kind {
                        PoolKind::Max => {
                            vec![gy, rec.argmax.expect("max pooling on the gradient path records its argmax")]
                        }
                        PoolKind::Avg { .. } => vec![gy],
                        PoolKind::L2 => vec![x.expect("operand"), y, gy],
                    };
                    let op = TrainOp::PoolBackward { kind: *kind, geometry, input: map3(&in_shape(0))? };
                    dx.push((0, self.add(op, operands, name)?));
                }
            }
            Op::Flatten => {
                if wants(0) {
                    dx.push((0, self.add(TrainOp::Reshape(in_shape(0).0), vec![gy], name)?));
                }
            }
            Op::Activation(a) => {
                if wants(0) {
                    let (from, saved) =
                        if saved.output { (SavedSide::Output, y) } else { (SavedSide::Operand, x.expect("operand")) };
                    let op = TrainOp::ActivationBackward { activation: *a, from };
                    dx.push((0, self.add(op, vec![saved, gy], name)?));
                }
            }
            Op::Prelu => {
                let x = x.expect("operand");
                if wants(0) {
                    dx.push((0, self.add(TrainOp::PreluBackwardData, vec![x, gy], name)?));
                }
                if train_weight {
                    dp.push(("weight", self.add(TrainOp::PreluBackwardWeight, vec![x, gy], name)?));
                }
            }
            Op::Softmax => {
                if wants(0) {
                    dx.push((0, self.add(TrainOp::SoftmaxBackward, vec![y, gy], name)?));
                }
            }
            Op::BatchNorm(bn) => {
                let x = x.expect("operand");
                // With batch statistics both read `(x, stats, gy)`; with the running ones the
                // data gradient is the affine map's and reads `gy` alone.
                let batch_stats = rec.stats.is_some();
                let (data_operands, gamma_operands) = match rec.stats {
                    Some(stats) => (vec![x, stats, gy], vec![x, stats, gy]),
                    None => (vec![gy], vec![x, gy]),
                };
                if wants(0) {
                    let op = TrainOp::BnBackwardData { bn: *bn, batch_stats };
                    dx.push((0, self.add(op, data_operands, name)?));
                }
                if train_weight {
                    let op = TrainOp::BnGammaGrad { bn: *bn, batch_stats };
                    dp.push(("weight", self.add(op, gamma_operands, name)?));
                }
                if train_bias {
                    dp.push(("bias", self.add(TrainOp::BiasGrad, vec![gy], name)?));
                }
            }
            Op::Lrn(lrn) => {
                if wants(0) {
                    dx.push((0, self.add(TrainOp::LrnBackward(*lrn), vec![x.expect("operand"), gy], name)?));
                }
            }
            Op::Dropout { .. } => {
                if wants(0) {
                    let g = match rec.mask {
                        Some(mask) => self.add(TrainOp::Mul, vec![gy, mask], name)?,
                        None => gy,
                    };
                    dx.push((0, g));
                }
            }
            Op::Concat | Op::ConcatInPlace => {
                let mut start = 0;
                for (k, &operand) in node.inputs.iter().enumerate() {
                    let len = self.forward[operand].shape.channels();
                    if wants(k) {
                        dx.push((k, self.add(TrainOp::Slice { start, len }, vec![gy], name)?));
                    }
                    start += len;
                }
            }
            Op::Add => {
                for k in 0..node.inputs.len() {
                    if wants(k) {
                        dx.push((k, gy));
                    }
                }
            }
            Op::Reorder(_) => {
                if wants(0) {
                    let back = self.forward_layouts[node.inputs[0].index()];
                    dx.push((0, self.add_op(Op::Reorder(back), vec![gy], name)?));
                }
            }
            Op::Train(_) => unreachable!("Builder::new refuses training graphs"),
        }
        for (k, g) in dx {
            grads.contributions[node.inputs[k].index()].push(g);
        }
        for (suffix, g) in dp {
            let param = format!("{name}.{suffix}");
            match &options.optimizer {
                Some(optimizer) => {
                    let update = self.add(TrainOp::Update(*optimizer), vec![g], &param)?;
                    grads.params.push((update, OutputRole::Update(param)));
                }
                None => grads.params.push((g, OutputRole::ParamGrad(param))),
            }
        }
        Ok(())
    }

    /// The backward of a matrix product (a 1x1 convolution or an fc layer).
    #[allow(clippy::too_many_arguments)]
    fn gemm_backward(
        &mut self,
        gemm: &Gemm,
        x: NodeId,
        gy: NodeId,
        in_channels: usize,
        want_dx: bool,
        (train_weight, train_bias): (bool, bool),
        name: &str,
        dx: &mut Vec<(usize, NodeId)>,
        dp: &mut Vec<(&'static str, NodeId)>,
    ) -> Result<(), PassError> {
        if want_dx {
            dx.push((0, self.add(TrainOp::GemmBackwardData { gemm: *gemm, input: in_channels }, vec![gy], name)?));
        }
        if train_weight {
            dp.push(("weight", self.add(TrainOp::GemmBackwardWeight(*gemm), vec![x, gy], name)?));
        }
        if gemm.bias && train_bias {
            dp.push(("bias", self.add(TrainOp::BiasGrad, vec![gy], name)?));
        }
        Ok(())
    }

    /// The training graph with `outputs`, checked and with dead nodes removed.
    fn finish(mut self, outputs: Vec<(NodeId, OutputRole)>) -> Result<TrainingGraph, PassError> {
        let (nodes, roles): (Vec<NodeId>, Vec<OutputRole>) = outputs.into_iter().unzip();
        self.graph.outputs = nodes;
        // Each node's own id rides through the pruning as its origin: what survives, and where.
        let before = self.graph.len();
        let own_ids: Vec<Vec<NodeId>> = self.graph.ids().map(|id| vec![id]).collect();
        let (graph, kept) = crate::rewrite::prune("training", self.graph, own_ids)?;
        let mut moved_to = vec![None; before];
        for (new, old) in kept.iter().enumerate() {
            for o in old {
                moved_to[o.index()] = Some(NodeId::from_index(new));
            }
        }
        let forward_origin = kept.iter().map(|old| old.first().and_then(|o| self.origin[o.index()])).collect();
        let values = self.value.iter().map(|v| moved_to[v.index()]).collect();
        let value_grads = self.value_grad.iter().map(|g| g.and_then(|g| moved_to[g.index()])).collect();
        Ok(TrainingGraph { graph, outputs: roles, forward_origin, values, value_grads })
    }
}

/// The `[C, H, W]` of a map operand.
fn map3(shape: &Shape) -> Result<[usize; 3], PassError> {
    match shape.0[..] {
        [c, h, w] => Ok([c, h, w]),
        _ => Err(PassError::Training(format!("expected a [C, H, W] operand, found {shape}"))),
    }
}

/// A pooling op's kind and where its windows lie.
fn pooling(op: &Op) -> Option<(PoolKind, PoolGeometry)> {
    match op {
        Op::Pool { kind, window } => Some((*kind, PoolGeometry::Window(*window))),
        Op::GlobalPool(kind) => Some((*kind, PoolGeometry::Global)),
        Op::AdaptivePool { kind, output } => Some((*kind, PoolGeometry::Adaptive(*output))),
        Op::Spp { kind, levels } => Some((*kind, PoolGeometry::Pyramid(levels.clone()))),
        Op::Input
        | Op::Conv(_)
        | Op::Fc(_)
        | Op::Flatten
        | Op::Activation(_)
        | Op::Prelu
        | Op::Softmax
        | Op::BatchNorm(_)
        | Op::Lrn(_)
        | Op::Dropout { .. }
        | Op::Concat
        | Op::Add
        | Op::Gemm(_)
        | Op::Fused { .. }
        | Op::Reorder(_)
        | Op::ConcatInPlace
        | Op::Train(_) => None,
    }
}
