// Support code of generated modules (core only): the glue between the plan's arena and the
// kernels whose operands are slices (fully connected layers, softmax, cross-entropy), weight
// copies in the layouts kernels read, and the few training computations the kernels do not
// have (regression and hinge losses, dropout masks, products, bias sums, Nesterov momentum).
// Pasted verbatim, item by item, by `cnnc-codegen`.

// @item split_ref_mut error
/// Floats `a.0 .. a.1` (read) and `b.0 .. b.1` (written) of one slice, which must not overlap.
fn split_ref_mut(
    s: &mut [f32],
    a: (usize, usize),
    b: (usize, usize),
) -> Result<(&[f32], &mut [f32]), self::cnnc_kernels::error::KernelError> {
    use self::cnnc_kernels::error::KernelError;
    let len = s.len();
    for (what, (start, end)) in [("operand", a), ("result", b)] {
        if start > end || end > len {
            return Err(KernelError::OutOfBounds { what, end, len });
        }
    }
    if a.0 < b.1 && b.0 < a.1 {
        return Err(KernelError::Overlap { first: "result", second: "operand" });
    }
    if a.1 <= b.0 {
        let (lo, hi) = s.split_at_mut(b.0);
        Ok((&lo[a.0..a.1], &mut hi[..b.1 - b.0]))
    } else {
        let (lo, hi) = s.split_at_mut(a.0);
        Ok((&hi[..a.1 - a.0], &mut lo[b.0..b.1]))
    }
}

// @item disjoint_mut error
/// `K` disjoint ranges of one slice, each writable (a parameter and its optimiser state).
fn disjoint_mut<const K: usize>(
    s: &mut [f32],
    ranges: [::core::ops::Range<usize>; K],
) -> Result<[&mut [f32]; K], self::cnnc_kernels::error::KernelError> {
    use self::cnnc_kernels::error::KernelError;
    let mut order: [usize; K] = ::core::array::from_fn(|i| i);
    order.sort_unstable_by_key(|&i| ranges[i].start);
    let mut out: [&mut [f32]; K] = ::core::array::from_fn(|_| <&mut [f32]>::default());
    let (mut rest, mut base) = (s, 0);
    for &i in &order {
        let r = &ranges[i];
        let overlap = KernelError::Overlap { first: "parameter", second: "optimiser state" };
        if r.start < base || r.end < r.start {
            return Err(overlap);
        }
        let tail = ::core::mem::take(&mut rest);
        let (_, tail) = tail.split_at_mut_checked(r.start - base).ok_or(overlap)?;
        let (mid, tail) = tail.split_at_mut_checked(r.end - r.start).ok_or(overlap)?;
        out[i] = mid;
        (rest, base) = (tail, r.end);
    }
    Ok(out)
}

// @item fc_forward fc eltwise
/// A fully connected layer (or a product on vectors) on arena values: `y = act(x w^T + b)`, or
/// with a residual `y = act(x w^T + b + r)` (`plan` then has no activation). `x` is gathered
/// into `stage.0` when its images are not contiguous; the result goes through `stage.1` when
/// `y`'s are not or a residual is added.
#[allow(clippy::too_many_arguments)]
fn fc_forward(
    par: &dyn self::cnnc_kernels::par::Parallel,
    cpu: self::cnnc_kernels::simd::Cpu,
    plan: &self::cnnc_kernels::fc::FcPlan,
    arena: &mut [f32],
    n: usize,
    x: Place,
    y: Place,
    residual: Option<Place>,
    act: self::cnnc_kernels::act::Act,
    w: &[f32],
    b: Option<&[f32]>,
    stage: (Place, Place),
) -> Result<(), self::cnnc_kernels::error::KernelError> {
    use self::cnnc_kernels::{eltwise, fc};
    let x = if x.dense(n) {
        x
    } else {
        eltwise::copy(par, arena, x.view(n), stage.0.view(n))?;
        stage.0
    };
    let direct = residual.is_none() && y.dense(n);
    let out = if direct { y } else { stage.1 };
    let (xs, ys) = split_ref_mut(arena, x.range(n), out.range(n))?;
    fc::forward(par, plan, xs, w, b, ys)?;
    if direct {
        return Ok(());
    }
    match residual {
        Some(r) => {
            eltwise::add(par, cpu, arena, stage.1.view(n), r.view(n), y.view(n))?;
            if act != self::cnnc_kernels::act::Act::NONE {
                eltwise::activation(par, cpu, arena, act, y.view(n), y.view(n))?;
            }
            Ok(())
        }
        None => eltwise::copy(par, arena, stage.1.view(n), y.view(n)),
    }
}

// @item fc_backward_weights fc
/// The weight gradient of a product on vectors, `dw = gy^T x`, from arena values (copied into
/// `tmp` when their images are not contiguous). `w` is the layer's weight (only its length
/// is read).
#[allow(clippy::too_many_arguments)]
fn fc_backward_weights(
    par: &dyn self::cnnc_kernels::par::Parallel,
    plan: &self::cnnc_kernels::fc::FcPlan,
    arena: &[f32],
    n: usize,
    x: Place,
    gy: Place,
    w: &[f32],
    dw: &mut [f32],
    tmp: &mut [f32],
    scratch: &mut [f32],
) -> Result<(), self::cnnc_kernels::error::KernelError> {
    let (tx, tg) = tmp.split_at_mut(n * x.len());
    let xs: &[f32] = if x.dense(n) {
        let (a, b) = x.range(n);
        &arena[a..b]
    } else {
        read_place(arena, x, n, tx);
        tx
    };
    let gs: &[f32] = if gy.dense(n) {
        let (a, b) = gy.range(n);
        &arena[a..b]
    } else {
        let tg = &mut tg[..n * gy.len()];
        read_place(arena, gy, n, tg);
        tg
    };
    self::cnnc_kernels::fc::backward(par, plan, xs, w, gs, None, dw, None, false, scratch)
}

// @item softmax_forward softmax
/// Softmax over the channels of `x` into `y` (which may be `x` itself), image by image unless
/// the batch is contiguous.
fn softmax_forward(
    par: &dyn self::cnnc_kernels::par::Parallel,
    cpu: self::cnnc_kernels::simd::Cpu,
    arena: &mut [f32],
    n: usize,
    x: Place,
    y: Place,
) -> Result<(), self::cnnc_kernels::error::KernelError> {
    use self::cnnc_kernels::softmax::{self, SoftmaxShape};
    let len = x.len();
    let (images, runs) = if x.dense(n) && y.dense(n) { (n, 1) } else { (1, n) };
    let sh = SoftmaxShape { n: images, c: x.c, s: x.h * x.w };
    for b in 0..runs {
        let xo = x.buf * n + x.off + b * x.stride;
        let yo = y.buf * n + y.off + b * y.stride;
        let size = images * len;
        if xo == yo {
            let end = (xo + size).min(arena.len());
            softmax::forward_in_place(par, cpu, sh, &mut arena[xo.min(end)..end])?;
        } else {
            let (xs, ys) = split_ref_mut(arena, (xo, xo + size), (yo, yo + size))?;
            softmax::forward(par, cpu, sh, xs, ys)?;
        }
    }
    Ok(())
}

// @item softmax_backward softmax
/// Softmax backward from its output `y` and `gy` into `dx`, image by image (both inputs
/// copied into `tmp`, which holds `2 * c * h * w` floats).
fn softmax_backward(
    par: &dyn self::cnnc_kernels::par::Parallel,
    arena: &mut [f32],
    tmp: &mut [f32],
    n: usize,
    y: Place,
    gy: Place,
    dx: Place,
) -> Result<(), self::cnnc_kernels::error::KernelError> {
    use self::cnnc_kernels::softmax::{self, SoftmaxShape};
    let len = y.len();
    let (ty, tg) = tmp[..2 * len].split_at_mut(len);
    let sh = SoftmaxShape { n: 1, c: y.c, s: y.h * y.w };
    for b in 0..n {
        let at = |p: Place| p.buf * n + p.off + b * p.stride;
        ty.copy_from_slice(&arena[at(y)..at(y) + len]);
        tg.copy_from_slice(&arena[at(gy)..at(gy) + len]);
        let d = at(dx);
        softmax::backward(par, sh, ty, tg, &mut arena[d..d + len])?;
    }
    Ok(())
}

// @item cross_entropy softmax
/// Softmax cross-entropy of the logits at `x` with class labels: the mean loss, and (with
/// `grad`) `(softmax - onehot) / n` written there. `tmp` holds `2 * n * classes` floats.
fn cross_entropy(
    cpu: self::cnnc_kernels::simd::Cpu,
    arena: &mut [f32],
    n: usize,
    x: Place,
    labels: &[u32],
    grad: Option<Place>,
    tmp: &mut [f32],
) -> Result<f32, self::cnnc_kernels::error::KernelError> {
    let c = x.len();
    let (logits, g) = tmp[..2 * n * c].split_at_mut(n * c);
    read_place(arena, x, n, logits);
    let loss = self::cnnc_kernels::softmax::cross_entropy(cpu, n, c, logits, labels, g)?;
    if let Some(p) = grad {
        write_place(arena, p, n, g);
    }
    Ok(loss)
}

// @item Regression
/// The elementwise losses, `f(d)` of `d = output - target`.
#[derive(Clone, Copy, Debug)]
pub enum Regression {
    Mse,
    L1,
    Huber(f64),
}

// @item regression_loss
/// The mean of a regression loss over every element (in f64), and (with `grad`) its gradient
/// `f'(d) / elements` (written element by element after both operands are read, so it may be
/// written over either).
fn regression_loss(kind: Regression, arena: &mut [f32], n: usize, x: Place, t: Place, grad: Option<Place>) -> f32 {
    let e = (n * x.len()) as f64;
    let mut total = 0.0f64;
    for b in 0..n {
        let base = |p: Place| p.buf * n + p.off + b * p.stride;
        for c in 0..x.c {
            for yy in 0..x.h {
                for xx in 0..x.w {
                    let d = f64::from(arena[base(x) + x.at(c, yy, xx)]) - f64::from(arena[base(t) + t.at(c, yy, xx)]);
                    let (value, slope) = match kind {
                        Regression::Mse => (d * d, 2.0 * d),
                        Regression::L1 => (d.abs(), if d > 0.0 { 1.0 } else if d < 0.0 { -1.0 } else { 0.0 }),
                        Regression::Huber(delta) => {
                            let v = if d.abs() < delta { 0.5 * d * d } else { delta * (d.abs() - 0.5 * delta) };
                            (v, d.clamp(-delta, delta))
                        }
                    };
                    total += value;
                    if let Some(g) = grad {
                        arena[base(g) + g.at(c, yy, xx)] = (slope / e) as f32;
                    }
                }
            }
        }
    }
    (total / e) as f32
}

// @item hinge_loss
/// The multi-class hinge loss with class labels (`sum_{j != y} max(0, margin - s_y + s_j)`
/// per sample, divided by the classes when `mean_over_classes`), averaged over the batch, and
/// (with `grad`) its gradient.
fn hinge_loss(
    margin: f64,
    mean_over_classes: bool,
    arena: &mut [f32],
    n: usize,
    x: Place,
    labels: &[u32],
    grad: Option<Place>,
) -> f32 {
    let c = x.len();
    let scale = if mean_over_classes { 1.0 / (n * c) as f64 } else { 1.0 / n as f64 };
    let mut total = 0.0f64;
    for (b, &label) in labels.iter().enumerate().take(n) {
        let at = |p: Place, j: usize| p.buf * n + p.off + b * p.stride + p.at(j, 0, 0);
        let y = label as usize;
        let sy = f64::from(arena[at(x, y)]);
        let mut active = 0usize;
        for j in (0..c).filter(|&j| j != y) {
            let z = margin - sy + f64::from(arena[at(x, j)]);
            if z > 0.0 {
                total += z;
                active += 1;
            }
            if let Some(g) = grad {
                arena[at(g, j)] = if z > 0.0 { scale as f32 } else { 0.0 };
            }
        }
        if let Some(g) = grad {
            arena[at(g, y)] = (-(active as f64) * scale) as f32;
        }
    }
    (total * scale) as f32
}

// @item fnv1a64
/// 64-bit FNV-1a over a name's bytes: how a name enters its random stream.
fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3))
}

// @item zero_padding
/// Zeroes the padding lanes of a blocked value (channels `c ..` of its last block).
fn zero_padding(arena: &mut [f32], n: usize, p: Place) {
    if p.layout != self::cnnc_kernels::view::Layout::NChw16c || p.c.is_multiple_of(16) {
        return;
    }
    let v = p.view(n);
    for b in 0..n {
        let block = v.offset + b * p.stride + (p.c / 16) * p.h * p.w * 16;
        for pixel in 0..p.h * p.w {
            arena[block + pixel * 16 + p.c % 16..block + pixel * 16 + 16].fill(0.0);
        }
    }
}

// @item dropout_mask
/// Inverted dropout's mask at `y`: element `i` (row-major over `[n, c, h, w]`) is `1 / (1 - p)`
/// unless the `i`-th output of SplitMix64 seeded with `seed ^ fnv1a64(layer) ^ step *
/// 0xD1B5_4A32_D192_ED03` is below `p` as a 53-bit uniform, then 0: the interpreter's masks.
fn dropout_mask(arena: &mut [f32], n: usize, y: Place, seed: u64, layer: &str, step: u64, p: f64) {
    let mut state = seed ^ fnv1a64(layer.as_bytes()) ^ step.wrapping_mul(0xD1B5_4A32_D192_ED03);
    let keep = if p < 1.0 { 1.0 / (1.0 - p) } else { 0.0 };
    y.for_each(n, |a, _| {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        let u = (z >> 11) as f64 * (1.0 / (1u64 << 53) as f64);
        arena[a] = if u < p { 0.0 } else { keep as f32 };
    });
    zero_padding(arena, n, y);
}

// @item mul
/// `y = a * b` elementwise (one layout; `y` may be either operand).
fn mul(arena: &mut [f32], n: usize, a: Place, b: Place, y: Place) {
    let image = a.view(n).image_len().unwrap_or(0);
    for i in 0..n {
        let at = |p: Place| p.buf * n + p.off + i * p.stride;
        let (ao, bo, yo) = (at(a), at(b), at(y));
        for k in 0..image {
            arena[yo + k] = arena[ao + k] * arena[bo + k];
        }
    }
}

// @item channel_sums
/// The sum of `gy` over the batch and the pixels, per channel (in f64): a bias gradient.
fn channel_sums(arena: &[f32], n: usize, gy: Place, out: &mut [f32]) {
    for (c, o) in out.iter_mut().enumerate().take(gy.c) {
        let mut sum = 0.0f64;
        for b in 0..n {
            let base = gy.buf * n + gy.off + b * gy.stride;
            for y in 0..gy.h {
                for x in 0..gy.w {
                    sum += f64::from(arena[base + gy.at(c, y, x)]);
                }
            }
        }
        *o = sum as f32;
    }
}

// @item sgd_nesterov
/// SGD with Nesterov momentum (`torch.optim.SGD(nesterov=True)`), which the kernels lack:
/// `d = g + wd p; buf = momentum buf + d` (`buf = d` on the first step); `p -= lr (d +
/// momentum buf)`, in f64.
fn sgd_nesterov(lr: f32, momentum: f32, wd: f32, first: bool, p: &mut [f32], g: &[f32], buf: &mut [f32]) {
    let (lr, m, wd) = (f64::from(lr), f64::from(momentum), f64::from(wd));
    for ((p, &g), b) in p.iter_mut().zip(g).zip(buf.iter_mut()) {
        let d = f64::from(g) + wd * f64::from(*p);
        let nb = if first { d } else { m * f64::from(*b) + d };
        *b = nb as f32;
        *p = (f64::from(*p) - lr * (d + m * nb)) as f32;
    }
}

// @item pack_param
/// A parameter's logical elements stored in its layout (padding zeroed): a weight gradient
/// computed in the checkpoint layout, stored like its weight.
fn pack_param(p: &ParamSpec, logical: &[f32], stored: &mut [f32]) {
    stored.fill(0.0);
    for_each_element(p.dims, |o, i, y, x, flat| stored[p.stored.offset(p.dims, p.groups, o, i, y, x)] = logical[flat]);
}

// @item Relayout
/// A layout some kernel reads a weight in, other than the plan's.
#[derive(Clone, Copy, Debug)]
pub enum Relayout {
    /// The checkpoint's `oihw` (the fallback convolution).
    Logical,
    /// `Oihw16o` (the plain-input convolution).
    PlainInput,
    /// `gIOhw16o16i` with the kernel rotated (blocked backward-data).
    BackwardData,
    /// Made from `oihw` by a function of the model's own (Winograd's transformed weights):
    /// only a module that needs such a kernel carries it.
    Transformed(Transform),
}

/// A weight transform a module writes for itself: `(filters, inputs per filter, oihw, out)`.
pub type Transform = fn(usize, usize, &[f32], &mut [f32]) -> Result<(), self::cnnc_kernels::error::KernelError>;

// @item Derived
/// A copy of parameter `PARAMS[param]` in another layout, at `offset .. offset + len`.
#[derive(Clone, Copy, Debug)]
pub struct Derived {
    pub param: usize,
    pub kind: Relayout,
    pub offset: usize,
    pub len: usize,
}

// @item derive pack
/// Fills every copy of `table` from the stored parameters (through their checkpoint layout,
/// in `logical`, then the kernels' packing).
fn derive(
    params: &[ParamSpec],
    table: &[Derived],
    stored: &[f32],
    out: &mut [f32],
    logical: &mut [f32],
) -> Result<(), self::cnnc_kernels::error::KernelError> {
    use self::cnnc_kernels::pack;
    for d in table {
        let p = &params[d.param];
        let logical = &mut logical[..p.dims.iter().product::<usize>()];
        unpack_param(p, &stored[p.offset..p.offset + p.len], logical);
        let dst = &mut out[d.offset..d.offset + d.len];
        let (o, i, kh, kw) = weight_dims(p.dims);
        let shape = pack::WeightShape { o, i, kh, kw, groups: p.groups.max(1) };
        match d.kind {
            Relayout::Logical => dst.copy_from_slice(logical),
            Relayout::PlainInput => pack::pack_plain_input(&shape, logical, dst)?,
            Relayout::BackwardData => pack::pack(&shape, pack::Blocked::BackwardData, logical, dst)?,
            Relayout::Transformed(transform) => transform(o, i, logical, dst)?,
        }
    }
    Ok(())
}
