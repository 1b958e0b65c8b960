//! Bad inputs are typed errors naming what was expected and found, never panics.

use crate::common::*;
use cnnc_interp::{InterpError, Options, Run};
use cnnc_ir::{BatchNorm, Graph, Loss, Op};
use cnnc_passes::{TrainingOptions, training_forward, training_graph};
use cnnc_runtime::{Tensor, TensorMap};

/// Runs `g` in inference mode on a copy of `params`.
fn forward(g: &Graph, params: &TensorMap, inputs: &[Tensor]) -> Result<Run, InterpError> {
    cnnc_interp::run(g, &mut params.clone(), inputs, &Options::new())
}

fn conv_graph() -> cnnc_ir::Graph {
    let mut b = Builder::new();
    let x = b.input(&[3, 5, 5]);
    let y = b.add(conv(4, 3, 1, 0), &[x]);
    b.finish(&[y])
}

fn conv_params() -> TensorMap {
    [("l1.weight".to_string(), Tensor::zeros(&[4, 3, 3, 3])), ("l1.bias".to_string(), Tensor::zeros(&[4]))]
        .into_iter()
        .collect()
}

#[test]
fn input_shape_and_count() {
    let g = conv_graph();
    let p = conv_params();
    let e = forward(&g, &p, &[Tensor::zeros(&[2, 3, 5, 4])]).unwrap_err();
    assert_eq!(
        e,
        InterpError::InputShape { index: 0, name: "in0".into(), expected: vec![3, 5, 5], found: vec![2, 3, 5, 4] }
    );
    assert!(e.to_string().contains("[N, 3, 5, 5]") && e.to_string().contains("[2, 3, 5, 4]"), "{e}");
    // Batch 0 and a missing batch axis are shape errors too.
    for shape in [vec![0, 3, 5, 5], vec![3, 5, 5]] {
        let e = forward(&g, &p, &[Tensor::zeros(&shape)]).unwrap_err();
        assert!(matches!(e, InterpError::InputShape { .. }), "{e}");
    }
    let e = forward(&g, &p, &[]).unwrap_err();
    assert_eq!(e, InterpError::InputCount { expected: 1, found: 0 });
    // Data that does not fill the shape.
    let bad = Tensor { shape: vec![1, 3, 5, 5], data: vec![0.0; 10] };
    let e = forward(&g, &p, &[bad]).unwrap_err();
    assert!(matches!(e, InterpError::DataLength { .. }), "{e}");
}

#[test]
fn batch_sizes_must_agree() {
    let mut b = Builder::new();
    let x = b.input(&[2]);
    let y = b.input(&[2]);
    let s = b.add(Op::Add, &[x, y]);
    let g = b.finish(&[s]);
    let e = forward(&g, &TensorMap::new(), &[Tensor::zeros(&[2, 2]), Tensor::zeros(&[3, 2])]).unwrap_err();
    assert_eq!(e, InterpError::BatchMismatch { index: 1, name: "in1".into(), expected: 2, found: 3 });
}

#[test]
fn parameters_missing_or_misshapen() {
    let g = conv_graph();
    let x = [Tensor::zeros(&[1, 3, 5, 5])];
    let mut p = conv_params();
    p.remove("l1.bias");
    let e = forward(&g, &p, &x).unwrap_err();
    assert_eq!(e, InterpError::MissingParam { name: "l1.bias".into(), expected: vec![4] });
    let mut p = conv_params();
    p.insert("l1.weight".into(), Tensor::zeros(&[4, 3, 1, 3]));
    let e = forward(&g, &p, &x).unwrap_err();
    assert_eq!(
        e,
        InterpError::ParamShape { name: "l1.weight".into(), expected: vec![4, 3, 3, 3], found: vec![4, 3, 1, 3] }
    );
    assert_eq!(e.to_string(), "parameter `l1.weight` has shape [4, 3, 1, 3], expected [4, 3, 3, 3]");
    // Extra entries are ignored.
    let mut p = conv_params();
    p.insert("l1.num_batches_tracked".into(), Tensor::zeros(&[]));
    assert!(forward(&g, &p, &x).is_ok());
}

#[test]
fn training_graphs_check_their_extra_inputs() {
    let g = conv_graph();
    let p = conv_params();
    let t = training_graph(&g, &TrainingOptions { input_grads: true, ..TrainingOptions::new(Loss::Mse) }).unwrap();
    // The target is an input like the model's: its shape and batch are checked.
    let e = forward(&t.graph, &p, &[Tensor::zeros(&[2, 3, 5, 5])]).unwrap_err();
    assert_eq!(e, InterpError::InputCount { expected: 2, found: 1 });
    let e = forward(&t.graph, &p, &[Tensor::zeros(&[2, 3, 5, 5]), Tensor::zeros(&[1, 4, 3, 3])]).unwrap_err();
    assert_eq!(e, InterpError::BatchMismatch { index: 1, name: "target".into(), expected: 2, found: 1 });
    // The right call works and names every trainable parameter.
    let r = forward(&t.graph, &p, &[Tensor::zeros(&[2, 3, 5, 5]), Tensor::zeros(&[2, 4, 3, 3])]).unwrap();
    let grads = cnnc_interp::gradients::<Tensor>(&t.outputs, &r);
    assert_eq!(grads.params.keys().collect::<Vec<_>>(), ["l1.bias", "l1.weight"]);
    assert_eq!(grads.inputs[&0].shape, vec![2, 3, 5, 5]);
    assert_eq!(grads.loss, Some(0.0));
}

#[test]
fn labels_are_class_indices() {
    let mut b = Builder::new();
    let x = b.input(&[3]);
    let g = b.finish(&[x]);
    let t = training_graph(&g, &TrainingOptions::new(Loss::CrossEntropy)).unwrap();
    let x = Tensor::zeros(&[2, 3]);
    for (labels, sample, value) in [([0.0, 3.0], 1, 3.0), ([-1.0, 0.0], 0, -1.0), ([0.5, 0.0], 0, 0.5)] {
        let y = Tensor::from_vec(&[2], labels.to_vec()).unwrap();
        let e = forward(&t.graph, &TensorMap::new(), &[x.clone(), y]).unwrap_err();
        assert_eq!(e, InterpError::BadLabel { sample, value, classes: 3 });
    }
    let e = InterpError::BadLabel { sample: 1, value: 3.0, classes: 3 };
    assert_eq!(e.to_string(), "label 3 of sample 1 is not a class index in 0..3");
    // A model whose output is no class vector cannot take a class loss.
    let mut b = Builder::new();
    let x = b.input(&[3, 2, 2]);
    let e = training_graph(&b.finish(&[x]), &TrainingOptions::new(Loss::CrossEntropy)).unwrap_err();
    assert!(e.to_string().contains("expects a [classes] (or [classes, 1, 1]) input"), "{e}");
}

#[test]
fn bad_attributes_and_degenerate_batch_norm() {
    let mut b = Builder::new();
    let x = b.input(&[4]);
    let y = b.add(Op::Dropout { p: 1.5 }, &[x]);
    let g = b.finish(&[y]);
    let e = forward(&g, &TensorMap::new(), &[Tensor::zeros(&[1, 4])]).unwrap_err();
    assert!(matches!(e, InterpError::BadAttribute { ref layer, .. } if layer == "l1"), "{e}");

    let mut b = Builder::new();
    let x = b.input(&[2]);
    let y = b.add(Op::BatchNorm(BatchNorm { eps: 1e-5, momentum: 0.1 }), &[x]);
    let g = b.finish(&[y]);
    let params: TensorMap = ["weight", "bias", "running_mean", "running_var"]
        .iter()
        .map(|s| (format!("l1.{s}"), Tensor::zeros(&[2])))
        .collect();
    let t = training_forward(&g).unwrap();
    let e = forward(&t.graph, &params, &[Tensor::zeros(&[1, 2])]).unwrap_err();
    assert_eq!(e, InterpError::BatchNormTooFewValues { layer: "l1".into(), values: 1 });
    assert!(forward(&g, &params, &[Tensor::zeros(&[1, 2])]).is_ok());
}

#[test]
fn malformed_graphs() {
    let mut g = conv_graph();
    g.node_mut(cnnc_ir::NodeId::from_index(1)).shape = cnnc_ir::Shape(vec![4, 2, 2]);
    let e = forward(&g, &conv_params(), &[Tensor::zeros(&[1, 3, 5, 5])]).unwrap_err();
    assert!(matches!(e, InterpError::Malformed(_)), "{e}");
    let mut g = conv_graph();
    g.inputs.clear();
    let e = forward(&g, &conv_params(), &[]).unwrap_err();
    assert!(matches!(e, InterpError::Malformed(_)), "{e}");
    let mut g = conv_graph();
    g.outputs.push(cnnc_ir::NodeId::from_index(7));
    let e = forward(&g, &conv_params(), &[Tensor::zeros(&[1, 3, 5, 5])]).unwrap_err();
    assert!(matches!(e, InterpError::Malformed(_)), "{e}");
}

#[test]
fn a_cancelled_run_stops_with_the_state_unchanged_in_both_modes() {
    let g = conv_graph();
    let p = conv_params();
    let sgd = cnnc_ir::Optimizer::Sgd(cnnc_ir::Sgd { momentum: 0.0, weight_decay: 0.0, nesterov: false });
    let options = TrainingOptions { optimizer: Some(sgd), ..TrainingOptions::new(Loss::Mse) };
    let t = training_graph(&g, &options).unwrap();
    let inputs = [Tensor::from_vec(&[1, 3, 5, 5], vec![1.0; 75]).unwrap(), Tensor::zeros(&[1, 4, 3, 3])];
    let mut params = p.clone();
    params.get_mut("l1.bias").unwrap().data.fill(1.0);
    let cancel = cnnc_runtime::Cancel::new();
    let run_options = Options::new().with_lr(0.5).with_cancel(cancel.clone());
    cancel.request();
    let mut state = params.clone();
    assert_eq!(cnnc_interp::run(&t.graph, &mut state, &inputs, &run_options).unwrap_err(), InterpError::Cancelled);
    assert_eq!(state, params, "a cancelled step updates nothing");
    let passes = cnnc_passes::PassOptions::all();
    let plan = cnnc_passes::optimize_training(&g, Some(&params), &passes, &options).unwrap().plan;
    let e = cnnc_interp::run_plan(&plan, &mut state, &inputs, &run_options).unwrap_err();
    assert_eq!((e.to_string(), &state), ("cancelled".to_string(), &params));
    cancel.clear();
    cnnc_interp::run(&t.graph, &mut state, &inputs, &run_options).unwrap();
    assert_ne!(state["l1.bias"], params["l1.bias"], "once cleared the step runs and updates");
}
