//! End-to-end tests of `cnnc init`, `cnnc run` and `cnnc grad` through the built binary: seeded
//! initialisation, LeNet-5 and ResNet-18 (at 64x64) forward and backward, the gradient file's
//! names and shapes, a finite-difference check of a gradient through the CLI, and the error
//! messages and exit codes for data that does not fit.

use crate::common::{cnnc, root, stderr, stdout};
use cnnc_driver::{Options, load, lower_source};
use cnnc_ir::Graph;
use cnnc_runtime::{Rng, Tensor, TensorMap, check_weights, load_safetensors, save_safetensors, write_npy};
use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::OnceLock;

fn ok(o: &Output) -> String {
    assert_eq!(o.status.code(), Some(0), "stdout: {}\nstderr: {}", stdout(o), stderr(o));
    assert!(!stderr(o).contains("panicked"), "{}", stderr(o));
    stdout(o)
}

/// Asserts the exit code, no panic, and that stderr contains every `needle`; returns stderr.
fn fails(o: &Output, code: i32, needles: &[&str]) -> String {
    let err = stderr(o);
    assert_eq!(o.status.code(), Some(code), "stdout: {}\nstderr: {err}", stdout(o));
    assert!(!err.contains("panicked"), "{err}");
    for needle in needles {
        assert!(err.contains(needle), "expected {needle:?} in:\n{err}");
    }
    err
}

/// A fresh scratch directory for one test.
fn scratch(test: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("cnnc-run-grad").join(test);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

fn s(path: &Path) -> String {
    path.display().to_string()
}

/// A seeded batch of standard normal values, written as float32 .npy.
fn random_npy(path: &Path, shape: &[usize], seed: u64) -> Tensor {
    let mut rng = Rng::seed_from_u64(seed);
    let n = shape.iter().product();
    let tensor = Tensor::from_vec(shape, (0..n).map(|_| rng.normal() as f32).collect()).expect("tensor");
    write_npy(path, &tensor).expect("write npy");
    tensor
}

fn labels_npy(path: &Path, labels: &[i64]) {
    cnnc_runtime::write_npy_labels(path, &[labels.len()], labels).expect("write labels");
}

fn lower(file: &str, shape: Option<Vec<usize>>) -> Graph {
    let source = load(root().join(file)).expect("source");
    lower_source(&source, &Options { model: None, input_shape: shape, ..Default::default() }).expect("lowers").0
}

/// The loss `cnnc grad` printed (`loss: 2.3 (ce, ...)`).
fn printed_loss(out: &str) -> f64 {
    let line = out.lines().find(|l| l.starts_with("loss: ")).unwrap_or_else(|| panic!("no loss line in {out}"));
    line.split_whitespace().nth(1).expect("value").parse().expect("a number")
}

/// The trainable parameters (name, shape) of a graph, plus `input` with the batch's shape.
fn expected_grads(graph: &Graph, input: &[usize]) -> Vec<(String, Vec<usize>)> {
    let mut names: Vec<(String, Vec<usize>)> = graph
        .named_params()
        .into_iter()
        .filter(|(_, spec)| spec.trainable())
        .map(|(name, spec)| (name, spec.dims))
        .collect();
    names.push(("input".into(), input.to_vec()));
    names.sort();
    names
}

fn names_and_shapes(map: &TensorMap) -> Vec<(String, Vec<usize>)> {
    map.iter().map(|(k, v)| (k.clone(), v.shape.clone())).collect()
}

const LENET: &str = "examples/lenet5.cnn";
const RESNET: &str = "examples/resnet18.cnn";

#[test]
fn init_is_seeded_reproducible_and_fits_the_model() {
    let dir = scratch("init");
    let (a, b, c) = (dir.join("a.safetensors"), dir.join("b.safetensors"), dir.join("c.safetensors"));
    let out = ok(&cnnc(&["init", LENET, "--seed", "7", "-o", &s(&a)]));
    assert_eq!(
        out,
        format!("wrote `{}`: 10 tensors of model `lenet5`, 61,706 parameters and 0 buffer values (seed 7)\n", s(&a))
    );
    ok(&cnnc(&["init", LENET, "--seed", "7", "--output", &s(&b)]));
    ok(&cnnc(&["init", LENET, "--seed", "8", "-o", &s(&c)]));
    let bytes = |p: &Path| std::fs::read(p).expect("read");
    assert_eq!(bytes(&a), bytes(&b), "same seed, same bytes");
    assert_ne!(bytes(&a), bytes(&c), "another seed, other values");

    let graph = lower(LENET, None);
    let weights = load_safetensors(&a).expect("a valid safetensors file");
    check_weights(&graph, &weights).expect("init's file fits the model");
    // Biases start at zero; weights do not.
    assert!(weights["c1.bias"].data.iter().all(|&v| v == 0.0));
    assert!(weights["c1.weight"].data.iter().any(|&v| v != 0.0));

    // Batch norm starts as the identity; the weights do not depend on --shape.
    let r = dir.join("r.safetensors");
    ok(&cnnc(&["init", "tests/golden/models/tiny_resnet.cnn", "-o", &s(&r), "--shape", "3x9x9"]));
    let w = load_safetensors(&r).expect("valid");
    assert!(w["bn1.weight"].data.iter().all(|&v| v == 1.0) && w["bn1.bias"].data.iter().all(|&v| v == 0.0));
    assert!(w["bn1.running_var"].data.iter().all(|&v| v == 1.0));
    let r2 = dir.join("r2.safetensors");
    ok(&cnnc(&["init", "tests/golden/models/tiny_resnet.cnn", "-o", &s(&r2)]));
    assert_eq!(bytes(&r), bytes(&r2));

    // An unwritable destination is an I/O error.
    let o = cnnc(&["init", LENET, "-o", &s(&dir.join("no/such/dir/w.safetensors"))]);
    fails(&o, 2, &["cannot write weights file"]);
}

#[test]
fn run_lenet5_prints_the_shape_and_the_top_5_classes() {
    let dir = scratch("run-lenet");
    let (x, w, y) = (dir.join("x.npy"), dir.join("w.safetensors"), dir.join("y.npy"));
    random_npy(&x, &[3, 1, 32, 32], 1);
    ok(&cnnc(&["init", LENET, "-o", &s(&w)]));
    let o = cnnc(&["run", LENET, "--weights", &s(&w), "--input", &s(&x), "-o", &s(&y), "--backend", "interp"]);
    let out = ok(&o);
    assert!(stderr(&o).is_empty(), "{}", stderr(&o));
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], format!("output: [3, 10], written to `{}`", s(&y)));
    assert_eq!(lines[1], "top-5 classes of each image (class: probability, softmax of the logits):");
    assert_eq!(lines.len(), 5, "{out}");
    let output = cnnc_runtime::read_npy_f32(&y).expect("output file");
    assert_eq!(output.shape, [3, 10]);
    for (image, line) in lines[2..].iter().enumerate() {
        let rest = line.strip_prefix(&format!("  image {image}  ")).unwrap_or_else(|| panic!("{line}"));
        let entries: Vec<(usize, f64)> = rest
            .split("  ")
            .map(|e| {
                let (class, p) = e.split_once(": ").expect("class: probability");
                (class.parse().expect("class"), p.parse().expect("probability"))
            })
            .collect();
        assert_eq!(entries.len(), 5, "{line}");
        assert!(entries.windows(2).all(|w| w[0].1 >= w[1].1), "sorted: {line}");
        // The printed classes are the largest logits of the written output.
        let row = &output.data[image * 10..][..10];
        let best = (0..10).max_by(|&a, &b| row[a].total_cmp(&row[b])).expect("a class");
        assert_eq!(entries[0].0, best, "{line}");
        assert!(entries.iter().map(|e| e.1).sum::<f64>() <= 1.0 + 1e-3);
    }

    // Without --weights: initialised from --seed (0 by default), said on stderr, the same
    // numbers as `cnnc init --seed 0`'s file.
    let y0 = dir.join("y0.npy");
    let o = cnnc(&["run", LENET, "--input", &s(&x), "-o", &s(&y0)]);
    ok(&o);
    assert!(stderr(&o).starts_with("note: no --weights given: parameters initialised from seed 0"), "{}", stderr(&o));
    assert_eq!(std::fs::read(&y).expect("y"), std::fs::read(&y0).expect("y0"));
    let o = cnnc(&["run", LENET, "--input", &s(&x), "--seed", "5"]);
    assert!(stderr(&o).contains("from seed 5"), "{}", stderr(&o));
    assert_ne!(ok(&o), ok(&cnnc(&["run", LENET, "--input", &s(&x)])));

    // More than 8 images: the first 8 are listed, with a note.
    let x10 = dir.join("x10.npy");
    random_npy(&x10, &[10, 1, 32, 32], 2);
    let out = ok(&cnnc(&["run", LENET, "--input", &s(&x10)]));
    assert!(out.starts_with("output: [10, 10]\n"), "{out}");
    assert!(out.contains("\n  image 7  ") && !out.contains("image 8"), "{out}");
    assert!(out.ends_with("  ... and 2 more images (the first 8 are shown; -o Y.npy saves every output)\n"), "{out}");
}

#[test]
fn run_resnet18_at_64x64() {
    let dir = scratch("run-resnet");
    let x = dir.join("x.npy");
    random_npy(&x, &[2, 3, 64, 64], 3);
    let out = ok(&cnnc(&["run", RESNET, "--shape", "3x64x64", "--input", &s(&x)]));
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "output: [2, 1000]");
    assert_eq!(lines.len(), 4, "{out}");
    assert!(lines[2].starts_with("  image 0  ") && lines[3].starts_with("  image 1  "), "{out}");
    assert_eq!(lines[3].split("  ").count(), 1 + 5 + 1, "{out}");
}

#[test]
fn grad_lenet5_with_ce_and_mse() {
    let dir = scratch("grad-lenet");
    let (x, w, t, g) = (dir.join("x.npy"), dir.join("w.safetensors"), dir.join("t.npy"), dir.join("g.safetensors"));
    random_npy(&x, &[3, 1, 32, 32], 4);
    labels_npy(&t, &[1, 9, 0]);
    ok(&cnnc(&["init", LENET, "--seed", "2", "-o", &s(&w)]));
    let graph = lower(LENET, None);
    let expected = expected_grads(&graph, &[3, 1, 32, 32]);

    let o = cnnc(&[
        "grad",
        LENET,
        "--weights",
        &s(&w),
        "--input",
        &s(&x),
        "--target",
        &s(&t),
        "--loss",
        "ce",
        "-o",
        &s(&g),
    ]);
    let out = ok(&o);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "output: [3, 10]");
    assert!(lines[1].starts_with("loss: ") && lines[1].ends_with(" (ce, mean over 3 images)"), "{out}");
    assert_eq!(lines[2], format!("gradients: 10 parameter tensors and `input` written to `{}`", s(&g)));
    // Ten classes at initialisation: close to ln 10.
    let loss = printed_loss(&out);
    assert!(loss > 1.5 && loss < 3.5, "{loss}");
    let grads = load_safetensors(&g).expect("gradient file");
    assert_eq!(names_and_shapes(&grads), expected);
    assert!(grads.values().all(|t| t.data.iter().all(|v| v.is_finite())));
    assert!(grads["input"].data.iter().any(|&v| v != 0.0));

    // mse against a tensor shaped like the output.
    let r = dir.join("r.npy");
    random_npy(&r, &[3, 10], 5);
    let g2 = dir.join("g2.safetensors");
    let out = ok(&cnnc(&[
        "grad",
        LENET,
        "--weights",
        &s(&w),
        "--input",
        &s(&x),
        "--target",
        &s(&r),
        "--loss",
        "mse",
        "-o",
        &s(&g2),
    ]));
    assert!(out.contains(" (mse, mean over 3 images)\n"), "{out}");
    let grads = load_safetensors(&g2).expect("gradient file");
    assert_eq!(names_and_shapes(&grads), expected);
    // The other losses run too; without -o nothing is written.
    for loss in ["l1", "huber"] {
        let out =
            ok(&cnnc(&["grad", LENET, "--weights", &s(&w), "--input", &s(&x), "--target", &s(&r), "--loss", loss]));
        assert!(out.contains("(pass -o G.safetensors to save them)"), "{out}");
    }
    // The two hinge forms: CS231n's sums over the wrong classes, MultiMarginLoss divides that
    // sum by the 10 classes (equal to f32 rounding: the loss is stored as f32); a wider margin makes more terms active and the loss larger.
    let (w_text, x_text, t_text) = (s(&w), s(&x), s(&t));
    let hinge_loss = |loss: &str, extra: &[&str]| -> f64 {
        let mut args = vec!["grad", LENET, "--weights", &w_text, "--input", &x_text, "--target", &t_text];
        args.extend(["--loss", loss, "--json"]);
        args.extend(extra);
        let out = ok(&cnnc(&args));
        let json: serde_json::Value = serde_json::from_str(out.trim()).expect("one line of JSON");
        assert_eq!(json["loss_fn"], loss, "{out}");
        json["loss"].as_f64().expect("a finite loss")
    };
    let (sum, mean) = (hinge_loss("hinge", &[]), hinge_loss("multi-margin", &[]));
    assert!(sum > 0.0 && (sum - 10.0 * mean).abs() <= 1e-6 * sum, "hinge {sum}, multi-margin {mean}");
    let wide = hinge_loss("hinge", &["--margin", "3"]);
    assert!(wide > sum, "margin 3 gives {wide}, margin 1 gives {sum}");
    let out =
        ok(&cnnc(&["grad", LENET, "--weights", &s(&w), "--input", &s(&x), "--target", &s(&r), "--loss", "huber"]));
    let narrow = ok(&cnnc(&[
        "grad",
        LENET,
        "--weights",
        &s(&w),
        "--input",
        &s(&x),
        "--target",
        &s(&r),
        "--loss",
        "huber",
        "--delta",
        "0.01",
    ]));
    assert_ne!(out, narrow, "--delta changes the Huber loss");
    fails(
        &cnnc(&[
            "grad",
            LENET,
            "--weights",
            &s(&w),
            "--input",
            &s(&x),
            "--target",
            &s(&r),
            "--loss",
            "mse",
            "--delta",
            "2",
        ]),
        2,
        &["--delta belongs to `--loss huber`"],
    );
}

/// ResNet-18's initial weights (46 MB), written once for the tests that need them.
fn resnet_weights() -> &'static PathBuf {
    static WEIGHTS: OnceLock<PathBuf> = OnceLock::new();
    WEIGHTS.get_or_init(|| {
        let dir = scratch("resnet-weights");
        let w = dir.join("w.safetensors");
        ok(&cnnc(&["init", RESNET, "--seed", "3", "-o", &s(&w)]));
        w
    })
}

#[test]
fn grad_resnet18_in_inference_and_training_mode() {
    let w = resnet_weights();
    let dir = scratch("grad-resnet-ce");
    let (x, t, g) = (dir.join("x.npy"), dir.join("t.npy"), dir.join("g.safetensors"));
    random_npy(&x, &[2, 3, 64, 64], 6);
    labels_npy(&t, &[3, 999]);
    let before = std::fs::read(w).expect("weights");
    let args = ["grad", RESNET, "--shape", "3x64x64", "--weights", &s(w), "--input", &s(&x), "--target", &s(&t)];
    let o = cnnc(&[&args[..], &["--loss", "ce", "-o", &s(&g)]].concat());
    let inference = printed_loss(&ok(&o));
    assert!(stderr(&o).is_empty(), "{}", stderr(&o));
    let grads = load_safetensors(&g).expect("gradient file");
    let graph = lower(RESNET, Some(vec![3, 64, 64]));
    assert_eq!(names_and_shapes(&grads), expected_grads(&graph, &[2, 3, 64, 64]));
    assert_eq!(grads.len(), 62 + 1);

    // --train: batch norm on batch statistics (a different loss), nothing written to disk.
    let o = cnnc(&[&args[..], &["--loss", "ce", "--train"]].concat());
    let out = ok(&o);
    let training = printed_loss(&out);
    assert!(out.contains("(ce, mean over 2 images, training mode)"), "{out}");
    assert!(
        out.contains(
            "running statistics: 20 batch-norm layers updated from this batch (pass --state-out S.safetensors to save \
             them)"
        ),
        "{out}"
    );
    assert!(inference.is_finite() && training.is_finite());
    assert!((inference - training).abs() > 1e-3 * inference.abs(), "{inference} vs {training}");
    assert_eq!(std::fs::read(w).expect("weights"), before, "--train leaves the weights file alone");
}

#[test]
fn grad_resnet18_with_mse() {
    let w = resnet_weights();
    let dir = scratch("grad-resnet-mse");
    let (x, r, g) = (dir.join("x.npy"), dir.join("r.npy"), dir.join("g.safetensors"));
    random_npy(&x, &[2, 3, 64, 64], 7);
    random_npy(&r, &[2, 1000], 8);
    let out = ok(&cnnc(&[
        "grad",
        RESNET,
        "--shape",
        "3x64x64",
        "--weights",
        &s(w),
        "--input",
        &s(&x),
        "--target",
        &s(&r),
        "--loss",
        "mse",
        "-o",
        &s(&g),
    ]));
    assert!(out.starts_with("output: [2, 1000]\nloss: "), "{out}");
    let grads = load_safetensors(&g).expect("gradient file");
    assert_eq!(grads["input"].shape, [2, 3, 64, 64]);
    assert_eq!(grads["layer4.1.bn2.weight"].shape, [512]);
    assert_eq!(grads["fc.weight"].shape, [1000, 512]);
    assert!(!grads.contains_key("bn1.running_mean"), "buffers get no gradient");
}

#[test]
fn a_gradient_matches_finite_differences_through_the_cli() {
    let dir = scratch("finite-differences");
    let (x, w, t, g) = (dir.join("x.npy"), dir.join("w.safetensors"), dir.join("t.npy"), dir.join("g.safetensors"));
    random_npy(&x, &[3, 1, 32, 32], 9);
    labels_npy(&t, &[4, 2, 7]);
    ok(&cnnc(&["init", LENET, "--seed", "11", "-o", &s(&w)]));
    let grad_args = |weights: &Path| {
        vec![
            "grad".to_string(),
            LENET.into(),
            "--weights".into(),
            s(weights),
            "--input".into(),
            s(&x),
            "--target".into(),
            s(&t),
            "--loss".into(),
            "ce".into(),
        ]
    };
    let run = |args: Vec<String>| {
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        ok(&cnnc(&refs))
    };
    let mut args = grad_args(&w);
    args.extend(["-o".into(), s(&g)]);
    run(args);
    let grads = load_safetensors(&g).expect("gradients");
    let weights = load_safetensors(&w).expect("weights");

    // Two weights: the largest gradient of c3 (deep in the network) and of the output layer.
    let h = 1e-2f32;
    for name in ["c3.weight", "output.weight"] {
        let g = &grads[name].data;
        let i = (0..g.len()).max_by(|&a, &b| g[a].abs().total_cmp(&g[b].abs())).expect("an element");
        let loss_at = |delta: f32| {
            let mut perturbed = weights.clone();
            perturbed.get_mut(name).expect("weight").data[i] += delta;
            let path = dir.join(format!("w{delta}.safetensors"));
            save_safetensors(&path, &perturbed).expect("save");
            printed_loss(&run(grad_args(&path)))
        };
        let numeric = (loss_at(h) - loss_at(-h)) / (2.0 * f64::from(h));
        let analytic = f64::from(g[i]);
        let rel = (numeric - analytic).abs() / analytic.abs().max(1e-6);
        eprintln!("{name}[{i}]: finite differences {numeric:.6e}, gradient {analytic:.6e}, rel {rel:.1e}");
        assert!(rel < 5e-2, "{name}[{i}]: finite differences {numeric}, gradient {analytic} (rel {rel})");
    }
}

#[test]
fn data_that_does_not_fit_is_an_error_with_shapes_and_hints() {
    let dir = scratch("errors");
    let (x, w, t) = (dir.join("x.npy"), dir.join("w.safetensors"), dir.join("t.npy"));
    random_npy(&x, &[2, 1, 32, 32], 10);
    labels_npy(&t, &[1, 2]);
    ok(&cnnc(&["init", LENET, "-o", &s(&w)]));
    let grad = |weights: &Path, input: &Path, target: &Path, loss: &str| {
        cnnc(&["grad", LENET, "--weights", &s(weights), "--input", &s(input), "--target", &s(target), "--loss", loss])
    };

    // Wrong spatial size: expected and found shapes, and whether --shape would help.
    let x28 = dir.join("x28.npy");
    random_npy(&x28, &[2, 1, 28, 28], 11);
    let o = cnnc(&["run", LENET, "--input", &s(&x28)]);
    fails(
        &o,
        1,
        &[
            &format!("error: input `{}` has shape [2, 1, 28, 28], but model `lenet5` takes [N, 1, 32, 32]", s(&x28)),
            "= help: the model does not fit a 1x28x28 input (`cnnc check examples/lenet5.cnn --shape 1x28x28` shows why)",
        ],
    );
    assert!(stdout(&o).is_empty());
    let x64 = dir.join("x64.npy");
    random_npy(&x64, &[1, 3, 64, 64], 12);
    let o = cnnc(&["run", RESNET, "--input", &s(&x64)]);
    fails(&o, 1, &["takes [N, 3, 224, 224]", "= help: to run the model at the input's size, pass `--shape 3x64x64`"]);

    // Missing, extra and mis-shaped weights: all listed.
    let mut bad = load_safetensors(&w).expect("weights");
    bad.remove("c1.weight");
    bad.insert("c3.weight".into(), Tensor::zeros(&[16, 6, 3, 3]));
    bad.insert("c9.bias".into(), Tensor::zeros(&[3]));
    let wbad = dir.join("bad.safetensors");
    save_safetensors(&wbad, &bad).expect("save");
    let o = grad(&wbad, &x, &t, "ce");
    fails(
        &o,
        1,
        &[
            &format!("error: weights file `{}` does not fit model `lenet5`: 3 problems\n", s(&wbad)),
            "  - missing weight `c1.weight`: the model needs a tensor of shape [6, 1, 5, 5] under that name\n",
            "  - weight `c3.weight` has shape [16, 6, 3, 3], but the model expects [16, 6, 5, 5]\n",
            "  - unexpected weight `c9.bias`: the model has no parameter of that name\n",
            "  = help: ",
        ],
    );
    let o = cnnc(&["run", LENET, "--weights", &s(&wbad), "--input", &s(&x)]);
    fails(&o, 1, &["missing weight `c1.weight`"]);

    // Labels out of range name the sample; labels of the wrong shape or kind are refused.
    let t_bad = dir.join("t_bad.npy");
    labels_npy(&t_bad, &[3, 10]);
    fails(&grad(&w, &x, &t_bad, "ce"), 1, &["label 10 of sample 1 is out of range for 10 classes (0 to 9)"]);
    labels_npy(&t_bad, &[-1, 0]);
    fails(&grad(&w, &x, &t_bad, "hinge"), 1, &["label -1 of sample 0 is out of range", "no `ignore_index`"]);
    labels_npy(&t_bad, &[1, 2, 3]);
    fails(&grad(&w, &x, &t_bad, "ce"), 1, &["has shape [3], but loss `ce` on this batch needs [2]"]);
    let onehot = dir.join("onehot.npy");
    random_npy(&onehot, &[2, 10], 13);
    fails(&grad(&w, &x, &onehot, "ce"), 1, &["holds floating-point values, but integer values are needed"]);
    fails(&grad(&w, &x, &t, "mse"), 1, &["holds integer values, but floating-point values are needed"]);
    let r = dir.join("r.npy");
    random_npy(&r, &[2, 5], 14);
    fails(&grad(&w, &x, &r, "mse"), 1, &["has shape [2, 5], but loss `mse` on this batch needs [2, 10]"]);

    // A loss cnnc does not know is a usage error from the argument parser.
    fails(
        &grad(&w, &x, &t, "nll"),
        2,
        &["invalid value 'nll' for '--loss <LOSS>'", "ce, mse, l1, huber, hinge, multi-margin"],
    );
    // A missing file is an I/O error; a truncated or non-.npy file is a data error.
    fails(&grad(&w, &dir.join("nope.npy"), &t, "ce"), 2, &["cannot read", "nope.npy"]);
    let trunc = dir.join("trunc.npy");
    std::fs::write(&trunc, &std::fs::read(&x).expect("x")[..300]).expect("write");
    fails(&grad(&w, &trunc, &t, "ce"), 1, &["the file is truncated"]);
    let wtrunc = dir.join("trunc.safetensors");
    std::fs::write(&wtrunc, &std::fs::read(&w).expect("w")[..1000]).expect("write");
    fails(&grad(&wtrunc, &x, &t, "ce"), 1, &["is not a valid safetensors file"]);
    fails(&grad(&x, &x, &t, "ce"), 1, &["is not a valid safetensors file"]);
}

#[test]
fn train_with_dropout_needs_a_seed() {
    let dir = scratch("dropout");
    let model = dir.join("drop.cnn");
    std::fs::write(
        &model,
        "model drop {\n    input x: [6]\n    x -> fc1: fc(8) -> relu -> dropout(0.5) -> fc2: fc(3)\n}\n",
    )
    .expect("write");
    let (x, w, t) = (dir.join("x.npy"), dir.join("w.safetensors"), dir.join("t.npy"));
    random_npy(&x, &[4, 6], 15);
    labels_npy(&t, &[0, 1, 2, 0]);
    ok(&cnnc(&["init", &s(&model), "-o", &s(&w)]));
    let args = ["grad", &s(&model), "--weights", &s(&w), "--input", &s(&x), "--target", &s(&t), "--loss", "ce"];
    let args: Vec<&str> = args.iter().map(|a| a.as_ref()).collect();
    let o = cnnc(&[&args[..], &["--train"]].concat());
    fails(
        &o,
        2,
        &[
            "error: --train runs dropout in training mode, and the dropout masks need a seed: pass `--seed N`",
            "dropout1",
        ],
    );
    // Seeded dropout is reproducible, and differs from inference.
    let a = ok(&cnnc(&[&args[..], &["--train", "--seed", "1"]].concat()));
    let b = ok(&cnnc(&[&args[..], &["--train", "--seed", "1"]].concat()));
    assert_eq!(a, b);
    let inference = ok(&cnnc(&args));
    assert_ne!(printed_loss(&a), printed_loss(&inference));
}

#[test]
fn non_finite_inputs_are_allowed_with_a_warning() {
    let dir = scratch("nan");
    let x = dir.join("x.npy");
    let mut t = random_npy(&x, &[2, 1, 32, 32], 16);
    t.data[5] = f32::NAN;
    t.data[6] = f32::INFINITY;
    write_npy(&x, &t).expect("write");
    let o = cnnc(&["run", LENET, "--input", &s(&x)]);
    let out = ok(&o);
    assert!(out.starts_with("output: [2, 10]\n"), "{out}");
    assert!(
        stderr(&o).contains(&format!("warning: input `{}` holds 1 NaN and 1 infinite values", s(&x))),
        "{}",
        stderr(&o)
    );
}
