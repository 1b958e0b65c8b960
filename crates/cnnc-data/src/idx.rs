//! MNIST's IDX format, as MNIST and Fashion-MNIST ship it (uncompressed): images of unsigned
//! bytes `[N, H, W]` and labels `[N]`.
//!
//! A file is a 4-byte big-endian magic number (two zero bytes, a type byte, the number of
//! dimensions: 0x00000803 for images, 0x00000801 for labels), one big-endian u32 per
//! dimension, then the values in row-major order. Files and the embedded digits go through the
//! same header parser and decoder; files are read header first, within the budget.

use crate::error::DataError;
use crate::read::{Budget, DataFile, reserve_vec};
use std::borrow::Cow;
use std::path::Path;

/// Where IDX bytes come from, with the name messages use.
#[derive(Clone, Copy)]
pub(crate) enum Origin<'a> {
    File(&'a Path),
    /// Bytes compiled into the binary (the built-in digits), named as if they were a file.
    Embedded {
        name: &'a Path,
        bytes: &'static [u8],
    },
}

impl Origin<'_> {
    fn name(&self) -> &Path {
        match self {
            Origin::File(path) => path,
            Origin::Embedded { name, .. } => name,
        }
    }
}

/// Images or labels: what a file should hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum IdxKind {
    Images,
    Labels,
}

impl IdxKind {
    fn rank(self) -> u8 {
        match self {
            IdxKind::Images => 3,
            IdxKind::Labels => 1,
        }
    }

    fn expected(self) -> &'static str {
        match self {
            IdxKind::Images => "an IDX images file",
            IdxKind::Labels => "an IDX labels file",
        }
    }

    fn magic(self) -> &'static str {
        match self {
            IdxKind::Images => "0x00000803",
            IdxKind::Labels => "0x00000801",
        }
    }

    fn header_len(self) -> usize {
        4 + 4 * usize::from(self.rank())
    }

    /// What the header announces, for messages: "the header and 60000 images of 28x28".
    fn contents(self, dims: &[usize]) -> String {
        match (self, dims) {
            (IdxKind::Images, [n, h, w]) => format!("the header and {n} images of {h}x{w}"),
            (IdxKind::Labels, [n]) => format!("the header and {n} labels"),
            (_, dims) => format!("the header and an array of {dims:?}"),
        }
    }
}

/// A validated header: the dimensions and the number of data bytes after the header.
struct Header {
    dims: Vec<usize>,
    data_len: usize,
}

/// The element types the IDX format defines, for the message when a file uses another.
fn type_name(code: u8) -> Option<&'static str> {
    Some(match code {
        0x08 => "unsigned bytes",
        0x09 => "signed bytes",
        0x0B => "16-bit integers",
        0x0C => "32-bit integers",
        0x0D => "32-bit floats",
        0x0E => "64-bit floats",
        _ => return None,
    })
}

/// Parses the magic number and the dimensions from the first bytes of a file.
fn parse_header(path: &Path, kind: IdxKind, prefix: &[u8]) -> Result<Header, DataError> {
    let truncated = |needed: usize| DataError::Truncated {
        path: path.to_path_buf(),
        what: "the IDX header".to_owned(),
        needed: needed as u64,
        found: prefix.len() as u64,
    };
    let Some(&[b0, b1, code, rank]) = prefix.first_chunk::<4>() else {
        return Err(truncated(4));
    };
    let magic_error = |hint: Option<&'static str>| DataError::Magic {
        path: path.to_path_buf(),
        expected: kind.expected(),
        found: format!("0x{b0:02x}{b1:02x}{code:02x}{rank:02x}"),
        magic: kind.magic(),
        hint,
    };
    if [b0, b1] == [0x1f, 0x8b] {
        return Err(magic_error(Some(
            "the file is gzip-compressed, as MNIST is downloaded: decompress it first (`gunzip`)",
        )));
    }
    if [b0, b1, code, rank] == *b"\x93NUM" {
        return Err(magic_error(Some(
            "it is a .npy file: name it with the .npy extension (train_x.npy and train_y.npy)",
        )));
    }
    if [b0, b1] != [0, 0] {
        return Err(magic_error(None));
    }
    if code != 0x08 {
        return match type_name(code) {
            Some(kind_name) => Err(DataError::IdxType { path: path.to_path_buf(), code, kind: kind_name }),
            None => Err(magic_error(None)),
        };
    }
    if rank != kind.rank() {
        let hint = match (kind, rank) {
            (IdxKind::Images, 1) => "it is an IDX labels file (magic 0x00000801): are the images and labels swapped?",
            (IdxKind::Labels, 3) => "it is an IDX images file (magic 0x00000803): are the images and labels swapped?",
            _ => "its magic number gives another number of dimensions: MNIST's images have 3 ([N, H, W]), its labels 1",
        };
        return Err(magic_error(Some(hint)));
    }
    let header_len = kind.header_len();
    let dim_bytes = prefix.get(4..header_len).ok_or_else(|| truncated(header_len))?;
    let dims: Vec<usize> = dim_bytes
        .chunks_exact(4)
        .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]))
        .map(|d| usize::try_from(d).unwrap_or(usize::MAX))
        .collect();
    let data_len = dims
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| DataError::Overflow { path: path.to_path_buf(), what: kind.contents(&dims) })?;
    Ok(Header { dims, data_len })
}

/// The whole file, validated: its dimensions, and its bytes with the data after
/// `kind.header_len()`. `kept_per_value` is what each value takes once decoded, for the budget.
fn load<'a>(
    origin: Origin<'a>,
    kind: IdxKind,
    budget: &mut Budget,
    kept_per_value: u64,
) -> Result<(Vec<usize>, Cow<'a, [u8]>), DataError> {
    let path = origin.name();
    let header_len = kind.header_len();
    let (header, bytes) = match origin {
        Origin::File(path) => {
            let mut file = DataFile::open(path)?;
            let prefix = file.prefix(header_len)?;
            let header = parse_header(path, kind, &prefix)?;
            let total = (header.data_len as u64).saturating_add(header_len as u64);
            let what = || kind.contents(&header.dims);
            // A header that lies about the file's length is an error before the limit is.
            file.check_length(total, &what)?;
            let kept = (header.data_len as u64).saturating_mul(kept_per_value);
            budget.reserve(path, total, kept)?;
            let bytes = file.read_exact_total(prefix, total, &what)?;
            (header, Cow::Owned(bytes))
        }
        Origin::Embedded { name, bytes } => {
            let header = parse_header(name, kind, bytes)?;
            let kept = (header.data_len as u64).saturating_mul(kept_per_value);
            budget.reserve(name, 0, kept)?;
            (header, Cow::Borrowed(bytes))
        }
    };
    // Checked again on the bytes themselves: for embedded data it is the only check, for a
    // file it costs nothing.
    let total = header.data_len.checked_add(header_len);
    let what = || kind.contents(&header.dims);
    match total {
        Some(total) if bytes.len() < total => Err(DataError::Truncated {
            path: path.to_path_buf(),
            what: what(),
            needed: total as u64,
            found: bytes.len() as u64,
        }),
        Some(total) if bytes.len() > total => Err(DataError::TrailingBytes {
            path: path.to_path_buf(),
            what: what(),
            needed: total as u64,
            found: Some(bytes.len() as u64),
        }),
        Some(_) => Ok((header.dims, bytes)),
        None => Err(DataError::Overflow { path: path.to_path_buf(), what: what() }),
    }
}

/// Images read from an IDX file: `[1, H, W]` each, as f32 values 0..=255.
pub(crate) struct Images {
    pub shape: [usize; 3],
    pub count: usize,
    pub data: Vec<f32>,
}

pub(crate) fn read_images(origin: Origin<'_>, budget: &mut Budget) -> Result<Images, DataError> {
    let path = origin.name();
    let (dims, bytes) = load(origin, IdxKind::Images, budget, std::mem::size_of::<f32>() as u64)?;
    let &[count, h, w] = dims.as_slice() else {
        return Err(DataError::Overflow { path: path.to_path_buf(), what: IdxKind::Images.contents(&dims) });
    };
    if count == 0 {
        return Err(DataError::Empty { path: path.to_path_buf(), what: "images" });
    }
    if h == 0 || w == 0 {
        return Err(DataError::Empty { path: path.to_path_buf(), what: "pixels (its images have a zero dimension)" });
    }
    let values = bytes.get(IdxKind::Images.header_len()..).unwrap_or_default();
    let mut data = reserve_vec(path, values.len())?;
    data.extend(values.iter().map(|&b| f32::from(b)));
    Ok(Images { shape: [1, h, w], count, data })
}

pub(crate) fn read_labels(origin: Origin<'_>, budget: &mut Budget) -> Result<Vec<i64>, DataError> {
    let path = origin.name();
    let (dims, bytes) = load(origin, IdxKind::Labels, budget, std::mem::size_of::<i64>() as u64)?;
    if dims.first() == Some(&0) {
        return Err(DataError::Empty { path: path.to_path_buf(), what: "labels" });
    }
    let values = bytes.get(IdxKind::Labels.header_len()..).unwrap_or_default();
    let mut labels = reserve_vec(path, values.len())?;
    labels.extend(values.iter().map(|&b| i64::from(b)));
    Ok(labels)
}
