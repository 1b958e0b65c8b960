//! How close the fc forward kernel at batch 1 comes to the memory: it times `fc::forward` on
//! VGG's fc layers (4096->4096, 64 MiB of weights; 25088->4096, 392 MiB) against a plain sum of
//! the same weights read as four sequential streams per task (the read probe's loop), the two
//! taking turns so both see the same machine, and prints each one's median and best GB/s and
//! the kernel's median as a share of the sum's. A 64 MiB layer is partly served by a 32 MiB L3
//! when it runs again and again, so both figures there exceed DRAM's.
//! Run with `cargo run --release -p cnnc-kernels --example fc_stream [I O] [rounds]`.

use cnnc_kernels::act::Act;
use cnnc_kernels::fc::{self, FcPlan};
use cnnc_kernels::par::Parallel;
use cnnc_kernels::threads::ThreadPool;
use cnnc_kernels::{cpu, peak};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

/// Sums `words` as four sequential streams per task, `tasks` tasks on the pool.
fn stream_sum(pool: &ThreadPool, words: &[u64], tasks: usize) -> u64 {
    let chunk = words.len().div_ceil(tasks);
    let total = AtomicU64::new(0);
    pool.run(tasks, &|t, _| {
        let part = &words[(t * chunk).min(words.len())..((t + 1) * chunk).min(words.len())];
        let acc = std::hint::black_box(peak::read_streams(part));
        total.fetch_add(acc.iter().fold(0u64, |s, v| s.wrapping_add(*v)), Ordering::Relaxed);
    });
    total.into_inner()
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let args: Vec<usize> = std::env::args().skip(1).filter_map(|a| a.parse().ok()).collect();
    let layers: Vec<(usize, usize)> = match args.as_slice() {
        [i, o, ..] => vec![(*i, *o)],
        _ => vec![(4096, 4096), (25088, 4096)],
    };
    let rounds = args.get(2).copied().unwrap_or(30);
    let pool = ThreadPool::global();
    for (i, o) in layers {
        let plan = FcPlan::new(1, i, o, true, Act::NONE, cpu::active(), pool.threads()).expect("plan");
        let x: Vec<f32> = (0..i).map(|k| (k % 7) as f32 * 0.1).collect();
        let bias = vec![0.5f32; o];
        // The weights as u64 words, viewed as f32 for the kernel: one buffer for both readers.
        let words: Vec<u64> = (0..i * o / 2).map(|k| (k % 13) as u64 * 0x3c00_0000_3c00_0000).collect();
        // SAFETY: `words` holds i o / 2 u64s, i.e. i o f32s (any bit pattern is an f32), aligned
        // to 8 >= 4 bytes, and is only read while this view lives.
        let w: &[f32] = unsafe { std::slice::from_raw_parts(words.as_ptr().cast::<f32>(), i * o) };
        let mut y = vec![0f32; o];
        let bytes = (i * o * 4) as f64;
        let (mut kernel, mut sum) = (Vec::new(), Vec::new());
        for _ in 0..rounds {
            let t0 = Instant::now();
            fc::forward(pool, &plan, &x, w, Some(&bias), &mut y).expect("fc");
            kernel.push(t0.elapsed().as_secs_f64());
            let t0 = Instant::now();
            std::hint::black_box(stream_sum(pool, &words, plan.tasks()));
            sum.push(t0.elapsed().as_secs_f64());
        }
        let (bk, bs) = (kernel.iter().copied().fold(f64::MAX, f64::min), sum.iter().copied().fold(f64::MAX, f64::min));
        let (mk, ms) = (median(&mut kernel), median(&mut sum));
        println!(
            "fc {i}->{o} ({:.0} MiB, {} tasks): kernel {:.1} GB/s (best {:.1}), 4-stream sum {:.1} GB/s (best {:.1}); kernel {:.0} % of the sum",
            bytes / (1 << 20) as f64,
            plan.tasks(),
            bytes / mk / 1e9,
            bytes / bk / 1e9,
            bytes / ms / 1e9,
            bytes / bs / 1e9,
            100.0 * ms / mk
        );
    }
}
