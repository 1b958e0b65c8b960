//! The machine's limits, measured by the benchmark itself in the same run as the kernels (the
//! method of `../shared/tools/peak.c`): fp32 FMA GFLOP/s at 128, 256 and 512 bits on one and
//! on all threads (a register-only loop of 12 independent FMA chains, the multiplier hidden
//! from the optimiser by an empty `asm!`), and memory read bandwidth (a vectorised sum over
//! 256 MiB as four sequential streams per thread) and triad bandwidth.

use std::time::Instant;

/// FMA GFLOP/s per width, `[1 thread, all threads]`; `None` where the CPU lacks the width.
#[derive(Clone, Copy, Debug, Default)]
pub struct Peak {
    pub w512: Option<[f64; 2]>,
    pub w256: Option<[f64; 2]>,
    pub w128: Option<[f64; 2]>,
    /// GB/s `[1 thread, all threads]`.
    pub read: [f64; 2],
    pub triad: [f64; 2],
    pub threads: usize,
}

impl Peak {
    /// The machine's peak on all threads: the best width.
    pub fn all_threads(&self) -> f64 {
        [self.w512, self.w256, self.w128].iter().flatten().map(|p| p[1]).fold(0.0, f64::max)
    }
}

const ITERS: u64 = 50_000_000;

#[cfg(target_arch = "x86_64")]
mod fma {
    use std::arch::asm;
    use std::arch::x86_64::*;

    /// Twelve chains `a = a * m + c`; returns a lane so the work is kept.
    macro_rules! chains {
        ($name:ident, $feat:literal, $v:ty, $set1:ident, $fma:ident, $add:ident, $reg:ident, $cvt:expr) => {
            #[target_feature(enable = $feat)]
            pub unsafe fn $name(iters: u64) -> f32 {
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
                $cvt(s)
            }
        };
    }

    chains!(
        f512,
        "avx512f",
        __m512,
        _mm512_set1_ps,
        _mm512_fmadd_ps,
        _mm512_add_ps,
        zmm_reg,
        |s| _mm512_reduce_add_ps(s)
    );
    chains!(f256, "avx2,fma", __m256, _mm256_set1_ps, _mm256_fmadd_ps, _mm256_add_ps, ymm_reg, |s| _mm256_cvtss_f32(s));
    chains!(f128, "fma", __m128, _mm_set1_ps, _mm_fmadd_ps, _mm_add_ps, xmm_reg, |s| _mm_cvtss_f32(s));
}

/// GFLOP/s of `f` on `threads` threads at once: best of 3 runs.
fn fma_rate(threads: usize, lanes: f64, f: unsafe fn(u64) -> f32) -> f64 {
    let mut best = 0.0f64;
    for _ in 0..3 {
        let t0 = Instant::now();
        std::thread::scope(|s| {
            for _ in 0..threads {
                // SAFETY: callers pass only functions whose features this CPU has.
                s.spawn(move || std::hint::black_box(unsafe { f(ITERS) }));
            }
        });
        let secs = t0.elapsed().as_secs_f64();
        best = best.max(threads as f64 * ITERS as f64 * 12.0 * 2.0 * lanes / secs / 1e9);
    }
    best
}

/// Read bandwidth in GB/s: each thread sums its part of `data` as four sequential streams.
/// Wrapping integer sums, which the compiler vectorises with several accumulators, so the loop
/// is bound by memory and not by add latency (four dependent f64 chains top out near
/// 40 GB/s per core on Zen 5, below what the memory delivers).
fn read_rate(data: &[u64], threads: usize) -> f64 {
    let mut best = 0.0f64;
    for _ in 0..5 {
        let t0 = Instant::now();
        std::thread::scope(|s| {
            for part in data.chunks(data.len().div_ceil(threads)) {
                s.spawn(move || {
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
                    std::hint::black_box(acc)
                });
            }
        });
        best = best.max((data.len() * 8) as f64 / t0.elapsed().as_secs_f64() / 1e9);
    }
    best
}

/// Triad bandwidth in GB/s (`a = b + s c`, 24 bytes per element as STREAM counts it).
fn triad_rate(a: &mut [f64], b: &[f64], c: &[f64], threads: usize) -> f64 {
    let mut best = 0.0f64;
    let chunk = a.len().div_ceil(threads);
    for _ in 0..5 {
        let t0 = Instant::now();
        std::thread::scope(|s| {
            for ((a, b), c) in a.chunks_mut(chunk).zip(b.chunks(chunk)).zip(c.chunks(chunk)) {
                s.spawn(move || {
                    for i in 0..a.len() {
                        a[i] = b[i] + 3.0 * c[i];
                    }
                });
            }
        });
        best = best.max((a.len() * 24) as f64 / t0.elapsed().as_secs_f64() / 1e9);
    }
    best
}

/// Measures everything on 1 and on `threads` threads.
pub fn measure(threads: usize) -> Peak {
    let mut p = Peak { threads, ..Peak::default() };
    #[cfg(target_arch = "x86_64")]
    {
        let both = |lanes: f64, f: unsafe fn(u64) -> f32| [fma_rate(1, lanes, f), fma_rate(threads, lanes, f)];
        if is_x86_feature_detected!("avx512f") {
            p.w512 = Some(both(16.0, fma::f512));
        }
        if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
            p.w256 = Some(both(8.0, fma::f256));
        }
        if is_x86_feature_detected!("fma") {
            p.w128 = Some(both(4.0, fma::f128));
        }
    }
    let n = 32 << 20; // 256 MiB of f64 per array
    let b: Vec<f64> = (0..n).map(|i| i as f64).collect();
    let c = b.clone();
    let mut a = vec![0.0f64; n];
    let words: Vec<u64> = (0..n as u64).collect();
    p.read = [read_rate(&words, 1), read_rate(&words, threads)];
    drop(words);
    p.triad = [triad_rate(&mut a, &b, &c, 1), triad_rate(&mut a, &b, &c, threads)];
    p
}
