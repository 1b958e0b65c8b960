//! `docs/errors.md`, the error index behind `cnnc explain`, kept in step with the compiler.
//!
//! Each section is `## CODE: title`, with `title` the registry's, followed by prose and three
//! fenced blocks in order: the erroneous example (` ```cnn `), the diagnostics cnnc prints for it
//! saved as `example.cnn` (` ```text `), and the fixed example (` ```cnn `). Codes nothing can
//! produce ([`UNREACHABLE_CODES`]) have prose only. The tests check that
//! the sections and the registry match one to one, that each erroneous example produces its
//! code and exactly the text shown, and that each fixed example compiles cleanly.
//!
//! `CNNC_BLESS=1 cargo test -p cnnc-tests -- error_index` rewrites the text blocks with what
//! cnnc prints now; review the diff before committing it.

use cnnc_diag::{CODES, Diagnostic, SourceFile, has_errors};
use cnnc_driver::Options;
use cnnc_tests::{UNREACHABLE_CODES, codes_in, workspace_root};
use std::path::PathBuf;

fn doc_path() -> PathBuf {
    workspace_root().join("docs/errors.md")
}

/// A fenced block: its info string, its body, and the line range of the body in the file.
struct Fence {
    info: String,
    body: String,
    body_lines: std::ops::Range<usize>,
}

struct Section {
    code: String,
    title: String,
    fences: Vec<Fence>,
}

/// Sections in file order; `## ` lines inside fences are not headings.
fn sections(doc: &str) -> Vec<Section> {
    let mut out: Vec<Section> = Vec::new();
    let mut open: Option<(String, usize)> = None;
    for (n, line) in doc.lines().enumerate() {
        if let Some((info, start)) = &open {
            if line.trim_start().starts_with("```") {
                let body = doc.lines().skip(*start).take(n - start).collect::<Vec<_>>().join("\n");
                let fence = Fence { info: info.clone(), body, body_lines: *start..n };
                if let Some(section) = out.last_mut() {
                    section.fences.push(fence);
                }
                open = None;
            }
            continue;
        }
        if let Some(info) = line.trim_start().strip_prefix("```") {
            open = Some((info.trim().to_string(), n + 1));
        } else if let Some(heading) = line.strip_prefix("## ") {
            let (code, title) = heading.split_once(": ").unwrap_or((heading, ""));
            out.push(Section { code: code.to_string(), title: title.to_string(), fences: Vec::new() });
        }
    }
    assert!(open.is_none(), "docs/errors.md ends inside a fenced block");
    out
}

/// What `cnnc check example.cnn` prints for an example, and its diagnostics.
fn diagnose(text: &str) -> (String, Vec<Diagnostic>) {
    let file = SourceFile::new("example.cnn", text);
    let diags = cnnc_driver::check_models(&file, &Options::default()).diagnostics;
    (cnnc_driver::render(&diags, &file, false), diags)
}

/// The erroneous example, the printed output and the fix of a section.
fn parts(section: &Section) -> Result<(&Fence, &Fence, &Fence), String> {
    let cnn: Vec<&Fence> = section.fences.iter().filter(|f| f.info == "cnn").collect();
    let text: Vec<&Fence> = section.fences.iter().filter(|f| f.info == "text").collect();
    match (cnn.as_slice(), text.as_slice()) {
        ([bad, fixed], [output]) if bad.body_lines.start < output.body_lines.start => Ok((bad, output, fixed)),
        _ => Err(format!(
            "{}: expected a ```cnn example, a ```text output and a ```cnn fix, found {} cnn and {} text blocks",
            section.code,
            cnn.len(),
            text.len()
        )),
    }
}

#[test]
fn sections_match_the_registry() {
    let doc = std::fs::read_to_string(doc_path()).expect("docs/errors.md exists");
    let sections = sections(&doc);
    let documented: Vec<&str> = sections.iter().map(|s| s.code.as_str()).collect();
    let registry: Vec<&str> = CODES.iter().map(|c| c.code.0).collect();
    let missing: Vec<&&str> = registry.iter().filter(|c| !documented.contains(c)).collect();
    assert!(missing.is_empty(), "codes without a section in docs/errors.md: {missing:?}");
    let unknown: Vec<&&str> = documented.iter().filter(|c| !registry.contains(c)).collect();
    assert!(unknown.is_empty(), "sections for codes not in the registry: {unknown:?}");
    assert_eq!(documented, registry, "one section per code, in registry order");
    for (section, info) in sections.iter().zip(CODES) {
        assert_eq!(section.title, info.title, "heading of {} must be the registry title", info.code);
    }
}

#[test]
fn examples_produce_their_code_and_fixes_compile() {
    let path = doc_path();
    let doc = std::fs::read_to_string(&path).expect("docs/errors.md exists");
    let bless = std::env::var_os("CNNC_BLESS").is_some_and(|v| v != "0");
    let mut lines: Vec<String> = doc.lines().map(str::to_string).collect();
    let mut failures = Vec::new();
    // Rewrite text blocks from the end, so earlier line numbers stay valid.
    let mut rewrites: Vec<(std::ops::Range<usize>, String)> = Vec::new();
    for section in sections(&doc) {
        if UNREACHABLE_CODES.contains(&section.code.as_str()) {
            // Nothing produces the code, so there is no example to show.
            if !section.fences.is_empty() {
                failures.push(format!("{}: an unreachable code cannot have an example", section.code));
            }
            continue;
        }
        let (bad, output, fixed) = match parts(&section) {
            Ok(p) => p,
            Err(e) => {
                failures.push(e);
                continue;
            }
        };
        let code = section.code.as_str();
        let (text, diags) = diagnose(&bad.body);
        if !codes_in(&text).iter().any(|c| c == code) {
            failures.push(format!("{code}: the erroneous example does not produce {code}:\n{text}"));
        }
        if code.starts_with('E') && !has_errors(&diags) {
            failures.push(format!("{code}: the erroneous example has no error"));
        }
        let shown = text.trim_end();
        if output.body != shown {
            if bless {
                rewrites.push((output.body_lines.clone(), shown.to_string()));
            } else {
                failures.push(format!(
                    "{code}: the output shown differs from what cnnc prints (CNNC_BLESS=1 updates it):\n\
                     --- shown ---\n{}\n--- printed ---\n{shown}",
                    output.body
                ));
            }
        }
        let (fixed_text, fixed_diags) = diagnose(&fixed.body);
        if !fixed_diags.is_empty() {
            failures.push(format!("{code}: the fixed example is not clean:\n{fixed_text}"));
        }
    }
    if bless && !rewrites.is_empty() {
        rewrites.sort_by_key(|(range, _)| std::cmp::Reverse(range.start));
        for (range, text) in rewrites {
            lines.splice(range, text.lines().map(str::to_string));
        }
        std::fs::write(&path, lines.join("\n") + "\n").expect("docs/errors.md is writable");
    }
    assert!(failures.is_empty(), "{} problems in docs/errors.md:\n\n{}", failures.len(), failures.join("\n\n"));
}
