//! Pooling: sliding-window, global, adaptive and spatial-pyramid, forward and backward.
//!
//! Every variant is described the same way: for each output row (column) a list of the input
//! rows (columns) its window reads, the *taps*, plus the number of window positions that lie in
//! the input or its padding (the `include_pad` divisor). A window is the product of its row and
//! column taps. Then one routine per kind does the work:
//!
//! * Max: the largest tap (padding counts as -inf, so it never wins over a real element);
//!   NaN propagates as in PyTorch. The training forward records the first maximum in window
//!   order (rows outer, columns inner), where the backward sends the gradient.
//! * Avg: the sum of the taps divided by the padded window size (`include_pad`, PyTorch's
//!   default) or by the number of real taps. As PyTorch, in ceil mode a window running past the
//!   padded input is clipped to it before counting.
//! * L2: `sqrt(sum of squares)` over the taps (padding contributes 0), gradient `x / out`
//!   from the saved output (0 where `out` is 0).

use crate::buf::Buf;
use cnnc_ir::{PoolKind, Window};

/// The windows of one spatial axis.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Bins {
    /// For each output index, the input coordinates its window reads, in window order.
    taps: Vec<Vec<usize>>,
    /// For each output index, how many window positions lie in the input or its padding.
    padded: Vec<usize>,
}

impl Bins {
    /// The windows of a sliding window with `out` outputs over an axis of `size` elements:
    /// window `o` covers padded positions `o * stride + k * dilation` for `k < kernel`, i.e.
    /// input coordinate `o * stride - pad + k * dilation`. Positions past the right padding
    /// (ceil mode) are dropped entirely, as PyTorch clips them.
    pub(crate) fn sliding(out: usize, size: usize, kernel: usize, stride: usize, pad: usize, dilation: usize) -> Bins {
        let mut bins = Bins { taps: Vec::with_capacity(out), padded: Vec::with_capacity(out) };
        for o in 0..out {
            let mut taps = Vec::new();
            let mut padded = 0;
            for k in 0..kernel {
                let pos = o * stride + k * dilation; // in padded coordinates
                if pos < size + 2 * pad {
                    padded += 1;
                }
                if pos >= pad && pos - pad < size {
                    taps.push(pos - pad);
                }
            }
            bins.taps.push(taps);
            bins.padded.push(padded);
        }
        bins
    }

    /// PyTorch's adaptive bins: output `i` of `out` reads `floor(i * size / out) ..
    /// ceil((i + 1) * size / out)`.
    pub(crate) fn adaptive(out: usize, size: usize) -> Bins {
        let mut bins = Bins { taps: Vec::with_capacity(out), padded: Vec::with_capacity(out) };
        for i in 0..out {
            let start = i * size / out;
            let end = ((i + 1) * size).div_ceil(out);
            bins.taps.push((start..end).collect());
            bins.padded.push(end - start);
        }
        bins
    }

    /// The bins of both axes of a sliding window.
    pub(crate) fn window(window: &Window, input_hw: [usize; 2], output_hw: [usize; 2]) -> [Bins; 2] {
        [0, 1].map(|a| {
            Bins::sliding(
                output_hw[a],
                input_hw[a],
                window.kernel[a],
                window.stride[a],
                window.pad[a],
                window.dilation[a],
            )
        })
    }

    pub(crate) fn len(&self) -> usize {
        self.taps.len()
    }
}

/// The flat index (into one `H x W` plane) of the first maximum of a window, in window order
/// (a NaN counts as a new maximum, as PyTorch). `None` only for a window with no taps.
fn argmax(plane: &[f64], w: usize, rows: &[usize], cols: &[usize]) -> Option<usize> {
    let mut best: Option<(usize, f64)> = None;
    for &iy in rows {
        for &ix in cols {
            let i = iy * w + ix;
            let v = plane[i];
            match best {
                Some((_, bv)) if !(v > bv || v.is_nan()) => {}
                Some(_) | None => best = Some((i, v)),
            }
        }
    }
    best.map(|(i, _)| i)
}

fn avg_divisor(kind_include_pad: bool, bins: &[Bins; 2], oy: usize, ox: usize) -> f64 {
    let d = if kind_include_pad {
        bins[0].padded[oy] * bins[1].padded[ox]
    } else {
        bins[0].taps[oy].len() * bins[1].taps[ox].len()
    };
    d.max(1) as f64
}

/// Pools every `(n, c)` plane of `x` (`[N, C, H, W]`) with the given bins and writes the
/// `C x OH x OW` results of sample `n` to `y.data[n * per_sample + offset ..]`, where
/// `per_sample` is `y`'s element count per sample. `offset` places a pyramid level.
pub(crate) fn pool_forward(kind: PoolKind, x: &Buf, bins: &[Bins; 2], y: &mut Buf, offset: usize) {
    let (n, c, h, w) = (x.shape[0], x.shape[1], x.shape[2], x.shape[3]);
    let (oh, ow) = (bins[0].len(), bins[1].len());
    let per_sample = y.data.len() / n;
    for b in 0..n {
        for ch in 0..c {
            let plane = &x.data[(b * c + ch) * h * w..][..h * w];
            let out = &mut y.data[b * per_sample + offset + ch * oh * ow..][..oh * ow];
            for oy in 0..oh {
                let rows = &bins[0].taps[oy];
                for ox in 0..ow {
                    let cols = &bins[1].taps[ox];
                    out[oy * ow + ox] = match kind {
                        PoolKind::Max => argmax(plane, w, rows, cols).map_or(f64::NEG_INFINITY, |i| plane[i]),
                        PoolKind::Avg { include_pad } => {
                            let sum: f64 =
                                rows.iter().flat_map(|&iy| cols.iter().map(move |&ix| plane[iy * w + ix])).sum();
                            sum / avg_divisor(include_pad, bins, oy, ox)
                        }
                        PoolKind::L2 => l2(plane, w, rows, cols),
                    };
                }
            }
        }
    }
}

fn l2(plane: &[f64], w: usize, rows: &[usize], cols: &[usize]) -> f64 {
    let mut sum = 0.0;
    for &iy in rows {
        for &ix in cols {
            sum += plane[iy * w + ix] * plane[iy * w + ix];
        }
    }
    sum.sqrt()
}

/// Writes, where [`pool_forward`] with `PoolKind::Max` writes each maximum, its flat index
/// `h * W + w` in the input plane (as an f64 integer); -1 for a window without taps (which no
/// valid shape has).
pub(crate) fn pool_argmax(x: &Buf, bins: &[Bins; 2], y: &mut Buf, offset: usize) {
    let (n, c, h, w) = (x.shape[0], x.shape[1], x.shape[2], x.shape[3]);
    let (oh, ow) = (bins[0].len(), bins[1].len());
    let per_sample = y.data.len() / n;
    for b in 0..n {
        for ch in 0..c {
            let plane = &x.data[(b * c + ch) * h * w..][..h * w];
            let out = &mut y.data[b * per_sample + offset + ch * oh * ow..][..oh * ow];
            for oy in 0..oh {
                for ox in 0..ow {
                    out[oy * ow + ox] =
                        argmax(plane, w, &bins[0].taps[oy], &bins[1].taps[ox]).map_or(-1.0, |i| i as f64);
                }
            }
        }
    }
}

/// Max pooling's backward from the recorded argmax (as [`pool_argmax`] writes it): each
/// output gradient goes to its window's maximum. `gx` has the input's shape.
pub(crate) fn pool_backward_max(argmax: &Buf, gy: &Buf, oh_ow: usize, offset: usize, gx: &mut Buf) {
    let (n, c) = (gx.shape[0], gx.shape[1]);
    let plane = gx.data.len() / (n * c);
    let per_sample = gy.data.len() / n;
    for b in 0..n {
        for ch in 0..c {
            let at = b * per_sample + offset + ch * oh_ow;
            let gplane = &mut gx.data[(b * c + ch) * plane..][..plane];
            for k in 0..oh_ow {
                let i = argmax.data[at + k];
                if i >= 0.0 && (i as usize) < plane {
                    gplane[i as usize] += gy.data[at + k];
                }
            }
        }
    }
}

/// Average pooling's backward: each output gradient shared over its window. `gx` has the
/// input's shape.
pub(crate) fn pool_backward_avg(include_pad: bool, bins: &[Bins; 2], gy: &Buf, offset: usize, gx: &mut Buf) {
    let (n, c, w) = (gx.shape[0], gx.shape[1], gx.shape[3]);
    let plane = gx.shape[2] * w;
    let (oh, ow) = (bins[0].len(), bins[1].len());
    let per_sample = gy.data.len() / n;
    for b in 0..n {
        for ch in 0..c {
            let gplane = &mut gx.data[(b * c + ch) * plane..][..plane];
            let gout = &gy.data[b * per_sample + offset + ch * oh * ow..][..oh * ow];
            for oy in 0..oh {
                for ox in 0..ow {
                    let share = gout[oy * ow + ox] / avg_divisor(include_pad, bins, oy, ox);
                    for &iy in &bins[0].taps[oy] {
                        for &ix in &bins[1].taps[ox] {
                            gplane[iy * w + ix] += share;
                        }
                    }
                }
            }
        }
    }
}

/// L2 pooling's backward from its operand `x` and output `y`: `dx += dy * x / y` over each
/// window (nothing where `y` is 0).
pub(crate) fn pool_backward_l2(x: &Buf, y: &Buf, bins: &[Bins; 2], gy: &Buf, offset: usize, gx: &mut Buf) {
    let (n, c, h, w) = (x.shape[0], x.shape[1], x.shape[2], x.shape[3]);
    let (oh, ow) = (bins[0].len(), bins[1].len());
    let per_sample = gy.data.len() / n;
    for b in 0..n {
        for ch in 0..c {
            let base = (b * c + ch) * h * w;
            let plane = &x.data[base..][..h * w];
            let gplane = &mut gx.data[base..][..h * w];
            let at = b * per_sample + offset + ch * oh * ow;
            for oy in 0..oh {
                for ox in 0..ow {
                    let out = y.data[at + oy * ow + ox];
                    if out > 0.0 {
                        let g = gy.data[at + oy * ow + ox];
                        for &iy in &bins[0].taps[oy] {
                            for &ix in &bins[1].taps[ox] {
                                gplane[iy * w + ix] += g * plane[iy * w + ix] / out;
                            }
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adaptive_bins_overlap_like_pytorch() {
        // 5 -> 3: [0, 2), [1, 4), [3, 5)
        let b = Bins::adaptive(3, 5);
        assert_eq!(b.taps, vec![vec![0, 1], vec![1, 2, 3], vec![3, 4]]);
    }

    #[test]
    fn sliding_bins_clip_at_the_padded_edge() {
        // size 5, kernel 3, stride 2, pad 1, ceil mode gives 3 outputs; the last window covers
        // padded positions 4, 5, 6 of the 7 padded ones: input 3, 4 and the right pad.
        let b = Bins::sliding(3, 5, 3, 2, 1, 1);
        assert_eq!(b.taps, vec![vec![0, 1], vec![1, 2, 3], vec![3, 4]]);
        assert_eq!(b.padded, vec![3, 3, 3]);
        // size 4, kernel 3, stride 2, no pad, ceil mode gives 2 outputs; the second window
        // runs past the input and is clipped to 2 positions.
        let b = Bins::sliding(2, 4, 3, 2, 0, 1);
        assert_eq!(b.taps, vec![vec![0, 1, 2], vec![2, 3]]);
        assert_eq!(b.padded, vec![3, 2]);
    }
}
