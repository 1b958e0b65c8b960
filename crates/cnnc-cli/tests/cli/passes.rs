//! `--passes` and `--train` through the built `cnnc` binary: `ir` after the passes with each
//! fused node's absorbed layers, `summary` with the fused groups and the memory plan (table and
//! JSON), `dot` with the fused groups as clusters, `run` on the optimised graph, and the errors
//! for bad pass lists.

use crate::common::{cnnc, root, stderr, stdout};
use cnnc_runtime::{Tensor, read_npy_f32};
use serde_json::Value;
use std::path::Path;

/// Exit 0; returns (stdout, stderr).
fn ok(args: &[&str]) -> (String, String) {
    let o = cnnc(args);
    assert_eq!(o.status.code(), Some(0), "{args:?}\nstdout: {}\nstderr: {}", stdout(&o), stderr(&o));
    (stdout(&o), stderr(&o))
}

/// Nodes of a printed IR whose op is `op` (`  %5 = bn(%4) -> ...`).
fn count_op(ir: &str, op: &str) -> usize {
    ir.lines().filter(|l| l.split_once(" = ").is_some_and(|(_, rest)| rest.starts_with(&format!("{op}(")))).count()
}

const VALID: &str = "valid passes: all, none, dce, remove-dropout, cse, fold-bn, to-gemm, fuse-epilogue, fuse-backward, concat-in-place, layout";

#[test]
fn ir_without_passes_is_the_lowered_graph() {
    let (plain, err) = ok(&["ir", "examples/resnet50.cnn"]);
    assert!(err.is_empty(), "{err}");
    assert!(plain.starts_with("graph resnet50\n  %0 = input -> [3, 224, 224]  // x\n"), "{plain}");
    assert_eq!(count_op(&plain, "bn"), 53);
    assert!(!plain.contains(" <- "), "nothing absorbed before the passes");
    let (none, err) = ok(&["ir", "examples/resnet50.cnn", "--passes", "none"]);
    assert_eq!((none.as_str(), err.as_str()), (plain.as_str(), ""));
    // --train alone changes nothing, and says so.
    let (train, err) = ok(&["ir", "examples/resnet50.cnn", "--train"]);
    assert_eq!(train, plain);
    assert!(err.contains("--train changes nothing without --passes"), "{err}");
}

#[test]
fn ir_after_every_pass_lists_what_each_fused_node_absorbed() {
    let (ir, err) = ok(&["ir", "examples/resnet50.cnn", "--passes", "all"]);
    assert!(ir.starts_with("graph resnet50\n"), "stdout stays plain IR text: {ir}");
    assert!(ir.trim_end().lines().last().is_some_and(|l| l.starts_with("  return %")), "{ir}");
    // A bottleneck's last 1x1 conv took its batch norm, the residual add and the ReLU.
    let fused = ir
        .lines()
        .find(|l| l.ends_with("// layer1.0.conv3 <- layer1.0.bn3, layer1.0.add1, layer1.0.relu3"))
        .unwrap_or_else(|| panic!("no fused layer1.0.conv3 in\n{ir}"));
    assert!(fused.contains("= fused_gemm(") && fused.contains("residual: true, act: relu"), "{fused}");
    assert!(
        ir.contains(
            "= fused_conv(%0) {out: 64, k: 7, stride: 2, pad: 3, act: relu} -> [64, 112, 112]  // conv1 <- bn1, relu1\n"
        ),
        "{ir}"
    );
    assert_eq!(count_op(&ir, "bn"), 0, "every batch norm folded");
    assert_eq!(count_op(&ir, "add"), 0, "every residual add fused");
    assert_eq!(ir.lines().filter(|l| l.starts_with("  %")).count(), 60, "176 nodes before");
    assert!(err.starts_with("note: passes (inference): dce, remove-dropout, cse, fold-bn x53, "), "{err}");
    assert!(err.contains("; 176 -> 60 nodes, 53 fused groups\n"), "{err}");
    // Order on the command line does not matter; only the named passes run.
    let (only, err) = ok(&["ir", "examples/resnet50.cnn", "--passes", "fuse-epilogue, fold-bn"]);
    assert!(only.contains("// layer1.0.conv3 <- layer1.0.bn3, layer1.0.add1, layer1.0.relu3\n"), "{only}");
    assert_eq!((count_op(&only, "gemm") + count_op(&only, "fused_gemm"), count_op(&only, "reorder")), (0, 0));
    assert!(err.starts_with("note: passes (inference): fold-bn x53, fuse-epilogue x"), "{err}");
}

#[test]
fn training_mode_keeps_batch_norms() {
    let (ir, err) = ok(&["ir", "examples/resnet50.cnn", "--passes", "all", "--train"]);
    assert!(ir.starts_with("graph resnet50\n"), "{ir}");
    // The training step: batch norms normalise with batch statistics (nothing folded), and
    // every layer has its backward ops.
    assert_eq!(count_op(&ir, "bn"), 0, "{ir}");
    assert_eq!(count_op(&ir, "bn_normalize"), 53, "fold-bn is skipped in training");
    assert_eq!(count_op(&ir, "bn_backward_data"), 53, "{ir}");
    assert_eq!(count_op(&ir, "loss"), 1, "{ir}");
    assert!(err.contains("note: passes (training): dce, cse, to-gemm"), "{err}");
    assert!(err.contains("--train skips the inference-only passes remove-dropout, fold-bn"), "{err}");
    // Asking for fold-bn alone in training: nothing runs, and it says why.
    let (_, err) = ok(&["ir", "examples/resnet50.cnn", "--passes", "fold-bn", "--train"]);
    assert!(err.contains("none ran") && err.contains("skips the inference-only pass fold-bn"), "{err}");
}

#[test]
fn bad_pass_lists_exit_2_naming_the_valid_passes() {
    for (list, says) in [
        ("bogus", "unknown pass `bogus`; "),
        ("fold_bn", "unknown pass `fold_bn` (did you mean `fold-bn`?); "),
        ("dce,,cse", "empty pass name in the pass list; "),
        ("all,cse", "`all` cannot be combined with other pass names"),
    ] {
        for cmd in ["ir", "summary", "dot"] {
            let o = cnnc(&[cmd, "examples/lenet5.cnn", "--passes", list]);
            let err = stderr(&o);
            assert_eq!(o.status.code(), Some(2), "{cmd} --passes {list}: {err}");
            assert!(err.contains(says), "{cmd} --passes {list}: {err}");
            if list != "all,cse" {
                assert!(err.contains(VALID), "{err}");
            }
            assert!(stdout(&o).is_empty() && !err.contains("panicked"), "{err}");
        }
    }
    let o = cnnc(&["run", "examples/lenet5.cnn", "--input", "x.npy", "--passes", "bogus"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains(VALID), "{}", stderr(&o));
    // The help lists every pass with what it does.
    let (help, _) = ok(&["ir", "--help"]);
    assert!(help.contains("fold-bn") && help.contains("fold batch norm into the preceding conv or fc"), "{help}");
}

fn summary_json(args: &[&str]) -> Value {
    let mut all = vec!["summary", "examples/resnet50.cnn", "--json"];
    all.extend_from_slice(args);
    let (out, err) = ok(&all);
    assert!(err.is_empty(), "{err}");
    serde_json::from_str(&out).expect("valid JSON")
}

#[test]
fn summary_json_reports_fusion_and_the_memory_plan() {
    let json = summary_json(&[]);
    // The published numbers are the source model's, untouched by the passes.
    assert_eq!(json["params"], 25_557_032);
    assert_eq!(json["macs"], 4_089_184_256u64);
    assert_eq!(json["layers"].as_array().expect("layers").len(), 175, "one row per source layer");
    let workspace = json["workspace_bytes"].as_u64().expect("workspace_bytes");
    let unplanned = json["unplanned_bytes"].as_u64().expect("unplanned_bytes");
    assert!(0 < workspace && workspace < unplanned / 2, "{workspace} of {unplanned}");
    let fused: Vec<Vec<String>> = serde_json::from_value(json["fused"].clone()).expect("lists of names");
    assert_eq!(fused.len(), 53);
    assert_eq!(fused[0], ["conv1", "bn1", "relu1"]);
    assert!(
        fused.contains(
            &["layer1.0.conv3", "layer1.0.bn3", "layer1.0.add1", "layer1.0.relu3"].map(String::from).to_vec()
        )
    );
    // Every absorbed layer is a layer of the source, absorbed once.
    let layers: Vec<&str> = json["layers"].as_array().unwrap().iter().map(|l| l["name"].as_str().unwrap()).collect();
    let mut seen: Vec<&str> = fused.iter().flatten().map(String::as_str).collect();
    assert!(seen.iter().all(|n| layers.contains(n)), "{seen:?}");
    seen.sort();
    let count = seen.len();
    seen.dedup();
    assert_eq!(seen.len(), count, "a layer in two groups");

    // --passes none: no group, the plan of the source graph; --train: the backward pass too.
    let none = summary_json(&["--passes", "none"]);
    assert_eq!(none["fused"], serde_json::json!([]));
    assert!(none["unplanned_bytes"].as_u64().unwrap() > unplanned, "{none}");
    let train = summary_json(&["--train"]);
    assert_eq!(train["fused"], serde_json::json!([]), "nothing fuses past an unfolded batch norm");
    assert!(train["workspace_bytes"].as_u64().unwrap() > workspace, "{train}");
    assert_eq!(train["params"], 25_557_032);
}

#[test]
fn summary_table_has_a_fusion_section_and_a_memory_line() {
    let (table, err) = ok(&["summary", "examples/resnet50.cnn"]);
    assert!(err.is_empty(), "{err}");
    assert!(table.contains("\nparameters:  25,557,032 trainable, 53,120 buffers\n"), "{table}");
    let memory = table.lines().find(|l| l.starts_with("memory:      ")).expect("memory line");
    assert!(
        memory.contains(" workspace (planned) vs ")
            && memory.contains(" of intermediates (unplanned) at batch 1: ")
            && memory.ends_with('%'),
        "{memory}"
    );
    assert!(table.contains("\nfusion:      53 fused groups, 176 -> 60 nodes after 8 passes (inference):\n"), "{table}");
    assert!(table.contains("\n  conv1 <- bn1, relu1\n"), "{table}");
    assert!(table.ends_with("\n  layer4.2.conv3 <- layer4.2.bn3, layer4.2.add1, layer4.2.relu3\n"), "{table}");
    let (table, _) = ok(&["summary", "examples/resnet50.cnn", "--train"]);
    assert!(
        table.contains(
            "fusion:      no fused group, 176 -> 770 nodes after 7 passes (training; skipped remove-dropout, fold-bn)\n"
        ),
        "{table}"
    );
}

#[test]
fn dot_draws_fused_groups_as_clusters_of_the_source_graph() {
    let (plain, _) = ok(&["dot", "examples/resnet50.cnn"]);
    assert!(!plain.contains("subgraph cluster"), "no clusters without --passes");
    let (dot, err) = ok(&["dot", "examples/resnet50.cnn", "--passes", "all"]);
    assert!(err.starts_with("note: passes (inference): "), "{err}");
    assert!(dot.starts_with("digraph \"resnet50\" {") || dot.starts_with("digraph resnet50 {"), "{dot}");
    assert!(dot.trim_end().ends_with('}'));
    assert_eq!(dot.matches("subgraph cluster").count(), 53);
    assert!(dot.contains("label=\"fused: layer1.0.conv3\";"), "{dot}");
    // The source graph is drawn: its batch norms are still there, inside the clusters.
    assert!(dot.contains("[label=\"layer1.0.bn3\\nbn\"]"), "{dot}");
    assert_eq!(
        dot.lines().filter(|l| l.contains(" -> ")).count(),
        plain.lines().filter(|l| l.contains(" -> ")).count()
    );
}

#[test]
fn run_on_the_optimised_graph_matches_pytorch() {
    // The small residual CNN of the golden tests: torch weights with real batch-norm
    // statistics, so folding changes every conv's weights.
    let dir = root().join("tests/golden/models");
    let file = |name: &str| dir.join(name).display().to_string();
    let scratch = Path::new(env!("CARGO_TARGET_TMPDIR")).join("cnnc-passes");
    std::fs::create_dir_all(&scratch).expect("scratch dir");
    let y = scratch.join("tiny_resnet.npy").display().to_string();
    let args = [
        "run",
        "tests/golden/models/tiny_resnet.cnn",
        "--weights",
        &file("tiny_resnet.weights.safetensors"),
        "--input",
        &file("tiny_resnet.input.npy"),
        "-o",
        &y,
        "--passes",
        "all",
    ];
    let (out, err) = ok(&args);
    assert!(out.starts_with("output: [4, 7]"), "{out}");
    assert!(err.starts_with("note: passes (inference): ") && err.contains("fold-bn x"), "{err}");
    let got: Tensor = read_npy_f32(&y).expect("cnnc output");
    let want: Tensor = read_npy_f32(file("tiny_resnet.output.npy")).expect("torch output");
    assert_eq!(got.shape, want.shape);
    let scale = want.data.iter().fold(0f32, |m, v| m.max(v.abs()));
    let worst = got.data.iter().zip(&want.data).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    assert!(worst <= 1e-4 * scale, "largest difference {worst} (scale {scale})");
}
