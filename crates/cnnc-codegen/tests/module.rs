//! The generated module itself: the LeNet-5 module pinned by a snapshot (everything but the
//! kernels' text), the kernels carried verbatim (byte for byte `cnnc_kernels::source`'s
//! text of exactly the files the model needs), and what `emit` refuses.

mod common;

use cnnc_ir::{Loss, Optimizer, Sgd};
use cnnc_passes::TrainingOptions;

const KERNELS: &str = "// ---- the kernels (cnnc-kernels, verbatim) ----\n";

#[test]
fn lenet5_module() {
    let text = common::emit("lenet5.cnn", None, true);
    let (generated, _) = text.split_once(KERNELS).expect("the kernels come last");
    insta::assert_snapshot!("lenet5", generated);
}

#[test]
fn the_kernels_are_the_kernel_crate_source_verbatim() {
    for (file, train) in [("lenet5.cnn", false), ("googlenet.cnn", false), ("resnet18.cnn", true)] {
        let sgd = Sgd { momentum: 0.9, weight_decay: 0.0, nesterov: false };
        let t = TrainingOptions { optimizer: Some(Optimizer::Sgd(sgd)), ..TrainingOptions::new(Loss::CrossEntropy) };
        let text = common::emit(file, train.then_some(&t), true);
        let (_, kernels) = text.split_once(KERNELS).expect("the kernels come last");
        let embedded: Vec<&str> = cnnc_kernels::source::files()
            .iter()
            .filter(|f| kernels.contains(&format!("\npub mod {} {{\n{}}}\n", f.module, f.text)))
            .map(|f| f.module)
            .collect();
        assert_eq!(kernels, cnnc_kernels::source::module_text(&embedded), "{file}: not the kernels' own text");
        assert!(embedded.contains(&"conv_fwd") && embedded.contains(&"cpu"), "{file}: {embedded:?}");
        // Only what the model uses: no LRN in LeNet-5 or ResNet-18, no training kernels for
        // inference, never the C ABI of the JIT.
        assert_eq!(embedded.contains(&"lrn"), file == "googlenet.cnn", "{file}: {embedded:?}");
        assert_eq!(embedded.contains(&"optim"), train, "{file}: {embedded:?}");
        assert!(!embedded.contains(&"ffi") && !embedded.contains(&"source"), "{file}: {embedded:?}");
    }
}

#[test]
fn what_emit_refuses() {
    let (_, g) = common::lower("lenet5.cnn");
    let plan = common::inference(&g);
    let t = TrainingOptions::new(Loss::CrossEntropy);
    let training = common::training(&g, &t);
    let bad_name = cnnc_codegen::Program::inference(&g, &plan).with("trainer", &training);
    let e = cnnc_codegen::emit(&bad_name, &cnnc_codegen::Options::default()).unwrap_err();
    assert_eq!(e.to_string(), "not supported by the Rust back end: `trainer` is not a CamelCase struct name");
    let no_std = cnnc_codegen::Options { std: false, ..cnnc_codegen::Options::default() };
    let e = cnnc_codegen::emit(&cnnc_codegen::Program::inference(&g, &training), &no_std).unwrap_err();
    assert!(e.to_string().contains("training steps need std"), "{e}");
    // A plan that is not of this source: its parameters come from no checkpoint tensor.
    let (_, other) = common::lower("cifar_simple.cnn");
    let e = cnnc_codegen::emit(&cnnc_codegen::Program::inference(&other, &plan), &cnnc_codegen::Options::default())
        .unwrap_err();
    assert!(matches!(e, cnnc_codegen::CodegenError::Plan(_)), "{e}");
}
