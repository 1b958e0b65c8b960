//! cnnc's reference interpreter: the oracle the code generator and the JIT are tested against.
//!
//! It runs a [`Graph`](cnnc_ir::Graph) forward and backward with plain loops, covering every
//! [`Op`](cnnc_ir::Op) (every `match` is exhaustive). Simplicity and correctness come first;
//! speed only has to keep tests practical.
//!
//! # Layout and names
//!
//! Tensors are dense, row-major, batch first: `[N, C, H, W]` for maps, `[N, F]` for vectors.
//! Parameters follow PyTorch's `state_dict`: `<layer>.weight` (conv OIHW, fc `[out, in]`,
//! batch-norm gamma, PReLU slope `[C]`), `<layer>.bias`, `<layer>.running_mean`,
//! `<layer>.running_var` (see [`Graph::named_params`](cnnc_ir::Graph::named_params)).
//!
//! # Precision
//!
//! Values are stored as f64 ([`Buf`]) and every sum accumulates in f64. [`Precision::F32`]
//! (the normal mode) rounds every stored tensor to f32, the semantics of an f32 back end with
//! f64 accumulators; [`Precision::F64`] keeps full precision for finite-difference checks.
//!
//! # API
//!
//! The entry points are generic over [`TensorLike`]: pass runtime `Tensor`s (f32) and get
//! `Tensor`s back, or pass [`Buf`]s (f64) and get `Buf`s back.
//!
//! ```
//! use cnnc_interp::{Options, backward, forward, loss};
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
//! let trace = forward(&graph, &params, &[input], Options::training(7))?;
//! let outputs: Vec<Tensor> = trace.outputs();
//! assert_eq!(outputs[0].data, vec![0.5, 2.0]);
//! let (value, grad) = loss::cross_entropy(&outputs[0], &[1])?;
//! let grads = backward(&graph, &trace, &[grad])?;
//! assert_eq!(grads.params["fc.weight"].shape, vec![2, 3]);
//! assert_eq!(grads.inputs[0].shape, vec![1, 3]);
//! // In training mode, `trace.running_stats()` holds every batch norm's updated statistics.
//! # let _ = value;
//! # Ok::<(), cnnc_interp::InterpError>(())
//! ```
//!
//! Op semantics (all as PyTorch unless noted) are documented in the kernel modules; the less
//! obvious points: max pooling treats padding as -inf and sends the gradient to the first
//! maximum in window order; average pooling's `include_pad` divisor counts the window clipped
//! to input + padding; L2 pooling is `sqrt(sum x^2)` over the window (padding adds 0); LRN sums
//! over channels `c - size/2 ..= c + (size-1)/2`; dropout masks come from [`dropout_mask`].
//!
//! The optimiser's ops run as the source ops they replace: `gemm` as a 1x1 convolution (on
//! maps) or an fc layer (on vectors), over the same weight; `fused_conv` / `fused_gemm` as the
//! base, plus the residual operand, then the activation, all in f64 and stored once (the
//! backward pass recomputes the pre-activation from the operands); `reorder` as the identity
//! (layouts are physical, tensors here are logical); `concat_in_place` as `concat`.

// Index loops mirror the formulas they implement; iterator chains would hide them.
#![allow(clippy::needless_range_loop)]

mod buf;
mod error;
mod interp;
pub mod loss;
mod ops;

pub use buf::{Buf, BufMap, TensorLike};
pub use error::InterpError;
pub use interp::{Gradients, Mode, Options, Precision, Trace, backward, forward};
pub use ops::act::{Rng, SELU_ALPHA, SELU_SCALE, dropout_mask};
