//! `cnnc bench` through the built binary: the JSON's shape and its consistency (the layers'
//! times add up to about the whole, products run at a positive rate), the table, the peak's
//! cache (measured once, a corrupt file measured again), training steps, and bad arguments.
//! Every run uses a cache directory of its own (`CNNC_CACHE_DIR`), never the user's.

use crate::common::{root, stderr, stdout};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const LENET: &str = "examples/lenet5.cnn";

fn cache(test: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("cnnc-bench").join(test);
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// `cnnc` with `CNNC_CACHE_DIR` set to `cache`.
fn bench(cache: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cnnc"))
        .arg("bench")
        .args(args)
        .env("CNNC_CACHE_DIR", cache)
        .current_dir(root())
        .output()
        .expect("cnnc runs")
}

fn json(o: &Output) -> Value {
    assert_eq!(o.status.code(), Some(0), "{}{}", stdout(o), stderr(o));
    let text = stdout(o);
    assert_eq!(text.lines().count(), 1, "one line: {text}");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"))
}

fn num(v: &Value, key: &str) -> f64 {
    v[key].as_f64().unwrap_or_else(|| panic!("`{key}` is not a number in {v}"))
}

/// The issue's fields with their types, and the figures consistent with each other.
fn check_report(v: &Value, batch: u64) {
    assert!(num(v, "compile_ms") > 0.0, "{v}");
    assert_eq!(v["batch"].as_u64(), Some(batch), "{v}");
    let whole = num(v, "median_ms");
    assert!(whole > 0.0 && num(v, "peak_gflops") > 0.0, "{v}");
    let layers = v["layers"].as_array().expect("layers is a list");
    assert!(!layers.is_empty(), "{v}");
    // The fastest run is no slower than the median one.
    assert!(num(v, "min_ms") > 0.0 && num(v, "min_ms") <= whole, "{v}");
    for l in layers {
        assert!(l["name"].is_string() && num(l, "median_ms") >= 0.0 && num(l, "gflops") >= 0.0, "{l}");
        assert!(num(l, "min_ms") >= 0.0 && num(l, "min_ms") <= num(l, "median_ms"), "{l}");
        // A layer with products runs at a positive rate, never above the measured peak by much.
        if num(l, "flops") > 0.0 {
            assert!(num(l, "gflops") > 0.0, "{l}");
            assert!(num(l, "gflops") < 2.0 * num(v, "peak_gflops"), "{l} against {v}");
        }
    }
    // The layers are timed one by one in separate runs: their sum is near the whole run
    // (generously: a shared machine, a few runs).
    let sum: f64 = layers.iter().map(|l| num(l, "median_ms")).sum();
    assert!(sum < 3.0 * whole + 1.0 && sum > whole / 3.0 - 1.0, "layers sum {sum} ms, whole {whole} ms: {v}");
    assert!(layers.iter().any(|l| num(l, "gflops") > 0.0), "{v}");
    // What other processes took while timing: unknown (short runs) or a share of the CPUs.
    assert!(v["others_pct"].is_null() || (0.0..=100.0).contains(&num(v, "others_pct")), "{v}");
    assert!(num(v, "waited_s") >= 0.0, "{v}");
}

#[test]
fn json_has_the_issues_shape_and_adds_up() {
    let dir = cache("json");
    let o = bench(&dir, &[LENET, "--batch", "3", "--iters", "5", "--json"]);
    let v = json(&o);
    check_report(&v, 3);
    // The issue's fields come first, in its order (each key's first appearance is the top
    // level's: the layers come after the other four).
    let text = stdout(&o);
    let at: Vec<usize> = ["compile_ms", "batch", "median_ms", "peak_gflops", "layers"]
        .iter()
        .map(|k| text.find(&format!("\"{k}\":")).unwrap_or_else(|| panic!("{k}: {text}")))
        .collect();
    assert!(text.starts_with("{\"compile_ms\":") && at.windows(2).all(|w| w[0] < w[1]), "{text}");
    assert_eq!(
        (v["model"].as_str(), v["rounds"].as_u64(), v["train"].as_bool()),
        (Some("lenet5"), Some(5), Some(false))
    );
    let names: Vec<&str> = v["layers"].as_array().unwrap().iter().map(|l| l["name"].as_str().unwrap()).collect();
    assert!(names.contains(&"c1") && names.contains(&"output"), "{names:?}");
    assert_eq!(v["peak"]["source"].as_str(), Some("measured"), "{v}");
    // LeNet-5's maps at batch 3 fit the caches many times over: every node on the whole batch.
    assert_eq!(v["depth_first"].as_u64(), Some(0), "{v}");
    let compile = &v["compile"];
    assert!(compile["functions"].as_u64().is_some_and(|n| n > 0) && num(compile, "codegen_ms") > 0.0, "{v}");
    assert!(compile["shared_kernels"].as_u64().is_some(), "{v}");
    assert!(num(compile, "lower_ms") + num(compile, "codegen_ms") <= num(&v, "compile_ms"), "{v}");
    // The peak is cached: the second run reads it, the same number, keyed by threads.
    // Waiting for a quiet machine takes at least one look (half a second) and at most about
    // the bound.
    let waited = json(&bench(&dir, &[LENET, "--iters", "2", "--wait-idle", "0", "--json"]));
    assert!((0.4..5.0).contains(&num(&waited, "waited_s")), "{waited}");
    let again = json(&bench(&dir, &[LENET, "--iters", "2", "--json"]));
    assert_eq!(again["peak"]["source"].as_str(), Some("cached"), "{again}");
    assert_eq!(again["peak_gflops"], v["peak_gflops"]);
    let one = json(&bench(&dir, &[LENET, "--iters", "2", "--threads", "1", "--json"]));
    assert_eq!((one["threads"].as_u64(), one["peak"]["source"].as_str()), (Some(1), Some("measured")), "{one}");
    let file = std::fs::read_to_string(dir.join("peak.json")).expect("the cache file");
    let cached: Value = serde_json::from_str(&file).expect("the cache is JSON");
    assert_eq!(cached["peaks"].as_array().map(Vec::len), Some(2), "{file}");
}

#[test]
fn portable_mode_and_training_steps() {
    let dir = cache("modes");
    let v = json(&bench(&dir, &[LENET, "--mode", "portable", "--iters", "3", "--json"]));
    check_report(&v, 1);
    assert_eq!(v["mode"].as_str(), Some("portable"));
    assert!(v["peak"]["isa"].as_str().is_some_and(|i| i.contains("128-bit")), "{v}");
    // A training step: forward, backward and update nodes, the backward convolutions with
    // products of their own.
    let v = json(&bench(&dir, &[LENET, "--train", "--batch", "4", "--iters", "3", "--json"]));
    check_report(&v, 4);
    assert_eq!(v["train"].as_bool(), Some(true));
    let ops: Vec<&str> = v["layers"].as_array().unwrap().iter().map(|l| l["op"].as_str().unwrap()).collect();
    assert!(ops.iter().any(|o| o.contains("backward")), "{ops:?}");
    assert!(ops.iter().any(|o| o.contains("sgd") || o.contains("update")), "{ops:?}");
}

/// All-CNN-C's 3x3 layers run as Winograd (its 96-channel layer at 32 x 32 on 4x4 tiles), none
/// with `--no-winograd`.
#[test]
fn winograd_layers_are_named_and_can_be_turned_off() {
    let dir = cache("winograd");
    let codes = |args: &[&str]| -> Vec<String> {
        let v = json(&bench(&dir, args));
        v["layers"].as_array().unwrap().iter().filter_map(|l| l["lowering"].as_str().map(String::from)).collect()
    };
    let with = codes(&["examples/allcnnc.cnn", "--iters", "1", "--json"]);
    assert!(with.iter().any(|c| c == "winograd4x4") && with.iter().any(|c| c == "winograd2x2"), "{with:?}");
    let without = codes(&["examples/allcnnc.cnn", "--iters", "1", "--json", "--no-winograd"]);
    assert!(!without.is_empty() && without.iter().all(|c| !c.starts_with("winograd")), "{without:?}");
}

#[test]
fn the_table_names_every_layer_and_the_whole() {
    let dir = cache("table");
    let o = bench(&dir, &[LENET, "--iters", "3"]);
    let out = stdout(&o);
    assert_eq!(o.status.code(), Some(0), "{out}{}", stderr(&o));
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines[0].starts_with("model lenet5, inference, batch 1, "), "{out}");
    assert!(lines[1].starts_with("compile: ") && lines[1].contains(" ms (JIT: setup "), "{out}");
    assert!(lines[1].contains(" functions on 1 thread"), "a small program compiles on one: {out}");
    assert!(
        lines[2].starts_with("peak: ") && lines[2].contains("GFLOP/s") && lines[2].contains("measured now"),
        "{out}"
    );
    let header = lines.iter().position(|l| l.starts_with("layer ")).expect("a header");
    assert!(lines[header].ends_with("% peak"), "{out}");
    let c1 = lines.iter().find(|l| l.starts_with("c1 ")).expect("a row for c1");
    assert!(c1.contains("fused_conv") && c1.ends_with('%'), "{c1}");
    let pool = lines.iter().find(|l| l.starts_with("s2 ")).expect("a row for s2");
    assert!(pool.ends_with('-'), "no products, no rate: {pool}");
    assert!(lines.last().unwrap().starts_with("model: ") && out.contains("median of 3 runs (layers sum "), "{out}");
    assert!(bench(&dir, &[LENET, "--iters", "1"]).stdout.windows(6).any(|w| w == b"cached"), "cached the second time");
}

#[test]
fn a_corrupt_or_unwritable_cache_is_measured_again_not_an_error() {
    let dir = cache("corrupt");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("peak.json"), "{\"version\": 1, \"peaks\": [tru").unwrap();
    let v = json(&bench(&dir, &[LENET, "--iters", "1", "--json"]));
    assert_eq!(v["peak"]["source"].as_str(), Some("measured"), "{v}");
    let again = json(&bench(&dir, &[LENET, "--iters", "1", "--json"]));
    assert_eq!(again["peak"]["source"].as_str(), Some("cached"), "rewritten whole: {again}");
    // A file where the directory should be: measured, with a note, and the report still out.
    let blocked = cache("blocked");
    std::fs::create_dir_all(blocked.parent().unwrap()).unwrap();
    std::fs::write(&blocked, "not a directory").unwrap();
    let o = bench(&blocked, &[LENET, "--iters", "1", "--json"]);
    assert!(stderr(&o).contains("note: cannot write the peak cache"), "{}", stderr(&o));
    assert_eq!(json(&o)["peak"]["source"].as_str(), Some("measured"));
    std::fs::remove_file(&blocked).unwrap();
}

#[test]
fn bad_arguments_are_usage_errors() {
    let dir = cache("bad");
    for (args, needle) in [
        (&[LENET, "--batch", "0"][..], "--batch"),
        (&[LENET, "--threads", "0"][..], "--threads"),
        (&[LENET, "--iters", "0"][..], "--iters"),
        (&[LENET, "--mode", "gpu"][..], "possible values: portable, native"),
        (&["examples/nope.cnn"][..], "nope.cnn"),
        (&[][..], "`cnnc bench` needs an argument"),
    ] {
        let o = bench(&dir, args);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", stderr(&o));
        assert!(stderr(&o).contains(needle), "{args:?}: {needle:?} not in {}", stderr(&o));
        assert!(stdout(&o).is_empty(), "{args:?}");
    }
    // A source with errors is the source's problem: exit 1 with the diagnostic.
    let src = cache("bad-source");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("m.cnn"), "model m {\n    input x: [1, 8, 8]\n    x -> conv(4, k=3) -> nosuch\n}\n")
        .unwrap();
    let o = bench(&dir, &[&src.join("m.cnn").display().to_string()]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("error["), "{}", stderr(&o));
    // Batch norm in training mode needs more than one value per channel.
    std::fs::write(
        src.join("bn.cnn"),
        "model bn {\n    input x: [4, 1, 1]\n    x -> conv(4, k=1) -> bn -> flatten -> fc(3)\n}\n",
    )
    .unwrap();
    let o = bench(&dir, &[&src.join("bn.cnn").display().to_string(), "--train", "--batch", "1"]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("no variance"), "{}", stderr(&o));
}
