//! The generated code of every example compiles without a warning, standalone (kernels
//! embedded): a temporary workspace holding every example's module (inference, and a training
//! step for LeNet-5 and ResNet-18) is checked by `cargo check` with `#![deny(warnings)]`, and a
//! `#![no_std]` crate holding the core-only modules of LeNet-5, the CIFAR net and ResNet-18.
//! Two dependency-free crates checked side by side by one `cargo check` (one rustc per core;
//! the kernels type-checked once per module, no code generated).

mod common;

use cnnc_ir::{Loss, Optimizer, Sgd};
use cnnc_passes::TrainingOptions;
use std::path::Path;
use std::process::Command;

/// Writes a crate `name` into `dir` holding `modules` under the crate root text `lib`.
fn write_crate(dir: &Path, name: &str, lib: &str, modules: &[(String, String)]) {
    std::fs::create_dir_all(dir.join("src")).unwrap();
    let manifest = format!(
        "[package]\nname = \"{name}\"\nversion = \"0.0.0\"\nedition = \"2024\"\npublish = false\n\n[lib]\npath = \"src/lib.rs\"\n"
    );
    write_if_changed(&dir.join("Cargo.toml"), &manifest);
    let mut lib = lib.to_string();
    for (module, text) in modules {
        lib.push_str(&format!("pub mod {module};\n"));
        write_if_changed(&dir.join("src").join(format!("{module}.rs")), text);
    }
    write_if_changed(&dir.join("src/lib.rs"), &lib);
}

/// Unchanged files keep their times, so that a re-run checks incrementally.
fn write_if_changed(path: &Path, text: &str) {
    if std::fs::read_to_string(path).ok().as_deref() != Some(text) {
        std::fs::write(path, text).unwrap();
    }
}

/// Writes a workspace of one crate per module group into `dir`: cargo checks the crates side
/// by side, one rustc per core, where a single crate is one rustc on one core.
fn write_workspace(dir: &Path, lib: &str, groups: &[Vec<(String, String)>]) {
    std::fs::create_dir_all(dir).unwrap();
    let members: Vec<String> = (0..groups.len()).map(|k| format!("\"part{k}\"")).collect();
    write_if_changed(
        &dir.join("Cargo.toml"),
        &format!("[workspace]\nresolver = \"3\"\nmembers = [{}]\n", members.join(", ")),
    );
    for (k, modules) in groups.iter().enumerate() {
        write_crate(&dir.join(format!("part{k}")), &format!("generated_part{k}"), lib, modules);
    }
}

fn cargo_check(dir: &Path) {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .arg("check")
        .arg("--quiet")
        .arg("--workspace")
        .arg("--manifest-path")
        .arg(dir.join("Cargo.toml"))
        .env("CARGO_TARGET_DIR", dir.join("target"))
        .env_remove("RUSTFLAGS")
        .output()
        .expect("cargo runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && !stderr.contains("warning"), "cargo check of {}:\n{stderr}", dir.display());
}

fn step() -> TrainingOptions {
    let sgd = Sgd { momentum: 0.9, weight_decay: 1e-4, nesterov: false };
    TrainingOptions { optimizer: Some(Optimizer::Sgd(sgd)), ..TrainingOptions::new(Loss::CrossEntropy) }
}

#[test]
fn every_example_compiles_without_warnings() {
    let mut modules = Vec::new();
    for file in common::examples() {
        let module = file.trim_end_matches(".cnn").to_string();
        let train = matches!(module.as_str(), "lenet5" | "resnet18").then(step);
        modules.push((module, common::emit(&file, train.as_ref(), true)));
    }
    // Two crates of about the same size of source (the largest modules dealt first).
    modules.sort_by_key(|(_, text)| std::cmp::Reverse(text.len()));
    let mut groups = [Vec::new(), Vec::new()];
    let mut sizes = [0usize; 2];
    for module in modules {
        let k = if sizes[0] <= sizes[1] { 0 } else { 1 };
        sizes[k] += module.1.len();
        groups[k].push(module);
    }
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("codegen-check-std");
    write_workspace(&dir, "//! Generated modules of the examples.\n#![deny(warnings)]\n", &groups);
    cargo_check(&dir);
}

#[test]
fn no_std_modules_compile_in_a_no_std_crate() {
    let mut modules = Vec::new();
    for file in ["lenet5.cnn", "cifar_simple.cnn", "resnet18.cnn"] {
        modules.push((file.trim_end_matches(".cnn").to_string(), common::emit(file, None, false)));
    }
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("codegen-check-no-std");
    write_workspace(&dir, "//! Generated modules without std.\n#![no_std]\n#![deny(warnings)]\n", &[modules]);
    cargo_check(&dir);
}
