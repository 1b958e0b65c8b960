//! Physical layouts of activations and weights, derived from the graph rather than stored.
//!
//! Shapes stay logical (`[C, H, W]`). Model inputs are plain (`nchw`); a `reorder` produces
//! the layout it names; every other op either follows its operands (which must agree), needs
//! plain operands, or reduces its operands (of any one layout) to a whole-batch value
//! ([`LayoutRule`]). Layouts concern batched values only: whole-batch values (parameter
//! gradients, batch statistics, the loss) and effects are plain and constrain nothing. A
//! blocked value whose channel count is not a multiple of 16 is stored padded to a whole block
//! ([`stored_elements`]).
//!
//! Convolutions and matrix products reading blocked data use blocked weights
//! ([`weight_layout`]); the weights as stored in a checkpoint stay OIHW, and the execution
//! plan packs them once at load (`cnnc_ir::plan::WeightTransform::Pack`). [`WeightLayout::offset`]
//! defines each packed layout, element by element.

use crate::facts::{ValueKind, value_kind};
use crate::graph::{Graph, NodeId};
use crate::op::{FusedBase, Layout, Op};
use crate::shape::Shape;
use crate::train::TrainOp;

/// How an op treats layouts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LayoutRule {
    /// Model inputs: plain.
    Source,
    /// Produces the given layout from an operand of any layout.
    Converts(Layout),
    /// Works in either layout; its batched operands must agree and its output has theirs.
    Follows,
    /// Needs plain operands; produces plain output.
    PlainOnly,
    /// Reads batched operands of any one layout; its value is whole-batch (plain) or none.
    Reduces,
}

/// The op's rule. `operand` is its first operand's shape (matrix products follow on maps,
/// need plain vectors).
pub fn rule(op: &Op, operand: Option<&Shape>) -> LayoutRule {
    let on_map = operand.is_some_and(|s| s.rank() == 3);
    let gemm_rule = if on_map { LayoutRule::Follows } else { LayoutRule::PlainOnly };
    match op {
        Op::Input => LayoutRule::Source,
        Op::Reorder(to) => LayoutRule::Converts(*to),
        Op::Conv(_)
        | Op::Fused { base: FusedBase::Conv(_), .. }
        | Op::Pool { .. }
        | Op::GlobalPool(_)
        | Op::AdaptivePool { .. }
        | Op::Activation(_)
        | Op::Prelu
        | Op::BatchNorm(_)
        | Op::Lrn(_)
        | Op::Dropout { .. }
        | Op::Concat
        | Op::ConcatInPlace
        | Op::Add => LayoutRule::Follows,
        Op::Gemm(_) | Op::Fused { base: FusedBase::Gemm(_), .. } => gemm_rule,
        Op::Flatten | Op::Fc(_) | Op::Softmax | Op::Spp { .. } => LayoutRule::PlainOnly,
        Op::Train(t) => match t {
            TrainOp::Labels { .. } => LayoutRule::Source,
            TrainOp::BnNormalize(_)
            | TrainOp::DropoutMask { .. }
            | TrainOp::Mul
            | TrainOp::PoolArgmax(_)
            | TrainOp::PoolBackward { .. }
            | TrainOp::ConvBackwardData { .. }
            | TrainOp::ActivationBackward { .. }
            | TrainOp::PreluBackwardData
            | TrainOp::BnBackwardData { .. }
            | TrainOp::LrnBackward(_)
            | TrainOp::Slice { .. } => LayoutRule::Follows,
            TrainOp::GemmBackwardData { .. } => gemm_rule,
            TrainOp::Loss(_) | TrainOp::LossGrad(_) | TrainOp::SoftmaxBackward | TrainOp::Reshape(_) => {
                LayoutRule::PlainOnly
            }
            TrainOp::BnStats
            | TrainOp::BnRunningUpdate { .. }
            | TrainOp::ConvBackwardWeight(_)
            | TrainOp::GemmBackwardWeight(_)
            | TrainOp::BiasGrad
            | TrainOp::PreluBackwardWeight
            | TrainOp::BnGammaGrad { .. }
            | TrainOp::Update(_) => LayoutRule::Reduces,
        },
    }
}

/// Whether a value of this shape can be stored in `layout`.
pub fn fits(layout: Layout, shape: &Shape) -> bool {
    match layout {
        Layout::Plain => true,
        Layout::Blocked16 => shape.rank() == 3,
    }
}

/// Channels as stored: rounded up to a whole block in `nChw16c`.
pub fn stored_channels(layout: Layout, channels: usize) -> usize {
    match layout {
        Layout::Plain => channels,
        Layout::Blocked16 => channels.div_ceil(16) * 16,
    }
}

/// Elements as stored (per batch item), padding included. Only `[C, H, W]` values can be
/// blocked ([`fits`]); any other shape is stored as it is.
pub fn stored_elements(layout: Layout, shape: &Shape) -> usize {
    match layout {
        Layout::Blocked16 if shape.rank() == 3 => {
            shape.elements() / shape.channels() * stored_channels(layout, shape.channels())
        }
        Layout::Plain | Layout::Blocked16 => shape.elements(),
    }
}

/// The position of logical element `(c, h, w)` of one image of a `[C, H, W]` value (or `(f, 0,
/// 0)` of a `[F]` one) in its stored form, in elements from the image's start.
pub fn element_offset(layout: Layout, shape: &Shape, [c, h, w]: [usize; 3]) -> usize {
    match (layout, &shape.0[..]) {
        (Layout::Plain, [_, hh, ww]) => (c * hh + h) * ww + w,
        (Layout::Blocked16, [_, hh, ww]) => (((c / 16) * hh + h) * ww + w) * 16 + c % 16,
        // Vectors (and whole-batch values) are flat in either layout.
        (_, _) => c,
    }
}

/// Each node's layout, and a message for each node whose operands break its rule. Meant for
/// graphs whose handles are in range and in order (the verifier checks layouts last).
pub fn layouts(graph: &Graph) -> (Vec<Layout>, Vec<(NodeId, String)>) {
    let mut out: Vec<Layout> = Vec::with_capacity(graph.len());
    let mut errors = Vec::new();
    for (id, node) in graph.iter() {
        let batched = |i: &NodeId| i.index() < graph.len() && value_kind(&graph[*i].op) == ValueKind::Batched;
        let operand_layouts: Vec<(usize, Layout)> = node
            .inputs
            .iter()
            .enumerate()
            .filter(|(_, i)| batched(i))
            .map(|(k, i)| (k, out.get(i.index()).copied().unwrap_or(Layout::Plain)))
            .collect();
        let first = node.inputs.first().filter(|i| i.index() < graph.len()).map(|&i| &graph[i].shape);
        let agree = |errors: &mut Vec<(NodeId, String)>| {
            let l = operand_layouts.first().map_or(Layout::Plain, |&(_, l)| l);
            if operand_layouts.iter().any(|&(_, o)| o != l) {
                let names: Vec<&str> = operand_layouts.iter().map(|(_, o)| o.name()).collect();
                errors.push((id, format!("its operands' layouts differ ({})", names.join(", "))));
            }
            l
        };
        let layout = match rule(&node.op, first) {
            LayoutRule::Source => Layout::Plain,
            LayoutRule::Converts(to) => to,
            LayoutRule::Follows => agree(&mut errors),
            LayoutRule::Reduces => {
                agree(&mut errors);
                Layout::Plain
            }
            LayoutRule::PlainOnly => {
                if let Some(&(k, l)) = operand_layouts.iter().find(|&&(_, o)| o != Layout::Plain) {
                    errors.push((
                        id,
                        format!("`{}` needs plain operands, but operand {k} is {}", node.op.keyword(), l.name()),
                    ));
                }
                Layout::Plain
            }
        };
        if value_kind(&node.op) != ValueKind::Batched {
            out.push(Layout::Plain);
            continue;
        }
        if !fits(layout, &node.shape) {
            errors.push((id, format!("its value {} cannot be stored as {}", node.shape, layout.name())));
        } else if layout == Layout::Blocked16
            && let Some(message) = blocked_channel_rule(graph, node)
        {
            errors.push((id, message));
        }
        out.push(layout);
    }
    (out, errors)
}

/// What a blocked concatenation or channel slice needs: whole blocks.
fn blocked_channel_rule(graph: &Graph, node: &crate::Node) -> Option<String> {
    if matches!(node.op, Op::Concat | Op::ConcatInPlace) {
        let k = node.inputs.iter().position(|&i| !graph[i].shape.channels().is_multiple_of(16))?;
        return Some(format!(
            "a blocked concatenation needs whole blocks, but operand {k} has {} channels",
            graph[node.inputs[k]].shape.channels()
        ));
    }
    if let Op::Train(TrainOp::Slice { start, len }) = node.op
        && (!start.is_multiple_of(16) || !len.is_multiple_of(16))
    {
        return Some(format!("a blocked slice needs whole blocks, but it takes channels {start}..{}", start + len));
    }
    None
}

/// The physical layout of a convolution's or matrix product's weights.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum WeightLayout {
    /// Plain convolution weights `[O, I/g, KH, KW]` (as stored in a checkpoint).
    Oihw,
    /// `[O/16][I/16][KH][KW][16 i][16 o]`, zero-padded: for blocked activations, one group.
    OIhw16i16o,
    /// Per group `g`, `[g][O_g/16][I_g/16][KH][KW][16 i][16 o]` (grouped convolution whose
    /// per-group channels are whole blocks).
    GOIhw16i16o,
    /// Groups blocked by 16: `[g/16][O_g][I_g][KH][KW][16 g]`, zero-padded (depthwise-style).
    Goihw16g,
    /// A plain matrix `[O, I]` (gemm on plain data, fc).
    Oi,
    /// `[O/16][I/16][16 i][16 o]`, zero-padded (gemm on blocked maps).
    OI16i16o,
}

impl WeightLayout {
    pub fn name(self) -> &'static str {
        match self {
            WeightLayout::Oihw => "oihw",
            WeightLayout::OIhw16i16o => "OIhw16i16o",
            WeightLayout::GOIhw16i16o => "gOIhw16i16o",
            WeightLayout::Goihw16g => "Goihw16g",
            WeightLayout::Oi => "oi",
            WeightLayout::OI16i16o => "OI16i16o",
        }
    }

    pub fn from_name(name: &str) -> Option<WeightLayout> {
        use WeightLayout::*;
        [Oihw, OIhw16i16o, GOIhw16i16o, Goihw16g, Oi, OI16i16o].into_iter().find(|l| l.name() == name)
    }

    /// Whether the stored bytes are the checkpoint's own (`[O, I, KH, KW]` or `[O, I]`
    /// row-major): no packing needed.
    pub fn is_plain(self) -> bool {
        match self {
            WeightLayout::Oihw | WeightLayout::Oi => true,
            WeightLayout::OIhw16i16o | WeightLayout::GOIhw16i16o | WeightLayout::Goihw16g | WeightLayout::OI16i16o => {
                false
            }
        }
    }

    /// Elements as stored for a logical weight of `dims` (`[O, I/g, KH, KW]`, or `[O, I]`),
    /// padding included.
    pub fn stored_len(self, dims: &[usize], groups: usize) -> usize {
        let (o, i, kh, kw) = weight_dims(dims);
        let r16 = |x: usize| x.div_ceil(16) * 16;
        match self {
            WeightLayout::Oihw | WeightLayout::Oi => o * i * kh * kw,
            WeightLayout::OIhw16i16o | WeightLayout::OI16i16o => r16(o) * r16(i) * kh * kw,
            WeightLayout::GOIhw16i16o => groups * r16(o / groups) * r16(i) * kh * kw,
            WeightLayout::Goihw16g => r16(groups) * (o / groups) * i * kh * kw,
        }
    }

    /// How far apart, in stored elements, two kernel taps next to each other (`x` and `x + 1`,
    /// or the last of a row and the first of the next) of one `(o, i)` pair are: the taps of a
    /// pair are evenly spaced in every layout, so `offset(o, i, y, x) = offset(o, i, 0, 0) +
    /// (y * KW + x) * tap_stride()`. (And `offset(o, i, 0, 0)` is a function of `o` plus one of
    /// `i`: `offset(o, 0, 0, 0) + offset(0, i, 0, 0) - offset(0, 0, 0, 0)`.)
    pub fn tap_stride(self) -> usize {
        match self {
            WeightLayout::Oihw | WeightLayout::Oi => 1,
            WeightLayout::Goihw16g => 16,
            WeightLayout::OIhw16i16o | WeightLayout::GOIhw16i16o | WeightLayout::OI16i16o => 256,
        }
    }

    /// Where logical element `[o, i, kh, kw]` (`i` within its group) of a weight of `dims` with
    /// `groups` groups is stored. The definition of every packed layout.
    pub fn offset(self, dims: &[usize], groups: usize, [o, i, y, x]: [usize; 4]) -> usize {
        let (oo, ii, kh, kw) = weight_dims(dims);
        let r16 = |v: usize| v.div_ceil(16) * 16;
        match self {
            WeightLayout::Oihw | WeightLayout::Oi => ((o * ii + i) * kh + y) * kw + x,
            WeightLayout::OIhw16i16o | WeightLayout::OI16i16o => {
                let blocks_i = r16(ii) / 16;
                ((((o / 16) * blocks_i + i / 16) * kh + y) * kw + x) * 256 + (i % 16) * 16 + o % 16
            }
            WeightLayout::GOIhw16i16o => {
                let og = oo / groups;
                let (g, o) = (o / og, o % og);
                let per_group = r16(og) * r16(ii) * kh * kw;
                let blocks_i = r16(ii) / 16;
                g * per_group + ((((o / 16) * blocks_i + i / 16) * kh + y) * kw + x) * 256 + (i % 16) * 16 + o % 16
            }
            WeightLayout::Goihw16g => {
                let og = oo / groups;
                let (g, o) = (o / og, o % og);
                ((((g / 16) * og + o) * ii + i) * kh + y) * kw * 16 + x * 16 + g % 16
            }
        }
    }
}

/// `(O, I, KH, KW)` of a convolution weight, `(O, I, 1, 1)` of a matrix.
fn weight_dims(dims: &[usize]) -> (usize, usize, usize, usize) {
    match dims {
        [o, i, kh, kw] => (*o, *i, *kh, *kw),
        [o, i] => (*o, *i, 1, 1),
        _ => (dims.iter().product(), 1, 1, 1),
    }
}

/// The weight layout of a convolution or matrix product node (forward or backward), given
/// the graph's layouts; `None` for nodes without a weight of their own.
pub fn weight_layout(graph: &Graph, layouts: &[Layout], id: NodeId) -> Option<WeightLayout> {
    let node = &graph[id];
    let blocked = node.inputs.first().is_some_and(|&x| layouts[x.index()] == Layout::Blocked16);
    let conv = match &node.op {
        Op::Conv(conv) | Op::Fused { base: FusedBase::Conv(conv), .. } => conv,
        Op::Gemm(_) | Op::Fused { base: FusedBase::Gemm(_), .. } => {
            return Some(if blocked { WeightLayout::OI16i16o } else { WeightLayout::Oi });
        }
        Op::Fc(_) => return Some(WeightLayout::Oi),
        Op::Input
        | Op::Pool { .. }
        | Op::GlobalPool(_)
        | Op::AdaptivePool { .. }
        | Op::Spp { .. }
        | Op::Flatten
        | Op::Activation(_)
        | Op::Prelu
        | Op::Softmax
        | Op::BatchNorm(_)
        | Op::Lrn(_)
        | Op::Dropout { .. }
        | Op::Concat
        | Op::Add
        | Op::Reorder(_)
        | Op::ConcatInPlace
        | Op::Train(_) => return None,
    };
    if !blocked {
        return Some(WeightLayout::Oihw);
    }
    let per_group_in = graph[node.inputs[0]].shape.channels() / conv.groups;
    let per_group_out = conv.out_channels / conv.groups;
    Some(if conv.groups == 1 {
        WeightLayout::OIhw16i16o
    } else if per_group_in.is_multiple_of(16) && per_group_out.is_multiple_of(16) {
        WeightLayout::GOIhw16i16o
    } else if conv.groups.is_multiple_of(16) {
        WeightLayout::Goihw16g
    } else {
        WeightLayout::Oihw
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::op::{Activation, Epilogue, Gemm};
    use crate::testutil::{add, conv, input};
    use crate::verify::{VerifyError, verify};

    fn relu() -> Op {
        Op::Activation(Activation::Relu)
    }

    #[test]
    fn the_taps_of_a_weight_pair_are_tap_stride_apart() {
        use WeightLayout::*;
        for (layout, dims, groups) in [
            (Oihw, vec![4, 3, 3, 2], 1),
            (OIhw16i16o, vec![20, 17, 3, 2], 1),
            (GOIhw16i16o, vec![64, 16, 3, 2], 2),
            (Goihw16g, vec![40, 2, 3, 2], 20),
        ] {
            for o in 0..dims[0] {
                for i in 0..dims[1] {
                    let base = layout.offset(&dims, groups, [o, i, 0, 0]);
                    // Separable in `o` and `i` (what fast packing relies on).
                    let (row, col) =
                        (layout.offset(&dims, groups, [o, 0, 0, 0]), layout.offset(&dims, groups, [0, i, 0, 0]));
                    assert_eq!(base + layout.offset(&dims, groups, [0, 0, 0, 0]), row + col, "{}", layout.name());
                    for y in 0..3 {
                        for x in 0..2 {
                            let direct = layout.offset(&dims, groups, [o, i, y, x]);
                            assert_eq!(direct, base + (y * 2 + x) * layout.tap_stride(), "{}", layout.name());
                            assert!(direct < layout.stored_len(&dims, groups));
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn reorders_change_layouts_and_other_ops_follow() {
        let mut g = Graph::new("l");
        let x = input(&mut g, "x", &[3, 8, 8]);
        let c = add(&mut g, conv(16, 3, 1, 1, true), &[x], "c");
        let b = add(&mut g, Op::Reorder(Layout::Blocked16), &[c], "to_blocked");
        let r = add(&mut g, relu(), &[b], "r");
        let m = add(&mut g, Op::Gemm(Gemm { out: 32, bias: true }), &[r], "gemm");
        let p = add(&mut g, Op::Reorder(Layout::Plain), &[m], "to_plain");
        let f = add(&mut g, Op::Flatten, &[p], "f");
        g.outputs = vec![f];
        assert_eq!(verify(&g), Ok(()));
        use Layout::{Blocked16 as B, Plain as P};
        assert_eq!(layouts(&g), (vec![P, P, B, B, B, P, P], vec![]));
    }

    #[test]
    fn layout_errors_name_the_node() {
        // An add of blocked and plain data; a blocked concat of 8 channels; flatten of blocked
        // data.
        let mut g = Graph::new("bad");
        let x = input(&mut g, "x", &[16, 4, 4]);
        let b = add(&mut g, Op::Reorder(Layout::Blocked16), &[x], "b");
        let s = add(&mut g, Op::Add, &[b, x], "s");
        let c = add(&mut g, conv(8, 1, 1, 0, true), &[s], "c");
        let k = add(&mut g, Op::Concat, &[c, s], "k");
        let f = add(&mut g, Op::Flatten, &[k], "f");
        g.outputs = vec![f];
        let e = verify(&g).unwrap_err();
        let text: Vec<String> = e.iter().map(ToString::to_string).collect();
        assert_eq!(
            text,
            [
                "%2 (s) breaks its layout rule: its operands' layouts differ (nChw16c, nchw)",
                "%4 (k) breaks its layout rule: a blocked concatenation needs whole blocks, but operand 0 has 8 channels",
                "%5 (f) breaks its layout rule: `flatten` needs plain operands, but operand 0 is nChw16c",
            ]
        );
        assert_eq!(stored_elements(Layout::Blocked16, &g[c].shape), 16 * 4 * 4);
        assert_eq!(stored_elements(Layout::Plain, &g[c].shape), 8 * 4 * 4);
        assert!(matches!(e[0], VerifyError::Layout { node, .. } if node == s));
    }

    #[test]
    fn fused_nodes_check_their_residual_and_gemm_params_keep_source_shapes() {
        let mut g = Graph::new("f");
        let x = input(&mut g, "x", &[16, 4, 4]);
        let base = crate::FusedBase::Gemm(Gemm { out: 16, bias: false });
        let epilogue = Epilogue { residual: true, activation: Some(Activation::Relu) };
        let y = add(&mut g, Op::Fused { base, epilogue }, &[x, x], "y");
        g.outputs = vec![y];
        assert_eq!(verify(&g), Ok(()));
        assert_eq!(g.params(y)[0].dims, vec![16, 16, 1, 1]);
        let wrong = Op::Fused { base: crate::FusedBase::Gemm(Gemm { out: 8, bias: false }), epilogue };
        let e = g.add(wrong, vec![x, x], "z", Default::default()).unwrap_err();
        assert_eq!(e.to_string(), "cannot add [8, 4, 4] and [16, 4, 4]");
        let e = g.add(Op::Fused { base, epilogue }, vec![x], "z", Default::default()).unwrap_err();
        assert_eq!(e.to_string(), "takes 2 (operand and residual) input(s), found 1");
        let flat = add(&mut g, Op::Flatten, &[x], "flat");
        let fc = add(&mut g, Op::Gemm(Gemm { out: 10, bias: true }), &[flat], "fc");
        assert_eq!(g.params(fc)[0].dims, vec![10, 256]);
        assert_eq!(g[fc].shape.0, vec![10]);
    }

    #[test]
    fn concat_in_place_operands_must_be_private() {
        let mut g = Graph::new("cat");
        let x = input(&mut g, "x", &[4, 4, 4]);
        let a = add(&mut g, relu(), &[x], "a");
        let b = add(&mut g, relu(), &[x], "b");
        let c = add(&mut g, Op::ConcatInPlace, &[x, a, b, b], "cat");
        let s = add(&mut g, Op::Add, &[a, a], "s");
        g.outputs = vec![c, s];
        let text: Vec<String> = verify(&g).unwrap_err().iter().map(ToString::to_string).collect();
        assert_eq!(
            text,
            [
                "%3 (cat) cannot be written in place by its operand %0: it is a model input",
                "%3 (cat) cannot be written in place by its operand %1: another node reads it",
                "%3 (cat) cannot be written in place by its operand %2: it appears twice",
                "%3 (cat) cannot be written in place by its operand %2: it appears twice",
            ]
        );
    }
}
