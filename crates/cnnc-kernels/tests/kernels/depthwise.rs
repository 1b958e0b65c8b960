//! Depthwise convolution against the interpreter (groups = channels), with the epilogue.

use super::conv::{EpiCase, Residual, activations, epi_case, shape_of};
use super::oracle::{self, ConvCfg, Post};
use super::util::{Arena, Rng, close, cpus, from_blocked, guarded, par, to_blocked};
use cnnc_kernels::act::Act;
use cnnc_kernels::conv::{ConvIo, Epilogue};
use cnnc_kernels::depthwise::{self, DepthwisePlan};
use cnnc_kernels::pack;
use cnnc_kernels::view::Layout;
use proptest::prelude::*;

fn check_depthwise(cfg: ConvCfg, e: EpiCase, seed: u64) -> Result<(), String> {
    let mut rng = Rng::new(seed);
    let [oh, ow] = cfg.out_hw();
    let (ihw, ohw) = (cfg.ih * cfg.iw, oh * ow);
    let c = cfg.ic;
    let x = rng.vec(cfg.n * c * ihw);
    let w = rng.vec(c * cfg.k[0] * cfg.k[1]);
    let (bias, scale, shift) = (rng.vec(c), rng.vec(c), rng.vec(c));
    let res = rng.vec(cfg.n * c * ohw);
    let acts = activations();
    let post = Post {
        scale_shift: e.scale_shift.then_some((&scale[..], &shift[..])),
        residual: (!matches!(e.residual, Residual::None)).then_some(&res[..]),
        act: e.act.map(|i| acts[i].1),
    };
    let want = oracle::conv_forward(&cfg, &x, &w, e.bias.then_some(&bias[..]), &post);
    let mut packed = vec![0.0; pack::depthwise_len(c, cfg.k[0], cfg.k[1]).unwrap()];
    pack::pack_depthwise(c, cfg.k[0], cfg.k[1], &w, &mut packed).unwrap();
    let mut back = vec![0.0; w.len()];
    pack::unpack_depthwise(c, cfg.k[0], cfg.k[1], &packed, &mut back).unwrap();
    assert_eq!(back, w);
    let packed = guarded(&packed);
    let (bias_g, scale_g, shift_g) = (guarded(&bias), guarded(&scale), guarded(&shift));
    let epilogue = Epilogue {
        bias: e.bias,
        scale_shift: e.scale_shift,
        residual: !matches!(e.residual, Residual::None),
        act: e.act.map_or(Act::NONE, |i| acts[i].0),
    };
    let xb = to_blocked(&x, cfg.n, c, ihw, 2.5);
    let rb = to_blocked(&res, cfg.n, c, ohw, -1.0);
    for cpu in cpus() {
        let par = par(seed);
        let plan = DepthwisePlan::new(shape_of(&cfg), epilogue, cpu, par.threads()).map_err(|e| e.to_string())?;
        let y0 = if matches!(e.residual, Residual::InPlace) { rb.clone() } else { vec![4.0; rb.len()] };
        let mut arena = match e.residual {
            Residual::Apart => Arena::new(&[&xb, &rb, &y0]),
            _ => Arena::new(&[&xb, &y0]),
        };
        let yi = arena.offsets.len() - 1;
        let yv = arena.view(yi, cfg.n, c, oh, ow, Layout::NChw16c);
        let io = ConvIo {
            x: arena.view(0, cfg.n, c, cfg.ih, cfg.iw, Layout::NChw16c),
            y: yv,
            residual: match e.residual {
                Residual::None => None,
                Residual::Apart => Some(arena.view(1, cfg.n, c, oh, ow, Layout::NChw16c)),
                Residual::InPlace => Some(yv),
            },
            weights: packed.as_slice(),
            bias: e.bias.then_some(bias_g.as_slice()),
            scale: e.scale_shift.then_some(scale_g.as_slice()),
            shift: e.scale_shift.then_some(shift_g.as_slice()),
        };
        let mut scratch = guarded(&vec![0.0; plan.scratch_len(par.threads())]);
        depthwise::forward(par, &plan, arena.buf.as_mut_slice(), &io, scratch.as_mut_slice())
            .map_err(|e| e.to_string())?;
        let what = format!("{:?} {cfg:?} {e:?}", cpu.isa());
        close(&what, &from_blocked(arena.part(yi), cfg.n, c, ohw), &want, 1e-4)?;
        if !arena.gaps_intact() || !scratch.sentinels_intact() {
            return Err(format!("{what}: wrote outside its tensors"));
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 40, ..ProptestConfig::default() })]

    #[test]
    fn depthwise_matches_interpreter(cfg in super::conv::conv_cfg(), e in epi_case(), seed in any::<u64>()) {
        let cfg = ConvCfg { oc: cfg.ic, groups: cfg.ic, ..cfg };
        check_depthwise(cfg, e, seed).map_err(TestCaseError::fail)?;
    }
}
