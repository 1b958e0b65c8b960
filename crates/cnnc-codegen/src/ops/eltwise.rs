//! Elementwise and data-movement ops: activations (forward and backward), PReLU, softmax,
//! sums, copies (identities, flatten, reshape and channel slices that the plan could not make
//! views, concatenation operands not written in place), reorders between `nchw` and
//! `nChw16c`, dropout masks and products.

use super::{act, check};
use crate::context::{Gen, at_tokens};
use crate::error::CodegenError;
use crate::kplan::f64_lit;
use crate::memory::Place;
use cnnc_ir::facts::param_name;
use cnnc_ir::{Activation, Layout, NodeId, Op, SavedSide, TrainOp};
use proc_macro2::TokenStream;
use quote::quote;

/// Whether two places are the very same memory (an in-place result, or a view).
fn same(a: &Place, b: &Place) -> bool {
    (a.buf, a.off, a.stride, a.layout) == (b.buf, b.off, b.stride, b.layout)
}

/// Floats from an image's start to channel `c0` (whole blocks in `nChw16c`).
fn channel_offset(p: &Place, c0: usize) -> Result<usize, CodegenError> {
    match p.layout {
        Layout::Plain => Ok(c0 * p.h * p.w),
        Layout::Blocked16 if c0.is_multiple_of(16) => Ok(c0 / 16 * p.h * p.w * 16),
        Layout::Blocked16 => Err(CodegenError::Plan(format!("channel {c0} of a blocked value is not a block start"))),
    }
}

/// Channels `c0 .. c0 + len` of a value.
fn channels(p: &Place, c0: usize, len: usize) -> Result<Place, CodegenError> {
    Ok(Place { off: p.off + channel_offset(p, c0)?, c: len, ..*p })
}

fn copy_call(src: &Place, dst: &Place) -> TokenStream {
    let (s, d) = (at_tokens(src), at_tokens(dst));
    let ok = check();
    quote!(k::eltwise::copy(cx.par, cx.arena, #s.view(cx.n), #d.view(cx.n)) #ok;)
}

/// The identity ops (inference dropout, flatten, reshape, channel slices): nothing when the
/// plan made the value a view or wrote it in place, else a copy.
pub fn copy(g: &mut Gen<'_>, id: NodeId) -> Result<Option<TokenStream>, CodegenError> {
    let node = &g.graph()[id];
    let x = g.mem.batched(node.inputs[0])?;
    let y = g.mem.batched(id)?;
    let flat = |p: &Place| p.with_dims(p.c * p.h * p.w, 1, 1);
    let (src, dst) = if let Op::Train(TrainOp::Slice { start, len }) = &node.op {
        (channels(&x, *start, *len)?, y)
    } else if matches!(node.op, Op::Flatten | Op::Train(TrainOp::Reshape(_))) {
        // A plain map and its flattening (or any reshape) share their bytes.
        (flat(&x), flat(&y))
    } else {
        (x, y)
    };
    if same(&src, &dst) {
        return Ok(None);
    }
    let call = copy_call(&src, &dst);
    Ok(Some(quote! {
        #call
        Ok(())
    }))
}

pub fn concat(g: &mut Gen<'_>, id: NodeId) -> Result<Option<TokenStream>, CodegenError> {
    let node = &g.graph()[id];
    let y = g.mem.batched(id)?;
    let mut calls = Vec::new();
    let mut c0 = 0;
    for &input in &node.inputs {
        let x = g.mem.batched(input)?;
        let dst = channels(&y, c0, x.c)?;
        if !same(&x, &dst) {
            calls.push(copy_call(&x, &dst));
        }
        c0 += x.c;
    }
    if calls.is_empty() {
        return Ok(None);
    }
    Ok(Some(quote! {
        #(#calls)*
        Ok(())
    }))
}

pub fn add(g: &mut Gen<'_>, id: NodeId) -> Result<Option<TokenStream>, CodegenError> {
    let node = &g.graph()[id];
    let y = g.mem.batched(id)?;
    let mut operands: Vec<Place> = node.inputs.iter().map(|&i| g.mem.batched(i)).collect::<Result<_, _>>()?;
    // An operand the sum is written over is read first, before the output overwrites it.
    if let Some(k) = operands.iter().position(|p| same(p, &y)) {
        operands.swap(0, k);
    }
    let yt = at_tokens(&y);
    let ok = check();
    let Some((first, rest)) = operands.split_first() else {
        return Err(CodegenError::Plan(format!("{id} adds nothing")));
    };
    let mut calls = Vec::new();
    let mut acc = *first;
    if rest.is_empty() && !same(first, &y) {
        calls.push(copy_call(first, &y));
    }
    for b in rest {
        let (a, bt) = (at_tokens(&acc), at_tokens(b));
        calls.push(
            quote!(k::eltwise::add(cx.par, cx.cpu, cx.arena, #a.view(cx.n), #bt.view(cx.n), #yt.view(cx.n)) #ok;),
        );
        acc = y;
    }
    Ok(Some(quote! {
        #(#calls)*
        Ok(())
    }))
}

pub fn reorder(g: &mut Gen<'_>, id: NodeId) -> Result<Option<TokenStream>, CodegenError> {
    let node = &g.graph()[id];
    let (x, y) = (g.mem.batched(node.inputs[0])?, g.mem.batched(id)?);
    // Same layouts: a fused stem already computed the value blocked.
    if x.layout == y.layout {
        return copy(g, id);
    }
    let (xv, yv) = (g.view(node.inputs[0])?, g.view(id)?);
    let ok = check();
    Ok(Some(quote! {
        k::reorder::reorder(cx.par, cx.arena, #xv, #yv) #ok;
        Ok(())
    }))
}

pub fn activation(g: &mut Gen<'_>, id: NodeId, a: Activation) -> Result<Option<TokenStream>, CodegenError> {
    let node = &g.graph()[id];
    let (xv, yv) = (g.view(node.inputs[0])?, g.view(id)?);
    let a = crate::kplan::act(&act(Some(a)));
    let ok = check();
    Ok(Some(quote! {
        k::eltwise::activation(cx.par, cx.cpu, cx.arena, #a, #xv, #yv) #ok;
        Ok(())
    }))
}

pub fn prelu(g: &mut Gen<'_>, id: NodeId) -> Result<Option<TokenStream>, CodegenError> {
    let node = &g.graph()[id];
    let (xv, yv) = (g.view(node.inputs[0])?, g.view(id)?);
    let slope = g.param(&param_name(&node.name, "weight"))?;
    let ok = check();
    Ok(Some(quote! {
        k::eltwise::prelu(cx.par, cx.arena, #slope, #xv, #yv) #ok;
        Ok(())
    }))
}

pub fn softmax(g: &mut Gen<'_>, id: NodeId) -> Result<Option<TokenStream>, CodegenError> {
    let node = &g.graph()[id];
    let (xp, yp) = (g.place(node.inputs[0])?, g.place(id)?);
    let ok = check();
    Ok(Some(quote! {
        super::softmax_forward(cx.par, cx.cpu, cx.arena, cx.n, #xp, #yp) #ok;
        Ok(())
    }))
}

pub fn activation_backward(
    g: &mut Gen<'_>,
    id: NodeId,
    a: Activation,
    from: SavedSide,
) -> Result<Option<TokenStream>, CodegenError> {
    let node = &g.graph()[id];
    let (src, gy, dx) = (g.view(node.inputs[0])?, g.view(node.inputs[1])?, g.view(id)?);
    let a = crate::kplan::act(&act(Some(a)));
    let from_output = from == SavedSide::Output;
    let ok = check();
    Ok(Some(quote! {
        k::eltwise::activation_backward(cx.par, cx.cpu, cx.arena, #a, #from_output, #src, #gy, #dx) #ok;
        Ok(())
    }))
}

/// PReLU backward from `(x, gy)`: the input gradient (`weight` false) or the slope's (true);
/// the kernel computes both, the other goes to a temporary.
pub fn prelu_backward(g: &mut Gen<'_>, id: NodeId, weight: bool) -> Result<Option<TokenStream>, CodegenError> {
    let node = &g.graph()[id];
    let x = g.mem.batched(node.inputs[0])?;
    let (xv, gyv) = (g.view(node.inputs[0])?, g.view(node.inputs[1])?);
    let slope = g.param(&param_name(&node.name, "weight"))?;
    let ok = check();
    let (dx, dslope) = if weight {
        let (_, t) = g.temp(x.c, x.h, x.w, x.layout);
        (quote!(#t.view(cx.n)), {
            let w = g.whole(id)?;
            quote!(&mut cx.whole[#w])
        })
    } else {
        let c = x.c;
        g.tmp(c, 0);
        (g.view(id)?, quote!(&mut cx.tmp[..#c]))
    };
    Ok(Some(quote! {
        k::eltwise::prelu_backward(cx.arena, #slope, #xv, #gyv, #dx, #dslope) #ok;
        Ok(())
    }))
}

pub fn softmax_backward(g: &mut Gen<'_>, id: NodeId) -> Result<Option<TokenStream>, CodegenError> {
    let node = &g.graph()[id];
    let y = g.mem.batched(node.inputs[0])?;
    let (yp, gyp, dxp) = (g.place(node.inputs[0])?, g.place(node.inputs[1])?, g.place(id)?);
    g.tmp(2 * y.c * y.h * y.w, 0);
    let ok = check();
    Ok(Some(quote! {
        super::softmax_backward(cx.par, cx.arena, cx.tmp, cx.n, #yp, #gyp, #dxp) #ok;
        Ok(())
    }))
}

/// Inverted dropout's mask, drawn as the interpreter draws it (counter-based SplitMix64 keyed
/// by the seed, this node's name, the step and the element).
pub fn dropout_mask(g: &mut Gen<'_>, id: NodeId, p: f64) -> Result<Option<TokenStream>, CodegenError> {
    let node = &g.graph()[id];
    let yp = g.place(id)?;
    let name = &node.name;
    let p = f64_lit(p);
    Ok(Some(quote! {
        super::dropout_mask(cx.arena, cx.n, #yp, cx.seed, #name, cx.step, #p);
        Ok(())
    }))
}

pub fn mul(g: &mut Gen<'_>, id: NodeId) -> Result<Option<TokenStream>, CodegenError> {
    let node = &g.graph()[id];
    let (a, b, y) = (g.place(node.inputs[0])?, g.place(node.inputs[1])?, g.place(id)?);
    Ok(Some(quote! {
        super::mul(cx.arena, cx.n, #a, #b, #y);
        Ok(())
    }))
}
