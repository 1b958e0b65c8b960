//! Vectors of 16 f32 lanes (one nChw16c channel block) on each instruction set: AVX-512 (one
//! zmm register), AVX2 + FMA (two ymm registers) and portable Rust (an array).
//!
//! Kernels are written once, generic over [`Simd`], and instantiated per instruction set inside
//! a `#[target_feature]` function (see [`Isa`] and the `isa_fn!` macro), so every helper here is
//! `#[inline(always)]`: the intrinsics only become single instructions once inlined into code
//! compiled with the feature. The x86 types are tokens: one can only be made by `unsafe`
//! `new_unchecked`, whose caller promises the CPU has the feature, which is what makes their
//! safe methods sound.
//!
//! Semantics common to every implementation: `min(a, b)` / `max(a, b)` return `b` when either is
//! NaN (the x86 rule; kernels put the value whose NaN must propagate second), `fmadd(a, b, c)` is
//! `a * b + c` (fused on x86, unfused in portable code, which must not call libm's `fmaf`),
//! `ldexp(a, n)` is `a * 2^n` for integral `n` in `-250..=250`, rounded once.

/// The instruction sets the kernels are compiled for, best last.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u32)]
pub enum Isa {
    /// Plain Rust, any target.
    Portable = 0,
    /// x86-64 with AVX2 and FMA (16 ymm registers).
    Avx2 = 1,
    /// x86-64 with AVX-512 F, BW, DQ and VL (32 zmm registers).
    Avx512 = 2,
}

impl Isa {
    pub const ALL: [Isa; 3] = [Isa::Portable, Isa::Avx2, Isa::Avx512];

    pub fn name(self) -> &'static str {
        match self {
            Isa::Portable => "portable",
            Isa::Avx2 => "avx2",
            Isa::Avx512 => "avx512",
        }
    }

    pub fn from_name(name: &str) -> Option<Isa> {
        Isa::ALL.into_iter().find(|i| i.name() == name)
    }
}

/// An instruction set this CPU is known to support: what plans carry, so that no safe call can
/// run an instruction the CPU lacks. Made by run-time detection (`cpu.rs`), or by
/// [`Cpu::assume`] where the caller knows the target (a generated module built for it).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(transparent)]
pub struct Cpu(Isa);

impl Cpu {
    /// Portable code runs everywhere.
    pub const PORTABLE: Cpu = Cpu(Isa::Portable);

    /// # Safety
    /// The CPU running the kernels must support `isa`.
    pub const unsafe fn assume(isa: Isa) -> Cpu {
        Cpu(isa)
    }

    pub fn isa(self) -> Isa {
        self.0
    }
}

/// 16-lane f32 vectors and lane masks on one instruction set. `self` is a token proving the
/// instruction set is available.
pub trait Simd: Copy + Send + Sync + 'static {
    type V: Copy;
    type M: Copy;
    const ISA: Isa;

    /// # Safety
    /// `p` must be valid for reading 16 floats.
    unsafe fn load(self, p: *const f32) -> Self::V;
    /// # Safety
    /// `p` must be valid for writing 16 floats.
    unsafe fn store(self, p: *mut f32, v: Self::V);
    /// Lanes `0..n` from `p` (`n <= 16`), zero above; reads nothing past `p + n`.
    ///
    /// # Safety
    /// `p` must be valid for reading `n` floats.
    unsafe fn load_n(self, p: *const f32, n: usize) -> Self::V;
    /// Stores lanes `0..n` (`n <= 16`); writes nothing past `p + n`.
    ///
    /// # Safety
    /// `p` must be valid for writing `n` floats.
    unsafe fn store_n(self, p: *mut f32, n: usize, v: Self::V);
    /// # Safety
    /// `p` must be valid for reading one float.
    unsafe fn bcast(self, p: *const f32) -> Self::V;
    fn splat(self, x: f32) -> Self::V;
    fn zero(self) -> Self::V;
    fn add(self, a: Self::V, b: Self::V) -> Self::V;
    fn sub(self, a: Self::V, b: Self::V) -> Self::V;
    fn mul(self, a: Self::V, b: Self::V) -> Self::V;
    fn div(self, a: Self::V, b: Self::V) -> Self::V;
    fn min(self, a: Self::V, b: Self::V) -> Self::V;
    fn max(self, a: Self::V, b: Self::V) -> Self::V;
    /// `a * b + c`.
    fn fmadd(self, a: Self::V, b: Self::V, c: Self::V) -> Self::V;
    /// `c - a * b`.
    fn fnmadd(self, a: Self::V, b: Self::V, c: Self::V) -> Self::V;
    fn sqrt(self, a: Self::V) -> Self::V;
    fn abs(self, a: Self::V) -> Self::V;
    /// `a` with the sign of `s`.
    fn copysign(self, a: Self::V, s: Self::V) -> Self::V;
    /// Rounds to the nearest integer, ties to even.
    fn round(self, a: Self::V) -> Self::V;
    /// `a * 2^n`, `n` integral in `-250..=250`.
    fn ldexp(self, a: Self::V, n: Self::V) -> Self::V;
    /// For finite `a > 0` (subnormals included): `(m, e)` with `a = m * 2^e`, `m` in `[1, 2)`.
    fn frexp(self, a: Self::V) -> (Self::V, Self::V);
    /// `a < b` (false when either is NaN).
    fn lt(self, a: Self::V, b: Self::V) -> Self::M;
    /// `a <= b` (false when either is NaN).
    fn le(self, a: Self::V, b: Self::V) -> Self::M;
    /// `a == b` (false when either is NaN).
    fn eq(self, a: Self::V, b: Self::V) -> Self::M;
    /// Lanes holding NaN.
    fn is_nan(self, a: Self::V) -> Self::M;
    fn mask_or(self, a: Self::M, b: Self::M) -> Self::M;
    fn mask_and(self, a: Self::M, b: Self::M) -> Self::M;
    /// `m ? a : b` per lane.
    fn select(self, m: Self::M, a: Self::V, b: Self::V) -> Self::V;
    /// Sum of the 16 lanes.
    fn hsum(self, a: Self::V) -> f32;
    fn v_to_array(self, a: Self::V) -> [f32; 16];
    fn array_to_v(self, a: [f32; 16]) -> Self::V;
    /// Asks for the 64-byte line holding `p` to be brought into the caches (a hint: any
    /// address, never a fault, nothing read that the program sees; a no-op in portable code).
    fn prefetch(self, p: *const f32);
}

/// Plain Rust on any target: arrays of 16 lanes the compiler vectorises as it can.
#[derive(Clone, Copy, Debug, Default)]
pub struct Portable;

#[inline(always)]
fn lanes(f: impl Fn(usize) -> f32) -> [f32; 16] {
    let mut out = [0.0; 16];
    for (i, o) in out.iter_mut().enumerate() {
        *o = f(i);
    }
    out
}

#[inline(always)]
fn bits(f: impl Fn(usize) -> bool) -> u16 {
    let mut m = 0u16;
    for i in 0..16 {
        m |= (f(i) as u16) << i;
    }
    m
}

/// `2^k` for integral `k` in `-126..=127`, built from its bits.
#[inline(always)]
fn pow2i(k: i32) -> f32 {
    f32::from_bits(((k + 127) as u32) << 23)
}

impl Simd for Portable {
    type V = [f32; 16];
    type M = u16;
    const ISA: Isa = Isa::Portable;

    #[inline(always)]
    unsafe fn load(self, p: *const f32) -> [f32; 16] {
        // SAFETY: the caller guarantees 16 readable floats; read_unaligned has no alignment need.
        unsafe { (p as *const [f32; 16]).read_unaligned() }
    }
    #[inline(always)]
    unsafe fn store(self, p: *mut f32, v: [f32; 16]) {
        // SAFETY: the caller guarantees 16 writable floats.
        unsafe { (p as *mut [f32; 16]).write_unaligned(v) }
    }
    #[inline(always)]
    unsafe fn load_n(self, p: *const f32, n: usize) -> [f32; 16] {
        let mut out = [0.0; 16];
        for (i, o) in out.iter_mut().enumerate().take(n.min(16)) {
            // SAFETY: i < n and the caller guarantees n readable floats.
            *o = unsafe { *p.add(i) };
        }
        out
    }
    #[inline(always)]
    unsafe fn store_n(self, p: *mut f32, n: usize, v: [f32; 16]) {
        for (i, x) in v.iter().enumerate().take(n.min(16)) {
            // SAFETY: i < n and the caller guarantees n writable floats.
            unsafe { *p.add(i) = *x };
        }
    }
    #[inline(always)]
    unsafe fn bcast(self, p: *const f32) -> [f32; 16] {
        // SAFETY: the caller guarantees one readable float.
        [unsafe { *p }; 16]
    }
    #[inline(always)]
    fn splat(self, x: f32) -> [f32; 16] {
        [x; 16]
    }
    #[inline(always)]
    fn zero(self) -> [f32; 16] {
        [0.0; 16]
    }
    #[inline(always)]
    fn add(self, a: [f32; 16], b: [f32; 16]) -> [f32; 16] {
        lanes(|i| a[i] + b[i])
    }
    #[inline(always)]
    fn sub(self, a: [f32; 16], b: [f32; 16]) -> [f32; 16] {
        lanes(|i| a[i] - b[i])
    }
    #[inline(always)]
    fn mul(self, a: [f32; 16], b: [f32; 16]) -> [f32; 16] {
        lanes(|i| a[i] * b[i])
    }
    #[inline(always)]
    fn div(self, a: [f32; 16], b: [f32; 16]) -> [f32; 16] {
        lanes(|i| a[i] / b[i])
    }
    #[inline(always)]
    fn min(self, a: [f32; 16], b: [f32; 16]) -> [f32; 16] {
        lanes(|i| if a[i] < b[i] { a[i] } else { b[i] })
    }
    #[inline(always)]
    fn max(self, a: [f32; 16], b: [f32; 16]) -> [f32; 16] {
        lanes(|i| if a[i] > b[i] { a[i] } else { b[i] })
    }
    #[inline(always)]
    fn fmadd(self, a: [f32; 16], b: [f32; 16], c: [f32; 16]) -> [f32; 16] {
        // Unfused on purpose: `f32::mul_add` without hardware FMA is a call to libm's fmaf.
        lanes(|i| a[i] * b[i] + c[i])
    }
    #[inline(always)]
    fn fnmadd(self, a: [f32; 16], b: [f32; 16], c: [f32; 16]) -> [f32; 16] {
        lanes(|i| c[i] - a[i] * b[i])
    }
    #[inline(always)]
    fn sqrt(self, a: [f32; 16]) -> [f32; 16] {
        lanes(|i| super::fmath::sqrt32(a[i]))
    }
    #[inline(always)]
    fn abs(self, a: [f32; 16]) -> [f32; 16] {
        lanes(|i| a[i].abs())
    }
    #[inline(always)]
    fn copysign(self, a: [f32; 16], s: [f32; 16]) -> [f32; 16] {
        lanes(|i| a[i].copysign(s[i]))
    }
    #[inline(always)]
    fn round(self, a: [f32; 16]) -> [f32; 16] {
        lanes(|i| super::fmath::round_ties_even(a[i]))
    }
    #[inline(always)]
    fn ldexp(self, a: [f32; 16], n: [f32; 16]) -> [f32; 16] {
        lanes(|i| {
            // Two exact powers of two keep each factor normal; the second product rounds once.
            let k = n[i].clamp(-250.0, 250.0) as i32;
            let k1 = k >> 1;
            a[i] * pow2i(k1) * pow2i(k - k1)
        })
    }
    #[inline(always)]
    fn frexp(self, a: [f32; 16]) -> ([f32; 16], [f32; 16]) {
        let mut m = [0.0; 16];
        let mut e = [0.0; 16];
        for i in 0..16 {
            let (x, adj) = if a[i] < f32::MIN_POSITIVE { (a[i] * 16_777_216.0, -24) } else { (a[i], 0) };
            let b = x.to_bits();
            e[i] = (((b >> 23) & 0xff) as i32 - 127 + adj) as f32;
            m[i] = f32::from_bits((b & 0x007f_ffff) | 0x3f80_0000);
        }
        (m, e)
    }
    #[inline(always)]
    fn lt(self, a: [f32; 16], b: [f32; 16]) -> u16 {
        bits(|i| a[i] < b[i])
    }
    #[inline(always)]
    fn le(self, a: [f32; 16], b: [f32; 16]) -> u16 {
        bits(|i| a[i] <= b[i])
    }
    #[inline(always)]
    fn eq(self, a: [f32; 16], b: [f32; 16]) -> u16 {
        bits(|i| a[i] == b[i])
    }
    #[inline(always)]
    fn is_nan(self, a: [f32; 16]) -> u16 {
        bits(|i| a[i].is_nan())
    }
    #[inline(always)]
    fn mask_or(self, a: u16, b: u16) -> u16 {
        a | b
    }
    #[inline(always)]
    fn mask_and(self, a: u16, b: u16) -> u16 {
        a & b
    }
    #[inline(always)]
    fn select(self, m: u16, a: [f32; 16], b: [f32; 16]) -> [f32; 16] {
        lanes(|i| if m >> i & 1 == 1 { a[i] } else { b[i] })
    }
    #[inline(always)]
    fn hsum(self, a: [f32; 16]) -> f32 {
        // Pairwise, in the same order as the x86 reductions (halves folded until one is left).
        let mut v = a;
        let mut width = 8;
        while width > 0 {
            for i in 0..width {
                v[i] += v[i + width];
            }
            width /= 2;
        }
        v[0]
    }
    #[inline(always)]
    fn v_to_array(self, a: [f32; 16]) -> [f32; 16] {
        a
    }
    #[inline(always)]
    fn array_to_v(self, a: [f32; 16]) -> [f32; 16] {
        a
    }
    #[inline(always)]
    fn prefetch(self, _p: *const f32) {}
}

/// Defines `$name`, dispatching on an [`Isa`] to one instantiation of the generic
/// `$generic::<S>(s, args..)` per instruction set, each compiled with its target features
/// (`#[target_feature]` plus `#[inline(always)]` generics is how one source gives three
/// machine-code versions). `$name` is `unsafe`: the caller must only pass an `Isa` the CPU
/// supports (what `cpu::active` returns or a plan built from it) and meet `$generic`'s own
/// preconditions.
macro_rules! isa_fn {
    ($(#[$m:meta])* $vis:vis unsafe fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)? = $generic:ident;) => {
        $(#[$m])*
        #[allow(clippy::too_many_arguments)]
        $vis unsafe fn $name(isa: super::simd::Isa, $($arg: $ty),*) $(-> $ret)? {
            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx2,fma")]
            #[allow(clippy::too_many_arguments)]
            unsafe fn avx512($($arg: $ty),*) $(-> $ret)? {
                // SAFETY: this function is only called after the caller checked AVX-512.
                let s = unsafe { super::x86::Avx512::new_unchecked() };
                // SAFETY: forwarded preconditions of the outer function.
                unsafe { $generic(s, $($arg),*) }
            }
            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx2,fma")]
            #[allow(clippy::too_many_arguments)]
            unsafe fn avx2($($arg: $ty),*) $(-> $ret)? {
                // SAFETY: this function is only called after the caller checked AVX2 + FMA.
                let s = unsafe { super::x86::Avx2::new_unchecked() };
                // SAFETY: forwarded preconditions of the outer function.
                unsafe { $generic(s, $($arg),*) }
            }
            match isa {
                // SAFETY: the caller passes only an instruction set the CPU supports.
                #[cfg(target_arch = "x86_64")]
                super::simd::Isa::Avx512 => unsafe { avx512($($arg),*) },
                // SAFETY: as above.
                #[cfg(target_arch = "x86_64")]
                super::simd::Isa::Avx2 => unsafe { avx2($($arg),*) },
                // SAFETY: forwarded preconditions; portable code needs no CPU feature.
                _ => unsafe { $generic(super::simd::Portable, $($arg),*) },
            }
        }
    };
}
pub(crate) use isa_fn;
