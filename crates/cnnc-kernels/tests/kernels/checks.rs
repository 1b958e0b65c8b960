//! Reorders and weight packing round trips, channel-slice views (a concatenation buffer's
//! batch stride), and the checks of the safe entry points: bad shapes, views outside the
//! arena, overlapping operands, wrong lengths and hostile sizes give a `KernelError`, never a
//! panic.

use super::util::{Arena, Rng, cpus, from_blocked, par, to_blocked};
use cnnc_kernels::act::Act;
use cnnc_kernels::conv::{ConvIo, ConvPlan, ConvShape, Epilogue};
use cnnc_kernels::conv_fwd;
use cnnc_kernels::error::KernelError;
use cnnc_kernels::fc::FcPlan;
use cnnc_kernels::pack::{self, Blocked, WeightShape};
use cnnc_kernels::par::Serial;
use cnnc_kernels::pool::{PoolKind, PoolPlan, PoolWindow};
use cnnc_kernels::reorder;
use cnnc_kernels::view::{Layout, View};
use proptest::prelude::*;

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn reorders_round_trip_through_channel_slices(n in 1usize..=3, c in 1usize..=40, h in 1usize..=9, w in 1usize..=9, extra in 0usize..=3, seed in any::<u64>()) {
        let mut rng = Rng::new(seed);
        let hw = h * w;
        let x = rng.vec(n * c * hw);
        // The blocked value is a channel slice of a larger buffer: batch stride of c + 16 * extra
        // channels, at a block offset.
        let total = c.div_ceil(16) * 16 + 16 * extra;
        let dst_len = n * total * hw;
        let mut arena = Arena::new(&[&x, &vec![f32::NAN; dst_len], &vec![f32::NAN; x.len()]]);
        let src = arena.view(0, n, c, h, w, Layout::Nchw);
        let mut mid = arena.view(1, n, c, h, w, Layout::NChw16c);
        mid.offset += 16 * extra.min(1) * hw;
        mid.batch_stride = total * hw;
        let back = arena.view(2, n, c, h, w, Layout::Nchw);
        for cpu in cpus() {
            let par = par(seed ^ cpu.isa() as u64);
            reorder::reorder(par, arena.buf.as_mut_slice(), src, mid).unwrap();
            reorder::reorder(par, arena.buf.as_mut_slice(), mid, back).unwrap();
            prop_assert_eq!(arena.part(2), &x[..]);
            let b = arena.buf.as_slice();
            for i in 0..n {
                let img = &b[mid.offset + i * mid.batch_stride..][..c.div_ceil(16) * 16 * hw];
                let lanes = from_blocked(img, 1, c, hw);
                prop_assert_eq!(&lanes[..], &x[i * c * hw..][..c * hw]);
                // Padding lanes are written as zeros.
                for p in 0..hw {
                    for l in c % 16..if c % 16 == 0 { 0 } else { 16 } {
                        prop_assert_eq!(img[((c / 16) * hw + p) * 16 + l], 0.0);
                    }
                }
            }
        }
    }

    #[test]
    fn packing_round_trips(o in 1usize..=40, i in 1usize..=40, k in 1usize..=4, g in 1usize..=2, seed in any::<u64>()) {
        let (o, i) = (o * g, i);
        let s = WeightShape { o, i, kh: k, kw: k, groups: g };
        let w = Rng::new(seed).vec(s.plain_len().unwrap());
        for layout in [Blocked::Forward, Blocked::BackwardData] {
            let mut packed = vec![1.0; s.blocked_len().unwrap()];
            pack::pack(&s, layout, &w, &mut packed).unwrap();
            let nonzero = packed.iter().filter(|v| **v != 0.0).count();
            prop_assert_eq!(nonzero, w.iter().filter(|v| **v != 0.0).count(), "padding must be zero");
            let mut back = vec![0.0; w.len()];
            pack::unpack(&s, layout, &packed, &mut back).unwrap();
            prop_assert_eq!(&back, &w);
        }
    }

    #[test]
    fn plans_never_panic_on_hostile_sizes(dims in proptest::collection::vec(prop_oneof![0usize..=4, Just(usize::MAX / 3), Just(1usize << 40)], 11), groups in 0usize..=3) {
        let s = ConvShape { n: dims[0], ic: dims[1], ih: dims[2], iw: dims[3], oc: dims[4], kh: dims[5], kw: dims[6], stride: [dims[7], 1], pad: [dims[8], 0], dilation: [1, dims[9].max(1)], groups };
        for cpu in cpus() {
            let _ = ConvPlan::new(s, Epilogue::NONE, cpu, 2);
            let _ = cnnc_kernels::conv_bwd_data::BwdDataPlan::new(s, Default::default(), cpu, 2);
            let _ = cnnc_kernels::conv_bwd_weights::BwdWeightsPlan::new(s, true, false, cpu);
            let _ = cnnc_kernels::conv_plain::PlainConvPlan::new(s, Epilogue::NONE, Layout::NChw16c, cpu, 2);
            let _ = cnnc_kernels::depthwise::DepthwisePlan::new(s, Epilogue::NONE, cpu, 2);
            let _ = FcPlan::new(dims[0], dims[1], dims[10], true, Act::NONE, cpu, 2);
            let _ = PoolPlan::new(dims[0], dims[1], [dims[2], dims[3]], PoolKind::Max, PoolWindow::sliding(dims[5], dims[7], dims[8], groups == 1), Layout::NChw16c, cpu);
            let _ = cnnc_kernels::lrn::LrnPlan::new(dims[0], dims[1], [dims[2], dims[3]], Layout::Nchw, dims[5], 1e-4, 0.75, 1.0, cpu, 2);
        }
    }
}

fn conv_setup() -> (ConvPlan, Vec<f32>, Vec<f32>, View, View) {
    let s = ConvShape::simple(1, 16, [4, 4], 16, 3, 1, 1);
    let plan =
        ConvPlan::new(s, Epilogue { bias: false, scale_shift: false, residual: true, act: Act::RELU }, cpus()[0], 1)
            .unwrap();
    let x = View::dense(0, 1, 16, 4, 4, Layout::NChw16c);
    let y = View::dense(256, 1, 16, 4, 4, Layout::NChw16c);
    (plan, vec![0.0; 512], vec![0.0; cnnc_kernels::conv::packed_weight_len(&s).unwrap()], x, y)
}

#[test]
fn conv_rejects_bad_operands() {
    let (plan, mut arena, w, x, y) = conv_setup();
    let mut scratch = vec![0.0; plan.scratch_len(1)];
    let io = |x, y, r, w| ConvIo { x, y, residual: r, weights: w, bias: None, scale: None, shift: None };
    let run =
        |arena: &mut [f32], io: &ConvIo<'_>, scratch: &mut [f32]| conv_fwd::forward(&Serial, &plan, arena, io, scratch);
    assert!(run(&mut arena, &io(x, y, Some(y), &w), &mut scratch).is_ok());
    let past = View { offset: 300, ..y };
    assert!(matches!(
        run(&mut arena, &io(x, past, Some(past), &w), &mut scratch),
        Err(KernelError::OutOfBounds { .. })
    ));
    let overlapping = View { offset: 100, ..y };
    assert!(matches!(
        run(&mut arena, &io(x, overlapping, Some(overlapping), &w), &mut scratch),
        Err(KernelError::Overlap { .. })
    ));
    let half = View { offset: 128, ..y };
    assert!(matches!(
        run(&mut arena, &io(x, y, Some(View { offset: 384, ..y }), &w), &mut scratch),
        Err(KernelError::OutOfBounds { .. })
    ));
    assert!(matches!(
        run(&mut vec![0.0; 1024], &io(x, y, Some(half), &w), &mut scratch),
        Err(KernelError::Overlap { .. })
    ));
    assert!(matches!(run(&mut arena, &io(x, y, Some(y), &w[1..]), &mut scratch), Err(KernelError::Length { .. })));
    assert!(matches!(run(&mut arena, &io(x, y, None, &w), &mut scratch), Err(KernelError::View { .. })));
    let wrong = View { c: 15, ..x };
    assert!(matches!(run(&mut arena, &io(wrong, y, Some(y), &w), &mut scratch), Err(KernelError::View { .. })));
    let plain = View { layout: Layout::Nchw, ..x };
    assert!(matches!(run(&mut arena, &io(plain, y, Some(y), &w), &mut scratch), Err(KernelError::View { .. })));
    if plan.scratch_len(1) > 0 {
        assert!(matches!(run(&mut arena, &io(x, y, Some(y), &w), &mut []), Err(KernelError::Length { .. })));
    }
    let e = ConvPlan::new(ConvShape::simple(1, 3, [2, 2], 4, 5, 1, 0), Epilogue::NONE, cpus()[0], 1).unwrap_err();
    assert!(e.to_string().contains("larger than the padded input"), "{e}");
}

#[test]
fn batch_views_with_images_overlapping_each_other_are_rejected() {
    let v = View { offset: 0, batch_stride: 10, n: 2, c: 4, h: 2, w: 2, layout: Layout::Nchw };
    assert!(matches!(v.check_in("view", 1000), Err(KernelError::Overlap { .. })));
    // Two channel slices of one concatenation buffer do not overlap though their spans do.
    let a = View { offset: 0, batch_stride: 32, n: 3, c: 1, h: 4, w: 4, layout: Layout::Nchw };
    let b = View { offset: 16, ..a };
    assert!(!a.overlaps(&b) && a.overlaps(&View { offset: 8, ..a }) && a.overlaps(&View { offset: 40, ..a }));
    let _ = to_blocked(&[0.0], 1, 1, 1, 0.0);
}

#[test]
fn plans_of_huge_images_are_made_quickly() {
    // 2^30 rows: the task split searches a bounded set of chunk sizes, not every one.
    let s = ConvShape::simple(1, 1, [1 << 30, 1], 1, 1, 1, 0);
    let t0 = std::time::Instant::now();
    for cpu in cpus() {
        let plan = ConvPlan::new(s, Epilogue::NONE, cpu, 2).unwrap();
        assert!(plan.tasks() >= 2);
    }
    assert!(t0.elapsed().as_secs() < 5, "planning took {:?}", t0.elapsed());
}
