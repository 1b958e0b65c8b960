//! Whole models against PyTorch, through the `cnnc` binary: `cnnc run` must reproduce torch's
//! output and `cnnc grad` its cross-entropy loss and every gradient, on LeNet-5 and a small
//! residual CNN whose weights, batch-norm statistics and data `tests/golden/gen.py` made in
//! torch (see tests/golden/README.md). The weights files are torch's `state_dict`s as
//! exported, `num_batches_tracked` counters included. A second test holds the example zoo to
//! torchvision's `state_dict` names and shapes.
//!
//! Tolerances, per element: `|actual - expected| <= atol + rtol * |expected|` with
//! `atol = 1e-5 * max(max |expected| over the tensor, 1e-3)`; rtol 1e-4 for outputs and 1e-3
//! for the loss and gradients (the op goldens' rule).

use cnnc_driver::{Options, load, lower_source};
use cnnc_runtime::{Tensor, TensorMap, load_safetensors, read_npy_f32};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn golden() -> PathBuf {
    root().join("tests/golden/models")
}

fn cnnc(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cnnc")).args(args).current_dir(root()).output().expect("cnnc runs")
}

fn ok(o: &Output) -> String {
    let out = String::from_utf8(o.stdout.clone()).expect("UTF-8");
    let err = String::from_utf8(o.stderr.clone()).expect("UTF-8");
    assert_eq!(o.status.code(), Some(0), "stdout: {out}\nstderr: {err}");
    assert!(err.is_empty(), "no warnings or notes expected: {err}");
    out
}

fn index() -> Value {
    let text = std::fs::read_to_string(golden().join("models.json")).expect("tests/golden/models/models.json");
    serde_json::from_str(&text).expect("valid JSON")
}

fn scratch(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("cnnc-golden-models").join(name);
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

/// The largest `|a - e| / (atol + rtol |e|)` over the tensor (<= 1 passes), after checking
/// shapes; also returns the largest plain relative error, for the log.
fn compare(what: &str, actual: &Tensor, expected: &Tensor, rtol: f64) -> f64 {
    assert_eq!(actual.shape, expected.shape, "{what}: shape");
    let scale = expected.data.iter().fold(0f64, |m, &v| m.max(f64::from(v).abs())).max(1e-3);
    let atol = 1e-5 * scale;
    let mut worst = 0f64;
    for (i, (&a, &e)) in actual.data.iter().zip(&expected.data).enumerate() {
        let (a, e) = (f64::from(a), f64::from(e));
        let ratio = (a - e).abs() / (atol + rtol * e.abs());
        assert!(ratio <= 1.0, "{what}[{i}]: cnnc {a}, torch {e} (rtol {rtol}, atol {atol:e})");
        worst = worst.max((a - e).abs() / (e.abs().max(scale * 1e-3)));
    }
    worst
}

fn printed_loss(out: &str) -> f64 {
    let line = out.lines().find(|l| l.starts_with("loss: ")).unwrap_or_else(|| panic!("no loss in {out}"));
    line.split_whitespace().nth(1).expect("value").parse().expect("number")
}

#[test]
fn run_and_grad_reproduce_pytorch_on_whole_models() {
    let index = index();
    let models = index["models"].as_array().expect("models");
    let names: Vec<&str> = models.iter().map(|m| m["name"].as_str().expect("name")).collect();
    assert_eq!(names, ["lenet5", "tiny_resnet"]);
    for m in models {
        let name = m["name"].as_str().expect("name");
        let file = |key: &str| golden().join(m[key].as_str().expect(key)).display().to_string();
        let source = m["source"].as_str().expect("source");
        let dir = scratch(name);

        // The torch export carries batch-norm step counters (int64); cnnc ignores them.
        let weights = std::fs::read(file("weights")).expect("weights");
        let has_counters =
            String::from_utf8_lossy(&weights[..weights.len().min(20_000)]).contains("num_batches_tracked");
        assert_eq!(has_counters, name != "lenet5", "{name}: counters only where there is batch norm");

        // Forward, eval mode.
        let y = dir.join("output.npy");
        let out = ok(&cnnc(&[
            "run",
            source,
            "--weights",
            &file("weights"),
            "--input",
            &file("input"),
            "-o",
            &y.display().to_string(),
        ]));
        let batch = m["batch"].as_u64().expect("batch");
        let classes = m["classes"].as_u64().expect("classes");
        assert!(out.starts_with(&format!("output: [{batch}, {classes}]")), "{out}");
        let expected = read_npy_f32(file("output")).expect("torch output");
        let worst = compare(&format!("{name} output"), &read_npy_f32(&y).expect("cnnc output"), &expected, 1e-4);
        eprintln!("{name}: output within rel {worst:.1e} of torch");

        // Loss and gradients of the batch-mean cross-entropy.
        let g = dir.join("grads.safetensors");
        let out = ok(&cnnc(&[
            "grad",
            source,
            "--weights",
            &file("weights"),
            "--input",
            &file("input"),
            "--target",
            &file("target"),
            "--loss",
            "ce",
            "-o",
            &g.display().to_string(),
        ]));
        let loss = printed_loss(&out);
        let torch_loss = m["loss_value"].as_f64().expect("loss");
        let rel = (loss - torch_loss).abs() / torch_loss.abs();
        assert!(rel < 1e-3, "{name}: loss {loss}, torch {torch_loss}");
        eprintln!("{name}: loss {loss} (torch {torch_loss}, rel {rel:.1e})");

        let ours: TensorMap = load_safetensors(&g).expect("cnnc gradients");
        let theirs: TensorMap = load_safetensors(file("grads")).expect("torch gradients");
        let keys = |m: &TensorMap| m.keys().cloned().collect::<Vec<_>>();
        assert_eq!(keys(&ours), keys(&theirs), "{name}: the same parameters, and `input`");
        let mut worst = 0f64;
        for (key, expected) in &theirs {
            worst = worst.max(compare(&format!("{name} grad {key}"), &ours[key], expected, 1e-3));
        }
        eprintln!("{name}: {} gradients within rel {worst:.1e} of torch", theirs.len());
    }
}

/// Every example that mirrors a torchvision model has exactly its `state_dict` names and
/// shapes, in the same order (`num_batches_tracked` aside, which cnnc does not keep).
#[test]
fn examples_match_torchvision_state_dicts() {
    let index = index();
    let Some(entries) = index["torchvision"].as_array() else {
        panic!("tests/golden/models/models.json has no torchvision manifests");
    };
    let models: Vec<&str> = entries.iter().map(|e| e["model"].as_str().expect("model")).collect();
    assert_eq!(models, ["resnet18", "resnet50", "alexnet", "vgg11"]);
    for entry in entries {
        let model = entry["model"].as_str().expect("model");
        let manifest_path = golden().join(entry["manifest"].as_str().expect("manifest"));
        let manifest: Value =
            serde_json::from_str(&std::fs::read_to_string(&manifest_path).expect("manifest")).expect("JSON");
        let expected: Vec<(String, Vec<usize>)> = manifest["state_dict"]
            .as_array()
            .expect("state_dict")
            .iter()
            .map(|pair| {
                let name = pair[0].as_str().expect("name").to_owned();
                let dims =
                    pair[1].as_array().expect("dims").iter().map(|d| d.as_u64().expect("dim") as usize).collect();
                (name, dims)
            })
            .filter(|(name, _)| !name.ends_with(".num_batches_tracked"))
            .collect();
        let source = load(root().join(entry["example"].as_str().expect("example"))).expect("example source");
        let options = Options { model: Some(model.to_owned()), input_shape: None, ..Default::default() };
        let (graph, _) = lower_source(&source, &options).unwrap_or_else(|d| panic!("{model} lowers: {d:?}"));
        let ours: Vec<(String, Vec<usize>)> =
            graph.named_params().into_iter().map(|(name, spec)| (name, spec.dims)).collect();
        assert_eq!(ours.len(), expected.len(), "{model}: tensor count");
        for (i, (a, e)) in ours.iter().zip(&expected).enumerate() {
            assert_eq!(a, e, "{model}: tensor {i} differs from torchvision's state_dict");
        }
    }
}
