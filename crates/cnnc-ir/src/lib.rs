//! The cnnc intermediate representation: a graph of typed, shaped nodes.
//!
//! Plain data in an arena addressed by `NodeId`; analyses (users, statistics, receptive fields)
//! are side tables. This crate knows nothing of the `.cnn` syntax, pest, quote or Cranelift.

mod graph;
pub mod op;
mod param;
pub mod shape;

pub use graph::{Graph, Node, NodeId};
pub use op::{Activation, BatchNorm, Conv, Fc, Lrn, Op, Pair, PoolKind, Window};
pub use param::{ParamRole, ParamSpec, params};
pub use shape::{Shape, ShapeError, ShapeWarning};
