//! Helpers shared by the tests of the generated modules: the cases (`models.rs`), random
//! weights and inputs, the interpreter's reference runs, tolerances.
#![allow(dead_code)]

#[path = "../../models.rs"]
pub mod models;

use cnnc_interp::{Gradients, Options, gradients, run};
use cnnc_ir::{Graph, Loss, Op};
use cnnc_runtime::{Rng, Tensor, TensorMap, init_params};

pub fn case(module: &str) -> models::Case {
    models::cases().into_iter().find(|c| c.module == module).unwrap_or_else(|| panic!("no case {module}"))
}

/// He/Xavier weights from the initialiser, with batch-norm statistics, gammas, betas and
/// biases randomised (so that folding and biases have something to do).
pub fn random_weights(g: &Graph, seed: u64) -> TensorMap {
    let mut w = init_params(g, seed);
    for (name, t) in w.iter_mut() {
        let mut rng = Rng::for_name(seed ^ 0xabcd, name);
        let mut draw = |f: &dyn Fn(&mut Rng) -> f64| t.data.iter_mut().for_each(|x| *x = f(&mut rng) as f32);
        if name.ends_with("running_var") {
            draw(&|r| 0.5 + r.next_f64());
        } else if name.ends_with("running_mean") || name.ends_with(".bias") {
            draw(&|r| 0.1 * r.normal());
        } else if g.iter().any(|(_, n)| matches!(n.op, Op::BatchNorm(_)) && name == &format!("{}.weight", n.name)) {
            draw(&|r| 0.5 + r.next_f64());
        }
    }
    w
}

pub fn random_tensor(shape: &[usize], seed: u64) -> Tensor {
    let mut rng = Rng::seed_from_u64(seed);
    Tensor { shape: shape.to_vec(), data: (0..shape.iter().product()).map(|_| rng.normal() as f32).collect() }
}

/// A batch of `batch` random inputs of `g`'s first input.
pub fn input(g: &Graph, batch: usize, seed: u64) -> Tensor {
    let mut shape = vec![batch];
    shape.extend_from_slice(&g[g.inputs[0]].shape.0);
    random_tensor(&shape, seed)
}

/// `(name, values)` pairs of a tensor map, as `from_tensors` takes them.
pub fn named(w: &TensorMap) -> Vec<(&str, &[f32])> {
    w.iter().map(|(k, t)| (k.as_str(), t.data.as_slice())).collect()
}

/// The largest difference relative to the largest magnitude of `want`.
pub fn rel_error(got: &[f32], want: &[f32]) -> f64 {
    assert_eq!(got.len(), want.len(), "lengths differ");
    let scale = want.iter().fold(0f64, |m, &x| m.max(f64::from(x).abs())).max(1e-30);
    got.iter().zip(want).fold(0f64, |m, (&a, &b)| m.max((f64::from(a) - f64::from(b)).abs())) / scale
}

/// The L2 norm of the difference relative to the L2 norm of `want`.
pub fn rel_l2(got: &[f32], want: &[f32]) -> f64 {
    let d: f64 = got.iter().zip(want).map(|(&a, &b)| (f64::from(a) - f64::from(b)).powi(2)).sum();
    let n: f64 = want.iter().map(|&b| f64::from(b).powi(2)).sum();
    (d / n.max(1e-300)).sqrt()
}

/// Backward results: within `rtol` in L2 (relative to `want`'s norm) and within `10 rtol` of
/// `want`'s largest magnitude element by element. The elementwise bound alone would fail at
/// random: an f32 pre-activation within rounding of zero can fall on the other side of a
/// ReLU's kink than in f64, which zeroes (or keeps) one gradient element and moves a row of the
/// weight gradient downstream of it; such isolated flips barely move the L2 error.
pub fn assert_close_backward(what: &str, got: &[f32], want: &[f32], rtol: f64) {
    assert!(got.iter().all(|v| v.is_finite()), "{what}: not finite");
    let (l2, max) = (rel_l2(got, want), rel_error(got, want));
    assert!(l2 <= rtol && max <= 10.0 * rtol, "{what}: relative error {l2:e} (L2), {max:e} (largest), rtol {rtol:e}");
}

pub fn assert_close(what: &str, got: &[f32], want: &[f32], rtol: f64) {
    assert!(got.iter().all(|v| v.is_finite()), "{what}: not finite");
    let e = rel_error(got, want);
    assert!(e <= rtol, "{what}: relative error {e:e} above {rtol:e} (L2 {:e})", rel_l2(got, want));
}

/// The source graph's outputs on the interpreter.
pub fn reference_forward(g: &Graph, weights: &TensorMap, x: &Tensor) -> Vec<Tensor> {
    let r = run(g, &mut weights.clone(), std::slice::from_ref(x), &Options::new()).expect("the interpreter runs");
    r.outputs().into_iter().flatten().collect()
}

/// Class labels (or a regression target) for a batch of `g`'s outputs.
pub fn target(g: &Graph, loss: &Loss, batch: usize) -> Tensor {
    let out = &g[g.outputs[0]].shape.0;
    if loss.takes_labels() {
        Tensor { shape: vec![batch], data: (0..batch).map(|i| ((3 * i + 1) % out[0]) as f32).collect() }
    } else {
        let mut shape = vec![batch];
        shape.extend_from_slice(out);
        random_tensor(&shape, 99)
    }
}

/// One step of the source graph's training graph on the interpreter: the results and the
/// state after it.
pub fn reference_step(
    g: &Graph,
    t: &models::Training,
    weights: &TensorMap,
    inputs: &[Tensor],
    options: &Options,
) -> (Gradients<Tensor>, TensorMap) {
    let training = cnnc_passes::training_graph(g, &models::training_options(t)).expect("the training transform");
    let mut state = weights.clone();
    let r = run(&training.graph, &mut state, inputs, options).expect("the interpreter runs");
    (gradients(&training.outputs, &r), state)
}

/// The run-time arguments both sides of a training test use.
pub fn step_options() -> Options {
    Options::new().with_seed(5).with_lr(0.05).with_step(1)
}

pub fn labels(t: &Tensor) -> Vec<u32> {
    t.data.iter().map(|&v| v as u32).collect()
}

/// Where the generated step and the interpreter take different branches: elements of a
/// ReLU-like value that one side clamped to exactly zero while the other kept a value within
/// rounding of zero, and max-pooling windows whose argmax differs (a near tie). Downstream of
/// such a decision the two runs legitimately differ by more than rounding, so the training
/// tests require that there are none (a seed that hits one fails here, with this message,
/// rather than as a mysterious gradient error).
pub fn decision_flips(
    plan: &cnnc_ir::plan::Plan,
    mine: impl Fn(usize) -> Option<Vec<f32>>,
    theirs: &cnnc_interp::Run,
) -> Vec<String> {
    let mut flips = Vec::new();
    for (id, node) in plan.graph.iter() {
        let (Some(m), Some(t)) = (mine(id.index()), theirs.value(id)) else { continue };
        let t: Vec<f32> = t.data.iter().map(|&v| v as f32).collect();
        let scale = t.iter().fold(0f32, |a, &v| a.max(v.abs()));
        let argmax = matches!(node.op, cnnc_ir::Op::Train(cnnc_ir::TrainOp::PoolArgmax(_)));
        let relu = Some(cnnc_ir::Activation::Relu);
        let clamps = match &node.op {
            cnnc_ir::Op::Activation(a) => Some(*a) == relu,
            cnnc_ir::Op::Fused { epilogue, .. } => epilogue.activation == relu,
            _ => false,
        };
        if !argmax && !clamps {
            continue;
        }
        let count = m
            .iter()
            .zip(&t)
            .filter(
                |&(&a, &b)| {
                    if argmax { a != b } else { (a == 0.0) != (b == 0.0) && a.abs().max(b.abs()) <= 1e-4 * scale }
                },
            )
            .count();
        if count > 0 {
            flips.push(format!("{id} `{}` ({}): {count}", node.name, node.op.keyword()));
        }
    }
    flips
}
