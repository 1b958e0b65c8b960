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
//! computed in f64 and rounded once to f32. A producer without bias gains one
//! (`<conv>.bias`); the batch norm's four tensors (and a `num_batches_tracked` entry, if any)
//! leave the weight map. The folded node keeps the producer's name and records the batch norm
//! as absorbed.
//!
//! The pattern fires only when the batch norm is the producer's only user and the producer's
//! value is not a model output: otherwise the unnormalised value is still needed.

use crate::error::PassError;
use crate::rewrite::{Ctx, Rebuild};
use cnnc_ir::{BatchNorm, Graph, NodeId, Op};
use cnnc_runtime::{NUM_BATCHES_TRACKED, Tensor, TensorMap};

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
        let op = match &graph[producer].op {
            Op::Conv(conv) => Op::Conv(cnnc_ir::Conv { bias: true, ..*conv }),
            Op::Fc(fc) => Op::Fc(cnnc_ir::Fc { bias: true, ..*fc }),
            Op::Gemm(gemm) => Op::Gemm(cnnc_ir::Gemm { bias: true, ..*gemm }),
            other => unreachable!("foldable_into admits conv, fc and gemm only, not {}", other.keyword()),
        };
        if let Some(weights) = cx.weights.as_deref_mut() {
            fold_weights(graph, producer, id, bn, weights)?;
        }
        let new = b.emit(producer, op, &graph[producer].inputs.clone(), &[id])?;
        b.forward(id, producer);
        debug_assert_eq!(b.mapped(id), new);
        folded += 1;
    }
    let rebuilt = b.finish()?;
    cx.install(rebuilt);
    Ok(folded)
}

/// The batch norm `id` (a conv or fc) folds into, if any: its only user, a batch norm, with
/// `id`'s value not a model output.
fn foldable_into(graph: &Graph, users: &[Vec<NodeId>], is_output: &[bool], id: NodeId) -> Option<NodeId> {
    if !matches!(graph[id].op, Op::Conv(_) | Op::Fc(_) | Op::Gemm(_)) || is_output[id.index()] {
        return None;
    }
    match users[id.index()][..] {
        [only] if matches!(graph[only].op, Op::BatchNorm(_)) => Some(only),
        _ => None,
    }
}

/// Rewrites the producer's weight and bias in `weights` and removes the batch norm's tensors.
fn fold_weights(
    graph: &Graph,
    producer: NodeId,
    bn_id: NodeId,
    bn: BatchNorm,
    weights: &mut TensorMap,
) -> Result<(), PassError> {
    let p = &graph[producer].name;
    let n = &graph[bn_id].name;
    let channels = graph[producer].shape.channels();
    let get = |name: String, dims: Vec<usize>| -> Result<Vec<f64>, PassError> {
        let t = weights.get(&name).ok_or_else(|| PassError::MissingWeight { pass: PASS, name: name.clone() })?;
        if t.shape != dims {
            return Err(PassError::WeightShape { pass: PASS, name, expected: dims, found: t.shape.clone() });
        }
        Ok(t.data.iter().map(|&x| f64::from(x)).collect())
    };
    let specs = graph.params(producer);
    let w_dims =
        specs.iter().find(|s| s.suffix == "weight").map(|s| s.dims.clone()).expect("conv, fc and gemm own a weight");
    let has_bias = specs.iter().any(|s| s.suffix == "bias");
    let w = get(format!("{p}.weight"), w_dims.clone())?;
    let bias = if has_bias { get(format!("{p}.bias"), vec![channels])? } else { vec![0.0; channels] };
    let gamma = get(format!("{n}.weight"), vec![channels])?;
    let beta = get(format!("{n}.bias"), vec![channels])?;
    let mean = get(format!("{n}.running_mean"), vec![channels])?;
    let var = get(format!("{n}.running_var"), vec![channels])?;

    let scale: Vec<f64> = (0..channels).map(|c| gamma[c] / (var[c] + bn.eps).sqrt()).collect();
    let per_channel = w.len() / channels;
    let new_w: Vec<f32> = w.iter().enumerate().map(|(i, &x)| (x * scale[i / per_channel]) as f32).collect();
    let new_b: Vec<f32> = (0..channels).map(|c| ((bias[c] - mean[c]) * scale[c] + beta[c]) as f32).collect();

    weights.insert(format!("{p}.weight"), Tensor { shape: w_dims, data: new_w });
    weights.insert(format!("{p}.bias"), Tensor { shape: vec![channels], data: new_b });
    for suffix in ["weight", "bias", "running_mean", "running_var"] {
        weights.remove(&format!("{n}.{suffix}"));
    }
    weights.remove(&format!("{n}{NUM_BATCHES_TRACKED}"));
    Ok(())
}
