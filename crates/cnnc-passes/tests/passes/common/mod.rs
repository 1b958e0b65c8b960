//! Graph-building and example-lowering helpers shared by the integration tests.
#![allow(dead_code)]

use cnnc_ir::{Activation, BatchNorm, Conv, Fc, Graph, NodeId, Op, PoolKind, Shape, Window};
use cnnc_passes::{Ctx, Mode, PassOptions, optimize};
use cnnc_runtime::TensorMap;

pub fn window(k: usize, s: usize, p: usize) -> Window {
    Window { kernel: [k, k], stride: [s, s], pad: [p, p], dilation: [1, 1], ceil_mode: false }
}

pub fn conv(out: usize, k: usize, s: usize, p: usize, bias: bool) -> Op {
    Op::Conv(Conv { out_channels: out, window: window(k, s, p), groups: 1, bias })
}

pub fn bn() -> Op {
    Op::BatchNorm(BatchNorm { eps: 1e-5, momentum: 0.1 })
}

pub fn relu() -> Op {
    Op::Activation(Activation::Relu)
}

pub fn fc(out: usize, bias: bool) -> Op {
    Op::Fc(Fc { out_features: out, bias })
}

pub fn maxpool(k: usize, s: usize, p: usize) -> Op {
    Op::Pool { kind: PoolKind::Max, window: window(k, s, p) }
}

pub fn input(g: &mut Graph, name: &str, dims: &[usize]) -> NodeId {
    g.add_input(name, Shape(dims.to_vec()), Default::default()).unwrap()
}

pub fn add(g: &mut Graph, op: Op, inputs: &[NodeId], name: &str) -> NodeId {
    g.add(op, inputs.to_vec(), name, Default::default()).unwrap_or_else(|e| panic!("{name}: {e}")).0
}

/// Lowers `examples/<file>` at its declared shape or the given one.
pub fn lower_example(file: &str, shape: Option<Vec<usize>>) -> Graph {
    lower_example_with(file, shape, &[])
}

/// As [`lower_example`], with model parameters overridden (`--set name=value`).
pub fn lower_example_with(file: &str, shape: Option<Vec<usize>>, overrides: &[(&str, &str)]) -> Graph {
    let path = format!("{}/../../examples/{file}", env!("CARGO_MANIFEST_DIR"));
    let src = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let (parsed, errors) = cnnc_syntax::parse(&src);
    assert!(errors.is_empty(), "{file}: {errors:?}");
    let overrides = overrides.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    let options = cnnc_lower::Options { input_shape: shape, overrides, ..Default::default() };
    match cnnc_lower::lower(&parsed, &options) {
        Ok(l) => l.graph,
        Err(d) => panic!("{file}: {d:#?}"),
    }
}

/// Every example file's name, sorted.
pub fn example_files() -> Vec<String> {
    let dir = format!("{}/../../examples", env!("CARGO_MANIFEST_DIR"));
    let mut files: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.ends_with(".cnn"))
        .collect();
    files.sort();
    files
}

/// Runs one pass module's entry point on a copy of `graph` and returns the graph and count.
pub fn run_one(
    graph: &Graph,
    weights: Option<&mut TensorMap>,
    mode: Mode,
    pass: fn(&mut Ctx) -> Result<usize, cnnc_passes::PassError>,
) -> (Graph, usize) {
    let mut cx = Ctx::new(graph.clone(), weights, mode);
    let n = pass(&mut cx).unwrap();
    if let Err(e) = cnnc_ir::verify(&cx.graph) {
        panic!("pass broke the graph: {e:?}\n{}", cnnc_ir::print(&cx.graph));
    }
    (cx.graph, n)
}

pub fn optimize_all(graph: &Graph, mode: Mode) -> cnnc_passes::Optimized {
    optimize(graph, None, &PassOptions::all().with_mode(mode)).unwrap()
}

/// The plan of a hand-built graph (its outputs the model's), with or without in-place writes,
/// checked by the independent checker.
pub fn plan_of(graph: &Graph, in_place: bool) -> cnnc_ir::plan::Plan {
    let roles = (0..graph.outputs.len()).map(cnnc_ir::plan::OutputRole::Model).collect();
    let plan = cnnc_passes::plan::build(graph.clone(), roles, Vec::new(), &cnnc_passes::PlanOptions { in_place });
    if let Err(e) = cnnc_passes::memory::check(&plan.graph, &plan.memory) {
        panic!("{e}\n{}\n{}", cnnc_ir::print(graph), plan.render());
    }
    plan
}

/// The training graph of `graph` under an MSE loss (gradients as outputs, no optimiser).
pub fn mse_training(graph: &Graph) -> Graph {
    let options = cnnc_passes::TrainingOptions::new(cnnc_ir::Loss::Mse);
    cnnc_passes::training_graph(graph, &options).unwrap().graph
}
