//! Tensor shapes (batch excluded) and the shape rule of every op.
//!
//! A shape is `[C, H, W]` for feature maps or `[F]` for flat feature vectors; the batch size is
//! never part of it. Sizes are checked arithmetic throughout: no input overflows or panics.

use crate::op::{Conv, FusedBase, Gemm, Op, Pair, Window};
use std::fmt;

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Shape(pub Vec<usize>);

impl Shape {
    pub fn rank(&self) -> usize {
        self.0.len()
    }

    /// Channels of a map, features of a vector.
    pub fn channels(&self) -> usize {
        self.0[0]
    }

    /// Channels (or features), or a rank error for a shape of rank 0.
    pub fn channels_checked(&self) -> Result<usize, ShapeError> {
        self.0
            .first()
            .copied()
            .ok_or_else(|| ShapeError::Rank { expected: "a shape of rank 1 or more", found: self.clone() })
    }

    /// Number of elements, or `None` on overflow.
    pub fn checked_elements(&self) -> Option<usize> {
        self.0.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d))
    }

    /// Number of elements; shapes in a graph are checked not to overflow when added.
    pub fn elements(&self) -> usize {
        self.checked_elements().expect("graph shapes are checked for overflow when nodes are added")
    }
}

impl fmt::Display for Shape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[")?;
        for (i, d) in self.0.iter().enumerate() {
            if i > 0 {
                write!(f, ", ")?;
            }
            write!(f, "{d}")?;
        }
        write!(f, "]")
    }
}

/// Which spatial axis a message is about.
pub const AXES: [&str; 2] = ["height", "width"];
const AXIS_UNITS: [&str; 2] = ["row", "column"];

/// Why an op cannot be applied to its inputs. The lowering attaches the layer's span and name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ShapeError {
    /// The op takes `expected` inputs (a description such as "1" or "at least 2").
    Arity {
        expected: &'static str,
        found: usize,
    },
    /// The op needs `[C, H, W]` (rank 3) or `[F]` (rank 1) input.
    Rank {
        expected: &'static str,
        found: Shape,
    },
    KernelTooLarge {
        axis: usize,
        effective_kernel: usize,
        padded: usize,
        input: Shape,
    },
    AddMismatch {
        first: Shape,
        other: Shape,
        index: usize,
    },
    ConcatMismatch {
        first: Shape,
        other: Shape,
        index: usize,
    },
    Groups {
        groups: usize,
        in_channels: usize,
        out_channels: usize,
    },
    Zero {
        shape: Shape,
    },
    Overflow,
    /// An attribute value the op cannot work with (zero stride, too much pooling padding, ...).
    BadConfig(String),
}

impl fmt::Display for ShapeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ShapeError::Arity { expected, found } => write!(f, "takes {expected} input(s), found {found}"),
            ShapeError::Rank { expected, found } => write!(f, "expects {expected} input, found {found}"),
            ShapeError::KernelTooLarge { axis, effective_kernel, padded, input } => write!(
                f,
                "kernel {} {effective_kernel} is larger than the padded input {} {padded} (input {input})",
                AXES[*axis], AXES[*axis]
            ),
            ShapeError::AddMismatch { first, other, .. } => write!(f, "cannot add {first} and {other}"),
            ShapeError::ConcatMismatch { first, other, .. } => {
                write!(f, "cannot concatenate {first} and {other} along channels")
            }
            ShapeError::Groups { groups, in_channels, out_channels } => write!(
                f,
                "groups = {groups} must divide both input channels ({in_channels}) and output channels ({out_channels})"
            ),
            ShapeError::Zero { shape } => write!(f, "output shape {shape} has a zero dimension"),
            ShapeError::Overflow => write!(f, "a size overflows"),
            ShapeError::BadConfig(msg) => f.write_str(msg),
        }
    }
}

/// Something legal but probably unintended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ShapeWarning {
    /// The windows stop `dropped` rows (axis 0) or columns (axis 1) short of the input's end.
    StrideRemainder { axis: usize, dropped: usize, input: usize, window: Window },
}

impl fmt::Display for ShapeWarning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ShapeWarning::StrideRemainder { axis, dropped, input, window } => {
                // Rows and columns are counted from 1, as a person reading the image would.
                let unit = AXIS_UNITS[*axis];
                let which = if *dropped == 1 {
                    format!("input {unit} {input} of {input} is")
                } else {
                    format!("input {unit}s {}-{input} of {input} are", input - dropped + 1)
                };
                write!(
                    f,
                    "{which} never read: kernel {}, stride {}, padding {} stop short of the edge",
                    window.kernel[*axis], window.stride[*axis], window.pad[*axis]
                )
            }
        }
    }
}

/// The output shape of `op` applied to inputs of the given shapes, plus warnings.
pub fn infer(op: &Op, inputs: &[&Shape]) -> Result<(Shape, Vec<ShapeWarning>), ShapeError> {
    let mut warnings = Vec::new();
    let shape = match op {
        Op::Input => return Err(ShapeError::BadConfig("inputs are added with Graph::add_input".into())),
        Op::Conv(conv) => conv_output(conv, one(inputs)?, &mut warnings)?,
        Op::Pool { kind: _, window } => {
            let [c, h, w] = map(one(inputs)?)?;
            for (a, axis) in AXES.iter().enumerate() {
                if window.pad[a] > window.kernel[a] / 2 {
                    return Err(ShapeError::BadConfig(format!(
                        "pooling padding {} is more than half the kernel {axis} {} (padding must be at most {})",
                        window.pad[a],
                        window.kernel[a],
                        window.kernel[a] / 2
                    )));
                }
            }
            let [ho, wo] = window_output(window, [h, w], inputs[0], &mut warnings)?;
            Shape(vec![c, ho, wo])
        }
        Op::GlobalPool(_) => {
            let [c, _, _] = map(one(inputs)?)?;
            Shape(vec![c, 1, 1])
        }
        Op::AdaptivePool { kind: _, output } => {
            let [c, _, _] = map(one(inputs)?)?;
            if output.contains(&0) {
                return Err(ShapeError::BadConfig("adaptive pooling output size must be at least 1".into()));
            }
            Shape(vec![c, output[0], output[1]])
        }
        Op::Spp { kind: _, levels } => {
            let [c, _, _] = map(one(inputs)?)?;
            if levels.is_empty() || levels.contains(&0) {
                return Err(ShapeError::BadConfig("pyramid levels must be a non-empty list of sizes >= 1".into()));
            }
            let bins = levels
                .iter()
                .try_fold(0usize, |acc, &l| l.checked_mul(l).and_then(|sq| acc.checked_add(sq)))
                .ok_or(ShapeError::Overflow)?;
            Shape(vec![c.checked_mul(bins).ok_or(ShapeError::Overflow)?])
        }
        Op::Fc(fc) => {
            let input = one(inputs)?;
            if input.rank() != 1 {
                return Err(ShapeError::Rank { expected: "a flat [features]", found: input.clone() });
            }
            Shape(vec![fc.out_features])
        }
        Op::Flatten => {
            let input = one(inputs)?;
            Shape(vec![input.checked_elements().ok_or(ShapeError::Overflow)?])
        }
        Op::Activation(_) | Op::Softmax | Op::Dropout { .. } | Op::Prelu | Op::BatchNorm(_) => one(inputs)?.clone(),
        Op::Lrn(lrn) => {
            if lrn.size == 0 {
                return Err(ShapeError::BadConfig("LRN size must be at least 1".into()));
            }
            let input = one(inputs)?;
            map(input)?;
            input.clone()
        }
        Op::Gemm(gemm) => gemm_output(gemm, one(inputs)?)?,
        Op::Fused { base, epilogue } => {
            let arity = if epilogue.residual { 2 } else { 1 };
            if inputs.len() != arity {
                let expected = if epilogue.residual { "2 (operand and residual)" } else { "1" };
                return Err(ShapeError::Arity { expected, found: inputs.len() });
            }
            let out = match base {
                FusedBase::Conv(conv) => conv_output(conv, inputs[0], &mut warnings)?,
                FusedBase::Gemm(gemm) => gemm_output(gemm, inputs[0])?,
            };
            if epilogue.residual && *inputs[1] != out {
                return Err(ShapeError::AddMismatch { first: out, other: inputs[1].clone(), index: 1 });
            }
            out
        }
        Op::Reorder(_) => {
            let input = one(inputs)?;
            map(input)?;
            input.clone()
        }
        Op::Concat | Op::ConcatInPlace => {
            let first = *inputs.first().ok_or(ShapeError::Arity { expected: "at least 1", found: 0 })?;
            let mut channels = 0usize;
            for (index, other) in inputs.iter().enumerate() {
                if other.rank() != first.rank() || other.0[1..] != first.0[1..] {
                    return Err(ShapeError::ConcatMismatch { first: first.clone(), other: (*other).clone(), index });
                }
                channels = channels.checked_add(other.0[0]).ok_or(ShapeError::Overflow)?;
            }
            let mut dims = first.0.clone();
            dims[0] = channels;
            Shape(dims)
        }
        Op::Train(t) => crate::train::infer_train(t, inputs)?,
        Op::Add => {
            if inputs.len() < 2 {
                return Err(ShapeError::Arity { expected: "at least 2", found: inputs.len() });
            }
            let first = inputs[0];
            if let Some((index, other)) = inputs.iter().enumerate().find(|(_, s)| **s != first) {
                return Err(ShapeError::AddMismatch { first: first.clone(), other: (*other).clone(), index });
            }
            first.clone()
        }
    };
    check_valid(&shape)?;
    Ok((shape, warnings))
}

fn conv_output(conv: &Conv, input: &Shape, warnings: &mut Vec<ShapeWarning>) -> Result<Shape, ShapeError> {
    let [c, h, w] = map(input)?;
    if conv.groups == 0 || conv.out_channels == 0 {
        return Err(ShapeError::BadConfig("channels and groups must be at least 1".into()));
    }
    if c % conv.groups != 0 || !conv.out_channels.is_multiple_of(conv.groups) {
        return Err(ShapeError::Groups { groups: conv.groups, in_channels: c, out_channels: conv.out_channels });
    }
    let [ho, wo] = window_output(&conv.window, [h, w], input, warnings)?;
    Ok(Shape(vec![conv.out_channels, ho, wo]))
}

/// `[C, H, W] -> [out, H, W]` or `[F] -> [out]`.
fn gemm_output(gemm: &Gemm, input: &Shape) -> Result<Shape, ShapeError> {
    if gemm.out == 0 {
        return Err(ShapeError::BadConfig("a matrix product needs at least 1 output".into()));
    }
    match input.0[..] {
        [_, h, w] => Ok(Shape(vec![gemm.out, h, w])),
        [_] => Ok(Shape(vec![gemm.out])),
        _ => Err(ShapeError::Rank { expected: "a [channels, height, width] or [features]", found: input.clone() }),
    }
}

/// Rejects zero dimensions and element counts that overflow.
pub fn check_valid(shape: &Shape) -> Result<(), ShapeError> {
    if shape.0.contains(&0) {
        return Err(ShapeError::Zero { shape: shape.clone() });
    }
    // Keep every element count (and its byte size, times a batch) comfortably inside u64.
    match shape.checked_elements() {
        Some(n) if n <= 1 << 48 => Ok(()),
        _ => Err(ShapeError::Overflow),
    }
}

fn one<'a>(inputs: &[&'a Shape]) -> Result<&'a Shape, ShapeError> {
    match inputs {
        [only] => Ok(only),
        _ => Err(ShapeError::Arity { expected: "1", found: inputs.len() }),
    }
}

fn map(shape: &Shape) -> Result<[usize; 3], ShapeError> {
    match shape.0[..] {
        [c, h, w] => Ok([c, h, w]),
        _ => Err(ShapeError::Rank { expected: "a [channels, height, width]", found: shape.clone() }),
    }
}

/// The largest kernel, stride, padding or dilation a window may have.
pub const MAX_WINDOW: usize = 1 << 16;

/// Output size of a sliding window on each axis: `floor((W + 2P - D*(F-1) - 1) / S) + 1`
/// (or the ceiling, in ceil mode), warning when the windows stop short of the input's end.
pub fn window_output(
    window: &Window,
    size: Pair,
    input: &Shape,
    warnings: &mut Vec<ShapeWarning>,
) -> Result<Pair, ShapeError> {
    let mut out = [0; 2];
    for a in 0..2 {
        let (k, s, p, d) = (window.kernel[a], window.stride[a], window.pad[a], window.dilation[a]);
        if k == 0 || s == 0 || d == 0 {
            return Err(ShapeError::BadConfig(format!(
                "kernel, stride and dilation must be at least 1 (the {} axis has kernel {k}, stride {s}, dilation {d})",
                AXES[a]
            )));
        }
        // A window wider than any real input is a mistake, and bounding it keeps every back
        // end's loops and padded buffers finite.
        if k.max(s).max(p).max(d) > MAX_WINDOW {
            return Err(ShapeError::BadConfig(format!(
                "kernel, stride, padding and dilation are limited to {MAX_WINDOW} (the {} axis has kernel {k}, stride {s}, padding {p}, dilation {d})",
                AXES[a]
            )));
        }
        let eff = d.checked_mul(k - 1).and_then(|x| x.checked_add(1)).ok_or(ShapeError::Overflow)?;
        let padded = p.checked_mul(2).and_then(|x| x.checked_add(size[a])).ok_or(ShapeError::Overflow)?;
        if eff > padded {
            return Err(ShapeError::KernelTooLarge { axis: a, effective_kernel: eff, padded, input: input.clone() });
        }
        let span = padded - eff;
        let mut n = if window.ceil_mode { span.div_ceil(s) + 1 } else { span / s + 1 };
        // In ceil mode the last window must start inside the input or its left padding.
        if window.ceil_mode && (n - 1) * s >= size[a] + p {
            n -= 1;
        }
        if !window.ceil_mode {
            // Input rows after the last window that are not padding, beyond the regular gap
            // a stride larger than the kernel leaves between windows anyway.
            let covered = (n - 1) * s + eff;
            let tail = (padded - covered).saturating_sub(p);
            if tail > s.saturating_sub(eff) {
                warnings.push(ShapeWarning::StrideRemainder {
                    axis: a,
                    dropped: tail,
                    input: size[a],
                    window: *window,
                });
            }
        }
        out[a] = n;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::op::{Conv, Fc, PoolKind};

    fn win(k: usize, s: usize, p: usize) -> Window {
        Window { kernel: [k, k], stride: [s, s], pad: [p, p], dilation: [1, 1], ceil_mode: false }
    }

    fn conv(out: usize, k: usize, s: usize, p: usize) -> Op {
        Op::Conv(Conv { out_channels: out, window: win(k, s, p), groups: 1, bias: true })
    }

    #[test]
    fn conv_output_follows_the_floor_rule() {
        let x = Shape(vec![3, 224, 224]);
        let (y, w) = infer(&conv(64, 7, 2, 3), &[&x]).unwrap();
        assert_eq!(y, Shape(vec![64, 112, 112]));
        assert!(w.is_empty(), "{w:?}");
        let x = Shape(vec![3, 227, 227]);
        assert_eq!(infer(&conv(96, 11, 4, 0), &[&x]).unwrap().0, Shape(vec![96, 55, 55]));
    }

    #[test]
    fn dilation_widens_the_kernel() {
        let mut op = Conv { out_channels: 8, window: win(3, 1, 0), groups: 1, bias: false };
        op.window.dilation = [2, 2];
        let (y, _) = infer(&Op::Conv(op), &[&Shape(vec![1, 9, 9])]).unwrap();
        assert_eq!(y, Shape(vec![8, 5, 5]));
    }

    #[test]
    fn stride_remainder_warns_about_real_rows_only() {
        let (y, w) = infer(&conv(1, 3, 3, 0), &[&Shape(vec![1, 7, 7])]).unwrap();
        assert_eq!(y, Shape(vec![1, 2, 2]));
        assert_eq!(w.len(), 2);
        assert_eq!(
            w[0].to_string(),
            "input row 7 of 7 is never read: kernel 3, stride 3, padding 0 stop short of the edge"
        );
        // A 1x1 stride-2 projection skips every other row by design: no warning.
        let (_, w) = infer(&conv(8, 1, 2, 0), &[&Shape(vec![4, 56, 56])]).unwrap();
        assert!(w.is_empty());
    }

    #[test]
    fn ceil_mode_rounds_up_but_keeps_windows_inside() {
        let mut window = win(3, 2, 0);
        window.ceil_mode = true;
        let op = Op::Pool { kind: PoolKind::Max, window };
        assert_eq!(infer(&op, &[&Shape(vec![64, 112, 112])]).unwrap().0, Shape(vec![64, 56, 56]));
        let mut window = win(2, 2, 1);
        window.ceil_mode = true;
        let op = Op::Pool { kind: PoolKind::Max, window };
        // ceil((5 + 2 - 2) / 2) + 1 = 4, but the 4th window would start in the right padding.
        assert_eq!(infer(&op, &[&Shape(vec![1, 5, 5])]).unwrap().0, Shape(vec![1, 3, 3]));
    }

    #[test]
    fn errors_name_both_shapes() {
        let e = infer(&conv(1, 5, 1, 0), &[&Shape(vec![1, 3, 3])]).unwrap_err();
        assert!(matches!(e, ShapeError::KernelTooLarge { effective_kernel: 5, padded: 3, .. }));
        let e = infer(&Op::Add, &[&Shape(vec![1, 3, 3]), &Shape(vec![2, 3, 3])]).unwrap_err();
        assert_eq!(e.to_string(), "cannot add [1, 3, 3] and [2, 3, 3]");
        let e = infer(&Op::Fc(Fc { out_features: 10, bias: true }), &[&Shape(vec![1, 3, 3])]).unwrap_err();
        assert!(matches!(e, ShapeError::Rank { .. }));
        let g = Op::Conv(Conv { out_channels: 6, window: win(1, 1, 0), groups: 4, bias: true });
        assert!(matches!(infer(&g, &[&Shape(vec![8, 3, 3])]), Err(ShapeError::Groups { .. })));
    }

    #[test]
    fn huge_sizes_are_errors_not_panics() {
        let x = Shape(vec![usize::MAX, 2, 2]);
        assert_eq!(infer(&Op::Flatten, &[&x]).unwrap_err(), ShapeError::Overflow);
        let op = Op::Spp { kind: PoolKind::Max, levels: vec![usize::MAX] };
        assert_eq!(infer(&op, &[&Shape(vec![1, 2, 2])]).unwrap_err(), ShapeError::Overflow);
    }
}
