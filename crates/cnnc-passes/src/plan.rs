//! Building the execution plan ([`cnnc_ir::plan::Plan`]) of an optimised graph: layouts, the
//! stored layout of every parameter, the weight transforms, and the memory plan.
//!
//! A parameter is packed when a product reading blocked activations owns it
//! ([`cnnc_ir::layout::weight_layout`]): the plan adds a `Pack` transform after the passes'
//! own transforms (BN folds), so the back end packs it once at load. An optimiser's state and
//! a weight's gradient are stored in the weight's layout, so that an update is elementwise;
//! the memory plan sizes gradients as stored (padding included).

use crate::memory::{PlanOptions, plan_memory};
use cnnc_ir::facts::{ValueKind, param_name, value_kind};
use cnnc_ir::layout::{layouts, stored_elements, weight_layout};
use cnnc_ir::plan::{ELEMENT_BYTES, OutputRole, ParamPlan, Plan, WeightTransform};
use cnnc_ir::{FusedBase, Graph, Op, ParamRole, WeightLayout};
use std::collections::BTreeMap;

/// The plan of `graph`, whose outputs are described by `outputs`, after the passes' weight
/// `transforms`.
pub fn build(graph: Graph, outputs: Vec<OutputRole>, transforms: Vec<WeightTransform>, options: &PlanOptions) -> Plan {
    let (layouts, _) = layouts(&graph);
    let params = param_plans(&graph, &layouts);
    let mut transforms = transforms;
    for p in params.values() {
        if let Some(layout) = p.layout
            && p.role == ParamRole::Weight
        {
            transforms.push(WeightTransform::Pack { param: p.name.clone(), layout, groups: p.groups });
        }
    }
    let sizes: Vec<u64> = graph
        .iter()
        .map(|(id, node)| {
            let stored = match grad_param(&graph, id).and_then(|name| params.get(&name)) {
                Some(p) if value_kind(&node.op) == ValueKind::WholeBatch => p.stored_len(),
                _ => stored_elements(layouts[id.index()], &node.shape),
            };
            stored as u64 * ELEMENT_BYTES
        })
        .collect();
    let memory = plan_memory(&graph, &sizes, options);
    Plan { graph, outputs, layouts, memory, params: params.into_values().collect(), transforms }
}

/// The full name of the parameter whose gradient node `id` computes, if any.
pub fn grad_param(graph: &Graph, id: cnnc_ir::NodeId) -> Option<String> {
    let Op::Train(t) = &graph[id].op else { return None };
    t.grad_of_param().map(|suffix| param_name(&graph[id].name, suffix))
}

/// Every tensor the nodes own, with its stored layout, by name.
fn param_plans(graph: &Graph, layouts: &[cnnc_ir::Layout]) -> BTreeMap<String, ParamPlan> {
    let mut plans = BTreeMap::new();
    let mut updates = Vec::new();
    for (id, node) in graph.iter() {
        let packed = weight_layout(graph, layouts, id).filter(|l| !l.is_plain());
        let groups = groups(&node.op);
        for spec in graph.params(id) {
            let name = param_name(&node.name, spec.suffix);
            if spec.role == ParamRole::OptimizerState {
                updates.push((name, spec, node.name.clone()));
                continue;
            }
            let layout = if spec.role == ParamRole::Weight { packed } else { None };
            plans.insert(name.clone(), ParamPlan { name, dims: spec.dims, role: spec.role, layout, groups });
        }
    }
    // An optimiser's state is stored like the parameter it belongs to.
    for (name, spec, param) in updates {
        let (layout, groups) = plans.get(&param).map_or((None, 1), |p: &ParamPlan| (p.layout, p.groups));
        plans.insert(name.clone(), ParamPlan { name, dims: spec.dims, role: spec.role, layout, groups });
    }
    plans
}

fn groups(op: &Op) -> usize {
    if let Op::Conv(conv) | Op::Fused { base: FusedBase::Conv(conv), .. } = op { conv.groups } else { 1 }
}

/// The stored layout name of a parameter plan (for text forms): `plain` when not packed.
pub fn layout_name(layout: Option<WeightLayout>) -> &'static str {
    layout.map_or("plain", WeightLayout::name)
}

/// `plan` with the values of `taps` kept to the end and returned as extra model outputs
/// (`OutputRole::Model(k)` numbered after the plan's own), its memory planned again: what a
/// back end runs to show intermediate values (`--dump`) without changing what it computes.
/// The graph, its fusions and layouts are the plan's; only the lifetimes of the tapped values
/// grow.
pub fn with_taps(plan: &Plan, taps: &[cnnc_ir::NodeId]) -> Plan {
    let mut graph = plan.graph.clone();
    let mut outputs = plan.outputs.clone();
    let models = outputs.iter().filter(|r| matches!(r, OutputRole::Model(_))).count();
    for (k, &tap) in taps.iter().enumerate() {
        graph.outputs.push(tap);
        outputs.push(OutputRole::Model(models + k));
    }
    // `build` packs every laid-out weight again; keep only the passes' own transforms.
    let transforms = plan.transforms.iter().filter(|t| !matches!(t, WeightTransform::Pack { .. })).cloned().collect();
    build(graph, outputs, transforms, &PlanOptions::default())
}
