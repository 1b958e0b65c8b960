//! Where a data set comes from ([`Source`]) and [`open`]: the built-in digits, a directory
//! whose format is detected from the names of its files, or files given one by one (each
//! `.npy` or IDX, told apart by their first bytes).
//!
//! Detection looks only at names; every file is then read and checked in full (header,
//! length, labels) before `open` returns, so bad data is an error before training starts.

use crate::error::DataError;
use crate::idx::{self, Origin};
use crate::read::{Budget, DataFile};
use crate::{Dataset, Encoding, Split, Targets, cifar, digits, numpy};
use std::path::{Path, PathBuf};

/// Where to read a data set from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    /// The built-in digits (1,437 training and 360 test images of 8x8).
    Digits,
    /// A directory holding MNIST-style IDX files, CIFAR-10 binary batches (there or in
    /// `cifar-10-batches-bin/`) or `.npy` pairs.
    Dir(PathBuf),
    /// Images and targets one by one, each `.npy` or IDX.
    Files { train_x: PathBuf, train_y: PathBuf, test_x: Option<PathBuf>, test_y: Option<PathBuf> },
}

/// Reads a data set, all of it within `limit_bytes` of memory (the decoded images at 4 bytes a
/// value, the labels, and the file being read). Each file's header (or length) is checked
/// before its data is read; the test split must have the training split's image shape and
/// kind of targets. Class-labelled splits share their number of classes (the larger).
pub fn open(source: &Source, limit_bytes: u64) -> Result<Split, DataError> {
    let mut budget = Budget::new(limit_bytes);
    let (train, test) = match source {
        Source::Digits => {
            let (train, test) = digits::open(&mut budget)?;
            (train, Some(test))
        }
        Source::Dir(dir) => open_dir(dir, &mut budget)?,
        Source::Files { train_x, train_y, test_x, test_y } => {
            let train = pair_files(train_x, train_y, &mut budget)?;
            let test = match (test_x, test_y) {
                (Some(x), Some(y)) => Some(pair_files(x, y, &mut budget)?),
                (None, None) => None,
                (Some(x), None) => {
                    return Err(DataError::UnpairedTest { path: x.clone(), given: "images", missing: "targets" });
                }
                (None, Some(y)) => {
                    return Err(DataError::UnpairedTest { path: y.clone(), given: "targets", missing: "images" });
                }
            };
            (train, test)
        }
    };
    finish(train, test)
}

/// Checks that the test split matches the training split and gives both the same classes.
fn finish(mut train: Dataset, mut test: Option<Dataset>) -> Result<Split, DataError> {
    if let Some(test) = &mut test {
        if test.shape != train.shape {
            return Err(DataError::SplitShape {
                train: train.name.clone(),
                test: test.name.clone(),
                train_shape: train.shape,
                test_shape: test.shape,
            });
        }
        match (&mut train.targets, &mut test.targets) {
            (Targets::Classes { classes: a, .. }, Targets::Classes { classes: b, .. }) => {
                let classes = (*a).max(*b);
                *a = classes;
                *b = classes;
            }
            (Targets::Values { shape: a, .. }, Targets::Values { shape: b, .. }) if a == b => {}
            (train_targets, test_targets) => {
                return Err(DataError::SplitTargets {
                    test: PathBuf::from(&test.targets_name),
                    train_kind: train_targets.kind(),
                    test_kind: test_targets.kind(),
                });
            }
        }
    }
    Ok(Split { train, test })
}

/// Images from one file and targets from another (or from the same bytes' companion), which
/// must cover the same samples.
pub(crate) fn pair(
    images: Origin<'_>,
    targets: Origin<'_>,
    name: String,
    targets_name: String,
    budget: &mut Budget,
) -> Result<Dataset, DataError> {
    let (images_path, labels_path) = (origin_path(&images), origin_path(&targets));
    let (shape, count, data, encoding) = match images {
        Origin::File(path) if is_npy(path)? => {
            let x = numpy::read_images(path, budget)?;
            (x.shape, x.count, x.data, x.encoding)
        }
        origin => {
            let x = idx::read_images(origin, budget)?;
            (x.shape, x.count, x.data, Encoding::Uint8)
        }
    };
    let targets = match targets {
        Origin::File(path) if is_npy(path)? => numpy::read_targets(path, budget)?,
        origin => Targets::classes_from_labels(&labels_path, idx::read_labels(origin, budget)?)?,
    };
    if targets.len() != count {
        return Err(DataError::CountMismatch { images_path, labels_path, images: count, labels: targets.len() });
    }
    Ok(Dataset { name, targets_name, shape, images: data, targets, encoding })
}

fn origin_path(origin: &Origin<'_>) -> PathBuf {
    match origin {
        Origin::File(path) => path.to_path_buf(),
        Origin::Embedded { name, .. } => name.to_path_buf(),
    }
}

fn pair_files(x: &Path, y: &Path, budget: &mut Budget) -> Result<Dataset, DataError> {
    pair(Origin::File(x), Origin::File(y), x.display().to_string(), y.display().to_string(), budget)
}

/// Whether a file given one by one is `.npy` (by its extension or its magic string) rather
/// than IDX. Anything else is read as IDX, whose errors say what its magic number should be.
/// Only regular files are sniffed: reading the first bytes of a pipe (`<(zcat ...)`) would
/// consume them, so a pipe not named `.npy` is read as IDX, in one pass. Whether it is one is
/// asked of its metadata, not of an open handle: opening a named pipe twice (once here, once
/// to read it) lets a writer that saw the first reader go finish before the second one opens,
/// which then waits for a writer forever.
fn is_npy(path: &Path) -> Result<bool, DataError> {
    if path.extension().is_some_and(|e| e.eq_ignore_ascii_case("npy")) {
        return Ok(true);
    }
    // A path that cannot be inspected is opened below anyway, for the error that names it.
    if std::fs::metadata(path).is_ok_and(|m| !m.is_file()) {
        return Ok(false);
    }
    let mut file = DataFile::open(path)?;
    if file.len().is_none() {
        return Ok(false);
    }
    Ok(file.prefix(6)?.starts_with(b"\x93NUMPY"))
}

/// A file name with the alternatives it may go by: MNIST's files exist both as
/// `train-images-idx3-ubyte` (as published) and `train-images.idx3-ubyte` (as some mirrors and
/// unpackers write them).
type Names = &'static [&'static str];

const TRAIN_IMAGES: Names = &["train-images-idx3-ubyte", "train-images.idx3-ubyte"];
const TRAIN_LABELS: Names = &["train-labels-idx1-ubyte", "train-labels.idx1-ubyte"];
const TEST_IMAGES: Names = &["t10k-images-idx3-ubyte", "t10k-images.idx3-ubyte"];
const TEST_LABELS: Names = &["t10k-labels-idx1-ubyte", "t10k-labels.idx1-ubyte"];
const CIFAR_SUBDIR: &str = "cifar-10-batches-bin";
const CIFAR_TEST: &str = "test_batch.bin";
const CIFAR_TRAIN_BATCHES: usize = 5;

fn cifar_train(k: usize) -> String {
    format!("data_batch_{k}.bin")
}

/// The first of `names` present in `dir`.
fn find(dir: &Path, names: Names) -> Option<PathBuf> {
    names.iter().map(|n| dir.join(n)).find(|p| p.exists())
}

/// What a directory holds, by the names of its files.
enum Layout {
    Idx { train: FilePair, test: Option<FilePair> },
    Cifar { dir: PathBuf, train: Vec<PathBuf>, test: Option<PathBuf> },
    Npy { train: FilePair, test: Option<FilePair> },
}

impl Layout {
    fn format(&self) -> &'static str {
        match self {
            Layout::Idx { .. } => "MNIST-style IDX files",
            Layout::Cifar { .. } => "CIFAR-10 binary batches",
            Layout::Npy { .. } => ".npy pairs",
        }
    }
}

/// An images file and the targets file that goes with it.
type FilePair = (PathBuf, PathBuf);

/// An images file and its labels, both present, one present (an error), or neither.
fn find_pair(dir: &Path, x: Names, y: Names) -> Result<Option<FilePair>, DataError> {
    match (find(dir, x), find(dir, y)) {
        (Some(x), Some(y)) => Ok(Some((x, y))),
        (None, None) => Ok(None),
        (Some(x), None) => Err(missing(dir, &x, y[0])),
        (None, Some(y)) => Err(missing(dir, &y, x[0])),
    }
}

fn missing(dir: &Path, present: &Path, missing: &str) -> DataError {
    DataError::MissingPartner {
        dir: dir.to_path_buf(),
        present: present.file_name().map_or_else(|| present.display().to_string(), |n| n.to_string_lossy().into()),
        missing: missing.to_owned(),
    }
}

/// A training pair, with an optional test pair; a test pair alone is an error.
fn find_split(
    dir: &Path,
    train: (Names, Names),
    test: (Names, Names),
) -> Result<Option<(FilePair, Option<FilePair>)>, DataError> {
    let test_pair = find_pair(dir, test.0, test.1)?;
    match (find_pair(dir, train.0, train.1)?, test_pair) {
        (Some(train), test) => Ok(Some((train, test))),
        (None, Some((x, _))) => Err(missing(dir, &x, train.0[0])),
        (None, None) => Ok(None),
    }
}

fn find_cifar(dir: &Path) -> Result<Option<Layout>, DataError> {
    let has_batches = |d: &Path| d.join(cifar_train(1)).exists() || d.join(CIFAR_TEST).exists();
    let base = if has_batches(dir) {
        dir.to_path_buf()
    } else if has_batches(&dir.join(CIFAR_SUBDIR)) {
        dir.join(CIFAR_SUBDIR)
    } else {
        return Ok(None);
    };
    let present: Vec<Option<PathBuf>> =
        (1..=CIFAR_TRAIN_BATCHES).map(|k| Some(base.join(cifar_train(k))).filter(|p| p.exists())).collect();
    // The batches in use are 1 to k; a later batch after a missing one is a partial copy.
    let in_use = present.iter().take_while(|p| p.is_some()).count();
    if let Some(later) = present.iter().skip(in_use).flatten().next() {
        return Err(missing(&base, later, &cifar_train(in_use + 1)));
    }
    let test = Some(base.join(CIFAR_TEST)).filter(|p| p.exists());
    if in_use == 0 {
        return match test {
            Some(test) => Err(missing(&base, &test, &cifar_train(1))),
            None => Ok(None),
        };
    }
    Ok(Some(Layout::Cifar { dir: base, train: present.into_iter().flatten().collect(), test }))
}

fn detect(dir: &Path) -> Result<Vec<Layout>, DataError> {
    let mut found = Vec::new();
    if let Some((train, test)) = find_split(dir, (TRAIN_IMAGES, TRAIN_LABELS), (TEST_IMAGES, TEST_LABELS))? {
        found.push(Layout::Idx { train, test });
    }
    if let Some(cifar) = find_cifar(dir)? {
        found.push(cifar);
    }
    if let Some((train, test)) =
        find_split(dir, (&["train_x.npy"], &["train_y.npy"]), (&["test_x.npy"], &["test_y.npy"]))?
    {
        found.push(Layout::Npy { train, test });
    }
    Ok(found)
}

/// How many of a directory's names the "holds no data set" message lists.
const LISTED: usize = 12;
/// How many entries of a directory are looked at for that message (a directory of a million
/// files must not make an error slow).
const SCANNED: usize = 10_000;

fn no_dataset(dir: &Path) -> DataError {
    let io_error = |source| DataError::Io { path: dir.to_path_buf(), source };
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) => return io_error(e),
    };
    let mut names: Vec<String> =
        entries.take(SCANNED).filter_map(Result::ok).map(|e| e.file_name().to_string_lossy().into_owned()).collect();
    names.sort();
    let more = names.len().saturating_sub(LISTED);
    names.truncate(LISTED);
    DataError::NoDataset { dir: dir.to_path_buf(), found: names, more }
}

fn open_dir(dir: &Path, budget: &mut Budget) -> Result<(Dataset, Option<Dataset>), DataError> {
    let meta = std::fs::metadata(dir).map_err(|source| DataError::Io { path: dir.to_path_buf(), source })?;
    if !meta.is_dir() {
        return Err(DataError::NotADirectory { path: dir.to_path_buf() });
    }
    let mut layouts = detect(dir)?;
    if layouts.len() > 1 {
        return Err(DataError::Ambiguous {
            dir: dir.to_path_buf(),
            formats: layouts.iter().map(Layout::format).collect(),
        });
    }
    let Some(layout) = layouts.pop() else { return Err(no_dataset(dir)) };
    match layout {
        Layout::Idx { train, test } | Layout::Npy { train, test } => {
            let train = pair_files(&train.0, &train.1, budget)?;
            let test = test.map(|(x, y)| pair_files(&x, &y, budget)).transpose()?;
            Ok((train, test))
        }
        Layout::Cifar { dir, train, test } => {
            let name = match train.as_slice() {
                [one] => one.display().to_string(),
                [..] => dir.join(format!("data_batch_{{1..{}}}.bin", train.len())).display().to_string(),
            };
            let train = cifar_split(name, &train, budget)?;
            let test = test.map(|t| cifar_split(t.display().to_string(), &[t], budget)).transpose()?;
            Ok((train, test))
        }
    }
}

fn cifar_split(name: String, files: &[PathBuf], budget: &mut Budget) -> Result<Dataset, DataError> {
    let batches = cifar::read_batches(files, budget)?;
    Ok(Dataset {
        targets_name: name.clone(),
        name,
        shape: cifar::SHAPE,
        images: batches.images,
        targets: Targets::Classes { labels: batches.labels, classes: cifar::CLASSES },
        encoding: Encoding::Uint8,
    })
}
