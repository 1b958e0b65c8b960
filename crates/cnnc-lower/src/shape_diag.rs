//! Shape errors and warnings from the IR's shape rules, turned into diagnostics that name the
//! layer, show both shapes and say what to do.

use cnnc_diag::{Code, Diagnostic, Span};
use cnnc_ir::shape::AXES;
use cnnc_ir::{Shape, ShapeError, ShapeWarning};

/// Where the failing layer sits in the source.
pub struct Site<'a> {
    pub keyword: &'static str,
    pub name: &'a str,
    pub span: Span,
    /// Spans of the layer's tensor operands (for `add` and `concat`), in order.
    pub operand_spans: &'a [Span],
    pub inputs: Vec<Shape>,
}

impl Site<'_> {
    fn who(&self) -> String {
        format!("`{}` ({})", self.name, self.keyword)
    }

    fn operand(&self, index: usize) -> Span {
        self.operand_spans.get(index).copied().unwrap_or(self.span)
    }

    fn input_note(&self) -> String {
        match self.inputs.as_slice() {
            [one] => format!("its input has shape {one}"),
            many => {
                let shapes: Vec<String> = many.iter().map(Shape::to_string).collect();
                format!("its inputs have shapes {}", shapes.join(", "))
            }
        }
    }
}

pub fn error(e: &ShapeError, site: &Site) -> Diagnostic {
    let who = site.who();
    match e {
        ShapeError::KernelTooLarge { axis, effective_kernel, padded, input } => Diagnostic::error(
            Code::KERNEL_TOO_LARGE,
            format!("the kernel of {who} is larger than its padded input"),
            site.span,
            format!("kernel {} {effective_kernel} > padded input {} {padded}", AXES[*axis], AXES[*axis]),
        )
        .with_note(format!("its input has shape {input}"))
        .with_hint("use a smaller kernel or stride earlier, add padding, or run at a larger input with `--shape`"),
        ShapeError::AddMismatch { first, other, index } => Diagnostic::error(
            Code::SHAPE_MISMATCH_ADD,
            format!("{who} adds tensors of different shapes: {first} and {other}"),
            site.operand(*index),
            format!("this is {other}"),
        )
        .with_secondary(site.operand(0), format!("this is {first}"))
        .with_hint(
            "make the shortcut match, e.g. a projection `conv(C, k=1, stride=S, bias=false) -> bn` \
             when the branch changes channels or stride",
        ),
        ShapeError::ConcatMismatch { first, other, index } => Diagnostic::error(
            Code::SHAPE_MISMATCH_CONCAT,
            format!("{who} joins tensors of different spatial sizes: {first} and {other}"),
            site.operand(*index),
            format!("this is {other}"),
        )
        .with_secondary(site.operand(0), format!("this is {first}"))
        .with_note("concat joins along channels; every other dimension must agree")
        .with_hint("give every branch the same stride, and padding that keeps the size (`pad = k / 2` for odd k)"),
        ShapeError::Groups { groups, in_channels, out_channels } => Diagnostic::error(
            Code::GROUPS_MISMATCH,
            format!("{who} has groups = {groups}, which does not divide its channels"),
            site.span,
            format!("{in_channels} input and {out_channels} output channels"),
        )
        .with_hint("choose groups that divide both channel counts; `depthwise=true` uses one group per input channel"),
        ShapeError::Zero { shape } => Diagnostic::error(
            Code::SHAPE_ZERO,
            format!("the output of {who} would have shape {shape}"),
            site.span,
            "a dimension reaches zero here",
        )
        .with_note(site.input_note())
        .with_hint("the input is too small for this many downsampling steps; try a larger `--shape`"),
        ShapeError::Overflow => {
            Diagnostic::error(Code::SHAPE_OVERFLOW, format!("a size in {who} overflows"), site.span, "too large")
                .with_note(site.input_note())
                .with_hint("tensors are limited to 2^48 elements and layers to 2^40 parameters")
        }
        ShapeError::Rank { expected, found } => {
            let d = Diagnostic::error(
                Code::RANK_MISMATCH,
                format!("{who} expects {expected} input, found {found}"),
                site.span,
                format!("given {found}"),
            );
            if found.rank() == 3 {
                d.with_hint("add `-> flatten` before it to turn the feature map into a vector")
            } else {
                d.with_hint("this layer works on feature maps; apply it before `flatten`")
            }
        }
        ShapeError::Arity { expected, found } => Diagnostic::error(
            Code::MISSING_ARGUMENT,
            format!("{who} takes {expected} tensor(s), given {found}"),
            site.span,
            "wrong number of tensors",
        ),
        ShapeError::BadConfig(message) => {
            Diagnostic::error(Code::BAD_LAYER_CONFIG, format!("{who}: {message}"), site.span, "cannot be built")
                .with_note(site.input_note())
        }
    }
}

pub fn warning(w: &ShapeWarning, site: &Site) -> Diagnostic {
    match w {
        ShapeWarning::StrideRemainder { .. } => Diagnostic::warning(
            Code::STRIDE_REMAINDER,
            format!("{} does not cover its whole input", site.who()),
            site.span,
            w.to_string(),
        )
        .with_note(site.input_note())
        .with_hint("adjust padding or stride so the windows reach the edge, or use `ceil=true` for pooling"),
    }
}
