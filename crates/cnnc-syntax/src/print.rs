//! A stable, indented outline of the AST, for snapshot tests and for seeing how a source parsed.
//!
//! ```text
//! block bottleneck
//!   param width
//!   param stride = 1
//!   input x
//!   let residual =
//!     chain
//!       x
//!       -> conv1: conv(width, k=1, bias=false)
//!       -> relu
//!   expr
//!     chain
//!       add(residual, shortcut)
//!       -> relu
//! ```
//!
//! Spans are left out on purpose, so that editing a comment does not change the outline. Every
//! binary and unary operation is parenthesized, making precedence visible: `1 + 2 * 3` prints as
//! `(1 + (2 * 3))`. Floats always show a fraction or an exponent (`1.0`, `0.0001`) so they never
//! read as integers. Expressions without chains print on one line; chains, and anything holding
//! one, print as a tree. `relu` (no argument list) and `relu()` print differently, as they parse
//! differently.

use crate::ast::*;
use std::fmt::Write as _;

/// The outline of a whole file, one item after another, ending in a newline (empty for no items).
pub fn print(file: &File) -> String {
    let mut p = Printer { out: String::new() };
    for (i, item) in file.items.iter().enumerate() {
        if i > 0 {
            p.out.push('\n');
        }
        p.item(item);
    }
    p.out
}

/// One expression on one line when it holds no chain (`None` otherwise).
pub fn inline_expr(expr: &Expr) -> Option<String> {
    let mut s = String::new();
    write_inline(&mut s, expr).then_some(s)
}

struct Printer {
    out: String,
}

impl Printer {
    fn line(&mut self, indent: usize, text: &str) {
        for _ in 0..indent {
            self.out.push_str("  ");
        }
        self.out.push_str(text);
        self.out.push('\n');
    }

    fn item(&mut self, item: &Item) {
        let kw = match item.kind {
            ItemKind::Model => "model",
            ItemKind::Block => "block",
        };
        self.line(0, &format!("{kw} {}", item.name.name));
        for param in &item.params {
            match &param.default {
                None => self.line(1, &format!("param {}", param.name.name)),
                Some(e) => self.labelled_expr(1, &format!("param {} =", param.name.name), e),
            }
        }
        for stmt in &item.body {
            self.stmt(1, stmt);
        }
    }

    fn stmt(&mut self, indent: usize, stmt: &Stmt) {
        match stmt {
            Stmt::Input { name, shape: None, .. } => self.line(indent, &format!("input {}", name.name)),
            Stmt::Input { name, shape: Some(shape), .. } => {
                self.labelled_expr(indent, &format!("input {}:", name.name), shape)
            }
            Stmt::Let { name, value, .. } => self.labelled_expr(indent, &format!("let {} =", name.name), value),
            Stmt::Expr(e) => self.labelled_expr(indent, "expr", e),
        }
    }

    /// `prefix value` on one line when the value is inline, else `prefix` over the value's tree.
    fn labelled_expr(&mut self, indent: usize, prefix: &str, e: &Expr) {
        match inline_expr(e) {
            Some(text) => self.line(indent, &format!("{prefix} {text}")),
            None => {
                self.line(indent, prefix);
                self.expr(indent + 1, e);
            }
        }
    }

    /// An expression as a tree, starting at `indent`.
    fn expr(&mut self, indent: usize, e: &Expr) {
        if let Some(text) = inline_expr(e) {
            self.line(indent, &text);
            return;
        }
        match &e.kind {
            ExprKind::Chain { head, steps } => {
                self.line(indent, "chain");
                self.expr(indent + 1, head);
                for step in steps {
                    self.step(indent + 1, step);
                }
            }
            ExprKind::Unary(op, inner) => {
                self.line(indent, &format!("unary {}", unop(*op)));
                self.expr(indent + 1, inner);
            }
            ExprKind::Binary(op, a, b) => {
                self.line(indent, &format!("binary {}", op.symbol()));
                self.expr(indent + 1, a);
                self.expr(indent + 1, b);
            }
            ExprKind::Call { label, func, args } => {
                let label = label.as_ref().map(|l| format!("{}: ", l.name)).unwrap_or_default();
                self.line(indent, &format!("call {label}{}", func.name));
                self.args(indent + 1, args);
            }
            ExprKind::Tuple(items) | ExprKind::List(items) => {
                self.line(indent, if matches!(e.kind, ExprKind::Tuple(_)) { "tuple" } else { "list" });
                for item in items {
                    self.expr(indent + 1, item);
                }
            }
            ExprKind::If { cond, then, otherwise } => {
                self.labelled_expr(indent, "if", cond);
                self.labelled_expr(indent, "then", then);
                self.labelled_expr(indent, "else", otherwise);
            }
            ExprKind::Int(_) | ExprKind::Float(_) | ExprKind::Bool(_) | ExprKind::Name(_) => {
                unreachable!("literals and names always print inline")
            }
        }
    }

    fn args(&mut self, indent: usize, args: &[Arg]) {
        for arg in args {
            match &arg.name {
                Some(n) => self.labelled_expr(indent, &format!("arg {}=", n.name), &arg.value),
                None => self.labelled_expr(indent, "arg", &arg.value),
            }
        }
    }

    fn step(&mut self, indent: usize, step: &Step) {
        let label = step.label.as_ref().map(|l| format!("{}: ", l.name)).unwrap_or_default();
        match &step.kind {
            StepKind::Layer { name, args } => {
                let mut text = String::new();
                let inline = args.as_ref().is_none_or(|args| write_args(&mut text, args));
                if inline {
                    self.line(indent, &format!("-> {label}{}{text}", name.name));
                } else {
                    self.line(indent, &format!("-> {label}{}(...)", name.name));
                    self.args(indent + 1, args.as_deref().unwrap_or_default());
                }
            }
            StepKind::Group(steps) => {
                self.line(indent, &format!("-> {label}group"));
                self.steps(indent + 1, steps);
            }
            StepKind::For { var, iter, body } => {
                let head = format!("-> {label}for {} in", var.name);
                match iter {
                    Iterable::Range(a, b) => match (inline_expr(a), inline_expr(b)) {
                        (Some(a), Some(b)) => self.line(indent, &format!("{head} {a}..{b}")),
                        _ => {
                            self.line(indent, &format!("{head} range"));
                            self.expr(indent + 2, a);
                            self.expr(indent + 2, b);
                        }
                    },
                    Iterable::Value(v) => self.labelled_expr(indent, &head, v),
                }
                self.steps(indent + 1, body);
            }
            StepKind::If { cond, then, otherwise } => {
                self.labelled_expr(indent, &format!("-> {label}if"), cond);
                self.line(indent + 1, "then");
                self.steps(indent + 2, then);
                if let Some(otherwise) = otherwise {
                    self.line(indent + 1, "else");
                    self.steps(indent + 2, otherwise);
                }
            }
        }
    }

    fn steps(&mut self, indent: usize, steps: &[Step]) {
        for step in steps {
            self.step(indent, step);
        }
    }
}

fn unop(op: UnOp) -> &'static str {
    match op {
        UnOp::Neg => "-",
        UnOp::Not => "!",
    }
}

/// Writes `e` on one line; false (with `out` partly written) if it holds a chain.
fn write_inline(out: &mut String, e: &Expr) -> bool {
    match &e.kind {
        ExprKind::Int(v) => {
            let _ = write!(out, "{v}");
            true
        }
        ExprKind::Float(v) => {
            // `{:?}` keeps a `.0` on whole numbers and switches to exponents for extreme ones.
            let _ = write!(out, "{v:?}");
            true
        }
        ExprKind::Bool(v) => {
            let _ = write!(out, "{v}");
            true
        }
        ExprKind::Name(n) => {
            out.push_str(n);
            true
        }
        ExprKind::Unary(op, inner) => {
            out.push('(');
            out.push_str(unop(*op));
            let ok = write_inline(out, inner);
            out.push(')');
            ok
        }
        ExprKind::Binary(op, a, b) => {
            out.push('(');
            let ok = write_inline(out, a);
            let _ = write!(out, " {} ", op.symbol());
            let ok = ok && write_inline(out, b);
            out.push(')');
            ok
        }
        ExprKind::Call { label, func, args } => {
            if let Some(label) = label {
                let _ = write!(out, "{}: ", label.name);
            }
            out.push_str(&func.name);
            write_args(out, args)
        }
        ExprKind::Tuple(items) => {
            out.push('(');
            let ok = write_list(out, items);
            if items.len() == 1 {
                out.push(',');
            }
            out.push(')');
            ok
        }
        ExprKind::List(items) => {
            out.push('[');
            let ok = write_list(out, items);
            out.push(']');
            ok
        }
        ExprKind::If { cond, then, otherwise } => {
            out.push_str("(if ");
            let mut ok = write_inline(out, cond);
            out.push_str(" { ");
            ok = ok && write_inline(out, then);
            out.push_str(" } else { ");
            ok = ok && write_inline(out, otherwise);
            out.push_str(" })");
            ok
        }
        ExprKind::Chain { .. } => false,
    }
}

fn write_list(out: &mut String, items: &[Expr]) -> bool {
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        if !write_inline(out, item) {
            return false;
        }
    }
    true
}

/// `(a, k=3)`; false if an argument holds a chain.
fn write_args(out: &mut String, args: &[Arg]) -> bool {
    out.push('(');
    for (i, arg) in args.iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        if let Some(n) = &arg.name {
            out.push_str(&n.name);
            out.push('=');
        }
        if !write_inline(out, &arg.value) {
            return false;
        }
    }
    out.push(')');
    true
}

#[cfg(test)]
mod tests {
    use super::print;
    use crate::parse;

    fn outline(src: &str) -> String {
        let (file, errors) = parse(src);
        assert!(errors.is_empty(), "{errors:?}");
        print(&file)
    }

    #[test]
    fn operators_are_parenthesized_and_floats_keep_their_point() {
        let text = outline("model m(a = 1 + 2 * 3 - -4, b = !true || 1.0 < 2e3, t = (3,)) { input x: [1, 2, 2] x }");
        assert_eq!(
            text,
            "model m\n  param a = ((1 + (2 * 3)) - -4)\n  param b = ((!true) || (1.0 < 2000.0))\n  \
             param t = (3,)\n  input x: [1, 2, 2]\n  expr x\n"
        );
    }

    #[test]
    fn chains_print_as_trees() {
        let text = outline(
            "block b(w, s = 1) { input x\n let y = if s > 1 { x -> relu } else { x }\n \
             add(x -> g: (relu -> tanh()), y) -> for i in 0..2 { conv(w, k=(3, 1)) } -> if s == 1 { relu } else { selu } }",
        );
        insta_like(
            &text,
            "block b
  param w
  param s = 1
  input x
  let y =
    if (s > 1)
    then
      chain
        x
        -> relu
    else x
  expr
    chain
      call add
        arg
          chain
            x
            -> g: group
              -> relu
              -> tanh()
        arg y
      -> for i in 0..2
        -> conv(w, k=(3, 1))
      -> if (s == 1)
        then
          -> relu
        else
          -> selu
",
        );
    }

    fn insta_like(got: &str, want: &str) {
        assert_eq!(got, want, "\n--- got ---\n{got}");
    }
}
