//! The graph: nodes in an arena addressed by `NodeId`, in topological order.
//!
//! A node is shaped when it is added (its op's shape rule runs in [`Graph::add`]), so a graph
//! never holds an unshaped value; [`crate::verify()`] re-checks every invariant after a pass.

use crate::op::{Op, TrainOp};
use crate::param::{ParamSpec, params};
use crate::shape::{Shape, ShapeError, ShapeWarning, check_valid, infer};
use cnnc_diag::Span;

/// A handle to a node of one graph. Handles are indices: cheap to copy, compare and hash.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId(u32);

impl NodeId {
    pub fn index(self) -> usize {
        self.0 as usize
    }

    pub fn from_index(index: usize) -> NodeId {
        NodeId(u32::try_from(index).expect("graphs hold fewer than 2^32 nodes"))
    }
}

impl std::fmt::Display for NodeId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "%{}", self.0)
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Node {
    pub op: Op,
    pub inputs: Vec<NodeId>,
    pub shape: Shape,
    /// The hierarchical layer name (`layer1.0.conv1`); parameter names extend it.
    pub name: String,
    /// Where the layer is written in the source.
    pub span: Span,
    /// The source layers the optimiser merged into this node (batch norm folded into a
    /// convolution, an activation fused into it...), in order; empty for a source layer.
    pub absorbed: Vec<String>,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Graph {
    /// The model's name.
    pub name: String,
    nodes: Vec<Node>,
    pub inputs: Vec<NodeId>,
    pub outputs: Vec<NodeId>,
}

impl Graph {
    pub fn new(name: impl Into<String>) -> Graph {
        Graph { name: name.into(), ..Graph::default() }
    }

    /// Adds a model input of the given shape.
    pub fn add_input(&mut self, name: impl Into<String>, shape: Shape, span: Span) -> Result<NodeId, ShapeError> {
        if shape.rank() != 1 && shape.rank() != 3 {
            return Err(ShapeError::Rank { expected: "a [channels, height, width] or [features]", found: shape });
        }
        check_valid(&shape)?;
        let id =
            self.push(Node { op: Op::Input, inputs: Vec::new(), shape, name: name.into(), span, absorbed: Vec::new() });
        self.inputs.push(id);
        Ok(id)
    }

    /// Adds a model input of class labels (one index in `0..classes` per sample), the target
    /// of a class loss in a training graph.
    pub fn add_labels(&mut self, name: impl Into<String>, classes: usize, span: Span) -> Result<NodeId, ShapeError> {
        if classes == 0 {
            return Err(ShapeError::BadConfig("labels need at least one class".into()));
        }
        let op = Op::Train(TrainOp::Labels { classes });
        let id = self.push(Node {
            op,
            inputs: Vec::new(),
            shape: Shape(Vec::new()),
            name: name.into(),
            span,
            absorbed: Vec::new(),
        });
        self.inputs.push(id);
        Ok(id)
    }

    /// Adds a node, running its op's shape rule on the inputs' shapes.
    pub fn add(
        &mut self,
        op: Op,
        inputs: Vec<NodeId>,
        name: impl Into<String>,
        span: Span,
    ) -> Result<(NodeId, Vec<ShapeWarning>), ShapeError> {
        if let Some(bad) = inputs.iter().find(|i| i.index() >= self.nodes.len()) {
            return Err(ShapeError::BadConfig(format!(
                "operand {bad} does not exist (nodes are added after their operands)"
            )));
        }
        let (shape, warnings) = {
            let shapes: Vec<&Shape> = inputs.iter().map(|&i| &self[i].shape).collect();
            infer(&op, &shapes)?
        };
        let id = self.push(Node { op, inputs, shape, name: name.into(), span, absorbed: Vec::new() });
        Ok((id, warnings))
    }

    fn push(&mut self, node: Node) -> NodeId {
        let id = NodeId::from_index(self.nodes.len());
        self.nodes.push(node);
        id
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Every node with its handle, in topological order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = (NodeId, &Node)> + '_ {
        self.nodes.iter().enumerate().map(|(i, n)| (NodeId::from_index(i), n))
    }

    pub fn ids(&self) -> impl ExactSizeIterator<Item = NodeId> + use<> {
        (0..self.nodes.len()).map(NodeId::from_index)
    }

    pub fn input_shapes(&self, id: NodeId) -> Vec<&Shape> {
        self[id].inputs.iter().map(|&i| &self[i].shape).collect()
    }

    /// The parameters and buffers the node owns, named `<layer>.<suffix>` by the caller.
    pub fn params(&self, id: NodeId) -> Vec<ParamSpec> {
        params(&self[id].op, &self.input_shapes(id))
    }

    /// Every parameter and buffer of the graph with its full name, in node order.
    pub fn named_params(&self) -> Vec<(String, ParamSpec)> {
        self.ids()
            .flat_map(|id| self.params(id).into_iter().map(move |p| (format!("{}.{}", self[id].name, p.suffix), p)))
            .collect()
    }

    /// For each node, the nodes that read it, each once and in node order (a side table: the
    /// graph stores only inputs). Linear in the number of edges, however many readers a value
    /// has.
    pub fn users(&self) -> Vec<Vec<NodeId>> {
        let mut users = vec![Vec::new(); self.nodes.len()];
        for (id, node) in self.iter() {
            for &input in &node.inputs {
                let readers: &mut Vec<NodeId> = &mut users[input.index()];
                // Nodes are visited in order, so an operand `id` reads twice (`add(x, x)`) can
                // only repeat the last entry.
                if readers.last() != Some(&id) {
                    readers.push(id);
                }
            }
        }
        users
    }

    /// For each node, whether it is a model output (a side table, so that passes ask in
    /// constant time).
    pub fn output_flags(&self) -> Vec<bool> {
        let mut flags = vec![false; self.nodes.len()];
        for o in &self.outputs {
            if let Some(flag) = flags.get_mut(o.index()) {
                *flag = true;
            }
        }
        flags
    }

    /// For each node, whether some output depends on it (a model input that nothing reads is
    /// not live). A worklist rather than one reverse sweep, so that it stays correct on graphs
    /// that are out of order or hold dangling handles, which the verifier must look at too.
    pub fn live(&self) -> Vec<bool> {
        let mut live = vec![false; self.nodes.len()];
        let in_range = |id: &&NodeId| id.index() < self.nodes.len();
        let mut work: Vec<NodeId> = self.outputs.iter().filter(in_range).copied().collect();
        while let Some(id) = work.pop() {
            if std::mem::replace(&mut live[id.index()], true) {
                continue;
            }
            work.extend(self[id].inputs.iter().filter(in_range));
        }
        live
    }

    /// Mutable access for passes; they must leave the graph verifiable (see [`crate::verify()`]).
    pub fn node_mut(&mut self, id: NodeId) -> &mut Node {
        &mut self.nodes[id.index()]
    }

    /// Replaces the node list wholesale (passes that rebuild the graph); the caller remaps
    /// `inputs` and `outputs` and the result must verify.
    pub fn replace_nodes(&mut self, nodes: Vec<Node>) {
        self.nodes = nodes;
    }

    pub fn into_nodes(self) -> Vec<Node> {
        self.nodes
    }
}

impl std::ops::Index<NodeId> for Graph {
    type Output = Node;

    fn index(&self, id: NodeId) -> &Node {
        &self.nodes[id.index()]
    }
}

#[cfg(test)]
mod tests {
    use crate::op::{Activation, Op};
    use crate::testutil::{add, input};
    use crate::{Graph, NodeId};

    #[test]
    fn users_are_listed_once_each_in_node_order() {
        let mut g = Graph::new("u");
        let x = input(&mut g, "x", &[4, 2, 2]);
        let a = add(&mut g, Op::Activation(Activation::Relu), &[x], "a");
        let s = add(&mut g, Op::Add, &[x, x], "s");
        let t = add(&mut g, Op::Add, &[a, x, a], "t");
        g.outputs = vec![s, t];
        let users = g.users();
        assert_eq!(users[x.index()], [a, s, t]);
        assert_eq!(users[a.index()], [t]);
        assert!(users[s.index()].is_empty() && users[t.index()].is_empty());
        assert_eq!(g.output_flags(), [false, false, true, true]);
        // A handle past the end is ignored, as the verifier reports it.
        g.outputs.push(NodeId::from_index(9));
        assert_eq!(g.output_flags(), [false, false, true, true]);
    }
}
