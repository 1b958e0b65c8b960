//! A thin layer over cranelift-frontend's `FunctionBuilder` for the shapes of code the lowering
//! writes: counted loops, constants, loads and stores at absolute or context-relative
//! addresses, lane-generic float arithmetic (`F32` or `F32X4`), and per-task work ranges.
//!
//! Every kernel function has the signature `extern "C" fn(ops: *const u8, task: usize,
//! thread: usize)`: `ops` is the kernel's operand block, in the model's auxiliary buffer (with
//! the run-time arguments, tables and scratch); the two integers say which part of the node's
//! work to do (see [`crate::exec`]). A kernel holds no address in its code: every absolute
//! address and auxiliary-buffer offset it uses is an [`Operand`], read from the block, so
//! kernels that differ only in where their data lies are the same code (compiled once: see
//! [`crate::codegen`]). Loop-carried values are cranelift-frontend variables, so SSA form is
//! built by the frontend.

use cranelift_codegen::ir::condcodes::{FloatCC, IntCC};
use cranelift_codegen::ir::{InstBuilder, MemFlagsData, Type, Value, types};
use cranelift_frontend::{FunctionBuilder, Variable};

/// The pointer-sized integer type (the JIT targets 64-bit hosts).
pub(crate) const I64: Type = types::I64;
pub(crate) const F32: Type = types::F32;
pub(crate) const F32X4: Type = types::F32X4;
pub(crate) const I32: Type = types::I32;

/// A function under construction.
pub(crate) struct Fx<'a> {
    pub b: FunctionBuilder<'a>,
    /// The operand block's address (the first argument).
    ops: Value,
    pub task: Value,
    pub thread: Value,
    /// The operands read so far, by slot.
    operands: Vec<Operand>,
}

/// A number a kernel reads from its operand block rather than holding in its code.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Operand {
    /// An absolute address.
    Abs(u64),
    /// A byte offset into the auxiliary buffer.
    Aux(u64),
}

/// The operand block of a kernel whose block starts `at` bytes into the auxiliary buffer:
/// 8 bytes a slot, an absolute address as itself, an auxiliary offset relative to the block
/// (so the kernel adds it to the block's address).
pub(crate) fn operand_block(operands: &[Operand], at: u64) -> Vec<u8> {
    operands
        .iter()
        .flat_map(|o| match *o {
            Operand::Abs(a) => a.to_le_bytes(),
            Operand::Aux(off) => (off as i64 - at as i64).to_le_bytes(),
        })
        .collect()
}

/// Memory flags: accesses the lowering proved in bounds, so they cannot trap; never claimed
/// aligned (vectors of a plain row start anywhere).
pub(crate) fn flags() -> MemFlagsData {
    MemFlagsData::new().with_notrap()
}

/// Flags for data no kernel writes during the node (weights, tables): may be hoisted.
pub(crate) fn ro_flags() -> MemFlagsData {
    MemFlagsData::new().with_notrap().with_readonly().with_can_move()
}

impl<'a> Fx<'a> {
    /// A kernel's builder, positioned in its entry block: `params` are the block's
    /// parameters (operand block, task, thread).
    pub fn new(b: FunctionBuilder<'a>, params: &[Value]) -> Self {
        Fx { b, ops: params[0], task: params[1], thread: params[2], operands: Vec::new() }
    }

    /// The operands the kernel reads, by slot (its block's contents: [`operand_block`]).
    pub fn into_parts(self) -> (FunctionBuilder<'a>, Vec<Operand>) {
        (self.b, self.operands)
    }

    /// The operand's value, loaded from its slot (one slot per distinct operand). The block
    /// never changes while code runs, so the load may move.
    fn operand(&mut self, o: Operand) -> Value {
        let slot = match self.operands.iter().position(|&p| p == o) {
            Some(s) => s,
            None => {
                self.operands.push(o);
                self.operands.len() - 1
            }
        };
        let ops = self.ops;
        self.b.ins().load(I64, ro_flags(), ops, (8 * slot) as i32)
    }

    pub fn int(&mut self, v: i64) -> Value {
        self.b.ins().iconst(I64, v)
    }

    /// An absolute address (buffers the model owns do not move while the code lives).
    pub fn abs(&mut self, addr: u64) -> Value {
        self.operand(Operand::Abs(addr))
    }

    /// An address `off` bytes into the auxiliary buffer.
    pub fn aux(&mut self, off: u64) -> Value {
        let rel = self.operand(Operand::Aux(off));
        let ops = self.ops;
        self.b.ins().iadd(ops, rel)
    }

    pub fn add(&mut self, a: Value, b: Value) -> Value {
        self.b.ins().iadd(a, b)
    }

    pub fn addi(&mut self, a: Value, b: i64) -> Value {
        if b == 0 { a } else { self.b.ins().iadd_imm_s(a, b) }
    }

    pub fn mul(&mut self, a: Value, b: Value) -> Value {
        self.b.ins().imul(a, b)
    }

    pub fn muli(&mut self, a: Value, b: i64) -> Value {
        match b {
            0 => self.int(0),
            1 => a,
            _ => self.b.ins().imul_imm_s(a, b),
        }
    }

    pub fn sub(&mut self, a: Value, b: Value) -> Value {
        self.b.ins().isub(a, b)
    }

    /// `a * b + c` on integers, `b` constant.
    pub fn mad(&mut self, a: Value, b: i64, c: Value) -> Value {
        let m = self.muli(a, b);
        self.add(m, c)
    }

    pub fn udiv(&mut self, a: Value, b: i64) -> Value {
        if b == 1 {
            return a;
        }
        if (b as u64).is_power_of_two() {
            return self.b.ins().ushr_imm_s(a, b.trailing_zeros() as i64);
        }
        let d = self.int(b);
        self.b.ins().udiv(a, d)
    }

    pub fn urem(&mut self, a: Value, b: i64) -> Value {
        if b == 1 {
            return self.int(0);
        }
        if (b as u64).is_power_of_two() {
            return self.b.ins().band_imm_s(a, b - 1);
        }
        let d = self.int(b);
        self.b.ins().urem(a, d)
    }

    pub fn smin(&mut self, a: Value, b: Value) -> Value {
        self.b.ins().smin(a, b)
    }

    pub fn smax(&mut self, a: Value, b: Value) -> Value {
        self.b.ins().smax(a, b)
    }

    pub fn icmp(&mut self, cc: IntCC, a: Value, b: Value) -> Value {
        self.b.ins().icmp(cc, a, b)
    }

    pub fn icmpi(&mut self, cc: IntCC, a: Value, b: i64) -> Value {
        self.b.ins().icmp_imm_s(cc, a, b)
    }

    pub fn var(&mut self, ty: Type) -> Variable {
        self.b.declare_var(ty)
    }

    pub fn set(&mut self, v: Variable, x: Value) {
        self.b.def_var(v, x);
    }

    pub fn get(&mut self, v: Variable) -> Value {
        self.b.use_var(v)
    }

    /// A variable holding `init`.
    pub fn var_init(&mut self, ty: Type, init: Value) -> Variable {
        let v = self.var(ty);
        self.set(v, init);
        v
    }

    /// `for i in lo..hi (step) { body(i) }`, bounds as values (signed compare).
    pub fn for_range(&mut self, lo: Value, hi: Value, step: i64, mut body: impl FnMut(&mut Self, Value)) {
        let header = self.b.create_block();
        let inner = self.b.create_block();
        let exit = self.b.create_block();
        self.b.append_block_param(header, I64);
        self.b.ins().jump(header, &[lo.into()]);
        self.b.switch_to_block(header);
        let i = self.b.block_params(header)[0];
        let go = self.b.ins().icmp(IntCC::SignedLessThan, i, hi);
        self.b.ins().brif(go, inner, &[], exit, &[]);
        self.b.switch_to_block(inner);
        body(self, i);
        let next = self.b.ins().iadd_imm_s(i, step);
        self.b.ins().jump(header, &[next.into()]);
        self.b.switch_to_block(exit);
    }

    /// `for i in lo..hi { body(i) }` with constant bounds; a single iteration is emitted
    /// straight, with `i` a constant.
    pub fn for_n(&mut self, lo: i64, hi: i64, body: impl FnMut(&mut Self, Value)) {
        self.for_step(lo, hi, 1, body);
    }

    pub fn for_step(&mut self, lo: i64, hi: i64, step: i64, mut body: impl FnMut(&mut Self, Value)) {
        if hi <= lo {
            return;
        }
        if hi - lo <= step {
            let i = self.int(lo);
            body(self, i);
            return;
        }
        let (l, h) = (self.int(lo), self.int(hi));
        self.for_range(l, h, step, body);
    }

    /// `if cond { then() }`.
    pub fn if_then(&mut self, cond: Value, mut then: impl FnMut(&mut Self)) {
        let yes = self.b.create_block();
        let done = self.b.create_block();
        self.b.ins().brif(cond, yes, &[], done, &[]);
        self.b.switch_to_block(yes);
        then(self);
        self.b.ins().jump(done, &[]);
        self.b.switch_to_block(done);
    }

    /// `if cond { a() } else { b() }`.
    pub fn if_else(&mut self, cond: Value, mut a: impl FnMut(&mut Self), mut b: impl FnMut(&mut Self)) {
        let yes = self.b.create_block();
        let no = self.b.create_block();
        let done = self.b.create_block();
        self.b.ins().brif(cond, yes, &[], no, &[]);
        self.b.switch_to_block(yes);
        a(self);
        self.b.ins().jump(done, &[]);
        self.b.switch_to_block(no);
        b(self);
        self.b.ins().jump(done, &[]);
        self.b.switch_to_block(done);
    }

    /// The range `lo..hi` of `0..total` that this task does when the work is cut into
    /// `tasks` chunks (as even as possible).
    pub fn task_range(&mut self, total: usize, tasks: usize) -> (Value, Value) {
        let chunk = total.div_ceil(tasks.max(1)) as i64;
        let t = self.task;
        let lo = self.muli(t, chunk);
        let hi = self.addi(lo, chunk);
        let tot = self.int(total as i64);
        let lo = self.smin(lo, tot);
        let hi = self.smin(hi, tot);
        (lo, hi)
    }

    pub fn load(&mut self, ty: Type, addr: Value, off: i64) -> Value {
        self.b.ins().load(ty, flags(), addr, off as i32)
    }

    pub fn load_ro(&mut self, ty: Type, addr: Value, off: i64) -> Value {
        self.b.ins().load(ty, ro_flags(), addr, off as i32)
    }

    pub fn store(&mut self, v: Value, addr: Value, off: i64) {
        self.b.ins().store(flags(), v, addr, off as i32);
    }

    /// `addr + i * scale` (bytes).
    pub fn index(&mut self, addr: Value, i: Value, scale: i64) -> Value {
        let o = self.muli(i, scale);
        self.add(addr, o)
    }

    // ---- floats, lane-generic: `ty` is F32 or F32X4 ----

    pub fn fconst(&mut self, ty: Type, v: f32) -> Value {
        let s = self.b.ins().f32const(v);
        if ty == F32 { s } else { self.b.ins().splat(ty, s) }
    }

    pub fn splat(&mut self, ty: Type, s: Value) -> Value {
        if ty == F32 { s } else { self.b.ins().splat(ty, s) }
    }

    pub fn fadd(&mut self, a: Value, b: Value) -> Value {
        self.b.ins().fadd(a, b)
    }

    pub fn fsub(&mut self, a: Value, b: Value) -> Value {
        self.b.ins().fsub(a, b)
    }

    pub fn fmul(&mut self, a: Value, b: Value) -> Value {
        self.b.ins().fmul(a, b)
    }

    pub fn fdiv(&mut self, a: Value, b: Value) -> Value {
        self.b.ins().fdiv(a, b)
    }

    /// `a * b + c`, one fused instruction where the ISA has FMA.
    pub fn fma(&mut self, a: Value, b: Value, c: Value) -> Value {
        self.b.ins().fma(a, b, c)
    }

    pub fn fneg(&mut self, a: Value) -> Value {
        self.b.ins().fneg(a)
    }

    pub fn fabs(&mut self, a: Value) -> Value {
        self.b.ins().fabs(a)
    }

    pub fn sqrt(&mut self, a: Value) -> Value {
        self.b.ins().sqrt(a)
    }

    /// A lane mask (or a boolean for scalars) of `a cc b`.
    pub fn fcmp(&mut self, cc: FloatCC, a: Value, b: Value) -> Value {
        self.b.ins().fcmp(cc, a, b)
    }

    /// `mask ? a : b` lane by lane, `mask` from [`Fx::fcmp`] on values of `a`'s type.
    pub fn sel(&mut self, ty: Type, mask: Value, a: Value, b: Value) -> Value {
        if ty == F32 {
            self.b.ins().select(mask, a, b)
        } else {
            let m = self.b.ins().bitcast(
                F32X4,
                MemFlagsData::new().with_endianness(cranelift_codegen::ir::Endianness::Little),
                mask,
            );
            self.b.ins().bitselect(m, a, b)
        }
    }

    /// `a > b ? a : b` with the interpreter's rule: the first operand wins ties, and a NaN
    /// in `b` ... is never taken (compare-and-select, not IEEE max).
    pub fn gt_sel(&mut self, ty: Type, a: Value, b: Value, x: Value, y: Value) -> Value {
        let m = self.fcmp(FloatCC::GreaterThan, a, b);
        self.sel(ty, m, x, y)
    }

    /// Horizontal sum of an F32X4.
    pub fn hsum(&mut self, v: Value) -> Value {
        let l: Vec<Value> = (0..4u8).map(|i| self.b.ins().extractlane(v, i)).collect();
        let a = self.fadd(l[0], l[1]);
        let b = self.fadd(l[2], l[3]);
        self.fadd(a, b)
    }

    /// An i64 as f32.
    pub fn i2f(&mut self, i: Value) -> Value {
        self.b.ins().fcvt_from_sint(F32, i)
    }
}
