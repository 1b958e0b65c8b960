//! The optimised graph computes what the source graph computes, and its execution plan runs
//! exactly as the graph: every example, at a reduced resolution, with random weights
//! (batch-norm statistics included), on the reference interpreter.
//!
//! - Inference: the outputs of the optimised graph (BN folded, fused, blocked layouts, concats
//!   in place) within rtol 1e-4 (of each output's largest magnitude) of the source graph's.
//! - A training step (loss, backward, SGD with momentum and weight decay, batch statistics,
//!   dropout with p > 0: masks are keyed by layer name and step, so the passes cannot change
//!   them): the loss, the outputs, the input gradient and the change of every parameter,
//!   running statistic and momentum buffer, within the same tolerance, between the training
//!   graph of the source and the optimised training graph.
//! - The physical mode (the plan run through one arena, layouts and packed weights real)
//!   equals the logical mode bit for bit, at batch 1 and 3, in both cases (a training step
//!   of a model with batch norm on a 1x1 map needs batch 2: one value per channel has no
//!   variance).

use crate::common::*;
use cnnc_interp::{Gradients, Options, Run, gradients, run, run_plan};
use cnnc_ir::plan::OutputRole;
use cnnc_ir::{Graph, Loss, Op, Optimizer, Sgd};
use cnnc_passes::{Optimized, PassOptions, TrainingOptions, optimize, optimize_training, training_graph};
use cnnc_runtime::{Rng, Tensor, TensorMap, init_params};

/// He/Xavier weights from the initialiser; batch-norm statistics, gammas, betas and biases
/// randomised so that folding has something to fold.
fn random_weights(g: &Graph, seed: u64) -> TensorMap {
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

fn random_tensor(shape: &[usize], seed: u64) -> Tensor {
    let mut rng = Rng::seed_from_u64(seed);
    Tensor { shape: shape.to_vec(), data: (0..shape.iter().product()).map(|_| rng.normal() as f32).collect() }
}

/// The largest difference relative to the largest magnitude of `want`.
fn rel_error(got: &Tensor, want: &Tensor) -> f64 {
    assert_eq!(got.shape, want.shape);
    let scale = want.data.iter().fold(0f64, |m, &x| m.max(f64::from(x).abs())).max(1e-30);
    got.data.iter().zip(&want.data).fold(0f64, |m, (&a, &b)| m.max((f64::from(a) - f64::from(b)).abs())) / scale
}

const RTOL: f64 = 1e-4;

fn check(what: &str, got: &Tensor, want: &Tensor) -> f64 {
    let e = rel_error(got, want);
    assert!(e <= RTOL, "{what}: relative error {e:e}");
    e
}

/// `after - before` for every tensor an effect changed.
fn deltas(before: &TensorMap, after: &TensorMap) -> TensorMap {
    after
        .iter()
        .filter_map(|(name, t)| {
            let old = before.get(name)?;
            let data: Vec<f32> = t.data.iter().zip(&old.data).map(|(a, b)| a - b).collect();
            data.iter().any(|&d| d != 0.0).then(|| (name.clone(), Tensor { shape: t.shape.clone(), data }))
        })
        .collect()
}

/// Equal bit for bit (so that NaNs where a degenerate batch makes them compare equal too).
fn bits_equal(a: &Tensor, b: &Tensor) -> bool {
    a.shape == b.shape && a.data.iter().zip(&b.data).all(|(x, y)| x.to_bits() == y.to_bits())
}

/// A logical run of the optimised graph: its outputs and the state after it.
struct Logical {
    outputs: Vec<Option<Tensor>>,
    state: TensorMap,
}

fn logical(opt: &Optimized, inputs: &[Tensor], options: &Options) -> Logical {
    let mut state = opt.weights.clone().expect("weights were given");
    let r = run(opt.graph(), &mut state, inputs, options).unwrap();
    Logical { outputs: r.outputs(), state }
}

/// The plan, run physically on the source's weights, gives the logical run of its graph
/// (`want`, on the same inputs) bit for bit: outputs and the state its effects write.
fn physical_equals_logical(
    what: &str,
    opt: &Optimized,
    source_weights: &TensorMap,
    inputs: &[Tensor],
    options: &Options,
    want: &Logical,
) {
    let logical = &want.outputs;
    let logical_state = &want.state;
    let mut physical_state = source_weights.clone();
    let physical = run_plan(&opt.plan, &mut physical_state, inputs, options)
        .unwrap_or_else(|e| panic!("{what}: {e}\n{}", opt.plan.render()));
    let a: Vec<Option<Tensor>> = physical.outputs();
    for (k, (p, l)) in a.iter().zip(logical).enumerate() {
        let same = match (p, l) {
            (Some(p), Some(l)) => bits_equal(p, l),
            (p, l) => p.is_none() && l.is_none(),
        };
        assert!(
            same,
            "{what}: output {k} ({:?}) differs between the physical and the logical run",
            opt.plan.outputs[k]
        );
    }
    // What the effects wrote (no plan with effects folds batch norms, so the names agree).
    let before = opt.weights.as_ref().expect("weights were given");
    for (name, l) in logical_state.iter().filter(|(name, l)| before.get(*name).is_none_or(|b| !bits_equal(b, l))) {
        let same = physical_state.get(name).is_some_and(|p| bits_equal(p, l));
        assert!(same, "{what}: `{name}` differs between the physical and the logical run");
    }
}

fn batch_of(shape: &[usize], batch: usize, seed: u64) -> Tensor {
    let mut full = vec![batch];
    full.extend_from_slice(shape);
    random_tensor(&full, seed)
}

/// Class labels (or a regression target) for a batch of `g`'s outputs.
fn target(g: &Graph, loss: &Loss, batch: usize) -> Tensor {
    let out = &g[g.outputs[0]].shape.0;
    if loss.takes_labels() {
        Tensor { shape: vec![batch], data: (0..batch).map(|i| ((3 * i + 1) % out[0]) as f32).collect() }
    } else {
        batch_of(out, batch, 99)
    }
}

/// Whether some batch norm normalises a single value per channel and image.
fn bn_on_one_pixel(g: &Graph) -> bool {
    g.iter().any(|(_, n)| matches!(n.op, Op::BatchNorm(_)) && n.shape.0.iter().skip(1).product::<usize>() == 1)
}

fn step(g: &Graph) -> TrainingOptions {
    let out = &g[g.outputs[0]].shape.0;
    let loss = if matches!(out[..], [_] | [_, 1, 1]) { Loss::CrossEntropy } else { Loss::Mse };
    let sgd = Sgd { momentum: 0.9, weight_decay: 1e-3, nesterov: false };
    TrainingOptions { optimizer: Some(Optimizer::Sgd(sgd)), input_grads: true, ..TrainingOptions::new(loss) }
}

fn check_example(file: &str, shape: &[usize], overrides: &[(&str, &str)]) {
    let g = lower_example_with(file, Some(shape.to_vec()), overrides);
    let weights = random_weights(&g, 7);
    let batch = 3;
    let x = batch_of(shape, batch, 11);
    let options = Options::new().with_seed(5).with_lr(0.1).with_step(2);
    let mut worst = 0f64;

    // Inference: every pass.
    let opt = optimize(&g, Some(&weights), &PassOptions::all()).unwrap();
    let outputs = |r: &Run| -> Vec<Tensor> { r.outputs().into_iter().flatten().collect() };
    let want = outputs(&run(&g, &mut weights.clone(), std::slice::from_ref(&x), &options).unwrap());
    let got_run = logical(&opt, std::slice::from_ref(&x), &options);
    let got: Vec<Tensor> = got_run.outputs.iter().flatten().cloned().collect();
    assert!(want.iter().all(|t| t.data.iter().any(|&v| v != 0.0)), "{file}: an output is all zeros");
    for (k, (a, b)) in got.iter().zip(&want).enumerate() {
        worst = worst.max(check(&format!("{file} inference output {k}"), a, b));
    }
    physical_equals_logical(
        &format!("{file} inference at batch {batch}"),
        &opt,
        &weights,
        std::slice::from_ref(&x),
        &options,
        &got_run,
    );
    let x1 = [batch_of(shape, 1, 12)];
    let want1 = logical(&opt, &x1, &options);
    physical_equals_logical(&format!("{file} inference at batch 1"), &opt, &weights, &x1, &options, &want1);

    // One training step, from the source's training graph and from the optimised one.
    let training = step(&g);
    let source = training_graph(&g, &training).unwrap();
    let opt = optimize_training(&g, Some(&weights), &PassOptions::all(), &training).unwrap();
    assert_eq!(opt.weights.as_ref(), Some(&weights), "training passes leave the weights alone");
    let cnnc_passes::Objective::Loss(loss) = training.objective else { unreachable!() };
    let inputs = [x.clone(), target(&g, &loss, batch)];
    let mut want_state = weights.clone();
    let want_run = run(&source.graph, &mut want_state, &inputs, &options).unwrap();
    let want: Gradients<Tensor> = gradients(&source.outputs, &want_run);
    let got_logical = {
        let mut state = weights.clone();
        let r = run(opt.graph(), &mut state, &inputs, &options).unwrap();
        (gradients::<Tensor>(&opt.plan.outputs, &r), Logical { outputs: r.outputs(), state })
    };
    let (got, got_logical) = got_logical;
    let got_state = &got_logical.state;
    let (lw, lg) = (want.loss.unwrap(), got.loss.unwrap());
    assert!((lw - lg).abs() <= RTOL * lw.abs(), "{file}: loss {lg} against {lw}");
    for (k, (a, b)) in got.outputs.iter().zip(&want.outputs).enumerate() {
        worst = worst.max(check(&format!("{file} training output {k}"), a, b));
    }
    worst = worst.max(check(&format!("{file} input gradient"), &got.inputs[&0], &want.inputs[&0]));
    let (dw, dg) = (deltas(&weights, &want_state), deltas(&weights, got_state));
    assert_eq!(dg.keys().collect::<Vec<_>>(), dw.keys().collect::<Vec<_>>(), "{file}: the step changes other tensors");
    let updates = source.outputs.iter().filter(|r| matches!(r, OutputRole::Update(_))).count();
    assert!(updates > 0 && !dw.is_empty(), "{file}: the step updates nothing");
    for (name, want) in &dw {
        worst = worst.max(check(&format!("{file} change of {name}"), &dg[name], want));
    }
    physical_equals_logical(
        &format!("{file} training at batch {batch}"),
        &opt,
        &weights,
        &inputs,
        &options,
        &got_logical,
    );
    // Batch norm on batch statistics needs two values per channel: where a map is 1x1 (a
    // ResNet's last stage at this resolution) the smallest batch is 2, not 1.
    let n = if bn_on_one_pixel(&g) { 2 } else { 1 };
    let inputs = [batch_of(shape, n, 13), target(&g, &loss, n)];
    let want = logical(&opt, &inputs, &options);
    physical_equals_logical(&format!("{file} training at batch {n}"), &opt, &weights, &inputs, &options, &want);
    eprintln!("{file} at {shape:?}: worst relative error {worst:e}");
}

macro_rules! examples {
    ($($test:ident: $file:literal at $shape:expr $(, $key:literal = $value:literal)*;)*) => {
        $(
            #[test]
            fn $test() {
                check_example($file, &$shape, &[("classes", "10") $(, ($key, $value))*]);
            }
        )*

        #[test]
        fn every_example_is_checked() {
            let mut checked = vec![$($file),*];
            checked.sort();
            assert_eq!(checked, example_files());
        }
    };
}

// Sizes keep the suite fast: the smallest inputs every stage takes, narrow classifier heads
// (`hidden`) where the full 4096-wide ones would dominate, and a quarter of the convolutions'
// widths (`width`: ResNet-152 has 60 M parameters at full width, and cloning, packing and
// comparing them took most of its time, not the arithmetic).
examples! {
    alexnet: "alexnet.cnn" at [3, 63, 63], "hidden" = "64";
    allcnnc: "allcnnc.cnn" at [3, 16, 16];
    cifar_simple: "cifar_simple.cnn" at [3, 32, 32];
    digits: "digits.cnn" at [1, 8, 8];
    googlenet: "googlenet.cnn" at [3, 64, 64];
    lenet5: "lenet5.cnn" at [1, 32, 32];
    resnet18: "resnet18.cnn" at [3, 16, 16], "width" = "16";
    resnet34: "resnet34.cnn" at [3, 16, 16], "width" = "16";
    resnet50: "resnet50.cnn" at [3, 16, 16], "width" = "16";
    resnet101: "resnet101.cnn" at [3, 16, 16], "width" = "16";
    resnet152: "resnet152.cnn" at [3, 16, 16], "width" = "16";
    vgg11: "vgg11.cnn" at [3, 32, 32], "hidden" = "64", "width" = "16";
    vgg13: "vgg13.cnn" at [3, 32, 32], "hidden" = "64", "width" = "16";
    vgg16: "vgg16.cnn" at [3, 32, 32], "hidden" = "64", "width" = "16";
    vgg19: "vgg19.cnn" at [3, 32, 32], "hidden" = "64", "width" = "16";
}
