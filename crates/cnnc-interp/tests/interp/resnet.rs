//! ResNet-18 (torchvision layout and names) at 64x64, batch 2: forward and backward in
//! training mode through the f32 `Tensor` API, as a usability check of the interpreter's speed
//! and of a realistic graph.

use crate::common::*;
use cnnc_interp::{Options, Rng, gradients, run};
use cnnc_ir::{BatchNorm, Conv, Fc, Graph, Loss, NodeId, Op, PoolKind, Shape, TrainOp};
use cnnc_passes::{TrainingOptions, training_graph};
use cnnc_runtime::{Tensor, TensorMap};

fn add(g: &mut Graph, op: Op, inputs: &[NodeId], name: &str) -> NodeId {
    g.add(op, inputs.to_vec(), name, Default::default()).unwrap().0
}

/// A bias-free `k x k` convolution (stride `s`, padding `k / 2`) named `conv`, then batch norm
/// named `bn`.
fn conv_bn(g: &mut Graph, x: NodeId, out: usize, [k, s]: [usize; 2], [conv, bn]: [&str; 2]) -> NodeId {
    let window = window([k; 2], [s; 2], [k / 2; 2]);
    let c = add(g, Op::Conv(Conv { out_channels: out, window, groups: 1, bias: false }), &[x], conv);
    add(g, Op::BatchNorm(BatchNorm { eps: 1e-5, momentum: 0.1 }), &[c], bn)
}

fn resnet18(classes: usize) -> Graph {
    let mut g = Graph::new("resnet18");
    let x = g.add_input("x", Shape(vec![3, 64, 64]), Default::default()).unwrap();
    let mut h = conv_bn(&mut g, x, 64, [7, 2], ["conv1", "bn1"]);
    h = add(&mut g, relu(), &[h], "relu");
    h = add(&mut g, pool(PoolKind::Max, window([3, 3], [2, 2], [1, 1])), &[h], "maxpool");
    let mut channels = 64;
    for (stage, width) in [64, 128, 256, 512].into_iter().enumerate() {
        for block in 0..2 {
            let stride = if stage > 0 && block == 0 { 2 } else { 1 };
            let p = format!("layer{}.{block}", stage + 1);
            let a = conv_bn(&mut g, h, width, [3, stride], [&format!("{p}.conv1"), &format!("{p}.bn1")]);
            let a = add(&mut g, relu(), &[a], &format!("{p}.relu1"));
            let b = conv_bn(&mut g, a, width, [3, 1], [&format!("{p}.conv2"), &format!("{p}.bn2")]);
            let shortcut = if stride != 1 || channels != width {
                conv_bn(&mut g, h, width, [1, stride], [&format!("{p}.downsample.0"), &format!("{p}.downsample.1")])
            } else {
                h
            };
            let s = add(&mut g, Op::Add, &[b, shortcut], &format!("{p}.add"));
            h = add(&mut g, relu(), &[s], &format!("{p}.relu2"));
            channels = width;
        }
    }
    h = add(&mut g, Op::GlobalPool(PoolKind::Avg { include_pad: true }), &[h], "avgpool");
    h = add(&mut g, Op::Flatten, &[h], "flatten");
    h = add(&mut g, Op::Fc(Fc { out_features: classes, bias: true }), &[h], "fc");
    g.outputs = vec![h];
    g
}

#[test]
fn resnet18_forward_and_backward() {
    let g = resnet18(10);
    let mut rng = Rng::new(1);
    // Small weights keep activations in range: uniform(-a, a) with a = 1 / sqrt(fan_in).
    let params: TensorMap = g
        .named_params()
        .into_iter()
        .map(|(name, spec)| {
            let n = spec.elements();
            let fan_in: usize = spec.dims[1..].iter().product();
            let data: Vec<f32> = match spec.suffix {
                "running_var" => vec![1.0; n],
                "running_mean" | "bias" => vec![0.0; n],
                _ if spec.dims.len() == 1 => vec![1.0; n],
                _ => {
                    let a = 1.0 / (fan_in as f64).sqrt();
                    (0..n).map(|_| uniform(&mut rng, -a, a) as f32).collect()
                }
            };
            (name, Tensor::from_vec(&spec.dims, data).unwrap())
        })
        .collect();
    // torchvision ResNet-18 with 10 classes has 11,181,642 trainable parameters, plus running
    // mean and variance for 4,800 batch-norm channels.
    assert_eq!(params.values().map(Tensor::len).sum::<usize>(), 11_181_642 + 2 * 4_800);
    let x =
        Tensor::from_vec(&[2, 3, 64, 64], (0..2 * 3 * 64 * 64).map(|_| uniform(&mut rng, -1.0, 1.0) as f32).collect())
            .unwrap();

    let labels = Tensor::from_vec(&[2], vec![3.0, 7.0]).unwrap();
    let options = TrainingOptions { input_grads: true, ..TrainingOptions::new(Loss::CrossEntropy) };
    let t = training_graph(&g, &options).unwrap();
    let start = std::time::Instant::now();
    let mut state = params.clone();
    let result = run(&t.graph, &mut state, &[x, labels], &Options::new().with_seed(5)).unwrap();
    let grads = gradients::<Tensor>(&t.outputs, &result);
    eprintln!("resnet-18 64x64 batch 2 forward + backward: {:?}", start.elapsed());

    let value = grads.loss.unwrap();
    assert!(value.is_finite() && value > 0.0);
    let updates = t.graph.iter().filter(|(_, n)| matches!(n.op, Op::Train(TrainOp::BnRunningUpdate { .. }))).count();
    assert_eq!(updates, 20);
    assert!(state.iter().any(|(name, v)| name.ends_with("running_mean") && v != &params[name]));
    assert_eq!(grads.params.len(), g.named_params().iter().filter(|(_, s)| s.trainable()).count());
    assert!(grads.params.values().all(|t| t.data.iter().all(|v| v.is_finite())));
    assert!(grads.params["conv1.weight"].data.iter().any(|&v| v != 0.0));
    assert_eq!(grads.inputs[&0].shape, vec![2, 3, 64, 64]);
}
