//! cnnc-data's integration tests, one binary: reading every format (`formats`), every kind of
//! bad data as an error naming the file (`errors`), and the loader's batches (`loader`).

mod errors;
mod formats;
mod loader;

use std::path::{Path, PathBuf};

/// A memory limit no test comes near.
pub const LIMIT: u64 = 1 << 30;

/// An IDX images file: `n` images of `h x w`, pixel `k` of the whole file being `pixel(k)`.
pub fn idx_images(n: u32, h: u32, w: u32, pixel: impl Fn(usize) -> u8) -> Vec<u8> {
    let mut bytes = vec![0, 0, 8, 3];
    for d in [n, h, w] {
        bytes.extend_from_slice(&d.to_be_bytes());
    }
    bytes.extend((0..(n * h * w) as usize).map(pixel));
    bytes
}

/// An IDX labels file.
pub fn idx_labels(labels: &[u8]) -> Vec<u8> {
    let mut bytes = vec![0, 0, 8, 1];
    bytes.extend_from_slice(&(labels.len() as u32).to_be_bytes());
    bytes.extend_from_slice(labels);
    bytes
}

/// CIFAR-10 binary records: a label byte each, then 3072 pixels, pixel `k` of record `r`
/// being `(r * 7 + k) % 251`.
pub fn cifar_records(labels: &[u8]) -> Vec<u8> {
    let mut bytes = Vec::new();
    for (r, &label) in labels.iter().enumerate() {
        bytes.push(label);
        bytes.extend((0..3072).map(|k| ((r * 7 + k) % 251) as u8));
    }
    bytes
}

/// A `.npy` 1.0 file with any dtype, written by hand as numpy writes it.
pub fn npy(descr: &str, shape: &[usize], data: &[u8]) -> Vec<u8> {
    let shape = match shape {
        [n] => format!("({n},)"),
        dims => format!("({})", dims.iter().map(usize::to_string).collect::<Vec<_>>().join(", ")),
    };
    let mut header = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}");
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
    bytes.extend_from_slice(&(header.len() as u16).to_le_bytes());
    bytes.extend_from_slice(header.as_bytes());
    bytes.extend_from_slice(data);
    bytes
}

pub fn f32_bytes(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

pub fn i64_bytes(values: &[i64]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

/// Writes `files` into a new temporary directory.
pub fn dir_with(files: &[(&str, &[u8])]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temporary directory");
    for (name, bytes) in files {
        let path = dir.path().join(name);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).expect("subdirectory");
        }
        std::fs::write(path, bytes).expect("write");
    }
    dir
}

/// The data files of the built-in digits, as they are on disk.
pub fn digits_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("data/digits")
}
