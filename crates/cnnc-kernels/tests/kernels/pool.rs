//! Pooling (max with argmax, average with both padding rules, L2; sliding, adaptive, global),
//! forward and backward, both layouts, against the interpreter.

use super::oracle;
use super::util::{Arena, Rng, close, cpus, from_blocked, par, to_blocked};
use cnnc_ir::{Op, PoolKind as IrKind, Window};
use cnnc_kernels::pool::{self, PoolKind, PoolPlan, PoolWindow};
use cnnc_kernels::pool_bwd::{self, PoolBwdIo};
use cnnc_kernels::view::Layout;
use proptest::prelude::*;

#[derive(Clone, Copy, Debug)]
struct PoolCase {
    n: usize,
    c: usize,
    h: usize,
    w: usize,
    kind: usize,
    /// 0: sliding, 1: adaptive, 2: global.
    bins: usize,
    k: [usize; 2],
    s: [usize; 2],
    p: [usize; 2],
    d: usize,
    ceil: bool,
    out: [usize; 2],
}

fn case() -> impl Strategy<Value = PoolCase> {
    (
        (1usize..=3, 1usize..=40, 1usize..=30, 1usize..=30, 0usize..4, 0usize..3),
        (1usize..=4, 1usize..=4, 1usize..=3, 1usize..=3, 0usize..=2, 1usize..=2, any::<bool>(), 1usize..=5, 1usize..=5),
    )
        .prop_map(|((n, c, h, w, kind, bins), (kh, kw, sh, sw, p, d, ceil, oh, ow))| {
            let ext = |k: usize| d * (k - 1) + 1;
            let (h, w) = (h.max(ext(kh)), w.max(ext(kw)));
            // PyTorch's pooling rule: padding at most half the kernel.
            let p = [p.min(kh / 2), p.min(kw / 2)];
            PoolCase { n, c, h, w, kind, bins, k: [kh, kw], s: [sh, sw], p, d, ceil, out: [oh.min(h), ow.min(w)] }
        })
}

fn kinds(k: usize) -> (PoolKind, IrKind) {
    [
        (PoolKind::Max, IrKind::Max),
        (PoolKind::Avg, IrKind::Avg { include_pad: true }),
        (PoolKind::AvgExcludePad, IrKind::Avg { include_pad: false }),
        (PoolKind::L2, IrKind::L2),
    ][k]
}

fn check_pool(t: PoolCase, layout: Layout, accumulate: bool, seed: u64) -> Result<(), String> {
    let (kind, ir) = kinds(t.kind);
    let (win, op) = match t.bins {
        0 => {
            let window = Window { kernel: t.k, stride: t.s, pad: t.p, dilation: [t.d; 2], ceil_mode: t.ceil };
            let pw = PoolWindow {
                kernel: t.k,
                stride: t.s,
                pad: t.p,
                dilation: [t.d; 2],
                ceil_mode: t.ceil,
                adaptive: false,
            };
            (pw, Op::Pool { kind: ir, window })
        }
        1 => (PoolWindow::adaptive(t.out[0], t.out[1]), Op::AdaptivePool { kind: ir, output: t.out }),
        _ => (PoolWindow::adaptive(1, 1), Op::GlobalPool(ir)),
    };
    let mut rng = Rng::new(seed);
    let x = rng.vec(t.n * t.c * t.h * t.w);
    let cpu0 = cpus()[0];
    let probe = PoolPlan::new(t.n, t.c, [t.h, t.w], kind, win, layout, cpu0).map_err(|e| e.to_string())?;
    let [oh, ow] = probe.out_hw();
    let gy = rng.vec(t.n * t.c * oh * ow);
    let (want, dx_want, _) = oracle::unary(op, &[t.c, t.h, t.w], t.n, &x, &[], Some(&gy), false);
    let dx0 = rng.vec(x.len());
    let mut dx_want = dx_want.unwrap();
    if accumulate {
        dx_want.iter_mut().zip(&dx0).for_each(|(a, b)| *a += b);
    }
    let blocked = layout == Layout::NChw16c;
    let conv = |v: &[f32], hw: usize| if blocked { to_blocked(v, t.n, t.c, hw, 0.25) } else { v.to_vec() };
    let back = |v: &[f32], hw: usize| if blocked { from_blocked(v, t.n, t.c, hw) } else { v.to_vec() };
    let (xb, gyb) = (conv(&x, t.h * t.w), conv(&gy, oh * ow));
    for cpu in cpus() {
        let par = par(seed);
        let what = format!("{:?} {t:?} {layout:?}", cpu.isa());
        let plan = PoolPlan::new(t.n, t.c, [t.h, t.w], kind, win, layout, cpu).map_err(|e| e.to_string())?;
        let y0 = vec![f32::NAN; gyb.len()];
        let dxi = if accumulate { conv(&dx0, t.h * t.w) } else { vec![f32::NAN; xb.len()] };
        let mut arena = Arena::new(&[&xb, &y0, &y0, &gyb, &dxi]);
        let v = |a: &Arena, i: usize, hw: [usize; 2]| a.view(i, t.n, t.c, hw[0], hw[1], layout);
        let (xv, yv, mv, gv, dv) = (
            v(&arena, 0, [t.h, t.w]),
            v(&arena, 1, [oh, ow]),
            v(&arena, 2, [oh, ow]),
            v(&arena, 3, [oh, ow]),
            v(&arena, 4, [t.h, t.w]),
        );
        let max = kind == PoolKind::Max;
        pool::forward(par, &plan, arena.buf.as_mut_slice(), xv, yv, max.then_some(mv)).map_err(|e| e.to_string())?;
        close(&what, &back(arena.part(1), oh * ow), &want, 1e-4)?;
        let io = PoolBwdIo {
            gy: gv,
            dx: dv,
            x: (kind == PoolKind::L2).then_some(xv),
            y: (kind == PoolKind::L2).then_some(yv),
            argmax: max.then_some(mv),
            accumulate,
        };
        pool_bwd::backward(par, &plan, arena.buf.as_mut_slice(), &io).map_err(|e| e.to_string())?;
        close(&format!("dx {what}"), &back(arena.part(4), t.h * t.w), &dx_want, 1e-3)?;
        if !arena.gaps_intact() {
            return Err(format!("{what}: wrote outside its tensors"));
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn pooling_matches_interpreter(t in case(), blocked in any::<bool>(), acc in any::<bool>(), seed in any::<u64>()) {
        let layout = if blocked { Layout::NChw16c } else { Layout::Nchw };
        check_pool(t, layout, acc, seed).map_err(TestCaseError::fail)?;
    }
}

#[test]
fn resnet_maxpool_and_googlenet_ceil_pool() {
    let base = PoolCase {
        n: 1,
        c: 20,
        h: 17,
        w: 17,
        kind: 0,
        bins: 0,
        k: [3, 3],
        s: [2, 2],
        p: [1, 1],
        d: 1,
        ceil: false,
        out: [1, 1],
    };
    for layout in [Layout::NChw16c, Layout::Nchw] {
        check_pool(base, layout, false, 1).unwrap();
        check_pool(PoolCase { p: [0, 0], ceil: true, ..base }, layout, false, 2).unwrap();
        check_pool(PoolCase { kind: 1, bins: 2, ..base }, layout, true, 3).unwrap();
    }
}

/// Max and average pooling whose windows tile the map (stride = kernel): the backward pass
/// writes each pixel once instead of scattering; odd sizes leave pixels in no window, ceil
/// mode clips (an average over the clipped window's taps).
#[test]
fn disjoint_windows() {
    let base = PoolCase {
        n: 2,
        c: 35,
        h: 16,
        w: 16,
        kind: 0,
        bins: 0,
        k: [2, 2],
        s: [2, 2],
        p: [0, 0],
        d: 1,
        ceil: false,
        out: [1, 1],
    };
    for layout in [Layout::NChw16c, Layout::Nchw] {
        for (k, (h, w), ceil) in [(2, (16, 16), false), (2, (17, 15), false), (3, (11, 10), true), (3, (9, 7), false)] {
            for (kind, accumulate) in [(0, false), (0, true), (1, false), (1, true), (2, false)] {
                let t = PoolCase { kind, k: [k, k], s: [k, k], h, w, ceil, ..base };
                check_pool(t, layout, accumulate, (h * 31 + w + k + kind) as u64).unwrap();
            }
        }
    }
}

#[test]
fn forged_argmax_is_rejected() {
    let cpu = cpus()[0];
    let plan =
        PoolPlan::new(1, 16, [4, 4], PoolKind::Max, PoolWindow::sliding(2, 2, 0, false), Layout::NChw16c, cpu).unwrap();
    let v = |off| cnnc_kernels::view::View::dense(off, 1, 16, 2, 2, Layout::NChw16c);
    let mut arena = vec![0.0f32; 64 + 64 + 256];
    arena[10] = 99.0; // not an index into a 4 x 4 plane
    let io = PoolBwdIo {
        gy: v(64),
        dx: cnnc_kernels::view::View::dense(128, 1, 16, 4, 4, Layout::NChw16c),
        x: None,
        y: None,
        argmax: Some(v(0)),
        accumulate: false,
    };
    let e = pool_bwd::backward(&cnnc_kernels::par::Serial, &plan, &mut arena, &io).unwrap_err();
    assert!(e.to_string().contains("argmax"), "{e}");
}
