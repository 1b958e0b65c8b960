//! Native mode runs 3x3 stride-1 convolutions of inference plans as Winograd (F(4x4, 3x3) or
//! F(2x2, 3x3)): which layers it takes (and that training and `with_winograd(false)` keep the direct
//! kernel), and its outputs against the interpreter, with fused bias, residual and activation,
//! odd map sizes (tiles half outside the output), padding 0 and 1, and partial channel blocks.

use crate::common::{RTOL_FORWARD, batch_of, jit_equals_with, random_weights, reference, sgd_step};
use crate::ops::add;
use cnnc_ir::{Activation, Conv, Graph, Op, Shape, Window};
use cnnc_jit::{CompiledModel, ConvPass, Lowering, Mode, Options};
use cnnc_passes::{PassOptions, optimize, optimize_training};

fn conv3(out: usize, pad: usize) -> Op {
    let window = Window { kernel: [3, 3], stride: [1, 1], pad: [pad, pad], dilation: [1, 1], ceil_mode: false };
    Op::Conv(Conv { out_channels: out, window, groups: 1, bias: true })
}

/// `a` (3x3, 24 -> 40, padding 1), `b` (40 -> 40, padding 0) with a residual and ReLU fused,
/// and `c` (3x3 stride 2, never Winograd) on an `h x w` map.
fn graph(hw: [usize; 2]) -> Graph {
    let mut g = Graph::new("wino");
    let x = g.add_input("x", Shape(vec![24, hw[0], hw[1]]), Default::default()).unwrap();
    let a = add(&mut g, conv3(40, 1), &[x], "a");
    let t = add(&mut g, Op::Activation(Activation::Tanh), &[a], "tanh");
    let b = add(&mut g, conv3(40, 1), &[t], "b");
    let r = add(&mut g, Op::Add, &[b, t], "res");
    let r = add(&mut g, Op::Activation(Activation::Relu), &[r], "relu");
    let c = add(&mut g, conv3(16, 0), &[r], "c");
    let window = Window { kernel: [3, 3], stride: [2, 2], pad: [1, 1], dilation: [1, 1], ceil_mode: false };
    let d = add(&mut g, Op::Conv(Conv { out_channels: 16, window, groups: 1, bias: true }), &[c], "d");
    g.outputs = vec![d];
    g
}

fn forward_lowering(m: &CompiledModel, plan: &cnnc_ir::plan::Plan, name: &str) -> Option<Lowering> {
    m.lowerings()
        .iter()
        .find(|l| l.pass == ConvPass::Forward && plan.graph[l.node].name.starts_with(name))
        .map(|l| l.lowering)
}

#[test]
fn inference_runs_3x3_layers_as_winograd_and_matches_the_interpreter() {
    // 29 x 30 takes F(4x4, 3x3) (8 x 8 tiles, the last row and column half outside), the
    // others F(2x2, 3x3).
    for (hw, tile) in [([29, 30], 4), ([11, 13], 2), ([8, 8], 2), ([5, 4], 2)] {
        let g = graph(hw);
        let weights = random_weights(&g, 5);
        let plan = optimize(&g, Some(&weights), &PassOptions::all()).unwrap().plan;
        for batch in [1, 3] {
            let x = batch_of(&g[g.inputs[0]].shape.0, batch, 9);
            let want = reference(&plan, &weights, std::slice::from_ref(&x));
            for winograd in [true, false] {
                let options = Options::new(batch).with_mode(Mode::Native).with_winograd(winograd);
                let m = CompiledModel::compile(&plan, &options).unwrap();
                let direct = Some(Lowering::Kernels);
                let wanted = if winograd { Some(Lowering::Winograd { tile }) } else { direct };
                for name in ["a", "b", "c"] {
                    assert_eq!(forward_lowering(&m, &plan, name), wanted, "{name} at {hw:?}, winograd {winograd}");
                }
                assert_eq!(forward_lowering(&m, &plan, "d"), direct, "the strided layer");
                let what = format!("{hw:?} batch {batch} winograd {winograd}");
                jit_equals_with(&what, &plan, &weights, std::slice::from_ref(&x), &options, RTOL_FORWARD, &want);
            }
        }
    }
}

/// A training step updates the weights, which Winograd's transformed copy would not follow:
/// its forward pass keeps the direct kernel.
#[test]
fn training_keeps_the_direct_kernel() {
    let g = graph([8, 8]);
    let weights = random_weights(&g, 5);
    let plan = optimize_training(&g, Some(&weights), &PassOptions::all(), &sgd_step(&g)).unwrap().plan;
    let m = CompiledModel::compile(&plan, &Options::new(2).with_mode(Mode::Native)).unwrap();
    assert!(m.lowerings().iter().all(|l| !matches!(l.lowering, Lowering::Winograd { .. })), "{:?}", m.lowerings());
}
