//! Embeds ResNet-18 from `examples/resnet18.cnn` with `cnn!(file = ...)` (the crate rebuilds
//! when the file changes), draws its weights as `cnnc init --seed 1` would, and classifies a
//! random 224x224 image: the five most likely of its 1,000 classes (untrained weights, so the
//! classes mean nothing; the point is the model compiled into the program).
//!
//! `cargo run --release -p cnnc-model --example resnet18`

cnnc_model::cnn!(file = "../../examples/resnet18.cnn");

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let model = resnet18::Model::from_seed(1)?;
    let image = random_image(resnet18::model::INPUT_0_LEN, 42);
    let mut scores = vec![0.0f32; resnet18::model::OUTPUT_0_LEN];
    model.forward(&image, 1, &mut scores)?;
    let start = std::time::Instant::now();
    model.forward(&image, 1, &mut scores)?;
    let elapsed = start.elapsed();
    let probabilities = softmax(&scores);
    let mut ranked: Vec<usize> = (0..probabilities.len()).collect();
    ranked.sort_by(|&a, &b| probabilities[b].total_cmp(&probabilities[a]));
    println!(
        "ResNet-18, input {:?}, {} classes; forward pass {:.1} ms (batch 1, after a warm-up run)",
        resnet18::model::INPUT_0_SHAPE,
        scores.len(),
        elapsed.as_secs_f64() * 1e3
    );
    for (rank, &class) in ranked.iter().take(5).enumerate() {
        println!("  {}. class {class:>4}  p = {:.4}  (score {:.3})", rank + 1, probabilities[class], scores[class]);
    }
    Ok(())
}

/// Uniform values in [0, 1) from a SplitMix64 stream: a stand-in for a photograph.
fn random_image(len: usize, seed: u64) -> Vec<f32> {
    let mut state = seed;
    (0..len)
        .map(|_| {
            state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            ((z ^ (z >> 31)) >> 40) as f32 / (1u64 << 24) as f32
        })
        .collect()
}

fn softmax(scores: &[f32]) -> Vec<f32> {
    let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let exps: Vec<f32> = scores.iter().map(|&s| (s - max).exp()).collect();
    let sum: f32 = exps.iter().sum();
    exps.iter().map(|e| e / sum).collect()
}
