//! The memory planner: where every intermediate tensor lives, as an analysis of a graph.
//!
//! # Model
//!
//! Nodes run one per *step* in graph (topological) order. At inference there are `n` steps;
//! in training there are `2n`: the forward pass (step `i` runs node `i`), then the backward
//! pass in reverse (step `2n - 1 - i` runs node `i`'s backward). Every tensor the plan places
//! is a [`Value`]:
//!
//! - [`Value::Output`]: a node's output (model inputs are the caller's and are not placed);
//!   it lives from its node's step to its last reader's step, to the end of the forward pass
//!   if it is a model output, and in training to the backward step of the earliest node whose
//!   backward reads it (see [`saved_for_backward`]);
//! - [`Value::Grad`] (training): the gradient of a node's output, from the backward step of
//!   its latest user (or the first backward step, for a model output, whose gradient the loss
//!   gives) to the backward step of the node itself. Nodes with no trainable parameter
//!   upstream get none. Parameter gradients are not intermediates and are not placed;
//! - [`Value::Mask`] (training): a dropout node's mask, saved for its backward, counted as
//!   one f32 per element.
//!
//! Sizes are f32 bytes per batch item as stored (a value in `nChw16c` includes its channel
//! padding, [`cnnc_ir::layout::stored_elements`]), each buffer rounded up to 64 bytes, so a plan made once
//! scales to any batch size: every offset and size is multiplied by the batch (each buffer
//! holds its tensor batch-first).
//!
//! # Buffers
//!
//! Values are grouped into buffers, then buffers get offsets in one arena:
//!
//! 1. **Concat in place**: each operand of a `concat_in_place` (made by
//!    [`crate::concat`]; the verifier guarantees the concat is its only reader, it appears once
//!    and is not a model input or output) is written straight into its channel slice of the
//!    concat's buffer. Through in-place elementwise nodes the slice reaches back to their
//!    operand (`conv -> relu -> concat`: the conv writes into the slice and the relu runs in
//!    place there). A `concat_in_place` that is itself such an operand nests its slices inside
//!    the outer one. A plain `concat` copies.
//! 2. **In place** ([`PlanOptions::in_place`]): an elementwise node (activation, PReLU,
//!    batch norm, dropout, add, and a fused node over its residual operand — see
//!    [`in_place_operands`]) writes over an operand whose buffer
//!    holds nothing alive after this step (no other reader, not a model output, not saved for
//!    backward) and is exactly the operand's size. `flatten` is a view: it shares its
//!    operand's buffer without any copy.
//! 3. **Offsets**: greedy by size (largest buffer first; each at the lowest offset where it
//!    overlaps no already placed buffer whose lifetime intersects its own). Lifetimes are
//!    inclusive step ranges, so a node's operands and output never share memory unless the
//!    node runs in place.
//!
//! [`MemoryPlan::workspace_bytes`] is the arena's size; [`MemoryPlan::unplanned_bytes`] is the
//! sum of every value's exact size, what one buffer per tensor would need.
//! [`MemoryPlan::check`] re-checks a plan independently: no two values that are alive at the
//! same time share a byte unless one is an alias of the other.

use crate::pipeline::Mode;
use cnnc_ir::{Activation, Graph, NodeId, Op, PoolKind};
use std::fmt::Write;

/// Bytes per element (f32).
pub const ELEMENT_BYTES: u64 = 4;
/// Every buffer starts on this boundary (per batch item, hence for every batch size).
pub const ALIGN: u64 = 64;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PlanOptions {
    pub mode: Mode,
    /// Let elementwise nodes overwrite an operand that dies there, and `flatten` alias.
    /// (The operands of `concat_in_place` are always placed in its slices.)
    pub in_place: bool,
}

impl PlanOptions {
    pub fn new(mode: Mode) -> PlanOptions {
        PlanOptions { mode, in_place: true }
    }

    /// No in-place writes or views (buffers are still reused once dead).
    pub fn no_in_place(mode: Mode) -> PlanOptions {
        PlanOptions { mode, in_place: false }
    }
}

/// A tensor the plan places.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Value {
    Output(NodeId),
    Grad(NodeId),
    Mask(NodeId),
}

impl Value {
    pub fn node(self) -> NodeId {
        match self {
            Value::Output(id) | Value::Grad(id) | Value::Mask(id) => id,
        }
    }
}

impl std::fmt::Display for Value {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Value::Output(id) => write!(f, "{id}"),
            Value::Grad(id) => write!(f, "d{id}"),
            Value::Mask(id) => write!(f, "mask{id}"),
        }
    }
}

/// How a value came to share a buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Alias {
    /// The value owns its buffer.
    Own,
    /// Written over the given value, which is dead from this step on.
    InPlace(Value),
    /// A channel slice of the given concat's value.
    Slice(Value),
    /// The same bytes as the given value, read-only (flatten).
    View(Value),
}

/// Where one value lives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Placement {
    pub value: Value,
    pub buffer: usize,
    /// First channel of this value inside the buffer's tensor (concat slices); 0 otherwise.
    pub channel_offset: usize,
    /// Byte offset of the value inside the buffer, per batch item (`channel_offset` times the
    /// bytes of one channel).
    pub byte_offset: u64,
    /// Exact size in bytes per batch item.
    pub bytes: u64,
    /// First and last step the value is alive (inclusive).
    pub first: usize,
    pub last: usize,
    pub alias: Alias,
}

/// A region of the arena that holds one or more values whose lifetimes allow it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Buffer {
    /// Offset in the arena, bytes per batch item.
    pub offset: u64,
    /// Size, bytes per batch item (a multiple of [`ALIGN`]).
    pub size: u64,
    pub first: usize,
    pub last: usize,
    /// The values it holds, the root (the value the buffer was made for) first.
    pub values: Vec<Value>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemoryPlan {
    pub mode: Mode,
    /// Steps of the schedule: `n` at inference, `2n` in training.
    pub steps: usize,
    pub buffers: Vec<Buffer>,
    /// Every placed value, outputs in node order, then gradients, then masks.
    pub values: Vec<Placement>,
    arena: u64,
    unplanned: u64,
}

impl MemoryPlan {
    /// The arena the plan needs for `batch` items.
    pub fn workspace_bytes(&self, batch: usize) -> u64 {
        self.arena * batch as u64
    }

    /// The sum of every placed value's size for `batch` items: one buffer per tensor.
    pub fn unplanned_bytes(&self, batch: usize) -> u64 {
        self.unplanned * batch as u64
    }

    pub fn placement(&self, value: Value) -> Option<&Placement> {
        self.values.iter().find(|p| p.value == value)
    }

    /// The pairs `(node, operand)` where the node's output is written over the operand.
    pub fn in_place(&self) -> Vec<(NodeId, NodeId)> {
        self.values
            .iter()
            .filter_map(|p| match p.alias {
                Alias::InPlace(of) => Some((p.value.node(), of.node())),
                _ => None,
            })
            .collect()
    }

    /// The concat operands written into their concat's buffer: `(operand, concat)`.
    pub fn concat_slices(&self) -> Vec<(NodeId, NodeId)> {
        self.values
            .iter()
            .filter_map(|p| match p.alias {
                Alias::Slice(of) => Some((p.value.node(), of.node())),
                _ => None,
            })
            .collect()
    }

    /// A text table of the plan (for snapshots and `--verbose` output): the totals, then one
    /// line per buffer with its offset, size, lifetime and values.
    pub fn render(&self, graph: &Graph) -> String {
        let mut out = String::new();
        let mode = match self.mode {
            Mode::Inference => "inference",
            Mode::Training => "training",
        };
        // Writing into a String cannot fail.
        let _ = writeln!(
            out,
            "memory plan ({mode}, {} steps): workspace {} bytes, unplanned {} bytes per batch item",
            self.steps, self.arena, self.unplanned
        );
        for (k, b) in self.buffers.iter().enumerate() {
            let _ = write!(out, "  buf{k} @{} +{} [{}..={}]:", b.offset, b.size, b.first, b.last);
            for &v in &b.values {
                let p = self.placement(v).expect("buffer values are placed");
                let _ = write!(out, " {v}");
                match p.alias {
                    Alias::Own => {}
                    Alias::InPlace(of) => {
                        let _ = write!(out, "(over {of})");
                    }
                    Alias::Slice(of) => {
                        let _ = write!(out, "(in {of} at c{})", p.channel_offset);
                    }
                    Alias::View(of) => {
                        let _ = write!(out, "(view of {of})");
                    }
                }
            }
            let names: Vec<String> = b
                .values
                .iter()
                .map(|v| match v {
                    Value::Output(id) => graph[*id].name.clone(),
                    Value::Grad(id) => format!("d {}", graph[*id].name),
                    Value::Mask(id) => format!("mask {}", graph[*id].name),
                })
                .collect();
            let _ = writeln!(out, "  // {}", names.join(", "));
        }
        out
    }

    /// Checks the plan independently of how it was made: every value lies inside its buffer,
    /// every buffer inside the arena, and no value's bytes are written while another value
    /// that holds them is alive. Every value writes its bytes at its first step except views
    /// (flatten) and the channels of a concat that its operands wrote in place; a write at step
    /// `t` may destroy only the value it is computed in place over (or a view of it), whose last
    /// use must be `t`, and only when its node reads that value elementwise.
    pub fn check(&self, graph: &Graph) -> Result<(), String> {
        for p in &self.values {
            let b = &self.buffers[p.buffer];
            if p.byte_offset + p.bytes > b.size || b.offset + b.size > self.arena {
                return Err(format!("{} does not fit its buffer", p.value));
            }
            if p.first > p.last || p.first < b.first || p.last > b.last {
                return Err(format!("{} lives outside its buffer's lifetime", p.value));
            }
        }
        for w in &self.values {
            let t = w.first;
            for (start, end) in self.written(graph, w) {
                for u in &self.values {
                    if u.value == w.value || u.first > t || u.last < t {
                        continue;
                    }
                    let us = self.start(u);
                    if us >= end || start >= us + u.bytes {
                        continue;
                    }
                    let in_place = u.last == t && u.first < t && self.overwrites_legally(graph, w, u);
                    if !in_place {
                        return Err(format!(
                            "{} is written at step {t} over {}, which is alive in steps {}..={}",
                            w.value, u.value, u.first, u.last
                        ));
                    }
                }
            }
        }
        Ok(())
    }

    /// Whether `w`, written in place, may destroy `u` (alive until `w`'s step): `u` is the value
    /// `w` is computed over (or a view of it), and `w`'s node reads it only at operand positions
    /// where it works elementwise.
    fn overwrites_legally(&self, graph: &Graph, w: &Placement, u: &Placement) -> bool {
        let (Alias::InPlace(Value::Output(over)), Value::Output(node)) = (w.alias, w.value) else {
            return false;
        };
        // `u` is `over`, or `over` is a view of `u` (flatten shares its operand's bytes).
        let mut cur = over;
        let mut related = Value::Output(cur) == u.value;
        while let (false, Some(Alias::View(Value::Output(up)))) =
            (related, self.placement(Value::Output(cur)).map(|p| p.alias))
        {
            cur = up;
            related = Value::Output(cur) == u.value;
        }
        let n = &graph[node];
        let elementwise = in_place_operands(&n.op, n.inputs.len());
        related && n.inputs.iter().enumerate().all(|(k, &i)| i != over || elementwise.contains(&k))
    }

    /// The arena byte ranges (per batch item) value `w` writes at its first step.
    fn written(&self, graph: &Graph, w: &Placement) -> Vec<(u64, u64)> {
        let start = self.start(w);
        match (w.alias, w.value) {
            (Alias::View(_), _) => Vec::new(),
            (_, Value::Output(id)) if matches!(graph[id].op, Op::Concat | Op::ConcatInPlace) => {
                // Channels whose operand is not already in place in this buffer.
                let per_channel = w.bytes / graph[id].shape.channels() as u64;
                let mut out = Vec::new();
                let mut channel = w.channel_offset;
                for &x in &graph[id].inputs {
                    let c = graph[x].shape.channels();
                    let in_slice = self.placement(Value::Output(x)).is_some_and(|p| {
                        p.buffer == w.buffer
                            && p.channel_offset == channel
                            && matches!(p.alias, Alias::Slice(_) | Alias::InPlace(_))
                    });
                    if !in_slice {
                        let from = start + (channel - w.channel_offset) as u64 * per_channel;
                        out.push((from, from + c as u64 * per_channel));
                    }
                    channel += c;
                }
                out
            }
            _ => vec![(start, start + w.bytes)],
        }
    }

    fn start(&self, p: &Placement) -> u64 {
        self.buffers[p.buffer].offset + p.byte_offset
    }
}

/// What a node's backward pass reads besides its output's gradient and its parameters: the
/// operands (by position), its own output, its dropout mask. This is what training keeps
/// alive, and what decides which values an in-place write may destroy.
///
/// | op | saved |
/// |---|---|
/// | conv, fc, gemm | the operand (for the weight gradient) |
/// | fused conv or gemm | the operand, and the output when it has an activation (training fuses only relu, sigmoid and tanh, whose derivative the output gives) |
/// | max pooling (all forms) | the operand (the argmax is recomputed) |
/// | average pooling | nothing |
/// | L2 pooling | operand and output (`dx = dy * x / y`) |
/// | relu, sigmoid, tanh | the output (`y > 0`, `y (1 - y)`, `1 - y^2`) |
/// | other activations, PReLU | the operand |
/// | softmax | the output |
/// | batch norm (training) | the operand (batch mean and inverse std are per channel, not counted) |
/// | LRN | operand and output |
/// | dropout | the mask |
/// | flatten, concat, concat_in_place, add, reorder, input | nothing |
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Saved {
    pub operands: Vec<usize>,
    pub output: bool,
    pub mask: bool,
}

/// See [`Saved`]. At inference nothing is saved.
pub fn saved_for_backward(op: &Op, mode: Mode) -> Saved {
    if mode == Mode::Inference {
        return Saved::default();
    }
    let operand = Saved { operands: vec![0], ..Saved::default() };
    let output = Saved { output: true, ..Saved::default() };
    let both = Saved { operands: vec![0], output: true, mask: false };
    let by_kind = |kind: &PoolKind| match kind {
        PoolKind::Max => operand.clone(),
        PoolKind::Avg { .. } => Saved::default(),
        PoolKind::L2 => both.clone(),
    };
    match op {
        Op::Input | Op::Flatten | Op::Concat | Op::Add | Op::Reorder(_) | Op::ConcatInPlace => Saved::default(),
        Op::Conv(_) | Op::Fc(_) | Op::Gemm(_) | Op::Prelu | Op::BatchNorm(_) => operand.clone(),
        // The base's operand, and the output for the activation's derivative (fusion in
        // training only takes activations whose derivative the output gives).
        Op::Fused { epilogue, .. } => Saved { operands: vec![0], output: epilogue.activation.is_some(), mask: false },
        Op::Pool { kind, .. } | Op::GlobalPool(kind) | Op::AdaptivePool { kind, .. } | Op::Spp { kind, .. } => {
            by_kind(kind)
        }
        Op::Activation(a) => {
            if activation_backward_from_output(a) {
                output
            } else {
                operand
            }
        }
        Op::Softmax => output,
        Op::Lrn(_) => both,
        Op::Dropout { .. } => Saved { mask: true, ..Saved::default() },
    }
}

/// Activations whose derivative is a function of their output alone.
pub fn activation_backward_from_output(a: &Activation) -> bool {
    match a {
        Activation::Relu | Activation::Sigmoid | Activation::Tanh => true,
        Activation::LeakyRelu { .. }
        | Activation::Elu { .. }
        | Activation::Selu
        | Activation::HardTanh { .. }
        | Activation::Softsign
        | Activation::Softplus { .. } => false,
    }
}

/// The operand positions an op may write its output over: it is elementwise, reads each
/// element of that operand only to compute the same element of the output.
pub fn in_place_operands(op: &Op, arity: usize) -> Vec<usize> {
    match op {
        Op::Activation(_) | Op::Prelu | Op::BatchNorm(_) | Op::Dropout { .. } => vec![0],
        Op::Add => (0..arity).collect(),
        // Only the residual: the base reads a neighbourhood (or every channel) of its operand.
        Op::Fused { epilogue, .. } if epilogue.residual => vec![1],
        Op::Fused { .. }
        | Op::Gemm(_)
        | Op::Reorder(_)
        | Op::ConcatInPlace
        | Op::Input
        | Op::Conv(_)
        | Op::Pool { .. }
        | Op::GlobalPool(_)
        | Op::AdaptivePool { .. }
        | Op::Spp { .. }
        | Op::Fc(_)
        | Op::Flatten
        | Op::Softmax
        | Op::Lrn(_)
        | Op::Concat => Vec::new(),
    }
}

fn align(bytes: u64) -> u64 {
    bytes.div_ceil(ALIGN) * ALIGN
}

/// Plans `graph`'s memory.
pub fn plan(graph: &Graph, options: &PlanOptions) -> MemoryPlan {
    Planner::new(graph, options).run()
}

struct Planner<'g> {
    graph: &'g Graph,
    options: PlanOptions,
    users: Vec<Vec<NodeId>>,
    n: usize,
    /// Per node: lifetime of its output (None for model inputs).
    life: Vec<Option<(usize, usize)>>,
    /// Per node: (buffer, channel offset) of its output.
    slot: Vec<Option<(usize, usize)>>,
    alias: Vec<Alias>,
    buffers: Vec<Buffer>,
    is_output: Vec<bool>,
    /// Stored elements of each node's value (layout padding included).
    stored: Vec<usize>,
}

impl<'g> Planner<'g> {
    fn new(graph: &'g Graph, options: &PlanOptions) -> Planner<'g> {
        let n = graph.len();
        let mut is_output = vec![false; n];
        for o in &graph.outputs {
            is_output[o.index()] = true;
        }
        Planner {
            graph,
            options: *options,
            users: graph.users(),
            n,
            life: vec![None; n],
            slot: vec![None; n],
            alias: vec![Alias::Own; n],
            buffers: Vec::new(),
            is_output,
            stored: {
                let (layouts, _) = cnnc_ir::layout::layouts(graph);
                graph.iter().map(|(id, n)| cnnc_ir::layout::stored_elements(layouts[id.index()], &n.shape)).collect()
            },
        }
    }

    fn training(&self) -> bool {
        self.options.mode == Mode::Training
    }

    fn backward_step(&self, id: NodeId) -> usize {
        2 * self.n - 1 - id.index()
    }

    fn bytes(&self, id: NodeId) -> u64 {
        self.stored[id.index()] as u64 * ELEMENT_BYTES
    }

    fn is_input(&self, id: NodeId) -> bool {
        self.graph[id].op == Op::Input
    }

    fn run(mut self) -> MemoryPlan {
        self.lifetimes();
        self.concat_slices();
        self.assign_outputs();
        let mut values = self.output_placements();
        if self.training() {
            values.extend(self.training_values());
        }
        let arena = self.offsets();
        let unplanned = values.iter().map(|p| p.bytes).sum();
        // Buffer lists: root first, then the others in value order.
        for p in &values {
            let b = &mut self.buffers[p.buffer];
            if !b.values.contains(&p.value) {
                b.values.push(p.value);
            }
        }
        let steps = if self.training() { 2 * self.n } else { self.n };
        MemoryPlan { mode: self.options.mode, steps, buffers: self.buffers, values, arena, unplanned }
    }

    /// Forward values' lifetimes, extended for what the backward pass reads.
    fn lifetimes(&mut self) {
        let end = self.n.saturating_sub(1);
        for (id, node) in self.graph.iter() {
            if node.op == Op::Input {
                continue;
            }
            let mut last = self.users[id.index()].iter().map(|u| u.index()).max().unwrap_or(id.index());
            if self.is_output[id.index()] {
                last = end;
            }
            self.life[id.index()] = Some((id.index(), last.max(id.index())));
        }
        if !self.training() {
            return;
        }
        for (id, node) in self.graph.iter() {
            let saved = saved_for_backward(&node.op, self.options.mode);
            let step = self.backward_step(id);
            let extend = |v: NodeId, life: &mut Vec<Option<(usize, usize)>>| {
                if let Some((_, last)) = &mut life[v.index()] {
                    *last = (*last).max(step);
                }
            };
            for &k in &saved.operands {
                extend(node.inputs[k], &mut self.life);
            }
            if saved.output {
                extend(id, &mut self.life);
            }
        }
    }

    fn new_buffer(&mut self, root: NodeId) -> usize {
        let (first, last) = self.life[root.index()].expect("placed values have lifetimes");
        self.buffers.push(Buffer {
            offset: 0,
            size: align(self.bytes(root)),
            first,
            last,
            values: vec![Value::Output(root)],
        });
        self.buffers.len() - 1
    }

    fn join(&mut self, id: NodeId, buffer: usize, channel_offset: usize, alias: Alias) {
        let (first, last) = self.life[id.index()].expect("placed values have lifetimes");
        let b = &mut self.buffers[buffer];
        b.first = b.first.min(first);
        b.last = b.last.max(last);
        if !b.values.contains(&Value::Output(id)) {
            b.values.push(Value::Output(id));
        }
        self.slot[id.index()] = Some((buffer, channel_offset));
        self.alias[id.index()] = alias;
    }

    /// Whether `x` may take over a slot chosen for its only reader `reader`: not a model input
    /// or output, read by `reader` alone, once; when `reader` overwrites it, also dead after
    /// `reader` (not saved for backward).
    fn may_take_slot(&self, x: NodeId, reader: NodeId, overwritten: bool) -> bool {
        !self.is_input(x)
            && !self.is_output[x.index()]
            && self.slot[x.index()].is_none()
            && self.users[x.index()] == [reader]
            && self.graph[reader].inputs.iter().filter(|&&i| i == x).count() == 1
            && (!overwritten || self.life[x.index()].is_some_and(|(_, last)| last == reader.index()))
    }

    /// Concat operands (and the in-place chains feeding them) placed in the concat's buffer,
    /// walking backwards so that nested concats nest their slices.
    fn concat_slices(&mut self) {
        for (id, node) in self.graph.iter().collect::<Vec<_>>().into_iter().rev() {
            if node.op != Op::ConcatInPlace {
                continue;
            }
            let (buffer, base) = match self.slot[id.index()] {
                Some(slot) => slot,
                None => {
                    let b = self.new_buffer(id);
                    self.join(id, b, 0, Alias::Own);
                    (b, 0)
                }
            };
            let mut offset = base;
            for &x in &node.inputs {
                let channels = self.graph[x].shape.channels();
                let ok = self.may_take_slot(x, id, false);
                debug_assert!(ok, "the verifier guarantees every concat_in_place operand its slice");
                if ok {
                    // The operand, then the operands it is computed in place over.
                    let mut chain = vec![x];
                    while let Some(y) = self.in_place_predecessor(*chain.last().expect("non-empty")) {
                        chain.push(y);
                    }
                    self.place_chain(&chain, buffer, offset, id);
                }
                offset += channels;
            }
        }
    }

    /// Places a slice chain in `buffer` at channel `offset`: `chain[0]` is the concat operand,
    /// each next node the operand the previous one is computed in place over. The earliest
    /// (last) one is the slice; each later one is written over it.
    fn place_chain(&mut self, chain: &[NodeId], buffer: usize, offset: usize, concat: NodeId) {
        for (k, &x) in chain.iter().enumerate() {
            let alias = match chain.get(k + 1) {
                Some(&y) => Alias::InPlace(Value::Output(y)),
                None => Alias::Slice(Value::Output(concat)),
            };
            self.join(x, buffer, offset, alias);
        }
    }

    /// For a slice chain: the operand `x` is computed in place over, if it may be.
    fn in_place_predecessor(&self, x: NodeId) -> Option<NodeId> {
        if !self.options.in_place {
            return None;
        }
        let node = &self.graph[x];
        in_place_operands(&node.op, node.inputs.len())
            .into_iter()
            .map(|k| node.inputs[k])
            .find(|&y| self.graph[y].shape == node.shape && self.may_take_slot(y, x, true))
    }

    /// Every output without a slot yet: a view, in place, or a new buffer.
    fn assign_outputs(&mut self) {
        for (id, node) in self.graph.iter() {
            if node.op == Op::Input || self.slot[id.index()].is_some() {
                continue;
            }
            if self.options.in_place {
                if node.op == Op::Flatten {
                    let x = node.inputs[0];
                    if let Some((b, 0)) = self.slot[x.index()]
                        && self.buffers[b].size == align(self.bytes(x))
                        && self.bytes(x) == self.bytes(id)
                    {
                        self.join(id, b, 0, Alias::View(Value::Output(x)));
                        continue;
                    }
                }
                let candidates = in_place_operands(&node.op, node.inputs.len());
                // An operand also read at a position that is not elementwise (a fused node's
                // base reading its own residual, `conv(x) + x`) must survive the node.
                let elementwise_only =
                    |x: NodeId| node.inputs.iter().enumerate().all(|(k, &i)| i != x || candidates.contains(&k));
                let found = candidates
                    .iter()
                    .map(|&k| node.inputs[k])
                    .find(|&x| elementwise_only(x) && self.may_overwrite(id, x));
                if let Some(x) = found {
                    let (b, _) = self.slot[x.index()].expect("checked");
                    self.join(id, b, 0, Alias::InPlace(Value::Output(x)));
                    continue;
                }
            }
            let b = self.new_buffer(id);
            self.join(id, b, 0, Alias::Own);
        }
    }

    /// Whether node `id` may write its output over operand `x`'s buffer: the buffer is exactly
    /// `x`'s size, holds no model output, and nothing in it is alive after this step.
    fn may_overwrite(&self, id: NodeId, x: NodeId) -> bool {
        let Some((b, 0)) = self.slot[x.index()] else { return false };
        let buffer = &self.buffers[b];
        buffer.size == align(self.bytes(x))
            && self.bytes(x) == self.bytes(id)
            && buffer.last <= id.index()
            && !buffer.values.iter().any(|v| self.is_output[v.node().index()])
    }

    fn output_placements(&self) -> Vec<Placement> {
        let mut out = Vec::new();
        for (id, node) in self.graph.iter() {
            let Some((buffer, channel_offset)) = self.slot[id.index()] else { continue };
            let (first, last) = self.life[id.index()].expect("placed");
            let per_channel =
                if node.shape.rank() > 1 { self.bytes(id) / node.shape.channels() as u64 } else { ELEMENT_BYTES };
            out.push(Placement {
                value: Value::Output(id),
                buffer,
                channel_offset,
                byte_offset: channel_offset as u64 * per_channel,
                bytes: self.bytes(id),
                first,
                last,
                alias: self.alias[id.index()],
            });
        }
        out
    }

    /// Gradients and dropout masks, each in its own buffer.
    fn training_values(&mut self) -> Vec<Placement> {
        let graph = self.graph;
        // Which outputs need a gradient: a trainable parameter at or above the node.
        let mut needs = vec![false; self.n];
        for (id, node) in graph.iter() {
            if node.op == Op::Input {
                continue;
            }
            let own = graph.params(id).iter().any(|p| p.trainable());
            needs[id.index()] = own || node.inputs.iter().any(|i| needs[i.index()]);
        }
        let mut out = Vec::new();
        for (id, node) in graph.iter() {
            if needs[id.index()] {
                let latest_user = self.users[id.index()].iter().map(|u| u.index()).max();
                let mut first = latest_user.map_or(self.n, |u| self.backward_step(NodeId::from_index(u)));
                if self.is_output[id.index()] {
                    first = self.n;
                }
                out.push(self.own_value(Value::Grad(id), self.bytes(id), first, self.backward_step(id)));
            }
            if saved_for_backward(&node.op, self.options.mode).mask {
                out.push(self.own_value(Value::Mask(id), self.bytes(id), id.index(), self.backward_step(id)));
            }
        }
        out
    }

    fn own_value(&mut self, value: Value, bytes: u64, first: usize, last: usize) -> Placement {
        self.buffers.push(Buffer { offset: 0, size: align(bytes), first, last, values: vec![value] });
        let buffer = self.buffers.len() - 1;
        Placement { value, buffer, channel_offset: 0, byte_offset: 0, bytes, first, last, alias: Alias::Own }
    }

    /// Greedy by size: returns the arena size.
    fn offsets(&mut self) -> u64 {
        let mut order: Vec<usize> = (0..self.buffers.len()).collect();
        order.sort_by_key(|&k| (std::cmp::Reverse(self.buffers[k].size), self.buffers[k].first, k));
        let mut placed: Vec<usize> = Vec::new();
        let mut arena = 0;
        for k in order {
            let (size, first, last) = (self.buffers[k].size, self.buffers[k].first, self.buffers[k].last);
            let mut busy: Vec<(u64, u64)> = placed
                .iter()
                .map(|&j| &self.buffers[j])
                .filter(|b| b.first <= last && first <= b.last)
                .map(|b| (b.offset, b.offset + b.size))
                .collect();
            busy.sort();
            let mut offset = 0;
            for (start, end) in busy {
                if start >= offset + size {
                    break;
                }
                offset = offset.max(end);
            }
            self.buffers[k].offset = offset;
            arena = arena.max(offset + size);
            placed.push(k);
        }
        arena
    }
}
