//! Fully connected layers (matrix products on plain vectors, weights `[O, I]` row-major) in
//! Cranelift IR: each output a dot product of its weight row and the input vector, four F32X4
//! accumulators over 16 inputs a step, then one vector at a time, then the scalar tail; the
//! epilogue (bias, residual, activation) on the sum. A row serves every image of the batch
//! before the next is read, so the weights (what bounds a fully connected layer at small
//! batch) stream from memory once. Tasks take runs of rows. The input gradient, which reads the
//! weights by columns, runs as tiles of images x consecutive inputs instead.

use crate::emit::{F32, F32X4, Fx};
use crate::error::JitError;
use crate::lower::{Lx, Val};
use crate::vmath;
use cnnc_ir::{Layout, WeightLayout};
use cranelift_codegen::ir::Value;
use cranelift_codegen::ir::condcodes::IntCC;
use cranelift_frontend::Variable;

/// Accumulators of the main loop (four vectors cover the FMA latency).
const ACCS: usize = 4;

/// Whether a convolution from `x` to `y` is a product of plain vectors by a row-major `[o, i]`
/// weight (a fully connected layer): one pixel each side, a 1x1 kernel, no padding, no groups.
fn is_product_of_vectors(g: &super::Geo, x: Val, y: Val, wp: &cnnc_ir::plan::ParamPlan) -> bool {
    let vectors = x.hw() == 1 && y.hw() == 1 && x.layout == Layout::Plain && y.layout == Layout::Plain;
    let unit = g.kh == 1 && g.kw == 1 && g.pad == [0, 0] && g.groups == 1;
    let row_major = match wp.layout {
        None | Some(WeightLayout::Oi | WeightLayout::Oihw) => true,
        Some(
            WeightLayout::OIhw16i16o | WeightLayout::GOIhw16i16o | WeightLayout::Goihw16g | WeightLayout::OI16i16o,
        ) => false,
    };
    let dims_fit = matches!(wp.dims[..], [o, i] | [o, i, 1, 1] if o == g.o && i == g.c);
    vectors && unit && row_major && dims_fit
}

/// A fully connected layer, when its operands are plain vectors: returns whether it did.
pub(crate) fn forward(lx: &mut Lx, op: &super::ConvForward) -> Result<bool, JitError> {
    let super::ConvForward { g, x, y, res, w, wp, bias, act } = *op;
    if !is_product_of_vectors(g, x, y, wp) || res.is_some_and(|r| r.layout != Layout::Plain || r.hw() != 1) {
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

/// Images of one input-gradient tile.
const IMAGES: usize = 4;
/// Input columns of one input-gradient tile: two vectors.
const COLS: usize = 8;

/// The input gradient of a fully connected layer on plain vectors, `gx[n][i] = sum_o gy[n][o]
/// w[o][i]`, when its operands fit (as [`forward`]'s): tiles of up to 4 images x 8 inputs (two
/// vectors of consecutive inputs of a weight row, one broadcast output gradient per image)
/// reduced over every output, so the weights stream once per 4 images; the last inputs past a
/// multiple of 8 one image and one float at a time. Tasks take runs of column tiles. Returns
/// whether it did.
pub(crate) fn backward_data(
    lx: &mut Lx,
    g: &super::Geo,
    gy: Val,
    gx: Val,
    (w, wp): (u64, &cnnc_ir::plan::ParamPlan),
) -> Result<bool, JitError> {
    if !is_product_of_vectors(g, gx, gy, wp) {
        return Ok(false);
    }
    let (inputs, outputs, batch) = (g.c, g.o, gx.n);
    let (full, tail) = (inputs / COLS, inputs % COLS);
    let tiles = inputs.div_ceil(COLS);
    let tasks = lx.tasks(tiles, g.macs(batch));
    lx.kernel(tasks, |fx| {
        let (lo, hi) = fx.task_range(tiles, tasks);
        let w_abs = fx.abs(w);
        fx.for_range(lo, hi, 1, |fx, k| {
            let col0 = fx.muli(k, COLS as i64);
            let wcol = fx.index(w_abs, col0, 4);
            let is_full = fx.icmpi(IntCC::SignedLessThan, k, full as i64);
            fx.if_else(
                is_full,
                |fx| {
                    for first in (0..batch).step_by(IMAGES) {
                        let images: Vec<usize> = (first..batch.min(first + IMAGES)).collect();
                        column_tile(fx, [gy, gx], wcol, col0, &images, [inputs, outputs]);
                    }
                },
                |fx| {
                    for n in 0..batch {
                        column_tail(fx, [gy, gx], wcol, col0, n, [inputs, outputs, tail]);
                    }
                },
            );
        });
    })?;
    Ok(true)
}

/// Inputs `col0 .. col0 + 8` of `images`' input gradients (`wcol`: the weight's column `col0`).
fn column_tile(
    fx: &mut Fx,
    [gy, gx]: [Val; 2],
    wcol: Value,
    col0: Value,
    images: &[usize],
    [inputs, outputs]: [usize; 2],
) {
    let zero = fx.fconst(F32X4, 0.0);
    let acc: Vec<[Variable; 2]> = images.iter().map(|_| [fx.var_init(F32X4, zero), fx.var_init(F32X4, zero)]).collect();
    let rows: Vec<Value> = images
        .iter()
        .map(|&n| {
            let i = fx.int(n as i64);
            gy.image(fx, i)
        })
        .collect();
    fx.for_n(0, outputs as i64, |fx, o| {
        let wrow = fx.index(wcol, o, 4 * inputs as i64);
        let wv = [fx.load_ro(F32X4, wrow, 0), fx.load_ro(F32X4, wrow, 16)];
        for (a, &row) in acc.iter().zip(&rows) {
            let ga = fx.index(row, o, 4);
            let s = fx.load(F32, ga, 0);
            let s = fx.splat(F32X4, s);
            for (v, &av) in a.iter().enumerate() {
                let cur = fx.get(av);
                let next = fx.fma(s, wv[v], cur);
                fx.set(av, next);
            }
        }
    });
    for (a, &n) in acc.iter().zip(images) {
        let i = fx.int(n as i64);
        let img = gx.image(fx, i);
        let at = fx.index(img, col0, 4);
        for (v, &av) in a.iter().enumerate() {
            let s = fx.get(av);
            fx.store(s, at, 16 * v as i64);
        }
    }
}

/// The last `tail` inputs (from `col0`) of image `n`'s input gradient, one float each.
fn column_tail(
    fx: &mut Fx,
    [gy, gx]: [Val; 2],
    wcol: Value,
    col0: Value,
    n: usize,
    [inputs, outputs, tail]: [usize; 3],
) {
    let zero = fx.fconst(F32, 0.0);
    let acc: Vec<Variable> = (0..tail).map(|_| fx.var_init(F32, zero)).collect();
    let i = fx.int(n as i64);
    let row = gy.image(fx, i);
    fx.for_n(0, outputs as i64, |fx, o| {
        let wrow = fx.index(wcol, o, 4 * inputs as i64);
        let ga = fx.index(row, o, 4);
        let s = fx.load(F32, ga, 0);
        for (c, &a) in acc.iter().enumerate() {
            let wv = fx.load_ro(F32, wrow, 4 * c as i64);
            let cur = fx.get(a);
            let next = fx.fma(s, wv, cur);
            fx.set(a, next);
        }
    });
    let img = gx.image(fx, i);
    let at = fx.index(img, col0, 4);
    for (c, &a) in acc.iter().enumerate() {
        let s = fx.get(a);
        fx.store(s, at, 4 * c as i64);
    }
}
