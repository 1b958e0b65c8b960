//! `cnnc explain CODE`: the section of `docs/errors.md` about one diagnostic code.
//!
//! The file is embedded at build time, so the explanations always match the codes this binary
//! emits. A section is a `## E0301: title` heading and the text up to the next `## ` heading.

use cnnc_diag::{CODES, edit_distance};

const ERRORS_MD: &str = include_str!("../../../docs/errors.md");

/// Prints the explanation of `code`, or the list of every code when none is given.
pub fn run(code: Option<&str>, out: &mut String) -> Result<(), String> {
    let Some(code) = code else {
        out.push_str("Diagnostic codes (`cnnc explain CODE` explains one):\n\n");
        for info in CODES {
            out.push_str(&format!("  {}  {}\n", info.code, info.title));
        }
        return Ok(());
    };
    let wanted = code.trim().to_ascii_uppercase();
    let Some(info) = CODES.iter().find(|c| c.code.0 == wanted) else {
        return Err(unknown(code, &wanted));
    };
    match section(ERRORS_MD, info.code.0) {
        Some(text) => {
            out.push_str(text);
            out.push('\n');
            Ok(())
        }
        None => Err(format!("{} ({}) has no explanation in docs/errors.md yet", info.code, info.title)),
    }
}

/// The message for a code cnnc does not have, naming the nearest ones it does.
fn unknown(given: &str, wanted: &str) -> String {
    // Nearest first; among equally near codes, those of the same family (`E03..`) first.
    let common = |code: &str| code.chars().zip(wanted.chars()).take_while(|(a, b)| a == b).count();
    let mut near: Vec<(usize, std::cmp::Reverse<usize>, &str, &str)> = CODES
        .iter()
        .map(|c| (edit_distance(wanted, c.code.0), std::cmp::Reverse(common(c.code.0)), c.code.0, c.title))
        .filter(|n| n.0 <= 2)
        .collect();
    near.sort();
    let mut message = format!("`{given}` is not a cnnc diagnostic code");
    if near.is_empty() {
        message.push_str("; codes look like E0301 or W0300");
    } else {
        message.push_str("; similar codes:");
        for (_, _, code, title) in near.iter().take(6) {
            message.push_str(&format!("\n  {code}  {title}"));
        }
    }
    message.push_str("\nrun `cnnc explain` with no code to list them all");
    message
}

/// The section whose heading is `## <code>: ...`, heading included, trailing blank lines cut.
/// Headings inside fenced code blocks do not count: an example may well contain `## `.
fn section<'a>(doc: &'a str, code: &str) -> Option<&'a str> {
    let mut start = None;
    let mut in_fence = false;
    let mut offset = 0;
    for line in doc.split_inclusive('\n') {
        let here = offset;
        offset += line.len();
        if line.trim_start().starts_with("```") {
            in_fence = !in_fence;
            continue;
        }
        if in_fence || !line.starts_with("## ") {
            continue;
        }
        if let Some(s) = start {
            return Some(doc[s..here].trim_end());
        }
        let rest = &line[3..];
        if rest.strip_prefix(code).is_some_and(|after| after.starts_with(':')) {
            start = Some(here);
        }
    }
    start.map(|s| doc[s..].trim_end())
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOC: &str = "# Errors\n\nintro\n\n## E0100: syntax error\n\nText one.\n\n```text\n## not a heading\n```\n\nmore\n\n## E0101: deep\n\nText two.\n\n\n";

    #[test]
    fn sections_run_to_the_next_heading_outside_fences() {
        let one = section(DOC, "E0100").expect("found");
        assert!(one.starts_with("## E0100: syntax error\n"));
        assert!(one.ends_with("more"), "{one:?}");
        assert!(one.contains("## not a heading"));
        assert_eq!(section(DOC, "E0101"), Some("## E0101: deep\n\nText two."));
        assert_eq!(section(DOC, "E010"), None);
        assert_eq!(section(DOC, "E0102"), None);
    }

    #[test]
    fn every_code_has_a_section_in_the_embedded_doc() {
        for info in CODES {
            let text = section(ERRORS_MD, info.code.0).unwrap_or_else(|| panic!("{} missing", info.code));
            // A heading alone explains nothing.
            assert!(text.lines().count() > 2, "{} has no text", info.code);
        }
    }

    #[test]
    fn explain_is_case_insensitive_and_lists_codes() {
        let mut out = String::new();
        run(Some("e0301"), &mut out).expect("known code");
        assert!(out.starts_with("## E0301:"), "{out}");
        let mut list = String::new();
        run(None, &mut list).expect("list");
        assert_eq!(list.lines().filter(|l| l.starts_with("  E") || l.starts_with("  W")).count(), CODES.len());
    }

    #[test]
    fn unknown_codes_suggest_neighbours() {
        let err = run(Some("E0309"), &mut String::new()).unwrap_err();
        assert!(err.contains("`E0309` is not a cnnc diagnostic code"), "{err}");
        assert!(err.contains("E0301  add of tensors with different shapes"), "{err}");
        assert!(!err.contains("E0100"), "{err}");
        let err = run(Some("E301"), &mut String::new()).unwrap_err();
        assert!(err.contains("E0301"), "{err}");
        let err = run(Some("banana"), &mut String::new()).unwrap_err();
        assert!(err.contains("codes look like E0301"), "{err}");
    }
}
