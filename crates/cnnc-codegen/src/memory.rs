//! Where each value of an entry lives in the generated module's memory, in floats: the plan's
//! arena (the batched region and the whole-batch region, kept as two slices so that a kernel
//! can read activations while it writes a gradient), then after the batched region the model
//! inputs (copied in, since kernels read only the arena) and each node's temporaries.

use crate::error::CodegenError;
use cnnc_ir::facts::{ValueKind, value_kind};
use cnnc_ir::plan::{Plan, Region, Storage};
use cnnc_ir::{Layout, NodeId, Op, TrainOp};

/// A batched value: image `i` of a batch of `n` at `buf * n + off + i * stride` floats.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Place {
    pub buf: usize,
    pub off: usize,
    pub stride: usize,
    pub c: usize,
    pub h: usize,
    pub w: usize,
    pub layout: Layout,
    /// The last step (node index) at which any value of its buffer is alive; `usize::MAX`
    /// for the inputs and temporaries. A depth-first prefix that ends before it holds the
    /// buffer in one image's memory (`cnnc_ir::depth`).
    pub last: usize,
}

impl Place {
    /// The same memory seen with other dimensions (a plain value as a flat vector).
    pub fn with_dims(self, c: usize, h: usize, w: usize) -> Place {
        Place { c, h, w, ..self }
    }
}

/// Where a node's value is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Value {
    Batched(Place),
    /// Floats `start .. start + len` of the whole-batch region.
    Whole {
        start: usize,
        len: usize,
    },
    /// The caller's class labels (one `u32` per image).
    Labels {
        classes: usize,
    },
    /// An effect: no value.
    Nothing,
}

/// The memory of one entry.
pub struct Memory {
    pub values: Vec<Value>,
    /// Floats per image of the plan's batched region and the inputs: where temporaries start.
    pub temp_base: usize,
    /// Floats of the whole-batch region.
    pub whole: usize,
}

/// `(c, h, w)` of a batched value's logical shape (`[F]` as `F x 1 x 1`).
pub fn chw(dims: &[usize]) -> (usize, usize, usize) {
    match *dims {
        [c, h, w] => (c, h, w),
        [f] => (f, 1, 1),
        _ => (dims.iter().product(), 1, 1),
    }
}

fn floats(bytes: u64) -> Result<usize, CodegenError> {
    if !bytes.is_multiple_of(4) {
        return Err(CodegenError::Plan(format!("an offset of {bytes} bytes is not whole floats")));
    }
    usize::try_from(bytes / 4).map_err(|_| CodegenError::Plan(format!("an offset of {bytes} bytes")))
}

/// Places every value of `plan`.
pub fn layout(plan: &Plan) -> Result<Memory, CodegenError> {
    let graph = &plan.graph;
    let m = &plan.memory;
    if m.storage.len() != graph.len() || plan.layouts.len() != graph.len() {
        return Err(CodegenError::Plan("the plan's tables do not cover its graph".into()));
    }
    let mut cursor = floats(m.per_image_bytes)?;
    let buffer_last = cnnc_ir::depth::buffer_last(plan);
    let mut values = Vec::with_capacity(graph.len());
    for (id, node) in graph.iter() {
        let (c, h, w) = chw(&node.shape.0);
        let value = match &m.storage[id.index()] {
            Storage::Nothing => Value::Nothing,
            Storage::Input(_) => {
                if let Op::Train(TrainOp::Labels { classes }) = node.op {
                    Value::Labels { classes }
                } else {
                    let stride = (c * h * w).div_ceil(16) * 16;
                    let place = Place { buf: cursor, off: 0, stride, c, h, w, layout: Layout::Plain, last: usize::MAX };
                    cursor += stride;
                    Value::Batched(place)
                }
            }
            Storage::Arena(p) => {
                let buffer = m
                    .buffers
                    .get(p.buffer)
                    .ok_or_else(|| CodegenError::Plan(format!("{id} is in a buffer that does not exist")))?;
                match buffer.region {
                    Region::WholeBatch => {
                        let start = floats(buffer.offset + p.image_offset)?;
                        Value::Whole { start, len: floats(p.bytes)? }
                    }
                    Region::Batched => {
                        if value_kind(&node.op) != ValueKind::Batched {
                            return Err(CodegenError::Plan(format!("{id} is not batched but is placed per image")));
                        }
                        Value::Batched(Place {
                            buf: floats(buffer.offset)?,
                            off: floats(p.image_offset)?,
                            stride: floats(p.batch_stride)?,
                            c,
                            h,
                            w,
                            layout: plan.layouts[id.index()],
                            last: buffer_last[p.buffer],
                        })
                    }
                }
            }
        };
        values.push(value);
    }
    Ok(Memory { values, temp_base: cursor, whole: floats(m.whole_batch_bytes)? })
}

impl Memory {
    pub fn batched(&self, id: NodeId) -> Result<Place, CodegenError> {
        match self.values[id.index()] {
            Value::Batched(p) => Ok(p),
            other => Err(CodegenError::Plan(format!("{id} should be a batched value, it is {other:?}"))),
        }
    }

    pub fn whole(&self, id: NodeId) -> Result<(usize, usize), CodegenError> {
        match self.values[id.index()] {
            Value::Whole { start, len } => Ok((start, len)),
            other => Err(CodegenError::Plan(format!("{id} should be a whole-batch value, it is {other:?}"))),
        }
    }
}

/// The blocked stems of the plan ([`cnnc_ir::stem`]) applied to the module's memory: each
/// chain's values made blocked and, where the stem allows it, the last one placed where its
/// reorder's value is.
///
/// Returns the reorders made redundant.
pub fn fuse_blocked_stems(plan: &Plan, mem: &mut Memory) -> Vec<NodeId> {
    let mut elided = Vec::new();
    for stem in cnnc_ir::stem::blocked_stems(plan) {
        let Value::Batched(target) = mem.values[stem.reorder.index()] else { continue };
        for &id in &stem.chain {
            if let Value::Batched(p) = &mut mem.values[id.index()] {
                p.layout = Layout::Blocked16;
            }
        }
        if stem.into_reorder {
            let last = stem.chain[stem.chain.len() - 1];
            mem.values[last.index()] = Value::Batched(target);
            elided.push(stem.reorder);
        }
    }
    elided
}
