//! The machine's fp32 FMA peak (std): the throughput `cnnc bench` and the benchmarks quote
//! layer speeds against, measured at the vector width the kernels use, on a given number of
//! threads at once.
//!
//! The probe is a register-only loop of twelve independent chains `a = a * m + c` (enough in
//! flight to cover the FMA latency on two pipes), the multiplier hidden from the optimiser by
//! an empty `asm!` so that nothing is folded or hoisted; each thread runs its own loop, all
//! started together, and each thread's best of many short runs counts (a shared machine only
//! ever makes a run slower, and a short run has a chance of finding a core free). Portable code gets the same chains on four-lane arrays as a separate multiply
//! and add, which is what portable kernels compile to.

use super::simd::{Cpu, Isa};
use std::time::Instant;

/// The vector width a peak is measured at.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Width {
    /// 128 bits (xmm, NEON): four lanes.
    W128,
    /// 256 bits (ymm): eight lanes.
    W256,
    /// 512 bits (zmm): sixteen lanes.
    W512,
}

impl Width {
    pub fn bits(self) -> u32 {
        match self {
            Width::W128 => 128,
            Width::W256 => 256,
            Width::W512 => 512,
        }
    }

    pub fn lanes(self) -> usize {
        self.bits() as usize / 32
    }

    /// The widest vectors `isa`'s kernels use: AVX-512's 512 bits, AVX2's 256, and 128 for
    /// portable code.
    pub fn of(isa: Isa) -> Width {
        match isa {
            Isa::Portable => Width::W128,
            Isa::Avx2 => Width::W256,
            Isa::Avx512 => Width::W512,
        }
    }
}

/// One measurement of [`measure`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Peak {
    /// The width measured (at most what the instruction set has).
    pub width: Width,
    /// Whether the chains were fused multiply-adds (false: a multiply and an add, portable).
    pub fused: bool,
    pub threads: usize,
    /// Multiplies and adds per second on all `threads` together, in billions.
    pub gflops: f64,
}

/// Iterations of one run: 12 chains x 16 lanes x 2 flops x 500k is 190 MFLOP per thread,
/// about 1 ms at Zen 5's 512-bit rate. Short runs, many of them: on a shared machine some run
/// within one scheduler slice on a core of their own, and the best counts.
pub const ITERS: u64 = 500_000;
/// Runs per attempt; the best counts (about 40-150 ms an attempt).
pub const RUNS: usize = 40;
/// Attempts per measurement, [`ATTEMPT_GAP`] apart; the best counts. One attempt is short
/// enough for a single disturbance to cover it whole: a measurement taken while another
/// process was exiting once read 70 instead of 135 GFLOP/s on 2 threads, and was cached.
pub const ATTEMPTS: usize = 3;
/// The pause between attempts.
pub const ATTEMPT_GAP: std::time::Duration = std::time::Duration::from_millis(30);

/// The FMA throughput of `threads` threads running at once at `width` (capped at what `cpu`
/// has), in GFLOP/s: the best of [`ATTEMPTS`] attempts of [`RUNS`] runs of [`ITERS`]
/// iterations.
pub fn measure(cpu: Cpu, width: Width, threads: usize) -> Peak {
    let mut best = measure_with(cpu, width, threads, ITERS, RUNS);
    for _ in 1..ATTEMPTS {
        std::thread::sleep(ATTEMPT_GAP);
        let next = measure_with(cpu, width, threads, ITERS, RUNS);
        if next.gflops > best.gflops {
            best = next;
        }
    }
    best
}

/// [`measure`] with `iters` iterations a run, the best of `runs` (at least one of each).
///
/// The threads start once and run in rounds, each round started on all of them together (a
/// barrier), so threads sharing a core's FMA units (SMT siblings) run at once and each sees
/// its share. Each thread's best run counts and the peak is their sum: on a machine shared
/// with other work a round where every thread has a core to itself may never come, but each
/// thread has rounds where it had one.
pub fn measure_with(cpu: Cpu, width: Width, threads: usize, iters: u64, runs: usize) -> Peak {
    let threads = threads.max(1);
    let (iters, runs) = (iters.max(1), runs.max(1));
    let width = width.min(Width::of(cpu.isa()));
    let (probe, fused) = probe(cpu, width);
    let flops = iters as f64 * CHAINS as f64 * 2.0 * width.lanes() as f64;
    let barrier = std::sync::Barrier::new(threads);
    let best: Vec<f64> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(|| {
                    let mut best = 0.0f64;
                    for _ in 0..runs {
                        barrier.wait();
                        let start = Instant::now();
                        std::hint::black_box(probe(iters));
                        best = best.max(flops / start.elapsed().as_secs_f64().max(1e-9) / 1e9);
                    }
                    best
                })
            })
            .collect();
        // The probe is arithmetic and cannot panic; a worker that did would count 0.
        workers.into_iter().map(|w| w.join().unwrap_or(0.0)).collect()
    });
    Peak { width, fused, threads, gflops: best.iter().sum() }
}

/// Independent chains in one loop.
const CHAINS: usize = 12;

/// The loop for `width` on `cpu` (`width` within what it has), and whether it is fused.
fn probe(cpu: Cpu, width: Width) -> (fn(u64) -> f32, bool) {
    #[cfg(target_arch = "x86_64")]
    match (cpu.isa(), width) {
        (Isa::Avx512, Width::W512) => return (x86::run512, true),
        (Isa::Avx512 | Isa::Avx2, Width::W256) => return (x86::run256, true),
        (Isa::Avx512 | Isa::Avx2, Width::W128) => return (x86::run128, true),
        (Isa::Portable, _) | (Isa::Avx2, Width::W512) => {}
    }
    let _ = (cpu, width);
    (portable, false)
}

/// Twelve four-lane chains as a multiply and an add, in plain Rust.
fn portable(iters: u64) -> f32 {
    let mut a: [[f32; 4]; CHAINS] = core::array::from_fn(|i| [1.0 + i as f32 * 1e-3; 4]);
    let c = [1e-7f32; 4];
    let mut m = [0.999_999f32; 4];
    for _ in 0..iters {
        for chain in &mut a {
            for l in 0..4 {
                chain[l] = chain[l] * m[l] + c[l];
            }
        }
        m = std::hint::black_box(m);
    }
    a.iter().flatten().sum()
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use core::arch::asm;
    use core::arch::x86_64::*;

    /// Twelve chains `a = a * m + c` in one `#[target_feature]` function; returns a sum so the
    /// work is kept.
    macro_rules! chains {
        ($name:ident, $feat:literal, $v:ty, $set1:ident, $fma:ident, $add:ident, $reg:ident, $lane0:expr) => {
            /// # Safety
            /// The CPU must have the function's target features.
            #[target_feature(enable = $feat)]
            unsafe fn $name(iters: u64) -> f32 {
                let mut a: [$v; 12] = core::array::from_fn(|i| $set1(1.0 + i as f32 * 1e-3));
                let mut m = $set1(0.999_999);
                let c = $set1(1e-7);
                for _ in 0..iters {
                    a[0] = $fma(a[0], m, c);
                    a[1] = $fma(a[1], m, c);
                    a[2] = $fma(a[2], m, c);
                    a[3] = $fma(a[3], m, c);
                    a[4] = $fma(a[4], m, c);
                    a[5] = $fma(a[5], m, c);
                    a[6] = $fma(a[6], m, c);
                    a[7] = $fma(a[7], m, c);
                    a[8] = $fma(a[8], m, c);
                    a[9] = $fma(a[9], m, c);
                    a[10] = $fma(a[10], m, c);
                    a[11] = $fma(a[11], m, c);
                    // SAFETY: an empty template; it only makes `m` opaque to the optimiser.
                    unsafe { asm!("/* {0} */", inout($reg) m, options(nomem, nostack, preserves_flags)) };
                }
                let mut s = a[0];
                for v in &a[1..] {
                    s = $add(s, *v);
                }
                $lane0(s)
            }
        };
    }

    chains!(f512, "avx512f", __m512, _mm512_set1_ps, _mm512_fmadd_ps, _mm512_add_ps, zmm_reg, _mm512_reduce_add_ps);
    chains!(f256, "avx2,fma", __m256, _mm256_set1_ps, _mm256_fmadd_ps, _mm256_add_ps, ymm_reg, _mm256_cvtss_f32);
    chains!(f128, "fma", __m128, _mm_set1_ps, _mm_fmadd_ps, _mm_add_ps, xmm_reg, _mm_cvtss_f32);

    // The safe entry points are only handed out by `probe` for a `Cpu` token of AVX-512 (for
    // 512 bits) or of AVX2 + FMA (256 and 128 bits), which run detection or an explicit
    // assumption made.
    pub(super) fn run512(iters: u64) -> f32 {
        // SAFETY: `probe` returns this only for an AVX-512 token: the CPU has avx512f.
        unsafe { f512(iters) }
    }

    pub(super) fn run256(iters: u64) -> f32 {
        // SAFETY: `probe` returns this only for an AVX2 or AVX-512 token: the CPU has AVX2 and
        // FMA.
        unsafe { f256(iters) }
    }

    pub(super) fn run128(iters: u64) -> f32 {
        // SAFETY: as `run256`: the CPU has FMA.
        unsafe { f128(iters) }
    }
}

/// One task's part of a memory read probe: sums `part` as four sequential streams (its four
/// quarters side by side; a remainder of up to 3 words is left out) with wrapping integer adds,
/// which the compiler vectorises with several accumulators, so the loop is bound by memory
/// and not by add latency. The benchmarks time it over buffers larger than the caches on
/// every thread at once; the sums only keep the reads from being optimised away.
pub fn read_streams(part: &[u64]) -> [u64; 4] {
    let q = part.len() / 4;
    let (a, rest) = part.split_at(q);
    let (b, rest) = rest.split_at(q);
    let (c, d) = rest.split_at(q);
    let mut acc = [0u64; 4];
    for i in 0..q {
        acc[0] = acc[0].wrapping_add(a[i]);
        acc[1] = acc[1].wrapping_add(b[i]);
        acc[2] = acc[2].wrapping_add(c[i]);
        acc[3] = acc[3].wrapping_add(d[i]);
    }
    acc
}
