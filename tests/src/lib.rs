//! Shared helpers for cnnc's data-driven tests and fuzzers.
//!
//! - [`ok_ast`], [`ok_ir`] and [`err_output`] produce the text pinned by the snapshot tests
//!   (`tests/snapshots.rs`) for `tests/data/ok/*.cnn` and `tests/data/err/*.cnn`.
//! - [`pipeline`] runs everything the front end does to an untrusted source (parse, AST print,
//!   check, lower every model, verify and print the IR, render the diagnostics); the robustness
//!   tests and the fuzz targets feed it hostile input and require that it neither panics nor
//!   takes long.
//! - [`mutate`] holds the token-level mutations of the example files.

pub mod mutate;

use cnnc_diag::{Diagnostic, SourceFile, has_errors};
use cnnc_driver::Options;
use std::path::{Path, PathBuf};

/// Registry codes that no source, command line or library call can currently produce. They are
/// documented in `docs/errors.md` without an example, and the coverage test does not ask for
/// one in `tests/data/err`.
///
/// E0304 (a dimension reaches zero): every shape rule yields sizes of at least 1 for the inputs
/// lowering lets through (a window that does not fit is E0300), and zero sizes in an input shape
/// are refused up front, whether declared in the source, given with `--shape`, or passed as
/// `Options::input_shape`.
pub const UNREACHABLE_CODES: &[&str] = &["E0304"];

/// The workspace root (the directory holding `examples/` and `tests/`).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("tests/ sits in the workspace").to_path_buf()
}

/// The `.cnn` files of a directory, sorted by name.
pub fn cnn_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()))
        .map(|entry| entry.expect("directory entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "cnn"))
        .collect();
    files.sort();
    files
}

/// Loads a test source, named by its path relative to the workspace root (`tests/data/ok/x.cnn`)
/// so that rendered diagnostics do not depend on where the checkout lives.
pub fn load(path: &Path) -> SourceFile {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    let root = workspace_root();
    let name = path.strip_prefix(&root).unwrap_or(path).to_string_lossy().replace('\\', "/");
    SourceFile::new(name, text)
}

/// The AST outline of a source that must parse without errors.
pub fn ok_ast(file: &SourceFile) -> String {
    let (ast, errors) = cnnc_syntax::parse(&file.text);
    if !errors.is_empty() {
        let diags: Vec<Diagnostic> = errors.iter().map(|e| e.diagnostic()).collect();
        panic!("{} does not parse:\n{}", file.name, cnnc_driver::render(&diags, file, false));
    }
    cnnc_syntax::print::print(&ast)
}

/// The IR of every model of a source that must compile, each lowered on its own by name, each
/// followed by its rendered warnings if it has any.
pub fn ok_ir(file: &SourceFile) -> String {
    let (ast, _) = cnnc_syntax::parse(&file.text);
    let names = cnnc_lower::model_names(&ast);
    assert!(!names.is_empty(), "{} defines no model", file.name);
    let mut out = String::new();
    for (i, name) in names.iter().enumerate() {
        if i > 0 {
            out.push('\n');
        }
        let options = Options { model: Some(name.to_string()), ..Options::default() };
        match cnnc_driver::lower_source(file, &options) {
            Ok((graph, warnings)) => {
                if let Err(errors) = cnnc_ir::verify(&graph) {
                    panic!("{}: model `{name}` lowers to a graph that does not verify: {errors:?}", file.name);
                }
                out.push_str(&cnnc_ir::print::print(&graph));
                if !warnings.is_empty() {
                    out.push_str("\n--- warnings ---\n");
                    out.push_str(&cnnc_driver::render(&warnings, file, false));
                }
            }
            Err(diags) => {
                panic!("{}: model `{name}` does not compile:\n{}", file.name, cnnc_driver::render(&diags, file, false))
            }
        }
    }
    out
}

/// The optimised IR and the execution plan of every model of a source that must compile, at
/// inference and for a training step (`cnnc ir --passes all [--train]`): what every pass and
/// the planner make of it, pinned so that a change to any of them is a reviewed diff.
pub fn ok_plans(file: &SourceFile) -> String {
    let (ast, _) = cnnc_syntax::parse(&file.text);
    let mut out = String::new();
    for name in cnnc_lower::model_names(&ast) {
        let options = Options { model: Some(name.to_string()), ..Options::default() };
        let (graph, _) = cnnc_driver::lower_source(file, &options).expect("ok sources compile");
        for mode in [cnnc_driver::Mode::Inference, cnnc_driver::Mode::Training] {
            let opt = cnnc_driver::optimize(&graph, None, cnnc_driver::Pass::ALL, mode)
                .unwrap_or_else(|e| panic!("{}: model `{name}` does not optimise: {e}", file.name));
            out.push_str(&format!("=== {name}, {} ===\n", cnnc_driver::mode_name(mode)));
            out.push_str(&opt.print());
            out.push_str(&opt.plan.render());
        }
    }
    out
}

/// What `cnnc check` reports for a source (every model lowered at its declared shape), rendered
/// without colour. The source must have at least one error... or be meant as a warnings case,
/// which the caller decides.
pub fn err_output(file: &SourceFile) -> (String, Vec<Diagnostic>) {
    let checked = cnnc_driver::check_models(file, &Options::default());
    (cnnc_driver::render(&checked.diagnostics, file, false), checked.diagnostics)
}

/// The codes written in rendered diagnostics, `error[E0301]` or `warning[W0300]`, in order of
/// first appearance.
pub fn codes_in(text: &str) -> Vec<String> {
    let mut codes: Vec<String> = Vec::new();
    for (i, _) in text.match_indices('[') {
        let rest = &text[i + 1..];
        let code: String = rest.chars().take(5).collect();
        let well_formed = code.len() == 5
            && (code.starts_with('E') || code.starts_with('W'))
            && code[1..].bytes().all(|b| b.is_ascii_digit())
            && rest[5..].starts_with(']');
        if well_formed && !codes.contains(&code) {
            codes.push(code);
        }
    }
    codes
}

/// What the pipeline made of a source, for tests that want to look closer.
#[derive(Debug, Default)]
pub struct Outcome {
    pub syntax_errors: usize,
    pub diagnostics: Vec<Diagnostic>,
    pub graphs: usize,
    /// Bytes of text produced (AST outline, IR, rendered diagnostics): forces the printers to run.
    pub printed: usize,
}

/// Everything the front end does to a source, as a user running `cnnc check`, `cnnc --emit ir`
/// and `cnnc --emit ast` would trigger it. Panics only if the compiler does.
pub fn pipeline(src: &str) -> Outcome {
    let file = SourceFile::new("fuzz.cnn", src);
    let mut outcome = Outcome::default();
    let (ast, errors) = cnnc_syntax::parse(src);
    outcome.syntax_errors = errors.len();
    outcome.printed += cnnc_syntax::print::print(&ast).len();
    // Diagnostics of syntax errors carry spans the renderer must cope with.
    let syntax: Vec<Diagnostic> = errors.iter().map(|e| e.diagnostic()).collect();
    outcome.printed += cnnc_driver::render(&syntax, &file, false).len();
    if !errors.is_empty() {
        return outcome;
    }
    // `cnnc check`: every model lowered; the graphs must verify and print.
    let checked = cnnc_driver::check_models(&file, &Options::default());
    outcome.printed += cnnc_driver::render(&checked.diagnostics, &file, false).len();
    outcome.printed += cnnc_driver::render(&checked.diagnostics, &file, true).len();
    for graph in &checked.models {
        if let Err(errors) = cnnc_ir::verify(graph) {
            panic!("model `{}` lowered to a graph that does not verify: {errors:?}", graph.name);
        }
        outcome.printed += cnnc_ir::print::print(graph).len();
        let stats = cnnc_ir::node_stats(graph);
        let totals = cnnc_ir::totals(graph, &stats);
        assert_eq!(totals.macs, stats.iter().fold(0u64, |acc, s| acc.saturating_add(s.macs)), "{}", graph.name);
    }
    outcome.graphs = checked.models.len();
    // `cnnc check` on the file as a whole (item checks, every model at its declared shape).
    let diags = cnnc_driver::check_source(&file);
    outcome.printed += cnnc_driver::render(&diags, &file, false).len();
    // Lowering with no model named: E0211 unless the file has exactly one model, which
    // `check_models` has just lowered the same way.
    if cnnc_lower::model_names(&ast).len() != 1 {
        match cnnc_driver::lower_source(&file, &Options::default()) {
            Ok((graph, warnings)) => {
                outcome.printed += cnnc_ir::print::print(&graph).len();
                assert!(!has_errors(&warnings), "warnings of a lowered model hold an error: {warnings:?}");
            }
            Err(diags) => {
                assert!(has_errors(&diags), "lowering failed without an error: {diags:?}");
                outcome.printed += cnnc_driver::render(&diags, &file, false).len();
            }
        }
    }
    outcome.diagnostics = checked.diagnostics;
    outcome
}
