//! Where a layer's time goes from run to run on the thread pool: runs one convolution (forward
//! or backward-weights) many times through a wrapper of the pool that times every task, then
//! prints, for the runs in each quarter of the run times, the mean time, how late the last
//! task started, how long the slowest and the fastest task took, how often one thread ran
//! every task and how often every task ran on the thread that ran it the run before (its data
//! then still in that core's caches). On a shared machine the best run of a layer can be half
//! again as fast as its median; this tells a late or slow thread from slow tasks everywhere,
//! and a slow core (its tasks slower than the other's for seconds at a time) from both.
//! Run with `cargo run --release -p cnnc-kernels --example spread [LAYER] [runs] [bwdw]`
//! (`bwdw`: the backward-weights pass of the layer instead of its forward; layers as
//! `common/layer.rs` names them).

#[path = "common/layer.rs"]
mod layer;

use cnnc_kernels::act::Act;
use cnnc_kernels::conv::{self, ConvPlan, Epilogue};
use cnnc_kernels::conv_bwd_weights::{self, BwdWeightsIo, BwdWeightsPlan};
use cnnc_kernels::lines::Lines;
use cnnc_kernels::par::Parallel;
use cnnc_kernels::threads::ThreadPool;
use cnnc_kernels::{conv_fwd, cpu};
use layer::Buffers;
use std::sync::Mutex;
use std::time::Instant;

/// One task of a run: its number, its thread, its start and end in seconds after the run began.
struct TaskTime {
    task: usize,
    thread: usize,
    start: f64,
    end: f64,
}

/// One run: its time, when its last task started, its slowest and fastest task (seconds),
/// whether one thread ran every task, and whether every task ran on the thread that ran it the
/// run before.
struct Run {
    secs: f64,
    last_start: f64,
    slowest: f64,
    fastest: f64,
    one_thread: bool,
    same_threads: bool,
}

/// The global pool, with every task of a run timed.
struct Timed {
    pool: &'static ThreadPool,
    log: Mutex<Vec<TaskTime>>,
}

// SAFETY: forwards to the pool, which keeps the contract; the wrapper only times the calls.
unsafe impl Parallel for Timed {
    fn threads(&self) -> usize {
        self.pool.threads()
    }

    fn run(&self, tasks: usize, f: &(dyn Fn(usize, usize) + Sync)) {
        let t0 = Instant::now();
        self.pool.run(tasks, &|task, thread| {
            let start = t0.elapsed().as_secs_f64();
            f(task, thread);
            let end = t0.elapsed().as_secs_f64();
            self.log.lock().unwrap().push(TaskTime { task, thread, start, end });
        });
    }
}

fn main() {
    let which = std::env::args().nth(1).unwrap_or_else(|| "64".into());
    // At least one run in each quarter.
    let runs: usize = std::env::args().nth(2).and_then(|a| a.parse().ok()).unwrap_or(2000).max(4);
    let backward = std::env::args().nth(3).is_some_and(|a| a == "bwdw");
    let shape = layer::named(&which);
    let pool = ThreadPool::global();
    let Buffers { mut arena, weights, bias, x, y } = Buffers::new(&shape);
    // One run of the pass measured, its task count and what it is; only its plan is made.
    type Pass = Box<dyn FnMut(&Timed)>;
    let (mut pass, tasks, what): (Pass, usize, String) = if backward {
        // Backward-weights reads the input and takes the output's view as the output gradient.
        let plan = BwdWeightsPlan::new(shape, true, false, cpu::active()).unwrap();
        let io = BwdWeightsIo { x, gy: y, relu: None };
        let mut dw = Lines::filled(conv::packed_weight_len(&shape).unwrap(), 0.0);
        let mut db = Lines::filled(shape.oc, 0.0);
        let what = format!("backward-weights: {} tasks, tile {:?}", plan.tasks(), plan.tile());
        let run = move |par: &Timed| {
            conv_bwd_weights::backward_weights(par, &plan, &mut arena, &io, &mut dw, Some(&mut db)).unwrap()
        };
        (Box::new(run), plan.tasks(), what)
    } else {
        let epi = Epilogue { bias: true, scale_shift: false, residual: false, act: Act::NONE };
        let plan = ConvPlan::new(shape, epi, cpu::active(), pool.threads()).unwrap();
        let mut scratch = Lines::filled(plan.scratch_len(pool.threads()), 0.0);
        let what = format!("{} tasks, split {:?}", plan.tasks(), plan.split_info());
        let run = move |par: &Timed| {
            let io = layer::io(x, y, &weights, &bias);
            conv_fwd::forward(par, &plan, &mut arena, &io, &mut scratch).unwrap()
        };
        (Box::new(run), plan.tasks(), what)
    };
    let timed = Timed { pool, log: Mutex::new(Vec::new()) };
    let flop = 2.0 * shape.macs();
    let mut rec: Vec<Run> = Vec::with_capacity(runs);
    let mut owner = vec![usize::MAX; tasks];
    for _ in 0..runs {
        timed.log.lock().unwrap().clear();
        let t = Instant::now();
        pass(&timed);
        let secs = t.elapsed().as_secs_f64();
        let log = timed.log.lock().unwrap();
        let same_threads = log.iter().all(|e| owner[e.task] == e.thread);
        log.iter().for_each(|e| owner[e.task] = e.thread);
        rec.push(Run {
            secs,
            last_start: log.iter().map(|e| e.start).fold(0.0, f64::max),
            slowest: log.iter().map(|e| e.end - e.start).fold(0.0, f64::max),
            fastest: log.iter().map(|e| e.end - e.start).fold(f64::INFINITY, f64::min),
            one_thread: log.iter().all(|e| e.thread == log[0].thread),
            same_threads,
        });
    }
    rec.sort_by(|a, b| a.secs.total_cmp(&b.secs));
    println!("{which} {what}, {runs} runs");
    let us = |s: f64| s * 1e6;
    for (lo, hi) in [(0.0, 0.25), (0.25, 0.5), (0.5, 0.75), (0.75, 1.0)] {
        let part = &rec[(lo * runs as f64) as usize..(hi * runs as f64) as usize];
        let n = part.len() as f64;
        let mean = |f: &dyn Fn(&Run) -> f64| part.iter().map(f).sum::<f64>() / n;
        let share = |f: &dyn Fn(&Run) -> bool| 100.0 * mean(&|r| f64::from(u8::from(f(r))));
        println!(
            "runs {:3.0}-{:3.0} %: {:7.1} us ({:5.1} GFLOP/s), last task started {:6.1} us, slowest task {:7.1} us, fastest {:7.1} us, one thread ran all: {:4.1} %, tasks on last run's threads: {:4.1} %",
            lo * 100.0,
            hi * 100.0,
            us(mean(&|r| r.secs)),
            flop / mean(&|r| r.secs) / 1e9,
            us(mean(&|r| r.last_start)),
            us(mean(&|r| r.slowest)),
            us(mean(&|r| r.fastest)),
            share(&|r| r.one_thread),
            share(&|r| r.same_threads)
        );
    }
}
