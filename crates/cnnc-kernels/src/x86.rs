//! The x86-64 implementations of [`Simd`]: AVX2 + FMA (16 lanes as two ymm registers) and
//! AVX-512 (one zmm register, masks in k registers). Each type is a token: it can only be made
//! by an `unsafe` constructor whose caller promises the CPU has the features, which is what makes
//! the safe methods (each a thin wrapper of intrinsics) sound.

#![cfg(target_arch = "x86_64")]

use super::simd::{Isa, Simd};
use core::arch::x86_64::*;

/// AVX2 + FMA: 16 lanes as two ymm registers.
#[derive(Clone, Copy, Debug)]
pub struct Avx2(());

impl Avx2 {
    /// # Safety
    /// The CPU must support AVX2 and FMA.
    pub unsafe fn new_unchecked() -> Avx2 {
        Avx2(())
    }
}

/// Two ymm halves: lanes 0..8 and 8..16.
#[derive(Clone, Copy, Debug)]
pub struct Y2(pub __m256, pub __m256);

/// Applies a two-operand AVX2 intrinsic to both halves.
macro_rules! y2 {
    ($f:ident, $a:expr) => {
        // SAFETY: an Avx2 token exists, so the CPU has AVX2 and FMA.
        unsafe { Y2($f($a.0), $f($a.1)) }
    };
    ($f:ident, $a:expr, $b:expr) => {
        // SAFETY: an Avx2 token exists, so the CPU has AVX2 and FMA.
        unsafe { Y2($f($a.0, $b.0), $f($a.1, $b.1)) }
    };
    ($f:ident, $a:expr, $b:expr, $c:expr) => {
        // SAFETY: an Avx2 token exists, so the CPU has AVX2 and FMA.
        unsafe { Y2($f($a.0, $b.0, $c.0), $f($a.1, $b.1, $c.1)) }
    };
}

/// Lane mask for lanes `0..n` of one ymm half starting at lane `first`.
#[inline(always)]
fn y_mask(n: usize, first: i32) -> __m256i {
    let n = n.min(16) as i32;
    // SAFETY: plain AVX2 integer arithmetic; only called with an Avx2 token in scope.
    unsafe { _mm256_cmpgt_epi32(_mm256_set1_epi32(n - first), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7)) }
}

/// `2^k` per lane for integral `k` in `-126..=127`.
#[inline(always)]
fn y_pow2(k: __m256i) -> __m256 {
    // SAFETY: AVX2 integer arithmetic; only called with an Avx2 token in scope.
    unsafe { _mm256_castsi256_ps(_mm256_slli_epi32::<23>(_mm256_add_epi32(k, _mm256_set1_epi32(127)))) }
}

#[inline(always)]
fn y_ldexp(a: __m256, n: __m256) -> __m256 {
    // SAFETY: AVX2 arithmetic; only called with an Avx2 token in scope.
    unsafe {
        let n = _mm256_min_ps(_mm256_max_ps(n, _mm256_set1_ps(-250.0)), _mm256_set1_ps(250.0));
        let k = _mm256_cvtps_epi32(n);
        let k1 = _mm256_srai_epi32::<1>(k);
        let k2 = _mm256_sub_epi32(k, k1);
        _mm256_mul_ps(_mm256_mul_ps(a, y_pow2(k1)), y_pow2(k2))
    }
}

#[inline(always)]
fn y_frexp(a: __m256) -> (__m256, __m256) {
    // SAFETY: AVX2 arithmetic; only called with an Avx2 token in scope.
    unsafe {
        let tiny = _mm256_cmp_ps::<_CMP_LT_OQ>(a, _mm256_set1_ps(f32::MIN_POSITIVE));
        let x = _mm256_blendv_ps(a, _mm256_mul_ps(a, _mm256_set1_ps(16_777_216.0)), tiny);
        let adj = _mm256_and_ps(tiny, _mm256_set1_ps(24.0));
        let b = _mm256_castps_si256(x);
        let e = _mm256_sub_epi32(
            _mm256_and_si256(_mm256_srli_epi32::<23>(b), _mm256_set1_epi32(0xff)),
            _mm256_set1_epi32(127),
        );
        let m = _mm256_or_si256(_mm256_and_si256(b, _mm256_set1_epi32(0x007f_ffff)), _mm256_set1_epi32(0x3f80_0000));
        (_mm256_castsi256_ps(m), _mm256_sub_ps(_mm256_cvtepi32_ps(e), adj))
    }
}

impl Simd for Avx2 {
    type V = Y2;
    type M = Y2;
    const ISA: Isa = Isa::Avx2;

    #[inline(always)]
    unsafe fn load(self, p: *const f32) -> Y2 {
        // SAFETY: 16 readable floats (caller); AVX2 present (token).
        unsafe { Y2(_mm256_loadu_ps(p), _mm256_loadu_ps(p.add(8))) }
    }
    #[inline(always)]
    unsafe fn store(self, p: *mut f32, v: Y2) {
        // SAFETY: 16 writable floats (caller); AVX2 present (token).
        unsafe {
            _mm256_storeu_ps(p, v.0);
            _mm256_storeu_ps(p.add(8), v.1);
        }
    }
    #[inline(always)]
    unsafe fn load_n(self, p: *const f32, n: usize) -> Y2 {
        // SAFETY: masked loads read only the enabled lanes, all within the caller's n floats;
        // the second half's pointer is only formed (wrapping) and never read past n.
        unsafe { Y2(_mm256_maskload_ps(p, y_mask(n, 0)), _mm256_maskload_ps(p.wrapping_add(8), y_mask(n, 8))) }
    }
    #[inline(always)]
    unsafe fn store_n(self, p: *mut f32, n: usize, v: Y2) {
        // SAFETY: masked stores write only the enabled lanes, all within the caller's n floats.
        unsafe {
            _mm256_maskstore_ps(p, y_mask(n, 0), v.0);
            _mm256_maskstore_ps(p.wrapping_add(8), y_mask(n, 8), v.1);
        }
    }
    #[inline(always)]
    unsafe fn bcast(self, p: *const f32) -> Y2 {
        // SAFETY: one readable float (caller); AVX2 present (token).
        let v = unsafe { _mm256_broadcast_ss(&*p) };
        Y2(v, v)
    }
    #[inline(always)]
    fn splat(self, x: f32) -> Y2 {
        // SAFETY: AVX present (token).
        let v = unsafe { _mm256_set1_ps(x) };
        Y2(v, v)
    }
    #[inline(always)]
    fn zero(self) -> Y2 {
        self.splat(0.0)
    }
    #[inline(always)]
    fn add(self, a: Y2, b: Y2) -> Y2 {
        y2!(_mm256_add_ps, a, b)
    }
    #[inline(always)]
    fn sub(self, a: Y2, b: Y2) -> Y2 {
        y2!(_mm256_sub_ps, a, b)
    }
    #[inline(always)]
    fn mul(self, a: Y2, b: Y2) -> Y2 {
        y2!(_mm256_mul_ps, a, b)
    }
    #[inline(always)]
    fn div(self, a: Y2, b: Y2) -> Y2 {
        y2!(_mm256_div_ps, a, b)
    }
    #[inline(always)]
    fn min(self, a: Y2, b: Y2) -> Y2 {
        y2!(_mm256_min_ps, a, b)
    }
    #[inline(always)]
    fn max(self, a: Y2, b: Y2) -> Y2 {
        y2!(_mm256_max_ps, a, b)
    }
    #[inline(always)]
    fn fmadd(self, a: Y2, b: Y2, c: Y2) -> Y2 {
        y2!(_mm256_fmadd_ps, a, b, c)
    }
    #[inline(always)]
    fn fnmadd(self, a: Y2, b: Y2, c: Y2) -> Y2 {
        y2!(_mm256_fnmadd_ps, a, b, c)
    }
    #[inline(always)]
    fn sqrt(self, a: Y2) -> Y2 {
        y2!(_mm256_sqrt_ps, a)
    }
    #[inline(always)]
    fn abs(self, a: Y2) -> Y2 {
        let m = self.splat(f32::from_bits(0x7fff_ffff));
        y2!(_mm256_and_ps, a, m)
    }
    #[inline(always)]
    fn copysign(self, a: Y2, s: Y2) -> Y2 {
        let sign = self.splat(-0.0);
        let mag = self.abs(a);
        let sg = y2!(_mm256_and_ps, s, sign);
        y2!(_mm256_or_ps, mag, sg)
    }
    #[inline(always)]
    fn round(self, a: Y2) -> Y2 {
        // SAFETY: AVX present (token).
        unsafe {
            Y2(
                _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(a.0),
                _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(a.1),
            )
        }
    }
    #[inline(always)]
    fn ldexp(self, a: Y2, n: Y2) -> Y2 {
        Y2(y_ldexp(a.0, n.0), y_ldexp(a.1, n.1))
    }
    #[inline(always)]
    fn frexp(self, a: Y2) -> (Y2, Y2) {
        let (m0, e0) = y_frexp(a.0);
        let (m1, e1) = y_frexp(a.1);
        (Y2(m0, m1), Y2(e0, e1))
    }
    #[inline(always)]
    fn lt(self, a: Y2, b: Y2) -> Y2 {
        // SAFETY: AVX present (token).
        unsafe { Y2(_mm256_cmp_ps::<_CMP_LT_OQ>(a.0, b.0), _mm256_cmp_ps::<_CMP_LT_OQ>(a.1, b.1)) }
    }
    #[inline(always)]
    fn le(self, a: Y2, b: Y2) -> Y2 {
        // SAFETY: AVX present (token).
        unsafe { Y2(_mm256_cmp_ps::<_CMP_LE_OQ>(a.0, b.0), _mm256_cmp_ps::<_CMP_LE_OQ>(a.1, b.1)) }
    }
    #[inline(always)]
    fn eq(self, a: Y2, b: Y2) -> Y2 {
        // SAFETY: AVX present (token).
        unsafe { Y2(_mm256_cmp_ps::<_CMP_EQ_OQ>(a.0, b.0), _mm256_cmp_ps::<_CMP_EQ_OQ>(a.1, b.1)) }
    }
    #[inline(always)]
    fn is_nan(self, a: Y2) -> Y2 {
        // SAFETY: AVX present (token).
        unsafe { Y2(_mm256_cmp_ps::<_CMP_UNORD_Q>(a.0, a.0), _mm256_cmp_ps::<_CMP_UNORD_Q>(a.1, a.1)) }
    }
    #[inline(always)]
    fn mask_or(self, a: Y2, b: Y2) -> Y2 {
        y2!(_mm256_or_ps, a, b)
    }
    #[inline(always)]
    fn mask_and(self, a: Y2, b: Y2) -> Y2 {
        y2!(_mm256_and_ps, a, b)
    }
    #[inline(always)]
    fn select(self, m: Y2, a: Y2, b: Y2) -> Y2 {
        // SAFETY: AVX present (token).
        unsafe { Y2(_mm256_blendv_ps(b.0, a.0, m.0), _mm256_blendv_ps(b.1, a.1, m.1)) }
    }
    #[inline(always)]
    fn hsum(self, a: Y2) -> f32 {
        // SAFETY: AVX present (token).
        unsafe {
            let v = _mm256_add_ps(a.0, a.1);
            let q = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
            let d = _mm_add_ps(q, _mm_movehl_ps(q, q));
            _mm_cvtss_f32(_mm_add_ss(d, _mm_shuffle_ps::<1>(d, d)))
        }
    }
    #[inline(always)]
    fn v_to_array(self, a: Y2) -> [f32; 16] {
        let mut out = [0.0; 16];
        // SAFETY: out holds 16 floats.
        unsafe { self.store(out.as_mut_ptr(), a) };
        out
    }
    #[inline(always)]
    fn array_to_v(self, a: [f32; 16]) -> Y2 {
        // SAFETY: a holds 16 floats.
        unsafe { self.load(a.as_ptr()) }
    }
    #[inline(always)]
    fn prefetch(self, p: *const f32) {
        // SAFETY: a prefetch never faults and reads nothing the program sees, whatever the
        // address; SSE is part of x86-64.
        unsafe { _mm_prefetch::<_MM_HINT_T0>(p as *const i8) }
    }
}

/// AVX-512 (F, BW, DQ, VL): 16 lanes in one zmm register, masks in k registers.
#[derive(Clone, Copy, Debug)]
pub struct Avx512(());

impl Avx512 {
    /// # Safety
    /// The CPU must support AVX-512 F, BW, DQ and VL, AVX2 and FMA.
    pub unsafe fn new_unchecked() -> Avx512 {
        Avx512(())
    }
}

/// Evaluates an AVX-512 intrinsic expression.
macro_rules! z {
    ($e:expr) => {
        // SAFETY: an Avx512 token exists, so the CPU has AVX-512 F/BW/DQ/VL.
        unsafe { $e }
    };
}

#[inline(always)]
fn z_mask(n: usize) -> __mmask16 {
    if n >= 16 { 0xffff } else { ((1u32 << n) - 1) as __mmask16 }
}

impl Simd for Avx512 {
    type V = __m512;
    type M = __mmask16;
    const ISA: Isa = Isa::Avx512;

    #[inline(always)]
    unsafe fn load(self, p: *const f32) -> __m512 {
        // SAFETY: 16 readable floats (caller); AVX-512 present (token).
        unsafe { _mm512_loadu_ps(p) }
    }
    #[inline(always)]
    unsafe fn store(self, p: *mut f32, v: __m512) {
        // SAFETY: 16 writable floats (caller); AVX-512 present (token).
        unsafe { _mm512_storeu_ps(p, v) }
    }
    #[inline(always)]
    unsafe fn load_n(self, p: *const f32, n: usize) -> __m512 {
        // SAFETY: a masked load reads (and can fault on) only the enabled lanes, within n.
        unsafe { _mm512_maskz_loadu_ps(z_mask(n), p) }
    }
    #[inline(always)]
    unsafe fn store_n(self, p: *mut f32, n: usize, v: __m512) {
        // SAFETY: a masked store writes only the enabled lanes, within n.
        unsafe { _mm512_mask_storeu_ps(p, z_mask(n), v) }
    }
    #[inline(always)]
    unsafe fn bcast(self, p: *const f32) -> __m512 {
        // SAFETY: one readable float (caller); AVX-512 present (token).
        unsafe { _mm512_set1_ps(*p) }
    }
    #[inline(always)]
    fn splat(self, x: f32) -> __m512 {
        z!(_mm512_set1_ps(x))
    }
    #[inline(always)]
    fn zero(self) -> __m512 {
        z!(_mm512_setzero_ps())
    }
    #[inline(always)]
    fn add(self, a: __m512, b: __m512) -> __m512 {
        z!(_mm512_add_ps(a, b))
    }
    #[inline(always)]
    fn sub(self, a: __m512, b: __m512) -> __m512 {
        z!(_mm512_sub_ps(a, b))
    }
    #[inline(always)]
    fn mul(self, a: __m512, b: __m512) -> __m512 {
        z!(_mm512_mul_ps(a, b))
    }
    #[inline(always)]
    fn div(self, a: __m512, b: __m512) -> __m512 {
        z!(_mm512_div_ps(a, b))
    }
    #[inline(always)]
    fn min(self, a: __m512, b: __m512) -> __m512 {
        z!(_mm512_min_ps(a, b))
    }
    #[inline(always)]
    fn max(self, a: __m512, b: __m512) -> __m512 {
        z!(_mm512_max_ps(a, b))
    }
    #[inline(always)]
    fn fmadd(self, a: __m512, b: __m512, c: __m512) -> __m512 {
        z!(_mm512_fmadd_ps(a, b, c))
    }
    #[inline(always)]
    fn fnmadd(self, a: __m512, b: __m512, c: __m512) -> __m512 {
        z!(_mm512_fnmadd_ps(a, b, c))
    }
    #[inline(always)]
    fn sqrt(self, a: __m512) -> __m512 {
        z!(_mm512_sqrt_ps(a))
    }
    #[inline(always)]
    fn abs(self, a: __m512) -> __m512 {
        z!(_mm512_abs_ps(a))
    }
    #[inline(always)]
    fn copysign(self, a: __m512, s: __m512) -> __m512 {
        z!({
            let sign = _mm512_set1_epi32(i32::MIN);
            let mag = _mm512_andnot_si512(sign, _mm512_castps_si512(a));
            let sg = _mm512_and_si512(sign, _mm512_castps_si512(s));
            _mm512_castsi512_ps(_mm512_or_si512(mag, sg))
        })
    }
    #[inline(always)]
    fn round(self, a: __m512) -> __m512 {
        // Scale 0, round to nearest even, exceptions suppressed.
        z!(_mm512_roundscale_ps::<0x08>(a))
    }
    #[inline(always)]
    fn ldexp(self, a: __m512, n: __m512) -> __m512 {
        // scalef computes a * 2^floor(n) with one rounding, subnormal results included.
        z!(_mm512_scalef_ps(a, n))
    }
    #[inline(always)]
    fn frexp(self, a: __m512) -> (__m512, __m512) {
        // getexp/getmant treat subnormal inputs exactly.
        z!((_mm512_getmant_ps::<_MM_MANT_NORM_1_2, _MM_MANT_SIGN_SRC>(a), _mm512_getexp_ps(a)))
    }
    #[inline(always)]
    fn lt(self, a: __m512, b: __m512) -> __mmask16 {
        z!(_mm512_cmp_ps_mask::<_CMP_LT_OQ>(a, b))
    }
    #[inline(always)]
    fn le(self, a: __m512, b: __m512) -> __mmask16 {
        z!(_mm512_cmp_ps_mask::<_CMP_LE_OQ>(a, b))
    }
    #[inline(always)]
    fn eq(self, a: __m512, b: __m512) -> __mmask16 {
        z!(_mm512_cmp_ps_mask::<_CMP_EQ_OQ>(a, b))
    }
    #[inline(always)]
    fn is_nan(self, a: __m512) -> __mmask16 {
        z!(_mm512_cmp_ps_mask::<_CMP_UNORD_Q>(a, a))
    }
    #[inline(always)]
    fn mask_or(self, a: __mmask16, b: __mmask16) -> __mmask16 {
        a | b
    }
    #[inline(always)]
    fn mask_and(self, a: __mmask16, b: __mmask16) -> __mmask16 {
        a & b
    }
    #[inline(always)]
    fn select(self, m: __mmask16, a: __m512, b: __m512) -> __m512 {
        z!(_mm512_mask_blend_ps(m, b, a))
    }
    #[inline(always)]
    fn hsum(self, a: __m512) -> f32 {
        // The same pairwise order as Portable::hsum.
        z!({
            let h = _mm256_add_ps(_mm512_castps512_ps256(a), _mm512_extractf32x8_ps::<1>(a));
            let q = _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps::<1>(h));
            let d = _mm_add_ps(q, _mm_movehl_ps(q, q));
            _mm_cvtss_f32(_mm_add_ss(d, _mm_shuffle_ps::<1>(d, d)))
        })
    }
    #[inline(always)]
    fn v_to_array(self, a: __m512) -> [f32; 16] {
        let mut out = [0.0; 16];
        // SAFETY: out holds 16 floats.
        unsafe { self.store(out.as_mut_ptr(), a) };
        out
    }
    #[inline(always)]
    fn array_to_v(self, a: [f32; 16]) -> __m512 {
        // SAFETY: a holds 16 floats.
        unsafe { self.load(a.as_ptr()) }
    }
    #[inline(always)]
    fn prefetch(self, p: *const f32) {
        // SAFETY: a prefetch never faults and reads nothing the program sees, whatever the
        // address; SSE is part of x86-64.
        unsafe { _mm_prefetch::<_MM_HINT_T0>(p as *const i8) }
    }
}
