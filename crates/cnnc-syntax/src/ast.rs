//! The abstract syntax tree of a `.cnn` file: plain data, every node carrying its source span.

use cnnc_diag::Span;

#[derive(Clone, Debug, PartialEq)]
pub struct File {
    pub items: Vec<Item>,
    /// The whole text up to its last non-blank character, so that a problem of the file as a
    /// whole (no model in it) can point at its end.
    pub span: Span,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ItemKind {
    Model,
    Block,
}

/// A `model` or a `block`: a name, parameters with optional defaults, and a body.
#[derive(Clone, Debug, PartialEq)]
pub struct Item {
    pub kind: ItemKind,
    pub name: Ident,
    pub params: Vec<Param>,
    pub body: Vec<Stmt>,
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ident {
    pub name: String,
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Param {
    pub name: Ident,
    pub default: Option<Expr>,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Stmt {
    /// `input x: [3, 224, 224]` in a model; `input x` in a block.
    Input { name: Ident, shape: Option<Expr>, span: Span },
    /// `let name = expr`.
    Let { name: Ident, value: Expr, span: Span },
    /// An expression: the item's result when it is the last statement.
    Expr(Expr),
}

impl Stmt {
    pub fn span(&self) -> Span {
        match self {
            Stmt::Input { span, .. } | Stmt::Let { span, .. } => *span,
            Stmt::Expr(e) => e.span,
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Expr {
    pub kind: ExprKind,
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq)]
pub enum ExprKind {
    Int(i64),
    Float(f64),
    Bool(bool),
    Name(String),
    Unary(UnOp, Box<Expr>),
    Binary(BinOp, Box<Expr>, Box<Expr>),
    /// A function in value position: `concat(a, b)`, `add(a, b)`, `channels(x)`, `max(a, b)`;
    /// `label` names the layer an `add` or a `concat` makes (`a1: add(x, y)`).
    Call {
        label: Option<Ident>,
        func: Ident,
        args: Vec<Arg>,
    },
    Tuple(Vec<Expr>),
    List(Vec<Expr>),
    If {
        cond: Box<Expr>,
        then: Box<Expr>,
        otherwise: Box<Expr>,
    },
    /// `head -> step -> step`.
    Chain {
        head: Box<Expr>,
        steps: Vec<Step>,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UnOp {
    Neg,
    Not,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BinOp {
    Or,
    And,
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    Add,
    Sub,
    Mul,
    Div,
    Rem,
}

impl BinOp {
    /// Binding strength: higher binds tighter.
    pub fn precedence(self) -> u8 {
        match self {
            BinOp::Or => 1,
            BinOp::And => 2,
            BinOp::Eq | BinOp::Ne | BinOp::Lt | BinOp::Le | BinOp::Gt | BinOp::Ge => 3,
            BinOp::Add | BinOp::Sub => 4,
            BinOp::Mul | BinOp::Div | BinOp::Rem => 5,
        }
    }

    pub fn symbol(self) -> &'static str {
        match self {
            BinOp::Or => "||",
            BinOp::And => "&&",
            BinOp::Eq => "==",
            BinOp::Ne => "!=",
            BinOp::Lt => "<",
            BinOp::Le => "<=",
            BinOp::Gt => ">",
            BinOp::Ge => ">=",
            BinOp::Add => "+",
            BinOp::Sub => "-",
            BinOp::Mul => "*",
            BinOp::Div => "/",
            BinOp::Rem => "%",
        }
    }
}

/// A call argument, positional or named (`k=3`).
#[derive(Clone, Debug, PartialEq)]
pub struct Arg {
    pub name: Option<Ident>,
    pub value: Expr,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Step {
    /// `conv1:` before the step: the layer's (or group's, or block instance's) name.
    pub label: Option<Ident>,
    pub kind: StepKind,
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq)]
pub enum StepKind {
    /// A layer or block: `relu`, `conv(64, k=3)`. `args` is `None` when written without parens.
    Layer { name: Ident, args: Option<Vec<Arg>> },
    /// `( step -> step )`: a sequence whose unnamed steps are numbered 0, 1, 2, ...
    Group(Vec<Step>),
    /// `for i in 0..n { steps }`: the steps repeated, numbered like a group's.
    For { var: Ident, iter: Iterable, body: Vec<Step> },
    /// `if cond { steps } else { steps }`; without `else` the value passes through unchanged.
    If { cond: Expr, then: Vec<Step>, otherwise: Option<Vec<Step>> },
}

#[derive(Clone, Debug, PartialEq)]
pub enum Iterable {
    /// `a..b`, half-open.
    Range(Expr, Expr),
    /// A list value: `[64, 128, 256]`.
    Value(Expr),
}
