//! The thread pool's contract: every task exactly once, never two tasks on one thread number
//! at a time, whether the workers are spinning, asleep or busy in an earlier run.

use cnnc_kernels::par::Parallel;
use cnnc_kernels::threads::ThreadPool;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::time::Duration;

/// Runs `tasks` tasks on `pool` and checks the contract; a task may sleep `nap` to let the
/// others overtake it.
fn check_run(pool: &ThreadPool, tasks: usize, nap: Duration) {
    let runs: Vec<AtomicUsize> = (0..tasks).map(|_| AtomicUsize::new(0)).collect();
    let busy: Vec<AtomicBool> = (0..pool.threads()).map(|_| AtomicBool::new(false)).collect();
    let overlap = AtomicBool::new(false);
    pool.run(tasks, &|task, thread| {
        assert!(thread < pool.threads(), "thread {thread} of {}", pool.threads());
        if busy[thread].swap(true, SeqCst) {
            overlap.store(true, SeqCst);
        }
        runs[task].fetch_add(1, SeqCst);
        if task % 3 == 0 {
            std::thread::sleep(nap);
        }
        busy[thread].store(false, SeqCst);
    });
    let counts: Vec<usize> = runs.iter().map(|r| r.load(SeqCst)).collect();
    assert!(counts.iter().all(|&c| c == 1), "{tasks} tasks on {} threads ran {counts:?}", pool.threads());
    assert!(!overlap.load(SeqCst), "two tasks ran at once under one thread number");
}

#[test]
fn every_task_runs_once_for_any_task_count_and_pool_size() {
    for threads in 1..=4 {
        let pool = ThreadPool::new(threads);
        for tasks in 0..=12 {
            check_run(&pool, tasks, Duration::ZERO);
            check_run(&pool, tasks, Duration::from_micros(300));
        }
        // Workers asleep (past their spin) when the run starts, then spinning between runs.
        std::thread::sleep(Duration::from_millis(5));
        check_run(&pool, threads, Duration::ZERO);
        for _ in 0..200 {
            check_run(&pool, threads, Duration::ZERO);
        }
    }
}

#[test]
fn a_run_inside_a_task_runs_serially_on_its_thread() {
    let pool = ThreadPool::new(3);
    let inner = AtomicUsize::new(0);
    pool.run(4, &|_, thread| {
        pool.run(5, &|_, inner_thread| {
            assert_eq!(inner_thread, thread);
            inner.fetch_add(1, SeqCst);
        });
    });
    assert_eq!(inner.load(SeqCst), 20);
}
