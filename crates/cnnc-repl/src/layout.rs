//! The session's source: its definitions laid out as one `.cnn` text for the front end, and
//! the way back from a span in that text to the input (or loaded file) it came from, so that a
//! diagnostic points at what the user typed.
//!
//! Incremental lowering works on this text: the session keeps the source of every definition
//! and of the implicit model's lines, and an input re-parses the text and re-elaborates only
//! the model it changes (the implicit model, the model just defined, or for a new block the
//! whole-file checks and the implicit model that may use it); other models are not elaborated
//! again. The model that changed is elaborated whole.

use cnnc_diag::{Diagnostic, Label, SourceFile, Span};
use cnnc_syntax::ast::{Expr, ExprKind, Item, ItemKind, Stmt};
use std::ops::Range;
use std::rc::Rc;

/// The name of the model built layer by layer at the prompt.
pub const IMPLICIT: &str = "repl";

/// A piece of text the session holds: a slice of what was typed or loaded.
#[derive(Clone, Debug)]
pub struct Piece {
    pub origin: Rc<SourceFile>,
    pub range: Range<usize>,
}

impl Piece {
    pub fn text(&self) -> &str {
        &self.origin.text[self.range.clone()]
    }
}

/// What an entry of the session is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A `model` or `block` definition.
    Item { kind: ItemKind, name: String },
    /// The implicit model's `input x: [..]`, with the input's name.
    Input { name: String },
    /// A `let` or `freeze` statement of the implicit model.
    Stmt,
    /// One or more chain steps of the implicit model (`conv(8, k=3) -> relu`).
    Layers,
}

/// One accepted input (or one item of a loaded file).
#[derive(Clone, Debug)]
pub struct Entry {
    pub piece: Piece,
    pub kind: Kind,
}

/// The assembled text and, for each copied piece, where it sits in it.
#[derive(Debug)]
pub struct Layout {
    pub file: SourceFile,
    segments: Vec<Segment>,
}

#[derive(Debug)]
struct Segment {
    at: usize,
    piece: Piece,
}

/// Lays the entries out: the definitions in order, then the implicit model (when it has an
/// input) as `model repl { input ..; lets; x -> steps }`.
pub fn assemble(entries: &[Entry]) -> Layout {
    let mut layout = Layout { file: SourceFile::new("<session>", String::new()), segments: Vec::new() };
    let mut text = String::new();
    let mut push = |text: &mut String, piece: &Piece| {
        layout.segments.push(Segment { at: text.len(), piece: piece.clone() });
        text.push_str(piece.text());
    };
    for entry in entries.iter().filter(|e| matches!(e.kind, Kind::Item { .. })) {
        push(&mut text, &entry.piece);
        text.push('\n');
    }
    if let Some(input) = entries.iter().find(|e| matches!(e.kind, Kind::Input { .. })) {
        let Kind::Input { name } = &input.kind else { unreachable!("found as an input") };
        text.push_str(&format!("model {IMPLICIT} {{\n"));
        push(&mut text, &input.piece);
        text.push('\n');
        for stmt in entries.iter().filter(|e| e.kind == Kind::Stmt) {
            push(&mut text, &stmt.piece);
            text.push('\n');
        }
        text.push_str(name);
        for layers in entries.iter().filter(|e| e.kind == Kind::Layers) {
            text.push_str("\n  -> ");
            push(&mut text, &layers.piece);
        }
        text.push_str("\n}\n");
    }
    layout.file = SourceFile::new("<session>", text);
    layout
}

impl Layout {
    /// The piece holding `span` and the span within its origin.
    fn locate(&self, span: Span) -> Option<(&Rc<SourceFile>, Span)> {
        let (start, end) = (span.start as usize, span.end as usize);
        self.segments.iter().find_map(|s| {
            let len = s.piece.range.len();
            (s.at <= start && end <= s.at + len && start <= end).then(|| {
                (&s.piece.origin, Span::new(start - s.at + s.piece.range.start, end - s.at + s.piece.range.start))
            })
        })
    }

    /// The input (or loaded file) a span of the assembled text lies in.
    pub fn origin_of(&self, span: Span) -> Option<&Rc<SourceFile>> {
        self.locate(span).map(|(origin, _)| origin)
    }

    /// Renders diagnostics of the assembled text against the inputs they point into: each one
    /// with its snippet from the typed line (or loaded file); labels in other inputs become
    /// notes naming the place, and a diagnostic about the glue between pieces (the implicit
    /// model as a whole) is shown without a snippet.
    pub fn render(&self, diags: &[Diagnostic], color: bool) -> String {
        let mut out = String::new();
        for diag in diags {
            let (file, diag) = self.relocate(diag);
            out.push_str(&cnnc_driver::render_diagnostics(std::slice::from_ref(&diag), &file, color));
        }
        out
    }

    fn relocate(&self, diag: &Diagnostic) -> (SourceFile, Diagnostic) {
        let mut moved = diag.clone();
        let origin = match self.locate(diag.primary.span) {
            Some((origin, span)) => {
                moved.primary.span = span;
                Some(origin)
            }
            None => {
                moved.primary = Label { span: Span::DUMMY, message: String::new() };
                None
            }
        };
        moved.secondary.clear();
        for label in &diag.secondary {
            match self.locate(label.span) {
                Some((o, span)) if origin.is_some_and(|p| Rc::ptr_eq(p, o)) => {
                    moved.secondary.push(Label { span, message: label.message.clone() });
                }
                Some((o, span)) => {
                    let at = o.line_col(span.start as usize);
                    let what = if label.message.is_empty() { "see" } else { label.message.as_str() };
                    moved.notes.push(format!("{what} ({}:{}:{})", o.name, at.line, at.col));
                }
                None => {}
            }
        }
        let file = origin.map_or_else(|| SourceFile::new("<session>", ""), |o| (**o).clone());
        (file, moved)
    }
}

/// The entries of the implicit model when `item` (of the text `piece`) has its form, as `:save`
/// writes it: `model repl` without parameters, an input, `let` and `freeze` statements, and a
/// chain from the input; each step becomes a line of its own.
pub fn implicit_entries(item: &Item, piece: &Piece) -> Option<Vec<Entry>> {
    if item.kind != ItemKind::Model || item.name.name != IMPLICIT || !item.params.is_empty() {
        return None;
    }
    let at = |span: Span| Piece {
        origin: piece.origin.clone(),
        range: piece.range.start + span.start as usize..piece.range.start + span.end as usize,
    };
    let (last, rest) = item.body.split_last()?;
    let mut entries = Vec::new();
    let mut input = None;
    for stmt in rest {
        match stmt {
            Stmt::Input { name, span, .. } if input.is_none() => {
                input = Some(name.name.clone());
                entries.push(Entry { piece: at(*span), kind: Kind::Input { name: name.name.clone() } });
            }
            Stmt::Let { span, .. } | Stmt::Freeze { span, .. } => {
                entries.push(Entry { piece: at(*span), kind: Kind::Stmt })
            }
            Stmt::Input { .. } | Stmt::Expr(_) => return None,
        }
    }
    let input = input?;
    let steps = match last {
        Stmt::Expr(Expr { kind: ExprKind::Chain { head, steps }, .. }) => {
            matches!(&head.kind, ExprKind::Name(n) if *n == input).then_some(steps.as_slice())?
        }
        Stmt::Expr(Expr { kind: ExprKind::Name(n), .. }) if *n == input => &[],
        _ => return None,
    };
    entries.extend(steps.iter().map(|step| Entry { piece: at(step.span), kind: Kind::Layers }));
    Some(entries)
}

/// The session's definitions as one `.cnn` file (`:save`): the definitions as written, then the
/// implicit model as a model of its own, one step a line.
pub fn save_text(entries: &[Entry]) -> String {
    let mut text = String::from("// Saved from a `cnnc repl` session.\n");
    for entry in entries.iter().filter(|e| matches!(e.kind, Kind::Item { .. })) {
        text.push('\n');
        text.push_str(entry.piece.text().trim_end());
        text.push('\n');
    }
    if let Some(input) = entries.iter().find(|e| matches!(e.kind, Kind::Input { .. })) {
        let Kind::Input { name } = &input.kind else { unreachable!("found as an input") };
        text.push_str(&format!("\nmodel {IMPLICIT} {{\n    {}\n", input.piece.text().trim()));
        for stmt in entries.iter().filter(|e| e.kind == Kind::Stmt) {
            text.push_str(&format!("    {}\n", stmt.piece.text().trim()));
        }
        text.push_str(&format!("    {name}"));
        for layers in entries.iter().filter(|e| e.kind == Kind::Layers) {
            text.push_str(&format!("\n      -> {}", layers.piece.text().trim()));
        }
        text.push_str("\n}\n");
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn typed(n: usize, text: &str, kind: Kind) -> Entry {
        let origin = Rc::new(SourceFile::new(format!("<input {n}>"), text));
        Entry { piece: Piece { range: 0..text.len(), origin }, kind }
    }

    #[test]
    fn the_implicit_model_is_a_chain_after_the_definitions() {
        let entries = [
            typed(1, "input x: [1, 8, 8]", Kind::Input { name: "x".into() }),
            typed(2, "conv(4, k=3)", Kind::Layers),
            typed(3, "block b { input y  y -> relu }", Kind::Item { kind: ItemKind::Block, name: "b".into() }),
            typed(4, "b", Kind::Layers),
        ];
        let layout = assemble(&entries);
        assert_eq!(
            layout.file.text,
            "block b { input y  y -> relu }\nmodel repl {\ninput x: [1, 8, 8]\nx\n  -> conv(4, k=3)\n  -> b\n}\n"
        );
        let at = layout.file.text.find("k=3").expect("there");
        let (origin, span) = layout.locate(Span::new(at, at + 3)).expect("inside a piece");
        assert_eq!((origin.name.as_str(), span), ("<input 2>", Span::new(8, 11)));
        assert!(layout.locate(Span::new(0, layout.file.text.len())).is_none());
        let saved = save_text(&entries);
        assert!(saved.ends_with("model repl {\n    input x: [1, 8, 8]\n    x\n      -> conv(4, k=3)\n      -> b\n}\n"));
    }
}
