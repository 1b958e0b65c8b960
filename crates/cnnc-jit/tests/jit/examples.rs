//! Every example at a reduced resolution: the inference plan (every pass) and one training
//! step (SGD with momentum, batch statistics, dropout), on the JIT in both modes against the
//! interpreter's physical run of the same plan.

use crate::common::*;
use cnnc_passes::{PassOptions, optimize, optimize_training};
use cnnc_runtime::{Tensor, TensorMap};

fn check_example(file: &str, shape: &[usize], train_batch: usize, overrides: &[(&str, &str)]) {
    // The deep ResNets: see the comment above the list.
    let batch_stats = !matches!(file, "resnet50.cnn" | "resnet101.cnn" | "resnet152.cnn");
    let g = lower_example(file, shape, overrides);
    let weights = random_weights(&g, 7);
    let batch = 2;
    let x = batch_of(shape, batch, 11);
    let opt = optimize(&g, Some(&weights), &PassOptions::all()).unwrap();
    no_pass_on_loops(file, &opt.plan, batch);
    let mut worst = jit_equals_interp_both(
        &format!("{file} inference"),
        &opt.plan,
        &weights,
        std::slice::from_ref(&x),
        RTOL_FORWARD,
    );
    worst = worst.max(depth_first_equals_interp(file, &opt.plan, &weights, &x));
    let training = cnnc_passes::TrainingOptions { batch_stats, ..sgd_step(&g) };
    let opt = optimize_training(&g, Some(&weights), &PassOptions::all(), &training).unwrap();
    let cnnc_passes::Objective::Loss(loss) = training.objective else { unreachable!() };
    no_pass_on_loops(file, &opt.plan, train_batch);
    let inputs = [batch_of(shape, train_batch, 12), target(&g, &loss, train_batch)];
    // A training step in both modes: native mode runs its own backward kernels.
    worst = worst.max(jit_equals_interp_both(&format!("{file} training"), &opt.plan, &weights, &inputs, RTOL_GRAD));
    eprintln!("{file} at {shape:?}: worst relative error {worst:e}");
}

/// The inference plan run depth first, each image through every node that can before the
/// next (at these resolutions the default rule leaves whole batches), in both modes against
/// the interpreter; the worst error.
fn depth_first_equals_interp(file: &str, plan: &cnnc_ir::plan::Plan, weights: &TensorMap, x: &Tensor) -> f64 {
    let r = reference(plan, weights, std::slice::from_ref(x));
    let mut worst = 0f64;
    for mode in MODES {
        let options = cnnc_jit::Options::new(x.shape[0]).with_mode(mode).with_depth_first_bytes(0);
        let m = cnnc_jit::CompiledModel::compile(plan, &options).unwrap();
        assert!(m.depth_first() > 1, "{file} ({mode:?}): no node runs depth first");
        let what = format!("{file} inference, depth first through {} nodes", m.depth_first());
        worst = worst.max(jit_equals_with(&what, plan, weights, std::slice::from_ref(x), &options, RTOL_FORWARD, &r));
    }
    worst
}

/// Every convolution pass (forward, input and weight gradient; matrix products too) of the
/// examples' plans runs on the kernels or the vectorised lowerings in both modes: a pass that
/// fell through to the general scalar loops would still match the interpreter, tens of times
/// slower, and only this catches it. One known exception: the input gradient into a plain map
/// (a stem's into the image, which `cnnc grad` asks for and training never does) runs on the
/// loops in portable mode, and in native mode too for strided stems (AlexNet's 11x11/4, the
/// ResNets' and GoogLeNet's 7x7/2).
fn no_pass_on_loops(file: &str, plan: &cnnc_ir::plan::Plan, batch: usize) {
    for mode in MODES {
        let m = cnnc_jit::CompiledModel::compile(plan, &cnnc_jit::Options::new(batch).with_mode(mode)).unwrap();
        let slow: Vec<String> = m
            .lowerings()
            .iter()
            .filter(|l| l.lowering == cnnc_jit::Lowering::Loops)
            .filter(|l| {
                let into_plain = plan.layouts[l.node.index()] == cnnc_ir::Layout::Plain;
                !(l.pass == cnnc_jit::ConvPass::BackwardData && into_plain)
            })
            .map(|l| format!("{} ({:?})", plan.graph[l.node].name, l.pass))
            .collect();
        assert!(slow.is_empty(), "{file} in {mode:?} mode runs these passes on the scalar loops: {slow:?}");
        assert!(!m.lowerings().is_empty(), "{file}: no convolution pass recorded");
    }
}

macro_rules! examples {
    ($($test:ident: $file:literal at $shape:expr, batch $b:literal $(, $key:literal = $value:literal)*;)*) => {
        $(
            #[test]
            fn $test() {
                check_example($file, &$shape, $b, &[("classes", "10") $(, ($key, $value))*]);
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

// Training batches: ResNets normalise 1x1 maps in their last stage at this resolution, and
// batch norm over two values per channel amplifies the difference between f32 accumulation
// (the JIT) and f64 (the interpreter) past any fixed tolerance; eight values condition it.
// Through the 16 to 50 blocks of ResNet-50/101/152 the amplification compounds even so
// (1e-2 to 1e-1 at the output, measured), so their training step differentiates the model as
// deployed (batch norm on running statistics, `batch_stats: false`) at the same tolerance;
// the training forms of batch norm are checked through ResNet-18/34 and the op tests.
// Widths: ResNet-18/50 and VGG-11 run at the papers' channel counts (every tile and block
// shape of the real networks); the deeper ones repeat those layers and run narrower
// (`width`), which keeps their structure at a fraction of the weights and the time.
examples! {
    alexnet: "alexnet.cnn" at [3, 63, 63], batch 2, "hidden" = "64";
    allcnnc: "allcnnc.cnn" at [3, 16, 16], batch 2;
    cifar_simple: "cifar_simple.cnn" at [3, 32, 32], batch 2;
    digits: "digits.cnn" at [1, 8, 8], batch 8;
    googlenet: "googlenet.cnn" at [3, 64, 64], batch 2;
    lenet5: "lenet5.cnn" at [1, 32, 32], batch 2;
    resnet18: "resnet18.cnn" at [3, 16, 16], batch 8;
    resnet34: "resnet34.cnn" at [3, 16, 16], batch 8, "width" = "32";
    resnet50: "resnet50.cnn" at [3, 16, 16], batch 2;
    resnet101: "resnet101.cnn" at [3, 16, 16], batch 2, "width" = "16";
    resnet152: "resnet152.cnn" at [3, 16, 16], batch 2, "width" = "16";
    vgg11: "vgg11.cnn" at [3, 32, 32], batch 1, "hidden" = "64";
    vgg13: "vgg13.cnn" at [3, 32, 32], batch 1, "hidden" = "64", "width" = "16";
    vgg16: "vgg16.cnn" at [3, 32, 32], batch 1, "hidden" = "64", "width" = "32";
    vgg19: "vgg19.cnn" at [3, 32, 32], batch 1, "hidden" = "64", "width" = "16";
}
