//! The IR verifier: re-checks every graph invariant, run after each pass.
//!
//! [`Graph::add`] establishes the invariants when a graph is built, but passes edit nodes in
//! place ([`Graph::node_mut`]) or rebuild the list ([`Graph::replace_nodes`]); the verifier
//! catches what they break. It never panics, whatever the graph holds.
//!
//! Once everything else holds, it also checks what the optimiser's ops need: every operand of
//! a `concat_in_place` is read by it alone, once, and is no model input or output; and every
//! node follows its layout rule (see [`crate::layout`]).
//!
//! A node whose operands are broken (out of range, later in the list, or themselves failing a
//! check) is not shape-checked: its errors would only echo the first one.

use crate::facts::{ValueKind, is_source, param_name, param_reads, value_kind, whole_batch_operands};
use crate::graph::{Graph, Node, NodeId};
use crate::op::{Op, TrainOp};
use crate::param::ParamSpec;
use crate::shape::{Shape, ShapeError, check_valid, infer};
use std::collections::HashMap;
use std::fmt;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum VerifyError {
    /// The node reads a handle past the end of the node list.
    InputOutOfRange {
        node: NodeId,
        name: String,
        input: NodeId,
    },
    /// The node reads itself or a later node: the list is not in topological order.
    NotTopological {
        node: NodeId,
        name: String,
        input: NodeId,
    },
    /// `graph.inputs` is not the list of `Input` nodes in node order.
    InputList {
        declared: Vec<NodeId>,
        actual: Vec<NodeId>,
    },
    /// An `Input` node with operands.
    InputWithOperands {
        node: NodeId,
        name: String,
    },
    /// An `Input` node whose shape is neither `[C, H, W]` nor `[F]`.
    InputRank {
        node: NodeId,
        name: String,
        shape: Shape,
    },
    /// A shape with a zero dimension or too many elements.
    InvalidShape {
        node: NodeId,
        name: String,
        error: ShapeError,
    },
    /// The op's shape rule rejects the node's operands.
    ShapeRule {
        node: NodeId,
        name: String,
        error: ShapeError,
    },
    /// The stored shape is not what the op's shape rule gives.
    ShapeMismatch {
        node: NodeId,
        name: String,
        stored: Shape,
        inferred: Shape,
    },
    EmptyName {
        node: NodeId,
    },
    /// Two nodes own a parameter of the same full name (`layer.weight`).
    DuplicateParam {
        node: NodeId,
        name: String,
        param: String,
        first: NodeId,
    },
    NoOutputs,
    OutputOutOfRange {
        output: NodeId,
    },
    /// A node whose value reaches no output: passes must remove what they orphan.
    DeadNode {
        node: NodeId,
        name: String,
    },
    /// An operand of `concat_in_place` that cannot be written into its slice: read by another
    /// node or twice, or a model input or output.
    ConcatInPlaceOperand {
        node: NodeId,
        name: String,
        operand: NodeId,
        reason: &'static str,
    },
    /// The node reads a parameter no node owns, or an update's gradient does not fit its
    /// parameter.
    ParamRead {
        node: NodeId,
        name: String,
        param: String,
        problem: String,
    },
    /// A parameter written by an effect before another node reads it, or written twice: the
    /// value a reader sees would depend on where a back end schedules it.
    ParamWrite {
        node: NodeId,
        name: String,
        param: String,
        problem: String,
    },
    /// An operand of the wrong kind: an effect (which has no value), or a whole-batch value
    /// where a batched one is expected, or the reverse.
    OperandKind {
        node: NodeId,
        name: String,
        operand: NodeId,
        problem: &'static str,
    },
    /// The node's operands break its layout rule (see [`crate::layout`]).
    Layout {
        node: NodeId,
        name: String,
        message: String,
    },
}

impl VerifyError {
    /// The node the error is about, to point a diagnostic at its span.
    pub fn node(&self) -> Option<NodeId> {
        match self {
            VerifyError::InputOutOfRange { node, .. }
            | VerifyError::NotTopological { node, .. }
            | VerifyError::InputWithOperands { node, .. }
            | VerifyError::InputRank { node, .. }
            | VerifyError::InvalidShape { node, .. }
            | VerifyError::ShapeRule { node, .. }
            | VerifyError::ShapeMismatch { node, .. }
            | VerifyError::EmptyName { node }
            | VerifyError::DuplicateParam { node, .. }
            | VerifyError::DeadNode { node, .. }
            | VerifyError::ConcatInPlaceOperand { node, .. }
            | VerifyError::ParamRead { node, .. }
            | VerifyError::ParamWrite { node, .. }
            | VerifyError::OperandKind { node, .. }
            | VerifyError::Layout { node, .. } => Some(*node),
            VerifyError::InputList { .. } | VerifyError::NoOutputs | VerifyError::OutputOutOfRange { .. } => None,
        }
    }
}

/// `%3 (layer1.0.conv1)`, or `%3` for an unnamed node.
struct Who<'a>(NodeId, &'a str);

impl fmt::Display for Who<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.1 {
            "" => write!(f, "{}", self.0),
            name => write!(f, "{} ({})", self.0, name.escape_debug()),
        }
    }
}

/// `[%0, %2]`.
struct Ids<'a>(&'a [NodeId]);

impl fmt::Display for Ids<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ids: Vec<String> = self.0.iter().map(NodeId::to_string).collect();
        write!(f, "[{}]", ids.join(", "))
    }
}

impl fmt::Display for VerifyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            VerifyError::InputOutOfRange { node, name, input } => {
                write!(f, "{} reads {input}, which does not exist", Who(*node, name))
            }
            VerifyError::NotTopological { node, name, input } => write!(
                f,
                "{} reads {input}, which does not come before it (nodes must be in topological order)",
                Who(*node, name)
            ),
            VerifyError::InputList { declared, actual } => {
                write!(f, "the graph's input list {} is not its input nodes in order {}", Ids(declared), Ids(actual))
            }
            VerifyError::InputWithOperands { node, name } => write!(f, "input {} has operands", Who(*node, name)),
            VerifyError::InputRank { node, name, shape } => write!(
                f,
                "input {} has shape {shape}; inputs are [channels, height, width] or [features]",
                Who(*node, name)
            ),
            VerifyError::InvalidShape { node, name, error } => {
                write!(f, "{} has an invalid shape: {error}", Who(*node, name))
            }
            VerifyError::ShapeRule { node, name, error } => {
                write!(f, "{} does not fit its operands: it {error}", Who(*node, name))
            }
            VerifyError::ShapeMismatch { node, name, stored, inferred } => {
                write!(f, "{} stores shape {stored}, but its op gives {inferred}", Who(*node, name))
            }
            VerifyError::EmptyName { node } => write!(f, "{node} has an empty layer name"),
            VerifyError::DuplicateParam { node, name, param, first } => {
                write!(f, "{} owns parameter `{}`, which {first} already owns", Who(*node, name), param.escape_debug())
            }
            VerifyError::NoOutputs => write!(f, "the graph has no outputs"),
            VerifyError::OutputOutOfRange { output } => write!(f, "output {output} does not exist"),
            VerifyError::DeadNode { node, name } => {
                write!(f, "{} is dead: its value reaches no output", Who(*node, name))
            }
            VerifyError::ConcatInPlaceOperand { node, name, operand, reason } => {
                write!(f, "{} cannot be written in place by its operand {operand}: {reason}", Who(*node, name))
            }
            VerifyError::ParamRead { node, name, param, problem } => {
                write!(f, "{} reads parameter `{}`, which {problem}", Who(*node, name), param.escape_debug())
            }
            VerifyError::ParamWrite { node, name, param, problem } => {
                write!(f, "{} writes parameter `{}` {problem}", Who(*node, name), param.escape_debug())
            }
            VerifyError::OperandKind { node, name, operand, problem } => {
                write!(f, "{} reads {operand}, {problem}", Who(*node, name))
            }
            VerifyError::Layout { node, name, message } => {
                write!(f, "{} breaks its layout rule: {message}", Who(*node, name))
            }
        }
    }
}

impl std::error::Error for VerifyError {}

/// Every invariant violation in the graph, in a deterministic order (graph-level checks, then
/// nodes in order, then parameter names, then dead nodes, then what the optimiser's ops need:
/// in-place concatenation and layouts, checked only when everything else holds).
pub fn verify(graph: &Graph) -> Result<(), Vec<VerifyError>> {
    let mut errors = Vec::new();
    check_input_list(graph, &mut errors);
    check_outputs(graph, &mut errors);
    let mut sound = Vec::with_capacity(graph.len());
    for (id, node) in graph.iter() {
        let ok = check_node(graph, id, node, &sound, &mut errors);
        sound.push(ok);
    }
    check_param_names(graph, &sound, &mut errors);
    check_param_reads(graph, &sound, &mut errors);
    check_param_writes(graph, &sound, &mut errors);
    check_dead(graph, &mut errors);
    if errors.is_empty() {
        check_concat_in_place(graph, &mut errors);
        for (node, message) in crate::layout::layouts(graph).1 {
            errors.push(VerifyError::Layout { node, name: graph[node].name.clone(), message });
        }
    }
    if errors.is_empty() { Ok(()) } else { Err(errors) }
}

fn check_input_list(graph: &Graph, errors: &mut Vec<VerifyError>) {
    let actual: Vec<NodeId> = graph.iter().filter(|(_, n)| is_source(&n.op)).map(|(id, _)| id).collect();
    if graph.inputs != actual {
        errors.push(VerifyError::InputList { declared: graph.inputs.clone(), actual });
    }
}

fn check_outputs(graph: &Graph, errors: &mut Vec<VerifyError>) {
    if graph.outputs.is_empty() {
        errors.push(VerifyError::NoOutputs);
    }
    for &output in &graph.outputs {
        if output.index() >= graph.len() {
            errors.push(VerifyError::OutputOutOfRange { output });
        }
    }
}

/// Checks one node; `sound[i]` says whether node `i` passed. Returns whether this one passes,
/// so that its users may be shape-checked against its stored shape.
fn check_node(graph: &Graph, id: NodeId, node: &Node, sound: &[bool], errors: &mut Vec<VerifyError>) -> bool {
    if node.name.is_empty() {
        errors.push(VerifyError::EmptyName { node: id });
    }
    if !check_operands(graph, id, node, errors) {
        return false;
    }
    if node.op == Op::Input {
        return check_input_node(id, node, errors);
    }
    if let Op::Train(TrainOp::Labels { .. }) = node.op {
        return check_labels_node(id, node, errors);
    }
    if !check_operand_kinds(graph, id, node, errors) {
        return false;
    }
    // An operand that failed its own check has an untrustworthy shape (possibly of a rank the
    // shape rules would index out of bounds), so the node is skipped rather than blamed.
    if !node.inputs.iter().all(|i| sound[i.index()]) {
        return false;
    }
    let shapes: Vec<&Shape> = node.inputs.iter().map(|&i| &graph[i].shape).collect();
    let name = || node.name.clone();
    match infer(&node.op, &shapes) {
        Err(error) => errors.push(VerifyError::ShapeRule { node: id, name: name(), error }),
        // A shape equal to the inferred one is valid: `infer` checks its result.
        Ok((inferred, _)) if inferred != node.shape => {
            errors.push(VerifyError::ShapeMismatch { node: id, name: name(), stored: node.shape.clone(), inferred })
        }
        Ok(_) => return true,
    }
    false
}

/// Every operand handle exists and comes before the node.
fn check_operands(graph: &Graph, id: NodeId, node: &Node, errors: &mut Vec<VerifyError>) -> bool {
    let mut ok = true;
    for &input in &node.inputs {
        let name = || node.name.clone();
        if input.index() >= graph.len() {
            errors.push(VerifyError::InputOutOfRange { node: id, name: name(), input });
            ok = false;
        } else if input >= id {
            errors.push(VerifyError::NotTopological { node: id, name: name(), input });
            ok = false;
        }
    }
    ok
}

fn check_input_node(id: NodeId, node: &Node, errors: &mut Vec<VerifyError>) -> bool {
    let name = || node.name.clone();
    let before = errors.len();
    if !node.inputs.is_empty() {
        errors.push(VerifyError::InputWithOperands { node: id, name: name() });
    }
    if node.shape.rank() != 1 && node.shape.rank() != 3 {
        errors.push(VerifyError::InputRank { node: id, name: name(), shape: node.shape.clone() });
    } else if let Err(error) = check_valid(&node.shape) {
        errors.push(VerifyError::InvalidShape { node: id, name: name(), error });
    }
    errors.len() == before
}

fn check_labels_node(id: NodeId, node: &Node, errors: &mut Vec<VerifyError>) -> bool {
    let before = errors.len();
    if !node.inputs.is_empty() {
        errors.push(VerifyError::InputWithOperands { node: id, name: node.name.clone() });
    }
    if node.shape.rank() != 0 {
        errors.push(VerifyError::InputRank { node: id, name: node.name.clone(), shape: node.shape.clone() });
    }
    errors.len() == before
}

/// Effects are never read; whole-batch values are read exactly where the op expects them.
fn check_operand_kinds(graph: &Graph, id: NodeId, node: &Node, errors: &mut Vec<VerifyError>) -> bool {
    let whole = whole_batch_operands(&node.op);
    let mut ok = true;
    for (k, &operand) in node.inputs.iter().enumerate() {
        let problem = match (value_kind(&graph[operand].op), whole.contains(&k)) {
            (ValueKind::Effect, _) => Some("an effect, which has no value"),
            (ValueKind::Batched, true) => Some("a batched value where the op takes a whole-batch one"),
            (ValueKind::WholeBatch, false) => Some("a whole-batch value where the op takes a batched one"),
            (ValueKind::Batched, false) | (ValueKind::WholeBatch, true) => None,
        };
        if let Some(problem) = problem {
            errors.push(VerifyError::OperandKind { node: id, name: node.name.clone(), operand, problem });
            ok = false;
        }
    }
    ok
}

/// Every parameter a node reads without owning it is owned by some node; an update's
/// gradient has its parameter's shape, and the parameter is trainable.
fn check_param_reads(graph: &Graph, sound: &[bool], errors: &mut Vec<VerifyError>) {
    let mut owned: HashMap<String, ParamSpec> = HashMap::new();
    for (id, node) in graph.iter().filter(|(id, _)| sound[id.index()]) {
        for spec in graph.params(id) {
            owned.insert(format!("{}.{}", node.name, spec.suffix), spec);
        }
    }
    for (id, node) in graph.iter().filter(|(id, _)| sound[id.index()]) {
        for suffix in param_reads(&node.op) {
            let param = param_name(&node.name, suffix);
            let problem = match (owned.get(&param), &node.op) {
                (None, _) => Some("no node owns".to_string()),
                (Some(spec), Op::Train(TrainOp::Update(_))) if !spec.trainable() => {
                    Some("is not trainable".to_string())
                }
                (Some(spec), Op::Train(TrainOp::Update(_))) if graph[node.inputs[0]].shape.0 != spec.dims => {
                    Some(format!("has shape {:?}, but the gradient is {}", spec.dims, graph[node.inputs[0]].shape))
                }
                (Some(_), _) => None,
            };
            if let Some(problem) = problem {
                errors.push(VerifyError::ParamRead { node: id, name: node.name.clone(), param, problem });
            }
        }
    }
}

/// The parameters an effect writes: an update its parameter and state, a running-statistics
/// update the running mean and variance.
fn param_writes(graph: &Graph, id: NodeId) -> Vec<String> {
    let node = &graph[id];
    if let Op::Train(TrainOp::Update(optimizer)) = &node.op {
        return std::iter::once(node.name.clone())
            .chain(optimizer.state().iter().map(|s| param_name(&node.name, s)))
            .collect();
    }
    if let Op::Train(TrainOp::BnRunningUpdate { .. }) = node.op {
        return ["running_mean", "running_var"].iter().map(|s| param_name(&node.name, s)).collect();
    }
    Vec::new()
}

/// Each parameter is written at most once, after every other node that reads it.
fn check_param_writes(graph: &Graph, sound: &[bool], errors: &mut Vec<VerifyError>) {
    let mut written: HashMap<String, NodeId> = HashMap::new();
    for (id, node) in graph.iter().filter(|(id, _)| sound[id.index()]) {
        let writes = param_writes(graph, id);
        for param in &writes {
            if let Some(problem) = written.get(param).map(|first| format!("again ({first} wrote it before)")) {
                errors.push(VerifyError::ParamWrite {
                    node: id,
                    name: node.name.clone(),
                    param: param.clone(),
                    problem,
                });
            }
            written.insert(param.clone(), id);
        }
        let owned = graph.params(id).into_iter().map(|spec| format!("{}.{}", node.name, spec.suffix));
        let read = param_reads(&node.op).iter().map(|s| param_name(&node.name, s));
        for param in owned.chain(read).filter(|p| !writes.contains(p)) {
            if let Some(&writer) = written.get(&param) {
                errors.push(VerifyError::ParamWrite {
                    node: writer,
                    name: graph[writer].name.clone(),
                    param: param.clone(),
                    problem: format!("before {id} reads it"),
                });
            }
        }
    }
}

/// Full parameter names (`layer.suffix`) are unique. Only sound nodes are asked for their
/// parameters: the parameter rules index their operands' shapes.
fn check_param_names(graph: &Graph, sound: &[bool], errors: &mut Vec<VerifyError>) {
    let mut owners: HashMap<String, NodeId> = HashMap::new();
    for (id, node) in graph.iter().filter(|(id, _)| sound[id.index()]) {
        // One error per node: its other parameters collide for the same reason.
        let mut reported = false;
        for spec in graph.params(id) {
            let param = format!("{}.{}", node.name, spec.suffix);
            match owners.get(&param) {
                Some(&first) if !reported => {
                    errors.push(VerifyError::DuplicateParam { node: id, name: node.name.clone(), param, first });
                    reported = true;
                }
                Some(_) => {}
                None => {
                    owners.insert(param, id);
                }
            }
        }
    }
}

/// Every operand of an in-place concatenation is read by it alone, once, and is neither a
/// model input nor a model output. Linear in the number of edges: the side tables are built
/// only when the graph has such a concatenation, and repeats are counted in one scratch table.
fn check_concat_in_place(graph: &Graph, errors: &mut Vec<VerifyError>) {
    if !graph.iter().any(|(_, n)| n.op == Op::ConcatInPlace) {
        return;
    }
    let users = graph.users();
    let is_output = graph.output_flags();
    let mut count = vec![0u32; graph.len()];
    for (id, node) in graph.iter().filter(|(_, n)| n.op == Op::ConcatInPlace) {
        for &operand in &node.inputs {
            count[operand.index()] += 1;
        }
        for &operand in &node.inputs {
            let reason = if graph[operand].op == Op::Input {
                Some("it is a model input")
            } else if is_output[operand.index()] {
                Some("it is a model output")
            } else if count[operand.index()] > 1 {
                Some("it appears twice")
            } else if users[operand.index()] != [id] {
                Some("another node reads it")
            } else {
                None
            };
            if let Some(reason) = reason {
                errors.push(VerifyError::ConcatInPlaceOperand { node: id, name: node.name.clone(), operand, reason });
            }
        }
        for &operand in &node.inputs {
            count[operand.index()] = 0;
        }
    }
}

/// Nodes other than model inputs whose value reaches no output. Skipped when there is no
/// valid output at all, where every node would be reported.
fn check_dead(graph: &Graph, errors: &mut Vec<VerifyError>) {
    let live = graph.live();
    if !live.contains(&true) {
        return;
    }
    for (id, node) in graph.iter() {
        if !live[id.index()] && !is_source(&node.op) {
            errors.push(VerifyError::DeadNode { node: id, name: node.name.clone() });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Activation;
    use crate::testutil::{add, conv, fc, input, small_cnn};

    fn id(i: usize) -> NodeId {
        NodeId::from_index(i)
    }

    fn errors(graph: &Graph) -> Vec<VerifyError> {
        verify(graph).expect_err("the graph is corrupt")
    }

    /// A residual block: `x -> conv -> relu -> add(x, relu) -> flatten -> fc`.
    fn residual() -> Graph {
        let mut g = Graph::new("res");
        let x = input(&mut g, "x", &[4, 6, 6]);
        let c = add(&mut g, conv(4, 3, 1, 1, true), &[x], "conv");
        let r = add(&mut g, Op::Activation(Activation::Relu), &[c], "relu");
        let s = add(&mut g, Op::Add, &[x, r], "sum");
        let f = add(&mut g, Op::Flatten, &[s], "flat");
        let y = add(&mut g, fc(3), &[f], "fc");
        g.outputs.push(y);
        g
    }

    #[test]
    fn well_formed_graphs_verify() {
        assert_eq!(verify(&residual()), Ok(()));
        assert_eq!(verify(&small_cnn()), Ok(()));
    }

    #[test]
    fn operands_must_exist_and_come_first() {
        let mut g = residual();
        g.node_mut(id(3)).inputs = vec![id(0), id(9)];
        let e = errors(&g);
        // Cutting the edge from relu orphans it and the conv feeding it.
        let want = vec![
            VerifyError::InputOutOfRange { node: id(3), name: "sum".into(), input: id(9) },
            VerifyError::DeadNode { node: id(1), name: "conv".into() },
            VerifyError::DeadNode { node: id(2), name: "relu".into() },
        ];
        assert_eq!(e, want);
        assert_eq!(e[0].to_string(), "%3 (sum) reads %9, which does not exist");

        let mut g = residual();
        g.node_mut(id(1)).inputs = vec![id(2)];
        assert_eq!(errors(&g), vec![VerifyError::NotTopological { node: id(1), name: "conv".into(), input: id(2) }]);
    }

    #[test]
    fn input_list_must_match_input_nodes() {
        let mut g = residual();
        g.inputs.clear();
        assert_eq!(errors(&g), vec![VerifyError::InputList { declared: vec![], actual: vec![id(0)] }]);
        let mut g = residual();
        g.node_mut(id(0)).inputs = vec![id(0)];
        let e = errors(&g);
        assert!(matches!(e[..], [VerifyError::NotTopological { .. }]), "{e:?}");
    }

    #[test]
    fn input_nodes_have_no_operands_and_valid_shapes() {
        let mut g = Graph::new("t");
        let x = input(&mut g, "x", &[3]);
        let y = input(&mut g, "y", &[3]);
        g.outputs = vec![x, y];
        g.node_mut(y).inputs = vec![x];
        g.node_mut(x).shape = Shape(vec![0, 2, 2]);
        let e = errors(&g);
        assert!(matches!(&e[0], VerifyError::InvalidShape { error: ShapeError::Zero { .. }, .. }), "{e:?}");
        assert_eq!(e[1], VerifyError::InputWithOperands { node: y, name: "y".into() });
        g.node_mut(x).shape = Shape(vec![3, 2]);
        assert!(matches!(errors(&g)[0], VerifyError::InputRank { node, .. } if node == x));
    }

    #[test]
    fn outputs_must_exist() {
        let mut g = residual();
        g.outputs.clear();
        assert_eq!(errors(&g), vec![VerifyError::NoOutputs]);
        g.outputs.push(id(40));
        assert_eq!(errors(&g), vec![VerifyError::OutputOutOfRange { output: id(40) }]);
        // A rebuilt node list that drops everything leaves dangling handles, not panics.
        let mut g = residual();
        g.replace_nodes(Vec::new());
        let e = errors(&g);
        assert!(e.contains(&VerifyError::OutputOutOfRange { output: id(5) }), "{e:?}");
        assert!(matches!(e[0], VerifyError::InputList { .. }), "{e:?}");
    }

    #[test]
    fn stored_shapes_must_follow_the_shape_rule() {
        let mut g = residual();
        g.node_mut(id(1)).shape = Shape(vec![5, 6, 6]);
        let e = errors(&g);
        let inferred = Shape(vec![4, 6, 6]);
        assert_eq!(
            e,
            vec![VerifyError::ShapeMismatch {
                node: id(1),
                name: "conv".into(),
                stored: Shape(vec![5, 6, 6]),
                inferred
            }]
        );
        assert_eq!(e[0].to_string(), "%1 (conv) stores shape [5, 6, 6], but its op gives [4, 6, 6]");

        let mut g = residual();
        g.node_mut(id(5)).op = conv(4, 3, 1, 1, true);
        let e = errors(&g);
        assert!(
            matches!(&e[..], [VerifyError::ShapeRule { error: ShapeError::Rank { .. }, node, .. }] if *node == id(5))
        );
    }

    #[test]
    fn corrupt_operand_shapes_do_not_panic() {
        // Concat and fc index their operands' dimensions; a rank-0 operand must not reach them.
        let mut g = Graph::new("t");
        let x = input(&mut g, "x", &[2, 3, 3]);
        let cat = add(&mut g, Op::Concat, &[x, x], "cat");
        let f = add(&mut g, Op::Flatten, &[cat], "flat");
        let y = add(&mut g, fc(2), &[f], "fc");
        g.outputs.push(y);
        g.node_mut(x).shape = Shape(vec![]);
        assert!(matches!(errors(&g)[..], [VerifyError::InputRank { node, .. }] if node == x));
        g.node_mut(x).shape = Shape(vec![2, 3, 3]);
        g.node_mut(f).shape = Shape(vec![]);
        assert!(matches!(errors(&g)[..], [VerifyError::ShapeMismatch { node, .. }] if node == f));
    }

    #[test]
    fn names_are_non_empty_and_parameter_names_unique() {
        let mut g = residual();
        g.node_mut(id(2)).name.clear();
        assert_eq!(errors(&g), vec![VerifyError::EmptyName { node: id(2) }]);

        let mut g = residual();
        g.node_mut(id(5)).name = "conv".into();
        let e = errors(&g);
        let want =
            VerifyError::DuplicateParam { node: id(5), name: "conv".into(), param: "conv.weight".into(), first: id(1) };
        assert_eq!(e, vec![want]);
        assert_eq!(e[0].to_string(), "%5 (conv) owns parameter `conv.weight`, which %1 already owns");

        // Parameterless layers may share a name (a block's `relu` used twice, say).
        let mut g = residual();
        g.node_mut(id(4)).name = "relu".into();
        assert_eq!(verify(&g), Ok(()));
    }

    #[test]
    fn dead_nodes_are_errors_but_unused_inputs_are_not() {
        let mut g = residual();
        add(&mut g, Op::Activation(Activation::Relu), &[id(5)], "orphan");
        input(&mut g, "unused", &[7]);
        let e = errors(&g);
        assert_eq!(e, vec![VerifyError::DeadNode { node: id(6), name: "orphan".into() }]);
        assert_eq!(e[0].node(), Some(id(6)));
    }

    #[test]
    fn training_ops_read_owned_parameters_and_effects_write_them_last() {
        use crate::train::{Optimizer, Sgd, TrainOp};
        let mut g = Graph::new("t");
        let x = input(&mut g, "x", &[2, 4, 4]);
        let c = add(&mut g, conv(3, 3, 1, 1, false), &[x], "c");
        let Op::Conv(cv) = g[c].op else { unreachable!() };
        let dw = add(&mut g, Op::Train(TrainOp::ConvBackwardWeight(cv)), &[x, c], "c");
        let sgd = Optimizer::Sgd(Sgd { momentum: 0.9, weight_decay: 0.0, nesterov: false });
        let up = add(&mut g, Op::Train(TrainOp::Update(sgd)), &[dw], "c.weight");
        let data = Op::Train(TrainOp::ConvBackwardData { conv: cv, input: [2, 4, 4], mask: None });
        let dx = add(&mut g, data.clone(), &[c], "c");
        g.outputs = vec![up, dx];
        let e = errors(&g);
        assert_eq!(
            e.iter().map(ToString::to_string).collect::<Vec<_>>(),
            ["%3 (c.weight) writes parameter `c.weight` before %4 reads it"]
        );
        // A backward op named after a layer that owns no weight; an update of a gradient of
        // another shape; an effect read as a value.
        let mut g = Graph::new("t");
        let x = input(&mut g, "x", &[2, 4, 4]);
        let c = add(&mut g, conv(3, 3, 1, 1, false), &[x], "c");
        let dx = add(&mut g, data, &[c], "nobody");
        let bias = add(&mut g, Op::Train(TrainOp::BiasGrad), &[c], "c");
        let up = add(&mut g, Op::Train(TrainOp::Update(sgd)), &[bias], "c.weight");
        g.outputs = vec![dx, up];
        let text: Vec<String> = errors(&g).iter().map(ToString::to_string).collect();
        assert_eq!(
            text,
            [
                "%2 (nobody) reads parameter `nobody.weight`, which no node owns",
                "%4 (c.weight) reads parameter `c.weight`, which has shape [3, 2, 3, 3], but the gradient is [3]",
            ]
        );
        let r = add(&mut g, Op::Activation(Activation::Relu), &[up], "r");
        g.outputs.push(r);
        let e = errors(&g);
        let problem = "an effect, which has no value";
        assert!(e.contains(&VerifyError::OperandKind { node: r, name: "r".into(), operand: up, problem }), "{e:?}");
    }

    #[test]
    fn node_ids_of_errors() {
        assert_eq!(VerifyError::NoOutputs.node(), None);
        let e = VerifyError::EmptyName { node: id(3) };
        assert_eq!((e.node(), e.to_string()), (Some(id(3)), "%3 has an empty layer name".to_string()));
    }
}
