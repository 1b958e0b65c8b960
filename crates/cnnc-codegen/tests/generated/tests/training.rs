//! The generated training entries of the test cases against the interpreter running the
//! source graph's training graph: the loss, every parameter gradient (gradient entries), and
//! the change one optimiser step makes to every parameter, running statistic and optimiser
//! state (step entries), within rtol 1e-3 (`assert_close_backward`), at batch 1 and 3 (batch 2 and 3 where a batch norm
//! normalises one value per channel and image at batch 1).

mod common;

use cnnc_codegen_generated as generated;
use cnnc_runtime::{Tensor, TensorMap};
use common::*;

const RTOL: f64 = 1e-3;

fn batches(g: &cnnc_ir::Graph) -> [usize; 2] {
    let one_pixel_bn = g
        .iter()
        .any(|(_, n)| matches!(n.op, cnnc_ir::Op::BatchNorm(_)) && n.shape.0.iter().skip(1).product::<usize>() == 1);
    if one_pixel_bn { [2, 3] } else { [1, 3] }
}

/// What a test does with one trainer after its step.
struct Check<'a> {
    what: String,
    want: &'a cnnc_interp::Gradients<Tensor>,
    before: &'a TensorMap,
    after: &'a TensorMap,
}

impl Check<'_> {
    fn loss(&self, got: f32) {
        let want = self.want.loss.expect("a loss");
        assert!(((got as f64) - want).abs() <= RTOL * want.abs().max(1e-6), "{}: loss {got} against {want}", self.what);
    }

    fn gradients(&self, gradient: impl Fn(&str) -> Option<Vec<f32>>) {
        assert!(!self.want.params.is_empty(), "{}: no gradients", self.what);
        for (name, want) in &self.want.params {
            let got = gradient(name).unwrap_or_else(|| panic!("{}: no gradient of {name}", self.what));
            assert_close_backward(&format!("{}: gradient of {name}", self.what), &got, &want.data, RTOL);
        }
    }

    /// The gradient of the model input.
    fn input(&self, got: Vec<f32>) {
        let want = &self.want.inputs[&0];
        assert_close_backward(&format!("{}: input gradient", self.what), &got, &want.data, RTOL);
    }

    /// `after - before` of every tensor the step changed, against the generated one's.
    fn updates(&self, tensor: impl Fn(&str) -> Option<Vec<f32>>) {
        let mut changed = 0;
        for (name, after) in self.after {
            let before = self.before.get(name).map_or(vec![0.0; after.data.len()], |t| t.data.clone());
            let want: Vec<f32> = after.data.iter().zip(&before).map(|(a, b)| a - b).collect();
            if want.iter().all(|&d| d == 0.0) {
                continue;
            }
            changed += 1;
            let got = tensor(name).unwrap_or_else(|| panic!("{}: no tensor {name}", self.what));
            let got: Vec<f32> = got.iter().zip(&before).map(|(a, b)| a - b).collect();
            assert_close_backward(&format!("{}: change of {name}", self.what), &got, &want, RTOL);
        }
        assert!(changed > 0, "{}: the step changes nothing", self.what);
    }
}

macro_rules! training {
    ($test:ident: $module:ident :: $entry:ident, $target:ident, $check:ident) => {
        training!($test: $module::$entry, $target, $check, seed 20);
    };
    ($test:ident: $module:ident :: $entry:ident, $target:ident, $check:ident, seed $seed:literal) => {
        #[test]
        fn $test() {
            use generated::$module::$entry;
            let case = case(stringify!($module));
            let t = case.training.iter().find(|t| t.name == stringify!($entry)).expect("the entry");
            let g = models::lower(&case);
            let weights = random_weights(&g, 7);
            for batch in batches(&g) {
                let x = input(&g, batch, $seed + batch as u64);
                let y = target(&g, &t.loss, batch);
                let options = step_options();
                let (want, after) = reference_step(&g, t, &weights, &[x.clone(), y.clone()], &options);
                let mut trainer = $entry::from_tensors(&named(&weights)).expect("weights load");
                let args = generated::$module::StepArgs { lr: options.lr as f32, step: options.step, seed: options.seed };
                let loss = training!(@step trainer, $target, x, y, batch, args);
                let plan = models::training(&g, t);
                let inputs = [x.clone(), y.clone()];
                let r = cnnc_interp::run(&plan.graph, &mut weights.clone(), &inputs, &options.keeping_values())
                    .expect("the interpreter runs the plan's graph");
                let flips = decision_flips(&plan, |k| trainer.value(k), &r);
                assert!(flips.is_empty(), "{} at batch {batch}: the inputs hit a kink, pick others: {flips:?}", stringify!($test));
                let check = Check { what: format!("{} at batch {batch}", stringify!($test)), want: &want, before: &weights, after: &after };
                check.loss(loss);
                training!(@$check check, trainer);
            }
        }
    };
    (@step $trainer:ident, labels, $x:ident, $y:ident, $batch:ident, $args:ident) => {
        $trainer.step(&$x.data, &labels(&$y), $batch, &$args).expect("the step runs")
    };
    (@step $trainer:ident, tensor, $x:ident, $y:ident, $batch:ident, $args:ident) => {
        $trainer.step(&$x.data, &$y.data, $batch, &$args).expect("the step runs")
    };
    (@gradients $check:ident, $trainer:ident) => {{
        $check.gradients(|name| $trainer.gradient(name));
        training!(@input $check, $trainer);
    }};
    (@input $check:ident, $trainer:ident) => {{
        let mut dx = vec![f32::NAN; $check.want.inputs[&0].data.len()];
        $trainer.input_gradient(&mut dx).expect("the input gradient");
        $check.input(dx);
    }};
    (@updates $check:ident, $trainer:ident) => {
        $check.updates(|name| $trainer.tensor(name))
    };
}

training!(lenet5_gradients: lenet5::Grads, labels, gradients);
training!(lenet5_sgd: lenet5::Sgd, labels, updates);
training!(lenet5_adam: lenet5::Adam, labels, updates);
training!(cifar_simple_multi_margin: cifar_simple::Grads, labels, gradients);
training!(allcnnc_gradients_dropout: allcnnc::Grads, labels, gradients, seed 40);
training!(allcnnc_sgd_dropout: allcnnc::Sgd, labels, updates, seed 40);
training!(resnet18_sgd: resnet18::Sgd, labels, updates);
training!(vgg11_gradients: vgg11::Grads, labels, gradients, seed 40);
training!(inception_mse: inception::Grads, tensor, gradients);
training!(tiny_resnet_gradients: tiny_resnet::Grads, labels, gradients);
training!(tiny_resnet_sgd: tiny_resnet::Sgd, labels, updates);
training!(tiny_resnet_adam: tiny_resnet::Adam, labels, updates);
training!(activations_mse: activations::Grads, tensor, gradients);
training!(pools_l1: pools::Grads, tensor, input);
training!(pyramid_huber: pyramid::Grads, tensor, gradients);
training!(norms_sgd: norms::Sgd, tensor, updates);
training!(mobile_mse: mobile::Grads, tensor, gradients);
training!(heads_mse: heads::Grads, tensor, input);
training!(conv_zoo_mse: conv_zoo::Grads, tensor, gradients);
training!(mlp_hinge: mlp::Grads, labels, gradients);
training!(mlp_nesterov: mlp::Nesterov, labels, updates);
training!(mlp_rmsprop: mlp::RmsProp, labels, updates);

/// The vector-Jacobian product: the gradients of some scalar with respect to the model's
/// output come in as an input (no loss); every parameter's and the input's gradient.
#[test]
fn lenet5_vjp() {
    use generated::lenet5::{StepArgs, Vjp};
    let case = case("lenet5");
    let t = case.training.iter().find(|t| t.name == "Vjp").expect("the entry");
    let g = models::lower(&case);
    let weights = random_weights(&g, 7);
    let mut vjp = Vjp::from_tensors(&named(&weights)).expect("weights load");
    for batch in [1, 3] {
        let x = input(&g, batch, 30 + batch as u64);
        let gy = random_tensor(&[batch, 10], 40 + batch as u64);
        let options = step_options();
        let (want, after) = reference_step(&g, t, &weights, &[x.clone(), gy.clone()], &options);
        let args = StepArgs { lr: 0.0, step: 1, seed: 0 };
        vjp.step(&x.data, &gy.data, batch, &args).expect("the step runs");
        let check =
            Check { what: format!("lenet5_vjp at batch {batch}"), want: &want, before: &weights, after: &after };
        training!(@gradients check, vjp);
    }
}
