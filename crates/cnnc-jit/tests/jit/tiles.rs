//! Portable mode's register-tiled convolution on the shapes that take its less common paths:
//! channel counts that leave padding lanes in the last block (under an activation that is not
//! zero at zero), rows whose tiles all touch the halo, rows of one or two pixels, strided,
//! dilated and rectangular kernels, 1x1 products on an odd number of pixels, grouped blocked
//! weights, fused residuals on blocked and plain maps, input gradients on transposed weights;
//! and the dot products of fully connected layers on lengths that leave vector and scalar
//! tails. Each graph runs in both modes against the interpreter: inference, and a training
//! step, whose forward pass uses the same code and whose input and weight gradients on blocked
//! maps are tiles too. Stride-2 3x3 kernels on odd sizes take both tile shapes (rows of more
//! and of at most 14 pixels). Layers of equal shapes run one compiled function on their own
//! operands.

use crate::common::{MODES, batch_of, compile, random_weights};
use crate::ops::{add, check_graph};
use cnnc_ir::{Activation, Conv, Fc, Graph, Layout, Op, Shape, Window};
use cnnc_jit::{CompiledModel, ConvPass, Lowering, Mode, Options};
use cnnc_passes::{PassOptions, optimize};
use cnnc_runtime::Cancel;

fn conv(out: usize, kernel: [usize; 2], stride: [usize; 2], pad: [usize; 2], dilation: [usize; 2]) -> Op {
    let window = Window { kernel, stride, pad, dilation, ceil_mode: false };
    Op::Conv(Conv { out_channels: out, window, groups: 1, bias: true })
}

fn square(out: usize, k: usize, s: usize, p: usize) -> Op {
    conv(out, [k, k], [s, s], [p, p], [1, 1])
}

/// Asserts that the layout pass keeps node `name` in `layout`, so that the graph tests the
/// tile path it is meant to.
fn assert_layout(g: &Graph, name: &str, layout: Layout) {
    let weights = crate::common::random_weights(g, 1);
    let plan = optimize(g, Some(&weights), &PassOptions::all()).unwrap().plan;
    let (id, _) = plan.graph.iter().find(|(_, n)| n.name == name).unwrap_or_else(|| panic!("no node {name}"));
    assert_eq!(plan.layouts[id.index()], layout, "{name}");
}

/// Asserts how portable mode lowers the passes of node `name` listed in `want` (its forward in
/// the inference plan; its forward, input gradient and weight gradient in the training step), so that a
/// change that sends one of them to the general scalar loops, which the interpreter cannot
/// tell apart, fails here.
fn assert_lowered(g: &Graph, name: &str, want: &[(ConvPass, Lowering)]) {
    let weights = random_weights(g, 1);
    let inference = optimize(g, Some(&weights), &PassOptions::all()).unwrap().plan;
    let training = crate::common::sgd_step(g);
    let training = cnnc_passes::optimize_training(g, Some(&weights), &PassOptions::all(), &training).unwrap().plan;
    for (plan, what) in [(&inference, "inference"), (&training, "training")] {
        let m = CompiledModel::compile(plan, &Options::new(2).with_mode(Mode::Portable)).unwrap();
        let checked = |pass: ConvPass| want.iter().any(|&(p, _)| p == pass);
        let got: Vec<(ConvPass, Lowering)> = m
            .lowerings()
            .iter()
            .filter(|l| plan.graph[l.node].name == name && checked(l.pass))
            .map(|l| (l.pass, l.lowering))
            .collect();
        let expected: Vec<(ConvPass, Lowering)> =
            want.iter().copied().filter(|(p, _)| what == "training" || *p == ConvPass::Forward).collect();
        assert_eq!(got, expected, "{name} in the {what} plan");
    }
}

const TILED: [(ConvPass, Lowering); 3] = [
    (ConvPass::Forward, Lowering::Tiles),
    (ConvPass::BackwardData, Lowering::Tiles),
    (ConvPass::BackwardWeights, Lowering::Tiles),
];

/// A grouped convolution on the graph's input: tiles forward, the general loops for the weight
/// gradient (its input gradient, into the plain input map, is loops or tiles by the groups'
/// shape; `grouped_partial_backward_data_tiles` checks the tiled one).
const GROUPED_ON_INPUT: [(ConvPass, Lowering); 2] =
    [(ConvPass::Forward, Lowering::Tiles), (ConvPass::BackwardWeights, Lowering::Loops)];

/// Blocked maps: 24 -> 40 channels (8 padding lanes, through a sigmoid), a strided, dilated
/// 3x5 kernel, a 1x1 product on 7 x 6 pixels with a residual, a 1x1 stride-2 convolution.
#[test]
fn blocked_tiles() {
    for hw in [[13, 11], [7, 6], [3, 2], [2, 1]] {
        let mut g = Graph::new("bt");
        let x = g.add_input("x", Shape(vec![24, hw[0], hw[1]]), Default::default()).unwrap();
        let a = add(&mut g, square(40, 3, 1, 1), &[x], "a");
        let s = add(&mut g, Op::Activation(Activation::Sigmoid), &[a], "sig");
        let b = add(&mut g, conv(32, [3, 5], [2, 1], [2, 4], [2, 2]), &[s], "b");
        let t = add(&mut g, Op::Activation(Activation::Tanh), &[b], "tanh");
        let c = add(&mut g, square(32, 1, 1, 0), &[t], "c");
        let r = add(&mut g, Op::Add, &[c, t], "res");
        let r = add(&mut g, Op::Activation(Activation::Relu), &[r], "relu");
        let d = add(&mut g, square(48, 1, 2, 0), &[r], "d");
        g.outputs = vec![d];
        for name in ["a", "b", "c", "d"] {
            assert_layout(&g, name, Layout::Blocked16);
            assert_lowered(&g, name, &TILED);
        }
        check_graph(&g, 2);
    }
}

/// Stride-2 3x3 convolutions on odd sizes: a 15 x 33 input (8 x 17 outputs: rows in 4-pixel
/// tiles), 13 x 13 (7 x 7: one 7-pixel tile a row, its first column in the halo) and 29 x 27
/// (15 x 14: two 7-pixel tiles, both touching the halo), 40 channels (a partial input block)
/// into 24 (a partial output block) into 32.
#[test]
fn strided_tiles() {
    for hw in [[15, 33], [13, 13], [29, 27]] {
        let mut g = Graph::new("st");
        let x = g.add_input("x", Shape(vec![40, hw[0], hw[1]]), Default::default()).unwrap();
        let a = add(&mut g, square(24, 3, 2, 1), &[x], "a");
        let r = add(&mut g, Op::Activation(Activation::Relu), &[a], "relu");
        let b = add(&mut g, square(32, 3, 2, 1), &[r], "b");
        let t = add(&mut g, Op::Activation(Activation::Tanh), &[b], "tanh");
        g.outputs = vec![t];
        for name in ["a", "b"] {
            assert_layout(&g, name, Layout::Blocked16);
        }
        check_graph(&g, 2);
    }
}

/// Small maps tiled whole (tiles of up to 12 pixels across rows): stride-2 3x3 kernels onto
/// 7 x 7 (from 13 x 13, the halo left and top, and from 14 x 14) and 5 x 3 outputs, and 8 x 8
/// (rows as long as a row tile: row tiles); then a kernel padded beyond its reach vertically and not
/// at all across (11 x 5 and one-column 9 x 1 maps whose first and last rows read no tap;
/// 12 x 6 in row tiles) and a dilated one with a fused residual; 40 input channels (a partial block) into 24
/// (padding lanes) into 32; and a plain map of 3 channels through a 5x5 stride-2 kernel onto
/// 5 x 5 (stored lane by lane).
#[test]
fn whole_map_tiles() {
    for hw in [[13, 13], [14, 14], [9, 5], [15, 16]] {
        let mut g = Graph::new("wm");
        let x = g.add_input("x", Shape(vec![40, hw[0], hw[1]]), Default::default()).unwrap();
        let a = add(&mut g, square(24, 3, 2, 1), &[x], "a");
        let r = add(&mut g, Op::Activation(Activation::Sigmoid), &[a], "sig");
        let b = add(&mut g, conv(32, [3, 3], [1, 1], [3, 0], [1, 1]), &[r], "b");
        let c = add(&mut g, conv(32, [3, 3], [1, 1], [2, 2], [2, 2]), &[b], "c");
        let s = add(&mut g, Op::Add, &[c, b], "res");
        let t = add(&mut g, Op::Activation(Activation::Tanh), &[s], "tanh");
        g.outputs = vec![t];
        for name in ["a", "b", "c"] {
            assert_layout(&g, name, Layout::Blocked16);
        }
        check_graph(&g, 2);
    }
    let mut g = Graph::new("wp");
    let x = g.add_input("x", Shape(vec![3, 10, 9]), Default::default()).unwrap();
    let a = add(&mut g, square(20, 5, 2, 2), &[x], "a");
    let t = add(&mut g, Op::Activation(Activation::Tanh), &[a], "tanh");
    g.outputs = vec![t];
    assert_layout(&g, "a", Layout::Plain);
    check_graph(&g, 2);
}

/// Gradients of strided convolutions as tiles: input gradients through the output gradient
/// spread out by the stride (stride 3 with a remainder row and column the last tap does not
/// reach, stride 2 x 3 with dilation, a 1x1 stride-2 product), and weight gradients of plain
/// inputs of 5 channels (a full and a partial quad of input channels) and of 8, into 12 and
/// 20 output channels (partial blocks), with plain output gradients.
#[test]
fn strided_gradient_tiles() {
    let mut g = Graph::new("sg");
    let x = g.add_input("x", Shape(vec![32, 17, 20]), Default::default()).unwrap();
    let a = add(&mut g, square(24, 3, 3, 1), &[x], "a");
    let r = add(&mut g, Op::Activation(Activation::Relu), &[a], "relu");
    let b = add(&mut g, conv(32, [3, 3], [2, 3], [2, 1], [2, 1]), &[r], "b");
    let t = add(&mut g, Op::Activation(Activation::Tanh), &[b], "tanh");
    let c = add(&mut g, square(16, 1, 2, 0), &[t], "c");
    g.outputs = vec![c];
    for name in ["a", "b", "c"] {
        assert_layout(&g, name, Layout::Blocked16);
    }
    check_graph(&g, 2);
    for (channels, out) in [(5, 12), (8, 20)] {
        let mut g = Graph::new("pg");
        let x = g.add_input("x", Shape(vec![channels, 13, 11]), Default::default()).unwrap();
        let a = add(&mut g, square(out, 5, 2, 2), &[x], "a");
        let t = add(&mut g, Op::Activation(Activation::Tanh), &[a], "tanh");
        g.outputs = vec![t];
        assert_layout(&g, "a", Layout::Plain);
        check_graph(&g, 2);
    }
}

/// Depthwise convolutions as tiles (a channel a lane; `Goihw16g` weights, so groups of whole
/// blocks: 32 channels), 3x3 at stride 1 and 2 on odd sizes, a dilated 5x5 with a fused
/// residual; forward, input gradients (rotated kernels, the strided one's on its spread output
/// gradient) and weight gradients.
#[test]
fn depthwise_tiles() {
    let depthwise = |k: usize, s: usize, p: usize, d: usize| {
        let window = Window { kernel: [k, k], stride: [s, s], pad: [p, p], dilation: [d, d], ceil_mode: false };
        Op::Conv(Conv { out_channels: 32, window, groups: 32, bias: true })
    };
    for hw in [[13, 11], [6, 5]] {
        let mut g = Graph::new("dw");
        let x = g.add_input("x", Shape(vec![32, hw[0], hw[1]]), Default::default()).unwrap();
        let a = add(&mut g, depthwise(3, 1, 1, 1), &[x], "a");
        let r = add(&mut g, Op::Activation(Activation::Relu), &[a], "relu");
        let b = add(&mut g, depthwise(3, 2, 1, 1), &[r], "b");
        let t = add(&mut g, Op::Activation(Activation::Tanh), &[b], "tanh");
        let c = add(&mut g, depthwise(5, 1, 4, 2), &[t], "c");
        let s = add(&mut g, Op::Add, &[c, t], "res");
        let y = add(&mut g, Op::Activation(Activation::Sigmoid), &[s], "sig");
        g.outputs = vec![y];
        for name in ["a", "b", "c"] {
            assert_layout(&g, name, Layout::Blocked16);
        }
        check_graph(&g, 2);
    }
}

/// Grouped convolutions whose groups are whole blocks (`gOIhw16i16o`): one and two output
/// blocks per group.
#[test]
fn grouped_blocked_tiles() {
    for out in [32, 64] {
        let mut g = Graph::new("gt");
        let x = g.add_input("x", Shape(vec![32, 9, 10]), Default::default()).unwrap();
        let window = Window { kernel: [3, 3], stride: [1, 1], pad: [1, 1], dilation: [1, 1], ceil_mode: false };
        let c = add(&mut g, Op::Conv(Conv { out_channels: out, window, groups: 2, bias: true }), &[x], "grouped");
        let y = add(&mut g, Op::Activation(Activation::LeakyRelu { slope: 0.1 }), &[c], "act");
        g.outputs = vec![y];
        assert_layout(&g, "grouped", Layout::Blocked16);
        // The grouped weight gradient has no tiles yet.
        assert_lowered(&g, "grouped", &GROUPED_ON_INPUT);
        check_graph(&g, 3);
    }
}

/// Grouped convolutions whose groups are not whole blocks (`oihw` weights repacked per
/// group): 32 -> 24 channels in 2 groups (a block's last four channels in the second group),
/// 48 -> 24 in 6 groups (8 input channels each, within one block) and 64 -> 40 in 2 groups (a
/// partial output block), stride 1 and 2.
#[test]
fn grouped_partial_tiles() {
    for (c, out, groups, stride) in [(32, 24, 2, 1), (48, 24, 6, 2), (64, 40, 2, 1)] {
        let mut g = Graph::new("gp");
        let x = g.add_input("x", Shape(vec![c, 9, 10]), Default::default()).unwrap();
        let window =
            Window { kernel: [3, 3], stride: [stride, stride], pad: [1, 1], dilation: [1, 1], ceil_mode: false };
        let a = add(&mut g, Op::Conv(Conv { out_channels: out, window, groups, bias: true }), &[x], "grouped");
        let y = add(&mut g, Op::Activation(Activation::Tanh), &[a], "act");
        g.outputs = vec![y];
        assert_layout(&g, "grouped", Layout::Blocked16);
        assert_lowered(&g, "grouped", &GROUPED_ON_INPUT);
        check_graph(&g, 2);
    }
}

/// Plain maps: a 7x7 stride-2 stem on 3 channels with 20 outputs (a partial block, stored lane
/// by lane), and a residual fused into a plain convolution.
#[test]
fn plain_tiles() {
    let mut g = Graph::new("pt");
    let x = g.add_input("x", Shape(vec![3, 17, 15]), Default::default()).unwrap();
    let stem = add(&mut g, square(20, 7, 2, 3), &[x], "stem");
    let t = add(&mut g, Op::Activation(Activation::Tanh), &[stem], "tanh");
    let a = add(&mut g, square(5, 3, 1, 1), &[t], "a");
    let b = add(&mut g, square(5, 1, 1, 0), &[t], "b");
    let r = add(&mut g, Op::Add, &[a, b], "res");
    let y = add(&mut g, Op::Activation(Activation::Relu), &[r], "relu");
    g.outputs = vec![y];
    assert_layout(&g, "stem", Layout::Plain);
    check_graph(&g, 2);
}

/// Fully connected layers: 37 inputs (a 16-float step, a vector, a scalar; for the input
/// gradient four 8-input tiles and a tail of 5), 7 (a vector and three scalars; a tail only), 3
/// (scalars only), at batch 3 and 6 (an input-gradient tile of 4 images and one of 2).
#[test]
fn fully_connected_dots() {
    let mut g = Graph::new("fc");
    let x = g.add_input("x", Shape(vec![37]), Default::default()).unwrap();
    let a = add(&mut g, Op::Fc(Fc { out_features: 7, bias: true }), &[x], "a");
    let s = add(&mut g, Op::Activation(Activation::Sigmoid), &[a], "sig");
    let b = add(&mut g, Op::Fc(Fc { out_features: 3, bias: true }), &[s], "b");
    let t = add(&mut g, Op::Activation(Activation::Tanh), &[b], "tanh");
    let c = add(&mut g, Op::Fc(Fc { out_features: 2, bias: false }), &[t], "c");
    g.outputs = vec![c];
    check_graph(&g, 3);
    check_graph(&g, 6);
}

/// Input gradients as tiles on the transposed, rotated weights: a dilated rectangular kernel
/// padded less than its reach, one padded exactly its reach (no padding left for the
/// transposed convolution), 40 channels (padding lanes in the gradient), and a 1x1 kernel
/// with padding beyond its reach (the general loops).
#[test]
fn backward_data_tiles() {
    let mut g = Graph::new("bd");
    let x = g.add_input("x", Shape(vec![32, 9, 11]), Default::default()).unwrap();
    let a = add(&mut g, conv(40, [3, 5], [1, 1], [1, 4], [2, 2]), &[x], "a");
    let r = add(&mut g, Op::Activation(Activation::Relu), &[a], "relu");
    let b = add(&mut g, conv(32, [3, 3], [1, 1], [2, 2], [1, 1]), &[r], "b");
    let t = add(&mut g, Op::Activation(Activation::Tanh), &[b], "tanh");
    let c = add(&mut g, square(32, 1, 1, 1), &[t], "c");
    g.outputs = vec![c];
    for name in ["a", "b", "c"] {
        assert_layout(&g, name, Layout::Blocked16);
    }
    check_graph(&g, 2);
}

/// Three equal 3x3 convolutions with residuals (on 7 x 5 pixels: a tile of 3 and of 2 pixels
/// a row) compile to one function each kernel of theirs runs on its own operands: the
/// functions are fewer than the kernels, and the results are the interpreter's, through the
/// driver and step by step (where each step is called with its own operand block).
#[test]
fn equal_layers_share_functions() {
    let mut g = Graph::new("eq");
    let x = g.add_input("x", Shape(vec![16, 7, 5]), Default::default()).unwrap();
    let mut h = add(&mut g, square(16, 3, 1, 1), &[x], "c0");
    for k in 1..4 {
        let c = add(&mut g, square(16, 3, 1, 1), &[h], &format!("c{k}"));
        let r = add(&mut g, Op::Add, &[c, h], &format!("r{k}"));
        h = add(&mut g, Op::Activation(Activation::Relu), &[r], &format!("relu{k}"));
    }
    g.outputs = vec![h];
    check_graph(&g, 2);
    let weights = random_weights(&g, 1);
    let plan = optimize(&g, Some(&weights), &PassOptions::all()).unwrap().plan;
    let x = batch_of(&[16, 7, 5], 2, 9);
    for mode in MODES {
        let driven = compile(&plan, 2, mode, &weights);
        let times = driven.compile_times().codegen;
        assert!(times.shared >= 2, "{mode:?}: {times:?}");
        let cancel = Cancel::new();
        let options = Options::new(2).with_mode(mode).with_guard_pages(true).with_cancel(cancel);
        let stepped = CompiledModel::compile(&plan, &options).unwrap();
        stepped.load_weights(&weights).unwrap();
        assert_eq!(stepped.forward(&x).unwrap(), driven.forward(&x).unwrap(), "{mode:?}");
    }
}

/// Input gradients on plain maps as the forward tiles on plain input (the transposed, rotated
/// weights repacked into `Oihw16o`): LeNet-5's C3 (6 -> 16 channels, 5x5 on 14 x 14, padded
/// by the kernel's reach), a dilated rectangular kernel padded less than its reach into 20
/// channels (a partial block of the forward, lanes past the 6 input channels unstored in the
/// gradient), and a 5-channel 3x3 layer on a 1-pixel-wide map.
#[test]
fn plain_backward_data_tiles() {
    for hw in [[14, 14], [9, 1]] {
        let mut g = Graph::new("pb");
        let x = g.add_input("x", Shape(vec![6, hw[0] + 4, hw[1] + 4]), Default::default()).unwrap();
        let c1 = add(&mut g, square(6, 5, 1, 0), &[x], "c1");
        let t = add(&mut g, Op::Activation(Activation::Tanh), &[c1], "tanh");
        let c3 = add(&mut g, square(16, 5, 1, 2), &[t], "c3");
        let s = add(&mut g, Op::Activation(Activation::Sigmoid), &[c3], "sig");
        let d = add(&mut g, conv(20, [3, 5], [1, 1], [1, 3], [2, 1]), &[s], "d");
        let r = add(&mut g, Op::Activation(Activation::Relu), &[d], "relu");
        let e = add(&mut g, square(5, 3, 1, 1), &[r], "e");
        g.outputs = vec![e];
        for name in ["c1", "c3", "d", "e"] {
            assert_layout(&g, name, Layout::Plain);
        }
        check_graph(&g, 3);
    }
}

/// Depthwise convolutions whose channels are not a multiple of 16 (`oihw` weights, repacked
/// into `Goihw16g` for the tiles; weight gradients stored lane by lane into `oihw`): 24 and 40
/// channels, 3x3 at stride 1 and 2 on odd sizes and a dilated 5x5 with a fused residual;
/// forward, input gradients and weight gradients.
#[test]
fn depthwise_partial_tiles() {
    for (c, hw) in [(24, [13, 11]), (40, [6, 5])] {
        let depthwise = |k: usize, s: usize, p: usize, d: usize| {
            let window = Window { kernel: [k, k], stride: [s, s], pad: [p, p], dilation: [d, d], ceil_mode: false };
            Op::Conv(Conv { out_channels: c, window, groups: c, bias: true })
        };
        let mut g = Graph::new("dp");
        let x = g.add_input("x", Shape(vec![16, hw[0], hw[1]]), Default::default()).unwrap();
        let p = add(&mut g, square(c, 1, 1, 0), &[x], "p");
        let a = add(&mut g, depthwise(3, 1, 1, 1), &[p], "a");
        let r = add(&mut g, Op::Activation(Activation::Relu), &[a], "relu");
        let b = add(&mut g, depthwise(3, 2, 1, 1), &[r], "b");
        let t = add(&mut g, Op::Activation(Activation::Tanh), &[b], "tanh");
        let d = add(&mut g, depthwise(5, 1, 4, 2), &[t], "d");
        let s = add(&mut g, Op::Add, &[d, t], "res");
        let y = add(&mut g, Op::Activation(Activation::Sigmoid), &[s], "sig");
        g.outputs = vec![y];
        for name in ["a", "b", "d"] {
            assert_layout(&g, name, Layout::Blocked16);
        }
        check_graph(&g, 2);
    }
}

/// Input gradients of grouped convolutions whose groups are not whole blocks as the grouped
/// tiles on the groups' transposed, rotated weights: 48 -> 32 in 4 groups at stride 2 on an
/// odd size (the output gradient spread out; the gradient's groups read 8 channels of it,
/// within one block, and write 12, tiles of four each in one group) and 24 -> 16 in 2 groups
/// (a block of the gradient in both groups); and 32 -> 24 in 2 groups, whose gradient's
/// groups read 12 channels (neither whole blocks nor within one: the general loops).
#[test]
fn grouped_partial_backward_data_tiles() {
    for (c, out, groups, stride, hw) in [(32, 24, 2, 1, [9, 10]), (48, 32, 4, 2, [11, 9]), (24, 16, 2, 1, [7, 6])] {
        let mut g = Graph::new("gb");
        let x = g.add_input("x", Shape(vec![16, hw[0], hw[1]]), Default::default()).unwrap();
        let p = add(&mut g, square(c, 1, 1, 0), &[x], "p");
        let window =
            Window { kernel: [3, 3], stride: [stride, stride], pad: [1, 1], dilation: [1, 1], ceil_mode: false };
        let a = add(&mut g, Op::Conv(Conv { out_channels: out, window, groups, bias: true }), &[p], "grouped");
        let y = add(&mut g, Op::Activation(Activation::Tanh), &[a], "act");
        g.outputs = vec![y];
        assert_layout(&g, "grouped", Layout::Blocked16);
        check_graph(&g, 2);
    }
}
