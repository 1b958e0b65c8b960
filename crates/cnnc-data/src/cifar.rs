//! CIFAR-10's binary version (`cifar-10-binary.tar.gz`): batches of records, each a label byte
//! (0..9) and a 3x32x32 image of unsigned bytes in channel-major order (1024 red, 1024 green,
//! 1024 blue values, each plane row by row).
//!
//! The files have no header, so a file must be a whole number of records; a regular file's
//! length is checked before it is read, and every label before the data set is returned.

use crate::error::DataError;
use crate::read::{Budget, DataFile, reserve_vec};
use std::path::{Path, PathBuf};

pub(crate) const CLASSES: usize = 10;
pub(crate) const SHAPE: [usize; 3] = [3, 32, 32];
const IMAGE_BYTES: usize = 3 * 32 * 32;
const RECORD_BYTES: usize = 1 + IMAGE_BYTES;

/// Images (as f32 values 0..=255) and labels from one or more batch files, in order.
pub(crate) struct Batches {
    pub images: Vec<f32>,
    pub labels: Vec<i64>,
}

pub(crate) fn read_batches(paths: &[PathBuf], budget: &mut Budget) -> Result<Batches, DataError> {
    // Every regular file's length is checked, and the whole data set's memory reserved, before
    // any file is read; the images then go straight into one allocation.
    let mut files = Vec::with_capacity(paths.len());
    let mut records = 0usize;
    for path in paths {
        let file = DataFile::open(path)?;
        if let Some(len) = file.len() {
            check_record_length(path, len)?;
            budget.reserve(path, len, (len / RECORD_BYTES as u64).saturating_mul(KEPT_PER_RECORD))?;
            records = records.saturating_add(usize::try_from(len / RECORD_BYTES as u64).unwrap_or(usize::MAX));
        }
        files.push(file);
    }
    let first = paths.first().map_or(Path::new(""), PathBuf::as_path);
    let mut batches = Batches {
        images: reserve_vec(first, records.saturating_mul(IMAGE_BYTES))?,
        labels: reserve_vec(first, records)?,
    };
    for file in files {
        read_batch(file, budget, &mut batches)?;
    }
    Ok(batches)
}

/// What one record takes once decoded: its image as f32 and its label as i64.
const KEPT_PER_RECORD: u64 = (IMAGE_BYTES * std::mem::size_of::<f32>() + std::mem::size_of::<i64>()) as u64;

fn read_batch(file: DataFile, budget: &mut Budget, out: &mut Batches) -> Result<(), DataError> {
    let path = file.path().to_path_buf();
    let regular = file.len().is_some();
    // A regular file's bytes were counted above, so it is read no further than its length; a
    // stream no further than what is left of the budget.
    let limit = file.len().unwrap_or_else(|| budget.remaining());
    let bytes = file.read_all_within(limit, budget.used())?;
    check_record_length(&path, bytes.len() as u64)?;
    let records = bytes.len() / RECORD_BYTES;
    if !regular {
        budget.reserve(&path, bytes.len() as u64, (records as u64).saturating_mul(KEPT_PER_RECORD))?;
    }
    let alloc = |bytes: u64| DataError::Allocation { path: path.clone(), bytes };
    // Only a stream (or a file that grew since its length was taken) needs more room.
    out.images.try_reserve(records.saturating_mul(IMAGE_BYTES)).map_err(|_| alloc(KEPT_PER_RECORD * records as u64))?;
    out.labels.try_reserve(records).map_err(|_| alloc(KEPT_PER_RECORD * records as u64))?;
    for (sample, record) in bytes.chunks_exact(RECORD_BYTES).enumerate() {
        let Some((&label, pixels)) = record.split_first() else { continue };
        if usize::from(label) >= CLASSES {
            return Err(DataError::LabelRange { path, sample, label: i64::from(label), classes: Some(CLASSES) });
        }
        out.labels.push(i64::from(label));
        out.images.extend(pixels.iter().map(|&b| f32::from(b)));
    }
    Ok(())
}

fn check_record_length(path: &Path, len: u64) -> Result<(), DataError> {
    if len == 0 {
        return Err(DataError::Empty { path: path.to_path_buf(), what: "records" });
    }
    if !len.is_multiple_of(RECORD_BYTES as u64) {
        return Err(DataError::CifarLength { path: path.to_path_buf(), len });
    }
    Ok(())
}
