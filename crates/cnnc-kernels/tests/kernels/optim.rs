//! Optimiser updates against PyTorch's formulas (`torch.optim.SGD`, `Adam`, `RMSprop`) written
//! out in f64, over several steps (the interpreter has no optimiser).

use super::util::{Rng, close, cpus, guarded, par};
use cnnc_kernels::optim::{self, Adam, LiveTapGrad, RmsProp, Sgd, UpdateArgs, UpdateKind, UpdatePlan};
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

/// Every kind of [`UpdatePlan`] the JIT runs, with the settings each flag selects.
fn plans(len: usize, cpu: cnnc_kernels::simd::Cpu) -> Vec<(&'static str, UpdatePlan)> {
    let kinds = [
        ("sgd", UpdateKind::Sgd { momentum: 0.9, weight_decay: 0.0, nesterov: false }),
        ("sgd plain", UpdateKind::Sgd { momentum: 0.0, weight_decay: 0.0, nesterov: false }),
        ("sgd wd", UpdateKind::Sgd { momentum: 0.9, weight_decay: 1e-2, nesterov: false }),
        ("sgd nesterov", UpdateKind::Sgd { momentum: 0.8, weight_decay: 1e-3, nesterov: true }),
        ("adam", UpdateKind::Adam { beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.0 }),
        ("rmsprop", UpdateKind::RmsProp { alpha: 0.99, eps: 1e-8, weight_decay: 1e-4, momentum: 0.5, centered: true }),
        (
            "rmsprop plain",
            UpdateKind::RmsProp { alpha: 0.9, eps: 1e-6, weight_decay: 0.0, momentum: 0.0, centered: false },
        ),
    ];
    kinds.into_iter().map(|(n, k)| (n, UpdatePlan::new(k, len, cpu).unwrap())).collect()
}

/// `update_all` (the JIT's separate pass) against the per-optimiser functions and, for
/// Nesterov (which only the plans have), PyTorch's formula in f64.
#[test]
fn update_plans_match_the_optimisers() {
    let len = 20_000;
    let mut rng = Rng::new(3);
    let p0 = rng.vec(len);
    let grads: Vec<Vec<f32>> = (0..3).map(|_| rng.vec(len)).collect();
    for cpu in cpus() {
        let par = par(1);
        let plan =
            UpdatePlan::new(UpdateKind::Sgd { momentum: 0.9, weight_decay: 1e-3, nesterov: false }, len, cpu).unwrap();
        let sgd = Sgd { lr: 0.05, momentum: 0.9, weight_decay: 1e-3 };
        let (mut a, mut b, mut ba, mut bb) = (p0.clone(), p0.clone(), vec![0.0; len], vec![0.0; len]);
        let nplan =
            UpdatePlan::new(UpdateKind::Sgd { momentum: 0.8, weight_decay: 1e-3, nesterov: true }, len, cpu).unwrap();
        let (mut n, mut nb) = (p0.clone(), vec![0.0; len]);
        let (mut rn, mut rnb) = (p0.iter().map(|&v| f64::from(v)).collect::<Vec<_>>(), vec![0.0f64; len]);
        for (t, g) in grads.iter().enumerate() {
            optim::update_all(par, &plan, (0.05, t as u64 + 1), &mut a, g, [&mut ba, &mut [], &mut []]).unwrap();
            optim::sgd(par, cpu, &sgd, t == 0, &mut b, g, &mut bb).unwrap();
            assert_eq!(a, b, "{:?} step {t}: the plan and `sgd` differ", cpu.isa());
            optim::update_all(par, &nplan, (0.05, t as u64 + 1), &mut n, g, [&mut nb, &mut [], &mut []]).unwrap();
            for i in 0..len {
                let gi = f64::from(g[i]) + 1e-3f32 as f64 * rn[i];
                rnb[i] = if t == 0 { gi } else { 0.8f32 as f64 * rnb[i] + gi };
                rn[i] -= 0.05f32 as f64 * (gi + 0.8f32 as f64 * rnb[i]);
            }
            let want: Vec<f32> = rn.iter().map(|&v| v as f32).collect();
            close(&format!("nesterov {:?} step {t}", cpu.isa()), &n, &want, 1e-5).unwrap();
        }
    }
}

/// A null gradient is a zero gradient exactly: the blocks a zero gradient leaves unchanged
/// (zero state, finite weights, no weight decay) are skipped, every other block computed, and
/// both give the bits an explicit zero gradient gives, whatever the state and weights hold
/// (zeros, values, -0.0, infinities).
#[test]
fn a_null_gradient_is_a_zero_gradient() {
    let len = 9000;
    let mut rng = Rng::new(9);
    let mut p0 = rng.vec(len);
    p0[100] = f32::INFINITY;
    p0[5000] = f32::NAN;
    for cpu in cpus() {
        for (name, plan) in plans(len, cpu) {
            let used = plan.states();
            // State: zero in the first third, values in the second, -0.0 in the last.
            let state = |k: usize| -> Vec<f32> {
                let mut r = Rng::new(20 + k as u64);
                (0..len)
                    .map(|i| {
                        if i < 3000 {
                            0.0
                        } else if i < 6000 {
                            r.next().abs() * 1e-2
                        } else {
                            -0.0
                        }
                    })
                    .collect()
            };
            let run = |g: Option<&[f32]>| {
                let mut p = p0.clone();
                let mut s: Vec<Vec<f32>> = (0..3).map(|k| if used[k] { state(k) } else { Vec::new() }).collect();
                let ptr = |v: &mut Vec<f32>| if v.is_empty() { std::ptr::null_mut() } else { v.as_mut_ptr() };
                let a = UpdateArgs { p: p.as_mut_ptr(), s1: ptr(&mut s[0]), s2: ptr(&mut s[1]), s3: ptr(&mut s[2]) };
                let rule = plan.rule(0.1, 3);
                // SAFETY: every pointer the plan uses holds `len` floats; `g` too when given.
                unsafe { optim::update_at(&rule, &a, 0, g.map_or(std::ptr::null(), |g| g.as_ptr()), len) };
                (p, s)
            };
            let zeros = vec![0.0f32; len];
            let (pz, sz) = run(Some(&zeros));
            let (pn, sn) = run(None);
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert!(bits(&pn) == bits(&pz), "{name} {:?}: parameters differ", cpu.isa());
            for k in 0..3 {
                assert!(bits(&sn[k]) == bits(&sz[k]), "{name} {:?}: state {k} differs", cpu.isa());
            }
        }
    }
}

/// The update of a packed `OIhw16i16o` weight from its live-tap matrix equals the dense
/// update from the whole gradient (the live taps' rows in place, zero elsewhere), bit for bit.
#[test]
fn live_tap_updates_match_dense_ones() {
    let (o, c, taps) = (32usize, 48usize, 9usize);
    let len = o * c * taps;
    // Taps 4 and 7 meet the input (row groups 0 and 1).
    let live: Vec<i32> = (0..taps).map(|t| [4, 7].iter().position(|&l| l == t).map_or(-1, |j| j as i32)).collect();
    let mut rng = Rng::new(12);
    let io = rng.vec(2 * c * o);
    let p0 = rng.vec(len);
    let mut dense_g = vec![0.0f32; len];
    for ob in 0..o / 16 {
        for ib in 0..c / 16 {
            for (t, &j) in live.iter().enumerate() {
                if j < 0 {
                    continue;
                }
                for ii in 0..16 {
                    for oo in 0..16 {
                        let at = (((ob * (c / 16) + ib) * taps + t) * 16 + ii) * 16 + oo;
                        dense_g[at] = io[(j as usize * c + ib * 16 + ii) * o + ob * 16 + oo];
                    }
                }
            }
        }
    }
    for cpu in cpus() {
        for (name, plan) in plans(len, cpu) {
            let used = plan.states();
            let init: Vec<Vec<f32>> = (0..3)
                .map(|k| {
                    if used[k] {
                        Rng::new(30 + k as u64).vec(len).iter().map(|v| v.abs()).collect()
                    } else {
                        Vec::new()
                    }
                })
                .collect();
            let ptr = |v: &mut Vec<f32>| if v.is_empty() { std::ptr::null_mut() } else { v.as_mut_ptr() };
            let (mut pd, mut sd, mut pl, mut sl) = (p0.clone(), init.clone(), p0.clone(), init.clone());
            for step in 1..=2 {
                let rule = plan.rule(0.05, step);
                let a =
                    UpdateArgs { p: pd.as_mut_ptr(), s1: ptr(&mut sd[0]), s2: ptr(&mut sd[1]), s3: ptr(&mut sd[2]) };
                // SAFETY: every pointer the plan uses holds `len` floats, the gradient too.
                unsafe { optim::update_at(&rule, &a, 0, dense_g.as_ptr(), len) };
                let a =
                    UpdateArgs { p: pl.as_mut_ptr(), s1: ptr(&mut sl[0]), s2: ptr(&mut sl[1]), s3: ptr(&mut sl[2]) };
                let g = LiveTapGrad { io: io.as_ptr(), live: live.as_ptr(), o, c, taps };
                for task in 0..optim::live_taps_tasks(&g) {
                    // SAFETY: the weight and state hold o c taps floats, io 2 c o, the table taps.
                    unsafe { optim::update_live_taps_task(&rule, &a, &g, task) };
                }
                // Bits, not values: a centred RMSprop on random state takes square roots of
                // negative variances here, and both paths must give the same NaNs too.
                let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                assert!(bits(&pl) == bits(&pd), "{name} {:?} step {step}: parameters differ", cpu.isa());
                for k in 0..3 {
                    assert!(bits(&sl[k]) == bits(&sd[k]), "{name} {:?} step {step}: state {k} differs", cpu.isa());
                }
            }
        }
    }
}
