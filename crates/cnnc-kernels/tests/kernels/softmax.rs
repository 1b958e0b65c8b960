//! Softmax (forward, backward, in place) and the fused softmax + cross-entropy against the
//! interpreter.

use super::oracle;
use super::util::{Rng, close, cpus, par};
use cnnc_ir::{Op, Shape};
use cnnc_kernels::softmax::{self, SoftmaxShape};
use proptest::prelude::*;

fn check_softmax(n: usize, c: usize, s: usize, seed: u64) -> Result<(), String> {
    let mut rng = Rng::new(seed);
    let x: Vec<f32> = rng.vec(n * c * s).iter().map(|v| 8.0 * v).collect();
    let gy = rng.vec(x.len());
    let dims: Vec<usize> = if s == 1 { vec![c] } else { vec![c, s, 1] };
    let _ = Shape(dims.clone());
    let (want, dx_want, _) = oracle::unary(Op::Softmax, &dims, n, &x, &[], Some(&gy), false);
    let sh = SoftmaxShape { n, c, s };
    for cpu in cpus() {
        let par = par(seed);
        let what = format!("{:?} softmax {n}x{c}x{s}", cpu.isa());
        let mut y = vec![0.0; x.len()];
        softmax::forward(par, cpu, sh, &x, &mut y).map_err(|e| e.to_string())?;
        close(&what, &y, &want, 1e-4)?;
        let mut z = x.clone();
        softmax::forward_in_place(par, cpu, sh, &mut z).map_err(|e| e.to_string())?;
        close(&format!("in place {what}"), &z, &want, 1e-4)?;
        let mut dx = vec![0.0; x.len()];
        softmax::backward(par, sh, &y, &gy, &mut dx).map_err(|e| e.to_string())?;
        close_dx(&format!("dx {what}"), sh, &y, &gy, &dx, dx_want.as_ref().unwrap())?;
        let mut g = gy.clone();
        softmax::backward_in_place(par, sh, &y, &mut g).map_err(|e| e.to_string())?;
        close_dx(&format!("dx in place {what}"), sh, &y, &gy, &g, dx_want.as_ref().unwrap())?;
    }
    Ok(())
}

/// The backward `dx_i = y_i (g_i - sum_j g_j y_j)` against the interpreter: rtol 1e-3, and
/// beyond it the rounding of the difference in f32, which scales with its operands rather than
/// its result. When one class takes nearly all the mass the difference cancels (every `dx` is
/// near 1e-6 while `g` and the sum are near 1), so a tolerance relative to the outputs alone
/// would demand more digits than f32 holds (a seed found this).
fn close_dx(what: &str, sh: SoftmaxShape, y: &[f32], gy: &[f32], got: &[f32], want: &[f32]) -> Result<(), String> {
    close(what, got, want, 1e-3).or_else(|first| {
        let SoftmaxShape { n, c, s } = sh;
        for ni in 0..n {
            for si in 0..s {
                let at = |ci: usize| (ni * c + ci) * s + si;
                let dot: f32 = (0..c).map(|ci| (gy[at(ci)] * y[at(ci)]).abs()).sum();
                for ci in 0..c {
                    let i = at(ci);
                    let rounding = 16.0 * f32::EPSILON * y[i] * (gy[i].abs() + dot);
                    if (got[i] - want[i]).abs() > 1e-3 * want[i].abs() + rounding {
                        return Err(format!("{first}; beyond f32 rounding of the difference ({rounding})"));
                    }
                }
            }
        }
        Ok(())
    })
}

fn check_ce(n: usize, c: usize, seed: u64) -> Result<(), String> {
    let mut rng = Rng::new(seed);
    let x: Vec<f32> = rng.vec(n * c).iter().map(|v| 10.0 * v).collect();
    let targets: Vec<usize> = (0..n).map(|i| (i * 7 + seed as usize) % c).collect();
    let (loss, grad) = oracle::cross_entropy(n, c, &x, &targets);
    let t32: Vec<u32> = targets.iter().map(|&t| t as u32).collect();
    for cpu in cpus() {
        let mut g = vec![0.0; x.len()];
        let l = softmax::cross_entropy(cpu, n, c, &x, &t32, &mut g).map_err(|e| e.to_string())?;
        close(&format!("{:?} loss n {n} c {c}", cpu.isa()), &[l], &[loss], 1e-4)?;
        close(&format!("{:?} d logits n {n} c {c}", cpu.isa()), &g, &grad, 1e-4)?;
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn softmax_matches_interpreter(n in 1usize..=5, c in 1usize..=40, s in 1usize..=4, seed in any::<u64>()) {
        check_softmax(n, c, s, seed).map_err(TestCaseError::fail)?;
    }

    #[test]
    fn cross_entropy_matches_interpreter(n in 1usize..=64, c in 1usize..=1000, seed in any::<u64>()) {
        check_ce(n, c, seed).map_err(TestCaseError::fail)?;
    }
}

#[test]
fn cross_entropy_rejects_bad_targets() {
    let mut g = vec![0.0; 6];
    let e = softmax::cross_entropy(cpus()[0], 2, 3, &[0.0; 6], &[1, 3], &mut g).unwrap_err();
    assert!(e.to_string().contains("target"), "{e}");
}

/// The seed that found the cancellation: three classes, one holding nearly all the mass.
#[test]
fn backward_of_a_peaked_softmax() {
    check_softmax(1, 3, 1, 650457634252656567).unwrap();
}
