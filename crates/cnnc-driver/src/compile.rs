//! Loading a source file and running the front half of the pipeline on it: parse, then lower
//! (one model) or check (every model). Results stay typed: diagnostics are values here.

use cnnc_diag::{Diagnostic, SourceFile, has_errors};
use cnnc_ir::Graph;
use cnnc_lower::Options;
use std::collections::HashSet;
use std::io::Read;
use std::path::{Path, PathBuf};
use thiserror::Error;

/// The largest source accepted. Real `.cnn` files are a few KiB; the limit keeps a mistaken path
/// (a data set, `/dev/zero`) from being read whole, and keeps every offset well inside the
/// `u32` that spans store.
pub const MAX_SOURCE_BYTES: u64 = 16 << 20;

/// Failures before there is any source to point at, so they have no span.
#[derive(Debug, Error)]
pub enum DriverError {
    #[error("cannot read `{}`: {source}", path.display())]
    Read { path: PathBuf, source: std::io::Error },
    #[error("`{}` is not UTF-8 text (invalid byte at offset {offset})", path.display())]
    NotUtf8 { path: PathBuf, offset: usize },
    #[error("`{}` is larger than {} MiB; is it really a .cnn source?", path.display(), MAX_SOURCE_BYTES >> 20)]
    TooLarge { path: PathBuf },
}

/// Reads a source file, named in diagnostics by the path as given.
pub fn load(path: impl AsRef<Path>) -> Result<SourceFile, DriverError> {
    let path = path.as_ref();
    let read_err = |source| DriverError::Read { path: path.to_path_buf(), source };
    let file = std::fs::File::open(path).map_err(read_err)?;
    // Reading one byte past the limit tells "exactly at the limit" from "over it" without
    // trusting metadata, which special files (pipes, /dev/zero) do not have.
    let mut bytes = Vec::new();
    file.take(MAX_SOURCE_BYTES + 1).read_to_end(&mut bytes).map_err(read_err)?;
    if bytes.len() as u64 > MAX_SOURCE_BYTES {
        return Err(DriverError::TooLarge { path: path.to_path_buf() });
    }
    let text = String::from_utf8(bytes)
        .map_err(|e| DriverError::NotUtf8 { path: path.to_path_buf(), offset: e.utf8_error().valid_up_to() })?;
    Ok(SourceFile::new(path.display().to_string(), text))
}

/// Parses and lowers the model `options` selects: the graph and its warnings, or every
/// diagnostic found. Syntax errors stop before lowering, whose messages about a half-parsed
/// file would only be noise.
pub fn lower_source(file: &SourceFile, options: &Options) -> Result<(Graph, Vec<Diagnostic>), Vec<Diagnostic>> {
    let (ast, syntax_errors) = cnnc_syntax::parse(&file.text);
    if !syntax_errors.is_empty() {
        return Err(syntax_errors.iter().map(|e| e.diagnostic()).collect());
    }
    cnnc_lower::lower(&ast, options).map(|lowered| (lowered.graph, lowered.warnings))
}

/// Parses and checks the whole file (every model at its declared input shape): all
/// diagnostics, errors and warnings, in source order.
pub fn check_source(file: &SourceFile) -> Vec<Diagnostic> {
    let (ast, syntax_errors) = cnnc_syntax::parse(&file.text);
    if !syntax_errors.is_empty() {
        return syntax_errors.iter().map(|e| e.diagnostic()).collect();
    }
    cnnc_lower::check(&ast)
}

/// The outcome of checking the models of a file.
#[derive(Debug, Default)]
pub struct Checked {
    /// Every selected model that lowered, in file order; empty when there are errors.
    pub models: Vec<Graph>,
    /// Errors and warnings, each once, in source order.
    pub diagnostics: Vec<Diagnostic>,
}

impl Checked {
    pub fn has_errors(&self) -> bool {
        has_errors(&self.diagnostics)
    }
}

/// Lowers every model of the file (or only `options.model`), each with `options.input_shape`
/// when given, so that `cnnc check` can name each model with its size and output.
///
/// This finds what [`check_source`] finds (lowering runs the same file-level checks before it
/// elaborates a model) and also yields the graphs. A file without models is reported as such
/// rather than passing silently: there is nothing in it a back end could compile.
pub fn check_models(file: &SourceFile, options: &Options) -> Checked {
    let (ast, syntax_errors) = cnnc_syntax::parse(&file.text);
    if !syntax_errors.is_empty() {
        return Checked { models: Vec::new(), diagnostics: syntax_errors.iter().map(|e| e.diagnostic()).collect() };
    }
    let names: Vec<Option<String>> = match &options.model {
        Some(name) => vec![Some(name.clone())],
        None => {
            let all = cnnc_lower::model_names(&ast);
            // With no model, lowering reports the file-level problem (E0211) for us.
            if all.is_empty() { vec![None] } else { all.into_iter().map(|n| Some(n.to_string())).collect() }
        }
    };
    let mut checked = Checked::default();
    let mut budget = cnnc_lower::Budget::default();
    for model in names {
        let options = Options { model, ..options.clone() };
        match cnnc_lower::lower_within(&ast, &options, &mut budget) {
            Ok(lowered) => {
                checked.models.push(lowered.graph);
                checked.diagnostics.extend(lowered.warnings);
            }
            Err(diags) => checked.diagnostics.extend(diags),
        }
    }
    // File-level checks run once per model, so a problem in a shared block would repeat.
    // Code, place and message identify a problem; hashing them keeps this linear.
    let mut seen = HashSet::new();
    let mut unique: Vec<Diagnostic> = checked
        .diagnostics
        .into_iter()
        .filter(|d| seen.insert((d.code, d.primary.span, d.message.clone(), d.primary.message.clone())))
        .collect();
    // Stable: diagnostics at the same place keep the order their phase gave them.
    unique.sort_by_key(|d| d.primary.span.start);
    checked.diagnostics = unique;
    if checked.has_errors() {
        checked.models.clear();
    }
    checked
}

#[cfg(test)]
mod tests {
    use super::*;
    use cnnc_diag::Code;

    const TWO_MODELS: &str = "
block unused_thing(n) { input x  x -> conv(n, k=3) }
model small { input x: [1, 8, 8]  x -> c: conv(4, k=3) -> flatten -> fc(10) }
model flat { input x: [16]  x -> fc(4) }
";

    fn file(text: &str) -> SourceFile {
        SourceFile::new("t.cnn", text)
    }

    #[test]
    fn lowers_the_chosen_model() {
        let options = Options { model: Some("flat".into()), input_shape: None, ..Default::default() };
        let (graph, warnings) = lower_source(&file(TWO_MODELS), &options).expect("lowers");
        assert_eq!(graph.name, "flat");
        assert!(warnings.is_empty(), "{warnings:?}");
        let options = Options { model: Some("small".into()), input_shape: Some(vec![1, 12, 12]), ..Default::default() };
        let (graph, _) = lower_source(&file(TWO_MODELS), &options).expect("lowers");
        assert_eq!(graph[graph.outputs[0]].shape.0, vec![10]);
        let conv = graph.iter().find(|(_, n)| n.name == "c").expect("named conv").1;
        assert_eq!(conv.shape.0, vec![4, 10, 10]);
    }

    #[test]
    fn syntax_errors_stop_before_lowering() {
        let diags = lower_source(&file("model m { input x: [1, 8, 8] x -> }"), &Options::default()).unwrap_err();
        assert!(!diags.is_empty());
        assert!(diags.iter().all(|d| d.code == Code::SYNTAX), "{diags:?}");
        let diags = check_source(&file("model m { input x: [1, 8, 8] x -> }"));
        assert!(diags.iter().all(|d| d.code == Code::SYNTAX) && !diags.is_empty());
    }

    #[test]
    fn check_source_reports_shape_errors_of_every_model() {
        let text =
            "model a { input x: [1, 4, 4]  x -> conv(2, k=5) }\nmodel b { input x: [1, 4, 4]  x -> conv(2, k=7) }";
        let diags = check_source(&file(text));
        let codes: Vec<Code> = diags.iter().map(|d| d.code).collect();
        assert_eq!(codes, vec![Code::KERNEL_TOO_LARGE, Code::KERNEL_TOO_LARGE]);
        assert!(diags[0].primary.span.start < diags[1].primary.span.start);
    }

    #[test]
    fn check_models_lowers_each_model_once() {
        let checked = check_models(&file(TWO_MODELS), &Options::default());
        assert!(!checked.has_errors(), "{:?}", checked.diagnostics);
        let names: Vec<&str> = checked.models.iter().map(|g| g.name.as_str()).collect();
        assert_eq!(names, ["small", "flat"]);
        let only = check_models(
            &file(TWO_MODELS),
            &Options { model: Some("flat".into()), input_shape: None, ..Default::default() },
        );
        assert_eq!(only.models.len(), 1);
    }

    #[test]
    fn check_models_reports_a_shared_problem_once() {
        // An unknown layer in a block both models use: one error, not one per model.
        let text = "block b { input x  x -> convv(4, k=3) }\nmodel m1 { input x: [1, 8, 8]  x -> b }\nmodel m2 { input x: [1, 8, 8]  x -> b }";
        let checked = check_models(&file(text), &Options::default());
        assert!(checked.has_errors());
        assert!(checked.models.is_empty());
        let unknown = checked.diagnostics.iter().filter(|d| d.code == Code::UNKNOWN_LAYER).count();
        assert_eq!(unknown, 1, "{:?}", checked.diagnostics);
    }

    #[test]
    fn a_file_without_models_is_an_error() {
        let checked = check_models(&file("block b { input x  x -> relu }"), &Options::default());
        assert_eq!(checked.diagnostics.len(), 1);
        assert_eq!(checked.diagnostics[0].code, Code::NO_MODEL);
        let missing = check_models(
            &file(TWO_MODELS),
            &Options { model: Some("smal".into()), input_shape: None, ..Default::default() },
        );
        assert_eq!(missing.diagnostics[0].code, Code::NO_MODEL);
        assert_eq!(missing.diagnostics[0].hint.as_deref(), Some("did you mean `small`?"));
    }

    #[test]
    fn load_reports_missing_and_non_utf8_files() {
        let dir = std::env::temp_dir().join(format!("cnnc-driver-load-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let missing = load(dir.join("nope.cnn")).unwrap_err();
        assert!(matches!(missing, DriverError::Read { .. }), "{missing}");
        assert!(missing.to_string().contains("nope.cnn"), "{missing}");
        let latin1 = dir.join("latin1.cnn");
        std::fs::write(&latin1, b"// caf\xe9\n").expect("write");
        assert!(matches!(load(&latin1), Err(DriverError::NotUtf8 { offset: 6, .. })));
        let good = dir.join("good.cnn");
        std::fs::write(&good, "model m { input x: [4]  x -> fc(2) }").expect("write");
        let src = load(&good).expect("loads");
        assert_eq!(src.name, good.display().to_string());
        // A directory is a read error, not a panic.
        assert!(matches!(load(&dir), Err(DriverError::Read { .. })));
        std::fs::remove_dir_all(&dir).expect("clean up");
    }

    #[test]
    fn load_refuses_oversized_input() {
        let dir = std::env::temp_dir().join(format!("cnnc-driver-big-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let big = dir.join("big.cnn");
        std::fs::write(&big, vec![b' '; MAX_SOURCE_BYTES as usize + 1]).expect("write");
        assert!(matches!(load(&big), Err(DriverError::TooLarge { .. })));
        std::fs::write(&big, vec![b' '; MAX_SOURCE_BYTES as usize]).expect("write");
        assert!(load(&big).is_ok());
        std::fs::remove_dir_all(&dir).expect("clean up");
    }
}
