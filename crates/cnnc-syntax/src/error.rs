//! Syntax errors: typed, with spans, converted to diagnostics for the renderer at the edge.

use crate::parse::Rule;
use cnnc_diag::{Code, Diagnostic, Span};

#[derive(Clone, Debug, PartialEq)]
pub enum SyntaxError {
    /// The parser expected one of `expected` (human descriptions) and found `found`.
    Unexpected {
        span: Span,
        expected: Vec<&'static str>,
        found: String,
    },
    NestingTooDeep {
        span: Span,
        limit: usize,
    },
    ExpressionTooDeep {
        span: Span,
        limit: usize,
    },
    BadNumber {
        span: Span,
    },
    UnclosedBracket {
        span: Span,
        expected: char,
    },
    UnopenedBracket {
        span: Span,
        found: char,
    },
    UnterminatedComment {
        span: Span,
    },
    MismatchedBracket {
        open: Span,
        close: Span,
        expected: char,
        found: char,
    },
}

impl SyntaxError {
    pub(crate) fn from_pest(e: pest::error::Error<Rule>, src: &str, offset: usize) -> SyntaxError {
        let pos = offset
            + match e.location {
                pest::error::InputLocation::Pos(p) => p,
                pest::error::InputLocation::Span((s, _)) => s,
            };
        let found = token_at(src, pos);
        let span = Span::new(pos, pos + found.len().max(1).min(src.len().saturating_sub(pos)));
        let mut expected: Vec<&'static str> = match &e.variant {
            pest::error::ErrorVariant::ParsingError { positives, .. } => positives.iter().map(describe).collect(),
            pest::error::ErrorVariant::CustomError { .. } => Vec::new(),
        };
        expected.sort();
        expected.dedup();
        let found = if found.is_empty() { "end of file".to_string() } else { format!("`{found}`") };
        SyntaxError::Unexpected { span, expected, found }
    }

    pub fn span(&self) -> Span {
        match self {
            SyntaxError::Unexpected { span, .. }
            | SyntaxError::NestingTooDeep { span, .. }
            | SyntaxError::ExpressionTooDeep { span, .. }
            | SyntaxError::BadNumber { span }
            | SyntaxError::UnclosedBracket { span, .. }
            | SyntaxError::UnopenedBracket { span, .. }
            | SyntaxError::UnterminatedComment { span } => *span,
            SyntaxError::MismatchedBracket { close, .. } => *close,
        }
    }

    pub fn diagnostic(&self) -> Diagnostic {
        match self {
            SyntaxError::Unexpected { span, expected, found } => {
                let what = match expected.as_slice() {
                    [] => "something else".to_string(),
                    [one] => one.to_string(),
                    [init @ .., last] => format!("{} or {last}", init.join(", ")),
                };
                let d = Diagnostic::error(
                    Code::SYNTAX,
                    format!("expected {what}, found {found}"),
                    *span,
                    format!("expected {what}"),
                );
                match hint_for(expected, found) {
                    Some(h) => d.with_hint(h),
                    None => d,
                }
            }
            SyntaxError::NestingTooDeep { span, limit } => Diagnostic::error(
                Code::NESTING_TOO_DEEP,
                format!("brackets nested more than {limit} deep"),
                *span,
                "too deep",
            )
            .with_hint("name intermediate values with `let` or define a block instead of nesting"),
            SyntaxError::ExpressionTooDeep { span, limit } => Diagnostic::error(
                Code::NESTING_TOO_DEEP,
                format!("expression nested more than {limit} deep"),
                *span,
                "this expression",
            )
            .with_hint("split the expression with `let`"),
            SyntaxError::BadNumber { span } => {
                Diagnostic::error(Code::BAD_NUMBER, "number literal out of range", *span, "does not fit in 64 bits")
            }
            SyntaxError::UnclosedBracket { span, expected } => Diagnostic::error(
                Code::UNCLOSED_DELIMITER,
                "unclosed bracket",
                *span,
                format!("this is never closed by `{expected}`"),
            ),
            SyntaxError::UnterminatedComment { span } => Diagnostic::error(
                Code::UNCLOSED_DELIMITER,
                "unterminated block comment",
                *span,
                "this comment is never closed by `*/`",
            ),
            SyntaxError::UnopenedBracket { span, found } => Diagnostic::error(
                Code::UNCLOSED_DELIMITER,
                format!("unexpected closing `{found}`"),
                *span,
                "nothing open here to close",
            ),
            SyntaxError::MismatchedBracket { open, close, expected, found } => Diagnostic::error(
                Code::UNCLOSED_DELIMITER,
                format!("mismatched closing bracket: expected `{expected}`, found `{found}`"),
                *close,
                format!("expected `{expected}`"),
            )
            .with_secondary(*open, "opened here"),
        }
    }
}

/// The token starting at `pos`, for "found ..." in messages (empty at the end of input).
fn token_at(src: &str, pos: usize) -> &str {
    let rest = src.get(pos..).unwrap_or("");
    let mut chars = rest.char_indices();
    let Some((_, first)) = chars.next() else { return "" };
    let end = if first.is_ascii_alphanumeric() || first == '_' {
        rest.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '.')).unwrap_or(rest.len())
    } else if ["->", "==", "!=", "<=", ">=", "&&", "||", ".."].iter().any(|op| rest.starts_with(op)) {
        2
    } else {
        first.len_utf8()
    };
    &rest[..end]
}

/// What a grammar rule is, in words a user knows.
fn describe(rule: &Rule) -> &'static str {
    match rule {
        Rule::model | Rule::block | Rule::kw_model | Rule::kw_block | Rule::item_only => "`model` or `block`",
        Rule::expr_only => "an expression",
        Rule::param_list => "a parameter list",
        Rule::param => "a parameter",
        Rule::body => "`{`",
        Rule::stmt | Rule::input_stmt | Rule::let_stmt | Rule::freeze_stmt | Rule::expr_stmt => "a statement",
        Rule::kw_input => "`input`",
        Rule::kw_let => "`let`",
        Rule::kw_freeze => "`freeze`",
        Rule::layer_path | Rule::path_segment => "a layer name",
        Rule::expr | Rule::value | Rule::unary | Rule::primary | Rule::prefix_op | Rule::neg | Rule::not => {
            "an expression"
        }
        Rule::or
        | Rule::and
        | Rule::eq
        | Rule::ne
        | Rule::le
        | Rule::ge
        | Rule::lt
        | Rule::gt
        | Rule::add
        | Rule::sub
        | Rule::mul
        | Rule::div
        | Rule::rem
        | Rule::bin_op => "an operator",
        Rule::if_expr | Rule::kw_if => "`if`",
        Rule::kw_else => "`else`",
        Rule::kw_for => "`for`",
        Rule::kw_in => "`in`",
        Rule::call | Rule::name | Rule::ident | Rule::label | Rule::keyword => "a name",
        Rule::paren | Rule::trailing_comma => "`(`",
        Rule::list => "`[`",
        Rule::arg_list => "an argument list",
        Rule::arg => "an argument",
        Rule::step | Rule::steps | Rule::group | Rule::for_step | Rule::if_step | Rule::layer_call => "a layer",
        Rule::iterable => "a range or list",
        Rule::int | Rule::float | Rule::exponent => "a number",
        Rule::boolean => "`true` or `false`",
        Rule::EOI => "end of file",
        Rule::WHITESPACE | Rule::COMMENT | Rule::ident_char => "whitespace",
    }
}

fn hint_for(expected: &[&str], found: &str) -> Option<String> {
    match found {
        // `freeze layer1.*`: the glob of other tools, which a path does not need.
        "`*`" if expected.contains(&"a layer name") => {
            Some("`freeze layer1` already freezes every layer inside `layer1`; write the path without `.*`".into())
        }
        "`=`" => Some("to name a value write `let name = ...`; to name a layer write `name: layer(...)`".into()),
        "`:`" => Some("a layer name goes right before the layer in a chain: `x -> conv1: conv(64, k=3)`".into()),
        "`,`" if expected.contains(&"a layer") => Some("separate the layers of a chain with `->`".into()),
        _ if expected.contains(&"a layer") => Some("after `->` comes a layer such as `relu` or `conv(64, k=3)`".into()),
        _ => None,
    }
}
