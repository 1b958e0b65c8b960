//! Bad inputs through the built `cnnc` binary, each with its exit code and message: models and
//! files too large for the memory (checked before anything is allocated), special files as
//! inputs and outputs, outputs over inputs, corrupt safetensors, checkpoints with extra
//! tensors, missing arguments; and what `grad` prints for scripts (`--json`, the loss in full).

use crate::common::{cnnc, root, stderr, stdout};
use cnnc_runtime::{Rng, Tensor, TensorMap, load_safetensors, save_safetensors, write_npy};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

const LENET: &str = "examples/lenet5.cnn";

fn scratch(test: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("cnnc-hostile").join(test);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

fn s(path: &Path) -> String {
    path.display().to_string()
}

/// Exit code `code`, no panic, no abort, and every needle in stderr; returns stderr.
fn fails(o: &Output, code: i32, needles: &[&str]) -> String {
    let err = stderr(o);
    assert_eq!(o.status.code(), Some(code), "stdout: {}\nstderr: {err}", stdout(o));
    assert!(!err.contains("panicked") && !err.contains("memory allocation"), "{err}");
    for needle in needles {
        assert!(err.contains(needle), "expected {needle:?} in:\n{err}");
    }
    err
}

fn ok(o: &Output) -> String {
    assert_eq!(o.status.code(), Some(0), "stdout: {}\nstderr: {}", stdout(o), stderr(o));
    stdout(o)
}

/// `cnnc` with an environment variable set.
fn cnnc_env(args: &[&str], key: &str, value: &str) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cnnc")).args(args).env(key, value).current_dir(root()).output().expect("runs")
}

fn random_npy(path: &Path, shape: &[usize], seed: u64) {
    let mut rng = Rng::seed_from_u64(seed);
    let n = shape.iter().product();
    write_npy(path, &Tensor::from_vec(shape, (0..n).map(|_| rng.normal() as f32).collect()).unwrap()).unwrap();
}

#[test]
fn models_too_large_for_the_memory_are_refused_before_allocating() {
    let dir = scratch("memory");
    let w = s(&dir.join("w.safetensors"));
    let started = Instant::now();
    // LeNet-5 at 3000x3000: its first fc layer alone has 5.5 billion weights.
    let o = cnnc(&["init", LENET, "--shape", "1x3000x3000", "-o", &w]);
    fails(&o, 1, &["error: initialising model `lenet5` needs about ", "GiB of memory (", "more than the "]);
    // ResNet-18 with a hundred million classes.
    let o = cnnc(&["init", "examples/resnet18.cnn", "--set", "classes=100000000", "-o", &w]);
    fails(&o, 1, &["initialising model `resnet18` needs about 382.3 GiB", "51,311,186,112 parameter values"]);
    let x = dir.join("x.npy");
    random_npy(&x, &[1, 3, 224, 224], 1);
    let o = cnnc(&["run", "examples/resnet18.cnn", "--set", "classes=100000000", "--input", &s(&x)]);
    fails(&o, 1, &["running model `resnet18` on a batch of 1 needs about", "--memory-limit SIZE"]);
    // Activations of hundreds of GiB from a tiny input and tiny weights.
    let big = dir.join("big.cnn");
    std::fs::write(
        &big,
        "model big {\n    input x: [4, 4, 4]\n    x -> conv(4096, k=1) -> adaptive_avgpool(3000)\n}\n",
    )
    .unwrap();
    let small = dir.join("small.npy");
    random_npy(&small, &[1, 4, 4, 4], 2);
    let o = cnnc(&["run", &s(&big), "--input", &s(&small)]);
    let err = fails(&o, 1, &["running model `big` on a batch of 1 needs about", "for the outputs of its layers"]);
    assert!(err.contains("= help: make the model or its input smaller"), "{err}");
    let t = dir.join("t.npy");
    cnnc_runtime::write_npy_labels(&t, &[1], &[0]).unwrap();
    let o = cnnc(&["grad", &s(&big), "--input", &s(&small), "--target", &s(&t), "--loss", "mse"]);
    fails(&o, 1, &[]);
    assert!(started.elapsed() < Duration::from_secs(30), "refused at once, not after allocating");
    assert!(!dir.join("w.safetensors").exists(), "nothing written");
}

#[test]
fn the_memory_limit_can_be_set() {
    let dir = scratch("memory-limit");
    let w = s(&dir.join("w.safetensors"));
    let o = cnnc(&["init", LENET, "--memory-limit", "100K", "-o", &w]);
    fails(&o, 1, &["needs about 482.1 KiB of memory", "more than the 100.0 KiB allowed by --memory-limit"]);
    let o = cnnc_env(&["init", LENET, "-o", &w], "CNNC_MEMORY_LIMIT", "100K");
    fails(&o, 1, &["allowed by --memory-limit"]);
    ok(&cnnc_env(&["init", LENET, "-o", &w], "CNNC_MEMORY_LIMIT", "1G"));
    let o = cnnc(&["init", LENET, "--memory-limit", "lots", "-o", &w]);
    fails(&o, 2, &["`lots` is not a size"]);
    // Files are bounded too: a checkpoint of 4 MiB (the weights and an optimiser's state) under
    // a limit of 1 MiB, which the run itself would fit.
    let x = dir.join("x.npy");
    random_npy(&x, &[1, 1, 32, 32], 1);
    let mut weights = load_safetensors(&w).unwrap();
    weights.insert("optimizer.state".into(), Tensor::zeros(&[1 << 20]));
    let checkpoint = dir.join("checkpoint.safetensors");
    save_safetensors(&checkpoint, &weights).unwrap();
    let run = ["run", LENET, "--weights", &s(&checkpoint), "--input", &s(&x), "--allow-extra-weights"];
    ok(&cnnc(&run));
    let o = cnnc(&[&run[..], &["--memory-limit", "1M"]].concat());
    fails(&o, 1, &["holds 4.2 MiB of tensors, more than the 1.0 MiB of memory cnnc may use", "is it the right file?"]);
    let o = cnnc(&["run", LENET, "--weights", &w, "--input", &s(&x), "--memory-limit", "2K"]);
    fails(&o, 1, &["`", "x.npy` holds 4.1 KiB of data, more than the 2.0 KiB"]);
}

#[cfg(unix)]
#[test]
fn special_files_as_inputs_are_errors_not_endless_reads() {
    let dir = scratch("special-inputs");
    let x = dir.join("x.npy");
    random_npy(&x, &[1, 1, 32, 32], 1);
    let started = Instant::now();
    let o = cnnc(&["run", LENET, "--weights", "/dev/zero", "--input", &s(&x)]);
    let err = fails(&o, 1, &["error: `/dev/zero` is not a valid safetensors file: its header is not valid JSON"]);
    assert!(!err.contains("expected value"), "serde's own words: {err}");
    let o = cnnc(&["run", LENET, "--input", "/dev/zero"]);
    fails(&o, 1, &["cannot read `/dev/zero`: it does not start with the .npy magic string"]);
    let o = cnnc(&["check", "/dev/zero"]);
    fails(&o, 2, &["is larger than 16 MiB"]);
    assert!(started.elapsed() < Duration::from_secs(20), "each read stops at once");
}

#[cfg(unix)]
#[test]
fn outputs_never_replace_devices_fifos_or_symlinks() {
    use std::os::unix::fs::FileTypeExt;
    let dir = scratch("outputs");
    let x = dir.join("x.npy");
    random_npy(&x, &[2, 1, 32, 32], 1);
    // A device: written in place, never replaced (as root, /dev/full once was).
    let out = ok(&cnnc(&["run", LENET, "--input", &s(&x), "-o", "/dev/null"]));
    assert!(out.starts_with("output: [2, 10], written to `/dev/null`\n"), "{out}");
    assert!(std::fs::metadata("/dev/null").unwrap().file_type().is_char_device());
    if Path::new("/dev/full").exists() {
        let o = cnnc(&["init", LENET, "-o", "/dev/full"]);
        fails(&o, 2, &["cannot write weights file `/dev/full`: No space left on device"]);
        assert!(std::fs::metadata("/dev/full").unwrap().file_type().is_char_device(), "still a device");
    }
    // A symlink: written through, the link stays a link.
    let target = dir.join("real.npy");
    let link = dir.join("link.npy");
    std::os::unix::fs::symlink("real.npy", &link).unwrap();
    ok(&cnnc(&["run", LENET, "--input", &s(&x), "-o", &s(&link)]));
    assert!(std::fs::symlink_metadata(&link).unwrap().file_type().is_symlink());
    assert_eq!(cnnc_runtime::read_npy_f32(&target).unwrap().shape, [2, 10]);
    // A directory is an error, exit 2.
    let o = cnnc(&["run", LENET, "--input", &s(&x), "-o", &s(&dir)]);
    fails(&o, 2, &["cannot write `", "it is a directory"]);
}

#[test]
fn dash_and_dev_stdout_write_the_file_to_standard_output() {
    let dir = scratch("stdout");
    let x = dir.join("x.npy");
    random_npy(&x, &[2, 1, 32, 32], 1);
    for name in ["-", "/dev/stdout"] {
        let o = cnnc(&["run", LENET, "--input", &s(&x), "-o", name]);
        assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
        let parsed = cnnc_runtime::read_npy_bytes(&o.stdout).expect("stdout is the .npy file alone");
        assert_eq!(parsed.shape(), [2, 10]);
        assert!(stderr(&o).contains("output: [2, 10], written to standard output\n"), "{}", stderr(&o));
    }
    let o = cnnc(&["init", LENET, "-o", "-"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(stderr(&o).starts_with("wrote standard output: 10 tensors of model `lenet5`"), "{}", stderr(&o));
    let file = dir.join("w.safetensors");
    std::fs::write(&file, &o.stdout).unwrap();
    assert_eq!(load_safetensors(&file).unwrap().len(), 10);
}

#[test]
fn outputs_over_inputs_are_refused() {
    let dir = scratch("output-over-input");
    let (w, x, t) = (dir.join("w.safetensors"), dir.join("x.npy"), dir.join("t.npy"));
    ok(&cnnc(&["init", LENET, "-o", &s(&w)]));
    random_npy(&x, &[2, 1, 32, 32], 1);
    cnnc_runtime::write_npy_labels(&t, &[2], &[3, 1]).unwrap();
    let before = std::fs::read(&w).unwrap();
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
        &s(&w),
    ]);
    fails(&o, 2, &["is the file given as --weights: cnnc does not write over its own inputs", "= help: write"]);
    assert_eq!(std::fs::read(&w).unwrap(), before, "the weights are untouched");
    // The same file under another name, and the other inputs.
    let other_name = dir.join(".").join("x.npy");
    let o = cnnc(&["run", LENET, "--input", &s(&x), "-o", &s(&other_name)]);
    fails(&o, 2, &["is the file given as --input"]);
    let source = dir.join("m.cnn");
    std::fs::copy(root().join(LENET), &source).unwrap();
    let o = cnnc(&["init", &s(&source), "-o", &s(&source)]);
    fails(&o, 2, &["is the file given as the source FILE"]);
}

/// A LeNet-5 weights file as `cnnc init` writes it, with its JSON header rewritten by `edit`.
fn edited_weights(dir: &Path, edit: impl FnOnce(&mut serde_json::Value)) -> PathBuf {
    let w = dir.join("w.safetensors");
    ok(&cnnc(&["init", LENET, "-o", &s(&w)]));
    let bytes = std::fs::read(&w).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let mut header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    edit(&mut header);
    let json = header.to_string();
    let mut out = (json.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(json.as_bytes());
    out.extend_from_slice(&bytes[8 + n..]);
    let edited = dir.join("edited.safetensors");
    std::fs::write(&edited, out).unwrap();
    edited
}

#[test]
fn corrupt_safetensors_name_the_tensor_that_is_wrong() {
    let dir = scratch("corrupt");
    let x = dir.join("x.npy");
    random_npy(&x, &[1, 1, 32, 32], 1);
    let run = |w: &Path| cnnc(&["run", LENET, "--weights", &s(w), "--input", &s(&x)]);
    // c1.weight's range moved by 4 bytes, onto its neighbour.
    let moved = edited_weights(&dir, |h| {
        let offsets = &mut h["c1.weight"]["data_offsets"];
        let [b, e] = [0, 1].map(|k| offsets[k].as_u64().unwrap());
        *offsets = serde_json::json!([b + 4, e + 4]);
    });
    fails(
        &run(&moved),
        1,
        &["is not a valid safetensors file: tensor `c1.weight`: its data_offsets", "were changed or moved"],
    );
    // A shape that does not match its bytes names the tensor.
    let resized = edited_weights(&dir, |h| h["c3.bias"]["shape"] = serde_json::json!([15]));
    fails(&run(&resized), 1, &["tensor `c3.bias`: shape [15] of F32 needs 60 bytes, but its data_offsets"]);
    // serde's words are never shown, whatever is wrong with the JSON.
    let broken = dir.join("broken.safetensors");
    let mut bytes = 10u64.to_le_bytes().to_vec();
    bytes.extend_from_slice(b"{\"c1.bias\"");
    std::fs::write(&broken, bytes).unwrap();
    let err = fails(&run(&broken), 1, &["its header is not valid JSON: it ends early, at line 1, column 10"]);
    assert!(!err.contains("EOF while parsing"), "{err}");
    // A tensor listed twice.
    let w = dir.join("w.safetensors");
    let bytes = std::fs::read(&w).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header = String::from_utf8(bytes[8..8 + n].to_vec()).unwrap();
    let twice = header.replacen("\"c1.bias\"", "\"c3.bias\"", 1);
    let mut dup = bytes[..8].to_vec();
    dup.extend_from_slice(twice.as_bytes());
    dup.extend_from_slice(&bytes[8 + n..]);
    let dup_path = dir.join("dup.safetensors");
    std::fs::write(&dup_path, dup).unwrap();
    fails(&run(&dup_path), 1, &["its header lists tensor `c3.bias` twice"]);
}

#[test]
fn extra_weights_are_an_error_unless_allowed() {
    let dir = scratch("extra");
    let (w, x, t) = (dir.join("w.safetensors"), dir.join("x.npy"), dir.join("t.npy"));
    ok(&cnnc(&["init", LENET, "-o", &s(&w)]));
    let mut weights: TensorMap = load_safetensors(&w).unwrap();
    weights.insert("head.weight".into(), Tensor::zeros(&[2, 10]));
    for k in 0..12 {
        weights.insert(format!("optimizer.state.{k:02}"), Tensor::zeros(&[1]));
    }
    let checkpoint = dir.join("checkpoint.safetensors");
    save_safetensors(&checkpoint, &weights).unwrap();
    random_npy(&x, &[2, 1, 32, 32], 1);
    cnnc_runtime::write_npy_labels(&t, &[2], &[3, 1]).unwrap();
    let o = cnnc(&["run", LENET, "--weights", &s(&checkpoint), "--input", &s(&x)]);
    fails(
        &o,
        1,
        &["does not fit model `lenet5`: 13 problems", "unexpected weight `head.weight`", "--allow-extra-weights"],
    );
    let allowed = ["run", LENET, "--weights", &s(&checkpoint), "--input", &s(&x), "--allow-extra-weights"];
    let o = cnnc(&allowed);
    let out = ok(&o);
    assert!(out.starts_with("output: [2, 10]\n"), "{out}");
    let err = stderr(&o);
    assert_eq!(err.matches("warning:").count(), 1, "listed once: {err}");
    assert!(
        err.contains("holds 13 tensors the model does not use, ignored (--allow-extra-weights): `head.weight`, "),
        "{err}"
    );
    assert!(err.trim_end().ends_with("and 3 more"), "{err}");
    // The same outputs as with the plain weights.
    assert_eq!(out, ok(&cnnc(&["run", LENET, "--weights", &s(&w), "--input", &s(&x)])));
    // grad takes it too; a missing tensor is still an error.
    let grad = ["grad", LENET, "--weights", &s(&checkpoint), "--input", &s(&x), "--target", &s(&t), "--loss", "ce"];
    ok(&cnnc(&[&grad[..], &["--allow-extra-weights"]].concat()));
    weights.remove("c1.bias");
    save_safetensors(&checkpoint, &weights).unwrap();
    let o = cnnc(&allowed);
    fails(&o, 1, &["1 problem", "missing weight `c1.bias`"]);
}

#[test]
fn grad_initialises_without_weights_and_reports_in_json() {
    let dir = scratch("grad-json");
    let (x, t, g, w) = (dir.join("x.npy"), dir.join("t.npy"), dir.join("g.safetensors"), dir.join("w.safetensors"));
    random_npy(&x, &[3, 1, 32, 32], 1);
    cnnc_runtime::write_npy_labels(&t, &[3], &[3, 1, 4]).unwrap();
    let args = ["grad", LENET, "--input", &s(&x), "--target", &s(&t), "--loss", "ce", "--seed", "2"];
    let o = cnnc(&args);
    let text = ok(&o);
    assert!(stderr(&o).contains("note: no --weights given: parameters initialised from seed 2"), "{}", stderr(&o));
    // The same as with `cnnc init --seed 2`'s file.
    ok(&cnnc(&["init", LENET, "--seed", "2", "-o", &s(&w)]));
    let with_file = ["grad", LENET, "--weights", &s(&w), "--input", &s(&x), "--target", &s(&t), "--loss", "ce"];
    assert_eq!(text, ok(&cnnc(&with_file)));
    // The loss in full: more digits than an f32 shows, and it reads back as the JSON's value.
    let loss_text = text.lines().find_map(|l| l.strip_prefix("loss: ")).unwrap().split(' ').next().unwrap();
    let digits = loss_text.chars().filter(char::is_ascii_digit).count();
    assert!(digits > 9, "full precision: {loss_text}");
    let o = cnnc(&[&args[..], &["--json", "-o", &s(&g)]].concat());
    let json: serde_json::Value = serde_json::from_str(ok(&o).trim_end()).expect("one line of JSON");
    assert_eq!(json["loss"].as_f64(), Some(loss_text.parse::<f64>().unwrap()));
    assert_eq!(json["loss_fn"], "ce");
    assert_eq!(json["batch"], 3);
    assert_eq!(json["output"], serde_json::json!([3, 10]));
    assert_eq!(json["weights"], serde_json::Value::Null);
    assert_eq!(json["seed"], 2);
    assert_eq!(json["gradients"], s(&g));
    assert_eq!(json["input"], s(&x));
    assert_eq!(json["parameter_tensors"], 10);
    assert_eq!(load_safetensors(&g).unwrap().len(), 11);
    let o = cnnc(&[&args[..], &["--json", "-o", "-"]].concat());
    fails(&o, 2, &["--json and `-o -` would both write to standard output"]);
}

#[test]
fn missing_arguments_say_what_to_pass_with_an_example() {
    let cases: &[(&[&str], &[&str])] = &[
        (&["check"], &["error: `cnnc check` needs an argument it was not given:", "`FILE.cnn`", "example: cnnc check"]),
        (&["summary"], &["`cnnc summary` needs", "`FILE.cnn`"]),
        (&["ir"], &["`cnnc ir` needs"]),
        (&["dot"], &["`cnnc dot` needs"]),
        (&["init", LENET], &["`cnnc init` needs", "`-o W.safetensors`", "example: cnnc init examples/lenet5.cnn"]),
        (&["run", LENET], &["`cnnc run` needs", "`--input X.npy`: the input batch", "example: cnnc run"]),
        (&["grad", LENET], &["`cnnc grad` needs 3 arguments", "`--input X.npy`", "`--target T.npy`", "`--loss ce`"]),
    ];
    for (args, needles) in cases {
        let o = cnnc(args);
        let err = fails(&o, 2, needles);
        assert!(!err.contains("the following required arguments were not provided"), "{err}");
        assert!(err.contains("--help` describes every argument"), "{err}");
    }
}
