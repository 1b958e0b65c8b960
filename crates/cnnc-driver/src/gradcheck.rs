//! `cnnc gradcheck`: a model's backward pass against central finite differences of its loss,
//! on seeded random data, as the course teaches (CS231n's "gradient check").
//!
//! The analytic gradients come from the back end under test (the training graph run on it);
//! the numeric ones from the reference interpreter in f64, `(L(p + h) - L(p - h)) / 2h` at
//! `h = 1e-5 * max(1, |p|)` (the step CS231n recommends: a smaller one loses more to rounding
//! than it gains in truncation), for a sample of each parameter tensor's elements and of the
//! input's. Each element's error is relative, `|a - n| / max(|a|, |n|)`, except where both
//! values are below what a central difference can resolve (about `100 eps |L| / h`): those
//! count as agreeing zeros (the gradient of a bias before training-mode batch norm is zero in
//! exact arithmetic and rounding noise in practice); for the JIT's f32 gradients that floor is
//! at least 1e-4 of the largest gradient, the order of f32 rounding in the sums. Dropout masks are fixed by the seed, so
//! the loss is a deterministic function of the parameters; inputs are random normals, so ReLU
//! and max-pooling kinks are rarely within `h` (a kink shows as one element's large error in
//! an otherwise clean tensor).

use crate::execute::{Backend, ExecError, Loss, TensorMap};
use cnnc_interp::{Buf, BufMap, Options, Precision};
use cnnc_ir::Graph;
use cnnc_passes::{Objective, TrainingOptions};
use cnnc_runtime::Rng;
use std::collections::BTreeSet;

/// What `gradcheck` checks.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct GradcheckOptions {
    /// The batch of random inputs (2 or more for training-mode batch norm).
    pub batch: usize,
    /// How many elements of each tensor are checked (all of a smaller tensor).
    pub samples: usize,
    /// The seed of the data, the element choice and the dropout masks.
    pub seed: u64,
    /// Training mode: batch norm on batch statistics, dropout active.
    pub train: bool,
}

/// The check of one tensor's gradient.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorCheck {
    /// The parameter's full name, or `input`.
    pub name: String,
    /// Elements checked, of how many.
    pub checked: usize,
    pub elements: usize,
    /// The largest relative error, at which element, with both values there.
    pub worst: f64,
    pub at: usize,
    pub analytic: f64,
    pub numeric: f64,
}

/// What [`gradcheck`] found.
#[derive(Clone, Debug, PartialEq)]
pub struct Gradcheck {
    /// The loss it differentiated (cross-entropy for a classifier, MSE otherwise).
    pub loss: Loss,
    pub value: f64,
    /// The input first, then each trainable parameter in name order.
    pub tensors: Vec<TensorCheck>,
    /// In training mode, the batch norms that normalise fewer than [`FEW_VALUES`] values per
    /// channel (batch x height x width), with that count: their output hardly depends on
    /// their input, so gradients through them are tiny or huge and finite differences are
    /// unreliable there.
    pub few_values: Vec<(String, usize)>,
    /// Whether the back end's gradients are f32 (the JIT), which widens what counts as
    /// agreeing (see [`verdict`]).
    pub f32_gradients: bool,
}

/// Below this many values per channel, training-mode batch norm makes finite differences
/// unreliable (two values normalise to -1 and 1 whatever they are).
pub const FEW_VALUES: usize = 16;

/// Finite-difference step relative to the parameter's magnitude.
const STEP: f64 = 1e-5;

/// Checks the backward pass of `graph` at `params` (see the module documentation).
pub fn gradcheck(
    graph: &Graph,
    params: &TensorMap,
    options: GradcheckOptions,
    backend: Backend,
) -> Result<Gradcheck, ExecError> {
    let (_, output) = crate::execute::io_shapes(graph)?;
    let classes = crate::execute::class_count(output);
    let loss = if classes.is_some() { Loss::CrossEntropy } else { Loss::Mse };
    let batch = options.batch.max(1);
    let mut rng = Rng::seed_from_u64(options.seed);
    let input_dims = graph[graph.inputs[0]].shape.0.clone();
    // Values exactly representable in f32, so that every back end sees the same point.
    let x = random(&mut rng, &[&[batch][..], &input_dims].concat());
    let target = match classes {
        Some(c) => Buf { shape: vec![batch], data: (0..batch).map(|_| (rng.next_u64() % c as u64) as f64).collect() },
        None => random(&mut rng, &[&[batch][..], output].concat()),
    };
    let params: BufMap = params.iter().map(|(k, v)| (k.clone(), Buf::from_tensor(v))).collect();
    let with_grads = TrainingOptions {
        objective: Objective::Loss(loss),
        optimizer: None,
        batch_stats: options.train,
        frozen: BTreeSet::new(),
        input_grads: true,
    };
    let training = cnnc_passes::training_graph(graph, &with_grads).map_err(ExecError::Passes)?;
    let run_options = Options::new().with_precision(Precision::F64).with_seed(options.seed);
    let inputs = [x.clone(), target.clone()];
    let analytic = match backend {
        Backend::Interp => {
            let run = cnnc_interp::run(&training.graph, &mut params.clone(), &inputs, &run_options)?;
            cnnc_interp::gradients::<Buf>(&training.outputs, &run)
        }
        Backend::Jit(mode) => {
            let weights: TensorMap = params.iter().map(|(k, v)| (k.clone(), v.to_tensor())).collect();
            let passes = cnnc_passes::PassOptions { verify: true, ..cnnc_passes::PassOptions::all() };
            let opt = cnnc_passes::optimize_training(graph, None, &passes, &with_grads).map_err(ExecError::Passes)?;
            let model = crate::execute::compile(&opt.plan, batch, mode, &weights, None)?;
            let args = cnnc_jit::StepArgs { lr: 0.0, step: 1, seed: options.seed };
            let r = model.run(&[x.to_tensor(), target.to_tensor()], &args)?;
            let buf = |t: &crate::execute::Tensor| Buf::from_tensor(t);
            cnnc_interp::Gradients {
                loss: r.loss.map(f64::from),
                outputs: r.outputs.iter().map(buf).collect(),
                params: r.param_grads.iter().map(|(k, t)| (k.clone(), buf(t))).collect(),
                inputs: r.input_grads.iter().map(|(&k, t)| (k, buf(t))).collect(),
            }
        }
    };
    let f32_gradients = matches!(backend, Backend::Jit(_));
    let value = analytic.loss.unwrap_or(f64::NAN);
    // The loss alone: every parameter frozen and no input gradient leave no backward pass.
    let all = params.keys().cloned().collect();
    let loss_only = TrainingOptions { frozen: all, input_grads: false, ..with_grads };
    let forward = cnnc_passes::training_graph(graph, &loss_only).map_err(ExecError::Passes)?;
    let loss_at = |params: &BufMap, x: &Buf| -> Result<f64, ExecError> {
        let run = cnnc_interp::run(&forward.graph, &mut params.clone(), &[x.clone(), target.clone()], &run_options)?;
        Ok(cnnc_interp::gradients::<Buf>(&forward.outputs, &run).loss.unwrap_or(f64::NAN))
    };

    // Gradients that are zero in exact arithmetic (a bias before training-mode batch norm)
    // come out as rounding noise on both sides; a central difference resolves nothing below
    // about eps |L| / h, so values under a hundred times that count as zero.
    let mut floor = 100.0 * f64::EPSILON * value.abs().max(1.0) / STEP;
    if f32_gradients {
        // f32 gradients carry rounding of about 1e-7 of the sums they come from: an exact zero
        // comes out as noise of that order of the largest gradients.
        let largest = analytic.params.values().chain(analytic.inputs.values()).flat_map(|g| &g.data);
        floor = floor.max(1e-4 * largest.fold(0f64, |m, v| m.max(v.abs())));
    }
    let mut tensors = Vec::new();
    if let Some(grad) = analytic.inputs.get(&0) {
        let picks = sample(x.data.len(), options.samples, &mut rng);
        let numeric = |i: usize| -> Result<f64, ExecError> {
            let h = STEP * x.data[i].abs().max(1.0);
            let (mut up, mut down) = (x.clone(), x.clone());
            up.data[i] += h;
            down.data[i] -= h;
            Ok((loss_at(&params, &up)? - loss_at(&params, &down)?) / (2.0 * h))
        };
        tensors.push(compare(crate::execute::INPUT_KEY, grad, &picks, floor, numeric)?);
    }
    for (name, grad) in &analytic.params {
        let Some(p) = params.get(name) else { continue };
        let picks = sample(p.data.len(), options.samples, &mut rng);
        let numeric = |i: usize| -> Result<f64, ExecError> {
            let h = STEP * p.data[i].abs().max(1.0);
            let (mut up, mut down) = (params.clone(), params.clone());
            up.get_mut(name).expect("listed").data[i] += h;
            down.get_mut(name).expect("listed").data[i] -= h;
            Ok((loss_at(&up, &x)? - loss_at(&down, &x)?) / (2.0 * h))
        };
        tensors.push(compare(name, grad, &picks, floor, numeric)?);
    }
    let few_values = if options.train {
        graph
            .iter()
            .filter(|(_, n)| matches!(n.op, cnnc_ir::Op::BatchNorm(_)))
            .map(|(_, n)| (n.name.clone(), batch * n.shape.0.iter().skip(1).product::<usize>()))
            .filter(|&(_, values)| values < FEW_VALUES)
            .collect()
    } else {
        Vec::new()
    };
    Ok(Gradcheck { loss, value, tensors, few_values, f32_gradients })
}

/// The worst relative error of `grad` over the elements `picks` against `numeric`; where both
/// are below `floor` (what cannot be told from zero) the error is 0.
fn compare(
    name: &str,
    grad: &Buf,
    picks: &[usize],
    floor: f64,
    numeric: impl Fn(usize) -> Result<f64, ExecError>,
) -> Result<TensorCheck, ExecError> {
    let mut check = TensorCheck {
        name: name.to_owned(),
        checked: picks.len(),
        elements: grad.data.len(),
        worst: 0.0,
        at: picks.first().copied().unwrap_or(0),
        analytic: 0.0,
        numeric: 0.0,
    };
    for &i in picks {
        let (a, n) = (grad.data[i], numeric(i)?);
        let scale = a.abs().max(n.abs());
        let error = if scale < floor { 0.0 } else { (a - n).abs() / scale };
        if error > check.worst || (i == check.at && check.worst == 0.0) {
            check = TensorCheck { worst: error, at: i, analytic: a, numeric: n, ..check };
        }
    }
    Ok(check)
}

/// Up to `samples` distinct element indices of `len`, in order: all of them when few.
fn sample(len: usize, samples: usize, rng: &mut Rng) -> Vec<usize> {
    if len <= samples {
        return (0..len).collect();
    }
    let mut picked = BTreeSet::new();
    while picked.len() < samples {
        picked.insert((rng.next_u64() % len as u64) as usize);
    }
    picked.into_iter().collect()
}

fn random(rng: &mut Rng, shape: &[usize]) -> Buf {
    let n = shape.iter().product();
    Buf { shape: shape.to_vec(), data: (0..n).map(|_| f64::from(rng.normal() as f32)).collect() }
}

/// The verdict of an error: what CS231n's notes call fine, suspicious and wrong for f64
/// gradients (below 1e-5, below 1e-3, above); for f32 gradients (the JIT) the bounds are 1e-3
/// (the back ends' tolerance for gradients) and 1e-2.
pub fn verdict(error: f64, f32_gradients: bool) -> &'static str {
    let (ok, suspicious) = if f32_gradients { (1e-3, 1e-2) } else { (1e-5, 1e-3) };
    if error < ok {
        "ok"
    } else if error < suspicious {
        "check"
    } else {
        "WRONG"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cnnc_diag::Span;
    use cnnc_ir::{Activation, BatchNorm, Conv, Fc, Op, PoolKind, Shape, Window};

    /// input [3, 7, 7] -> conv 3x3 -> bn -> relu -> maxpool 2 -> flatten -> dropout -> fc(4).
    fn model() -> Graph {
        let mut g = Graph::new("small");
        let x = g.add_input("x", Shape(vec![3, 7, 7]), Span::DUMMY).unwrap();
        let mut add = |op: Op, input, name: &str| g.add(op, vec![input], name, Span::DUMMY).unwrap().0;
        let window = |k: usize, s: usize, p: usize| Window {
            kernel: [k, k],
            stride: [s, s],
            pad: [p, p],
            dilation: [1, 1],
            ceil_mode: false,
        };
        let c = add(Op::Conv(Conv { out_channels: 4, window: window(3, 1, 1), groups: 1, bias: true }), x, "conv");
        let b = add(Op::BatchNorm(BatchNorm { eps: 1e-5, momentum: 0.1 }), c, "bn");
        let r = add(Op::Activation(Activation::Relu), b, "relu");
        let p = add(Op::Pool { kind: PoolKind::Max, window: window(2, 2, 0) }, r, "pool");
        let f = add(Op::Flatten, p, "flatten");
        let d = add(Op::Dropout { p: 0.3 }, f, "drop");
        let y = add(Op::Fc(Fc { out_features: 4, bias: true }), d, "fc");
        g.outputs.push(y);
        g
    }

    #[test]
    fn the_interpreters_backward_passes_in_both_modes() {
        let g = model();
        let params = cnnc_runtime::init_params(&g, 4);
        for train in [false, true] {
            let options = GradcheckOptions { batch: 3, samples: 12, seed: 9, train };
            let check = gradcheck(&g, &params, options, Backend::Interp).unwrap();
            assert_eq!(check.loss, Loss::CrossEntropy);
            assert!(check.few_values.is_empty(), "3 x 7 x 7 values per channel are plenty");
            assert!(check.value.is_finite());
            let names: Vec<&str> = check.tensors.iter().map(|t| t.name.as_str()).collect();
            assert_eq!(names, ["input", "bn.bias", "bn.weight", "conv.bias", "conv.weight", "fc.bias", "fc.weight"]);
            for t in &check.tensors {
                assert_eq!(t.checked, t.elements.min(12), "{}", t.name);
                assert!(
                    t.worst < 1e-5,
                    "train {train}: {} worst {} ({} vs {})",
                    t.name,
                    t.worst,
                    t.analytic,
                    t.numeric
                );
            }
        }
    }

    #[test]
    fn the_jits_backward_passes_in_both_kernel_modes() {
        let g = model();
        let params = cnnc_runtime::init_params(&g, 4);
        for mode in [cnnc_jit::Mode::Portable, cnnc_jit::Mode::host_default()] {
            let options = GradcheckOptions { batch: 3, samples: 12, seed: 9, train: true };
            let check = gradcheck(&g, &params, options, Backend::Jit(mode)).unwrap();
            assert!(check.f32_gradients);
            for t in &check.tensors {
                assert_eq!(
                    verdict(t.worst, true),
                    "ok",
                    "{mode:?}: {} worst {} ({} vs {})",
                    t.name,
                    t.worst,
                    t.analytic,
                    t.numeric
                );
            }
        }
    }

    #[test]
    fn batch_norm_on_few_values_is_flagged() {
        let g = model();
        let params = cnnc_runtime::init_params(&g, 4);
        let options = GradcheckOptions { batch: 1, samples: 1, seed: 1, train: false };
        assert!(gradcheck(&g, &params, options, Backend::Interp).unwrap().few_values.is_empty(), "inference mode");
        // Training mode on a batch of 1 takes 49 values per channel; shrink the map instead.
        let mut small = Graph::new("small");
        let x = small.add_input("x", Shape(vec![2, 1, 1]), Span::DUMMY).unwrap();
        let (b, _) =
            small.add(Op::BatchNorm(BatchNorm { eps: 1e-5, momentum: 0.1 }), vec![x], "bn", Span::DUMMY).unwrap();
        let (f, _) = small.add(Op::Flatten, vec![b], "flatten", Span::DUMMY).unwrap();
        let (y, _) = small.add(Op::Fc(Fc { out_features: 3, bias: true }), vec![f], "fc", Span::DUMMY).unwrap();
        small.outputs.push(y);
        let params = cnnc_runtime::init_params(&small, 4);
        let options = GradcheckOptions { batch: 2, samples: 2, seed: 1, train: true };
        let check = gradcheck(&small, &params, options, Backend::Interp).unwrap();
        assert_eq!(check.few_values, [("bn".to_string(), 2)]);
    }

    #[test]
    fn a_wrong_gradient_is_found() {
        let grad = Buf { shape: vec![4], data: vec![1.0, 2.0, 0.0, 4.0] };
        let right = |i: usize| Ok([1.0, 2.0, 0.0, 4.0][i]);
        let check = compare("w", &grad, &[0, 1, 2, 3], 1e-9, right).unwrap();
        assert_eq!(check.worst, 0.0, "zeros on both sides agree");
        let noise = |i: usize| Ok([1.0, 2.0, 1e-10, 4.0][i]);
        assert_eq!(compare("w", &grad, &[2], 1e-9, noise).unwrap().worst, 0.0, "noise below the floor is zero");
        let wrong = |i: usize| Ok([1.0, 2.0, 0.0, 4.4][i]);
        let check = compare("w", &grad, &[0, 1, 2, 3], 1e-9, wrong).unwrap();
        assert_eq!((check.at, verdict(check.worst, false)), (3, "WRONG"));
        assert!((check.worst - 0.4 / 4.4).abs() < 1e-12);
        assert_eq!(verdict(1e-7, false), "ok");
        assert_eq!(verdict(1e-4, false), "check");
        assert_eq!(verdict(1e-4, true), "ok", "f32 gradients");
    }
}
