//! The safe compiled model: compilation of a plan, loading weights, running inference and
//! training steps, reading state back, per-step timing. Every shape and length is checked
//! here before generated code runs, and the code touches only the buffers allocated here.
//! With a cancel token ([`Options::cancel`]) a run goes step by step, checking it between
//! kernel steps, instead of through the generated driver.

use crate::error::{JitError, plan_err};
use crate::exec::{Buffer, Compiled, Memory, Pool, seal};
use crate::lower::{ARG_LR, ARG_SEED, ARG_STEP, Addrs, lower};
use crate::lower::{ConvLowering, RepackKind};
use crate::options::{Mode, Options};
use cnnc_ir::facts::{ValueKind, param_name, value_kind};
use cnnc_ir::layout::element_offset;
use cnnc_ir::plan::{OutputRole, Plan, Region, Storage};
use cnnc_ir::{NodeId, Op, ParamRole, TrainOp};
use cnnc_kernels::threads::ThreadPool;
use cnnc_runtime::{Tensor, TensorMap, apply_transforms, pack_optimizer_state, unpack};
use cranelift_codegen::settings::{self, Configurable};
use cranelift_jit::{ArenaMemoryProvider, JITBuilder, JITModule};
use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Instant;

/// A plan compiled to machine code for one batch size, with its memory.
pub struct CompiledModel {
    plan: Plan,
    batch: usize,
    mode: Mode,
    times: CompileTimes,
    param_at: BTreeMap<String, (usize, usize)>,
    adam: Vec<(u64, f64, f64)>,
    repacks: Vec<crate::lower::Repack>,
    /// The node each step belongs to.
    step_nodes: Vec<NodeId>,
    depth_first: usize,
    lowerings: Vec<ConvLowering>,
    cancel: Option<cnnc_runtime::Cancel>,
    inner: Mutex<Inner>,
}

struct Inner {
    code: Compiled,
    loaded: bool,
}

impl std::fmt::Debug for CompiledModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CompiledModel")
            .field("model", &self.plan.graph.name)
            .field("batch", &self.batch)
            .field("mode", &self.mode)
            .field("steps", &self.step_nodes.len())
            .finish()
    }
}

/// The run-time arguments of a training step.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StepArgs {
    pub lr: f64,
    /// From 1: Adam's bias correction, SGD's first momentum step, dropout masks.
    pub step: u64,
    pub seed: u64,
}

impl Default for StepArgs {
    fn default() -> StepArgs {
        StepArgs { lr: 0.0, step: 1, seed: 0 }
    }
}

/// What a training step (or any run of a training plan) computed, by output role.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct StepResult {
    pub loss: Option<f32>,
    pub outputs: Vec<Tensor>,
    pub param_grads: BTreeMap<String, Tensor>,
    pub input_grads: BTreeMap<usize, Tensor>,
}

/// Where [`CompiledModel::compile`]'s time went, in milliseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct CompileTimes {
    /// The whole of `compile`.
    pub total_ms: f64,
    /// Checking the plan and allocating the buffers.
    pub setup_ms: f64,
    /// Lowering: every kernel's Cranelift IR built (and the driver compiled).
    pub lower_ms: f64,
    /// Cranelift compiling the kernels, on several threads.
    pub codegen: crate::CodegenTimes,
    /// Linking and making the code executable.
    pub finalize_ms: f64,
}

/// Seconds each step of the schedule took, by node (steps of one node summed).
#[derive(Clone, Debug, PartialEq)]
pub struct NodeTime {
    pub node: NodeId,
    pub name: String,
    pub seconds: Vec<f64>,
}

fn module(mode: Mode) -> Result<JITModule, JitError> {
    let mut flags = settings::builder();
    let set = |f: &mut settings::Builder, k: &str, v: &str| f.set(k, v).map_err(|e| JitError::Codegen(e.to_string()));
    set(&mut flags, "use_colocated_libcalls", "false")?;
    set(&mut flags, "is_pic", "false")?;
    // Large unrolled bodies compile to faster code without the mid-end's load merging
    // (measured: ../shared/notes), and compile faster.
    set(&mut flags, "opt_level", "none")?;
    set(&mut flags, "enable_verifier", if cfg!(debug_assertions) { "true" } else { "false" })?;
    let _ = mode;
    // cranelift_native sets has_avx / has_fma from the host: without them F32X4 `fma` is four
    // libm calls.
    let isa = cranelift_native::builder()
        .map_err(|e| JitError::Codegen(format!("unsupported host: {e}")))?
        .finish(settings::Flags::new(flags))
        .map_err(|e| JitError::Codegen(e.to_string()))?;
    // All code and data in one reserved region. The default provider maps each segment on
    // its own, and on a large model (ResNet-101, in a test run among other processes) two
    // segments landed more than 2 GiB apart, beyond the 32-bit PC-relative calls between our
    // functions: cranelift-jit panics on such a relocation. Reserving address space commits no
    // memory; a model whose code outgrows it gets an error from `define_function`.
    let arena = ArenaMemoryProvider::new_with_size(JIT_ARENA_BYTES).map_err(|e| {
        JitError::Codegen(format!("cannot reserve {JIT_ARENA_BYTES} bytes of address space for code: {e}"))
    })?;
    let mut builder = JITBuilder::with_isa(isa, cranelift_module::default_libcall_names());
    builder.memory_provider(Box::new(arena));
    Ok(JITModule::new(builder))
}

/// The address space reserved for one model's code and constants (1 GiB): every call between
/// two of its functions stays within the ±2 GiB reach of a 32-bit PC-relative offset.
const JIT_ARENA_BYTES: usize = 1 << 30;

/// Checks what the lowering relies on and the code cannot check itself.
fn check_plan(plan: &Plan, batch: usize) -> Result<(), JitError> {
    let graph = &plan.graph;
    if batch == 0 {
        return Err(JitError::Usage("the batch size must be at least 1".into()));
    }
    if plan.layouts.len() != graph.len() || plan.memory.storage.len() != graph.len() {
        return Err(plan_err("the plan's tables do not cover its graph"));
    }
    if let Err(errors) = cnnc_ir::verify::verify(graph) {
        let fatal: Vec<String> = errors
            .iter()
            .filter(|e| !matches!(e, cnnc_ir::verify::VerifyError::DeadNode { .. }))
            .map(ToString::to_string)
            .collect();
        if !fatal.is_empty() {
            return Err(plan_err(fatal.join("; ")));
        }
    }
    for (_, node) in graph.iter() {
        if let Op::Train(TrainOp::BnStats) = node.op {
            let spatial: usize = graph[node.inputs[0]].shape.0.iter().skip(1).product();
            if batch * spatial < 2 {
                return Err(JitError::Usage(format!(
                    "batch norm `{}` sees one value per channel at batch {batch}: it has no variance",
                    node.name
                )));
            }
        }
    }
    Ok(())
}

impl CompiledModel {
    /// Compiles `plan` for `options.batch` samples. The weights come next
    /// ([`CompiledModel::load_weights`]).
    pub fn compile(plan: &Plan, options: &Options) -> Result<CompiledModel, JitError> {
        let start = Instant::now();
        let batch = options.batch;
        check_plan(plan, batch)?;
        let graph = &plan.graph;
        let guard = options.guard_pages;
        // Parameters: each in a slot of whole 16-float vectors, zero past its stored length.
        let mut param_at = BTreeMap::new();
        let mut off = 0usize;
        for p in &plan.params {
            let len = p.stored_len();
            param_at.insert(p.name.clone(), (off, len));
            off += len.div_ceil(16) * 64;
        }
        let params = Buffer::new(off, guard)?;
        let arena_bytes = usize::try_from(plan.workspace_bytes(batch))
            .map_err(|_| JitError::Memory(format!("a {}-byte arena", plan.workspace_bytes(batch))))?;
        let arena = Buffer::new(arena_bytes, guard)?;
        let inputs = graph
            .inputs
            .iter()
            .map(|&id| {
                let n = graph[id].shape.0.iter().product::<usize>().max(1);
                Buffer::new(n.checked_mul(batch * 4).ok_or_else(|| plan_err("input too large"))?, guard)
            })
            .collect::<Result<Vec<_>, _>>()?;
        let addrs = Addrs {
            arena: (arena.addr(), arena.len()),
            params: (params.addr(), params.len()),
            param_at: param_at.clone(),
            inputs: inputs.iter().map(|b| (b.addr(), b.len())).collect(),
        };
        let pool = match options.threads {
            None => Pool::Global,
            Some(t) => Pool::Own(Box::new(ThreadPool::new(t.max(1)))),
        };
        let threads = {
            use cnnc_kernels::par::Parallel;
            pool.get().threads()
        };
        let mut m = module(options.mode)?;
        let lowering = Instant::now();
        let setup_ms = (lowering - start).as_secs_f64() * 1e3;
        let depth_first = cnnc_ir::depth::depth_first_prefix(plan, batch, options.depth_first_bytes);
        let mut program = lower(
            plan,
            batch,
            threads,
            options.mode,
            guard,
            &addrs,
            &mut m,
            pool.addr(),
            depth_first,
            options.winograd,
        )?;
        let lower_ms = lowering.elapsed().as_secs_f64() * 1e3;
        check_cancel(options.cancel.as_ref())?;
        // Compiling uses as many threads as running will.
        let codegen =
            crate::codegen::compile_all(&mut m, std::mem::take(&mut program.pending), program.shared, threads)?;
        check_cancel(options.cancel.as_ref())?;
        let finalizing = Instant::now();
        let mut aux = Buffer::new(program.aux.len, guard)?;
        for (off, table) in &program.aux.tables {
            aux.bytes_mut()[*off..][..table.len()].copy_from_slice(table);
        }
        let steps: Vec<_> = program.steps.iter().map(|&(f, t, _, ops)| (f, t, ops)).collect();
        let memory = Memory { arena, params, inputs, aux, extra: program.extra, _keep: program.keep };
        let code = seal(m, program.driver, &steps, memory, pool)?;
        let finalize_ms = finalizing.elapsed().as_secs_f64() * 1e3;
        let times =
            CompileTimes { total_ms: start.elapsed().as_secs_f64() * 1e3, setup_ms, lower_ms, codegen, finalize_ms };
        Ok(CompiledModel {
            plan: plan.clone(),
            batch,
            mode: options.mode,
            times,
            param_at,
            adam: program.adam,
            repacks: program.repacks,
            step_nodes: program.steps.iter().map(|&(_, _, n, _)| n).collect(),
            lowerings: program.lowerings,
            depth_first,
            cancel: options.cancel.clone(),
            inner: Mutex::new(Inner { code, loaded: false }),
        })
    }

    pub fn batch(&self) -> usize {
        self.batch
    }

    pub fn mode(&self) -> Mode {
        self.mode
    }

    pub fn plan(&self) -> &Plan {
        &self.plan
    }

    /// How each convolution pass of the plan (convolutions and matrix products: forward,
    /// input gradient, weight gradient) was lowered, in schedule order.
    pub fn lowerings(&self) -> &[ConvLowering] {
        &self.lowerings
    }

    /// How many nodes, from the first in schedule order, run depth first: each image through
    /// all of them before the next (0: every node on the whole batch; see
    /// [`Options::depth_first_bytes`]).
    pub fn depth_first(&self) -> usize {
        self.depth_first
    }

    /// Milliseconds `compile` took (lowering, Cranelift, memory).
    pub fn compile_ms(&self) -> f64 {
        self.times.total_ms
    }

    /// Where `compile`'s time went.
    pub fn compile_times(&self) -> CompileTimes {
        self.times
    }

    /// Kernel functions in the schedule.
    pub fn steps(&self) -> usize {
        self.step_nodes.len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves buffers the next run overwrites anyway.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Loads checkpoint tensors (PyTorch names and layouts, before the plan's transforms):
    /// the plan's transforms (BN folding, packing) run on a copy, every parameter is checked,
    /// optimiser state absent from `state` starts at zero.
    pub fn load_weights(&self, state: &TensorMap) -> Result<(), JitError> {
        self.load_state(state.clone())
    }

    /// [`CompiledModel::load_weights`] on tensors the caller gives away: the transforms run on
    /// them in place, without the copy (a trainer's whole state is its parameters twice over
    /// with momentum).
    pub fn load_state(&self, mut stored: TensorMap) -> Result<(), JitError> {
        apply_transforms(&self.plan.transforms, &mut stored)
            .map_err(|e| JitError::Param { name: String::new(), message: e.to_string() })?;
        // A checkpoint's optimiser state (or `state()`'s, moved between batch sizes) is in
        // logical layout; a packed weight's state is stored packed like it.
        pack_optimizer_state(&self.plan.params, &mut stored);
        let mut inner = self.lock();
        for p in &self.plan.params {
            let (off, len) = self.param_at[&p.name];
            let slot = len.div_ceil(16) * 16;
            let dst = inner.code.memory.params.f32s_mut(off, slot);
            // Each tensor dropped once copied: the transformed state and the model's buffers
            // are never both whole in memory.
            match stored.remove(&p.name) {
                Some(t) if t.data.len() == len && (p.layout.is_some() || t.shape == p.dims) => {
                    dst[..len].copy_from_slice(&t.data);
                    dst[len..].fill(0.0);
                }
                Some(t) => {
                    return Err(JitError::Param {
                        name: p.name.clone(),
                        message: format!("shape {:?}, expected {:?}", t.shape, p.dims),
                    });
                }
                None if p.role == ParamRole::OptimizerState => dst.fill(0.0),
                None => return Err(JitError::Param { name: p.name.clone(), message: "missing".into() }),
            }
        }
        for r in &self.repacks {
            let (off, len) = self.param_at[&r.param];
            let src = inner.code.memory.params.f32s(off, len).to_vec();
            let s = &r.shape;
            let ws = cnnc_kernels::pack::WeightShape { o: s.oc, i: s.ic, kh: s.kh, kw: s.kw, groups: 1 };
            let buf = &mut inner.code.memory.extra[r.buffer];
            let n = buf.len() / 4;
            let dst = buf.f32s_mut(0, n);
            match r.kind {
                RepackKind::PlainInput => cnnc_kernels::pack::pack_plain_input(&ws, &src, dst),
                RepackKind::Winograd(m) => cnnc_kernels::winograd::transform_weights(s, m, &src, dst),
            }
            .map_err(|e| JitError::Param { name: r.param.clone(), message: e.to_string() })?;
        }
        inner.loaded = true;
        Ok(())
    }

    /// Every parameter, buffer and optimiser state tensor, in its checkpoint layout.
    pub fn state(&self) -> TensorMap {
        self.state_where(|_| true)
    }

    /// The tensors of [`CompiledModel::state`] whose names `keep` accepts, the others never
    /// copied (an evaluation needs the parameters, not the optimiser state).
    pub fn state_where(&self, keep: impl Fn(&str) -> bool) -> TensorMap {
        let inner = self.lock();
        let mut out = TensorMap::new();
        for p in self.plan.params.iter().filter(|p| keep(&p.name)) {
            let (off, len) = self.param_at[&p.name];
            let data = inner.code.memory.params.f32s(off, len);
            let t = match p.layout {
                Some(layout) => unpack(data, &p.dims, layout, p.groups),
                None => Tensor { shape: p.dims.clone(), data: data.to_vec() },
            };
            out.insert(p.name.clone(), t);
        }
        out
    }

    /// Checks the inputs and copies them into the model's input buffers.
    fn write_inputs(&self, inner: &mut Inner, inputs: &[&[f32]], shapes: Option<&[&[usize]]>) -> Result<(), JitError> {
        let graph = &self.plan.graph;
        if inputs.len() != graph.inputs.len() {
            return Err(JitError::InputCount { expected: graph.inputs.len(), found: inputs.len() });
        }
        for (k, (&id, data)) in graph.inputs.iter().zip(inputs).enumerate() {
            let node = &graph[id];
            let mut expected = vec![self.batch];
            expected.extend_from_slice(&node.shape.0);
            if let Some(shapes) = shapes
                && shapes[k] != expected.as_slice()
            {
                return Err(JitError::InputShape {
                    index: k,
                    name: node.name.clone(),
                    expected,
                    found: shapes[k].to_vec(),
                });
            }
            let len: usize = expected.iter().product();
            if data.len() != len {
                return Err(JitError::BufferLength {
                    what: format!("input {k} (`{}`)", node.name),
                    expected: len,
                    found: data.len(),
                });
            }
            if let Op::Train(TrainOp::Labels { classes }) = node.op
                && let Some((sample, &value)) = data
                    .iter()
                    .enumerate()
                    .find(|&(_, &v)| !(v >= 0.0 && (v as f64) < classes as f64 && v.fract() == 0.0))
            {
                return Err(JitError::BadLabel { sample, value, classes });
            }
            inner.code.memory.inputs[k].f32s_mut(0, len).copy_from_slice(data);
        }
        Ok(())
    }

    /// Writes the run-time arguments (and Adam's bias corrections) into the auxiliary buffer.
    fn write_args(&self, inner: &mut Inner, args: &StepArgs) {
        let aux = inner.code.memory.aux.bytes_mut();
        aux[ARG_SEED as usize..][..8].copy_from_slice(&args.seed.to_le_bytes());
        aux[ARG_STEP as usize..][..8].copy_from_slice(&args.step.to_le_bytes());
        aux[ARG_LR as usize..][..4].copy_from_slice(&(args.lr as f32).to_le_bytes());
        let t = args.step.max(1).min(i32::MAX as u64) as i32;
        for &(off, b1, b2) in &self.adam {
            let c1 = (1.0 - b1.powi(t)) as f32;
            let c2 = (1.0 - b2.powi(t)).sqrt() as f32;
            aux[off as usize..][..4].copy_from_slice(&c1.to_le_bytes());
            aux[off as usize + 4..][..4].copy_from_slice(&c2.to_le_bytes());
        }
    }

    fn prepare(
        &self,
        inner: &mut Inner,
        inputs: &[&[f32]],
        shapes: Option<&[&[usize]]>,
        args: &StepArgs,
    ) -> Result<(), JitError> {
        if !inner.loaded {
            return Err(JitError::NoWeights);
        }
        self.write_inputs(inner, inputs, shapes)?;
        self.write_args(inner, args);
        Ok(())
    }

    /// A value after a run, as a logical tensor (batched: `[N] ++ shape`).
    fn read(&self, inner: &Inner, id: NodeId) -> Result<Tensor, JitError> {
        let plan = &self.plan;
        let node = &plan.graph[id];
        let mem = &inner.code.memory;
        match &plan.memory.storage[id.index()] {
            Storage::Input(k) => {
                let mut shape = vec![self.batch];
                shape.extend_from_slice(&node.shape.0);
                let n: usize = shape.iter().product();
                Ok(Tensor { shape, data: mem.inputs[*k].f32s(0, n).to_vec() })
            }
            Storage::Nothing => Err(plan_err(format!("{id} is an effect"))),
            Storage::Arena(place) => {
                let whole = plan.memory.buffers[place.buffer].region == Region::WholeBatch;
                let off = plan.image_offset(id, self.batch, 0).ok_or_else(|| plan_err("unplaced"))? as usize;
                if whole || value_kind(&node.op) == ValueKind::WholeBatch {
                    let grad_of = if let Op::Train(t) = &node.op { t.grad_of_param() } else { None };
                    let packed =
                        grad_of.and_then(|s| plan.param(&param_name(&node.name, s))).filter(|p| p.layout.is_some());
                    return Ok(match packed {
                        Some(p) => {
                            unpack(mem.arena.f32s(off, p.stored_len()), &p.dims, p.layout.expect("packed"), p.groups)
                        }
                        None => {
                            let n = node.shape.elements();
                            Tensor { shape: node.shape.0.clone(), data: mem.arena.f32s(off, n).to_vec() }
                        }
                    });
                }
                let layout = plan.layouts[id.index()];
                let (c, h, w) = match node.shape.0[..] {
                    [c, h, w] => (c, h, w),
                    _ => (node.shape.elements(), 1, 1),
                };
                let mut shape = vec![self.batch];
                shape.extend_from_slice(&node.shape.0);
                let mut data = Vec::with_capacity(self.batch * c * h * w);
                for n in 0..self.batch {
                    let base = (off + n * place.batch_stride as usize) / 4;
                    let stored = (place.bytes / 4) as usize;
                    let img = mem.arena.f32s(base * 4, stored);
                    for ch in 0..c {
                        for y in 0..h {
                            for x in 0..w {
                                data.push(img[element_offset(layout, &node.shape, [ch, y, x])]);
                            }
                        }
                    }
                }
                Ok(Tensor { shape, data })
            }
        }
    }

    /// Runs the plan on `inputs` (one per graph input, `[batch] ++ shape`; labels `[batch]`)
    /// and returns every graph output by role. Effects (optimiser and running-statistics
    /// updates) change the model's state.
    pub fn run(&self, inputs: &[Tensor], args: &StepArgs) -> Result<StepResult, JitError> {
        let data: Vec<&[f32]> = inputs.iter().map(|t| t.data.as_slice()).collect();
        let shapes: Vec<&[usize]> = inputs.iter().map(|t| t.shape.as_slice()).collect();
        for t in inputs {
            if t.shape.iter().product::<usize>() != t.data.len() {
                return Err(JitError::BufferLength {
                    what: "a tensor".into(),
                    expected: t.shape.iter().product(),
                    found: t.data.len(),
                });
            }
        }
        let mut inner = self.lock();
        self.prepare(&mut inner, &data, Some(&shapes), args)?;
        self.execute(&mut inner)?;
        self.collect(&inner)
    }

    fn collect(&self, inner: &Inner) -> Result<StepResult, JitError> {
        let mut r = StepResult::default();
        for (k, role) in self.plan.outputs.iter().enumerate() {
            let id = self.plan.graph.outputs[k];
            match role {
                OutputRole::Model(_) => r.outputs.push(self.read(inner, id)?),
                OutputRole::Loss => r.loss = self.read(inner, id)?.data.first().copied(),
                OutputRole::ParamGrad(name) => {
                    r.param_grads.insert(name.clone(), self.read(inner, id)?);
                }
                OutputRole::InputGrad(i) => {
                    r.input_grads.insert(*i, self.read(inner, id)?);
                }
                OutputRole::Update(_) => {}
            }
        }
        Ok(r)
    }

    /// Inference on one input: the first model output.
    pub fn forward(&self, input: &Tensor) -> Result<Tensor, JitError> {
        let mut r = self.run(std::slice::from_ref(input), &StepArgs::default())?;
        if r.outputs.is_empty() {
            return Err(JitError::Usage("the plan has no model output".into()));
        }
        Ok(r.outputs.swap_remove(0))
    }

    /// Inference from caller buffers into caller buffers: `inputs[k]` holds graph input `k`
    /// (`batch x` its elements, row-major), `outputs[k]` receives model output `k`.
    pub fn forward_into(&self, inputs: &[&[f32]], outputs: &mut [&mut [f32]]) -> Result<(), JitError> {
        let mut inner = self.lock();
        self.prepare(&mut inner, inputs, None, &StepArgs::default())?;
        let models: Vec<NodeId> = self
            .plan
            .outputs
            .iter()
            .zip(&self.plan.graph.outputs)
            .filter(|(r, _)| matches!(r, OutputRole::Model(_)))
            .map(|(_, &id)| id)
            .collect();
        if outputs.len() != models.len() {
            return Err(JitError::BufferLength {
                what: "output buffers".into(),
                expected: models.len(),
                found: outputs.len(),
            });
        }
        for (k, &id) in models.iter().enumerate() {
            let want = self.batch * self.plan.graph[id].shape.elements();
            if outputs[k].len() != want {
                return Err(JitError::BufferLength {
                    what: format!("output {k}"),
                    expected: want,
                    found: outputs[k].len(),
                });
            }
        }
        self.execute(&mut inner)?;
        for (k, &id) in models.iter().enumerate() {
            outputs[k].copy_from_slice(&self.read(&inner, id)?.data);
        }
        Ok(())
    }

    /// One training step of a training plan: inputs, then the target (labels or a tensor);
    /// parameters, optimiser state and running statistics are updated in place.
    pub fn train_step(&self, inputs: &[Tensor], args: &StepArgs) -> Result<StepResult, JitError> {
        if !self.plan.graph.iter().any(|(_, n)| matches!(n.op, Op::Train(_))) {
            return Err(JitError::Usage("train_step needs the plan of a training graph".into()));
        }
        self.run(inputs, args)
    }

    /// Runs the schedule `rounds` times step by step, timing each step: seconds per round for
    /// every node that has code, in schedule order.
    pub fn profile(&self, inputs: &[Tensor], args: &StepArgs, rounds: usize) -> Result<Vec<NodeTime>, JitError> {
        let data: Vec<&[f32]> = inputs.iter().map(|t| t.data.as_slice()).collect();
        let shapes: Vec<&[usize]> = inputs.iter().map(|t| t.shape.as_slice()).collect();
        let mut inner = self.lock();
        let mut times: Vec<NodeTime> = Vec::new();
        for _ in 0..rounds {
            self.prepare(&mut inner, &data, Some(&shapes), args)?;
            // A node's steps need not be adjacent (a depth-first prefix runs each node once
            // per image): its time in a run is the sum over its steps.
            let mut run: Vec<f64> = vec![0.0; times.len()];
            let mut k = 0;
            while k < self.step_nodes.len() {
                let node = self.step_nodes[k];
                check_cancel(self.cancel.as_ref())?;
                let t0 = Instant::now();
                while k < self.step_nodes.len() && self.step_nodes[k] == node {
                    inner.code.run_step(k);
                    k += 1;
                }
                let dt = t0.elapsed().as_secs_f64();
                let slot = match times.iter().position(|t| t.node == node) {
                    Some(slot) => slot,
                    None => {
                        times.push(NodeTime { node, name: self.plan.graph[node].name.clone(), seconds: Vec::new() });
                        run.push(0.0);
                        times.len() - 1
                    }
                };
                run[slot] += dt;
            }
            for (t, dt) in times.iter_mut().zip(run) {
                t.seconds.push(dt);
            }
        }
        Ok(times)
    }

    /// Seconds per whole run (the driver), `rounds` times. The cancel token is checked
    /// between rounds only, so that what is timed is the driver with or without one.
    pub fn time_runs(&self, inputs: &[Tensor], args: &StepArgs, rounds: usize) -> Result<Vec<f64>, JitError> {
        let data: Vec<&[f32]> = inputs.iter().map(|t| t.data.as_slice()).collect();
        let shapes: Vec<&[usize]> = inputs.iter().map(|t| t.shape.as_slice()).collect();
        let mut inner = self.lock();
        let mut out = Vec::with_capacity(rounds);
        for _ in 0..rounds {
            check_cancel(self.cancel.as_ref())?;
            self.prepare(&mut inner, &data, Some(&shapes), args)?;
            let t0 = Instant::now();
            inner.code.run();
            out.push(t0.elapsed().as_secs_f64());
        }
        Ok(out)
    }

    /// Threads the model's code runs on.
    pub fn threads(&self) -> usize {
        self.lock().code.threads()
    }

    /// Runs the whole schedule: through the generated driver, or without it, step by step in
    /// the driver's order with the cancel token checked before each step.
    fn execute(&self, inner: &mut Inner) -> Result<(), JitError> {
        let Some(cancel) = &self.cancel else {
            inner.code.run();
            return Ok(());
        };
        for k in 0..self.step_nodes.len() {
            check_cancel(Some(cancel))?;
            inner.code.run_step(k);
        }
        Ok(())
    }
}

/// [`JitError::Cancelled`] once the token is set.
fn check_cancel(cancel: Option<&cnnc_runtime::Cancel>) -> Result<(), JitError> {
    if cnnc_runtime::cancel_requested(cancel) { Err(JitError::Cancelled) } else { Ok(()) }
}
