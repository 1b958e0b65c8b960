//! Fully connected layers, forward (with bias and activation) and backward, against the
//! interpreter.

use super::conv::activations;
use super::oracle;
use super::util::{Rng, close, cpus, guarded, par};
use cnnc_kernels::act::Act;
use cnnc_kernels::fc::{self, FcPlan};
use proptest::prelude::*;

/// Rows of `len` floats `stride` apart, NaN in the gaps (a read of a gap shows).
fn spread(v: &[f32], len: usize, stride: usize) -> Vec<f32> {
    let rows = v.len() / len;
    let mut out = vec![f32::NAN; (rows.max(1) - 1) * stride + len];
    for (r, row) in v.chunks(len).enumerate() {
        out[r * stride..][..len].copy_from_slice(row);
    }
    out
}

/// The rows of a spread buffer, and whether every gap still holds NaN (nothing wrote there).
fn gather(v: &[f32], len: usize, stride: usize) -> (Vec<f32>, bool) {
    let rows = (v.len() - len) / stride + 1;
    let data = (0..rows).flat_map(|r| v[r * stride..][..len].to_vec()).collect();
    let gaps = (0..rows).all(|r| v[r * stride + len..v.len().min((r + 1) * stride)].iter().all(|g| g.is_nan()));
    (data, gaps)
}

fn check_fc(n: usize, i: usize, o: usize, act: Option<usize>, accumulate: bool, seed: u64) -> Result<(), String> {
    check_fc_strided(n, i, o, act, accumulate, seed, [0, 0])
}

/// `check_fc` with samples `i + gaps[0]` floats apart in `x` and `dx`, `o + gaps[1]` in `y`
/// and `gy`.
fn check_fc_strided(
    n: usize,
    i: usize,
    o: usize,
    act: Option<usize>,
    accumulate: bool,
    seed: u64,
    gaps: [usize; 2],
) -> Result<(), String> {
    let (xs, ys) = (i + gaps[0], o + gaps[1]);
    let mut rng = Rng::new(seed);
    let (x, w, b, gy) = (rng.vec(n * i), rng.vec(o * i), rng.vec(o), rng.vec(n * o));
    let acts = activations();
    let want = oracle::fc_forward(n, i, o, &x, &w, &b, act.map(|a| acts[a].1));
    let (mut dx_want, mut dw_want, mut db_want) = oracle::fc_backward(n, i, o, &x, &w, &gy);
    let (dx0, dw0, db0) = (rng.vec(n * i), rng.vec(o * i), rng.vec(o));
    if accumulate {
        for (want, init) in [(&mut dx_want, &dx0), (&mut dw_want, &dw0), (&mut db_want, &db0)] {
            want.iter_mut().zip(init).for_each(|(a, b)| *a += b);
        }
    }
    let (xg, wg, bg, gyg) = (guarded(&spread(&x, i, xs)), guarded(&w), guarded(&b), guarded(&spread(&gy, o, ys)));
    for cpu in cpus() {
        let par = par(seed);
        let what = format!("{:?} fc n {n} i {i} o {o} act {act:?} acc {accumulate}", cpu.isa());
        let plan = FcPlan::new(n, i, o, true, act.map_or(Act::NONE, |a| acts[a].0), cpu, par.threads())
            .and_then(|p| p.with_strides(xs, ys))
            .map_err(|e| e.to_string())?;
        let mut y = guarded(&vec![f32::NAN; plan.y_span()]);
        fc::forward(par, &plan, xg.as_slice(), wg.as_slice(), Some(bg.as_slice()), y.as_mut_slice())
            .map_err(|e| e.to_string())?;
        let (y, untouched) = gather(y.as_slice(), o, ys);
        close(&what, &y, &want, 1e-4)?;
        let init = |v: &[f32]| guarded(&if accumulate { v.to_vec() } else { vec![f32::NAN; v.len()] });
        let (mut dx, mut dw, mut db) = (guarded(&spread(init(&dx0).as_slice(), i, xs)), init(&dw0), init(&db0));
        let mut scratch = guarded(&vec![0.0; plan.backward_scratch_len()]);
        fc::backward(
            par,
            &plan,
            xg.as_slice(),
            wg.as_slice(),
            gyg.as_slice(),
            Some(dx.as_mut_slice()),
            dw.as_mut_slice(),
            Some(db.as_mut_slice()),
            accumulate,
            scratch.as_mut_slice(),
        )
        .map_err(|e| e.to_string())?;
        let (dx, dx_untouched) = gather(dx.as_slice(), i, xs);
        if !untouched || !dx_untouched {
            return Err(format!("{what}: a gap between samples was written"));
        }
        close(&format!("dx {what}"), &dx, &dx_want, 1e-3)?;
        close(&format!("dw {what}"), dw.as_slice(), &dw_want, 1e-3)?;
        close(&format!("db {what}"), db.as_slice(), &db_want, 1e-3)?;
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn fc_matches_interpreter(n in 1usize..=5, i in 1usize..=300, o in 1usize..=40, act in proptest::option::of(0usize..9), acc in any::<bool>(), seed in any::<u64>()) {
        check_fc(n, i, o, act, acc, seed).map_err(TestCaseError::fail)?;
    }
}

/// Samples apart by more than their length, as in the JIT's arena (images rounded up to 64
/// bytes): the kernels read and write only the samples.
#[test]
fn fc_on_spaced_samples() {
    for (k, (n, i, o, gaps)) in
        [(64, 4096, 10, [0, 6]), (64, 120, 84, [8, 12]), (5, 300, 33, [3, 1]), (1, 40, 10, [5, 6])]
            .into_iter()
            .enumerate()
    {
        check_fc_strided(n, i, o, Some(0), k % 2 == 1, 40 + k as u64, gaps).unwrap();
    }
}

#[test]
fn fc_of_lenet_and_wide_layers() {
    for (k, (n, i, o)) in
        [(1, 400, 120), (64, 120, 84), (3, 84, 10), (1, 2048, 67), (2, 1100, 70), (7, 700, 37)].into_iter().enumerate()
    {
        check_fc(n, i, o, Some(0), k % 2 == 1, k as u64).unwrap();
    }
}

/// Outputs enough for tasks of many rows: the forward tile's rows lie a quarter of the task
/// apart, and a task's last rows (its count not a multiple of 4) run one at a time.
#[test]
fn fc_of_many_rows() {
    for (k, (n, i, o)) in [(1, 100, 1003), (5, 37, 517), (2, 16, 4099), (1, 33, 262)].into_iter().enumerate() {
        check_fc(n, i, o, Some(0), k % 2 == 0, 60 + k as u64).unwrap();
    }
}
