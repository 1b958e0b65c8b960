//! Generates the Rust modules the `models` benchmark times (`cnnc-codegen`, each module
//! standalone with its own copy of the kernels, as `cnnc FILE -o model.rs` writes it) into
//! `OUT_DIR`, and `models.rs` there declaring them.

use std::fmt::Write as _;

/// The benchmarked examples, at their declared 3x224x224.
const MODELS: &[&str] = &["resnet18", "resnet50", "vgg16", "googlenet"];

fn main() {
    let out = std::path::PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let examples = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    let mut declarations = String::new();
    for model in MODELS {
        let file = format!("{model}.cnn");
        let text = std::fs::read_to_string(examples.join(&file)).expect("the example exists");
        let (parsed, errors) = cnnc_syntax::parse(&text);
        assert!(errors.is_empty(), "{file}: {errors:?}");
        let graph = cnnc_lower::lower(&parsed, &cnnc_lower::Options::default()).expect("the example lowers").graph;
        let plan = cnnc_passes::optimize(&graph, None, &cnnc_passes::PassOptions::all()).expect("the passes run").plan;
        let options = cnnc_codegen::Options {
            source: Some(cnnc_codegen::Source { name: file.clone(), text }),
            ..cnnc_codegen::Options::default()
        };
        let generated = cnnc_codegen::emit(&cnnc_codegen::Program::inference(&graph, &plan), &options)
            .unwrap_or_else(|e| panic!("{file}: {e}"));
        let path = out.join(format!("{model}.rs"));
        std::fs::write(&path, generated).expect("OUT_DIR is writable");
        writeln!(declarations, "#[path = {:?}]\nmod {model};", path.display().to_string()).expect("a String");
        println!("cargo::rerun-if-changed=../examples/{file}");
    }
    std::fs::write(out.join("models.rs"), declarations).expect("OUT_DIR is writable");
}
