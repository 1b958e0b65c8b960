//! The physical mode: running an execution plan exactly as it says, through one f32
//! workspace arena.
//!
//! Every value is written where the plan places it, in its layout (`nChw16c` values really
//! blocked, padding lanes zeroed), with its batch stride; concatenation operands are written
//! into their slices and the `concat_in_place` moves nothing; values the plan places as views
//! of others move nothing (a view op without one copies); in-place
//! nodes overwrite their operand's bytes; weights are loaded through the plan's transforms
//! (BN folds, packing) and read back through the packed layouts; optimiser updates run on the
//! packed parameters and state. Each node's operands are read back from the arena, so a wrong
//! offset, layout or lifetime in the plan changes the numbers: the tests hold this mode equal,
//! bit for bit, to the logical one ([`crate::run`]).

use crate::buf::Buf;
use crate::error::InterpError;
use crate::eval::{Ctx, Output, Params, eval, full_shape};
use crate::interp::{Options, Precision, Run, check_cancel, check_graph, check_inputs, last_uses, malformed};
use crate::update::update;
use cnnc_ir::facts::{ValueKind, is_source, param_name, value_kind};
use cnnc_ir::layout::element_offset;
use cnnc_ir::plan::{Alias, ParamPlan, Plan, Storage};
use cnnc_ir::{Layout, NodeId, Op, ParamRole, Shape, TrainOp};
use cnnc_runtime::{Tensor, TensorMap, apply_transforms, pack, pack_optimizer_state, unpack};
use std::borrow::Cow;

/// Runs `plan` as [`crate::run`] runs its graph (same arguments, same results; f32 storage
/// only, the arena being f32). `state` holds checkpoint tensors (the names and layouts before
/// the plan's weight transforms); updated parameters, state and running statistics are
/// written back in those layouts.
pub fn run_plan(plan: &Plan, state: &mut TensorMap, inputs: &[Tensor], options: &Options) -> Result<Run, InterpError> {
    if options.precision != Precision::F32 {
        return Err(InterpError::Plan("the physical mode stores f32 (its arena is f32)".into()));
    }
    let graph = &plan.graph;
    check_graph(graph)?;
    if plan.layouts.len() != graph.len() || plan.memory.storage.len() != graph.len() {
        return Err(InterpError::Plan("the plan's tables do not cover its graph".into()));
    }
    let (batch, input_bufs) = check_inputs(graph, inputs, Precision::F32)?;
    let stored = load_params(plan, state)?;
    let bytes = plan.workspace_bytes(batch);
    let len = usize::try_from(bytes / 4).map_err(|_| InterpError::Plan(format!("a {bytes}-byte arena")))?;
    let logical = stored.keys().map(|name| (name.clone(), logical_param(plan, &stored, name))).collect();
    let mut m =
        Machine { plan, batch, arena: vec![f32::NAN; len], inputs: input_bufs, stored, logical, written: Vec::new() };
    let cx = Ctx { batch, seed: options.seed, step: options.step, lr: options.lr };
    let mut values: Vec<Option<Buf>> = Vec::with_capacity(graph.len());
    let dying = last_uses(graph, options.keep_values);
    for (id, node) in graph.iter() {
        check_cancel(options)?;
        if is_source(&node.op) {
            values.push(Some(m.read(id)?));
            continue;
        }
        if let Op::Train(TrainOp::Update(optimizer)) = &node.op {
            m.update(id, optimizer, &cx)?;
            values.push(None);
            continue;
        }
        let operands: Vec<Buf> = node.inputs.iter().map(|&i| m.read(i)).collect::<Result<_, _>>()?;
        let x: Vec<&Buf> = operands.iter().collect();
        match eval(node, &x, &m, &cx)? {
            Output::Value(mut v) => {
                v.round_to_f32();
                m.write(id, &v)?;
                values.push(Some(m.read(id)?));
            }
            Output::Writes(writes) => {
                for (name, mut buf) in writes {
                    buf.round_to_f32();
                    m.stored.insert(name.clone(), buf.to_tensor());
                    m.logical.insert(name.clone(), buf);
                    m.written.push(name);
                }
                values.push(None);
            }
        }
        for &dead in &dying[id.index()] {
            values[dead.index()] = None;
        }
    }
    for name in std::mem::take(&mut m.written) {
        let tensor = &m.stored[&name];
        let logical = match plan.param(&name) {
            Some(p) if p.layout.is_some() => unpack_param(p, &tensor.data),
            Some(_) | None => tensor.clone(),
        };
        state.insert(name, logical);
    }
    Ok(Run { batch, values, outputs: graph.outputs.clone() })
}

/// The parameters as the plan stores them: the checkpoint's tensors through the plan's weight
/// transforms, each checked to hold its stored size; optimiser state absent from `state`
/// starts at zero.
fn load_params(plan: &Plan, state: &TensorMap) -> Result<TensorMap, InterpError> {
    let mut stored = state.clone();
    apply_transforms(&plan.transforms, &mut stored).map_err(|e| InterpError::Plan(e.to_string()))?;
    pack_optimizer_state(&plan.params, &mut stored);
    for p in &plan.params {
        match stored.get(&p.name) {
            Some(t) if t.data.len() == p.stored_len() && (p.layout.is_some() || t.shape == p.dims) => {}
            Some(t) => {
                return Err(InterpError::ParamShape {
                    name: p.name.clone(),
                    expected: p.dims.clone(),
                    found: t.shape.clone(),
                });
            }
            None if p.role == ParamRole::OptimizerState => {
                let zeros = vec![0.0; p.stored_len()];
                let shape = if p.layout.is_some() { vec![zeros.len()] } else { p.dims.clone() };
                stored.insert(p.name.clone(), Tensor { shape, data: zeros });
            }
            None => return Err(InterpError::MissingParam { name: p.name.clone(), expected: p.dims.clone() }),
        }
    }
    Ok(stored)
}

fn unpack_param(p: &ParamPlan, data: &[f32]) -> Tensor {
    match p.layout {
        Some(layout) => unpack(data, &p.dims, layout, p.groups),
        None => Tensor { shape: p.dims.clone(), data: data.to_vec() },
    }
}

/// A stored parameter read back through its layout as a logical tensor.
fn logical_param(plan: &Plan, stored: &TensorMap, name: &str) -> Buf {
    let t = &stored[name];
    match plan.param(name) {
        Some(p) if p.layout.is_some() => Buf::from_tensor(&unpack_param(p, &t.data)),
        Some(_) | None => Buf::from_tensor(t),
    }
}

/// The arena and the stored parameters while a plan runs.
struct Machine<'p> {
    plan: &'p Plan,
    batch: usize,
    arena: Vec<f32>,
    inputs: Vec<Buf>,
    /// Parameters as the plan stores them (packed where it says so): what updates change.
    stored: TensorMap,
    /// The same read back through their layouts, once per load or update, for the ops.
    logical: crate::buf::BufMap,
    /// Parameters and state written by effects, in order.
    written: Vec<String>,
}

impl Params for Machine<'_> {
    fn get(&self, name: &str) -> Result<Cow<'_, Buf>, InterpError> {
        self.logical
            .get(name)
            .map(Cow::Borrowed)
            .ok_or_else(|| InterpError::MissingParam { name: name.into(), expected: vec![] })
    }

    fn get_or_zeros(&self, name: &str, _dims: &[usize]) -> Result<Buf, InterpError> {
        // `load_params` stored every state tensor, zero where it was absent.
        self.get(name).map(Cow::into_owned)
    }
}

impl Machine<'_> {
    /// The packed layout a whole-batch value is stored in: a gradient of a packed weight.
    fn packed_param(&self, id: NodeId) -> Option<&ParamPlan> {
        let node = &self.plan.graph[id];
        let Op::Train(t) = &node.op else { return None };
        let name = param_name(&node.name, t.grad_of_param()?);
        self.plan.param(&name).filter(|p| p.layout.is_some())
    }

    /// Element index in the arena of logical element `(c, h, w)` of image `n` of `id`.
    fn index(&self, id: NodeId, n: usize, chw: [usize; 3]) -> usize {
        let base = self.plan.image_offset(id, self.batch, n).expect("arena values have an offset") as usize / 4;
        base + element_offset(self.plan.layouts[id.index()], &self.plan.graph[id].shape, chw)
    }

    /// A value as a logical tensor, read from the caller's inputs or the arena.
    fn read(&self, id: NodeId) -> Result<Buf, InterpError> {
        let node = &self.plan.graph[id];
        match &self.plan.memory.storage[id.index()] {
            Storage::Input(k) => self.inputs.get(*k).cloned().ok_or_else(|| malformed("unregistered input")),
            Storage::Nothing => Err(malformed(format!("{id} reads an effect"))),
            Storage::Arena(_) if value_kind(&node.op) == ValueKind::WholeBatch => {
                let base = self.plan.image_offset(id, self.batch, 0).expect("placed") as usize / 4;
                Ok(match self.packed_param(id) {
                    Some(p) => Buf::from_tensor(&unpack_param(p, &self.arena[base..base + p.stored_len()])),
                    None => {
                        let n = node.shape.elements();
                        let data = self.arena[base..base + n].iter().map(|&v| f64::from(v)).collect();
                        Buf { shape: node.shape.0.clone(), data }
                    }
                })
            }
            Storage::Arena(_) => {
                let shape = full_shape(self.batch, &node.shape.0);
                let mut data = Vec::with_capacity(shape.iter().product());
                for_each_element(&node.shape, self.batch, |n, chw| {
                    data.push(f64::from(self.arena[self.index(id, n, chw)]))
                });
                Ok(Buf { shape, data })
            }
        }
    }

    /// Stores a node's value where the plan places it. Views and in-place concatenations
    /// move nothing: their bytes must already hold the value, which is checked.
    fn write(&mut self, id: NodeId, v: &Buf) -> Result<(), InterpError> {
        let node = &self.plan.graph[id];
        let is_view = self.plan.memory.place(id).is_some_and(|p| matches!(p.alias, Alias::View(_)));
        if is_view || node.op == Op::ConcatInPlace {
            let found = self.read(id)?;
            if found.data.iter().zip(&v.data).any(|(a, b)| a.to_bits() != b.to_bits()) {
                let what = if is_view { "view" } else { "in-place concatenation" };
                return Err(InterpError::Plan(format!(
                    "the {what} `{}` ({id}) does not find its value where the plan puts it",
                    node.name
                )));
            }
            return Ok(());
        }
        if value_kind(&node.op) == ValueKind::WholeBatch {
            let base = self.plan.image_offset(id, self.batch, 0).expect("placed") as usize / 4;
            let stored: Vec<f32> = match self.packed_param(id) {
                Some(p) => pack(&v.to_tensor(), p.layout.expect("packed"), p.groups).data,
                None => v.data.iter().map(|&x| x as f32).collect(),
            };
            self.arena[base..base + stored.len()].copy_from_slice(&stored);
            return Ok(());
        }
        let mut k = 0;
        let shape = node.shape.clone();
        for_each_element(&shape, self.batch, |n, chw| {
            let i = self.index(id, n, chw);
            self.arena[i] = v.data[k] as f32;
            k += 1;
        });
        // A blocked value's padding lanes hold zeros, as every back end's producers write.
        if self.plan.layouts[id.index()] == Layout::Blocked16
            && shape.rank() == 3
            && !shape.channels().is_multiple_of(16)
        {
            let (c, h, w) = (shape.0[0], shape.0[1], shape.0[2]);
            for n in 0..self.batch {
                for ch in c..c.div_ceil(16) * 16 {
                    for y in 0..h {
                        for x in 0..w {
                            let i = self.index(id, n, [ch, y, x]);
                            self.arena[i] = 0.0;
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// An optimiser update, on the parameter, gradient and state as stored (packed or not).
    fn update(&mut self, id: NodeId, optimizer: &cnnc_ir::Optimizer, cx: &Ctx) -> Result<(), InterpError> {
        let node = &self.plan.graph[id];
        let grad = node.inputs[0];
        let base =
            self.plan.image_offset(grad, self.batch, 0).ok_or_else(|| malformed("an unplaced gradient"))? as usize / 4;
        let param = node.name.clone();
        let len = self.stored.get(&param).map_or(0, |t| t.data.len());
        let g: Vec<f64> = self.arena[base..base + len].iter().map(|&v| f64::from(v)).collect();
        let to_f64 = |t: &Tensor| t.data.iter().map(|&v| f64::from(v)).collect::<Vec<f64>>();
        let mut p = to_f64(&self.stored[&param]);
        let names: Vec<String> = optimizer.state().iter().map(|s| param_name(&param, s)).collect();
        let mut state: Vec<Vec<f64>> = names.iter().map(|n| to_f64(&self.stored[n])).collect();
        {
            let mut slices: Vec<&mut [f64]> = state.iter_mut().map(Vec::as_mut_slice).collect();
            update(optimizer, &mut p, &g, &mut slices, cx.lr, cx.step);
        }
        for (name, data) in std::iter::once((param, p)).chain(names.into_iter().zip(state)) {
            let t = self.stored.get_mut(&name).expect("loaded");
            t.data = data.into_iter().map(|v| v as f32).collect();
            let fresh = logical_param(self.plan, &self.stored, &name);
            self.logical.insert(name.clone(), fresh);
            self.written.push(name);
        }
        Ok(())
    }
}

/// Calls `f(n, [c, h, w])` for every logical element of a batched value, row-major (`[F]`
/// vectors as `[f, 0, 0]`).
fn for_each_element(shape: &Shape, batch: usize, mut f: impl FnMut(usize, [usize; 3])) {
    let (c, h, w) = match shape.0[..] {
        [c, h, w] => (c, h, w),
        _ => (shape.elements(), 1, 1),
    };
    for n in 0..batch {
        for ch in 0..c {
            for y in 0..h {
                for x in 0..w {
                    f(n, [ch, y, x]);
                }
            }
        }
    }
}
