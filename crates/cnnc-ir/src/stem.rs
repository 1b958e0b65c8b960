//! The blocked stem, a fusion both back ends make on a plan: a convolution of a plain input
//! (the image) writes channel-blocked output when everything after it up to the plan's
//! `reorder` to `nChw16c` is a chain of ops that run on either layout (pooling, LRN,
//! activations), each value read by the next alone, every channel count a multiple of 16 (so
//! a value's bytes are as many in either layout and it stays in its own place). The chain then
//! runs blocked and, when nothing else alive at its last step uses the reorder's memory, its
//! last value is written straight into the reorder's place, so the reorder moves nothing:
//! ResNet's scalar max pooling of 112x112 plain maps and the reorder after it are gone. Values
//! outside the chain, and every value any other node reads, keep the plan's layouts.
//!
//! The plan itself is unchanged (its layouts stay what the layout pass chose and the
//! interpreter runs them so); a back end applies [`blocked_stems`] to its own addressing.

use crate::plan::{Alias, Plan};
use crate::{FusedBase, Layout, NodeId, Op};

/// One fused stem.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlockedStem {
    /// The nodes computed in `nChw16c` instead of plain, in schedule order: the convolution of
    /// the plain input first, the reorder's operand last.
    pub chain: Vec<NodeId>,
    /// The reorder to `nChw16c` the chain ends at.
    pub reorder: NodeId,
    /// Whether the chain's last value is written in the reorder's place: then the reorder has
    /// nothing to do and runs no code; otherwise it copies (both layouts are blocked).
    pub into_reorder: bool,
}

/// Every stem of `plan` that can run blocked (see the module documentation).
pub fn blocked_stems(plan: &Plan) -> Vec<BlockedStem> {
    let graph = &plan.graph;
    let users = graph.users();
    graph
        .iter()
        .filter(|(_, node)| node.op == Op::Reorder(Layout::Blocked16))
        .filter_map(|(r, node)| {
            let chain = stem_chain(plan, &users, node.inputs[0])?;
            plan.memory.place(r)?;
            let last = chain[chain.len() - 1];
            Some(BlockedStem { into_reorder: free_during(plan, r, last), chain, reorder: r })
        })
        .collect()
}

/// Whether the buffer of `r`'s value overlaps no value alive at `step`'s step except `r`'s
/// (the plan only promised that memory free from the reorder's own step on).
fn free_during(plan: &Plan, r: NodeId, step: NodeId) -> bool {
    let m = &plan.memory;
    let Some(target) = m.place(r) else { return false };
    let tb = &m.buffers[target.buffer];
    let (t0, t1) = (tb.offset, tb.offset + tb.size);
    plan.graph.ids().all(|id| {
        let Some(p) = m.place(id) else { return true };
        let b = &m.buffers[p.buffer];
        let alive = p.first <= step.index() && step.index() <= p.last;
        id == r || !alive || b.region != tb.region || b.offset + b.size <= t0 || t1 <= b.offset
    })
}

/// The chain ending at `last` (the reorder's operand), from the convolution that starts it.
fn stem_chain(plan: &Plan, users: &[Vec<NodeId>], last: NodeId) -> Option<Vec<NodeId>> {
    let graph = &plan.graph;
    let mut chain = vec![last];
    let mut id = last;
    loop {
        let node = &graph[id];
        if users[id.index()].len() != 1 || graph.outputs.contains(&id) || !node.shape.channels().is_multiple_of(16) {
            return None;
        }
        let place = plan.memory.place(id)?;
        let previous = node.inputs.first().copied();
        match place.alias {
            Alias::Own => {}
            Alias::InPlace(of) if Some(of) == previous => {}
            Alias::InPlace(_) | Alias::Slice(_) | Alias::View(_) => return None,
        }
        if plan.layouts[id.index()] != Layout::Plain {
            return None;
        }
        if let Op::Conv(c) | Op::Fused { base: FusedBase::Conv(c), epilogue: crate::Epilogue { residual: false, .. } } =
            &node.op
            && c.groups == 1
        {
            // The convolution reads a plain input of any channels; it is the chain's start.
            chain.reverse();
            return Some(chain);
        }
        let follows = matches!(node.op, Op::Pool { .. } | Op::Lrn(_) | Op::Activation(_)) && node.inputs.len() == 1;
        if !follows {
            return None;
        }
        id = previous?;
        chain.push(id);
    }
}
