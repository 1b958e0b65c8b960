//! The FMA peak probe: a positive, finite rate at every width each supported instruction set
//! has, never wider than it, fused exactly where the instruction set has FMA.

use cnnc_kernels::peak::{Width, measure_with};
use cnnc_kernels::simd::Isa;

#[test]
fn every_supported_width_gives_a_rate() {
    for cpu in cnnc_kernels::cpu::all_supported() {
        for width in [Width::W128, Width::W256, Width::W512] {
            // Short runs: this checks the probe runs and counts, not the machine.
            let p = measure_with(cpu, width, 2, 200_000, 1);
            assert!(p.width <= Width::of(cpu.isa()) && p.width <= width, "{cpu:?} {width:?}: {p:?}");
            assert!(p.gflops.is_finite() && p.gflops > 0.1, "{cpu:?} {width:?}: {p:?}");
            assert_eq!(p.fused, cpu.isa() != Isa::Portable, "{cpu:?}: {p:?}");
            assert_eq!(p.threads, 2);
        }
    }
}

#[test]
fn wider_vectors_are_not_slower() {
    // On one thread of an FMA machine, 128-bit chains cannot beat the widest the kernels use:
    // each wider instruction does at least the work of a narrower one (a generous margin for
    // a shared machine).
    let cpu = cnnc_kernels::cpu::best();
    if cpu.isa() == Isa::Portable {
        return;
    }
    // Many short runs: on a busy machine some of them run without being preempted.
    let narrow = measure_with(cpu, Width::W128, 1, 300_000, 20).gflops;
    let wide = measure_with(cpu, Width::of(cpu.isa()), 1, 300_000, 20).gflops;
    assert!(wide > 0.7 * narrow, "{wide} GFLOP/s at {:?} against {narrow} at 128 bits", Width::of(cpu.isa()));
}

/// The read probe's sum covers each quarter of its part once (a remainder of under 4 words
/// left out), wrapping rather than overflowing.
#[test]
fn read_streams_sums_each_quarter() {
    let words: Vec<u64> = (0..103).collect();
    let acc = cnnc_kernels::peak::read_streams(&words);
    let quarter = |k: u64| (25 * k..25 * k + 25).sum::<u64>();
    assert_eq!(acc, [quarter(0), quarter(1), quarter(2), quarter(3)]);
    assert_eq!(cnnc_kernels::peak::read_streams(&[u64::MAX; 8]), [u64::MAX - 1; 4]);
}
