//! Normalisation: batch norm at inference (the affine map of the running statistics), its
//! training forms (batch statistics, normalising with them, the running-statistics update)
//! and backward passes (through the batch statistics, or the affine map), and LRN forward and
//! backward.

use super::check;
use crate::context::{Gen, at_tokens, kernel_layout};
use crate::error::CodegenError;
use crate::kplan::{KPlan, f32_lit, lit};
use crate::memory::Place;
use cnnc_ir::facts::param_name;
use cnnc_ir::{BatchNorm, Lrn, NodeId};
use proc_macro2::TokenStream;
use quote::quote;

/// The per-channel scale and shift of `(gamma, beta, mean, var)` into `cx.tmp`, then the
/// affine map from `x` into `y`.
fn affine_apply(c: usize, eps: f64, vectors: [TokenStream; 4], x: TokenStream, y: TokenStream) -> TokenStream {
    let [gamma, beta, mean, var] = vectors;
    let (c, eps) = (lit(c), f32_lit(eps as f32));
    let ok = check();
    quote! {
        let (scale, shift) = cx.tmp[..2 * #c].split_at_mut(#c);
        k::bn::affine(#gamma, #beta, #mean, #var, #eps, scale, shift) #ok;
        k::bn::apply(cx.par, cx.arena, #x, #y, scale, shift) #ok;
    }
}

pub fn batch_norm(g: &mut Gen<'_>, id: NodeId, bn: &BatchNorm) -> Result<Option<TokenStream>, CodegenError> {
    let node = &g.graph()[id];
    let x = g.mem.batched(node.inputs[0])?;
    let p = |s: &str| g.param(&param_name(&node.name, s));
    let vectors = [p("weight")?, p("bias")?, p("running_mean")?, p("running_var")?];
    g.tmp(2 * x.c, 0);
    let body = affine_apply(x.c, bn.eps, vectors, g.view(node.inputs[0])?, g.view(id)?);
    Ok(Some(quote! {
        #body
        Ok(())
    }))
}

/// The batch's mean and biased variance per channel, rows 0 and 1 of a whole-batch `[2, C]`.
pub fn stats(g: &mut Gen<'_>, id: NodeId) -> Result<Option<TokenStream>, CodegenError> {
    let node = &g.graph()[id];
    let x = g.mem.batched(node.inputs[0])?;
    let (xv, s) = (g.view(node.inputs[0])?, g.whole(id)?);
    let c = lit(x.c);
    let ok = check();
    Ok(Some(quote! {
        let (mean, var) = cx.whole[#s].split_at_mut(#c);
        k::bn::stats(cx.par, cx.arena, #xv, mean, var) #ok;
        Ok(())
    }))
}

pub fn normalize(g: &mut Gen<'_>, id: NodeId, bn: &BatchNorm) -> Result<Option<TokenStream>, CodegenError> {
    let node = &g.graph()[id];
    let x = g.mem.batched(node.inputs[0])?;
    let s = g.whole(node.inputs[1])?;
    let p = |suffix: &str| g.param(&param_name(&node.name, suffix));
    let c = lit(x.c);
    let vectors = [p("weight")?, p("bias")?, quote!(mean), quote!(var)];
    g.tmp(2 * x.c, 0);
    let body = affine_apply(x.c, bn.eps, vectors, g.view(node.inputs[0])?, g.view(id)?);
    Ok(Some(quote! {
        let (mean, var) = cx.whole[#s].split_at(#c);
        #body
        Ok(())
    }))
}

pub fn running_update(
    g: &mut Gen<'_>,
    id: NodeId,
    bn: &BatchNorm,
    spatial: usize,
) -> Result<Option<TokenStream>, CodegenError> {
    let node = &g.graph()[id];
    let s_id = node.inputs[0];
    let (_, len) = g.mem.whole(s_id)?;
    let s = g.whole(s_id)?;
    let (rm, rv) = (
        g.param_range(&param_name(&node.name, "running_mean"))?,
        g.param_range(&param_name(&node.name, "running_var"))?,
    );
    let values = if spatial == 1 {
        quote!(cx.n)
    } else {
        let s = lit(spatial);
        quote!(cx.n * #s)
    };
    let (c, momentum) = (lit(len / 2), f32_lit(bn.momentum as f32));
    let ok = check();
    Ok(Some(quote! {
        let (mean, var) = cx.whole[#s].split_at(#c);
        let [rm, rv] = super::disjoint_mut(cx.params, [#rm, #rv]) #ok;
        k::bn::update_running(rm, rv, mean, var, #momentum, #values) #ok;
        Ok(())
    }))
}

/// Batch norm backward: the input gradient (`gamma` false) or gamma's (true), through the
/// batch statistics or (`batch_stats` false) the affine map of the running ones. The kernels
/// compute both gradients (and beta's) at once; what this node does not return goes to
/// temporaries.
pub fn backward(
    g: &mut Gen<'_>,
    id: NodeId,
    bn: &BatchNorm,
    batch_stats: bool,
    gamma: bool,
) -> Result<Option<TokenStream>, CodegenError> {
    let node = &g.graph()[id];
    let p = |s: &str| g.param(&param_name(&node.name, s));
    let (weight, rm, rv) = (p("weight")?, p("running_mean")?, p("running_var")?);
    let eps = f32_lit(bn.eps as f32);
    let ok = check();
    if !gamma && !batch_stats {
        // `dx = gy * gamma / sqrt(running_var + eps)`: the affine map with zero mean and shift.
        let gy = g.mem.batched(node.inputs[0])?;
        let c = lit(gy.c);
        g.tmp(4 * gy.c, 0);
        let (gyv, dxv) = (g.view(node.inputs[0])?, g.view(id)?);
        return Ok(Some(quote! {
            let (scale, rest) = cx.tmp[..4 * #c].split_at_mut(#c);
            let (shift, zeros) = rest.split_at_mut(#c);
            zeros.fill(0.0);
            let zeros = &zeros[..#c];
            k::bn::affine(#weight, zeros, zeros, #rv, #eps, scale, shift) #ok;
            k::bn::apply(cx.par, cx.arena, #gyv, #dxv, scale, shift) #ok;
            Ok(())
        }));
    }
    // Operands: (x, stats, gy) with batch statistics, (x, gy) with the running ones.
    let x_id = node.inputs[0];
    let gy_id = if batch_stats { node.inputs[2] } else { node.inputs[1] };
    let x = g.mem.batched(x_id)?;
    let c = lit(x.c);
    let (xv, gyv) = (g.view(x_id)?, g.view(gy_id)?);
    // The kernel wants dx apart from x: a result the plan writes over x goes through a
    // temporary first.
    let (dx, copy_back) = if gamma {
        let (_, t) = g.temp(x.c, x.h, x.w, x.layout);
        (quote!(#t.view(cx.n)), quote!())
    } else {
        let y: Place = g.mem.batched(id)?;
        if (y.buf, y.off) == (x.buf, x.off) {
            let (_, t) = g.temp(x.c, x.h, x.w, x.layout);
            let yt = at_tokens(&y);
            (quote!(#t.view(cx.n)), quote!(k::eltwise::copy(cx.par, cx.arena, #t.view(cx.n), #yt.view(cx.n)) #ok;))
        } else {
            (g.view(id)?, quote!())
        }
    };
    let (grads, dgamma) = if gamma {
        g.tmp(x.c, 0);
        let w = g.whole(id)?;
        (quote!(let dbeta = &mut cx.tmp[..#c];), quote!(&mut cx.whole[#w]))
    } else {
        g.tmp(2 * x.c, 0);
        (quote!(let (dgamma, dbeta) = cx.tmp[..2 * #c].split_at_mut(#c);), quote!(dgamma))
    };
    let call = if batch_stats {
        quote!(k::bn::backward_training(cx.par, cx.arena, #xv, #gyv, #dx, #weight, #eps, #dgamma, dbeta) #ok;)
    } else {
        quote!(k::bn::backward_inference(cx.par, cx.arena, #xv, #gyv, #dx, #weight, #eps, (#rm, #rv), #dgamma, dbeta) #ok;)
    };
    Ok(Some(quote! {
        #grads
        #call
        #copy_back
        Ok(())
    }))
}

fn lrn_plan(g: &mut Gen<'_>, id: NodeId, x: &Place, lrn: &Lrn) -> Result<TokenStream, CodegenError> {
    let plan = KPlan::Lrn {
        c: x.c,
        hw: [x.h, x.w],
        layout: kernel_layout(x.layout),
        size: lrn.size,
        // The kernel divides alpha by the size (PyTorch's convention); the paper's alpha is
        // used as given.
        alpha: (lrn.sum_factor() * lrn.size as f64) as f32,
        beta: lrn.beta as f32,
        k: lrn.k as f32,
    };
    g.kernel_plan(id, "", plan)
}

pub fn lrn(g: &mut Gen<'_>, id: NodeId, lrn: &Lrn) -> Result<Option<TokenStream>, CodegenError> {
    let node = &g.graph()[id];
    let x = g.mem.batched(node.inputs[0])?;
    let plan = lrn_plan(g, id, &x, lrn)?;
    let (xv, yv) = (g.view(node.inputs[0])?, g.view(id)?);
    let ok = check();
    Ok(Some(quote! {
        k::lrn::forward(cx.par, #plan, cx.arena, #xv, #yv, cx.scratch) #ok;
        Ok(())
    }))
}

pub fn lrn_backward(g: &mut Gen<'_>, id: NodeId, lrn: &Lrn) -> Result<Option<TokenStream>, CodegenError> {
    let node = &g.graph()[id];
    let x = g.mem.batched(node.inputs[0])?;
    let plan = lrn_plan(g, id, &x, lrn)?;
    let (xv, gyv, dxv) = (g.view(node.inputs[0])?, g.view(node.inputs[1])?, g.view(id)?);
    let ok = check();
    Ok(Some(quote! {
        k::lrn::backward(cx.par, #plan, cx.arena, #xv, #gyv, #dxv, cx.scratch) #ok;
        Ok(())
    }))
}
