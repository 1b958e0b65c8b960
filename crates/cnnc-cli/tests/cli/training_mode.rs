//! `cnnc run --train`, `--state-out` and `--dump` through the built binary: training-mode batch
//! norm and its running statistics against PyTorch's (the op goldens of tests/golden), seeded
//! dropout, every layer's output and gradient in a dump and how the dumps of the source and the
//! optimised graph line up, and the usage errors of the new flags.

use crate::common::{cnnc, root, stderr, stdout};
use cnnc_driver::{Options, load, lower_source};
use cnnc_runtime::{Rng, Tensor, TensorMap, load_safetensors, read_npy_f32, save_safetensors, write_npy};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Output;

const LENET: &str = "examples/lenet5.cnn";

fn ok(o: &Output) -> String {
    assert_eq!(o.status.code(), Some(0), "stdout: {}\nstderr: {}", stdout(o), stderr(o));
    stdout(o)
}

fn fails(o: &Output, code: i32, needles: &[&str]) {
    let err = stderr(o);
    assert_eq!(o.status.code(), Some(code), "stdout: {}\nstderr: {err}", stdout(o));
    assert!(!err.contains("panicked"), "{err}");
    for needle in needles {
        assert!(err.contains(needle), "expected {needle:?} in:\n{err}");
    }
}

fn scratch(test: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("cnnc-training-mode").join(test);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

fn s(path: &Path) -> String {
    path.display().to_string()
}

fn random_npy(path: &Path, shape: &[usize], seed: u64) {
    let mut rng = Rng::seed_from_u64(seed);
    let n = shape.iter().product();
    let tensor = Tensor::from_vec(shape, (0..n).map(|_| rng.normal() as f32).collect()).expect("tensor");
    write_npy(path, &tensor).expect("write npy");
}

/// `|a - e| <= 1e-5 * max|e| + rtol * |e|` everywhere (the golden tests' rule).
fn assert_close(what: &str, actual: &Tensor, expected: &Tensor, rtol: f64) {
    assert_eq!(actual.shape, expected.shape, "{what}: shape");
    let atol = 1e-5 * expected.data.iter().fold(1e-3f32, |m, v| m.max(v.abs()));
    for (i, (a, e)) in actual.data.iter().zip(&expected.data).enumerate() {
        assert!((a - e).abs() <= atol + rtol as f32 * e.abs(), "{what}[{i}]: cnnc {a}, expected {e}");
    }
}

/// The training-mode batch-norm cases of the op goldens: torch's output on a batch and its
/// updated running statistics must come out of `run --train --state-out` and, for the
/// statistics, of `grad --train --state-out`.
#[test]
fn run_train_matches_pytorch_batch_norm_and_its_running_statistics() {
    let golden = root().join("tests/golden");
    let cases: Value =
        serde_json::from_str(&std::fs::read_to_string(golden.join("cases.json")).expect("cases")).expect("valid JSON");
    let cases: Vec<&Value> = cases["cases"]
        .as_array()
        .expect("a list of cases")
        .iter()
        .filter(|c| c["op"] == "bn" && c["mode"] == "training")
        .collect();
    assert!(cases.len() >= 3, "the goldens hold training-mode batch norm");
    for case in cases {
        let name = case["name"].as_str().expect("name");
        let dir = scratch(name);
        let data = load_safetensors(golden.join(case["file"].as_str().expect("file"))).expect("golden file");
        let dims: Vec<String> = case["inputs"][0].as_array().expect("shape").iter().map(|d| d.to_string()).collect();
        let (eps, momentum) = (&case["attrs"]["eps"], &case["attrs"]["momentum"]);
        let model = dir.join("bn.cnn");
        let text = format!(
            "model bn_case {{\n    input x: [{}]\n    x -> l: bn(eps={eps}, momentum={momentum})\n}}\n",
            dims.join(", ")
        );
        std::fs::write(&model, text).expect("model");
        let weights: TensorMap = data
            .iter()
            .filter_map(|(k, v)| k.strip_prefix("param.").map(|name| (name.to_string(), v.clone())))
            .collect();
        let (w, x, y, state) =
            (dir.join("w.safetensors"), dir.join("x.npy"), dir.join("y.npy"), dir.join("s.safetensors"));
        save_safetensors(&w, &weights).expect("weights");
        write_npy(&x, &data["input.0"]).expect("input");
        let args = ["run", &s(&model), "--weights", &s(&w), "--input", &s(&x), "--train", "-o", &s(&y)];
        let mut with_state = args.to_vec();
        let state_text = s(&state);
        with_state.extend(["--state-out", &state_text]);
        let out = ok(&cnnc(&with_state));
        assert!(out.contains("running statistics: 1 batch-norm layer updated, the full state written to"), "{out}");
        assert_close(&format!("{name} output"), &read_npy_f32(&y).expect("output"), &data["output"], 1e-4);
        let saved = load_safetensors(&state).expect("state file");
        assert_eq!(saved.keys().collect::<Vec<_>>(), weights.keys().collect::<Vec<_>>(), "{name}: the full state");
        for stat in ["running_mean", "running_var"] {
            let want = &data[&format!("running.l.{stat}")];
            assert_close(&format!("{name} {stat}"), &saved[&format!("l.{stat}")], want, 1e-4);
            assert_ne!(saved[&format!("l.{stat}")].data, weights[&format!("l.{stat}")].data, "{name}: {stat} moved");
        }
        assert_eq!(saved["l.weight"], weights["l.weight"], "{name}: run changes no trainable parameter");
        // Without --train, batch norm uses the running statistics: another output.
        let inference = dir.join("y_eval.npy");
        ok(&cnnc(&["run", &s(&model), "--weights", &s(&w), "--input", &s(&x), "-o", &s(&inference)]));
        assert_ne!(read_npy_f32(&inference).expect("output").data, data["output"].data);

        // grad --train updates the running statistics the same way.
        let (target, grad_state) = (dir.join("t.npy"), dir.join("g_state.safetensors"));
        write_npy(&target, &Tensor::zeros(&data["output"].shape)).expect("target");
        ok(&cnnc(&[
            "grad",
            &s(&model),
            "--weights",
            &s(&w),
            "--input",
            &s(&x),
            "--target",
            &s(&target),
            "--loss",
            "mse",
            "--train",
            "--state-out",
            &s(&grad_state),
        ]));
        assert_eq!(load_safetensors(&grad_state).expect("state"), saved, "{name}: grad's state is run's");
    }
}

/// A small model with batch norm and dropout, to exercise --train end to end.
const DROPOUT_MODEL: &str = "model drop {
    input x: [3, 8, 8]
    x -> conv: conv(4, k=3, pad=1) -> bn: bn -> relu
      -> flatten -> drop: dropout(0.5) -> fc: fc(5)
}
";

#[test]
fn run_train_draws_dropout_masks_from_the_seed() {
    let dir = scratch("dropout");
    let (model, x) = (dir.join("drop.cnn"), dir.join("x.npy"));
    std::fs::write(&model, DROPOUT_MODEL).expect("model");
    random_npy(&x, &[4, 3, 8, 8], 1);
    let run = |extra: &[&str]| -> Tensor {
        let y = dir.join("y.npy");
        let mut args = vec!["run".to_string(), s(&model), "--input".into(), s(&x), "-o".into(), s(&y)];
        args.extend(extra.iter().map(|a| a.to_string()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        ok(&cnnc(&args));
        read_npy_f32(&y).expect("output")
    };
    fails(
        &cnnc(&["run", &s(&model), "--input", &s(&x), "--train"]),
        2,
        &["the dropout masks need a seed: pass `--seed N`", "dropout layers: drop"],
    );
    let (a, again, other) =
        (run(&["--train", "--seed", "7"]), run(&["--train", "--seed", "7"]), run(&["--train", "--seed", "8"]));
    assert_eq!(a, again, "the same seed draws the same masks");
    assert_ne!(a.data, other.data, "another seed draws other masks");
    assert_ne!(a.data, run(&[]).data, "inference mode drops nothing and uses the running statistics");
    // The optimised forward pass of training gives the same numbers.
    let optimised = run(&["--train", "--seed", "7", "--passes", "all"]);
    assert_close("optimised training forward", &optimised, &a, 1e-5);
}

/// Names every layer of a lowered model has, in order.
fn layer_names(file: &str) -> Vec<String> {
    let source = load(root().join(file)).expect("source");
    let (graph, _) = lower_source(&source, &Options::default()).expect("lowers");
    graph.iter().map(|(_, n)| n.name.clone()).collect()
}

#[test]
fn dump_holds_every_layer_and_every_gradient() {
    let dir = scratch("dump");
    let (x, t) = (dir.join("x.npy"), dir.join("t.npy"));
    random_npy(&x, &[2, 1, 32, 32], 3);
    cnnc_runtime::write_npy_labels(&t, &[2], &[4, 9]).expect("labels");
    let (y, dump, opt_dump) = (dir.join("y.npy"), dir.join("d.safetensors"), dir.join("d_opt.safetensors"));
    let out = ok(&cnnc(&["run", LENET, "--input", &s(&x), "-o", &s(&y), "--dump", &s(&dump)]));
    let names = layer_names(LENET);
    assert!(out.contains(&format!("dump: {} tensors written to", names.len())), "{out}");
    let d = load_safetensors(&dump).expect("dump");
    let mut sorted = names.clone();
    sorted.sort();
    assert_eq!(d.keys().cloned().collect::<Vec<_>>(), sorted, "one tensor per layer, under its name");
    assert_eq!(d[names.last().expect("layers")], read_npy_f32(&y).expect("output"), "the last layer is the output");
    assert_eq!(d[&names[0]], read_npy_f32(&x).expect("input"), "the first is the input");

    // The optimised graph's dump: fewer layers (fused ones end at their last layer), same values.
    ok(&cnnc(&["run", LENET, "--input", &s(&x), "--passes", "all", "--dump", &s(&opt_dump)]));
    let o = load_safetensors(&opt_dump).expect("dump");
    assert!(!o.is_empty() && o.len() < d.len(), "{} of {} layers", o.len(), d.len());
    for (name, tensor) in &o {
        assert_close(&format!("optimised {name}"), tensor, &d[name], 1e-5);
    }

    // grad's dump: each layer, its gradient, and each parameter's gradient.
    let (g, grad_dump) = (dir.join("g.safetensors"), dir.join("gd.safetensors"));
    let args = ["grad", LENET, "--input", &s(&x), "--target", &s(&t), "--loss", "ce", "-o", &s(&g)];
    let mut with_dump = args.to_vec();
    let grad_dump_text = s(&grad_dump);
    with_dump.extend(["--dump", &grad_dump_text, "--json"]);
    let json: Value = serde_json::from_str(ok(&cnnc(&with_dump)).trim()).expect("JSON");
    assert_eq!(json["dump"], grad_dump_text.as_str());
    let (gd, grads) = (load_safetensors(&grad_dump).expect("dump"), load_safetensors(&g).expect("gradients"));
    for name in &names {
        assert_eq!(gd[name], d[name], "{name}: the same forward values");
        assert_eq!(gd[&format!("{name}.grad")].shape, d[name].shape, "{name}.grad");
    }
    for (name, grad) in grads.iter().filter(|(name, _)| *name != "input") {
        assert_eq!(&gd[&format!("{name}.grad")], grad, "{name}.grad is -o's gradient");
    }
    assert_eq!(gd[&format!("{}.grad", names[0])], grads["input"], "the input's gradient");
    assert_eq!(gd.len(), 2 * names.len() + grads.len() - 1);
    // Through a tanh the gradient is scaled by 1 - y^2 (y its output).
    let tanh = names.iter().position(|n| n.starts_with("tanh")).expect("LeNet has a tanh");
    let (producer, tanh) = (&names[tanh - 1], &names[tanh]);
    let (out, gout, gin) = (&gd[tanh], &gd[&format!("{tanh}.grad")], &gd[&format!("{producer}.grad")]);
    for i in 0..out.data.len() {
        let want = gout.data[i] * (1.0 - out.data[i] * out.data[i]);
        assert!((gin.data[i] - want).abs() <= 1e-6 * gout.data[i].abs().max(1e-6), "{producer}.grad[{i}]");
    }
}

#[test]
fn new_flags_refuse_what_makes_no_sense() {
    let dir = scratch("refusals");
    let (x, w, y) = (dir.join("x.npy"), dir.join("w.safetensors"), dir.join("y.npy"));
    random_npy(&x, &[1, 1, 32, 32], 5);
    ok(&cnnc(&["init", LENET, "-o", &s(&w)]));
    let base = ["run", LENET, "--input", &s(&x)];
    let with = |extra: &[&str]| -> Output {
        let mut args: Vec<String> = base.iter().map(|a| a.to_string()).collect();
        args.extend(extra.iter().map(|a| a.to_string()));
        cnnc(&args.iter().map(String::as_str).collect::<Vec<_>>())
    };
    fails(&with(&["--state-out", &s(&dir.join("s.safetensors"))]), 2, &["--train"]);
    fails(&with(&["--weights", &s(&w), "--seed", "3"]), 2, &["--seed initialises the weights"]);
    fails(&with(&["-o", &s(&y), "--dump", &s(&y)]), 2, &["-o and --dump both name"]);
    fails(&with(&["-o", "-", "--dump", "/dev/stdout"]), 2, &["would both write to standard output"]);
    fails(
        &with(&["--weights", &s(&w), "--train", "--state-out", &s(&w)]),
        2,
        &["`--state-out ", "is the file given as --weights"],
    );
    assert!(!y.exists(), "nothing is written when the arguments are refused");
}
