//! Point convolutions (one output pixel: ResNet-18's layer4 on 32x32 images), which native
//! mode runs as fully connected layers on the kernel taps that meet the input
//! (`lower/native_point.rs`): 1x1 maps (one live tap, off centre too: strides, dilation,
//! rectangular kernels) and larger ones (the live pixels gathered, the input gradient
//! scattered back, zero on pixels no tap meets), packed and plain weights, with and without
//! bias, under an activation, a residual (left to the blocked kernels), and channel counts
//! with padding lanes (left to them too). Each graph runs in both modes against the interpreter: inference, and
//! a training step with input and weight gradients.

use crate::ops::{add, check_graph};
use cnnc_ir::{Activation, Conv, Graph, Op, Shape, Window};

fn conv(out: usize, kernel: [usize; 2], stride: usize, pad: [usize; 2], dilation: [usize; 2], bias: bool) -> Op {
    let window = Window { kernel, stride: [stride; 2], pad, dilation, ceil_mode: false };
    Op::Conv(Conv { out_channels: out, window, groups: 1, bias })
}

/// Whole channel blocks (the 1x1 maps are blocked): a 3x3 with padding 1 (the centre tap), a
/// dilated 3x3 with padding 2 (the centre again, through dilation 2), a 2x2 and a 4x2 kernel
/// with strides whose live taps are off centre ((1, 1); (2, 1)), and a residual block.
#[test]
fn blocked_point_convolutions() {
    for batch in [1, 3] {
        let mut g = Graph::new("point");
        let x = g.add_input("x", Shape(vec![32, 1, 1]), Default::default()).unwrap();
        let a = add(&mut g, conv(48, [3, 3], 1, [1, 1], [1, 1], true), &[x], "a");
        let a = add(&mut g, Op::Activation(Activation::Relu), &[a], "relu_a");
        let b = add(&mut g, conv(32, [3, 3], 1, [2, 2], [2, 2], false), &[a], "b");
        let b = add(&mut g, Op::Activation(Activation::Tanh), &[b], "tanh_b");
        let c = add(&mut g, conv(32, [2, 2], 2, [1, 1], [1, 1], true), &[b], "c");
        let r = add(&mut g, Op::Add, &[c, b], "res");
        let r = add(&mut g, Op::Activation(Activation::Relu), &[r], "relu_r");
        let d = add(&mut g, conv(16, [4, 2], 3, [2, 1], [1, 1], true), &[r], "d");
        g.outputs = vec![d];
        check_graph(&g, batch);
    }
}

/// Channel counts that are not whole blocks (plain maps, or blocked ones with padding lanes):
/// 5 -> 7 -> 20 on 1x1 maps.
#[test]
fn plain_point_convolutions() {
    let mut g = Graph::new("point_plain");
    let x = g.add_input("x", Shape(vec![5, 1, 1]), Default::default()).unwrap();
    let a = add(&mut g, conv(7, [3, 3], 1, [1, 1], [1, 1], true), &[x], "a");
    let a = add(&mut g, Op::Activation(Activation::Sigmoid), &[a], "sig");
    let b = add(&mut g, conv(20, [2, 4], 2, [1, 2], [1, 1], false), &[a], "b");
    g.outputs = vec![b];
    check_graph(&g, 2);
}

/// Maps of more than one pixel into one: ResNet-18's layer4.0 on 2x2 maps (the 3x3/2 with
/// padding 1: four live taps on four pixels; the 1x1/2 downsample: one tap on one pixel, the
/// other three pixels' gradient zero), a 3x3 without padding on 3x3 (all nine), and a plain
/// 3-channel 2x2 map through a 3x3/2 with padding 1 (four live taps).
#[test]
fn gathered_point_convolutions() {
    let mut g = Graph::new("point_gather");
    let x = g.add_input("x", Shape(vec![32, 2, 2]), Default::default()).unwrap();
    let a = add(&mut g, conv(48, [3, 3], 2, [1, 1], [1, 1], false), &[x], "a");
    let d = add(&mut g, conv(48, [1, 1], 2, [0, 0], [1, 1], true), &[x], "down");
    let r = add(&mut g, Op::Add, &[a, d], "res");
    let r = add(&mut g, Op::Activation(Activation::Relu), &[r], "relu");
    g.outputs = vec![r];
    check_graph(&g, 3);

    let mut g = Graph::new("point_gather_all");
    let x = g.add_input("x", Shape(vec![16, 3, 3]), Default::default()).unwrap();
    let a = add(&mut g, conv(32, [3, 3], 1, [0, 0], [1, 1], true), &[x], "a");
    let a = add(&mut g, Op::Activation(Activation::Tanh), &[a], "tanh");
    g.outputs = vec![a];
    check_graph(&g, 2);

    let mut g = Graph::new("point_gather_plain");
    let x = g.add_input("x", Shape(vec![3, 2, 2]), Default::default()).unwrap();
    let a = add(&mut g, conv(5, [3, 3], 2, [1, 1], [1, 1], true), &[x], "a");
    g.outputs = vec![a];
    check_graph(&g, 2);
}
