//! The built-in layers: each one's signature (arguments, kinds, defaults) and its IR op.
//!
//! The table here is the single source of truth for what `conv(64, k=3)` means; docs/language.md
//! documents it and a test checks that every layer listed here is documented there.

use crate::value::Value;
use cnnc_diag::{Code, Diagnostic, Span};
use cnnc_ir::{Activation, BatchNorm, Conv, Fc, Lrn, Op, Pair, PoolKind, Shape, Window};

/// What an argument must be.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Kind {
    /// An integer >= 1.
    Size,
    /// An integer >= 1, or a `(height, width)` tuple of them.
    SizePair,
    /// An integer >= 0, or a `(height, width)` tuple of them.
    PadPair,
    /// Any finite number.
    Number,
    /// A number > 0.
    Positive,
    /// A number in [0, 1].
    Fraction,
    Bool,
    /// A non-empty list of sizes.
    Sizes,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Dflt {
    Required,
    Int(i64),
    Number(f64),
    Bool(bool),
    /// The value of another argument (a pooling stride defaults to its kernel).
    Like(&'static str),
    Sizes(&'static [i64]),
}

#[derive(Clone, Copy, Debug)]
pub struct ParamDef {
    pub name: &'static str,
    pub kind: Kind,
    pub default: Dflt,
}

const fn p(name: &'static str, kind: Kind, default: Dflt) -> ParamDef {
    ParamDef { name, kind, default }
}

use Dflt::{Bool as B, Int as I, Like, Number as N, Required as Req};
use Kind::*;

const CONV: &[ParamDef] = &[
    p("out", Size, Req),
    p("k", SizePair, Req),
    p("stride", SizePair, I(1)),
    p("pad", PadPair, I(0)),
    p("dilation", SizePair, I(1)),
    p("groups", Size, I(1)),
    p("depthwise", Bool, B(false)),
    p("bias", Bool, B(true)),
];
const MAXPOOL: &[ParamDef] = &[
    p("k", SizePair, Req),
    p("stride", SizePair, Like("k")),
    p("pad", PadPair, I(0)),
    p("dilation", SizePair, I(1)),
    p("ceil", Bool, B(false)),
];
const AVGPOOL: &[ParamDef] = &[
    p("k", SizePair, Req),
    p("stride", SizePair, Like("k")),
    p("pad", PadPair, I(0)),
    p("ceil", Bool, B(false)),
    p("include_pad", Bool, B(true)),
];
const L2POOL: &[ParamDef] =
    &[p("k", SizePair, Req), p("stride", SizePair, Like("k")), p("pad", PadPair, I(0)), p("ceil", Bool, B(false))];
const ADAPTIVE: &[ParamDef] = &[p("out", SizePair, Req)];
const SPP: &[ParamDef] = &[p("levels", Sizes, Dflt::Sizes(&[1, 2, 4]))];
const FC: &[ParamDef] = &[p("out", Size, Req), p("bias", Bool, B(true))];
const NONE: &[ParamDef] = &[];
const LEAKY: &[ParamDef] = &[p("slope", Number, N(0.01))];
const ELU: &[ParamDef] = &[p("alpha", Number, N(1.0))];
const HARDTANH: &[ParamDef] = &[p("min", Number, N(-1.0)), p("max", Number, N(1.0))];
const SOFTPLUS: &[ParamDef] = &[p("beta", Positive, N(1.0)), p("threshold", Number, N(20.0))];
const BN: &[ParamDef] = &[p("eps", Positive, N(1e-5)), p("momentum", Fraction, N(0.1))];
const LRN: &[ParamDef] = &[
    p("size", Size, I(5)),
    p("alpha", Number, N(1e-4)),
    p("beta", Number, N(0.75)),
    p("k", Number, N(1.0)),
    p("alpha_over_size", Bool, B(true)),
];
const DROPOUT: &[ParamDef] = &[p("p", Fraction, N(0.5))];

/// Every built-in layer keyword with its signature, in the order the docs list them.
pub const LAYERS: &[(&str, &[ParamDef])] = &[
    ("conv", CONV),
    ("maxpool", MAXPOOL),
    ("avgpool", AVGPOOL),
    ("l2pool", L2POOL),
    ("global_maxpool", NONE),
    ("global_avgpool", NONE),
    ("global_l2pool", NONE),
    ("adaptive_maxpool", ADAPTIVE),
    ("adaptive_avgpool", ADAPTIVE),
    ("adaptive_l2pool", ADAPTIVE),
    ("spp", SPP),
    ("fc", FC),
    ("flatten", NONE),
    ("relu", NONE),
    ("leaky_relu", LEAKY),
    ("prelu", NONE),
    ("elu", ELU),
    ("selu", NONE),
    ("sigmoid", NONE),
    ("tanh", NONE),
    ("hardtanh", HARDTANH),
    ("softsign", NONE),
    ("softplus", SOFTPLUS),
    ("softmax", NONE),
    ("bn", BN),
    ("lrn", LRN),
    ("dropout", DROPOUT),
];

/// Functions used in value position (`add(a, b)`), not as chain steps.
pub const VALUE_FUNCTIONS: &[&str] = &["add", "concat", "channels", "height", "width", "min", "max"];

pub fn signature(name: &str) -> Option<&'static [ParamDef]> {
    LAYERS.iter().find(|(n, _)| *n == name).map(|(_, sig)| *sig)
}

/// Arguments matched to a signature and checked against their kinds.
pub struct Bound {
    defs: &'static [ParamDef],
    values: Vec<Option<(Value, Span)>>,
}

impl Bound {
    pub fn new(defs: &'static [ParamDef]) -> Bound {
        Bound { defs, values: vec![None; defs.len()] }
    }

    pub fn index(&self, name: &str) -> Option<usize> {
        self.defs.iter().position(|d| d.name == name)
    }

    pub fn defs(&self) -> &'static [ParamDef] {
        self.defs
    }

    pub fn set(&mut self, index: usize, value: Value, span: Span) -> Option<Span> {
        let previous = self.values[index].as_ref().map(|(_, s)| *s);
        self.values[index] = Some((value, span));
        previous
    }

    pub fn is_set(&self, index: usize) -> bool {
        self.values[index].is_some()
    }

    /// Checks every given value against its kind; the errors point at the argument.
    pub fn check(&self) -> Vec<Diagnostic> {
        self.defs
            .iter()
            .zip(&self.values)
            .filter_map(|(def, v)| v.as_ref().and_then(|(value, span)| check_kind(def, value, *span).err()))
            .collect()
    }

    fn get(&self, name: &str) -> Value {
        let i = self.index(name).expect("layer builders only ask for their own arguments");
        match (&self.values[i], self.defs[i].default) {
            (Some((v, _)), _) => v.clone(),
            (None, Dflt::Int(v)) => Value::Int(v),
            (None, Dflt::Number(v)) => Value::Float(v),
            (None, Dflt::Bool(v)) => Value::Bool(v),
            (None, Dflt::Like(other)) => self.get(other),
            (None, Dflt::Sizes(v)) => Value::List(v.iter().map(|&x| Value::Int(x)).collect()),
            (None, Dflt::Required) => unreachable!("required arguments are checked before building"),
        }
    }

    pub fn size(&self, name: &str) -> usize {
        as_size(&self.get(name)).expect("checked")
    }

    pub fn pair(&self, name: &str) -> Pair {
        as_pair(&self.get(name)).expect("checked")
    }

    pub fn number(&self, name: &str) -> f64 {
        as_number(&self.get(name)).expect("checked")
    }

    pub fn flag(&self, name: &str) -> bool {
        matches!(self.get(name), Value::Bool(true))
    }

    pub fn sizes(&self, name: &str) -> Vec<usize> {
        match self.get(name) {
            Value::List(v) | Value::Tuple(v) => v.iter().map(|x| as_size(x).expect("checked")).collect(),
            other => vec![as_size(&other).expect("checked")],
        }
    }

    pub fn span_of(&self, name: &str) -> Option<Span> {
        self.index(name).and_then(|i| self.values[i].as_ref().map(|(_, s)| *s))
    }
}

fn as_size(v: &Value) -> Option<usize> {
    match v {
        Value::Int(i) if *i >= 1 => usize::try_from(*i).ok(),
        _ => None,
    }
}

fn as_count(v: &Value) -> Option<usize> {
    match v {
        Value::Int(i) if *i >= 0 => usize::try_from(*i).ok(),
        _ => None,
    }
}

fn pair_of(v: &Value, each: fn(&Value) -> Option<usize>) -> Option<Pair> {
    match v {
        Value::Tuple(items) if items.len() == 2 => Some([each(&items[0])?, each(&items[1])?]),
        other => each(other).map(|x| [x, x]),
    }
}

fn as_pair(v: &Value) -> Option<Pair> {
    pair_of(v, as_size).or_else(|| pair_of(v, as_count))
}

fn as_number(v: &Value) -> Option<f64> {
    match v {
        Value::Int(i) => Some(*i as f64),
        Value::Float(f) if f.is_finite() => Some(*f),
        _ => None,
    }
}

fn check_kind(def: &ParamDef, value: &Value, span: Span) -> Result<(), Diagnostic> {
    let (ok, wanted) = match def.kind {
        Kind::Size => (as_size(value).is_some(), "an integer of at least 1"),
        Kind::SizePair => {
            (pair_of(value, as_size).is_some(), "an integer of at least 1 or a (height, width) pair of them")
        }
        Kind::PadPair => {
            (pair_of(value, as_count).is_some(), "an integer of at least 0 or a (height, width) pair of them")
        }
        Kind::Number => (as_number(value).is_some(), "a number"),
        Kind::Positive => (as_number(value).is_some_and(|x| x > 0.0), "a number greater than 0"),
        Kind::Fraction => (as_number(value).is_some_and(|x| (0.0..=1.0).contains(&x)), "a number from 0 to 1"),
        Kind::Bool => (matches!(value, Value::Bool(_)), "`true` or `false`"),
        Kind::Sizes => (
            match value {
                Value::List(v) | Value::Tuple(v) => !v.is_empty() && v.iter().all(|x| as_size(x).is_some()),
                other => as_size(other).is_some(),
            },
            "a list of integers of at least 1",
        ),
    };
    if ok {
        return Ok(());
    }
    Err(Diagnostic::error(
        Code::BAD_ARGUMENT,
        format!("`{}` must be {wanted}, found {value}", def.name),
        span,
        format!("expected {wanted}"),
    ))
}

/// The op a built-in layer stands for, given its checked arguments and its input's shape.
pub fn build(name: &str, args: &Bound, input: &Shape) -> Result<Op, Diagnostic> {
    let window = |dilation: Pair, ceil_mode: bool| Window {
        kernel: args.pair("k"),
        stride: args.pair("stride"),
        pad: args.pair("pad"),
        dilation,
        ceil_mode,
    };
    let act = |a: Activation| Ok(Op::Activation(a));
    match name {
        "conv" => {
            let mut groups = args.size("groups");
            if args.flag("depthwise") {
                if let Some(span) = args.span_of("groups") {
                    return Err(Diagnostic::error(
                        Code::BAD_ARGUMENT,
                        "`depthwise=true` and `groups` both set the number of groups",
                        span,
                        "remove this or `depthwise`",
                    ));
                }
                groups = input.channels();
            }
            Ok(Op::Conv(Conv {
                out_channels: args.size("out"),
                window: window(args.pair("dilation"), false),
                groups,
                bias: args.flag("bias"),
            }))
        }
        "maxpool" => Ok(Op::Pool { kind: PoolKind::Max, window: window(args.pair("dilation"), args.flag("ceil")) }),
        "avgpool" => Ok(Op::Pool {
            kind: PoolKind::Avg { include_pad: args.flag("include_pad") },
            window: window([1, 1], args.flag("ceil")),
        }),
        "l2pool" => Ok(Op::Pool { kind: PoolKind::L2, window: window([1, 1], args.flag("ceil")) }),
        "global_maxpool" => Ok(Op::GlobalPool(PoolKind::Max)),
        "global_avgpool" => Ok(Op::GlobalPool(PoolKind::Avg { include_pad: true })),
        "global_l2pool" => Ok(Op::GlobalPool(PoolKind::L2)),
        "adaptive_maxpool" => Ok(Op::AdaptivePool { kind: PoolKind::Max, output: args.pair("out") }),
        "adaptive_avgpool" => {
            Ok(Op::AdaptivePool { kind: PoolKind::Avg { include_pad: true }, output: args.pair("out") })
        }
        "adaptive_l2pool" => Ok(Op::AdaptivePool { kind: PoolKind::L2, output: args.pair("out") }),
        "spp" => Ok(Op::Spp { kind: PoolKind::Max, levels: args.sizes("levels") }),
        "fc" => Ok(Op::Fc(Fc { out_features: args.size("out"), bias: args.flag("bias") })),
        "flatten" => Ok(Op::Flatten),
        "relu" => act(Activation::Relu),
        "leaky_relu" => act(Activation::LeakyRelu { slope: args.number("slope") }),
        "prelu" => Ok(Op::Prelu),
        "elu" => act(Activation::Elu { alpha: args.number("alpha") }),
        "selu" => act(Activation::Selu),
        "sigmoid" => act(Activation::Sigmoid),
        "tanh" => act(Activation::Tanh),
        "hardtanh" => {
            let (min, max) = (args.number("min"), args.number("max"));
            if min >= max {
                let span = args.span_of("min").or(args.span_of("max")).unwrap_or_default();
                return Err(Diagnostic::error(
                    Code::BAD_ARGUMENT,
                    format!("hardtanh needs min < max, found min = {min}, max = {max}"),
                    span,
                    "min must be below max",
                ));
            }
            act(Activation::HardTanh { min, max })
        }
        "softsign" => act(Activation::Softsign),
        "softplus" => act(Activation::Softplus { beta: args.number("beta"), threshold: args.number("threshold") }),
        "softmax" => Ok(Op::Softmax),
        "bn" => Ok(Op::BatchNorm(BatchNorm { eps: args.number("eps"), momentum: args.number("momentum") })),
        "lrn" => Ok(Op::Lrn(Lrn {
            size: args.size("size"),
            alpha: args.number("alpha"),
            beta: args.number("beta"),
            k: args.number("k"),
            alpha_over_size: args.flag("alpha_over_size"),
        })),
        "dropout" => Ok(Op::Dropout { p: args.number("p") }),
        other => unreachable!("`{other}` has a signature but no builder"),
    }
}
