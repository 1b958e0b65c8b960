//! The optimised graph computes what the source graph computes: every example, at a reduced
//! resolution (and, for VGG and AlexNet, with a narrow classifier: `hidden=64, classes=10`
//! instead of fc layers of 25088x4096, which took most of the test suite's time in f64), with
//! random weights (batch-norm statistics included), run on the reference interpreter. Sizes
//! are chosen to keep the whole file to a few seconds of CPU time per network. Inference: outputs within rtol 1e-4 (of each output's largest magnitude).
//! Training: outputs, every parameter gradient, the input gradient and the updated running
//! statistics, to the same tolerance.
//!
//! Dropout masks are drawn per node index in the interpreter, and passes renumber nodes, so
//! the training comparison sets every dropout probability to 0 (the nodes stay; inference
//! removes them anyway).

mod common;

use cnnc_interp::{Options, backward, forward};
use cnnc_ir::{Graph, Op};
use cnnc_passes::{Mode, PassOptions, optimize};
use cnnc_runtime::{Rng, Tensor, TensorMap, init_params};
use common::*;

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

fn check_example(file: &str, shape: &[usize], settings: &[(&str, &str)]) {
    let batch = 2;
    let g = lower_example_with(file, Some(shape.to_vec()), settings);
    let weights = random_weights(&g, 7);
    let mut input_shape = vec![batch];
    input_shape.extend_from_slice(shape);
    let x = random_tensor(&input_shape, 11);

    // Inference: every pass.
    let opt = optimize(&g, Some(&weights), &PassOptions::all()).unwrap();
    let want: Vec<Tensor> = forward(&g, &weights, std::slice::from_ref(&x), Options::inference()).unwrap().outputs();
    let new_weights = opt.weights.as_ref().unwrap();
    let got: Vec<Tensor> =
        forward(&opt.graph, new_weights, std::slice::from_ref(&x), Options::inference()).unwrap().outputs();
    let mut worst = 0f64;
    assert!(want.iter().all(|t| t.data.iter().any(|&v| v != 0.0)), "{file}: an output is all zeros");
    for (k, (a, b)) in got.iter().zip(&want).enumerate() {
        worst = worst.max(check(&format!("{file} inference output {k}"), a, b));
    }

    // Training: the passes that keep semantics; dropout with p = 0 (see the module docs).
    let mut g = g;
    for id in g.ids() {
        if let Op::Dropout { .. } = g[id].op {
            g.node_mut(id).op = Op::Dropout { p: 0.0 };
        }
    }
    let opt = optimize(&g, Some(&weights), &PassOptions::all().with_mode(Mode::Training)).unwrap();
    assert_eq!(opt.weights.as_ref(), Some(&weights), "training passes leave the weights alone");
    let run = |graph: &Graph| {
        let trace = forward(graph, &weights, std::slice::from_ref(&x), Options::training(3)).unwrap();
        let outputs: Vec<Tensor> = trace.outputs();
        let seeds: Vec<Tensor> =
            outputs.iter().enumerate().map(|(k, o)| random_tensor(&o.shape, 100 + k as u64)).collect();
        let grads = backward(graph, &trace, &seeds).unwrap();
        (outputs, grads, trace.running_stats::<Tensor>())
    };
    let (want_out, want_grads, want_stats) = run(&g);
    let (got_out, got_grads, got_stats) = run(&opt.graph);
    for (k, (a, b)) in got_out.iter().zip(&want_out).enumerate() {
        worst = worst.max(check(&format!("{file} training output {k}"), a, b));
    }
    assert_eq!(got_grads.params.keys().collect::<Vec<_>>(), want_grads.params.keys().collect::<Vec<_>>());
    for (name, want) in &want_grads.params {
        worst = worst.max(check(&format!("{file} gradient of {name}"), &got_grads.params[name], want));
    }
    worst = worst.max(check(&format!("{file} input gradient"), &got_grads.inputs[0], &want_grads.inputs[0]));
    assert_eq!(got_stats.keys().collect::<Vec<_>>(), want_stats.keys().collect::<Vec<_>>());
    for (name, want) in &want_stats {
        worst = worst.max(check(&format!("{file} {name}"), &got_stats[name], want));
    }
    eprintln!("{file} at {shape:?} {settings:?}: worst relative error {worst:e}");
}

/// A narrow classifier for the networks whose fc layers dominate the cost: the convolutions
/// and the classifier's structure are unchanged, its widths shrink.
const NARROW: &[(&str, &str)] = &[("hidden", "64"), ("classes", "10")];

macro_rules! examples {
    (@settings) => { &[] };
    (@settings $settings:expr) => { $settings };
    ($($test:ident: $file:literal at $shape:expr $(, $settings:expr)?;)*) => {
        $(
            #[test]
            fn $test() {
                check_example($file, &$shape, examples!(@settings $($settings)?));
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

examples! {
    alexnet: "alexnet.cnn" at [3, 63, 63], NARROW;
    allcnnc: "allcnnc.cnn" at [3, 16, 16];
    cifar_simple: "cifar_simple.cnn" at [3, 32, 32];
    googlenet: "googlenet.cnn" at [3, 64, 64];
    lenet5: "lenet5.cnn" at [1, 32, 32];
    resnet18: "resnet18.cnn" at [3, 32, 32];
    resnet34: "resnet34.cnn" at [3, 32, 32];
    resnet50: "resnet50.cnn" at [3, 32, 32];
    // The deepest ResNets repeat the bottlenecks ResNet-50 checks at 32x32; at 16x16 their last
    // stages run on 1x1 maps, which still exercises every fusion and fold.
    resnet101: "resnet101.cnn" at [3, 16, 16];
    resnet152: "resnet152.cnn" at [3, 16, 16];
    vgg11: "vgg11.cnn" at [3, 32, 32], NARROW;
    vgg13: "vgg13.cnn" at [3, 32, 32], NARROW;
    vgg16: "vgg16.cnn" at [3, 32, 32], NARROW;
    vgg19: "vgg19.cnn" at [3, 32, 32], NARROW;
}
