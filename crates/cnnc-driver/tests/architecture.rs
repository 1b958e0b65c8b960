//! The dependency rules of ARCHITECTURE.md ("invariants as absences"), checked against every
//! crate's manifest so that a forbidden `use` cannot land by accident.
//!
//! It lives with the driver because the driver is the crate that sees all the others; it reads
//! manifests only (normal and build dependencies; dev-dependencies may reach anywhere).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// Back ends: each turns a graph into computation and none may import another, so each can be
/// tested against the reference interpreter independently.
const BACK_ENDS: &[&str] = &["cnnc-interp", "cnnc-codegen", "cnnc-jit"];

/// `(crate, forbidden dependency prefixes, why)`. A prefix `cranelift` covers every
/// `cranelift-*` crate.
const RULES: &[(&str, &[&str], &str)] = &[
    (
        "cnnc-ir",
        &["pest", "quote", "syn", "proc-macro2", "cranelift", "cnnc-syntax", "cnnc-lower"],
        "the IR knows nothing of the syntax, code generation or the JIT",
    ),
    (
        "cnnc-syntax",
        &["cnnc-ir", "cnnc-lower", "cnnc-passes", "cnnc-runtime"],
        "the syntax knows nothing of shapes or the IR",
    ),
    (
        "cnnc-runtime",
        &["cnnc-syntax", "cnnc-lower", "pest", "cnnc-passes", "cnnc-interp", "cnnc-codegen", "cnnc-jit"],
        "the runtime knows nothing of the syntax, the passes or any back end",
    ),
    (
        "cnnc-data",
        &[
            "cnnc-diag",
            "cnnc-syntax",
            "cnnc-ir",
            "cnnc-lower",
            "cnnc-passes",
            "cnnc-interp",
            "cnnc-codegen",
            "cnnc-jit",
            "cnnc-driver",
            "cnnc-cli",
            "pest",
            "cranelift",
        ],
        "the data sets know nothing of graphs, the syntax, the passes or any back end",
    ),
    (
        "cnnc-lower",
        &["cnnc-runtime", "cnnc-passes", "cnnc-interp", "cnnc-codegen", "cnnc-jit"],
        "lowering builds graphs; it neither optimises nor runs them",
    ),
    (
        "cnnc-passes",
        &["cnnc-syntax", "cnnc-lower", "pest", "cnnc-interp", "cnnc-codegen", "cnnc-jit"],
        "passes rewrite graphs, whatever source they came from",
    ),
];

/// `(crate, the only dependencies it may have, why)`: crates whose place in the layering is a
/// short list rather than a list of prohibitions.
const ONLY: &[(&str, &[&str], &str)] = &[
    (
        "cnnc-data",
        &["cnnc-runtime", "thiserror"],
        "the data sets sit beside the runtime: they may depend only on cnnc-runtime (and thiserror)",
    ),
    ("cnnc-render", &["cnnc-diag", "codespan-reporting"], "the renderer knows diagnostics and nothing else"),
    ("cnnc-model", &["cnnc-macro"], "the facade re-exports the macro; generated modules need nothing else"),
];

/// `(crate, crates its whole dependency tree must not hold, why)`: the `cnn!` macro runs
/// inside rustc, so it builds the front end, the passes and the code generator and nothing of
/// the driver's interpreter, JIT, data sets or file handling.
const TREE_RULES: &[(&str, &[&str], &str)] = &[
    (
        "cnnc-macro",
        &["cnnc-driver", "cnnc-interp", "cnnc-jit", "cnnc-data", "cnnc-cli", "cranelift"],
        "the macro builds only what compiling a model to Rust needs",
    ),
    (
        "cnnc-model",
        &["cnnc-driver", "cnnc-interp", "cnnc-jit", "cnnc-data", "cnnc-cli", "cranelift"],
        "a user of the macro builds only what compiling a model to Rust needs",
    ),
    (
        "cnnc-emit",
        &["cnnc-driver", "cnnc-interp", "cnnc-jit", "cnnc-data", "cnnc-cli", "cnnc-render", "codespan-reporting"],
        "the entry point is IO-free and renders nothing",
    ),
];

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Every crate under `crates/`, by directory name (which is also its package name).
fn crates() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(workspace().join("crates"))
        .expect("crates/ exists")
        .filter_map(|e| e.ok())
        .filter(|e| e.path().join("Cargo.toml").is_file())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// Names in the manifest's `[dependencies]`, `[build-dependencies]` and target-specific
/// dependency tables, whether written `name = ...`, `name.workspace = true` or as a
/// `[dependencies.name]` table.
fn dependencies(manifest: &str) -> BTreeSet<String> {
    let mut deps = BTreeSet::new();
    let mut in_deps = false;
    for line in manifest.lines() {
        let line = line.trim();
        if line.starts_with('[') {
            let header = line.trim_matches(|c| c == '[' || c == ']');
            let table = header.rsplit_once("dependencies");
            in_deps = false;
            if let Some((before, after)) = table {
                let is_dev = before.ends_with("dev-");
                if !is_dev && (before.is_empty() || before.ends_with("build-") || before.starts_with("target.")) {
                    match after.strip_prefix('.') {
                        Some(name) => {
                            deps.insert(name.to_string());
                        }
                        None => in_deps = after.is_empty(),
                    }
                }
            }
            continue;
        }
        if in_deps
            && !line.starts_with('#')
            && let Some(key) = line.split(['=', '.']).next().map(str::trim).filter(|k| !k.is_empty())
        {
            deps.insert(key.trim_matches('"').to_string());
        }
    }
    deps
}

fn deps_of(krate: &str) -> Option<BTreeSet<String>> {
    let text = std::fs::read_to_string(workspace().join("crates").join(krate).join("Cargo.toml")).ok()?;
    Some(dependencies(&text))
}

#[test]
fn manifest_parser_reads_every_form() {
    let manifest = r#"
[package]
name = "x"
[dependencies]
cnnc-ir.workspace = true
pest = "2"
# comment = "no"
[target.'cfg(unix)'.dependencies]
libc = "0.2"
[dev-dependencies]
insta.workspace = true
[build-dependencies]
cc = "1"
[dependencies.serde]
version = "1"
[lints]
workspace = true
"#;
    let deps: Vec<String> = dependencies(manifest).into_iter().collect();
    assert_eq!(deps, ["cc", "cnnc-ir", "libc", "pest", "serde"]);
}

#[test]
fn dependency_rules_hold() {
    let all = crates();
    assert!(all.contains(&"cnnc-ir".to_string()) && all.contains(&"cnnc-driver".to_string()), "{all:?}");
    assert!(all.contains(&"cnnc-kernels".to_string()), "{all:?}");
    let mut broken = Vec::new();
    for (krate, forbidden, why) in RULES {
        let Some(deps) = deps_of(krate) else { continue };
        for dep in &deps {
            if forbidden.iter().any(|f| dep.starts_with(f)) {
                broken.push(format!("{krate} depends on {dep}: {why}"));
            }
        }
    }
    for (krate, allowed, why) in ONLY {
        let Some(deps) = deps_of(krate) else { continue };
        for dep in deps.iter().filter(|d| !allowed.contains(&d.as_str())) {
            broken.push(format!("{krate} depends on {dep}: {why}"));
        }
    }
    for krate in &all {
        let deps = deps_of(krate).unwrap_or_default();
        // Diagnostics are data; only the renderer turns them into text.
        if krate != "cnnc-render" && deps.contains("codespan-reporting") {
            broken.push(format!("{krate} depends on codespan-reporting: only cnnc-render renders diagnostics"));
        }
        if krate == "cnnc-diag" && !deps.is_empty() {
            broken.push(format!("cnnc-diag depends on {deps:?}: the diagnostic data model has no dependencies"));
        }
        // Its files are pasted into generated modules that depend on nothing but std.
        if krate == "cnnc-kernels" && !deps.is_empty() {
            broken.push(format!("cnnc-kernels depends on {deps:?}: the kernels depend on nothing"));
        }
        if BACK_ENDS.contains(&krate.as_str()) {
            for other in BACK_ENDS.iter().filter(|b| *b != krate && deps.contains(**b)) {
                broken.push(format!("{krate} depends on {other}: no back end imports another"));
            }
        }
    }
    assert!(broken.is_empty(), "architecture rules broken:\n{}", broken.join("\n"));
}

/// Every crate `krate` depends on, directly or through other workspace crates (normal and
/// build dependencies; external crates are leaves here, which is enough: Cranelift enters the
/// workspace only through cnnc-jit).
fn tree_of(krate: &str) -> BTreeSet<String> {
    let mut seen = BTreeSet::new();
    let mut todo = vec![krate.to_string()];
    while let Some(k) = todo.pop() {
        for dep in deps_of(&k).unwrap_or_default() {
            if seen.insert(dep.clone()) {
                todo.push(dep);
            }
        }
    }
    seen
}

#[test]
fn dependency_trees_exclude_what_they_must_not_build() {
    let tree = tree_of("cnnc-macro");
    assert!(
        tree.contains("cnnc-codegen") && tree.contains("cnnc-lower"),
        "the walk follows workspace crates: {tree:?}"
    );
    assert!(tree_of("cnnc-driver").contains("cranelift-jit"), "and reaches external crates");
    let mut broken = Vec::new();
    for (krate, forbidden, why) in TREE_RULES {
        for dep in tree_of(krate) {
            if forbidden.iter().any(|f| dep.starts_with(f)) {
                broken.push(format!("{krate} depends (maybe indirectly) on {dep}: {why}"));
            }
        }
    }
    assert!(broken.is_empty(), "dependency trees broken:\n{}", broken.join("\n"));
}
