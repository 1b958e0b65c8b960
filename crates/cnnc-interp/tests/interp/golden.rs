//! The interpreter against PyTorch: every case of `tests/golden/cases.json` (made by
//! `tests/golden/gen.py`, see `tests/golden/README.md`) is run here and compared.
//!
//! A layer case builds a one-op graph (`Graph::add_input` per input, one `Graph::add` of the op
//! named in the JSON, that node the only output) and its training graph backpropagating the
//! stored `grad_output` (`Objective::OutputGradients`, batch statistics for the training-mode
//! cases), runs it on the stored inputs and parameters, and compares the output, the updated
//! running statistics (training-mode batch norm), the input gradients and the gradient of every
//! trainable parameter. A loss case runs the training graph of the identity model under that
//! loss and compares the value and the gradient with respect to the prediction.
//!
//! # Tolerances
//!
//! An element passes when `|actual - expected| <= atol + rtol * |expected|`, with
//! `rtol = 1e-4` for forward values (outputs, running statistics, loss values) and `1e-3` for
//! gradients, and `atol = 1e-5 * max(max |expected| over the tensor, 1e-3)`: an absolute floor
//! scaled by the tensor's magnitude, so elements that come out near zero by cancellation (batch
//! norm and softmax gradients) are judged against the size of the terms that cancelled, not
//! against themselves. PyTorch computed in f64 from the stored f32 values; the interpreter runs
//! in its normal f32-storage mode, so the expected difference is a few f32 roundings.
//!
//! Every case runs and every mismatch is collected; the test fails once at the end listing them
//! all (at most a few elements per tensor, plus a count).

use cnnc_interp::{Gradients, Options, gradients, run};
use cnnc_ir::{Activation, BatchNorm, Conv, Fc, Graph, HingeForm, Loss, Lrn, Op, PoolKind, Shape, TrainOp, Window};
use cnnc_passes::{Objective, TrainingOptions, training_graph};
use cnnc_runtime::{Tensor, TensorMap};
use safetensors::{Dtype, SafeTensors};
use serde_json::{Map, Value};
use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

const FORWARD_RTOL: f64 = 1e-4;
const GRAD_RTOL: f64 = 1e-3;
/// `atol = ATOL_SCALE * max(max |expected|, ATOL_FLOOR)` per tensor.
const ATOL_SCALE: f64 = 1e-5;
const ATOL_FLOOR: f64 = 1e-3;
/// Mismatching elements listed per tensor before the rest are only counted.
const SHOWN_PER_TENSOR: usize = 4;

fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/golden")
}

/// The tensors of one case file: f32 ones as runtime tensors, i64 ones (class targets) apart.
#[derive(Default)]
struct CaseFile {
    f32s: BTreeMap<String, Tensor>,
    i64s: BTreeMap<String, (Vec<usize>, Vec<i64>)>,
}

impl CaseFile {
    fn read(path: &Path) -> Result<CaseFile, String> {
        let bytes = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let st = SafeTensors::deserialize(&bytes).map_err(|e| format!("{}: {e}", path.display()))?;
        let mut file = CaseFile::default();
        for (name, view) in st.tensors() {
            let shape = view.shape().to_vec();
            match view.dtype() {
                Dtype::F32 => {
                    let data =
                        view.data().chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
                    let t = Tensor::from_vec(&shape, data).map_err(|e| format!("{name}: {e}"))?;
                    file.f32s.insert(name, t);
                }
                Dtype::I64 => {
                    let data = view.data().chunks_exact(8).map(|b| i64::from_le_bytes(b.try_into().unwrap())).collect();
                    file.i64s.insert(name, (shape, data));
                }
                other => return Err(format!("{}: tensor `{name}` has unsupported dtype {other:?}", path.display())),
            }
        }
        Ok(file)
    }

    fn get(&self, name: &str) -> Result<&Tensor, String> {
        self.f32s.get(name).ok_or_else(|| format!("the case file has no f32 tensor `{name}`"))
    }

    /// The f32 tensors whose key starts with `prefix`, keyed by the rest.
    fn with_prefix(&self, prefix: &str) -> TensorMap {
        self.f32s.iter().filter_map(|(k, v)| k.strip_prefix(prefix).map(|rest| (rest.to_string(), v.clone()))).collect()
    }

    fn class_targets(&self) -> Result<Vec<usize>, String> {
        if let Some((shape, data)) = self.i64s.get("target") {
            if shape.len() != 1 {
                return Err(format!("class targets must be rank 1, found shape {shape:?}"));
            }
            return data
                .iter()
                .map(|&t| usize::try_from(t).map_err(|_| format!("negative class target {t}")))
                .collect();
        }
        // Also accept class indices stored as f32.
        let t = self.get("target")?;
        Ok(t.data.iter().map(|&v| v as usize).collect())
    }
}

/// A case's attribute object, remembering which keys were read so unknown ones are reported.
struct Attrs<'a> {
    map: &'a Map<String, Value>,
    used: RefCell<BTreeSet<String>>,
}

impl<'a> Attrs<'a> {
    fn new(map: &'a Map<String, Value>) -> Attrs<'a> {
        Attrs { map, used: RefCell::new(BTreeSet::new()) }
    }

    fn value(&self, key: &str) -> Result<&'a Value, String> {
        self.used.borrow_mut().insert(key.to_string());
        self.map.get(key).ok_or_else(|| format!("missing attribute `{key}`"))
    }

    fn usize(&self, key: &str) -> Result<usize, String> {
        let v = self.value(key)?;
        v.as_u64().map(|n| n as usize).ok_or_else(|| format!("attribute `{key}` is not a non-negative integer: {v}"))
    }

    fn f64(&self, key: &str) -> Result<f64, String> {
        let v = self.value(key)?;
        v.as_f64().ok_or_else(|| format!("attribute `{key}` is not a number: {v}"))
    }

    fn bool(&self, key: &str) -> Result<bool, String> {
        let v = self.value(key)?;
        v.as_bool().ok_or_else(|| format!("attribute `{key}` is not a boolean: {v}"))
    }

    fn str(&self, key: &str) -> Result<&'a str, String> {
        let v = self.value(key)?;
        v.as_str().ok_or_else(|| format!("attribute `{key}` is not a string: {v}"))
    }

    fn usizes(&self, key: &str) -> Result<Vec<usize>, String> {
        let v = self.value(key)?;
        usizes(v).ok_or_else(|| format!("attribute `{key}` is not a list of non-negative integers: {v}"))
    }

    fn pair(&self, key: &str) -> Result<[usize; 2], String> {
        let list = self.usizes(key)?;
        <[usize; 2]>::try_from(list.as_slice()).map_err(|_| format!("attribute `{key}` is not a pair: {list:?}"))
    }

    fn window(&self) -> Result<Window, String> {
        Ok(Window {
            kernel: self.pair("kernel")?,
            stride: self.pair("stride")?,
            pad: self.pair("pad")?,
            dilation: self.pair("dilation")?,
            ceil_mode: self.bool("ceil_mode")?,
        })
    }

    fn unused(&self) -> Vec<String> {
        let used = self.used.borrow();
        self.map.keys().filter(|k| !used.contains(*k)).cloned().collect()
    }
}

fn usizes(v: &Value) -> Option<Vec<usize>> {
    v.as_array()?.iter().map(|x| x.as_u64().map(|n| n as usize)).collect()
}

fn pool_kind(name: &str) -> Result<PoolKind, String> {
    match name {
        "max" => Ok(PoolKind::Max),
        // No padding in global, adaptive or pyramid pooling: `include_pad` is irrelevant.
        "avg" => Ok(PoolKind::Avg { include_pad: true }),
        "l2" => Ok(PoolKind::L2),
        other => Err(format!("unknown pool kind `{other}`")),
    }
}

/// The op a case's keyword and attributes describe. An unknown keyword is an error (so a case
/// the test cannot build fails the test rather than being skipped).
fn build_op(keyword: &str, attrs: &Map<String, Value>) -> Result<Op, String> {
    let a = Attrs::new(attrs);
    let op = match keyword {
        "conv" => Op::Conv(Conv {
            out_channels: a.usize("out_channels")?,
            window: a.window()?,
            groups: a.usize("groups")?,
            bias: a.bool("bias")?,
        }),
        "maxpool" => Op::Pool { kind: PoolKind::Max, window: a.window()? },
        "avgpool" => Op::Pool { kind: PoolKind::Avg { include_pad: a.bool("include_pad")? }, window: a.window()? },
        "l2pool" => Op::Pool { kind: PoolKind::L2, window: a.window()? },
        "global_maxpool" => Op::GlobalPool(pool_kind("max")?),
        "global_avgpool" => Op::GlobalPool(pool_kind("avg")?),
        "global_l2pool" => Op::GlobalPool(pool_kind("l2")?),
        "adaptive_maxpool" => Op::AdaptivePool { kind: pool_kind("max")?, output: a.pair("output")? },
        "adaptive_avgpool" => Op::AdaptivePool { kind: pool_kind("avg")?, output: a.pair("output")? },
        "adaptive_l2pool" => Op::AdaptivePool { kind: pool_kind("l2")?, output: a.pair("output")? },
        "spp" => Op::Spp { kind: pool_kind(a.str("kind")?)?, levels: a.usizes("levels")? },
        "fc" => Op::Fc(Fc { out_features: a.usize("out_features")?, bias: a.bool("bias")? }),
        "flatten" => Op::Flatten,
        "relu" => Op::Activation(Activation::Relu),
        "leaky_relu" => Op::Activation(Activation::LeakyRelu { slope: a.f64("slope")? }),
        "elu" => Op::Activation(Activation::Elu { alpha: a.f64("alpha")? }),
        "selu" => Op::Activation(Activation::Selu),
        "sigmoid" => Op::Activation(Activation::Sigmoid),
        "tanh" => Op::Activation(Activation::Tanh),
        "hardtanh" => Op::Activation(Activation::HardTanh { min: a.f64("min")?, max: a.f64("max")? }),
        "softsign" => Op::Activation(Activation::Softsign),
        "softplus" => Op::Activation(Activation::Softplus { beta: a.f64("beta")?, threshold: a.f64("threshold")? }),
        "prelu" => Op::Prelu,
        "softmax" => Op::Softmax,
        "bn" => Op::BatchNorm(BatchNorm { eps: a.f64("eps")?, momentum: a.f64("momentum")? }),
        "lrn" => Op::Lrn(Lrn {
            size: a.usize("size")?,
            alpha: a.f64("alpha")?,
            beta: a.f64("beta")?,
            k: a.f64("k")?,
            // torch.nn.LocalResponseNorm, which made the goldens.
            alpha_over_size: true,
        }),
        "dropout" => Op::Dropout { p: a.f64("p")? },
        "concat" => Op::Concat,
        "add" => Op::Add,
        other => return Err(format!("unknown op keyword `{other}`: teach build_op in golden.rs to build it")),
    };
    let unused = a.unused();
    if !unused.is_empty() {
        return Err(format!("attributes {unused:?} are not used by `{keyword}`"));
    }
    if op.keyword() != keyword {
        return Err(format!("built an op whose keyword is `{}`, not `{keyword}`", op.keyword()));
    }
    Ok(op)
}

/// Every op keyword the goldens must cover. The exhaustive match makes a new `Op` variant a
/// compile error here, as a reminder to add it to `build_op` and `tests/golden/gen.py`.
fn required_keywords() -> Vec<&'static str> {
    fn covered(op: &Op) -> bool {
        match op {
            // Optimiser ops are compositions of covered ones; tests/optimiser_ops.rs checks
            // them against those compositions. Training ops are what every layer case's
            // backward runs through.
            Op::Input | Op::Gemm(_) | Op::Fused { .. } | Op::Reorder(_) | Op::ConcatInPlace | Op::Train(_) => false,
            Op::Conv(_)
            | Op::Pool { .. }
            | Op::GlobalPool(_)
            | Op::AdaptivePool { .. }
            | Op::Spp { .. }
            | Op::Fc(_)
            | Op::Flatten
            | Op::Activation(_)
            | Op::Prelu
            | Op::Softmax
            | Op::BatchNorm(_)
            | Op::Lrn(_)
            | Op::Dropout { .. }
            | Op::Concat
            | Op::Add => true,
        }
    }
    let window = Window { kernel: [1, 1], stride: [1, 1], pad: [0, 0], dilation: [1, 1], ceil_mode: false };
    let kinds = [PoolKind::Max, PoolKind::Avg { include_pad: true }, PoolKind::L2];
    let mut ops = vec![
        Op::Conv(Conv { out_channels: 1, window, groups: 1, bias: true }),
        Op::Spp { kind: PoolKind::Max, levels: vec![1] },
        Op::Fc(Fc { out_features: 1, bias: true }),
        Op::Flatten,
        Op::Prelu,
        Op::Softmax,
        Op::BatchNorm(BatchNorm { eps: 1e-5, momentum: 0.1 }),
        Op::Lrn(Lrn { size: 1, alpha: 1.0, beta: 1.0, k: 1.0, alpha_over_size: true }),
        Op::Dropout { p: 0.5 },
        Op::Concat,
        Op::Add,
    ];
    for kind in kinds {
        ops.push(Op::Pool { kind, window });
        ops.push(Op::GlobalPool(kind));
        ops.push(Op::AdaptivePool { kind, output: [1, 1] });
    }
    for act in [
        Activation::Relu,
        Activation::LeakyRelu { slope: 0.1 },
        Activation::Elu { alpha: 1.0 },
        Activation::Selu,
        Activation::Sigmoid,
        Activation::Tanh,
        Activation::HardTanh { min: -1.0, max: 1.0 },
        Activation::Softsign,
        Activation::Softplus { beta: 1.0, threshold: 20.0 },
    ] {
        ops.push(Op::Activation(act));
    }
    ops.iter().filter(|op| covered(op)).map(Op::keyword).collect()
}

const LOSSES: [&str; 5] = ["cross_entropy", "mse", "l1", "huber", "multi_margin"];

/// Compares one tensor, appending a message per mismatching element (the first few) to `out`.
fn compare(out: &mut Vec<String>, case: &str, what: &str, actual: &Tensor, expected: &Tensor, rtol: f64) {
    if actual.shape != expected.shape {
        out.push(format!("{case}: `{what}` has shape {:?}, expected {:?}", actual.shape, expected.shape));
        return;
    }
    if actual.data.len() != expected.data.len() {
        out.push(format!("{case}: `{what}` holds {} values, expected {}", actual.data.len(), expected.data.len()));
        return;
    }
    let max = expected.data.iter().fold(0.0f64, |m, &v| m.max(f64::from(v).abs()));
    let atol = ATOL_SCALE * max.max(ATOL_FLOOR);
    let mut bad = 0;
    for (i, (&a, &e)) in actual.data.iter().zip(&expected.data).enumerate() {
        let (a, e) = (f64::from(a), f64::from(e));
        let tol = atol + rtol * e.abs();
        let diff = (a - e).abs();
        if diff > tol || diff.is_nan() {
            if bad < SHOWN_PER_TENSOR {
                out.push(format!(
                    "{case}: `{what}`{:?}: got {a:.8e}, expected {e:.8e} (|diff| {:.3e} > tolerance {tol:.3e})",
                    unravel(i, &expected.shape),
                    diff
                ));
            }
            bad += 1;
        }
    }
    if bad > SHOWN_PER_TENSOR {
        out.push(format!(
            "{case}: `{what}`: {} more mismatching elements ({bad} of {} in all)",
            bad - SHOWN_PER_TENSOR,
            expected.data.len()
        ));
    }
}

fn unravel(mut i: usize, shape: &[usize]) -> Vec<usize> {
    let mut index = vec![0; shape.len()];
    for (d, &n) in shape.iter().enumerate().rev() {
        if n > 0 {
            index[d] = i % n;
            i /= n;
        }
    }
    index
}

fn scalar(v: f64) -> Tensor {
    Tensor { shape: vec![1], data: vec![v as f32] }
}

/// Runs one layer case; mismatches go to `out`, a case that cannot run at all is an `Err`.
fn run_layer_case(case: &Map<String, Value>, name: &str, file: &CaseFile, out: &mut Vec<String>) -> Result<(), String> {
    let keyword = case.get("op").and_then(Value::as_str).ok_or("no `op`")?;
    let empty = Map::new();
    let attrs = case.get("attrs").and_then(Value::as_object).unwrap_or(&empty);
    let op = build_op(keyword, attrs)?;
    let layer = case.get("layer").and_then(Value::as_str).ok_or("no `layer`")?;
    let input_shapes: Vec<Vec<usize>> = case
        .get("inputs")
        .and_then(Value::as_array)
        .ok_or("no `inputs`")?
        .iter()
        .map(|v| usizes(v).ok_or("an input shape is not a list of sizes"))
        .collect::<Result<_, _>>()?;
    let batch_stats = match case.get("mode").and_then(Value::as_str) {
        Some("inference") => false,
        Some("training") => true,
        other => return Err(format!("unknown mode {other:?}")),
    };

    let mut graph = Graph::new(name);
    let mut ids = Vec::new();
    for (k, dims) in input_shapes.iter().enumerate() {
        let id = graph
            .add_input(format!("input{k}"), Shape(dims.clone()), Default::default())
            .map_err(|e| format!("input {k} {dims:?}: {e}"))?;
        ids.push(id);
    }
    let (id, _warnings) = graph.add(op, ids, layer, Default::default()).map_err(|e| format!("Graph::add: {e}"))?;
    graph.outputs = vec![id];
    if let Some(expected) = case.get("output").and_then(usizes)
        && graph[id].shape.0 != expected
    {
        out.push(format!("{name}: the IR's shape rule gives {}, PyTorch's output is {expected:?}", graph[id].shape));
        return Ok(());
    }

    let inputs: Vec<Tensor> =
        (0..input_shapes.len()).map(|k| file.get(&format!("input.{k}")).cloned()).collect::<Result<_, _>>()?;
    let mut state = file.with_prefix("param.");
    let options = TrainingOptions {
        objective: Objective::OutputGradients,
        batch_stats,
        input_grads: true,
        ..TrainingOptions::new(Loss::Mse)
    };
    let t = training_graph(&graph, &options).map_err(|e| format!("training graph: {e}"))?;
    let mut all = inputs.clone();
    all.push(file.get("grad_output")?.clone());
    let result = run(&t.graph, &mut state, &all, &Options::new()).map_err(|e| format!("run: {e}"))?;
    let grads: Gradients<Tensor> = gradients(&t.outputs, &result);
    compare(out, name, "output", &grads.outputs[0], file.get("output")?, FORWARD_RTOL);

    let expected_running = file.with_prefix("running.");
    let running: TensorMap = t
        .graph
        .iter()
        .filter(|(_, n)| matches!(n.op, Op::Train(TrainOp::BnRunningUpdate { .. })))
        .flat_map(|(_, n)| ["running_mean", "running_var"].map(|s| format!("{}.{s}", n.name)))
        .map(|stat| {
            let value = state[&stat].clone();
            (stat, value)
        })
        .collect();
    for (stat, expected) in &expected_running {
        match running.get(stat) {
            Some(actual) => compare(out, name, &format!("running {stat}"), actual, expected, FORWARD_RTOL),
            None => out.push(format!("{name}: the run has no updated running statistic `{stat}`")),
        }
    }
    for stat in running.keys().filter(|k| !expected_running.contains_key(*k)) {
        out.push(format!("{name}: the run updates `{stat}`, which PyTorch does not"));
    }

    if grads.inputs.len() != inputs.len() {
        out.push(format!("{name}: {} input gradients for {} inputs", grads.inputs.len(), inputs.len()));
    }
    for (k, g) in &grads.inputs {
        compare(out, name, &format!("grad.input.{k}"), g, file.get(&format!("grad.input.{k}"))?, GRAD_RTOL);
    }
    let expected_params = file.with_prefix("grad.param.");
    for (param, expected) in &expected_params {
        match grads.params.get(param) {
            Some(actual) => compare(out, name, &format!("grad.param.{param}"), actual, expected, GRAD_RTOL),
            None => out.push(format!("{name}: no gradient for parameter `{param}`")),
        }
    }
    for param in grads.params.keys().filter(|k| !expected_params.contains_key(*k)) {
        out.push(format!("{name}: a gradient for `{param}`, which PyTorch does not train"));
    }
    Ok(())
}

fn run_loss_case(case: &Map<String, Value>, name: &str, file: &CaseFile, out: &mut Vec<String>) -> Result<(), String> {
    let kind = case.get("loss").and_then(Value::as_str).ok_or("no `loss`")?;
    let x = file.get("input.0")?;
    let labels = || -> Result<Tensor, String> {
        let t = file.class_targets()?;
        Ok(Tensor { shape: vec![t.len()], data: t.iter().map(|&c| c as f32).collect() })
    };
    let (loss, target) = match kind {
        "cross_entropy" => (Loss::CrossEntropy, labels()?),
        "multi_margin" => (Loss::Hinge { margin: 1.0, form: HingeForm::MeanOverClasses }, labels()?),
        "mse" => (Loss::Mse, file.get("target")?.clone()),
        "l1" => (Loss::L1, file.get("target")?.clone()),
        "huber" => (Loss::Huber { delta: 1.0 }, file.get("target")?.clone()),
        other => return Err(format!("unknown loss `{other}`: teach run_loss_case in golden.rs to run it")),
    };
    // The identity model: its output is its input, so the loss applies to the stored values.
    let mut graph = Graph::new(name);
    let input = graph.add_input("x", Shape(x.shape[1..].to_vec()), Default::default()).map_err(|e| e.to_string())?;
    graph.outputs = vec![input];
    let t = training_graph(&graph, &TrainingOptions { input_grads: true, ..TrainingOptions::new(loss) })
        .map_err(|e| format!("training graph: {e}"))?;
    let result = run(&t.graph, &mut TensorMap::new(), &[x.clone(), target], &Options::new())
        .map_err(|e| format!("{kind}: {e}"))?;
    let grads: Gradients<Tensor> = gradients(&t.outputs, &result);
    let value = grads.loss.ok_or("the training graph has no loss")?;
    compare(out, name, "loss", &scalar(value), file.get("loss")?, FORWARD_RTOL);
    compare(out, name, "grad.input.0", &grads.inputs[&0], file.get("grad.input.0")?, GRAD_RTOL);
    Ok(())
}

#[test]
fn interpreter_matches_pytorch_goldens() {
    let dir = golden_dir();
    let index_path = dir.join("cases.json");
    let text = std::fs::read_to_string(&index_path).unwrap_or_else(|e| panic!("{}: {e}", index_path.display()));
    let index: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", index_path.display()));
    let cases = index["cases"].as_array().expect("cases.json has a `cases` list");
    assert!(!cases.is_empty(), "cases.json lists no cases");

    let mut failures = Vec::new();
    let mut seen_ops = BTreeSet::new();
    let mut seen_losses = BTreeSet::new();
    let mut names = BTreeSet::new();
    for case in cases {
        let Some(case) = case.as_object() else {
            failures.push(format!("a case is not an object: {case}"));
            continue;
        };
        let name = case.get("name").and_then(Value::as_str).unwrap_or("<unnamed>").to_string();
        if !names.insert(name.clone()) {
            failures.push(format!("{name}: listed twice"));
        }
        let op = case.get("op").and_then(Value::as_str).unwrap_or("");
        let result = case
            .get("file")
            .and_then(Value::as_str)
            .ok_or_else(|| "no `file`".to_string())
            .and_then(|f| CaseFile::read(&dir.join(f)))
            .and_then(|file| {
                if op == "loss" {
                    seen_losses.insert(case.get("loss").and_then(Value::as_str).unwrap_or("").to_string());
                    run_loss_case(case, &name, &file, &mut failures)
                } else {
                    seen_ops.insert(op.to_string());
                    run_layer_case(case, &name, &file, &mut failures)
                }
            });
        if let Err(e) = result {
            failures.push(format!("{name}: {e}"));
        }
    }
    for keyword in required_keywords() {
        if !seen_ops.contains(keyword) {
            failures.push(format!("no golden case covers op `{keyword}`"));
        }
    }
    for kind in LOSSES {
        if !seen_losses.contains(kind) {
            failures.push(format!("no golden case covers loss `{kind}`"));
        }
    }

    let torch = index["torch_version"].as_str().unwrap_or("?");
    if !failures.is_empty() {
        panic!(
            "{} mismatch(es) against the PyTorch {torch} goldens ({} cases):\n  {}",
            failures.len(),
            cases.len(),
            failures.join("\n  ")
        );
    }
    eprintln!("{} golden cases from PyTorch {torch} match", cases.len());
}
