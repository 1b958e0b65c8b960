//! The stable text form of the IR, pinned by snapshot tests and shown by `cnnc --emit ir`.
//!
//! ```text
//! graph resnet18
//!   %0 = input -> [3, 224, 224]  // x
//!   %1 = conv(%0) {out: 64, k: 7, stride: 2, pad: 3, bias: false} -> [64, 112, 112]  // conv1
//!   ...
//!   return %67
//! ```
//!
//! One line per node, so a change to one node is a one-line diff. Attributes come in a fixed
//! order and are omitted when they equal their default, so a line reads like the source:
//! conv `stride` 1, `pad` 0, `dilation` 1, `ceil_mode` false, `groups` 1, `bias` true; pooling
//! `pad` 0, `dilation` 1, `ceil_mode` false, `include_pad` true; batch norm `eps` 1e-5 and
//! `momentum` 0.1; softplus `beta` 1 and `threshold` 20. A pool's `stride` is always printed,
//! because frameworks disagree on its default (1 or the kernel size). A symmetric pair prints as
//! one number, an asymmetric one as `(height, width)`. Floats use Rust's shortest round-trip
//! `{}` formatting, so the text is exact.
//!
//! Ops the optimiser makes print like their sources: `gemm {out: 256}`, `fused_conv` and
//! `fused_gemm` with their base's attributes then `residual: true` and `act: relu` (followed by
//! the activation's own attributes), `reorder {to: nChw16c}`, `concat_in_place`. A node that
//! absorbed source layers lists them after its name: `// layer1.0.conv3 <- layer1.0.bn3, ...`.

use crate::graph::{Graph, Node, NodeId};
use crate::op::{Activation, BatchNorm, Conv, FusedBase, Gemm, Lrn, Op, Pair, PoolKind, Window};
use crate::train::{Loss, Optimizer, PoolGeometry, SavedSide, TrainOp};
use std::fmt;

/// The text form of the whole graph, ending in a newline.
pub fn print(graph: &Graph) -> String {
    graph.to_string()
}

impl fmt::Display for Graph {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Names are escaped so that a stray newline cannot break the one-line-per-node rule.
        writeln!(f, "graph {}", self.name.escape_debug())?;
        for (id, node) in self.iter() {
            write_node(f, id, node)?;
        }
        write!(f, "  return")?;
        write_ids(f, " ", &self.outputs)?;
        writeln!(f)
    }
}

fn write_node(f: &mut fmt::Formatter<'_>, id: NodeId, node: &Node) -> fmt::Result {
    write!(f, "  {id} = {}", node.op.keyword())?;
    if !node.inputs.is_empty() {
        write!(f, "(")?;
        write_ids(f, "", &node.inputs)?;
        write!(f, ")")?;
    }
    write_attrs(f, &attrs(&node.op))?;
    write!(f, " -> {}", node.shape)?;
    if !node.name.is_empty() {
        write!(f, "  // {}", node.name.escape_debug())?;
    }
    for (i, layer) in node.absorbed.iter().enumerate() {
        write!(f, "{}{}", if i == 0 { " <- " } else { ", " }, layer.escape_debug())?;
    }
    writeln!(f)
}

/// `prefix` then the handles, comma separated; nothing at all for an empty list.
fn write_ids(f: &mut fmt::Formatter<'_>, prefix: &str, ids: &[NodeId]) -> fmt::Result {
    for (i, id) in ids.iter().enumerate() {
        write!(f, "{}{id}", if i == 0 { prefix } else { ", " })?;
    }
    Ok(())
}

/// ` {key: value, ...}`, or nothing when every attribute has its default.
fn write_attrs(f: &mut impl fmt::Write, attrs: &[(&'static str, String)]) -> fmt::Result {
    for (i, (key, value)) in attrs.iter().enumerate() {
        write!(f, "{}{key}: {value}", if i == 0 { " {" } else { ", " })?;
    }
    if !attrs.is_empty() {
        write!(f, "}}")?;
    }
    Ok(())
}

/// The op keyword and its non-default attributes, as on a printed line: `conv {out: 64, k: 3}`.
/// Other views of the graph (DOT, summaries) label nodes with it.
pub fn describe(op: &Op) -> String {
    let mut text = op.keyword().to_string();
    // Writing into a String cannot fail.
    write_attrs(&mut text, &attrs(op)).unwrap_or(());
    text
}

/// The op's attributes that differ from their defaults, in printing order, as `(key, value)`.
pub fn attrs(op: &Op) -> Vec<(&'static str, String)> {
    let mut out = Vec::new();
    match op {
        Op::Input | Op::Flatten | Op::Prelu | Op::Softmax | Op::Concat | Op::Add | Op::ConcatInPlace => {}
        Op::Gemm(gemm) => gemm_attrs(gemm, &mut out),
        Op::Fused { base, epilogue } => {
            match base {
                FusedBase::Conv(conv) => conv_attrs(conv, &mut out),
                FusedBase::Gemm(gemm) => gemm_attrs(gemm, &mut out),
            }
            if epilogue.residual {
                out.push(("residual", "true".into()));
            }
            if let Some(activation) = &epilogue.activation {
                out.push(("act", activation.keyword().into()));
                activation_attrs(activation, &mut out);
            }
        }
        Op::Reorder(layout) => out.push(("to", layout.name().into())),
        Op::Conv(conv) => conv_attrs(conv, &mut out),
        Op::Pool { kind, window } => {
            window_attrs(window, true, &mut out);
            kind_attrs(kind, &mut out);
        }
        Op::GlobalPool(kind) => kind_attrs(kind, &mut out),
        Op::AdaptivePool { kind, output } => {
            out.push(("output", pair(*output)));
            kind_attrs(kind, &mut out);
        }
        Op::Spp { kind, levels } => {
            // The keyword does not name the kind here, and no default is obvious.
            out.push(("kind", pool_kind_name(kind).into()));
            let levels: Vec<String> = levels.iter().map(usize::to_string).collect();
            out.push(("levels", format!("[{}]", levels.join(", "))));
            kind_attrs(kind, &mut out);
        }
        Op::Fc(fc) => {
            out.push(("out", fc.out_features.to_string()));
            bias_attr(fc.bias, &mut out);
        }
        Op::Activation(activation) => activation_attrs(activation, &mut out),
        Op::BatchNorm(bn) => bn_attrs(bn, &mut out),
        Op::Lrn(lrn) => lrn_attrs(lrn, &mut out),
        Op::Dropout { p } => out.push(("p", float(*p))),
        Op::Train(t) => train_attrs(t, &mut out),
    }
    out
}

fn train_attrs(op: &TrainOp, out: &mut Vec<(&'static str, String)>) {
    match op {
        TrainOp::Labels { classes } => out.push(("classes", classes.to_string())),
        TrainOp::Loss(loss) | TrainOp::LossGrad(loss) => loss_attrs(loss, out),
        TrainOp::BnStats | TrainOp::Mul | TrainOp::BiasGrad | TrainOp::PreluBackwardData => {}
        TrainOp::PreluBackwardWeight | TrainOp::SoftmaxBackward => {}
        TrainOp::BnNormalize(bn) => bn_attrs(bn, out),
        TrainOp::BnRunningUpdate { bn, spatial } => {
            bn_attrs(bn, out);
            out.push(("spatial", spatial.to_string()));
        }
        TrainOp::DropoutMask { p } => out.push(("p", float(*p))),
        TrainOp::PoolArgmax(geometry) => geometry_attrs(geometry, out),
        TrainOp::PoolBackward { kind, geometry, input } => {
            out.push(("kind", pool_kind_name(kind).into()));
            geometry_attrs(geometry, out);
            kind_attrs(kind, out);
            out.push(("input", dims(input)));
        }
        TrainOp::ConvBackwardData { conv, input, mask } => {
            conv_attrs(conv, out);
            out.push(("input", dims(input)));
            if let Some(mask) = mask {
                out.push(("mask", mask.keyword().into()));
            }
        }
        TrainOp::ConvBackwardWeight(conv) => conv_attrs(conv, out),
        TrainOp::GemmBackwardData { gemm, input } => {
            gemm_attrs(gemm, out);
            out.push(("input", input.to_string()));
        }
        TrainOp::GemmBackwardWeight(gemm) => gemm_attrs(gemm, out),
        TrainOp::ActivationBackward { activation, from } => {
            out.push(("act", activation.keyword().into()));
            activation_attrs(activation, out);
            if *from == SavedSide::Output {
                out.push(("from", "output".into()));
            }
        }
        TrainOp::BnBackwardData { bn, batch_stats } | TrainOp::BnGammaGrad { bn, batch_stats } => {
            if bn.eps != 1e-5 {
                out.push(("eps", float(bn.eps)));
            }
            if !batch_stats {
                out.push(("stats", "running".into()));
            }
        }
        TrainOp::LrnBackward(lrn) => lrn_attrs(lrn, out),
        TrainOp::Reshape(to) => out.push(("to", dims(to))),
        TrainOp::Slice { start, len } => {
            out.push(("start", start.to_string()));
            out.push(("len", len.to_string()));
        }
        TrainOp::Update(optimizer) => optimizer_attrs(optimizer, out),
    }
}

fn loss_attrs(loss: &Loss, out: &mut Vec<(&'static str, String)>) {
    out.push(("loss", loss.name().into()));
    match loss {
        Loss::CrossEntropy | Loss::Mse | Loss::L1 => {}
        Loss::Huber { delta } => out.push(("delta", float(*delta))),
        Loss::Hinge { margin, .. } => out.push(("margin", float(*margin))),
    }
}

fn geometry_attrs(geometry: &PoolGeometry, out: &mut Vec<(&'static str, String)>) {
    match geometry {
        PoolGeometry::Window(window) => window_attrs(window, true, out),
        PoolGeometry::Global => out.push(("global", "true".into())),
        PoolGeometry::Adaptive(output) => out.push(("output", pair(*output))),
        PoolGeometry::Pyramid(levels) => out.push(("levels", dims(levels))),
    }
}

fn optimizer_attrs(optimizer: &Optimizer, out: &mut Vec<(&'static str, String)>) {
    let mut push = |key, value: f64| out.push((key, float(value)));
    match optimizer {
        Optimizer::Sgd(sgd) => {
            push("momentum", sgd.momentum);
            push("weight_decay", sgd.weight_decay);
            if sgd.nesterov {
                out.push(("nesterov", "true".into()));
            }
        }
        Optimizer::Adam(adam) => {
            push("beta1", adam.beta1);
            push("beta2", adam.beta2);
            push("eps", adam.eps);
            push("weight_decay", adam.weight_decay);
        }
        Optimizer::RmsProp(rms) => {
            push("alpha", rms.alpha);
            push("eps", rms.eps);
            push("momentum", rms.momentum);
            push("weight_decay", rms.weight_decay);
        }
    }
}

/// `[2, 3, 4]`.
fn dims(values: &[usize]) -> String {
    let parts: Vec<String> = values.iter().map(usize::to_string).collect();
    format!("[{}]", parts.join(", "))
}

fn conv_attrs(conv: &Conv, out: &mut Vec<(&'static str, String)>) {
    out.push(("out", conv.out_channels.to_string()));
    window_attrs(&conv.window, false, out);
    if conv.groups != 1 {
        out.push(("groups", conv.groups.to_string()));
    }
    bias_attr(conv.bias, out);
}

fn gemm_attrs(gemm: &Gemm, out: &mut Vec<(&'static str, String)>) {
    out.push(("out", gemm.out.to_string()));
    bias_attr(gemm.bias, out);
}

/// `k`, `stride`, `pad`, `dilation`, `ceil_mode`; `stride` is kept even when 1 for pools.
fn window_attrs(window: &Window, always_stride: bool, out: &mut Vec<(&'static str, String)>) {
    out.push(("k", pair(window.kernel)));
    if always_stride || window.stride != [1, 1] {
        out.push(("stride", pair(window.stride)));
    }
    if window.pad != [0, 0] {
        out.push(("pad", pair(window.pad)));
    }
    if window.dilation != [1, 1] {
        out.push(("dilation", pair(window.dilation)));
    }
    if window.ceil_mode {
        out.push(("ceil_mode", "true".into()));
    }
}

/// Printed wherever the kind carries it (even global pooling, which has no padding), so two
/// different ops never print alike.
fn kind_attrs(kind: &PoolKind, out: &mut Vec<(&'static str, String)>) {
    match kind {
        PoolKind::Avg { include_pad: false } => out.push(("include_pad", "false".into())),
        PoolKind::Avg { include_pad: true } | PoolKind::Max | PoolKind::L2 => {}
    }
}

fn pool_kind_name(kind: &PoolKind) -> &'static str {
    match kind {
        PoolKind::Max => "max",
        PoolKind::Avg { .. } => "avg",
        PoolKind::L2 => "l2",
    }
}

fn bias_attr(bias: bool, out: &mut Vec<(&'static str, String)>) {
    if !bias {
        out.push(("bias", "false".into()));
    }
}

fn activation_attrs(activation: &Activation, out: &mut Vec<(&'static str, String)>) {
    match *activation {
        Activation::Relu | Activation::Selu | Activation::Sigmoid | Activation::Tanh | Activation::Softsign => {}
        Activation::LeakyRelu { slope } => out.push(("slope", float(slope))),
        Activation::Elu { alpha } => out.push(("alpha", float(alpha))),
        Activation::HardTanh { min, max } => {
            out.push(("min", float(min)));
            out.push(("max", float(max)));
        }
        Activation::Softplus { beta, threshold } => {
            if beta != 1.0 {
                out.push(("beta", float(beta)));
            }
            if threshold != 20.0 {
                out.push(("threshold", float(threshold)));
            }
        }
    }
}

fn bn_attrs(bn: &BatchNorm, out: &mut Vec<(&'static str, String)>) {
    if bn.eps != 1e-5 {
        out.push(("eps", float(bn.eps)));
    }
    if bn.momentum != 0.1 {
        out.push(("momentum", float(bn.momentum)));
    }
}

fn lrn_attrs(lrn: &Lrn, out: &mut Vec<(&'static str, String)>) {
    out.push(("size", lrn.size.to_string()));
    out.push(("alpha", float(lrn.alpha)));
    out.push(("beta", float(lrn.beta)));
    out.push(("k", float(lrn.k)));
    // Printed only when it is not the default, so that PyTorch-convention graphs read as before.
    if !lrn.alpha_over_size {
        out.push(("alpha_over_size", "false".to_string()));
    }
}

/// `3` for `[3, 3]`, `(3, 1)` for `[3, 1]` (height, width).
fn pair([h, w]: Pair) -> String {
    if h == w { h.to_string() } else { format!("({h}, {w})") }
}

/// Shortest text that parses back to the same f64 (never exponent notation).
fn float(x: f64) -> String {
    format!("{x}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::op::{Fc, Lrn};
    use crate::testutil::{add, conv, input, small_cnn, window};

    #[test]
    fn small_cnn_prints_one_line_per_node() {
        insta::assert_snapshot!(print(&small_cnn()), @r"
    graph small
      %0 = input -> [3, 32, 32]  // x
      %1 = conv(%0) {out: 16, k: 3, pad: 1, bias: false} -> [16, 32, 32]  // features.conv
      %2 = bn(%1) -> [16, 32, 32]  // features.bn
      %3 = relu(%2) -> [16, 32, 32]  // features.relu
      %4 = maxpool(%3) {k: 2, stride: 2} -> [16, 16, 16]  // features.pool
      %5 = flatten(%4) -> [4096]  // flatten
      %6 = fc(%5) {out: 10} -> [10]  // classifier
      return %6
    ");
    }

    /// A graph using every op with non-default attributes, to pin each attribute's spelling.
    fn zoo() -> Graph {
        let mut g = Graph::new("zoo");
        let x = input(&mut g, "x", &[8, 16, 16]);
        let mut w = window(3, 1, 1);
        w.kernel = [3, 1];
        w.dilation = [2, 1];
        w.pad = [2, 0];
        let c = add(&mut g, Op::Conv(Conv { out_channels: 8, window: w, groups: 4, bias: true }), &[x], "c");
        let sum = add(&mut g, Op::Add, &[x, c], "sum");
        let mut pw = window(3, 2, 1);
        pw.ceil_mode = true;
        let avg = PoolKind::Avg { include_pad: false };
        let p = add(&mut g, Op::Pool { kind: avg, window: pw }, &[sum], "p");
        let l2 = add(&mut g, Op::Pool { kind: PoolKind::L2, window: window(1, 1, 0) }, &[p], "l2");
        let lrn = Lrn { size: 5, alpha: 1e-4, beta: 0.75, k: 2.0, alpha_over_size: true };
        let n = add(&mut g, Op::Lrn(lrn), &[l2], "lrn");
        let bn = Op::BatchNorm(BatchNorm { eps: 1e-3, momentum: 0.1 });
        let b = add(&mut g, bn, &[n], "bn");
        let act = Op::Activation;
        let a1 = add(&mut g, act(Activation::LeakyRelu { slope: 0.01 }), &[b], "leaky");
        let a2 = add(&mut g, act(Activation::Elu { alpha: 1.0 }), &[a1], "elu");
        let a3 = add(&mut g, act(Activation::HardTanh { min: -1.0, max: 1.0 }), &[a2], "hardtanh");
        let a4 = add(&mut g, act(Activation::Softplus { beta: 1.0, threshold: 20.0 }), &[a3], "softplus");
        let a5 = add(&mut g, act(Activation::Softplus { beta: 2.0, threshold: 20.0 }), &[a4], "softplus2");
        let pr = add(&mut g, Op::Prelu, &[a5], "prelu");
        let cat = add(&mut g, Op::Concat, &[pr, p], "cat");
        let ad = add(&mut g, Op::AdaptivePool { kind: PoolKind::Max, output: [7, 5] }, &[cat], "adaptive");
        let gp = add(&mut g, Op::GlobalPool(PoolKind::Avg { include_pad: true }), &[ad], "gap");
        let spp = add(&mut g, Op::Spp { kind: PoolKind::Max, levels: vec![1, 2, 4] }, &[cat], "spp");
        let d = add(&mut g, Op::Dropout { p: 0.5 }, &[spp], "drop");
        let f = add(&mut g, Op::Fc(Fc { out_features: 10, bias: false }), &[d], "fc");
        let s = add(&mut g, Op::Softmax, &[f], "softmax");
        let flat = add(&mut g, Op::Flatten, &[gp], "flat");
        g.outputs = vec![s, flat];
        g
    }

    #[test]
    fn every_op_prints_its_non_default_attributes() {
        insta::assert_snapshot!(print(&zoo()), @r"
    graph zoo
      %0 = input -> [8, 16, 16]  // x
      %1 = conv(%0) {out: 8, k: (3, 1), pad: (2, 0), dilation: (2, 1), groups: 4} -> [8, 16, 16]  // c
      %2 = add(%0, %1) -> [8, 16, 16]  // sum
      %3 = avgpool(%2) {k: 3, stride: 2, pad: 1, ceil_mode: true, include_pad: false} -> [8, 9, 9]  // p
      %4 = l2pool(%3) {k: 1, stride: 1} -> [8, 9, 9]  // l2
      %5 = lrn(%4) {size: 5, alpha: 0.0001, beta: 0.75, k: 2} -> [8, 9, 9]  // lrn
      %6 = bn(%5) {eps: 0.001} -> [8, 9, 9]  // bn
      %7 = leaky_relu(%6) {slope: 0.01} -> [8, 9, 9]  // leaky
      %8 = elu(%7) {alpha: 1} -> [8, 9, 9]  // elu
      %9 = hardtanh(%8) {min: -1, max: 1} -> [8, 9, 9]  // hardtanh
      %10 = softplus(%9) -> [8, 9, 9]  // softplus
      %11 = softplus(%10) {beta: 2} -> [8, 9, 9]  // softplus2
      %12 = prelu(%11) -> [8, 9, 9]  // prelu
      %13 = concat(%12, %3) -> [16, 9, 9]  // cat
      %14 = adaptive_maxpool(%13) {output: (7, 5)} -> [16, 7, 5]  // adaptive
      %15 = global_avgpool(%14) -> [16, 1, 1]  // gap
      %16 = spp(%13) {kind: max, levels: [1, 2, 4]} -> [336]  // spp
      %17 = dropout(%16) {p: 0.5} -> [336]  // drop
      %18 = fc(%17) {out: 10, bias: false} -> [10]  // fc
      %19 = softmax(%18) -> [10]  // softmax
      %20 = flatten(%15) -> [16]  // flat
      return %19, %20
    ");
    }

    #[test]
    fn optimiser_ops_and_absorbed_layers_print() {
        use crate::op::{Epilogue, FusedBase, Gemm, Layout};
        let mut g = Graph::new("opt");
        let x = input(&mut g, "x", &[16, 8, 8]);
        let b = add(&mut g, Op::Reorder(Layout::Blocked16), &[x], "x.reorder");
        let c = Conv { out_channels: 16, window: window(3, 1, 1), groups: 1, bias: true };
        let epilogue = Epilogue { residual: true, activation: Some(Activation::LeakyRelu { slope: 0.1 }) };
        let f = add(&mut g, Op::Fused { base: FusedBase::Conv(c), epilogue }, &[b, b], "conv");
        g.node_mut(f).absorbed = vec!["bn".into(), "add".into(), "relu".into()];
        let m = add(&mut g, Op::Gemm(Gemm { out: 16, bias: false }), &[f], "proj");
        let e = Epilogue { residual: false, activation: Some(Activation::Relu) };
        let n =
            add(&mut g, Op::Fused { base: FusedBase::Gemm(Gemm { out: 16, bias: true }), epilogue: e }, &[m], "mlp");
        let cat = add(&mut g, Op::ConcatInPlace, &[n], "cat");
        let p = add(&mut g, Op::Reorder(Layout::Plain), &[cat], "cat.reorder");
        g.outputs = vec![p];
        insta::assert_snapshot!(print(&g), @r"
    graph opt
      %0 = input -> [16, 8, 8]  // x
      %1 = reorder(%0) {to: nChw16c} -> [16, 8, 8]  // x.reorder
      %2 = fused_conv(%1, %1) {out: 16, k: 3, pad: 1, residual: true, act: leaky_relu, slope: 0.1} -> [16, 8, 8]  // conv <- bn, add, relu
      %3 = gemm(%2) {out: 16, bias: false} -> [16, 8, 8]  // proj
      %4 = fused_gemm(%3) {out: 16, act: relu} -> [16, 8, 8]  // mlp
      %5 = concat_in_place(%4) -> [16, 8, 8]  // cat
      %6 = reorder(%5) {to: nchw} -> [16, 8, 8]  // cat.reorder
      return %6
    ");
    }

    #[test]
    fn defaults_are_omitted_and_pairs_collapse() {
        assert_eq!(describe(&conv(64, 3, 1, 0, true)), "conv {out: 64, k: 3}");
        assert_eq!(describe(&conv(64, 3, 2, 1, false)), "conv {out: 64, k: 3, stride: 2, pad: 1, bias: false}");
        let bn = Op::BatchNorm(BatchNorm { eps: 1e-5, momentum: 0.1 });
        assert_eq!(describe(&bn), "bn");
        assert_eq!(describe(&Op::Activation(Activation::Relu)), "relu");
        assert_eq!(pair([3, 1]), "(3, 1)");
        assert_eq!(pair([7, 7]), "7");
    }

    #[test]
    fn floats_round_trip_without_exponents() {
        for x in [0.01, 1e-5, 0.1 + 0.2, -1.0, 1e-300] {
            let text = float(x);
            assert!(!text.contains('e'), "{text}");
            assert_eq!(text.parse::<f64>(), Ok(x));
        }
        assert_eq!(float(20.0), "20");
    }

    #[test]
    fn names_cannot_break_lines() {
        let mut g = Graph::new("two\nlines");
        let x = input(&mut g, "x\ny", &[4]);
        g.outputs.push(x);
        assert_eq!(print(&g), "graph two\\nlines\n  %0 = input -> [4]  // x\\ny\n  return %0\n");
    }
}
