//! Backward passes of convolutions and matrix products: the input gradient (blocked
//! backward-data on rotated weights derived from the stored ones, with the ReLU mask fused;
//! the fallback kernel otherwise, other masks applied after it) and the weight gradient
//! (blocked backward-weights straight into the packed layout; the fallback, or the fc kernel
//! on vectors), and the bias gradient (channel sums).

use super::check;
use super::conv::{conv_shape, gemm_conv};
use crate::context::{Gen, Relayout};
use crate::error::CodegenError;
use crate::kplan::{KPlan, lit};
use crate::memory::Place;
use cnnc_ir::facts::param_name;
use cnnc_ir::{Activation, Conv, Gemm, Layout, NodeId, WeightLayout};
use cnnc_kernels::conv_bwd_data::BwdDataOptions;
use proc_macro2::TokenStream;
use quote::quote;

/// The stored weight, or its checkpoint-layout copy when it is packed.
fn logical_weight(g: &mut Gen<'_>, name: &str) -> Result<TokenStream, CodegenError> {
    match g.param_spec(name)?.layout.is_none_or(WeightLayout::is_plain) {
        true => g.param(name),
        false => g.derived(name, Relayout::Logical),
    }
}

fn blocked_weight(layout: Option<WeightLayout>) -> bool {
    matches!(layout, Some(WeightLayout::OIhw16i16o | WeightLayout::GOIhw16i16o | WeightLayout::OI16i16o))
}

/// `dx` of a convolution from `gy` (`input` is `x`'s shape), then the mask of the activation
/// before the convolution from its output (the second operand).
fn data(
    g: &mut Gen<'_>,
    id: NodeId,
    conv: &Conv,
    input: [usize; 3],
    mask: Option<Activation>,
) -> Result<Option<TokenStream>, CodegenError> {
    let node = &g.graph()[id];
    let gy = g.mem.batched(node.inputs[0])?;
    let shape = conv_shape(conv, input[0], input[1], input[2]);
    let w_name = param_name(&node.name, "weight");
    let layout = g.param_spec(&w_name)?.layout;
    let (gyv, dxv) = (g.view(node.inputs[0])?, g.view(id)?);
    let ok = check();
    // The kernels' ReLU mask multiplies `gy` by the conv's own output's mask (a ReLU after
    // the convolution); the IR's mask is the derivative of an activation *before* it, applied
    // to `dx` from that activation's output: done after the pass, elementwise.
    let options = BwdDataOptions { relu_mask: false, accumulate: false };
    let plan = KPlan::BwdData { shape, options };
    let blocked = gy.layout == Layout::Blocked16
        && blocked_weight(layout)
        && plan.check(1, cnnc_kernels::simd::Cpu::PORTABLE, 1).is_ok();
    let mut calls = Vec::new();
    let after = if blocked {
        let plan = g.kernel_plan(id, "", plan)?;
        let w = g.derived(&w_name, Relayout::BackwardData)?;
        calls.push(quote! {
            let io = k::conv_bwd_data::BwdDataIo { gy: #gyv, y: None, dx: #dxv, weights: #w };
            k::conv_bwd_data::backward_data(cx.par, #plan, cx.arena, &io, cx.scratch) #ok;
        });
        mask
    } else {
        let w = logical_weight(g, &w_name)?;
        let s = crate::kplan::conv_shape(&shape);
        calls.push(quote! {
            let n = cx.n;
            let shape = #s;
            k::conv_generic::backward_data(cx.par, &shape, cx.arena, #gyv, #dxv, #w, false) #ok;
        });
        mask
    };
    if let Some(a) = after {
        let a = crate::kplan::act(&super::act(Some(a)));
        let yv = g.view(node.inputs[1])?;
        calls.push(quote!(k::eltwise::activation_backward(cx.par, cx.cpu, cx.arena, #a, true, #yv, #dxv, #dxv) #ok;));
    }
    Ok(Some(quote! {
        #(#calls)*
        Ok(())
    }))
}

pub fn conv_data(
    g: &mut Gen<'_>,
    id: NodeId,
    conv: &Conv,
    input: &[usize; 3],
    mask: Option<Activation>,
) -> Result<Option<TokenStream>, CodegenError> {
    data(g, id, conv, *input, mask)
}

/// The weight gradient of a convolution from `(x, gy)`, in the weight's stored layout.
fn weight(g: &mut Gen<'_>, id: NodeId, conv: &Conv) -> Result<Option<TokenStream>, CodegenError> {
    let node = &g.graph()[id];
    let x = g.mem.batched(node.inputs[0])?;
    let shape = conv_shape(conv, x.c, x.h, x.w);
    let w_name = param_name(&node.name, "weight");
    let slot = g.param_slot(&w_name)?;
    let layout = g.params[slot].layout;
    let (xv, gyv) = (g.view(node.inputs[0])?, g.view(node.inputs[1])?);
    let dw = g.whole(id)?;
    let ok = check();
    let plan = KPlan::BwdWeights { shape, bias: false, accumulate: false };
    if x.layout == Layout::Blocked16
        && blocked_weight(layout)
        && plan.check(1, cnnc_kernels::simd::Cpu::PORTABLE, 1).is_ok()
    {
        let plan = g.kernel_plan(id, "", plan)?;
        return Ok(Some(quote! {
            let io = k::conv_bwd_weights::BwdWeightsIo { x: #xv, gy: #gyv, relu: None };
            k::conv_bwd_weights::backward_weights(cx.par, #plan, cx.arena, &io, &mut cx.whole[#dw], None) #ok;
            Ok(())
        }));
    }
    let s = crate::kplan::conv_shape(&shape);
    if layout.is_none_or(WeightLayout::is_plain) {
        return Ok(Some(quote! {
            let n = cx.n;
            let shape = #s;
            k::conv_generic::backward_weights(cx.par, &shape, cx.arena, #xv, #gyv, &mut cx.whole[#dw], None, false) #ok;
            Ok(())
        }));
    }
    // A packed weight the fast kernel cannot produce: the gradient in the checkpoint layout,
    // then packed like the weight.
    let len = g.params[slot].dims.iter().product::<usize>();
    g.tmp(len, 0);
    let (slot, len) = (lit(slot), lit(len));
    Ok(Some(quote! {
        let n = cx.n;
        let shape = #s;
        let logical = &mut cx.tmp[..#len];
        k::conv_generic::backward_weights(cx.par, &shape, cx.arena, #xv, #gyv, logical, None, false) #ok;
        super::pack_param(&PARAMS[#slot], logical, &mut cx.whole[#dw]);
        Ok(())
    }))
}

pub fn conv_weight(g: &mut Gen<'_>, id: NodeId, conv: &Conv) -> Result<Option<TokenStream>, CodegenError> {
    weight(g, id, conv)
}

/// `dx` of a matrix product: a 1x1 convolution's on maps, the fallback on vectors (`[F]` as
/// `F x 1 x 1`).
pub fn gemm_data(g: &mut Gen<'_>, id: NodeId, gemm: &Gemm, input: usize) -> Result<Option<TokenStream>, CodegenError> {
    let gy: Place = g.mem.batched(g.graph()[id].inputs[0])?;
    data(g, id, &gemm_conv(gemm.out, false), [input, gy.h, gy.w], None)
}

/// The weight gradient of a matrix product: a 1x1 convolution's on maps, the fc kernel's on
/// vectors.
pub fn gemm_weight(g: &mut Gen<'_>, id: NodeId, gemm: &Gemm) -> Result<Option<TokenStream>, CodegenError> {
    let node = &g.graph()[id];
    if node.shape.rank() == 4 {
        return weight(g, id, &gemm_conv(gemm.out, false));
    }
    let x = g.mem.batched(node.inputs[0])?;
    let i = x.c * x.h * x.w;
    let plan = g.kernel_plan(id, "", KPlan::Fc { i, o: gemm.out, bias: false, act: cnnc_kernels::act::Act::NONE })?;
    let (xp, gyp) = (g.place(node.inputs[0])?, g.place(node.inputs[1])?);
    let dw = g.whole(id)?;
    let w = g.param(&param_name(&node.name, "weight"))?;
    g.tmp(0, i + gemm.out);
    let ok = check();
    Ok(Some(quote! {
        super::fc_backward_weights(cx.par, #plan, cx.arena, cx.n, #xp.flat(), #gyp, #w, &mut cx.whole[#dw], cx.tmp, cx.scratch) #ok;
        Ok(())
    }))
}

pub fn bias_grad(g: &mut Gen<'_>, id: NodeId) -> Result<Option<TokenStream>, CodegenError> {
    let node = &g.graph()[id];
    let gyp = g.place(node.inputs[0])?;
    let db = g.whole(id)?;
    Ok(Some(quote! {
        super::channel_sums(cx.arena, cx.n, #gyp, &mut cx.whole[#db]);
        Ok(())
    }))
}
