//! Random configurations (proptest): convolutions and pooling of random sizes 1..40,
//! strides 1..3, padding, dilation, groups, channel counts that are not multiples of the
//! vector width, batch 1..5, with a residual and an activation, as a layer of a small graph
//! whose layout pass blocks it or not; inference (on whole batches and depth first) and the
//! gradients of a training step, both modes.

use crate::common::*;
use crate::ops::add;
use cnnc_ir::{Activation, Conv, Graph, Loss, Op, PoolKind, Shape, Window};
use cnnc_passes::{PassOptions, TrainingOptions, optimize, optimize_training};
use proptest::prelude::*;

fn run_both(g: &Graph, batch: usize) {
    let weights = random_weights(g, 9);
    let x = batch_of(&g[g.inputs[0]].shape.0, batch, 31);
    let opt = optimize(g, Some(&weights), &PassOptions::all()).unwrap();
    let r = reference(&opt.plan, &weights, std::slice::from_ref(&x));
    for mode in MODES {
        // Also depth first: every node before the output image by image (batch 1 has no
        // images to take apart: the same code twice).
        let limits: &[u64] = if batch > 1 { &[cnnc_jit::DEPTH_FIRST_BYTES, 0] } else { &[cnnc_jit::DEPTH_FIRST_BYTES] };
        for &depth_first_bytes in limits {
            let options = cnnc_jit::Options::new(batch).with_mode(mode).with_depth_first_bytes(depth_first_bytes);
            let what = format!("random inference (depth first past {depth_first_bytes} bytes)");
            jit_equals_with(&what, &opt.plan, &weights, std::slice::from_ref(&x), &options, RTOL_FORWARD, &r);
        }
    }
    let t = TrainingOptions { input_grads: true, ..TrainingOptions::new(Loss::Mse) };
    let opt = optimize_training(g, Some(&weights), &PassOptions::all(), &t).unwrap();
    let inputs = [x.clone(), target(g, &Loss::Mse, batch)];
    jit_equals_interp_both("random training", &opt.plan, &weights, &inputs, RTOL_GRAD);
}

#[derive(Debug, Clone)]
struct ConvCase {
    c: usize,
    o_per_group: usize,
    groups: usize,
    hw: [usize; 2],
    k: [usize; 2],
    stride: [usize; 2],
    pad: [usize; 2],
    dilation: [usize; 2],
    batch: usize,
    residual: bool,
    act: u8,
}

fn conv_case() -> impl Strategy<Value = ConvCase> {
    (
        (1usize..4, 1usize..20, 1usize..4, 1usize..40, 1usize..40, 1usize..4),
        (1usize..4, 1usize..4, 0usize..3, 1usize..3, 1usize..6, any::<bool>(), 0u8..4),
    )
        .prop_map(|((cg, og, groups, h, w, kh), (kw, s, p, d, batch, residual, act))| ConvCase {
            c: cg * groups * if groups == 1 { 7 } else { 1 },
            o_per_group: og,
            groups,
            hw: [h.max((kh - 1) * d + 1), w.max((kw - 1) * d + 1)],
            k: [kh, kw],
            stride: [s, 1 + (s % 3)],
            pad: [p.min(kh / 2 + 1), p],
            dilation: [d, 1],
            batch,
            residual,
            act,
        })
}

fn activation(k: u8) -> Option<Activation> {
    match k {
        0 => None,
        1 => Some(Activation::Relu),
        2 => Some(Activation::Tanh),
        _ => Some(Activation::LeakyRelu { slope: 0.1 }),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 10, failure_persistence: None, .. ProptestConfig::default() })]

    #[test]
    fn random_convolutions(case in conv_case()) {
        let mut g = Graph::new("rc");
        let x = g.add_input("x", Shape(vec![case.c, case.hw[0], case.hw[1]]), Default::default()).unwrap();
        let window = Window { kernel: case.k, stride: case.stride, pad: case.pad, dilation: case.dilation, ceil_mode: false };
        let conv = Conv { out_channels: case.o_per_group * case.groups, window, groups: case.groups, bias: true };
        let Ok((y, _)) = g.add(Op::Conv(conv), vec![x], "conv", Default::default()) else { return Ok(()) };
        let mut out = y;
        if case.residual {
            let again = Conv { out_channels: conv.out_channels, window: Window { kernel: [1, 1], stride: [1, 1], pad: [0, 0], dilation: [1, 1], ceil_mode: false }, groups: 1, bias: false };
            let r = add(&mut g, Op::Conv(again), &[y], "conv2");
            out = add(&mut g, Op::Add, &[r, y], "add");
        }
        if let Some(a) = activation(case.act) {
            out = add(&mut g, Op::Activation(a), &[out], "act");
        }
        g.outputs = vec![out];
        run_both(&g, case.batch);
    }

    #[test]
    fn random_pooling(c in 1usize..20, h in 2usize..24, k in 1usize..4, s in 1usize..3, p in 0usize..2, ceil in any::<bool>(), kind in 0u8..4, batch in 1usize..4) {
        let mut g = Graph::new("rp");
        let x = g.add_input("x", Shape(vec![c, h, h]), Default::default()).unwrap();
        let window = Window { kernel: [k, k], stride: [s, s], pad: [p.min(k / 2); 2], dilation: [1, 1], ceil_mode: ceil };
        let kind = match kind { 0 => PoolKind::Max, 1 => PoolKind::Avg { include_pad: true }, 2 => PoolKind::Avg { include_pad: false }, _ => PoolKind::L2 };
        // A convolution first, so the input gradient flows and the layout may block.
        let conv = Conv { out_channels: c + 16, window: Window { kernel: [1, 1], stride: [1, 1], pad: [0, 0], dilation: [1, 1], ceil_mode: false }, groups: 1, bias: true };
        let y = add(&mut g, Op::Conv(conv), &[x], "conv");
        let Ok((q, _)) = g.add(Op::Pool { kind, window }, vec![y], "pool", Default::default()) else { return Ok(()) };
        g.outputs = vec![q];
        run_both(&g, batch);
    }
}
