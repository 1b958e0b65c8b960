//! The tokens of a `cnn! { ... }` body turned back into `.cnn` source text, with the map from
//! byte offsets in that text to the tokens' spans, so that a diagnostic becomes a compile error
//! at the token it is about.
//!
//! Every `.cnn` token is also a Rust token (the grammar is written so), and the compiler tells
//! each token's line and column: each token is written at its own line and column, so the text
//! has the layout the user typed (the layer doc comments of the generated module quote its
//! lines, and the line numbers are the Rust file's). Tokens whose place is unknown or out of
//! order (from another macro's expansion) are separated by a space, unless a joint punctuation
//! (the `-` of `->`) asks for none. `///` and `//!` comments reach a macro as `#[doc = ...]` and
//! `#![doc = ...]` attributes; the `.cnn` grammar has no attributes, so they are dropped, as
//! comments are.

use proc_macro2::{Delimiter, Span, TokenStream, TokenTree};

/// One token's text in the source and its span in the Rust file.
#[derive(Clone, Debug)]
pub struct Piece {
    pub start: usize,
    pub end: usize,
    pub span: Span,
}

/// The reconstructed source and where each token of it came from, in text order.
#[derive(Debug)]
pub struct SourceMap {
    pub text: String,
    pub pieces: Vec<Piece>,
}

impl SourceMap {
    /// The spans of the first and the last token a byte range covers (one token, or the
    /// nearest one for an empty range such as an insertion point); `None` when the body has no
    /// tokens.
    pub fn spans(&self, start: usize, end: usize) -> Option<(Span, Span)> {
        let first = self.pieces.partition_point(|p| p.end <= start);
        let first = self.pieces.get(first).or(self.pieces.last())?;
        let mut covered = self.pieces.iter().filter(|p| p.start < end.max(start + 1) && p.end > start);
        let last = covered.next_back().unwrap_or(first);
        Some((first.span, last.span))
    }
}

/// Builds the source text of `tokens`.
pub fn source_of(tokens: TokenStream) -> SourceMap {
    let mut writer = Writer { text: String::new(), pieces: Vec::new(), line: 1, col: 1, joint: false };
    writer.stream(tokens);
    SourceMap { text: writer.text, pieces: writer.pieces }
}

struct Writer {
    text: String,
    pieces: Vec<Piece>,
    /// Where the next character of `text` stands in the Rust file (one-based line and column).
    line: usize,
    col: usize,
    /// The last token was a punctuation joint to the next (`-` of `->`).
    joint: bool,
}

impl Writer {
    fn stream(&mut self, tokens: TokenStream) {
        let mut iter = tokens.into_iter().peekable();
        while let Some(tree) = iter.next() {
            if is_doc_attribute(&tree, &mut iter) {
                continue;
            }
            match tree {
                TokenTree::Group(group) => {
                    let (open, close) = match group.delimiter() {
                        Delimiter::Parenthesis => ("(", ")"),
                        Delimiter::Bracket => ("[", "]"),
                        Delimiter::Brace => ("{", "}"),
                        // An invisible group (a `macro_rules!` fragment): its tokens only.
                        Delimiter::None => {
                            self.stream(group.stream());
                            continue;
                        }
                    };
                    self.token(open, group.span_open(), false);
                    self.stream(group.stream());
                    self.token(close, group.span_close(), false);
                }
                TokenTree::Punct(p) => {
                    self.token(&p.as_char().to_string(), p.span(), p.spacing() == proc_macro2::Spacing::Joint)
                }
                TokenTree::Ident(i) => self.token(&i.to_string(), i.span(), false),
                TokenTree::Literal(l) => self.token(&l.to_string(), l.span(), false),
            }
        }
    }

    /// Writes one token at its place, recording its span.
    fn token(&mut self, text: &str, span: Span, joint: bool) {
        let at = span.start();
        // proc-macro2's columns are zero-based.
        let (line, col) = (at.line, at.column + 1);
        if line > self.line {
            self.text.extend(std::iter::repeat_n('\n', line - self.line));
            (self.line, self.col) = (line, 1);
        }
        if line == self.line && col > self.col {
            self.text.extend(std::iter::repeat_n(' ', col - self.col));
            self.col = col;
        } else if !(self.joint || self.text.is_empty() || line == self.line && col == self.col) {
            // Out of order or unknown: keep tokens apart.
            self.text.push(' ');
            self.col += 1;
        }
        let start = self.text.len();
        self.text.push_str(text);
        self.pieces.push(Piece { start, end: self.text.len(), span });
        match text.rfind('\n') {
            Some(i) => {
                self.line += text.matches('\n').count();
                self.col = text[i + 1..].chars().count() + 1;
            }
            None => self.col += text.chars().count(),
        }
        self.joint = joint;
    }
}

/// Whether `tree` starts a doc attribute (`#[doc ...]` or `#![doc ...]`); if so, the rest of
/// it is taken from `rest`.
fn is_doc_attribute(tree: &TokenTree, rest: &mut std::iter::Peekable<proc_macro2::token_stream::IntoIter>) -> bool {
    let TokenTree::Punct(hash) = tree else { return false };
    if hash.as_char() != '#' {
        return false;
    }
    let mut ahead = rest.clone();
    let inner = matches!(ahead.peek(), Some(TokenTree::Punct(p)) if p.as_char() == '!');
    if inner {
        ahead.next();
    }
    let Some(TokenTree::Group(g)) = ahead.next() else { return false };
    let is_doc = g.delimiter() == Delimiter::Bracket
        && matches!(g.stream().into_iter().next(), Some(TokenTree::Ident(i)) if i == "doc");
    if is_doc {
        *rest = ahead;
    }
    is_doc
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(text: &str) -> SourceMap {
        source_of(text.parse().expect("Rust tokens"))
    }

    #[test]
    fn layout_is_kept() {
        let src = "model m {\n    input x: [1, 8, 8]\n    x -> conv(4, k=3) -> relu\n}";
        assert_eq!(map(src).text, src);
    }

    #[test]
    fn doc_comments_are_dropped_and_lines_stay() {
        let src = "/// The model.\nmodel m {\n    //! inner\n    input x: [4] // tail\n    x -> fc(2)\n}";
        let m = map(src);
        assert_eq!(m.text, "\nmodel m {\n\n    input x: [4]\n    x -> fc(2)\n}");
    }

    #[test]
    fn joint_punctuation_stays_joint_without_places() {
        // Tokens made by hand have no place: spaces between, none inside `->`.
        let tokens: TokenStream = "x -> relu".parse().expect("tokens");
        let respanned: TokenStream = tokens
            .into_iter()
            .map(|mut t| {
                t.set_span(Span::call_site());
                t
            })
            .collect();
        let text = source_of(respanned).text;
        assert!(text.contains("->"), "{text:?}");
        assert_eq!(cnnc_syntax::parse(&format!("model m {{ input x: [4] {text} }}")).1.len(), 0, "{text:?}");
    }

    #[test]
    fn ranges_map_to_their_tokens() {
        let src = "model m {\n    input x: [1, 8, 8]\n    x -> conv(4, k=3)\n}";
        let m = map(src);
        let at = |needle: &str| src.find(needle).expect("needle");
        let (first, last) = m.spans(at("conv"), at("conv") + "conv(4, k=3)".len()).expect("tokens");
        assert_eq!((first.start().line, first.start().column), (3, 9));
        assert_eq!((last.start().line, last.start().column), (3, 20), "the closing parenthesis");
        // An empty range (an insertion point) points at the token after it.
        let (first, _) = m.spans(at("x ->"), at("x ->")).expect("tokens");
        assert_eq!(first.start().line, 3);
        // Past the end: the last token.
        let (first, _) = m.spans(src.len() + 5, src.len() + 5).expect("tokens");
        assert_eq!(first.start().line, 4);
        assert!(map("").spans(0, 0).is_none());
    }
}
