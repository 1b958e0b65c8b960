//! The data of `cnnc train`: a data set from `cnnc-data` as the training loop's [`Batches`],
//! each epoch's batches made by the data crate's loader thread (shuffled from the seed and the
//! epoch, augmented, normalised), the test set in order without augmentation.

use crate::train::{Batch, Batches};
use cnnc_data::{Augment, Dataset, Loader, LoaderOptions, Normalization};
use std::sync::Arc;

/// A training split and its test split, batched for training.
pub struct DataBatches {
    /// The model's input shape: batches come as `[B] ++` this (a flat model's `[F]` from the
    /// data set's `[F, 1, 1]` samples).
    pub input: Vec<usize>,
    pub train: Arc<Dataset>,
    pub test: Option<Arc<Dataset>>,
    pub batch: usize,
    pub seed: u64,
    pub augment: Augment,
    pub normalization: Option<Normalization>,
}

impl DataBatches {
    fn loader(&self, data: &Arc<Dataset>, epoch: usize, skip: usize, training: bool) -> Loader {
        Loader::new(
            Arc::clone(data),
            LoaderOptions {
                batch: self.batch,
                seed: self.seed,
                epoch: epoch as u64,
                shuffle: training,
                augment: if training { self.augment } else { Augment::default() },
                normalization: self.normalization.clone(),
                drop_last: false,
                skip_batches: skip,
            },
        )
    }
}

impl DataBatches {
    fn batch_of(&self, b: cnnc_data::Batch) -> Batch {
        let mut x = b.x;
        let mut shape = vec![x.shape[0]];
        shape.extend_from_slice(&self.input);
        // The same values in the same order: only the shape's split of them changes.
        if shape.iter().product::<usize>() == x.data.len() {
            x.shape = shape;
        }
        Batch { x, target: b.target, labels: b.labels }
    }
}

impl Batches for DataBatches {
    fn train(&self, epoch: usize, skip: usize) -> Box<dyn Iterator<Item = Batch> + '_> {
        Box::new(self.loader(&self.train, epoch, skip, true).map(|b| self.batch_of(b)))
    }

    fn train_batches(&self) -> usize {
        cnnc_data::batch_count(self.train.len(), self.batch, false)
    }

    fn test(&self) -> Option<Box<dyn Iterator<Item = Batch> + '_>> {
        let test = self.test.as_ref()?;
        Some(Box::new(self.loader(test, 0, 0, false).map(|b| self.batch_of(b))))
    }
}
