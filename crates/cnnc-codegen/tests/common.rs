//! Lowering and planning helpers for the code generator's own tests.
#![allow(dead_code)]

use cnnc_ir::Graph;
use cnnc_ir::plan::Plan;
use cnnc_passes::{PassOptions, TrainingOptions, optimize, optimize_training};

pub fn workspace() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Every example file's name, sorted.
pub fn examples() -> Vec<String> {
    let mut files: Vec<String> = std::fs::read_dir(workspace().join("examples"))
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.ends_with(".cnn"))
        .collect();
    files.sort();
    files
}

/// An example's text and its model lowered at its declared shape.
pub fn lower(file: &str) -> (String, Graph) {
    let text = std::fs::read_to_string(workspace().join("examples").join(file)).unwrap();
    let (parsed, errors) = cnnc_syntax::parse(&text);
    assert!(errors.is_empty(), "{file}: {errors:?}");
    let g =
        cnnc_lower::lower(&parsed, &cnnc_lower::Options::default()).unwrap_or_else(|d| panic!("{file}: {d:?}")).graph;
    (text, g)
}

pub fn inference(g: &Graph) -> Plan {
    optimize(g, None, &PassOptions::all()).unwrap().plan
}

pub fn training(g: &Graph, t: &TrainingOptions) -> Plan {
    optimize_training(g, None, &PassOptions::all(), t).unwrap().plan
}

/// The generated module of an example: its `Model` (and, given, a training entry).
pub fn emit(file: &str, train: Option<&TrainingOptions>, std: bool) -> String {
    let (text, g) = lower(file);
    let inference = inference(&g);
    let training = train.map(|t| training(&g, t));
    let mut program = cnnc_codegen::Program::inference(&g, &inference);
    if let Some(p) = &training {
        program = program.with("Trainer", p);
    }
    let options = cnnc_codegen::Options {
        source: Some(cnnc_codegen::Source { name: file.into(), text }),
        std,
        ..cnnc_codegen::Options::default()
    };
    cnnc_codegen::emit(&program, &options).unwrap_or_else(|e| panic!("{file}: {e}"))
}
