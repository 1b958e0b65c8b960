//! Weights in and out of the generated modules, and every kind of bad input: `from_seed` draws
//! what `cnnc init` draws, safetensors files load like named tensors (PyTorch's
//! `num_batches_tracked` skipped), a trainer's checkpoint round-trips; wrong lengths, bad
//! labels, missing, misshapen, extra, non-F32, truncated and corrupted weights are errors that
//! name what is wrong, never panics.

mod common;

use cnnc_codegen_generated::{lenet5, tiny_resnet};
use cnnc_runtime::{TensorMap, init_params, save_safetensors};
use common::*;

/// The bytes `save_safetensors` writes for `w`. Each call has a file of its own: the tests run
/// side by side, and two maps of one size once shared a name, so one test removed the file
/// another was about to read.
fn safetensors_bytes(w: &TensorMap) -> Vec<u8> {
    static CALLS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let call = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("cnnc-codegen-loading-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!("w{call}.safetensors"));
    save_safetensors(&path, w).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    let _ = std::fs::remove_file(&path);
    bytes
}

/// A safetensors file of F32 tensors plus `extra` raw header entries (with their data).
fn handmade(w: &TensorMap, extra: &[(&str, &str, &[usize], Vec<u8>)]) -> Vec<u8> {
    let mut header = String::from("{");
    let mut data = Vec::new();
    let mut entries: Vec<(String, String, Vec<usize>, Vec<u8>)> = w
        .iter()
        .map(|(k, t)| {
            (k.clone(), "F32".to_string(), t.shape.clone(), t.data.iter().flat_map(|v| v.to_le_bytes()).collect())
        })
        .collect();
    entries.extend(extra.iter().map(|(k, d, s, b)| (k.to_string(), d.to_string(), s.to_vec(), b.clone())));
    for (i, (name, dtype, shape, bytes)) in entries.iter().enumerate() {
        let shape: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
        let (begin, end) = (data.len(), data.len() + bytes.len());
        if i > 0 {
            header.push(',');
        }
        header.push_str(&format!(
            "\"{name}\":{{\"dtype\":\"{dtype}\",\"shape\":[{}],\"data_offsets\":[{begin},{end}]}}",
            shape.join(",")
        ));
        data.extend_from_slice(bytes);
    }
    header.push('}');
    let mut out = (header.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(&data);
    out
}

fn lenet_output(model: &lenet5::Model, x: &[f32]) -> Vec<f32> {
    let mut out = vec![0.0; 2 * lenet5::model::OUTPUT_0_LEN];
    model.forward(x, 2, &mut out).unwrap();
    out
}

#[test]
fn from_seed_draws_what_cnnc_init_draws() {
    let g = models::lower(&case("lenet5"));
    let x = input(&g, 2, 3);
    let seeded = lenet5::Model::from_seed(42).unwrap();
    let init = init_params(&g, 42);
    let named_model = lenet5::Model::from_tensors(&named(&init)).unwrap();
    assert_eq!(lenet_output(&seeded, &x.data), lenet_output(&named_model, &x.data));
    // Every tensor bit for bit, batch-norm buffers included, through a trainer.
    let g = models::lower(&case("tiny_resnet"));
    let trainer = tiny_resnet::Sgd::from_seed(42).unwrap();
    for (name, t) in &init_params(&g, 42) {
        assert_eq!(trainer.tensor(name).as_deref(), Some(t.data.as_slice()), "{name}");
    }
}

#[test]
fn safetensors_load_like_named_tensors_and_checkpoints_round_trip() {
    let g = models::lower(&case("lenet5"));
    let w = random_weights(&g, 9);
    let x = input(&g, 2, 4);
    let from_file = lenet5::Model::from_safetensors(&safetensors_bytes(&w)).unwrap();
    let from_named = lenet5::Model::from_tensors(&named(&w)).unwrap();
    assert_eq!(lenet_output(&from_file, &x.data), lenet_output(&from_named, &x.data));

    // PyTorch's batch-norm counters are skipped; the trainer writes a checkpoint the runtime
    // reads back, with the optimiser state after a step.
    let g = models::lower(&case("tiny_resnet"));
    let w = random_weights(&g, 9);
    let counter = ("bn1.num_batches_tracked", "I64", &[][..], 7i64.to_le_bytes().to_vec());
    let mut trainer = tiny_resnet::Sgd::from_safetensors(&handmade(&w, &[counter])).unwrap();
    let x = input(&g, 2, 5);
    let args = tiny_resnet::StepArgs { lr: 0.1, step: 1, seed: 0 };
    trainer.step(&x.data, &[1, 2], 2, &args).unwrap();
    let saved = trainer.to_safetensors();
    let dir = std::env::temp_dir().join(format!("cnnc-codegen-ckpt-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("ckpt.safetensors");
    std::fs::write(&path, &saved).unwrap();
    let back = cnnc_runtime::load_safetensors(&path).unwrap();
    let _ = std::fs::remove_file(&path);
    assert!(back.contains_key("conv1.weight.momentum_buffer"), "the optimiser state is saved");
    for (name, t) in &back {
        assert_eq!(trainer.tensor(name).as_deref(), Some(t.data.as_slice()), "{name}");
    }
    // And resumes: the state goes back in (packed where its parameter is).
    let resumed = tiny_resnet::Sgd::from_safetensors(&saved).unwrap();
    for name in back.keys() {
        assert_eq!(resumed.tensor(name), trainer.tensor(name), "{name}");
    }
}

#[test]
fn wrong_lengths_batches_and_labels_are_errors() {
    let model = lenet5::Model::from_seed(1).unwrap();
    let n = lenet5::model::INPUT_0_LEN;
    let mut out = vec![0.0; 3 * lenet5::model::OUTPUT_0_LEN];
    let e = model.forward(&vec![0.0; 3 * n - 1], 3, &mut out).unwrap_err();
    assert_eq!(e, lenet5::Error::Length { what: "input `x`", expected: 3 * n, found: 3 * n - 1 });
    let e = model.forward(&vec![0.0; 3 * n], 3, &mut out[1..]).unwrap_err();
    assert!(matches!(e, lenet5::Error::Length { what: "output 0", .. }), "{e}");
    assert_eq!(model.forward(&[], 0, &mut []).unwrap_err(), lenet5::Error::Batch { batch: 0 });
    let e = model.forward(&[], usize::MAX, &mut []).unwrap_err();
    assert_eq!(e, lenet5::Error::Batch { batch: usize::MAX });
    assert!(model.forward(&vec![0.0; 3 * n], 3, &mut out).is_ok());

    let mut trainer = lenet5::Sgd::from_seed(1).unwrap();
    let args = lenet5::StepArgs { lr: 0.1, step: 1, seed: 0 };
    let e = trainer.step(&vec![0.0; 2 * n], &[3, 10], 2, &args).unwrap_err();
    assert_eq!(e, lenet5::Error::Label { sample: 1, label: 10, classes: 10 });
    assert_eq!(e.to_string(), "label 10 of sample 1 is not a class (0..10)");
    let e = trainer.step(&vec![0.0; 2 * n], &[3], 2, &args).unwrap_err();
    assert!(matches!(e, lenet5::Error::Length { what: "labels `target`", expected: 2, found: 1 }), "{e}");
    let mut grads = lenet5::Grads::from_seed(1).unwrap();
    assert_eq!(grads.gradient("c1.weight"), None, "no step yet");
    let mut dx = vec![0.0; n];
    assert_eq!(grads.input_gradient(&mut dx).unwrap_err(), lenet5::Error::NotRun);
    grads.step(&vec![0.5; n], &[2], 1, &args).unwrap();
    assert!(grads.gradient("c1.weight").is_some());
    assert_eq!(grads.gradient("no.such"), None);
    assert!(matches!(grads.input_gradient(&mut dx[1..]).unwrap_err(), lenet5::Error::Length { .. }));
}

#[test]
fn bad_weights_are_errors_naming_the_tensor() {
    let g = models::lower(&case("lenet5"));
    let w = random_weights(&g, 9);
    let load = |w: &TensorMap| lenet5::Model::from_safetensors(&safetensors_bytes(w)).err().map(|e| e.to_string());

    let mut missing = w.clone();
    missing.remove("c3.bias");
    assert_eq!(load(&missing).as_deref(), Some("tensor `c3.bias` is missing from the weights"));
    let mut misshapen = w.clone();
    misshapen.get_mut("f6.weight").unwrap().shape = vec![120, 84];
    assert_eq!(
        load(&misshapen).as_deref(),
        Some("tensor `f6.weight` has shape [120, 84], the model expects [84, 120]")
    );
    let mut extra = w.clone();
    extra.insert("f7.weight".into(), cnnc_runtime::Tensor::zeros(&[2]));
    assert_eq!(load(&extra).as_deref(), Some("tensor `f7.weight` is not a tensor of this model"));
    let f64_entry = ("c1.bias", "F64", &[6][..], vec![0u8; 48]);
    let mut without = w.clone();
    without.remove("c1.bias");
    let e = lenet5::Model::from_safetensors(&handmade(&without, &[f64_entry])).err().unwrap();
    assert_eq!(e.to_string(), "tensor `c1.bias` is not F32 (the only dtype this model reads)");
    // Named tensors are checked the same way.
    let mut tensors = named(&w);
    tensors.retain(|(n, _)| *n != "output.bias");
    let e = lenet5::Model::from_tensors(&tensors).err().unwrap();
    assert_eq!(e, lenet5::Error::MissingTensor { name: "output.bias" });
    // The error is a `std::error::Error`: `?` lifts it into a boxed error with its message.
    let boxed = || -> Result<lenet5::Model, Box<dyn std::error::Error>> { Ok(lenet5::Model::from_tensors(&tensors)?) };
    assert_eq!(boxed().err().unwrap().to_string(), "tensor `output.bias` is missing from the weights");
    let short = vec![0.0; 5];
    let mut tensors = named(&w);
    tensors.iter_mut().find(|(n, _)| *n == "c1.bias").unwrap().1 = &short;
    assert!(matches!(lenet5::Model::from_tensors(&tensors).err(), Some(lenet5::Error::Length { what: "c1.bias", .. })));
}

#[test]
fn truncated_and_corrupted_files_are_errors_not_panics() {
    let g = models::lower(&case("lenet5"));
    let bytes = safetensors_bytes(&random_weights(&g, 9));
    assert!(lenet5::Model::from_safetensors(&bytes).is_ok());
    let header = 8 + u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    // Every cut inside the header, and a sample of cuts in the data, is an error.
    for cut in (0..header + 64).chain((header..bytes.len()).step_by(997)) {
        assert!(lenet5::Model::from_safetensors(&bytes[..cut]).is_err(), "cut at {cut}");
    }
    // Every byte of the header replaced by characters that break JSON or numbers: no panic.
    for i in 0..header {
        for v in [0u8, 0xff, b'9', b'"', b'}', b'[', b'\\'] {
            let mut b = bytes.clone();
            b[i] = v;
            let _ = lenet5::Model::from_safetensors(&b);
        }
    }
    let mut huge = u64::MAX.to_le_bytes().to_vec();
    huge.extend_from_slice(b"{}");
    assert!(matches!(lenet5::Model::from_safetensors(&huge), Err(lenet5::Error::Format { .. })));
    // Data offsets past the end name the tensor.
    let w = random_weights(&g, 9);
    let mut b = handmade(&w, &[]);
    let text = String::from_utf8_lossy(&b[8..header]).to_string();
    let at = text.find("\"c1.bias\"").unwrap();
    let end = text[at..].find("data_offsets\":[").unwrap() + at + 15;
    let close = text[end..].find(']').unwrap() + end;
    let patched = format!("{}0,999999999{}", &text[..end], &text[close..]);
    let mut out = (patched.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(patched.as_bytes());
    out.extend_from_slice(&b.split_off(header));
    let e = lenet5::Model::from_safetensors(&out).err().unwrap();
    assert_eq!(e.to_string(), "the data of tensor `c1.bias` lies outside the file or does not match its shape");
}
