//! The tensors a generated module reads and stores: the checkpoint's (the source graph's
//! parameters under their `state_dict` names, with how `cnnc init` draws each, plus the
//! optimiser state a training plan may resume from), and the plan's parameters as it stores
//! them, each with its recipe: which checkpoint tensor it starts from, the batch-norm folds the
//! plan's weight transforms apply to it, and its packed layout.
//!
//! The recipes come from running the plan's `WeightTransform`s symbolically over the
//! checkpoint's names, in order, exactly as `cnnc_runtime::apply_transforms` runs them on
//! tensors; the generated loader then computes every stored element in one pass.

use crate::error::CodegenError;
use cnnc_ir::plan::{Plan, WeightTransform};
use cnnc_ir::{FusedBase, Graph, Op, ParamRole, TrainOp, WeightLayout};
use std::collections::BTreeMap;

/// How `cnnc init` draws a checkpoint tensor.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Init {
    /// He or Xavier normal with this standard deviation.
    Normal(f64),
    Fill(f32),
}

/// One tensor of the checkpoint.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorSpec {
    pub name: String,
    pub dims: Vec<usize>,
    /// Optimiser state: may be absent (then zero).
    pub optional: bool,
    pub init: Init,
}

/// One fold of a batch norm into a tensor (weights scaled, or a bias shifted and scaled).
#[derive(Clone, Debug, PartialEq)]
pub struct Fold {
    pub bias: bool,
    /// Checkpoint slots of the batch norm's gamma, beta, running mean and running variance.
    pub gamma: usize,
    pub beta: usize,
    pub mean: usize,
    pub var: usize,
    pub eps: f64,
}

/// How a stored parameter is laid out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stored {
    Plain,
    OIhw16i16o,
    GOIhw16i16o,
    Goihw16g,
}

impl Stored {
    pub fn of(layout: Option<WeightLayout>) -> Stored {
        match layout {
            None | Some(WeightLayout::Oihw | WeightLayout::Oi) => Stored::Plain,
            Some(WeightLayout::OIhw16i16o | WeightLayout::OI16i16o) => Stored::OIhw16i16o,
            Some(WeightLayout::GOIhw16i16o) => Stored::GOIhw16i16o,
            Some(WeightLayout::Goihw16g) => Stored::Goihw16g,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Stored::Plain => "Plain",
            Stored::OIhw16i16o => "OIhw16i16o",
            Stored::GOIhw16i16o => "GOIhw16i16o",
            Stored::Goihw16g => "Goihw16g",
        }
    }
}

/// A parameter as the plan stores it, with its place in the module's parameter storage.
#[derive(Clone, Debug, PartialEq)]
pub struct ParamSpec {
    pub name: String,
    pub dims: Vec<usize>,
    pub role: ParamRole,
    pub layout: Option<WeightLayout>,
    pub groups: usize,
    pub offset: usize,
    pub len: usize,
    /// The checkpoint slot it starts from (`None`: zeros, a bias made by folding).
    pub src: Option<usize>,
    pub folds: Vec<Fold>,
}

/// The checkpoint of a model: every parameter and buffer of the source graph, sorted by name,
/// and (for training plans) the optimiser state as optional tensors.
pub fn checkpoint(source: &Graph, plan: &Plan) -> Vec<TensorSpec> {
    let mut specs: Vec<TensorSpec> = Vec::new();
    for (id, node) in source.iter() {
        for spec in source.params(id) {
            let name = format!("{}.{}", node.name, spec.suffix);
            let init = init_of(source, id, spec.role);
            specs.push(TensorSpec { name, dims: spec.dims, optional: false, init });
        }
    }
    for p in plan.params.iter().filter(|p| p.role == ParamRole::OptimizerState) {
        specs.push(TensorSpec { name: p.name.clone(), dims: p.dims.clone(), optional: true, init: Init::Fill(0.0) });
    }
    specs.sort_by(|a, b| a.name.cmp(&b.name));
    specs.dedup_by(|a, b| a.name == b.name);
    specs
}

/// How `cnnc_runtime::init_params` draws the tensor of `role` owned by node `id` (its
/// `init_tensor`, rule for rule).
fn init_of(graph: &Graph, id: cnnc_ir::NodeId, role: ParamRole) -> Init {
    match role {
        ParamRole::Weight => match &graph[id].op {
            Op::Conv(_) | Op::Fc(_) | Op::Gemm(_) | Op::Fused { base: FusedBase::Conv(_) | FusedBase::Gemm(_), .. } => {
                Init::Normal(cnnc_runtime::weight_init(graph, id).map_or(0.0, |w| w.std()))
            }
            Op::BatchNorm(_) | Op::Train(TrainOp::BnNormalize(_)) => Init::Fill(1.0),
            Op::Prelu => Init::Fill(0.25),
            Op::Input
            | Op::Pool { .. }
            | Op::GlobalPool(_)
            | Op::AdaptivePool { .. }
            | Op::Spp { .. }
            | Op::Flatten
            | Op::Activation(_)
            | Op::Softmax
            | Op::Lrn(_)
            | Op::Dropout { .. }
            | Op::Concat
            | Op::Add
            | Op::Reorder(_)
            | Op::ConcatInPlace
            | Op::Train(_) => Init::Fill(0.0),
        },
        ParamRole::Bias | ParamRole::RunningMean | ParamRole::OptimizerState => Init::Fill(0.0),
        ParamRole::RunningVar => Init::Fill(1.0),
    }
}

/// What the transforms made of one tensor name so far.
#[derive(Clone, Debug)]
struct Recipe {
    src: Option<usize>,
    folds: Vec<Fold>,
    packed: Option<(WeightLayout, usize)>,
}

/// The plan's parameters with their recipes and storage offsets (in plan order: sorted by
/// name), and the total storage length.
pub fn params(plan: &Plan, specs: &[TensorSpec]) -> Result<(Vec<ParamSpec>, usize), CodegenError> {
    let slot = |name: &str| specs.binary_search_by(|s| s.name.as_str().cmp(name)).ok();
    let mut map: BTreeMap<String, Recipe> = specs
        .iter()
        .enumerate()
        .map(|(k, s)| (s.name.clone(), Recipe { src: Some(k), folds: Vec::new(), packed: None }))
        .collect();
    for t in &plan.transforms {
        match t {
            WeightTransform::FoldBn { layer, bn, eps } => {
                let need = |suffix: &str| {
                    let name = format!("{bn}.{suffix}");
                    slot(&name).ok_or(CodegenError::Plan(format!("fold_bn reads `{name}`, which the model lacks")))
                };
                let fold = |bias| -> Result<Fold, CodegenError> {
                    Ok(Fold {
                        bias,
                        gamma: need("weight")?,
                        beta: need("bias")?,
                        mean: need("running_mean")?,
                        var: need("running_var")?,
                        eps: *eps,
                    })
                };
                let weight = format!("{layer}.weight");
                let w = map
                    .get_mut(&weight)
                    .ok_or_else(|| CodegenError::Plan(format!("fold_bn folds into `{weight}`, which is missing")))?;
                w.folds.push(fold(false)?);
                let bias =
                    map.entry(format!("{layer}.bias")).or_insert(Recipe { src: None, folds: Vec::new(), packed: None });
                bias.folds.push(fold(true)?);
                for suffix in ["weight", "bias", "running_mean", "running_var"] {
                    map.remove(&format!("{bn}.{suffix}"));
                }
            }
            WeightTransform::Pack { param, layout, groups } => {
                let r = map
                    .get_mut(param)
                    .ok_or_else(|| CodegenError::Plan(format!("pack reads `{param}`, which is missing")))?;
                if r.packed.is_some() {
                    return Err(CodegenError::Plan(format!("`{param}` is packed twice")));
                }
                r.packed = Some((*layout, *groups));
            }
        }
    }
    let mut out = Vec::with_capacity(plan.params.len());
    let mut offset = 0;
    for p in &plan.params {
        let recipe = map.get(&p.name).ok_or_else(|| {
            CodegenError::Plan(format!("the plan stores `{}`, which no checkpoint tensor gives", p.name))
        })?;
        let packed = recipe.packed.filter(|(l, _)| !l.is_plain()).map(|(l, _)| l);
        let wanted = p.layout.filter(|l| !l.is_plain());
        // Optimiser state is stored like its parameter, which the plan packs without a
        // transform (it starts at zero; a checkpoint's state is packed at load all the same).
        if packed != wanted && !(p.role == ParamRole::OptimizerState && packed.is_none()) {
            return Err(CodegenError::Plan(format!("`{}` is stored {:?} but packed {:?}", p.name, p.layout, packed)));
        }
        let len = p.stored_len();
        out.push(ParamSpec {
            name: p.name.clone(),
            dims: p.dims.clone(),
            role: p.role,
            layout: p.layout,
            groups: p.groups,
            offset,
            len,
            src: recipe.src,
            folds: recipe.folds.clone(),
        });
        // Every parameter starts on a 16-float boundary, like the arena's buffers.
        offset += len.div_ceil(16) * 16;
    }
    Ok((out, offset))
}
