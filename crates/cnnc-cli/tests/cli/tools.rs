//! `cnnc gradcheck` and `cnnc features` through the built binary.

use crate::common::{cnnc, stderr, stdout};
use cnnc_runtime::{Rng, Tensor, load_safetensors, read_npy_f32, write_npy};
use std::path::{Path, PathBuf};

const LENET: &str = "examples/lenet5.cnn";

fn scratch(test: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("cnnc-tools").join(test);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

fn s(path: &Path) -> String {
    path.display().to_string()
}

#[test]
fn gradcheck_passes_lenet_and_flags_batch_norm_on_few_values() {
    let o = cnnc(&["gradcheck", LENET, "--samples", "4"]);
    let out = stdout(&o);
    assert_eq!(o.status.code(), Some(0), "{out}{}", stderr(&o));
    assert!(out.starts_with("gradcheck of `lenet5` on the interp back end: ce loss "), "{out}");
    for tensor in ["input", "c1.weight", "c1.bias", "output.weight"] {
        let row = out.lines().find(|l| l.trim_start().starts_with(&format!("{tensor} "))).expect(tensor);
        assert!(row.ends_with(" ok"), "{row}");
    }
    assert!(out.contains("every gradient agrees with central differences"), "{out}");

    let dir = scratch("gradcheck");
    let model = dir.join("bn.cnn");
    std::fs::write(
        &model,
        "model tiny {\n    input x: [4, 1, 1]\n    x -> c: conv(4, k=1) -> b: bn -> flatten -> f: fc(3)\n}\n",
    )
    .expect("model");
    let out = stdout(&cnnc(&["gradcheck", &s(&model), "--train", "--batch", "2"]));
    assert!(out.contains("note: in training mode, batch norm normalising few values per channel"), "{out}");
    assert!(out.contains("`b` (2)"), "{out}");
    let out = stdout(&cnnc(&["gradcheck", &s(&model), "--train", "--batch", "64", "--samples", "4"]));
    assert!(!out.contains("note:"), "64 values per channel are enough: {out}");
    let o = cnnc(&["gradcheck", LENET, "--batch", "0"]);
    assert_eq!(o.status.code(), Some(2), "a batch of 0 is a usage error");
}

#[test]
fn features_are_the_layers_output_in_the_dump() {
    let dir = scratch("features");
    let (w, x, f, d) = (dir.join("w.safetensors"), dir.join("x.npy"), dir.join("f.npy"), dir.join("d.safetensors"));
    assert_eq!(cnnc(&["init", LENET, "--seed", "2", "-o", &s(&w)]).status.code(), Some(0));
    let mut rng = Rng::seed_from_u64(7);
    let data = (0..2 * 32 * 32).map(|_| rng.normal() as f32).collect();
    write_npy(&x, &Tensor::from_vec(&[2, 1, 32, 32], data).expect("tensor")).expect("input");
    let o = cnnc(&["features", LENET, "--weights", &s(&w), "--layer", "f6", "--input", &s(&x), "-o", &s(&f)]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(stdout(&o).starts_with("features: the output of `f6`, [2, 84], written to"), "{}", stdout(&o));
    let o = cnnc(&["run", LENET, "--weights", &s(&w), "--input", &s(&x), "--dump", &s(&d)]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(read_npy_f32(&f).expect("features"), load_safetensors(&d).expect("dump")["f6"]);

    let o = cnnc(&["features", LENET, "--weights", &s(&w), "--layer", "f7", "--input", &s(&x), "-o", &s(&f)]);
    assert_eq!(o.status.code(), Some(2));
    let err = stderr(&o);
    assert!(err.contains("error: model `lenet5` has no layer `f7`") && err.contains("did you mean `f6`?"), "{err}");
    let o = cnnc(&["features", LENET, "--weights", &s(&w), "--layer", "f6", "--input", &s(&x), "-o", &s(&w)]);
    assert_eq!(o.status.code(), Some(2), "the weights are not overwritten");
}
