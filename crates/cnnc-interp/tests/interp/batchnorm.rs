//! Training-mode batch norm: the running-statistics update and the normalisation, by hand.

use crate::common::*;
use cnnc_interp::{Buf, BufMap, Options, Precision, gradients, run};
use cnnc_ir::{BatchNorm, Op};
use cnnc_passes::training_forward;
use cnnc_runtime::{Tensor, TensorMap};

#[test]
fn running_stats_update_matches_hand_computation() {
    // Two channels, N = 2, H = 1, W = 2.
    // Channel 0 values 1, 2 (sample 0) and 3, 6 (sample 1): mean 3, biased variance
    //   (4 + 1 + 0 + 9) / 4 = 3.5, unbiased 14 / 3.
    // Channel 1 values 0, 0, 2, 2: mean 1, biased variance 1, unbiased 4 / 3.
    // Momentum 0.1, running mean [1, -1], running var [2, 0.5]:
    //   mean' = 0.9 * [1, -1] + 0.1 * [3, 1]        = [1.2, -0.8]
    //   var'  = 0.9 * [2, 0.5] + 0.1 * [14/3, 4/3]  = [1.8 + 7/15, 0.45 + 2/15]
    let mut b = Builder::new();
    let x = b.input(&[2, 1, 2]);
    let y = b.add(Op::BatchNorm(BatchNorm { eps: 0.0, momentum: 0.1 }), &[x]);
    let g = b.finish(&[y]);
    let buf = |shape: &[usize], data: &[f64]| Buf::from_vec(shape, data.to_vec()).unwrap();
    let params: BufMap = [
        ("l1.weight", buf(&[2], &[1., 2.])),
        ("l1.bias", buf(&[2], &[0., 0.5])),
        ("l1.running_mean", buf(&[2], &[1., -1.])),
        ("l1.running_var", buf(&[2], &[2., 0.5])),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    let input = buf(&[2, 2, 1, 2], &[1., 2., 0., 0., 3., 6., 2., 2.]);
    let opts = Options::new().with_precision(Precision::F64);
    let t = training_forward(&g).unwrap();
    let mut stats = params.clone();
    let result = run(&t.graph, &mut stats, std::slice::from_ref(&input), &opts).unwrap();
    let close = |a: &[f64], b: &[f64]| a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-14);
    // The weight and bias are untouched; the running statistics are updated.
    assert_eq!(stats["l1.weight"], params["l1.weight"]);
    assert_eq!(stats["l1.bias"], params["l1.bias"]);
    assert!(close(&stats["l1.running_mean"].data, &[1.2, -0.8]), "{:?}", stats["l1.running_mean"]);
    assert!(
        close(&stats["l1.running_var"].data, &[1.8 + 7.0 / 15.0, 0.45 + 2.0 / 15.0]),
        "{:?}",
        stats["l1.running_var"]
    );
    // The output normalises with the batch statistics and the biased variance:
    // channel 0: (x - 3) / sqrt(3.5); channel 1: 2 (x - 1) / 1 + 0.5.
    let s = 3.5f64.sqrt();
    let out = gradients::<Buf>(&t.outputs, &result).outputs;
    let expected = [-2. / s, -1. / s, -1.5, -1.5, 0., 3. / s, 2.5, 2.5];
    assert!(close(&out[0].data, &expected), "{:?}", out[0]);
    // Inference changes no statistics.
    let mut unchanged = params.clone();
    run(&g, &mut unchanged, std::slice::from_ref(&input), &opts).unwrap();
    assert_eq!(unchanged, params);
    // The gradient w.r.t. an input that only shifts a channel is zero: sum of training-mode
    // batch-norm input gradients over a channel vanishes.
    let gy = buf(&[2, 2, 1, 2], &[1., 2., 3., 4., 5., 6., 7., 8.]);
    let grads = vjp(&g, TRAIN, &params, std::slice::from_ref(&input), &[gy], Precision::F64);
    let gx = &grads.inputs[&0].data;
    assert!((gx[0] + gx[1] + gx[4] + gx[5]).abs() < 1e-12);
    assert!((gx[2] + gx[3] + gx[6] + gx[7]).abs() < 1e-12);
}

#[test]
fn running_stats_for_feature_vectors_in_f32() {
    // [N, F] input: statistics over N only. Feature 0: 1, 2, 6 -> mean 3, unbiased var 7;
    // momentum 0.5 from running (0, 1): mean 1.5, var 4.
    let mut b = Builder::new();
    let x = b.input(&[1]);
    let y = b.add(Op::BatchNorm(BatchNorm { eps: 1e-5, momentum: 0.5 }), &[x]);
    let g = b.finish(&[y]);
    let t = |shape: &[usize], data: &[f32]| Tensor::from_vec(shape, data.to_vec()).unwrap();
    let params: TensorMap = [
        ("l1.weight", t(&[1], &[1.])),
        ("l1.bias", t(&[1], &[0.])),
        ("l1.running_mean", t(&[1], &[0.])),
        ("l1.running_var", t(&[1], &[1.])),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    let training = training_forward(&g).unwrap();
    let mut stats = params.clone();
    run(&training.graph, &mut stats, &[t(&[3, 1], &[1., 2., 6.])], &Options::new()).unwrap();
    assert_eq!(stats["l1.running_mean"].data, vec![1.5]);
    assert_eq!(stats["l1.running_var"].data, vec![4.0]);
}
