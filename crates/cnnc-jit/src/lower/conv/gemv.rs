//! Fully connected layers (matrix products on plain vectors, weights `[O, I]` row-major) in
//! Cranelift IR: each output a dot product of its weight row and the input vector, four F32X4
//! accumulators over 16 inputs a step, then one vector at a time, then the scalar tail; the
//! epilogue (bias, residual, activation) on the sum. A row serves every image of the batch
//! before the next is read, so the weights (what bounds a fully connected layer at small
//! batch) stream from memory once. Tasks take runs of rows.

use crate::emit::{F32, F32X4, Fx};
use crate::error::JitError;
use crate::lower::Lx;
use crate::vmath;
use cnnc_ir::{Layout, WeightLayout};
use cranelift_codegen::ir::Value;

/// Accumulators of the main loop (four vectors cover the FMA latency).
const ACCS: usize = 4;

/// A fully connected layer, when its operands are plain vectors: returns whether it did.
pub(crate) fn forward(lx: &mut Lx, op: &super::ConvForward) -> Result<bool, JitError> {
    let super::ConvForward { g, x, y, res, w, wp, bias, act } = *op;
    let vectors = x.hw() == 1 && y.hw() == 1 && x.layout == Layout::Plain && y.layout == Layout::Plain;
    let unit = g.kh == 1 && g.kw == 1 && g.pad == [0, 0] && g.groups == 1;
    let row_major = match wp.layout {
        None | Some(WeightLayout::Oi | WeightLayout::Oihw) => true,
        Some(
            WeightLayout::OIhw16i16o | WeightLayout::GOIhw16i16o | WeightLayout::Goihw16g | WeightLayout::OI16i16o,
        ) => false,
    };
    let dims_fit = matches!(wp.dims[..], [o, i] | [o, i, 1, 1] if o == g.o && i == g.c);
    if !vectors || !unit || !row_major || !dims_fit || res.is_some_and(|r| r.layout != Layout::Plain || r.hw() != 1) {
        return Ok(false);
    }
    let (inputs, outputs, batch) = (g.c, g.o, y.n);
    let tasks = lx.tasks(outputs, g.macs(batch));
    lx.kernel(tasks, |fx| {
        let (lo, hi) = fx.task_range(outputs, tasks);
        let w_abs = fx.abs(w);
        fx.for_range(lo, hi, 1, |fx, o| {
            let wrow = fx.index(w_abs, o, 4 * inputs as i64);
            let b0 = match bias {
                Some(b) => {
                    let ba = fx.abs(b);
                    let a = fx.index(ba, o, 4);
                    fx.load(F32, a, 0)
                }
                None => fx.fconst(F32, 0.0),
            };
            fx.for_n(0, batch as i64, |fx, n| {
                let xv = x.image(fx, n);
                let s = dot(fx, xv, wrow, inputs);
                let mut v = fx.fadd(s, b0);
                if let Some(r) = res {
                    let img = r.image(fx, n);
                    let ra = fx.index(img, o, 4);
                    let rv = fx.load(F32, ra, 0);
                    v = fx.fadd(v, rv);
                }
                if let Some(a) = act {
                    v = vmath::activation(fx, F32, a, v);
                }
                let img = y.image(fx, n);
                let ya = fx.index(img, o, 4);
                fx.store(v, ya, 0);
            });
        });
    })?;
    Ok(true)
}

/// `sum x[i] w[i]` over `len` floats from the two addresses.
fn dot(fx: &mut Fx, x: Value, w: Value, len: usize) -> Value {
    let step = 4 * ACCS;
    let (main, vecs) = (len / step * step, len / 4 * 4);
    let zero = fx.fconst(F32X4, 0.0);
    let acc: Vec<_> = (0..ACCS).map(|_| fx.var_init(F32X4, zero)).collect();
    fx.for_step(0, main as i64, step as i64, |fx, i| {
        let (xa, wa) = (fx.index(x, i, 4), fx.index(w, i, 4));
        for (k, &a) in acc.iter().enumerate() {
            let off = 16 * k as i64;
            let xv = fx.load(F32X4, xa, off);
            let wv = fx.load_ro(F32X4, wa, off);
            let cur = fx.get(a);
            let next = fx.fma(xv, wv, cur);
            fx.set(a, next);
        }
    });
    fx.for_step(main as i64, vecs as i64, 4, |fx, i| {
        let (xa, wa) = (fx.index(x, i, 4), fx.index(w, i, 4));
        let xv = fx.load(F32X4, xa, 0);
        let wv = fx.load_ro(F32X4, wa, 0);
        let cur = fx.get(acc[0]);
        let next = fx.fma(xv, wv, cur);
        fx.set(acc[0], next);
    });
    let mut sum = fx.get(acc[0]);
    for &a in &acc[1..] {
        let v = fx.get(a);
        sum = fx.fadd(sum, v);
    }
    let mut s = fx.hsum(sum);
    for i in vecs..len {
        let xv = fx.load(F32, x, 4 * i as i64);
        let wv = fx.load_ro(F32, w, 4 * i as i64);
        s = fx.fma(xv, wv, s);
    }
    s
}
