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

pub fn assert_close(what: &str, got: &[f32], want: &[f32], rtol: f64) {
    assert!(got.iter().all(|v| v.is_finite()), "{what}: not finite");
    let e = rel_error(got, want);
    assert!(e <= rtol, "{what}: relative error {e:e} above {rtol:e}");
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
