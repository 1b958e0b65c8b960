//! The optimiser's ops (`gemm`, `fused_conv`, `fused_gemm`, `reorder`, `concat_in_place`):
//! finite-difference gradients, and equality with the source ops they replace.

use crate::common::*;
use cnnc_interp::{Buf, BufMap, Precision, Rng};
use cnnc_ir::{Activation, Conv, Epilogue, Fc, FusedBase, Gemm, Graph, Layout, NodeId, Op, Shape};

fn fused(base: FusedBase, residual: bool, activation: Option<Activation>) -> Op {
    Op::Fused { base, epilogue: Epilogue { residual, activation } }
}

fn conv_base(out: usize, k: usize, stride: usize, pad: usize) -> FusedBase {
    FusedBase::Conv(Conv { out_channels: out, window: window([k; 2], [stride; 2], [pad; 2]), groups: 1, bias: true })
}

#[test]
fn optimiser_ops_pass_gradient_checks() {
    check_op(Op::Gemm(Gemm { out: 3, bias: true }), &[4, 3, 2], 2, INFER, 1);
    check_op(Op::Gemm(Gemm { out: 3, bias: false }), &[5], 3, TRAIN, 2);
    check_op(Op::Reorder(Layout::Blocked16), &[2, 3, 3], 2, INFER, 3);
    for (k, act) in [
        None,
        Some(Activation::Relu),
        Some(Activation::Tanh),
        Some(Activation::Softplus { beta: 1.0, threshold: 20.0 }),
    ]
    .into_iter()
    .enumerate()
    {
        let seed = 10 + k as u64;
        check_op(fused(conv_base(3, 3, 1, 1), false, act), &[2, 4, 4], 2, TRAIN, seed);
        check_op(fused(FusedBase::Gemm(Gemm { out: 4, bias: true }), false, act), &[6], 2, INFER, seed);
        // With a residual operand: conv(x) + r.
        let mut b = Builder::new();
        let x = b.input(&[2, 4, 4]);
        let r = b.input(&[3, 2, 2]);
        let y = b.add(fused(conv_base(3, 3, 2, 1), true, act), &[x, r]);
        gradcheck(&b.finish(&[y]), TRAIN, 2, seed);
    }
    let mut b = Builder::new();
    let x = b.input(&[2, 3, 3]);
    let a = b.add(relu(), &[x]);
    let c = b.add(Op::Activation(Activation::Tanh), &[x]);
    let y = b.add(Op::ConcatInPlace, &[a, c]);
    gradcheck(&b.finish(&[y]), INFER, 2, 4);
}

/// Forward outputs and every gradient of two graphs with the same parameters and inputs.
fn run(g: &Graph, params: &BufMap, inputs: &[Buf]) -> (Vec<Buf>, BufMap, Vec<Buf>) {
    let outs = forward_outputs(g, TRAIN, params, inputs, Precision::F64);
    let seeds: Vec<Buf> = outs
        .iter()
        .map(|o| Buf { shape: o.shape.clone(), data: (0..o.len()).map(|i| (i % 7) as f64 - 3.0).collect() })
        .collect();
    let grads = vjp(g, TRAIN, params, inputs, &seeds, Precision::F64);
    (grads.outputs, grads.params, grads.inputs.into_values().collect())
}

fn assert_same(a: &(Vec<Buf>, BufMap, Vec<Buf>), b: &(Vec<Buf>, BufMap, Vec<Buf>)) {
    let close = |x: &Buf, y: &Buf, what: &str| {
        assert_eq!(x.shape, y.shape, "{what}");
        for (p, q) in x.data.iter().zip(&y.data) {
            assert!((p - q).abs() <= 1e-12 * (1.0 + p.abs()), "{what}: {p} vs {q}");
        }
    };
    for (x, y) in a.0.iter().zip(&b.0) {
        close(x, y, "output");
    }
    assert_eq!(a.1.keys().collect::<Vec<_>>(), b.1.keys().collect::<Vec<_>>());
    for (k, x) in &a.1 {
        close(x, &b.1[k], k);
    }
    for (x, y) in a.2.iter().zip(&b.2) {
        close(x, y, "input gradient");
    }
}

fn node(g: &mut Graph, op: Op, inputs: &[NodeId], name: &str) -> NodeId {
    g.add(op, inputs.to_vec(), name, Default::default()).unwrap().0
}

#[test]
fn fused_nodes_equal_the_layers_they_replace() {
    let mut rng = Rng::new(5);
    // Unfused: x -> conv -> add(., shortcut) -> relu; shortcut = 1x1 conv of x; -> flatten -> fc -> relu.
    let mut g = Graph::new("unfused");
    let x = g.add_input("x", Shape(vec![4, 5, 5]), Default::default()).unwrap();
    let c = node(&mut g, conv(4, 3, 1, 1), &[x], "conv");
    let s = node(&mut g, conv(4, 1, 1, 0), &[x], "short");
    let a = node(&mut g, Op::Add, &[c, s], "add");
    let r = node(&mut g, relu(), &[a], "relu");
    let f = node(&mut g, Op::Flatten, &[r], "flat");
    let l = node(&mut g, Op::Fc(Fc { out_features: 3, bias: true }), &[f], "fc");
    let y = node(&mut g, Op::Activation(Activation::Sigmoid), &[l], "sig");
    g.outputs = vec![y];

    let mut h = Graph::new("fused");
    let x = h.add_input("x", Shape(vec![4, 5, 5]), Default::default()).unwrap();
    let s = node(&mut h, Op::Gemm(Gemm { out: 4, bias: true }), &[x], "short");
    let b = h.add(fused(conv_base(4, 3, 1, 1), true, Some(Activation::Relu)), vec![x, s], "conv", Default::default());
    let c = b.unwrap().0;
    let c = node(&mut h, Op::Reorder(Layout::Plain), &[c], "reorder");
    let f = node(&mut h, Op::Flatten, &[c], "flat");
    let y =
        node(&mut h, fused(FusedBase::Gemm(Gemm { out: 3, bias: true }), false, Some(Activation::Sigmoid)), &[f], "fc");
    h.outputs = vec![y];

    let params = random_params(&g, &mut rng);
    let inputs = vec![random_buf(&mut rng, &[3, 4, 5, 5], -1.0, 1.0)];
    assert_same(&run(&g, &params, &inputs), &run(&h, &params, &inputs));
}
