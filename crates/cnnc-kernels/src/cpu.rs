//! Run-time CPU detection (std): which instruction sets this CPU supports, the best one, and
//! the one kernels use by default, chosen once and cached, which `CNNC_ISA=avx512|avx2|portable`
//! or [`force`] can override (tests run every kernel on each).

use super::error::KernelError;
use super::simd::{Cpu, Isa};
use std::sync::atomic::{AtomicU32, Ordering};

/// Whether this CPU can run `isa`'s kernels.
pub fn supports(isa: Isa) -> bool {
    match isa {
        Isa::Portable => true,
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma"),
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => {
            is_x86_feature_detected!("avx512f")
                && is_x86_feature_detected!("avx512bw")
                && is_x86_feature_detected!("avx512dq")
                && is_x86_feature_detected!("avx512vl")
                && is_x86_feature_detected!("avx2")
                && is_x86_feature_detected!("fma")
        }
        #[cfg(not(target_arch = "x86_64"))]
        Isa::Avx2 | Isa::Avx512 => false,
    }
}

/// The token for `isa` if this CPU supports it.
pub fn cpu(isa: Isa) -> Option<Cpu> {
    // SAFETY: just checked that the CPU supports it.
    supports(isa).then(|| unsafe { Cpu::assume(isa) })
}

/// The best instruction set this CPU supports.
pub fn best() -> Cpu {
    Isa::ALL.into_iter().rev().find_map(cpu).unwrap_or(Cpu::PORTABLE)
}

/// Every supported instruction set, portable first.
pub fn all_supported() -> Vec<Cpu> {
    Isa::ALL.into_iter().filter_map(cpu).collect()
}

/// 0: not chosen yet; otherwise `1 + isa as u32`.
static ACTIVE: AtomicU32 = AtomicU32::new(0);

/// The instruction set kernels use by default: the forced one, else `CNNC_ISA` (when this CPU
/// supports it), else the best. Chosen on first use and cached.
pub fn active() -> Cpu {
    let cached = ACTIVE.load(Ordering::Relaxed);
    if cached != 0 {
        let isa = Isa::ALL[(cached - 1) as usize];
        // SAFETY: only supported instruction sets are stored.
        return unsafe { Cpu::assume(isa) };
    }
    let chosen = std::env::var("CNNC_ISA").ok().and_then(|n| Isa::from_name(&n)).and_then(cpu).unwrap_or_else(best);
    ACTIVE.store(1 + chosen.isa() as u32, Ordering::Relaxed);
    chosen
}

/// Makes `isa` the default from now on (`None`: back to detection and `CNNC_ISA`).
pub fn force(isa: Option<Isa>) -> Result<(), KernelError> {
    match isa {
        None => ACTIVE.store(0, Ordering::Relaxed),
        Some(isa) => {
            let c = cpu(isa).ok_or(KernelError::Unsupported { what: "this CPU lacks the instruction set" })?;
            ACTIVE.store(1 + c.isa() as u32, Ordering::Relaxed);
        }
    }
    Ok(())
}
