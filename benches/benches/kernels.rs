//! Kernel speed at batch 1 on all threads, against the machine's own limits measured in the
//! same run: `cargo bench -p cnnc-benches --bench kernels` runs the criterion groups and then
//! prints the summary; `-- --report` prints only the summary (faster: medians of short runs,
//! and their fastest run) with one JSON line per result, for the closing table beside
//! `../shared/tools/ort_layers.py`;
//! `-- --report --cold` prints only the peak and ResNet-50's convolutions with warm and cold
//! weights (read from memory, as inside the whole model).
//! Like those tools, each measurement first waits (at most 30 s) for other processes to leave
//! the CPUs idle and reports their share while it ran (`noisy` above 5 %).

use cnnc_benches::layers::{self, Algorithm, NetKind, Pass, Weights};
use cnnc_benches::{idle, peak};
use cnnc_kernels::conv;
use cnnc_kernels::par::Parallel;
use cnnc_kernels::threads::ThreadPool;
use criterion::{Criterion, Throughput};
use std::time::{Duration, Instant};

fn pool() -> &'static ThreadPool {
    ThreadPool::global()
}

fn criterion_groups(c: &mut Criterion) {
    let mut group = c.benchmark_group("conv_forward");
    for layer in layers::table() {
        let mut p = layers::prepare(&layer, Pass::Forward, pool());
        group.throughput(Throughput::Elements(p.flop as u64));
        group.bench_function(layer.name, |b| b.iter(|| p.run()));
    }
    group.finish();
    for (pass, name) in [(Pass::BackwardData, "conv_backward_data"), (Pass::BackwardWeights, "conv_backward_weights")] {
        let mut group = c.benchmark_group(name);
        for layer in layers::backward_table() {
            let mut p = layers::prepare(&layer, pass, pool());
            group.throughput(Throughput::Elements(p.flop as u64));
            group.bench_function(layer.name, |b| b.iter(|| p.run()));
        }
        group.finish();
    }
    let mut group = c.benchmark_group("dispatch");
    group.bench_function("empty_tasks", |b| b.iter(|| pool().run(pool().threads() * 4, &|_, _| {})));
    group.bench_function("empty_tasks_after_2ms_idle", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                std::thread::sleep(Duration::from_millis(2));
                let t0 = Instant::now();
                pool().run(pool().threads() * 4, &|_, _| {});
                total += t0.elapsed();
            }
            total
        })
    });
    group.finish();
}

/// Median microseconds of one run of `tasks` empty tasks through the pool, back to back
/// (workers spinning) or after `gap` of idleness (workers asleep once it exceeds the spin
/// window, `CNNC_SPIN_US`, 200 us by default).
fn dispatch_us(tasks: usize, gap: Duration) -> f64 {
    let reps = if gap.is_zero() { 20_000 } else { 300 };
    let mut t = Vec::with_capacity(reps);
    for _ in 0..reps {
        if !gap.is_zero() {
            std::thread::sleep(gap);
        }
        let t0 = Instant::now();
        pool().run(tasks, &|_, _| {});
        t.push(t0.elapsed().as_secs_f64() * 1e6);
    }
    t.sort_by(f64::total_cmp);
    t[reps / 2]
}

/// Times `prep` after waiting for a quiet machine: the median and fastest seconds of `reps`
/// runs, and the JSON fields saying how long we waited and how quiet the machine was (a
/// noisy result flagged). The fastest run is what the kernel does when nothing
/// else on the host gets in its way (on a shared host a neighbour in the core's caches slows
/// cache-heavy kernels by up to half while a register-only FMA loop keeps the peak), the
/// median what a user gets.
fn timed(prep: &mut layers::Prepared, reps: usize) -> ([f64; 2], String) {
    let (waited, quiet) = idle::wait(Duration::from_secs(30));
    let w = idle::Window::start();
    let secs = prep.median_min_secs(reps);
    let others = w.others();
    let noisy = if others > idle::NOISY || !quiet { ",\"noisy\":true" } else { "" };
    (secs, format!(",\"waited_s\":{waited:.1},\"others\":{others:.3}{noisy}"))
}

/// A memory-bound layer and the read probe over a buffer of the same size, taking turns (the
/// bandwidth a shared machine gives swings by half within minutes, so the probe's figure from
/// the start of the run is no fair measure of a layer timed later): the medians of both in GB/s.
/// The layer's bytes count each operand once, as the probe's do.
fn read_turns(prep: &mut layers::Prepared, threads: usize) -> [f64; 2] {
    let words: Vec<u64> = (0..(prep.bytes / 8.0) as u64).collect();
    let (mut layer, mut read) = (Vec::new(), Vec::new());
    for _ in 0..30 {
        let t0 = Instant::now();
        prep.run();
        layer.push(t0.elapsed().as_secs_f64());
        read.push(peak::read_secs(&words, threads));
    }
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    [prep.bytes / median(layer) / 1e9, (words.len() * 8) as f64 / median(read) / 1e9]
}

/// ResNet-50's convolutions with warm weights (the same copy every run) and cold ones (cycling
/// through [`layers::COLD_BYTES`] of copies, as inside the whole model, whose ~100 MB of weights
/// outgrow the last-level cache), in alternating rounds; one JSON line per layer with the
/// medians over rounds of each round's median, and the fastest run.
fn report_cold(peak_all: f64) {
    let (waited, _) = idle::wait(Duration::from_secs(30));
    let w = idle::Window::start();
    let mut total = [0.0; 2];
    for layer in layers::resnet50() {
        let NetKind::Conv { shape, relu, residual } = layer.kind else { continue };
        let mut warm = layers::conv_weights(shape, relu, residual, Weights::Warm, Algorithm::Chosen, pool());
        let mut cold = layers::conv_weights(shape, relu, residual, Weights::Cold, Algorithm::Chosen, pool());
        let (mut med, mut min) = ([vec![], vec![]], [f64::INFINITY; 2]);
        for _ in 0..5 {
            for (i, p) in [&mut warm, &mut cold].into_iter().enumerate() {
                let [m, f] = p.median_min_secs(40);
                med[i].push(m);
                min[i] = min[i].min(f);
            }
        }
        let [warm_ms, cold_ms] = [0, 1].map(|i| {
            med[i].sort_by(f64::total_cmp);
            med[i][med[i].len() / 2] * 1e3
        });
        total[0] += warm_ms * layer.count as f64;
        total[1] += cold_ms * layer.count as f64;
        let pct = |ms: f64| 100.0 * warm.flop / (ms * 1e-3) / 1e9 / peak_all;
        println!(
            "{{\"tool\":\"cnnc_kernels_cold\",\"layer\":\"{}\",\"count\":{},\"weights_mb\":{:.2},\"warm_ms\":{warm_ms:.4},\"warm_min_ms\":{:.4},\"warm_pct_peak\":{:.1},\"cold_ms\":{cold_ms:.4},\"cold_min_ms\":{:.4},\"cold_pct_peak\":{:.1}}}",
            layer.name,
            layer.count,
            4.0 * conv::packed_weight_len(&shape).unwrap_or(0) as f64 / 1e6,
            min[0] * 1e3,
            pct(warm_ms),
            min[1] * 1e3,
            pct(cold_ms),
        );
    }
    let others = w.others();
    println!(
        "{{\"tool\":\"cnnc_kernels_cold_sum\",\"warm_ms\":{:.3},\"cold_ms\":{:.3},\"waited_s\":{waited:.1},\"others\":{others:.3}}}",
        total[0], total[1]
    );
}

fn report(only_cold: bool) {
    let threads = pool().threads();
    idle::wait(Duration::from_secs(60));
    let p = peak::measure(threads);
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_default();
    println!("cpu: {cpu}, {threads} threads, kernels: {}", cnnc_kernels::cpu::active().isa().name());
    let row = |name: &str, w: Option<[f64; 2]>| match w {
        Some([a, b]) => println!("peak {name:>7}: {a:7.1} GFLOP/s 1 thread, {b:7.1} all threads"),
        None => println!("peak {name:>7}: not supported"),
    };
    row("512-bit", p.w512);
    row("256-bit", p.w256);
    row("128-bit", p.w128);
    println!(
        "read bandwidth {:.1} / {:.1} GB/s, triad {:.1} / {:.1} GB/s (1 / all threads)",
        p.read[0], p.read[1], p.triad[0], p.triad[1]
    );
    let peak_all = p.all_threads();
    println!(
        "{{\"tool\":\"cnnc_kernels_peak\",\"threads\":{threads},\"peak_gflops\":{peak_all:.1},\"read_gbs\":{:.1},\"triad_gbs\":{:.1}}}",
        p.read[1], p.triad[1]
    );
    if only_cold {
        report_cold(peak_all);
        return;
    }
    for pass in [Pass::Forward, Pass::BackwardData, Pass::BackwardWeights] {
        let list = if pass == Pass::Forward { layers::table() } else { layers::backward_table() };
        for layer in list {
            let mut prep = layers::prepare(&layer, pass, pool());
            let reps = if prep.bytes > 1e8 { 40 } else { 200 };
            let ([secs, best], note) = timed(&mut prep, reps);
            let gflops = prep.flop / secs / 1e9;
            // Where padding makes the nominal count overstate the work by more than 5 % (maps
            // of 1 or 2 pixels), also the share of the peak of the products that touch the image.
            let useful = match layers::in_image_flop(&layer) {
                Some(in_image) if in_image < 0.95 * prep.flop => {
                    format!(",\"in_image_pct_peak\":{:.1}", 100.0 * in_image / secs / 1e9 / peak_all)
                }
                _ => String::new(),
            };
            let bw = if prep.bytes > 0.0 {
                let gbs = prep.bytes / secs / 1e9;
                let [turn_gbs, turn_read] = read_turns(&mut prep, threads);
                format!(
                    ",\"gbs\":{gbs:.1},\"pct_read_bw\":{:.1},\"turns_gbs\":{turn_gbs:.1},\"turns_read_gbs\":{turn_read:.1},\"turns_pct_read_bw\":{:.1}",
                    100.0 * gbs / p.read[1],
                    100.0 * turn_gbs / turn_read
                )
            } else {
                String::new()
            };
            let best_pct = if prep.flop > 0.0 {
                format!(",\"best_pct_peak\":{:.1}", 100.0 * prep.flop / best / 1e9 / peak_all)
            } else {
                String::new()
            };
            println!(
                "{{\"tool\":\"cnnc_kernels\",\"layer\":\"{}\",\"pass\":\"{pass:?}\",\"median_ms\":{:.4},\"min_ms\":{:.4},\"gflops\":{gflops:.1},\"pct_peak\":{:.1}{best_pct}{useful}{bw}{note}}}",
                layer.name,
                secs * 1e3,
                best * 1e3,
                100.0 * gflops / peak_all
            );
        }
    }
    // Sums of the layers' medians and of their fastest runs.
    let (mut total, mut best_total) = (0.0, 0.0);
    for layer in layers::resnet50() {
        let mut prep = layers::prepare_net(&layer, pool());
        let ([secs, best], note) = timed(&mut prep, 200);
        total += secs * layer.count as f64;
        best_total += best * layer.count as f64;
        println!(
            "{{\"tool\":\"cnnc_kernels_resnet50\",\"layer\":\"{}\",\"count\":{},\"median_ms\":{:.4},\"min_ms\":{:.4},\"gflops\":{:.1}{note}}}",
            layer.name,
            layer.count,
            secs * 1e3,
            best * 1e3,
            prep.flop / secs / 1e9
        );
    }
    let gflop = 2.0 * 4_089_184_256.0 / 1e9;
    println!(
        "{{\"tool\":\"cnnc_kernels_resnet50_sum\",\"batch\":1,\"sum_ms\":{:.3},\"gflop\":{gflop:.3},\"gflops\":{:.1},\"pct_peak\":{:.1},\"best_sum_ms\":{:.3},\"best_pct_peak\":{:.1}}}",
        total * 1e3,
        gflop / total,
        100.0 * gflop / total / peak_all,
        best_total * 1e3,
        100.0 * gflop / best_total / peak_all
    );
    report_cold(peak_all);
    for (tasks, gap_us) in [(threads, 0), (8 * threads, 0), (8 * threads, 100), (8 * threads, 2000)] {
        let us = dispatch_us(tasks, Duration::from_micros(gap_us));
        println!(
            "{{\"tool\":\"cnnc_kernels_dispatch\",\"tasks\":{tasks},\"idle_before_us\":{gap_us},\"median_us\":{us:.2}}}"
        );
    }
}

fn main() {
    if std::env::args().any(|a| a == "--report") {
        report(std::env::args().any(|a| a == "--cold"));
        return;
    }
    let mut c = Criterion::default().configure_from_args();
    criterion_groups(&mut c);
    c.final_summary();
    report(false);
}
