//! Batch-norm folding (inference only): `conv -> bn` and `fc -> bn` (and `gemm -> bn`, should
//! the pipeline run on an optimised graph) become one conv or fc with rescaled weights and a
//! bias.
//!
//! At inference batch norm is a per-channel affine map, `y = (x - mean) * s + beta` with
//! `s = gamma / sqrt(var + eps)`, so folding it into the producer gives, per output channel `o`:
//!
//! ```text
//! w'[o, ...] = w[o, ...] * s[o]
//! b'[o]      = (b[o] - mean[o]) * s[o] + beta[o]      (b = 0 for a producer without bias)
//! ```
//!
//! computed in f64 and rounded once to f32 (`cnnc_runtime::fold_bn`). A producer without bias
//! gains one (`<conv>.bias`); the batch norm's four tensors (and a `num_batches_tracked` entry,
//! if any) leave the weight map. The pass records each fold as a weight transform of the plan
//! (`WeightTransform::FoldBn`), so a back end loading a checkpoint applies the same folds; it
//! rewrites the weights it is given the same way. The folded node keeps the producer's name
//! and records the batch norm as absorbed.
//!
//! The pattern fires only when the batch norm is the producer's only user and the producer's
//! value is not a model output: otherwise the unnormalised value is still needed.

use crate::error::PassError;
use crate::rewrite::{Ctx, Rebuild};
use cnnc_ir::plan::WeightTransform;
use cnnc_ir::{Graph, NodeId, Op};
use cnnc_runtime::{TensorMap, TransformError};

const PASS: &str = "fold-bn";

/// Folds every foldable batch norm; returns how many.
pub fn run(cx: &mut Ctx) -> Result<usize, PassError> {
    let graph = &cx.graph;
    let users = graph.users();
    let is_output = graph.output_flags();
    let mut b = Rebuild::new(PASS, graph, &cx.origins);
    let mut folded = 0;
    for (id, node) in graph.iter() {
        let Op::BatchNorm(bn) = node.op else {
            // Producers are emitted when their batch norm is reached.
            if foldable_into(graph, &users, &is_output, id).is_none() {
                b.copy(id)?;
            }
            continue;
        };
        let producer = node.inputs[0];
        if foldable_into(graph, &users, &is_output, producer) != Some(id) {
            b.copy(id)?;
            continue;
        }
        let op = with_bias(&graph[producer].op).expect("foldable_into admits conv, fc and gemm only");
        let transform =
            WeightTransform::FoldBn { layer: graph[producer].name.clone(), bn: node.name.clone(), eps: bn.eps };
        if let Some(weights) = cx.weights.as_deref_mut() {
            check_producer_weight(graph, producer, weights)?;
            cnnc_runtime::apply_transforms(std::slice::from_ref(&transform), weights)
                .map_err(|error| PassError::Weights { pass: PASS, error })?;
        }
        cx.transforms.push(transform);
        let new = b.emit(producer, op, &graph[producer].inputs.clone(), &[id])?;
        b.forward(id, producer);
        debug_assert_eq!(b.mapped(id), new);
        folded += 1;
    }
    let rebuilt = b.finish()?;
    cx.install(rebuilt);
    Ok(folded)
}

/// The producers a batch norm folds into (conv, fc, gemm), with a bias.
fn with_bias(op: &Op) -> Option<Op> {
    match op {
        Op::Conv(conv) => Some(Op::Conv(cnnc_ir::Conv { bias: true, ..*conv })),
        Op::Fc(fc) => Some(Op::Fc(cnnc_ir::Fc { bias: true, ..*fc })),
        Op::Gemm(gemm) => Some(Op::Gemm(cnnc_ir::Gemm { bias: true, ..*gemm })),
        Op::Input
        | Op::Pool { .. }
        | Op::GlobalPool(_)
        | Op::AdaptivePool { .. }
        | Op::Spp { .. }
        | Op::Flatten
        | Op::Activation(_)
        | Op::Prelu
        | Op::Softmax
        | Op::BatchNorm(_)
        | Op::Lrn(_)
        | Op::Dropout { .. }
        | Op::Concat
        | Op::Add
        | Op::Fused { .. }
        | Op::Reorder(_)
        | Op::ConcatInPlace
        | Op::Train(_) => None,
    }
}

/// The batch norm `id` (a conv or fc) folds into, if any: its only user, a batch norm, with
/// `id`'s value not a model output.
fn foldable_into(graph: &Graph, users: &[Vec<NodeId>], is_output: &[bool], id: NodeId) -> Option<NodeId> {
    if with_bias(&graph[id].op).is_none() || is_output[id.index()] {
        return None;
    }
    match users[id.index()][..] {
        [only] if matches!(graph[only].op, Op::BatchNorm(_)) => Some(only),
        _ => None,
    }
}

/// The producer's weight has the shape the graph declares (the fold reads it row by row).
fn check_producer_weight(graph: &Graph, producer: NodeId, weights: &TensorMap) -> Result<(), PassError> {
    let name = format!("{}.weight", graph[producer].name);
    let dims = graph.params(producer).into_iter().find(|s| s.suffix == "weight").map(|s| s.dims);
    match (weights.get(&name), dims) {
        (Some(t), Some(dims)) if t.shape != dims => Err(PassError::Weights {
            pass: PASS,
            error: TransformError::Shape { name, expected: format!("{dims:?}"), found: t.shape.clone() },
        }),
        _ => Ok(()),
    }
}
