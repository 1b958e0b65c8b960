//! Elementwise kernels against the interpreter: every activation forward and backward (from
//! the input, and from the output where that is enough), add, PReLU, copy; in place and apart,
//! both layouts.

use super::conv::activations;
use super::oracle;
use super::util::{Arena, Rng, close, cpus, from_blocked, par, to_blocked};
use cnnc_ir::Op;
use cnnc_kernels::eltwise;
use cnnc_kernels::view::Layout;
use proptest::prelude::*;

#[derive(Clone, Copy, Debug)]
struct Case {
    n: usize,
    c: usize,
    h: usize,
    w: usize,
    blocked: bool,
    in_place: bool,
}

fn case() -> impl Strategy<Value = Case> {
    (1usize..=3, 1usize..=40, 1usize..=12, 1usize..=12, any::<bool>(), any::<bool>())
        .prop_map(|(n, c, h, w, blocked, in_place)| Case { n, c, h, w, blocked, in_place })
}

impl Case {
    fn layout(&self) -> Layout {
        if self.blocked { Layout::NChw16c } else { Layout::Nchw }
    }
    fn to(&self, v: &[f32]) -> Vec<f32> {
        if self.blocked { to_blocked(v, self.n, self.c, self.h * self.w, 0.5) } else { v.to_vec() }
    }
    fn from(&self, v: &[f32]) -> Vec<f32> {
        if self.blocked { from_blocked(v, self.n, self.c, self.h * self.w) } else { v.to_vec() }
    }
}

fn check_activations(t: Case, seed: u64) -> Result<(), String> {
    let mut rng = Rng::new(seed);
    let len = t.n * t.c * t.h * t.w;
    let x: Vec<f32> = rng.vec(len).iter().map(|v| 6.0 * v).collect();
    let gy = rng.vec(len);
    let dims = [t.c, t.h, t.w];
    for (act, ir) in activations() {
        let (want, dx_want, _) = oracle::unary(Op::Activation(ir), &dims, t.n, &x, &[], Some(&gy), false);
        let dx_want = dx_want.unwrap();
        for cpu in cpus() {
            let par = par(seed);
            let what = format!("{:?} {act:?} {t:?}", cpu.isa());
            let (xb, gyb) = (t.to(&x), t.to(&gy));
            let mut arena = Arena::new(&[&xb, &gyb, &vec![f32::NAN; xb.len()]]);
            let v = |a: &Arena, i| a.view(i, t.n, t.c, t.h, t.w, t.layout());
            let (xv, gv) = (v(&arena, 0), v(&arena, 1));
            let yv = if t.in_place { xv } else { v(&arena, 2) };
            // Backward from the input first (forward may overwrite it in place).
            let dv = if t.in_place { gv } else { v(&arena, 2) };
            eltwise::activation_backward(par, cpu, arena.buf.as_mut_slice(), act, false, xv, gv, dv)
                .map_err(|e| e.to_string())?;
            close(&format!("dx {what}"), &t.from(arena.part(if t.in_place { 1 } else { 2 })), &dx_want, 1e-3)?;
            eltwise::activation(par, cpu, arena.buf.as_mut_slice(), act, xv, yv).map_err(|e| e.to_string())?;
            let yi = if t.in_place { 0 } else { 2 };
            close(&what, &t.from(arena.part(yi)), &want, 1e-4)?;
            if act.grad_from_output() {
                // dx from the output y, written over gy's copy.
                let mut arena2 = Arena::new(&[&t.to(&want), &gyb]);
                let (yv2, gv2) = (v(&arena2, 0), v(&arena2, 1));
                eltwise::activation_backward(par, cpu, arena2.buf.as_mut_slice(), act, true, yv2, gv2, gv2)
                    .map_err(|e| e.to_string())?;
                close(&format!("dx from y {what}"), &t.from(arena2.part(1)), &dx_want, 1e-3)?;
            }
            if !arena.gaps_intact() {
                return Err(format!("{what}: wrote outside its tensors"));
            }
        }
    }
    Ok(())
}

fn check_add_prelu_copy(t: Case, seed: u64) -> Result<(), String> {
    let mut rng = Rng::new(seed);
    let len = t.n * t.c * t.h * t.w;
    let (a, b, gy, slope) = (rng.vec(len), rng.vec(len), rng.vec(len), rng.vec(t.c));
    let dims = [t.c, t.h, t.w];
    let sum = oracle::add2(&dims, t.n, &a, &b);
    let (pr, pdx, pgrads) = oracle::unary(Op::Prelu, &dims, t.n, &a, &[("weight", &[t.c], &slope)], Some(&gy), false);
    for cpu in cpus() {
        let par = par(seed);
        let what = format!("{:?} {t:?}", cpu.isa());
        let (ab, bb, gb) = (t.to(&a), t.to(&b), t.to(&gy));
        let mut arena = Arena::new(&[&ab, &bb, &gb, &vec![f32::NAN; ab.len()]]);
        let v = |a: &Arena, i| a.view(i, t.n, t.c, t.h, t.w, t.layout());
        let (av, bv, gv, ov) = (v(&arena, 0), v(&arena, 1), v(&arena, 2), v(&arena, 3));
        // PReLU backward first (dx over gy in place), then forward (over a in place) on a copy.
        let mut ds = vec![0.0; t.c];
        let dv = if t.in_place { gv } else { ov };
        eltwise::prelu_backward(arena.buf.as_mut_slice(), &slope, av, gv, dv, &mut ds).map_err(|e| e.to_string())?;
        close(
            &format!("prelu dx {what}"),
            &t.from(arena.part(if t.in_place { 2 } else { 3 })),
            pdx.as_ref().unwrap(),
            1e-3,
        )?;
        close(&format!("prelu dslope {what}"), &ds, &pgrads["op.weight"].data, 1e-3)?;
        let mut pa = Arena::new(&[&ab, &vec![f32::NAN; ab.len()]]);
        let (pav, pyv) = (v(&pa, 0), if t.in_place { v(&pa, 0) } else { v(&pa, 1) });
        eltwise::prelu(par, pa.buf.as_mut_slice(), &slope, pav, pyv).map_err(|e| e.to_string())?;
        close(&format!("prelu {what}"), &t.from(pa.part(if t.in_place { 0 } else { 1 })), &pr, 1e-4)?;
        // Add, into a (in place) or a fresh tensor.
        let sv = if t.in_place { av } else { ov };
        eltwise::add(par, cpu, arena.buf.as_mut_slice(), av, bv, sv).map_err(|e| e.to_string())?;
        close(&format!("add {what}"), &t.from(arena.part(if t.in_place { 0 } else { 3 })), &sum, 1e-6)?;
        eltwise::copy(par, arena.buf.as_mut_slice(), bv, ov).map_err(|e| e.to_string())?;
        close(&format!("copy {what}"), &t.from(arena.part(3)), &b, 0.0)?;
        if !arena.gaps_intact() {
            return Err(format!("{what}: wrote outside its tensors"));
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]

    #[test]
    fn activations_match_interpreter(t in case(), seed in any::<u64>()) {
        check_activations(t, seed).map_err(TestCaseError::fail)?;
    }

    #[test]
    fn add_prelu_copy_match_interpreter(t in case(), seed in any::<u64>()) {
        check_add_prelu_copy(t, seed).map_err(TestCaseError::fail)?;
    }
}

#[test]
fn partial_overlap_is_rejected() {
    let v = |off| cnnc_kernels::view::View::dense(off, 1, 4, 2, 2, Layout::Nchw);
    let mut arena = vec![0.0f32; 40];
    let e = eltwise::add(&cnnc_kernels::par::Serial, cpus()[0], &mut arena, v(0), v(16), v(8)).unwrap_err();
    assert!(e.to_string().contains("overlap"), "{e}");
}
