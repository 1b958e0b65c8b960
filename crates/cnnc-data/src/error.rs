//! `DataError`: why a data set cannot be read, or does not fit the model, naming the file.
//!
//! Every variant names the file (or, for data that came from several files or none, the data
//! set's name; for normalisation metadata, the key), so a message is useful on its own, and
//! [`DataError::hint`] says how to fix it where there is something to say.

use cnnc_runtime::{NpyError, human_bytes};
use std::io;
use std::path::PathBuf;
use thiserror::Error;

/// A data set that cannot be read or used.
#[derive(Debug, Error)]
pub enum DataError {
    #[error("cannot read `{}`: {source}", .path.display())]
    Io { path: PathBuf, source: io::Error },

    /// A `.npy` file that the runtime's reader refuses (it names the file itself).
    #[error(transparent)]
    Npy(#[from] NpyError),

    #[error("`{}` is not {expected}: it starts with {found}, not the magic number {magic}", .path.display())]
    Magic { path: PathBuf, expected: &'static str, found: String, magic: &'static str, hint: Option<&'static str> },

    #[error(
        "`{}` is an IDX file of {kind} (type byte {code:#04x}); cnnc reads IDX files of unsigned bytes \
         (type 0x08), as MNIST's are",
        .path.display()
    )]
    IdxType { path: PathBuf, code: u8, kind: &'static str },

    #[error("`{}` is truncated: it needs {needed} bytes for {what}, but has {found}", .path.display())]
    Truncated { path: PathBuf, what: String, needed: u64, found: u64 },

    #[error(
        "`{}` has bytes after its data: it needs {needed} bytes for {what}, but has {}",
        .path.display(),
        .found.map_or_else(|| "more (and does not end there)".to_owned(), |n| n.to_string())
    )]
    TrailingBytes { path: PathBuf, what: String, needed: u64, found: Option<u64> },

    #[error("`{}` announces {what}, more than this machine can address", .path.display())]
    Overflow { path: PathBuf, what: String },

    #[error(
        "reading `{}` would take the data set to {} of memory, more than the {} cnnc may use",
        .path.display(),
        human_bytes(*.needed),
        human_bytes(*.limit)
    )]
    TooLarge { path: PathBuf, needed: u64, limit: u64 },

    #[error("not enough memory to read `{}`: it needs {}", .path.display(), human_bytes(*.bytes))]
    Allocation { path: PathBuf, bytes: u64 },

    #[error("`{}` holds no {what}", .path.display())]
    Empty { path: PathBuf, what: &'static str },

    #[error(
        "`{}` holds {labels} labels but `{}` holds {images} images; there must be one label per image",
        .labels_path.display(),
        .images_path.display()
    )]
    CountMismatch { images_path: PathBuf, labels_path: PathBuf, images: usize, labels: usize },

    #[error(
        "label {label} of sample {sample} in `{}` is {}",
        .path.display(),
        label_problem(*.label, *.classes)
    )]
    LabelRange { path: PathBuf, sample: usize, label: i64, classes: Option<usize> },

    #[error("value {index} of sample {sample} in `{}` is {value}; data must be finite", .path.display())]
    NotFinite { path: PathBuf, sample: usize, index: usize, value: f32 },

    #[error(
        "`{}` is {len} bytes, not a whole number of CIFAR-10 records (3073 bytes each: a label byte, \
         then a 3x32x32 image)",
        .path.display()
    )]
    CifarLength { path: PathBuf, len: u64 },

    #[error("`{}` has shape {shape:?}; {expected}", .path.display())]
    NpyShape { path: PathBuf, shape: Vec<usize>, expected: &'static str, hint: Option<String> },

    #[error("`{}` holds {found} values; {expected}", .path.display())]
    NpyKind { path: PathBuf, found: &'static str, expected: &'static str, hint: &'static str },

    #[error("{} in `{name}` are {} but the model takes {}", samples_word(*.found), shape_text(.found), input_text(.expected))]
    InputShape { name: String, found: [usize; 3], expected: Vec<usize>, model_takes_found: Option<bool> },

    #[error(
        "`{}` holds floating-point targets, but the model's loss takes class labels (0 to {})",
        .path.display(),
        .classes.saturating_sub(1)
    )]
    TargetKind { path: PathBuf, classes: usize },

    #[error(
        "the test images in `{test}` are {} but the training images in `{train}` are {}",
        shape_text(.test_shape),
        shape_text(.train_shape)
    )]
    SplitShape { train: String, test: String, train_shape: [usize; 3], test_shape: [usize; 3] },

    #[error(
        "the test targets in `{}` are {}, but the training targets are {}",
        .test.display(),
        .test_kind,
        .train_kind
    )]
    SplitTargets { test: PathBuf, train_kind: String, test_kind: String },

    #[error(
        "`{}` holds no data set cnnc reads: it expected MNIST-style IDX files (train-images-idx3-ubyte \
         and train-labels-idx1-ubyte, optionally t10k-images-idx3-ubyte and t10k-labels-idx1-ubyte), \
         CIFAR-10 binary batches (data_batch_1.bin to data_batch_5.bin and test_batch.bin, there or in \
         cifar-10-batches-bin/), or .npy pairs (train_x.npy and train_y.npy, optionally test_x.npy and \
         test_y.npy); it holds {}",
        .dir.display(),
        listing(.found, *.more)
    )]
    NoDataset { dir: PathBuf, found: Vec<String>, more: usize },

    #[error("`{}` holds more than one data set: {}", .dir.display(), .formats.join(" and "))]
    Ambiguous { dir: PathBuf, formats: Vec<&'static str> },

    #[error("`{}` holds `{present}` but not `{missing}`, which goes with it", .dir.display())]
    MissingPartner { dir: PathBuf, present: String, missing: String },

    #[error("`{}` was given as the test {given} without test {missing}", .path.display())]
    UnpairedTest { path: PathBuf, given: &'static str, missing: &'static str },

    #[error("`{}` is not a directory", .path.display())]
    NotADirectory { path: PathBuf },

    #[error("the normalisation metadata `{key}` = {value:?} {reason}")]
    Metadata { key: String, value: String, reason: String },

    #[error("the normalisation has {found} channel values, but the images in `{name}` have {channels} channels")]
    NormalizationChannels { name: String, channels: usize, found: usize },

    #[error("cannot augment the samples of `{name}`: {reason}")]
    Augment { name: String, reason: String },
}

impl DataError {
    /// How to fix the problem, where there is something to say beyond the message.
    pub fn hint(&self) -> Option<String> {
        match self {
            DataError::Npy(_) => None,
            DataError::Magic { hint, .. } => hint.map(str::to_owned),
            DataError::IdxType { .. } => {
                Some("convert the data to uint8, or save it with numpy as a .npy file (float32 is read)".to_owned())
            }
            DataError::Truncated { .. } => {
                Some("the file is incomplete: download or copy it again (and check its checksum)".to_owned())
            }
            DataError::TrailingBytes { .. } | DataError::CifarLength { .. } => {
                Some("the file is not what its name says, or is damaged: download or copy it again".to_owned())
            }
            DataError::TooLarge { .. } | DataError::Allocation { .. } => Some(
                "raise the limit with `--memory-limit`, or train on a subset of the data (a .npy pair of the \
                 first samples, say)"
                    .to_owned(),
            ),
            DataError::CountMismatch { .. } => {
                Some("the images and the labels must come from the same split, in the same order".to_owned())
            }
            DataError::LabelRange { label, classes, .. } => Some(match classes {
                Some(k) if *label >= 0 => format!(
                    "class labels count from 0, so a model with {k} outputs takes labels 0 to {}; give the model \
                     at least {} classes, or check that these are the right labels",
                    k.saturating_sub(1),
                    label.saturating_add(1)
                ),
                _ => "class labels are class indices counting from 0; remap the labels so the first class is 0"
                    .to_owned(),
            }),
            DataError::NotFinite { .. } => {
                Some("replace or drop the samples with NaN or infinite values before training".to_owned())
            }
            DataError::NpyShape { hint, .. } => hint.clone(),
            DataError::NpyKind { hint, .. } => Some((*hint).to_owned()),
            DataError::InputShape { found, expected, model_takes_found, .. } => {
                Some(input_shape_hint(*found, expected, *model_takes_found))
            }
            DataError::TargetKind { .. } => Some(
                "save class labels as integers (`y.astype(np.int64)`), or train with a loss that takes values \
                 (mse, l1 or huber)"
                    .to_owned(),
            ),
            DataError::SplitShape { .. } | DataError::SplitTargets { .. } => {
                Some("the training and test sets must come from the same data set".to_owned())
            }
            DataError::NoDataset { found, .. } => Some(no_dataset_hint(found)),
            DataError::Ambiguous { .. } => {
                Some("move one of them to a directory of its own, or give the files one by one".to_owned())
            }
            DataError::MissingPartner { missing, .. } => {
                Some(format!("add `{missing}`, or remove the file that needs it"))
            }
            DataError::UnpairedTest { missing, .. } => {
                Some(format!("give the test {missing} too, or neither test file"))
            }
            DataError::NotADirectory { .. } => {
                Some("give the directory that holds the data set, or its files one by one".to_owned())
            }
            DataError::Metadata { .. } => Some(
                "the values are written by `cnnc train`: comma-separated decimal floats, one per channel (scale: \
                 one); fix or remove the `cnnc.normalize.*` entries"
                    .to_owned(),
            ),
            DataError::NormalizationChannels { .. } => {
                Some("the normalisation was fitted on other data: fit it again on these images".to_owned())
            }
            DataError::Io { .. } | DataError::Overflow { .. } | DataError::Empty { .. } | DataError::Augment { .. } => {
                None
            }
        }
    }

    /// The same error, knowing whether the model could also be built for the data's size (a
    /// model whose input size comes from `--shape` and that has global pooling, say): the hint
    /// then names `--shape` or the resize alone. Other errors are returned unchanged.
    pub fn with_model_takes_data_shape(self, takes: bool) -> DataError {
        match self {
            DataError::InputShape { name, found, expected, .. } => {
                DataError::InputShape { name, found, expected, model_takes_found: Some(takes) }
            }
            other => other,
        }
    }
}

fn label_problem(label: i64, classes: Option<usize>) -> String {
    match classes {
        _ if label < 0 => "negative".to_owned(),
        Some(k) => format!("out of range: the model has {k} classes (labels 0 to {})", k.saturating_sub(1)),
        None => "out of range".to_owned(),
    }
}

/// Whether samples of this shape are images or flat vectors (a `[N, F]` array is stored as
/// `[F, 1, 1]`), for the words of messages.
fn is_flat(shape: [usize; 3]) -> bool {
    shape[1] == 1 && shape[2] == 1 && shape[0] > 1
}

fn samples_word(shape: [usize; 3]) -> &'static str {
    if is_flat(shape) { "samples" } else { "images" }
}

/// `1x28x28` for an image, `64 values` for a flat vector.
pub(crate) fn shape_text(shape: &[usize; 3]) -> String {
    if is_flat(*shape) { format!("vectors of {} values", shape[0]) } else { dims_text(shape) }
}

fn dims_text(dims: &[usize]) -> String {
    dims.iter().map(usize::to_string).collect::<Vec<_>>().join("x")
}

fn input_text(input: &[usize]) -> String {
    match input {
        [f] => format!("vectors of {f} values"),
        dims => dims_text(dims),
    }
}

fn values(shape: [usize; 3]) -> Option<usize> {
    shape[0].checked_mul(shape[1])?.checked_mul(shape[2])
}

/// What to change so the data fits: the model's `--shape`, or the data.
fn input_shape_hint(found: [usize; 3], expected: &[usize], model_takes_found: Option<bool>) -> String {
    let shape_flag = match expected {
        [_] => values(found).map_or_else(|| dims_text(&found), |n| n.to_string()),
        _ => dims_text(&found),
    };
    let resize = match expected {
        [f] if is_flat(found) => format!("give samples of {f} values"),
        [f] => format!("the model takes {f} values per sample and the images hold {}", shape_flag),
        [c, h, w] if is_flat(found) => {
            format!("save the samples as images, batch first: `x.reshape(-1, {c}, {h}, {w})` makes [N, {c}, {h}, {w}]")
        }
        [c, h, w] => {
            let mut parts = Vec::new();
            if found[0] != *c {
                parts.push(format!("convert the images from {} channels to {c}", found[0]));
            }
            if (found[1], found[2]) != (*h, *w) {
                parts.push(format!("resize the images from {}x{} to {h}x{w}", found[1], found[2]));
            }
            parts.join(" and ")
        }
        other => format!("the model's input {other:?} is neither [C, H, W] nor [F]"),
    };
    match model_takes_found {
        Some(true) => format!("the model can also be built for this data: give it `--shape {shape_flag}`"),
        Some(false) => resize,
        None => format!(
            "if the model's input size comes from `--shape`, give it `--shape {shape_flag}`; otherwise {resize}"
        ),
    }
}

fn listing(found: &[String], more: usize) -> String {
    match (found, more) {
        ([], 0) => "nothing".to_owned(),
        (names, 0) => names.iter().map(|n| format!("`{n}`")).collect::<Vec<_>>().join(", "),
        (names, more) => {
            format!("{} and {more} more", names.iter().map(|n| format!("`{n}`")).collect::<Vec<_>>().join(", "))
        }
    }
}

fn no_dataset_hint(found: &[String]) -> String {
    if found.iter().any(|n| n.ends_with("-ubyte.gz") || n.ends_with(".idx3-ubyte.gz")) {
        return "MNIST's files are gzip-compressed as downloaded: decompress them first (`gunzip *.gz`)".to_owned();
    }
    if found.iter().any(|n| n == "cifar-10-batches-py" || n == "data_batch_1") {
        return "that is CIFAR-10's Python version; cnnc reads the binary version (cifar-10-binary.tar.gz, \
                which unpacks to cifar-10-batches-bin/)"
            .to_owned();
    }
    if found.iter().any(|n| n.ends_with(".tar.gz") || n.ends_with(".tgz")) {
        return "unpack the archive first (`tar xzf ...`), then give the directory it makes".to_owned();
    }
    if found.iter().any(|n| n.ends_with(".npy")) {
        return "name the .npy files train_x.npy and train_y.npy (and test_x.npy and test_y.npy), or give them \
                one by one"
            .to_owned();
    }
    "give the directory that holds the data set, or its files one by one".to_owned()
}
