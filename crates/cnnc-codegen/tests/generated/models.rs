//! The models the generated-code tests compile, shared by the build script (which generates
//! their modules) and the tests (which build the same plans and run them on the interpreter).
//! Small resolutions and widths keep both the generated code and the interpreter runs cheap.

use cnnc_ir::plan::Plan;
use cnnc_ir::{Adam, Graph, HingeForm, Loss, Optimizer, Sgd};
use cnnc_passes::{PassOptions, TrainingOptions, optimize, optimize_training};

/// A training plan a case compiles, as the struct `name`.
pub struct Training {
    pub name: &'static str,
    pub loss: Loss,
    /// `None`: gradients only.
    pub optimizer: Option<Optimizer>,
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
pub const ADAM: Optimizer = Optimizer::Adam(Adam { beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 1e-4 });

fn grads(loss: Loss) -> Training {
    Training { name: "Grads", loss, optimizer: None }
}

pub fn cases() -> Vec<Case> {
    let ce = Loss::CrossEntropy;
    vec![
        Case {
            module: "lenet5",
            file: "examples/lenet5.cnn",
            model: None,
            shape: None,
            overrides: &[],
            training: vec![
                grads(ce),
                Training { name: "Sgd", loss: ce, optimizer: Some(SGD) },
                Training { name: "Adam", loss: ce, optimizer: Some(ADAM) },
            ],
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
    TrainingOptions { optimizer: t.optimizer, input_grads: true, ..TrainingOptions::new(t.loss) }
}

/// A training plan: the passes that hold in training, the training transform, the rest.
pub fn training(g: &Graph, t: &Training) -> Plan {
    optimize_training(g, None, &PassOptions::all(), &training_options(t)).expect("the passes run").plan
}

/// The hinge forms, for loss coverage.
pub const HINGE: Loss = Loss::Hinge { margin: 1.0, form: HingeForm::Sum };
