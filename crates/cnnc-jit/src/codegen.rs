//! Cranelift code generation of the lowered kernel functions, across threads: lowering builds
//! every kernel's IR first ([`Pending`]), then the functions compile in parallel (largest
//! first, each thread taking the next one), and the machine code goes into the module in
//! their original order. Compiling is most of a model's compile time and each function
//! compiles on its own, so two cores nearly halve it. A kernel whose IR is that of an earlier
//! one (layers of the same shapes and attributes: kernels read their addresses from operand
//! blocks, see [`crate::emit`]) is not compiled again but calls the earlier function
//! ([`Shared`]).

use crate::error::JitError;
use cranelift_codegen::Context;
use cranelift_codegen::control::ControlPlane;
use cranelift_codegen::ir::Function;
use cranelift_codegen::isa::TargetIsa;
use cranelift_jit::JITModule;
use cranelift_module::{FuncId, Module, ModuleReloc};
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

/// Below this many instructions in all, the functions compile on the calling thread alone
/// (about 10 ms of work; measured at 1-2 microseconds an instruction).
const PARALLEL_FROM: usize = 8_000;

/// A kernel function built and declared but not compiled yet.
pub(crate) struct Pending {
    pub id: FuncId,
    pub name: String,
    pub func: Function,
}

/// The kernel functions built so far, by their IR (what Cranelift compiles, the function's
/// name left out): equal IR is equal machine code.
#[derive(Default)]
pub(crate) struct Shared {
    /// Indices into the pending functions, by the hash of their IR.
    by_hash: HashMap<u64, Vec<usize>>,
    /// Kernels that reused an earlier function.
    pub reused: usize,
}

impl Shared {
    /// The function among `pending` whose IR is `func`'s, or else the hash under which to
    /// [`Shared::insert`] it.
    pub fn find(&mut self, func: &Function, pending: &[Pending]) -> Result<FuncId, u64> {
        // The instructions alone (immediates included) tell kernels apart; a full compare
        // follows.
        let mut h = FoldHasher(0);
        func.dfg.insts.hash(&mut h);
        let hash = h.finish();
        let same = |&&i: &&usize| {
            let p: &Function = &pending[i].func;
            p.stencil == func.stencil && p.params == func.params
        };
        match self.by_hash.get(&hash).and_then(|v| v.iter().find(same)) {
            Some(&i) => {
                self.reused += 1;
                Ok(pending[i].id)
            }
            None => Err(hash),
        }
    }

    /// Records `pending[index]` under `hash`.
    pub fn insert(&mut self, hash: u64, index: usize) {
        self.by_hash.entry(hash).or_default().push(index);
    }
}

/// A fast, non-cryptographic hasher (multiply-rotate, as rustc's FxHasher) for function IR:
/// SipHash over a whole stencil cost a quarter of the lowering. A collision only costs a
/// compare.
struct FoldHasher(u64);

impl Hasher for FoldHasher {
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.write_u64(u64::from_le_bytes(word));
        }
    }

    fn write_u8(&mut self, v: u8) {
        self.write_u64(u64::from(v));
    }

    fn write_u16(&mut self, v: u16) {
        self.write_u64(u64::from(v));
    }

    fn write_u32(&mut self, v: u32) {
        self.write_u64(u64::from(v));
    }

    fn write_u64(&mut self, v: u64) {
        self.0 = (self.0.rotate_left(5) ^ v).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }

    fn write_usize(&mut self, v: usize) {
        self.write_u64(v as u64);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

/// One function's machine code, ready for the module.
struct Code {
    alignment: u64,
    bytes: Vec<u8>,
    relocs: Vec<ModuleReloc>,
    seconds: f64,
}

/// One function's outcome: its id and code, or why it did not compile.
type Compiled = Result<(FuncId, Code), JitError>;

/// What compiling took.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct CodegenTimes {
    /// Functions compiled.
    pub functions: usize,
    /// Kernels that run an earlier kernel's function instead of a function of their own.
    pub shared: usize,
    /// Their Cranelift instructions, all together.
    pub insts: usize,
    /// Threads that compiled them.
    pub threads: usize,
    /// Wall-clock milliseconds of the parallel compilation.
    pub wall_ms: f64,
    /// The functions' compile times added up (the cost on one thread).
    pub cpu_ms: f64,
}

/// Compiles `pending` on up to `threads` threads and defines each function in `module`.
pub(crate) fn compile_all(
    module: &mut JITModule,
    pending: Vec<Pending>,
    shared: usize,
    threads: usize,
) -> Result<CodegenTimes, JitError> {
    let start = Instant::now();
    let n = pending.len();
    let insts = pending.iter().map(|p| p.func.dfg.num_insts()).sum();
    // Largest first: the last function to start is then a small one, and the threads finish
    // together.
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(pending[i].func.dfg.num_insts()));
    let work: Vec<Mutex<Option<Pending>>> = pending.into_iter().map(|p| Mutex::new(Some(p))).collect();
    let done: Vec<Mutex<Option<Compiled>>> = (0..n).map(|_| Mutex::new(None)).collect();
    let next = AtomicUsize::new(0);
    // Starting a thread costs more than compiling a small program (an inference plan in
    // native mode is a few hundred instructions of loop nests around kernel calls).
    let threads = if insts < PARALLEL_FROM { 1 } else { threads.clamp(1, n.max(1)) };
    let isa = module.isa();
    let worker = || {
        let mut ctx = Context::new();
        loop {
            let k = next.fetch_add(1, Ordering::Relaxed);
            let Some(&i) = order.get(k) else { break };
            let Some(p) = work[i].lock().unwrap_or_else(|e| e.into_inner()).take() else { continue };
            let result = compile_one(isa, &mut ctx, p);
            *done[i].lock().unwrap_or_else(|e| e.into_inner()) = Some(result);
        }
    };
    std::thread::scope(|s| {
        for _ in 1..threads {
            s.spawn(worker);
        }
        worker();
    });
    let wall_ms = start.elapsed().as_secs_f64() * 1e3;
    let mut cpu_ms = 0.0;
    for slot in done {
        let (id, code) = slot
            .into_inner()
            .unwrap_or_else(|e| e.into_inner())
            .ok_or_else(|| JitError::Codegen("a kernel function was not compiled".into()))??;
        cpu_ms += code.seconds * 1e3;
        module
            .define_function_bytes(id, code.alignment, &code.bytes, &code.relocs)
            .map_err(|e| JitError::Codegen(e.to_string()))?;
    }
    Ok(CodegenTimes { functions: n, shared, insts, threads, wall_ms, cpu_ms })
}

/// Compiles one function with a reused context.
fn compile_one(isa: &dyn TargetIsa, ctx: &mut Context, p: Pending) -> Compiled {
    let start = Instant::now();
    ctx.clear();
    ctx.func = p.func;
    let alignment = ctx
        .compile(isa, &mut ControlPlane::default())
        .map_err(|e| JitError::Codegen(format!("{}: {e:?}", p.name)))?
        .buffer
        .alignment;
    let alignment = u64::from(alignment);
    let compiled = ctx.compiled_code().ok_or_else(|| JitError::Codegen(format!("{}: no code", p.name)))?;
    let bytes = compiled.code_buffer().to_vec();
    let relocs = compiled.buffer.relocs().iter().map(|r| ModuleReloc::from_mach_reloc(r, &ctx.func, p.id)).collect();
    Ok((p.id, Code { alignment, bytes, relocs, seconds: start.elapsed().as_secs_f64() }))
}
