//! How kernels split work over threads without knowing about threads: [`Parallel`] runs
//! `f(task, thread)` for every task, and [`Serial`] is the one-thread implementation that a
//! `no_std` build can use. The thread pool (`threads.rs`, std) is the other.

/// Something that runs numbered tasks, possibly at once.
///
/// # Safety
/// Implementations must keep the contract of [`Parallel::run`]: every task exactly once,
/// `thread < threads()`, and never two tasks with the same `thread` at the same time. Kernels
/// index per-thread scratch memory by `thread` and rely on it.
pub unsafe trait Parallel: Sync {
    /// How many threads may run tasks at once; `thread` arguments are below it.
    fn threads(&self) -> usize;

    /// Runs `f(task, thread)` once for every `task` in `0..tasks` and returns when all have
    /// finished. Two tasks running at the same time have different `thread` numbers, so a task
    /// may use scratch memory indexed by its thread.
    fn run(&self, tasks: usize, f: &(dyn Fn(usize, usize) + Sync));
}

/// Runs every task on the calling thread, in order.
#[derive(Clone, Copy, Debug, Default)]
pub struct Serial;

// SAFETY: one task at a time, all with thread 0 < 1.
unsafe impl Parallel for Serial {
    fn threads(&self) -> usize {
        1
    }

    fn run(&self, tasks: usize, f: &(dyn Fn(usize, usize) + Sync)) {
        for task in 0..tasks {
            f(task, 0);
        }
    }
}

/// A raw pointer that may be shared by the tasks of one [`Parallel::run`]: the kernels write
/// disjoint parts of a buffer from different tasks, which the borrow checker cannot see.
#[derive(Clone, Copy, Debug)]
pub struct SyncPtr<T>(pub *mut T);

impl<T> SyncPtr<T> {
    /// The pointer (a method, so that closures capture the whole `SyncPtr`, not its field).
    pub fn get(&self) -> *mut T {
        self.0
    }
}

// SAFETY: a SyncPtr is only created by kernels that give each task a disjoint part of the
// pointee (or only read it); the pointer itself is plain data.
unsafe impl<T> Send for SyncPtr<T> {}
// SAFETY: as above.
unsafe impl<T> Sync for SyncPtr<T> {}
