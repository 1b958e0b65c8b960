//! cnnc's reference interpreter: the oracle the code generator and the JIT are tested against.
//!
//! It runs any [`Graph`](cnnc_ir::Graph), inference or training, with plain loops in f64,
//! covering every [`Op`](cnnc_ir::Op) (every `match` is exhaustive). It implements ops, never
//! differentiation: a training graph (`cnnc_passes::training_graph`) spells out the loss, the
//! backward ops and the optimiser updates, and the interpreter runs them like any other node.
//! Simplicity and correctness come first; speed only has to keep tests practical.
//!
//! # Two modes
//!
//! - [`run`]: logical. Every value is a dense row-major tensor, batch first (`[N, C, H, W]`,
//!   `[N, F]`; whole-batch values such as gradients without the batch); parameters follow
//!   PyTorch's `state_dict` names and layouts.
//! - [`run_plan`]: physical. An execution plan ([`cnnc_ir::plan::Plan`]) run exactly as it
//!   says, through one f32 arena: layouts, offsets, batch strides, in-place writes,
//!   concatenation slices, packed weights. It gives the same results as [`run`] on the plan's
//!   graph, bit for bit, which is how every plan is tested.
//!
//! # Precision
//!
//! Values are stored as f64 ([`Buf`]) and every sum accumulates in f64. [`Precision::F32`]
//! (the normal mode) rounds every stored tensor to f32, the semantics of an f32 back end with
//! f64 accumulators; [`Precision::F64`] keeps full precision for finite-difference checks.
//!
//! # API
//!
//! ```
//! use cnnc_interp::{Options, run};
//! use cnnc_ir::{Fc, Graph, Op, Shape};
//! use cnnc_runtime::{Tensor, TensorMap};
//!
//! let mut graph = Graph::new("tiny");
//! let x = graph.add_input("x", Shape(vec![3]), Default::default()).unwrap();
//! let (y, _) = graph.add(Op::Fc(Fc { out_features: 2, bias: true }), vec![x], "fc", Default::default()).unwrap();
//! graph.outputs = vec![y];
//!
//! let mut params = TensorMap::new();
//! params.insert("fc.weight".into(), Tensor::from_vec(&[2, 3], vec![1., 0., 0., 0., 1., 0.]).unwrap());
//! params.insert("fc.bias".into(), Tensor::zeros(&[2]));
//! let input = Tensor::from_vec(&[1, 3], vec![0.5, 2.0, -1.0]).unwrap();
//!
//! let result = run(&graph, &mut params, &[input], &Options::new())?;
//! let out: Tensor = result.output(0).unwrap();
//! assert_eq!(out.data, vec![0.5, 2.0]);
//! # Ok::<(), cnnc_interp::InterpError>(())
//! ```
//!
//! Op semantics (all as PyTorch unless noted) are documented in the kernel modules; the less
//! obvious points: max pooling treats padding as -inf and its training forward records the
//! first maximum in window order; average pooling's `include_pad` divisor counts the window
//! clipped to input + padding; L2 pooling is `sqrt(sum x^2)` over the window (padding adds 0);
//! LRN sums over channels `c - size/2 ..= c + (size-1)/2`; dropout masks come from
//! [`dropout_mask`], keyed by the layer's name and the step.
//!
//! The optimiser's ops run as the source ops they replace: `gemm` as a 1x1 convolution (on
//! maps) or an fc layer (on vectors), over the same weight; `fused_conv` / `fused_gemm` as the
//! base, plus the residual operand, then the activation, all in f64 and stored once;
//! `reorder` as the identity (layouts are physical; the physical mode really reorders);
//! `concat_in_place` as `concat`; `dropout` (outside training graphs) as the identity.

// Index loops mirror the formulas they implement; iterator chains would hide them.
#![allow(clippy::needless_range_loop)]

mod buf;
mod error;
mod eval;
mod interp;
mod loss;
mod ops;
mod physical;
mod update;

pub use buf::{Buf, BufMap, TensorLike};
pub use error::InterpError;
pub use interp::{Gradients, Options, Precision, Run, gradients, run};
pub use ops::act::{Rng, SELU_ALPHA, SELU_SCALE, dropout_mask, fnv1a64};
pub use physical::run_plan;
