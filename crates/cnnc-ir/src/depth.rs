//! Depth first at batch > 1, a schedule both back ends may make of an inference plan: the
//! leading nodes whose maps at the whole batch would not stay in the caches run image by
//! image, each image through all of them before the next (ResNet-50 at batch 8: 64x56x56 maps
//! of 26 MB, beyond a 32 MB last-level cache once their inputs are counted; at batch 1 they
//! take 3 MB). The rest of the schedule runs on the whole batch: the fc layers, whose weights
//! would be read once an image instead of once a batch, come after the prefix.
//!
//! The plan itself is unchanged. Its lifetimes hold for the whole-batch order, where a
//! buffer's image 1 may lie where another buffer's image 0 does; so a back end running the
//! prefix depth first puts the values that live only inside it in one image's memory that
//! every image reuses, laid out as the plan lays them out at batch 1 ([`image_buffers`]), and
//! keeps the values that the prefix leaves to later nodes in their places, all of which are
//! alive together when the prefix ends.

use crate::plan::{Plan, Region, Storage};
use crate::{NodeId, Op};
use std::collections::HashSet;

/// The threshold both back ends take by default: a quarter of the 32 MiB last-level cache of
/// the machines measured. Medians per run, AMD EPYC Zen 5, 2 threads, batch 8 (JIT), whole
/// batch and depth first alternated in two sittings: ResNet-50 151-184 ms against 141-153;
/// GoogLeNet 64-74 against 62-70; ResNet-18 64-70 against 61-69; VGG-16 563-589 against
/// 542-576 (its fc layers, past the prefix, still read their weights once a batch).
pub const DEPTH_FIRST_BYTES: u64 = 8 << 20;

/// How many nodes, from the first, run depth first at `batch`: up to the last node whose
/// values (its inputs and output, all images, as logical f32) take more than `limit` bytes,
/// all of them ops that treat images apart and read and write only batched values, none a
/// model output. 0 for training plans (their batch statistics and weight gradients reduce over
/// the batch) and at batch 1.
pub fn depth_first_prefix(plan: &Plan, batch: usize, limit: u64) -> usize {
    prefix_of(&bytes_per_image(plan), batch, limit)
}

/// [`depth_first_prefix`] from [`bytes_per_image`]'s table: what a generated module computes
/// for the batch it is given.
pub fn prefix_of(table: &[u64], batch: usize, limit: u64) -> usize {
    if batch < 2 {
        return 0;
    }
    table.iter().rposition(|&b| b.saturating_mul(batch as u64) > limit).map_or(0, |i| i + 1)
}

/// For each of the leading nodes that may run depth first (see [`depth_first_prefix`]), the
/// bytes of its values (inputs and output) per image (0 for inputs); empty for training
/// plans.
pub fn bytes_per_image(plan: &Plan) -> Vec<u64> {
    if plan.graph.iter().any(|(_, n)| matches!(n.op, Op::Train(_))) {
        return Vec::new();
    }
    let batched = |id: NodeId| match &plan.memory.storage[id.index()] {
        Storage::Input(_) => true,
        Storage::Arena(place) => plan.memory.buffers.get(place.buffer).is_some_and(|b| b.region == Region::Batched),
        Storage::Nothing => false,
    };
    let mut table = Vec::new();
    for (id, node) in plan.graph.iter() {
        let per_image = match &node.op {
            Op::Input
            | Op::Conv(_)
            | Op::Fused { .. }
            | Op::Gemm(_)
            | Op::Pool { .. }
            | Op::Activation(_)
            | Op::BatchNorm(_)
            | Op::Lrn(_)
            | Op::Concat
            | Op::ConcatInPlace
            | Op::Add
            | Op::Reorder(_)
            | Op::Dropout { .. } => true,
            // Past these the maps are small, or the op is a matrix product whose weights
            // would be read once an image.
            Op::Fc(_)
            | Op::GlobalPool(_)
            | Op::AdaptivePool { .. }
            | Op::Spp { .. }
            | Op::Flatten
            | Op::Prelu
            | Op::Softmax
            | Op::Train(_) => false,
        };
        let output = plan.graph.outputs.contains(&id);
        if !per_image || output || !batched(id) || !node.inputs.iter().all(|&i| batched(i)) {
            break;
        }
        // An input alone runs nothing: it never ends a prefix.
        let bytes = if node.op == Op::Input {
            0
        } else {
            std::iter::once(id)
                .chain(node.inputs.iter().copied())
                .map(|v| 4 * plan.graph[v].shape.elements() as u64)
                .sum()
        };
        table.push(bytes);
    }
    table
}

/// The arena buffers that only a depth-first prefix of `prefix` nodes uses (every value in
/// them made and last read inside it), and the bytes of one image of them as the plan lays
/// them out at batch 1 (offsets from the batched region's start, [`Plan::image_offset`] at
/// batch 1 less the whole-batch region).
pub fn image_buffers(plan: &Plan, prefix: usize) -> (HashSet<usize>, u64) {
    let local: HashSet<usize> =
        buffer_last(plan).into_iter().enumerate().filter(|&(_, last)| last < prefix).map(|(b, _)| b).collect();
    let mut bytes = 0;
    for (id, _) in plan.graph.iter() {
        if let Some(place) = plan.memory.place(id)
            && local.contains(&place.buffer)
            && let Some(off) = plan.image_offset(id, 1, 0)
        {
            bytes = bytes.max(off - plan.memory.whole_batch_bytes + place.bytes.max(place.batch_stride));
        }
    }
    (local, bytes)
}

/// The last step (node index) at which any value of each arena buffer is alive: a prefix
/// that ends before it is the only user of the buffer (its first step comes earlier still).
pub fn buffer_last(plan: &Plan) -> Vec<usize> {
    let mut last = vec![0; plan.memory.buffers.len()];
    for (id, _) in plan.graph.iter() {
        if let Some(place) = plan.memory.place(id)
            && let Some(l) = last.get_mut(place.buffer)
        {
            *l = (*l).max(place.last);
        }
    }
    last
}
