//! The built-in digits: 1,797 real 8x8 handwritten digits (1,437 training, 360 test images),
//! embedded in the binary so `Source::Digits` needs no files. Provenance, licence (CC BY 4.0)
//! and attribution are in `data/digits/README.md`.
//!
//! The bytes are MNIST's IDX files, parsed by the same code as files on disk.

use crate::error::DataError;
use crate::idx::Origin;
use crate::read::Budget;
use crate::{Dataset, source};
use std::path::Path;

const TRAIN_IMAGES: &[u8] = include_bytes!("../data/digits/train-images-idx3-ubyte");
const TRAIN_LABELS: &[u8] = include_bytes!("../data/digits/train-labels-idx1-ubyte");
const TEST_IMAGES: &[u8] = include_bytes!("../data/digits/t10k-images-idx3-ubyte");
const TEST_LABELS: &[u8] = include_bytes!("../data/digits/t10k-labels-idx1-ubyte");

/// The training and test splits.
pub(crate) fn open(budget: &mut Budget) -> Result<(Dataset, Dataset), DataError> {
    let split = |name: &str, images: &'static [u8], labels: &'static [u8], files: [&str; 2], budget: &mut Budget| {
        let images_name = Path::new("digits (built in)").join(files[0]);
        let labels_name = Path::new("digits (built in)").join(files[1]);
        source::pair(
            Origin::Embedded { name: &images_name, bytes: images },
            Origin::Embedded { name: &labels_name, bytes: labels },
            name.to_owned(),
            name.to_owned(),
            budget,
        )
    };
    let train = split(
        "digits (train)",
        TRAIN_IMAGES,
        TRAIN_LABELS,
        ["train-images-idx3-ubyte", "train-labels-idx1-ubyte"],
        budget,
    )?;
    let test =
        split("digits (test)", TEST_IMAGES, TEST_LABELS, ["t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"], budget)?;
    Ok((train, test))
}
