//! Bad data is an error naming the file, before training starts: one test per kind of bad
//! input, asserting the message (and the hint where there is one).

use crate::*;
use cnnc_data::{Augment, DataError, Dataset, Source, Targets, open};
use std::path::Path;

/// Opens images `x` and labels `y` (bytes) given one by one, expecting an error.
fn pair_error(x: &[u8], y: &[u8]) -> (DataError, tempfile::TempDir) {
    pair_error_within(x, y, LIMIT)
}

fn pair_error_within(x: &[u8], y: &[u8], limit: u64) -> (DataError, tempfile::TempDir) {
    let dir = dir_with(&[("images", x), ("labels", y)]);
    let source = Source::Files {
        train_x: dir.path().join("images"),
        train_y: dir.path().join("labels"),
        test_x: None,
        test_y: None,
    };
    (open(&source, limit).expect_err("bad data must be refused"), dir)
}

fn dir_error(files: &[(&str, &[u8])]) -> (DataError, tempfile::TempDir) {
    let dir = dir_with(files);
    (open(&Source::Dir(dir.path().to_path_buf()), LIMIT).expect_err("bad data must be refused"), dir)
}

fn shown(dir: &Path, name: &str) -> String {
    dir.join(name).display().to_string()
}

#[test]
fn wrong_magic_numbers_say_what_was_expected() {
    let labels = idx_labels(&[0]);
    let (e, dir) = pair_error(b"hello world, not an image", &labels);
    assert_eq!(
        e.to_string(),
        format!(
            "`{}` is not an IDX images file: it starts with 0x68656c6c, not the magic number 0x00000803",
            shown(dir.path(), "images")
        )
    );
    assert_eq!(e.hint(), None);
    // Compressed, as downloaded.
    let (e, _dir) = pair_error(&[0x1f, 0x8b, 8, 0, 0, 0, 0, 0], &labels);
    assert!(e.hint().unwrap().contains("gunzip"), "{e}");
    // Images and labels swapped.
    let (e, dir) = pair_error(&labels, &idx_images(1, 2, 2, |_| 0));
    assert!(e.to_string().starts_with(&format!("`{}` is not an IDX images file", shown(dir.path(), "images"))), "{e}");
    assert!(e.hint().unwrap().contains("are the images and labels swapped?"), "{e:?}");
    // Labels that are images.
    let (e, dir) = pair_error(&idx_images(1, 2, 2, |_| 0), &idx_images(1, 2, 2, |_| 0));
    assert!(
        e.to_string().starts_with(&format!(
            "`{}` is not an IDX labels file: it starts with 0x00000803, not the magic number 0x00000801",
            shown(dir.path(), "labels")
        )),
        "{e}"
    );
    // An IDX file of floats.
    let mut floats = idx_images(1, 1, 1, |_| 0);
    floats[2] = 0x0D;
    let (e, dir) = pair_error(&floats, &labels);
    assert_eq!(
        e.to_string(),
        format!(
            "`{}` is an IDX file of 32-bit floats (type byte 0x0d); cnnc reads IDX files of unsigned bytes (type \
             0x08), as MNIST's are",
            shown(dir.path(), "images")
        )
    );
}

#[test]
fn truncated_files_are_refused_from_their_length() {
    // The header announces 10 images of 4x4 (176 bytes with the header); 3 are there.
    let mut short = idx_images(10, 4, 4, |_| 1);
    short.truncate(16 + 3 * 16);
    let (e, dir) = pair_error(&short, &idx_labels(&[0; 10]));
    assert_eq!(
        e.to_string(),
        format!(
            "`{}` is truncated: it needs 176 bytes for the header and 10 images of 4x4, but has 64",
            shown(dir.path(), "images")
        )
    );
    assert!(e.hint().unwrap().contains("download or copy it again"));
    // A header that lies by terabytes over a small file is the same error, read from the length
    // alone (the limit is far below what the header claims).
    let mut lying = idx_images(1, 4, 4, |_| 1);
    lying[4..8].copy_from_slice(&4_000_000_000u32.to_be_bytes());
    lying[8..16].copy_from_slice(&[0, 0, 0x10, 0, 0, 0, 0x10, 0]);
    let (e, _dir) = pair_error(&lying, &idx_labels(&[0]));
    assert!(matches!(e, DataError::Truncated { needed, found: 32, .. } if needed == 16 + 4_000_000_000 * 4096 * 4096));
    // A header cut short, and an empty file.
    let (e, dir) = pair_error(&idx_images(1, 1, 1, |_| 0)[..10], &idx_labels(&[0]));
    assert_eq!(
        e.to_string(),
        format!("`{}` is truncated: it needs 16 bytes for the IDX header, but has 10", shown(dir.path(), "images"))
    );
    let (e, _dir) = pair_error(&[], &idx_labels(&[0]));
    assert!(e.to_string().ends_with("it needs 4 bytes for the IDX header, but has 0"), "{e}");
    let mut labels = idx_labels(&[1, 2, 3]);
    labels.pop();
    let (e, dir) = pair_error(&idx_images(3, 1, 1, |_| 0), &labels);
    assert_eq!(
        e.to_string(),
        format!(
            "`{}` is truncated: it needs 11 bytes for the header and 3 labels, but has 10",
            shown(dir.path(), "labels")
        )
    );
}

#[test]
fn trailing_bytes_are_refused() {
    let mut long = idx_images(2, 2, 2, |_| 0);
    long.push(0);
    let (e, dir) = pair_error(&long, &idx_labels(&[0, 0]));
    assert_eq!(
        e.to_string(),
        format!(
            "`{}` has bytes after its data: it needs 24 bytes for the header and 2 images of 2x2, but has 25",
            shown(dir.path(), "images")
        )
    );
    assert!(e.hint().is_some());
}

#[test]
fn label_and_image_counts_must_agree() {
    let (e, dir) = pair_error(&idx_images(2, 1, 1, |_| 0), &idx_labels(&[0, 1, 2]));
    assert_eq!(
        e.to_string(),
        format!(
            "`{}` holds 3 labels but `{}` holds 2 images; there must be one label per image",
            shown(dir.path(), "labels"),
            shown(dir.path(), "images")
        )
    );
    assert!(e.hint().unwrap().contains("same split, in the same order"));
    // The same for .npy pairs, float targets included.
    let x = npy("<f4", &[2, 1], &f32_bytes(&[0.0, 1.0]));
    let y = npy("<f4", &[3], &f32_bytes(&[0.0, 1.0, 2.0]));
    let (e, _dir) = pair_error(&x, &y);
    assert!(matches!(e, DataError::CountMismatch { images: 2, labels: 3, .. }), "{e}");
}

#[test]
fn labels_out_of_range_or_negative() {
    let split = open(&Source::Digits, LIMIT).unwrap();
    let e = split.train.check_model(&[1, 8, 8], Some(5)).unwrap_err();
    let DataError::LabelRange { sample, label, .. } = &e else { panic!("{e:?}") };
    assert!(*label >= 5);
    assert_eq!(
        e.to_string(),
        format!(
            "label {label} of sample {sample} in `digits (train)` is out of range: the model has 5 classes (labels 0 to 4)"
        )
    );
    assert!(e.hint().unwrap().contains("a model with 5 outputs takes labels 0 to 4"), "{:?}", e.hint());
    // From files, the labels file is named.
    let dir = dir_with(&[("x", &idx_images(2, 1, 1, |_| 0)), ("y", &idx_labels(&[1, 7]))]);
    let source =
        Source::Files { train_x: dir.path().join("x"), train_y: dir.path().join("y"), test_x: None, test_y: None };
    let e = open(&source, LIMIT).unwrap().check_model(&[1, 1, 1], Some(3)).unwrap_err();
    assert_eq!(
        e.to_string(),
        format!(
            "label 7 of sample 1 in `{}` is out of range: the model has 3 classes (labels 0 to 2)",
            shown(dir.path(), "y")
        )
    );
    // Negative labels are refused when read.
    let (e, dir) = pair_error(&npy("<f4", &[3, 1], &f32_bytes(&[0.0; 3])), &npy("<i8", &[3], &i64_bytes(&[0, 1, -1])));
    assert_eq!(e.to_string(), format!("label -1 of sample 2 in `{}` is negative", shown(dir.path(), "labels")));
    assert!(e.hint().unwrap().contains("counting from 0"));
    // CIFAR-10's label byte must be a class 0..9.
    let mut records = cifar_records(&[1, 2]);
    records[3073] = 10;
    let (e, dir) = dir_error(&[("data_batch_1.bin", &records)]);
    assert_eq!(
        e.to_string(),
        format!(
            "label 10 of sample 1 in `{}` is out of range: the model has 10 classes (labels 0 to 9)",
            shown(dir.path(), "data_batch_1.bin")
        )
    );
}

#[test]
fn float_targets_are_not_class_labels() {
    let dir = dir_with(&[
        ("x.npy", &npy("<f4", &[2, 1], &f32_bytes(&[0.0, 1.0]))),
        ("y.npy", &npy("<f4", &[2], &f32_bytes(&[0.0, 1.0]))),
    ]);
    let source = Source::Files {
        train_x: dir.path().join("x.npy"),
        train_y: dir.path().join("y.npy"),
        test_x: None,
        test_y: None,
    };
    let e = open(&source, LIMIT).unwrap().check_model(&[1], Some(2)).unwrap_err();
    assert_eq!(
        e.to_string(),
        format!(
            "`{}` holds floating-point targets, but the model's loss takes class labels (0 to 1)",
            shown(dir.path(), "y.npy")
        )
    );
    assert!(e.hint().unwrap().contains("y.astype(np.int64)"));
}

#[test]
fn zero_images_or_empty_images() {
    let (e, dir) = pair_error(&idx_images(0, 28, 28, |_| 0), &idx_labels(&[]));
    assert_eq!(e.to_string(), format!("`{}` holds no images", shown(dir.path(), "images")));
    let (e, _dir) = pair_error(&idx_images(2, 0, 28, |_| 0), &idx_labels(&[0, 0]));
    assert!(e.to_string().ends_with("holds no pixels (its images have a zero dimension)"), "{e}");
    let (e, dir) = pair_error(&idx_images(1, 1, 1, |_| 0), &idx_labels(&[]));
    assert_eq!(e.to_string(), format!("`{}` holds no labels", shown(dir.path(), "labels")));
    let (e, dir) = pair_error(&npy("<f4", &[0, 1, 2, 2], &[]), &npy("<i8", &[0], &[]));
    assert_eq!(e.to_string(), format!("`{}` holds no samples", shown(dir.path(), "images")));
    let (e, _dir) = dir_error(&[("data_batch_1.bin", &[])]);
    assert!(e.to_string().ends_with("holds no records"), "{e}");
}

#[test]
fn images_of_another_size_than_the_model_takes() {
    let split = open(&Source::Digits, LIMIT).unwrap();
    let e = split.train.check_model(&[1, 28, 28], Some(10)).unwrap_err();
    assert_eq!(e.to_string(), "images in `digits (train)` are 1x8x8 but the model takes 1x28x28");
    assert_eq!(
        e.hint().unwrap(),
        "if the model's input size comes from `--shape`, give it `--shape 1x8x8`; otherwise resize the images from \
         8x8 to 28x28"
    );
    // Once the caller knows whether the model can be built for 1x8x8, the hint says one thing.
    let e = split.train.check_model(&[1, 28, 28], Some(10)).unwrap_err();
    assert_eq!(
        e.with_model_takes_data_shape(true).hint().unwrap(),
        "the model can also be built for this data: give it `--shape 1x8x8`"
    );
    let e = split.train.check_model(&[3, 28, 28], Some(10)).unwrap_err();
    assert_eq!(
        e.with_model_takes_data_shape(false).hint().unwrap(),
        "convert the images from 1 channels to 3 and resize the images from 8x8 to 28x28"
    );
    // Flat models take C * H * W values.
    let e = split.test.as_ref().unwrap().check_model(&[784], Some(10)).unwrap_err();
    assert_eq!(e.to_string(), "images in `digits (test)` are 1x8x8 but the model takes vectors of 784 values");
    assert!(e.hint().unwrap().contains("`--shape 64`"), "{:?}", e.hint());
    // Flat samples for an image model: the layout is the user's to give.
    let flat =
        Dataset::new("x.npy", [64, 1, 1], vec![0.0; 128], Targets::Classes { labels: vec![0, 1], classes: 2 }).unwrap();
    let e = flat.check_model(&[1, 8, 8], Some(2)).unwrap_err();
    assert_eq!(e.to_string(), "samples in `x.npy` are vectors of 64 values but the model takes 1x8x8");
    let hint = e.with_model_takes_data_shape(false).hint().unwrap();
    assert!(hint.contains("x.reshape(-1, 1, 8, 8)"), "{hint}");
    let e = flat.check_model(&[2, 2], None).unwrap_err();
    assert!(e.hint().unwrap().contains("neither [C, H, W] nor [F]"), "{:?}", e.hint());
}

#[test]
fn dimension_products_that_overflow() {
    let mut huge = idx_images(1, 1, 1, |_| 0);
    huge.truncate(4);
    for _ in 0..3 {
        huge.extend_from_slice(&u32::MAX.to_be_bytes());
    }
    let (e, dir) = pair_error(&huge, &idx_labels(&[0]));
    assert_eq!(
        e.to_string(),
        format!(
            "`{}` announces the header and 4294967295 images of 4294967295x4294967295, more than this machine can \
             address",
            shown(dir.path(), "images")
        )
    );
}

#[test]
fn files_larger_than_the_memory_limit() {
    // 100 images of 4x4: 1,616 bytes on disk, 6,400 as floats.
    let x = idx_images(100, 4, 4, |_| 0);
    let (e, dir) = pair_error_within(&x, &idx_labels(&[0; 100]), 4000);
    assert_eq!(
        e.to_string(),
        format!(
            "reading `{}` would take the data set to 7.8 KiB of memory, more than the 3.9 KiB cnnc may use",
            shown(dir.path(), "images")
        )
    );
    assert!(e.hint().unwrap().contains("--memory-limit"));
    // The images fit (116 bytes read, 400 kept); the labels after them (108 read, 800 kept) do
    // not.
    let (e, _dir) = pair_error_within(&idx_images(100, 1, 1, |_| 0), &idx_labels(&[0; 100]), 1000);
    assert!(matches!(&e, DataError::TooLarge { path, .. } if path.ends_with("labels")), "{e}");
    // A .npy file is refused by the runtime's reader, from its header.
    let big = npy("<f4", &[100, 16], &f32_bytes(&[0.0; 1600]));
    let (e, _dir) = pair_error_within(&big, &npy("<i8", &[100], &i64_bytes(&[0; 100])), 2000);
    assert!(e.to_string().contains("more than the 2.0 KiB of memory cnnc may use"), "{e}");
    // CIFAR batches are counted together, before any is read.
    let (e, dir) = {
        let dir =
            dir_with(&[("data_batch_1.bin", &cifar_records(&[0; 3])), ("data_batch_2.bin", &cifar_records(&[0; 3]))]);
        (open(&Source::Dir(dir.path().to_path_buf()), 60_000).unwrap_err(), dir)
    };
    assert!(matches!(&e, DataError::TooLarge { path, .. } if path == &dir.path().join("data_batch_2.bin")), "{e}");
}

#[cfg(unix)]
#[test]
fn special_files_are_errors_not_endless_reads() {
    // /dev/zero starts with four zero bytes: no IDX magic number.
    let source = Source::Files { train_x: "/dev/zero".into(), train_y: "/dev/zero".into(), test_x: None, test_y: None };
    let e = open(&source, LIMIT).unwrap_err();
    assert!(e.to_string().starts_with("`/dev/zero` is not an IDX images file: it starts with 0x00000000"), "{e}");
    // A pipe that goes on after the data its header announced is read one byte further.
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("fifo");
    let made = std::process::Command::new("mkfifo").arg(&fifo).status();
    if !made.is_ok_and(|s| s.success()) {
        return;
    }
    let labels = dir.path().join("labels");
    std::fs::write(&labels, idx_labels(&[0])).unwrap();
    let writer = {
        let fifo = fifo.clone();
        std::thread::spawn(move || {
            use std::io::Write;
            // Opened once: a pipe is not sniffed (that would consume its first bytes).
            let mut out = std::fs::OpenOptions::new().write(true).open(&fifo).unwrap();
            let _ = out.write_all(&idx_images(1, 2, 2, |_| 0));
            while out.write_all(&[0u8; 4096]).is_ok() {}
        })
    };
    let source = Source::Files { train_x: fifo.clone(), train_y: labels, test_x: None, test_y: None };
    let e = open(&source, LIMIT).unwrap_err();
    assert!(matches!(e, DataError::TrailingBytes { found: None, needed: 20, .. }), "{e:?}");
    assert!(e.to_string().ends_with("but has more (and does not end there)"), "{e}");
    writer.join().unwrap();
}

#[test]
fn cifar_files_must_be_whole_records() {
    let mut records = cifar_records(&[0]);
    records.push(1);
    let (e, dir) = dir_error(&[("data_batch_1.bin", &records)]);
    assert_eq!(
        e.to_string(),
        format!(
            "`{}` is 3074 bytes, not a whole number of CIFAR-10 records (3073 bytes each: a label byte, then a \
             3x32x32 image)",
            shown(dir.path(), "data_batch_1.bin")
        )
    );
}

#[test]
fn directories_without_a_data_set_say_what_they_expected() {
    let (e, dir) = dir_error(&[("notes.txt", b"hi"), ("train-images-idx3-ubyte.gz", b"")]);
    let message = e.to_string();
    assert!(
        message.starts_with(&format!(
            "`{}` holds no data set cnnc reads: it expected MNIST-style IDX files",
            dir.path().display()
        )),
        "{message}"
    );
    assert!(message.contains("CIFAR-10 binary batches (data_batch_1.bin to data_batch_5.bin and test_batch.bin"));
    assert!(message.contains(".npy pairs (train_x.npy and train_y.npy"));
    assert!(message.ends_with("it holds `notes.txt`, `train-images-idx3-ubyte.gz`"), "{message}");
    assert!(e.hint().unwrap().contains("gunzip"));
    let (e, _dir) = dir_error(&[("cifar-10-batches-py/data_batch_1", b"")]);
    assert!(e.hint().unwrap().contains("CIFAR-10's Python version"), "{:?}", e.hint());
    let (e, _dir) = dir_error(&[]);
    assert!(e.to_string().ends_with("it holds nothing"), "{e}");
    let names: Vec<String> = (0..20).map(|i| format!("f{i:02}")).collect();
    let files: Vec<(&str, &[u8])> = names.iter().map(|n| (n.as_str(), &b""[..])).collect();
    let (e, _dir) = dir_error(&files);
    assert!(e.to_string().ends_with("`f11` and 8 more"), "{e}");
    // Not a directory, or not there at all.
    let dir = dir_with(&[("file", b"")]);
    let e = open(&Source::Dir(dir.path().join("file")), LIMIT).unwrap_err();
    assert_eq!(e.to_string(), format!("`{}` is not a directory", shown(dir.path(), "file")));
    let e = open(&Source::Dir(dir.path().join("absent")), LIMIT).unwrap_err();
    assert!(e.to_string().starts_with(&format!("cannot read `{}`: ", shown(dir.path(), "absent"))), "{e}");
}

#[test]
fn half_pairs_and_ambiguous_directories() {
    let images = idx_images(1, 1, 1, |_| 0);
    let (e, dir) = dir_error(&[("train-images-idx3-ubyte", &images)]);
    assert_eq!(
        e.to_string(),
        format!(
            "`{}` holds `train-images-idx3-ubyte` but not `train-labels-idx1-ubyte`, which goes with it",
            dir.path().display()
        )
    );
    let (e, _dir) = dir_error(&[("t10k-images-idx3-ubyte", &images), ("t10k-labels-idx1-ubyte", &idx_labels(&[0]))]);
    assert!(
        e.to_string().ends_with("holds `t10k-images-idx3-ubyte` but not `train-images-idx3-ubyte`, which goes with it"),
        "{e}"
    );
    let (e, _dir) =
        dir_error(&[("data_batch_1.bin", &cifar_records(&[0])), ("data_batch_3.bin", &cifar_records(&[0]))]);
    assert!(e.to_string().ends_with("holds `data_batch_3.bin` but not `data_batch_2.bin`, which goes with it"), "{e}");
    let (e, _dir) = dir_error(&[("test_x.npy", b""), ("test_y.npy", b""), ("train_x.npy", b"")]);
    assert!(e.to_string().ends_with("holds `train_x.npy` but not `train_y.npy`, which goes with it"), "{e}");
    let (e, dir) = dir_error(&[
        ("train-images-idx3-ubyte", &images),
        ("train-labels-idx1-ubyte", &idx_labels(&[0])),
        ("train_x.npy", b""),
        ("train_y.npy", b""),
    ]);
    assert_eq!(
        e.to_string(),
        format!("`{}` holds more than one data set: MNIST-style IDX files and .npy pairs", dir.path().display())
    );
    // Files one by one: a test file without its partner.
    let dir = dir_with(&[("x", &images), ("y", &idx_labels(&[0]))]);
    let p = |n: &str| dir.path().join(n);
    let source = Source::Files { train_x: p("x"), train_y: p("y"), test_x: Some(p("x")), test_y: None };
    let e = open(&source, LIMIT).unwrap_err();
    assert_eq!(
        e.to_string(),
        format!("`{}` was given as the test images without test targets", shown(dir.path(), "x"))
    );
}

#[test]
fn npy_arrays_of_the_wrong_shape_or_kind() {
    let y = npy("<i8", &[2], &i64_bytes(&[0, 1]));
    let (e, dir) = pair_error(&npy("|u1", &[2, 28, 28], &[0; 2 * 784]), &y);
    assert_eq!(
        e.to_string(),
        format!(
            "`{}` has shape [2, 28, 28]; images must be [N, C, H, W] (or [N, F] for flat samples)",
            shown(dir.path(), "images")
        )
    );
    assert_eq!(e.hint().unwrap(), "add the channel axis: `x[:, None]` makes [2, 1, 28, 28]");
    let (e, _dir) = pair_error(&npy("<f4", &[2], &f32_bytes(&[0.0, 1.0])), &y);
    assert!(matches!(e, DataError::NpyShape { .. }), "{e}");
    let (e, dir) = pair_error(&npy("<i8", &[2, 1], &i64_bytes(&[0, 1])), &y);
    assert_eq!(
        e.to_string(),
        format!("`{}` holds integer values; images must be float32, float64 or uint8", shown(dir.path(), "images"))
    );
    assert!(e.hint().unwrap().contains("x.astype(np.float32)"));
    let x = npy("<f4", &[2, 1], &f32_bytes(&[0.0, 1.0]));
    let (e, _dir) = pair_error(&x, &npy("<i8", &[2, 1], &i64_bytes(&[0, 1])));
    assert_eq!(e.hint().unwrap(), "flatten them: `y.reshape(-1)` makes [2]");
    let (e, _dir) = pair_error(&x, &npy("<i8", &[2, 3], &i64_bytes(&[0; 6])));
    assert!(e.hint().unwrap().contains("y.argmax(axis=1)"), "{:?}", e.hint());
    // The runtime's own errors name the file too.
    let (e, dir) = pair_error(&npy("<f2", &[2, 1], &[0; 4]), &y);
    assert!(
        e.to_string()
            .starts_with(&format!("cannot read `{}`: its dtype '<f2' is not supported", shown(dir.path(), "images"))),
        "{e}"
    );
}

#[test]
fn non_finite_values_are_refused() {
    let y = npy("<i8", &[2], &i64_bytes(&[0, 1]));
    let (e, dir) = pair_error(&npy("<f4", &[2, 3], &f32_bytes(&[0.0, 1.0, 2.0, 3.0, f32::NAN, 5.0])), &y);
    assert_eq!(
        e.to_string(),
        format!("value 1 of sample 1 in `{}` is NaN; data must be finite", shown(dir.path(), "images"))
    );
    let x = npy("<f4", &[2, 1], &f32_bytes(&[0.0, 1.0]));
    let (e, dir) = pair_error(&x, &npy("<f4", &[2], &f32_bytes(&[f32::INFINITY, 0.0])));
    assert_eq!(
        e.to_string(),
        format!("value 0 of sample 0 in `{}` is inf; data must be finite", shown(dir.path(), "labels"))
    );
}

#[test]
fn test_splits_must_match_the_training_split() {
    let dir = dir_with(&[
        ("train-images-idx3-ubyte", &idx_images(1, 2, 2, |_| 0)),
        ("train-labels-idx1-ubyte", &idx_labels(&[0])),
        ("t10k-images-idx3-ubyte", &idx_images(1, 3, 3, |_| 0)),
        ("t10k-labels-idx1-ubyte", &idx_labels(&[0])),
    ]);
    let e = open(&Source::Dir(dir.path().to_path_buf()), LIMIT).unwrap_err();
    assert_eq!(
        e.to_string(),
        format!(
            "the test images in `{}` are 1x3x3 but the training images in `{}` are 1x2x2",
            shown(dir.path(), "t10k-images-idx3-ubyte"),
            shown(dir.path(), "train-images-idx3-ubyte")
        )
    );
    let dir = dir_with(&[
        ("train_x.npy", &npy("<f4", &[1, 1], &f32_bytes(&[0.0]))),
        ("train_y.npy", &npy("<i8", &[1], &i64_bytes(&[0]))),
        ("test_x.npy", &npy("<f4", &[1, 1], &f32_bytes(&[0.0]))),
        ("test_y.npy", &npy("<f4", &[1], &f32_bytes(&[0.0]))),
    ]);
    let e = open(&Source::Dir(dir.path().to_path_buf()), LIMIT).unwrap_err();
    assert_eq!(
        e.to_string(),
        format!(
            "the test targets in `{}` are float targets of shape [] per sample, but the training targets are class labels",
            shown(dir.path(), "test_y.npy")
        )
    );
}

#[test]
fn datasets_built_in_memory_are_checked() {
    let classes = |labels: Vec<i64>| Targets::Classes { labels, classes: 2 };
    let e = Dataset::new("mem", [1, 2, 2], vec![0.0; 8], classes(vec![0])).unwrap_err();
    assert_eq!(e.to_string(), "`mem` holds 1 labels but `mem` holds 2 images; there must be one label per image");
    let e = Dataset::new("mem", [1, 2, 2], vec![0.0; 7], classes(vec![0, 1])).unwrap_err();
    assert!(matches!(e, DataError::CountMismatch { .. }), "{e}");
    let e = Dataset::new("mem", [1, 2, 2], vec![], classes(vec![])).unwrap_err();
    assert_eq!(e.to_string(), "`mem` holds no images");
    let e = Dataset::new("mem", [1, 1, 1], vec![0.0], classes(vec![-3])).unwrap_err();
    assert_eq!(e.to_string(), "label -3 of sample 0 in `mem` is negative");
    let e = Dataset::new("mem", [1, 1, 1], vec![0.0], Targets::Values { shape: vec![2], data: vec![1.0] }).unwrap_err();
    assert!(matches!(e, DataError::CountMismatch { .. }), "{e}");
    let d = Dataset::new("mem", [1, 1, 1], vec![0.0, 1.0], classes(vec![0, 5])).unwrap();
    assert_eq!(d.classes(), Some(6), "the labels raise the number of classes");
}

#[test]
fn augmentations_that_make_no_sense_for_the_data() {
    let digits = open(&Source::Digits, LIMIT).unwrap().train;
    Augment { crop_pad: 8, hflip: true }.check(&digits).unwrap();
    let e = Augment { crop_pad: 9, hflip: false }.check(&digits).unwrap_err();
    assert_eq!(
        e.to_string(),
        "cannot augment the samples of `digits (train)`: a crop padding of 9 is more than its 8x8 images: at most 8"
    );
    let flat =
        Dataset::new("x.npy", [3, 1, 1], vec![0.0; 3], Targets::Classes { labels: vec![0], classes: 1 }).unwrap();
    let e = Augment { crop_pad: 0, hflip: true }.check(&flat).unwrap_err();
    assert_eq!(
        e.to_string(),
        "cannot augment the samples of `x.npy`: its samples are vectors of 3 values, not images: crops and flips need \
         images"
    );
    Augment::default().check(&flat).unwrap();
}
