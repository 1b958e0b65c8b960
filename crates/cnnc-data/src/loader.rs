//! The batches of one epoch, made on a background thread a few batches ahead of training.
//!
//! Batch `k` holds the samples at positions `k * batch ..` of the epoch's order
//! ([`epoch_order`], from `(seed, epoch)`), each augmented by its own
//! `(seed, epoch, sample)` choices and then normalised. A batch is therefore a function of the
//! options and `k` alone: the thread only decides when it is made, never what it holds, and
//! `skip_batches = k` starts an epoch at exactly its batch `k`.
//!
//! The thread sends into a bounded channel, so at most [`PREFETCH`] batches wait in memory.
//! Dropping the [`Loader`] closes the channel, which wakes the thread if it is waiting to send;
//! the drop then joins it, so no thread outlives its loader.

use crate::augment::{Augment, Placement};
use crate::normalize::Normalization;
use crate::stream::epoch_order;
use crate::{Dataset, Targets, values_per_target};
use cnnc_runtime::Tensor;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, sync_channel};
use std::thread::JoinHandle;

/// How many batches the background thread makes ahead of the one being trained on.
pub const PREFETCH: usize = 3;

/// What one epoch's batches are.
#[derive(Clone, Debug, PartialEq)]
pub struct LoaderOptions {
    /// Samples per batch (at least 1; 0 is taken as 1).
    pub batch: usize,
    pub seed: u64,
    pub epoch: u64,
    pub shuffle: bool,
    pub augment: Augment,
    pub normalization: Option<Normalization>,
    /// Leave out the last batch when it is smaller than `batch`.
    pub drop_last: bool,
    /// Start at this batch of the epoch (resuming mid-epoch): the batches are exactly those of
    /// the full epoch from here on.
    pub skip_batches: usize,
}

impl Default for LoaderOptions {
    /// Batches of 32 in a shuffled order (seed 0, epoch 0), no augmentation or normalisation,
    /// the last batch kept.
    fn default() -> LoaderOptions {
        LoaderOptions {
            batch: 32,
            seed: 0,
            epoch: 0,
            shuffle: true,
            augment: Augment::default(),
            normalization: None,
            drop_last: false,
            skip_batches: 0,
        }
    }
}

/// One batch of an epoch.
#[derive(Clone, Debug, PartialEq)]
pub struct Batch {
    /// The batch's number in the epoch (counting the skipped ones).
    pub index: usize,
    /// `[B, C, H, W]`, augmented and normalised.
    pub x: Tensor,
    /// `[B]`, the class indices as floats, for class labels; `[B, ...]` for value targets.
    pub target: Tensor,
    /// The class indices, for class labels.
    pub labels: Option<Vec<i64>>,
    /// Which samples of the data set the batch holds, in order.
    pub samples: Vec<usize>,
}

/// The number of batches of an epoch of `len` samples.
pub fn batch_count(len: usize, batch: usize, drop_last: bool) -> usize {
    let batch = batch.max(1);
    if drop_last { len / batch } else { len.div_ceil(batch) }
}

/// What makes the batches: shared by the background thread and, if no thread can be started,
/// the loader itself.
struct Producer {
    data: Arc<Dataset>,
    opts: LoaderOptions,
    order: Vec<usize>,
}

impl Producer {
    fn batch(&self, index: usize) -> Batch {
        let data = &*self.data;
        let batch = self.opts.batch.max(1);
        let start = index.saturating_mul(batch).min(self.order.len());
        let end = start.saturating_add(batch).min(self.order.len());
        let samples = self.order[start..end].to_vec();
        let shape = data.shape;
        let per = shape.iter().product::<usize>();
        let mut x = Vec::with_capacity(samples.len() * per);
        for &s in &samples {
            let image = data.image(s);
            let offset = x.len();
            x.resize(offset + per, 0.0);
            let out = &mut x[offset..];
            let placement = if self.opts.augment.is_off() {
                Placement::IDENTITY
            } else {
                self.opts.augment.placement(self.opts.seed, self.opts.epoch, s)
            };
            placement.apply(image, shape, out);
            if let Some(norm) = &self.opts.normalization {
                norm.apply(out, shape);
            }
        }
        let mut x_shape = vec![samples.len()];
        x_shape.extend_from_slice(&shape);
        let (target, labels) = match &data.targets {
            Targets::Classes { labels, .. } => {
                let picked: Vec<i64> = samples.iter().map(|&s| labels[s]).collect();
                // Class indices are small, so they are exact as f32.
                let values = picked.iter().map(|&l| l as f32).collect();
                (Tensor { shape: vec![samples.len()], data: values }, Some(picked))
            }
            Targets::Values { shape: target_shape, data: values } => {
                let per_target = values_per_target(target_shape);
                let mut t = Vec::with_capacity(samples.len() * per_target);
                for &s in &samples {
                    t.extend_from_slice(&values[s * per_target..(s + 1) * per_target]);
                }
                let mut t_shape = vec![samples.len()];
                t_shape.extend_from_slice(target_shape);
                (Tensor { shape: t_shape, data: t }, None)
            }
        };
        Batch { index, x: Tensor { shape: x_shape, data: x }, target, labels, samples }
    }
}

/// How the batches arrive.
enum Feed {
    /// From the background thread; both are `None` only while the loader is dropped.
    Thread { batches: Option<Receiver<Batch>>, thread: Option<JoinHandle<()>> },
    /// Made on the caller's thread, when no thread could be started.
    Inline { producer: Arc<Producer>, next: usize },
}

/// One epoch's batches, in order, made by a background thread into a bounded channel.
pub struct Loader {
    feed: Feed,
    /// The batch numbers still to come.
    next: usize,
    end: usize,
}

impl Loader {
    /// Starts making the batches of `opts.epoch`, from batch `opts.skip_batches` on.
    pub fn new(data: Arc<Dataset>, opts: LoaderOptions) -> Loader {
        let len = data.len();
        let end = batch_count(len, opts.batch, opts.drop_last);
        let start = opts.skip_batches.min(end);
        let order = epoch_order(len, opts.seed, opts.epoch, opts.shuffle);
        let producer = Arc::new(Producer { data, opts, order });
        let (sender, receiver) = sync_channel(PREFETCH);
        let worker = Arc::clone(&producer);
        let spawned = std::thread::Builder::new().name("cnnc-data-loader".to_owned()).spawn(move || {
            for index in start..end {
                // The receiver is gone: the loader was dropped mid-epoch.
                if sender.send(worker.batch(index)).is_err() {
                    return;
                }
            }
        });
        let feed = match spawned {
            Ok(thread) => Feed::Thread { batches: Some(receiver), thread: Some(thread) },
            Err(_) => Feed::Inline { producer, next: start },
        };
        Loader { feed, next: start, end }
    }

    /// The number of batches in the whole epoch (skipped ones included).
    pub fn batches_in_epoch(&self) -> usize {
        self.end
    }
}

impl Iterator for Loader {
    type Item = Batch;

    fn next(&mut self) -> Option<Batch> {
        if self.next >= self.end {
            return None;
        }
        let batch = match &mut self.feed {
            Feed::Inline { producer, next } => {
                let batch = producer.batch(*next);
                *next += 1;
                Some(batch)
            }
            Feed::Thread { batches, thread } => match batches.as_ref().map(Receiver::recv) {
                Some(Ok(batch)) => Some(batch),
                _ => {
                    // The thread ended before sending every batch: it can only have panicked,
                    // and a bug's panic must not pass for a short epoch.
                    if let Some(Err(payload)) = thread.take().map(JoinHandle::join) {
                        std::panic::resume_unwind(payload);
                    }
                    None
                }
            },
        };
        self.next += 1;
        batch
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let left = self.end.saturating_sub(self.next);
        (left, Some(left))
    }
}

impl ExactSizeIterator for Loader {}

impl Drop for Loader {
    fn drop(&mut self) {
        if let Feed::Thread { batches, thread } = &mut self.feed {
            // Closing the channel first makes a thread blocked in `send` return at once.
            drop(batches.take());
            if let Some(thread) = thread.take() {
                // A panic was already reported by `next`, or is of no use to anyone now.
                let _ = thread.join();
            }
        }
    }
}

impl std::fmt::Debug for Loader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Loader").field("next", &self.next).field("end", &self.end).finish_non_exhaustive()
    }
}
