//! cnnc's renderer of diagnostics: text, rustc style, with codespan-reporting. This is the only
//! place in cnnc that turns a `Diagnostic` into words on a screen; the driver (for the CLI and
//! the REPL) and the `cnn!` macro (for a model read from a file) both call it, so every front
//! door words a problem the same way. It depends on the diagnostic data model alone.
//!
//! ```text
//! error[E0300]: kernel 7x7 is larger than the padded input 5x5
//!   --> model.cnn:3:10
//!    |
//!  3 |     x -> conv(8, k=7)
//!    |          ^^^^^^^^^^^^ this layer
//!    |
//!    = note: input is [3, 5, 5]
//!    = help: pad the input or use a smaller kernel
//!
//! error: could not compile `model.cnn` due to 1 previous error
//! ```

use cnnc_diag::{Diagnostic, Severity, SourceFile, Span};
use codespan_reporting::diagnostic::{Diagnostic as CsDiagnostic, Label as CsLabel, Severity as CsSeverity};
use codespan_reporting::files::SimpleFile;
use codespan_reporting::term::{self, Chars, Config, termcolor};

/// Renders every diagnostic, then a summary line when there is anything to sum up. The output is
/// deterministic (snapshot tests pin it) and has ANSI colour codes only when `color` is set.
pub fn render(diags: &[Diagnostic], file: &SourceFile, color: bool) -> String {
    let mut out = render_diagnostics(diags, file, color);
    let summary = summary_line(diags, &file.name);
    if !summary.is_empty() {
        if color {
            let style = if diags.iter().any(Diagnostic::is_error) { "\x1b[1;31m" } else { "\x1b[1;33m" };
            let (head, rest) = summary.split_once(':').unwrap_or((&summary, ""));
            out.push_str(&format!("{style}{head}\x1b[0m\x1b[1m:{rest}\x1b[0m\n"));
        } else {
            out.push_str(&summary);
            out.push('\n');
        }
    }
    out
}

/// Renders every diagnostic without [`render`]'s closing summary line: for the REPL, where each
/// input is its own small source and "could not compile" would say nothing new.
pub fn render_diagnostics(diags: &[Diagnostic], file: &SourceFile, color: bool) -> String {
    let files = SimpleFile::new(file.name.as_str(), file.text.as_str());
    let config = config();
    diags.iter().map(|diag| render_one(&convert(diag, &file.text), &files, &config, color)).collect()
}

/// The closing line, as rustc's: `error: could not compile `m.cnn` due to 2 previous errors; 1
/// warning emitted`, or `warning: `m.cnn` generated 1 warning`, or empty when there is nothing.
pub fn summary_line(diags: &[Diagnostic], name: &str) -> String {
    let errors = diags.iter().filter(|d| d.is_error()).count();
    let warnings = diags.len() - errors;
    let plural = |n: usize, what: &str| if n == 1 { format!("1 {what}") } else { format!("{n} {what}s") };
    match (errors, warnings) {
        (0, 0) => String::new(),
        (0, w) => format!("warning: `{name}` generated {}", plural(w, "warning")),
        (e, 0) => format!("error: could not compile `{name}` due to {} previous {}", e, noun(e, "error")),
        (e, w) => format!(
            "error: could not compile `{name}` due to {e} previous {}; {} emitted",
            noun(e, "error"),
            plural(w, "warning")
        ),
    }
}

fn noun(n: usize, what: &str) -> String {
    if n == 1 { what.to_string() } else { format!("{what}s") }
}

/// rustc's look: `-->` and `|` rather than box-drawing characters, which also keeps the output
/// plain ASCII for logs and snapshot files.
fn config() -> Config {
    Config { chars: Chars::ascii(), ..Config::default() }
}

fn convert(diag: &Diagnostic, text: &str) -> CsDiagnostic<()> {
    let severity = match diag.severity {
        Severity::Error => CsSeverity::Error,
        Severity::Warning => CsSeverity::Warning,
    };
    let mut labels = Vec::new();
    // The empty span at 0 with no label is the phases' way of saying "the whole file" (no model
    // to compile, say): pointing at the first character would suggest it is the culprit.
    let whole_file = diag.primary.span == Span::DUMMY && diag.primary.message.is_empty();
    if !whole_file {
        labels.push(CsLabel::primary((), clamp(diag.primary.span, text)).with_message(&diag.primary.message));
    }
    for label in &diag.secondary {
        labels.push(CsLabel::secondary((), clamp(label.span, text)).with_message(&label.message));
    }
    let mut notes: Vec<String> = diag.notes.iter().map(|n| format!("note: {n}")).collect();
    notes.extend(diag.hint.iter().map(|h| format!("help: {h}")));
    CsDiagnostic::new(severity)
        .with_code(diag.code.to_string())
        .with_message(&diag.message)
        .with_labels(labels)
        .with_notes(notes)
}

/// The span cut to the text and moved onto character boundaries. Phases produce valid spans, but
/// a renderer that panics on a bad one would turn a compiler bug into a crash with no message.
fn clamp(span: Span, text: &str) -> std::ops::Range<usize> {
    let floor = |mut i: usize| {
        i = i.min(text.len());
        while !text.is_char_boundary(i) {
            i -= 1;
        }
        i
    };
    let start = floor(span.start as usize);
    start..floor(span.end as usize).max(start)
}

fn render_one(diag: &CsDiagnostic<()>, files: &SimpleFile<&str, &str>, config: &Config, color: bool) -> String {
    let rendered = if color {
        let mut buffer = termcolor::Buffer::ansi();
        term::emit_to_write_style(&mut buffer, config, files, diag)
            .map(|()| String::from_utf8_lossy(buffer.as_slice()).into_owned())
    } else {
        term::emit_into_string(config, files, diag)
    };
    // Clamped spans leave codespan nothing to fail on; should it fail anyway, the message and
    // notes still reach the user, without the snippet.
    rendered.unwrap_or_else(|_| {
        let severity = if diag.severity == CsSeverity::Error { "error" } else { "warning" };
        let code = diag.code.as_deref().unwrap_or("");
        let mut text = format!("{severity}[{code}]: {}\n", diag.message);
        for note in &diag.notes {
            text.push_str(&format!("  = {note}\n"));
        }
        text.push('\n');
        text
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use cnnc_diag::Code;

    const SRC: &str = "model m {\n    input x: [3, 5, 5]\n    x -> conv(8, k=7) -> relu\n}\n";

    fn file() -> SourceFile {
        SourceFile::new("model.cnn", SRC)
    }

    fn span_of(needle: &str) -> Span {
        let start = SRC.find(needle).expect("needle in source");
        Span::new(start, start + needle.len())
    }

    fn kernel_error() -> Diagnostic {
        Diagnostic::error(
            Code::KERNEL_TOO_LARGE,
            "kernel 7x7 is larger than the padded input 5x5",
            span_of("conv(8, k=7)"),
            "this layer",
        )
        .with_secondary(span_of("[3, 5, 5]"), "input declared here")
        .with_note("input is [3, 5, 5], padded to [3, 5, 5]")
        .with_hint("pad the input or use a smaller kernel")
    }

    #[test]
    fn error_with_everything() {
        insta::assert_snapshot!(render(&[kernel_error()], &file(), false));
    }

    #[test]
    fn warning_and_error_summary() {
        let warning =
            Diagnostic::warning(Code::STRIDE_REMAINDER, "stride leaves 1 column unused", span_of("relu"), "here");
        let out = render(&[kernel_error(), warning], &file(), false);
        insta::assert_snapshot!(out);
    }

    #[test]
    fn whole_file_diagnostic_has_no_snippet() {
        let d = Diagnostic::error(Code::NO_MODEL, "the file defines no model", Span::new(0, 0), "")
            .with_hint("add `model name { ... }`");
        let out = render(&[d], &file(), false);
        assert!(!out.contains("-->"), "{out}");
        assert!(!out.contains("model m {"), "{out}");
        insta::assert_snapshot!(out);
    }

    #[test]
    fn empty_span_with_a_label_still_points() {
        // An empty span is whole-file only with an empty label; otherwise it marks a place
        // (an insertion point such as "expected `}` here").
        let d = Diagnostic::error(Code::SYNTAX, "expected `}`", Span::new(0, 0), "here");
        let out = render(&[d], &file(), false);
        assert!(out.contains("--> model.cnn:1:1"), "{out}");
    }

    #[test]
    fn summary_lines() {
        let e = kernel_error();
        let w = Diagnostic::warning(Code::UNUSED_VALUE, "unused", Span::new(0, 1), "");
        assert_eq!(summary_line(&[], "a.cnn"), "");
        assert_eq!(summary_line(std::slice::from_ref(&w), "a.cnn"), "warning: `a.cnn` generated 1 warning");
        assert_eq!(summary_line(&[w.clone(), w.clone()], "a.cnn"), "warning: `a.cnn` generated 2 warnings");
        assert_eq!(
            summary_line(std::slice::from_ref(&e), "a.cnn"),
            "error: could not compile `a.cnn` due to 1 previous error"
        );
        assert_eq!(
            summary_line(&[e.clone(), e, w], "a.cnn"),
            "error: could not compile `a.cnn` due to 2 previous errors; 1 warning emitted"
        );
        assert_eq!(render(&[], &file(), true), "");
    }

    #[test]
    fn color_only_when_asked() {
        let plain = render(&[kernel_error()], &file(), false);
        let colored = render(&[kernel_error()], &file(), true);
        assert!(!plain.contains('\x1b'));
        assert!(colored.contains("\x1b["));
        // Same text once the escapes are removed.
        assert_eq!(strip_ansi(&colored), plain);
        assert_eq!(render(&[kernel_error()], &file(), true), colored, "deterministic");
    }

    #[test]
    fn bad_spans_do_not_panic() {
        let text = "model é {}\n";
        let f = SourceFile::new("u.cnn", text);
        for span in
            [Span::new(7, 8), Span::new(100, 200), Span::new(5, 2), Span::new(u32::MAX as usize, u32::MAX as usize)]
        {
            let d = Diagnostic::error(Code::SYNTAX, "bad", span, "x").with_secondary(span, "y");
            let out = render(&[d], &f, false);
            assert!(out.starts_with("error[E0100]: bad\n"), "{out}");
        }
        let empty = SourceFile::new("empty.cnn", "");
        let out = render(&[Diagnostic::error(Code::SYNTAX, "bad", Span::new(3, 9), "x")], &empty, false);
        assert!(out.starts_with("error[E0100]: bad\n"), "{out}");
    }

    fn strip_ansi(s: &str) -> String {
        let mut out = String::new();
        let mut chars = s.chars();
        while let Some(c) = chars.next() {
            if c == '\x1b' {
                for c in chars.by_ref() {
                    if c == 'm' {
                        break;
                    }
                }
            } else {
                out.push(c);
            }
        }
        out
    }
}
