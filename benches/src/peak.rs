//! The machine's limits, measured by the benchmark itself in the same run as the kernels: fp32
//! FMA GFLOP/s at 128, 256 and 512 bits on one and on all threads (`cnnc_kernels::peak`, the
//! probe `cnnc bench` uses), and memory read bandwidth (a vectorised sum over 256 MiB as four
//! sequential streams per thread) and triad bandwidth.

use cnnc_kernels::par::Parallel;
use cnnc_kernels::threads::ThreadPool;
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

/// Read bandwidth in GB/s: each thread sums its part of `data` as four sequential streams
/// (`cnnc_kernels::peak::read_streams`: integer sums, as four dependent f64 chains top out near
/// 40 GB/s per core on Zen 5, below what the memory delivers).
fn read_rate(data: &[u64], threads: usize) -> f64 {
    (0..5).map(|_| read_secs(data, threads)).map(|secs| (data.len() * 8) as f64 / secs / 1e9).fold(0.0, f64::max)
}

/// Seconds of one pass of [`read_rate`]'s sum over `data` as `threads` tasks on the kernels'
/// pool (each its own part, as four sequential streams), so that it is timed like a kernel.
pub fn read_secs(data: &[u64], threads: usize) -> f64 {
    let chunk = data.len().div_ceil(threads);
    let t0 = Instant::now();
    ThreadPool::global().run(threads, &|t, _| {
        let part = &data[(t * chunk).min(data.len())..((t + 1) * chunk).min(data.len())];
        std::hint::black_box(cnnc_kernels::peak::read_streams(part));
    });
    t0.elapsed().as_secs_f64()
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
    use cnnc_kernels::peak::Width;
    let mut p = Peak { threads, ..Peak::default() };
    let cpu = cnnc_kernels::cpu::best();
    // The kernels' probe, at each width this CPU has FMA for (a portable-only CPU has none).
    let both = |width: Width| {
        let rate = |t| cnnc_kernels::peak::measure(cpu, width, t);
        let (one, all) = (rate(1), rate(threads));
        (one.fused && one.width == width).then_some([one.gflops, all.gflops])
    };
    p.w512 = both(Width::W512);
    p.w256 = both(Width::W256);
    p.w128 = both(Width::W128);
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
