//! `.npy` data sets: images `[N, C, H, W]` or flat samples `[N, F]` (float32, float64 or
//! uint8) and targets (int64, int32 or uint8 class labels `[N]`, or float targets `[N, ...]`),
//! read by `cnnc_runtime`'s bounded `.npy` reader and checked here for what a data set needs.

use crate::error::DataError;
use crate::read::{Budget, reserve_vec};
use crate::{Encoding, Targets};
use cnnc_runtime::NpyArray;
use std::path::Path;

/// Images read from a `.npy` file; flat samples `[N, F]` become `[F, 1, 1]`.
pub(crate) struct Images {
    pub shape: [usize; 3],
    pub count: usize,
    pub data: Vec<f32>,
    pub encoding: Encoding,
}

pub(crate) fn read_images(path: &Path, budget: &mut Budget) -> Result<Images, DataError> {
    // The reader refuses a file larger than what is left before reading its data.
    let array = cnnc_runtime::read_npy_within(path, budget.remaining())?;
    let (dims, data, encoding) = match array {
        NpyArray::F32(t) => {
            budget.reserve(path, 0, (t.data.len() as u64).saturating_mul(4))?;
            (t.shape, t.data, Encoding::Float)
        }
        NpyArray::U8 { shape, data } => {
            let n = data.len() as u64;
            budget.reserve(path, n, n.saturating_mul(4))?;
            let mut floats = reserve_vec(path, data.len())?;
            floats.extend(data.iter().map(|&b| f32::from(b)));
            (shape, floats, Encoding::Uint8)
        }
        NpyArray::I64 { .. } => {
            return Err(DataError::NpyKind {
                path: path.to_path_buf(),
                found: "integer",
                expected: "images must be float32, float64 or uint8",
                hint: "convert with `x.astype(np.float32)`, or `x.astype(np.uint8)` for pixels 0 to 255 (is this \
                       the labels file?)",
            });
        }
    };
    let (count, shape) = match *dims.as_slice() {
        [n, c, h, w] => (n, [c, h, w]),
        [n, f] => (n, [f, 1, 1]),
        [n, h, w] => {
            return Err(DataError::NpyShape {
                path: path.to_path_buf(),
                shape: dims,
                expected: "images must be [N, C, H, W] (or [N, F] for flat samples)",
                hint: Some(format!("add the channel axis: `x[:, None]` makes [{n}, 1, {h}, {w}]")),
            });
        }
        _ => {
            return Err(DataError::NpyShape {
                path: path.to_path_buf(),
                shape: dims,
                expected: "images must be [N, C, H, W] (or [N, F] for flat samples)",
                hint: None,
            });
        }
    };
    if count == 0 {
        return Err(DataError::Empty { path: path.to_path_buf(), what: "samples" });
    }
    if shape.contains(&0) {
        return Err(DataError::Empty { path: path.to_path_buf(), what: "values (its samples have a zero dimension)" });
    }
    check_finite(path, &data, data.len() / count)?;
    Ok(Images { shape, count, data, encoding })
}

pub(crate) fn read_targets(path: &Path, budget: &mut Budget) -> Result<Targets, DataError> {
    let array = cnnc_runtime::read_npy_within(path, budget.remaining())?;
    let (shape, labels) = match array {
        NpyArray::F32(t) => return float_targets(path, budget, t.shape, t.data),
        NpyArray::I64 { shape, data } => {
            budget.reserve(path, 0, (data.len() as u64).saturating_mul(8))?;
            (shape, data)
        }
        NpyArray::U8 { shape, data } => {
            budget.reserve(path, data.len() as u64, (data.len() as u64).saturating_mul(8))?;
            let mut labels = reserve_vec(path, data.len())?;
            labels.extend(data.iter().map(|&b| i64::from(b)));
            (shape, labels)
        }
    };
    match *shape.as_slice() {
        [0] => return Err(DataError::Empty { path: path.to_path_buf(), what: "labels" }),
        [_] => {}
        [n, 1] => {
            return Err(DataError::NpyShape {
                path: path.to_path_buf(),
                shape,
                expected: "class labels must be [N], one class index per sample",
                hint: Some(format!("flatten them: `y.reshape(-1)` makes [{n}]")),
            });
        }
        _ => {
            return Err(DataError::NpyShape {
                path: path.to_path_buf(),
                shape,
                expected: "class labels must be [N], one class index per sample",
                hint: Some(
                    "one-hot labels become class indices with `y.argmax(axis=1)`; targets that are values must be \
                     floats"
                        .to_owned(),
                ),
            });
        }
    }
    Targets::classes_from_labels(path, labels)
}

fn float_targets(path: &Path, budget: &mut Budget, shape: Vec<usize>, data: Vec<f32>) -> Result<Targets, DataError> {
    budget.reserve(path, 0, (data.len() as u64).saturating_mul(4))?;
    let Some((&count, per_sample)) = shape.split_first() else {
        return Err(DataError::NpyShape {
            path: path.to_path_buf(),
            shape,
            expected: "targets must be batch first, [N] or [N, ...]",
            hint: None,
        });
    };
    if count == 0 {
        return Err(DataError::Empty { path: path.to_path_buf(), what: "targets" });
    }
    if per_sample.contains(&0) {
        return Err(DataError::Empty { path: path.to_path_buf(), what: "values (its targets have a zero dimension)" });
    }
    check_finite(path, &data, data.len() / count)?;
    Ok(Targets::Values { shape: per_sample.to_vec(), data })
}

/// The first NaN or infinity, by sample and position in the sample.
pub(crate) fn check_finite(path: &Path, data: &[f32], per_sample: usize) -> Result<(), DataError> {
    match data.iter().position(|v| !v.is_finite()) {
        None => Ok(()),
        Some(i) => Err(DataError::NotFinite {
            path: path.to_path_buf(),
            sample: i / per_sample.max(1),
            index: i % per_sample.max(1),
            value: data[i],
        }),
    }
}
