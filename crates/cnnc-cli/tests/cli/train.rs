//! `cnnc train` through the built binary, on the built-in digits with a small network: what it
//! writes (weights with their normalisation, checkpoint, curves), that `cnnc run` then takes raw
//! pixels, bit-identical reruns, Ctrl-C and `--resume`, a non-finite loss, `--freeze` and
//! `--init-from`, and bad data.

use crate::common::{cnnc, stderr, stdout};
use cnnc_runtime::{Tensor, load_safetensors, load_safetensors_with_metadata_within, write_npy};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// A small digits network: one epoch takes a fraction of a second.
const SMALL: &str = "model small(classes = 10) {
    input x: [1, 8, 8]
    x -> conv1: conv(8, k=3, pad=1) -> bn1: bn -> relu
      -> pool: maxpool(2)
      -> flatten -> fc: fc(classes)
}
";

fn scratch(test: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("cnnc-train").join(test);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch dir");
    std::fs::write(dir.join("small.cnn"), SMALL).expect("model");
    dir
}

fn s(path: &Path) -> String {
    path.display().to_string()
}

fn ok(o: &Output) -> String {
    assert_eq!(o.status.code(), Some(0), "stdout: {}\nstderr: {}", stdout(o), stderr(o));
    stdout(o)
}

fn train(dir: &Path, extra: &[&str]) -> Output {
    let mut args = vec!["train".to_string(), s(&dir.join("small.cnn")), "-o".into(), s(&dir.join("w.safetensors"))];
    args.extend(extra.iter().map(|a| a.to_string()));
    cnnc(&args.iter().map(String::as_str).collect::<Vec<_>>())
}

/// The test accuracy `cnnc train` reported, in %.
fn accuracy(out: &str) -> f64 {
    let line = out.lines().find(|l| l.starts_with("test accuracy ")).unwrap_or_else(|| panic!("{out}"));
    line["test accuracy ".len()..].split(' ').next().expect("a number").parse().expect("a number")
}

#[test]
fn training_writes_weights_checkpoint_and_curves_and_run_takes_raw_pixels() {
    let dir = scratch("writes");
    let out = ok(&train(&dir, &["--epochs", "3", "--batch", "64"]));
    assert!(
        out.starts_with("training `small` on digits (1,437 training and 360 test images of 1x8x8) for 3 epochs"),
        "{out}"
    );
    assert_eq!(out.lines().filter(|l| l.starts_with("epoch ")).count(), 3, "{out}");
    assert!(accuracy(&out) > 85.0, "{out}");
    let (weights, metadata) =
        load_safetensors_with_metadata_within(dir.join("w.safetensors"), u64::MAX).expect("weights");
    assert!(weights.keys().all(|k| !k.contains("momentum")), "no optimiser state in the weights: {:?}", weights.keys());
    assert_eq!(metadata.get("cnnc.normalize.scale").map(String::as_str), Some(&*(1.0f32 / 255.0).to_string()));
    let checkpoint = load_safetensors(dir.join("w.ckpt.safetensors")).expect("checkpoint");
    assert!(checkpoint.keys().any(|k| k.ends_with("momentum_buffer")), "the optimiser state is checkpointed");
    let svg = std::fs::read_to_string(dir.join("w.curves.svg")).expect("curves");
    assert!(svg.starts_with("<svg") && svg.contains("accuracy (%)"));

    // `cnnc run` on raw pixel values (0..255) of the first test images gives the trained
    // model's predictions: the normalisation comes from the weights' metadata.
    let digits = cnnc_data::open(&cnnc_data::Source::Digits, u64::MAX).expect("digits").test.expect("a test split");
    let n = 40;
    let x = Tensor::from_vec(&[n, 1, 8, 8], digits.images[..n * 64].to_vec()).expect("tensor");
    write_npy(dir.join("x.npy"), &x).expect("input");
    let o = cnnc(&[
        "run",
        &s(&dir.join("small.cnn")),
        "--weights",
        &s(&dir.join("w.safetensors")),
        "--input",
        &s(&dir.join("x.npy")),
        "-o",
        &s(&dir.join("y.npy")),
    ]);
    ok(&o);
    assert!(stderr(&o).contains("note: the input is normalised as"), "{}", stderr(&o));
    let y = cnnc_runtime::read_npy_f32(dir.join("y.npy")).expect("output");
    let cnnc_data::Targets::Classes { labels, .. } = &digits.targets else { panic!("class labels") };
    let right = (0..n)
        .filter(|&i| {
            let row = &y.data[i * 10..][..10];
            (0..10).max_by(|&a, &b| row[a].total_cmp(&row[b])) == Some(labels[i] as usize)
        })
        .count();
    assert!(right as f64 >= 0.8 * n as f64, "{right} of {n} right on raw pixels");
    let raw = cnnc(&[
        "run",
        &s(&dir.join("small.cnn")),
        "--weights",
        &s(&dir.join("w.safetensors")),
        "--input",
        &s(&dir.join("x.npy")),
        "--no-normalize",
    ]);
    assert!(!stderr(&raw).contains("normalised"), "{}", stderr(&raw));
}

#[test]
fn the_same_seed_gives_the_same_weights_on_both_back_ends() {
    for backend in ["jit", "interp"] {
        let dir = scratch(&format!("seed-{backend}"));
        ok(&train(&dir, &["--epochs", "1", "--batch", "128", "--backend", backend]));
        let first = std::fs::read(dir.join("w.safetensors")).expect("weights");
        ok(&train(&dir, &["--epochs", "1", "--batch", "128", "--backend", backend]));
        assert!(first == std::fs::read(dir.join("w.safetensors")).expect("weights"), "{backend}: bit for bit");
        ok(&train(&dir, &["--epochs", "1", "--batch", "128", "--backend", backend, "--seed", "1"]));
        assert!(first != std::fs::read(dir.join("w.safetensors")).expect("weights"), "{backend}: another seed");
    }
}

#[test]
fn ctrl_c_writes_a_checkpoint_and_resume_finishes_the_run() {
    let dir = scratch("interrupt");
    let mut child = Command::new(env!("CARGO_BIN_EXE_cnnc"))
        .current_dir(crate::common::root())
        .args([
            "train",
            &s(&dir.join("small.cnn")),
            "-o",
            &s(&dir.join("w.safetensors")),
            "--epochs",
            "1000",
            "--batch",
            "256",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("cnnc runs");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    // After the first epoch's line, interrupt.
    let first = lines.find(|l| l.as_ref().is_ok_and(|l| l.starts_with("epoch "))).expect("an epoch").expect("text");
    assert!(first.starts_with("epoch    1/1000"), "{first}");
    let status = Command::new("kill").args(["-INT", &child.id().to_string()]).status().expect("kill");
    assert!(status.success());
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    let status = child.wait().expect("exits");
    assert_eq!(status.code(), Some(130), "{rest:?}");
    let message = rest.iter().find(|l| l.starts_with("interrupted at epoch ")).unwrap_or_else(|| panic!("{rest:?}"));
    assert!(message.contains("continue with `--resume"), "{message}");
    assert!(!dir.join("w.safetensors").exists(), "no final weights from an interrupted run");

    let out = ok(&train(&dir, &["--epochs", "3", "--batch", "256", "--resume", &s(&dir.join("w.ckpt.safetensors"))]));
    assert!(out.contains("epoch 3/3"), "{out}");
    assert!(dir.join("w.safetensors").exists());
    // Other settings than the checkpoint's are refused.
    let o = train(&dir, &["--epochs", "4", "--batch", "64", "--resume", &s(&dir.join("w.ckpt.safetensors"))]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("was made with other settings"), "{}", stderr(&o));
}

#[test]
fn a_non_finite_loss_stops_with_the_epoch_and_step() {
    let dir = scratch("nan");
    let o = train(&dir, &["--epochs", "2", "--lr", "1e30", "--schedule", "constant"]);
    assert_eq!(o.status.code(), Some(1), "{}{}", stdout(&o), stderr(&o));
    let err = stderr(&o);
    assert!(err.contains("error: the loss became ") && err.contains(" at epoch 1, step "), "{err}");
    assert!(err.contains("lower the learning rate"), "{err}");
}

#[test]
fn freeze_keeps_a_layer_and_init_from_reports_what_it_loaded() {
    let dir = scratch("freeze");
    ok(&cnnc(&["init", &s(&dir.join("small.cnn")), "--seed", "0", "-o", &s(&dir.join("init.safetensors"))]));
    ok(&train(&dir, &["--epochs", "1", "--freeze", "conv1"]));
    let (init, trained) =
        (load_safetensors(dir.join("init.safetensors")).unwrap(), load_safetensors(dir.join("w.safetensors")).unwrap());
    assert_eq!(init["conv1.weight"], trained["conv1.weight"], "frozen");
    assert_ne!(init["fc.weight"], trained["fc.weight"], "trained");
    let o = train(&dir, &["--epochs", "1", "--freeze", "conv2"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("--freeze `conv2`: model `small` has no layer `conv2`"), "{}", stderr(&o));

    // Transfer: a model with another head takes the features from the trained weights.
    std::fs::write(dir.join("five.cnn"), SMALL.replace("classes = 10", "classes = 5")).unwrap();
    std::fs::copy(dir.join("w.safetensors"), dir.join("pretrained.safetensors")).unwrap();
    let o = cnnc(&[
        "train",
        &s(&dir.join("five.cnn")),
        "--init-from",
        &s(&dir.join("pretrained.safetensors")),
        "--epochs",
        "1",
        "-o",
        &s(&dir.join("five.safetensors")),
        "--data",
        "digits",
    ]);
    // Digits have 10 classes; a 5-class head cannot take them.
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("10"), "{}", stderr(&o));
    // The same model fine-tuned from the trained weights, its features frozen: every tensor
    // is loaded, and the frozen ones stay as loaded.
    let tuned = dir.join("tuned.safetensors");
    let o = cnnc(&[
        "train",
        &s(&dir.join("small.cnn")),
        "--init-from",
        &s(&dir.join("pretrained.safetensors")),
        "--freeze",
        "conv1,bn1",
        "--epochs",
        "1",
        "-o",
        &s(&tuned),
    ]);
    ok(&o);
    assert!(stderr(&o).contains("tensors loaded (bn1.bias, bn1.running_mean"), "{}", stderr(&o));
    let (pretrained, tuned) =
        (load_safetensors(dir.join("pretrained.safetensors")).unwrap(), load_safetensors(&tuned).unwrap());
    assert_eq!(pretrained["conv1.weight"], tuned["conv1.weight"]);
    assert_eq!(pretrained["bn1.weight"], tuned["bn1.weight"]);
    assert_ne!(pretrained["fc.weight"], tuned["fc.weight"]);
}

#[test]
fn bad_data_is_an_error_before_training() {
    let dir = scratch("bad-data");
    let o = train(&dir, &["--data", &s(&dir.join("nowhere"))]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("nowhere"), "{}", stderr(&o));
    // A model for 28x28 images on the 8x8 digits.
    std::fs::write(dir.join("mnist.cnn"), SMALL.replace("[1, 8, 8]", "[1, 28, 28]")).unwrap();
    let o = cnnc(&["train", &s(&dir.join("mnist.cnn")), "-o", &s(&dir.join("m.safetensors"))]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("1x8x8") && stderr(&o).contains("--shape 1x8x8"), "{}", stderr(&o));
    assert!(!stdout(&o).contains("epoch"), "nothing trained");
}
