//! Data-driven snapshot tests, in the style of rust-analyzer's and ruff's.
//!
//! - `tests/data/ok/NAME.cnn` must compile. Three snapshots pin it: `snapshots/ok/NAME@ast.snap`
//!   (the AST outline, `cnnc_syntax::print`), `snapshots/ok/NAME@ir.snap` (the IR of every
//!   model in the file, each lowered by name, with its rendered warnings if any) and
//!   `snapshots/ok/NAME@plan.snap` (each model's optimised IR and execution plan, at inference
//!   and for a training step). The examples' plans are pinned by `cnnc-passes`' tests.
//! - `examples/NAME.cnn`, the shipped models, are pinned like the ok sources, in
//!   `snapshots/examples/`.
//! - `tests/data/err/NAME.cnn` must fail. `snapshots/err/NAME.snap` pins what `cnnc check`
//!   prints for it (every model checked, diagnostics rendered without colour).
//!
//! To add a case, drop a `.cnn` file in one of the directories and run
//! `INSTA_UPDATE=always cargo test -p cnnc-tests -- snapshots` (or `cargo insta review`),
//! then read the new snapshot. With `CI=true` a missing snapshot is a failure, so commit them.
//! Each test runs every file and reports every mismatch at once.

use cnnc_diag::{CODES, has_errors};
use cnnc_tests::{UNREACHABLE_CODES, cnn_files, codes_in, err_output, load, ok_ast, ok_ir, ok_plans, workspace_root};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};

/// Where the sources of a kind live: `tests/data/{ok,err}`, or the shipped `examples/`.
fn data_dir(kind: &str) -> PathBuf {
    match kind {
        "examples" => workspace_root().join("examples"),
        _ => workspace_root().join("tests/data").join(kind),
    }
}

fn snapshot_dir(kind: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("snapshots").join(kind)
}

fn settings(kind: &str, source: &Path, suffix: Option<&str>) -> insta::Settings {
    let mut s = insta::Settings::clone_current();
    s.set_snapshot_path(snapshot_dir(kind));
    s.set_prepend_module_to_snapshot(false);
    s.set_omit_expression(true);
    s.set_input_file(source);
    s.set_snapshot_suffix(suffix.unwrap_or_default());
    s
}

fn stem(path: &Path) -> String {
    path.file_stem().expect("a file name").to_string_lossy().into_owned()
}

/// Runs `check` on every file, collecting failures instead of stopping at the first.
fn for_each_file(kind: &str, check: impl Fn(&Path)) {
    let files = cnn_files(&data_dir(kind));
    assert!(!files.is_empty(), "no .cnn files in tests/data/{kind}");
    let mut failures = Vec::new();
    for path in &files {
        if let Err(panic) = catch_unwind(AssertUnwindSafe(|| check(path))) {
            let message = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            failures.push(format!("{}: {message}", stem(path)));
        }
    }
    assert!(failures.is_empty(), "{} of {} files failed:\n  {}", failures.len(), files.len(), failures.join("\n  "));
}

#[test]
fn ok_sources_parse_and_lower() {
    pin_ast_and_ir("ok");
}

#[test]
fn ok_sources_optimise_and_plan() {
    for_each_file("ok", |path| {
        let file = load(path);
        let plans = ok_plans(&file);
        settings("ok", path, Some("plan")).bind(|| insta::assert_snapshot!(stem(path), plans));
    });
}

/// The shipped examples are pinned the same way, in `snapshots/examples/`.
#[test]
fn shipped_examples_parse_and_lower() {
    pin_ast_and_ir("examples");
}

fn pin_ast_and_ir(kind: &str) {
    for_each_file(kind, |path| {
        let file = load(path);
        let name = stem(path);
        let ast = ok_ast(&file);
        settings(kind, path, Some("ast")).bind(|| insta::assert_snapshot!(name.clone(), ast));
        let ir = ok_ir(&file);
        settings(kind, path, Some("ir")).bind(|| insta::assert_snapshot!(name, ir));
    });
}

#[test]
fn err_sources_report_their_errors() {
    for_each_file("err", |path| {
        let file = load(path);
        let (text, diags) = err_output(&file);
        assert!(has_errors(&diags), "{} has no error:\n{text}", file.name);
        settings("err", path, None).bind(|| insta::assert_snapshot!(stem(path), text));
    });
}

/// Every registry code appears in some err snapshot (so every diagnostic the compiler can give
/// has a pinned example), except those nothing can reach ([`UNREACHABLE_CODES`]).
#[test]
fn err_snapshots_cover_every_code() {
    let mut seen: Vec<String> = Vec::new();
    for entry in std::fs::read_dir(snapshot_dir("err")).expect("snapshots/err exists") {
        let path = entry.expect("entry").path();
        if path.extension().is_some_and(|e| e == "snap") {
            let text = std::fs::read_to_string(&path).expect("readable snapshot");
            seen.extend(codes_in(&text));
        }
    }
    let missing: Vec<String> = CODES
        .iter()
        .map(|c| c.code.to_string())
        .filter(|c| !seen.contains(c) && !UNREACHABLE_CODES.contains(&c.as_str()))
        .collect();
    assert!(missing.is_empty(), "codes with no example in tests/data/err: {missing:?}");
    let reached: Vec<&&str> = UNREACHABLE_CODES.iter().filter(|c| seen.iter().any(|s| s == **c)).collect();
    assert!(reached.is_empty(), "codes listed as unreachable appear in err snapshots: {reached:?}");
    let unknown: Vec<&String> = seen.iter().filter(|c| !CODES.iter().any(|i| i.code.0 == c.as_str())).collect();
    assert!(unknown.is_empty(), "err snapshots show codes missing from the registry: {unknown:?}");
}

/// The one way left to ask for a zero-sized tensor, a library caller's input shape, is E0304
/// (the CLI's `--shape` parser already refuses zeros), not a graph with an empty tensor in it.
#[test]
fn zero_sized_input_shape_through_the_api_is_an_error() {
    let file = cnnc_diag::SourceFile::new("zero.cnn", "model m {\n    input x: [3, 8, 8]\n    x -> relu\n}\n");
    let options = cnnc_driver::Options { input_shape: Some(vec![3, 0, 8]), ..Default::default() };
    let diags = cnnc_driver::lower_source(&file, &options).expect_err("a zero dimension is an error");
    assert!(has_errors(&diags), "{diags:?}");
    assert_eq!(diags[0].code, cnnc_diag::Code::SHAPE_ZERO, "{diags:?}");
    assert_eq!(diags[0].message, "the requested input shape [3, 0, 8] has a zero dimension");
}

/// A snapshot whose source was renamed or deleted would otherwise linger unnoticed.
#[test]
fn every_snapshot_has_its_source() {
    let mut orphans = Vec::new();
    for kind in ["ok", "err", "examples"] {
        let Ok(entries) = std::fs::read_dir(snapshot_dir(kind)) else { continue };
        for entry in entries {
            let path = entry.expect("entry").path();
            let name = path.file_name().expect("name").to_string_lossy().into_owned();
            let Some(base) = name.strip_suffix(".snap") else { continue };
            let base = base.split('@').next().expect("split yields one part");
            if !data_dir(kind).join(format!("{base}.cnn")).exists() {
                orphans.push(format!("{kind}/{name}"));
            }
        }
    }
    assert!(orphans.is_empty(), "snapshots without a source in tests/data: {orphans:?}");
}
