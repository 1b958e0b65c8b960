//! Convolution (cross-correlation, as PyTorch) and fully connected layers, forward and backward.
//!
//! Layouts: input `[N, C, H, W]`, weight `[O, C / groups, KH, KW]` (OIHW), bias `[O]`,
//! output `[N, O, OH, OW]`. Output channel `o` belongs to group `g = o / (O / groups)` and reads
//! input channels `g * (C / groups) ..`.
//!
//! `out[n, o, y, x] = bias[o] + sum_{ci, ky, kx} w[o, ci, ky, kx] * in[n, g*Cg + ci, y*sh - ph + ky*dh, x*sw - pw + kx*dw]`
//! where positions outside the input read zero (the padding).

use crate::buf::Buf;
use cnnc_ir::Conv;

/// The geometry of one convolution, unpacked from shapes and attributes.
struct Geometry {
    n: usize,
    c: usize,
    h: usize,
    w: usize,
    o: usize,
    oh: usize,
    ow: usize,
    kh: usize,
    kw: usize,
    /// Input channels per group.
    cg: usize,
    /// Output channels per group.
    og: usize,
    /// Per kernel row `ky`: the output rows whose tap lies inside the input (a contiguous
    /// range, since the input row `oy * stride - pad + ky * dilation` grows with `oy`).
    rows: Vec<Taps>,
    cols: Vec<Taps>,
}

/// The outputs `lo..hi` of one kernel tap that read the input, and where: output `o` reads
/// input `o * stride + offset` (`offset` may be negative: the padding).
#[derive(Clone, Copy)]
struct Taps {
    lo: usize,
    hi: usize,
    stride: usize,
    offset: isize,
}

impl Taps {
    fn input(&self, o: usize) -> usize {
        ((o * self.stride) as isize + self.offset) as usize
    }
}

/// For each kernel tap `k` of one axis, the outputs whose input coordinate
/// `o * stride - pad + k * dilation` lies inside `0..size`.
fn axis_taps(out: usize, size: usize, kernel: usize, stride: usize, pad: usize, dilation: usize) -> Vec<Taps> {
    (0..kernel)
        .map(|k| {
            let offset = (k * dilation) as isize - pad as isize;
            let inside = |o: usize| {
                let i = (o * stride) as isize + offset;
                i >= 0 && (i as usize) < size
            };
            let lo = (0..out).find(|&o| inside(o)).unwrap_or(out);
            let hi = (lo..out).find(|&o| !inside(o)).unwrap_or(out);
            Taps { lo, hi, stride, offset }
        })
        .collect()
}

fn geometry(conv: &Conv, x: &[usize], y: &[usize]) -> Geometry {
    let (n, c, h, w) = (x[0], x[1], x[2], x[3]);
    let (o, oh, ow) = (y[1], y[2], y[3]);
    let win = &conv.window;
    let [kh, kw] = win.kernel;
    Geometry {
        n,
        c,
        h,
        w,
        o,
        oh,
        ow,
        kh,
        kw,
        cg: c / conv.groups,
        og: o / conv.groups,
        rows: axis_taps(oh, h, kh, win.stride[0], win.pad[0], win.dilation[0]),
        cols: axis_taps(ow, w, kw, win.stride[1], win.pad[1], win.dilation[1]),
    }
}

/// `c[i][..n] += sum_p a[i][p] * b[p][..n]` for row-major `a` (`m x k`), `b` (`k x n`) and `c`
/// (`m x n`): the one matrix product the convolutions are written with (the innermost loop runs
/// along a row of `b` and `c`, which the compiler vectorises).
fn gemm(m: usize, n: usize, k: usize, a: &[f64], b: &[f64], c: &mut [f64]) {
    for i in 0..m {
        let row = &mut c[i * n..][..n];
        for p in 0..k {
            let s = a[i * k + p];
            if s != 0.0 {
                for (c, &b) in row.iter_mut().zip(&b[p * n..][..n]) {
                    *c += s * b;
                }
            }
        }
    }
}

/// The patches of image `n`, group `group`: row `p` (output pixel `oy * OW + ox`) holds the
/// `Cg * KH * KW` inputs its window reads, in weight order (`ci`, `ky`, `kx`), zero in the
/// padding.
fn im2col(g: &Geometry, x: &[f64], n: usize, group: usize) -> Vec<f64> {
    let k = g.cg * g.kh * g.kw;
    let mut cols = vec![0.0; g.oh * g.ow * k];
    for ci in 0..g.cg {
        let plane = &x[(n * g.c + group * g.cg + ci) * g.h * g.w..][..g.h * g.w];
        for (ky, rows) in g.rows.iter().enumerate() {
            for (kx, taps) in g.cols.iter().enumerate() {
                let column = (ci * g.kh + ky) * g.kw + kx;
                for oy in rows.lo..rows.hi {
                    let input = &plane[rows.input(oy) * g.w..][..g.w];
                    for ox in taps.lo..taps.hi {
                        cols[(oy * g.ow + ox) * k + column] = input[taps.input(ox)];
                    }
                }
            }
        }
    }
    cols
}

/// The inverse scatter of [`im2col`]: every patch entry added back to the input it came from.
fn col2im(g: &Geometry, cols: &[f64], dx: &mut [f64], n: usize, group: usize) {
    let k = g.cg * g.kh * g.kw;
    for ci in 0..g.cg {
        let plane = &mut dx[(n * g.c + group * g.cg + ci) * g.h * g.w..][..g.h * g.w];
        for (ky, rows) in g.rows.iter().enumerate() {
            for (kx, taps) in g.cols.iter().enumerate() {
                let column = (ci * g.kh + ky) * g.kw + kx;
                for oy in rows.lo..rows.hi {
                    let input = &mut plane[rows.input(oy) * g.w..][..g.w];
                    for ox in taps.lo..taps.hi {
                        input[taps.input(ox)] += cols[(oy * g.ow + ox) * k + column];
                    }
                }
            }
        }
    }
}

/// `sum a[j] * b[j]` with four running partial sums (independent, so the loop pipelines and
/// vectorises), added in a fixed order.
fn dot(a: &[f64], b: &[f64]) -> f64 {
    let mut acc = [0.0; 4];
    let (ca, cb) = (a.chunks_exact(4), b.chunks_exact(4));
    let tail: f64 = ca.remainder().iter().zip(cb.remainder()).map(|(x, y)| x * y).sum();
    for (x, y) in ca.zip(cb) {
        for l in 0..4 {
            acc[l] += x[l] * y[l];
        }
    }
    (acc[0] + acc[1]) + (acc[2] + acc[3]) + tail
}

/// Forward convolution; `out_shape` is the full output shape `[N, O, OH, OW]`: per image and
/// group, each output the dot product of its patch and its row of the OIHW weight.
pub(crate) fn conv_forward(conv: &Conv, x: &Buf, weight: &Buf, bias: Option<&Buf>, out_shape: &[usize]) -> Buf {
    let g = geometry(conv, &x.shape, out_shape);
    let (k, pixels) = (g.cg * g.kh * g.kw, g.oh * g.ow);
    let mut y = Buf::zeros(out_shape);
    for group in 0..g.o / g.og {
        for n in 0..g.n {
            let cols = im2col(&g, &x.data, n, group);
            for o in 0..g.og {
                let channel = group * g.og + o;
                let w = &weight.data[channel * k..][..k];
                let b = bias.map_or(0.0, |b| b.data[channel]);
                let plane = &mut y.data[(n * g.o + channel) * pixels..][..pixels];
                for (p, v) in plane.iter_mut().enumerate() {
                    *v = dot(&cols[p * k..][..k], w) + b;
                }
            }
        }
    }
    y
}

/// The output gradient of image `n`, group `group`, as the `pixels x Og` matrix.
fn gy_matrix(g: &Geometry, gy: &[f64], n: usize, group: usize) -> Vec<f64> {
    let pixels = g.oh * g.ow;
    let mut m = vec![0.0; pixels * g.og];
    for o in 0..g.og {
        let plane = &gy[(n * g.o + group * g.og + o) * pixels..][..pixels];
        for (p, &v) in plane.iter().enumerate() {
            m[p * g.og + o] = v;
        }
    }
    m
}

/// The gradient of a convolution's input, of shape `x_shape` (`[N, C, H, W]`), from the
/// output gradient `gy` and the weight: per image and group, the patches' gradient (output
/// gradient times weights) scattered back.
pub(crate) fn conv_backward_data(conv: &Conv, gy: &Buf, weight: &Buf, x_shape: &[usize]) -> Buf {
    let g = geometry(conv, x_shape, &gy.shape);
    let (k, pixels) = (g.cg * g.kh * g.kw, g.oh * g.ow);
    let mut gx = Buf::zeros(x_shape);
    for group in 0..g.o / g.og {
        let w = &weight.data[group * g.og * k..][..g.og * k];
        for n in 0..g.n {
            let gm = gy_matrix(&g, &gy.data, n, group);
            let mut cols = vec![0.0; pixels * k];
            gemm(pixels, k, g.og, &gm, w, &mut cols);
            col2im(&g, &cols, &mut gx.data, n, group);
        }
    }
    gx
}

/// The gradient of a convolution's weight (`weight_shape`, OIHW), summed over the batch: per
/// image and group, the output gradient (transposed) times the patches.
pub(crate) fn conv_backward_weight(conv: &Conv, x: &Buf, gy: &Buf, weight_shape: &[usize]) -> Buf {
    let g = geometry(conv, &x.shape, &gy.shape);
    let (k, pixels) = (g.cg * g.kh * g.kw, g.oh * g.ow);
    let mut gw = Buf::zeros(weight_shape);
    for group in 0..g.o / g.og {
        let out = &mut gw.data[group * g.og * k..][..g.og * k];
        for n in 0..g.n {
            let cols = im2col(&g, &x.data, n, group);
            let gyt: Vec<f64> = {
                // [Og x pixels]: this image's output gradient rows of the group.
                let start = (n * g.o + group * g.og) * pixels;
                gy.data[start..start + g.og * pixels].to_vec()
            };
            gemm(g.og, k, pixels, &gyt, &cols, out);
        }
    }
    gw
}

/// Fully connected: `out[n, o] = bias[o] + sum_i w[o, i] * in[n, i]`, weight `[O, I]`.
pub(crate) fn fc_forward(x: &Buf, weight: &Buf, bias: Option<&Buf>) -> Buf {
    let (n, i_len) = (x.shape[0], x.shape[1]);
    let o_len = weight.shape[0];
    let mut y = Buf::zeros(&[n, o_len]);
    for b in 0..n {
        let xin = &x.data[b * i_len..][..i_len];
        for o in 0..o_len {
            let w = &weight.data[o * i_len..][..i_len];
            let mut acc = bias.map_or(0.0, |bias| bias.data[o]);
            for i in 0..i_len {
                acc += w[i] * xin[i];
            }
            y.data[b * o_len + o] = acc;
        }
    }
    y
}

/// The gradient of a fully connected layer's input `[N, I]`, weight `[O, I]`.
pub(crate) fn fc_backward_data(gy: &Buf, weight: &Buf) -> Buf {
    let (n, o_len) = (gy.shape[0], gy.shape[1]);
    let i_len = weight.shape[1];
    let mut gx = Buf::zeros(&[n, i_len]);
    for b in 0..n {
        for o in 0..o_len {
            let go = gy.data[b * o_len + o];
            for i in 0..i_len {
                gx.data[b * i_len + i] += weight.data[o * i_len + i] * go;
            }
        }
    }
    gx
}

/// The gradient of a fully connected layer's weight `[O, I]`, summed over the batch.
pub(crate) fn fc_backward_weight(x: &Buf, gy: &Buf) -> Buf {
    let (n, i_len) = (x.shape[0], x.shape[1]);
    let o_len = gy.shape[1];
    let mut gw = Buf::zeros(&[o_len, i_len]);
    for b in 0..n {
        for o in 0..o_len {
            let go = gy.data[b * o_len + o];
            for i in 0..i_len {
                gw.data[o * i_len + i] += x.data[b * i_len + i] * go;
            }
        }
    }
    gw
}
