//! The one module of the crate with `unsafe` code: the memory JIT code may touch, the one
//! audited function that turns finalized code into a safe [`Compiled`] value, and the calls
//! into it.
//!
//! # The argument for soundness
//!
//! 1. Every buffer generated code reads or writes is a [`Buffer`] owned by the same
//!    [`Compiled`] value as the code: the arena, the parameters, the inputs (addresses baked
//!    into the code as constants, which is sound because a `Buffer` never moves or frees its
//!    memory while it lives) and the auxiliary buffer (passed as the `ctx` argument).
//! 2. The lowering checks, before it emits a kernel, that every range it addresses lies in
//!    its buffer (`lower::Lx::val`, `param`, `aux` allocations); a value's extent comes from
//!    the plan, which is re-checked against the arena's size there.
//! 3. Running the code takes `&mut Compiled`, so no Rust reference into the buffers is alive
//!    while it runs; tasks of one step write disjoint memory (each lowering splits its output).
//! 4. The module's memory is freed only when the `Compiled` value is dropped, after which no
//!    function pointer of it survives (they are private fields).
//!
//! With `guard_pages`, every buffer ends exactly at an inaccessible page, so an access past
//! the end of any buffer faults instead of reading a neighbour: the tests run that way.

#![allow(unsafe_code)]

use crate::error::JitError;
use cnnc_kernels::ffi::cnnc_parallel_for;
use cnnc_kernels::threads::ThreadPool;
use cranelift_jit::JITModule;
use cranelift_module::FuncId;
use std::ptr::NonNull;

/// A kernel: `f(ctx, task, thread)`.
pub(crate) type KernelFn = unsafe extern "C" fn(*const u8, usize, usize);

/// The address of the pool's parallel-for, which the driver calls.
pub(crate) fn parallel_for_addr() -> u64 {
    cnnc_parallel_for as *const () as u64
}

/// Zeroed memory that stays where it is until dropped.
pub(crate) struct Buffer {
    ptr: NonNull<u8>,
    len: usize,
    alloc: Alloc,
}

enum Alloc {
    Heap(std::alloc::Layout),
    Mapped { base: *mut u8, total: usize },
    Empty,
}

// SAFETY: a Buffer owns its memory exclusively; moving it to another thread moves that
// ownership.
unsafe impl Send for Buffer {}
// SAFETY: shared references only read (`bytes`), which is sound concurrently.
unsafe impl Sync for Buffer {}

const PAGE: usize = 4096;
/// Buffers from this size on are mapped rather than allocated: see [`Buffer::mapped`].
const MAP_FROM: usize = 1 << 20;
/// A transparent huge page on x86-64; mapped buffers from this size on are aligned to it and
/// asked to be backed by such pages: see [`Buffer::mapped`].
const HUGE_PAGE: usize = 2 << 20;

impl Buffer {
    /// `len` zeroed bytes, 64-byte aligned (or, with `guard`, ending at a protected page).
    pub fn new(len: usize, guard: bool) -> Result<Buffer, JitError> {
        if len == 0 {
            return Ok(Buffer { ptr: NonNull::dangling(), len: 0, alloc: Alloc::Empty });
        }
        if guard {
            return Buffer::guarded(len);
        }
        if len >= MAP_FROM {
            return Buffer::mapped(len);
        }
        let layout = std::alloc::Layout::from_size_align(len, 64).map_err(|e| JitError::Memory(e.to_string()))?;
        // SAFETY: the layout has a non-zero size.
        let p = unsafe { std::alloc::alloc_zeroed(layout) };
        let ptr = NonNull::new(p).ok_or_else(|| JitError::Memory(format!("{len} bytes")))?;
        Ok(Buffer { ptr, len, alloc: Alloc::Heap(layout) })
    }

    /// A private anonymous mapping: the kernel hands out zeroed pages as they are first
    /// touched, so a large arena or parameter buffer costs nothing until used (zeroing it
    /// eagerly was most of a model's compile time).
    ///
    /// From [`HUGE_PAGE`] on, the buffer starts on a huge-page boundary and the mapping is
    /// advised to use transparent huge pages (Linux's default mode, `madvise`, gives them only
    /// to such mappings). The kernels stream weights and activations far larger than the TLB
    /// covers in 4 KiB pages: on Zen 4 VGG's fc 25088->4096 read 47-51 GB/s from 4 KiB pages
    /// and 54-59 from huge ones, in turns in one process.
    fn mapped(len: usize) -> Result<Buffer, JitError> {
        let body = len.div_ceil(PAGE) * PAGE;
        let huge = len >= HUGE_PAGE;
        // Room to move the start up to the next huge-page boundary.
        let total = if huge { body + HUGE_PAGE - PAGE } else { body };
        let base = map_anonymous(total)?;
        let start = if huge { (base as usize).next_multiple_of(HUGE_PAGE) - base as usize } else { 0 };
        // SAFETY: start + body <= total: mmap's address is page-aligned, so the gap to the next
        // huge-page boundary is at most HUGE_PAGE - PAGE.
        let ptr = NonNull::new(unsafe { base.add(start) })
            .ok_or_else(|| JitError::Memory("mmap gave a null address".into()))?;
        if huge {
            // SAFETY: the range lies inside the mapping just made. The advice may be refused
            // (THP turned off, an old kernel): the buffer then keeps 4 KiB pages, which is
            // correct, only slower, so the result is deliberately not checked.
            unsafe { libc::madvise(ptr.as_ptr().cast(), body, libc::MADV_HUGEPAGE) };
        }
        // Page-aligned, so 64-byte aligned as `new` promises.
        Ok(Buffer { ptr, len, alloc: Alloc::Mapped { base, total } })
    }

    fn guarded(len: usize) -> Result<Buffer, JitError> {
        let body = len.div_ceil(PAGE) * PAGE;
        let total = body + 2 * PAGE;
        let base = map_anonymous(total)?;
        // SAFETY: both pages are inside the mapping just made.
        let ok = unsafe {
            libc::mprotect(base.cast(), PAGE, libc::PROT_NONE) == 0
                && libc::mprotect(base.add(PAGE + body).cast(), PAGE, libc::PROT_NONE) == 0
        };
        // The usable bytes end at the upper guard page (8-byte aligned start).
        let start = PAGE + body - len.div_ceil(8) * 8;
        // SAFETY: start < total.
        let ptr = NonNull::new(unsafe { base.add(start) }).expect("mmap gives non-null addresses");
        let buffer = Buffer { ptr, len, alloc: Alloc::Mapped { base, total } };
        if !ok {
            return Err(JitError::Memory("protecting guard pages".into()));
        }
        Ok(buffer)
    }

    pub fn addr(&self) -> u64 {
        self.ptr.as_ptr() as u64
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn bytes(&self) -> &[u8] {
        // SAFETY: ptr is valid for len bytes (or dangling with len 0) and initialised (zeroed).
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }

    pub fn bytes_mut(&mut self) -> &mut [u8] {
        // SAFETY: as `bytes`, and `&mut self` makes the access exclusive.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }

    /// The floats at byte offset `off` (a multiple of 4), `n` of them.
    pub fn f32s(&self, off: usize, n: usize) -> &[f32] {
        let b = &self.bytes()[off..off + 4 * n];
        assert!(b.as_ptr().align_offset(4) == 0, "float data is 4-byte aligned");
        // SAFETY: in bounds (the slice above), aligned, and every bit pattern is an f32.
        unsafe { std::slice::from_raw_parts(b.as_ptr().cast::<f32>(), n) }
    }

    pub fn f32s_mut(&mut self, off: usize, n: usize) -> &mut [f32] {
        let b = &mut self.bytes_mut()[off..off + 4 * n];
        assert!(b.as_ptr().align_offset(4) == 0, "float data is 4-byte aligned");
        // SAFETY: as `f32s`, exclusive through `&mut self`.
        unsafe { std::slice::from_raw_parts_mut(b.as_mut_ptr().cast::<f32>(), n) }
    }
}

/// `total` bytes of zeroed, readable and writable anonymous memory (pages zeroed by the kernel
/// when first touched), or the error naming the size.
fn map_anonymous(total: usize) -> Result<*mut u8, JitError> {
    // SAFETY: an anonymous private mapping, no address hint; checked below.
    let base = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            total,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if base == libc::MAP_FAILED {
        return Err(JitError::Memory(format!("mapping {total} bytes")));
    }
    Ok(base.cast::<u8>())
}

impl Drop for Buffer {
    fn drop(&mut self) {
        match self.alloc {
            // SAFETY: allocated with this layout by `new`.
            Alloc::Heap(layout) => unsafe { std::alloc::dealloc(self.ptr.as_ptr(), layout) },
            Alloc::Mapped { base, total } => {
                // SAFETY: the mapping made by `guarded` or `mapped`, unmapped once.
                unsafe { libc::munmap(base.cast(), total) };
            }
            Alloc::Empty => {}
        }
    }
}

/// Every buffer the generated code addresses.
pub(crate) struct Memory {
    pub arena: Buffer,
    pub params: Buffer,
    pub inputs: Vec<Buffer>,
    pub aux: Buffer,
    /// Derived weights native kernels read.
    pub extra: Vec<Buffer>,
    /// Kernel plans and argument blocks the code points at (boxed: they never move); only
    /// held, never read here.
    pub _keep: Vec<Box<dyn std::any::Any + Send>>,
}

/// The pool a model's code runs on: the process-wide one, or its own.
pub(crate) enum Pool {
    Global,
    Own(Box<ThreadPool>),
}

impl Pool {
    pub fn get(&self) -> &ThreadPool {
        match self {
            Pool::Global => ThreadPool::global(),
            Pool::Own(p) => p,
        }
    }

    /// The pool's address, baked into the driver (a `Box` and the global pool never move).
    pub fn addr(&self) -> u64 {
        self.get() as *const ThreadPool as u64
    }
}

/// One step of the schedule: a kernel, its task count and its operand block's offset in the
/// auxiliary buffer (its first argument).
struct Step {
    f: KernelFn,
    tasks: usize,
    ops: usize,
}

/// Finalized code with the memory it runs on: the safe compiled model.
pub(crate) struct Compiled {
    module: Option<JITModule>,
    driver: unsafe extern "C" fn(*const u8),
    steps: Vec<Step>,
    pub memory: Memory,
    pool: Pool,
}

// SAFETY: the code is immutable machine code; the memory is owned; running takes `&mut self`.
unsafe impl Send for Compiled {}

/// The audited function: finalizes `module` and takes ownership of it with the memory its
/// code was generated for. Sound under the argument in the module's documentation: the
/// lowering only addresses `memory`'s buffers (and the pool, kept alive here), `driver` has
/// the signature `fn(ctx)` and every step `fn(ctx, task, thread)` (made by `lower`).
pub(crate) fn seal(
    mut module: JITModule,
    driver: FuncId,
    steps: &[(FuncId, usize, u64)],
    memory: Memory,
    pool: Pool,
) -> Result<Compiled, JitError> {
    module.finalize_definitions().map_err(|e| JitError::Codegen(e.to_string()))?;
    let d = module.get_finalized_function(driver);
    // SAFETY: `driver` was defined with the signature `extern "C" fn(*const u8)`.
    let driver: unsafe extern "C" fn(*const u8) = unsafe { std::mem::transmute(d) };
    let steps = steps
        .iter()
        .map(|&(f, tasks, ops)| {
            let p = module.get_finalized_function(f);
            // SAFETY: every step was defined with the kernel signature.
            Step { f: unsafe { std::mem::transmute::<*const u8, KernelFn>(p) }, tasks, ops: ops as usize }
        })
        .collect();
    Ok(Compiled { module: Some(module), driver, steps, memory, pool })
}

impl Compiled {
    /// Runs the whole schedule (the driver).
    pub fn run(&mut self) {
        let ctx = self.memory.aux.addr() as *const u8;
        // SAFETY: see the module documentation; `&mut self` excludes other access.
        unsafe { (self.driver)(ctx) }
    }

    /// Runs step `k` alone, as the driver would (for per-layer timing). Steps must run in
    /// order, each after the ones before it, as the driver runs them.
    pub fn run_step(&mut self, k: usize) {
        let step = &self.steps[k];
        // The step's operand block: `lower` placed it inside the auxiliary buffer.
        let ctx = (self.memory.aux.addr() + step.ops as u64) as *const u8;
        if step.tasks <= 1 {
            // SAFETY: as `run`, one step of the same schedule.
            unsafe { (step.f)(ctx, 0, 0) }
        } else {
            // SAFETY: as `run`; the pool lives as long as self.
            unsafe { cnnc_parallel_for(self.pool.get(), step.tasks, step.f, ctx) }
        }
    }

    pub fn threads(&self) -> usize {
        use cnnc_kernels::par::Parallel;
        self.pool.get().threads()
    }
}

impl Drop for Compiled {
    fn drop(&mut self) {
        if let Some(m) = self.module.take() {
            // SAFETY: no function pointer into the module outlives `self` (private fields).
            unsafe { m.free_memory() };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every size class: heap (under [`MAP_FROM`]), mapped, mapped on a huge-page boundary, and
    /// guarded; each zeroed, writable over its whole length, 64-byte aligned.
    #[test]
    fn buffers_of_every_size_are_zeroed_aligned_and_writable() {
        for (len, guard) in
            [(100, false), (MAP_FROM + 3, false), (HUGE_PAGE + 5, false), (3 * HUGE_PAGE, false), (4100, true)]
        {
            let mut b = Buffer::new(len, guard).unwrap();
            assert_eq!(b.len(), len);
            assert!(b.bytes().iter().all(|&v| v == 0), "{len} bytes zeroed");
            b.bytes_mut().fill(7);
            assert!(b.bytes().iter().all(|&v| v == 7));
            let align = if guard {
                8
            } else if len >= HUGE_PAGE {
                HUGE_PAGE
            } else {
                64
            };
            assert_eq!(b.addr() as usize % align, 0, "{len} bytes aligned to {align}");
        }
    }
}
