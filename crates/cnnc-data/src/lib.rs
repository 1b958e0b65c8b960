//! cnnc's training data: data sets read from IDX (MNIST), CIFAR-10 binary and `.npy` files or
//! built in (the digits), checked against the model before training starts; normalisation,
//! augmentation, and a loader that makes an epoch's batches on a background thread.
//!
//! A [`Dataset`] is one split, all in memory, with its values as stored (0..255 for uint8
//! sources). [`open`] reads a [`Source`] within a memory limit; every file is checked from its
//! header (or length) before its data is read, and anything wrong is a [`DataError`] naming
//! the file. A [`Loader`] turns a data set into the batches of one epoch: which samples go
//! into which batch depends only on `(seed, epoch)`, each sample's augmentation only on
//! `(seed, epoch, sample)`, so the batches are the same every time, whatever the threads do.
//!
//! This crate knows nothing of graphs, the syntax or any back end: it hands out tensors.

mod augment;
mod cifar;
mod digits;
mod error;
mod idx;
mod loader;
mod normalize;
mod numpy;
mod read;
mod source;
mod stream;

pub use augment::{Augment, Placement};
pub use error::DataError;
pub use loader::{Batch, Loader, LoaderOptions, PREFETCH, batch_count};
pub use normalize::{MEAN_KEY, Normalization, SCALE_KEY, STD_KEY};
pub use source::{Source, open};
pub use stream::epoch_order;

use std::path::{Path, PathBuf};

/// How a data set's values were stored, which decides how they are scaled
/// ([`Normalization::fit`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Encoding {
    /// Unsigned bytes (IDX, CIFAR-10, uint8 `.npy`): pixel values 0..=255.
    Uint8,
    /// Floats (float32 or float64 `.npy`), as the user prepared them.
    Float,
}

/// What a model learns to predict for each sample.
#[derive(Clone, Debug, PartialEq)]
pub enum Targets {
    /// One class index per sample, each in `0..classes`.
    Classes { labels: Vec<i64>, classes: usize },
    /// A tensor of `shape` per sample (the model's output shape), samples one after another.
    Values { shape: Vec<usize>, data: Vec<f32> },
}

impl Targets {
    /// The number of samples the targets cover.
    pub fn len(&self) -> usize {
        match self {
            Targets::Classes { labels, .. } => labels.len(),
            Targets::Values { shape, data } => data.len() / values_per_target(shape).max(1),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Class labels read from `path`: every label must be non-negative; the number of classes
    /// is one more than the largest label.
    pub(crate) fn classes_from_labels(path: &Path, labels: Vec<i64>) -> Result<Targets, DataError> {
        if let Some((sample, &label)) = labels.iter().enumerate().find(|(_, l)| **l < 0) {
            return Err(DataError::LabelRange { path: path.to_path_buf(), sample, label, classes: None });
        }
        let largest = labels.iter().copied().max().unwrap_or(-1);
        let classes = usize::try_from(largest.saturating_add(1)).unwrap_or(usize::MAX);
        Ok(Targets::Classes { labels, classes })
    }

    /// "class labels" or "float targets of [..]", for messages.
    fn kind(&self) -> String {
        match self {
            Targets::Classes { .. } => "class labels".to_owned(),
            Targets::Values { shape, .. } => format!("float targets of shape {shape:?} per sample"),
        }
    }
}

fn values_per_target(shape: &[usize]) -> usize {
    shape.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d)).unwrap_or(0)
}

/// One split of a data set, all in memory.
#[derive(Clone, Debug, PartialEq)]
pub struct Dataset {
    /// Where the images came from: "digits (train)", a file or a directory.
    pub name: String,
    /// Where the targets came from (the labels file; the same as `name` when one file holds
    /// both), for messages about labels.
    pub targets_name: String,
    /// `[C, H, W]` of one image; flat samples (`[N, F]` arrays) are `[F, 1, 1]`.
    pub shape: [usize; 3],
    /// `N * C * H * W` values as stored: 0..255 for uint8 sources, as-is for floats.
    pub images: Vec<f32>,
    pub targets: Targets,
    pub encoding: Encoding,
}

impl Dataset {
    /// A data set from values in memory (float-encoded; set `encoding` for pixel bytes),
    /// checked: the targets cover exactly the images, there is at least one, class labels
    /// are non-negative and values finite.
    pub fn new(
        name: impl Into<String>,
        shape: [usize; 3],
        images: Vec<f32>,
        targets: Targets,
    ) -> Result<Dataset, DataError> {
        let name = name.into();
        let path = PathBuf::from(&name);
        let per = sample_values(shape);
        if per == 0 || images.is_empty() {
            return Err(DataError::Empty { path, what: "images" });
        }
        let count = images.len() / per;
        let covered = match &targets {
            Targets::Classes { labels, .. } => labels.len() == count,
            Targets::Values { shape, data } => Some(data.len()) == count.checked_mul(values_per_target(shape)),
        };
        if !images.len().is_multiple_of(per) || !covered {
            return Err(DataError::CountMismatch {
                images_path: path.clone(),
                labels_path: path,
                images: count,
                labels: targets.len(),
            });
        }
        numpy::check_finite(&path, &images, per)?;
        let targets = match targets {
            Targets::Classes { labels, classes } => match Targets::classes_from_labels(&path, labels)? {
                Targets::Classes { labels, classes: found } => Targets::Classes { labels, classes: classes.max(found) },
                values => values,
            },
            Targets::Values { shape, data } => {
                numpy::check_finite(&path, &data, values_per_target(&shape))?;
                Targets::Values { shape, data }
            }
        };
        Ok(Dataset { targets_name: name.clone(), name, shape, images, targets, encoding: Encoding::Float })
    }

    /// The number of samples (images that have a target).
    pub fn len(&self) -> usize {
        match sample_values(self.shape) {
            0 => 0,
            per => (self.images.len() / per).min(self.targets.len()),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The values of image `i`, `C * H * W` of them. Panics if `i >= self.len()`, as slice
    /// indexing does.
    pub fn image(&self, i: usize) -> &[f32] {
        let per = sample_values(self.shape);
        &self.images[i * per..(i + 1) * per]
    }

    /// The number of classes of class-labelled data.
    pub fn classes(&self) -> Option<usize> {
        match self.targets {
            Targets::Classes { classes, .. } => Some(classes),
            Targets::Values { .. } => None,
        }
    }

    /// Checks that the model can train on this data: its input (`[C, H, W]`, or `[F]` for a
    /// flat model, which takes each sample's `C * H * W` values in row-major order) fits the
    /// images, and, for a classifier (`classes` is its number of outputs), every target is a
    /// class label below `classes`. With `classes` `None` the targets are not checked (a loss
    /// on values checks their shape against the model's output).
    ///
    /// A batch's `x` is `[B, C, H, W]`; for a flat model reshape it to `[B, F]` (same values).
    pub fn check_model(&self, input: &[usize], classes: Option<usize>) -> Result<(), DataError> {
        let [c, h, w] = self.shape;
        let fits = match *input {
            [f] => Some(f) == c.checked_mul(h).and_then(|n| n.checked_mul(w)),
            [mc, mh, mw] => [mc, mh, mw] == self.shape,
            _ => false,
        };
        if !fits {
            return Err(DataError::InputShape {
                name: self.name.clone(),
                found: self.shape,
                expected: input.to_vec(),
                model_takes_found: None,
            });
        }
        let Some(classes) = classes else { return Ok(()) };
        match &self.targets {
            Targets::Classes { labels, .. } => {
                let out_of_range =
                    labels.iter().enumerate().find(|(_, l)| usize::try_from(**l).ok().is_none_or(|l| l >= classes));
                match out_of_range {
                    Some((sample, &label)) => Err(DataError::LabelRange {
                        path: PathBuf::from(&self.targets_name),
                        sample,
                        label,
                        classes: Some(classes),
                    }),
                    None => Ok(()),
                }
            }
            Targets::Values { .. } => Err(DataError::TargetKind { path: PathBuf::from(&self.targets_name), classes }),
        }
    }
}

/// The values of one sample, 0 if the product overflows (such a data set cannot exist).
fn sample_values(shape: [usize; 3]) -> usize {
    shape.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d)).unwrap_or(0)
}

/// A data set's training split and, if it has one, its test split.
#[derive(Clone, Debug, PartialEq)]
pub struct Split {
    pub train: Dataset,
    pub test: Option<Dataset>,
}

impl Split {
    /// [`Dataset::check_model`] on both splits.
    pub fn check_model(&self, input: &[usize], classes: Option<usize>) -> Result<(), DataError> {
        self.train.check_model(input, classes)?;
        self.test.as_ref().map_or(Ok(()), |test| test.check_model(input, classes))
    }
}
