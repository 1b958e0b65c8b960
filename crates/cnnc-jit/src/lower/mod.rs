//! Lowering a plan to Cranelift IR: one or more kernel functions per node, in schedule order,
//! and a driver that runs them (each on the thread pool when it has several tasks).
//!
//! Everything is fixed at compile time except the run-time arguments: shapes, the batch,
//! every value's address (arena, parameters and inputs are allocated before lowering and never
//! move), table contents. Shapes are constants in the code; addresses are operands, read from
//! each kernel's operand block, so that kernels of equal layers share one function. Auxiliary
//! data (operand blocks, tables, per-node scratch, the run-time arguments) lives in one buffer,
//! allocated once its size is known; the driver passes each kernel its block's address. Every address range a kernel touches is checked here against its buffer before
//! the kernel is emitted ([`Lx::val`], [`Lx::param`], [`Lx::alloc`]).

mod conv;
mod eltwise;
mod gemm;
mod native;
mod native_bwd;
mod native_plain;
mod native_point;
mod norm;
mod pool;
mod pool_plain;
mod reduce;
mod softmax;
mod update;

use crate::codegen::{Pending, Shared};
use crate::emit::{Fx, I64, operand_block};
use crate::error::{JitError, plan_err};
use crate::exec::{Buffer, parallel_for_addr};
use crate::options::Mode;
use cnnc_ir::facts::param_name;
use cnnc_ir::layout::stored_elements;
use cnnc_ir::plan::{ParamPlan, Plan, Region, Storage};
use cnnc_ir::{FusedBase, Layout, NodeId, Op, TrainOp};
use cranelift_codegen::Context;
use cranelift_codegen::ir::{AbiParam, InstBuilder, UserFuncName};
use cranelift_frontend::{FunctionBuilder, FunctionBuilderContext};
use cranelift_jit::JITModule;
use cranelift_module::{FuncId, Linkage, Module};
use std::collections::BTreeMap;

/// Byte offsets in the auxiliary buffer of the run-time arguments.
pub(crate) const ARG_SEED: u64 = 0;
pub(crate) const ARG_STEP: u64 = 8;
pub(crate) const ARG_LR: u64 = 16;
/// The first free byte after the arguments.
const ARGS_END: usize = 64;

/// Where the buffers allocated before lowering are.
pub(crate) struct Addrs {
    pub arena: (u64, usize),
    pub params: (u64, usize),
    /// Byte offset in the parameter buffer and stored length of every parameter.
    pub param_at: BTreeMap<String, (usize, usize)>,
    pub inputs: Vec<(u64, usize)>,
}

/// A value as kernels address it: image `n` starts at `addr + n * bs`; `c x h x w` logical
/// (vectors and whole-batch values as `c x 1 x 1`); `n` images (1 for whole-batch values).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Val {
    pub addr: u64,
    pub bs: u64,
    pub layout: Layout,
    pub c: usize,
    pub h: usize,
    pub w: usize,
    pub n: usize,
    /// Bytes the value has as placed (per image when batched).
    pub bytes: u64,
}

impl Val {
    pub fn hw(&self) -> usize {
        self.h * self.w
    }

    /// Stored floats per image.
    pub fn stored(&self) -> usize {
        match self.layout {
            Layout::Plain => self.c * self.hw(),
            Layout::Blocked16 => self.c.div_ceil(16) * 16 * self.hw(),
        }
    }

    /// Float offset of logical `(c, y, x)` within an image.
    pub fn at(&self, c: usize, y: usize, x: usize) -> usize {
        match self.layout {
            Layout::Plain => (c * self.h + y) * self.w + x,
            Layout::Blocked16 => (((c / 16) * self.h + y) * self.w + x) * 16 + c % 16,
        }
    }

    /// Floats between horizontally adjacent elements of one channel.
    pub fn es(&self) -> i64 {
        match self.layout {
            Layout::Plain => 1,
            Layout::Blocked16 => 16,
        }
    }

    /// Address of image `n` (a value).
    pub fn image(&self, fx: &mut Fx, n: cranelift_codegen::ir::Value) -> cranelift_codegen::ir::Value {
        let base = fx.abs(self.addr);
        fx.index(base, n, self.bs as i64)
    }

    /// Float offset (a value) of channel `c`'s plane start within an image.
    pub fn chan_off(&self, fx: &mut Fx, c: cranelift_codegen::ir::Value) -> cranelift_codegen::ir::Value {
        match self.layout {
            Layout::Plain => fx.muli(c, self.hw() as i64),
            Layout::Blocked16 => {
                let blk = fx.b.ins().ushr_imm_s(c, 4);
                let lane = fx.b.ins().band_imm_s(c, 15);
                let o = fx.muli(blk, (self.hw() * 16) as i64);
                fx.add(o, lane)
            }
        }
    }

    /// Address of `(n, c, 0, 0)`.
    pub fn plane(
        &self,
        fx: &mut Fx,
        n: cranelift_codegen::ir::Value,
        c: cranelift_codegen::ir::Value,
    ) -> cranelift_codegen::ir::Value {
        let img = self.image(fx, n);
        let off = self.chan_off(fx, c);
        fx.index(img, off, 4)
    }
}

/// The lowering context of one plan.
pub(crate) struct Lx<'a> {
    pub plan: &'a Plan,
    pub batch: usize,
    pub threads: usize,
    /// Whether 3x3 convolutions may run as Winograd ([`crate::Options::winograd`]).
    pub winograd: bool,
    addrs: &'a Addrs,
    module: &'a mut JITModule,
    ctx: Context,
    fctx: FunctionBuilderContext,
    /// The auxiliary buffer's layout, grown by [`Lx::alloc`].
    pub aux: Aux,
    /// The schedule: each kernel's function, tasks, node and operand block (its offset in
    /// the auxiliary buffer).
    pub steps: Vec<(FuncId, usize, NodeId, u64)>,
    /// Adam updates: `(aux offset of their two per-step scalars, beta1, beta2)`.
    pub adam: Vec<(u64, f64, f64)>,
    /// The kernel mode.
    pub mode: Mode,
    /// The thread pool's address (native kernels run their tasks on it).
    pub pool: u64,
    /// Kernel plans and argument blocks the code points at.
    pub keep: Vec<Box<dyn std::any::Any + Send>>,
    /// Buffers of derived weights (written at load).
    pub extra: Vec<Buffer>,
    /// Buffers that the nodes of one use share, each node only during its own step, by use:
    /// their addresses (see `native_bwd::step_buffer`).
    pub step_buffers: std::collections::HashMap<&'static str, u64>,
    /// Point convolutions' live-tap weights copied by the forward pass, by parameter: the
    /// backward pass of the same step reads them (see `native_point.rs`).
    pub point_weights: std::collections::HashMap<String, u64>,
    pub repacks: Vec<Repack>,
    /// The buffer of each parameter in [`Lx::repacks`], by name: the steps of a depth-first
    /// prefix's images read the one copy.
    pub repacked: std::collections::HashMap<String, u64>,
    guard: bool,
    /// The node being lowered.
    node: NodeId,
    /// How each convolution pass was lowered, in lowering order.
    pub lowerings: Vec<ConvLowering>,
    /// Nodes whose values an earlier node's step already writes (see [`Lx::early_ok`]).
    pub written: std::collections::HashSet<NodeId>,
    /// Kernel functions built, compiled after lowering ([`crate::codegen`]), and all kernels
    /// built by their IR.
    pending: Vec<Pending>,
    shared: Shared,
    /// The plan's blocked stems ([`cnnc_ir::stem`]): values computed in `nChw16c` although the
    /// plan keeps them plain, and values written in another value's place.
    stem_blocked: std::collections::HashSet<NodeId>,
    stem_home: std::collections::HashMap<NodeId, NodeId>,
    /// While lowering a depth-first prefix: the one image batched values are addressed at.
    image: Option<usize>,
    /// Scratch of the depth-first prefix's steps, by node and by its place among the node's
    /// scratch requests: every image's step of a node reuses the first image's (see
    /// [`Lx::scratch`]).
    image_scratch: std::collections::HashMap<(NodeId, usize), u64>,
    scratch_asked: usize,
    /// The depth-first prefix's own buffers ([`cnnc_ir::depth::image_buffers`]), and the
    /// address and size of the one image's memory they share.
    image_local: std::collections::HashSet<usize>,
    image_arena: u64,
    image_bytes: usize,
}

/// Which code a convolution pass (forward, input gradient, weight gradient; a convolution
/// node's or a matrix product's on maps) was lowered to: the first lowering that fits the
/// pass's shapes, layouts and mode, fastest first. A pass that falls through to
/// [`Lowering::Loops`] is correct but slow, which only this record shows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Lowering {
    /// `cnnc-kernels` (native mode).
    Kernels,
    /// `cnnc-kernels`' Winograd convolution with output tiles of `tile x tile` pixels (native
    /// mode, inference).
    Winograd { tile: usize },
    /// Vectorised dot products in Cranelift IR (maps of one pixel: fc-shaped products).
    DotProducts,
    /// Register tiles in Cranelift IR (F32X4).
    Tiles,
    /// The general scalar loops.
    Loops,
}

impl Lowering {
    /// A short name for tables: `kernels`, `winograd2x2`, `winograd4x4`, `dot`, `tiles`, `loops`.
    pub fn keyword(self) -> &'static str {
        match self {
            Lowering::Kernels => "kernels",
            Lowering::Winograd { tile: 2 } => "winograd2x2",
            Lowering::Winograd { .. } => "winograd4x4",
            Lowering::DotProducts => "dot",
            Lowering::Tiles => "tiles",
            Lowering::Loops => "loops",
        }
    }
}

/// The pass of a convolution that a [`ConvLowering`] is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ConvPass {
    Forward,
    BackwardData,
    BackwardWeights,
}

/// One convolution pass's lowering: the node whose step runs it, which pass, and how.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvLowering {
    pub node: NodeId,
    pub pass: ConvPass,
    pub lowering: Lowering,
}

impl Lx<'_> {
    /// Records how the node being lowered runs a convolution pass.
    pub(crate) fn lowered(&mut self, pass: ConvPass, lowering: Lowering) {
        self.lowerings.push(ConvLowering { node: self.node, pass, lowering });
    }
}

/// What lowering produces.
pub(crate) struct Program {
    pub driver: FuncId,
    pub steps: Vec<(FuncId, usize, NodeId, u64)>,
    pub aux: Aux,
    pub adam: Vec<(u64, f64, f64)>,
    pub keep: Vec<Box<dyn std::any::Any + Send>>,
    pub extra: Vec<Buffer>,
    pub repacks: Vec<Repack>,
    /// The kernel functions, built but not compiled.
    pub pending: Vec<Pending>,
    /// Kernels that run an earlier kernel's function.
    pub shared: usize,
    pub lowerings: Vec<ConvLowering>,
}

/// The auxiliary buffer: its size and the tables in it; every other byte starts at zero
/// (scratch memory; the run-time arguments, written before each run). Kept sparse because
/// scratch is most of it: the buffer is allocated zeroed and only the tables are copied in.
#[derive(Default)]
pub(crate) struct Aux {
    pub len: usize,
    /// `(byte offset, contents)`, in allocation order.
    pub tables: Vec<(usize, Vec<u8>)>,
}

/// A weight the native kernels read in a form of their own: repacked from the parameter
/// into `extra[buffer]` whenever weights load.
pub(crate) struct Repack {
    pub param: String,
    pub buffer: usize,
    pub shape: cnnc_kernels::conv::ConvShape,
    pub kind: RepackKind,
}

/// What a [`Repack`] makes of its parameter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum RepackKind {
    /// `Oihw16o` from `oihw`, for plain-input convolutions.
    PlainInput,
    /// Winograd's transformed weights for output tiles of this size from `OIhw16i16o`
    /// (`cnnc_kernels::winograd`).
    Winograd(usize),
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn lower(
    plan: &Plan,
    batch: usize,
    threads: usize,
    mode: Mode,
    guard: bool,
    addrs: &Addrs,
    module: &mut JITModule,
    pool_addr: u64,
    // Nodes, from the first, that run depth first.
    depth_first: usize,
    winograd: bool,
) -> Result<Program, JitError> {
    let ctx = module.make_context();
    let mut lx = Lx {
        plan,
        batch,
        threads: threads.max(1),
        winograd,
        addrs,
        module,
        ctx,
        fctx: FunctionBuilderContext::new(),
        aux: Aux { len: ARGS_END, tables: Vec::new() },
        steps: Vec::new(),
        adam: Vec::new(),
        mode,
        pool: pool_addr,
        keep: Vec::new(),
        extra: Vec::new(),
        step_buffers: Default::default(),
        point_weights: Default::default(),
        repacks: Vec::new(),
        repacked: Default::default(),
        guard,
        node: NodeId::from_index(0),
        lowerings: Vec::new(),
        written: Default::default(),
        pending: Vec::new(),
        shared: Shared::default(),
        stem_blocked: Default::default(),
        stem_home: Default::default(),
        image: None,
        image_scratch: Default::default(),
        scratch_asked: 0,
        image_local: Default::default(),
        image_arena: 0,
        image_bytes: 0,
    };
    for stem in cnnc_ir::stem::blocked_stems(plan) {
        lx.stem_blocked.extend(stem.chain.iter().copied());
        if stem.into_reorder {
            lx.stem_home.insert(stem.chain[stem.chain.len() - 1], stem.reorder);
        }
    }
    // The depth-first prefix (`cnnc_ir::depth`): its nodes lowered once per image, in image
    // order, each image's steps addressing that image alone; the values only the prefix uses
    // in one image's memory. What the steps of one image record as written by an earlier
    // step holds for that image only.
    if depth_first > 0 {
        let (local, bytes) = cnnc_ir::depth::image_buffers(plan, depth_first);
        lx.image_local = local;
        lx.image_bytes = bytes.max(64) as usize;
        lx.image_arena = lx.buffer(lx.image_bytes)?.1;
    }
    let written = lx.written.clone();
    for image in 0..if depth_first > 0 { batch } else { 0 } {
        lx.image = Some(image);
        lx.written = written.clone();
        for (id, _) in plan.graph.iter().take(depth_first) {
            lx.node = id;
            lx.scratch_asked = 0;
            lower_node(&mut lx, id)?;
        }
    }
    lx.image = None;
    for (id, _) in plan.graph.iter().skip(depth_first) {
        lx.node = id;
        lower_node(&mut lx, id)?;
    }
    let driver = lx.driver(pool_addr)?;
    Ok(Program {
        driver,
        steps: lx.steps,
        aux: lx.aux,
        adam: lx.adam,
        keep: lx.keep,
        extra: lx.extra,
        repacks: lx.repacks,
        pending: lx.pending,
        shared: lx.shared.reused,
        lowerings: lx.lowerings,
    })
}

fn lower_node(lx: &mut Lx, id: NodeId) -> Result<(), JitError> {
    let node = &lx.plan.graph[id];
    match &node.op {
        Op::Input => Ok(()),
        Op::Conv(conv) => conv::forward(lx, id, conv, None, false),
        Op::Fused { base: FusedBase::Conv(conv), epilogue } => {
            conv::forward(lx, id, conv, epilogue.activation, epilogue.residual)
        }
        Op::Gemm(g) => gemm::forward(lx, id, g, None, false),
        Op::Fused { base: FusedBase::Gemm(g), epilogue } => {
            gemm::forward(lx, id, g, epilogue.activation, epilogue.residual)
        }
        Op::Fc(fc) => gemm::forward(lx, id, &cnnc_ir::Gemm { out: fc.out_features, bias: fc.bias }, None, false),
        Op::Pool { kind, window } => pool::forward(lx, id, *kind, &cnnc_ir::PoolGeometry::Window(*window), false),
        Op::GlobalPool(kind) => pool::forward(lx, id, *kind, &cnnc_ir::PoolGeometry::Global, false),
        Op::AdaptivePool { kind, output } => {
            pool::forward(lx, id, *kind, &cnnc_ir::PoolGeometry::Adaptive(*output), false)
        }
        Op::Spp { kind, levels } => {
            pool::forward(lx, id, *kind, &cnnc_ir::PoolGeometry::Pyramid(levels.clone()), false)
        }
        Op::Flatten => eltwise::view_or_copy(lx, id),
        Op::Activation(a) => eltwise::activation(lx, id, *a),
        Op::Prelu => eltwise::prelu(lx, id),
        Op::Softmax => softmax::forward(lx, id),
        Op::BatchNorm(bn) => norm::bn_inference(lx, id, bn),
        Op::Lrn(lrn) => norm::lrn(lx, id, lrn),
        Op::Dropout { .. } => eltwise::copy(lx, id),
        Op::Concat => eltwise::concat(lx, id),
        Op::Add => eltwise::add(lx, id),
        Op::Reorder(_) => eltwise::reorder(lx, id),
        Op::ConcatInPlace => Ok(()),
        Op::Train(t) => lower_train(lx, id, t),
    }
}

fn lower_train(lx: &mut Lx, id: NodeId, t: &TrainOp) -> Result<(), JitError> {
    match t {
        TrainOp::Labels { .. } => Ok(()),
        TrainOp::Loss(loss) => softmax::loss(lx, id, loss, false),
        TrainOp::LossGrad(loss) => softmax::loss(lx, id, loss, true),
        TrainOp::BnStats => reduce::bn_stats(lx, id),
        TrainOp::BnNormalize(bn) => norm::bn_normalize(lx, id, bn),
        TrainOp::BnRunningUpdate { bn, spatial } => update::bn_running(lx, id, bn, *spatial),
        TrainOp::DropoutMask { p } => eltwise::dropout_mask(lx, id, *p),
        TrainOp::Mul => eltwise::mul(lx, id),
        TrainOp::PoolArgmax(g) => pool::forward(lx, id, cnnc_ir::PoolKind::Max, g, true),
        TrainOp::PoolBackward { kind, geometry, input } => pool::backward(lx, id, *kind, geometry, *input),
        TrainOp::ConvBackwardData { conv, mask, .. } => conv::backward_data(lx, id, conv, *mask),
        TrainOp::ConvBackwardWeight(conv) => conv::backward_weight(lx, id, conv),
        TrainOp::GemmBackwardData { gemm, .. } => gemm::backward_data(lx, id, gemm),
        TrainOp::GemmBackwardWeight(gemm) => gemm::backward_weight(lx, id, gemm),
        TrainOp::BiasGrad => reduce::bias_grad(lx, id),
        TrainOp::ActivationBackward { activation, from } => eltwise::activation_backward(lx, id, *activation, *from),
        TrainOp::PreluBackwardData => eltwise::prelu_backward_data(lx, id),
        TrainOp::PreluBackwardWeight => reduce::prelu_weight_grad(lx, id),
        TrainOp::SoftmaxBackward => softmax::backward(lx, id),
        TrainOp::BnBackwardData { bn, batch_stats: true } => reduce::bn_backward_train(lx, id, bn),
        TrainOp::BnBackwardData { bn, batch_stats: false } => norm::bn_backward_affine(lx, id, bn),
        TrainOp::BnGammaGrad { bn, batch_stats } => reduce::bn_gamma_grad(lx, id, bn, *batch_stats),
        TrainOp::LrnBackward(lrn) => norm::lrn_backward(lx, id, lrn),
        TrainOp::Reshape(_) | TrainOp::Slice { .. } => eltwise::view_or_copy(lx, id),
        TrainOp::Update(opt) => update::optimizer(lx, id, opt),
    }
}

impl Lx<'_> {
    /// How a value is addressed, after checking that all its images lie in their buffer.
    pub fn val(&self, id: NodeId) -> Result<Val, JitError> {
        let plan = self.plan;
        let node = &plan.graph[id];
        let dims = &node.shape.0;
        let elements: usize = dims.iter().product();
        let (c, h, w) = match dims[..] {
            [c, h, w] => (c, h, w),
            _ => (elements.max(1), 1, 1),
        };
        let layout = if self.stem_blocked.contains(&id) { Layout::Blocked16 } else { plan.layouts[id.index()] };
        let stored = stored_elements(layout, &node.shape) as u64 * 4;
        // A stem's last value lives where its reorder's does (same shape, both blocked).
        let home = self.home(id);
        let (addr, bs, n, bytes, buffer) = match &plan.memory.storage[home.index()] {
            Storage::Input(k) => {
                let (base, len) = *self.addrs.inputs.get(*k).ok_or_else(|| plan_err(format!("input {k} of {id}")))?;
                let bs = elements as u64 * 4;
                match self.image {
                    Some(i) => (base + i as u64 * bs, bs, 1, bs, (base, len)),
                    None => (base, bs, self.batch, bs, (base, len)),
                }
            }
            Storage::Nothing => return Err(plan_err(format!("{id} (`{}`) reads an effect", node.name))),
            Storage::Arena(place) => {
                let off = plan.image_offset(home, self.batch, 0).ok_or_else(|| plan_err(format!("{id} unplaced")))?;
                let region = plan.memory.buffers.get(place.buffer).map(|b| b.region);
                let (bs, n) = match region {
                    Some(Region::Batched) => (place.batch_stride, self.batch),
                    Some(Region::WholeBatch) => (0, 1),
                    None => return Err(plan_err(format!("{id} names buffer {}", place.buffer))),
                };
                if place.bytes < stored || (n > 1 && bs < stored) {
                    return Err(plan_err(format!("{id}: {} bytes placed (stride {bs}) for {stored}", place.bytes)));
                }
                match self.image {
                    Some(_) if n > 1 && self.image_local.contains(&place.buffer) => {
                        let one = plan.image_offset(home, 1, 0).ok_or_else(|| plan_err(format!("{id} unplaced")))?
                            - plan.memory.whole_batch_bytes;
                        let arena = (self.image_arena, self.image_bytes);
                        (self.image_arena + one, bs, 1, place.bytes, arena)
                    }
                    Some(i) if n > 1 => {
                        (self.addrs.arena.0 + off + i as u64 * bs, bs, 1, place.bytes, self.addrs.arena)
                    }
                    _ => (self.addrs.arena.0 + off, bs, n, place.bytes, self.addrs.arena),
                }
            }
        };
        let extent = (n as u64 - 1) * bs + bytes.max(stored);
        if addr < buffer.0 || addr + extent > buffer.0 + buffer.1 as u64 {
            return Err(plan_err(format!("value {id} (`{}`) lies outside its buffer", node.name)));
        }
        Ok(Val { addr, bs, layout, c, h, w, n, bytes })
    }

    /// The node whose place holds the value of `id`: itself, or a stem's reorder.
    fn home(&self, id: NodeId) -> NodeId {
        self.stem_home.get(&id).copied().unwrap_or(id)
    }

    /// The bytes of the arena a value may occupy (all its images), or `None` outside the arena.
    fn arena_span(&self, id: NodeId) -> Option<(u64, u64)> {
        let id = self.home(id);
        let place = self.plan.memory.place(id)?;
        let first = self.plan.image_offset(id, self.batch, 0)?;
        let last = self.plan.image_offset(id, self.batch, self.batch - 1)?;
        Some((first, last.max(first) + place.bytes))
    }

    /// Whether the value of `id` may be written by the step of the earlier node `at`: no other
    /// value alive at any step from `at` to `id` (the ones `at` reads and writes included)
    /// shares its bytes. Then one kernel can produce both nodes' values (a pooling and its
    /// argmax, say).
    pub fn early_ok(&self, id: NodeId, at: NodeId) -> bool {
        let (Some(place), Some((lo, hi))) = (self.plan.memory.place(id), self.arena_span(id)) else { return false };
        if at.index() >= id.index() || place.first != id.index() {
            return false;
        }
        self.plan.graph.iter().all(|(v, _)| {
            if v == id {
                return true;
            }
            let Some(p) = self.plan.memory.place(v) else { return true };
            let alive = p.first < id.index() && p.last >= at.index();
            let Some((a, b)) = self.arena_span(v) else { return true };
            !alive || b <= lo || hi <= a
        })
    }

    /// The parameter `<node name>.<suffix>`: its address and plan. Its buffer slot holds its
    /// stored length rounded up to a whole 16 floats (zeros past the end).
    pub fn param(&self, id: NodeId, suffix: &str) -> Result<(u64, ParamPlan), JitError> {
        let name = param_name(&self.plan.graph[id].name, suffix);
        let p = self.plan.param(&name).ok_or_else(|| plan_err(format!("no parameter `{name}` in the plan")))?;
        let &(off, len) = self.addrs.param_at.get(&name).ok_or_else(|| plan_err(format!("`{name}` unplaced")))?;
        if len != p.stored_len() || off + len.div_ceil(16) * 64 > self.addrs.params.1 {
            return Err(plan_err(format!("`{name}` does not fit its slot")));
        }
        Ok((self.addrs.params.0 + off as u64, p.clone()))
    }

    /// Parameter `name` (at `w`, logical `dims`) in the `Oihw16o` layout of the plain-input
    /// kernels (`len` floats, for a convolution of `shape`): in a buffer of its own, repacked
    /// by a kernel before every run when the optimiser updates it, else once whenever weights
    /// load, into one buffer per parameter (which the steps of a depth-first prefix's images
    /// share). Its address.
    pub fn plain_input_weights(
        &mut self,
        name: &str,
        w: u64,
        dims: [usize; 4],
        shape: cnnc_kernels::conv::ConvShape,
        len: usize,
    ) -> Result<u64, JitError> {
        if native::updated(self, name) {
            let (_, addr) = self.buffer(len * 4)?;
            native_plain::repack(self, w, dims, addr, false)?;
            return Ok(addr);
        }
        if let Some(&addr) = self.repacked.get(name) {
            return Ok(addr);
        }
        let (buffer, addr) = self.buffer(len * 4)?;
        self.repacks.push(Repack { param: name.to_string(), buffer, shape, kind: RepackKind::PlainInput });
        self.repacked.insert(name.to_string(), addr);
        Ok(addr)
    }

    /// The Winograd weights for `m x m` output tiles of parameter `name` (packed `OIhw16i16o`
    /// for `shape`), made whenever weights load, one buffer per parameter and tile size. Only
    /// for parameters no step updates: nothing would remake them after an update.
    pub fn winograd_weights(
        &mut self,
        name: &str,
        shape: cnnc_kernels::conv::ConvShape,
        m: usize,
    ) -> Result<u64, JitError> {
        let key = format!("{name} (winograd {m}x{m})");
        if let Some(&addr) = self.repacked.get(&key) {
            return Ok(addr);
        }
        let len = cnnc_kernels::winograd::weight_len(&shape, m).map_err(|e| JitError::Codegen(e.to_string()))?;
        let (buffer, addr) = self.buffer(len * 4)?;
        self.repacks.push(Repack { param: name.to_string(), buffer, shape, kind: RepackKind::Winograd(m) });
        self.repacked.insert(key, addr);
        Ok(addr)
    }

    /// `bytes` of scratch for a step of the current node (its offset from `ctx`): memory
    /// only that step uses, while it runs. Each image of a depth-first prefix runs its own
    /// step of the node, one after the other, so they share the first image's scratch
    /// (separate copies would take the caches from the maps).
    pub fn scratch(&mut self, bytes: usize) -> u64 {
        let Some(image) = self.image else { return self.alloc(bytes) };
        let key = (self.node, self.scratch_asked);
        self.scratch_asked += 1;
        match self.image_scratch.get(&key) {
            Some(&off) if image > 0 => off,
            _ => {
                let off = self.alloc(bytes);
                self.image_scratch.insert(key, off);
                off
            }
        }
    }

    /// `bytes` of zeroed auxiliary memory (64-byte aligned): its offset from `ctx`.
    pub fn alloc(&mut self, bytes: usize) -> u64 {
        let off = self.aux.len.div_ceil(64) * 64;
        self.aux.len = off + bytes.div_ceil(64) * 64;
        off as u64
    }

    /// A buffer of its own (`bytes` zeroed): its index and address.
    pub fn buffer(&mut self, bytes: usize) -> Result<(usize, u64), JitError> {
        let b = Buffer::new(bytes, self.guard)?;
        let addr = b.addr();
        self.extra.push(b);
        Ok((self.extra.len() - 1, addr))
    }

    /// A table of integers in the auxiliary buffer.
    pub fn table(&mut self, data: &[i32]) -> u64 {
        let off = self.alloc(data.len() * 4);
        let bytes = data.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.aux.tables.push((off as usize, bytes));
        off
    }

    /// Tasks for `work` units of roughly equal cost, each worth about `unit_cost` flops, at
    /// most `max`: enough to keep every thread busy, none too small to pay for itself.
    pub fn tasks(&self, max: usize, total_cost: f64) -> usize {
        if self.threads <= 1 || max <= 1 || total_cost < 20_000.0 {
            return 1;
        }
        let want = (total_cost / 20_000.0) as usize;
        want.clamp(1, self.threads * 4).min(max)
    }

    /// Emits one kernel of the current node: `body` builds it; it runs as `tasks` tasks, on
    /// its own operand block, with the function of an earlier kernel of the same IR if any.
    pub fn kernel(&mut self, tasks: usize, body: impl FnOnce(&mut Fx)) -> Result<(), JitError> {
        let mut sig = self.module.make_signature();
        for _ in 0..3 {
            sig.params.push(AbiParam::new(I64));
        }
        self.ctx.func.signature = sig.clone();
        let config = self.module.target_config();
        let operands = {
            let mut b = FunctionBuilder::new(&mut self.ctx.func, &mut self.fctx);
            let entry = b.create_block();
            b.append_block_params_for_function_params(entry);
            b.switch_to_block(entry);
            let p = b.block_params(entry).to_vec();
            let mut fx = Fx::new(b, &p);
            body(&mut fx);
            let (mut b, operands) = fx.into_parts();
            b.ins().return_(&[]);
            b.seal_all_blocks();
            b.finalize(config);
            operands
        };
        let block = self.alloc(8 * operands.len());
        self.aux.tables.push((block as usize, operand_block(&operands, block)));
        let mut func = std::mem::replace(&mut self.ctx.func, cranelift_codegen::ir::Function::new());
        self.module.clear_context(&mut self.ctx);
        let fid = match self.shared.find(&func, &self.pending) {
            Ok(fid) => fid,
            Err(hash) => {
                let name = format!("n{}_{}", self.node.index(), self.steps.len());
                let fid = self
                    .module
                    .declare_function(&name, Linkage::Local, &sig)
                    .map_err(|e| JitError::Codegen(e.to_string()))?;
                func.name = UserFuncName::user(0, fid.as_u32());
                self.shared.insert(hash, self.pending.len());
                // Compiled later, with the others, in parallel.
                self.pending.push(Pending { id: fid, name, func });
                fid
            }
        };
        self.steps.push((fid, tasks.max(1), self.node, block));
        Ok(())
    }

    /// The driver: every step in order, on the pool when it has several tasks.
    fn driver(&mut self, pool_addr: u64) -> Result<FuncId, JitError> {
        let mut sig = self.module.make_signature();
        sig.params.push(AbiParam::new(I64));
        let fid = self
            .module
            .declare_function("driver", Linkage::Local, &sig)
            .map_err(|e| JitError::Codegen(e.to_string()))?;
        self.ctx.func.signature = sig;
        self.ctx.func.name = UserFuncName::user(0, fid.as_u32());
        let mut kernel_sig = self.module.make_signature();
        for _ in 0..3 {
            kernel_sig.params.push(AbiParam::new(I64));
        }
        let mut pf_sig = self.module.make_signature();
        for _ in 0..4 {
            pf_sig.params.push(AbiParam::new(I64));
        }
        let config = self.module.target_config();
        {
            let mut b = FunctionBuilder::new(&mut self.ctx.func, &mut self.fctx);
            let entry = b.create_block();
            b.append_block_params_for_function_params(entry);
            b.switch_to_block(entry);
            let ctx = b.block_params(entry)[0];
            let pf = b.import_signature(pf_sig);
            for &(f, tasks, _, block) in &self.steps {
                let fref = self.module.declare_func_in_func(f, b.func);
                let ops = b.ins().iadd_imm_s(ctx, block as i64);
                if tasks <= 1 {
                    let zero = b.ins().iconst(I64, 0);
                    b.ins().call(fref, &[ops, zero, zero]);
                } else {
                    let addr = b.ins().func_addr(I64, fref);
                    let callee = b.ins().iconst(I64, parallel_for_addr() as i64);
                    let pool = b.ins().iconst(I64, pool_addr as i64);
                    let n = b.ins().iconst(I64, tasks as i64);
                    b.ins().call_indirect(pf, callee, &[pool, n, addr, ops]);
                }
            }
            b.ins().return_(&[]);
            b.seal_all_blocks();
            b.finalize(config);
        }
        self.module.define_function(fid, &mut self.ctx).map_err(|e| JitError::Codegen(format!("driver: {e:?}")))?;
        self.module.clear_context(&mut self.ctx);
        let _ = kernel_sig;
        Ok(fid)
    }
}
