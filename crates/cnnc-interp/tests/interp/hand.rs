//! Hand-worked examples: the course material's convolution and pooling exercises, and small
//! cases computed by hand for padding, stride, dilation, groups, pooling edge rules, softmax,
//! activations, LRN, batch norm, dropout and each loss.

use crate::common::*;
use cnnc_interp::{Buf, BufMap, Options, Precision, SELU_ALPHA, SELU_SCALE, dropout_mask};
use cnnc_ir::{Activation, BatchNorm, Conv, Fc, HingeForm, Loss, Lrn, Op, PoolKind, Window};
use cnnc_runtime::{Tensor, TensorMap};

fn buf(shape: &[usize], data: &[f64]) -> Buf {
    Buf::from_vec(shape, data.to_vec()).unwrap()
}

/// Runs a one-op graph on one input in f64 inference mode and returns its output.
fn run(op: Op, x: &Buf, params: &[(&str, Buf)]) -> Buf {
    run_in(op, x, params, INFER)
}

/// As [`run`], in `mode` (the forward pass of training, with dropout seed [`SEED`]).
fn run_in(op: Op, x: &Buf, params: &[(&str, Buf)], mode: Mode) -> Buf {
    let mut b = Builder::new();
    let i = b.input(&x.shape[1..]);
    let y = b.add(op, &[i]);
    let g = b.finish(&[y]);
    let params: BufMap = params.iter().map(|(k, v)| (format!("l1.{k}"), v.clone())).collect();
    forward_outputs(&g, mode, &params, std::slice::from_ref(x), Precision::F64).remove(0)
}

fn assert_close(found: &Buf, expected_shape: &[usize], expected: &[f64]) {
    assert_eq!(found.shape, expected_shape);
    for (i, (a, b)) in found.data.iter().zip(expected).enumerate() {
        assert!((a - b).abs() <= 1e-12 * (1.0 + b.abs()), "element {i}: found {a}, expected {b}\n{found:?}");
    }
}

fn conv_op(out_channels: usize, window: Window, groups: usize, bias: bool) -> Op {
    Op::Conv(Conv { out_channels, window, groups, bias })
}

fn plain(kernel: usize, stride: usize, pad: usize) -> Window {
    window([kernel; 2], [stride; 2], [pad; 2])
}

const X_KERNEL: [f64; 9] = [1., 0., 1., 0., 1., 0., 1., 0., 1.];

#[test]
fn course_convolution_twice() {
    #[rustfmt::skip]
    let image = buf(&[1, 1, 5, 5], &[
        1., 1., 1., 0., 0.,
        0., 1., 1., 1., 0.,
        0., 0., 1., 1., 1.,
        0., 0., 1., 1., 0.,
        0., 1., 1., 0., 0.,
    ]);
    let w = buf(&[1, 1, 3, 3], &X_KERNEL);
    let once = run(conv_op(1, plain(3, 1, 0), 1, false), &image, &[("weight", w.clone())]);
    assert_close(&once, &[1, 1, 3, 3], &[4., 3., 4., 2., 4., 3., 2., 3., 4.]);
    let twice = run(conv_op(1, plain(3, 1, 0), 1, false), &once, &[("weight", w)]);
    assert_close(&twice, &[1, 1, 1, 1], &[18.]);
}

#[test]
fn course_max_pool() {
    let x = buf(&[1, 1, 4, 4], &[29., 15., 28., 184., 0., 100., 70., 38., 12., 12., 7., 2., 12., 12., 45., 6.]);
    let y = run(pool(PoolKind::Max, plain(2, 2, 0)), &x, &[]);
    assert_close(&y, &[1, 1, 2, 2], &[100., 184., 12., 45.]);
}

#[test]
fn course_average_pool() {
    let x = buf(&[1, 1, 4, 4], &[31., 15., 28., 184., 0., 100., 70., 38., 12., 12., 7., 2., 12., 12., 45., 6.]);
    let y = run(pool(PoolKind::Avg { include_pad: true }, plain(2, 2, 0)), &x, &[]);
    assert_close(&y, &[1, 1, 2, 2], &[36.5, 80., 12., 15.]);
}

#[test]
fn conv_with_padding() {
    // All-ones 3x3 kernel, padding 1: each output is the sum of the in-bounds neighbourhood,
    // e.g. the corner 1 + 2 + 4 + 5 = 12 and the centre 45. The bias adds 0.5.
    let x = buf(&[1, 1, 3, 3], &[1., 2., 3., 4., 5., 6., 7., 8., 9.]);
    let w = buf(&[1, 1, 3, 3], &[1.; 9]);
    let y = run(conv(1, 3, 1, 1), &x, &[("weight", w), ("bias", buf(&[1], &[0.5]))]);
    assert_close(&y, &[1, 1, 3, 3], &[12.5, 21.5, 16.5, 27.5, 45.5, 33.5, 24.5, 39.5, 28.5]);
}

fn ramp_5x5() -> Buf {
    // x[i][j] = 5i + j
    buf(&[1, 1, 5, 5], &(0..25).map(f64::from).collect::<Vec<_>>())
}

#[test]
fn conv_with_stride_2() {
    // Window sum at top-left (r, c): 9 (5r + c) + 45 (row offsets) + 9 (column offsets).
    let w = buf(&[1, 1, 3, 3], &[1.; 9]);
    let y = run(conv_op(1, plain(3, 2, 0), 1, false), &ramp_5x5(), &[("weight", w)]);
    assert_close(&y, &[1, 1, 2, 2], &[54., 72., 144., 162.]);
}

#[test]
fn conv_with_dilation_2() {
    // A 2x2 all-ones kernel with dilation 2 reads x[r][c] + x[r][c+2] + x[r+2][c] + x[r+2][c+2]
    // = 4 (5r + c) + 24.
    let mut w = plain(2, 1, 0);
    w.dilation = [2, 2];
    let y = run(conv_op(1, w, 1, false), &ramp_5x5(), &[("weight", buf(&[1, 1, 2, 2], &[1.; 4]))]);
    assert_close(&y, &[1, 1, 3, 3], &[24., 28., 32., 44., 48., 52., 64., 68., 72.]);
}

#[test]
fn conv_with_groups_2() {
    // Group 0 sees only channel 0, group 1 only channel 1.
    // 1x1: out0 = 2 * ch0 + 1, out1 = -ch1.
    let x = buf(&[1, 2, 2, 2], &[1., 2., 3., 4., 5., 6., 7., 8.]);
    let y = run(
        conv_op(2, plain(1, 1, 0), 2, true),
        &x,
        &[("weight", buf(&[2, 1, 1, 1], &[2., -1.])), ("bias", buf(&[2], &[1., 0.]))],
    );
    assert_close(&y, &[1, 2, 2, 2], &[3., 5., 7., 9., -5., -6., -7., -8.]);
    // 2x2: out0 = ch0 . [[1, 0], [0, 1]] = 1 + 4, out1 = ch1 . [[0, 1], [1, 0]] = 6 + 7.
    let w = buf(&[2, 1, 2, 2], &[1., 0., 0., 1., 0., 1., 1., 0.]);
    let y = run(conv_op(2, plain(2, 1, 0), 2, false), &x, &[("weight", w)]);
    assert_close(&y, &[1, 2, 1, 1], &[5., 13.]);
}

#[test]
fn max_pool_padding_is_minus_infinity() {
    // All-negative input: if padding were 0 the corners would be 0.
    let x = buf(&[1, 1, 2, 2], &[-1., -2., -3., -4.]);
    let y = run(pool(PoolKind::Max, plain(2, 1, 1)), &x, &[]);
    assert_close(&y, &[1, 1, 3, 3], &[-1., -1., -2., -1., -1., -2., -3., -3., -4.]);
}

#[test]
fn avg_pool_include_pad_true_and_false() {
    // Kernel 2, stride 1, padding 1 on [[1, 2], [3, 4]]: every window has 4 positions.
    let x = buf(&[1, 1, 2, 2], &[1., 2., 3., 4.]);
    let y = run(pool(PoolKind::Avg { include_pad: true }, plain(2, 1, 1)), &x, &[]);
    assert_close(&y, &[1, 1, 3, 3], &[0.25, 0.75, 0.5, 1., 2.5, 1.5, 0.75, 1.75, 1.]);
    let y = run(pool(PoolKind::Avg { include_pad: false }, plain(2, 1, 1)), &x, &[]);
    assert_close(&y, &[1, 1, 3, 3], &[1., 1.5, 2., 2., 2.5, 3., 3., 3.5, 4.]);
}

#[test]
fn avg_pool_ceil_mode_clips_windows() {
    // 3x3 input 1..9, kernel 2, stride 2, ceil mode: the edge windows are clipped to the
    // input, so they divide by 2, 2 and 1: [[(1+2+4+5)/4, (3+6)/2], [(7+8)/2, 9/1]].
    let x = buf(&[1, 1, 3, 3], &[1., 2., 3., 4., 5., 6., 7., 8., 9.]);
    let mut w = plain(2, 2, 0);
    w.ceil_mode = true;
    let y = run(pool(PoolKind::Avg { include_pad: true }, w), &x, &[]);
    assert_close(&y, &[1, 1, 2, 2], &[3., 4.5, 7.5, 9.]);
    // Width 4 = [1, 2, 3, 4], kernel 3, stride 2, padding 1, ceil mode: padded
    // [0, 1, 2, 3, 4, 0]; windows [0 1 2], [2 3 4], [4 0 | past the end]. include_pad
    // divides by 3, 3 and 2 (the last window clipped to the padded input), giving
    // [1, 3, 2]; without padding by 2, 3, 1, giving [1.5, 3, 4].
    let x = buf(&[1, 1, 1, 4], &[1., 2., 3., 4.]);
    let w = Window { kernel: [1, 3], stride: [1, 2], pad: [0, 1], dilation: [1, 1], ceil_mode: true };
    let y = run(pool(PoolKind::Avg { include_pad: true }, w), &x, &[]);
    assert_close(&y, &[1, 1, 1, 3], &[1., 3., 2.]);
    let y = run(pool(PoolKind::Avg { include_pad: false }, w), &x, &[]);
    assert_close(&y, &[1, 1, 1, 3], &[1.5, 3., 4.]);
}

#[test]
fn l2_global_adaptive_and_pyramid_pools() {
    // L2: sqrt(3^2 + 4^2) = 5 and sqrt(1 + 4 + 4 + 16) = 5.
    let x = buf(&[1, 1, 2, 4], &[3., 4., 1., 2., 0., 0., 2., 4.]);
    let y = run(pool(PoolKind::L2, plain(2, 2, 0)), &x, &[]);
    assert_close(&y, &[1, 1, 1, 2], &[5., 5.]);
    // Global pools of [[1, 2], [3, 6]]: mean 3, max 6, L2 sqrt(50).
    let x = buf(&[1, 1, 2, 2], &[1., 2., 3., 6.]);
    assert_close(&run(Op::GlobalPool(PoolKind::Avg { include_pad: false }), &x, &[]), &[1, 1, 1, 1], &[3.]);
    assert_close(&run(Op::GlobalPool(PoolKind::Max), &x, &[]), &[1, 1, 1, 1], &[6.]);
    assert_close(&run(Op::GlobalPool(PoolKind::L2), &x, &[]), &[1, 1, 1, 1], &[50f64.sqrt()]);
    // Adaptive 5 -> 3 uses bins [0, 2), [1, 4), [3, 5): means 1.5, 3, 4.5; maxima 2, 4, 5.
    let x = buf(&[1, 1, 1, 5], &[1., 2., 3., 4., 5.]);
    let avg = Op::AdaptivePool { kind: PoolKind::Avg { include_pad: true }, output: [1, 3] };
    assert_close(&run(avg, &x, &[]), &[1, 1, 1, 3], &[1.5, 3., 4.5]);
    let max = Op::AdaptivePool { kind: PoolKind::Max, output: [1, 3] };
    assert_close(&run(max, &x, &[]), &[1, 1, 1, 3], &[2., 4., 5.]);
    // Pyramid [1, 2] max of two channels [[1, 2], [3, 4]] and [[8, 7], [6, 5]]: level 1 gives
    // (4, 8), level 2 the channels themselves, in (C, oh, ow) order.
    let x = buf(&[1, 2, 2, 2], &[1., 2., 3., 4., 8., 7., 6., 5.]);
    let spp = Op::Spp { kind: PoolKind::Max, levels: vec![1, 2] };
    assert_close(&run(spp, &x, &[]), &[1, 10], &[4., 8., 1., 2., 3., 4., 8., 7., 6., 5.]);
}

#[test]
fn softmax_of_1_2_3() {
    // exp(k) / (e + e^2 + e^3)
    let y = run(Op::Softmax, &buf(&[1, 3], &[1., 2., 3.]), &[]);
    assert_close(&y, &[1, 3], &[0.09003057317038046, 0.24472847105479767, 0.6652409557748219]);
    // Over channels of a map, per position; shifting all logits changes nothing.
    let y = run(Op::Softmax, &buf(&[1, 3, 1, 2], &[1001., 1., 1002., 2., 1003., 3.]), &[]);
    assert_close(
        &y,
        &[1, 3, 1, 2],
        &[
            0.09003057317038046,
            0.09003057317038046,
            0.24472847105479767,
            0.24472847105479767,
            0.6652409557748219,
            0.6652409557748219,
        ],
    );
}

#[test]
fn activations_at_hand_picked_points() {
    let x = buf(&[1, 4], &[-2., -0.5, 0., 1.5]);
    let act = |a| run(Op::Activation(a), &x, &[]);
    assert_close(&act(Activation::Relu), &[1, 4], &[0., 0., 0., 1.5]);
    assert_close(&act(Activation::LeakyRelu { slope: 0.1 }), &[1, 4], &[-0.2, -0.05, 0., 1.5]);
    let e2 = (-2f64).exp() - 1.0;
    let e05 = (-0.5f64).exp() - 1.0;
    assert_close(&act(Activation::Elu { alpha: 2.0 }), &[1, 4], &[2.0 * e2, 2.0 * e05, 0., 1.5]);
    let s = SELU_SCALE;
    assert_close(&act(Activation::Selu), &[1, 4], &[s * SELU_ALPHA * e2, s * SELU_ALPHA * e05, 0., s * 1.5]);
    assert_close(&act(Activation::HardTanh { min: -1.0, max: 1.0 }), &[1, 4], &[-1., -0.5, 0., 1.]);
    assert_close(&act(Activation::Softsign), &[1, 4], &[-2. / 3., -0.5 / 1.5, 0., 1.5 / 2.5]);
    let sig = |v: f64| 1.0 / (1.0 + (-v).exp());
    assert_close(&act(Activation::Sigmoid), &[1, 4], &[sig(-2.), sig(-0.5), 0.5, sig(1.5)]);
    assert_close(&act(Activation::Tanh), &[1, 4], &[(-2f64).tanh(), (-0.5f64).tanh(), 0., 1.5f64.tanh()]);
    // Softplus beta 2, threshold 2: log(1 + exp(2x)) / 2, linear where 2x > 2: 1.5 passes
    // through.
    let sp = |v: f64| (1.0 + (2.0 * v).exp()).ln() / 2.0;
    assert_close(
        &act(Activation::Softplus { beta: 2.0, threshold: 2.0 }),
        &[1, 4],
        &[sp(-2.), sp(-0.5), 2f64.ln() / 2.0, 1.5],
    );
    // PReLU: slope 0.25 on channel 0, -1 on channel 1.
    let x = buf(&[1, 2, 1, 2], &[-4., 4., -4., 4.]);
    let y = run(Op::Prelu, &x, &[("weight", buf(&[2], &[0.25, -1.]))]);
    assert_close(&y, &[1, 2, 1, 2], &[-1., 4., 4., 4.]);
}

#[test]
fn fc_batch_norm_and_lrn() {
    // [1, 2] . [[1, 0], [2, -1], [0.5, 0.5]]^T + [0, 1, -1] = [1, 1, 0.5]
    let w = buf(&[3, 2], &[1., 0., 2., -1., 0.5, 0.5]);
    let y = run(
        Op::Fc(Fc { out_features: 3, bias: true }),
        &buf(&[1, 2], &[1., 2.]),
        &[("weight", w), ("bias", buf(&[3], &[0., 1., -1.]))],
    );
    assert_close(&y, &[1, 3], &[1., 1., 0.5]);
    // Inference batch norm, running mean 2, var 3, eps 1, gamma 2, beta 1:
    // (x - 2) / 2 * 2 + 1 on x = 1, 3.
    let bn = Op::BatchNorm(BatchNorm { eps: 1.0, momentum: 0.1 });
    let stats = [
        ("weight", buf(&[1], &[2.])),
        ("bias", buf(&[1], &[1.])),
        ("running_mean", buf(&[1], &[2.])),
        ("running_var", buf(&[1], &[3.])),
    ];
    assert_close(&run(bn, &buf(&[2, 1], &[1., 3.]), &stats), &[2, 1], &[0., 2.]);
    // LRN size 2, alpha 2 (alpha / size = 1), beta 1, k 1 on channels [1, 2]: the window of
    // channel 0 is {0}, of channel 1 {0, 1}: 1 / (1 + 1) and 2 / (1 + 1 + 4).
    let lrn = Op::Lrn(Lrn { size: 2, alpha: 2.0, beta: 1.0, k: 1.0, alpha_over_size: true });
    assert_close(&run(lrn, &buf(&[1, 2, 1, 1], &[1., 2.]), &[]), &[1, 2, 1, 1], &[0.5, 1. / 3.]);
    // Size 3, beta 0.5, k 0, alpha 3 on [3, 4, 0]: window sums 25, 25, 16:
    // 3 / 5, 4 / 5, 0.
    let lrn = Op::Lrn(Lrn { size: 3, alpha: 3.0, beta: 0.5, k: 0.0, alpha_over_size: true });
    assert_close(&run(lrn, &buf(&[1, 3, 1, 1], &[3., 4., 0.]), &[]), &[1, 3, 1, 1], &[0.6, 0.8, 0.]);
}

#[test]
fn dropout_masks() {
    let x = buf(&[2, 50], &[1.; 100]);
    // p = 0: identity; p = 1: all zero.
    assert_eq!(run_in(Op::Dropout { p: 0.0 }, &x, &[], TRAIN), x);
    assert_eq!(run_in(Op::Dropout { p: 1.0 }, &x, &[], TRAIN).data, vec![0.0; 100]);
    // p = 0.5: every element 0 or 2, deterministic in the seed, the layer's name and the step,
    // and the same as dropout_mask.
    let y = run_in(Op::Dropout { p: 0.5 }, &x, &[], TRAIN);
    assert!(y.data.iter().all(|&v| v == 0.0 || v == 2.0));
    let kept = y.data.iter().filter(|&&v| v == 2.0).count();
    assert!((30..=70).contains(&kept), "{kept}");
    assert_eq!(y.data, dropout_mask(SEED, "l1", 1, 100, 0.5));
    assert_eq!(run_in(Op::Dropout { p: 0.5 }, &x, &[], TRAIN), y);
    assert_ne!(dropout_mask(SEED + 1, "l1", 1, 100, 0.5), y.data);
    assert_ne!(dropout_mask(SEED, "l2", 1, 100, 0.5), y.data);
    assert_ne!(dropout_mask(SEED, "l1", 2, 100, 0.5), y.data);
    // Inference: identity.
    assert_eq!(run(Op::Dropout { p: 0.5 }, &x, &[]), x);
}

#[test]
fn losses_by_hand() {
    // Cross-entropy, logits [[0, 0], [0, ln 3]], targets [0, 1]: softmaxes [1/2, 1/2] and
    // [1/4, 3/4], losses ln 2 and ln(4/3), mean ln(8/3) / 2; gradient (p - onehot) / 2.
    let labels = |l: &[f64]| buf(&[l.len()], l);
    let x = buf(&[2, 2], &[0., 0., 0., 3f64.ln()]);
    let (l, g) = loss_and_grad(Loss::CrossEntropy, &x, &labels(&[0., 1.]));
    assert!((l - (8f64 / 3.).ln() / 2.).abs() < 1e-15, "{l}");
    assert_close(&g, &[2, 2], &[-0.25, 0.25, 0.125, -0.125]);
    // MSE: differences [1, 0, -2, 0], squares sum 5, mean 1.25; gradient 2 d / 4.
    let out = buf(&[2, 2], &[1., 2., 3., 4.]);
    let target = buf(&[2, 2], &[0., 2., 5., 4.]);
    let (l, g) = loss_and_grad(Loss::Mse, &out, &target);
    assert_eq!(l, 1.25);
    assert_close(&g, &[2, 2], &[0.5, 0., -1., 0.]);
    // L1: |d| sums to 3, mean 0.75; gradient sign(d) / 4 (0 at 0).
    let (l, g) = loss_and_grad(Loss::L1, &out, &target);
    assert_eq!(l, 0.75);
    assert_close(&g, &[2, 2], &[0.25, 0., -0.25, 0.]);
    // Huber: d = [0.5, 0, -2, 3] gives 0.125, 0, 1.5, 2.5; mean 1.03125; gradient clamp(d) / 4.
    let d = buf(&[2, 2], &[0.5, 0., -2., 3.]);
    let (l, g) = loss_and_grad(Loss::Huber { delta: 1.0 }, &d, &Buf::zeros(&[2, 2]));
    assert_eq!(l, 1.03125);
    assert_close(&g, &[2, 2], &[0.125, 0., -0.25, 0.25]);
    // Huber with delta 2: 0.125, 0, 2 (quadratic up to 2), 2 * (3 - 1) = 4; mean 1.53125;
    // gradient clamp(d, -2, 2) / 4.
    let (l, g) = loss_and_grad(Loss::Huber { delta: 2.0 }, &d, &Buf::zeros(&[2, 2]));
    assert_eq!(l, 1.53125);
    assert_close(&g, &[2, 2], &[0.125, 0., -0.5, 0.5]);
    // Hinge: sample 0, x = [0.1, 0.2, 0.4], y = 2: (0.7 + 0.8) / 3 = 0.5; sample 1,
    // x = [3, 0, 0.5], y = 0: both margins negative, 0. Mean 0.25. Gradient 1 / (2 * 3) per
    // active term on x_j, minus that on x_y.
    let x = buf(&[2, 3], &[0.1, 0.2, 0.4, 3., 0., 0.5]);
    let multi_margin = Loss::Hinge { margin: 1.0, form: HingeForm::MeanOverClasses };
    let (l, g) = loss_and_grad(multi_margin, &x, &labels(&[2., 0.]));
    assert!((l - 0.25).abs() < 1e-15, "{l}");
    assert_close(&g, &[2, 3], &[1. / 6., 1. / 6., -1. / 3., 0., 0., 0.]);
    // The course's (Weston-Watkins) hinge sums over the classes: sample 0 gives 1.5, sample 1
    // 0, mean 0.75; each active term moves 1/2 (the batch mean alone).
    let svm = Loss::Hinge { margin: 1.0, form: HingeForm::Sum };
    let (l, g) = loss_and_grad(svm, &x, &labels(&[2., 0.]));
    assert!((l - 0.75).abs() < 1e-15, "{l}");
    assert_close(&g, &[2, 3], &[0.5, 0.5, -1., 0., 0., 0.]);
    // Margin 3 on sample 1 (x = [3, 0, 0.5], y = 0): 3 - 3 + 0 = 0 (inactive), 3 - 3 + 0.5 =
    // 0.5; sample 0: 3 - 0.4 + 0.1 = 2.7 and 2.8. Sum form: (5.5 + 0.5) / 2 = 3.
    let (l, _) = loss_and_grad(Loss::Hinge { margin: 3.0, form: HingeForm::Sum }, &x, &labels(&[2., 0.]));
    assert!((l - 3.0).abs() < 1e-12, "{l}");
}

#[test]
fn f32_mode_rounds_each_stored_value() {
    let mut rng = cnnc_interp::Rng::new(3);
    let x = random_buf(&mut rng, &[2, 3, 4, 4], -1.0, 1.0);
    let x32 = x.to_tensor();
    let w = random_buf(&mut rng, &[2, 3, 3, 3], -1.0, 1.0).to_tensor();
    let mut b = Builder::new();
    let i = b.input(&[3, 4, 4]);
    let c = b.add(conv_op(2, plain(3, 1, 1), 1, false), &[i]);
    let t = b.add(Op::Activation(Activation::Tanh), &[c]);
    let g = b.finish(&[c, t]);
    let mut params: TensorMap = [("l1.weight".to_string(), w)].into_iter().collect();
    let input = std::slice::from_ref(&x32);
    let t32 = cnnc_interp::run(&g, &mut params, input, &Options::new()).unwrap();
    let t64 = cnnc_interp::run(&g, &mut params, input, &Options::new().with_precision(Precision::F64)).unwrap();
    let outputs = |r: &cnnc_interp::Run| -> Vec<Tensor> { r.outputs().into_iter().flatten().collect() };
    let (o32, o64) = (outputs(&t32), outputs(&t64));
    // The conv output is the f64 sum rounded once, so both modes agree exactly.
    assert_eq!(o32[0], o64[0]);
    // tanh reads the rounded conv output in F32 mode: again exactly tanh-then-round.
    let expected: Vec<f32> = o32[0].data.iter().map(|&v| f64::from(v).tanh() as f32).collect();
    assert_eq!(o32[1].data, expected);
    // Stored values are f32-representable.
    assert!(t32.value(c).unwrap().data.iter().all(|&v| f64::from(v as f32) == v));
}
