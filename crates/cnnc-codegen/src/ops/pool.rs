//! Pooling: max, average (either divisor rule) and L2 over sliding windows, global and
//! adaptive bins, and spatial pyramids (one adaptive pool per level, written into its part of
//! the flattened output); the argmax of max pooling for training; the backward passes.

use super::check;
use crate::context::{Gen, at_tokens, kernel_layout};
use crate::error::CodegenError;
use crate::kplan::KPlan;
use crate::memory::Place;
use cnnc_ir::{Layout, NodeId, PoolGeometry, PoolKind};
use cnnc_kernels::pool::{PoolKind as KKind, PoolPlan, PoolWindow};
use proc_macro2::TokenStream;
use quote::quote;

fn kind_of(kind: PoolKind) -> KKind {
    match kind {
        PoolKind::Max => KKind::Max,
        PoolKind::Avg { include_pad: true } => KKind::Avg,
        PoolKind::Avg { include_pad: false } => KKind::AvgExcludePad,
        PoolKind::L2 => KKind::L2,
    }
}

/// One pooling run of a geometry: its window and output size, and where in the output's
/// image its result starts (a pyramid level's part of the flattened vector).
struct Level {
    win: PoolWindow,
    out: [usize; 2],
    offset: usize,
}

fn levels(geometry: &PoolGeometry, c: usize, out: [usize; 2]) -> Vec<Level> {
    let adaptive = |h: usize, w: usize| PoolWindow::adaptive(h, w);
    match geometry {
        PoolGeometry::Window(w) => vec![Level {
            win: PoolWindow {
                kernel: w.kernel,
                stride: w.stride,
                pad: w.pad,
                dilation: w.dilation,
                ceil_mode: w.ceil_mode,
                adaptive: false,
            },
            out,
            offset: 0,
        }],
        PoolGeometry::Global => vec![Level { win: adaptive(1, 1), out: [1, 1], offset: 0 }],
        PoolGeometry::Adaptive([h, w]) => vec![Level { win: adaptive(*h, *w), out: [*h, *w], offset: 0 }],
        PoolGeometry::Pyramid(ls) => {
            let mut offset = 0;
            ls.iter()
                .map(|&l| {
                    let level = Level { win: adaptive(l, l), out: [l, l], offset };
                    offset += c * l * l;
                    level
                })
                .collect()
        }
    }
}

/// The place of one level's output: the whole value, or a pyramid level's part of the vector
/// seen as its `c x l x l` plain map.
fn level_place(y: Place, c: usize, level: &Level, pyramid: bool) -> Place {
    if !pyramid {
        return y;
    }
    Place { off: y.off + level.offset, c, h: level.out[0], w: level.out[1], layout: Layout::Plain, ..y }
}

/// The plan of one level for an input of `x`, checked to give the output size the graph says.
fn level_plan(id: NodeId, x: Place, kind: KKind, level: &Level) -> Result<KPlan, CodegenError> {
    let layout = kernel_layout(x.layout);
    let cpu = cnnc_kernels::simd::Cpu::PORTABLE;
    let p = PoolPlan::new(1, x.c, [x.h, x.w], kind, level.win, layout, cpu)
        .map_err(|e| CodegenError::Unsupported(format!("pooling {id}: {e}")))?;
    if p.out_hw() != level.out {
        return Err(CodegenError::Unsupported(format!(
            "pooling {id}: the kernels pool to {:?}, the graph to {:?}",
            p.out_hw(),
            level.out
        )));
    }
    Ok(KPlan::Pool { c: x.c, hw: [x.h, x.w], kind, win: level.win, layout })
}

/// `(plan, level output place)` for every level.
fn plans(
    g: &mut Gen<'_>,
    id: NodeId,
    x: Place,
    y: Place,
    kind: KKind,
    geometry: &PoolGeometry,
) -> Result<Vec<(TokenStream, TokenStream)>, CodegenError> {
    let pyramid = matches!(geometry, PoolGeometry::Pyramid(_));
    let all = levels(geometry, x.c, [y.h, y.w]);
    let mut out = Vec::new();
    for (k, level) in all.iter().enumerate() {
        let plan = level_plan(id, x, kind, level)?;
        let suffix = if pyramid { format!("level{k}") } else { String::new() };
        let field = g.kernel_plan(id, &suffix, plan)?;
        out.push((field, at_tokens(&level_place(y, x.c, level, pyramid))));
    }
    Ok(out)
}

pub fn forward(
    g: &mut Gen<'_>,
    id: NodeId,
    kind: PoolKind,
    geometry: &PoolGeometry,
) -> Result<Option<TokenStream>, CodegenError> {
    let node = &g.graph()[id];
    let (x, y) = (g.mem.batched(node.inputs[0])?, g.mem.batched(id)?);
    let xv = g.view(node.inputs[0])?;
    let ok = check();
    let runs = plans(g, id, x, y, kind_of(kind), geometry)?;
    let calls = runs
        .iter()
        .map(|(plan, place)| quote!(k::pool::forward(cx.par, #plan, cx.arena, #xv, #place.view(cx.n), None) #ok;));
    Ok(Some(quote! {
        #(#calls)*
        Ok(())
    }))
}

/// The argmax of each max-pooling window (the pooled values go to a temporary).
pub fn argmax(g: &mut Gen<'_>, id: NodeId, geometry: &PoolGeometry) -> Result<Option<TokenStream>, CodegenError> {
    let node = &g.graph()[id];
    let (x, y) = (g.mem.batched(node.inputs[0])?, g.mem.batched(id)?);
    let xv = g.view(node.inputs[0])?;
    let (tmp, _) = g.temp(y.c, y.h, y.w, y.layout);
    let ok = check();
    let runs = plans(g, id, x, y, KKind::Max, geometry)?;
    let pyramid = matches!(geometry, PoolGeometry::Pyramid(_));
    let all = levels(geometry, x.c, [y.h, y.w]);
    let calls = runs.iter().zip(&all).map(|((plan, place), level)| {
        let values = at_tokens(&level_place(tmp, x.c, level, pyramid));
        quote!(k::pool::forward(cx.par, #plan, cx.arena, #xv, #values.view(cx.n), Some(#place.view(cx.n))) #ok;)
    });
    Ok(Some(quote! {
        #(#calls)*
        Ok(())
    }))
}

pub fn backward(
    g: &mut Gen<'_>,
    id: NodeId,
    kind: PoolKind,
    geometry: &PoolGeometry,
    input: &[usize; 3],
) -> Result<Option<TokenStream>, CodegenError> {
    let node = &g.graph()[id];
    let dx = g.mem.batched(id)?;
    if [dx.c, dx.h, dx.w] != *input {
        return Err(CodegenError::Plan(format!("pooling backward {id}: its value is not the input's shape")));
    }
    // Operands by kind: max (gy, argmax), average (gy), L2 (x, y, gy).
    let gy_id = match kind {
        PoolKind::Max | PoolKind::Avg { .. } => node.inputs[0],
        PoolKind::L2 => node.inputs[2],
    };
    let gy = g.mem.batched(gy_id)?;
    let aux = |k: usize| -> Result<Option<Place>, CodegenError> { Ok(Some(g.mem.batched(node.inputs[k])?)) };
    let (argmax, x, y) = match kind {
        PoolKind::Max => (aux(1)?, None, None),
        PoolKind::Avg { .. } => (None, None, None),
        PoolKind::L2 => (None, aux(0)?, aux(1)?),
    };
    let runs = plans(g, id, dx, gy, kind_of(kind), geometry)?;
    let pyramid = matches!(geometry, PoolGeometry::Pyramid(_));
    let all = levels(geometry, dx.c, [gy.h, gy.w]);
    let dxv = g.view(id)?;
    let xv = x.map_or(quote!(None), |p| {
        let t = at_tokens(&p);
        quote!(Some(#t.view(cx.n)))
    });
    let ok = check();
    let calls = runs.iter().zip(&all).enumerate().map(|(k, ((plan, gy_place), level))| {
        let opt = |p: Option<Place>| {
            p.map_or(quote!(None), |p| {
                let t = at_tokens(&level_place(p, dx.c, level, pyramid));
                quote!(Some(#t.view(cx.n)))
            })
        };
        let (am, yv) = (opt(argmax), opt(y));
        // Pyramid levels add into the one input gradient.
        let accumulate = k > 0;
        quote! {
            let io = k::pool_bwd::PoolBwdIo {
                gy: #gy_place.view(cx.n),
                dx: #dxv,
                x: #xv,
                y: #yv,
                argmax: #am,
                accumulate: #accumulate,
            };
            k::pool_bwd::backward(cx.par, #plan, cx.arena, &io) #ok;
        }
    });
    Ok(Some(quote! {
        #(#calls)*
        Ok(())
    }))
}
