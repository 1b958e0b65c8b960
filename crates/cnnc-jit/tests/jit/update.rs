//! Optimiser updates in native mode against the interpreter over several steps: applied by
//! the kernel that computes the gradient (blocked convolutions' backward-weights tasks:
//! `lower/native_bwd.rs`; point convolutions, whose taps that meet only padding have a zero
//! gradient: `lower/native_point.rs`) or as one kernel pass (`lower/update.rs`). Every optimiser setting (SGD with and without momentum, weight decay,
//! Nesterov; Adam; RMSprop with momentum), the first step (the momentum buffer starts at the
//! gradient), frozen layers, a loaded state that is not zero where the gradient is, and the
//! gradients themselves when no optimiser runs (`grad` keeps them observable).

use crate::common::{MODES, batch_of, check_floor, compile, random_tensor, random_weights, target};
use crate::ops::add;
use cnnc_interp::{Options as IOptions, run_plan};
use cnnc_ir::{Activation, Adam, Conv, Fc, Graph, Loss, Op, Optimizer, RmsProp, Sgd, Shape, Window};
use cnnc_jit::{CompiledModel, Options, StepArgs};
use cnnc_passes::{PassOptions, TrainingOptions, optimize_training};
use cnnc_runtime::TensorMap;

fn conv(out: usize, bias: bool) -> Op {
    let window = Window { kernel: [3, 3], stride: [1, 1], pad: [1, 1], dilation: [1, 1], ceil_mode: false };
    Op::Conv(Conv { out_channels: out, window, groups: 1, bias })
}

/// A blocked convolution on a 4x4 map and a strided one down to 1x1 (their updates applied
/// by the backward-weights kernel's tasks, and from gathered live taps), two point
/// convolutions (3x3 with padding 1 on a 1x1 map: only the centre tap meets the input) and an
/// fc layer: the fused updates and the separate pass (fc weight, biases).
fn graph() -> Graph {
    let mut g = Graph::new("updates");
    let x = g.add_input("x", Shape(vec![32, 4, 4]), Default::default()).unwrap();
    let c = add(&mut g, conv(32, false), &[x], "c");
    let c = add(&mut g, Op::Activation(Activation::Relu), &[c], "relu_c");
    let window = Window { kernel: [3, 3], stride: [4, 4], pad: [1, 1], dilation: [1, 1], ceil_mode: false };
    let d = add(&mut g, Op::Conv(Conv { out_channels: 32, window, groups: 1, bias: false }), &[c], "d");
    let a = add(&mut g, conv(32, false), &[d], "a");
    let a = add(&mut g, Op::Activation(Activation::Relu), &[a], "relu");
    let b = add(&mut g, conv(16, true), &[a], "b");
    let f = add(&mut g, Op::Flatten, &[b], "flat");
    let y = add(&mut g, Op::Fc(Fc { out_features: 5, bias: true }), &[f], "fc");
    g.outputs = vec![y];
    g
}

/// Three steps of `optimizer` from `state` on the JIT (both modes) and the interpreter; the
/// state after each step compared (the change of each tensor, as `common::jit_equals` does).
fn check_steps(what: &str, g: &Graph, optimizer: Optimizer, state: &TensorMap) {
    let batch = 3;
    let training = TrainingOptions { optimizer: Some(optimizer), ..TrainingOptions::new(Loss::CrossEntropy) };
    let plan = optimize_training(g, Some(state), &PassOptions::all(), &training).unwrap().plan;
    let inputs = vec![batch_of(&g[g.inputs[0]].shape.0, batch, 11), target(g, &Loss::CrossEntropy, batch)];
    // One thread and two: the blocked weight gradient of one thread is a single kernel call
    // (its update fused), of two a sum of per-chunk partials (its update a pass of its own).
    for (mode, threads) in MODES.iter().flat_map(|&m| [(m, 1), (m, 2)]) {
        let options = Options::new(batch).with_mode(mode).with_threads(threads).with_guard_pages(true);
        let model = CompiledModel::compile(&plan, &options).unwrap_or_else(|e| panic!("{what}: {e}"));
        model.load_weights(state).unwrap();
        for step in 1..=3u64 {
            let args = StepArgs { lr: 0.05, step, seed: 7 };
            // Each step from the JIT's state before it (optimiser state included), which
            // `CompiledModel::state` gives in checkpoint layouts.
            let before = model.state();
            let mut want = before.clone();
            // The same state through a checkpoint into another model of the plan (as a resumed
            // run, or a trainer for another batch size, loads it): the step is the same, bit
            // for bit, packed optimiser state included.
            let reloaded = CompiledModel::compile(&plan, &options).unwrap();
            reloaded.load_state(before.clone()).unwrap_or_else(|e| panic!("{what}: {e}"));
            reloaded.run(&inputs, &args).unwrap();
            model.run(&inputs, &args).unwrap_or_else(|e| panic!("{what}: {e}"));
            assert!(
                reloaded.state() == model.state(),
                "{what} ({mode:?}, {threads} threads) step {step}: reloaded state"
            );
            let options = IOptions::new().with_seed(args.seed).with_lr(args.lr).with_step(step);
            run_plan(&plan, &mut want, &inputs, &options).unwrap();
            let got = model.state();
            let scale = want
                .iter()
                .filter_map(|(n, w)| Some(w.data.iter().zip(&before.get(n)?.data).map(|(a, b)| (a - b).abs())))
                .flatten()
                .fold(0f32, f32::max);
            for (name, w) in want.iter() {
                let (Some(b), Some(j)) = (before.get(name), got.get(name)) else { continue };
                let delta = |t: &cnnc_runtime::Tensor| cnnc_runtime::Tensor {
                    shape: t.shape.clone(),
                    data: t.data.iter().zip(&b.data).map(|(x, y)| x - y).collect(),
                };
                let (dj, dw) = (delta(j), delta(w));
                let at = format!("{what} ({mode:?}, {threads} threads) step {step}: change of `{name}`");
                check_floor(&at, &dj, &dw, 1e-3, 1e-3 * f64::from(scale));
            }
        }
    }
}

fn sgd(momentum: f64, weight_decay: f64, nesterov: bool) -> Optimizer {
    Optimizer::Sgd(Sgd { momentum, weight_decay, nesterov })
}

#[test]
fn every_optimiser_setting() {
    let g = graph();
    let w = random_weights(&g, 4);
    // Adam's eps well above the rounding noise of gradients that are nearly zero: Adam scales
    // each gradient by its own magnitude, so below eps f32 noise (against the interpreter's
    // f64) would become steps of the learning rate's size.
    let adam = Optimizer::Adam(Adam { beta1: 0.9, beta2: 0.999, eps: 1e-4, weight_decay: 0.0 });
    let adam_wd = Optimizer::Adam(Adam { beta1: 0.8, beta2: 0.99, eps: 1e-4, weight_decay: 1e-2 });
    let rms = Optimizer::RmsProp(RmsProp { alpha: 0.99, eps: 1e-8, momentum: 0.5, weight_decay: 1e-3 });
    let rms_plain = Optimizer::RmsProp(RmsProp { alpha: 0.9, eps: 1e-8, momentum: 0.0, weight_decay: 0.0 });
    let cases = [
        ("sgd momentum", sgd(0.9, 0.0, false)),
        ("sgd plain", sgd(0.0, 0.0, false)),
        ("sgd weight decay", sgd(0.9, 1e-2, false)),
        ("sgd weight decay, no momentum", sgd(0.0, 1e-2, false)),
        ("sgd nesterov", sgd(0.9, 1e-3, true)),
        ("adam", adam),
        ("adam weight decay", adam_wd),
        ("rmsprop momentum", rms),
        ("rmsprop", rms_plain),
    ];
    for (what, opt) in cases {
        check_steps(what, &g, opt, &w);
    }
}

/// A state loaded with momentum buffers (and moments) that are not zero on the taps whose
/// gradient is: those taps must still move.
#[test]
fn loaded_state_on_dead_taps() {
    let g = graph();
    let w = random_weights(&g, 5);
    for (opt, names) in [
        (sgd(0.9, 0.0, false), &["momentum_buffer"][..]),
        (Optimizer::Adam(Adam { beta1: 0.9, beta2: 0.999, eps: 1e-4, weight_decay: 0.0 }), &["exp_avg", "exp_avg_sq"]),
    ] {
        let mut state = w.clone();
        for (k, param) in ["c.weight", "d.weight", "a.weight", "b.weight", "fc.weight"].iter().enumerate() {
            for (j, s) in names.iter().enumerate() {
                let mut t = random_tensor(&w.get(*param).unwrap().shape, 40 + (k * 2 + j) as u64);
                if *s == "exp_avg_sq" {
                    t.data.iter_mut().for_each(|v| *v = 1e-3 * v.abs());
                }
                state.insert(format!("{param}.{s}"), t);
            }
        }
        check_steps(&format!("loaded {}", opt.name()), &g, opt, &state);
    }
}

/// A frozen point convolution is neither updated nor given state; the layer after it is.
#[test]
fn frozen_point_convolution() {
    let mut g = graph();
    g.frozen.insert("a.weight".into());
    let w = random_weights(&g, 6);
    check_steps("frozen", &g, sgd(0.9, 1e-3, false), &w);
    let training =
        TrainingOptions { optimizer: Some(sgd(0.9, 0.0, false)), ..TrainingOptions::new(Loss::CrossEntropy) };
    let plan = optimize_training(&g, Some(&w), &PassOptions::all(), &training).unwrap().plan;
    let inputs = vec![batch_of(&[32, 4, 4], 2, 3), target(&g, &Loss::CrossEntropy, 2)];
    for mode in MODES {
        let model = compile(&plan, 2, mode, &w);
        model.run(&inputs, &StepArgs { lr: 0.1, step: 1, seed: 1 }).unwrap();
        let s = model.state();
        assert_eq!(s.get("a.weight").unwrap().data, w.get("a.weight").unwrap().data, "{mode:?}: frozen weight moved");
        assert!(!s.contains_key("a.weight.momentum_buffer"), "{mode:?}: a frozen weight has state");
        assert_ne!(s.get("b.weight").unwrap().data, w.get("b.weight").unwrap().data, "{mode:?}: b did not train");
    }
}

/// Without an optimiser the point convolutions' weight gradients are outputs: stored whole
/// (zero on the dead taps), not fused away.
#[test]
fn gradients_stay_observable() {
    let g = graph();
    let w = random_weights(&g, 8);
    let training = TrainingOptions { optimizer: None, ..TrainingOptions::new(Loss::CrossEntropy) };
    let plan = optimize_training(&g, Some(&w), &PassOptions::all(), &training).unwrap().plan;
    let inputs = vec![batch_of(&[32, 4, 4], 3, 9), target(&g, &Loss::CrossEntropy, 3)];
    let want = crate::common::reference(&plan, &w, &inputs);
    for mode in MODES {
        crate::common::jit_equals("grads", &plan, &w, &inputs, mode, 1e-3, &want);
    }
}
