//! The models the generated-code tests compile, shared by the build script (which generates
//! their modules) and the tests (which build the same plans and run them on the interpreter).
//! Small resolutions and widths keep both the generated code and the interpreter runs cheap.

use cnnc_ir::plan::Plan;
use cnnc_ir::{Adam, Graph, HingeForm, Loss, Optimizer, RmsProp, Sgd};
use cnnc_passes::{PassOptions, TrainingOptions, optimize, optimize_training};

/// A training plan a case compiles, as the struct `name`.
pub struct Training {
    pub name: &'static str,
    pub loss: Loss,
    /// `None`: gradients only.
    pub optimizer: Option<Optimizer>,
    /// The vector-Jacobian product (gradients of the model's output as inputs) instead of a
    /// loss.
    pub vjp: bool,
}

/// One model: a `.cnn` file of the repository (from the workspace root), lowered at `shape`
/// with `overrides`, compiled for inference and each training plan.
pub struct Case {
    pub module: &'static str,
    pub file: &'static str,
    pub model: Option<&'static str>,
    pub shape: Option<&'static [usize]>,
    pub overrides: &'static [(&'static str, &'static str)],
    pub training: Vec<Training>,
}

pub const SGD: Optimizer = Optimizer::Sgd(Sgd { momentum: 0.9, weight_decay: 1e-3, nesterov: false });
/// Adam with `eps` 1e-6: with 1e-8, the first step moves every weight by about `lr *
/// sign(g)`, and a gradient element near zero flips sign under f32 rounding.
pub const ADAM: Optimizer = Optimizer::Adam(Adam { beta1: 0.9, beta2: 0.999, eps: 1e-6, weight_decay: 1e-4 });

fn grads(loss: Loss) -> Training {
    Training { name: "Grads", loss, optimizer: None, vjp: false }
}

fn step(name: &'static str, loss: Loss, optimizer: Optimizer) -> Training {
    Training { name, loss, optimizer: Some(optimizer), vjp: false }
}

fn case(module: &'static str, file: &'static str, shape: Option<&'static [usize]>, training: Vec<Training>) -> Case {
    Case { module, file, model: None, shape, overrides: &[], training }
}

pub fn cases() -> Vec<Case> {
    let ce = Loss::CrossEntropy;
    let huber = Loss::Huber { delta: 0.5 };
    let nesterov = Optimizer::Sgd(Sgd { momentum: 0.8, weight_decay: 1e-3, nesterov: true });
    let rmsprop = Optimizer::RmsProp(RmsProp { alpha: 0.99, eps: 1e-6, momentum: 0.5, weight_decay: 0.0 });
    vec![
        case(
            "lenet5",
            "examples/lenet5.cnn",
            None,
            vec![
                grads(ce),
                step("Sgd", ce, SGD),
                step("Adam", ce, ADAM),
                Training { name: "Vjp", loss: ce, optimizer: None, vjp: true },
            ],
        ),
        case("cifar_simple", "examples/cifar_simple.cnn", None, vec![grads(MULTI_MARGIN)]),
        case("allcnnc", "examples/allcnnc.cnn", Some(&[3, 16, 16]), vec![grads(ce), step("Sgd", ce, SGD)]),
        case("resnet18", "examples/resnet18.cnn", Some(&[3, 64, 64]), vec![step("Sgd", ce, SGD)]),
        Case {
            overrides: &[("hidden", "64")],
            ..case("vgg11", "examples/vgg11.cnn", Some(&[3, 32, 32]), vec![grads(ce)])
        },
        case("inception", "tests/data/ok/inception.cnn", Some(&[192, 8, 8]), vec![grads(Loss::Mse)]),
        case(
            "tiny_resnet",
            "tests/data/ok/residual_projection.cnn",
            None,
            vec![grads(ce), step("Sgd", ce, SGD), step("Adam", ce, ADAM)],
        ),
        case("activations", "tests/data/ok/layer_activations.cnn", None, vec![grads(Loss::Mse)]),
        case("pools", "tests/data/ok/layer_pool.cnn", None, vec![grads(Loss::L1)]),
        case("ceil_pools", "tests/data/ok/layer_pool_ceil.cnn", None, vec![]),
        case("pyramid", "tests/data/ok/layer_spp.cnn", None, vec![grads(huber)]),
        case("norms", "tests/data/ok/layer_norm_dropout.cnn", None, vec![step("Sgd", Loss::Mse, SGD)]),
        case("mobile", "tests/data/ok/conv_depthwise_grouped.cnn", None, vec![grads(Loss::Mse)]),
        case("heads", "tests/data/ok/layer_global_adaptive.cnn", None, vec![grads(Loss::Mse)]),
        case("conv_zoo", "tests/data/ok/layer_conv.cnn", None, vec![grads(Loss::Mse)]),
        Case {
            model: Some("mlp"),
            ..case(
                "mlp",
                "tests/data/ok/layer_fc_flatten.cnn",
                None,
                vec![grads(HINGE), step("Nesterov", ce, nesterov), step("RmsProp", ce, rmsprop)],
            )
        },
    ]
}

pub fn workspace() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../..")
}

/// The case's source text.
pub fn source(case: &Case) -> String {
    let path = workspace().join(case.file);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

pub fn lower(case: &Case) -> Graph {
    let text = source(case);
    let (file, errors) = cnnc_syntax::parse(&text);
    assert!(errors.is_empty(), "{}: {errors:?}", case.file);
    let options = cnnc_lower::Options {
        model: case.model.map(str::to_string),
        input_shape: case.shape.map(<[usize]>::to_vec),
        overrides: case.overrides.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
    };
    cnnc_lower::lower(&file, &options).unwrap_or_else(|d| panic!("{}: {d:?}", case.file)).graph
}

/// The inference plan: every pass.
pub fn inference(g: &Graph) -> Plan {
    optimize(g, None, &PassOptions::all()).expect("the passes run").plan
}

pub fn training_options(t: &Training) -> TrainingOptions {
    let objective = if t.vjp { cnnc_passes::Objective::OutputGradients } else { cnnc_passes::Objective::Loss(t.loss) };
    TrainingOptions { optimizer: t.optimizer, input_grads: true, objective, ..TrainingOptions::new(t.loss) }
}

/// A training plan: the passes that hold in training, the training transform, the rest.
pub fn training(g: &Graph, t: &Training) -> Plan {
    optimize_training(g, None, &PassOptions::all(), &training_options(t)).expect("the passes run").plan
}

/// The two hinge forms, for loss coverage.
pub const HINGE: Loss = Loss::Hinge { margin: 1.0, form: HingeForm::Sum };
pub const MULTI_MARGIN: Loss = Loss::Hinge { margin: 0.5, form: HingeForm::MeanOverClasses };
