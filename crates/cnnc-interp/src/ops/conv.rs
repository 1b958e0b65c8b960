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

/// Forward convolution; `out_shape` is the full output shape `[N, O, OH, OW]`.
pub(crate) fn conv_forward(conv: &Conv, x: &Buf, weight: &Buf, bias: Option<&Buf>, out_shape: &[usize]) -> Buf {
    let g = geometry(conv, &x.shape, out_shape);
    let mut y = Buf::zeros(out_shape);
    for n in 0..g.n {
        for o in 0..g.o {
            let group = o / g.og;
            let out = &mut y.data[(n * g.o + o) * g.oh * g.ow..][..g.oh * g.ow];
            if let Some(bias) = bias {
                out.fill(bias.data[o]);
            }
            for ci in 0..g.cg {
                let ic = group * g.cg + ci;
                let plane = &x.data[(n * g.c + ic) * g.h * g.w..][..g.h * g.w];
                for (ky, rows) in g.rows.iter().enumerate() {
                    for (kx, cols) in g.cols.iter().enumerate() {
                        let wv = weight.data[((o * g.cg + ci) * g.kh + ky) * g.kw + kx];
                        for oy in rows.lo..rows.hi {
                            let input = &plane[rows.input(oy) * g.w..][..g.w];
                            let output = &mut out[oy * g.ow..][..g.ow];
                            for ox in cols.lo..cols.hi {
                                output[ox] += wv * input[cols.input(ox)];
                            }
                        }
                    }
                }
            }
        }
    }
    y
}

/// The gradient of a convolution's input, of shape `x_shape` (`[N, C, H, W]`), from the
/// output gradient `gy` and the weight.
pub(crate) fn conv_backward_data(conv: &Conv, gy: &Buf, weight: &Buf, x_shape: &[usize]) -> Buf {
    let g = geometry(conv, x_shape, &gy.shape);
    let mut gx = Buf::zeros(x_shape);
    for n in 0..g.n {
        for o in 0..g.o {
            let group = o / g.og;
            let gout = &gy.data[(n * g.o + o) * g.oh * g.ow..][..g.oh * g.ow];
            for ci in 0..g.cg {
                let ic = group * g.cg + ci;
                let plane = &mut gx.data[(n * g.c + ic) * g.h * g.w..][..g.h * g.w];
                for (ky, rows) in g.rows.iter().enumerate() {
                    for (kx, cols) in g.cols.iter().enumerate() {
                        let wv = weight.data[((o * g.cg + ci) * g.kh + ky) * g.kw + kx];
                        for oy in rows.lo..rows.hi {
                            let input = &mut plane[rows.input(oy) * g.w..][..g.w];
                            let output = &gout[oy * g.ow..][..g.ow];
                            for ox in cols.lo..cols.hi {
                                input[cols.input(ox)] += wv * output[ox];
                            }
                        }
                    }
                }
            }
        }
    }
    gx
}

/// The gradient of a convolution's weight (`weight_shape`, OIHW), summed over the batch.
pub(crate) fn conv_backward_weight(conv: &Conv, x: &Buf, gy: &Buf, weight_shape: &[usize]) -> Buf {
    let g = geometry(conv, &x.shape, &gy.shape);
    let mut gw = Buf::zeros(weight_shape);
    for n in 0..g.n {
        for o in 0..g.o {
            let group = o / g.og;
            let gout = &gy.data[(n * g.o + o) * g.oh * g.ow..][..g.oh * g.ow];
            for ci in 0..g.cg {
                let ic = group * g.cg + ci;
                let plane = &x.data[(n * g.c + ic) * g.h * g.w..][..g.h * g.w];
                for (ky, rows) in g.rows.iter().enumerate() {
                    for (kx, cols) in g.cols.iter().enumerate() {
                        let mut acc = 0.0;
                        for oy in rows.lo..rows.hi {
                            let input = &plane[rows.input(oy) * g.w..][..g.w];
                            let output = &gout[oy * g.ow..][..g.ow];
                            for ox in cols.lo..cols.hi {
                                acc += input[cols.input(ox)] * output[ox];
                            }
                        }
                        gw.data[((o * g.cg + ci) * g.kh + ky) * g.kw + kx] += acc;
                    }
                }
            }
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
