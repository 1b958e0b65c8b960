//! Whole-file checks that need no evaluation: duplicate definitions, blocks that shadow built-in
//! layers, and recursion between blocks (which would never terminate, so it is rejected outright).

use crate::layers::{VALUE_FUNCTIONS, signature};
use cnnc_diag::{Code, Diagnostic, Span};
use cnnc_syntax::ast::*;
use std::collections::HashMap;

pub fn check_file(file: &File) -> Vec<Diagnostic> {
    let mut diags = Vec::new();
    let mut seen: HashMap<&str, Span> = HashMap::new();
    for item in &file.items {
        let name = item.name.name.as_str();
        if let Some(first) = seen.insert(name, item.name.span) {
            diags.push(
                Diagnostic::error(
                    Code::DUPLICATE_DEFINITION,
                    format!("`{name}` is defined twice"),
                    item.name.span,
                    "defined again here",
                )
                .with_secondary(first, "first defined here")
                .with_hint("rename one of them"),
            );
        }
        if item.kind == ItemKind::Block && (signature(name).is_some() || VALUE_FUNCTIONS.contains(&name)) {
            diags.push(
                Diagnostic::error(
                    Code::SHADOWED_BUILTIN,
                    format!("block `{name}` has the name of a built-in layer"),
                    item.name.span,
                    "built-in name",
                )
                .with_hint(format!("rename the block, e.g. `my_{name}`")),
            );
        }
        let mut params: HashMap<&str, Span> = HashMap::new();
        for param in &item.params {
            if let Some(first) = params.insert(&param.name.name, param.name.span) {
                diags.push(
                    Diagnostic::error(
                        Code::DUPLICATE_DEFINITION,
                        format!("parameter `{}` is declared twice", param.name.name),
                        param.name.span,
                        "declared again here",
                    )
                    .with_secondary(first, "first declared here"),
                );
            }
        }
    }
    diags.extend(check_recursion(file));
    diags
}

/// Reports each cycle in the block call graph once, at the call that closes it.
fn check_recursion(file: &File) -> Vec<Diagnostic> {
    let blocks: HashMap<&str, &Item> =
        file.items.iter().filter(|i| i.kind == ItemKind::Block).map(|i| (i.name.name.as_str(), i)).collect();
    let calls: HashMap<&str, Vec<&Ident>> = blocks
        .iter()
        .map(|(&name, item)| {
            let mut out = Vec::new();
            for stmt in &item.body {
                stmt_calls(stmt, &mut out);
            }
            out.retain(|c| blocks.contains_key(c.name.as_str()));
            (name, out)
        })
        .collect();
    let mut diags = Vec::new();
    // 0 = unvisited, 1 = on the current path, 2 = done.
    let mut state: HashMap<&str, u8> = HashMap::new();
    let mut names: Vec<&str> = blocks.keys().copied().collect();
    names.sort();
    for start in names {
        let mut path = Vec::new();
        visit(start, &calls, &mut state, &mut path, &mut diags);
    }
    diags
}

fn visit<'a>(
    block: &'a str,
    calls: &HashMap<&'a str, Vec<&'a Ident>>,
    state: &mut HashMap<&'a str, u8>,
    path: &mut Vec<&'a str>,
    diags: &mut Vec<Diagnostic>,
) {
    if state.get(block).copied().unwrap_or(0) != 0 {
        return;
    }
    state.insert(block, 1);
    path.push(block);
    for callee in &calls[block] {
        let name = callee.name.as_str();
        match state.get(name).copied().unwrap_or(0) {
            1 => {
                let start = path.iter().position(|&b| b == name).expect("on the path");
                let cycle: Vec<&str> = path[start..].iter().copied().chain([name]).collect();
                diags.push(
                    Diagnostic::error(
                        Code::RECURSIVE_BLOCK,
                        format!("block `{name}` uses itself: {}", cycle.join(" -> ")),
                        callee.span,
                        "recursive use",
                    )
                    .with_hint("blocks cannot recurse; repeat a block with `for i in 0..n { block(...) }`"),
                );
            }
            0 => visit(name, calls, state, path, diags),
            _ => {}
        }
    }
    path.pop();
    state.insert(block, 2);
}

fn stmt_calls<'a>(stmt: &'a Stmt, out: &mut Vec<&'a Ident>) {
    match stmt {
        Stmt::Input { shape, .. } => shape.iter().for_each(|e| expr_calls(e, out)),
        Stmt::Let { value, .. } => expr_calls(value, out),
        Stmt::Expr(e) => expr_calls(e, out),
    }
}

fn expr_calls<'a>(expr: &'a Expr, out: &mut Vec<&'a Ident>) {
    match &expr.kind {
        ExprKind::Int(_) | ExprKind::Float(_) | ExprKind::Bool(_) | ExprKind::Name(_) => {}
        ExprKind::Unary(_, e) => expr_calls(e, out),
        ExprKind::Binary(_, a, b) => {
            expr_calls(a, out);
            expr_calls(b, out);
        }
        ExprKind::Call { args, .. } => args.iter().for_each(|a| expr_calls(&a.value, out)),
        ExprKind::Tuple(items) | ExprKind::List(items) => items.iter().for_each(|e| expr_calls(e, out)),
        ExprKind::If { cond, then, otherwise } => {
            expr_calls(cond, out);
            expr_calls(then, out);
            expr_calls(otherwise, out);
        }
        ExprKind::Chain { head, steps } => {
            expr_calls(head, out);
            steps.iter().for_each(|s| step_calls(s, out));
        }
    }
}

fn step_calls<'a>(step: &'a Step, out: &mut Vec<&'a Ident>) {
    match &step.kind {
        StepKind::Layer { name, args } => {
            out.push(name);
            args.iter().flatten().for_each(|a| expr_calls(&a.value, out));
        }
        StepKind::Group(steps) => steps.iter().for_each(|s| step_calls(s, out)),
        StepKind::For { iter, body, .. } => {
            match iter {
                Iterable::Range(a, b) => {
                    expr_calls(a, out);
                    expr_calls(b, out);
                }
                Iterable::Value(v) => expr_calls(v, out),
            }
            body.iter().for_each(|s| step_calls(s, out));
        }
        StepKind::If { cond, then, otherwise } => {
            expr_calls(cond, out);
            then.iter().chain(otherwise.iter().flatten()).for_each(|s| step_calls(s, out));
        }
    }
}

/// Every step label written anywhere in the statements: auto-generated names skip these, so an
/// explicit `conv1:` later in a block never collides with an automatic `conv1`.
pub fn labels(stmts: &[Stmt]) -> Vec<String> {
    let mut out = Vec::new();
    for stmt in stmts {
        match stmt {
            Stmt::Let { value, .. } | Stmt::Expr(value) => expr_labels(value, &mut out),
            Stmt::Input { .. } => {}
        }
    }
    out
}

/// The labels of one naming scope: those of the steps themselves and of unlabelled loops and
/// conditions (which share the scope), but not of groups or labelled loops and conditions,
/// which open scopes of their own.
pub fn step_labels(steps: &[Step], out: &mut Vec<String>) {
    for s in steps {
        out.extend(s.label.iter().map(|l| l.name.clone()));
        if s.label.is_some() {
            continue;
        }
        match &s.kind {
            // Arguments are evaluated in this scope: a labelled `add` in one is named here.
            StepKind::Layer { args, .. } => args.iter().flatten().for_each(|a| expr_labels(&a.value, out)),
            StepKind::Group(_) => {}
            StepKind::For { body, .. } => step_labels(body, out),
            StepKind::If { then, otherwise, .. } => {
                step_labels(then, out);
                step_labels(otherwise.as_deref().unwrap_or_default(), out);
            }
        }
    }
}

fn expr_labels(e: &Expr, out: &mut Vec<String>) {
    match &e.kind {
        ExprKind::Chain { head, steps } => {
            expr_labels(head, out);
            step_labels(steps, out);
        }
        ExprKind::If { then, otherwise, .. } => {
            expr_labels(then, out);
            expr_labels(otherwise, out);
        }
        ExprKind::Call { label, args, .. } => {
            out.extend(label.iter().map(|l| l.name.clone()));
            args.iter().for_each(|a| expr_labels(&a.value, out));
        }
        ExprKind::Tuple(items) | ExprKind::List(items) => items.iter().for_each(|i| expr_labels(i, out)),
        ExprKind::Int(_)
        | ExprKind::Float(_)
        | ExprKind::Bool(_)
        | ExprKind::Name(_)
        | ExprKind::Unary(..)
        | ExprKind::Binary(..) => {}
    }
}
