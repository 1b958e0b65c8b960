//! End-to-end tests of the `cnnc` binary: exit codes, rendered diagnostics, and the summary
//! numbers of the shipped examples against the figures their papers and torchvision give.

use crate::common::{cnnc, root, stderr, stdout};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// A source written to a scratch file named `name`; returns its path.
fn scratch(name: &str, text: &str) -> String {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("cnnc-cli");
    std::fs::create_dir_all(&dir).expect("scratch dir");
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write scratch file");
    path.display().to_string()
}

fn assert_clean_failure(o: &Output, code: i32) {
    let err = stderr(o);
    assert_eq!(o.status.code(), Some(code), "stdout: {}\nstderr: {err}", stdout(o));
    assert!(!err.contains("panicked"), "{err}");
    assert!(!err.contains('\x1b'), "no colour unless asked: {err:?}");
}

/// The `.cnn` file defining `model`: `examples/<model>.cnn`, or any example that defines it.
fn example_defining(model: &str) -> Option<PathBuf> {
    let direct = root().join(format!("examples/{model}.cnn"));
    if direct.exists() {
        return Some(direct);
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(root().join("examples"))
        .expect("examples/ exists")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "cnn"))
        .collect();
    files.sort();
    files.into_iter().find(|p| {
        std::fs::read_to_string(p)
            .is_ok_and(|t| t.contains(&format!("model {model}(")) || t.contains(&format!("model {model} ")))
    })
}

fn summary_json(file: &Path, extra: &[&str]) -> Value {
    let file = file.display().to_string();
    let mut args = vec!["summary", file.as_str(), "--json"];
    args.extend_from_slice(extra);
    let o = cnnc(&args);
    assert_eq!(o.status.code(), Some(0), "{file}: {}", stderr(&o));
    serde_json::from_str(&stdout(&o)).expect("valid JSON")
}

/// Trainable parameters (torchvision and the papers) and, where pinned, MACs at 224x224.
const EXPECTED: &[(&str, u64, Option<u64>)] = &[
    ("lenet5", 61_706, None),
    ("alexnet", 61_100_840, None),
    ("vgg11", 132_863_336, None),
    ("vgg13", 133_047_848, None),
    ("vgg16", 138_357_544, None),
    ("vgg19", 143_667_240, None),
    ("resnet18", 11_689_512, None),
    ("resnet34", 21_797_672, None),
    ("resnet50", 25_557_032, Some(4_089_184_256)),
    ("resnet101", 44_549_160, None),
    ("resnet152", 60_192_808, None),
];

#[test]
fn summary_json_matches_published_parameter_counts() {
    let mut missing = Vec::new();
    for &(model, params, macs) in EXPECTED {
        let Some(file) = example_defining(model) else {
            missing.push(model);
            continue;
        };
        let json = summary_json(&file, &["--model", model]);
        assert_eq!(json["model"], model);
        assert_eq!(json["params"].as_u64(), Some(params), "{model} params");
        if let Some(macs) = macs {
            assert_eq!(json["macs"].as_u64(), Some(macs), "{model} MACs");
        }
        // The totals are the sums of the rows.
        let layers = json["layers"].as_array().expect("layers");
        let sum = |key: &str| layers.iter().map(|l| l[key].as_u64().expect("integer")).sum::<u64>();
        assert_eq!(sum("params"), params, "{model}");
        assert_eq!(Some(sum("macs")), json["macs"].as_u64(), "{model}");
        // "weights" lists every tensor; trainable ones sum to "params" (buffers are extra).
        let trainable: u64 = layers
            .iter()
            .flat_map(|l| l["weights"].as_object().expect("weights").iter())
            .filter(|(name, _)| !name.ends_with(".running_mean") && !name.ends_with(".running_var"))
            .map(|(_, dims)| dims.as_array().expect("dims").iter().map(|d| d.as_u64().expect("dim")).product::<u64>())
            .sum();
        assert_eq!(trainable, params, "{model}");
        // "buffers" totals the running statistics, the rest of "weights".
        let buffers: u64 = layers
            .iter()
            .flat_map(|l| l["weights"].as_object().expect("weights").iter())
            .filter(|(name, _)| name.ends_with(".running_mean") || name.ends_with(".running_var"))
            .map(|(_, dims)| dims.as_array().expect("dims").iter().map(|d| d.as_u64().expect("dim")).product::<u64>())
            .sum();
        assert_eq!(json["buffers"].as_u64(), Some(buffers), "{model} buffers");
    }
    // The examples the built-in demo embeds must be there; others may still be on their way.
    for needed in ["lenet5", "resnet18", "resnet50"] {
        assert!(!missing.contains(&needed), "examples/{needed}.cnn is missing");
    }
    if !missing.is_empty() {
        eprintln!("skipped (no example defines them yet): {missing:?}");
    }
}

#[test]
fn summary_json_has_the_documented_layout() {
    let json = summary_json(&root().join("examples/resnet50.cnn"), &[]);
    let keys: Vec<&str> = json.as_object().expect("object").keys().map(String::as_str).collect();
    // serde_json sorts the keys of a parsed object; the raw text's order is checked below.
    assert_eq!(
        keys,
        [
            "buffers",
            "frozen",
            "fused",
            "input",
            "layers",
            "macs",
            "model",
            "params",
            "unplanned_bytes",
            "workspace_bytes"
        ]
    );
    assert_eq!(json["input"], serde_json::json!([3, 224, 224]));
    let layers = json["layers"].as_array().expect("layers");
    let conv1 = &layers[0];
    assert_eq!(conv1["name"], "conv1");
    assert_eq!(conv1["op"], "conv");
    assert_eq!(conv1["output"], serde_json::json!([64, 112, 112]));
    assert_eq!(conv1["params"], 64 * 3 * 7 * 7);
    assert_eq!(conv1["macs"], 118_013_952);
    assert_eq!(conv1["receptive_field"], 7);
    assert_eq!(conv1["weights"], serde_json::json!({"conv1.weight": [64, 3, 7, 7]}));
    let bn1 = &layers[1];
    assert_eq!(bn1["params"], 128);
    assert_eq!(
        bn1["weights"],
        serde_json::json!({"bn1.weight": [64], "bn1.bias": [64], "bn1.running_mean": [64], "bn1.running_var": [64]})
    );
    let fc = layers.last().expect("fc");
    assert_eq!((fc["name"].as_str(), fc["op"].as_str()), (Some("fc"), Some("fc")));
    assert_eq!(fc["output"], serde_json::json!([1000]));
    // The raw text keeps PyTorch's state_dict order inside "weights".
    let o = cnnc(&["summary", "examples/resnet50.cnn", "--json"]);
    let text = stdout(&o);
    assert!(text.starts_with(
        r#"{"model":"resnet50","input":[3,224,224],"params":25557032,"frozen":0,"buffers":53120,"macs":4089184256,"layers":["#
    ));
    assert!(text.contains(r#""bn1.weight":[64],"bn1.bias":[64],"bn1.running_mean":[64],"bn1.running_var":[64]"#));
    // The optimisation pipeline's three keys come last, after the layers.
    assert!(text.contains(r#""fc.bias":[1000]}}],"fused":[["conv1","bn1","relu1"],"#), "{text}");
    assert!(text.contains(r#"]],"workspace_bytes":"#) && text.contains(r#","unplanned_bytes":"#), "{text}");
    assert!(text.ends_with("}\n"));
}

/// The transfer-learning recipe of `docs/language.md`: AlexNet with its features frozen.
#[test]
fn frozen_features_are_counted_and_printed() {
    let alexnet = std::fs::read_to_string(root().join("examples/alexnet.cnn")).expect("alexnet.cnn");
    let frozen = alexnet.replace("    input x: [3, 224, 224]\n", "    input x: [3, 224, 224]\n    freeze features\n");
    assert_ne!(frozen, alexnet, "the example's input line moved");
    let file = scratch("alexnet_frozen.cnn", &frozen);
    let json = summary_json(Path::new(&file), &["--set", "classes=10"]);
    assert_eq!((json["params"].as_u64(), json["frozen"].as_u64()), (Some(57_044_810), Some(2_469_696)));
    let o = cnnc(&["summary", &file, "--set", "classes=10"]);
    let table = stdout(&o);
    assert!(
        table.contains("\nparameters:  57,044,810 (54,575,114 trainable, 2,469,696 frozen), 0 buffers\n"),
        "{table}"
    );
    let o = cnnc(&["ir", &file]);
    let ir = stdout(&o);
    let second = ir.lines().nth(1).unwrap_or_default();
    assert!(second.starts_with("  frozen: features.0.bias, features.0.weight, features.10.bias,"), "{ir}");
}

#[test]
fn shape_flag_changes_the_shapes_not_the_parameters() {
    let json = summary_json(&root().join("examples/resnet50.cnn"), &["--shape", "3x64x64"]);
    assert_eq!(json["input"], serde_json::json!([3, 64, 64]));
    let layers = json["layers"].as_array().expect("layers");
    assert_eq!(layers[0]["output"], serde_json::json!([64, 32, 32]));
    assert_eq!(layers.last().expect("fc")["output"], serde_json::json!([1000]));
    assert_eq!(json["params"], 25_557_032);
    assert_eq!(layers[0]["macs"], 32 * 32 * 64 * 3 * 49);

    let o = cnnc(&["check", "examples/resnet50.cnn", "--shape", "3x64x64"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(stdout(&o), "ok: model `resnet50`: 25,557,032 parameters, output [1000]\n");
    let o = cnnc(&["ir", "examples/resnet50.cnn", "--shape", "3x64x64"]);
    assert!(stdout(&o).contains("-> [64, 32, 32]  // conv1\n"), "{}", stdout(&o));
}

#[test]
fn bad_shape_arguments_are_usage_errors() {
    for (bad, says) in [
        ("3x0x64", "dimension 2 of `3x0x64` is 0"),
        ("3x64", "has 2 dimensions"),
        ("abc", "`abc` in `abc` is not a whole number"),
        ("99999999999999999999999x1x1", "is too large"),
        ("", "the shape is empty"),
    ] {
        let o = cnnc(&["summary", "examples/resnet50.cnn", "--shape", bad]);
        assert_clean_failure(&o, 2);
        assert!(stderr(&o).contains(says), "{bad}: {}", stderr(&o));
        assert!(stdout(&o).is_empty());
    }
    // Well-formed but wrong for the model: a diagnostic about the source, exit 1.
    let o = cnnc(&["summary", "examples/resnet50.cnn", "--shape", "784", "--color", "never"]);
    assert_clean_failure(&o, 1);
    assert!(stderr(&o).contains("error[E0210]"), "{}", stderr(&o));
    let o = cnnc(&["check", "examples/lenet5.cnn", "--shape", "1x16x16", "--color", "never"]);
    assert_clean_failure(&o, 1);
    assert!(stderr(&o).contains("error: could not compile `examples/lenet5.cnn`"), "{}", stderr(&o));
}

#[test]
fn check_passes_every_example() {
    let mut files: Vec<PathBuf> = std::fs::read_dir(root().join("examples"))
        .expect("examples/")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "cnn"))
        .collect();
    files.sort();
    assert!(files.len() >= 3, "{files:?}");
    for file in files {
        let o = cnnc(&["check", &file.display().to_string()]);
        assert_eq!(o.status.code(), Some(0), "{}: {}", file.display(), stderr(&o));
        let out = stdout(&o);
        assert!(!out.is_empty() && out.lines().all(|l| l.starts_with("ok: model `")), "{out}");
    }
    let o = cnnc(&["check", "examples/lenet5.cnn"]);
    assert_eq!(stdout(&o), "ok: model `lenet5`: 61,706 parameters, output [10]\n");
}

const SHAPE_ERROR: &str = "model tiny {\n    input x: [3, 5, 5]\n    x -> conv(8, k=7) -> relu\n}\n";

#[test]
fn check_renders_errors_and_exits_1() {
    let path = scratch("kernel.cnn", SHAPE_ERROR);
    let o = cnnc(&["check", &path, "--color", "never"]);
    assert_clean_failure(&o, 1);
    let err = stderr(&o);
    assert!(err.starts_with("error[E0300]: "), "{err}");
    assert!(err.contains(&format!("--> {path}:3:10")), "{err}");
    assert!(err.contains("x -> conv(8, k=7) -> relu"), "{err}");
    assert!(err.contains("^^^"), "{err}");
    assert!(err.contains("= note: "), "{err}");
    assert!(err.contains("= help: "), "{err}");
    assert!(err.ends_with(&format!("error: could not compile `{path}` due to 1 previous error\n")), "{err}");
    assert!(stdout(&o).is_empty());
    // The other commands stop on the same error.
    for cmd in ["summary", "ir", "dot"] {
        let o = cnnc(&[cmd, &path]);
        assert_clean_failure(&o, 1);
        assert!(stderr(&o).contains("error[E0300]"), "{cmd}");
    }
}

#[test]
fn syntax_errors_exit_1() {
    let path = scratch("syntax.cnn", "model m {\n    input x: [3, 8, 8]\n    x -> \n}\n");
    let o = cnnc(&["check", &path]);
    assert_clean_failure(&o, 1);
    assert!(stderr(&o).contains("error[E0100]"), "{}", stderr(&o));
}

#[test]
fn warnings_do_not_fail_the_check() {
    // A 3x3 window with stride 2 on 8 rows and 8 columns leaves the last of each unused: one
    // warning per axis.
    let path = scratch("stride.cnn", "model w {\n    input x: [1, 8, 8]\n    x -> conv(2, k=3, stride=2)\n}\n");
    let o = cnnc(&["check", &path]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(err.starts_with("warning[W0300]"), "{err}");
    assert!(err.ends_with(&format!("warning: `{path}` generated 2 warnings\n")), "{err}");
    assert_eq!(stdout(&o), "ok: model `w`: 20 parameters, output [2, 3, 3]\n");
}

#[test]
fn color_is_used_only_when_asked() {
    let path = scratch("color.cnn", SHAPE_ERROR);
    let o = cnnc(&["--color", "always", "check", &path]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("\x1b["), "{:?}", stderr(&o));
    // `auto` colours only a terminal, and the test's stderr is a pipe.
    let o = cnnc(&["check", &path, "--color", "auto"]);
    assert!(!stderr(&o).contains('\x1b'));
    let o = cnnc(&["check", &path, "--color", "sometimes"]);
    assert_clean_failure(&o, 2);
}

#[test]
fn every_model_of_a_file_is_checked() {
    let text = "model a { input x: [4]  x -> fc(2) }\nmodel b { input x: [1, 8, 8]  x -> conv(2, k=3) }\n";
    let path = scratch("two.cnn", text);
    let o = cnnc(&["check", &path]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(
        stdout(&o),
        "ok: model `a`: 10 parameters, output [2]\nok: model `b`: 20 parameters, output [2, 6, 6]\n"
    );
    let o = cnnc(&["check", &path, "--model", "b"]);
    assert_eq!(stdout(&o), "ok: model `b`: 20 parameters, output [2, 6, 6]\n");
    // Commands that need one model ask which, at the end of the file, showing the models.
    let o = cnnc(&["summary", &path]);
    assert_clean_failure(&o, 1);
    let err = stderr(&o);
    assert!(err.starts_with("error[E0211]: the file defines 2 models; choose one\n"), "{err}");
    assert!(err.contains(&format!("--> {path}:2:50\n")), "{err}");
    assert!(err.contains("^ which model?") && err.matches("a model of this file").count() == 2, "{err}");
    assert!(err.contains("= help: pass `--model NAME`, one of: a, b"), "{err}");
    // Every rejection carries a line and column, an empty file's too.
    let empty = scratch("empty.cnn", "");
    let o = cnnc(&["check", &empty]);
    assert_clean_failure(&o, 1);
    assert!(stderr(&o).contains(&format!("--> {empty}:1:1\n")), "{}", stderr(&o));
}

#[test]
fn io_problems_exit_2() {
    let o = cnnc(&["check", "no/such/file.cnn"]);
    assert_clean_failure(&o, 2);
    assert!(stderr(&o).starts_with("error: cannot read `no/such/file.cnn`"), "{}", stderr(&o));
    let o = cnnc(&["check", "examples"]);
    assert_clean_failure(&o, 2);
    let path = Path::new(env!("CARGO_TARGET_TMPDIR")).join("cnnc-cli-binary.cnn");
    std::fs::write(&path, [0xff, 0xfe, 0x00]).expect("write");
    let o = cnnc(&["check", &path.display().to_string()]);
    assert_clean_failure(&o, 2);
    assert!(stderr(&o).contains("is not UTF-8"), "{}", stderr(&o));
    let o = cnnc(&["frobnicate"]);
    assert_clean_failure(&o, 2);
    let o = cnnc(&["check"]);
    assert_clean_failure(&o, 2);
}

#[test]
fn summary_table_ir_and_dot() {
    let o = cnnc(&["summary", "examples/lenet5.cnn"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let table = stdout(&o);
    assert!(table.starts_with("model lenet5, input [1, 32, 32]\n"), "{table}");
    assert!(table.contains("parameters:  61,706 trainable, 0 buffers\n"), "{table}");
    let header = table.lines().find(|l| l.starts_with("name")).expect("header row");
    for column in ["op", "output shape", "params", "MACs", "receptive field"] {
        assert!(header.contains(column), "{header}");
    }
    let o = cnnc(&["summary", "examples/resnet50.cnn"]);
    let table = stdout(&o);
    assert!(table.contains("25,557,032 trainable, 53,120 buffers"), "{table}");
    assert!(table.contains("MACs:        4,089,184,256 per sample"), "{table}");

    let o = cnnc(&["ir", "examples/lenet5.cnn"]);
    assert_eq!(o.status.code(), Some(0));
    let ir = stdout(&o);
    assert!(ir.starts_with("graph lenet5\n  %0 = input -> [1, 32, 32]"), "{ir}");
    assert!(ir.trim_end().lines().last().is_some_and(|l| l.starts_with("  return %")), "{ir}");

    let o = cnnc(&["dot", "examples/lenet5.cnn"]);
    assert_eq!(o.status.code(), Some(0));
    let dot = stdout(&o);
    assert!(dot.starts_with("digraph \"lenet5\" {") || dot.starts_with("digraph lenet5 {"), "{dot}");
    assert!(dot.trim_end().ends_with('}'));
}

#[test]
fn explain_prints_the_section() {
    let o = cnnc(&["explain", "E0301"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let text = stdout(&o);
    assert!(text.starts_with("## E0301: "), "{text}");
    assert!(!text.contains("## E0302"), "{text}");
    let o = cnnc(&["explain", "E0399"]);
    assert_clean_failure(&o, 2);
    let err = stderr(&o);
    assert!(err.contains("`E0399` is not a cnnc diagnostic code; similar codes:"), "{err}");
    // Same-family codes come first.
    assert!(err.contains("similar codes:\n  E0300  kernel larger than the padded input\n"), "{err}");
    let o = cnnc(&["explain"]);
    assert_eq!(o.status.code(), Some(0));
    assert!(stdout(&o).contains("W0300"));
}

#[test]
fn demo_trains_the_digits_with_no_files_and_overwrites_nothing() {
    // Run from an empty directory: the demo reads nothing from disk, and by default writes into
    // a new `cnnc-demo` directory there (`cnnc-demo-2` the second time).
    let empty = Path::new(env!("CARGO_TARGET_TMPDIR")).join("cnnc-demo-cwd");
    let _ = std::fs::remove_dir_all(&empty);
    std::fs::create_dir_all(&empty).expect("dir");
    let demo = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_cnnc")).arg("demo").args(args).current_dir(&empty).output().expect("runs")
    };
    for dir in ["cnnc-demo", "cnnc-demo-2"] {
        let o = demo(&["--epochs", "1"]);
        assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
        let out = stdout(&o);
        assert!(out.contains("ok: model `digits`: 30,890 parameters, output [10]\n"), "{out}");
        assert!(out.contains("model digits, input [1, 8, 8]"), "{out}");
        assert!(out.contains("the JIT (native mode) compiled the training step") || out.contains("(portable mode)"));
        assert!(out.contains("for 1 epoch of batch 32"), "{out}");
        assert!(out.contains("test accuracy "), "{out}");
        assert!(out.contains(&format!("curves:  {dir}/digits.curves.svg")), "{out}");
        assert!(out.contains("\nJIT / interpreter "), "{out}");
        assert!(
            empty.join(dir).join("digits.safetensors").is_file() && empty.join(dir).join("digits.curves.svg").is_file()
        );
        assert!(stderr(&o).is_empty(), "no progress bar off a terminal: {}", stderr(&o));
    }
    // -o DIR: files already there are never overwritten.
    let o = demo(&["--epochs", "1", "-o", "cnnc-demo"]);
    assert_eq!(o.status.code(), Some(2), "{}", stdout(&o));
    let err = stderr(&o);
    assert!(
        err.contains("error: `cnnc-demo/digits.safetensors` exists already, and the demo overwrites nothing"),
        "{err}"
    );
    assert!(err.contains("help: pass another directory with `-o DIR`"), "{err}");
    std::fs::remove_dir_all(&empty).expect("cleaned");
}

#[test]
fn set_overrides_a_model_parameter() {
    let file = root().join("examples/resnet18.cnn");
    let json = summary_json(&file, &["--set", "classes=10", "--shape", "3x32x32"]);
    assert_eq!(json["layers"].as_array().unwrap().last().unwrap()["output"], serde_json::json!([10]));
    // 11,689,512 - (512 * 1000 + 1000) + (512 * 10 + 10)
    assert_eq!(json["params"], 11_181_642);
    let o = cnnc(&["check", file.to_str().unwrap(), "--set", "clases=10"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("did you mean `classes`?"), "{}", stderr(&o));
    let o = cnnc(&["check", file.to_str().unwrap(), "--set", "classes"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("expected NAME=VALUE"), "{}", stderr(&o));
}
