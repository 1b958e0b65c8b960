//! The cnnc intermediate representation: a graph of typed, shaped nodes.
//!
//! Plain data in an arena addressed by `NodeId`; analyses (users, statistics, receptive fields)
//! are side tables. This crate knows nothing of the `.cnn` syntax, pest, quote or Cranelift.

pub mod depth;
pub mod dot;
pub mod facts;
mod graph;
pub mod layout;
pub mod op;
mod param;
pub mod plan;
pub mod print;
pub mod shape;
pub mod stats;
pub mod stem;
#[cfg(test)]
mod testutil;
pub mod train;
pub mod verify;

pub use dot::{dot, dot_with_clusters};
pub use graph::{Graph, Node, NodeId};
pub use layout::WeightLayout;
pub use op::{Activation, BatchNorm, Conv, Epilogue, Fc, FusedBase, Gemm, Layout, Lrn, Op, Pair, PoolKind, Window};
pub use param::{ParamRole, ParamSpec, params};
pub use print::print;
pub use shape::{Shape, ShapeError, ShapeWarning};
pub use stats::{NodeStats, Totals, node_stats, totals};
pub use train::{Adam, HingeForm, Loss, Optimizer, PoolGeometry, RmsProp, SavedSide, Sgd, TrainOp};
pub use verify::{VerifyError, verify};
