//! Optimiser updates on the stored (possibly packed) parameter, its gradient and its state:
//! SGD with momentum and weight decay, Adam and RMSprop through the kernels; Nesterov momentum
//! (which the kernels lack) in the support code.

use super::check;
use crate::context::Gen;
use crate::error::CodegenError;
use crate::kplan::f32_lit;
use cnnc_ir::facts::param_name;
use cnnc_ir::{NodeId, Optimizer};
use proc_macro2::TokenStream;
use quote::quote;

pub fn update(g: &mut Gen<'_>, id: NodeId, optimizer: &Optimizer) -> Result<Option<TokenStream>, CodegenError> {
    let node = &g.graph()[id];
    // An update is named after the full name of the parameter it updates.
    let p = g.param_range(&node.name)?;
    let grad = g.whole(node.inputs[0])?;
    let state: Vec<TokenStream> =
        optimizer.state().iter().map(|s| g.param_range(&param_name(&node.name, s))).collect::<Result<_, _>>()?;
    let ok = check();
    let call = match optimizer {
        Optimizer::Sgd(sgd) if sgd.nesterov => {
            let (m, wd) = (f32_lit(sgd.momentum as f32), f32_lit(sgd.weight_decay as f32));
            quote! {
                let [p, buf] = super::disjoint_mut(cx.params, [#p, #(#state),*]) #ok;
                super::sgd_nesterov(cx.lr, #m, #wd, cx.step <= 1, p, &cx.whole[#grad], buf);
            }
        }
        Optimizer::Sgd(sgd) => {
            let (m, wd) = (f32_lit(sgd.momentum as f32), f32_lit(sgd.weight_decay as f32));
            let o = quote!(k::optim::Sgd { lr: cx.lr, momentum: #m, weight_decay: #wd });
            if state.is_empty() {
                quote! {
                    k::optim::sgd(cx.par, cx.cpu, &#o, cx.step <= 1, &mut cx.params[#p], &cx.whole[#grad], &mut []) #ok;
                }
            } else {
                quote! {
                    let [p, buf] = super::disjoint_mut(cx.params, [#p, #(#state),*]) #ok;
                    k::optim::sgd(cx.par, cx.cpu, &#o, cx.step <= 1, p, &cx.whole[#grad], buf) #ok;
                }
            }
        }
        Optimizer::Adam(adam) => {
            let [b1, b2, eps, wd] = [adam.beta1, adam.beta2, adam.eps, adam.weight_decay].map(|v| f32_lit(v as f32));
            quote! {
                let [p, m, v] = super::disjoint_mut(cx.params, [#p, #(#state),*]) #ok;
                let o = k::optim::Adam { lr: cx.lr, beta1: #b1, beta2: #b2, eps: #eps, weight_decay: #wd };
                k::optim::adam(cx.par, cx.cpu, &o, cx.step.max(1), p, &cx.whole[#grad], m, v) #ok;
            }
        }
        Optimizer::RmsProp(rms) => {
            let [alpha, eps, wd, m] = [rms.alpha, rms.eps, rms.weight_decay, rms.momentum].map(|v| f32_lit(v as f32));
            let o = quote!(k::optim::RmsProp { lr: cx.lr, alpha: #alpha, eps: #eps, weight_decay: #wd, momentum: #m, centered: false });
            if state.len() == 1 {
                quote! {
                    let [p, sq] = super::disjoint_mut(cx.params, [#p, #(#state),*]) #ok;
                    k::optim::rmsprop(cx.par, cx.cpu, &#o, p, &cx.whole[#grad], sq, &mut [], &mut []) #ok;
                }
            } else {
                quote! {
                    let [p, sq, buf] = super::disjoint_mut(cx.params, [#p, #(#state),*]) #ok;
                    k::optim::rmsprop(cx.par, cx.cpu, &#o, p, &cx.whole[#grad], sq, buf, &mut []) #ok;
                }
            }
        }
    };
    Ok(Some(quote! {
        #call
        Ok(())
    }))
}
