//! The `optimize` entry point: modes, pass selection, verification, weights and clusters.

use crate::common::*;
use cnnc_ir::{Graph, Op, Shape};
use cnnc_passes::{Mode, Pass, PassError, PassOptions, optimize, parse_passes};

fn small() -> Graph {
    let mut g = Graph::new("small");
    let x = input(&mut g, "x", &[3, 16, 16]);
    let c = add(&mut g, conv(16, 3, 1, 1, false), &[x], "conv");
    let b = add(&mut g, bn(), &[c], "bn");
    let r = add(&mut g, relu(), &[b], "relu");
    let f = add(&mut g, Op::Flatten, &[r], "flatten");
    let d = add(&mut g, Op::Dropout { p: 0.5 }, &[f], "drop");
    let y = add(&mut g, fc(10, true), &[d], "fc");
    g.outputs = vec![y];
    g
}

#[test]
fn inference_runs_everything_training_skips_what_changes_semantics() {
    let g = small();
    let opt = optimize(&g, None, &PassOptions::all()).unwrap();
    // x, fused_conv (conv <- bn, relu), flatten, gemm (the fc).
    assert_eq!(opt.graph().len(), 4, "{}", opt.print());
    assert_eq!(opt.fused, vec![vec!["conv".to_string(), "bn".to_string(), "relu".to_string()]]);
    assert!(opt.skipped.is_empty());
    let ran: Vec<(Pass, usize)> = opt.ran.iter().map(|r| (r.pass, r.rewrites)).collect();
    assert_eq!(
        ran,
        vec![
            (Pass::Dce, 0),
            (Pass::RemoveDropout, 1),
            (Pass::Cse, 0),
            (Pass::FoldBn, 1),
            (Pass::ToGemm, 1),
            (Pass::FuseEpilogue, 1),
            (Pass::ConcatInPlace, 0),
            (Pass::Layout, 0)
        ]
    );

    // Training: no folding, no dropout removal; the fc still becomes a gemm, and the relu
    // cannot fuse across the batch norm. The planned graph is the forward pass of training:
    // batch statistics with their running update, a dropout mask.
    let opt = optimize(&g, None, &PassOptions::all().with_mode(Mode::Training)).unwrap();
    assert_eq!(opt.skipped, vec![Pass::RemoveDropout, Pass::FoldBn]);
    assert!(opt.fused.is_empty());
    assert_eq!(opt.mode, Mode::Training);
    let ops: Vec<&str> = opt.graph().iter().map(|(_, n)| n.op.keyword()).collect();
    assert_eq!(
        ops,
        [
            "input",
            "conv",
            "bn_stats",
            "bn_normalize",
            "bn_running_update",
            "relu",
            "flatten",
            "dropout_mask",
            "mul",
            "gemm"
        ]
    );
    assert_eq!(opt.graph()[cnnc_ir::NodeId::from_index(9)].op, Op::Gemm(cnnc_ir::Gemm { out: 10, bias: true }));
}

#[test]
fn chosen_passes_run_in_pipeline_order() {
    let g = small();
    let options = PassOptions::all().with_passes(parse_passes("fold-bn,remove-dropout").unwrap());
    let opt = optimize(&g, None, &options).unwrap();
    assert_eq!(opt.ran.iter().map(|r| r.pass).collect::<Vec<_>>(), vec![Pass::RemoveDropout, Pass::FoldBn]);
    let opt = optimize(&g, None, &PassOptions::none()).unwrap();
    assert_eq!(opt.graph(), &g);
    assert!(opt.ran.is_empty());
    assert!(opt.plan.workspace_bytes(1) > 0);
}

#[test]
fn dead_inputs_are_cleaned_and_broken_inputs_rejected() {
    let mut g = small();
    add(&mut g, relu(), &[cnnc_ir::NodeId::from_index(1)], "orphan");
    assert!(cnnc_ir::verify(&g).is_err());
    let opt = optimize(&g, None, &PassOptions::all()).unwrap();
    assert_eq!(opt.ran[0].rewrites, 1);
    assert_eq!(opt.graph().len(), 4);

    let mut g = small();
    g.node_mut(cnnc_ir::NodeId::from_index(2)).shape = Shape(vec![3, 3, 3]);
    let e = optimize(&g, None, &PassOptions::all()).unwrap_err();
    assert!(matches!(e, PassError::InvalidInput { .. }), "{e}");
    assert!(e.to_string().starts_with("the graph to optimise does not verify: %2 (bn) stores shape [3, 3, 3]"), "{e}");
}

#[test]
fn weights_follow_the_graph_and_clusters_name_original_nodes() {
    let g = small();
    let weights = cnnc_runtime::init_params(&g, 3);
    let opt = optimize(&g, Some(&weights), &PassOptions::all()).unwrap();
    let new = opt.weights.as_ref().unwrap();
    cnnc_runtime::check_weights(opt.graph(), new).unwrap();
    assert!(new.contains_key("conv.bias") && !new.contains_key("bn.weight"));
    // The caller's map is untouched.
    assert!(weights.contains_key("bn.weight"));

    let clusters = opt.clusters();
    let ids = [1, 2, 3].map(cnnc_ir::NodeId::from_index).to_vec();
    assert_eq!(clusters, vec![("fused: conv".to_string(), ids)]);
    let dot = cnnc_ir::dot_with_clusters(&g, &clusters);
    assert!(dot.contains("subgraph cluster_0"), "{dot}");
    assert_eq!(
        opt.print().lines().nth(2),
        Some("  %1 = fused_conv(%0) {out: 16, k: 3, pad: 1, act: relu} -> [16, 16, 16]  // conv <- bn, relu")
    );
}

#[test]
fn resnet50_weights_fold_and_check() {
    let g = lower_example("resnet50.cnn", Some(vec![3, 64, 64]));
    let weights = cnnc_runtime::init_params(&g, 1);
    let opt = optimize(&g, Some(&weights), &PassOptions::all()).unwrap();
    cnnc_runtime::check_weights(opt.graph(), opt.weights.as_ref().unwrap()).unwrap();
    assert_eq!(opt.fused.len(), 53);
    // Every bottleneck's last conv absorbed its batch norm, the add and the relu.
    let last = opt.fused.iter().find(|f| f[0] == "layer3.5.conv3").unwrap();
    assert_eq!(last, &["layer3.5.conv3", "layer3.5.bn3", "layer3.5.add1", "layer3.5.relu3"]);
}
