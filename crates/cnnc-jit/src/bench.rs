//! `cnnc bench`'s measurements: the whole-model time, each layer's time and GFLOP/s, from a
//! compiled model's own timing ([`CompiledModel::profile`], [`CompiledModel::time_runs`]), and
//! the machine's FMA peak those figures are quoted against ([`peak_probe`]). Plain data: the
//! driver renders it (table and JSON) and caches the peak.

use crate::error::JitError;
use crate::lower::Lowering;
use crate::model::{CompiledModel, StepArgs};
use crate::options::Mode;
use cnnc_kernels::peak::Width;
use cnnc_runtime::Tensor;
use std::time::Duration;

/// One layer (node) of the schedule.
#[derive(Clone, Debug, PartialEq)]
pub struct LayerReport {
    pub name: String,
    /// The node's op keyword (`conv`, `fused_conv`, `reorder`, ...).
    pub op: String,
    pub median_ms: f64,
    /// The fastest run: on a machine shared with other work, the closest to the layer's own
    /// speed (the median also counts the runs other processes held the cores up).
    pub min_ms: f64,
    /// Floating-point operations of the whole batch: multiply-accumulates x 2 (0 for layers
    /// without products).
    pub flops: f64,
    /// `flops` per median second, in billions (0 without products).
    pub gflops: f64,
    /// How the layer's convolution pass was lowered (None for layers without one).
    pub lowering: Option<Lowering>,
}

/// The whole measurement.
#[derive(Clone, Debug, PartialEq)]
pub struct BenchReport {
    pub compile_ms: f64,
    /// Where the compile time went.
    pub compile: crate::CompileTimes,
    pub batch: usize,
    /// Whole runs timed (and as many step-by-step runs for the layers), after one warm-up.
    pub rounds: usize,
    pub median_ms: f64,
    /// The fastest whole run (see [`LayerReport::min_ms`]).
    pub min_ms: f64,
    /// Floating-point operations of one whole run (the layers' sum).
    pub flops: f64,
    /// The peak the caller quotes the figures against (measured by it, e.g. once and cached).
    pub peak_gflops: f64,
    /// In schedule order; nodes without code (views, concatenation in place) are absent.
    pub layers: Vec<LayerReport>,
    /// Nodes, from the first, that run depth first ([`CompiledModel::depth_first`]).
    pub depth_first: usize,
    /// Nodes of the plan's schedule.
    pub nodes: usize,
}

/// How many times [`report`] runs the model.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Rounds {
    /// Exactly this many whole runs (at least one).
    Fixed(usize),
    /// As many whole runs as fit in about this long by the warm-up run's time, between
    /// [`Rounds::MIN`] and [`Rounds::MAX`].
    For(Duration),
}

impl Rounds {
    pub const MIN: usize = 3;
    pub const MAX: usize = 200;

    /// The count for a model whose warm-up run took `warm_up` seconds.
    pub fn count(self, warm_up: f64) -> usize {
        match self {
            Rounds::Fixed(n) => n.max(1),
            Rounds::For(budget) => {
                let n = (budget.as_secs_f64() / warm_up.max(1e-7)).ceil();
                if n.is_finite() { (n as usize).clamp(Rounds::MIN, Rounds::MAX) } else { Rounds::MAX }
            }
        }
    }
}

/// The smallest of a list (0 for an empty one).
pub fn min(xs: &[f64]) -> f64 {
    xs.iter().copied().reduce(f64::min).unwrap_or(0.0)
}

/// The median of a list (0 for an empty one).
pub fn median(xs: &[f64]) -> f64 {
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    if v.is_empty() { 0.0 } else { v[v.len() / 2] }
}

/// Times `model` on `inputs` with `args` (a training plan's step arguments): one warm-up run,
/// then `rounds` whole runs for the model's median and as many step-by-step runs for the
/// layers' medians.
pub fn report(
    model: &CompiledModel,
    inputs: &[Tensor],
    args: &StepArgs,
    rounds: Rounds,
    peak_gflops: f64,
) -> Result<BenchReport, JitError> {
    let warm_up = model.time_runs(inputs, args, 1)?;
    let rounds = rounds.count(warm_up.first().copied().unwrap_or(0.0));
    let whole = model.time_runs(inputs, args, rounds)?;
    let per = model.profile(inputs, args, rounds)?;
    let graph = &model.plan().graph;
    let stats = cnnc_ir::node_stats(graph);
    let batch = model.batch();
    let layers: Vec<LayerReport> = per
        .iter()
        .map(|t| {
            let seconds = median(&t.seconds);
            let flops = 2.0 * stats[t.node.index()].macs as f64 * batch as f64;
            LayerReport {
                name: t.name.clone(),
                op: graph[t.node].op.keyword().to_string(),
                median_ms: seconds * 1e3,
                min_ms: min(&t.seconds) * 1e3,
                flops,
                gflops: if seconds > 0.0 { flops / seconds / 1e9 } else { 0.0 },
                lowering: model.lowerings().iter().rev().find(|l| l.node == t.node).map(|l| l.lowering),
            }
        })
        .collect();
    Ok(BenchReport {
        compile_ms: model.compile_ms(),
        compile: model.compile_times(),
        batch,
        rounds,
        median_ms: median(&whole) * 1e3,
        min_ms: min(&whole) * 1e3,
        flops: layers.iter().map(|l| l.flops).sum(),
        peak_gflops,
        layers,
        depth_first: model.depth_first(),
        nodes: graph.len(),
    })
}

/// What a mode's code can reach at most: FMA at the width of its widest vectors (native mode:
/// the kernels' instruction set; portable mode: Cranelift's 128-bit vectors, fused where the
/// host has FMA).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PeakProbe {
    cpu: cnnc_kernels::simd::Cpu,
    width: Width,
}

/// The probe of `mode` on this machine.
pub fn peak_probe(mode: Mode) -> PeakProbe {
    let cpu = cnnc_kernels::cpu::best();
    let width = match mode {
        Mode::Native => Width::of(cpu.isa()),
        Mode::Portable => Width::W128,
    };
    PeakProbe { cpu, width }
}

impl PeakProbe {
    /// Names the instruction set and width, such as `avx512 512-bit fma` (a cache key).
    pub fn isa(&self) -> String {
        let fused = if self.cpu.isa() == cnnc_kernels::simd::Isa::Portable { "mul+add" } else { "fma" };
        format!("{} {}-bit {fused}", self.cpu.isa().name(), self.width.bits())
    }

    pub fn bits(&self) -> u32 {
        self.width.bits()
    }

    /// Measures the peak on `threads` threads at once, in GFLOP/s (about half a second).
    pub fn measure(&self, threads: usize) -> f64 {
        cnnc_kernels::peak::measure(self.cpu, self.width, threads).gflops
    }
}
