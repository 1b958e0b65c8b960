//! The kernel plans a generated module builds per batch size, described once here: the same
//! description is checked against `cnnc-kernels` while generating (so a layer the kernels refuse
//! fails at generation, not at run time, and the no-std workspace size is exact) and written
//! out as the constructor call the module runs.

use cnnc_kernels::act::{Act, ActKind};
use cnnc_kernels::conv::{ConvPlan, ConvShape, Epilogue};
use cnnc_kernels::conv_bwd_data::{BwdDataOptions, BwdDataPlan};
use cnnc_kernels::conv_bwd_weights::BwdWeightsPlan;
use cnnc_kernels::conv_plain::PlainConvPlan;
use cnnc_kernels::depthwise::DepthwisePlan;
use cnnc_kernels::error::KernelError;
use cnnc_kernels::fc::FcPlan;
use cnnc_kernels::lrn::LrnPlan;
use cnnc_kernels::pool::{PoolKind, PoolPlan, PoolWindow};
use cnnc_kernels::simd::Cpu;
use cnnc_kernels::view::Layout;
use cnnc_kernels::winograd::WinoPlan;
use proc_macro2::{Literal, TokenStream};
use quote::quote;

/// A kernel plan, without its batch size.
#[derive(Clone, Copy, Debug)]
pub enum KPlan {
    Conv { shape: ConvShape, epi: Epilogue },
    Winograd { shape: ConvShape, m: usize, epi: Epilogue },
    PlainConv { shape: ConvShape, epi: Epilogue, out: Layout },
    Depthwise { shape: ConvShape, epi: Epilogue },
    Pool { c: usize, hw: [usize; 2], kind: PoolKind, win: PoolWindow, layout: Layout },
    Fc { i: usize, o: usize, bias: bool, act: Act },
    Lrn { c: usize, hw: [usize; 2], layout: Layout, size: usize, alpha: f32, beta: f32, k: f32 },
    BwdData { shape: ConvShape, options: BwdDataOptions },
    BwdWeights { shape: ConvShape, bias: bool, accumulate: bool },
}

/// Scratch floats the plan needs per thread, for `n` images (`None`: the plan fails).
impl KPlan {
    pub fn check(&self, n: usize, cpu: Cpu, threads: usize) -> Result<usize, KernelError> {
        let with_n = |s: &ConvShape| ConvShape { n, ..*s };
        Ok(match *self {
            KPlan::Conv { shape, epi } => ConvPlan::new(with_n(&shape), epi, cpu, threads)?.scratch_len(threads),
            KPlan::Winograd { shape, m, epi } => {
                WinoPlan::new(with_n(&shape), m, epi, cpu, threads)?.scratch_len(threads)
            }
            KPlan::PlainConv { shape, epi, out } => {
                PlainConvPlan::new(with_n(&shape), epi, out, cpu, threads)?.scratch_len(threads)
            }
            KPlan::Depthwise { shape, epi } => {
                DepthwisePlan::new(with_n(&shape), epi, cpu, threads)?.scratch_len(threads)
            }
            KPlan::Pool { c, hw, kind, win, layout } => {
                PoolPlan::new(n, c, hw, kind, win, layout, cpu)?;
                0
            }
            KPlan::Fc { i, o, bias, act } => FcPlan::new(n, i, o, bias, act, cpu, threads)?.backward_scratch_len(),
            KPlan::Lrn { c, hw, layout, size, alpha, beta, k } => {
                LrnPlan::new(n, c, hw, layout, size, alpha, beta, k, cpu, threads)?.scratch_len(threads)
            }
            KPlan::BwdData { shape, options } => {
                BwdDataPlan::new(with_n(&shape), options, cpu, threads)?.scratch_len(threads)
            }
            KPlan::BwdWeights { shape, bias, accumulate } => {
                BwdWeightsPlan::new(with_n(&shape), bias, accumulate, cpu)?;
                0
            }
        })
    }

    /// The plan's type.
    pub fn ty(&self) -> TokenStream {
        match self {
            KPlan::Conv { .. } => quote!(k::conv::ConvPlan),
            KPlan::Winograd { .. } => quote!(k::winograd::WinoPlan),
            KPlan::PlainConv { .. } => quote!(k::conv_plain::PlainConvPlan),
            KPlan::Depthwise { .. } => quote!(k::depthwise::DepthwisePlan),
            KPlan::Pool { .. } => quote!(k::pool::PoolPlan),
            KPlan::Fc { .. } => quote!(k::fc::FcPlan),
            KPlan::Lrn { .. } => quote!(k::lrn::LrnPlan),
            KPlan::BwdData { .. } => quote!(k::conv_bwd_data::BwdDataPlan),
            KPlan::BwdWeights { .. } => quote!(k::conv_bwd_weights::BwdWeightsPlan),
        }
    }

    /// The constructor call (an expression of `n`, `cpu` and `threads`, a `Result`).
    pub fn constructor(&self) -> TokenStream {
        match self {
            KPlan::Conv { shape, epi } => {
                let (s, e) = (conv_shape(shape), epilogue(epi));
                quote!(k::conv::ConvPlan::new(#s, #e, cpu, threads))
            }
            KPlan::Winograd { shape, m, epi } => {
                let (s, m, e) = (conv_shape(shape), lit(*m), epilogue(epi));
                quote!(k::winograd::WinoPlan::new(#s, #m, #e, cpu, threads))
            }
            KPlan::PlainConv { shape, epi, out } => {
                let (s, e, l) = (conv_shape(shape), epilogue(epi), layout(*out));
                quote!(k::conv_plain::PlainConvPlan::new(#s, #e, #l, cpu, threads))
            }
            KPlan::Depthwise { shape, epi } => {
                let (s, e) = (conv_shape(shape), epilogue(epi));
                quote!(k::depthwise::DepthwisePlan::new(#s, #e, cpu, threads))
            }
            KPlan::Pool { c, hw: [h, w], kind, win, layout: l } => {
                let (c, h, w) = (lit(*c), lit(*h), lit(*w));
                let (kind, win, l) = (pool_kind(*kind), pool_window(win), layout(*l));
                quote!(k::pool::PoolPlan::new(n, #c, [#h, #w], #kind, #win, #l, cpu))
            }
            KPlan::Fc { i, o, bias, act: a } => {
                let (i, o, a) = (lit(*i), lit(*o), act(a));
                quote!(k::fc::FcPlan::new(n, #i, #o, #bias, #a, cpu, threads))
            }
            KPlan::Lrn { c, hw: [h, w], layout: l, size, alpha, beta, k } => {
                let (c, h, w, size) = (lit(*c), lit(*h), lit(*w), lit(*size));
                let (l, alpha, beta, k) = (layout(*l), f32_lit(*alpha), f32_lit(*beta), f32_lit(*k));
                quote!(k::lrn::LrnPlan::new(n, #c, [#h, #w], #l, #size, #alpha, #beta, #k, cpu, threads))
            }
            KPlan::BwdData { shape, options } => {
                let s = conv_shape(shape);
                let (relu, acc) = (options.relu_mask, options.accumulate);
                quote!(k::conv_bwd_data::BwdDataPlan::new(
                    #s,
                    k::conv_bwd_data::BwdDataOptions { relu_mask: #relu, accumulate: #acc },
                    cpu,
                    threads
                ))
            }
            KPlan::BwdWeights { shape, bias, accumulate } => {
                let s = conv_shape(shape);
                quote!(k::conv_bwd_weights::BwdWeightsPlan::new(#s, #bias, #accumulate, cpu))
            }
        }
    }

    /// The scratch floats it needs on `threads` threads, given the plan as `p`.
    pub fn scratch(&self, p: &TokenStream) -> Option<TokenStream> {
        match self {
            KPlan::Conv { .. }
            | KPlan::Winograd { .. }
            | KPlan::PlainConv { .. }
            | KPlan::Depthwise { .. }
            | KPlan::Lrn { .. }
            | KPlan::BwdData { .. } => Some(quote!(#p.scratch_len(threads))),
            KPlan::Fc { .. } => Some(quote!(#p.backward_scratch_len())),
            KPlan::Pool { .. } | KPlan::BwdWeights { .. } => None,
        }
    }
}

/// An `f32` literal (or the named constant for a non-finite value).
pub fn f32_lit(v: f32) -> TokenStream {
    if v.is_finite() {
        let l = Literal::f32_unsuffixed(v);
        quote!(#l)
    } else if v.is_nan() {
        quote!(::core::f32::NAN)
    } else if v > 0.0 {
        quote!(::core::f32::INFINITY)
    } else {
        quote!(::core::f32::NEG_INFINITY)
    }
}

/// An `f64` literal (or the named constant for a non-finite value).
pub fn f64_lit(v: f64) -> TokenStream {
    if v.is_finite() {
        let l = Literal::f64_unsuffixed(v);
        quote!(#l)
    } else if v.is_nan() {
        quote!(::core::f64::NAN)
    } else if v > 0.0 {
        quote!(::core::f64::INFINITY)
    } else {
        quote!(::core::f64::NEG_INFINITY)
    }
}

/// An unsuffixed integer literal.
pub fn lit(v: usize) -> Literal {
    Literal::usize_unsuffixed(v)
}

pub fn conv_shape(s: &ConvShape) -> TokenStream {
    let [ic, ih, iw, oc, kh, kw, sh, sw, ph, pw, dh, dw, groups] = [
        s.ic,
        s.ih,
        s.iw,
        s.oc,
        s.kh,
        s.kw,
        s.stride[0],
        s.stride[1],
        s.pad[0],
        s.pad[1],
        s.dilation[0],
        s.dilation[1],
        s.groups,
    ]
    .map(lit);
    quote!(k::conv::ConvShape {
        n,
        ic: #ic,
        ih: #ih,
        iw: #iw,
        oc: #oc,
        kh: #kh,
        kw: #kw,
        stride: [#sh, #sw],
        pad: [#ph, #pw],
        dilation: [#dh, #dw],
        groups: #groups,
    })
}

pub fn epilogue(e: &Epilogue) -> TokenStream {
    let (bias, ss, res, a) = (e.bias, e.scale_shift, e.residual, act(&e.act));
    quote!(k::conv::Epilogue { bias: #bias, scale_shift: #ss, residual: #res, act: #a })
}

pub fn act(a: &Act) -> TokenStream {
    let kind = match a.kind {
        ActKind::None => return quote!(k::act::Act::NONE),
        ActKind::Relu => return quote!(k::act::Act::RELU),
        ActKind::LeakyRelu => quote!(LeakyRelu),
        ActKind::Elu => quote!(Elu),
        ActKind::Selu => quote!(Selu),
        ActKind::Sigmoid => quote!(Sigmoid),
        ActKind::Tanh => quote!(Tanh),
        ActKind::HardTanh => quote!(HardTanh),
        ActKind::Softsign => quote!(Softsign),
        ActKind::Softplus => quote!(Softplus),
    };
    let (x, y) = (f32_lit(a.a), f32_lit(a.b));
    quote!(k::act::Act { kind: k::act::ActKind::#kind, a: #x, b: #y })
}

pub fn layout(l: Layout) -> TokenStream {
    match l {
        Layout::Nchw => quote!(k::view::Layout::Nchw),
        Layout::NChw16c => quote!(k::view::Layout::NChw16c),
    }
}

pub fn pool_kind(kind: PoolKind) -> TokenStream {
    match kind {
        PoolKind::Max => quote!(k::pool::PoolKind::Max),
        PoolKind::Avg => quote!(k::pool::PoolKind::Avg),
        PoolKind::AvgExcludePad => quote!(k::pool::PoolKind::AvgExcludePad),
        PoolKind::L2 => quote!(k::pool::PoolKind::L2),
    }
}

pub fn pool_window(w: &PoolWindow) -> TokenStream {
    let (ceil_mode, adaptive) = (w.ceil_mode, w.adaptive);
    let [kh, kw, sh, sw, ph, pw, dh, dw] =
        [w.kernel[0], w.kernel[1], w.stride[0], w.stride[1], w.pad[0], w.pad[1], w.dilation[0], w.dilation[1]].map(lit);
    quote!(k::pool::PoolWindow {
        kernel: [#kh, #kw],
        stride: [#sh, #sw],
        pad: [#ph, #pw],
        dilation: [#dh, #dw],
        ceil_mode: #ceil_mode,
        adaptive: #adaptive,
    })
}
