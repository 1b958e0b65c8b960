//! The passes' integration tests, one binary (linked once): each pass, the pipeline, the memory
//! planner, freezing, random graphs, every example and the optimised graphs' semantics.

mod common;
mod each_pass;
mod examples;
mod freeze;
mod memory;
mod pipeline;
mod random_graphs;
mod semantics;
