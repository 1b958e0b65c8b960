//! The persistent thread pool (std): workers started once, each layer's tasks handed to them
//! with a few atomic operations, the calling thread working too.
//!
//! A run publishes the job (a pointer to the caller's closure and the task count) under a new
//! epoch; workers take task numbers from a shared counter. Between runs a worker spins for a
//! while (`CNNC_SPIN_US`, default 200 microseconds: long enough to bridge the serial gap
//! between two layers) and then sleeps on a condition variable, so an idle pool costs nothing.
//! The closure lives on the caller's stack: a worker announces itself (`active`) before it
//! looks at the job and re-checks that the job is still open, and the caller closes the job
//! and waits for `active` to drop to zero before returning, so no worker can touch the closure
//! afterwards. A panic in a task is caught in the worker and re-raised in the caller.

use super::par::Parallel;
use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The job of one run: the caller's closure and its task count.
struct Job<'a> {
    f: &'a (dyn Fn(usize, usize) + Sync),
    tasks: usize,
}

/// `state` holds `epoch << 1 | closed`.
const CLOSED: usize = 1;

struct Shared {
    state: AtomicUsize,
    job: AtomicPtr<Job<'static>>,
    next: AtomicUsize,
    active: AtomicUsize,
    panicked: AtomicBool,
    sleepers: AtomicUsize,
    lock: Mutex<()>,
    wake: Condvar,
    shutdown: AtomicBool,
    spin: Duration,
}

/// A fixed set of worker threads that run [`Parallel`] jobs together with the caller.
pub struct ThreadPool {
    shared: Arc<Shared>,
    workers: Vec<JoinHandle<()>>,
    run_lock: Mutex<()>,
}

impl std::fmt::Debug for ThreadPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ThreadPool").field("threads", &self.threads()).finish()
    }
}

thread_local! {
    /// The thread number of the pool task running on this thread, if any.
    static IN_TASK: Cell<Option<usize>> = const { Cell::new(None) };
}

impl ThreadPool {
    /// A pool of `threads` threads in all (the caller counts as one; at least 1).
    pub fn new(threads: usize) -> ThreadPool {
        let spin_us = std::env::var("CNNC_SPIN_US").ok().and_then(|v| v.parse().ok()).unwrap_or(200);
        let shared = Arc::new(Shared {
            state: AtomicUsize::new(CLOSED),
            job: AtomicPtr::new(std::ptr::null_mut()),
            next: AtomicUsize::new(0),
            active: AtomicUsize::new(0),
            panicked: AtomicBool::new(false),
            sleepers: AtomicUsize::new(0),
            lock: Mutex::new(()),
            wake: Condvar::new(),
            shutdown: AtomicBool::new(false),
            spin: Duration::from_micros(spin_us),
        });
        let workers = (1..threads.max(1))
            .map(|id| {
                let shared = Arc::clone(&shared);
                std::thread::Builder::new()
                    .name(format!("cnnc-kernels-{id}"))
                    .spawn(move || worker(&shared, id))
                    .expect("spawning a kernel worker thread")
            })
            .collect();
        ThreadPool { shared, workers, run_lock: Mutex::new(()) }
    }

    /// The process-wide pool: `CNNC_THREADS` threads, or the available parallelism.
    pub fn global() -> &'static ThreadPool {
        static POOL: OnceLock<ThreadPool> = OnceLock::new();
        POOL.get_or_init(|| ThreadPool::new(default_threads()))
    }
}

/// `CNNC_THREADS` if set to a positive number, else the available parallelism.
pub fn default_threads() -> usize {
    std::env::var("CNNC_THREADS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&n| n > 0)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

// SAFETY: each task number is taken once from `next`; thread numbers are 0 (the caller) and
// 1..threads (one per worker), and each thread runs one task at a time (nested runs stay on
// their thread, under its number).
unsafe impl Parallel for ThreadPool {
    fn threads(&self) -> usize {
        self.workers.len() + 1
    }

    fn run(&self, tasks: usize, f: &(dyn Fn(usize, usize) + Sync)) {
        // A run from inside a task (or while another thread holds the pool) runs serially on
        // this thread, under the thread number it already has.
        if let Some(id) = IN_TASK.with(Cell::get) {
            (0..tasks).for_each(|t| f(t, id));
            return;
        }
        if tasks <= 1 || self.workers.is_empty() {
            IN_TASK.with(|c| c.set(Some(0)));
            (0..tasks).for_each(|t| f(t, 0));
            IN_TASK.with(|c| c.set(None));
            return;
        }
        let _guard = self.run_lock.lock().unwrap_or_else(|e| e.into_inner());
        let sh = &*self.shared;
        let job = Job { f, tasks };
        // SAFETY (lifetime erasure): the pointer is only dereferenced by workers registered in
        // `active` while the job is open; this function closes the job and waits for `active`
        // to reach zero before `job` goes out of scope.
        let ptr = &job as *const Job<'_> as *mut Job<'static>;
        sh.job.store(ptr, SeqCst);
        sh.next.store(0, SeqCst);
        let epoch = (sh.state.load(SeqCst) >> 1) + 1;
        sh.state.store(epoch << 1, SeqCst);
        if sh.sleepers.load(SeqCst) > 0 {
            let _l = sh.lock.lock().unwrap_or_else(|e| e.into_inner());
            sh.wake.notify_all();
        }
        IN_TASK.with(|c| c.set(Some(0)));
        let mine = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| take_tasks(sh, &job, 0)));
        IN_TASK.with(|c| c.set(None));
        sh.state.store(epoch << 1 | CLOSED, SeqCst);
        let start = Instant::now();
        while sh.active.load(SeqCst) != 0 {
            if start.elapsed() < Duration::from_micros(50) {
                std::hint::spin_loop();
            } else {
                std::thread::yield_now();
            }
        }
        sh.job.store(std::ptr::null_mut(), SeqCst);
        if let Err(p) = mine {
            std::panic::resume_unwind(p);
        }
        if sh.panicked.swap(false, SeqCst) {
            panic!("a kernel task panicked on a worker thread");
        }
    }
}

/// Runs tasks of `job` until none are left.
fn take_tasks(sh: &Shared, job: &Job<'_>, id: usize) {
    loop {
        let t = sh.next.fetch_add(1, SeqCst);
        if t >= job.tasks {
            return;
        }
        (job.f)(t, id);
    }
}

fn worker(sh: &Shared, id: usize) {
    let mut seen = sh.state.load(SeqCst) >> 1;
    IN_TASK.with(|c| c.set(Some(id)));
    loop {
        let epoch = wait_for_job(sh, seen);
        if sh.shutdown.load(SeqCst) {
            return;
        }
        seen = epoch;
        sh.active.fetch_add(1, SeqCst);
        // Re-check under `active`: the caller cannot return while we are counted.
        if sh.state.load(SeqCst) == epoch << 1 {
            let ptr = sh.job.load(SeqCst);
            // SAFETY: the job is open and we are counted in `active`, so the caller is still
            // inside `run` and `ptr` points at its live `Job`.
            let job = unsafe { &*ptr };
            let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| take_tasks(sh, job, id)));
            if result.is_err() {
                sh.panicked.store(true, SeqCst);
            }
        }
        sh.active.fetch_sub(1, SeqCst);
    }
}

/// Waits until an epoch after `seen` is published (or shutdown); spins first, then sleeps.
fn wait_for_job(sh: &Shared, seen: usize) -> usize {
    let fresh = |sh: &Shared| {
        let state = sh.state.load(SeqCst);
        (state >> 1 != seen && state & CLOSED == 0 || sh.shutdown.load(SeqCst)).then_some(state >> 1)
    };
    let start = Instant::now();
    let mut spins = 0u32;
    loop {
        if let Some(e) = fresh(sh) {
            return e;
        }
        std::hint::spin_loop();
        spins += 1;
        if spins.is_multiple_of(256) && start.elapsed() > sh.spin {
            break;
        }
    }
    let mut guard = sh.lock.lock().unwrap_or_else(|e| e.into_inner());
    sh.sleepers.fetch_add(1, SeqCst);
    loop {
        if let Some(e) = fresh(sh) {
            sh.sleepers.fetch_sub(1, SeqCst);
            return e;
        }
        guard = sh.wake.wait(guard).unwrap_or_else(|e| e.into_inner());
    }
}

impl Drop for ThreadPool {
    fn drop(&mut self) {
        self.shared.shutdown.store(true, SeqCst);
        {
            let _l = self.shared.lock.lock().unwrap_or_else(|e| e.into_inner());
            self.shared.wake.notify_all();
        }
        for w in self.workers.drain(..) {
            // A worker only ends by returning; a join error would mean it panicked outside a
            // task, which its loop does not do.
            let _ = w.join();
        }
    }
}
