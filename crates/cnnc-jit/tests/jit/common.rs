//! Shared helpers: example lowering, seeded weights and inputs, comparison against the
//! interpreter's physical run of the same plan.
#![allow(dead_code)]

use cnnc_interp::{Options as IOptions, run_plan};
use cnnc_ir::plan::{OutputRole, Plan};
use cnnc_ir::{Graph, Loss, Op, Optimizer, Sgd};
use cnnc_jit::{CompiledModel, Mode, Options, StepArgs};
use cnnc_passes::TrainingOptions;
use cnnc_runtime::{Rng, Tensor, TensorMap, init_params};

pub const RTOL_FORWARD: f64 = 1e-4;
pub const RTOL_GRAD: f64 = 1e-3;

/// Both kernel modes (native falls back to portable kernels where it has none).
pub const MODES: [Mode; 2] = [Mode::Portable, Mode::Native];

/// Lowers `examples/<file>` at the given shape with model parameters overridden.
pub fn lower_example(file: &str, shape: &[usize], overrides: &[(&str, &str)]) -> Graph {
    let path = format!("{}/../../examples/{file}", env!("CARGO_MANIFEST_DIR"));
    let src = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let (parsed, errors) = cnnc_syntax::parse(&src);
    assert!(errors.is_empty(), "{file}: {errors:?}");
    let overrides = overrides.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    let options = cnnc_lower::Options { input_shape: Some(shape.to_vec()), overrides, ..Default::default() };
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

/// He/Xavier weights; batch-norm statistics, gammas, betas and biases randomised.
pub fn random_weights(g: &Graph, seed: u64) -> TensorMap {
    let mut w = init_params(g, seed);
    for (name, t) in w.iter_mut() {
        let mut rng = Rng::for_name(seed ^ 0xabcd, name);
        let mut draw = |f: &dyn Fn(&mut Rng) -> f64| t.data.iter_mut().for_each(|x| *x = f(&mut rng) as f32);
        if name.ends_with("running_var") {
            draw(&|r| 0.5 + r.next_f64());
        } else if name.ends_with("running_mean") || name.ends_with(".bias") {
            draw(&|r| 0.1 * r.normal());
        } else if g
            .iter()
            .any(|(_, n)| matches!(n.op, Op::BatchNorm(_) | Op::Prelu) && name == &format!("{}.weight", n.name))
        {
            draw(&|r| 0.5 + r.next_f64());
        }
    }
    w
}

pub fn random_tensor(shape: &[usize], seed: u64) -> Tensor {
    let mut rng = Rng::seed_from_u64(seed);
    Tensor { shape: shape.to_vec(), data: (0..shape.iter().product()).map(|_| rng.normal() as f32).collect() }
}

pub fn batch_of(shape: &[usize], batch: usize, seed: u64) -> Tensor {
    let mut full = vec![batch];
    full.extend_from_slice(shape);
    random_tensor(&full, seed)
}

/// The largest difference relative to the largest magnitude of `want`.
pub fn rel_error(got: &Tensor, want: &Tensor) -> f64 {
    rel_error_floor(got, want, 1e-30)
}

/// As [`rel_error`], the scale at least `floor` (for values that are rounding noise around a
/// mathematical zero, such as the bias gradient of a convolution before a batch norm).
pub fn rel_error_floor(got: &Tensor, want: &Tensor, floor: f64) -> f64 {
    assert_eq!(got.shape, want.shape);
    let scale = want.data.iter().fold(0f64, |m, &x| m.max(f64::from(x).abs())).max(floor);
    got.data.iter().zip(&want.data).fold(0f64, |m, (&a, &b)| {
        let d = (f64::from(a) - f64::from(b)).abs();
        if d.is_nan() { f64::INFINITY } else { m.max(d) }
    }) / scale
}

pub fn check(what: &str, got: &Tensor, want: &Tensor, rtol: f64) -> f64 {
    check_floor(what, got, want, rtol, 1e-30)
}

pub fn check_floor(what: &str, got: &Tensor, want: &Tensor, rtol: f64, floor: f64) -> f64 {
    let e = rel_error_floor(got, want, floor);
    let scale = want.data.iter().fold(0f32, |m, &x| m.max(x.abs()));
    assert!(e <= rtol, "{what}: relative error {e:e} (tolerance {rtol:e}, largest magnitude {scale:e})");
    e
}

/// Compiles `plan` with guard pages in `mode` and loads `weights`.
pub fn compile(plan: &Plan, batch: usize, mode: Mode, weights: &TensorMap) -> CompiledModel {
    compile_with(plan, &Options::new(batch).with_mode(mode), weights)
}

/// [`compile`] with `options` (guard pages added).
pub fn compile_with(plan: &Plan, options: &Options, weights: &TensorMap) -> CompiledModel {
    let options = options.clone().with_guard_pages(true);
    let m = CompiledModel::compile(plan, &options).unwrap_or_else(|e| panic!("{e}\n{}", plan.render()));
    m.load_weights(weights).unwrap();
    m
}

/// What the interpreter computed for a plan: the outputs by role and the state afterwards.
pub struct Reference {
    want: cnnc_interp::Gradients<Tensor>,
    state: TensorMap,
}

/// The step arguments every comparison runs with.
const ARGS: StepArgs = StepArgs { lr: 0.1, step: 2, seed: 5 };

/// The interpreter's physical run of `plan` (the reference for [`jit_equals`]).
pub fn reference(plan: &Plan, weights: &TensorMap, inputs: &[Tensor]) -> Reference {
    let mut state = weights.clone();
    let options = IOptions::new().with_seed(ARGS.seed).with_lr(ARGS.lr).with_step(ARGS.step);
    let run = run_plan(plan, &mut state, inputs, &options).unwrap();
    Reference { want: cnnc_interp::gradients(&plan.outputs, &run), state }
}

/// Runs `plan` on the JIT and on the interpreter (physical mode) and compares every output,
/// and (for plans with effects) every tensor of the state afterwards. Returns the worst error.
pub fn jit_equals_interp(
    what: &str,
    plan: &Plan,
    weights: &TensorMap,
    inputs: &[Tensor],
    mode: Mode,
    rtol: f64,
) -> f64 {
    jit_equals(what, plan, weights, inputs, mode, rtol, &reference(plan, weights, inputs))
}

/// [`jit_equals_interp`] in both modes against one interpreter run.
pub fn jit_equals_interp_both(what: &str, plan: &Plan, weights: &TensorMap, inputs: &[Tensor], rtol: f64) -> f64 {
    let r = reference(plan, weights, inputs);
    MODES.iter().map(|&mode| jit_equals(what, plan, weights, inputs, mode, rtol, &r)).fold(0.0, f64::max)
}

/// The JIT's run of `plan` in `mode` against the interpreter's (`reference`).
pub fn jit_equals(
    what: &str,
    plan: &Plan,
    weights: &TensorMap,
    inputs: &[Tensor],
    mode: Mode,
    rtol: f64,
    reference: &Reference,
) -> f64 {
    let options = Options::new(inputs[0].shape[0]).with_mode(mode);
    jit_equals_with(what, plan, weights, inputs, &options, rtol, reference)
}

/// [`jit_equals`] on code compiled with `options`.
pub fn jit_equals_with(
    what: &str,
    plan: &Plan,
    weights: &TensorMap,
    inputs: &[Tensor],
    options: &Options,
    rtol: f64,
    reference: &Reference,
) -> f64 {
    let mode = options.mode;
    let model = compile_with(plan, options, weights);
    let got = model.run(inputs, &ARGS).unwrap_or_else(|e| panic!("{what}: {e}"));
    let (want_g, state) = (&reference.want, &reference.state);
    let mut worst = 0f64;
    for (k, (a, b)) in got.outputs.iter().zip(&want_g.outputs).enumerate() {
        worst = worst.max(check(&format!("{what} ({mode:?}): output {k}"), a, b, rtol));
    }
    if let Some(l) = want_g.loss {
        let g = f64::from(got.loss.expect("a loss"));
        assert!((g - l).abs() <= rtol * l.abs().max(1e-3), "{what} ({mode:?}): loss {g} against {l}");
    }
    // Gradients are compared on the scale of the largest of them all: a parameter whose
    // gradient is mathematically zero (a bias before a batch norm) holds rounding noise.
    let floor = 1e-3 * want_g.params.values().flat_map(|t| t.data.iter()).fold(0f64, |m, &v| m.max(f64::from(v).abs()));
    for (name, b) in &want_g.params {
        let what = format!("{what} ({mode:?}): gradient of {name}");
        worst = worst.max(check_floor(&what, &got.param_grads[name], b, rtol, floor));
    }
    for (k, b) in &want_g.inputs {
        worst = worst.max(check(&format!("{what} ({mode:?}): input gradient {k}"), &got.input_grads[k], b, rtol));
    }
    if plan.outputs.iter().any(|r| matches!(r, OutputRole::Update(_))) {
        let jit_state = model.state();
        let changes: Vec<Tensor> =
            state.iter().filter_map(|(n, w)| Some(delta(w, weights.get(n).filter(|b| b.shape == w.shape)?))).collect();
        let floor = 1e-3 * changes.iter().flat_map(|t| t.data.iter()).fold(0f64, |m, &v| m.max(f64::from(v).abs()));
        for (name, want) in state {
            let Some(got) = jit_state.get(name) else { continue };
            // Compare the change of each tensor (updates are small next to the weights).
            let before = weights.get(name);
            let (g, w) = match before {
                Some(b) if b.shape == want.shape => (delta(got, b), delta(want, b)),
                _ => (got.clone(), want.clone()),
            };
            if w.data.iter().all(|&v| v == 0.0) {
                assert!(g.data.iter().all(|&v| v.abs() <= 1e-6), "{what} ({mode:?}): `{name}` changed");
                continue;
            }
            worst = worst.max(check_floor(&format!("{what} ({mode:?}): change of `{name}`"), &g, &w, rtol, floor));
        }
    }
    worst
}

fn delta(a: &Tensor, b: &Tensor) -> Tensor {
    Tensor { shape: a.shape.clone(), data: a.data.iter().zip(&b.data).map(|(x, y)| x - y).collect() }
}

/// Class labels (or a regression target) for a batch of `g`'s outputs.
pub fn target(g: &Graph, loss: &Loss, batch: usize) -> Tensor {
    let out = &g[g.outputs[0]].shape.0;
    if loss.takes_labels() {
        Tensor { shape: vec![batch], data: (0..batch).map(|i| ((3 * i + 1) % out[0]) as f32).collect() }
    } else {
        batch_of(out, batch, 99)
    }
}

/// A training step with SGD (momentum, weight decay) and input gradients.
pub fn sgd_step(g: &Graph) -> TrainingOptions {
    let out = &g[g.outputs[0]].shape.0;
    let loss = if matches!(out[..], [_] | [_, 1, 1]) { Loss::CrossEntropy } else { Loss::Mse };
    let sgd = Sgd { momentum: 0.9, weight_decay: 1e-3, nesterov: false };
    TrainingOptions { optimizer: Some(Optimizer::Sgd(sgd)), input_grads: true, ..TrainingOptions::new(loss) }
}
