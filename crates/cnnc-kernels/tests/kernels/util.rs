//! Shared helpers of the kernel tests: seeded data, layout conversions between logical NCHW
//! and the kernels' layouts, guarded arenas, tolerant comparison, the instruction sets to run.

use super::guard::GuardBuf;
use cnnc_kernels::cpu;
use cnnc_kernels::par::Parallel;
use cnnc_kernels::simd::Cpu;
use cnnc_kernels::threads::ThreadPool;
use cnnc_kernels::view::{Layout, View};
use std::sync::OnceLock;

/// Every instruction set this CPU supports (the tests run each kernel on all of them).
pub fn cpus() -> Vec<Cpu> {
    cpu::all_supported()
}

/// A pool with more threads than this machine has cores, so that tasks really interleave.
pub fn pool() -> &'static ThreadPool {
    static POOL: OnceLock<ThreadPool> = OnceLock::new();
    POOL.get_or_init(|| ThreadPool::new(3))
}

/// The pool, or (for odd seeds) the serial runner, so both paths are exercised.
pub fn par(seed: u64) -> &'static dyn Parallel {
    if seed.is_multiple_of(2) { pool() } else { &cnnc_kernels::par::Serial }
}

/// xorshift64*: deterministic test data.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    /// Uniform in [-1, 1).
    pub fn next(&mut self) -> f32 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        let v = self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 40;
        v as f32 / (1u64 << 23) as f32 - 1.0
    }
    pub fn vec(&mut self, len: usize) -> Vec<f32> {
        (0..len).map(|_| self.next()).collect()
    }
}

/// Logical `[n][c][hw]` to `nChw16c`; padding lanes get `junk` (finite), which consumers must
/// ignore.
pub fn to_blocked(x: &[f32], n: usize, c: usize, hw: usize, junk: f32) -> Vec<f32> {
    let cb = c.div_ceil(16);
    let mut out = vec![junk; n * cb * hw * 16];
    for b in 0..n {
        for ch in 0..c {
            for p in 0..hw {
                out[((b * cb + ch / 16) * hw + p) * 16 + ch % 16] = x[(b * c + ch) * hw + p];
            }
        }
    }
    out
}

/// `nChw16c` (dense batch) to logical `[n][c][hw]`.
pub fn from_blocked(x: &[f32], n: usize, c: usize, hw: usize) -> Vec<f32> {
    let cb = c.div_ceil(16);
    let mut out = vec![0.0; n * c * hw];
    for b in 0..n {
        for ch in 0..c {
            for p in 0..hw {
                out[(b * c + ch) * hw + p] = x[((b * cb + ch / 16) * hw + p) * 16 + ch % 16];
            }
        }
    }
    out
}

/// Checks `got` against `want` with `|got - want| <= rtol * (|want| + mean |want|)` (the mean
/// term absorbs cancellation in long sums).
pub fn close(what: &str, got: &[f32], want: &[f32], rtol: f32) -> Result<(), String> {
    if got.len() != want.len() {
        return Err(format!("{what}: {} values, expected {}", got.len(), want.len()));
    }
    let mean = want.iter().map(|v| v.abs()).sum::<f32>() / want.len().max(1) as f32;
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let ok = (g - w).abs() <= rtol * (w.abs() + mean) || (g.is_nan() && w.is_nan()) || g == w;
        if !ok {
            return Err(format!("{what}[{i}] = {g}, expected {w} (rtol {rtol}, mean |value| {mean})"));
        }
    }
    Ok(())
}

/// A guarded arena holding several tensors: the first flush against the leading guard page,
/// the last against the trailing one, NaN-filled gaps between the others.
pub struct Arena {
    pub buf: GuardBuf,
    pub offsets: Vec<usize>,
    lens: Vec<usize>,
}

const GAP: usize = 19;

impl Arena {
    pub fn new(parts: &[&[f32]]) -> Arena {
        let mut offsets = Vec::new();
        let mut at = 0;
        for (i, p) in parts.iter().enumerate() {
            if i + 1 == parts.len() && i > 0 {
                // The last part ends the arena, whose length is a whole number of pages.
                let total = (at + p.len()).div_ceil(1024) * 1024;
                at = total - p.len();
            }
            offsets.push(at);
            at += p.len() + GAP;
        }
        let total =
            if parts.len() > 1 { offsets.last().unwrap() + parts.last().unwrap().len() } else { parts[0].len() };
        let total = if parts.len() > 1 { total } else { total.div_ceil(1024) * 1024 };
        let mut init = vec![f32::NAN; total];
        for (p, &o) in parts.iter().zip(&offsets) {
            init[o..o + p.len()].copy_from_slice(p);
        }
        Arena { buf: GuardBuf::new(&init), offsets, lens: parts.iter().map(|p| p.len()).collect() }
    }

    pub fn part(&self, i: usize) -> &[f32] {
        &self.buf.as_slice()[self.offsets[i]..][..self.lens[i]]
    }

    /// A dense view of part `i`.
    pub fn view(&self, i: usize, n: usize, c: usize, h: usize, w: usize, layout: Layout) -> View {
        View::dense(self.offsets[i], n, c, h, w, layout)
    }

    /// Whether every float outside the parts is still NaN (nothing wrote past a tensor).
    pub fn gaps_intact(&self) -> bool {
        let all = self.buf.as_slice();
        let mut at = 0;
        for (&o, &l) in self.offsets.iter().zip(&self.lens) {
            if !all[at..o].iter().all(|v| v.is_nan()) {
                return false;
            }
            at = o + l;
        }
        all[at..].iter().all(|v| v.is_nan()) && self.buf.sentinels_intact()
    }
}

/// A guarded copy of a read-only operand (weights, vectors).
pub fn guarded(data: &[f32]) -> GuardBuf {
    GuardBuf::new(data)
}
