//! The JIT against the reference interpreter: every example at a reduced resolution (inference
//! and one training step), every op forward and backward, random configurations; in both
//! kernel modes, with every buffer ending at a guard page; point convolutions; and the cancel
//! token.

mod cancel;
mod common;
mod examples;
mod ops;
mod point;
mod random;
mod tiles;
mod update;
mod winograd;
