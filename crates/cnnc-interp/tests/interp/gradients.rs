//! Finite-difference gradient checks (f64, central differences) for every op, every parameter
//! and every loss, at random inputs: batch > 1, odd sizes, channel counts off multiples of 8.

use crate::common::*;
use cnnc_interp::{Buf, BufMap, Options, Precision, Rng, gradients, run};
use cnnc_ir::{Activation, BatchNorm, Conv, Fc, HingeForm, Loss, Lrn, Op, PoolKind, Window};
use cnnc_passes::{TrainingOptions, training_graph};

fn win(kernel: [usize; 2], stride: [usize; 2], pad: [usize; 2], dilation: [usize; 2], ceil_mode: bool) -> Window {
    Window { kernel, stride, pad, dilation, ceil_mode }
}

fn conv_op(out_channels: usize, window: Window, groups: usize, bias: bool) -> Op {
    Op::Conv(Conv { out_channels, window, groups, bias })
}

// ---- convolution ----

#[test]
fn conv_3x3_pad_1_with_bias() {
    check_op(conv(4, 3, 1, 1), &[3, 6, 7], 2, INFER, 1);
}

#[test]
fn conv_asymmetric_stride_pad_dilation_without_bias() {
    let w = win([3, 2], [2, 1], [1, 0], [2, 1], false);
    check_op(conv_op(5, w, 1, false), &[3, 9, 8], 3, INFER, 2);
}

#[test]
fn conv_groups_and_stride_2() {
    let w = win([3, 3], [2, 2], [1, 1], [1, 1], false);
    check_op(conv_op(9, w, 3, true), &[6, 7, 7], 2, INFER, 3);
}

#[test]
fn conv_depthwise_and_channel_multiplier() {
    let w = win([3, 3], [1, 1], [1, 1], [1, 1], false);
    check_op(conv_op(5, w, 5, true), &[5, 5, 6], 2, INFER, 4);
    check_op(conv_op(10, w, 5, false), &[5, 5, 4], 2, INFER, 5);
}

#[test]
fn conv_1x1_stride_2_and_ceil_mode() {
    check_op(conv(3, 1, 2, 0), &[7, 5, 5], 2, INFER, 6);
    let w = win([3, 3], [2, 2], [0, 1], [1, 1], true);
    check_op(conv_op(2, w, 1, true), &[3, 6, 6], 2, INFER, 7);
}

#[test]
fn conv_dilation_2_with_padding_and_groups_2() {
    let w = win([3, 3], [1, 2], [2, 2], [2, 2], false);
    check_op(conv_op(4, w, 2, true), &[6, 7, 9], 2, INFER, 8);
}

// ---- pooling ----

#[test]
fn max_pool_windows() {
    check_op(pool(PoolKind::Max, win([2, 2], [2, 2], [0, 0], [1, 1], false)), &[3, 6, 6], 2, INFER, 10);
    check_op(pool(PoolKind::Max, win([3, 3], [2, 2], [1, 1], [1, 1], false)), &[3, 7, 6], 2, INFER, 11);
    check_op(pool(PoolKind::Max, win([3, 3], [2, 2], [0, 0], [1, 1], true)), &[2, 8, 7], 2, INFER, 12);
    check_op(pool(PoolKind::Max, win([3, 2], [1, 2], [1, 1], [2, 1], true)), &[3, 7, 7], 3, INFER, 13);
}

#[test]
fn avg_pool_windows() {
    for include_pad in [true, false] {
        let kind = PoolKind::Avg { include_pad };
        check_op(pool(kind, win([2, 2], [2, 2], [0, 0], [1, 1], false)), &[3, 6, 6], 2, INFER, 20);
        check_op(pool(kind, win([3, 3], [2, 2], [1, 1], [1, 1], false)), &[3, 7, 6], 2, INFER, 21);
        check_op(pool(kind, win([3, 3], [2, 2], [1, 0], [1, 1], true)), &[2, 8, 7], 2, INFER, 22);
        check_op(pool(kind, win([2, 3], [3, 2], [1, 1], [1, 1], true)), &[3, 5, 7], 3, INFER, 23);
    }
}

#[test]
fn l2_pool_windows() {
    check_op(pool(PoolKind::L2, win([2, 2], [2, 2], [0, 0], [1, 1], false)), &[3, 6, 6], 2, INFER, 30);
    check_op(pool(PoolKind::L2, win([3, 3], [2, 2], [1, 1], [1, 1], true)), &[3, 7, 6], 2, INFER, 31);
}

const KINDS: [PoolKind; 4] =
    [PoolKind::Max, PoolKind::Avg { include_pad: true }, PoolKind::Avg { include_pad: false }, PoolKind::L2];

#[test]
fn global_pools() {
    for (i, kind) in KINDS.into_iter().enumerate() {
        check_op(Op::GlobalPool(kind), &[5, 3, 4], 2, INFER, 40 + i as u64);
    }
}

#[test]
fn adaptive_pools_with_uneven_bins() {
    for (i, kind) in KINDS.into_iter().enumerate() {
        check_op(Op::AdaptivePool { kind, output: [3, 2] }, &[3, 7, 5], 2, INFER, 50 + i as u64);
        check_op(Op::AdaptivePool { kind, output: [4, 4] }, &[2, 6, 3], 2, INFER, 55 + i as u64);
    }
}

#[test]
fn spatial_pyramid_pools() {
    for (i, kind) in KINDS.into_iter().enumerate() {
        check_op(Op::Spp { kind, levels: vec![1, 2, 3] }, &[3, 5, 7], 2, INFER, 60 + i as u64);
    }
}

// ---- dense layers ----

#[test]
fn fc_with_and_without_bias() {
    check_op(Op::Fc(Fc { out_features: 5, bias: true }), &[7], 3, INFER, 70);
    check_op(Op::Fc(Fc { out_features: 3, bias: false }), &[9], 2, INFER, 71);
}

#[test]
fn conv_flatten_fc() {
    let mut b = Builder::new();
    let x = b.input(&[2, 5, 4]);
    let c = b.add(conv(3, 3, 2, 1), &[x]);
    let f = b.add(Op::Flatten, &[c]);
    let y = b.add(Op::Fc(Fc { out_features: 4, bias: true }), &[f]);
    gradcheck(&b.finish(&[y]), INFER, 2, 72);
    check_op(Op::Flatten, &[6], 2, INFER, 73);
}

// ---- activations ----

fn activations() -> Vec<Activation> {
    vec![
        Activation::Relu,
        Activation::LeakyRelu { slope: 0.1 },
        Activation::Elu { alpha: 1.3 },
        Activation::Selu,
        Activation::Sigmoid,
        Activation::Tanh,
        Activation::HardTanh { min: -0.5, max: 0.7 },
        Activation::Softsign,
        Activation::Softplus { beta: 1.0, threshold: 20.0 },
        Activation::Softplus { beta: 2.0, threshold: 1.0 },
    ]
}

#[test]
fn every_activation() {
    for (i, a) in activations().into_iter().enumerate() {
        check_op(Op::Activation(a), &[3, 4, 5], 2, INFER, 80 + i as u64);
        check_op(Op::Activation(a), &[7], 3, INFER, 100 + i as u64);
    }
}

#[test]
fn prelu_per_channel_and_per_feature() {
    check_op(Op::Prelu, &[5, 3, 4], 2, INFER, 120);
    check_op(Op::Prelu, &[6], 4, INFER, 121);
}

#[test]
fn softmax_over_channels_and_features() {
    check_op(Op::Softmax, &[5, 3, 2], 2, INFER, 130);
    check_op(Op::Softmax, &[7], 3, INFER, 131);
}

// ---- normalisation ----

#[test]
fn batch_norm_inference() {
    let op = Op::BatchNorm(BatchNorm { eps: 1e-3, momentum: 0.1 });
    check_op(op.clone(), &[5, 3, 4], 2, INFER, 140);
    check_op(op, &[6], 3, INFER, 141);
}

#[test]
fn batch_norm_training() {
    let op = Op::BatchNorm(BatchNorm { eps: 1e-3, momentum: 0.1 });
    check_op(op.clone(), &[5, 3, 4], 2, TRAIN, 142);
    check_op(op.clone(), &[3, 2, 1], 3, TRAIN, 143);
    check_op(op, &[6], 4, TRAIN, 144);
}

#[test]
fn lrn_sizes() {
    for (i, size) in [1, 2, 3, 4, 5].into_iter().enumerate() {
        let op = Op::Lrn(Lrn { size, alpha: 0.3, beta: 0.75, k: 1.5, alpha_over_size: true });
        check_op(op, &[7, 3, 2], 2, INFER, 150 + i as u64);
    }
    // Window wider than the channel count; k = 1 and beta != 0.75.
    check_op(
        Op::Lrn(Lrn { size: 5, alpha: 1e-2, beta: 0.5, k: 1.0, alpha_over_size: true }),
        &[3, 2, 3],
        2,
        INFER,
        160,
    );
}

// ---- dropout, concat, add ----

#[test]
fn dropout_training_and_inference() {
    for (i, p) in [0.0, 0.3, 0.5, 1.0].into_iter().enumerate() {
        check_op(Op::Dropout { p }, &[3, 4, 5], 2, TRAIN, 170 + i as u64);
        check_op(Op::Dropout { p }, &[9], 3, TRAIN, 175 + i as u64);
        check_op(Op::Dropout { p }, &[3, 4, 5], 2, INFER, 180 + i as u64);
    }
}

#[test]
fn concat_of_maps_and_vectors() {
    let mut b = Builder::new();
    let x = b.input(&[2, 3, 4]);
    let y = b.input(&[5, 3, 4]);
    let z = b.input(&[1, 3, 4]);
    let c = b.add(Op::Concat, &[x, y, z, x]);
    gradcheck(&b.finish(&[c]), INFER, 2, 190);
    let mut b = Builder::new();
    let x = b.input(&[3]);
    let y = b.input(&[4]);
    let c = b.add(Op::Concat, &[x, y]);
    gradcheck(&b.finish(&[c]), INFER, 3, 191);
}

#[test]
fn nary_add_with_a_repeated_input() {
    let mut b = Builder::new();
    let x = b.input(&[3, 2, 5]);
    let y = b.input(&[3, 2, 5]);
    let t = b.add(Op::Activation(Activation::Tanh), &[x]);
    let s = b.add(Op::Add, &[x, y, t, x]);
    gradcheck(&b.finish(&[s]), INFER, 2, 200);
}

// ---- whole graphs ----

/// conv-bn-relu-conv-bn + projection shortcut, add, relu, global pool, dropout, fc; with
/// `two_outputs`, also an intermediate node that feeds later nodes as a second output.
fn residual_block(two_outputs: bool) -> cnnc_ir::Graph {
    let mut b = Builder::new();
    let x = b.input(&[3, 7, 6]);
    let c1 = b.add(conv_op(5, win([3, 3], [2, 2], [1, 1], [1, 1], false), 1, false), &[x]);
    let n1 = b.add(bn(), &[c1]);
    let r1 = b.add(relu(), &[n1]);
    let c2 = b.add(conv_op(5, win([3, 3], [1, 1], [1, 1], [1, 1], false), 1, false), &[r1]);
    let n2 = b.add(bn(), &[c2]);
    let sc = b.add(conv_op(5, win([1, 1], [2, 2], [0, 0], [1, 1], false), 1, false), &[x]);
    let ns = b.add(bn(), &[sc]);
    let s = b.add(Op::Add, &[n2, ns]);
    let r = b.add(Op::Activation(Activation::LeakyRelu { slope: 0.05 }), &[s]);
    let gp = b.add(Op::GlobalPool(PoolKind::Avg { include_pad: true }), &[r]);
    let f = b.add(Op::Flatten, &[gp]);
    let d = b.add(Op::Dropout { p: 0.25 }, &[f]);
    let fc = b.add(Op::Fc(Fc { out_features: 3, bias: true }), &[d]);
    if two_outputs { b.finish(&[fc, r1]) } else { b.finish(&[fc]) }
}

#[test]
fn residual_block_in_training_and_inference() {
    let g = residual_block(true);
    gradcheck(&g, TRAIN, 3, 210);
    gradcheck(&g, INFER, 2, 211);
}

#[test]
fn inception_style_branches_with_lrn_and_softmax() {
    let mut b = Builder::new();
    let x = b.input(&[4, 6, 6]);
    let l = b.add(Op::Lrn(Lrn { size: 3, alpha: 0.2, beta: 0.75, k: 2.0, alpha_over_size: true }), &[x]);
    let a = b.add(conv(3, 1, 1, 0), &[l]);
    let m = b.add(pool(PoolKind::Max, win([3, 3], [1, 1], [1, 1], [1, 1], false)), &[l]);
    let p = b.add(Op::Prelu, &[m]);
    let c = b.add(Op::Concat, &[a, p]);
    let s = b.add(Op::Spp { kind: PoolKind::Max, levels: vec![1, 2] }, &[c]);
    let sm = b.add(Op::Softmax, &[s]);
    gradcheck(&b.finish(&[sm]), INFER, 2, 220);
}

// ---- losses ----

/// Central-difference check of a loss's gradient w.r.t. its input.
fn check_loss(loss: Loss, x: &Buf, target: &Buf) {
    let (_, grad) = loss_and_grad(loss, x, target);
    for i in 0..x.len() {
        let at = |delta: f64| {
            let mut y = x.clone();
            y.data[i] += delta;
            loss_and_grad(loss, &y, target).0
        };
        let numeric = (at(1e-6) - at(-1e-6)) / 2e-6;
        let analytic = grad.data[i];
        assert!(
            (numeric - analytic).abs() <= 1e-5 * numeric.abs().max(analytic.abs()) + 1e-9,
            "{}: element {i}: analytic {analytic}, numeric {numeric}",
            loss.name()
        );
    }
}

#[test]
fn loss_gradients() {
    let mut rng = Rng::new(230);
    let x = random_buf(&mut rng, &[4, 5], -2.0, 2.0);
    let t = random_buf(&mut rng, &[4, 5], -2.0, 2.0);
    let labels = Buf { shape: vec![4], data: vec![0.0, 4.0, 2.0, 2.0] };
    check_loss(Loss::CrossEntropy, &x, &labels);
    for form in [HingeForm::Sum, HingeForm::MeanOverClasses] {
        for margin in [1.0, 0.5] {
            check_loss(Loss::Hinge { margin, form }, &x, &labels);
        }
    }
    check_loss(Loss::Mse, &x, &t);
    check_loss(Loss::L1, &x, &t);
    for delta in [1.0, 0.3] {
        check_loss(Loss::Huber { delta }, &x, &t);
    }
    // [N, C, 1, 1] outputs are accepted by the class losses.
    let x4 = Buf { shape: vec![4, 5, 1, 1], data: x.data.clone() };
    check_loss(Loss::CrossEntropy, &x4, &labels);
}

#[test]
fn loss_through_a_model() {
    // The loss's parameter gradients from the training graph match finite differences of the
    // loss itself, in training mode (batch statistics, dropout masks).
    let g = residual_block(false);
    let mut rng = Rng::new(240);
    let params = random_params(&g, &mut rng);
    let x = random_buf(&mut rng, &[2, 3, 7, 6], -1.0, 1.0);
    let labels = Buf { shape: vec![2], data: vec![2.0, 0.0] };
    let t = training_graph(&g, &TrainingOptions::new(Loss::CrossEntropy)).unwrap();
    let opts = Options::new().with_precision(Precision::F64).with_seed(SEED);
    let loss_at = |params: &BufMap| {
        let r = run(&t.graph, &mut params.clone(), &[x.clone(), labels.clone()], &opts).unwrap();
        gradients::<Buf>(&t.outputs, &r)
    };
    let grads = loss_at(&params);
    let name = "l1.weight";
    for i in [0, 7, 44, 100] {
        let mut p = params.clone();
        p.get_mut(name).unwrap().data[i] += 1e-6;
        let up = loss_at(&p).loss.unwrap();
        p.get_mut(name).unwrap().data[i] -= 2e-6;
        let down = loss_at(&p).loss.unwrap();
        let numeric = (up - down) / 2e-6;
        let analytic = grads.params[name].data[i];
        assert!(
            (numeric - analytic).abs() <= 1e-5 * numeric.abs().max(analytic.abs()) + 1e-9,
            "{numeric} vs {analytic}"
        );
    }
}
