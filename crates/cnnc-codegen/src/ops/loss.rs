//! The losses and their gradients: softmax cross-entropy through the kernels' fused kernel;
//! the regression losses and both hinge forms in the support code (the kernels have none).

use super::check;
use crate::context::Gen;
use crate::error::CodegenError;
use crate::kplan::f64_lit;
use crate::memory::Value;
use cnnc_ir::{HingeForm, Loss, NodeId};
use proc_macro2::TokenStream;
use quote::quote;

/// `Loss` (`grad` false: the mean loss into its whole-batch scalar) or `LossGrad` (`grad`
/// true: `d loss / d output` into its batched value).
pub fn loss(g: &mut Gen<'_>, id: NodeId, l: &Loss, grad: bool) -> Result<Option<TokenStream>, CodegenError> {
    let node = &g.graph()[id];
    let x = g.mem.batched(node.inputs[0])?;
    let xp = g.place(node.inputs[0])?;
    let classes = x.c * x.h * x.w;
    let labels = matches!(g.mem.values[node.inputs[1].index()], Value::Labels { .. });
    if l.takes_labels() != labels {
        return Err(CodegenError::Plan(format!("loss {id}: its target does not fit the {} loss", l.name())));
    }
    let target = if labels { quote!(cx.labels) } else { g.place(node.inputs[1])? };
    let gradient = if grad {
        let p = g.place(id)?;
        quote!(Some(#p))
    } else {
        quote!(None)
    };
    let ok = check();
    let value = match *l {
        Loss::CrossEntropy => {
            g.tmp(0, 2 * classes);
            quote!(super::cross_entropy(cx.cpu, cx.arena, cx.n, #xp, #target, #gradient, cx.tmp) #ok)
        }
        Loss::Mse => quote!(super::regression_loss(super::Regression::Mse, cx.arena, cx.n, #xp, #target, #gradient)),
        Loss::L1 => quote!(super::regression_loss(super::Regression::L1, cx.arena, cx.n, #xp, #target, #gradient)),
        Loss::Huber { delta } => {
            let d = f64_lit(delta);
            quote!(super::regression_loss(super::Regression::Huber(#d), cx.arena, cx.n, #xp, #target, #gradient))
        }
        Loss::Hinge { margin, form } => {
            let m = f64_lit(margin);
            let mean = form == HingeForm::MeanOverClasses;
            quote!(super::hinge_loss(#m, #mean, cx.arena, cx.n, #xp, #target, #gradient))
        }
    };
    let store = if grad {
        quote!(#value;)
    } else {
        let w = g.whole(id)?;
        quote!(cx.whole[#w][0] = #value;)
    };
    Ok(Some(quote! {
        #store
        Ok(())
    }))
}
