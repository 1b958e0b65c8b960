//! The pass list, its order, `--passes` parsing, and the driver that runs the chosen passes
//! with the verifier after each one.
//!
//! The order lives here and only here ([`Pass::ALL`]): whatever order a user lists passes in,
//! they run in pipeline order. Passes that change semantics ([`Pass::inference_only`]) are
//! skipped in training mode and reported as skipped.

use crate::error::PassError;
use crate::rewrite::Ctx;
use crate::{concat, cse, dce, dropout, fold_bn, fuse, fuse_backward, gemm, layout};
use cnnc_ir::{Graph, VerifyError, verify};

/// Inference (the deployed model) or training (forward and backward, batch statistics,
/// random dropout masks).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Mode {
    Inference,
    Training,
}

/// One optimisation pass. Each has one module and one entry point, `<module>::run(&mut Ctx)`,
/// returning how many times its pattern fired.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Pass {
    /// Dead-node elimination ([`crate::dce`]).
    Dce,
    /// Dropout is the identity at inference ([`crate::dropout`]).
    RemoveDropout,
    /// Common-subexpression elimination ([`crate::cse`]).
    Cse,
    /// Batch norm folded into the preceding conv or fc ([`crate::fold_bn`]).
    FoldBn,
    /// 1x1 convolutions and fc layers become matrix products ([`crate::gemm`]).
    ToGemm,
    /// Conv or gemm + residual add + activation become one node ([`crate::fuse`]).
    FuseEpilogue,
    /// Training graphs: an activation's derivative folds into the convolution backward-data
    /// op before it ([`crate::fuse_backward`]).
    FuseBackward,
    /// Concats whose operands can write their slices directly move no data ([`crate::concat`]).
    ConcatInPlace,
    /// Blocked `nChw16c` activations where the kernels want them, reorders at the edges
    /// ([`crate::layout`]).
    Layout,
}

impl Pass {
    /// Every pass, in pipeline order: clean-ups first; BN folding before fusion (so that
    /// `conv -> bn -> relu` becomes `conv -> relu`, then one node); GEMM lowering before fusion
    /// (so fused 1x1 convolutions are fused matrix products); concat in place once producers
    /// are final; layouts last, since they insert nodes at region edges.
    pub const ALL: &'static [Pass] = &[
        Pass::Dce,
        Pass::RemoveDropout,
        Pass::Cse,
        Pass::FoldBn,
        Pass::ToGemm,
        Pass::FuseEpilogue,
        Pass::FuseBackward,
        Pass::ConcatInPlace,
        Pass::Layout,
    ];

    /// The name used in `--passes`.
    pub fn name(self) -> &'static str {
        match self {
            Pass::Dce => "dce",
            Pass::RemoveDropout => "remove-dropout",
            Pass::Cse => "cse",
            Pass::FoldBn => "fold-bn",
            Pass::ToGemm => "to-gemm",
            Pass::FuseEpilogue => "fuse-epilogue",
            Pass::FuseBackward => "fuse-backward",
            Pass::ConcatInPlace => "concat-in-place",
            Pass::Layout => "layout",
        }
    }

    /// One line for `--help` and error messages.
    pub fn description(self) -> &'static str {
        match self {
            Pass::Dce => "remove nodes whose values reach no output",
            Pass::RemoveDropout => "remove dropout (the identity at inference)",
            Pass::Cse => "merge nodes computing the same op on the same operands",
            Pass::FoldBn => "fold batch norm into the preceding conv or fc (inference)",
            Pass::ToGemm => "turn 1x1 convolutions and fc layers into matrix products",
            Pass::FuseEpilogue => "fuse residual add and activation into the conv or gemm before them",
            Pass::FuseBackward => "fold activation derivatives into the convolution backward before them (training)",
            Pass::ConcatInPlace => "write concat operands straight into their channel slices",
            Pass::Layout => "choose nChw16c layouts for the conv regions, reorders at the edges",
        }
    }

    /// Passes that are only correct at inference: skipped in training mode.
    pub fn inference_only(self) -> bool {
        match self {
            Pass::RemoveDropout | Pass::FoldBn => true,
            Pass::Dce
            | Pass::Cse
            | Pass::ToGemm
            | Pass::FuseEpilogue
            | Pass::FuseBackward
            | Pass::ConcatInPlace
            | Pass::Layout => false,
        }
    }

    /// Whether the pass runs on the forward graph before the training transform (the others
    /// run on the training graph, once its backward ops exist: in-place concatenation and
    /// layouts must see every reader of a value).
    pub fn before_training_transform(self) -> bool {
        match self {
            Pass::Dce | Pass::RemoveDropout | Pass::Cse | Pass::FoldBn | Pass::ToGemm | Pass::FuseEpilogue => true,
            Pass::FuseBackward | Pass::ConcatInPlace | Pass::Layout => false,
        }
    }

    pub fn from_name(name: &str) -> Option<Pass> {
        Pass::ALL.iter().copied().find(|p| p.name() == name)
    }

    fn run(self, cx: &mut Ctx) -> Result<usize, PassError> {
        match self {
            Pass::Dce => dce::run(cx),
            Pass::RemoveDropout => dropout::run(cx),
            Pass::Cse => cse::run(cx),
            Pass::FoldBn => fold_bn::run(cx),
            Pass::ToGemm => gemm::run(cx),
            Pass::FuseEpilogue => fuse::run(cx),
            Pass::FuseBackward => fuse_backward::run(cx),
            Pass::ConcatInPlace => concat::run(cx),
            Pass::Layout => layout::run(cx),
        }
    }
}

impl std::fmt::Display for Pass {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// `all, none, dce, remove-dropout, ...`: every name `--passes` accepts.
pub fn valid_pass_names() -> String {
    let mut names = vec!["all", "none"];
    names.extend(Pass::ALL.iter().map(|p| p.name()));
    names.join(", ")
}

/// Parses `--passes`: `all`, `none`, or a comma-separated list of pass names (spaces around
/// names allowed, repeats ignored). The result is in pipeline order, whatever the list's order.
pub fn parse_passes(spec: &str) -> Result<Vec<Pass>, PassError> {
    let items: Vec<&str> = spec.split(',').map(str::trim).collect();
    for keyword in ["all", "none"] {
        if items.contains(&keyword) {
            if items.len() > 1 {
                return Err(PassError::ExclusiveKeyword { keyword });
            }
            return Ok(if keyword == "all" { Pass::ALL.to_vec() } else { Vec::new() });
        }
    }
    let mut passes = Vec::new();
    for item in items {
        if item.is_empty() {
            return Err(PassError::EmptyPassName { valid: valid_pass_names() });
        }
        let pass = Pass::from_name(item).ok_or_else(|| {
            let names = Pass::ALL.iter().map(|p| p.name()).chain(["all", "none"]);
            PassError::UnknownPass {
                name: item.to_string(),
                suggestion: cnnc_diag::did_you_mean(item, names).map(str::to_string),
                valid: valid_pass_names(),
            }
        })?;
        if !passes.contains(&pass) {
            passes.push(pass);
        }
    }
    passes.sort();
    Ok(passes)
}

/// What to run and how.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PassOptions {
    /// The passes to run (they run in pipeline order whatever the order here).
    pub passes: Vec<Pass>,
    pub mode: Mode,
    /// Run the IR verifier on the input and after every pass. On by default in debug builds
    /// (and so in tests); release builds verify only when asked.
    pub verify: bool,
}

impl PassOptions {
    /// Every pass, inference mode.
    pub fn all() -> PassOptions {
        PassOptions { passes: Pass::ALL.to_vec(), mode: Mode::Inference, verify: cfg!(debug_assertions) }
    }

    /// No pass (the plan is still computed).
    pub fn none() -> PassOptions {
        PassOptions { passes: Vec::new(), ..PassOptions::all() }
    }

    pub fn with_mode(self, mode: Mode) -> PassOptions {
        PassOptions { mode, ..self }
    }

    pub fn with_passes(self, passes: Vec<Pass>) -> PassOptions {
        PassOptions { passes, ..self }
    }
}

impl Default for PassOptions {
    fn default() -> PassOptions {
        PassOptions::all()
    }
}

/// What one pass did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PassRun {
    pub pass: Pass,
    /// How many times its pattern fired (nodes removed, merged, folded...).
    pub rewrites: usize,
    /// Node count after the pass.
    pub nodes: usize,
}

/// Runs the chosen passes in pipeline order on `cx`, verifying after each when asked.
/// Returns what ran and what was skipped (inference-only passes in training mode).
pub fn run_passes(cx: &mut Ctx, options: &PassOptions) -> Result<(Vec<PassRun>, Vec<Pass>), PassError> {
    run_some(cx, options, |_| true)
}

/// As [`run_passes`], for the passes `which` admits.
pub(crate) fn run_some(
    cx: &mut Ctx,
    options: &PassOptions,
    which: impl Fn(Pass) -> bool,
) -> Result<(Vec<PassRun>, Vec<Pass>), PassError> {
    if options.verify {
        check_input(&cx.graph)?;
    }
    let mut ran = Vec::new();
    let mut skipped = Vec::new();
    for &pass in Pass::ALL.iter().filter(|p| options.passes.contains(p) && which(**p)) {
        if cx.mode == Mode::Training && pass.inference_only() {
            skipped.push(pass);
            continue;
        }
        // Nothing to do without backward ops: not run, and not worth a mention.
        if cx.mode == Mode::Inference && pass == Pass::FuseBackward {
            continue;
        }
        let rewrites = pass.run(cx)?;
        debug_assert_eq!(cx.origins.len(), cx.graph.len(), "pass `{pass}` lost track of origins");
        if options.verify {
            verify(&cx.graph).map_err(|errors| PassError::Broken { pass: pass.name(), errors })?;
        }
        ran.push(PassRun { pass, rewrites, nodes: cx.graph.len() });
    }
    Ok((ran, skipped))
}

/// The input must verify, except for dead nodes (DCE's job).
fn check_input(graph: &Graph) -> Result<(), PassError> {
    match verify(graph) {
        Ok(()) => Ok(()),
        Err(errors) => {
            let errors: Vec<VerifyError> =
                errors.into_iter().filter(|e| !matches!(e, VerifyError::DeadNode { .. })).collect();
            if errors.is_empty() { Ok(()) } else { Err(PassError::InvalidInput { errors }) }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keywords_and_lists_parse_into_pipeline_order() {
        assert_eq!(parse_passes("all").unwrap(), Pass::ALL.to_vec());
        assert_eq!(parse_passes(" none ").unwrap(), vec![]);
        assert_eq!(parse_passes("fold-bn, dce,fold-bn").unwrap(), vec![Pass::Dce, Pass::FoldBn]);
        for pass in Pass::ALL {
            assert_eq!(parse_passes(pass.name()).unwrap(), vec![*pass]);
        }
    }

    #[test]
    fn bad_lists_say_what_is_valid() {
        let e = parse_passes("fold_bn").unwrap_err();
        let text = e.to_string();
        assert!(
            text.starts_with("unknown pass `fold_bn` (did you mean `fold-bn`?); valid passes: all, none, dce,"),
            "{text}"
        );
        let e = parse_passes("frobnicate").unwrap_err().to_string();
        assert!(e.starts_with("unknown pass `frobnicate`; valid passes: all, none"), "{e}");
        assert_eq!(parse_passes("all,cse").unwrap_err(), PassError::ExclusiveKeyword { keyword: "all" });
        assert!(matches!(parse_passes("").unwrap_err(), PassError::EmptyPassName { .. }));
        assert!(matches!(parse_passes("cse,,dce").unwrap_err(), PassError::EmptyPassName { .. }));
    }

    #[test]
    fn pass_names_are_unique_and_round_trip() {
        for (i, p) in Pass::ALL.iter().enumerate() {
            assert_eq!(Pass::from_name(p.name()), Some(*p));
            assert!(Pass::ALL[..i].iter().all(|q| q.name() != p.name()));
            // ALL is sorted: the enum's order is the pipeline order.
            assert!(Pass::ALL[..i].iter().all(|q| q < p));
        }
    }
}
