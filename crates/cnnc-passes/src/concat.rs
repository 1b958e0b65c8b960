//! Concatenation in place: a concat whose operands can all be written straight into their
//! channel slices of its buffer becomes `concat_in_place`, which moves no data; the memory
//! planner then places each operand (and the in-place chain producing it) in its slice. An
//! operand qualifies when the concat is its only reader, it appears once, and it is neither a
//! model input nor a model output (the rule the verifier enforces for `concat_in_place`). A
//! concat with any other operand stays a copying `concat`.

use crate::error::PassError;
use crate::rewrite::{Ctx, Rebuild};
use cnnc_ir::{Graph, NodeId, Op};

/// Marks every concat whose operands can all be written in place; returns how many.
pub fn run(cx: &mut Ctx) -> Result<usize, PassError> {
    let graph = &cx.graph;
    let users = graph.users();
    let is_output = graph.output_flags();
    let mut b = Rebuild::new("concat-in-place", graph, &cx.origins);
    let mut marked = 0;
    for (id, node) in graph.iter() {
        if node.op == Op::Concat && writable_in_place(graph, &users, &is_output, id) {
            b.emit(id, Op::ConcatInPlace, &node.inputs, &[])?;
            marked += 1;
        } else {
            b.copy(id)?;
        }
    }
    let rebuilt = b.finish()?;
    cx.install(rebuilt);
    Ok(marked)
}

/// Whether every operand of `concat` may be written into its slice. Sorting the operands finds
/// repeats in `O(k log k)` for `k` operands, where counting each one's occurrences would take
/// `O(k^2)`.
fn writable_in_place(graph: &Graph, users: &[Vec<NodeId>], is_output: &[bool], concat: NodeId) -> bool {
    let operands = &graph[concat].inputs;
    let private = |x: &NodeId| graph[*x].op != Op::Input && !is_output[x.index()] && users[x.index()] == [concat];
    if !operands.iter().all(private) {
        return false;
    }
    let mut sorted = operands.clone();
    sorted.sort_unstable();
    sorted.windows(2).all(|pair| pair[0] != pair[1])
}
