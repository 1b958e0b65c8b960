//! Parsing: pest's parse tree to the AST, with limits that keep hostile input harmless.
//!
//! The file is cut into top-level items before parsing, so a syntax error in one model or block
//! does not hide the errors of the next. Bracket depth and expression depth are bounded before
//! anything recursive runs over the input.

use crate::ast::*;
use crate::error::SyntaxError;
use cnnc_diag::Span;
use pest::Parser as _;
use pest::iterators::Pair;

#[derive(pest_derive::Parser)]
#[grammar = "../../../grammar/cnn.pest"]
struct CnnParser;

/// Deepest bracket nesting accepted; real models need fewer than ten levels.
pub const MAX_NESTING: usize = 64;
/// Deepest expression tree accepted (`1 + 1 + ...` nests one level per operator).
pub const MAX_EXPR_DEPTH: usize = 256;

/// Parses a whole file; the AST holds every item that parsed, the errors every item that did not.
pub fn parse(src: &str) -> (File, Vec<SyntaxError>) {
    let mut items = Vec::new();
    let mut errors = Vec::new();
    let span = Span::new(0, src.trim_end().len());
    if let Err(e) = check_nesting(src) {
        return (File { items, span }, vec![e]);
    }
    for range in split_items(src) {
        match parse_item(src, range.clone()) {
            Ok(item) => items.push(item),
            Err(e) => errors.push(e),
        }
    }
    (File { items, span }, errors)
}

/// Parses a lone expression, such as a value given on the command line. Spans are relative to
/// `src`.
pub fn parse_expr(src: &str) -> Result<Expr, SyntaxError> {
    check_nesting(src)?;
    let mut pairs = CnnParser::parse(Rule::expr_only, src).map_err(|e| SyntaxError::from_pest(e, src, 0))?;
    let expr_only = pairs.next().expect("expr_only always yields one pair");
    let pair = expr_only.into_inner().next().expect("expr_only holds an expression");
    Builder { offset: 0 }.expr(pair, 0)
}

fn parse_item(src: &str, range: std::ops::Range<usize>) -> Result<Item, SyntaxError> {
    let offset = range.start;
    let text = &src[range];
    let mut pairs = CnnParser::parse(Rule::item_only, text).map_err(|e| SyntaxError::from_pest(e, src, offset))?;
    let item_only = pairs.next().expect("item_only always yields one pair");
    let pair = item_only.into_inner().next().expect("item_only holds an item");
    Builder { offset }.item(pair)
}

/// Splits the source at each `model` or `block` keyword that stands outside any bracket.
/// Leading text that is not an item becomes a range of its own, so it is reported.
fn split_items(src: &str) -> Vec<std::ops::Range<usize>> {
    let mut starts = Vec::new();
    let mut depth = 0usize;
    let bytes = src.as_bytes();
    let mut i = 0;
    let mut first_token = None;
    while i < bytes.len() {
        if let Some(end) = skip_comment(bytes, i) {
            i = end;
            continue;
        }
        let b = bytes[i];
        if !b.is_ascii_whitespace() && first_token.is_none() {
            first_token = Some(i);
        }
        match b {
            b'(' | b'[' | b'{' => depth += 1,
            b')' | b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
        let word_start = i == 0 || !is_ident_byte(bytes[i - 1]);
        if depth == 0 && word_start && (is_word_at(bytes, i, b"model") || is_word_at(bytes, i, b"block")) {
            starts.push(i);
        }
        i += 1;
    }
    let mut ranges = Vec::new();
    match (first_token, starts.first()) {
        (Some(first), Some(&s)) if first < s => ranges.push(first..s),
        (Some(first), None) => ranges.push(first..src.len()),
        _ => {}
    }
    for (k, &s) in starts.iter().enumerate() {
        let end = starts.get(k + 1).copied().unwrap_or(src.len());
        ranges.push(s..end);
    }
    ranges
}

fn is_ident_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

fn is_word_at(bytes: &[u8], i: usize, word: &[u8]) -> bool {
    bytes[i..].starts_with(word) && bytes.get(i + word.len()).is_none_or(|&b| !is_ident_byte(b))
}

/// If a comment starts at `i`, the index just past it.
fn skip_comment(bytes: &[u8], i: usize) -> Option<usize> {
    if bytes[i..].starts_with(b"//") {
        Some(bytes[i..].iter().position(|&b| b == b'\n').map_or(bytes.len(), |p| i + p))
    } else if bytes[i..].starts_with(b"/*") {
        Some(bytes[i + 2..].windows(2).position(|w| w == b"*/").map_or(bytes.len(), |p| i + 2 + p + 2))
    } else {
        None
    }
}

/// Rejects unterminated block comments, bracket nesting deeper than [`MAX_NESTING`] and
/// unbalanced brackets, before the recursive-descent parser could overflow its stack on them.
fn check_nesting(src: &str) -> Result<(), SyntaxError> {
    let bytes = src.as_bytes();
    let mut stack: Vec<(u8, usize)> = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i..].starts_with(b"/*") && !bytes[i + 2..].windows(2).any(|w| w == b"*/") {
            return Err(SyntaxError::UnterminatedComment { span: Span::new(i, i + 2) });
        }
        if let Some(end) = skip_comment(bytes, i) {
            i = end;
            continue;
        }
        match bytes[i] {
            open @ (b'(' | b'[' | b'{') => {
                stack.push((open, i));
                if stack.len() > MAX_NESTING {
                    return Err(SyntaxError::NestingTooDeep { span: Span::new(i, i + 1), limit: MAX_NESTING });
                }
            }
            close @ (b')' | b']' | b'}') => match stack.pop() {
                Some((open, at)) if matching(open) != close => {
                    return Err(SyntaxError::MismatchedBracket {
                        open: Span::new(at, at + 1),
                        close: Span::new(i, i + 1),
                        expected: matching(open) as char,
                        found: close as char,
                    });
                }
                Some(_) => {}
                None => return Err(SyntaxError::UnopenedBracket { span: Span::new(i, i + 1), found: close as char }),
            },
            _ => {}
        }
        i += 1;
    }
    match stack.pop() {
        Some((open, at)) => {
            Err(SyntaxError::UnclosedBracket { span: Span::new(at, at + 1), expected: matching(open) as char })
        }
        None => Ok(()),
    }
}

fn matching(open: u8) -> u8 {
    match open {
        b'(' => b')',
        b'[' => b']',
        _ => b'}',
    }
}

/// Turns pest pairs into AST nodes, shifting spans by the item's offset in the file.
struct Builder {
    offset: usize,
}

impl Builder {
    /// The pair's span without trailing whitespace and comments: pest's implicit whitespace
    /// before an optional or repeated part stays consumed when that part is absent, and an
    /// underline should end at the last real token.
    fn span(&self, pair: &Pair<Rule>) -> Span {
        let s = pair.as_span();
        let end = s.start() + trimmed_len(s.as_str());
        Span::new(s.start() + self.offset, end + self.offset)
    }

    fn ident(&self, pair: Pair<Rule>) -> Ident {
        Ident { name: pair.as_str().to_string(), span: self.span(&pair) }
    }

    fn item(&self, pair: Pair<Rule>) -> Result<Item, SyntaxError> {
        let span = self.span(&pair);
        let kind = if pair.as_rule() == Rule::model { ItemKind::Model } else { ItemKind::Block };
        let mut inner = pair.into_inner();
        inner.next(); // The keyword.
        let name = self.ident(inner.next().expect("item name"));
        let mut params = Vec::new();
        let mut body = Vec::new();
        for p in inner {
            match p.as_rule() {
                Rule::param_list => {
                    for param in p.into_inner() {
                        let mut parts = param.into_inner();
                        let name = self.ident(parts.next().expect("param name"));
                        let default = parts.next().map(|e| self.expr(e, 0)).transpose()?;
                        params.push(Param { name, default });
                    }
                }
                Rule::body => {
                    for stmt in p.into_inner() {
                        body.push(self.stmt(stmt)?);
                    }
                }
                other => unreachable!("unexpected {other:?} in an item"),
            }
        }
        Ok(Item { kind, name, params, body, span })
    }

    fn stmt(&self, pair: Pair<Rule>) -> Result<Stmt, SyntaxError> {
        let span = self.span(&pair);
        let rule = pair.as_rule();
        let mut inner = pair.into_inner();
        Ok(match rule {
            Rule::input_stmt => {
                inner.next(); // `input`
                let name = self.ident(inner.next().expect("input name"));
                let shape = inner.next().map(|e| self.expr(e, 0)).transpose()?;
                Stmt::Input { name, shape, span }
            }
            Rule::let_stmt => {
                inner.next(); // `let`
                let name = self.ident(inner.next().expect("let name"));
                let value = self.expr(inner.next().expect("let value"), 0)?;
                Stmt::Let { name, value, span }
            }
            Rule::expr_stmt => Stmt::Expr(self.expr(inner.next().expect("expression"), 0)?),
            other => unreachable!("unexpected {other:?} as a statement"),
        })
    }

    /// `expr = value ("->" step)*`.
    fn expr(&self, pair: Pair<Rule>, depth: usize) -> Result<Expr, SyntaxError> {
        let span = self.span(&pair);
        let depth = self.deeper(depth, span)?;
        let mut inner = pair.into_inner();
        let head = self.value(inner.next().expect("chain head"), depth)?;
        let steps = inner.map(|s| self.step(s, depth)).collect::<Result<Vec<_>, _>>()?;
        if steps.is_empty() {
            return Ok(head);
        }
        Ok(Expr { kind: ExprKind::Chain { head: Box::new(head), steps }, span })
    }

    fn deeper(&self, depth: usize, span: Span) -> Result<usize, SyntaxError> {
        if depth >= MAX_EXPR_DEPTH {
            return Err(SyntaxError::ExpressionTooDeep { span, limit: MAX_EXPR_DEPTH });
        }
        Ok(depth + 1)
    }

    /// `value = unary (bin_op unary)*`, folded by precedence climbing (all operators are
    /// left-associative).
    fn value(&self, pair: Pair<Rule>, depth: usize) -> Result<Expr, SyntaxError> {
        let span = self.span(&pair);
        let parts: Vec<Pair<Rule>> = pair.into_inner().collect();
        // A run of n operators nests n deep once folded: count it against the limit first.
        let operator_count = parts.iter().filter(|p| p.as_rule() != Rule::unary).count();
        let depth = depth + operator_count;
        if depth >= MAX_EXPR_DEPTH {
            return Err(SyntaxError::ExpressionTooDeep { span, limit: MAX_EXPR_DEPTH });
        }
        let mut operands = Vec::new();
        let mut operators = Vec::new();
        for p in parts {
            if p.as_rule() == Rule::unary {
                operands.push(self.unary(p, depth)?);
            } else {
                operators.push(bin_op(p.as_rule()));
            }
        }
        let mut operands = operands.into_iter();
        let first = operands.next().expect("a value has an operand");
        let mut rest = operators.into_iter().zip(operands).peekable();
        Ok(climb(first, 0, &mut rest))
    }

    fn unary(&self, pair: Pair<Rule>, depth: usize) -> Result<Expr, SyntaxError> {
        let span = self.span(&pair);
        let parts: Vec<Pair<Rule>> = pair.into_inner().collect();
        let depth = depth + parts.len() - 1;
        if depth >= MAX_EXPR_DEPTH {
            return Err(SyntaxError::ExpressionTooDeep { span, limit: MAX_EXPR_DEPTH });
        }
        let mut prefixes = Vec::new();
        let mut primary = None;
        for p in parts {
            if p.as_rule() == Rule::prefix_op {
                let op = p.into_inner().next().expect("prefix operator");
                let op_kind = if op.as_rule() == Rule::neg { UnOp::Neg } else { UnOp::Not };
                prefixes.push((op_kind, self.span(&op)));
            } else {
                primary = Some(self.primary(p, depth)?);
            }
        }
        let mut expr = primary.expect("unary has a primary");
        for (op, span) in prefixes.into_iter().rev() {
            // `-3` is a literal, not a negation, so `k = -3` reports a bad value, not an error
            // about applying `-` to something.
            expr = match (op, expr.kind) {
                (UnOp::Neg, ExprKind::Int(v)) => {
                    Expr { kind: ExprKind::Int(v.wrapping_neg()), span: span.to(expr.span) }
                }
                (UnOp::Neg, ExprKind::Float(v)) => Expr { kind: ExprKind::Float(-v), span: span.to(expr.span) },
                (op, kind) => {
                    let inner = Expr { kind, span: expr.span };
                    Expr { span: span.to(inner.span), kind: ExprKind::Unary(op, Box::new(inner)) }
                }
            };
        }
        Ok(expr)
    }

    fn primary(&self, pair: Pair<Rule>, depth: usize) -> Result<Expr, SyntaxError> {
        let span = self.span(&pair);
        let depth = self.deeper(depth, span)?;
        let kind = match pair.as_rule() {
            Rule::int => {
                let digits: String = pair.as_str().chars().filter(|&c| c != '_').collect();
                ExprKind::Int(digits.parse().map_err(|_| SyntaxError::BadNumber { span })?)
            }
            Rule::float => {
                let digits: String = pair.as_str().chars().filter(|&c| c != '_').collect();
                let v: f64 = digits.parse().map_err(|_| SyntaxError::BadNumber { span })?;
                if !v.is_finite() {
                    return Err(SyntaxError::BadNumber { span });
                }
                ExprKind::Float(v)
            }
            Rule::boolean => ExprKind::Bool(pair.as_str() == "true"),
            Rule::name => ExprKind::Name(pair.as_str().to_string()),
            Rule::call => {
                let mut inner = pair.into_inner().peekable();
                let label = inner
                    .next_if(|p| p.as_rule() == Rule::label)
                    .map(|p| self.ident(p.into_inner().next().expect("label name")));
                let func = self.ident(inner.next().expect("function name"));
                let args = self.args(inner.next().expect("argument list"), depth)?;
                ExprKind::Call { label, func, args }
            }
            Rule::paren => {
                let mut is_tuple = false;
                let mut elems = Vec::new();
                for p in pair.into_inner() {
                    if p.as_rule() == Rule::trailing_comma {
                        is_tuple = true;
                    } else {
                        elems.push(self.expr(p, depth)?);
                    }
                }
                if elems.len() == 1 && !is_tuple {
                    let mut e = elems.pop().expect("one element");
                    e.span = span;
                    return Ok(e);
                }
                ExprKind::Tuple(elems)
            }
            Rule::list => ExprKind::List(pair.into_inner().map(|p| self.expr(p, depth)).collect::<Result<_, _>>()?),
            Rule::if_expr => {
                let mut inner = pair.into_inner();
                inner.next(); // `if`
                let cond = self.value(inner.next().expect("condition"), depth)?;
                let then = self.expr(inner.next().expect("then branch"), depth)?;
                inner.next(); // `else`
                let other = inner.next().expect("else branch");
                let otherwise = if other.as_rule() == Rule::if_expr {
                    self.primary(other, depth)?
                } else {
                    self.expr(other, depth)?
                };
                ExprKind::If { cond: Box::new(cond), then: Box::new(then), otherwise: Box::new(otherwise) }
            }
            other => unreachable!("unexpected {other:?} as a primary expression"),
        };
        Ok(Expr { kind, span })
    }

    fn args(&self, pair: Pair<Rule>, depth: usize) -> Result<Vec<Arg>, SyntaxError> {
        pair.into_inner()
            .map(|arg| {
                let mut parts: Vec<Pair<Rule>> = arg.into_inner().collect();
                let value = self.expr(parts.pop().expect("argument value"), depth)?;
                let name = parts.pop().map(|p| self.ident(p));
                Ok(Arg { name, value })
            })
            .collect()
    }

    fn step(&self, pair: Pair<Rule>, depth: usize) -> Result<Step, SyntaxError> {
        let span = self.span(&pair);
        let depth = self.deeper(depth, span)?;
        let mut label = None;
        let mut kind = None;
        for p in pair.into_inner() {
            match p.as_rule() {
                Rule::label => label = Some(self.ident(p.into_inner().next().expect("label name"))),
                _ => kind = Some(self.step_kind(p, depth)?),
            }
        }
        Ok(Step { label, kind: kind.expect("step has a body"), span })
    }

    fn steps(&self, pair: Pair<Rule>, depth: usize) -> Result<Vec<Step>, SyntaxError> {
        pair.into_inner().map(|s| self.step(s, depth)).collect()
    }

    fn step_kind(&self, pair: Pair<Rule>, depth: usize) -> Result<StepKind, SyntaxError> {
        let rule = pair.as_rule();
        let mut inner = pair.into_inner();
        Ok(match rule {
            Rule::layer_call => {
                let name = self.ident(inner.next().expect("layer name"));
                let args = inner.next().map(|a| self.args(a, depth)).transpose()?;
                StepKind::Layer { name, args }
            }
            Rule::group => StepKind::Group(self.steps(inner.next().expect("group steps"), depth)?),
            Rule::for_step => {
                inner.next(); // `for`
                let var = self.ident(inner.next().expect("loop variable"));
                inner.next(); // `in`
                let mut bounds = inner.next().expect("iterable").into_inner();
                let first = self.value(bounds.next().expect("iterable value"), depth)?;
                let iter = match bounds.next() {
                    Some(end) => Iterable::Range(first, self.value(end, depth)?),
                    None => Iterable::Value(first),
                };
                let body = self.steps(inner.next().expect("loop body"), depth)?;
                StepKind::For { var, iter, body }
            }
            Rule::if_step => {
                inner.next(); // `if`
                let cond = self.value(inner.next().expect("condition"), depth)?;
                let then = self.steps(inner.next().expect("then steps"), depth)?;
                let otherwise = match (inner.next(), inner.next()) {
                    (Some(_else), Some(p)) if p.as_rule() == Rule::if_step => {
                        let span = self.span(&p);
                        Some(vec![Step { label: None, kind: self.step_kind(p, depth)?, span }])
                    }
                    (Some(_else), Some(p)) => Some(self.steps(p, depth)?),
                    _ => None,
                };
                StepKind::If { cond, then, otherwise }
            }
            other => unreachable!("unexpected {other:?} as a step"),
        })
    }
}

/// The length of `text` once trailing whitespace and comments are cut off.
fn trimmed_len(text: &str) -> usize {
    let mut end = text.len();
    loop {
        let t = text[..end].trim_end();
        end = t.len();
        if t.ends_with("*/") {
            match t[..end - 2].rfind("/*") {
                Some(open) => end = open,
                None => return end,
            }
            continue;
        }
        // There are no string literals, so `//` on the last line always starts a comment.
        let line_start = t.rfind('\n').map_or(0, |i| i + 1);
        match t[line_start..].find("//") {
            Some(i) => end = line_start + i,
            None => return end,
        }
    }
}

fn bin_op(rule: Rule) -> BinOp {
    match rule {
        Rule::or => BinOp::Or,
        Rule::and => BinOp::And,
        Rule::eq => BinOp::Eq,
        Rule::ne => BinOp::Ne,
        Rule::lt => BinOp::Lt,
        Rule::le => BinOp::Le,
        Rule::gt => BinOp::Gt,
        Rule::ge => BinOp::Ge,
        Rule::add => BinOp::Add,
        Rule::sub => BinOp::Sub,
        Rule::mul => BinOp::Mul,
        Rule::div => BinOp::Div,
        Rule::rem => BinOp::Rem,
        other => unreachable!("{other:?} is not a binary operator"),
    }
}

/// Precedence climbing over `lhs (op rhs)*`; iterative in the operator count at each level,
/// recursive only in the number of distinct precedence levels (five).
fn climb(mut lhs: Expr, min_prec: u8, rest: &mut std::iter::Peekable<impl Iterator<Item = (BinOp, Expr)>>) -> Expr {
    while let Some(&(op, _)) = rest.peek() {
        if op.precedence() < min_prec {
            break;
        }
        let (op, mut rhs) = rest.next().expect("peeked");
        while let Some(&(next, _)) = rest.peek() {
            if next.precedence() <= op.precedence() {
                break;
            }
            rhs = climb(rhs, op.precedence() + 1, rest);
        }
        let span = lhs.span.to(rhs.span);
        lhs = Expr { kind: ExprKind::Binary(op, Box::new(lhs), Box::new(rhs)), span };
    }
    lhs
}
