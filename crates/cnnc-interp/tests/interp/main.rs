//! The interpreter's integration tests, one binary (linked once): hand-worked cases, PyTorch
//! goldens, finite differences, batch norm, LRN, the optimisers, a ResNet and bad inputs.

mod batchnorm;
mod common;
mod errors;
mod golden;
mod gradients;
mod hand;
mod lrn;
mod optimiser_ops;
mod resnet;
