//! The modules `cnn!` expands to against the reference interpreter: the digits network read
//! from `examples/digits.cnn` with options (another input size and class count), run forward
//! on the same weights and inputs at batch 1 and 3, within rtol 1e-4; and the same model
//! written inline gives the same numbers, bit for bit (one front end, one generator).

use cnnc_runtime::{Rng, Tensor, TensorMap};

const SOURCE: &str = include_str!("../../../examples/digits.cnn");
const SHAPE: [usize; 3] = [1, 12, 12];
const CLASSES: usize = 7;

mod from_file {
    cnnc_model::cnn!(file = "../../examples/digits.cnn", shape = [1, 12, 12], set(classes = 7));
}

mod inline {
    cnnc_model::cnn! {
        #![options(shape = [1, 12, 12], set(classes = 7))]
        /// `examples/digits.cnn`, as written there.
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
}

fn graph() -> cnnc_ir::Graph {
    let (ast, errors) = cnnc_syntax::parse(SOURCE);
    assert!(errors.is_empty(), "{errors:?}");
    let options = cnnc_lower::Options {
        input_shape: Some(SHAPE.to_vec()),
        overrides: vec![("classes".into(), CLASSES.to_string())],
        ..Default::default()
    };
    cnnc_lower::lower(&ast, &options).expect("lowers").graph
}

/// Seeded weights with batch-norm statistics and scales away from their defaults, so that
/// folding them into the convolutions is exercised.
fn weights(g: &cnnc_ir::Graph) -> TensorMap {
    let mut w = cnnc_runtime::init_params(g, 3);
    for (name, t) in w.iter_mut() {
        let mut rng = Rng::for_name(17, name);
        if name.ends_with("running_var") || name.starts_with("bn") && name.ends_with(".weight") {
            t.data.iter_mut().for_each(|x| *x = 0.5 + rng.next_f64() as f32);
        } else if name.ends_with("running_mean") || name.ends_with(".bias") {
            t.data.iter_mut().for_each(|x| *x = 0.1 * rng.normal() as f32);
        }
    }
    w
}

fn images(batch: usize) -> Tensor {
    let mut rng = Rng::seed_from_u64(batch as u64);
    let shape = [vec![batch], SHAPE.to_vec()].concat();
    Tensor { data: (0..shape.iter().product()).map(|_| rng.normal() as f32).collect(), shape }
}

#[test]
fn expanded_modules_agree_with_the_interpreter() {
    let g = graph();
    let w = weights(&g);
    let named: Vec<(&str, &[f32])> = w.iter().map(|(k, t)| (k.as_str(), t.data.as_slice())).collect();
    let file_model = from_file::digits::Model::from_tensors(&named).expect("the file model loads the weights");
    let inline_model = inline::digits::Model::from_tensors(&named).expect("the inline model loads the weights");
    assert_eq!(from_file::digits::model::INPUT_0_SHAPE, SHAPE, "shape = [...] reached the model");
    assert_eq!(from_file::digits::model::OUTPUT_0_LEN, CLASSES, "set(classes = ...) reached the model");
    for batch in [1, 3] {
        let x = images(batch);
        let run = cnnc_interp::run(&g, &mut w.clone(), std::slice::from_ref(&x), &cnnc_interp::Options::new())
            .expect("the interpreter runs");
        let outputs: Vec<Tensor> = run.outputs().into_iter().flatten().collect();
        let want: Vec<f32> = outputs.into_iter().flat_map(|t| t.data).collect();
        let mut got = vec![f32::NAN; batch * CLASSES];
        file_model.forward(&x.data, batch, &mut got).expect("forward");
        let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
        let error = got.iter().zip(&want).fold(0f32, |m, (a, b)| m.max((a - b).abs())) / scale;
        assert!(error <= 1e-4, "batch {batch}: relative error {error:e}: {got:?} against {want:?}");
        let mut inline_out = vec![f32::NAN; batch * CLASSES];
        inline_model.forward(&x.data, batch, &mut inline_out).expect("forward");
        assert_eq!(inline_out, got, "batch {batch}: the inline and the file model differ");
    }
}
