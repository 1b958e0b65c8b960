//! The memory planner: where every value of a graph lives in the workspace arena.
//!
//! # Model
//!
//! Nodes run one per *step*, in graph order, whatever the graph: an inference graph, or a
//! training graph whose backward and update ops follow its forward ones (`crate::grad`). A
//! value lives from its node's step to its last reader's, and to the end if it is a graph
//! output. Model inputs (and labels) are the caller's; effects have no value; every other node
//! gets a [`Place`] in one of two regions (see [`cnnc_ir::plan`]): batched values per image,
//! whole-batch values (parameter gradients, batch statistics, the loss) once. Sizes are f32
//! bytes as stored (a value in `nChw16c` includes its channel padding), each buffer rounded up
//! to [`ALIGN`] bytes, so a batched plan made once scales to any batch size.
//!
//! # Buffers
//!
//! Values are grouped into buffers, then buffers get offsets:
//!
//! 1. **Concat in place**: each operand of a `concat_in_place` (made by [`crate::concat`]; the
//!    verifier guarantees the concat is its only reader, it appears once and is not a model
//!    input or output) is written straight into its channel slice of the concat's buffer.
//!    Through in-place elementwise nodes the slice reaches back to their operand (`conv ->
//!    relu -> concat`: the conv writes into the slice and the relu runs in place there). A
//!    `concat_in_place` that is itself such an operand nests its slices inside the outer one.
//! 2. **Views** ([`cnnc_ir::facts::view`]): `flatten` and `reshape` share their operand's
//!    bytes; a channel `slice` (the backward of a concat) is those channels of its operand
//!    (with the operand's batch stride). No data moves.
//! 3. **In place** ([`PlanOptions::in_place`]): a node that reads an operand elementwise
//!    ([`cnnc_ir::facts::elementwise_operands`]) writes over it when its buffer is exactly the
//!    operand's size, holds no graph output, and holds nothing alive after this step.
//! 4. Every other value owns a buffer.
//!
//! Offsets, per region: greedy by size (largest buffer first, each at the lowest offset where
//! it overlaps no placed buffer whose lifetime intersects its own), which packs well; a graph
//! of more than [`GREEDY_LIMIT`] buffers, where that search would be quadratic, gets a best-fit
//! allocation in time order instead (as `malloc` would), linear-logarithmic whatever the graph.
//! Lifetimes are inclusive step ranges, so a node's operands and output never share memory
//! unless the node runs in place.
//!
//! [`check`] re-checks a plan independently of how it was made.

use cnnc_ir::facts::{ValueKind, View, elementwise_operands, is_source, value_kind, view};
use cnnc_ir::plan::{ALIGN, Alias, Buffer, ELEMENT_BYTES, Memory, Place, Region, Storage};
use cnnc_ir::{Graph, NodeId, Op};
use std::collections::{BTreeMap, BTreeSet};

/// Above this many buffers in a region, offsets are assigned best-fit in time order.
pub const GREEDY_LIMIT: usize = 4096;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PlanOptions {
    /// Let elementwise nodes overwrite an operand that dies there, and views share bytes.
    /// (The operands of `concat_in_place` are always placed in its slices.)
    pub in_place: bool,
}

impl Default for PlanOptions {
    fn default() -> PlanOptions {
        PlanOptions { in_place: true }
    }
}

/// Plans `graph`'s memory, given the bytes each node's value takes as stored (layout padding
/// included) (per image when batched, in all when whole-batch).
pub fn plan_memory(graph: &Graph, sizes: &[u64], options: &PlanOptions) -> Memory {
    Planner::new(graph, sizes, *options).run()
}

fn align(bytes: u64) -> u64 {
    bytes.div_ceil(ALIGN) * ALIGN
}

/// Where a value is while planning: its buffer and byte offset within one image of it.
#[derive(Clone, Copy, Debug)]
struct Slot {
    buffer: usize,
    image_offset: u64,
}

struct Planner<'g> {
    graph: &'g Graph,
    sizes: &'g [u64],
    options: PlanOptions,
    users: Vec<Vec<NodeId>>,
    /// How many operand slots read each value, over every reader (`add(x, x)` counts 2).
    uses: Vec<usize>,
    is_output: Vec<bool>,
    /// Per node: `(first, last)` step of its value (None: no value in the arena).
    life: Vec<Option<(usize, usize)>>,
    slot: Vec<Option<Slot>>,
    alias: Vec<Alias>,
    buffers: Vec<Buffer>,
    /// Per buffer: whether it holds a graph output (kept beside `buffers` so that asking
    /// costs no scan of a long in-place chain's values).
    holds_output: Vec<bool>,
}

impl<'g> Planner<'g> {
    fn new(graph: &'g Graph, sizes: &'g [u64], options: PlanOptions) -> Planner<'g> {
        let n = graph.len();
        let mut is_output = vec![false; n];
        for o in &graph.outputs {
            is_output[o.index()] = true;
        }
        let mut uses = vec![0; n];
        for (_, node) in graph.iter() {
            for i in &node.inputs {
                uses[i.index()] += 1;
            }
        }
        Planner {
            graph,
            sizes,
            options,
            users: graph.users(),
            uses,
            is_output,
            life: vec![None; n],
            slot: vec![None; n],
            alias: vec![Alias::Own; n],
            buffers: Vec::new(),
            holds_output: Vec::new(),
        }
    }

    fn region(&self, id: NodeId) -> Region {
        match value_kind(&self.graph[id].op) {
            ValueKind::WholeBatch => Region::WholeBatch,
            ValueKind::Batched | ValueKind::Effect => Region::Batched,
        }
    }

    /// Stored bytes of a node's value: per image when batched, in all when whole-batch.
    fn bytes(&self, id: NodeId) -> u64 {
        self.sizes[id.index()]
    }

    /// Bytes of one channel of a batched value's image (one feature, for a vector): the same
    /// in `nchw` and in `nChw16c` (where a block of 16 channels takes 16 times as much), so a
    /// slice starting at channel `c` (a whole block, when blocked) starts `c` times this in.
    fn channel_bytes(&self, id: NodeId) -> u64 {
        let shape = &self.graph[id].shape;
        if shape.rank() > 1 { shape.elements() as u64 / shape.channels() as u64 * ELEMENT_BYTES } else { ELEMENT_BYTES }
    }

    fn run(mut self) -> Memory {
        self.lifetimes();
        self.concat_slices();
        self.assign();
        let storage = self.storage();
        let whole_batch_bytes = self.offsets(Region::WholeBatch);
        let per_image_bytes = self.offsets(Region::Batched);
        let (mut unplanned_per_image, mut unplanned_whole_batch) = (0, 0);
        for s in &storage {
            if let Storage::Arena(p) = s {
                match self.buffers[p.buffer].region {
                    Region::Batched => unplanned_per_image += p.bytes,
                    Region::WholeBatch => unplanned_whole_batch += p.bytes,
                }
            }
        }
        Memory {
            buffers: self.buffers,
            storage,
            whole_batch_bytes,
            per_image_bytes,
            unplanned_per_image,
            unplanned_whole_batch,
        }
    }

    fn lifetimes(&mut self) {
        let end = self.graph.len().saturating_sub(1);
        for (id, node) in self.graph.iter() {
            if is_source(&node.op) || value_kind(&node.op) == ValueKind::Effect {
                continue;
            }
            let mut last = self.users[id.index()].iter().map(|u| u.index()).max().unwrap_or(id.index());
            if self.is_output[id.index()] {
                last = end;
            }
            self.life[id.index()] = Some((id.index(), last.max(id.index())));
        }
    }

    fn new_buffer(&mut self, root: NodeId) -> usize {
        let (first, last) = self.life[root.index()].expect("placed values have lifetimes");
        let region = self.region(root);
        self.buffers.push(Buffer { region, offset: 0, size: align(self.bytes(root)), first, last, values: Vec::new() });
        self.holds_output.push(false);
        self.buffers.len() - 1
    }

    fn join(&mut self, id: NodeId, slot: Slot, alias: Alias) {
        let (first, last) = self.life[id.index()].expect("placed values have lifetimes");
        let b = &mut self.buffers[slot.buffer];
        b.first = b.first.min(first);
        b.last = b.last.max(last);
        b.values.push(id);
        self.holds_output[slot.buffer] |= self.is_output[id.index()];
        self.slot[id.index()] = Some(slot);
        self.alias[id.index()] = alias;
    }

    /// Whether `x` may take over a slot chosen for its only reader `reader`: not a model input
    /// or output, read by `reader` alone, once; when `reader` overwrites it, also dead there.
    fn may_take_slot(&self, x: NodeId, reader: NodeId, overwritten: bool) -> bool {
        self.life[x.index()].is_some()
            && !self.is_output[x.index()]
            && self.slot[x.index()].is_none()
            && self.users[x.index()] == [reader]
            && self.uses[x.index()] == 1
            && (!overwritten || self.life[x.index()].is_some_and(|(_, last)| last == reader.index()))
    }

    /// Concat operands (and the in-place chains feeding them) placed in the concat's buffer,
    /// walking backwards so that nested concats nest their slices.
    fn concat_slices(&mut self) {
        for index in (0..self.graph.len()).rev() {
            let id = NodeId::from_index(index);
            let node = &self.graph[id];
            if node.op != Op::ConcatInPlace {
                continue;
            }
            let base = match self.slot[id.index()] {
                Some(slot) => slot,
                None => {
                    let slot = Slot { buffer: self.new_buffer(id), image_offset: 0 };
                    self.join(id, slot, Alias::Own);
                    slot
                }
            };
            let mut offset = base.image_offset;
            for &x in &node.inputs {
                let ok = self.may_take_slot(x, id, false);
                debug_assert!(ok, "the verifier guarantees every concat_in_place operand its slice");
                if ok {
                    // The operand, then the operands it is computed in place over.
                    let mut chain = vec![x];
                    while let Some(y) = self.in_place_predecessor(*chain.last().expect("non-empty")) {
                        chain.push(y);
                    }
                    let slot = Slot { buffer: base.buffer, image_offset: offset };
                    for (k, &v) in chain.iter().enumerate() {
                        let alias = match chain.get(k + 1) {
                            Some(&y) => Alias::InPlace(y),
                            None => Alias::Slice(id),
                        };
                        self.join(v, slot, alias);
                    }
                }
                offset += self.bytes(x);
            }
        }
    }

    /// For a slice chain: the operand `x` is computed in place over, if it may be.
    fn in_place_predecessor(&self, x: NodeId) -> Option<NodeId> {
        if !self.options.in_place {
            return None;
        }
        let node = &self.graph[x];
        elementwise_operands(&node.op, node.inputs.len())
            .into_iter()
            .map(|k| node.inputs[k])
            .find(|&y| self.bytes(y) == self.bytes(x) && self.may_take_slot(y, x, true))
    }

    /// Every value without a slot yet: a view, in place, or a buffer of its own.
    fn assign(&mut self) {
        for (id, node) in self.graph.iter() {
            if self.life[id.index()].is_none() || self.slot[id.index()].is_some() {
                continue;
            }
            if self.options.in_place {
                if let Some((slot, alias)) = self.as_view(id) {
                    self.join(id, slot, alias);
                    continue;
                }
                let candidates = elementwise_operands(&node.op, node.inputs.len());
                // An operand also read at a position that is not elementwise (a fused node's
                // base reading its own residual, `conv(x) + x`) must survive the node. (An op
                // elementwise in every operand, a many-way `add`, needs no look.)
                let everywhere = candidates.len() == node.inputs.len();
                let elementwise_only = |x: NodeId| {
                    everywhere || node.inputs.iter().enumerate().all(|(k, &i)| i != x || candidates.contains(&k))
                };
                let found = candidates
                    .iter()
                    .map(|&k| node.inputs[k])
                    .find(|&x| elementwise_only(x) && self.may_overwrite(id, x));
                if let Some(x) = found {
                    let slot = self.slot[x.index()].expect("checked");
                    self.join(id, slot, Alias::InPlace(x));
                    continue;
                }
            }
            let slot = Slot { buffer: self.new_buffer(id), image_offset: 0 };
            self.join(id, slot, Alias::Own);
        }
    }

    /// A view's slot: its operand's bytes (or some of its channels), in the same region.
    fn as_view(&self, id: NodeId) -> Option<(Slot, Alias)> {
        let node = &self.graph[id];
        let kind = view(&node.op)?;
        let x = *node.inputs.first()?;
        let base = self.slot[x.index()]?;
        if self.region(x) != self.region(id) {
            return None;
        }
        let image_offset = match kind {
            View::Whole if self.bytes(x) == self.bytes(id) => base.image_offset,
            View::Whole => return None,
            View::Channels { start } => base.image_offset + start as u64 * self.channel_bytes(x),
        };
        Some((Slot { buffer: base.buffer, image_offset }, Alias::View(x)))
    }

    /// Whether node `id` may write its value over operand `x`'s buffer: the buffer is exactly
    /// `x`'s size, in the same region, holds no graph output, and nothing in it lives after
    /// this step.
    fn may_overwrite(&self, id: NodeId, x: NodeId) -> bool {
        let Some(Slot { buffer: b, image_offset: 0 }) = self.slot[x.index()] else { return false };
        let buffer = &self.buffers[b];
        buffer.region == self.region(id)
            && buffer.size == align(self.bytes(x))
            && self.bytes(x) == self.bytes(id)
            && buffer.last <= id.index()
            && !self.holds_output[b]
    }

    fn storage(&self) -> Vec<Storage> {
        let mut input_position = vec![None; self.graph.len()];
        for (k, &i) in self.graph.inputs.iter().enumerate() {
            input_position[i.index()] = Some(k);
        }
        self.graph
            .iter()
            .map(|(id, _)| {
                if let Some(k) = input_position[id.index()] {
                    return Storage::Input(k);
                }
                let (Some(slot), Some((first, last))) = (self.slot[id.index()], self.life[id.index()]) else {
                    return Storage::Nothing;
                };
                let buffer = &self.buffers[slot.buffer];
                let batch_stride = match buffer.region {
                    Region::Batched => buffer.size,
                    Region::WholeBatch => 0,
                };
                Storage::Arena(Place {
                    buffer: slot.buffer,
                    image_offset: slot.image_offset,
                    batch_stride,
                    bytes: self.bytes(id),
                    first,
                    last,
                    alias: self.alias[id.index()],
                })
            })
            .collect()
    }

    /// Assigns offsets to the region's buffers; returns the region's size.
    fn offsets(&mut self, region: Region) -> u64 {
        let members: Vec<usize> = (0..self.buffers.len()).filter(|&k| self.buffers[k].region == region).collect();
        if members.len() <= GREEDY_LIMIT { self.greedy_by_size(&members) } else { self.best_fit_in_time(&members) }
    }

    fn greedy_by_size(&mut self, members: &[usize]) -> u64 {
        let mut order = members.to_vec();
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
            busy.sort_unstable();
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

    /// A `malloc` run over the steps: at each step, the buffers starting there take the
    /// smallest free range that fits (or the top of the arena), then the buffers ending there
    /// return theirs, merged with free neighbours.
    fn best_fit_in_time(&mut self, members: &[usize]) -> u64 {
        let mut starts: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
        let mut ends: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
        for &k in members {
            starts.entry(self.buffers[k].first).or_default().push(k);
            ends.entry(self.buffers[k].last).or_default().push(k);
        }
        let steps: BTreeSet<usize> = starts.keys().chain(ends.keys()).copied().collect();
        let mut free = FreeList::default();
        for step in steps {
            for &k in starts.get(&step).into_iter().flatten() {
                self.buffers[k].offset = free.allocate(self.buffers[k].size);
            }
            for &k in ends.get(&step).into_iter().flatten() {
                free.release(self.buffers[k].offset, self.buffers[k].size);
            }
        }
        free.top
    }
}

/// Free ranges below the top of an arena, by offset and by size.
#[derive(Default)]
struct FreeList {
    by_offset: BTreeMap<u64, u64>,
    by_size: BTreeSet<(u64, u64)>,
    top: u64,
}

impl FreeList {
    fn allocate(&mut self, size: u64) -> u64 {
        if let Some(&(len, offset)) = self.by_size.range((size, 0)..).next() {
            self.remove(offset, len);
            if len > size {
                self.insert(offset + size, len - size);
            }
            return offset;
        }
        // Nothing fits: grow the arena, starting inside a free range that ends at the top.
        let start = match self.by_offset.iter().next_back() {
            Some((&offset, &len)) if offset + len == self.top => {
                self.remove(offset, len);
                offset
            }
            _ => self.top,
        };
        self.top = start + size;
        start
    }

    fn release(&mut self, mut offset: u64, mut size: u64) {
        if let Some((&before, &len)) = self.by_offset.range(..offset).next_back()
            && before + len == offset
        {
            self.remove(before, len);
            offset = before;
            size += len;
        }
        if let Some(&len) = self.by_offset.get(&(offset + size)) {
            self.remove(offset + size, len);
            size += len;
        }
        self.insert(offset, size);
    }

    fn insert(&mut self, offset: u64, len: u64) {
        self.by_offset.insert(offset, len);
        self.by_size.insert((len, offset));
    }

    fn remove(&mut self, offset: u64, len: u64) {
        self.by_offset.remove(&offset);
        self.by_size.remove(&(len, offset));
    }
}

/// Checks a memory plan independently of how it was made: every value lies inside its buffer
/// and every buffer inside its region, and no value's bytes are written while another value
/// that holds them is alive. Every value writes its bytes at its first step except views and
/// `concat_in_place` (whose operands wrote its channels); a write at step `t` may destroy only
/// the value it is computed in place over (or a view of it), whose last use must be `t`, and
/// only when its node reads that value elementwise. Values placed as views write nothing
/// (a view op that owns its buffer copies, and writes). Quadratic in the values: for tests.
pub fn check(graph: &Graph, memory: &Memory) -> Result<(), String> {
    let places: Vec<(NodeId, &Place)> = graph.ids().filter_map(|id| memory.place(id).map(|p| (id, p))).collect();
    for &(id, p) in &places {
        let b = &memory.buffers[p.buffer];
        let region_size = match b.region {
            Region::Batched => memory.per_image_bytes,
            Region::WholeBatch => memory.whole_batch_bytes,
        };
        if p.image_offset + p.bytes > b.size || b.offset + b.size > region_size {
            return Err(format!("{id} does not fit its buffer"));
        }
        if p.first > p.last || p.first < b.first || p.last > b.last {
            return Err(format!("{id} lives outside its buffer's lifetime"));
        }
    }
    for &(w, wp) in &places {
        if matches!(wp.alias, Alias::View(_)) || graph[w].op == Op::ConcatInPlace {
            continue;
        }
        let t = wp.first;
        for &(u, up) in &places {
            if u == w || up.first > t || up.last < t || !overlap(memory, wp, up) {
                continue;
            }
            let in_place = up.last == t && up.first < t && overwrites_legally(graph, memory, w, u);
            if !in_place {
                return Err(format!(
                    "{w} is written at step {t} over {u}, which is alive in steps {}..={}",
                    up.first, up.last
                ));
            }
        }
    }
    Ok(())
}

/// Whether two placed values share a byte for some batch size (see [`cnnc_ir::plan`]: values
/// of one buffer share its stride, so their ranges within an image decide; buffers of one
/// region overlap for every batch size exactly when their offset ranges do).
fn overlap(memory: &Memory, a: &Place, b: &Place) -> bool {
    let (ba, bb) = (&memory.buffers[a.buffer], &memory.buffers[b.buffer]);
    if ba.region != bb.region {
        return false;
    }
    if a.buffer == b.buffer {
        return a.image_offset < b.image_offset + b.bytes && b.image_offset < a.image_offset + a.bytes;
    }
    ba.offset < bb.offset + bb.size && bb.offset < ba.offset + ba.size
}

/// Whether `w`, written in place, may destroy `u`: `u` is the value `w` is computed over (or
/// that value is a view of `u`), and `w`'s node reads it only where it works elementwise.
fn overwrites_legally(graph: &Graph, memory: &Memory, w: NodeId, u: NodeId) -> bool {
    let Some(Alias::InPlace(over)) = memory.place(w).map(|p| p.alias) else { return false };
    let mut cur = over;
    let mut related = cur == u;
    while let (false, Some(Alias::View(up))) = (related, memory.place(cur).map(|p| p.alias)) {
        cur = up;
        related = cur == u;
    }
    let n = &graph[w];
    let elementwise = elementwise_operands(&n.op, n.inputs.len());
    related && n.inputs.iter().enumerate().all(|(k, &i)| i != over || elementwise.contains(&k))
}
