//! The execution plan: the one artifact between the passes and every back end.
//!
//! A [`Plan`] holds the optimised graph (inference or training) and, in side tables indexed by
//! `NodeId`, everything a back end needs to run it without re-deriving anything: each value's
//! physical layout and where it lives in the workspace arena, every parameter's stored layout,
//! and the weight transforms to run once when weights are loaded. The passes build it
//! (`cnnc_passes::plan`); the interpreter's physical mode runs it exactly, so a wrong offset,
//! a wrong layout or an overlap the planner should not have allowed changes numbers in a test.
//!
//! # The arena
//!
//! For a batch of `N` images the workspace is one byte array of
//! [`Plan::workspace_bytes`]`(N)` bytes: first the whole-batch region (parameter gradients,
//! batch statistics, the loss), [`Memory::whole_batch_bytes`] long whatever `N`, then the
//! batched region, [`Memory::per_image_bytes`] times `N`. A batched buffer holds its tensor
//! batch-first, so image `n` of value `v` starts at
//!
//! ```text
//! whole_batch_bytes + buffer.offset * N + n * place.batch_stride + place.image_offset
//! ```
//!
//! ([`Plan::image_offset`]). The batch stride is the buffer's per-image size, which is larger
//! than the value's own when the value is a channel slice of a concatenation (or a channel view
//! of a gradient): such a value is contiguous within each image but not across images. Within
//! an image, elements follow the value's layout ([`crate::layout::element_offset`]). Every
//! offset and stride is a multiple of [`ALIGN`] bytes except slice offsets, which are whole
//! channels.

use crate::graph::{Graph, NodeId};
use crate::layout::WeightLayout;
use crate::op::Layout;
use crate::param::ParamRole;
use std::fmt::{self, Write};

/// Bytes per element (f32).
pub const ELEMENT_BYTES: u64 = 4;
/// Every buffer starts on this boundary (per image, hence for every batch size).
pub const ALIGN: u64 = 64;

/// Which part of the arena a buffer is in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Region {
    /// One value for the whole batch, at a fixed offset.
    WholeBatch,
    /// One tensor per image, offsets and sizes scaled by the batch.
    Batched,
}

/// How a value came to share its buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Alias {
    /// The value owns its buffer.
    Own,
    /// Written over the given node's value, which is dead from this step on.
    InPlace(NodeId),
    /// A channel slice of the given concatenation's value, written there by its producer.
    Slice(NodeId),
    /// The given node's bytes (or some of its channels), read-only: flatten, reshape, slice.
    View(NodeId),
}

/// Where one value lives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Place {
    pub buffer: usize,
    /// Bytes from the start of an image's part of the buffer to the value (whole channels of
    /// a concat slice or a channel view); 0 otherwise.
    pub image_offset: u64,
    /// Bytes from one image of the value to the next (the buffer's per-image size); 0 in the
    /// whole-batch region.
    pub batch_stride: u64,
    /// The value's own size as stored (layout padding included): per image, or in all for a
    /// whole-batch value.
    pub bytes: u64,
    /// First and last step (node index) the value is alive, inclusive.
    pub first: usize,
    pub last: usize,
    pub alias: Alias,
}

/// Where a node's value is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Storage {
    /// A model input: the caller's buffer for `graph.inputs[k]`.
    Input(usize),
    /// In the workspace arena.
    Arena(Place),
    /// An effect: no value.
    Nothing,
}

/// A region of the arena that holds one or more values whose lifetimes allow it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Buffer {
    pub region: Region,
    /// Offset in its region: bytes per image for a batched buffer, bytes for a whole-batch one.
    pub offset: u64,
    /// Size, in the same unit (a multiple of [`ALIGN`]).
    pub size: u64,
    pub first: usize,
    pub last: usize,
    /// The values it holds, the one it was made for first.
    pub values: Vec<NodeId>,
}

/// The memory plan: the arena's buffers and every value's place (a side table by node).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Memory {
    pub buffers: Vec<Buffer>,
    /// Indexed by `NodeId::index()`.
    pub storage: Vec<Storage>,
    pub whole_batch_bytes: u64,
    pub per_image_bytes: u64,
    /// The sum of every placed value's own size (batched per image, whole-batch in all): what
    /// one buffer per tensor would need.
    pub unplanned_per_image: u64,
    pub unplanned_whole_batch: u64,
}

impl Memory {
    pub fn workspace_bytes(&self, batch: usize) -> u64 {
        self.whole_batch_bytes + self.per_image_bytes * batch as u64
    }

    pub fn unplanned_bytes(&self, batch: usize) -> u64 {
        self.unplanned_whole_batch + self.unplanned_per_image * batch as u64
    }

    pub fn place(&self, id: NodeId) -> Option<&Place> {
        match self.storage.get(id.index()) {
            Some(Storage::Arena(place)) => Some(place),
            Some(Storage::Input(_) | Storage::Nothing) | None => None,
        }
    }

    /// The pairs `(node, operand)` where the node's value is written over the operand's.
    pub fn in_place(&self) -> Vec<(NodeId, NodeId)> {
        self.aliases(|a| if let Alias::InPlace(of) = a { Some(of) } else { None })
    }

    /// The concatenation operands written into their concatenation's buffer:
    /// `(operand, concat)`.
    pub fn slices(&self) -> Vec<(NodeId, NodeId)> {
        self.aliases(|a| if let Alias::Slice(of) = a { Some(of) } else { None })
    }

    /// The views and what they view: `(view, viewed)`.
    pub fn views(&self) -> Vec<(NodeId, NodeId)> {
        self.aliases(|a| if let Alias::View(of) = a { Some(of) } else { None })
    }

    fn aliases(&self, of: impl Fn(Alias) -> Option<NodeId>) -> Vec<(NodeId, NodeId)> {
        (0..self.storage.len())
            .map(NodeId::from_index)
            .filter_map(|id| Some((id, of(self.place(id)?.alias)?)))
            .collect()
    }
}

/// One parameter, buffer or optimiser state tensor of the planned graph, as the back end
/// stores it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParamPlan {
    pub name: String,
    /// Logical dimensions (as in a checkpoint).
    pub dims: Vec<usize>,
    pub role: ParamRole,
    /// The packed layout it is stored in (the weight of a product on blocked data, and that
    /// weight's optimiser state and gradient); `None`: as in a checkpoint, row-major.
    pub layout: Option<WeightLayout>,
    /// Convolution groups (for the grouped layouts); 1 otherwise.
    pub groups: usize,
}

impl ParamPlan {
    /// Elements as stored.
    pub fn stored_len(&self) -> usize {
        match self.layout {
            Some(layout) => layout.stored_len(&self.dims, self.groups),
            None => self.dims.iter().product(),
        }
    }
}

/// A change to the weights that the plan relies on, run once when they are loaded, in order
/// (`cnnc_runtime::apply_transforms` is the one implementation).
#[derive(Clone, Debug, PartialEq)]
pub enum WeightTransform {
    /// Batch norm `bn` folded into the convolution or matrix product `layer`:
    /// `w' = w * s`, `b' = (b - mean) * s + beta` with `s = gamma / sqrt(var + eps)`; `layer`
    /// gains a bias if it had none and `bn`'s tensors disappear.
    FoldBn { layer: String, bn: String, eps: f64 },
    /// The parameter is stored in a packed layout instead of its checkpoint layout.
    Pack { param: String, layout: WeightLayout, groups: usize },
}

/// What a training graph's outputs are, position by position (see `cnnc_passes::grad`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OutputRole {
    /// A model output (`k`-th of the source graph).
    Model(usize),
    /// The loss, a whole-batch scalar.
    Loss,
    /// The gradient of a parameter, by its full name.
    ParamGrad(String),
    /// The gradient of the `k`-th model input.
    InputGrad(usize),
    /// An effect (an optimiser update or a running-statistics update), by node name.
    Update(String),
}

/// The execution plan of one graph.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    pub graph: Graph,
    /// What each of `graph.outputs` is.
    pub outputs: Vec<OutputRole>,
    /// Each node's layout, indexed by `NodeId::index()` (whole-batch values and effects are
    /// plain).
    pub layouts: Vec<Layout>,
    pub memory: Memory,
    /// Every tensor the graph's nodes own, sorted by name.
    pub params: Vec<ParamPlan>,
    /// What to do to checkpoint weights before they are used, in order.
    pub transforms: Vec<WeightTransform>,
}

impl Plan {
    pub fn workspace_bytes(&self, batch: usize) -> u64 {
        self.memory.workspace_bytes(batch)
    }

    pub fn unplanned_bytes(&self, batch: usize) -> u64 {
        self.memory.unplanned_bytes(batch)
    }

    /// The byte offset in the arena of image `n` of a value in the arena (any image of a
    /// whole-batch value gives its start), for a batch of `batch`.
    pub fn image_offset(&self, id: NodeId, batch: usize, n: usize) -> Option<u64> {
        let place = self.memory.place(id)?;
        let buffer = &self.memory.buffers[place.buffer];
        Some(match buffer.region {
            Region::WholeBatch => buffer.offset + place.image_offset,
            Region::Batched => {
                self.memory.whole_batch_bytes
                    + buffer.offset * batch as u64
                    + n as u64 * place.batch_stride
                    + place.image_offset
            }
        })
    }

    /// The plan of a parameter, by full name.
    pub fn param(&self, name: &str) -> Option<&ParamPlan> {
        let k = self.params.binary_search_by(|p| p.name.as_str().cmp(name)).ok()?;
        Some(&self.params[k])
    }

    /// The stable text form pinned by snapshot tests: the totals, one line per node (layout
    /// and place), the buffers, the packed parameters and the weight transforms.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = self.write(&mut out);
        out
    }

    fn write(&self, out: &mut String) -> fmt::Result {
        let m = &self.memory;
        writeln!(
            out,
            "plan {}: workspace {} B per image + {} B whole-batch (unplanned {} + {})",
            self.graph.name.escape_debug(),
            m.per_image_bytes,
            m.whole_batch_bytes,
            m.unplanned_per_image,
            m.unplanned_whole_batch
        )?;
        for (id, node) in self.graph.iter() {
            write!(out, "  {id} {}:", node.name.escape_debug())?;
            match &m.storage[id.index()] {
                Storage::Input(k) => write!(out, " input {k}")?,
                Storage::Nothing => write!(out, " effect")?,
                Storage::Arena(p) => {
                    let what = match m.buffers[p.buffer].region {
                        Region::Batched => self.layouts[id.index()].name(),
                        Region::WholeBatch => "whole-batch",
                    };
                    write!(out, " {what} buf{}", p.buffer)?;
                    if p.image_offset != 0 {
                        write!(out, "+{}", p.image_offset)?;
                    }
                    write!(out, " {}B [{}..={}]", p.bytes, p.first, p.last)?;
                    match p.alias {
                        Alias::Own => {}
                        Alias::InPlace(of) => write!(out, " over {of}")?,
                        Alias::Slice(of) => write!(out, " slice of {of}")?,
                        Alias::View(of) => write!(out, " view of {of}")?,
                    }
                }
            }
            writeln!(out)?;
        }
        for (k, b) in m.buffers.iter().enumerate() {
            let region = match b.region {
                Region::WholeBatch => "whole-batch",
                Region::Batched => "per image",
            };
            writeln!(out, "  buf{k}: @{} +{} {region} [{}..={}]", b.offset, b.size, b.first, b.last)?;
        }
        for p in &self.params {
            if let Some(layout) = p.layout {
                writeln!(out, "  param {} {:?} {}", p.name.escape_debug(), p.dims, layout.name())?;
            }
        }
        for t in &self.transforms {
            match t {
                WeightTransform::FoldBn { layer, bn, eps } => {
                    writeln!(out, "  transform fold_bn {} <- {} (eps {eps})", layer.escape_debug(), bn.escape_debug())?
                }
                WeightTransform::Pack { param, layout, .. } => {
                    writeln!(out, "  transform pack {} {}", param.escape_debug(), layout.name())?
                }
            }
        }
        for (k, role) in self.outputs.iter().enumerate() {
            let what = match role {
                OutputRole::Model(i) => format!("output {i}"),
                OutputRole::Loss => "loss".into(),
                OutputRole::ParamGrad(name) => format!("gradient of {}", name.escape_debug()),
                OutputRole::InputGrad(i) => format!("gradient of input {i}"),
                OutputRole::Update(name) => format!("update {}", name.escape_debug()),
            };
            writeln!(out, "  return {k}: {} {what}", self.graph.outputs[k])?;
        }
        Ok(())
    }
}
