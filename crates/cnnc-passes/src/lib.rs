//! Graph optimisation passes, the training transform, the memory planner and the execution
//! plan.
//!
//! # Entry points
//!
//! [`optimize`] runs the chosen passes ([`PassOptions`]) in pipeline order on a copy of a graph
//! and its weights and plans the result: an inference graph, or (in [`Mode::Training`]) the
//! forward pass of training. [`optimize_training`] makes a training step: the forward passes
//! that hold in training, the training transform ([`grad`]: loss, backward ops, optimiser
//! updates), then the passes for training graphs. Both return the execution plan
//! ([`cnnc_ir::plan::Plan`]) every back end runs:
//!
//! ```
//! # use cnnc_ir::{Graph, Op, Shape, Conv, Window, BatchNorm};
//! # let mut g = Graph::new("m");
//! # let x = g.add_input("x", Shape(vec![3, 8, 8]), Default::default()).unwrap();
//! # let w = Window { kernel: [3, 3], stride: [1, 1], pad: [1, 1], dilation: [1, 1], ceil_mode: false };
//! # let (c, _) = g.add(Op::Conv(Conv { out_channels: 4, window: w, groups: 1, bias: false }), vec![x], "conv", Default::default()).unwrap();
//! # let (b, _) = g.add(Op::BatchNorm(BatchNorm { eps: 1e-5, momentum: 0.1 }), vec![c], "bn", Default::default()).unwrap();
//! # g.outputs = vec![b];
//! use cnnc_passes::{Mode, PassOptions, optimize, parse_passes};
//! let options = PassOptions::all().with_passes(parse_passes("all")?).with_mode(Mode::Inference);
//! let weights = cnnc_runtime::init_params(&g, 1);
//! let opt = optimize(&g, Some(&weights), &options)?;
//! assert_eq!(opt.graph().len(), 2); // conv (now with a bias) absorbed the batch norm
//! assert_eq!(opt.fused, vec![vec!["conv".to_string(), "bn".to_string()]]);
//! assert!(opt.weights.unwrap().contains_key("conv.bias"));
//! // The plan says how to load a checkpoint: fold the batch norm into the conv.
//! assert!(matches!(&opt.plan.transforms[0], cnnc_ir::plan::WeightTransform::FoldBn { layer, .. } if layer == "conv"));
//! assert!(opt.plan.workspace_bytes(1) <= opt.plan.unplanned_bytes(1));
//! # Ok::<(), cnnc_passes::PassError>(())
//! ```
//!
//! # Structure
//!
//! Each pass is one module with one entry point, `run(&mut Ctx) -> Result<usize, PassError>`
//! (the count says how often its pattern fired). The order lives in [`pipeline`] only
//! ([`Pass::ALL`]). A pass never edits the arena in place: it rebuilds the graph in order
//! ([`rewrite`]), which re-runs every shape rule and removes whatever the pass orphaned. With
//! [`PassOptions::verify`] (the default in debug builds and tests) [`cnnc_ir::verify()`] checks
//! the input and the graph after every pass. Weights travel with the graph as an optional
//! `TensorMap`: passes that change parameters (BN folding) record a weight transform
//! ([`Ctx::transforms`], which the plan carries) and apply it to the weights when present.
//!
//! Modes: at [`Mode::Inference`] every pass applies; in [`Mode::Training`] the passes that
//! change semantics ([`Pass::inference_only`]: BN folding, dropout removal) are skipped and
//! reported in [`Optimized::skipped`]; in-place concatenation and layouts run after the
//! training transform ([`Pass::before_training_transform`]), since backward ops read forward
//! values too.
//!
//! # The passes, in pipeline order
//!
//! | name | module | what |
//! |---|---|---|
//! | `dce` | [`dce`] | remove nodes whose values reach no output |
//! | `remove-dropout` | [`dropout`] | dropout is the identity at inference (inference only) |
//! | `cse` | [`cse`] | merge equal ops on equal operands (never parameters, inputs or dropout) |
//! | `fold-bn` | [`fold_bn`] | batch norm into the preceding conv or fc (inference only) |
//! | `to-gemm` | [`gemm`] | 1x1 stride-1 unpadded convolutions and fc layers become `gemm` |
//! | `fuse-epilogue` | [`fuse`] | conv or gemm + residual add + activation become one node |
//! | (training transform) | [`grad`] | the loss, the backward ops and the updates (training only) |
//! | `fuse-backward` | [`fuse_backward`] | an activation's derivative into the conv backward-data before it |
//! | `concat-in-place` | [`concat`](mod@concat) | concat operands write their channel slices directly |
//! | `layout` | [`layout`] | `nChw16c` regions around the convolutions, reorders at the edges |
//!
//! # Representation
//!
//! **Provenance.** Every node lists the source layers it absorbed (`Node::absorbed`, printed
//! after its name: `// layer1.0.conv3 <- layer1.0.bn3, layer1.0.add1, layer1.0.relu3`), so
//! `cnnc ir` shows it after any pass, BN folding included. The pipeline also tracks, for each
//! node, the input graph's nodes it stands for ([`rewrite::Ctx::origins`]), which gives the
//! fused groups as clusters of the original graph for `cnnc dot` ([`Optimized::clusters`]).
//!
//! **Fusion.** A fused node is `Op::Fused { base, epilogue }`: base a convolution (any
//! window, groups, bias) or a matrix product; epilogue an optional residual operand (the
//! node's second input, of the output's shape, added to the accumulator) then an optional
//! activation. It keeps its producer's name, so its parameters keep their names and shapes.
//!
//! **GEMM.** `Op::Gemm { out, bias }`: `Y[o, p] = sum_c W[o, c] X[c, p] + b[o]` over the pixels
//! `p` of each image (a 1x1 convolution) or over a flat vector (an fc layer). The weight keeps
//! its source layer's shape and name (`[O, C, 1, 1]` or `[O, F]`), whose bytes are the
//! row-major `[O, C]` matrix, so checkpoints and gradients keep their shapes.
//!
//! **Layout.** Shapes in the IR stay logical. A node's physical layout is derived, not stored
//! (`cnnc_ir::layout`): inputs are plain, `Op::Reorder(layout)` converts, every other op
//! follows its operands' layout, needs plain operands, or reduces them to a whole-batch
//! value, and the verifier checks the rules. A blocked value whose channel count is not a
//! multiple of 16 is stored padded to a whole block, and the memory plan counts the padding.
//! Weights of products on blocked data are packed ([`plan`]: `WeightTransform::Pack`).
//!
//! **Concat in place.** A memory-plan decision made visible in the IR: `Op::ConcatInPlace`
//! is a concat whose operands are each read by it alone, once, and are neither model inputs
//! nor outputs (verifier-checked); the planner places every operand in its channel slice of
//! the concat's buffer, so the node moves no data.
//!
//! **Memory plan.** An analysis ([`memory`]), not a pass: liveness over the node order of any
//! graph (a training graph's backward ops are nodes like any other), in-place writes for
//! elementwise nodes, views for flatten, reshape and channel slices, slices for
//! `concat_in_place`, then offsets in one arena with a batched and a whole-batch region.

pub mod concat;
pub mod cse;
pub mod dce;
pub mod dropout;
mod error;
pub mod fold_bn;
pub mod fuse;
pub mod fuse_backward;
pub mod gemm;
pub mod grad;
pub mod layout;
pub mod memory;
pub mod pipeline;
pub mod plan;
pub mod rewrite;

pub use error::PassError;
pub use grad::{Objective, TrainingGraph, TrainingOptions, training_forward, training_graph};
pub use memory::PlanOptions;
pub use pipeline::{Mode, Pass, PassOptions, PassRun, parse_passes, valid_pass_names};
pub use rewrite::Ctx;

use cnnc_ir::plan::{OutputRole, Plan};
use cnnc_ir::{Graph, NodeId};
use cnnc_runtime::TensorMap;

/// The result of [`optimize`] and [`optimize_training`].
#[derive(Clone, Debug)]
pub struct Optimized {
    /// Inference, or training (a training graph, or the forward pass of training).
    pub mode: Mode,
    /// The optimised graph's execution plan (the graph itself is `plan.graph`).
    pub plan: Plan,
    /// The weights for the plan's graph (BN folded in, not yet packed), when weights were
    /// given.
    pub weights: Option<TensorMap>,
    /// Each fusion group of forward layers, as the source layer names it stands for: the
    /// surviving node's own name first, then the layers it absorbed, in order (`["conv1",
    /// "bn1"]`). Groups are in the optimised graph's node order.
    pub fused: Vec<Vec<String>>,
    /// For each node of the plan's graph, the nodes of the input graph it stands for (itself
    /// first); empty for nodes made by a pass (reorders) or the training transform (the loss,
    /// backward ops).
    pub origins: Vec<Vec<NodeId>>,
    /// What each pass did, in the order they ran.
    pub ran: Vec<PassRun>,
    /// Passes that were asked for but skipped (inference-only passes in training mode).
    pub skipped: Vec<Pass>,
    /// Node count of the input graph.
    pub nodes_before: usize,
}

impl Optimized {
    pub fn graph(&self) -> &Graph {
        &self.plan.graph
    }

    /// The optimised graph's text form (`cnnc ir`): each node that absorbed layers lists them
    /// after its name (`  %5 = fused_conv(%4) {...} -> [64, 56, 56]  // conv1 <- bn1, relu1`).
    pub fn print(&self) -> String {
        cnnc_ir::print(self.graph())
    }

    /// Every convolution's and matrix product's weight layout, by layer name.
    pub fn weight_layouts(&self) -> Vec<(String, cnnc_ir::WeightLayout)> {
        layout::weight_layouts(self.graph())
    }

    /// What the plan's memory holds, by kind, at batch `batch` (see [`MemoryBreakdown`]).
    pub fn memory_breakdown(&self, batch: usize) -> MemoryBreakdown {
        let graph = self.graph();
        let memory = &self.plan.memory;
        // Forward nodes stand for nodes of the input graph; a reorder belongs with its operand.
        let mut forward = vec![false; graph.len()];
        for (id, node) in graph.iter() {
            forward[id.index()] = !self.origins[id.index()].is_empty()
                || (matches!(node.op, cnnc_ir::Op::Reorder(_)) && node.inputs.iter().all(|i| forward[i.index()]));
        }
        let mut b = MemoryBreakdown { workspace: self.plan.workspace_bytes(batch), ..MemoryBreakdown::default() };
        for (id, _) in graph.iter() {
            let Some(place) = memory.place(id) else { continue };
            let whole = memory.buffers[place.buffer].region == cnnc_ir::plan::Region::WholeBatch;
            let bytes = if whole { place.bytes } else { place.bytes * batch as u64 };
            if whole && plan::grad_param(graph, id).is_some() {
                b.gradients += bytes;
            } else if forward[id.index()] {
                b.forward += bytes;
            } else {
                b.backward += bytes;
            }
        }
        for p in &self.plan.params {
            let bytes = p.stored_len() as u64 * cnnc_ir::plan::ELEMENT_BYTES;
            match p.role {
                cnnc_ir::ParamRole::OptimizerState => b.optimizer_state += bytes,
                cnnc_ir::ParamRole::Weight
                | cnnc_ir::ParamRole::Bias
                | cnnc_ir::ParamRole::RunningMean
                | cnnc_ir::ParamRole::RunningVar => b.parameters += bytes,
            }
        }
        b
    }

    /// The fusion groups as clusters of the *input* graph, for
    /// `cnnc_ir::dot_with_clusters(original, &opt.clusters())`: each labelled with the name of
    /// the node that survives, holding the original nodes it absorbed.
    pub fn clusters(&self) -> Vec<(String, Vec<NodeId>)> {
        self.graph()
            .iter()
            .zip(&self.origins)
            .filter(|(_, origins)| origins.len() > 1)
            .map(|((_, node), origins)| (format!("fused: {}", node.name), origins.clone()))
            .collect()
    }
}

/// What a plan's memory holds at one batch size, in bytes: the arena, and the values it
/// places by kind (each value counted once, at its own size, as if it had its own buffer),
/// then the tensors that live outside it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MemoryBreakdown {
    /// The planned arena.
    pub workspace: u64,
    /// Values of the forward pass (the model's layers, batch statistics, dropout masks,
    /// argmaxes, the loss).
    pub forward: u64,
    /// Values of the backward pass (gradients of activations).
    pub backward: u64,
    /// Parameter gradients (whole-batch values in the arena).
    pub gradients: u64,
    /// Parameters and buffers, as stored (packed weights include their padding).
    pub parameters: u64,
    /// The optimiser's state (momentum, Adam's moments), as stored.
    pub optimizer_state: u64,
}

/// Runs the chosen passes on a copy of `graph` (and of `weights`), then plans it. In
/// [`Mode::Training`] the planned graph is the forward pass of training
/// ([`training_forward`]: batch statistics, dropout masks, running-statistics updates).
pub fn optimize(graph: &Graph, weights: Option<&TensorMap>, options: &PassOptions) -> Result<Optimized, PassError> {
    let mut weights = weights.cloned();
    let mut cx = Ctx::new(graph.clone(), weights.as_mut(), options.mode);
    let (mut ran, mut skipped) = match options.mode {
        Mode::Inference => pipeline::run_passes(&mut cx, options)?,
        Mode::Training => pipeline::run_some(&mut cx, options, Pass::before_training_transform)?,
    };
    let outputs = match options.mode {
        Mode::Inference => (0..cx.graph.outputs.len()).map(OutputRole::Model).collect(),
        Mode::Training => {
            let t = training_forward(&cx.graph)?;
            let outputs = install_training(&mut cx, t);
            let (r, s) = pipeline::run_some(&mut cx, options, |p| !p.before_training_transform())?;
            ran.extend(r);
            skipped.extend(s);
            outputs
        }
    };
    let Ctx { graph: optimized, origins, transforms, .. } = cx;
    let mut opt = finish(optimized, origins, transforms, outputs, weights, (ran, skipped), graph.len());
    opt.mode = options.mode;
    Ok(opt)
}

/// Runs the forward passes chosen in `options` (those that hold in training), the training
/// transform ([`training_graph`]), then the passes for training graphs, and plans the result.
pub fn optimize_training(
    graph: &Graph,
    weights: Option<&TensorMap>,
    options: &PassOptions,
    training: &TrainingOptions,
) -> Result<Optimized, PassError> {
    let options = &PassOptions { mode: Mode::Training, ..options.clone() };
    let mut weights = weights.cloned();
    let mut cx = Ctx::new(graph.clone(), weights.as_mut(), Mode::Training);
    let (mut ran, mut skipped) = pipeline::run_some(&mut cx, options, Pass::before_training_transform)?;
    let t = training_graph(&cx.graph, training)?;
    let outputs = install_training(&mut cx, t);
    let (r, s) = pipeline::run_some(&mut cx, options, |p| !p.before_training_transform())?;
    ran.extend(r);
    skipped.extend(s);
    let Ctx { graph: optimized, origins, transforms, .. } = cx;
    Ok(finish(optimized, origins, transforms, outputs, weights, (ran, skipped), graph.len()))
}

/// Puts a training graph in the context, its origins mapped through the forward graph's.
fn install_training(cx: &mut Ctx, t: TrainingGraph) -> Vec<OutputRole> {
    let origins = t.forward_origin.iter().map(|o| o.map_or_else(Vec::new, |f| cx.origins[f.index()].clone())).collect();
    cx.install((t.graph, origins));
    t.outputs
}

fn finish(
    optimized: Graph,
    origins: Vec<Vec<NodeId>>,
    transforms: Vec<cnnc_ir::plan::WeightTransform>,
    outputs: Vec<OutputRole>,
    weights: Option<TensorMap>,
    (ran, skipped): (Vec<PassRun>, Vec<Pass>),
    nodes_before: usize,
) -> Optimized {
    let fused = optimized
        .iter()
        .filter(|(_, n)| !n.absorbed.is_empty() && !matches!(n.op, cnnc_ir::Op::Train(_)))
        .map(|(_, n)| std::iter::once(n.name.clone()).chain(n.absorbed.iter().cloned()).collect())
        .collect();
    let plan = plan::build(optimized, outputs, transforms, &PlanOptions::default());
    Optimized { mode: Mode::Training, plan, weights, fused, origins, ran, skipped, nodes_before }
}
