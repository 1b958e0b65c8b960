// Support code of `no_std` generated modules: the square root of the weight transforms from
// the kernels' core-only maths (Newton steps in f64: correctly rounded in practice, so the
// folded weights match `cnnc_runtime::fold_bn`'s after rounding to f32). Pasted verbatim.

// @item sqrt_f64 fmath
/// `sqrt` in f64 without std.
fn sqrt_f64(x: f64) -> f64 {
    self::cnnc_kernels::fmath::sqrt64(x)
}
