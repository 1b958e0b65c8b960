//! `--passes` and `--train` for the front doors: runs the optimisation pipeline
//! (`cnnc_passes`) on a lowered graph and says what it did, for `cnnc ir`, `dot`, `summary` and
//! `run`.
//!
//! The passes crate does the work; this module only chooses its options the same way for every
//! command (the verifier always on, so a broken pass is an internal error rather than a wrong
//! answer) and turns its report into words: the `note:` lines on stderr and the clusters of
//! `cnnc dot --passes`.

use cnnc_ir::{Graph, Loss, Optimizer, Sgd};
use cnnc_runtime::TensorMap;

pub use cnnc_passes::{
    Mode, Objective, Optimized, Pass, PassError, PassOptions, TrainingOptions, parse_passes, valid_pass_names,
};

/// Runs `passes` (in pipeline order, whatever their order here) in `mode` on a copy of `graph`,
/// and of `weights` when given (BN folding rewrites them; without weights only the graph
/// changes, which is all `cnnc ir`, `dot` and `summary` show). The verifier runs after every
/// pass, in release builds too.
///
/// In training mode the result is the training step (`--train` on `ir`, `dot`, `summary`):
/// the training graph of [`default_training`], with the passes that hold in training before
/// the transform and the others after it.
pub fn optimize(
    graph: &Graph,
    weights: Option<&TensorMap>,
    passes: &[Pass],
    mode: Mode,
) -> Result<Optimized, PassError> {
    let options = PassOptions { verify: true, ..PassOptions::all().with_passes(passes.to_vec()).with_mode(mode) };
    match mode {
        Mode::Inference => cnnc_passes::optimize(graph, weights, &options),
        Mode::Training => cnnc_passes::optimize_training(graph, weights, &options, &default_training(graph)),
    }
}

/// The forward graph optimised for `cnnc run`: the inference graph, or in training mode the
/// forward pass of training (batch statistics, dropout masks; no loss), with `weights`, when
/// given, rewritten to fit it. The interpreter needs them rewritten; the JIT takes checkpoint
/// weights and applies the plan's transforms (BN folding, packing) itself, so its callers pass
/// none and skip a copy of every weight (ResNet-50's 100 MB).
pub fn optimize_forward(
    graph: &Graph,
    weights: Option<&TensorMap>,
    passes: &[Pass],
    mode: Mode,
) -> Result<Optimized, PassError> {
    let options = PassOptions { verify: true, ..PassOptions::all().with_passes(passes.to_vec()).with_mode(mode) };
    cnnc_passes::optimize(graph, weights, &options)
}

/// The training step `--train` shows: softmax cross-entropy for a classifier (an output of
/// class scores), mean squared error for another single output, and for a model with several
/// outputs their gradients as inputs; SGD with momentum 0.9; batch statistics.
pub fn default_training(graph: &Graph) -> TrainingOptions {
    let classifier = graph.outputs.len() == 1 && {
        let shape = &graph[graph.outputs[0]].shape.0;
        matches!(shape[..], [c] | [c, 1, 1] if c >= 2)
    };
    let loss = if classifier { Loss::CrossEntropy } else { Loss::Mse };
    let sgd = Sgd { momentum: 0.9, weight_decay: 0.0, nesterov: false };
    let mut options = TrainingOptions { optimizer: Some(Optimizer::Sgd(sgd)), ..TrainingOptions::new(loss) };
    if graph.outputs.len() != 1 {
        options.objective = Objective::OutputGradients;
    }
    options
}

/// What the pipeline did, as `note:` lines for stderr: the passes that ran, with how often
/// each fired, and the node counts; in training mode, the passes it skipped.
///
/// ```text
/// note: passes (inference): dce, remove-dropout, cse, fold-bn x53, to-gemm x36, fuse-epilogue x53, ...; 176 -> 60 nodes, 53 fused groups
/// ```
pub fn pass_report(opt: &Optimized) -> Vec<String> {
    let ran: Vec<String> = opt
        .ran
        .iter()
        .map(|r| if r.rewrites == 0 { r.pass.name().to_string() } else { format!("{} x{}", r.pass, r.rewrites) })
        .collect();
    let mut lines = vec![format!(
        "note: passes ({}): {}; {} -> {} nodes, {} fused group{}",
        mode_name(opt.mode),
        if ran.is_empty() { "none ran".to_string() } else { ran.join(", ") },
        opt.nodes_before,
        opt.graph().len(),
        opt.fused.len(),
        if opt.fused.len() == 1 { "" } else { "s" },
    )];
    if !opt.skipped.is_empty() {
        lines.push(format!(
            "note: --train skips the inference-only pass{} {} (they change what the model computes in training)",
            if opt.skipped.len() == 1 { "" } else { "es" },
            names(&opt.skipped),
        ));
    }
    lines
}

/// `inference` or `training`.
pub fn mode_name(mode: Mode) -> &'static str {
    match mode {
        Mode::Inference => "inference",
        Mode::Training => "training",
    }
}

/// Pass names joined by `, `.
pub fn names(passes: &[Pass]) -> String {
    passes.iter().map(|p| p.name()).collect::<Vec<_>>().join(", ")
}

/// The *original* graph in DOT with every fused group drawn as a cluster labelled
/// `fused: <surviving layer>` (`cnnc dot --passes ...`): the layers stay those of the source,
/// so the drawing can be read next to the `.cnn` file.
pub fn dot_fused(original: &Graph, opt: &Optimized) -> String {
    cnnc_ir::dot_with_clusters(original, &opt.clusters())
}

/// `--passes` help: every accepted name, each pass with its one-line description.
pub fn passes_help() -> String {
    let mut text = String::from(
        "The optimisation passes to run: `all`, `none`, or a comma-separated list; they run in \
         pipeline order whatever the order given:\n",
    );
    for pass in Pass::ALL {
        text.push_str(&format!("  {:<16} {}\n", pass.name(), pass.description()));
    }
    text.pop();
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use cnnc_diag::Span;
    use cnnc_ir::{Activation, BatchNorm, Conv, Op, Shape, Window};

    /// input -> conv -> bn -> relu -> dropout.
    fn small() -> Graph {
        let mut g = Graph::new("small");
        let s = Span::DUMMY;
        let x = g.add_input("x", Shape(vec![3, 8, 8]), s).expect("input");
        let w = Window { kernel: [3, 3], stride: [1, 1], pad: [1, 1], dilation: [1, 1], ceil_mode: false };
        let conv = Op::Conv(Conv { out_channels: 4, window: w, groups: 1, bias: false });
        let mut last = g.add(conv, vec![x], "conv", s).expect("conv").0;
        for (op, name) in [
            (Op::BatchNorm(BatchNorm { eps: 1e-5, momentum: 0.1 }), "bn"),
            (Op::Activation(Activation::Relu), "relu"),
            (Op::Dropout { p: 0.5 }, "drop"),
        ] {
            last = g.add(op, vec![last], name, s).expect("op").0;
        }
        g.outputs.push(last);
        g
    }

    #[test]
    fn inference_folds_and_fuses_without_weights() {
        let opt = optimize(&small(), None, Pass::ALL, Mode::Inference).expect("optimises");
        assert_eq!(opt.fused, vec![vec!["conv".to_string(), "bn".to_string(), "relu".to_string()]]);
        assert!(opt.weights.is_none());
        let report = pass_report(&opt);
        assert_eq!(report.len(), 1, "{report:?}");
        assert!(
            report[0].starts_with("note: passes (inference): dce, remove-dropout x1, cse, fold-bn x1,"),
            "{report:?}"
        );
        assert!(report[0].ends_with(&format!("; 5 -> {} nodes, 1 fused group", opt.graph().len())), "{report:?}");
        let dot = dot_fused(&small(), &opt);
        assert!(dot.contains("subgraph cluster_0 {\n    label=\"fused: conv\";"), "{dot}");
    }

    #[test]
    fn training_skips_what_changes_semantics() {
        let opt = optimize(&small(), None, Pass::ALL, Mode::Training).expect("optimises");
        assert_eq!(opt.skipped, vec![Pass::RemoveDropout, Pass::FoldBn]);
        let report = pass_report(&opt);
        assert_eq!(
            report[1],
            "note: --train skips the inference-only passes remove-dropout, fold-bn (they change what the model computes in training)"
        );
        assert!(report[0].starts_with("note: passes (training): dce, cse,"), "{report:?}");
    }

    #[test]
    fn help_lists_every_pass() {
        let help = passes_help();
        for pass in Pass::ALL {
            assert!(help.contains(&format!("  {:<16} {}", pass.name(), pass.description())), "{help}");
        }
        assert!(!help.ends_with('\n'));
    }
}
