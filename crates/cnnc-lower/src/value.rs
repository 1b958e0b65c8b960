//! Values of the elaboration-time language: numbers, booleans, tuples, lists and tensors.

use cnnc_ir::NodeId;
use std::fmt;

#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    Int(i64),
    Float(f64),
    Bool(bool),
    Tuple(Vec<Value>),
    List(Vec<Value>),
    /// A tensor: the graph node that computes it.
    Tensor(NodeId),
}

impl Value {
    /// The kind of value, for "expected X, found Y" messages.
    pub fn kind(&self) -> &'static str {
        match self {
            Value::Int(_) => "an integer",
            Value::Float(_) => "a number",
            Value::Bool(_) => "a boolean",
            Value::Tuple(_) => "a tuple",
            Value::List(_) => "a list",
            Value::Tensor(_) => "a tensor",
        }
    }
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let seq = |f: &mut fmt::Formatter<'_>, open: &str, items: &[Value], close: &str| {
            write!(f, "{open}")?;
            for (i, v) in items.iter().enumerate() {
                if i > 0 {
                    write!(f, ", ")?;
                }
                write!(f, "{v}")?;
            }
            write!(f, "{close}")
        };
        match self {
            Value::Int(v) => write!(f, "{v}"),
            Value::Float(v) => write!(f, "{v}"),
            Value::Bool(v) => write!(f, "{v}"),
            Value::Tuple(items) => seq(f, "(", items, ")"),
            Value::List(items) => seq(f, "[", items, "]"),
            Value::Tensor(_) => write!(f, "a tensor"),
        }
    }
}
