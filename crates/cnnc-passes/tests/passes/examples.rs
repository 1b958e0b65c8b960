//! Every example through the whole pipeline: IR snapshots before and after, the execution
//! plans of inference and of a training step (checked by the independent checker and pinned by
//! snapshots), and the numbers the issue asks for.

use crate::common::*;
use cnnc_ir::{Loss, Optimizer, Sgd};
use cnnc_passes::memory::check;
use cnnc_passes::{Mode, PassOptions, TrainingOptions, optimize, optimize_training};

/// A training step: cross-entropy for classifiers, MSE otherwise; SGD with momentum.
fn training(g: &cnnc_ir::Graph) -> TrainingOptions {
    let shape = &g[g.outputs[0]].shape.0;
    let loss = if matches!(shape[..], [_] | [_, 1, 1]) { Loss::CrossEntropy } else { Loss::Mse };
    let sgd = Sgd { momentum: 0.9, weight_decay: 5e-4, nesterov: false };
    TrainingOptions { optimizer: Some(Optimizer::Sgd(sgd)), ..TrainingOptions::new(loss) }
}

#[test]
fn every_example_optimises_with_valid_plans() {
    let files = example_files();
    assert!(files.iter().any(|f| f == "resnet50.cnn"), "{files:?}");
    for file in &files {
        let g = lower_example(file, None);
        let stem = file.trim_end_matches(".cnn");
        let mut summary = String::new();
        let mut after = String::new();
        for mode in [Mode::Inference, Mode::Training] {
            let opt = match mode {
                Mode::Inference => optimize(&g, None, &PassOptions::all()),
                Mode::Training => optimize_training(&g, None, &PassOptions::all(), &training(&g)),
            }
            .unwrap_or_else(|e| panic!("{file} {mode:?}: {e}"));
            cnnc_ir::verify(opt.graph()).unwrap();
            check(opt.graph(), &opt.plan.memory).unwrap_or_else(|e| panic!("{file} {mode:?}: {e}"));
            assert!(opt.plan.workspace_bytes(1) <= opt.plan.unplanned_bytes(1), "{file}");
            summary += &format!(
                "{mode:?}: {} -> {} nodes, {} fusion groups, batch-1 workspace {} bytes of {} unplanned; skipped {:?}\n",
                opt.nodes_before,
                opt.graph().len(),
                opt.fused.len(),
                opt.plan.workspace_bytes(1),
                opt.plan.unplanned_bytes(1),
                opt.skipped.iter().map(|p| p.name()).collect::<Vec<_>>(),
            );
            let name = match mode {
                Mode::Inference => {
                    after = opt.print();
                    "inference"
                }
                Mode::Training => {
                    assert!(opt.skipped.contains(&cnnc_passes::Pass::FoldBn));
                    insta::assert_snapshot!(format!("{stem}_training_ir"), opt.print());
                    "training"
                }
            };
            insta::assert_snapshot!(format!("{stem}_plan_{name}"), opt.plan.render());
        }
        insta::assert_snapshot!(format!("{stem}_before"), cnnc_ir::print(&g));
        insta::assert_snapshot!(format!("{stem}_after"), format!("{summary}\n{after}"));
    }
}
