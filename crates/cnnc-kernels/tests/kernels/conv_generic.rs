//! The fallback convolution (any groups, any layouts, oihw weights) forward with the epilogue
//! and both backward passes, against the interpreter.

use super::conv::{EpiCase, Residual, activations, epi_case, shape_of};
use super::oracle::{self, ConvCfg, Post};
use super::util::{Arena, Rng, close, cpus, from_blocked, par, to_blocked};
use cnnc_kernels::act::Act;
use cnnc_kernels::conv::Epilogue;
use cnnc_kernels::conv_generic;
use cnnc_kernels::view::Layout;
use proptest::prelude::*;

fn check_generic(cfg: ConvCfg, e: EpiCase, layouts: [Layout; 2], seed: u64) -> Result<(), String> {
    let mut rng = Rng::new(seed);
    let [oh, ow] = cfg.out_hw();
    let (ihw, ohw) = (cfg.ih * cfg.iw, oh * ow);
    let x = rng.vec(cfg.n * cfg.ic * ihw);
    let w = rng.vec(cfg.oc * cfg.ic / cfg.groups * cfg.k[0] * cfg.k[1]);
    let (bias, scale, shift, res, gy) = (
        rng.vec(cfg.oc),
        rng.vec(cfg.oc),
        rng.vec(cfg.oc),
        rng.vec(cfg.n * cfg.oc * ohw),
        rng.vec(cfg.n * cfg.oc * ohw),
    );
    let acts = activations();
    let post = Post {
        scale_shift: e.scale_shift.then_some((&scale[..], &shift[..])),
        residual: (!matches!(e.residual, Residual::None)).then_some(&res[..]),
        act: e.act.map(|i| acts[i].1),
    };
    let want = oracle::conv_forward(&cfg, &x, &w, e.bias.then_some(&bias[..]), &post);
    let (dx_want, dw_want, db_want) = oracle::conv_backward(&cfg, &x, &w, &gy);
    let epi = Epilogue {
        bias: e.bias,
        scale_shift: e.scale_shift,
        residual: !matches!(e.residual, Residual::None),
        act: e.act.map_or(Act::NONE, |i| acts[i].0),
    };
    let conv = |v: &[f32], c: usize, hw: usize, l: Layout| {
        if l == Layout::NChw16c { to_blocked(v, cfg.n, c, hw, 0.5) } else { v.to_vec() }
    };
    let back = |v: &[f32], c: usize, hw: usize, l: Layout| {
        if l == Layout::NChw16c { from_blocked(v, cfg.n, c, hw) } else { v.to_vec() }
    };
    let [lx, ly] = layouts;
    let s = shape_of(&cfg);
    for cpu in cpus() {
        let par = par(seed);
        let what = format!("{:?} {cfg:?} {e:?} {layouts:?}", cpu.isa());
        let (xb, rb, gb) = (conv(&x, cfg.ic, ihw, lx), conv(&res, cfg.oc, ohw, ly), conv(&gy, cfg.oc, ohw, ly));
        let y0 = if matches!(e.residual, Residual::InPlace) { rb.clone() } else { vec![f32::NAN; rb.len()] };
        let mut arena = Arena::new(&[&xb, &rb, &gb, &vec![f32::NAN; xb.len()], &y0]);
        let xv = arena.view(0, cfg.n, cfg.ic, cfg.ih, cfg.iw, lx);
        let yv = arena.view(4, cfg.n, cfg.oc, oh, ow, ly);
        let rv = match e.residual {
            Residual::None => None,
            Residual::Apart => Some(arena.view(1, cfg.n, cfg.oc, oh, ow, ly)),
            Residual::InPlace => Some(yv),
        };
        let vectors = (e.bias.then_some(&bias[..]), e.scale_shift.then_some((&scale[..], &shift[..])));
        conv_generic::forward(par, cpu, &s, &epi, arena.buf.as_mut_slice(), xv, yv, rv, &w, vectors)
            .map_err(|e| e.to_string())?;
        close(&what, &back(arena.part(4), cfg.oc, ohw, ly), &want, 1e-4)?;
        let (gv, dv) = (arena.view(2, cfg.n, cfg.oc, oh, ow, ly), arena.view(3, cfg.n, cfg.ic, cfg.ih, cfg.iw, lx));
        conv_generic::backward_data(par, &s, arena.buf.as_mut_slice(), gv, dv, &w, false).map_err(|e| e.to_string())?;
        close(&format!("dx {what}"), &back(arena.part(3), cfg.ic, ihw, lx), &dx_want, 1e-3)?;
        let (mut dw, mut db) = (vec![f32::NAN; w.len()], vec![f32::NAN; cfg.oc]);
        conv_generic::backward_weights(par, &s, arena.buf.as_slice(), xv, gv, &mut dw, Some(&mut db), false)
            .map_err(|e| e.to_string())?;
        close(&format!("dw {what}"), &dw, &dw_want, 1e-3)?;
        close(&format!("db {what}"), &db, &db_want, 1e-3)?;
        if !arena.gaps_intact() {
            return Err(format!("{what}: wrote outside its tensors"));
        }
    }
    Ok(())
}

fn grouped_cfg() -> impl Strategy<Value = ConvCfg> {
    (super::conv::conv_cfg(), 1usize..=8).prop_map(|(c, g)| {
        // Any group count dividing both channel counts (ResNeXt-like, depthwise multipliers).
        let (ic, oc) = ((c.ic.min(16) / g).max(1) * g, (c.oc.min(16) / g).max(1) * g);
        ConvCfg { ic, oc, groups: g, n: c.n.min(2), ih: c.ih.min(12), iw: c.iw.min(12), ..c }
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]

    #[test]
    fn generic_conv_matches_interpreter(cfg in grouped_cfg(), e in epi_case(), bx in any::<bool>(), by in any::<bool>(), seed in any::<u64>()) {
        let l = |b| if b { Layout::NChw16c } else { Layout::Nchw };
        prop_assume!(cfg.ih + 2 * cfg.pad[0] > cfg.dilation[0] * (cfg.k[0] - 1));
        prop_assume!(cfg.iw + 2 * cfg.pad[1] > cfg.dilation[1] * (cfg.k[1] - 1));
        check_generic(cfg, e, [l(bx), l(by)], seed).map_err(TestCaseError::fail)?;
    }
}

#[test]
fn lenet_and_resnext_shapes() {
    let c = |ic, hw, oc, k, groups| ConvCfg {
        n: 2,
        ic,
        ih: hw,
        iw: hw,
        oc,
        k: [k, k],
        stride: [1, 1],
        pad: [0, 0],
        dilation: [1, 1],
        groups,
    };
    let e = EpiCase { bias: true, scale_shift: false, residual: Residual::None, act: Some(5) };
    check_generic(c(1, 16, 6, 5, 1), e, [Layout::Nchw, Layout::Nchw], 1).unwrap();
    check_generic(c(32, 7, 32, 3, 8), e, [Layout::NChw16c, Layout::NChw16c], 2).unwrap();
}
