//! Generates a Rust module for every test model (`models.rs`) with `cnnc-codegen`, into
//! `OUT_DIR`, sharing one copy of the kernels (`kernels.rs`), and `models.rs` there declaring
//! them.

#[path = "models.rs"]
mod models;

use std::fmt::Write as _;

fn main() {
    let out = std::path::PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let mut declarations = String::new();
    for case in models::cases() {
        let graph = models::lower(&case);
        let inference = models::inference(&graph);
        let training: Vec<_> = case.training.iter().map(|t| (t.name, models::training(&graph, t))).collect();
        let mut program = cnnc_codegen::Program::inference(&graph, &inference);
        for (name, plan) in &training {
            program = program.with(name, plan);
        }
        let name = case.file.rsplit('/').next().unwrap_or(case.file);
        let options = cnnc_codegen::Options {
            source: Some(cnnc_codegen::Source { name: name.into(), text: models::source(&case) }),
            kernels: Some("crate::cnnc_kernels".into()),
            inspect: true,
            ..cnnc_codegen::Options::default()
        };
        let text = cnnc_codegen::emit(&program, &options).unwrap_or_else(|e| panic!("{}: {e}", case.module));
        let path = out.join(format!("{}.rs", case.module));
        std::fs::write(&path, text).expect("OUT_DIR is writable");
        writeln!(declarations, "#[path = {:?}]\npub mod {};", path.display().to_string(), case.module).unwrap();
    }
    // LeNet-5 without std (core only: caller's storage and workspace, portable kernels).
    let lenet = models::cases().into_iter().find(|c| c.module == "lenet5").expect("the LeNet-5 case");
    let graph = models::lower(&lenet);
    let inference = models::inference(&graph);
    let options = cnnc_codegen::Options {
        std: false,
        kernels: Some("crate::cnnc_kernels".into()),
        ..cnnc_codegen::Options::default()
    };
    let text = cnnc_codegen::emit(&cnnc_codegen::Program::inference(&graph, &inference), &options)
        .unwrap_or_else(|e| panic!("lenet5 without std: {e}"));
    let path = out.join("lenet5_no_std.rs");
    std::fs::write(&path, text).expect("OUT_DIR is writable");
    writeln!(declarations, "#[path = {:?}]\npub mod lenet5_no_std;", path.display().to_string()).unwrap();
    let modules: Vec<&str> =
        cnnc_kernels::source::files().iter().filter(|f| f.module != "source").map(|f| f.module).collect();
    std::fs::write(out.join("kernels.rs"), cnnc_kernels::source::module_text(&modules)).expect("OUT_DIR is writable");
    std::fs::write(out.join("models.rs"), declarations).expect("OUT_DIR is writable");
    println!("cargo::rerun-if-changed=models.rs");
    println!("cargo::rerun-if-changed=../../../../examples");
    println!("cargo::rerun-if-changed=../../../../tests/data/ok");
}
