//! Every format read right: the built-in digits, IDX, CIFAR-10 binary and `.npy` pairs, by
//! directory and file by file.

use crate::*;
use cnnc_data::{Encoding, Source, Targets, open};

fn labels(targets: &Targets) -> &[i64] {
    match targets {
        Targets::Classes { labels, .. } => labels,
        Targets::Values { .. } => panic!("class labels expected"),
    }
}

#[test]
fn the_built_in_digits_need_no_files() {
    let split = open(&Source::Digits, LIMIT).unwrap();
    let (train, test) = (&split.train, split.test.as_ref().unwrap());
    assert_eq!((train.name.as_str(), test.name.as_str()), ("digits (train)", "digits (test)"));
    assert_eq!((train.len(), test.len()), (1437, 360));
    assert_eq!((train.shape, test.shape), ([1, 8, 8], [1, 8, 8]));
    assert_eq!((train.classes(), test.classes()), (Some(10), Some(10)));
    assert_eq!(train.encoding, Encoding::Uint8);
    assert_eq!(train.images.len(), 1437 * 64);
    // The first bytes of the files, read with xxd: image 0 starts 00 00 00 30 df 8f, the test
    // labels 06 06 06 02 05 06 06 02.
    assert_eq!(&train.image(0)[..6], [0., 0., 0., 48., 223., 143.]);
    assert_eq!(&labels(&test.targets)[..8], [6, 6, 6, 2, 5, 6, 6, 2]);
    assert!(train.images.iter().all(|&v| (0.0..=255.0).contains(&v) && v.fract() == 0.0));
    assert_eq!(train.images.iter().copied().fold(0.0, f32::max), 255.0);
    for class in 0..10 {
        let count = labels(&train.targets).iter().filter(|&&l| l == class).count();
        assert!((120..170).contains(&count), "class {class}: {count} of 1437");
    }
    // The same bytes read from disk as an IDX directory give the same data.
    let from_disk = open(&Source::Dir(digits_dir()), LIMIT).unwrap();
    assert_eq!(from_disk.train.images, train.images);
    assert_eq!(from_disk.train.targets, train.targets);
    assert_eq!(from_disk.test.unwrap().targets, test.targets);
    assert!(from_disk.train.name.ends_with("train-images-idx3-ubyte"), "{}", from_disk.train.name);
    assert!(from_disk.train.targets_name.ends_with("train-labels-idx1-ubyte"));
    split.check_model(&[1, 8, 8], Some(10)).unwrap();
    split.check_model(&[64], Some(10)).unwrap();
    split.check_model(&[1, 8, 8], None).unwrap();
}

#[test]
fn idx_directories_under_either_name() {
    let images = idx_images(3, 2, 4, |k| k as u8);
    let labels3 = idx_labels(&[4, 0, 2]);
    for (x, y) in
        [("train-images-idx3-ubyte", "train-labels-idx1-ubyte"), ("train-images.idx3-ubyte", "train-labels.idx1-ubyte")]
    {
        let dir = dir_with(&[(x, &images), (y, &labels3)]);
        let split = open(&Source::Dir(dir.path().to_path_buf()), LIMIT).unwrap();
        assert!(split.test.is_none());
        let train = split.train;
        assert_eq!((train.shape, train.len()), ([1, 2, 4], 3));
        assert_eq!(train.image(2), [16., 17., 18., 19., 20., 21., 22., 23.]);
        assert_eq!(train.targets, Targets::Classes { labels: vec![4, 0, 2], classes: 5 });
    }
    // With a test split, both share the larger number of classes.
    let dir = dir_with(&[
        ("train-images-idx3-ubyte", &images),
        ("train-labels-idx1-ubyte", &labels3),
        ("t10k-images.idx3-ubyte", &idx_images(1, 2, 4, |_| 9)),
        ("t10k-labels.idx1-ubyte", &idx_labels(&[7])),
    ]);
    let split = open(&Source::Dir(dir.path().to_path_buf()), LIMIT).unwrap();
    let test = split.test.unwrap();
    assert_eq!(test.image(0), [9.; 8]);
    assert_eq!(split.train.classes(), Some(8));
    assert_eq!(test.targets, Targets::Classes { labels: vec![7], classes: 8 });
}

#[test]
fn cifar_batches_there_or_in_their_directory() {
    let batch1 = cifar_records(&[3, 9]);
    let batch2 = cifar_records(&[0]);
    let test = cifar_records(&[5, 1, 1]);
    for sub in ["", "cifar-10-batches-bin/"] {
        let files = [
            (format!("{sub}data_batch_1.bin"), &batch1),
            (format!("{sub}data_batch_2.bin"), &batch2),
            (format!("{sub}test_batch.bin"), &test),
        ];
        let files: Vec<(&str, &[u8])> = files.iter().map(|(n, b)| (n.as_str(), b.as_slice())).collect();
        let dir = dir_with(&files);
        let split = open(&Source::Dir(dir.path().to_path_buf()), LIMIT).unwrap();
        let train = &split.train;
        assert_eq!((train.shape, train.len(), train.encoding), ([3, 32, 32], 3, Encoding::Uint8));
        assert_eq!(train.targets, Targets::Classes { labels: vec![3, 9, 0], classes: 10 });
        assert!(train.name.ends_with("data_batch_{1..2}.bin"), "{}", train.name);
        // Channel-major as stored: pixel k of record r is (r * 7 + k) % 251; the third image
        // is record 0 of the second batch.
        let image = train.image(1);
        assert_eq!((image[0], image[1024], image[3071]), (7., ((7 + 1024) % 251) as f32, ((7 + 3071) % 251) as f32));
        assert_eq!(train.image(2)[5], 5.);
        let test = split.test.unwrap();
        assert_eq!(test.targets, Targets::Classes { labels: vec![5, 1, 1], classes: 10 });
        split.train.check_model(&[3, 32, 32], Some(10)).unwrap();
    }
}

#[test]
fn npy_pairs_of_every_dtype() {
    let x = npy("<f4", &[2, 1, 2, 2], &f32_bytes(&[0.5, -1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0]));
    let y = npy("<i8", &[2], &i64_bytes(&[1, 0]));
    let tx =
        npy("<f8", &[1, 1, 2, 2], &[1.5f64, 2.5, 3.5, 4.5].iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<_>>());
    let ty = npy("<i4", &[1], &3i32.to_le_bytes());
    let dir = dir_with(&[("train_x.npy", &x), ("train_y.npy", &y), ("test_x.npy", &tx), ("test_y.npy", &ty)]);
    let split = open(&Source::Dir(dir.path().to_path_buf()), LIMIT).unwrap();
    assert_eq!((split.train.shape, split.train.encoding), ([1, 2, 2], Encoding::Float));
    assert_eq!(split.train.image(0), [0.5, -1.0, 2.0, 3.0]);
    let test = split.test.unwrap();
    assert_eq!(test.image(0), [1.5, 2.5, 3.5, 4.5]);
    assert_eq!(test.targets, Targets::Classes { labels: vec![3], classes: 4 });
    assert_eq!(split.train.classes(), Some(4));

    // uint8 pixels and labels, flat samples, float targets.
    let dir = dir_with(&[
        ("a.npy", &npy("|u1", &[2, 3], &[0, 128, 255, 1, 2, 3])),
        ("b.npy", &npy("|u1", &[2], &[2, 0])),
        ("c.npy", &npy("<f4", &[2, 2], &f32_bytes(&[0.25, 0.5, 0.75, 1.0]))),
    ]);
    let files = |x: &str, y: &str| Source::Files {
        train_x: dir.path().join(x),
        train_y: dir.path().join(y),
        test_x: None,
        test_y: None,
    };
    let split = open(&files("a.npy", "b.npy"), LIMIT).unwrap();
    let train = split.train;
    assert_eq!((train.shape, train.encoding), ([3, 1, 1], Encoding::Uint8));
    assert_eq!(train.image(0), [0., 128., 255.]);
    assert_eq!(train.targets, Targets::Classes { labels: vec![2, 0], classes: 3 });
    train.check_model(&[3], Some(3)).unwrap();
    let split = open(&files("a.npy", "c.npy"), LIMIT).unwrap();
    assert_eq!(split.train.targets, Targets::Values { shape: vec![2], data: vec![0.25, 0.5, 0.75, 1.0] });
    assert_eq!(split.train.targets_name, dir.path().join("c.npy").display().to_string());
    split.train.check_model(&[3], None).unwrap();
}

#[test]
fn files_one_by_one_in_either_format() {
    // IDX images with .npy labels, and .npy images with IDX labels, whatever their names.
    let dir = dir_with(&[
        ("images", &idx_images(2, 1, 1, |k| 10 + k as u8)),
        ("labels.npy", &npy("<i8", &[2], &i64_bytes(&[1, 1]))),
        ("x", &npy("<f4", &[2, 1], &f32_bytes(&[3.0, 4.0]))),
        ("y", &idx_labels(&[0, 1])),
    ]);
    let p = |n: &str| dir.path().join(n);
    let source =
        Source::Files { train_x: p("images"), train_y: p("labels.npy"), test_x: Some(p("x")), test_y: Some(p("y")) };
    let split = open(&source, LIMIT).unwrap();
    assert_eq!(split.train.images, [10.0, 11.0]);
    assert_eq!(split.train.targets, Targets::Classes { labels: vec![1, 1], classes: 2 });
    let test = split.test.unwrap();
    assert_eq!(test.images, [3.0, 4.0]);
    assert_eq!(test.encoding, Encoding::Float);
    assert_eq!(test.name, p("x").display().to_string());
}
