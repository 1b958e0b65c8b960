//! A dense, row-major f32 tensor with its full shape (batch first where there is one).

/// Data whose length does not match the shape it was given.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("shape {shape:?} holds {} elements, the data has {data_len}", elements.map_or("too many".to_string(), |n| n.to_string()))]
pub struct TensorError {
    pub shape: Vec<usize>,
    /// `None` when the element count overflows.
    pub elements: Option<usize>,
    pub data_len: usize,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Tensor {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

impl Tensor {
    pub fn zeros(shape: &[usize]) -> Tensor {
        Tensor { shape: shape.to_vec(), data: vec![0.0; shape.iter().product()] }
    }

    /// Builds a tensor from data, checking that the element count matches the shape.
    pub fn from_vec(shape: &[usize], data: Vec<f32>) -> Result<Tensor, TensorError> {
        let elements = shape.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d));
        if elements != Some(data.len()) {
            return Err(TensorError { shape: shape.to_vec(), elements, data_len: data.len() });
        }
        Ok(Tensor { shape: shape.to_vec(), data })
    }

    pub fn len(&self) -> usize {
        self.data.len()
    }

    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn from_vec_checks_the_element_count() {
        assert_eq!(Tensor::from_vec(&[2, 3], vec![0.0; 6]).unwrap().shape, [2, 3]);
        let e = Tensor::from_vec(&[2, 3], vec![0.0; 5]).unwrap_err();
        assert_eq!(e.to_string(), "shape [2, 3] holds 6 elements, the data has 5");
        let e = Tensor::from_vec(&[usize::MAX, 2], vec![]).unwrap_err();
        assert_eq!(e.elements, None);
    }
}
