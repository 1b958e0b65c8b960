//! Native mode: convolutions with a single output pixel ("point" convolutions: ResNet-18's
//! layer4 on 32x32 images works on 2x2 and 1x1 maps). Each kernel tap that meets the input
//! at all meets one input pixel, the same for every image, and the others see only padding
//! (of a 3x3 kernel with padding 1 on a 1x1 map, only the centre tap), so the convolution is
//! a fully connected layer on the live taps' weights,
//! `y[n][o] = sum_(i, live t) w[o][i][t] x[n][i][pixel(t)]`, and its backward passes are the
//! fc layer's.
//!
//! Why not the blocked kernels: they tile the pixels of one image, here one, so a tile is a
//! single column (each weight vector loaded for one FMA), and they stream every tap's weights
//! for the few that meet the input (ResNet-18's layer4 at batch 16 in training: 22-37 % of
//! the peak forward, 14-50 % backward). The fc kernels tile the batch instead.
//!
//! The live taps' weights are copied out as a matrix (`K = live taps x input channels` by
//! the output channels: `io`, whose rows are the packed blocks' rows, so the copy moves whole
//! vectors) in a step before the forward pass, since the optimiser changes them between
//! runs; the backward pass of the same step reads that copy again. With `io` weights the
//! forward pass is the fc kernel's input gradient and the input gradient its forward pass;
//! a forward pass with a bias or an activation uses the fc forward and its epilogue on an
//! `oi` copy instead. On a map larger than one pixel, the live pixels are gathered into
//! `K`-long rows first, and the input gradient is scattered back (zero on the pixels no tap
//! meets). The weight gradient is the fc kernel's (`io`), copied into the weight's own
//! layout with zeros on the taps that see only padding (what the convolution's gradient has
//! there). When the gradient's only reader is the optimiser's update (`update::fusable`),
//! the update runs from the live-tap matrix instead (`cnnc_update_live_taps`): the
//! weight-shaped gradient, mostly zeros, is never written, and the dead taps, whose gradient
//! is zero, are only read where the update leaves them unchanged.
//!
//! A map in `nChw16c` with whole channel blocks and one pixel is the plain vector of its
//! channels, so the fc kernels read and write both layouts alike; maps with padding lanes are
//! left to the blocked kernels (their lanes must stay zero).

use super::conv::{ConvForward, Geo};
use super::native::{Arg, act, calls, keep};
use super::{Lx, Val};
use crate::emit::{F32, F32X4, Fx};
use crate::error::JitError;
use cnnc_ir::plan::ParamPlan;
use cnnc_ir::{Layout, WeightLayout};
use cnnc_kernels::act::Act;
use cnnc_kernels::fc::FcPlan;
use cranelift_codegen::ir::Value;

/// `(tap, pixel)` pairs: a kernel tap and the input pixel it meets.
type LiveTaps = Vec<(usize, usize)>;

/// The live taps of a convolution with one output pixel and one group: `(tap, pixel)` for
/// each kernel tap `ky * kw + kx` that meets the input, at input pixel `iy * w + ix`.
fn live_taps(g: &Geo) -> Option<LiveTaps> {
    if (g.oh, g.ow, g.groups) != (1, 1, 1) {
        return None;
    }
    // The output pixel reads input row `ky * dilation - pad` through kernel row `ky`.
    let axis = |k: usize, d: usize, p: usize, size: usize| -> Vec<(usize, usize)> {
        (0..k).filter_map(|t| (t * d).checked_sub(p).filter(|&at| at < size).map(|at| (t, at))).collect()
    };
    let mut live = Vec::new();
    for (ky, iy) in axis(g.kh, g.dil[0], g.pad[0], g.h) {
        for (kx, ix) in axis(g.kw, g.dil[1], g.pad[1], g.w) {
            live.push((ky * g.kw + kx, iy * g.w + ix));
        }
    }
    (!live.is_empty()).then_some(live)
}

/// Whether a value's channels at a pixel can be read or written as the fc kernels' rows:
/// plain maps, or blocked ones with whole channel blocks; images a whole number of floats
/// apart (the arena rounds them up to 64 bytes).
fn map_fits(v: &Val) -> bool {
    (v.layout == Layout::Plain || v.c.is_multiple_of(16)) && v.bs.is_multiple_of(4) && v.bs >= 4 * v.stored() as u64
}

/// Whether the weight is in a layout [`extract`] reads: packed `OIhw16i16o` with whole
/// blocks, or plain `oihw`.
fn weights_fit(g: &Geo, wp: &ParamPlan) -> bool {
    let whole = g.c.is_multiple_of(16) && g.o.is_multiple_of(16);
    let len_ok = wp.stored_len() == g.o * g.c * g.kh * g.kw;
    len_ok
        && match wp.layout {
            None | Some(WeightLayout::Oihw) => true,
            Some(WeightLayout::OIhw16i16o | WeightLayout::OI16i16o) => whole,
            Some(_) => false,
        }
}

/// Floats between samples of a vector value.
fn stride(v: &Val) -> usize {
    (v.bs / 4) as usize
}

/// Runs `body(fx, w, i)` for every input channel `i` of output channel `o` (a run-time value)
/// of plain `oihw` weights at `weights`, `w` the address of weight `(o, i, tap)`.
fn for_each_input(
    fx: &mut Fx,
    g: &Geo,
    tap: usize,
    (weights, o): (Value, Value),
    mut body: impl FnMut(&mut Fx, Value, Value),
) {
    let (c, taps) = (g.c, g.kh * g.kw);
    let first = fx.muli(o, (c * taps) as i64);
    let first = fx.addi(first, tap as i64);
    let first = fx.index(weights, first, 4);
    fx.for_n(0, c as i64, |fx, i| {
        let at = fx.index(first, i, (taps * 4) as i64);
        body(fx, at, i);
    });
}

/// A buffer of at least `bytes` that every point convolution asking for `use_` shares during
/// its own steps (`native_bwd::step_buffer`), bounded by the plan's largest weight: a
/// live-tap matrix is at most a whole weight.
fn shared_buffer(lx: &mut Lx, use_: &'static str, bytes: usize) -> Result<u64, JitError> {
    let bound = 4 * super::native_bwd::largest_param(lx);
    super::native_bwd::step_buffer(lx, use_, bytes, bound)
}

/// Whether the weight is packed (`OIhw16i16o`, `OI16i16o`) rather than plain `oihw`.
fn packed(wp: &ParamPlan) -> bool {
    matches!(wp.layout, Some(WeightLayout::OIhw16i16o | WeightLayout::OI16i16o))
}

/// Which way [`copy_weights`] copies, and the order of the live-tap matrix: `io` (`K x o`,
/// row `j c + i` for tap `j`'s input channel `i`) or `oi` (`o x K`).
#[derive(Clone, Copy, PartialEq)]
enum CopyDir {
    /// The weight's live taps into an `io` matrix.
    ToIo,
    /// The weight's live taps into an `oi` matrix (for the fc kernel's forward, whose
    /// epilogue a bias and an activation need).
    ToOi,
    /// An `io` matrix into the weight's live taps, every other tap zero.
    FromIo,
}

/// Emits a step copying between a weight-shaped tensor (`weights`) and the matrix of its live
/// taps (`matrix`). Packed weights are whole 16 x 16 blocks `[i % 16][o % 16]`: each of its
/// rows is 16 output channels of an `io` row, so `io` copies are four vector moves a block
/// row; `oi` copies read a block down its columns. Tasks own whole output blocks (packed) or
/// output channels (plain), so their stores never meet.
fn copy_weights(
    lx: &mut Lx,
    g: &Geo,
    wp: &ParamPlan,
    live: &[(usize, usize)],
    (weights, matrix): (u64, u64),
    dir: CopyDir,
) -> Result<(), JitError> {
    let (o, c, all, k) = (g.o, g.c, g.kh * g.kw, live.len() * g.c);
    let packed = packed(wp);
    let geo = *g;
    let taps: Vec<usize> = live.iter().map(|&(t, _)| t).collect();
    let units = if packed { o / 16 } else { o };
    // One unit's floats are contiguous in the weight: 16 output channels, or one.
    let unit_len = if packed { 16 * c * all } else { c * all };
    let tasks = lx.tasks(units, (o * k * 8) as f64);
    lx.kernel(tasks, |fx| {
        let (lo, hi) = fx.task_range(units, tasks);
        let (w, m) = (fx.abs(weights), fx.abs(matrix));
        fx.for_range(lo, hi, 1, |fx, u| {
            if dir == CopyDir::FromIo {
                let start = fx.index(w, u, (unit_len * 4) as i64);
                let zero4 = fx.fconst(F32X4, 0.0);
                let (z0, z1) = (fx.int(0), fx.int((unit_len / 4) as i64));
                fx.for_range(z0, z1, 1, |fx, q| {
                    let a = fx.index(start, q, 16);
                    fx.store(zero4, a, 0);
                });
                let zero = fx.fconst(F32, 0.0);
                for q in unit_len / 4 * 4..unit_len {
                    fx.store(zero, start, q as i64 * 4);
                }
            }
            if !packed {
                // Plain: output channel `u`, a float at a time.
                for (j, &tap) in taps.iter().enumerate() {
                    for_each_input(fx, &geo, tap, (w, u), |fx, at, i| {
                        let row = fx.addi(i, (j * c) as i64);
                        let (mat, off) = match dir {
                            CopyDir::ToOi => {
                                let r = fx.index(m, u, (k * 4) as i64);
                                (fx.index(r, row, 4), 0)
                            }
                            CopyDir::ToIo | CopyDir::FromIo => {
                                let r = fx.index(m, row, (o * 4) as i64);
                                (fx.index(r, u, 4), 0)
                            }
                        };
                        if dir == CopyDir::FromIo {
                            let v = fx.load(F32, mat, off);
                            fx.store(v, at, 0);
                        } else {
                            let v = fx.load(F32, at, 0);
                            fx.store(v, mat, off);
                        }
                    });
                }
                return;
            }
            let first_blk = fx.index(w, u, (unit_len * 4) as i64);
            for (j, &tap) in taps.iter().enumerate() {
                let tap_blk = fx.addi(first_blk, (tap * 1024) as i64);
                fx.for_n(0, (c / 16) as i64, |fx, ib| {
                    let blk = fx.index(tap_blk, ib, (all * 1024) as i64);
                    let i0 = fx.muli(ib, 16);
                    let row0 = fx.addi(i0, (j * c) as i64);
                    match dir {
                        CopyDir::ToIo | CopyDir::FromIo => {
                            // `io` rows `row0 + ii`, columns `16 u ..`: a block row each.
                            let r = fx.index(m, row0, (o * 4) as i64);
                            let at = fx.index(r, u, 64);
                            for ii in 0..16i64 {
                                for q in 0..4i64 {
                                    let (b_off, m_off) = (ii * 64 + q * 16, ii * (o as i64) * 4 + q * 16);
                                    if dir == CopyDir::ToIo {
                                        let v = fx.load(F32X4, blk, b_off);
                                        fx.store(v, at, m_off);
                                    } else {
                                        let v = fx.load(F32X4, at, m_off);
                                        fx.store(v, blk, b_off);
                                    }
                                }
                            }
                        }
                        CopyDir::ToOi => {
                            // `oi` rows `16 u + oo`, columns `row0 ..`: a block column each.
                            let r = fx.index(m, u, (16 * k * 4) as i64);
                            let at = fx.index(r, row0, 4);
                            for oo in 0..16i64 {
                                for ii in 0..16i64 {
                                    let v = fx.load(F32, blk, (ii * 16 + oo) * 4);
                                    fx.store(v, at, (oo * k as i64 + ii) * 4);
                                }
                            }
                        }
                    }
                });
            }
        });
    })
}

/// Emits a step copying between a map and its live pixels as `K`-long rows (`rows`, `n x K`
/// floats, tap `j`'s channels at columns `j c ..`): gathering (`to_rows`), or scattering
/// back with every other pixel of the map zero.
fn move_pixels(lx: &mut Lx, v: &Val, live: &[(usize, usize)], rows: u64, to_rows: bool) -> Result<(), JitError> {
    let (n, c, hw, k) = (v.n, v.c, v.hw(), live.len() * v.c);
    let (map, bs, stored) = (v.addr, v.bs as i64, v.stored());
    let blocked = v.layout == Layout::Blocked16;
    let pixels: Vec<usize> = live.iter().map(|&(_, p)| p).collect();
    let tasks = lx.tasks(n, (n * k * 4) as f64);
    lx.kernel(tasks, |fx| {
        let (lo, hi) = fx.task_range(n, tasks);
        let (m, r) = (fx.abs(map), fx.abs(rows));
        fx.for_range(lo, hi, 1, |fx, img| {
            let mi = fx.index(m, img, bs);
            let ri = fx.index(r, img, (k * 4) as i64);
            if !to_rows {
                let vec_end = stored - stored % 4;
                let zero4 = fx.fconst(F32X4, 0.0);
                let (z0, z1) = (fx.int(0), fx.int(vec_end as i64));
                fx.for_range(z0, z1, 4, |fx, q| {
                    let a = fx.index(mi, q, 4);
                    fx.store(zero4, a, 0);
                });
                let zero = fx.fconst(F32, 0.0);
                for q in vec_end..stored {
                    fx.store(zero, mi, q as i64 * 4);
                }
            }
            for (j, &pix) in pixels.iter().enumerate() {
                let copy = |fx: &mut Fx, ty, at: Value, at_off: i64, col: Value, col_off: i64| {
                    if to_rows {
                        let val = fx.load(ty, at, at_off);
                        fx.store(val, col, col_off);
                    } else {
                        let val = fx.load(ty, col, col_off);
                        fx.store(val, at, at_off);
                    }
                };
                let row = fx.addi(ri, (j * c * 4) as i64);
                if blocked {
                    // Whole blocks (`map_fits`): channel `16 b + l` of pixel `pix` at
                    // `b hw 16 + pix 16 + l`, each block's 16 channels as four vectors.
                    let first = fx.addi(mi, (pix * 64) as i64);
                    fx.for_n(0, (c / 16) as i64, |fx, b| {
                        let at = fx.index(first, b, (hw * 64) as i64);
                        let col = fx.index(row, b, 64);
                        for q in 0..4 {
                            copy(fx, F32X4, at, q * 16, col, q * 16);
                        }
                    });
                } else {
                    // Channel `i` of pixel `pix` at `i hw + pix`.
                    let first = fx.addi(mi, (pix * 4) as i64);
                    fx.for_n(0, c as i64, |fx, i| {
                        let at = fx.index(first, i, (hw * 4) as i64);
                        let col = fx.index(row, i, 4);
                        copy(fx, F32, at, 0, col, 0);
                    });
                }
            }
        });
    })
}

/// The fc kernels' rows of a convolution's input (or input gradient): the map itself when it
/// is one pixel seen through one tap, else a buffer of the node's, `n x K` floats.
fn rows_of(lx: &mut Lx, v: &Val, live: &[(usize, usize)]) -> Result<(u64, usize), JitError> {
    if v.hw() == 1 {
        return Ok((v.addr, (v.bs / 4) as usize));
    }
    let k = live.len() * v.c;
    let (_, addr) = lx.buffer(v.n * k * 4)?;
    Ok((addr, k))
}

/// A forward point convolution through the fc kernels: without an epilogue, `y = x_live
/// w_io` as the fc layer's input gradient (whose weight matrix is `io` here, copied in
/// whole vectors); with a bias or an activation, the fc forward and its epilogue on `oi`
/// weights. A residual is left to the blocked kernels.
pub(crate) fn forward(lx: &mut Lx, op: &ConvForward) -> Result<bool, JitError> {
    let ConvForward { g, x, y, res, w, wp, bias, act: a } = *op;
    let Some(live) = live_taps(g) else { return Ok(false) };
    if res.is_some() || !map_fits(&x) || !map_fits(&y) || !weights_fit(g, wp) {
        return Ok(false);
    }
    let k = live.len() * g.c;
    let cpu = cnnc_kernels::cpu::best();
    let plain_epilogue = bias.is_none() && a.is_none();
    // The fc layer whose forward (or input gradient) this is: `K -> o` (or `o -> K`).
    let plan = if plain_epilogue {
        FcPlan::new(x.n, g.o, k, false, Act::NONE, cpu, lx.threads)
    } else {
        FcPlan::new(x.n, k, g.o, bias.is_some(), act(a), cpu, lx.threads)
    };
    let Ok(plan) = plan else { return Ok(false) };
    let (xr, xs) = rows_of(lx, &x, &live)?;
    let plan = if plain_epilogue { plan.with_strides(stride(&y), xs) } else { plan.with_strides(xs, stride(&y)) };
    let Ok(plan) = plan else { return Ok(false) };
    let wt = if plain_epilogue {
        // A buffer of this weight's own, which the backward pass of the step reads again.
        let (_, wt) = lx.buffer(4 * g.o * k)?;
        lx.point_weights.insert(wp.name.clone(), wt);
        wt
    } else {
        shared_buffer(lx, "point-convolution weights", 4 * g.o * k)?
    };
    copy_weights(lx, g, wp, &live, (w, wt), if plain_epilogue { CopyDir::ToIo } else { CopyDir::ToOi })?;
    if xr != x.addr {
        move_pixels(lx, &x, &live, xr, true)?;
    }
    let scratch = if plain_epilogue { lx.alloc(plan.backward_scratch_len() * 4) } else { 0 };
    let p = keep(lx, plan);
    let pool = Arg::Abs(lx.pool);
    if plain_epilogue {
        let f = cnnc_kernels::ffi::cnnc_fc_backward_data as *const () as u64;
        calls(lx, &[(f, &[Arg::Abs(p), Arg::Abs(xr), Arg::Abs(wt), Arg::Abs(y.addr), Arg::Aux(scratch), pool])])?;
    } else {
        let f = cnnc_kernels::ffi::cnnc_fc_forward as *const () as u64;
        let b = Arg::Abs(bias.unwrap_or(0));
        calls(lx, &[(f, &[Arg::Abs(p), Arg::Abs(xr), Arg::Abs(wt), b, Arg::Abs(y.addr), pool])])?;
    }
    Ok(true)
}

/// The fc layer `o -> K` whose passes a point convolution's backward passes are, on `gy` and
/// the rows of `v` (the input, or the input gradient): the live taps, the plan and the rows'
/// address, or `None` when the convolution is not a point convolution the kernels take.
fn backward_fc(
    lx: &mut Lx,
    g: &Geo,
    gy: &Val,
    v: &Val,
    wp: &ParamPlan,
) -> Result<Option<(LiveTaps, FcPlan, u64)>, JitError> {
    let Some(live) = live_taps(g) else { return Ok(None) };
    if !map_fits(gy) || !map_fits(v) || !weights_fit(g, wp) {
        return Ok(None);
    }
    let cpu = cnnc_kernels::cpu::best();
    let Ok(plan) = FcPlan::new(v.n, g.o, live.len() * g.c, false, Act::NONE, cpu, lx.threads) else { return Ok(None) };
    let (rows, rows_stride) = rows_of(lx, v, &live)?;
    let Ok(plan) = plan.with_strides(stride(gy), rows_stride) else { return Ok(None) };
    Ok(Some((live, plan, rows)))
}

/// `gx` of a point convolution (overwritten): `gy w_live^T`, the fc forward of `o -> K` on
/// the `io` weights, scattered to the live pixels.
pub(crate) fn backward_data(
    lx: &mut Lx,
    g: &Geo,
    gy: Val,
    gx: Val,
    (w, wp): (u64, &ParamPlan),
) -> Result<bool, JitError> {
    let Some((live, plan, gr)) = backward_fc(lx, g, &gy, &gx, wp)? else { return Ok(false) };
    // The forward pass's copy when it made one: the weights have not changed since (the
    // optimiser's update of a weight comes after every use of it in the step).
    let wt = match lx.point_weights.get(&wp.name) {
        Some(&wt) => wt,
        None => {
            let wt = shared_buffer(lx, "point-convolution weights", 4 * g.o * live.len() * g.c)?;
            copy_weights(lx, g, wp, &live, (w, wt), CopyDir::ToIo)?;
            wt
        }
    };
    let p = keep(lx, plan);
    let f = cnnc_kernels::ffi::cnnc_fc_forward as *const () as u64;
    let args = [Arg::Abs(p), Arg::Abs(gy.addr), Arg::Abs(wt), Arg::Abs(0), Arg::Abs(gr), Arg::Abs(lx.pool)];
    calls(lx, &[(f, &args)])?;
    if gr != gx.addr {
        move_pixels(lx, &gx, &live, gr, false)?;
    }
    Ok(true)
}

/// `gw` of a point convolution in the weight's layout: `x_live^T gy` as the fc weight
/// gradient of `o -> K` (so `io`), copied into the live taps, zero on every other.
pub(crate) fn backward_weights(
    lx: &mut Lx,
    g: &Geo,
    x: Val,
    gy: Val,
    gw: Val,
    wp: &ParamPlan,
) -> Result<bool, JitError> {
    if gw.bytes < 4 * wp.stored_len() as u64 {
        return Ok(false);
    }
    let Some((live, plan, xr)) = backward_fc(lx, g, &gy, &x, wp)? else { return Ok(false) };
    if xr != x.addr {
        move_pixels(lx, &x, &live, xr, true)?;
    }
    let io = shared_buffer(lx, "point-convolution weight gradient", 4 * g.o * live.len() * g.c)?;
    let p = keep(lx, plan);
    let f = cnnc_kernels::ffi::cnnc_fc_backward_weights as *const () as u64;
    let args = [Arg::Abs(p), Arg::Abs(xr), Arg::Abs(gy.addr), Arg::Abs(io), Arg::Abs(0), Arg::Abs(lx.pool)];
    calls(lx, &[(f, &args)])?;
    if packed(wp)
        && let Some((update, opt)) = super::update::fusable(lx, lx.node)
    {
        return update_from_live_taps(lx, g, &live, io, (update, &opt));
    }
    copy_weights(lx, g, wp, &live, (gw.addr, io), CopyDir::FromIo)?;
    Ok(true)
}

/// The optimiser's update of a packed weight applied straight from the live-tap gradient
/// matrix `io` (the other taps' gradient zero), in place of writing the weight-shaped
/// gradient (mostly zeros) and a separate pass reading it: the update node then emits nothing.
fn update_from_live_taps(
    lx: &mut Lx,
    g: &Geo,
    live: &[(usize, usize)],
    io: u64,
    (update, opt): (cnnc_ir::NodeId, &cnnc_ir::Optimizer),
) -> Result<bool, JitError> {
    let taps = g.kh * g.kw;
    // The kernel's contract: whole blocks of 16 channels and a parameter of `o c taps` floats
    // (what `packed` and `weights_fit` already hold; checked again where it is relied on).
    let len = lx.param(update, "")?.1.stored_len();
    if !g.o.is_multiple_of(16)
        || !g.c.is_multiple_of(16)
        || len != g.o * g.c * taps
        || live.iter().any(|&(t, _)| t >= taps)
    {
        return Err(crate::error::plan_err(format!(
            "point convolution update: {len} floats for {} x {} x {taps}",
            g.o, g.c
        )));
    }
    let (up, ua) = super::update::kernel_update(lx, update, opt)?;
    let mut table = vec![-1i32; taps];
    for (j, &(t, _)) in live.iter().enumerate() {
        table[t] = j as i32;
    }
    let table = super::native::keep_all(lx, table);
    let grad =
        cnnc_kernels::optim::LiveTapGrad { io: io as *const f32, live: table as *const i32, o: g.o, c: g.c, taps };
    let ga = keep(lx, grad);
    let f = cnnc_kernels::ffi::cnnc_update_live_taps as *const () as u64;
    let pool = lx.pool;
    lx.kernel(1, |fx| {
        let (p, a, gr, pl) = (fx.abs(up), fx.abs(ua), fx.abs(ga), fx.abs(pool));
        let (lr, step) = super::update::run_scalars(fx);
        super::native::emit_call(fx, f, &[p, a, gr, lr, step, pl]);
    })?;
    lx.written.insert(update);
    Ok(true)
}
