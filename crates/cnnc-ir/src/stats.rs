//! Per-node statistics for `cnnc summary`: parameters, buffers, multiply-accumulates and the
//! receptive field.
//!
//! Conventions:
//! - `params` counts trainable elements (weights, biases, batch-norm gamma and beta), frozen or
//!   not; `frozen` counts those of them the graph freezes ([`Graph::frozen`]), so `params -
//!   frozen` are trained; `buffers` counts batch-norm running statistics.
//! - MACs: a convolution does `out_elements * (in_channels / groups) * kh * kw`, an fc layer
//!   `in_features * out_features`. Biases, batch norm, pooling and activations count 0.
//! - The receptive field `r` and jump `j` (the distance in model-input pixels between
//!   neighbouring outputs) follow the standard recurrence per axis (height, width): an input has
//!   `r = 1, j = 1`; a window of effective kernel `k` and stride `s` gives
//!   `r' = r + (k - 1) * j, j' = j * s`; per-pixel ops keep `r, j`; `add` and `concat` take the
//!   per-axis maximum of `r` and of `j` over their inputs. Ops that see the whole map (global
//!   pooling, flatten, spp and fc) act as a kernel and stride as large as their `[C, H, W]`
//!   input, `r' = r + (H - 1) * j, j' = j * H`; on a flat `[F]` input the extent is already
//!   whole, so `r, j` pass through. Adaptive pooling to `out` acts as kernel `ceil(H / out)`,
//!   stride `max(1, floor(H / out))`: its bins vary in size, so this is the typical window, not
//!   the largest (a bin can be one wider when `out` does not divide `H`).
//! - Sizes use saturating arithmetic: strides multiply along a deep network, and a statistic
//!   pinned at the maximum is better than a panic.

use crate::graph::{Graph, Node};
use crate::op::{Conv, FusedBase, Op, Pair, Window};
use crate::shape::Shape;
use crate::train::TrainOp;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NodeStats {
    /// Trainable elements: weights, biases, batch-norm gamma and beta.
    pub params: u64,
    /// Of `params`, the elements of frozen parameters.
    pub frozen: u64,
    /// Non-trainable elements: batch-norm running mean and variance.
    pub buffers: u64,
    /// Multiply-accumulates for one sample.
    pub macs: u64,
    /// Per axis (height, width), in model-input pixels.
    pub receptive_field: Pair,
    /// Effective stride per axis, in model-input pixels.
    pub jump: Pair,
}

/// Sums over the whole graph, for a batch of 1.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Totals {
    pub params: u64,
    /// Of `params`, the elements of frozen parameters.
    pub frozen: u64,
    pub buffers: u64,
    pub macs: u64,
    /// Every node's output (inputs included) at 4 bytes an element.
    pub activation_bytes: u64,
}

/// The statistics of every node, indexed by `NodeId::index()`. Meant for graphs built by
/// [`Graph::add`] or that pass [`crate::verify()`]; parameter counts index operand shapes.
pub fn node_stats(graph: &Graph) -> Vec<NodeStats> {
    let mut stats: Vec<NodeStats> = Vec::with_capacity(graph.len());
    for (id, node) in graph.iter() {
        let (params, frozen, buffers) = param_counts(graph, id);
        let field = receptive_field(graph, node, &stats);
        let macs = macs(graph, node);
        stats.push(NodeStats { params, frozen, buffers, macs, receptive_field: field.r, jump: field.j });
    }
    stats
}

/// Sums `stats` (from [`node_stats`] on the same graph) and the activation memory.
pub fn totals(graph: &Graph, stats: &[NodeStats]) -> Totals {
    let mut t = Totals::default();
    for s in stats {
        t.params = t.params.saturating_add(s.params);
        t.frozen = t.frozen.saturating_add(s.frozen);
        t.buffers = t.buffers.saturating_add(s.buffers);
        t.macs = t.macs.saturating_add(s.macs);
    }
    for (_, node) in graph.iter() {
        t.activation_bytes = t.activation_bytes.saturating_add(elements(&node.shape).saturating_mul(4));
    }
    t
}

/// `(trainable, frozen, buffer)` element counts of the node's parameters, the frozen ones
/// among the trainable.
fn param_counts(graph: &Graph, id: crate::NodeId) -> (u64, u64, u64) {
    let (mut params, mut frozen, mut buffers) = (0u64, 0u64, 0u64);
    // Most graphs freeze nothing: no name to build then.
    let any_frozen = !graph.frozen.is_empty();
    for spec in graph.params(id) {
        let n = product(&spec.dims);
        if spec.trainable() {
            params = params.saturating_add(n);
            if any_frozen && graph.is_frozen(&format!("{}.{}", graph[id].name, spec.suffix)) {
                frozen = frozen.saturating_add(n);
            }
        } else {
            buffers = buffers.saturating_add(n);
        }
    }
    (params, frozen, buffers)
}

fn macs(graph: &Graph, node: &Node) -> u64 {
    match &node.op {
        Op::Fused { base: FusedBase::Conv(conv), .. } => {
            let base = Node { op: Op::Conv(*conv), ..node.clone() };
            macs(graph, &base)
        }
        // Per output element, one multiply-accumulate per input channel or feature.
        Op::Gemm(_) | Op::Fused { base: FusedBase::Gemm(_), .. } => {
            let in_channels = first_input(graph, node).and_then(|s| s.0.first().copied()).unwrap_or(0);
            elements(&node.shape).saturating_mul(in_channels as u64)
        }
        Op::Conv(conv) => {
            let in_channels = first_input(graph, node).and_then(|s| s.0.first().copied()).unwrap_or(0);
            let per_group = in_channels.checked_div(conv.groups).unwrap_or(0);
            let [kh, kw] = conv.window.kernel;
            elements(&node.shape).saturating_mul(product(&[per_group, kh, kw]))
        }
        Op::Fc(fc) => {
            let in_features = first_input(graph, node).map_or(0, elements);
            in_features.saturating_mul(fc.out_features as u64)
        }
        Op::Train(t) => train_macs(graph, node, t),
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
        | Op::Reorder(_)
        | Op::ConcatInPlace => 0,
    }
}

/// A backward product costs what its forward does: one multiply-accumulate per element of the
/// forward output (the gradient operand) and input channel in the window.
fn train_macs(graph: &Graph, node: &Node, op: &TrainOp) -> u64 {
    let operand = |k: usize| node.inputs.get(k).filter(|i| i.index() < graph.len()).map(|&i| &graph[i].shape);
    let window = |conv: &Conv, in_channels: usize| {
        let [kh, kw] = conv.window.kernel;
        product(&[in_channels.checked_div(conv.groups).unwrap_or(0), kh, kw])
    };
    match op {
        TrainOp::ConvBackwardData { conv, input, .. } => {
            operand(0).map_or(0, elements).saturating_mul(window(conv, input[0]))
        }
        TrainOp::ConvBackwardWeight(conv) => {
            let in_channels = operand(0).and_then(|s| s.0.first().copied()).unwrap_or(0);
            operand(1).map_or(0, elements).saturating_mul(window(conv, in_channels))
        }
        TrainOp::GemmBackwardData { input, .. } => operand(0).map_or(0, elements).saturating_mul(*input as u64),
        TrainOp::GemmBackwardWeight(_) => {
            let in_channels = operand(0).and_then(|s| s.0.first().copied()).unwrap_or(0);
            operand(1).map_or(0, elements).saturating_mul(in_channels as u64)
        }
        TrainOp::Labels { .. }
        | TrainOp::Loss(_)
        | TrainOp::LossGrad(_)
        | TrainOp::BnStats
        | TrainOp::BnNormalize(_)
        | TrainOp::BnRunningUpdate { .. }
        | TrainOp::DropoutMask { .. }
        | TrainOp::Mul
        | TrainOp::PoolArgmax(_)
        | TrainOp::PoolBackward { .. }
        | TrainOp::BiasGrad
        | TrainOp::ActivationBackward { .. }
        | TrainOp::PreluBackwardData
        | TrainOp::PreluBackwardWeight
        | TrainOp::SoftmaxBackward
        | TrainOp::BnBackwardData { .. }
        | TrainOp::BnGammaGrad { .. }
        | TrainOp::LrnBackward(_)
        | TrainOp::Reshape(_)
        | TrainOp::Slice { .. }
        | TrainOp::Update(_) => 0,
    }
}

/// Receptive field `r` and jump `j` of one value, per axis.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Field {
    r: Pair,
    j: Pair,
}

/// A model input's field: one pixel, unit jump.
const PIXEL: Field = Field { r: [1, 1], j: [1, 1] };

fn receptive_field(graph: &Graph, node: &Node, done: &[NodeStats]) -> Field {
    // Inputs come before the node in a valid graph; anything else reads as a fresh pixel.
    let fields =
        node.inputs.iter().map(|i| done.get(i.index()).map_or(PIXEL, |s| Field { r: s.receptive_field, j: s.jump }));
    let first = fields.clone().next().unwrap_or(PIXEL);
    let map = first_input(graph, node).and_then(spatial);
    match &node.op {
        Op::Input => PIXEL,
        Op::Conv(conv) => through_window(first, &conv.window),
        // The residual operand joins as in `add`.
        Op::Fused { base, .. } => {
            let through_base = match base {
                FusedBase::Conv(conv) => through_window(first, &conv.window),
                // Per pixel on a map (a 1x1 convolution); a flat input's field passes, as fc.
                FusedBase::Gemm(_) => first,
            };
            fields.skip(1).fold(through_base, |acc, f| Field {
                r: [0, 1].map(|a| acc.r[a].max(f.r[a])),
                j: [0, 1].map(|a| acc.j[a].max(f.j[a])),
            })
        }
        Op::Gemm(_) => first,
        Op::Pool { window, .. } => through_window(first, window),
        Op::GlobalPool(_) | Op::Flatten | Op::Spp { .. } | Op::Fc(_) => match map {
            Some(size) => through(first, size, size),
            None => first,
        },
        Op::AdaptivePool { output, .. } => match map {
            Some(size) => {
                let kernel = [0, 1].map(|a| size[a].div_ceil(output[a].max(1)));
                let stride = [0, 1].map(|a| (size[a] / output[a].max(1)).max(1));
                through(first, kernel, stride)
            }
            None => first,
        },
        Op::Activation(_)
        | Op::Prelu
        | Op::Softmax
        | Op::BatchNorm(_)
        | Op::Lrn(_)
        | Op::Dropout { .. }
        | Op::Reorder(_) => first,
        // Training ops are not on a path from the input to the model's output: the field
        // passes through unchanged, and no summary shows it.
        Op::Train(_) => first,
        Op::Concat | Op::ConcatInPlace | Op::Add => fields.fold(first, |acc, f| Field {
            r: [0, 1].map(|a| acc.r[a].max(f.r[a])),
            j: [0, 1].map(|a| acc.j[a].max(f.j[a])),
        }),
    }
}

fn through_window(field: Field, window: &Window) -> Field {
    let kernel =
        [0, 1].map(|a| window.dilation[a].saturating_mul(window.kernel[a].saturating_sub(1)).saturating_add(1));
    through(field, kernel, window.stride)
}

/// The recurrence for one window: `r' = r + (k - 1) * j, j' = j * s`, per axis.
fn through(field: Field, kernel: Pair, stride: Pair) -> Field {
    Field {
        r: [0, 1].map(|a| field.r[a].saturating_add(kernel[a].saturating_sub(1).saturating_mul(field.j[a]))),
        j: [0, 1].map(|a| field.j[a].saturating_mul(stride[a])),
    }
}

/// The first input's shape, if the handle is in range.
fn first_input<'g>(graph: &'g Graph, node: &Node) -> Option<&'g Shape> {
    let id = *node.inputs.first()?;
    (id.index() < graph.len()).then(|| &graph[id].shape)
}

/// `[H, W]` of a `[C, H, W]` map.
fn spatial(shape: &Shape) -> Option<Pair> {
    match shape.0[..] {
        [_, h, w] => Some([h, w]),
        _ => None,
    }
}

fn elements(shape: &Shape) -> u64 {
    product(&shape.0)
}

fn product(dims: &[usize]) -> u64 {
    dims.iter().fold(1u64, |acc, &d| acc.saturating_mul(d as u64))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::op::{Activation, Conv, PoolKind};
    use crate::testutil::{add, bn, conv, fc, input, maxpool, small_cnn, window};
    use crate::{Graph, NodeId};

    /// The stats of the last node added to a fresh graph `input(dims) -> op`.
    fn single(dims: &[usize], op: Op) -> NodeStats {
        let mut g = Graph::new("t");
        let x = input(&mut g, "x", dims);
        let y = add(&mut g, op, &[x], "y");
        node_stats(&g)[y.index()]
    }

    fn grouped(out: usize, k: usize, groups: usize, bias: bool) -> Op {
        Op::Conv(Conv { out_channels: out, window: window(k, 1, 0), groups, bias })
    }

    #[test]
    fn conv_params_count_weights_and_optional_bias() {
        assert_eq!(single(&[3, 8, 8], conv(64, 7, 1, 3, true)).params, 64 * 3 * 49 + 64);
        assert_eq!(single(&[3, 8, 8], conv(64, 7, 1, 3, false)).params, 64 * 3 * 49);
        // Groups split the input channels: 16 filters each see 8 / 2 channels.
        assert_eq!(single(&[8, 5, 5], grouped(16, 3, 2, false)).params, 16 * 4 * 9);
        // Depthwise: one 3x3 filter per channel.
        assert_eq!(single(&[32, 5, 5], grouped(32, 3, 32, true)).params, 32 * 9 + 32);
        assert_eq!(single(&[32, 5, 5], grouped(32, 3, 32, true)).buffers, 0);
    }

    #[test]
    fn batch_norm_has_two_params_and_two_buffers_per_channel() {
        let s = single(&[64, 4, 4], bn());
        assert_eq!((s.params, s.buffers, s.macs), (128, 128, 0));
    }

    #[test]
    fn frozen_elements_are_counted_among_the_params() {
        let mut g = small_cnn();
        g.frozen = ["features.conv.weight", "features.bn.bias"].map(String::from).into();
        let stats = node_stats(&g);
        let frozen: Vec<u64> = stats.iter().map(|s| s.frozen).collect();
        assert_eq!(frozen, [0, 16 * 3 * 9, 16, 0, 0, 0, 0]);
        let t = totals(&g, &stats);
        assert_eq!((t.frozen, t.params), (16 * 3 * 9 + 16, 16 * 3 * 9 + 32 + 4096 * 10 + 10));
        assert_eq!(totals(&small_cnn(), &node_stats(&small_cnn())).frozen, 0);
    }

    #[test]
    fn fc_params_and_macs() {
        let s = single(&[512], fc(10));
        assert_eq!((s.params, s.macs), (512 * 10 + 10, 5120));
    }

    #[test]
    fn resnet_stem_macs_match_the_hand_count() {
        let s = single(
            &[3, 224, 224],
            Op::Conv(Conv { out_channels: 64, window: window(7, 2, 3), groups: 1, bias: false }),
        );
        assert_eq!(s.macs, 112 * 112 * 64 * 3 * 49);
        assert_eq!(s.macs, 118_013_952);
        // Depthwise MACs divide by the groups.
        assert_eq!(single(&[32, 5, 5], grouped(32, 3, 32, true)).macs, 32 * 3 * 3 * 9);
    }

    fn chain(dims: &[usize], ops: Vec<Op>) -> (Graph, Vec<NodeStats>) {
        let mut g = Graph::new("t");
        let mut last = input(&mut g, "x", dims);
        for (i, op) in ops.into_iter().enumerate() {
            last = add(&mut g, op, &[last], &format!("l{i}"));
        }
        g.outputs.push(last);
        let stats = node_stats(&g);
        (g, stats)
    }

    #[test]
    fn stacked_windows_grow_the_receptive_field() {
        let (_, s) = chain(&[1, 16, 16], vec![conv(1, 3, 1, 1, true), conv(1, 3, 1, 1, true)]);
        assert_eq!((s[2].receptive_field, s[2].jump), ([5, 5], [1, 1]));
        let (_, s) = chain(&[1, 16, 16], vec![conv(1, 3, 2, 1, true), conv(1, 3, 1, 1, true)]);
        assert_eq!((s[1].receptive_field, s[1].jump), ([3, 3], [2, 2]));
        assert_eq!((s[2].receptive_field, s[2].jump), ([7, 7], [2, 2]));
        // A ReLU and a max pool: 7 + (2 - 1) * 2 = 9, jump 4.
        let ops =
            vec![conv(1, 3, 2, 1, true), conv(1, 3, 1, 1, true), Op::Activation(Activation::Relu), maxpool(2, 2, 0)];
        let (_, s) = chain(&[1, 16, 16], ops);
        assert_eq!((s[3].receptive_field, s[4].receptive_field, s[4].jump), ([7, 7], [9, 9], [4, 4]));
    }

    #[test]
    fn axes_are_independent_and_dilation_widens() {
        let mut w = window(3, 1, 0);
        w.kernel = [3, 1];
        w.dilation = [2, 1];
        w.stride = [1, 2];
        let (_, s) = chain(&[1, 9, 9], vec![Op::Conv(Conv { out_channels: 1, window: w, groups: 1, bias: true })]);
        assert_eq!((s[1].receptive_field, s[1].jump), ([5, 1], [1, 2]));
    }

    #[test]
    fn whole_map_ops_cover_the_map() {
        // 3x3 conv (r 3, j 1) on 7x7, then global pooling: 3 + 6 * 1 = 9, jump 7.
        let ops = vec![conv(4, 3, 1, 1, true), Op::GlobalPool(PoolKind::Max), Op::Flatten, fc(2)];
        let (_, s) = chain(&[1, 7, 7], ops);
        assert_eq!((s[2].receptive_field, s[2].jump), ([9, 9], [7, 7]));
        // Flatten of a 1x1 map and fc of a flat vector change nothing.
        assert_eq!((s[4].receptive_field, s[4].jump), ([9, 9], [7, 7]));
        let (_, s) = chain(&[1, 7, 5], vec![Op::Flatten]);
        assert_eq!((s[1].receptive_field, s[1].jump), ([7, 5], [7, 5]));
        let (_, s) = chain(&[2, 4, 4], vec![Op::Spp { kind: PoolKind::Max, levels: vec![1, 2] }]);
        assert_eq!(s[1].receptive_field, [4, 4]);
    }

    #[test]
    fn adaptive_pool_uses_the_typical_bin() {
        // 14 to 7: kernel 2, stride 2.
        let op = Op::AdaptivePool { kind: PoolKind::Avg { include_pad: true }, output: [7, 4] };
        let (_, s) = chain(&[1, 14, 14], vec![op]);
        // Width: 14 to 4 gives kernel ceil(3.5) = 4, stride 3.
        assert_eq!((s[1].receptive_field, s[1].jump), ([2, 4], [2, 3]));
        // Upsampling (out > H) keeps a positive jump.
        let op = Op::AdaptivePool { kind: PoolKind::Max, output: [8, 8] };
        let (_, s) = chain(&[1, 4, 4], vec![op]);
        assert_eq!((s[1].receptive_field, s[1].jump), ([1, 1], [1, 1]));
    }

    #[test]
    fn merges_take_the_widest_branch() {
        let mut g = Graph::new("t");
        let x = input(&mut g, "x", &[1, 16, 16]);
        let a = add(&mut g, conv(1, 3, 1, 1, true), &[x], "a");
        let b = add(&mut g, conv(2, 5, 1, 2, true), &[x], "b");
        let cat = add(&mut g, Op::Concat, &[a, b], "cat");
        let sum = add(&mut g, Op::Add, &[x, a], "sum");
        let s = node_stats(&g);
        assert_eq!(s[cat.index()].receptive_field, [5, 5]);
        assert_eq!(s[sum.index()].receptive_field, [3, 3]);
    }

    #[test]
    fn huge_strides_saturate_instead_of_overflowing() {
        // Each layer keeps a 3x3 map (large padding) but multiplies the jump by 2^16, the
        // largest stride a window may have: four of them overflow 64 bits.
        let w = window(1, 1 << 16, 1 << 16);
        let big = || Op::Conv(Conv { out_channels: 1, window: w, groups: 1, bias: false });
        let (g, s) = chain(&[1, 1, 1], vec![big(), big(), big(), big(), conv(1, 3, 1, 0, false), big()]);
        assert_eq!(g[NodeId::from_index(1)].shape.0, vec![1, 3, 3]);
        assert_eq!(s[4].jump, [usize::MAX, usize::MAX]);
        assert_eq!(s[5].receptive_field, [usize::MAX, usize::MAX]);
    }

    #[test]
    fn totals_sum_nodes_and_activations() {
        let g = small_cnn();
        let s = node_stats(&g);
        let t = totals(&g, &s);
        let conv_params = 16 * 3 * 9;
        let fc_params = 4096 * 10 + 10;
        assert_eq!(t.params, conv_params + 32 + fc_params);
        assert_eq!(t.buffers, 32);
        assert_eq!(t.macs, 16 * 32 * 32 * 3 * 9 + 4096 * 10);
        // x, conv, bn, relu: 3 + 16 + 16 + 16 maps of 32x32; pool and flatten: 4096 each; fc: 10.
        let elements = (3 + 16 * 3) * 32 * 32 + 4096 * 2 + 10;
        assert_eq!(t.activation_bytes, elements * 4);
    }

    #[test]
    fn optimiser_ops_count_like_their_sources() {
        use crate::op::{Epilogue, FusedBase, Gemm, Layout};
        let mut g = Graph::new("opt");
        let x = input(&mut g, "x", &[8, 10, 10]);
        let c = add(&mut g, conv(8, 3, 1, 1, true), &[x], "c");
        let f = Op::Fused {
            base: FusedBase::Conv(Conv { out_channels: 8, window: window(3, 1, 1), groups: 1, bias: true }),
            epilogue: Epilogue { residual: true, activation: Some(Activation::Relu) },
        };
        let fused = add(&mut g, f, &[c, x], "fused");
        let gm = add(&mut g, Op::Gemm(Gemm { out: 4, bias: true }), &[fused], "gemm");
        let r = add(&mut g, Op::Reorder(Layout::Blocked16), &[gm], "r");
        let flat = add(&mut g, Op::Flatten, &[r], "flat");
        let v = add(&mut g, Op::Gemm(Gemm { out: 3, bias: false }), &[flat], "fc");
        let s = node_stats(&g);
        assert_eq!(s[fused.index()].macs, s[c.index()].macs);
        assert_eq!(s[fused.index()].params, s[c.index()].params);
        // A 1x1 convolution's count, and an fc layer's.
        assert_eq!((s[gm.index()].macs, s[gm.index()].params), (4 * 100 * 8, 4 * 8 + 4));
        assert_eq!((s[v.index()].macs, s[v.index()].params), (400 * 3, 400 * 3));
        // Two 3x3 convolutions in a row see 5x5; the residual (1x1) does not widen that.
        assert_eq!(s[fused.index()].receptive_field, [5, 5]);
        assert_eq!(s[r.index()].receptive_field, [5, 5]);
    }
}
