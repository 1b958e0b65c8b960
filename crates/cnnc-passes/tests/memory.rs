//! The memory planner on hand-built graphs, random graphs and the examples.

mod common;

use cnnc_ir::{Activation, Graph, NodeId, Op};
use cnnc_passes::memory::{Alias, PlanOptions, Value, plan};
use cnnc_passes::{MemoryPlan, Mode};
use cnnc_runtime::Rng;
use common::*;

fn checked(g: &Graph, options: PlanOptions) -> MemoryPlan {
    let p = plan(g, &options);
    if let Err(e) = p.check(g) {
        panic!("{e}\n{}\n{}", cnnc_ir::print(g), p.render(g));
    }
    p
}

/// `x -> conv -> relu -> conv -> relu -> conv`.
fn chain() -> Graph {
    let mut g = Graph::new("chain");
    let x = input(&mut g, "x", &[4, 8, 8]);
    let c1 = add(&mut g, conv(8, 3, 1, 1, true), &[x], "c1");
    let r1 = add(&mut g, relu(), &[c1], "r1");
    let c2 = add(&mut g, conv(8, 3, 1, 1, true), &[r1], "c2");
    let r2 = add(&mut g, relu(), &[c2], "r2");
    let c3 = add(&mut g, conv(8, 3, 1, 1, true), &[r2], "c3");
    g.outputs = vec![c3];
    g
}

fn id(i: usize) -> NodeId {
    NodeId::from_index(i)
}

#[test]
fn a_chain_ping_pongs_between_two_buffers_with_relus_in_place() {
    let g = chain();
    let p = checked(&g, PlanOptions::new(Mode::Inference));
    // Each map is 8 * 8 * 8 * 4 = 2048 bytes per item; five of them, two alive at once.
    assert_eq!(p.unplanned_bytes(1), 5 * 2048);
    assert_eq!(p.workspace_bytes(1), 2 * 2048);
    assert_eq!(p.workspace_bytes(3), 3 * 2 * 2048);
    assert_eq!(p.in_place(), vec![(id(2), id(1)), (id(4), id(3))]);
    insta::assert_snapshot!("plan_chain", p.render(&g));

    let p = checked(&g, PlanOptions::no_in_place(Mode::Inference));
    assert!(p.in_place().is_empty());
    assert_eq!(p.workspace_bytes(1), 2 * 2048);
}

#[test]
fn training_keeps_what_the_backward_pass_reads() {
    let g = chain();
    let p = checked(&g, PlanOptions::new(Mode::Training));
    // Relus save their outputs, convs their operands: r1 and r2 stay alive into the backward
    // pass, c1 and c2 are overwritten by the relus (nothing reads them backwards).
    assert_eq!(p.in_place(), vec![(id(2), id(1)), (id(4), id(3))]);
    let r1 = p.placement(Value::Output(id(2))).unwrap();
    // Alive until the relu's own backward step (its conv reader's backward comes earlier).
    assert_eq!((r1.first, r1.last), (2, 2 * 6 - 1 - 2));
    assert_eq!(p.steps, 12);
    // Five outputs and five gradients of 2048 bytes.
    assert_eq!(p.unplanned_bytes(1), 10 * 2048);
    insta::assert_snapshot!("plan_chain_training", p.render(&g));

    // An activation that saves its operand cannot overwrite it in training.
    let mut g = Graph::new("leaky");
    let x = input(&mut g, "x", &[4, 8, 8]);
    let c = add(&mut g, conv(4, 3, 1, 1, true), &[x], "c");
    let l = add(&mut g, Op::Activation(Activation::LeakyRelu { slope: 0.1 }), &[c], "l");
    let c2 = add(&mut g, conv(4, 3, 1, 1, true), &[l], "c2");
    g.outputs = vec![c2];
    assert!(checked(&g, PlanOptions::new(Mode::Training)).in_place().is_empty());
    assert_eq!(checked(&g, PlanOptions::new(Mode::Inference)).in_place(), vec![(l, c)]);
}

#[test]
fn residual_add_and_relu_run_in_place() {
    let mut g = Graph::new("res");
    let x = input(&mut g, "x", &[8, 8, 8]);
    let c0 = add(&mut g, conv(8, 3, 1, 1, true), &[x], "c0");
    let c1 = add(&mut g, conv(8, 3, 1, 1, true), &[c0], "c1");
    let r1 = add(&mut g, relu(), &[c1], "r1");
    let c2 = add(&mut g, conv(8, 3, 1, 1, true), &[r1], "c2");
    let s = add(&mut g, Op::Add, &[c2, c0], "add");
    let r = add(&mut g, relu(), &[s], "relu");
    g.outputs = vec![r];
    let p = checked(&g, PlanOptions::new(Mode::Inference));
    assert_eq!(p.in_place(), vec![(r1, c1), (s, c2), (r, s)]);
    // c0 (the shortcut) and the branch: three maps at most.
    assert_eq!(p.workspace_bytes(1), 3 * 2048);
}

#[test]
fn values_that_are_read_later_or_returned_are_not_overwritten() {
    let mut g = Graph::new("keep");
    let x = input(&mut g, "x", &[8, 8, 8]);
    let r0 = add(&mut g, relu(), &[x], "r0"); // over a model input: never
    let c = add(&mut g, conv(8, 1, 1, 0, true), &[r0], "c");
    let r1 = add(&mut g, relu(), &[c], "r1"); // c read again below
    let s = add(&mut g, Op::Add, &[r1, c], "s"); // both operands die here: one is reused
    let r2 = add(&mut g, relu(), &[s], "r2"); // s is a model output
    g.outputs = vec![r2, s];
    let p = checked(&g, PlanOptions::new(Mode::Inference));
    assert_eq!(p.in_place(), vec![(s, r1)]);
}

/// An Inception-like module: three branches concatenated.
fn inception() -> Graph {
    let mut g = Graph::new("inception");
    let x = input(&mut g, "x", &[16, 8, 8]);
    let stem = add(&mut g, conv(16, 3, 1, 1, true), &[x], "stem");
    let a = add(&mut g, conv(8, 1, 1, 0, true), &[stem], "b1.conv");
    let a = add(&mut g, relu(), &[a], "b1.relu");
    let b = add(&mut g, conv(4, 1, 1, 0, true), &[stem], "b2.reduce");
    let b = add(&mut g, relu(), &[b], "b2.relu1");
    let b = add(&mut g, conv(8, 3, 1, 1, true), &[b], "b2.conv");
    let b = add(&mut g, relu(), &[b], "b2.relu2");
    let c = add(&mut g, maxpool(3, 1, 1), &[stem], "b3.pool");
    let c = add(&mut g, conv(4, 1, 1, 0, true), &[c], "b3.proj");
    let c = add(&mut g, relu(), &[c], "b3.relu");
    let cat = add(&mut g, Op::ConcatInPlace, &[a, b, c], "cat");
    let y = add(&mut g, maxpool(2, 2, 0), &[cat], "pool");
    g.outputs = vec![y];
    g
}

#[test]
fn concat_operands_are_written_into_their_slices() {
    let g = inception();
    let p = checked(&g, PlanOptions::new(Mode::Inference));
    let cat = id(11);
    // Each branch's last conv writes its slice; the relu after it runs in place there.
    assert_eq!(p.concat_slices(), vec![(id(2), cat), (id(6), cat), (id(9), cat)]);
    assert_eq!(p.in_place(), vec![(id(3), id(2)), (id(5), id(4)), (id(7), id(6)), (id(10), id(9))]);
    let slice = |i| p.placement(Value::Output(id(i))).unwrap().channel_offset;
    assert_eq!([slice(2), slice(3), slice(6), slice(7), slice(9), slice(10)], [0, 0, 8, 8, 16, 16]);
    let concat_buffer = p.placement(Value::Output(cat)).unwrap().buffer;
    for i in [2, 3, 6, 7, 9, 10] {
        assert_eq!(p.placement(Value::Output(id(i))).unwrap().buffer, concat_buffer);
    }
    insta::assert_snapshot!("plan_inception", p.render(&g));
    let mut copying = g.clone();
    copying.node_mut(cat).op = Op::Concat;
    let plain = checked(&copying, PlanOptions::new(Mode::Inference));
    assert!(plain.concat_slices().is_empty());
    // Slices remove the copy; they need not lower the peak (the concat's buffer is alive from
    // its first operand on), and here they do not.
    assert_eq!((p.workspace_bytes(1), plain.workspace_bytes(1)), (13312, 13312));

    let t = checked(&g, PlanOptions::new(Mode::Training));
    // Relus save their outputs: the slices stay, the convs are still overwritten in place.
    assert_eq!(t.concat_slices().len(), 3);
}

#[test]
fn nested_concats_nest_their_slices() {
    let mut g = Graph::new("cat");
    let x = input(&mut g, "x", &[4, 8, 8]);
    let a = add(&mut g, conv(4, 1, 1, 0, true), &[x], "a");
    let b = add(&mut g, conv(4, 1, 1, 0, true), &[x], "b");
    let c = add(&mut g, conv(4, 1, 1, 0, true), &[x], "c");
    let k1 = add(&mut g, Op::ConcatInPlace, &[a, b], "k1");
    let r = add(&mut g, relu(), &[c], "r");
    let k2 = add(&mut g, Op::ConcatInPlace, &[r, k1], "k2");
    g.outputs = vec![k2];
    cnnc_ir::verify(&g).unwrap();
    let p = checked(&g, PlanOptions::new(Mode::Inference));
    assert_eq!(p.concat_slices(), vec![(a, k1), (b, k1), (c, k2), (k1, k2)]);
    // k1 sits after r's 4 channels, and b after a inside k1.
    let offset = |v| p.placement(Value::Output(v)).unwrap().channel_offset;
    assert_eq!([offset(c), offset(r), offset(k1), offset(a), offset(b)], [0, 0, 4, 4, 8]);
    // One buffer for everything: 12 channels of 8x8 floats.
    assert_eq!(p.workspace_bytes(1), 12 * 64 * 4);
}

#[test]
fn flatten_is_a_view() {
    let mut g = Graph::new("flat");
    let x = input(&mut g, "x", &[4, 4, 4]);
    let c = add(&mut g, conv(4, 1, 1, 0, true), &[x], "c");
    let f = add(&mut g, Op::Flatten, &[c], "f");
    let r = add(&mut g, relu(), &[f], "r");
    let y = add(&mut g, fc(3, true), &[r], "fc");
    g.outputs = vec![y];
    let p = checked(&g, PlanOptions::new(Mode::Inference));
    assert_eq!(p.placement(Value::Output(f)).unwrap().alias, Alias::View(Value::Output(c)));
    assert_eq!(p.in_place(), vec![(r, f)]);
}

#[test]
fn the_checker_catches_overlaps() {
    let g = chain();
    let mut p = plan(&g, &PlanOptions::new(Mode::Inference));
    // Put c2's buffer on top of r1's, which c2 reads.
    let r1 = p.placement(Value::Output(id(2))).unwrap().buffer;
    let c2 = p.placement(Value::Output(id(3))).unwrap().buffer;
    p.buffers[c2].offset = p.buffers[r1].offset;
    assert_eq!(p.check(&g).unwrap_err(), "%3 is written at step 3 over %2, which is alive in steps 2..=3");
}

/// A random DAG of convs, relus, batch norms, pools, adds and concats over `[C, 6, 6]` maps.
fn random_graph(seed: u64) -> Graph {
    let mut rng = Rng::seed_from_u64(seed);
    let mut pick = |n: usize| (rng.next_u64() % n as u64) as usize;
    let mut g = Graph::new(format!("random{seed}"));
    let mut nodes = vec![input(&mut g, "x", &[4, 6, 6])];
    let count = 6 + pick(20);
    for k in 0..count {
        let a = nodes[pick(nodes.len())];
        let name = format!("n{k}");
        let channels = g[a].shape.channels();
        let node = match pick(7) {
            0 => add(&mut g, conv(4 * (1 + pick(2)), 3, 1, 1, true), &[a], &name),
            1 => add(&mut g, relu(), &[a], &name),
            2 => add(&mut g, bn(), &[a], &name),
            3 => add(&mut g, maxpool(3, 1, 1), &[a], &name),
            4 => {
                let same: Vec<NodeId> = nodes.iter().copied().filter(|&n| g[n].shape.channels() == channels).collect();
                let b = same[pick(same.len())];
                add(&mut g, Op::Add, &[a, b], &name)
            }
            5 => {
                let b = nodes[pick(nodes.len())];
                add(&mut g, Op::Concat, &[a, b], &name)
            }
            _ => add(&mut g, Op::Activation(Activation::Sigmoid), &[a], &name),
        };
        nodes.push(node);
    }
    // Every node without users is an output, plus the odd extra one.
    let users = g.users();
    g.outputs = g.ids().filter(|i| i.index() > 0 && users[i.index()].is_empty()).collect();
    if pick(2) == 0 {
        g.outputs.push(nodes[1 + pick(nodes.len() - 1)]);
    }
    g
}

#[test]
fn random_graphs_get_valid_plans() {
    for seed in 0..300 {
        let g = random_graph(seed);
        cnnc_ir::verify(&g).unwrap();
        for mode in [Mode::Inference, Mode::Training] {
            for options in [PlanOptions::new(mode), PlanOptions::no_in_place(mode)] {
                let p = checked(&g, options);
                assert!(p.workspace_bytes(1) <= p.unplanned_bytes(1) + 64 * p.values.len() as u64);
            }
        }
    }
}

#[test]
fn resnet50_needs_less_than_half_of_the_unplanned_memory() {
    let g = lower_example("resnet50.cnn", None);
    for mode in [Mode::Inference, Mode::Training] {
        let before = checked(&g, PlanOptions::new(mode));
        let opt = optimize_all(&g, mode);
        let after = checked(&opt.graph, PlanOptions::new(mode));
        assert_eq!(after, opt.plan);
        eprintln!(
            "resnet50 {mode:?}: {} -> {} nodes; unoptimised graph: workspace {} of {} bytes; optimised: workspace {} of {} bytes",
            g.len(),
            opt.graph.len(),
            before.workspace_bytes(1),
            before.unplanned_bytes(1),
            after.workspace_bytes(1),
            after.unplanned_bytes(1)
        );
        assert!(2 * after.workspace_bytes(1) < after.unplanned_bytes(1));
        assert!(2 * before.workspace_bytes(1) < before.unplanned_bytes(1));
    }
}

#[test]
fn a_fused_node_never_overwrites_what_its_base_reads() {
    use cnnc_ir::{Epilogue, FusedBase};
    // `conv(x) + x` fused: the conv reads a neighbourhood of x, so x cannot be its output's
    // buffer even though x dies there; a distinct residual operand can.
    let mut g = Graph::new("self_residual");
    let x = input(&mut g, "x", &[8, 6, 6]);
    let a = add(&mut g, conv(8, 3, 1, 1, true), &[x], "a");
    let base = FusedBase::Conv(cnnc_ir::Conv { out_channels: 8, window: window(3, 1, 1), groups: 1, bias: true });
    let epilogue = Epilogue { residual: true, activation: Some(Activation::Relu) };
    let f = add(&mut g, Op::Fused { base, epilogue }, &[a, a], "f");
    let b = add(&mut g, conv(8, 3, 1, 1, true), &[f], "b");
    let h = add(&mut g, Op::Fused { base, epilogue }, &[f, b], "h");
    g.outputs = vec![h];
    let p = checked(&g, PlanOptions::new(Mode::Inference));
    assert_eq!(p.in_place(), vec![(h, b)]);
}
