//! Convolutions and matrix products, forward: the blocked direct convolution (`OIhw16i16o`
//! weights, 1x1 products included), the plain-input convolution (`Oihw16o` weights, derived at
//! load), depthwise, the fallback for everything else (any groups or layouts, `oihw`
//! weights), and fully connected layers on vectors (`oi` weights), each with the fused
//! epilogue (bias, residual, activation) of the node.

use super::{act, check};
use crate::context::{Gen, Relayout, kernel_layout};
use crate::error::CodegenError;
use crate::kplan::{KPlan, epilogue};
use cnnc_ir::facts::param_name;
use cnnc_ir::{Conv, Epilogue, FusedBase, Layout, NodeId, WeightLayout, Window};
use cnnc_kernels::conv::{ConvShape, Epilogue as KEpilogue};
use proc_macro2::TokenStream;
use quote::quote;

/// A 1x1 product as a convolution (stride 1, no padding, one group).
pub fn gemm_conv(out: usize, bias: bool) -> Conv {
    let window = Window { kernel: [1, 1], stride: [1, 1], pad: [0, 0], dilation: [1, 1], ceil_mode: false };
    Conv { out_channels: out, window, groups: 1, bias }
}

/// The kernels' shape of convolution `conv` on an input of `c x h x w` (batch left at 1).
pub fn conv_shape(conv: &Conv, c: usize, h: usize, w: usize) -> ConvShape {
    let win = &conv.window;
    ConvShape {
        n: 1,
        ic: c,
        ih: h,
        iw: w,
        oc: conv.out_channels,
        kh: win.kernel[0],
        kw: win.kernel[1],
        stride: win.stride,
        pad: win.pad,
        dilation: win.dilation,
        groups: conv.groups,
    }
}

/// Which kernel runs a convolution.
enum Kernel {
    Blocked,
    /// Winograd with output tiles of this size.
    Winograd(usize),
    Plain,
    Depthwise,
    Generic,
}

pub fn forward(
    g: &mut Gen<'_>,
    id: NodeId,
    base: FusedBase,
    epi: Epilogue,
) -> Result<Option<TokenStream>, CodegenError> {
    let node = &g.graph()[id];
    let x = g.mem.batched(node.inputs[0])?;
    let (conv, on_vector) = match base {
        FusedBase::Conv(conv) => (conv, false),
        FusedBase::Gemm(gemm) => (gemm_conv(gemm.out, gemm.bias), node.shape.rank() == 1),
    };
    let residual = if epi.residual { Some(node.inputs[1]) } else { None };
    let w_name = param_name(&node.name, "weight");
    let b_name = param_name(&node.name, "bias");
    let bias = if conv.bias { Some(g.param(&b_name)?) } else { None };
    if on_vector {
        return fc(g, id, &w_name, bias, residual, act(epi.activation)).map(Some);
    }
    let shape = conv_shape(&conv, x.c, x.h, x.w);
    let kepi = KEpilogue { bias: conv.bias, scale_shift: false, residual: epi.residual, act: act(epi.activation) };
    let layout = g.param_spec(&w_name)?.layout;
    let blocked = x.layout == Layout::Blocked16;
    let y = g.mem.batched(id)?;
    let plan_ok = |p: KPlan| p.check(1, cnnc_kernels::simd::Cpu::PORTABLE, 1).is_ok();
    // Winograd for inference where it pays (a training step would transform the weights
    // again before every step).
    let winograd = cnnc_kernels::winograd::preferred(&shape)
        .filter(|&m| g.winograd && !g.training && plan_ok(KPlan::Winograd { shape, m, epi: kepi }));
    let kernel = match (layout, winograd) {
        (Some(WeightLayout::OIhw16i16o), Some(m)) if blocked => Kernel::Winograd(m),
        _ => match layout {
            Some(WeightLayout::OIhw16i16o | WeightLayout::GOIhw16i16o | WeightLayout::OI16i16o)
                if blocked && plan_ok(KPlan::Conv { shape, epi: kepi }) =>
            {
                Kernel::Blocked
            }
            Some(WeightLayout::Goihw16g)
                if blocked
                    && conv.groups == x.c
                    && conv.out_channels == x.c
                    && plan_ok(KPlan::Depthwise { shape, epi: kepi }) =>
            {
                Kernel::Depthwise
            }
            _ if !blocked
                && conv.groups == 1
                && plan_ok(KPlan::PlainConv { shape, epi: kepi, out: kernel_layout(y.layout) }) =>
            {
                Kernel::Plain
            }
            _ => Kernel::Generic,
        },
    };
    let xv = g.view(node.inputs[0])?;
    let yv = g.view(id)?;
    let rv = match residual {
        Some(r) => {
            let v = g.view(r)?;
            quote!(Some(#v))
        }
        None => quote!(None),
    };
    let bias = match bias {
        Some(b) => quote!(Some(#b)),
        None => quote!(None),
    };
    let ok = check();
    let call = |weights: TokenStream, f: TokenStream, plan: TokenStream| {
        quote! {
            let io = k::conv::ConvIo {
                x: #xv,
                y: #yv,
                residual: #rv,
                weights: #weights,
                bias: #bias,
                scale: None,
                shift: None,
            };
            #f(cx.par, #plan, cx.arena, &io, cx.scratch) #ok;
            Ok(())
        }
    };
    Ok(Some(match kernel {
        Kernel::Blocked => {
            let plan = g.kernel_plan(id, "", KPlan::Conv { shape, epi: kepi })?;
            call(g.param(&w_name)?, quote!(k::conv_fwd::forward), plan)
        }
        Kernel::Winograd(m) => {
            let plan = g.kernel_plan(id, "", KPlan::Winograd { shape, m, epi: kepi })?;
            let w = g.derived(&w_name, Relayout::Winograd(m))?;
            call(w, quote!(k::winograd::forward), plan)
        }
        Kernel::Depthwise => {
            let plan = g.kernel_plan(id, "", KPlan::Depthwise { shape, epi: kepi })?;
            call(g.param(&w_name)?, quote!(k::depthwise::forward), plan)
        }
        Kernel::Plain => {
            // Plain output as the plan says, or blocked in a fused stem.
            let out = kernel_layout(y.layout);
            let plan = g.kernel_plan(id, "", KPlan::PlainConv { shape, epi: kepi, out })?;
            let w = g.derived(&w_name, Relayout::PlainInput)?;
            call(w, quote!(k::conv_plain::forward), plan)
        }
        Kernel::Generic => {
            let w = match layout.is_none_or(WeightLayout::is_plain) {
                true => g.param(&w_name)?,
                false => g.derived(&w_name, Relayout::Logical)?,
            };
            let s = crate::kplan::conv_shape(&shape);
            let e = epilogue(&kepi);
            quote! {
                let n = cx.n;
                let shape = #s;
                k::conv_generic::forward(cx.par, cx.cpu, &shape, &#e, cx.arena, #xv, #yv, #rv, #w, (#bias, None)) #ok;
                Ok(())
            }
        }
    }))
}

/// A product on vectors: the fc kernel, with the input gathered and the output staged when
/// their images are not contiguous or a residual is added (`fc_forward` in the support code).
fn fc(
    g: &mut Gen<'_>,
    id: NodeId,
    w_name: &str,
    bias: Option<TokenStream>,
    residual: Option<NodeId>,
    activation: cnnc_kernels::act::Act,
) -> Result<TokenStream, CodegenError> {
    let node = &g.graph()[id];
    let x = g.mem.batched(node.inputs[0])?;
    let y = g.mem.batched(id)?;
    let has_bias = bias.is_some();
    // With a residual the activation comes after the sum, outside the kernel.
    let plan_act = if residual.is_some() { cnnc_kernels::act::Act::NONE } else { activation };
    let plan = g.kernel_plan(id, "", KPlan::Fc { i: x.c * x.h * x.w, o: y.c, bias: has_bias, act: plan_act })?;
    let (_, sx) = g.temp(x.c * x.h * x.w, 1, 1, Layout::Plain);
    let (_, sy) = g.temp(y.c, 1, 1, Layout::Plain);
    let xp = g.place(node.inputs[0])?;
    let yp = g.place(id)?;
    let w = g.param(w_name)?;
    let rp = match residual {
        Some(r) => {
            let p = g.place(r)?;
            quote!(Some(#p))
        }
        None => quote!(None),
    };
    let bias = bias.map_or(quote!(None), |b| quote!(Some(#b)));
    let a = crate::kplan::act(&activation);
    let ok = check();
    Ok(quote! {
        let flat = #xp.flat();
        super::fc_forward(cx.par, cx.cpu, #plan, cx.arena, cx.n, flat, #yp, #rp, #a, #w, #bias, (#sx, #sy)) #ok;
        Ok(())
    })
}
