//! Scalar math without `std` (which `core` lacks: `f64::sqrt`, `f32::round_ties_even`,
//! `f64::powi`, `f64::ln`), so that every kernel file other than `cpu.rs` and `threads.rs`
//! builds in a `no_std` module. Newton's method for square roots (correctly rounded in practice:
//! the last step runs in f64 with an error far below an f32 ulp), the 2^52 trick for rounding.

/// `sqrt(x)` in f64 for `x >= 0` (NaN for negatives and NaN, `inf` for `inf`).
pub fn sqrt64(x: f64) -> f64 {
    if x.is_nan() || x < 0.0 {
        return f64::NAN;
    }
    if x == 0.0 || x == f64::INFINITY {
        return x;
    }
    // Start from halving the exponent (within a factor of 2), then Newton steps, each
    // doubling the correct bits: 6 reach f64 precision from any start within 2x.
    let mut y = f64::from_bits((x.to_bits() >> 1) + (1023u64 << 51));
    for _ in 0..6 {
        y = 0.5 * (y + x / y);
    }
    y
}

/// `sqrt(x)` in f32 (through f64, then rounded once).
pub fn sqrt32(x: f32) -> f32 {
    sqrt64(x as f64) as f32
}

/// Rounds to the nearest integer, ties to even (NaN and infinities unchanged).
pub fn round_ties_even(x: f32) -> f32 {
    // At or above 2^23 every f32 is an integer; below it, adding and removing 2^23 rounds in
    // the current (nearest-even) mode.
    if x.is_nan() || x.abs() >= 8_388_608.0 {
        return x;
    }
    let c = 8_388_608.0f32.copysign(x);
    ((x + c) - c).copysign(x)
}

/// `x^n` for `n >= 0` by squaring.
pub fn powi64(x: f64, n: u32) -> f64 {
    let (mut base, mut n, mut acc) = (x, n, 1.0);
    while n > 0 {
        if n & 1 == 1 {
            acc *= base;
        }
        base *= base;
        n >>= 1;
    }
    acc
}

/// Whether `x` is a whole number (finite).
pub fn is_whole(x: f32) -> bool {
    x.is_finite() && (x.abs() >= 8_388_608.0 || round_ties_even(x) == x)
}
