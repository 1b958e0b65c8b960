//! Every example through the whole pipeline: IR snapshots before and after, valid memory
//! plans in both modes, and the numbers the issue asks for.

mod common;

use cnnc_passes::memory::{PlanOptions, plan};
use cnnc_passes::{Mode, PassOptions, optimize};
use common::*;

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
            let opt = optimize(&g, None, &PassOptions::all().with_mode(mode))
                .unwrap_or_else(|e| panic!("{file} {mode:?}: {e}"));
            cnnc_ir::verify(&opt.graph).unwrap();
            opt.plan.check(&opt.graph).unwrap_or_else(|e| panic!("{file} {mode:?}: {e}"));
            plan(&g, &PlanOptions::new(mode)).check(&g).unwrap_or_else(|e| panic!("{file} {mode:?} unoptimised: {e}"));
            assert!(opt.plan.workspace_bytes(1) <= opt.plan.unplanned_bytes(1), "{file}");
            summary += &format!(
                "{mode:?}: {} -> {} nodes, {} fusion groups, batch-1 workspace {} bytes of {} unplanned; skipped {:?}\n",
                opt.nodes_before,
                opt.graph.len(),
                opt.fused.len(),
                opt.plan.workspace_bytes(1),
                opt.plan.unplanned_bytes(1),
                opt.skipped.iter().map(|p| p.name()).collect::<Vec<_>>(),
            );
            if mode == Mode::Inference {
                after = opt.print();
            } else {
                assert!(opt.skipped.contains(&cnnc_passes::Pass::FoldBn));
            }
        }
        insta::assert_snapshot!(format!("{stem}_before"), cnnc_ir::print(&g));
        insta::assert_snapshot!(format!("{stem}_after"), format!("{summary}\n{after}"));
    }
}
