//! `Buf`, the interpreter's f64 tensor, and the [`TensorLike`] trait that lets the public API
//! take and return either runtime `Tensor`s (f32) or `Buf`s (f64).

use crate::error::InterpError;
use cnnc_runtime::Tensor;
use std::collections::BTreeMap;

/// A dense, row-major f64 tensor with its full shape (batch first where there is one).
///
/// The interpreter stores every value in this form; whether the stored values are rounded to
/// f32 is decided by [`crate::Precision`].
#[derive(Clone, Debug, PartialEq)]
pub struct Buf {
    pub shape: Vec<usize>,
    pub data: Vec<f64>,
}

/// Named f64 tensors: parameters, buffers or their gradients keyed by full name.
pub type BufMap = BTreeMap<String, Buf>;

impl Buf {
    pub fn zeros(shape: &[usize]) -> Buf {
        Buf { shape: shape.to_vec(), data: vec![0.0; shape.iter().product()] }
    }

    /// Builds a buffer, checking that the element count matches the shape.
    pub fn from_vec(shape: &[usize], data: Vec<f64>) -> Result<Buf, InterpError> {
        let expected = elements(shape);
        if expected != Some(data.len()) {
            return Err(InterpError::DataLength { what: "buffer".into(), shape: shape.to_vec(), len: data.len() });
        }
        Ok(Buf { shape: shape.to_vec(), data })
    }

    pub fn len(&self) -> usize {
        self.data.len()
    }

    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// Widens an f32 tensor (exact).
    pub fn from_tensor(tensor: &Tensor) -> Buf {
        Buf { shape: tensor.shape.clone(), data: tensor.data.iter().map(|&v| f64::from(v)).collect() }
    }

    /// Narrows to an f32 tensor, rounding to nearest.
    pub fn to_tensor(&self) -> Tensor {
        Tensor { shape: self.shape.clone(), data: self.data.iter().map(|&v| v as f32).collect() }
    }

    /// Rounds every element to the nearest f32 (kept in f64 storage).
    pub(crate) fn round_to_f32(&mut self) {
        for v in &mut self.data {
            *v = f64::from(*v as f32);
        }
    }
}

impl From<&Tensor> for Buf {
    fn from(tensor: &Tensor) -> Buf {
        Buf::from_tensor(tensor)
    }
}

/// The tensor types the public API accepts and returns: [`Tensor`] (f32, the normal API) and
/// [`Buf`] (f64, for gradient checks and anything that wants the unrounded values).
///
/// Every entry point is generic over it, so `forward(&g, &params, &[x], opts)` with a
/// `TensorMap` and `Tensor`s works on f32 tensors and the same call with a `BufMap` and `Buf`s
/// works on f64 ones. Converting a `Buf` to a `Tensor` rounds to nearest.
pub trait TensorLike: Clone {
    fn shape(&self) -> &[usize];
    /// Number of stored elements (checked against the shape at the API boundary).
    fn data_len(&self) -> usize;
    fn to_buf(&self) -> Buf;
    fn from_buf(buf: &Buf) -> Self;
}

impl TensorLike for Tensor {
    fn shape(&self) -> &[usize] {
        &self.shape
    }

    fn data_len(&self) -> usize {
        self.data.len()
    }

    fn to_buf(&self) -> Buf {
        Buf::from_tensor(self)
    }

    fn from_buf(buf: &Buf) -> Tensor {
        buf.to_tensor()
    }
}

impl TensorLike for Buf {
    fn shape(&self) -> &[usize] {
        &self.shape
    }

    fn data_len(&self) -> usize {
        self.data.len()
    }

    fn to_buf(&self) -> Buf {
        self.clone()
    }

    fn from_buf(buf: &Buf) -> Buf {
        buf.clone()
    }
}

/// Number of elements of a shape, or `None` on overflow.
pub(crate) fn elements(shape: &[usize]) -> Option<usize> {
    shape.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d))
}

/// Checks that a caller's tensor holds as many elements as its shape says and converts it.
pub(crate) fn checked_buf<T: TensorLike>(what: impl Fn() -> String, t: &T) -> Result<Buf, InterpError> {
    if elements(t.shape()) != Some(t.data_len()) {
        return Err(InterpError::DataLength { what: what(), shape: t.shape().to_vec(), len: t.data_len() });
    }
    Ok(t.to_buf())
}
