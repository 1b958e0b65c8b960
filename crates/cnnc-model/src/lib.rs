//! `cnn!`: a convolutional network written in `.cnn` inside a Rust program, checked and
//! compiled by cnnc while rustc compiles the program.
//!
//! ```text
//! cnnc_model::cnn! {
//!     #![options(train = sgd)]
//!     model digits(classes = 10) {
//!         input x: [1, 8, 8]
//!         x -> conv(32, k=3, pad=1) -> bn -> relu -> maxpool(2) -> flatten -> fc(classes)
//!     }
//! }
//!
//! let mut trainer = digits::Trainer::from_seed(1)?;
//! let loss = trainer.step(&images, &labels, batch, &digits::StepArgs { lr: 0.05, step: 1, seed: 7 })?;
//! // The trained tensors (without the optimiser's state) into the inference struct.
//! let tensors: Vec<(&str, Vec<f32>)> =
//!     digits::model::TENSORS.iter().map(|t| (t.name, trainer.tensor(t.name).unwrap())).collect();
//! let tensors: Vec<(&str, &[f32])> = tensors.iter().map(|(n, v)| (*n, v.as_slice())).collect();
//! let model = digits::Model::from_tensors(&tensors)?;
//! model.forward(&image, 1, &mut scores)?;
//! ```
//!
//! The macro expands to `pub mod <model name> { ... }`: the module `cnnc-codegen` generates
//! for the model, through the same front end, passes and code generator as the `cnnc`
//! command. It depends on nothing but std (the kernels travel in it as source), so this crate
//! re-exports the macro and nothing else. In the module:
//!
//! - `Model`: inference. `from_seed(seed)` (the weights `cnnc init --seed` draws),
//!   `from_safetensors(bytes)` (PyTorch `state_dict` names), `forward(inputs.., batch, outputs..)`;
//!   `model::INPUT_0_LEN`, `model::OUTPUT_0_LEN` and their shapes.
//! - with `train = sgd | adam | rmsprop`: `Trainer` (`step(inputs.., labels or targets, batch,
//!   &StepArgs)` returns the loss; `tensor`, `gradient`, `to_safetensors`) and `StepArgs`;
//!   with `train = gradients`: `Gradients` (forward and backward, no update).
//! - `Error`, every length and label checked before the kernels run.
//!
//! # Input
//!
//! - `cnn! { <.cnn source> }`, optionally starting with `#![options(...)]`. Every diagnostic
//!   is a compile error at the offending tokens (code, message, labels, notes and the fix);
//!   warnings (a stride leaving input rows unread, a value never used) are deprecation
//!   warnings at their tokens, since stable Rust has no warnings for macros (so
//!   `#![deny(deprecated)]` makes them errors). `///` doc comments are allowed and ignored.
//! - `cnn!(file = "models/x.cnn", <options>)`: the file, relative to the crate's directory
//!   (`CARGO_MANIFEST_DIR`); the crate is rebuilt when it changes. Diagnostics are rendered
//!   as the CLI renders them, with the file's line and column and its source line.
//!
//! Options: `model = name` (which model of the source, when it has several),
//! `shape = [C, H, W]` (the input shape, as `--shape`), `set(name = value, ...)` (model
//! parameters, as `--set`), `train = sgd | adam | rmsprop | gradients` (the optimisers with
//! `cnnc train`'s defaults: momentum 0.9, weight decay 5e-4; the learning rate is a
//! `StepArgs` field),
//! `loss = cross_entropy | mse | l1` (default: cross-entropy for a classifier, else mean
//! squared error), `std = false` (a `core`-only module: inference only, caller's memory).
//!
//! Examples (from the workspace root): `cargo run --release -p cnnc-model --example digits`
//! trains the digits network and prints its test accuracy; `--example resnet18` embeds
//! ResNet-18 from `examples/resnet18.cnn` and classifies a random image.

pub use cnnc_macro::cnn;
