//! Declares the digits network with `cnn!`, trains it on the built-in digits (8x8 images of
//! handwritten digits, 1,437 for training and 360 for testing) with the generated `Trainer`,
//! and prints the test accuracy of the generated `Model` loaded from the trained weights.
//!
//! `cargo run --release -p cnnc-model --example digits`

use cnnc_data::{Normalization, Source, Targets};

cnnc_model::cnn! {
    #![options(train = sgd)]
    /// The network of `examples/digits.cnn`: three convolutions with batch norm, two max
    /// pools, dropout before the classifier.
    model digits(classes = 10) {
        input x: [1, 8, 8]
        x -> conv1: conv(32, k=3, pad=1) -> bn1: bn -> relu
          -> conv2: conv(32, k=3, pad=1) -> bn2: bn -> relu
          -> pool1: maxpool(2)
          -> conv3: conv(64, k=3, pad=1) -> bn3: bn -> relu
          -> pool2: maxpool(2)
          -> flatten
          -> drop: dropout(0.25)
          -> fc: fc(classes)
    }
}

const EPOCHS: usize = 30;
const BATCH: usize = 32;
const LR: f32 = 0.05;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let split = cnnc_data::open(&Source::Digits, 64 << 20)?;
    let test = split.test.ok_or("the built-in digits have a test split")?;
    let norm = Normalization::fit(&split.train);
    let (train_x, train_y) = normalized(&split.train, &norm)?;
    let (test_x, test_y) = normalized(&test, &norm)?;
    let per_image = digits::model::INPUT_0_LEN;
    let start = std::time::Instant::now();
    let mut trainer = digits::Trainer::from_seed(1)?;
    let mut step = 0;
    for epoch in 0..EPOCHS {
        // Cosine decay of the learning rate over the epochs, as `cnnc train` does by default.
        let lr = LR * 0.5 * (1.0 + (std::f32::consts::PI * epoch as f32 / EPOCHS as f32).cos());
        let order = cnnc_data::epoch_order(train_y.len(), 7, epoch as u64, true);
        let (mut loss_sum, mut batches) = (0.0, 0);
        for chunk in order.chunks(BATCH) {
            let images: Vec<f32> =
                chunk.iter().flat_map(|&i| &train_x[i * per_image..(i + 1) * per_image]).copied().collect();
            let labels: Vec<u32> = chunk.iter().map(|&i| train_y[i]).collect();
            step += 1;
            let args = digits::StepArgs { lr, step, seed: 11 };
            loss_sum += trainer.step(&images, &labels, chunk.len(), &args)?;
            batches += 1;
        }
        if epoch % 5 == 4 || epoch + 1 == EPOCHS {
            println!("epoch {:>2}/{EPOCHS}  loss {:.4}", epoch + 1, loss_sum / batches as f32);
        }
    }
    let trained = start.elapsed();
    // The model's tensors (parameters and running statistics) from the trainer, which also
    // holds the optimiser's state.
    let tensors: Vec<(&str, Vec<f32>)> = digits::model::TENSORS
        .iter()
        .map(|t| trainer.tensor(t.name).map(|values| (t.name, values)).ok_or(t.name))
        .collect::<Result<_, _>>()?;
    let tensors: Vec<(&str, &[f32])> = tensors.iter().map(|(name, values)| (*name, values.as_slice())).collect();
    let model = digits::Model::from_tensors(&tensors)?;
    let mut scores = vec![0.0f32; test_y.len() * digits::model::OUTPUT_0_LEN];
    model.forward(&test_x, test_y.len(), &mut scores)?;
    let correct = scores
        .chunks(digits::model::OUTPUT_0_LEN)
        .zip(&test_y)
        .filter(|(s, label)| argmax(s) == **label as usize)
        .count();
    println!(
        "test accuracy {:.2} % ({correct} of {} digits) after {EPOCHS} epochs ({:.1} s of training)",
        100.0 * correct as f64 / test_y.len() as f64,
        test_y.len(),
        trained.as_secs_f64()
    );
    Ok(())
}

/// The split's images normalised as the training set's statistics say, and its labels.
fn normalized(data: &cnnc_data::Dataset, norm: &Normalization) -> Result<(Vec<f32>, Vec<u32>), String> {
    let Targets::Classes { labels, .. } = &data.targets else { return Err("the digits have class labels".into()) };
    let mut images = data.images.clone();
    for image in images.chunks_mut(data.shape.iter().product()) {
        norm.apply(image, data.shape);
    }
    let labels = labels.iter().map(|&l| u32::try_from(l).map_err(|e| e.to_string())).collect::<Result<_, _>>()?;
    Ok((images, labels))
}

fn argmax(scores: &[f32]) -> usize {
    scores.iter().enumerate().fold(0, |best, (i, &s)| if s > scores[best] { i } else { best })
}
