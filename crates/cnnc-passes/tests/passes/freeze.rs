//! Frozen parameters through the training transform and the passes: a frozen layer gets no
//! gradient and no update, the layers that train get exactly the gradients they get without
//! freezing (run on the interpreter), and every rebuild carries the frozen set.

use cnnc_interp::{Buf, BufMap, Gradients, Options, Precision, gradients, run};
use cnnc_ir::plan::OutputRole;
use cnnc_ir::{Graph, Loss, Op, Optimizer, Sgd, TrainOp, verify};
use cnnc_passes::{Mode, PassOptions, TrainingOptions, optimize, optimize_training, training_graph};
use cnnc_runtime::{Rng, init_params};
use std::collections::BTreeSet;

/// A conv-bn-relu-conv feature extractor and an fc head, with `freeze` lines as given.
fn model(freeze: &str) -> Graph {
    let src = format!(
        "model m {{
            input x: [3, 6, 6]
            {freeze}
            x -> features: (conv(4, k=3, pad=1) -> bn -> relu -> conv(4, k=3, pad=1) -> relu)
              -> flatten -> head: fc(5)
        }}"
    );
    let (file, errors) = cnnc_syntax::parse(&src);
    assert!(errors.is_empty(), "{errors:?}");
    let graph = cnnc_lower::lower(&file, &cnnc_lower::Options::default()).unwrap_or_else(|d| panic!("{d:#?}")).graph;
    assert_eq!(verify(&graph), Ok(()));
    graph
}

fn names(set: &BTreeSet<String>) -> Vec<&str> {
    set.iter().map(String::as_str).collect()
}

/// Weights with non-trivial running statistics, and a batch of two with its labels.
fn data(g: &Graph) -> (BufMap, Vec<Buf>) {
    let mut weights = init_params(g, 3);
    for (name, t) in weights.iter_mut() {
        let mut rng = Rng::for_name(4, name);
        for x in &mut t.data {
            *x =
                if name.ends_with("running_var") { (0.5 + rng.next_f64()) as f32 } else { (rng.normal() * 0.5) as f32 };
        }
    }
    let weights = weights.iter().map(|(k, v)| (k.clone(), Buf::from_tensor(v))).collect();
    let mut rng = Rng::seed_from_u64(5);
    let x = Buf { shape: vec![2, 3, 6, 6], data: (0..2 * 3 * 36).map(|_| rng.normal()).collect() };
    let labels = Buf { shape: vec![2], data: vec![3.0, 1.0] };
    (weights, vec![x, labels])
}

fn options() -> Options {
    Options::new().with_precision(Precision::F64).with_seed(1)
}

/// The loss and parameter gradients of one training step without an optimiser, and the state
/// the step leaves (running statistics updated).
fn step_gradients(g: &Graph, options: &TrainingOptions) -> (Gradients<Buf>, BufMap) {
    let t = training_graph(g, options).unwrap();
    assert_eq!(verify(&t.graph), Ok(()));
    let (mut state, inputs) = data(g);
    let result = run(&t.graph, &mut state, &inputs, &self::options()).unwrap();
    (gradients(&t.outputs, &result), state)
}

#[test]
fn a_frozen_layer_gets_no_gradient_while_the_rest_get_the_gradients_they_had() {
    // The middle conv is frozen: the first layers still train, through it.
    let frozen = model("freeze features.3");
    assert_eq!(names(&frozen.frozen), ["features.3.bias", "features.3.weight"]);
    let mut free = frozen.clone();
    free.frozen.clear();
    let ce = TrainingOptions::new(Loss::CrossEntropy);
    let (got, _) = step_gradients(&frozen, &ce);
    let (want, _) = step_gradients(&free, &ce);
    let grads: Vec<&str> = got.params.keys().map(String::as_str).collect();
    assert_eq!(
        grads,
        ["features.0.bias", "features.0.weight", "features.1.bias", "features.1.weight", "head.bias", "head.weight"]
    );
    assert!(want.params.contains_key("features.3.weight") && want.params.contains_key("features.3.bias"));
    assert_eq!(got.loss, want.loss);
    for (name, g) in &got.params {
        assert_eq!(g.data, want.params[name].data, "{name}: freezing another layer changes nothing here");
    }
    // Only the conv's backward-data remains of its backward.
    let t = training_graph(&frozen, &ce).unwrap();
    let ops: Vec<&str> = t.graph.iter().filter(|(_, n)| n.name == "features.3").map(|(_, n)| n.op.keyword()).collect();
    assert_eq!(ops, ["conv", "conv_backward_data"]);
    assert_eq!(names(&t.graph.frozen), ["features.3.bias", "features.3.weight"], "recorded in the training graph");
}

#[test]
fn frozen_features_get_no_update_but_their_batch_norm_statistics_move() {
    let g = model("freeze features");
    assert_eq!(g.frozen.len(), 6, "{:?}", g.frozen);
    let t = training_graph(&g, &sgd_step()).unwrap();
    assert_eq!(verify(&t.graph), Ok(()));
    let updates: Vec<&str> = t
        .outputs
        .iter()
        .filter_map(|r| if let OutputRole::Update(name) = r { Some(name.as_str()) } else { None })
        .collect();
    assert_eq!(updates, ["head.weight", "head.bias", "features.1"], "the head's updates, then the running statistics");
    // Nothing upstream of the head is differentiated: no gradient flows into `features`.
    assert!(t.graph.iter().all(|(_, n)| !(n.name.starts_with("features.")
        && matches!(
            n.op,
            Op::Train(
                TrainOp::ConvBackwardData { .. }
                    | TrainOp::ConvBackwardWeight(_)
                    | TrainOp::BnBackwardData { .. }
                    | TrainOp::BnGammaGrad { .. }
                    | TrainOp::ActivationBackward { .. }
            )
        ))));
    let (before, inputs) = data(&g);
    let mut state = before.clone();
    run(&t.graph, &mut state, &inputs, &options_with_lr()).unwrap();
    for (name, value) in &state {
        match before.get(name) {
            Some(old) => {
                let should_move = name.starts_with("head.") || name.starts_with("features.1.running_");
                assert_eq!(value.data != old.data, should_move, "{name}");
            }
            None => assert!(name.starts_with("head.") && name.ends_with(".momentum_buffer"), "{name}"),
        }
    }
}

/// Cross-entropy with SGD updates.
fn sgd_step() -> TrainingOptions {
    let sgd = Optimizer::Sgd(Sgd { momentum: 0.9, weight_decay: 0.0, nesterov: false });
    TrainingOptions { optimizer: Some(sgd), ..TrainingOptions::new(Loss::CrossEntropy) }
}

fn options_with_lr() -> Options {
    options().with_lr(0.1)
}

#[test]
fn the_options_freeze_in_addition_to_the_model() {
    let g = model("freeze features.0");
    let options = TrainingOptions {
        frozen: ["head.bias", "not.a.parameter"].map(String::from).into(),
        ..TrainingOptions::new(Loss::CrossEntropy)
    };
    let t = training_graph(&g, &options).unwrap();
    assert_eq!(names(&t.graph.frozen), ["features.0.bias", "features.0.weight", "head.bias"]);
    let (got, _) = step_gradients(&g, &options);
    let grads: Vec<&str> = got.params.keys().map(String::as_str).collect();
    assert_eq!(grads, ["features.1.bias", "features.1.weight", "features.3.bias", "features.3.weight", "head.weight"]);
}

#[test]
fn passes_carry_the_frozen_set_and_folding_drops_the_batch_norms() {
    let g = model("freeze features.0, features.1");
    let inference = optimize(&g, None, &PassOptions::all()).unwrap();
    assert_eq!(
        names(&inference.graph().frozen),
        ["features.0.bias", "features.0.weight"],
        "the folded batch norm's marks leave with its parameters; the conv keeps its own"
    );
    for mode in [Mode::Inference, Mode::Training] {
        let opt = optimize(&g, None, &PassOptions::all().with_mode(mode)).unwrap();
        assert_eq!(verify(opt.graph()), Ok(()), "{mode:?}");
    }
    let training = optimize_training(&g, None, &PassOptions::all(), &sgd_step()).unwrap();
    let frozen = names(&training.graph().frozen);
    assert_eq!(frozen, ["features.0.bias", "features.0.weight", "features.1.bias", "features.1.weight"]);
    let updated = |name: &str| {
        training.graph().iter().any(|(_, n)| n.name == name && matches!(n.op, Op::Train(TrainOp::Update(_))))
    };
    assert!(frozen.iter().all(|p| !updated(p)) && updated("head.weight"), "only what is not frozen is updated");
}
