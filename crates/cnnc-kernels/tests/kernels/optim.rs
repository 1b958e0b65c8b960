//! Optimiser updates against PyTorch's formulas (`torch.optim.SGD`, `Adam`, `RMSprop`) written
//! out in f64, over several steps (the interpreter has no optimiser).

use super::util::{Rng, close, cpus, guarded, par};
use cnnc_kernels::optim::{self, Adam, RmsProp, Sgd};
use proptest::prelude::*;

fn check_optimisers(len: usize, wd: f32, momentum: f32, centered: bool, seed: u64) -> Result<(), String> {
    let mut rng = Rng::new(seed);
    let p0 = rng.vec(len);
    let grads: Vec<Vec<f32>> = (0..4).map(|_| rng.vec(len)).collect();
    let sgd = Sgd { lr: 0.05, momentum, weight_decay: wd };
    let adam = Adam { lr: 1e-2, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: wd };
    let rms = RmsProp { lr: 1e-2, alpha: 0.99, eps: 1e-8, weight_decay: wd, momentum, centered };
    // References in f64.
    let (mut rs, mut rbuf) = (p0.iter().map(|&v| v as f64).collect::<Vec<_>>(), vec![0.0f64; len]);
    let (mut ra, mut rm, mut rv) = (rs.clone(), vec![0.0f64; len], vec![0.0f64; len]);
    let (mut rr, mut rsq, mut rb, mut rga) = (rs.clone(), vec![0.0f64; len], vec![0.0f64; len], vec![0.0f64; len]);
    let mut want = Vec::new();
    for (t, g) in grads.iter().enumerate() {
        for i in 0..len {
            let gi = g[i] as f64 + wd as f64 * rs[i];
            rbuf[i] = if t == 0 { gi } else { momentum as f64 * rbuf[i] + gi };
            rs[i] -= 0.05f32 as f64 * if momentum == 0.0 { gi } else { rbuf[i] };
            let gi = g[i] as f64 + wd as f64 * ra[i];
            rm[i] = 0.9f32 as f64 * rm[i] + (1.0 - 0.9f32 as f64) * gi;
            rv[i] = 0.999f32 as f64 * rv[i] + (1.0 - 0.999f32 as f64) * gi * gi;
            let (bc1, bc2) = (1.0 - (0.9f32 as f64).powi(t as i32 + 1), 1.0 - (0.999f32 as f64).powi(t as i32 + 1));
            ra[i] -= 1e-2f32 as f64 / bc1 * rm[i] / (rv[i].sqrt() / bc2.sqrt() + 1e-8f32 as f64);
            let gi = g[i] as f64 + wd as f64 * rr[i];
            let a = 0.99f32 as f64;
            rsq[i] = a * rsq[i] + (1.0 - a) * gi * gi;
            let var = if centered {
                rga[i] = a * rga[i] + (1.0 - a) * gi;
                rsq[i] - rga[i] * rga[i]
            } else {
                rsq[i]
            };
            let q = gi / (var.sqrt() + 1e-8f32 as f64);
            rb[i] = momentum as f64 * rb[i] + q;
            rr[i] -= 1e-2f32 as f64 * if momentum > 0.0 { rb[i] } else { q };
        }
        want.push([rs.clone(), ra.clone(), rr.clone()]);
    }
    for cpu in cpus() {
        let par = par(seed);
        let (mut ps, mut pa, mut pr) = (guarded(&p0), guarded(&p0), guarded(&p0));
        let zeros = vec![0.0; len];
        let (mut buf, mut m, mut v, mut sq, mut mb, mut ga) =
            (guarded(&zeros), guarded(&zeros), guarded(&zeros), guarded(&zeros), guarded(&zeros), guarded(&zeros));
        for (t, g) in grads.iter().enumerate() {
            let g = guarded(g);
            let e = |e: cnnc_kernels::error::KernelError| e.to_string();
            optim::sgd(par, cpu, &sgd, t == 0, ps.as_mut_slice(), g.as_slice(), buf.as_mut_slice()).map_err(e)?;
            optim::adam(
                par,
                cpu,
                &adam,
                t as u64 + 1,
                pa.as_mut_slice(),
                g.as_slice(),
                m.as_mut_slice(),
                v.as_mut_slice(),
            )
            .map_err(e)?;
            optim::rmsprop(
                par,
                cpu,
                &rms,
                pr.as_mut_slice(),
                g.as_slice(),
                sq.as_mut_slice(),
                mb.as_mut_slice(),
                ga.as_mut_slice(),
            )
            .map_err(e)?;
            let what = format!("{:?} step {t} len {len} wd {wd} momentum {momentum} centered {centered}", cpu.isa());
            let f = |v: &[f64]| v.iter().map(|&x| x as f32).collect::<Vec<f32>>();
            close(&format!("sgd {what}"), ps.as_slice(), &f(&want[t][0]), 1e-5)?;
            close(&format!("adam {what}"), pa.as_slice(), &f(&want[t][1]), 1e-5)?;
            close(&format!("rmsprop {what}"), pr.as_slice(), &f(&want[t][2]), 1e-5)?;
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]

    #[test]
    fn optimisers_match_pytorch_formulas(len in 1usize..=3000, wd in prop_oneof![Just(0.0f32), Just(1e-4f32)], momentum in prop_oneof![Just(0.0f32), Just(0.9f32)], centered in any::<bool>(), seed in any::<u64>()) {
        check_optimisers(len, wd, momentum, centered, seed).map_err(TestCaseError::fail)?;
    }
}

#[test]
fn optimisers_over_many_chunks() {
    check_optimisers(40_000, 1e-4, 0.9, true, 7).unwrap();
}
