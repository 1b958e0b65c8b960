//! Physical layouts of activations, derived from the graph rather than stored.
//!
//! Shapes stay logical (`[C, H, W]`). Model inputs are plain (`nchw`); a `reorder` produces
//! the layout it names; every other op either follows its operands (which must agree) or needs
//! plain operands ([`LayoutRule`]). Channels blocked by 16 need a `[C, H, W]` value whose `C`
//! is a multiple of 16, so no padding is ever stored. Back ends pick kernels by the layout of a
//! node's operands; convolutions on blocked data use blocked weights (`OIhw16i16o`), which the
//! back end derives too (the stored weights stay OIHW).

use crate::graph::Graph;
use crate::op::{FusedBase, Layout, Op};
use crate::shape::Shape;

/// How an op treats layouts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LayoutRule {
    /// Model inputs: plain.
    Source,
    /// Produces the given layout from an operand of any layout.
    Converts(Layout),
    /// Works in either layout; its operands must agree and its output has theirs.
    Follows,
    /// Needs plain operands; produces plain output.
    PlainOnly,
}

/// The op's rule. `operand` is its first operand's shape (matrix products follow on maps,
/// need plain vectors).
pub fn rule(op: &Op, operand: Option<&Shape>) -> LayoutRule {
    let on_map = operand.is_some_and(|s| s.rank() == 3);
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
        Op::Gemm(_) | Op::Fused { base: FusedBase::Gemm(_), .. } => {
            if on_map {
                LayoutRule::Follows
            } else {
                LayoutRule::PlainOnly
            }
        }
        Op::Flatten | Op::Fc(_) | Op::Softmax | Op::Spp { .. } => LayoutRule::PlainOnly,
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

/// Elements as stored (per batch item), padding included.
pub fn stored_elements(layout: Layout, shape: &Shape) -> usize {
    match layout {
        Layout::Plain => shape.elements(),
        Layout::Blocked16 => shape.elements() / shape.channels() * stored_channels(layout, shape.channels()),
    }
}

/// Each node's layout, and a message for each node whose operands break its rule. Meant for
/// graphs whose handles are in range and in order (the verifier checks layouts last).
pub fn layouts(graph: &Graph) -> (Vec<Layout>, Vec<(crate::NodeId, String)>) {
    let mut out: Vec<Layout> = Vec::with_capacity(graph.len());
    let mut errors = Vec::new();
    for (id, node) in graph.iter() {
        let operand_layouts: Vec<Layout> =
            node.inputs.iter().map(|i| out.get(i.index()).copied().unwrap_or(Layout::Plain)).collect();
        let first = node.inputs.first().filter(|i| i.index() < graph.len()).map(|&i| &graph[i].shape);
        let layout = match rule(&node.op, first) {
            LayoutRule::Source => Layout::Plain,
            LayoutRule::Converts(to) => to,
            LayoutRule::Follows => {
                let l = operand_layouts.first().copied().unwrap_or(Layout::Plain);
                if operand_layouts.iter().any(|&o| o != l) {
                    let names: Vec<&str> = operand_layouts.iter().map(|o| o.name()).collect();
                    errors.push((id, format!("its operands' layouts differ ({})", names.join(", "))));
                }
                l
            }
            LayoutRule::PlainOnly => {
                if let Some(k) = operand_layouts.iter().position(|&o| o != Layout::Plain) {
                    errors.push((
                        id,
                        format!(
                            "`{}` needs plain operands, but operand {k} is {}",
                            node.op.keyword(),
                            operand_layouts[k].name()
                        ),
                    ));
                }
                Layout::Plain
            }
        };
        if !fits(layout, &node.shape) {
            errors.push((id, format!("its value {} cannot be stored as {}", node.shape, layout.name())));
        } else if layout == Layout::Blocked16
            && matches!(node.op, Op::Concat | Op::ConcatInPlace)
            && let Some(k) = node.inputs.iter().position(|&i| !graph[i].shape.channels().is_multiple_of(16))
        {
            errors.push((
                id,
                format!(
                    "a blocked concatenation needs whole blocks, but operand {k} has {} channels",
                    graph[node.inputs[k]].shape.channels()
                ),
            ));
        }
        out.push(layout);
    }
    (out, errors)
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
