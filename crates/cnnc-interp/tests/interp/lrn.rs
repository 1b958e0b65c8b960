//! LRN in both conventions: PyTorch's and Caffe's (`alpha / size` times the window's sum of
//! squares, the default) and the AlexNet paper's (`alpha` times it). Forward and backward by
//! hand, then central differences for both.

use crate::common::*;
use cnnc_interp::{Buf, BufMap, Precision};
use cnnc_ir::{Lrn, Op};

fn lrn(size: usize, alpha: f64, beta: f64, k: f64, alpha_over_size: bool) -> Op {
    Op::Lrn(Lrn { size, alpha, beta, k, alpha_over_size })
}

/// The output and the input gradient of a one-op graph at `x`, for the output gradient `gy`.
fn run(op: Op, x: &Buf, gy: &Buf) -> (Buf, Buf) {
    let mut b = Builder::new();
    let i = b.input(&x.shape[1..]);
    let y = b.add(op, &[i]);
    let g = b.finish(&[y]);
    let grads = vjp(&g, INFER, &BufMap::new(), std::slice::from_ref(x), std::slice::from_ref(gy), Precision::F64);
    (grads.outputs[0].clone(), grads.inputs[&0].clone())
}

fn assert_close(found: &Buf, expected: &[f64]) {
    assert_eq!(found.data.len(), expected.len());
    for (i, (a, b)) in found.data.iter().zip(expected).enumerate() {
        assert!((a - b).abs() <= 1e-12 * (1.0 + b.abs()), "element {i}: found {a}, expected {b}\n{found:?}");
    }
}

fn column(values: &[f64]) -> Buf {
    Buf::from_vec(&[1, values.len(), 1, 1], values.to_vec()).unwrap()
}

#[test]
fn forward_by_hand_in_both_conventions() {
    // Channels [1, 2, 3], size 3 (windows {0, 1}, {0, 1, 2}, {1, 2}: sums of squares 5, 14,
    // 13), alpha 1, beta 1, k 1.
    let x = column(&[1., 2., 3.]);
    let ones = column(&[1., 1., 1.]);
    // The paper: y = x / (1 + sum).
    let (y, _) = run(lrn(3, 1.0, 1.0, 1.0, false), &x, &ones);
    assert_close(&y, &[1. / 6., 2. / 15., 3. / 14.]);
    // PyTorch and Caffe: y = x / (1 + sum / 3).
    let (y, _) = run(lrn(3, 1.0, 1.0, 1.0, true), &x, &ones);
    assert_close(&y, &[3. / 8., 6. / 17., 9. / 16.]);
}

#[test]
fn backward_by_hand_in_both_conventions() {
    // Two channels, size 2 (windows {0} and {0, 1}), beta 1, k 1, at x = [1, 2] with the output
    // gradient [1, 1]. With a = 1: y0 = x0 / (1 + x0^2), y1 = x1 / (1 + x0^2 + x1^2), so
    //   dy0/dx0 = (1 - x0^2) / (1 + x0^2)^2 = 0,      dy0/dx1 = 0,
    //   dy1/dx0 = -2 x0 x1 / s^2 = -4 / 36,           dy1/dx1 = (s - 2 x1^2) / s^2 = -2 / 36
    // with s = 6. a = 1 is alpha 1 in the paper's convention and alpha 2 in PyTorch's.
    let x = column(&[1., 2.]);
    let gy = column(&[1., 1.]);
    for op in [lrn(2, 1.0, 1.0, 1.0, false), lrn(2, 2.0, 1.0, 1.0, true)] {
        let (y, gx) = run(op, &x, &gy);
        assert_close(&y, &[0.5, 1. / 3.]);
        assert_close(&gx, &[-1. / 9., -1. / 18.]);
    }
    // And the conventions differ for the same alpha: a = 1/2 in PyTorch's, s = 1 + 5/2.
    let (y, _) = run(lrn(2, 1.0, 1.0, 1.0, true), &x, &gy);
    assert_close(&y, &[1. / 1.5, 2. / 3.5]);
}

#[test]
fn paper_alpha_is_pytorch_alpha_times_size() {
    let mut rng = cnnc_interp::Rng::new(7);
    let x = random_buf(&mut rng, &[2, 7, 3, 2], -2.0, 2.0);
    let gy = random_buf(&mut rng, &[2, 7, 3, 2], -1.0, 1.0);
    for size in [1, 2, 3, 5, 9] {
        let (y_paper, g_paper) = run(lrn(size, 0.3, 0.75, 2.0, false), &x, &gy);
        let (y_torch, g_torch) = run(lrn(size, 0.3 * size as f64, 0.75, 2.0, true), &x, &gy);
        for (a, b) in y_paper.data.iter().zip(&y_torch.data).chain(g_paper.data.iter().zip(&g_torch.data)) {
            assert!((a - b).abs() <= 1e-12 * (1.0 + b.abs()), "size {size}: {a} vs {b}");
        }
    }
}

#[test]
fn finite_differences_in_both_conventions() {
    for (i, size) in [1, 2, 3, 4, 5].into_iter().enumerate() {
        for (j, alpha_over_size) in [true, false].into_iter().enumerate() {
            let op = lrn(size, 0.3, 0.75, 1.5, alpha_over_size);
            check_op(op, &[7, 3, 2], 2, INFER, 300 + 10 * i as u64 + j as u64);
        }
    }
    // A window wider than the channels, beta != 0.75, and the paper's own constants.
    check_op(lrn(5, 1e-2, 0.5, 1.0, false), &[3, 2, 3], 2, INFER, 360);
    check_op(lrn(5, 1e-4, 0.75, 2.0, false), &[6, 2, 2], 2, INFER, 361);
}
