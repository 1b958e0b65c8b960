//! What `cnn!` expands to: the generated module (`pub mod <model> { ... }`), or compile errors
//! at the offending tokens, and the warnings as deprecation warnings.
//!
//! Stable Rust has no API for a macro's own errors at several spans or for its warnings, so:
//!
//! - each error is a `::core::compile_error!` whose path has the first offending token's span
//!   and whose braces have the last one's: rustc underlines from one to the other (syn's trick);
//! - each warning is the use of a `#[deprecated(note = ...)]` constant at the offending token,
//!   so rustc prints `warning: use of deprecated constant ...: W0300 ...` there (and
//!   `#![deny(deprecated)]` makes it an error);
//! - for a model read from a file, the spans are in the `.cnn` file, which rustc cannot point
//!   into: the message is the diagnostic rendered as the CLI renders it (file:line:col and the
//!   source line), at the `file = "..."` string.

use crate::options::{self, Body};
use crate::source_map::{self, SourceMap};
use cnnc_diag::{Diagnostic, SourceFile};
use cnnc_emit::{EmitError, Emitted};
use proc_macro2::{Delimiter, Group, Ident, Literal, Punct, Spacing, Span, TokenStream, TokenTree};
use std::io::Read;
use std::path::{Path, PathBuf};

/// The largest `.cnn` file read (as the driver's limit: a mistaken path to a data set must not
/// be read whole into the compiler).
const MAX_SOURCE_BYTES: u64 = 16 << 20;

pub fn expand(input: TokenStream) -> TokenStream {
    let input = match options::parse(input) {
        Ok(input) => input,
        Err(e) => return compile_error(&e.message, e.span, e.span),
    };
    match input.body {
        Body::Inline(tokens) => inline(tokens, &input.options),
        Body::File { path, span } => file(&path, span, &input.options),
    }
}

/// A model written in the macro.
fn inline(tokens: TokenStream, options: &cnnc_emit::Options) -> TokenStream {
    let map = source_map::source_of(tokens);
    let name = format!("{} (cnn!)", Span::call_site().file());
    let source = SourceFile::new(name, map.text.clone());
    match emit(&source, options) {
        Ok(emitted) => {
            let warnings = emitted.warnings.iter().map(|w| {
                let span = map.spans(w.primary.span.start as usize, w.primary.span.end as usize).map(|s| s.0);
                warning(&inline_message(w, &map), span.unwrap_or_else(Span::call_site))
            });
            let warnings: TokenStream = warnings.collect();
            module(&emitted, warnings, Span::call_site())
        }
        Err(EmitError::Source(diags)) => diags
            .iter()
            .map(|d| {
                let (first, last) = map
                    .spans(d.primary.span.start as usize, d.primary.span.end as usize)
                    .unwrap_or((Span::call_site(), Span::call_site()));
                if d.is_error() {
                    compile_error(&inline_message(d, &map), first, last)
                } else {
                    warning(&inline_message(d, &map), first)
                }
            })
            .collect(),
        Err(e) => compile_error(&format!("cnnc: {e}"), Span::call_site(), Span::call_site()),
    }
}

/// A model read from `path` (relative to `CARGO_MANIFEST_DIR`); `span` is the string's.
fn file(path: &str, span: Span, options: &cnnc_emit::Options) -> TokenStream {
    let full = manifest_dir().join(path);
    let text = match read(&full) {
        Ok(text) => text,
        Err(reason) => {
            // No absolute path in the message: it would differ between machines (and the UI
            // tests pin the message).
            let message = format!(
                "cannot read `{path}`: {reason}\n= help: `file` is relative to the crate's directory, where its Cargo.toml is (CARGO_MANIFEST_DIR)"
            );
            return compile_error(&message, span, span);
        }
    };
    // The module includes the file, so cargo rebuilds the crate when it changes.
    let track = track(&full, span);
    let source = SourceFile::new(path, text);
    match emit(&source, options) {
        Ok(emitted) => {
            let mut extra = track;
            for w in &emitted.warnings {
                extra.extend(warning(&rendered(w, &source), span));
            }
            module(&emitted, extra, span)
        }
        Err(EmitError::Source(diags)) => {
            let mut out: TokenStream = diags
                .iter()
                .map(|d| {
                    if d.is_error() {
                        compile_error(&rendered(d, &source), span, span)
                    } else {
                        warning(&rendered(d, &source), span)
                    }
                })
                .collect();
            out.extend(track);
            out
        }
        Err(e) => {
            let mut out = compile_error(&format!("cnnc: {e}"), span, span);
            out.extend(track);
            out
        }
    }
}

/// One diagnostic of a file as the CLI renders it, for the text of a compile error: without
/// the closing summary (rustc has its own) and with `E0301: ` for `error[E0301]: ` (rustc
/// prints `error: ` before it).
fn rendered(d: &Diagnostic, source: &SourceFile) -> String {
    let one = std::slice::from_ref(d);
    let text = cnnc_render::render(one, source, false);
    let summary = cnnc_render::summary_line(one, &source.name);
    let text = text.trim_end().strip_suffix(summary.as_str()).unwrap_or(&text).trim_end();
    let severity = if d.is_error() { "error" } else { "warning" };
    match text.strip_prefix(&format!("{severity}[{}]: ", d.code)) {
        Some(rest) => format!("{}: {rest}", d.code),
        None => text.to_string(),
    }
}

/// The directory `file` is relative to: `CARGO_MANIFEST_DIR`, which cargo sets for every
/// crate it compiles. trybuild compiles its cases as a crate of its own under `target/`, so
/// the UI tests name the real directory in `CNNC_MANIFEST_DIR_OVERRIDE` (trybuild's
/// documented way out, dtolnay/trybuild#202).
fn manifest_dir() -> PathBuf {
    std::env::var_os("CNNC_MANIFEST_DIR_OVERRIDE")
        .or_else(|| std::env::var_os("CARGO_MANIFEST_DIR"))
        .map(PathBuf::from)
        .unwrap_or_default()
}

/// `cnnc_emit::emit_rust` with proc-macro2 in its own (fallback) mode, as in the CLI and the
/// code generator's tests: the generator's token streams are then plain data rather than
/// calls into rustc for every token (faster), and the module's text is printed exactly as the
/// CLI prints it.
fn emit(source: &SourceFile, options: &cnnc_emit::Options) -> Result<Emitted, EmitError> {
    proc_macro2::fallback::force();
    let result = cnnc_emit::emit_rust(source, options);
    proc_macro2::fallback::unforce();
    result
}

/// The file's text: size-limited, UTF-8 checked; the reason otherwise.
fn read(path: &Path) -> Result<String, String> {
    let file = std::fs::File::open(path).map_err(|e| e.to_string())?;
    let mut bytes = Vec::new();
    file.take(MAX_SOURCE_BYTES + 1).read_to_end(&mut bytes).map_err(|e| e.to_string())?;
    if bytes.len() as u64 > MAX_SOURCE_BYTES {
        return Err(format!("it is larger than {} MiB; is it really a .cnn source?", MAX_SOURCE_BYTES >> 20));
    }
    String::from_utf8(bytes)
        .map_err(|e| format!("it is not UTF-8 text (invalid byte at offset {})", e.utf8_error().valid_up_to()))
}

/// `const _: &str = ::core::include_str!("<absolute path>");`: the file becomes an input of
/// the crate's build (cargo's dep-info lists it), the stable way to track it.
fn track(path: &Path, span: Span) -> TokenStream {
    let mut lit = Literal::string(&path.display().to_string());
    lit.set_span(span);
    let mut args = Group::new(Delimiter::Parenthesis, TokenTree::Literal(lit).into());
    args.set_span(span);
    let call = path_call(&["core", "include_str"], span, args);
    let mut out = TokenStream::new();
    out.extend([
        ident("const", span),
        ident("_", span),
        punct(':', span),
        punct('&', span),
        ident("str", span),
        punct('=', span),
    ]);
    out.extend(call);
    out.extend([punct(';', span)]);
    out
}

/// `pub mod <model> { <generated module> <extra> }`.
fn module(emitted: &Emitted, extra: TokenStream, span: Span) -> TokenStream {
    let body: TokenStream = match emitted.text.parse() {
        Ok(body) => body,
        Err(e) => {
            return compile_error(&format!("cnnc: internal error: the generated module does not lex: {e}"), span, span);
        }
    };
    let mut inner = body;
    inner.extend(extra);
    let Some(name) = module_name(&emitted.model) else {
        return compile_error(
            &format!("cnnc: the model name `{}` cannot name a Rust module; rename the model", emitted.model),
            span,
            span,
        );
    };
    let mut out = TokenStream::new();
    out.extend([ident("pub", Span::call_site()), ident("mod", Span::call_site()), TokenTree::Ident(name)]);
    out.extend([TokenTree::Group(Group::new(Delimiter::Brace, inner))]);
    out
}

/// The model's name as a module name: raw for a Rust keyword (`r#type`); `None` for the
/// keywords that cannot be raw.
fn module_name(model: &str) -> Option<Ident> {
    const KEYWORDS: &[&str] = &[
        "as", "async", "await", "box", "break", "const", "continue", "do", "dyn", "else", "enum", "extern", "false",
        "final", "fn", "for", "gen", "if", "impl", "in", "let", "loop", "macro", "match", "mod", "move", "mut",
        "override", "priv", "pub", "ref", "return", "static", "struct", "trait", "true", "try", "type", "typeof",
        "unsafe", "unsized", "use", "virtual", "where", "while", "yield", "abstract", "become",
    ];
    let valid = model.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
        && model.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        && model != "_";
    match model {
        _ if !valid => None,
        "self" | "super" | "crate" | "Self" => None,
        _ if KEYWORDS.contains(&model) => Some(Ident::new_raw(model, Span::call_site())),
        _ => Some(Ident::new(model, Span::call_site())),
    }
}

/// A diagnostic as the text of a compile error at its token: code and message, the labels
/// (other places by line and column in the Rust file), the notes and the hint. rustc indents
/// the lines after the first under it.
fn inline_message(d: &Diagnostic, map: &SourceMap) -> String {
    let mut text = format!("{}: {}", d.code, d.message);
    if !d.primary.message.is_empty() {
        text.push_str(&format!("\nhere: {}", d.primary.message));
    }
    for label in &d.secondary {
        match map.spans(label.span.start as usize, label.span.end as usize) {
            Some((at, _)) => {
                let at = at.start();
                text.push_str(&format!("\nline {}, column {}: {}", at.line, at.column + 1, label.message))
            }
            None => text.push_str(&format!("\n{}", label.message)),
        }
    }
    for note in &d.notes {
        text.push_str(&format!("\n= note: {note}"));
    }
    if let Some(hint) = &d.hint {
        text.push_str(&format!("\n= help: {hint}"));
    }
    text
}

/// `::core::compile_error! { "message" }`, the path at `first` and the braces at `last`, so
/// that rustc's error spans both.
fn compile_error(message: &str, first: Span, last: Span) -> TokenStream {
    let mut lit = Literal::string(message);
    lit.set_span(last);
    let mut braces = Group::new(Delimiter::Brace, TokenTree::Literal(lit).into());
    braces.set_span(last);
    path_call(&["core", "compile_error"], first, braces)
}

/// `const _: () = { #[deprecated(note = "...")] const cnn_warning: () = (); cnn_warning };`,
/// the use at `span`.
fn warning(message: &str, span: Span) -> TokenStream {
    let site = Span::call_site();
    let note: TokenStream =
        [ident("note", site), punct('=', site), TokenTree::Literal(Literal::string(message))].into_iter().collect();
    let deprecated: TokenStream =
        [ident("deprecated", site), TokenTree::Group(Group::new(Delimiter::Parenthesis, note))].into_iter().collect();
    let allow: TokenStream = [
        ident("allow", site),
        TokenTree::Group(Group::new(Delimiter::Parenthesis, ident("non_upper_case_globals", site).into())),
    ]
    .into_iter()
    .collect();
    let unit = || TokenTree::Group(Group::new(Delimiter::Parenthesis, TokenStream::new()));
    let mut body = TokenStream::new();
    body.extend([punct('#', site), TokenTree::Group(Group::new(Delimiter::Bracket, deprecated))]);
    body.extend([punct('#', site), TokenTree::Group(Group::new(Delimiter::Bracket, allow))]);
    body.extend([
        ident("const", site),
        ident("cnn_warning", site),
        punct(':', site),
        unit(),
        punct('=', site),
        unit(),
        punct(';', site),
    ]);
    body.extend([ident("cnn_warning", span)]);
    let mut out = TokenStream::new();
    out.extend([ident("const", site), ident("_", site), punct(':', site), unit(), punct('=', site)]);
    out.extend([TokenTree::Group(Group::new(Delimiter::Brace, body)), punct(';', site)]);
    out
}

/// `::a::b! <args>`, the path at `span`.
fn path_call(path: &[&str], span: Span, args: Group) -> TokenStream {
    let mut out = TokenStream::new();
    for segment in path {
        out.extend([joint(':', span), punct(':', span), ident(segment, span)]);
    }
    out.extend([punct('!', span), TokenTree::Group(args)]);
    out
}

fn ident(name: &str, span: Span) -> TokenTree {
    TokenTree::Ident(Ident::new(name, span))
}

fn punct(c: char, span: Span) -> TokenTree {
    let mut p = Punct::new(c, Spacing::Alone);
    p.set_span(span);
    TokenTree::Punct(p)
}

fn joint(c: char, span: Span) -> TokenTree {
    let mut p = Punct::new(c, Spacing::Joint);
    p.set_span(span);
    TokenTree::Punct(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn expand_text(text: &str) -> String {
        expand(text.parse().expect("tokens")).to_string()
    }

    #[test]
    fn a_model_becomes_its_module() {
        let out = expand_text("model tiny { input x: [4]  x -> fc(2) }");
        assert!(out.starts_with("pub mod tiny {"), "{}", &out[..80]);
        assert!(out.contains("pub struct Model"));
    }

    #[test]
    fn errors_carry_code_hint_and_labels() {
        let out =
            expand_text("model m {\n    input x: [3, 8, 8]\n    let y = x -> conv(4, k=3, pad=1)\n    add(x, y)\n}");
        assert!(out.starts_with(":: core :: compile_error !"), "{out}");
        assert!(out.contains("E0301: "), "{out}");
        assert!(out.contains("here: this is [4, 8, 8]"), "{out}");
        assert!(out.contains("line 4, column 9: this is [3, 8, 8]"), "{out}");
        assert!(out.contains("= help: make the shortcut match"), "{out}");
    }

    #[test]
    fn warnings_become_deprecation_uses() {
        let out = expand_text("model m { input x: [1, 8, 8]  x -> conv(2, k=3, stride=2) -> flatten }");
        assert!(out.starts_with("pub mod m {"), "{}", &out[..80]);
        assert!(out.contains("deprecated (note = \"W0300: "), "{out}");
    }

    #[test]
    fn a_missing_file_is_an_error_naming_it() {
        let out = expand_text(r#"file = "no/such/model.cnn""#);
        assert!(out.contains("cannot read `no/such/model.cnn`"), "{out}");
        assert!(out.contains("CARGO_MANIFEST_DIR"), "{out}");
    }

    #[test]
    fn file_errors_are_rendered_with_the_source_line() {
        let dir = std::env::temp_dir().join(format!("cnnc-macro-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("bad.cnn");
        std::fs::write(&path, "model m {\n    input x: [1, 4, 4]\n    x -> conv(2, k=7)\n}\n").expect("write");
        let out = expand_text(&format!("file = {:?}", path.display().to_string()));
        assert!(out.contains("E0300: the kernel"), "{out}");
        assert!(!out.contains("could not compile"), "rustc says that: {out}");
        assert!(out.contains(":3:10"), "file:line:col: {out}");
        assert!(out.contains("x -> conv(2, k=7)"), "the source line: {out}");
        assert!(out.contains("include_str"), "tracked even when it fails: {out}");
        std::fs::remove_dir_all(&dir).expect("clean up");
    }

    #[test]
    fn module_names() {
        assert_eq!(module_name("resnet18").map(|i| i.to_string()).as_deref(), Some("resnet18"));
        assert_eq!(module_name("type").map(|i| i.to_string()).as_deref(), Some("r#type"));
        assert!(module_name("self").is_none());
    }
}
