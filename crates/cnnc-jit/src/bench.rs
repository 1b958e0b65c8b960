//! `cnnc bench`'s report: compile time, then per-layer time, GFLOP/s and share of the
//! machine's peak, and the whole-model time, from a compiled model's own timing
//! ([`CompiledModel::profile`], [`CompiledModel::time_runs`]).
//!
//! The JSON form is `{"compile_ms": f, "batch": n, "median_ms": f, "peak_gflops": f,
//! "layers": [{"name": str, "median_ms": f, "gflops": f}]}` (written without serde: five
//! fields and a list).

use crate::error::JitError;
use crate::model::{CompiledModel, StepArgs};
use cnnc_runtime::Tensor;

/// One layer (node) of the schedule.
#[derive(Clone, Debug, PartialEq)]
pub struct LayerReport {
    pub name: String,
    pub median_ms: f64,
    /// Multiply-accumulates x 2 of the whole batch per second, in billions (0 for layers
    /// without products).
    pub gflops: f64,
}

/// The whole report.
#[derive(Clone, Debug, PartialEq)]
pub struct BenchReport {
    pub compile_ms: f64,
    pub batch: usize,
    pub median_ms: f64,
    /// The machine's peak the percentages refer to (measured by the caller, e.g. once and
    /// cached).
    pub peak_gflops: f64,
    pub layers: Vec<LayerReport>,
}

/// The median of a non-empty list.
pub fn median(xs: &[f64]) -> f64 {
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    if v.is_empty() { 0.0 } else { v[v.len() / 2] }
}

/// Times `model` on `inputs`: `rounds` whole runs (after one warm-up) and `rounds`
/// step-by-step runs for the per-layer figures.
pub fn report(
    model: &CompiledModel,
    inputs: &[Tensor],
    rounds: usize,
    peak_gflops: f64,
) -> Result<BenchReport, JitError> {
    let args = StepArgs::default();
    let rounds = rounds.max(1);
    model.time_runs(inputs, &args, 1)?;
    let whole = model.time_runs(inputs, &args, rounds)?;
    let per = model.profile(inputs, &args, rounds)?;
    let stats = cnnc_ir::node_stats(&model.plan().graph);
    let batch = model.batch();
    let layers = per
        .iter()
        .map(|t| {
            let s = median(&t.seconds);
            let flops = 2.0 * stats[t.node.index()].macs as f64 * batch as f64;
            LayerReport {
                name: t.name.clone(),
                median_ms: s * 1e3,
                gflops: if s > 0.0 { flops / s / 1e9 } else { 0.0 },
            }
        })
        .collect();
    Ok(BenchReport { compile_ms: model.compile_ms(), batch, median_ms: median(&whole) * 1e3, peak_gflops, layers })
}

fn num(x: f64) -> String {
    if x.is_finite() { format!("{x:.4}") } else { "null".into() }
}

fn string(s: &str) -> String {
    let mut out = String::from("\"");
    for ch in s.chars() {
        match ch {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

impl BenchReport {
    /// The JSON form (one line).
    pub fn to_json(&self) -> String {
        let layers: Vec<String> = self
            .layers
            .iter()
            .map(|l| {
                format!(
                    "{{\"name\": {}, \"median_ms\": {}, \"gflops\": {}}}",
                    string(&l.name),
                    num(l.median_ms),
                    num(l.gflops)
                )
            })
            .collect();
        format!(
            "{{\"compile_ms\": {}, \"batch\": {}, \"median_ms\": {}, \"peak_gflops\": {}, \"layers\": [{}]}}",
            num(self.compile_ms),
            self.batch,
            num(self.median_ms),
            num(self.peak_gflops),
            layers.join(", ")
        )
    }

    /// The table: one line per layer with its share of the peak, then the whole model.
    pub fn to_table(&self) -> String {
        let mut out = format!("compile: {:.1} ms, batch {}\n", self.compile_ms, self.batch);
        out.push_str(&format!("{:<40} {:>10} {:>10} {:>8}\n", "layer", "ms", "GFLOP/s", "% peak"));
        for l in &self.layers {
            let pct = if self.peak_gflops > 0.0 { 100.0 * l.gflops / self.peak_gflops } else { 0.0 };
            out.push_str(&format!("{:<40} {:>10.3} {:>10.1} {:>7.1}%\n", l.name, l.median_ms, l.gflops, pct));
        }
        let sum: f64 = self.layers.iter().map(|l| l.median_ms).sum();
        out.push_str(&format!("model: {:.3} ms median (layers sum {:.3} ms)\n", self.median_ms, sum));
        out
    }
}
