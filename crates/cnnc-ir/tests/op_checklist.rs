//! The op checklist, enforced: no `match` anywhere in the workspace that dispatches on `Op` or
//! `TrainOp` has a catch-all arm (`_ =>`, or a bare binding such as `other =>`), so adding an
//! op is a list of compile errors in every phase and back end, never a silent gap.
//!
//! Every Rust file of the compiler (the `src/` of each crate under `crates/`, and `benches/`)
//! is parsed (syn); a match is about ops when one of its arms' patterns names a variant
//! `Op::...` or `TrainOp::...`. Tests of a single variant (`if let`, `let ... else`,
//! `matches!`) are not dispatch and are not checked, nor are tests, whose reference
//! implementations and counters may cover a few ops on purpose.

use std::path::{Path, PathBuf};
use syn::spanned::Spanned;
use syn::visit::Visit;

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name();
        if path.is_dir() && name != "target" && name != "tests" {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// Whether a pattern names a variant of `Op` or `TrainOp` (at any depth).
fn names_op(pat: &syn::Pat) -> bool {
    struct Finder(bool);
    impl<'a> Visit<'a> for Finder {
        fn visit_path(&mut self, path: &'a syn::Path) {
            let segments: Vec<String> = path.segments.iter().map(|s| s.ident.to_string()).collect();
            if segments.len() >= 2 && matches!(segments[segments.len() - 2].as_str(), "Op" | "TrainOp") {
                self.0 = true;
            }
            syn::visit::visit_path(self, path);
        }
    }
    let mut f = Finder(false);
    f.visit_pat(pat);
    f.0
}

/// A top-level catch-all arm: `_`, or a binding without a sub-pattern (`other`), possibly
/// inside an or-pattern, a reference or parentheses.
fn catch_all(pat: &syn::Pat) -> bool {
    match pat {
        syn::Pat::Wild(_) => true,
        syn::Pat::Ident(p) => {
            p.subpat.is_none() && p.ident.to_string().starts_with(|c: char| c.is_lowercase() || c == '_')
        }
        syn::Pat::Or(or) => or.cases.iter().any(catch_all),
        syn::Pat::Reference(r) => catch_all(&r.pat),
        syn::Pat::Paren(p) => catch_all(&p.pat),
        _ => false,
    }
}

struct Checker<'a> {
    file: &'a Path,
    found: Vec<String>,
}

impl<'a> Visit<'a> for Checker<'_> {
    fn visit_expr_match(&mut self, m: &'a syn::ExprMatch) {
        if m.arms.iter().any(|arm| names_op(&arm.pat)) {
            for arm in m.arms.iter().filter(|arm| catch_all(&arm.pat)) {
                let line = arm.pat.span().start().line;
                self.found.push(format!("{}:{line}", self.file.display()));
            }
        }
        syn::visit::visit_expr_match(self, m);
    }
}

#[test]
fn no_match_over_ops_has_a_catch_all_arm() {
    let root = workspace();
    let mut files = Vec::new();
    for dir in ["crates", "benches"] {
        rust_files(&root.join(dir), &mut files);
    }
    files.sort();
    assert!(files.len() > 50, "the workspace's sources were not found from {}", root.display());
    let mut found = Vec::new();
    let mut op_patterns = 0;
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        let syntax = syn::parse_file(&text).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        let relative = file.strip_prefix(&root).unwrap_or(file);
        let mut checker = Checker { file: relative, found: Vec::new() };
        checker.visit_file(&syntax);
        found.extend(checker.found);
        op_patterns += text.matches("Op::").count();
    }
    assert!(op_patterns > 100, "no ops seen: the checker read nothing");
    assert!(
        found.is_empty(),
        "matches over ops with a catch-all arm (list the ops instead):\n  {}",
        found.join("\n  ")
    );
}

#[test]
fn the_checker_sees_catch_all_arms() {
    let bad: syn::File = syn::parse_str(
        "fn f(op: &Op) -> bool { match op { Op::Input => true, _ => false } }\n\
         fn g(op: &TrainOp) -> u8 { match op { TrainOp::Mul => 1, other => 2 } }\n\
         fn h(op: &Op) -> u8 { match op { Op::Input | Op::Add => 1, Op::Train(_) => 2 } }\n\
         fn i(x: Option<u8>) -> u8 { match x { Some(v) => v, _ => 0 } }",
    )
    .unwrap();
    let mut checker = Checker { file: Path::new("x.rs"), found: Vec::new() };
    checker.visit_file(&bad);
    assert_eq!(checker.found, ["x.rs:1", "x.rs:2"]);
}
