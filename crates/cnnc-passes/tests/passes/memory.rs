//! The memory planner on hand-built graphs, their training graphs, random graphs and the
//! examples.

use crate::common::*;
use cnnc_ir::plan::{Alias, Plan};
use cnnc_ir::{Activation, Graph, NodeId, Op};
use cnnc_passes::Mode;
use cnnc_passes::memory::check;
use cnnc_runtime::Rng;

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
    let p = plan_of(&g, true);
    // Each map is 8 * 8 * 8 * 4 = 2048 bytes per image; five of them, two alive at once.
    assert_eq!(p.unplanned_bytes(1), 5 * 2048);
    assert_eq!(p.workspace_bytes(1), 2 * 2048);
    assert_eq!(p.workspace_bytes(3), 3 * 2 * 2048);
    assert_eq!(p.memory.in_place(), vec![(id(2), id(1)), (id(4), id(3))]);
    insta::assert_snapshot!("plan_chain", p.render());

    let p = plan_of(&g, false);
    assert!(p.memory.in_place().is_empty());
    assert_eq!(p.workspace_bytes(1), 2 * 2048);
}

#[test]
fn training_graphs_keep_what_the_backward_pass_reads() {
    let t = mse_training(&chain());
    let p = plan_of(&t, true);
    // The relus' backward reads their outputs, the convs' weight gradients their operands:
    // r1 and r2 stay alive into the backward pass, while c1 and c2 are still overwritten by
    // the relus (nothing reads them backwards).
    let r1 = p.memory.place(id(2)).unwrap();
    let reader = t.iter().filter(|(_, n)| n.inputs.contains(&id(2))).map(|(i, _)| i.index()).max().unwrap();
    assert_eq!((r1.first, r1.last), (2, reader));
    assert!(r1.last > 6, "r1 lives into the backward pass");
    assert!(p.memory.in_place().contains(&(id(2), id(1))) && p.memory.in_place().contains(&(id(4), id(3))));
    // Parameter gradients are whole-batch values: a region of their own, whatever the batch.
    assert!(p.memory.whole_batch_bytes >= 3 * (8 * 4 * 9 + 8) * 4);
    assert_eq!(p.workspace_bytes(2) - p.workspace_bytes(1), p.memory.per_image_bytes);
    insta::assert_snapshot!("plan_chain_training", format!("{}\n{}", cnnc_ir::print(&t), p.render()));

    // An activation whose backward reads its operand cannot overwrite it in training.
    let mut g = Graph::new("leaky");
    let x = input(&mut g, "x", &[4, 8, 8]);
    let c = add(&mut g, conv(4, 3, 1, 1, true), &[x], "c");
    let l = add(&mut g, Op::Activation(Activation::LeakyRelu { slope: 0.1 }), &[c], "l");
    let c2 = add(&mut g, conv(4, 3, 1, 1, true), &[l], "c2");
    g.outputs = vec![c2];
    assert!(!plan_of(&mse_training(&g), true).memory.in_place().contains(&(l, c)));
    assert_eq!(plan_of(&g, true).memory.in_place(), vec![(l, c)]);
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
    let p = plan_of(&g, true);
    assert_eq!(p.memory.in_place(), vec![(r1, c1), (s, c2), (r, s)]);
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
    assert_eq!(plan_of(&g, true).memory.in_place(), vec![(s, r1)]);
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
    let p = plan_of(&g, true);
    let cat = id(11);
    // Each branch's last conv writes its slice; the relu after it runs in place there.
    assert_eq!(p.memory.slices(), vec![(id(2), cat), (id(6), cat), (id(9), cat)]);
    assert_eq!(p.memory.in_place(), vec![(id(3), id(2)), (id(5), id(4)), (id(7), id(6)), (id(10), id(9))]);
    // Slices start at channels 0, 8 and 16 of 8x8 floats, with the concat's batch stride.
    let offset = |i| p.memory.place(id(i)).unwrap().image_offset;
    let channel = 8 * 8 * 4;
    assert_eq!(
        [offset(2), offset(3), offset(6), offset(7), offset(9), offset(10)],
        [0, 0, 8, 8, 16, 16].map(|c| c * channel)
    );
    let concat = p.memory.place(cat).unwrap();
    for i in [2, 3, 6, 7, 9, 10] {
        let slice = p.memory.place(id(i)).unwrap();
        assert_eq!((slice.buffer, slice.batch_stride), (concat.buffer, concat.batch_stride));
        assert!(slice.bytes < slice.batch_stride);
    }
    // Image 1 of the middle slice: one whole concat image further on.
    let (at0, at1) = (p.image_offset(id(6), 2, 0).unwrap(), p.image_offset(id(6), 2, 1).unwrap());
    assert_eq!(at1 - at0, 20 * channel);
    insta::assert_snapshot!("plan_inception", p.render());
    let mut copying = g.clone();
    copying.node_mut(cat).op = Op::Concat;
    let plain = plan_of(&copying, true);
    assert!(plain.memory.slices().is_empty());
    // Slices remove the copy; they need not lower the peak (the concat's buffer is alive from
    // its first operand on), and here they do not.
    assert_eq!((p.workspace_bytes(1), plain.workspace_bytes(1)), (13312, 13312));
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
    let p = plan_of(&g, true);
    assert_eq!(p.memory.slices(), vec![(a, k1), (b, k1), (c, k2), (k1, k2)]);
    // k1 sits after r's 4 channels, and b after a inside k1.
    let channel = 8 * 8 * 4;
    let offset = |v| p.memory.place(v).unwrap().image_offset / channel;
    assert_eq!([offset(c), offset(r), offset(k1), offset(a), offset(b)], [0, 0, 4, 4, 8]);
    // One buffer for everything: 12 channels of 8x8 floats.
    assert_eq!(p.workspace_bytes(1), 12 * channel);
}

#[test]
fn flatten_reshape_and_slices_are_views() {
    let mut g = Graph::new("flat");
    let x = input(&mut g, "x", &[4, 4, 4]);
    let c = add(&mut g, conv(4, 1, 1, 0, true), &[x], "c");
    let f = add(&mut g, Op::Flatten, &[c], "f");
    let r = add(&mut g, relu(), &[f], "r");
    let y = add(&mut g, fc(3, true), &[r], "fc");
    g.outputs = vec![y];
    let p = plan_of(&g, true);
    assert_eq!(p.memory.place(f).unwrap().alias, Alias::View(c));
    assert_eq!(p.memory.in_place(), vec![(r, f)]);
    // In the training graph, the flatten's backward (a reshape) and the concat's backward
    // (channel slices of the incoming gradient) move no data either.
    let mut g = Graph::new("cat");
    let x = input(&mut g, "x", &[4, 4, 4]);
    let a = add(&mut g, conv(4, 1, 1, 0, true), &[x], "a");
    let b = add(&mut g, conv(4, 1, 1, 0, true), &[x], "b");
    let k = add(&mut g, Op::Concat, &[a, b], "k");
    let f = add(&mut g, Op::Flatten, &[k], "f");
    let y = add(&mut g, fc(3, true), &[f], "fc");
    g.outputs = vec![y];
    let t = mse_training(&g);
    let p = plan_of(&t, true);
    let views: Vec<(&str, &str)> =
        p.memory.views().into_iter().map(|(v, of)| (t[v].op.keyword(), t[of].op.keyword())).collect();
    assert_eq!(
        views,
        [("flatten", "concat"), ("reshape", "gemm_backward_data"), ("slice", "reshape"), ("slice", "reshape")]
    );
    let second = p.memory.views()[3].0;
    assert_eq!(p.memory.place(second).unwrap().image_offset, 4 * 16 * 4);
}

#[test]
fn the_checker_catches_overlaps() {
    let g = chain();
    let mut p: Plan = plan_of(&g, true);
    // Put c2's buffer on top of r1's, which c2 reads.
    let r1 = p.memory.place(id(2)).unwrap().buffer;
    let c2 = p.memory.place(id(3)).unwrap().buffer;
    p.memory.buffers[c2].offset = p.memory.buffers[r1].offset;
    assert_eq!(
        check(&p.graph, &p.memory).unwrap_err(),
        "%3 is written at step 3 over %2, which is alive in steps 2..=3"
    );
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
        let t = cnnc_passes::training_graph(
            &g,
            &cnnc_passes::TrainingOptions {
                objective: cnnc_passes::Objective::OutputGradients,
                ..cnnc_passes::TrainingOptions::new(cnnc_ir::Loss::Mse)
            },
        )
        .unwrap()
        .graph;
        for graph in [&g, &t] {
            for in_place in [true, false] {
                let p = plan_of(graph, in_place);
                let buffers = p.memory.buffers.len() as u64;
                assert!(p.workspace_bytes(1) <= p.unplanned_bytes(1) + 64 * buffers);
            }
        }
    }
}

#[test]
fn large_graphs_are_planned_best_fit_in_time_order() {
    // More buffers than the greedy search takes: a chain of convolutions (no in-place
    // writes), planned by the linear-logarithmic allocator, still reuses two buffers.
    let mut g = Graph::new("deep");
    let mut h = input(&mut g, "x", &[4, 2, 2]);
    for k in 0..(cnnc_passes::memory::GREEDY_LIMIT + 10) {
        h = add(&mut g, conv(4, 1, 1, 0, true), &[h], &format!("c{k}"));
    }
    g.outputs = vec![h];
    let p = plan_of(&g, true);
    assert!(p.memory.buffers.len() > cnnc_passes::memory::GREEDY_LIMIT);
    assert_eq!(p.workspace_bytes(1), 2 * 64);
}

#[test]
fn resnet50_needs_less_than_half_of_the_unplanned_memory() {
    let g = lower_example("resnet50.cnn", None);
    for mode in [Mode::Inference, Mode::Training] {
        let opt = match mode {
            Mode::Inference => optimize_all(&g, mode),
            Mode::Training => {
                let sgd = cnnc_ir::Sgd { momentum: 0.9, weight_decay: 1e-4, nesterov: false };
                let training = cnnc_passes::TrainingOptions {
                    optimizer: Some(cnnc_ir::Optimizer::Sgd(sgd)),
                    ..cnnc_passes::TrainingOptions::new(cnnc_ir::Loss::CrossEntropy)
                };
                cnnc_passes::optimize_training(&g, None, &cnnc_passes::PassOptions::all(), &training).unwrap()
            }
        };
        check(opt.graph(), &opt.plan.memory).unwrap();
        eprintln!(
            "resnet50 {mode:?}: {} -> {} nodes; workspace {} of {} bytes per image, {} of {} whole-batch",
            g.len(),
            opt.graph().len(),
            opt.plan.memory.per_image_bytes,
            opt.plan.memory.unplanned_per_image,
            opt.plan.memory.whole_batch_bytes,
            opt.plan.memory.unplanned_whole_batch,
        );
        assert!(2 * opt.plan.workspace_bytes(1) < opt.plan.unplanned_bytes(1));
        let b = opt.memory_breakdown(1);
        assert_eq!(b.forward + b.backward + b.gradients, opt.plan.unplanned_bytes(1));
        eprintln!("resnet50 {mode:?} at batch 1: {b:?}");
        match mode {
            Mode::Inference => assert_eq!((b.backward, b.gradients, b.optimizer_state), (0, 0, 0)),
            Mode::Training => {
                // torchvision's parameters and buffers as f32 (packing pads none of them),
                // and SGD's momentum: one buffer per trainable parameter.
                assert_eq!(b.parameters, (25_557_032 + 53_120) * 4);
                assert_eq!(b.optimizer_state, 25_557_032 * 4);
            }
        }
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
    assert_eq!(plan_of(&g, true).memory.in_place(), vec![(h, b)]);
}

/// `x -> conv -> relu -> maxpool -> conv -> flatten -> fc` on 16x16 maps.
fn conv_net() -> Graph {
    let mut g = Graph::new("net");
    let x = input(&mut g, "x", &[3, 16, 16]);
    let c1 = add(&mut g, conv(16, 3, 1, 1, true), &[x], "c1");
    let r1 = add(&mut g, relu(), &[c1], "r1");
    let p1 = add(&mut g, maxpool(2, 2, 0), &[r1], "p1");
    let c2 = add(&mut g, conv(16, 3, 1, 1, true), &[p1], "c2");
    let f = add(&mut g, Op::Flatten, &[c2], "f");
    let y = add(&mut g, fc(10, true), &[f], "y");
    g.outputs = vec![y];
    g
}

#[test]
fn the_depth_first_prefix_ends_where_images_meet_or_maps_are_small() {
    use cnnc_ir::depth::{depth_first_prefix, image_buffers};
    let g = conv_net();
    let p = plan_of(&g, true);
    // conv 16x16x16 floats = 16 KiB an image; flatten and fc are never depth first.
    let flatten = g.ids().position(|i| g[i].op == Op::Flatten).unwrap();
    assert_eq!(depth_first_prefix(&p, 4, 0), flatten);
    assert_eq!(depth_first_prefix(&p, 1, 0), 0, "batch 1");
    assert_eq!(depth_first_prefix(&p, 4, u64::MAX), 0, "never");
    // Just under c1's bytes at batch 4 (3 + 16 channels of 16x16 floats): c1, the relu (16 +
    // 16 channels) and the pool (16 channels of 16x16 and of 8x8) pass it, c2 (two of 8x8)
    // does not, so the prefix ends after the pool, with x, c1 and the relu.
    let c1_bytes = 4 * 4 * (3 + 16) * 256;
    assert_eq!(depth_first_prefix(&p, 4, c1_bytes - 1), 4);
    assert_eq!(depth_first_prefix(&p, 4, 4 * 4 * (16 * 256 + 16 * 64)), 3);
    let training = plan_of(&mse_training(&g), true);
    assert_eq!(depth_first_prefix(&training, 4, 0), 0, "training");
    // The prefix's own buffers: none holds a value alive past it; together they fit one image.
    let prefix = depth_first_prefix(&p, 4, 0);
    let (local, bytes) = image_buffers(&p, prefix);
    assert!(!local.is_empty());
    for (id, _) in p.graph.iter() {
        if let Some(place) = p.memory.place(id)
            && local.contains(&place.buffer)
        {
            assert!(place.last < prefix, "{id} outlives the prefix");
            let at = p.image_offset(id, 1, 0).unwrap() - p.memory.whole_batch_bytes;
            assert!(at + place.bytes <= bytes);
        }
    }
    assert!(bytes <= p.workspace_bytes(1));
}
