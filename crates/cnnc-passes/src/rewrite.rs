//! The pass context and the graph rebuilder every transforming pass uses.
//!
//! The IR is an append-only arena in topological order, so a pass does not edit nodes in place:
//! it walks the old graph in order and builds a new one with a `Rebuild`, deciding for each old
//! node whether to copy it, emit a changed node in its place, forward its uses to another node,
//! or drop it. `Rebuild::finish` remaps the outputs and removes whatever became dead, so no
//! pass leaves an orphan behind (the verifier rejects dead nodes).

use crate::error::PassError;
use crate::pipeline::Mode;
use cnnc_diag::Span;
use cnnc_ir::plan::WeightTransform;
use cnnc_ir::{Graph, NodeId, Op, Shape, TrainOp};
use cnnc_runtime::TensorMap;

/// What the pipeline threads through the passes.
pub struct Ctx<'w> {
    pub graph: Graph,
    /// The model's weights, rewritten alongside the graph (BN folding); `None` when only the
    /// graph is transformed (`cnnc ir`), in which case weight-rewriting passes still change the
    /// graph the same way.
    pub weights: Option<&'w mut TensorMap>,
    pub mode: Mode,
    /// For each node of `graph`, the nodes of the graph the pipeline started from that it
    /// stands for: itself first, then every layer it absorbed (BN folding, fusion), in order.
    /// A node made by a pass from nothing (a reorder) has an empty list.
    pub origins: Vec<Vec<NodeId>>,
    /// The weight transforms the passes relied on so far (BN folds), in order: the plan's.
    pub transforms: Vec<WeightTransform>,
}

impl<'w> Ctx<'w> {
    pub fn new(graph: Graph, weights: Option<&'w mut TensorMap>, mode: Mode) -> Ctx<'w> {
        let origins = graph.ids().map(|id| vec![id]).collect();
        Ctx { graph, weights, mode, origins, transforms: Vec::new() }
    }

    /// Installs the result of a rebuild.
    pub(crate) fn install(&mut self, (graph, origins): (Graph, Vec<Vec<NodeId>>)) {
        self.graph = graph;
        self.origins = origins;
    }
}

/// Builds a new graph from an old one, node by node, in the old graph's order.
pub(crate) struct Rebuild<'a> {
    pass: &'static str,
    old: &'a Graph,
    old_origins: &'a [Vec<NodeId>],
    new: Graph,
    origins: Vec<Vec<NodeId>>,
    map: Vec<Option<NodeId>>,
}

impl<'a> Rebuild<'a> {
    pub fn new(pass: &'static str, old: &'a Graph, old_origins: &'a [Vec<NodeId>]) -> Rebuild<'a> {
        Rebuild {
            pass,
            old,
            old_origins,
            new: Graph::new(old.name.clone()),
            origins: Vec::with_capacity(old.len()),
            map: vec![None; old.len()],
        }
    }

    /// The new node standing for old node `id`, which must have been copied, emitted or
    /// forwarded already (operands come first in topological order).
    pub fn mapped(&self, id: NodeId) -> NodeId {
        self.map[id.index()].unwrap_or_else(|| panic!("pass `{}` used {id} before mapping it", self.pass))
    }

    /// Copies old node `id` unchanged but for its remapped operands.
    pub fn copy(&mut self, id: NodeId) -> Result<NodeId, PassError> {
        let node = &self.old[id];
        self.emit(id, node.op.clone(), &node.inputs.clone(), &[])
    }

    /// Emits `op` applied to (the new versions of) the old nodes `inputs` in place of old node
    /// `id`, keeping its name and span; the nodes in `absorbed` are recorded as merged into it
    /// (their names and what they had absorbed join the new node's `absorbed` list).
    pub fn emit(&mut self, id: NodeId, op: Op, inputs: &[NodeId], absorbed: &[NodeId]) -> Result<NodeId, PassError> {
        let inputs: Vec<NodeId> = inputs.iter().map(|&i| self.mapped(i)).collect();
        self.emit_mapped(id, op, inputs, absorbed)
    }

    /// As [`Rebuild::emit`], with operands already in the new graph.
    pub fn emit_mapped(
        &mut self,
        id: NodeId,
        op: Op,
        inputs: Vec<NodeId>,
        absorbed: &[NodeId],
    ) -> Result<NodeId, PassError> {
        let old: &'a Graph = self.old;
        let mut origins = self.old_origins[id.index()].clone();
        let mut names = old[id].absorbed.clone();
        for &a in absorbed {
            origins.extend_from_slice(&self.old_origins[a.index()]);
            names.push(old[a].name.clone());
            names.extend(old[a].absorbed.iter().cloned());
        }
        let like = &old[id];
        let new = self.push(&like.name, &like.shape, like.span, op, inputs)?;
        self.new.node_mut(new).absorbed = names;
        self.origins.push(origins);
        self.map[id.index()] = Some(new);
        Ok(new)
    }

    /// A node that stands for no old node (a reorder), on operands in the new graph.
    pub fn fresh(&mut self, op: Op, inputs: Vec<NodeId>, name: String, span: Span) -> Result<NodeId, PassError> {
        let shape = Shape(Vec::new());
        let new = self.push(&name, &shape, span, op, inputs)?;
        self.origins.push(Vec::new());
        Ok(new)
    }

    /// The new graph so far (to read shapes of new nodes).
    pub fn new_graph(&self) -> &Graph {
        &self.new
    }

    /// Uses of old node `id` become uses of (the new version of) old node `to`.
    pub fn forward(&mut self, id: NodeId, to: NodeId) {
        self.map[id.index()] = Some(self.mapped(to));
    }

    /// Adds a node; `shape` is used for model inputs only (other shapes are inferred, labels
    /// have none).
    fn push(
        &mut self,
        name: &str,
        shape: &Shape,
        span: Span,
        op: Op,
        inputs: Vec<NodeId>,
    ) -> Result<NodeId, PassError> {
        let shape_error = |error| PassError::Shape { pass: self.pass, node: name.to_string(), error };
        if op == Op::Input {
            self.new.add_input(name, shape.clone(), span).map_err(shape_error)
        } else if let Op::Train(TrainOp::Labels { classes }) = op {
            self.new.add_labels(name, classes, span).map_err(shape_error)
        } else {
            self.new.add(op, inputs, name, span).map(|(id, _)| id).map_err(shape_error)
        }
    }

    /// The new graph with its outputs remapped and its dead nodes removed, and its origins.
    pub fn finish(self) -> Result<(Graph, Vec<Vec<NodeId>>), PassError> {
        let outputs = self.old.outputs.iter().map(|&o| self.mapped(o)).collect();
        self.finish_with_outputs(outputs)
    }

    /// As [`Rebuild::finish`], with the new graph's outputs given.
    pub fn finish_with_outputs(mut self, outputs: Vec<NodeId>) -> Result<(Graph, Vec<Vec<NodeId>>), PassError> {
        self.new.outputs = outputs;
        prune(self.pass, self.new, self.origins)
    }
}

/// Which nodes some output depends on; model inputs always count as live.
pub(crate) fn live(graph: &Graph) -> Vec<bool> {
    let mut live = graph.live();
    for &i in &graph.inputs {
        if let Some(slot) = live.get_mut(i.index()) {
            *slot = true;
        }
    }
    live
}

/// The graph without its dead nodes (and their origins); the graph itself when nothing is dead.
pub(crate) fn prune(
    pass: &'static str,
    graph: Graph,
    origins: Vec<Vec<NodeId>>,
) -> Result<(Graph, Vec<Vec<NodeId>>), PassError> {
    let live = live(&graph);
    if live.iter().all(|&l| l) {
        return Ok((graph, origins));
    }
    let mut b = Rebuild::new(pass, &graph, &origins);
    for id in graph.ids() {
        if live[id.index()] {
            b.copy(id)?;
        }
    }
    b.new.outputs = graph.outputs.iter().map(|&o| b.mapped(o)).collect();
    Ok((b.new, b.origins))
}
