//! `cnnc summary`: per-layer statistics of a lowered model as a table for people and as JSON for
//! tools. The numbers come from `cnnc_ir::stats` and, for the fusion groups and the memory
//! plan, from the optimisation pipeline (`cnnc_passes`); this module only arranges and formats
//! them.

use crate::optimize::{Mode, Optimized, Pass, PassError, names, optimize};
use cnnc_ir::{Graph, Op, node_stats, totals};
/// Bytes in binary units with one decimal (`512 B`, `1.5 KiB`, `102.3 MiB`), as the runtime's
/// messages give them.
pub use cnnc_runtime::human_bytes;
use serde::Serialize;
use serde::ser::{SerializeMap, Serializer};

/// A model's summary. Serialised, it is exactly the JSON of `cnnc summary --json`; fields are
/// written in declaration order, so the key order is stable.
///
/// To extend the JSON, add a field here in the place it should print; fields marked
/// `#[serde(skip)]` feed the table only.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Summary {
    pub model: String,
    /// The first model input's shape, `[C, H, W]` or `[F]`.
    pub input: Vec<usize>,
    /// Trainable elements of the whole model (of the source graph: folding a batch norm
    /// changes how parameters are stored, not what the model has), frozen ones included.
    pub params: u64,
    /// Of `params`, the elements the model freezes (its `freeze` statements): training
    /// changes `params - frozen` of them.
    pub frozen: u64,
    /// Buffer elements of the whole model: batch-norm running statistics, loaded and saved
    /// with the weights but not trainable (`running_mean`, `running_var`).
    pub buffers: u64,
    /// Multiply-accumulates for one sample.
    pub macs: u64,
    /// Every node except the inputs, in graph order.
    pub layers: Vec<LayerSummary>,
    /// What the optimisation pipeline made of the model ([`summarize_optimized`]): the keys
    /// `fused`, `workspace_bytes` and `unplanned_bytes`, after `layers`. Absent from a plain
    /// [`summarize`].
    #[serde(flatten)]
    pub passes: Option<PassSummary>,
    /// Every node's output at batch 1 in f32, the model inputs included.
    #[serde(skip)]
    pub activation_bytes: u64,
    /// Output shapes, for the table's last line.
    #[serde(skip)]
    pub outputs: Vec<Vec<usize>>,
}

/// The optimisation pipeline's part of a [`Summary`]. Serialised, it is exactly the three keys
/// `"fused"`, `"workspace_bytes"` and `"unplanned_bytes"`; the other fields feed the table.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PassSummary {
    /// Each fused group as source layer names: the surviving layer first, then the layers it
    /// absorbed (`["layer1.0.conv3", "layer1.0.bn3", "layer1.0.add1", "layer1.0.relu3"]`), in
    /// the optimised graph's order.
    pub fused: Vec<Vec<String>>,
    /// The memory plan's arena at batch 1: every intermediate tensor of the optimised graph
    /// placed in one buffer, reused once dead (bytes, f32).
    pub workspace_bytes: u64,
    /// What the same tensors take with one buffer each, at batch 1 (bytes, f32).
    pub unplanned_bytes: u64,
    #[serde(skip)]
    pub mode: Mode,
    /// The passes that ran, in pipeline order.
    #[serde(skip)]
    pub ran: Vec<Pass>,
    /// The passes asked for but skipped (inference-only passes in training mode).
    #[serde(skip)]
    pub skipped: Vec<Pass>,
    /// Node counts of the graph before and after the passes.
    #[serde(skip)]
    pub nodes: (usize, usize),
    /// What the memory holds by kind at batch 1 (the table's `training:` line).
    #[serde(skip)]
    pub breakdown: cnnc_passes::MemoryBreakdown,
}

impl PassSummary {
    /// The part of an optimisation result the summary shows.
    pub fn new(opt: &Optimized) -> PassSummary {
        PassSummary {
            fused: opt.fused.clone(),
            workspace_bytes: opt.plan.workspace_bytes(1),
            unplanned_bytes: opt.plan.unplanned_bytes(1),
            mode: opt.mode,
            ran: opt.ran.iter().map(|r| r.pass).collect(),
            skipped: opt.skipped.clone(),
            nodes: (opt.nodes_before, opt.graph().len()),
            breakdown: opt.memory_breakdown(1),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct LayerSummary {
    /// The hierarchical layer name (`layer1.0.conv1`).
    pub name: String,
    /// The op's `.cnn` keyword.
    pub op: String,
    pub output: Vec<usize>,
    /// Trainable elements the layer owns.
    pub params: u64,
    pub macs: u64,
    /// The larger of the two axes' receptive fields, in model-input pixels.
    pub receptive_field: usize,
    /// Every parameter and buffer the layer owns, by full name, in the order the layer lists
    /// them (weight, bias, running_mean, running_var: PyTorch's `state_dict` order).
    #[serde(serialize_with = "ordered_map")]
    pub weights: Vec<(String, Vec<usize>)>,
}

/// A list of pairs as a JSON object, keeping the list's order (a map type would sort the keys).
fn ordered_map<S: Serializer>(pairs: &[(String, Vec<usize>)], serializer: S) -> Result<S::Ok, S::Error> {
    let mut map = serializer.serialize_map(Some(pairs.len()))?;
    for (name, dims) in pairs {
        map.serialize_entry(name, dims)?;
    }
    map.end()
}

/// Collects the summary of a lowered graph.
pub fn summarize(graph: &Graph) -> Summary {
    let stats = node_stats(graph);
    let sums = totals(graph, &stats);
    let layers = graph
        .iter()
        .filter(|(_, node)| !matches!(node.op, Op::Input))
        .map(|(id, node)| {
            let s = &stats[id.index()];
            let weights =
                graph.params(id).into_iter().map(|p| (format!("{}.{}", node.name, p.suffix), p.dims)).collect();
            LayerSummary {
                name: node.name.clone(),
                op: node.op.keyword().to_string(),
                output: node.shape.0.clone(),
                params: s.params,
                macs: s.macs,
                receptive_field: s.receptive_field[0].max(s.receptive_field[1]),
                weights,
            }
        })
        .collect();
    Summary {
        model: graph.name.clone(),
        input: graph.inputs.first().map(|&i| graph[i].shape.0.clone()).unwrap_or_default(),
        params: sums.params,
        frozen: sums.frozen,
        buffers: sums.buffers,
        macs: sums.macs,
        layers,
        passes: None,
        activation_bytes: sums.activation_bytes,
        outputs: graph.outputs.iter().map(|&o| graph[o].shape.0.clone()).collect(),
    }
}

/// [`summarize`], with the fusion groups and the memory plan of the graph after `passes` in
/// `mode` (`cnnc summary` runs every pass at inference). Only the graph is optimised: the
/// per-layer rows and the totals stay those of the source model.
pub fn summarize_optimized(graph: &Graph, passes: &[Pass], mode: Mode) -> Result<Summary, PassError> {
    let opt = optimize(graph, None, passes, mode)?;
    Ok(Summary { passes: Some(PassSummary::new(&opt)), ..summarize(graph) })
}

/// `cnnc check`'s line for a model free of errors: its name, trainable parameters and output
/// shapes, newline-terminated.
pub fn ok_line(graph: &Graph) -> String {
    let outputs: Vec<String> = graph.outputs.iter().map(|&o| graph[o].shape.to_string()).collect();
    format!(
        "ok: model `{}`: {} parameters, output {}\n",
        graph.name,
        thousands(summarize(graph).params),
        outputs.join(", ")
    )
}

/// The summary as one line of JSON, newline-terminated.
pub fn to_json(summary: &Summary) -> String {
    // Serialising plain strings, integers and lists into memory cannot fail.
    let mut json = serde_json::to_string(summary).unwrap_or_default();
    json.push('\n');
    json
}

/// `12345678` as `12,345,678`.
pub fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn dims(d: &[usize]) -> String {
    let parts: Vec<String> = d.iter().map(usize::to_string).collect();
    format!("[{}]", parts.join(", "))
}

/// The table `cnnc summary` prints: one row per layer, then the totals.
///
/// ```text
/// model lenet5, input [1, 32, 32]
///
/// name  op       output shape  params   MACs     receptive field
/// c1    conv     [6, 28, 28]   156      117,600  5
/// ...
/// ```
pub fn table(summary: &Summary) -> String {
    let headers = ["name", "op", "output shape", "params", "MACs", "receptive field"];
    // Numbers are right-aligned so that their magnitudes line up; text is left-aligned.
    let right = [false, false, false, true, true, true];
    let rows: Vec<[String; 6]> = summary
        .layers
        .iter()
        .map(|l| {
            [
                l.name.clone(),
                l.op.clone(),
                dims(&l.output),
                thousands(l.params),
                thousands(l.macs),
                thousands(l.receptive_field as u64),
            ]
        })
        .collect();
    let mut widths = headers.map(str::len);
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: &[String; 6]| {
        let mut text = String::new();
        for (i, cell) in cells.iter().enumerate() {
            let pad = widths[i] - cell.chars().count();
            if i > 0 {
                text.push_str("  ");
            }
            if right[i] {
                text.push_str(&" ".repeat(pad));
                text.push_str(cell);
            } else {
                text.push_str(cell);
                // No trailing blanks on the last column.
                if i + 1 < cells.len() {
                    text.push_str(&" ".repeat(pad));
                }
            }
        }
        text.push('\n');
        text
    };
    let mut out = format!("model {}, input {}\n\n", summary.model, dims(&summary.input));
    out.push_str(&line(&headers.map(String::from)));
    let total_width: usize = widths.iter().sum::<usize>() + 2 * (widths.len() - 1);
    out.push_str(&"-".repeat(total_width));
    out.push('\n');
    for row in &rows {
        out.push_str(&line(row));
    }
    out.push('\n');
    let outputs: Vec<String> = summary.outputs.iter().map(|o| dims(o)).collect();
    let mut stats = vec![
        ("output", outputs.join(", ")),
        ("parameters", parameters_line(summary)),
        ("MACs", format!("{} per sample", thousands(summary.macs))),
        ("activations", format!("{} at batch 1 (f32, every layer's output)", human_bytes(summary.activation_bytes))),
    ];
    if let Some(p) = &summary.passes {
        stats.push(("memory", memory_line(p)));
        if p.mode == Mode::Training {
            stats.push(("training", training_line(&p.breakdown)));
        }
        stats.push(("fusion", fusion_line(p)));
    }
    for (key, value) in stats {
        out.push_str(&format!("{:<12} {value}\n", format!("{key}:")));
    }
    if let Some(p) = &summary.passes {
        for (head, absorbed) in p.fused.iter().filter_map(|group| group.split_first()) {
            out.push_str(&format!("  {head} <- {}\n", absorbed.join(", ")));
        }
    }
    out
}

/// `61,706 trainable, 0 buffers`; with frozen parameters, the total and how it splits:
/// `61,706 (58,000 trainable, 3,706 frozen), 0 buffers`.
fn parameters_line(s: &Summary) -> String {
    let buffers = thousands(s.buffers);
    if s.frozen == 0 {
        return format!("{} trainable, {buffers} buffers", thousands(s.params));
    }
    let trained = s.params.saturating_sub(s.frozen);
    format!(
        "{} ({} trainable, {} frozen), {buffers} buffers",
        thousands(s.params),
        thousands(trained),
        thousands(s.frozen)
    )
}

/// `5.0 MiB workspace (planned) vs 44.0 MiB of intermediates (unplanned) at batch 1: 11.3%`
fn memory_line(p: &PassSummary) -> String {
    let mut line = format!(
        "{} workspace (planned) vs {} of intermediates (unplanned) at batch 1",
        human_bytes(p.workspace_bytes),
        human_bytes(p.unplanned_bytes),
    );
    if p.unplanned_bytes > 0 {
        line.push_str(&format!(": {:.1}%", p.workspace_bytes as f64 * 100.0 / p.unplanned_bytes as f64));
    }
    if p.mode == Mode::Training {
        line.push_str(" (training step: forward, loss, backward, updates)");
    }
    line
}

/// What a training step's memory holds: `145.0 MiB forward values, 137.6 MiB backward values,
/// 97.5 MiB parameter gradients (one buffer each); 97.7 MiB parameters, 97.5 MiB optimiser
/// state`.
fn training_line(b: &cnnc_passes::MemoryBreakdown) -> String {
    format!(
        "{} forward values, {} backward values, {} parameter gradients (one buffer each); {} parameters, {} \
         optimiser state",
        human_bytes(b.forward),
        human_bytes(b.backward),
        human_bytes(b.gradients),
        human_bytes(b.parameters),
        human_bytes(b.optimizer_state)
    )
}

/// `53 fused groups, 176 -> 60 nodes after 8 passes (inference):`, the mode saying what was
/// skipped in training.
fn fusion_line(p: &PassSummary) -> String {
    let groups = match p.fused.len() {
        0 => "no fused group".to_string(),
        1 => "1 fused group".to_string(),
        n => format!("{n} fused groups"),
    };
    let mut line = format!(
        "{groups}, {} -> {} nodes after {} pass{}",
        p.nodes.0,
        p.nodes.1,
        p.ran.len(),
        if p.ran.len() == 1 { "" } else { "es" }
    );
    match p.mode {
        Mode::Inference => line.push_str(" (inference)"),
        Mode::Training if p.skipped.is_empty() => line.push_str(" (training)"),
        Mode::Training => line.push_str(&format!(" (training; skipped {})", names(&p.skipped))),
    }
    if !p.fused.is_empty() {
        line.push(':');
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;
    use cnnc_diag::Span;
    use cnnc_ir::{Activation, BatchNorm, Conv, Fc, PoolKind, Shape, Window};

    fn window(k: usize, stride: usize, pad: usize) -> Window {
        Window { kernel: [k, k], stride: [stride, stride], pad: [pad, pad], dilation: [1, 1], ceil_mode: false }
    }

    /// input [3, 8, 8] -> conv 3x3 (4, pad 1) -> bn -> relu -> maxpool 2 -> flatten -> fc 10.
    fn small() -> Graph {
        let mut g = Graph::new("small");
        let s = Span::DUMMY;
        let x = g.add_input("x", Shape(vec![3, 8, 8]), s).expect("input");
        let conv = Op::Conv(Conv { out_channels: 4, window: window(3, 1, 1), groups: 1, bias: false });
        let mut last = g.add(conv, vec![x], "features.conv", s).expect("conv").0;
        let bn = Op::BatchNorm(BatchNorm { eps: 1e-5, momentum: 0.1 });
        for (op, name) in [
            (bn, "features.bn"),
            (Op::Activation(Activation::Relu), "features.relu"),
            (Op::Pool { kind: PoolKind::Max, window: window(2, 2, 0) }, "pool"),
            (Op::Flatten, "flatten"),
            (Op::Fc(Fc { out_features: 10, bias: true }), "fc"),
        ] {
            last = g.add(op, vec![last], name, s).expect("op").0;
        }
        g.outputs.push(last);
        g
    }

    #[test]
    fn summary_counts_params_macs_and_weights() {
        let s = summarize(&small());
        assert_eq!(s.model, "small");
        assert_eq!(s.input, vec![3, 8, 8]);
        let conv_params = 4 * 3 * 9;
        let fc_params = 64 * 10 + 10;
        assert_eq!(s.params, conv_params + 8 + fc_params);
        assert_eq!(s.buffers, 8);
        assert_eq!(s.macs, 4 * 8 * 8 * 27 + 640);
        let names: Vec<&str> = s.layers.iter().map(|l| l.name.as_str()).collect();
        assert_eq!(names, ["features.conv", "features.bn", "features.relu", "pool", "flatten", "fc"]);
        let bn = &s.layers[1];
        assert_eq!((bn.op.as_str(), bn.params, bn.macs), ("bn", 8, 0));
        let bn_weights: Vec<&str> = bn.weights.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            bn_weights,
            ["features.bn.weight", "features.bn.bias", "features.bn.running_mean", "features.bn.running_var"]
        );
        assert_eq!(s.layers[0].weights, vec![("features.conv.weight".to_string(), vec![4, 3, 3, 3])]);
        // 3x3 conv, then a 2x2 pool with stride 2: 3 + 1 = 4; flatten spans the 4x4 map: 4 + 3 * 2.
        let fields: Vec<usize> = s.layers.iter().map(|l| l.receptive_field).collect();
        assert_eq!(fields, [3, 3, 3, 4, 10, 10]);
        assert_eq!(s.outputs, vec![vec![10]]);
        // x, conv, bn, relu: 3 + 4 + 4 + 4 maps of 8x8; pool and flatten 64 each; fc 10.
        assert_eq!(s.activation_bytes, ((3 + 12) * 64 + 64 * 2 + 10) * 4);
    }

    #[test]
    fn json_has_exactly_the_specified_keys_in_order() {
        let json = to_json(&summarize(&small()));
        assert!(json.ends_with('\n') && !json.trim_end().contains('\n'), "one line");
        assert!(json.starts_with(r#"{"model":"small","input":[3,8,8],"params":"#), "{json}");
        assert!(json.contains(r#""layers":[{"name":"features.conv","op":"conv","output":[4,8,8],"params":108,"macs":6912,"receptive_field":3,"weights":{"features.conv.weight":[4,3,3,3]}}"#), "{json}");
        assert!(json.contains(r#""weights":{"features.bn.weight":[4],"features.bn.bias":[4],"features.bn.running_mean":[4],"features.bn.running_var":[4]}"#), "{json}");
        let value: serde_json::Value = serde_json::from_str(&json).expect("valid JSON");
        let keys: Vec<&String> = value.as_object().expect("object").keys().collect();
        assert!(json.contains(r#""params":766,"frozen":0,"buffers":8,"macs":7552,"layers":"#), "{json}");
        let mut expected = ["buffers", "frozen", "input", "layers", "macs", "model", "params"];
        expected.sort();
        assert_eq!(keys, expected);
        let layer_keys: Vec<&String> = value["layers"][0].as_object().expect("object").keys().collect();
        assert_eq!(layer_keys, ["macs", "name", "op", "output", "params", "receptive_field", "weights"]);
        assert_eq!(value["layers"][2]["weights"], serde_json::json!({}));
    }

    #[test]
    fn optimized_summary_adds_exactly_three_keys_after_layers() {
        let plain = summarize(&small());
        let s = summarize_optimized(&small(), Pass::ALL, Mode::Inference).expect("optimises");
        // The source model's numbers are untouched.
        assert_eq!((&s.layers, s.params, s.macs), (&plain.layers, plain.params, plain.macs));
        let p = s.passes.as_ref().expect("passes ran");
        let group = |names: &[&str]| names.iter().map(|n| n.to_string()).collect::<Vec<_>>();
        assert_eq!(p.fused, vec![group(&["features.conv", "features.bn", "features.relu"])]);
        assert!(0 < p.workspace_bytes && p.workspace_bytes <= p.unplanned_bytes, "{p:?}");
        let json = to_json(&s);
        let at = json.find(r#"}}],"fused":[["features.conv","features.bn","features.relu"]],"workspace_bytes":"#);
        assert!(at.is_some(), "{json}");
        assert!(json.ends_with(&format!(",\"unplanned_bytes\":{}}}\n", p.unplanned_bytes)), "{json}");
        let value: serde_json::Value = serde_json::from_str(&json).expect("valid JSON");
        let keys: Vec<&String> = value.as_object().expect("object").keys().collect();
        let mut expected = [
            "buffers",
            "frozen",
            "fused",
            "input",
            "layers",
            "macs",
            "model",
            "params",
            "unplanned_bytes",
            "workspace_bytes",
        ];
        expected.sort();
        assert_eq!(keys, expected);
        // No pass: no group, and the plan of the source graph.
        let none = summarize_optimized(&small(), &[], Mode::Inference).expect("plans");
        let p = none.passes.expect("plan");
        assert!(p.fused.is_empty() && p.ran.is_empty() && p.nodes == (7, 7), "{p:?}");
        assert!(to_json(&summarize_optimized(&small(), &[], Mode::Inference).unwrap()).contains(r#""fused":[],"#));
    }

    #[test]
    fn table_with_passes() {
        insta::assert_snapshot!(table(&summarize_optimized(&small(), Pass::ALL, Mode::Inference).expect("ok")));
    }

    #[test]
    fn table_with_passes_in_training() {
        let text = table(&summarize_optimized(&small(), Pass::ALL, Mode::Training).expect("ok"));
        let tail: Vec<&str> = text.lines().rev().take(3).collect();
        assert!(tail[0].starts_with("fusion:      no fused group, 7 -> "), "{text}");
        assert!(tail[0].ends_with("(training; skipped remove-dropout, fold-bn)"), "{text}");
        assert!(tail[1].starts_with("training:    ") && tail[1].ends_with(" optimiser state"), "{text}");
        assert!(
            tail[2].starts_with("memory:      ")
                && tail[2].ends_with("(training step: forward, loss, backward, updates)"),
            "{text}"
        );
    }

    #[test]
    fn frozen_parameters_are_counted_and_shown() {
        let mut g = small();
        g.frozen = ["features.conv.weight", "features.bn.weight", "features.bn.bias"].map(String::from).into();
        let s = summarize(&g);
        assert_eq!((s.params, s.frozen), (766, 108 + 8));
        assert!(to_json(&s).contains(r#""params":766,"frozen":116,"buffers":8,"#));
        assert!(table(&s).contains("\nparameters:  766 (650 trainable, 116 frozen), 8 buffers\n"), "{}", table(&s));
        assert!(table(&summarize(&small())).contains("\nparameters:  766 trainable, 8 buffers\n"));
    }

    #[test]
    fn thousands_separators() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1000), "1,000");
        assert_eq!(thousands(61_706), "61,706");
        assert_eq!(thousands(25_557_032), "25,557,032");
        assert_eq!(thousands(u64::MAX), "18,446,744,073,709,551,615");
    }

    #[test]
    fn human_units() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(1023), "1023 B");
        assert_eq!(human_bytes(1024), "1.0 KiB");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(1024 * 1024 - 1), "1.0 MiB");
        assert_eq!(human_bytes(107_269_324), "102.3 MiB");
        assert_eq!(human_bytes(u64::MAX), "16.0 EiB");
    }

    #[test]
    fn table_layout() {
        insta::assert_snapshot!(table(&summarize(&small())));
    }
}
