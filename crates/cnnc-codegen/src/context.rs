//! The state of generating one entry (one plan): memory, parameters, the kernel plans and
//! derived weights the layers ask for, and the helpers every op family uses to name them in
//! the generated text.

use crate::checkpoint::ParamSpec;
use crate::error::CodegenError;
use crate::kplan::{KPlan, lit};
use crate::memory::{Memory, Place};
use crate::names::{Names, constant, ident};
use cnnc_ir::plan::Plan;
use cnnc_ir::{Layout, NodeId};
use proc_macro2::{Ident, TokenStream};
use quote::quote;
use std::collections::HashMap;

/// A copy of a parameter in a layout the plan does not store but a kernel reads (made at load
/// and, in a training step, again from the updated parameter before the step).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Relayout {
    /// The checkpoint layout (`oihw`): the fallback convolution's weights.
    Logical,
    /// `Oihw16o`, the plain-input convolution's weights.
    PlainInput,
    /// `gIOhw16o16i` rotated, the blocked backward-data pass's weights.
    BackwardData,
    /// Winograd's transformed weights for output tiles of this size
    /// (`cnnc_kernels::winograd`), for inference.
    Winograd(usize),
}

#[derive(Clone, Debug)]
pub struct Derived {
    pub param: usize,
    pub kind: Relayout,
    pub constant: Ident,
    pub offset: usize,
    pub len: usize,
}

/// A kernel plan a layer builds per batch size: a field of the entry's `Plans`.
pub struct PlanField {
    pub field: Ident,
    pub plan: KPlan,
    pub layer: String,
}

pub struct Gen<'a> {
    pub plan: &'a Plan,
    pub mem: Memory,
    pub params: Vec<ParamSpec>,
    pub params_len: usize,
    param_index: HashMap<String, usize>,
    /// Each parameter's constant (a `Range` into the parameter storage).
    pub param_consts: Vec<Ident>,
    /// Each node's function name (snake case, unique).
    pub fns: Vec<String>,
    pub derived: Vec<Derived>,
    pub derived_len: usize,
    /// Floats of the largest parameter in its checkpoint layout (the scratch of derivations).
    pub logical_len: usize,
    pub plan_fields: Vec<PlanField>,
    /// Per-image floats of the current node's temporaries, and the most any node needs.
    temp: usize,
    pub max_temp: usize,
    /// Floats of `tmp` (per-channel vectors, dense copies) the current node needs, and the most
    /// any node needs: `fixed + per_image * n`.
    pub tmp_fixed: usize,
    pub tmp_per_image: usize,
    pub training: bool,
    /// Winograd kernels where they pay (`Options::winograd`; inference plans only).
    pub winograd: bool,
    names: Names,
}

impl<'a> Gen<'a> {
    pub fn new(plan: &'a Plan, mem: Memory, params: Vec<ParamSpec>, params_len: usize, training: bool) -> Gen<'a> {
        let mut names = Names::default();
        // Reserve the names of the entry's own items in the node namespace.
        for own in ["place", "param", "whole", "derived", "plans", "layers", "workspace"] {
            names.unique(own);
        }
        let fns = plan
            .graph
            .iter()
            .map(|(_, node)| {
                // Backward ops are named after their forward layer: the op tells them apart.
                if let cnnc_ir::Op::Train(t) = &node.op {
                    names.unique(&format!("{}_{}", node.name, t.keyword()))
                } else {
                    names.unique(&node.name)
                }
            })
            .collect();
        let mut pnames = Names::default();
        let param_consts = params.iter().map(|p| constant(&pnames.unique(&p.name))).collect();
        let param_index = params.iter().enumerate().map(|(k, p)| (p.name.clone(), k)).collect();
        let logical_len = params.iter().map(|p| p.dims.iter().product::<usize>()).max().unwrap_or(0);
        Gen {
            plan,
            mem,
            params,
            params_len,
            param_index,
            param_consts,
            fns,
            derived: Vec::new(),
            derived_len: 0,
            logical_len,
            plan_fields: Vec::new(),
            temp: 0,
            max_temp: 0,
            tmp_fixed: 0,
            tmp_per_image: 0,
            training,
            winograd: true,
            names: Names::default(),
        }
    }

    pub fn graph(&self) -> &'a cnnc_ir::Graph {
        &self.plan.graph
    }

    /// Starts a node: its temporaries are free again.
    pub fn begin_node(&mut self) {
        self.temp = 0;
    }

    pub fn place_const(&self, id: NodeId) -> Ident {
        constant(&self.fns[id.index()])
    }

    /// `cx.win.at(place::NAME).view(cx.n)` for a batched value.
    pub fn view(&self, id: NodeId) -> Result<TokenStream, CodegenError> {
        self.mem.batched(id)?;
        let c = self.place_const(id);
        Ok(quote!(cx.win.at(place::#c).view(cx.n)))
    }

    /// `cx.win.at(place::NAME)` for a batched value.
    pub fn place(&self, id: NodeId) -> Result<TokenStream, CodegenError> {
        self.mem.batched(id)?;
        let c = self.place_const(id);
        Ok(quote!(cx.win.at(place::#c)))
    }

    /// `whole::NAME`, the range of a whole-batch value.
    pub fn whole(&self, id: NodeId) -> Result<TokenStream, CodegenError> {
        self.mem.whole(id)?;
        let c = self.place_const(id);
        Ok(quote!(whole::#c))
    }

    pub fn param_slot(&self, name: &str) -> Result<usize, CodegenError> {
        self.param_index
            .get(name)
            .copied()
            .ok_or_else(|| CodegenError::Plan(format!("the plan has no parameter `{name}`")))
    }

    pub fn param_spec(&self, name: &str) -> Result<&ParamSpec, CodegenError> {
        Ok(&self.params[self.param_slot(name)?])
    }

    /// `param::NAME`, the range of a stored parameter.
    pub fn param_range(&self, name: &str) -> Result<TokenStream, CodegenError> {
        let c = &self.param_consts[self.param_slot(name)?];
        Ok(quote!(param::#c))
    }

    /// `&cx.params[param::NAME]`.
    pub fn param(&self, name: &str) -> Result<TokenStream, CodegenError> {
        let r = self.param_range(name)?;
        Ok(quote!(&cx.params[#r]))
    }

    /// `&cx.derived[derived::NAME]`: the parameter copied into another layout.
    pub fn derived(&mut self, name: &str, kind: Relayout) -> Result<TokenStream, CodegenError> {
        let param = self.param_slot(name)?;
        if let Some(d) = self.derived.iter().find(|d| d.param == param && d.kind == kind) {
            let c = &d.constant;
            return Ok(quote!(&cx.derived[derived::#c]));
        }
        let p = &self.params[param];
        let (o, i, kh, kw) = match p.dims[..] {
            [o, i, kh, kw] => (o, i, kh, kw),
            [o, i] => (o, i, 1, 1),
            _ => return Err(CodegenError::Plan(format!("`{name}` is not a weight")))?,
        };
        let g = p.groups.max(1);
        let r16 = |v: usize| v.div_ceil(16) * 16;
        let len = match kind {
            Relayout::Logical => o * i * kh * kw,
            Relayout::PlainInput => r16(o) * i * kh * kw,
            Relayout::BackwardData => g * r16(o / g) * r16(i) * kh * kw,
            Relayout::Winograd(m) => (m + 2) * (m + 2) * r16(o) * r16(i),
        };
        let suffix = match kind {
            Relayout::Logical => "oihw",
            Relayout::PlainInput => "oihw16o",
            Relayout::BackwardData => "backward_data",
            Relayout::Winograd(2) => "winograd2",
            Relayout::Winograd(_) => "winograd4",
        };
        let constant = constant(&self.names.unique(&format!("{name}_{suffix}")));
        let c = constant.clone();
        self.derived.push(Derived { param, kind, constant, offset: self.derived_len, len });
        self.derived_len += len.div_ceil(16) * 16;
        Ok(quote!(&cx.derived[derived::#c]))
    }

    /// A temporary batched value of the current node (dense images, after the plan's memory),
    /// as a `Place` expression.
    pub fn temp(&mut self, c: usize, h: usize, w: usize, layout: Layout) -> (Place, TokenStream) {
        let channels = match layout {
            Layout::Plain => c,
            Layout::Blocked16 => c.div_ceil(16) * 16,
        };
        // Dense images (a batch is one range, as the slice-based kernels want); the next
        // temporary starts on a 64-byte boundary again.
        let stride = channels * h * w;
        let place = Place { buf: self.mem.temp_base + self.temp, off: 0, stride, c, h, w, layout, last: usize::MAX };
        self.temp += stride.div_ceil(16) * 16;
        self.max_temp = self.max_temp.max(self.temp);
        (place, at_tokens(&place))
    }

    /// Records that the current node uses `fixed + per_image * n` floats of `tmp`.
    pub fn tmp(&mut self, fixed: usize, per_image: usize) {
        self.tmp_fixed = self.tmp_fixed.max(fixed);
        self.tmp_per_image = self.tmp_per_image.max(per_image);
    }

    /// Adds a kernel plan for the node's layer; `cx.plans.FIELD`.
    pub fn kernel_plan(&mut self, id: NodeId, suffix: &str, plan: KPlan) -> Result<TokenStream, CodegenError> {
        let layer = self.graph()[id].name.clone();
        plan.check(1, cnnc_kernels::simd::Cpu::PORTABLE, 1)
            .map_err(|e| CodegenError::Unsupported(format!("layer `{layer}`: the kernels refuse it: {e}")))?;
        let base = &self.fns[id.index()];
        let field = ident(&if suffix.is_empty() { base.clone() } else { format!("{base}_{suffix}") });
        let f = field.clone();
        self.plan_fields.push(PlanField { field, plan, layer });
        Ok(quote!(&cx.plans.#f))
    }
}

/// A `Place { .. }` literal.
pub fn place_tokens(p: &Place) -> TokenStream {
    let [buf, off, stride, c, h, w] = [p.buf, p.off, p.stride, p.c, p.h, p.w].map(lit);
    let layout = layout_tokens(p.layout);
    let last = match p.last {
        usize::MAX => quote!(usize::MAX),
        last => {
            let l = lit(last);
            quote!(#l)
        }
    };
    quote!(Place { buf: #buf, off: #off, stride: #stride, c: #c, h: #h, w: #w, layout: #layout, last: #last })
}

/// A place inside a layer: `cx.win.at(..)` of its literal, which moves it to the image being
/// run depth first, if any.
pub fn at_tokens(p: &Place) -> TokenStream {
    let t = place_tokens(p);
    quote!(cx.win.at(#t))
}

pub fn layout_tokens(l: Layout) -> TokenStream {
    match l {
        Layout::Plain => quote!(k::view::Layout::Nchw),
        Layout::Blocked16 => quote!(k::view::Layout::NChw16c),
    }
}

/// The kernels' layout of an IR layout.
pub fn kernel_layout(l: Layout) -> cnnc_kernels::view::Layout {
    match l {
        Layout::Plain => cnnc_kernels::view::Layout::Nchw,
        Layout::Blocked16 => cnnc_kernels::view::Layout::NChw16c,
    }
}
