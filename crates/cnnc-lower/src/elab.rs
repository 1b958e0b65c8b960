//! Elaboration: evaluates a model's body (parameters, blocks, loops, conditions) into a graph,
//! naming every layer and running every shape rule as the node is added.
//!
//! Errors are pushed as diagnostics when found and the failing statement is abandoned
//! (`Reported`); names it would have bound are poisoned so that one mistake gives one error.

use crate::checks::{labels, step_labels};
use crate::foreign;
use crate::layers::{Bound, Dflt, LAYERS, ParamDef, VALUE_FUNCTIONS, build, signature};
use crate::shape_diag::{self, Site};
use crate::value::Value;
use cnnc_diag::{Code, Diagnostic, Span, did_you_mean};
use cnnc_ir::{Graph, NodeId, Op, Shape};
use cnnc_syntax::ast::*;
use std::collections::{HashMap, HashSet};

/// Limits that keep hostile sources from exhausting time or memory.
pub const MAX_NODES: usize = 200_000;
pub const MAX_ITERATIONS: usize = 1_000_000;
pub const MAX_BLOCK_DEPTH: usize = 64;

/// What elaboration may still spend: shared by every model of a file, so that a file of many
/// models cannot multiply the limits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Budget {
    pub nodes: usize,
    pub iterations: usize,
}

impl Default for Budget {
    fn default() -> Budget {
        Budget { nodes: MAX_NODES, iterations: MAX_ITERATIONS }
    }
}
/// Largest parameter tensor accepted, in elements.
pub const MAX_PARAM_ELEMENTS: usize = 1 << 40;

/// How a diagnostic from inside a block points at the use of the block: `in this use of
/// `residual` (width = 64, stride = 2)`.
const USE_LABEL: &str = "in this use of";
/// Labels of nested uses kept on one diagnostic (the innermost ones): enough to find the
/// instance, few enough to read.
const MAX_USE_LABELS: usize = 3;

/// A use of a block in a chain: its name, its arguments and the whole step.
struct Call<'s> {
    name: &'s Ident,
    args: &'s [Arg],
    span: Span,
}

/// An error was found and already pushed as a diagnostic.
pub struct Reported;
type R<T> = Result<T, Reported>;

struct Binding {
    value: Value,
    span: Span,
    /// Set for `let` bindings, which get an "unused" warning when never read.
    is_let: bool,
    used: bool,
}

/// Variables of one item instance: a stack of frames (loop variables push one).
#[derive(Default)]
struct Env {
    frames: Vec<HashMap<String, Binding>>,
    poisoned: HashSet<String>,
    /// Set in a body without `input`: its unknown names are most likely the missing input, so
    /// they are not errors of their own; the first is kept for the E0210 that reports the body.
    missing_input: Option<Option<(String, Span)>>,
}

impl Env {
    fn new() -> Env {
        Env { frames: vec![HashMap::new()], poisoned: HashSet::new(), missing_input: None }
    }

    fn bind(&mut self, name: &Ident, value: Value, is_let: bool) {
        self.poisoned.remove(&name.name);
        let frame = self.frames.last_mut().expect("an env always has a frame");
        frame.insert(name.name.clone(), Binding { value, span: name.span, is_let, used: false });
    }

    fn lookup(&mut self, name: &str) -> Option<&Value> {
        let binding = self.frames.iter_mut().rev().find_map(|f| f.get_mut(name))?;
        binding.used = true;
        Some(&binding.value)
    }

    fn names(&self) -> Vec<&str> {
        self.frames.iter().flat_map(|f| f.keys().map(String::as_str)).collect()
    }
}

/// A naming scope: a model, a block instance, or a group.
struct NameScope {
    prefix: String,
    /// Labels written in this scope; automatic names skip them.
    reserved: HashSet<String>,
    auto: HashMap<String, usize>,
    /// Groups number every step; other scopes number only the steps of loops.
    numbered: bool,
    next_index: usize,
}

pub enum BodyInput<'s> {
    Model { shape_override: Option<&'s [usize]> },
    Block(NodeId),
}

pub struct Elab<'a> {
    blocks: HashMap<&'a str, &'a Item>,
    pub graph: Graph,
    pub diags: Vec<Diagnostic>,
    scopes: Vec<NameScope>,
    node_names: HashMap<String, Span>,
    /// What is left to spend; see [`Budget`].
    pub budget: Budget,
    depth: usize,
}

impl<'a> Elab<'a> {
    pub fn new(file: &'a File, model: &Item, budget: Budget) -> Elab<'a> {
        let blocks =
            file.items.iter().filter(|i| i.kind == ItemKind::Block).map(|i| (i.name.name.as_str(), i)).collect();
        Elab {
            blocks,
            graph: Graph::new(model.name.name.clone()),
            diags: Vec::new(),
            scopes: Vec::new(),
            node_names: HashMap::new(),
            budget,
            depth: 0,
        }
    }

    fn error(&mut self, d: Diagnostic) -> Reported {
        self.diags.push(d);
        Reported
    }

    /// Elaborates a model: its parameters from their defaults, then its body.
    pub fn model(&mut self, item: &Item, shape_override: Option<&[usize]>, overrides: &[(String, String)]) -> R<()> {
        let mut env = Env::new();
        let overridden = self.overrides(item, overrides)?;
        let mut failed = false;
        for param in &item.params {
            if let Some(v) = overridden.get(param.name.name.as_str()) {
                env.bind(&param.name, v.clone(), false);
                continue;
            }
            match &param.default {
                Some(e) => match self.eval(&mut env, e) {
                    Ok(v) => env.bind(&param.name, v, false),
                    Err(Reported) => failed = true,
                },
                None => {
                    failed = true;
                    self.error(
                        Diagnostic::error(
                            Code::MISSING_ARGUMENT,
                            format!("model parameter `{}` has no default value", param.name.name),
                            param.name.span,
                            "needs a default",
                        )
                        .with_hint(format!("give it one: `{} = ...`", param.name.name)),
                    );
                }
            }
        }
        if failed {
            return Err(Reported);
        }
        self.push_scope(String::new(), labels(&item.body), false);
        let result = self.body(&mut env, item, BodyInput::Model { shape_override });
        self.scopes.pop();
        match result? {
            Value::Tensor(id) => {
                self.graph.outputs = vec![id];
                Ok(())
            }
            other => {
                let span = item.body.last().map_or(item.name.span, Stmt::span);
                Err(self.error(Diagnostic::error(
                    Code::TYPE_MISMATCH,
                    format!("model `{}` produces {}, not a tensor", item.name.name, other.kind()),
                    span,
                    "the model's result",
                )))
            }
        }
    }

    /// Evaluates `--set name=value` overrides; they are reported at the model's name, the
    /// closest place in the source.
    fn overrides(&mut self, item: &Item, overrides: &[(String, String)]) -> R<HashMap<String, Value>> {
        let mut values = HashMap::new();
        let mut failed = false;
        for (name, text) in overrides {
            let at = item.name.span;
            if !item.params.iter().any(|p| p.name.name == *name) {
                failed = true;
                let params: Vec<&str> = item.params.iter().map(|p| p.name.name.as_str()).collect();
                let mut d = Diagnostic::error(
                    Code::UNKNOWN_ARGUMENT,
                    format!("model `{}` has no parameter `{name}` to set", item.name.name),
                    at,
                    "this model",
                );
                d = match did_you_mean(name, params.iter().copied()) {
                    Some(close) => d.with_hint(format!("did you mean `{close}`?")),
                    None if params.is_empty() => d.with_hint("this model takes no parameters"),
                    None => d.with_hint(format!("its parameters are: {}", params.join(", "))),
                };
                self.error(d);
                continue;
            }
            // Spans inside `text` do not point into the file, so what evaluation reports is
            // replaced by one diagnostic about the whole setting.
            let mark = self.diags.len();
            let value = match cnnc_syntax::parse_expr(text) {
                Ok(expr) => self.eval(&mut Env::new(), &expr).ok(),
                Err(_) => None,
            };
            self.diags.truncate(mark);
            match value {
                Some(v) => {
                    values.insert(name.clone(), v);
                }
                None => {
                    failed = true;
                    self.error(
                        Diagnostic::error(
                            Code::BAD_ARGUMENT,
                            format!("cannot use `{text}` as the value of `{name}`"),
                            at,
                            "set on the command line",
                        )
                        .with_hint("give a number, `true`/`false`, a tuple `(3, 1)` or a list `[1, 2]`"),
                    );
                }
            }
        }
        if failed {
            return Err(Reported);
        }
        Ok(values)
    }

    fn body(&mut self, env: &mut Env, item: &Item, input: BodyInput) -> R<Value> {
        if !item.body.iter().any(|s| matches!(s, Stmt::Input { .. })) {
            env.missing_input = Some(None);
        }
        let mut input_seen: Option<Span> = None;
        let mut result = None;
        let mut failed = false;
        for (i, stmt) in item.body.iter().enumerate() {
            match stmt {
                Stmt::Input { name, shape, span } => {
                    if let Some(first) = input_seen {
                        failed = true;
                        self.error(
                            Diagnostic::error(
                                Code::BAD_INPUT_DECLARATION,
                                "more than one `input`",
                                *span,
                                "second input",
                            )
                            .with_secondary(first, "first input")
                            .with_hint("models and blocks take one input tensor"),
                        );
                        continue;
                    }
                    input_seen = Some(*span);
                    match self.input(env, item, name, shape.as_ref(), *span, &input) {
                        Ok(v) => env.bind(name, v, false),
                        Err(Reported) => {
                            env.poisoned.insert(name.name.clone());
                            failed = true;
                        }
                    }
                }
                Stmt::Let { name, value, .. } => match self.eval(env, value) {
                    Ok(v) => env.bind(name, v, true),
                    Err(Reported) => {
                        env.poisoned.insert(name.name.clone());
                        failed = true;
                    }
                },
                Stmt::Expr(e) if i + 1 < item.body.len() => {
                    failed = true;
                    self.error(
                        Diagnostic::error(
                            Code::TYPE_MISMATCH,
                            "only the last statement of a body can be a bare expression",
                            e.span,
                            "its value would be lost",
                        )
                        .with_hint("bind it with `let name = ...`, or move it to the end"),
                    );
                }
                Stmt::Expr(e) => match self.eval(env, e) {
                    Ok(v) => result = Some(v),
                    Err(Reported) => failed = true,
                },
            }
        }
        if input_seen.is_none() {
            failed = true;
            // The first unknown name is most likely the input: the hint declares it.
            let used = env.missing_input.take().flatten();
            let name = used.as_ref().map_or("x", |(n, _)| n.as_str());
            let example = if item.kind == ItemKind::Model {
                format!("input {name}: [3, 224, 224]")
            } else {
                format!("input {name}")
            };
            let mut d = Diagnostic::error(
                Code::BAD_INPUT_DECLARATION,
                format!("`{}` declares no input", item.name.name),
                item.name.span,
                "no `input` in this body",
            )
            .with_hint(format!("start the body with `{example}`"));
            if let Some((name, span)) = used {
                d = d.with_secondary(span, format!("`{name}` is used but never declared"));
            }
            self.error(d);
        }
        self.warn_unused(env);
        if failed {
            return Err(Reported);
        }
        result.ok_or_else(|| {
            self.error(
                Diagnostic::error(
                    Code::TYPE_MISMATCH,
                    format!("`{}` has no result", item.name.name),
                    item.name.span,
                    "its body ends without an expression",
                )
                .with_hint("end the body with the output, e.g. `x -> relu`"),
            )
        })
    }

    fn input(
        &mut self,
        env: &mut Env,
        item: &Item,
        name: &Ident,
        shape: Option<&Expr>,
        span: Span,
        input: &BodyInput,
    ) -> R<Value> {
        match input {
            BodyInput::Block(x) => match shape {
                None => Ok(Value::Tensor(*x)),
                Some(e) => Err(self.error(
                    Diagnostic::error(
                        Code::BAD_INPUT_DECLARATION,
                        format!("block `{}` gives its input a shape", item.name.name),
                        e.span,
                        "remove this shape",
                    )
                    .with_note("a block's input takes its shape from whatever is piped into the block"),
                )),
            },
            BodyInput::Model { shape_override } => {
                let Some(e) = shape else {
                    return Err(self.error(
                        Diagnostic::error(
                            Code::BAD_INPUT_DECLARATION,
                            "the model input has no shape",
                            span,
                            "shape needed",
                        )
                        .with_hint(format!("declare it as `input {}: [channels, height, width]`", name.name)),
                    ));
                };
                let declared = self.eval(env, e)?;
                let dims = match &declared {
                    Value::List(items) if items.len() == 1 || items.len() == 3 => items
                        .iter()
                        .map(|v| if let Value::Int(d) = v { usize::try_from(*d).ok().filter(|&d| d > 0) } else { None })
                        .collect(),
                    _ => None,
                };
                let Some(mut dims): Option<Vec<usize>> = dims else {
                    return Err(self.error(
                        Diagnostic::error(
                            Code::BAD_INPUT_DECLARATION,
                            format!("an input shape is a list of 3 (or 1) positive integers, found {declared}"),
                            e.span,
                            "expected [channels, height, width]",
                        )
                        .with_note("the batch size is never part of the shape"),
                    ));
                };
                if let Some(over) = shape_override {
                    if over.len() != dims.len() {
                        return Err(self.error(Diagnostic::error(
                            Code::BAD_INPUT_DECLARATION,
                            format!("`--shape` gives {} dimensions, the model's input has {}", over.len(), dims.len()),
                            e.span,
                            format!("declared as {declared}"),
                        )));
                    }
                    dims = over.to_vec();
                }
                let shape = Shape(dims);
                match self.graph.add_input(name.name.clone(), shape.clone(), span) {
                    Ok(id) => Ok(Value::Tensor(id)),
                    Err(err) => {
                        let from = if shape_override.is_some() { "requested" } else { "declared" };
                        let d = if matches!(err, cnnc_ir::ShapeError::Zero { .. }) {
                            Diagnostic::error(
                                Code::SHAPE_ZERO,
                                format!("the {from} input shape {shape} has a zero dimension"),
                                e.span,
                                "every dimension must be at least 1",
                            )
                        } else {
                            Diagnostic::error(
                                Code::SHAPE_OVERFLOW,
                                format!("the {from} input shape {shape} is too large"),
                                e.span,
                                "more than 2^48 elements",
                            )
                            .with_hint("tensors are limited to 2^48 elements; use a smaller input")
                        };
                        Err(self.error(d))
                    }
                }
            }
        }
    }

    fn warn_unused(&mut self, env: &Env) {
        let mut unused: Vec<(&String, &Binding)> = env.frames[0].iter().filter(|(_, b)| b.is_let && !b.used).collect();
        unused.sort_by_key(|(_, b)| b.span);
        for (name, b) in unused {
            if name.starts_with('_') {
                continue;
            }
            self.diags.push(
                Diagnostic::warning(
                    Code::UNUSED_VALUE,
                    format!("`{name}` is never used"),
                    b.span,
                    "computed but unused",
                )
                .with_hint(format!("remove it, or name it `_{name}` to keep it quiet")),
            );
        }
    }

    // ----- Expressions -------------------------------------------------------------------

    fn eval(&mut self, env: &mut Env, e: &Expr) -> R<Value> {
        match &e.kind {
            ExprKind::Int(v) => Ok(Value::Int(*v)),
            ExprKind::Float(v) => Ok(Value::Float(*v)),
            ExprKind::Bool(v) => Ok(Value::Bool(*v)),
            ExprKind::Name(name) => self.name(env, name, e.span),
            ExprKind::Unary(op, inner) => {
                let v = self.eval(env, inner)?;
                match (op, v) {
                    (UnOp::Neg, Value::Int(i)) => i.checked_neg().map(Value::Int).ok_or_else(|| self.overflow(e.span)),
                    (UnOp::Neg, Value::Float(f)) => Ok(Value::Float(-f)),
                    (UnOp::Not, Value::Bool(b)) => Ok(Value::Bool(!b)),
                    (op, v) => {
                        let want = if *op == UnOp::Neg { "a number" } else { "a boolean" };
                        Err(self.mismatch(inner.span, want, &v))
                    }
                }
            }
            ExprKind::Binary(op, a, b) => self.binary(env, *op, a, b, e.span),
            ExprKind::Call { label, func, args } => self.call(env, label.as_ref(), func, args, e.span),
            ExprKind::Tuple(items) => Ok(Value::Tuple(self.eval_all(env, items)?)),
            ExprKind::List(items) => Ok(Value::List(self.eval_all(env, items)?)),
            ExprKind::If { cond, then, otherwise } => {
                if self.condition(env, cond)? {
                    self.eval(env, then)
                } else {
                    self.eval(env, otherwise)
                }
            }
            ExprKind::Chain { head, steps } => {
                let x = self.tensor(env, head)?;
                let x = self.apply_steps(env, steps, x, false)?;
                Ok(Value::Tensor(x))
            }
        }
    }

    fn eval_all<'e>(&mut self, env: &mut Env, items: impl IntoIterator<Item = &'e Expr>) -> R<Vec<Value>> {
        // Evaluate every item even after an error, so that each gets reported.
        let results: Vec<R<Value>> = items.into_iter().map(|i| self.eval(env, i)).collect();
        results.into_iter().collect()
    }

    fn name(&mut self, env: &mut Env, name: &str, span: Span) -> R<Value> {
        if let Some(v) = env.lookup(name) {
            return Ok(v.clone());
        }
        if env.poisoned.contains(name) {
            return Err(Reported);
        }
        if let Some(first) = &mut env.missing_input {
            first.get_or_insert_with(|| (name.to_string(), span));
            return Err(Reported);
        }
        let mut d = Diagnostic::error(Code::UNKNOWN_NAME, format!("unknown name `{name}`"), span, "not defined here");
        if signature(name).is_some() || self.blocks.contains_key(name) {
            d = d.with_hint(format!("`{name}` is a layer: apply it in a chain, `x -> {name}`"));
        } else if let Some(hint) = foreign::value_hint(name) {
            d = d.with_hint(hint);
        } else if let Some(close) = did_you_mean(name, env.names()) {
            d = d.with_hint(format!("did you mean `{close}`?"));
        }
        Err(self.error(d))
    }

    fn tensor(&mut self, env: &mut Env, e: &Expr) -> R<NodeId> {
        match self.eval(env, e)? {
            Value::Tensor(id) => Ok(id),
            other => Err(self.mismatch(e.span, "a tensor", &other)),
        }
    }

    fn condition(&mut self, env: &mut Env, e: &Expr) -> R<bool> {
        match self.eval(env, e)? {
            Value::Bool(b) => Ok(b),
            other => Err(self.mismatch(e.span, "a boolean", &other)),
        }
    }

    fn mismatch(&mut self, span: Span, want: &str, found: &Value) -> Reported {
        self.error(Diagnostic::error(
            Code::TYPE_MISMATCH,
            format!("expected {want}, found {}", found.kind()),
            span,
            format!("this is {}", found.kind()),
        ))
    }

    fn overflow(&mut self, span: Span) -> Reported {
        self.error(Diagnostic::error(Code::ARITHMETIC, "integer overflow", span, "this overflows 64 bits"))
    }

    fn binary(&mut self, env: &mut Env, op: BinOp, a: &Expr, b: &Expr, span: Span) -> R<Value> {
        if matches!(op, BinOp::And | BinOp::Or) {
            let lhs = self.condition(env, a)?;
            // Short-circuit, so `stride != 1 || channels(x) != c` never evaluates more than needed.
            if (op == BinOp::And) != lhs {
                return Ok(Value::Bool(lhs));
            }
            return Ok(Value::Bool(self.condition(env, b)?));
        }
        let (lhs, rhs) = (self.eval(env, a)?, self.eval(env, b)?);
        let sym = op.symbol();
        match (lhs, rhs) {
            (Value::Int(x), Value::Int(y)) => {
                let checked = match op {
                    BinOp::Add => x.checked_add(y).map(Value::Int),
                    BinOp::Sub => x.checked_sub(y).map(Value::Int),
                    BinOp::Mul => x.checked_mul(y).map(Value::Int),
                    BinOp::Div | BinOp::Rem if y == 0 => {
                        return Err(self.error(Diagnostic::error(
                            Code::ARITHMETIC,
                            "division by zero",
                            b.span,
                            "this is 0",
                        )));
                    }
                    BinOp::Div => x.checked_div(y).map(Value::Int),
                    BinOp::Rem => x.checked_rem(y).map(Value::Int),
                    BinOp::Eq => Some(Value::Bool(x == y)),
                    BinOp::Ne => Some(Value::Bool(x != y)),
                    BinOp::Lt => Some(Value::Bool(x < y)),
                    BinOp::Le => Some(Value::Bool(x <= y)),
                    BinOp::Gt => Some(Value::Bool(x > y)),
                    BinOp::Ge => Some(Value::Bool(x >= y)),
                    BinOp::And | BinOp::Or => unreachable!("handled above"),
                };
                checked.ok_or_else(|| self.overflow(span))
            }
            (x @ (Value::Int(_) | Value::Float(_)), y @ (Value::Int(_) | Value::Float(_))) => {
                let (x, y) = (number(&x), number(&y));
                let v = match op {
                    BinOp::Add => Value::Float(x + y),
                    BinOp::Sub => Value::Float(x - y),
                    BinOp::Mul => Value::Float(x * y),
                    BinOp::Div => Value::Float(x / y),
                    BinOp::Rem => Value::Float(x % y),
                    BinOp::Eq => Value::Bool(x == y),
                    BinOp::Ne => Value::Bool(x != y),
                    BinOp::Lt => Value::Bool(x < y),
                    BinOp::Le => Value::Bool(x <= y),
                    BinOp::Gt => Value::Bool(x > y),
                    BinOp::Ge => Value::Bool(x >= y),
                    BinOp::And | BinOp::Or => unreachable!("handled above"),
                };
                match v {
                    Value::Float(f) if !f.is_finite() => Err(self.error(Diagnostic::error(
                        Code::ARITHMETIC,
                        format!("`{sym}` gives {f}"),
                        span,
                        "not a finite number",
                    ))),
                    v => Ok(v),
                }
            }
            (x, y) if matches!(op, BinOp::Eq | BinOp::Ne) && !matches!(x, Value::Tensor(_)) && x.kind() == y.kind() => {
                Ok(Value::Bool((x == y) == (op == BinOp::Eq)))
            }
            (x, y) => Err(self.error(Diagnostic::error(
                Code::TYPE_MISMATCH,
                format!("cannot apply `{sym}` to {} and {}", x.kind(), y.kind()),
                span,
                "unsupported operands",
            ))),
        }
    }

    /// Functions in value position: `add`, `concat`, `channels`, `height`, `width`, `min`, `max`.
    /// Only the two that make a layer, `add` and `concat`, take a label (`a1: add(x, y)`).
    fn call(&mut self, env: &mut Env, label: Option<&Ident>, func: &Ident, args: &[Arg], span: Span) -> R<Value> {
        // A label on a layer or an unknown function is reported below, as the call is.
        if let Some(label) = label
            && VALUE_FUNCTIONS.contains(&func.name.as_str())
            && !matches!(func.name.as_str(), "add" | "concat")
        {
            return Err(self.error(
                Diagnostic::error(
                    Code::TYPE_MISMATCH,
                    format!("`{}` computes a number, not a layer, so it takes no label", func.name),
                    label.span,
                    "a label names a layer",
                )
                .with_hint(format!(
                    "labels name layers: `{0}: conv(...)` in a chain, or `{0}: add(a, b)`; remove `{0}:` here",
                    label.name
                )),
            ));
        }
        if let Some(named) = args.iter().find_map(|a| a.name.as_ref()) {
            return Err(self.error(Diagnostic::error(
                Code::UNKNOWN_ARGUMENT,
                format!("`{}` takes no named arguments", func.name),
                named.span,
                "unexpected name",
            )));
        }
        let exprs: Vec<&Expr> = args.iter().map(|a| &a.value).collect();
        let spans: Vec<Span> = exprs.iter().map(|e| e.span).collect();
        match func.name.as_str() {
            "add" | "concat" => {
                let (op, keyword, min) =
                    if func.name == "add" { (Op::Add, "add", 2) } else { (Op::Concat, "concat", 1) };
                let values = self.eval_all(env, exprs.iter().copied())?;
                let mut ids = Vec::new();
                for (v, e) in values.iter().zip(&exprs) {
                    match v {
                        Value::Tensor(id) => ids.push(*id),
                        other => return Err(self.mismatch(e.span, "a tensor", other)),
                    }
                }
                if ids.len() < min {
                    return Err(self.error(Diagnostic::error(
                        Code::MISSING_ARGUMENT,
                        format!(
                            "`{keyword}` needs at least {min} tensor{}, given {}",
                            if min == 1 { "" } else { "s" },
                            ids.len()
                        ),
                        span,
                        "too few tensors",
                    )));
                }
                // A label names the layer in the current scope, taking no index (as `add<n>`).
                let name = match label {
                    Some(label) => format!("{}{}", self.scope().prefix, label.name),
                    None => self.auto_name(keyword),
                };
                self.add_node(op, ids, name, span, &spans).map(Value::Tensor)
            }
            "channels" | "height" | "width" => {
                let [e] = exprs.as_slice() else {
                    return Err(self.arity(func, 1, exprs.len(), span));
                };
                let id = self.tensor(env, e)?;
                let shape = &self.graph[id].shape;
                let axis = ["channels", "height", "width"].iter().position(|&n| n == func.name).expect("listed");
                match shape.0.get(axis) {
                    Some(&d) => Ok(Value::Int(i64::try_from(d).expect("shapes are capped at 2^48"))),
                    None => {
                        let shape = shape.clone();
                        Err(self.error(Diagnostic::error(
                            Code::RANK_MISMATCH,
                            format!("`{}` of a flat tensor {shape}", func.name),
                            e.span,
                            "has no spatial axes",
                        )))
                    }
                }
            }
            "min" | "max" => {
                let values = self.eval_all(env, exprs.iter().copied())?;
                if values.is_empty() {
                    return Err(self.arity(func, 1, 0, span));
                }
                let mut best = values[0].clone();
                for (v, e) in values.iter().zip(&exprs) {
                    if !matches!(v, Value::Int(_) | Value::Float(_)) {
                        return Err(self.mismatch(e.span, "a number", v));
                    }
                    let better = if func.name == "min" { number(v) < number(&best) } else { number(v) > number(&best) };
                    if better {
                        best = v.clone();
                    }
                }
                Ok(best)
            }
            name => {
                let d = if signature(name).is_some() || self.blocks.contains_key(name) {
                    Diagnostic::error(
                        Code::TYPE_MISMATCH,
                        format!("`{name}` is a layer, not a function"),
                        func.span,
                        "used as a function",
                    )
                    .with_hint(format!("apply it in a chain: `x -> {name}(...)`"))
                } else {
                    let d = Diagnostic::error(
                        Code::UNKNOWN_NAME,
                        format!("unknown function `{name}`"),
                        func.span,
                        "not a function",
                    );
                    if let Some(hint) = foreign::layer_hint(name) {
                        return Err(self.error(d.with_hint(hint)));
                    }
                    match did_you_mean(name, VALUE_FUNCTIONS.iter().copied()) {
                        Some(close) => d.with_hint(format!("did you mean `{close}`?")),
                        None => d.with_hint(format!("the functions are {}", VALUE_FUNCTIONS.join(", "))),
                    }
                };
                Err(self.error(d))
            }
        }
    }

    fn arity(&mut self, func: &Ident, want: usize, given: usize, span: Span) -> Reported {
        self.error(Diagnostic::error(
            Code::MISSING_ARGUMENT,
            format!("`{}` takes {want} argument(s), given {given}", func.name),
            span,
            "wrong number of arguments",
        ))
    }

    // ----- Steps and naming --------------------------------------------------------------

    fn push_scope(&mut self, prefix: String, reserved: Vec<String>, numbered: bool) {
        self.scopes.push(NameScope {
            prefix,
            reserved: reserved.into_iter().collect(),
            auto: HashMap::new(),
            numbered,
            next_index: 0,
        });
    }

    fn scope(&mut self) -> &mut NameScope {
        self.scopes.last_mut().expect("elaboration runs inside a scope")
    }

    /// The full name of a step: its label, its index in a group or loop, or `<word><n>`.
    fn step_name(&mut self, label: Option<&Ident>, word: &str, in_loop: bool) -> String {
        let scope = self.scope();
        let numbered = scope.numbered || in_loop;
        let local = match label {
            Some(l) => l.name.clone(),
            None if numbered => scope.next_index.to_string(),
            None => return self.auto_name(word),
        };
        if numbered {
            scope.next_index += 1;
        }
        format!("{}{local}", scope.prefix)
    }

    fn auto_name(&mut self, word: &str) -> String {
        let scope = self.scope();
        let count = scope.auto.entry(word.to_string()).or_insert(0);
        loop {
            *count += 1;
            let candidate = format!("{word}{count}");
            if !scope.reserved.contains(&candidate) {
                return format!("{}{candidate}", scope.prefix);
            }
        }
    }

    fn apply_steps(&mut self, env: &mut Env, steps: &[Step], mut x: NodeId, in_loop: bool) -> R<NodeId> {
        for step in steps {
            x = self.apply_step(env, step, x, in_loop)?;
        }
        Ok(x)
    }

    fn apply_step(&mut self, env: &mut Env, step: &Step, x: NodeId, in_loop: bool) -> R<NodeId> {
        match &step.kind {
            StepKind::Layer { name, args } => {
                if let Some(sig) = signature(&name.name) {
                    let full = self.step_name(step.label.as_ref(), &name.name, in_loop);
                    self.layer(env, name, sig, args.as_deref().unwrap_or_default(), x, full, step.span)
                } else if let Some(&block) = self.blocks.get(name.name.as_str()) {
                    let full = self.step_name(step.label.as_ref(), &name.name, in_loop);
                    let call = Call { name, args: args.as_deref().unwrap_or_default(), span: step.span };
                    self.instantiate(env, block, call, x, full)
                } else {
                    Err(self.unknown_layer(env, name))
                }
            }
            StepKind::Group(steps) => {
                let full = self.step_name(step.label.as_ref(), "seq", in_loop);
                let mut reserved = Vec::new();
                step_labels(steps, &mut reserved);
                self.push_scope(format!("{full}."), reserved, true);
                let result = self.apply_steps(env, steps, x, false);
                self.scopes.pop();
                result
            }
            StepKind::For { var, iter, body } => {
                let values = self.iterate(env, iter)?;
                let scoped = self.open_labeled(step, in_loop, body);
                let mut result = Ok(x);
                for v in values {
                    if self.budget.iterations == 0 {
                        result = Err(self.too_large(step.span, format!("more than {MAX_ITERATIONS} loop iterations")));
                        break;
                    }
                    self.budget.iterations -= 1;
                    env.frames.push(HashMap::new());
                    env.bind(var, v, false);
                    let current = result.and_then(|x| self.apply_steps(env, body, x, true));
                    env.frames.pop();
                    result = current;
                    if result.is_err() {
                        break;
                    }
                }
                if scoped {
                    self.scopes.pop();
                }
                result
            }
            StepKind::If { cond, then, otherwise } => {
                let take_then = self.condition(env, cond)?;
                let chosen: &[Step] = if take_then { then } else { otherwise.as_deref().unwrap_or_default() };
                let scoped = self.open_labeled(step, in_loop, chosen);
                let result = self.apply_steps(env, chosen, x, in_loop && !scoped);
                if scoped {
                    self.scopes.pop();
                }
                result
            }
        }
    }

    /// A label on a loop or condition makes it a named, numbered scope, like a group.
    fn open_labeled(&mut self, step: &Step, in_loop: bool, body: &[Step]) -> bool {
        let Some(label) = &step.label else { return false };
        let full = self.step_name(Some(label), "seq", in_loop);
        let mut reserved = Vec::new();
        step_labels(body, &mut reserved);
        self.push_scope(format!("{full}."), reserved, true);
        true
    }

    fn iterate(&mut self, env: &mut Env, iter: &Iterable) -> R<Vec<Value>> {
        match iter {
            Iterable::Range(a, b) => {
                let (start, end) = (self.eval(env, a)?, self.eval(env, b)?);
                let (Value::Int(start), Value::Int(end)) = (&start, &end) else {
                    let (span, v) = if matches!(start, Value::Int(_)) { (b.span, &end) } else { (a.span, &start) };
                    return Err(self.mismatch(span, "an integer", &v.clone()));
                };
                let count = end.saturating_sub(*start).max(0);
                if count > MAX_ITERATIONS as i64 {
                    return Err(self.too_large(a.span.to(b.span), format!("a range of {count} iterations")));
                }
                Ok((*start..*end).map(Value::Int).collect())
            }
            Iterable::Value(e) => match self.eval(env, e)? {
                Value::List(items) | Value::Tuple(items) => Ok(items),
                other => Err(self.mismatch(e.span, "a list or a range `a..b`", &other)),
            },
        }
    }

    fn too_large(&mut self, span: Span, what: String) -> Reported {
        self.error(
            Diagnostic::error(Code::TOO_LARGE, format!("the model is too large to elaborate: {what}"), span, "here")
                .with_note(format!(
                    "limits: {MAX_NODES} layers, {MAX_ITERATIONS} loop iterations, blocks nested {MAX_BLOCK_DEPTH} deep"
                )),
        )
    }

    fn unknown_layer(&mut self, env: &mut Env, name: &Ident) -> Reported {
        let n = name.name.as_str();
        let mut d = Diagnostic::error(
            Code::UNKNOWN_LAYER,
            format!("unknown layer `{n}`"),
            name.span,
            "no layer or block of this name",
        );
        if VALUE_FUNCTIONS.contains(&n) {
            d = d.with_hint(format!("`{n}` combines values: write it as an expression, e.g. `{n}(a, b) -> relu`"));
        } else if env.lookup(n).is_some() {
            d = d.with_hint(format!("`{n}` is a value, not a layer; a chain starts from a value: `{n} -> ...`"));
        } else if let Some(hint) = foreign::layer_hint(n) {
            d = d.with_hint(hint);
        } else {
            let candidates = LAYERS.iter().map(|(l, _)| *l).chain(self.blocks.keys().copied());
            if let Some(close) = did_you_mean(n, candidates) {
                d = d.with_hint(format!("did you mean `{close}`?"));
            }
        }
        self.error(d)
    }

    /// Matches call arguments to parameters: positional first, then by name.
    fn match_args(
        &mut self,
        env: &mut Env,
        callee: &Ident,
        params: &[&str],
        args: &[Arg],
    ) -> R<Vec<Option<(Value, Span)>>> {
        let mut given: Vec<Option<(Value, Span)>> = vec![None; params.len()];
        let mut failed = false;
        let mut positional = 0;
        let mut seen_named = false;
        for arg in args {
            let index = match &arg.name {
                Some(n) => {
                    seen_named = true;
                    match params.iter().position(|p| *p == n.name) {
                        Some(i) => i,
                        None => {
                            failed = true;
                            let mut d = Diagnostic::error(
                                Code::UNKNOWN_ARGUMENT,
                                format!("`{}` has no argument `{}`", callee.name, n.name),
                                n.span,
                                "unknown argument",
                            );
                            let foreign = signature(&callee.name).and_then(|_| foreign::argument_hint(&n.name, params));
                            d = match (foreign, did_you_mean(&n.name, params.iter().copied())) {
                                (Some(hint), _) => d.with_hint(hint),
                                (None, Some(close)) => d.with_hint(format!("did you mean `{close}`?")),
                                (None, None) if params.is_empty() => {
                                    d.with_hint(format!("`{}` takes no arguments", callee.name))
                                }
                                (None, None) => d.with_hint(format!("its arguments are: {}", params.join(", "))),
                            };
                            self.error(d);
                            continue;
                        }
                    }
                }
                None if seen_named => {
                    failed = true;
                    self.error(Diagnostic::error(
                        Code::DUPLICATE_ARGUMENT,
                        "positional argument after a named one",
                        arg.value.span,
                        "name this argument",
                    ));
                    continue;
                }
                None => {
                    positional += 1;
                    if params.is_empty() {
                        failed = true;
                        self.error(
                            Diagnostic::error(
                                Code::DUPLICATE_ARGUMENT,
                                format!("`{}` takes no arguments", callee.name),
                                arg.value.span,
                                "unexpected argument",
                            )
                            .with_hint(format!("write it without arguments: `{}`", callee.name)),
                        );
                        continue;
                    }
                    if positional > params.len() {
                        failed = true;
                        self.error(
                            Diagnostic::error(
                                Code::DUPLICATE_ARGUMENT,
                                format!("`{}` takes at most {} arguments", callee.name, params.len()),
                                arg.value.span,
                                "one too many",
                            )
                            .with_hint(format!("its arguments are: {}", params.join(", "))),
                        );
                        continue;
                    }
                    positional - 1
                }
            };
            let value = match self.eval(env, &arg.value) {
                Ok(v) => v,
                Err(Reported) => {
                    failed = true;
                    continue;
                }
            };
            let span = arg.name.as_ref().map_or(arg.value.span, |n| n.span.to(arg.value.span));
            if let Some((_, first)) = &given[index] {
                failed = true;
                let first = *first;
                self.error(
                    Diagnostic::error(
                        Code::DUPLICATE_ARGUMENT,
                        format!("argument `{}` given twice", params[index]),
                        span,
                        "given again here",
                    )
                    .with_secondary(first, "first given here"),
                );
                continue;
            }
            given[index] = Some((value, span));
        }
        if failed {
            return Err(Reported);
        }
        Ok(given)
    }

    #[allow(clippy::too_many_arguments)]
    fn layer(
        &mut self,
        env: &mut Env,
        name: &Ident,
        sig: &'static [ParamDef],
        args: &[Arg],
        x: NodeId,
        full: String,
        span: Span,
    ) -> R<NodeId> {
        let params: Vec<&str> = sig.iter().map(|d| d.name).collect();
        let given = self.match_args(env, name, &params, args)?;
        let mut bound = Bound::new(sig);
        for (i, g) in given.into_iter().enumerate() {
            if let Some((v, s)) = g {
                bound.set(i, v, s);
            }
        }
        let mut failed = false;
        for (i, def) in sig.iter().enumerate() {
            if def.default == Dflt::Required && !bound.is_set(i) {
                failed = true;
                self.error(
                    Diagnostic::error(
                        Code::MISSING_ARGUMENT,
                        format!("`{}` needs the argument `{}`", name.name, def.name),
                        name.span,
                        format!("`{}` missing", def.name),
                    )
                    .with_hint(format!("`{}` takes {}", name.name, signature_text(sig))),
                );
            }
        }
        for d in bound.check() {
            failed = true;
            self.diags.push(d);
        }
        if failed {
            return Err(Reported);
        }
        let input_shape = self.graph[x].shape.clone();
        let op = build(&name.name, &bound, &input_shape).map_err(|d| self.error(d))?;
        self.add_node(op, vec![x], full, span, &[])
    }

    fn instantiate(&mut self, caller: &mut Env, block: &Item, call: Call, x: NodeId, full: String) -> R<NodeId> {
        if self.depth >= MAX_BLOCK_DEPTH {
            return Err(self.too_large(call.name.span, format!("blocks nested more than {MAX_BLOCK_DEPTH} deep")));
        }
        let params: Vec<&str> = block.params.iter().map(|p| p.name.name.as_str()).collect();
        let given = self.match_args(caller, call.name, &params, call.args)?;
        // What the block reports from here on (its defaults, its body) is labelled at this use.
        let mark = self.diags.len();
        let bound = self.bind_params(block, call.name, given);
        let args = bound.as_ref().map(|(_, args)| args.clone()).unwrap_or_default();
        let result = bound.and_then(|(mut env, _)| self.instance_body(&mut env, block, call.name, x, full));
        self.label_instance(mark, block, call.span, &args);
        result
    }

    /// A block's parameters bound to the given arguments or their defaults, and the bindings
    /// as text (`width = 64, stride = 2`).
    fn bind_params(
        &mut self,
        block: &Item,
        call: &Ident,
        given: Vec<Option<(Value, Span)>>,
    ) -> Result<(Env, String), Reported> {
        let mut env = Env::new();
        let mut failed = false;
        let mut bound = Vec::new();
        for (param, g) in block.params.iter().zip(given) {
            let value = match (g, &param.default) {
                (Some((v, _)), _) => Ok(v),
                (None, Some(default)) => self.eval(&mut env, default),
                (None, None) => Err(self.error(
                    Diagnostic::error(
                        Code::MISSING_ARGUMENT,
                        format!("block `{}` needs the argument `{}`", block.name.name, param.name.name),
                        call.span,
                        format!("`{}` missing", param.name.name),
                    )
                    .with_secondary(param.name.span, "declared here without a default"),
                )),
            };
            match value {
                Ok(v) => {
                    bound.push(format!("{} = {v}", param.name.name));
                    env.bind(&param.name, v, false);
                }
                Err(Reported) => failed = true,
            }
        }
        if failed { Err(Reported) } else { Ok((env, bound.join(", "))) }
    }

    /// Elaborates a block's body in its own naming scope, on input `x`.
    fn instance_body(&mut self, env: &mut Env, block: &Item, call: &Ident, x: NodeId, full: String) -> R<NodeId> {
        self.push_scope(format!("{full}."), labels(&block.body), false);
        self.depth += 1;
        let result = self.body(env, block, BodyInput::Block(x));
        self.depth -= 1;
        self.scopes.pop();
        match result? {
            Value::Tensor(id) => Ok(id),
            other => Err(self.error(Diagnostic::error(
                Code::TYPE_MISMATCH,
                format!("block `{}` produces {}, not a tensor", block.name.name, other.kind()),
                call.span,
                "used as a layer here",
            ))),
        }
    }

    /// Points every diagnostic reported since `mark` from inside `block` at the use that
    /// instantiated it, with the arguments it was given (a problem inside a block often
    /// depends on them). Nested uses stack their labels, innermost first, up to
    /// [`MAX_USE_LABELS`] of them; a diagnostic about the use itself gets none.
    fn label_instance(&mut self, mark: usize, block: &Item, span: Span, args: &str) {
        let text = if args.is_empty() {
            format!("{USE_LABEL} `{}`", block.name.name)
        } else {
            format!("{USE_LABEL} `{}` ({args})", block.name.name)
        };
        for d in &mut self.diags[mark..] {
            let uses = d.secondary.iter().filter(|l| l.message.starts_with(USE_LABEL)).count();
            if d.primary.span.start >= span.start && d.primary.span.end <= span.end || uses >= MAX_USE_LABELS {
                continue;
            }
            d.secondary.push(cnnc_diag::Label { span, message: text.clone() });
        }
    }

    /// Adds a node: checks its name is new, runs its shape rule, reports what it finds.
    fn add_node(&mut self, op: Op, inputs: Vec<NodeId>, name: String, span: Span, operand_spans: &[Span]) -> R<NodeId> {
        if self.budget.nodes == 0 {
            return Err(self.too_large(span, format!("more than {MAX_NODES} layers")));
        }
        if let Some(&first) = self.node_names.get(&name) {
            return Err(self.error(
                Diagnostic::error(
                    Code::DUPLICATE_LAYER_NAME,
                    format!("two layers are named `{name}`"),
                    span,
                    "second layer with this name",
                )
                .with_secondary(first, "first layer with this name")
                .with_hint(
                    "layer names become weight names and must be unique: rename one; a label inside a loop \
                         repeats on every iteration, so move the loop body into a block to give each iteration a scope",
                ),
            ));
        }
        let keyword = op.keyword();
        let input_shapes: Vec<Shape> = inputs.iter().map(|&i| self.graph[i].shape.clone()).collect();
        let site = Site { keyword, name: &name, span, operand_spans, inputs: input_shapes };
        let refs: Vec<&Shape> = site.inputs.iter().collect();
        // Shape errors come first: parameter sizes are only meaningful for well-shaped inputs.
        if let Err(e) = cnnc_ir::shape::infer(&op, &refs) {
            return Err(self.error(shape_diag::error(&e, &site)));
        }
        let too_big = cnnc_ir::params(&op, &refs)
            .iter()
            .any(|p| p.dims.iter().try_fold(1usize, |a, &d| a.checked_mul(d)).is_none_or(|n| n > MAX_PARAM_ELEMENTS));
        if too_big {
            return Err(self.error(shape_diag::error(&cnnc_ir::ShapeError::Overflow, &site)));
        }
        match self.graph.add(op, inputs, name.clone(), span) {
            Ok((id, warnings)) => {
                self.budget.nodes -= 1;
                for w in &warnings {
                    self.diags.push(shape_diag::warning(w, &site));
                }
                self.node_names.insert(name, span);
                Ok(id)
            }
            Err(e) => Err(self.error(shape_diag::error(&e, &site))),
        }
    }
}

/// A signature as a user writes it: `out, k, stride=1, pad=0, ...`.
fn signature_text(sig: &[ParamDef]) -> String {
    let render = |d: &ParamDef| match d.default {
        Dflt::Required => d.name.to_string(),
        Dflt::Int(v) => format!("{}={v}", d.name),
        Dflt::Number(v) => format!("{}={v}", d.name),
        Dflt::Bool(v) => format!("{}={v}", d.name),
        Dflt::Like(other) => format!("{}={other}", d.name),
        Dflt::Sizes(v) => format!("{}={v:?}", d.name),
    };
    sig.iter().map(render).collect::<Vec<_>>().join(", ")
}

fn number(v: &Value) -> f64 {
    match v {
        Value::Int(i) => *i as f64,
        Value::Float(f) => *f,
        Value::Bool(_) | Value::Tuple(_) | Value::List(_) | Value::Tensor(_) => f64::NAN,
    }
}
