//! The loader: its threaded batches equal a sequential reference built from the public pieces,
//! bit for bit; resuming, the last batch, dropping mid-epoch, and the padding's values.

use crate::*;
use cnnc_data::{
    Augment, Batch, Dataset, Loader, LoaderOptions, Normalization, Placement, Source, Targets, batch_count,
    epoch_order, open,
};
use std::sync::Arc;

fn digits() -> Arc<Dataset> {
    Arc::new(open(&Source::Digits, LIMIT).unwrap().train)
}

/// The epoch's batches, computed here one sample at a time on this thread.
fn reference(data: &Dataset, opts: &LoaderOptions) -> Vec<Batch> {
    let order = epoch_order(data.len(), opts.seed, opts.epoch, opts.shuffle);
    let per: usize = data.shape.iter().product();
    let mut batches = Vec::new();
    for (index, samples) in order.chunks(opts.batch).enumerate() {
        if opts.drop_last && samples.len() < opts.batch {
            break;
        }
        let mut x = Vec::new();
        for &s in samples {
            let mut image = vec![0.0; per];
            let placement = if opts.augment.is_off() {
                Placement::IDENTITY
            } else {
                opts.augment.placement(opts.seed, opts.epoch, s)
            };
            placement.apply(data.image(s), data.shape, &mut image);
            if let Some(n) = &opts.normalization {
                n.apply(&mut image, data.shape);
            }
            x.extend(image);
        }
        let Targets::Classes { labels, .. } = &data.targets else { panic!("class labels") };
        let picked: Vec<i64> = samples.iter().map(|&s| labels[s]).collect();
        batches.push(Batch {
            index,
            x: cnnc_runtime::Tensor { shape: [vec![samples.len()], data.shape.to_vec()].concat(), data: x },
            target: cnnc_runtime::Tensor {
                shape: vec![samples.len()],
                data: picked.iter().map(|&l| l as f32).collect(),
            },
            labels: Some(picked),
            samples: samples.to_vec(),
        });
    }
    batches
}

/// A batch as bits: its number, `x`, `target` and samples.
type BatchBits = (usize, Vec<u32>, Vec<u32>, Vec<usize>);

fn bits(batches: &[Batch]) -> Vec<BatchBits> {
    batches
        .iter()
        .map(|b| {
            let x = b.x.data.iter().map(|v| v.to_bits()).collect();
            let t = b.target.data.iter().map(|v| v.to_bits()).collect();
            (b.index, x, t, b.samples.clone())
        })
        .collect()
}

fn options(batch: usize) -> LoaderOptions {
    LoaderOptions { batch, seed: 11, epoch: 2, ..LoaderOptions::default() }
}

#[test]
fn threaded_batches_equal_the_sequential_reference() {
    let data = digits();
    let normalization = Some(Normalization::fit(&data));
    let cases = [
        options(64),
        LoaderOptions { shuffle: false, ..options(100) },
        LoaderOptions {
            augment: Augment { crop_pad: 2, hflip: true },
            normalization: normalization.clone(),
            ..options(50)
        },
        LoaderOptions { augment: Augment { crop_pad: 1, hflip: false }, drop_last: true, ..options(100) },
        LoaderOptions { normalization, epoch: 0, seed: 0, ..options(1437) },
    ];
    for opts in cases {
        let got: Vec<Batch> = Loader::new(Arc::clone(&data), opts.clone()).collect();
        let want = reference(&data, &opts);
        assert_eq!(got.len(), batch_count(data.len(), opts.batch, opts.drop_last), "{opts:?}");
        assert_eq!(bits(&got), bits(&want), "{opts:?}");
        assert_eq!(got, want);
        // And again: the same options give the same batches, bit for bit.
        let again: Vec<Batch> = Loader::new(Arc::clone(&data), opts.clone()).collect();
        assert_eq!(bits(&again), bits(&got));
    }
}

#[test]
fn skipping_gives_exactly_the_rest_of_the_epoch() {
    let data = digits();
    let opts = LoaderOptions { augment: Augment { crop_pad: 2, hflip: true }, ..options(100) };
    let full: Vec<Batch> = Loader::new(Arc::clone(&data), opts.clone()).collect();
    assert_eq!(full.len(), 15);
    for k in [0, 1, 7, 14, 15, 99] {
        let rest: Vec<Batch> =
            Loader::new(Arc::clone(&data), LoaderOptions { skip_batches: k, ..opts.clone() }).collect();
        assert_eq!(bits(&rest), bits(&full[k.min(15)..]), "skip {k}");
    }
    let loader = Loader::new(Arc::clone(&data), LoaderOptions { skip_batches: 10, ..opts });
    assert_eq!((loader.batches_in_epoch(), loader.len()), (15, 5));
}

#[test]
fn batches_are_at_most_the_batch_size() {
    let data = digits();
    // 1437 = 14 * 100 + 37.
    let sizes: Vec<usize> = Loader::new(Arc::clone(&data), options(100)).map(|b| b.x.shape[0]).collect();
    assert_eq!(sizes, [[100; 14].as_slice(), &[37]].concat());
    let dropped: Vec<usize> = Loader::new(Arc::clone(&data), LoaderOptions { drop_last: true, ..options(100) })
        .map(|b| b.x.shape[0])
        .collect();
    assert_eq!(dropped, [100; 14]);
    let big = Loader::new(Arc::clone(&data), LoaderOptions { drop_last: true, ..options(2000) });
    assert_eq!(big.count(), 0);
    let one: Vec<Batch> = Loader::new(Arc::clone(&data), LoaderOptions { batch: 0, ..options(0) }).take(2).collect();
    assert_eq!(one[1].x.shape, [1, 1, 8, 8], "batch 0 is taken as 1");
    // Every sample once per epoch, in a shuffled order that changes with the epoch.
    let epoch = |e| -> Vec<usize> {
        Loader::new(Arc::clone(&data), LoaderOptions { epoch: e, ..options(64) }).flat_map(|b| b.samples).collect()
    };
    let (a, b) = (epoch(0), epoch(1));
    assert_ne!(a, b);
    let mut sorted = a.clone();
    sorted.sort_unstable();
    assert_eq!(sorted, (0..1437).collect::<Vec<_>>());
    let first = Loader::new(Arc::clone(&data), options(4)).next().unwrap();
    let Targets::Classes { labels, .. } = &data.targets else { panic!() };
    let want: Vec<i64> = first.samples.iter().map(|&s| labels[s]).collect();
    assert_eq!(first.labels.as_ref(), Some(&want));
    assert_eq!(first.target.data, want.iter().map(|&l| l as f32).collect::<Vec<_>>());
    assert_eq!(first.x.data[..64], *data.image(first.samples[0]));
}

#[test]
fn value_targets_are_batched_with_their_shape() {
    let images: Vec<f32> = (0..6).map(|v| v as f32).collect();
    let targets = Targets::Values { shape: vec![2], data: (0..6).map(|v| 10.0 * v as f32).collect() };
    let data = Arc::new(Dataset::new("mem", [2, 1, 1], images, targets).unwrap());
    let batches: Vec<Batch> = Loader::new(data, LoaderOptions { shuffle: false, ..options(2) }).collect();
    assert_eq!(batches.len(), 2);
    assert_eq!(batches[0].x.shape, [2, 2, 1, 1]);
    assert_eq!(batches[0].target.shape, [2, 2]);
    assert_eq!(batches[0].target.data, [0.0, 10.0, 20.0, 30.0]);
    assert_eq!((batches[1].target.shape.as_slice(), batches[1].labels.as_ref()), ([1, 2].as_slice(), None));
}

#[test]
fn dropping_mid_epoch_stops_the_thread() {
    let data = digits();
    // Batches of 1: the thread fills the channel and waits to send the next.
    let mut loader = Loader::new(Arc::clone(&data), options(1));
    assert!(loader.next().is_some());
    std::thread::sleep(std::time::Duration::from_millis(20));
    drop(loader);
    // The thread's producer held the only other reference: it has ended.
    assert_eq!(Arc::strong_count(&data), 1);
    // Dropped before any batch was taken, and after the last.
    drop(Loader::new(Arc::clone(&data), options(1)));
    assert_eq!(Arc::strong_count(&data), 1);
    let mut loader = Loader::new(Arc::clone(&data), options(1000));
    assert_eq!(loader.by_ref().count(), 2);
    assert!(loader.next().is_none());
    drop(loader);
    assert_eq!(Arc::strong_count(&data), 1);
}

#[test]
fn padding_is_raw_zeros_normalised_like_every_pixel() {
    let data = digits();
    let n = Normalization::fit(&data);
    let augment = Augment { crop_pad: 2, hflip: false };
    let opts = LoaderOptions { augment, normalization: Some(n.clone()), shuffle: false, ..options(200) };
    let batch = Loader::new(Arc::clone(&data), opts.clone()).next().unwrap();
    // A sample whose window starts at the top of the padding: its first two rows are padding.
    let (i, _) = batch
        .samples
        .iter()
        .enumerate()
        .find(|&(_, &s)| augment.placement(opts.seed, opts.epoch, s).dy == 0)
        .expect("one in 200 draws dy = 0");
    let image = &batch.x.data[i * 64..(i + 1) * 64];
    let padded = (0.0 * n.scale - n.mean[0]) / n.std[0];
    assert!(padded < -0.5, "black after normalisation, not 0: {padded}");
    assert!(image[..16].iter().all(|&v| v == padded), "{:?}", &image[..16]);
    // An unaugmented pixel of value 255 becomes (1 - mean) / std.
    let plain = Loader::new(Arc::clone(&data), LoaderOptions { augment: Augment::default(), ..opts }).next().unwrap();
    let at = data.images.iter().position(|&v| v == 255.0).unwrap();
    assert_eq!(plain.x.data[at], (255.0 * n.scale - n.mean[0]) / n.std[0]);
}
