//! One entry of a generated module: a plan compiled into a submodule holding its tables (the
//! checkpoint's tensors, the stored parameters with their recipes, every value's place), its
//! kernel plans, one function per layer, and the public struct that runs it: `Model`
//! (inference: `forward`) or a trainer (a training plan: `step`, gradients, checkpoints).

use crate::Options;
use crate::checkpoint::{self, Init, ParamSpec, TensorSpec};
use crate::context::{Gen, Relayout, place_tokens};
use crate::error::CodegenError;
use crate::kplan::{f32_lit, f64_lit, lit};
use crate::memory::{self, Value};
use crate::names::{constant, ident};
use crate::ops;
use cnnc_ir::facts::{ValueKind, value_kind};
use cnnc_ir::plan::{OutputRole, Plan};
use cnnc_ir::{Graph, NodeId};
use proc_macro2::{Ident, TokenStream, TokenTree};
use quote::quote;
use std::collections::BTreeSet;

/// What an entry is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Forward only, no effects: `forward(&self, ..)`.
    Inference,
    /// A training step (or a training forward pass, or gradients): `step(&mut self, ..)`.
    Training,
}

pub fn kind(plan: &Plan) -> Kind {
    let effects = plan.graph.iter().any(|(_, n)| value_kind(&n.op) != ValueKind::Batched);
    let model_only = plan.outputs.iter().all(|o| matches!(o, OutputRole::Model(_)));
    if effects || !model_only { Kind::Training } else { Kind::Inference }
}

/// The generated submodule of one entry, as tokens.
pub fn entry(
    source: &Graph,
    plan: &Plan,
    struct_name: &str,
    options: &Options,
) -> Result<(Ident, TokenStream), CodegenError> {
    let specs = checkpoint::checkpoint(source, plan);
    let (params, params_len) = checkpoint::params(plan, &specs)?;
    let mut mem = memory::layout(plan)?;
    let elided = memory::fuse_blocked_stems(plan, &mut mem);
    let kind = kind(plan);
    if kind == Kind::Training && !options.std {
        return Err(CodegenError::Unsupported("training steps need std (allocation, threads)".into()));
    }
    let mut g = Gen::new(plan, mem, params, params_len, kind == Kind::Training);
    g.winograd = options.winograd;
    let mut layers = Vec::new();
    let mut calls = Vec::new();
    let mut table = Vec::new();
    for (id, node) in plan.graph.iter() {
        if elided.contains(&id) {
            continue;
        }
        let Some(body) = ops::body(&mut g, id)? else { continue };
        let f = ident(&g.fns[id.index()]);
        let doc = doc(plan, id, options);
        let name = &node.name;
        layers.push(quote! {
            #(#[doc = #doc])*
            fn #f(cx: &mut Cx<'_>) -> Result<(), Error> {
                const LAYER: &str = #name;
                #body
            }
        });
        calls.push(quote!(#f(cx)?;));
        let step = lit(id.index());
        table.push(quote!((#step, #f)));
        if options.inspect && kind == Kind::Training {
            calls.push(quote!(record(cx, #step);));
        }
    }
    let module = ident(&crate::names::snake(struct_name));
    let plans = plans_struct(&g);
    // Depth first (`cnnc_ir::depth`): inference with std only (the no-std module's caller
    // sizes its workspace for whole batches).
    let depth_first = kind == Kind::Inference && options.std;
    let mut used = used_fields(&g, &layers);
    // Every layer places its values through `cx.win`; `run` swaps in `one` when it runs
    // depth first.
    used.push("win");
    if depth_first {
        used.push("one");
        if !used.contains(&"plans") {
            used.push("plans");
        }
    }
    let cx = cx_struct(&g, &used);
    let api = match kind {
        Kind::Inference => api_inference(&g, struct_name, &used, options)?,
        Kind::Training => api_training(&g, struct_name, &used, options)?,
    };
    let mentioned = [&plans, &api]
        .iter()
        .map(|t| t.to_string())
        .chain(layers.iter().map(|t| t.to_string()))
        .collect::<Vec<_>>()
        .join("\n");
    let tables = tables(&g, &specs, &mentioned)?;
    let record = if options.inspect && kind == Kind::Training { crate::api::record(&g) } else { quote!() };
    let doc = entry_doc(plan, struct_name, kind);
    let run = if depth_first {
        let bytes = cnnc_ir::depth::bytes_per_image(plan).into_iter().map(proc_macro2::Literal::u64_unsuffixed);
        quote! {
            /// One layer: the kernels of one node of the plan.
            type Layer = fn(&mut Cx<'_>) -> Result<(), Error>;
            /// The layers in the plan's order, each with its node's step.
            const LAYERS: &[(usize, Layer)] = &[#(#table),*];
            /// Bytes per image of the values of each leading node that may run depth first (0
            /// for an input: it runs nothing).
            const DEPTH_FIRST: &[u64] = &[#(#bytes),*];

            /// Every layer in the plan's order. At batch 2 or more the leading layers whose
            /// values for the whole batch take more than `depth_first_bytes` run depth first:
            /// each image through all of them, on the plans of one image, before the next.
            fn run(cx: &mut Cx<'_>, depth_first_bytes: u64) -> Result<(), Error> {
                let prefix = super::depth_first_prefix(DEPTH_FIRST, cx.n, depth_first_bytes);
                let first = LAYERS.iter().take_while(|l| l.0 < prefix).count();
                if first > 0 {
                    let (batch, plans) = (cx.n, cx.plans);
                    (cx.n, cx.plans, cx.win.prefix) = (1, cx.one, prefix);
                    for image in 0..batch {
                        cx.win.image = Some(image);
                        for (_, layer) in &LAYERS[..first] {
                            layer(cx)?;
                        }
                    }
                    (cx.n, cx.plans, cx.win.image) = (batch, plans, None);
                }
                for (_, layer) in &LAYERS[first..] {
                    layer(cx)?;
                }
                Ok(())
            }
        }
    } else {
        quote! {
            /// Every layer in the plan's order.
            fn run(cx: &mut Cx<'_>) -> Result<(), Error> {
                #(#calls)*
                Ok(())
            }
        }
    };
    let tokens = quote! {
        #(#[doc = #doc])*
        pub mod #module {
            use super::cnnc_kernels as k;
            use super::{Error, Place};

            #tables
            #plans
            #cx
            #api
            #record

            #run

            #(#layers)*
        }
    };
    Ok((module, tokens))
}

fn entry_doc(plan: &Plan, name: &str, kind: Kind) -> Vec<String> {
    let what = match kind {
        Kind::Inference => "inference",
        Kind::Training => "a training step",
    };
    let g = &plan.graph;
    vec![
        format!(" `{name}`: the plan of model `{}` for {what}, {} nodes.", g.name, g.len()),
        String::new(),
        format!(
            " Workspace: {} bytes per image and {} bytes whole-batch (the memory plan), plus the inputs and each layer's temporaries.",
            plan.memory.per_image_bytes, plan.memory.whole_batch_bytes
        ),
    ]
}

/// A layer's doc comment: the node as the IR prints it, its shapes, and its `.cnn` line.
fn doc(plan: &Plan, id: NodeId, options: &Options) -> Vec<String> {
    let g = &plan.graph;
    let node = &g[id];
    let mut name = format!("`{}`", node.name);
    if !node.absorbed.is_empty() {
        name.push_str(&format!(
            " (absorbing {})",
            node.absorbed.iter().map(|a| format!("`{a}`")).collect::<Vec<_>>().join(", ")
        ));
    }
    let inputs: Vec<String> = node.inputs.iter().map(|&i| g[i].shape.to_string()).collect();
    let mut lines = vec![
        format!(" {name}: {}.", cnnc_ir::print::describe(&node.op)),
        String::new(),
        format!(
            " Shapes (per image): {} -> `{}`.",
            if inputs.is_empty() {
                "()".into()
            } else {
                inputs.iter().map(|s| format!("`{s}`")).collect::<Vec<_>>().join(", ")
            },
            node.shape
        ),
    ];
    // Nodes made by the passes (reorders) or the training transform may have no span.
    if let Some(src) = &options.source
        && node.span.end > node.span.start
        && let Some((line, text)) = source_line(&src.text, node.span.start as usize)
    {
        lines.push(String::new());
        lines.push(format!(" Source, `{}` line {line}: `{}`", src.name, text.trim().replace('`', "'")));
    }
    lines
}

/// The 1-based line number and text of the line holding byte `at`.
fn source_line(text: &str, at: usize) -> Option<(usize, &str)> {
    if at > text.len() || !text.is_char_boundary(at) {
        return None;
    }
    let line = text[..at].matches('\n').count() + 1;
    let start = text[..at].rfind('\n').map_or(0, |p| p + 1);
    let end = text[at..].find('\n').map_or(text.len(), |p| at + p);
    Some((line, &text[start..end]))
}

fn init_tokens(init: Init) -> TokenStream {
    match init {
        Init::Normal(std) => {
            let s = f64_lit(std);
            quote!(super::Init::Normal(#s))
        }
        Init::Fill(v) => {
            let v = f32_lit(v);
            quote!(super::Init::Fill(#v))
        }
    }
}

fn dims(d: &[usize]) -> TokenStream {
    let d = d.iter().map(|&x| lit(x));
    quote!(&[#(#d),*])
}

/// The entry's constant tables: tensors, parameters, derived copies, sizes, shapes, places.
fn tables(g: &Gen<'_>, specs: &[TensorSpec], mentioned: &str) -> Result<TokenStream, CodegenError> {
    let used = |c: &Ident| crate::support::mentions_word(mentioned, &c.to_string());
    let tensors = specs.iter().map(|s| {
        let (name, d, optional, init) = (&s.name, dims(&s.dims), s.optional, init_tokens(s.init));
        quote!(super::TensorSpec { name: #name, dims: #d, optional: #optional, init: #init })
    });
    let params = g.params.iter().map(param_tokens);
    let derived = g.derived.iter().map(|d| {
        let (param, offset, len) = (lit(d.param), lit(d.offset), lit(d.len));
        let kind = match d.kind {
            Relayout::Logical => quote!(Logical),
            Relayout::PlainInput => quote!(PlainInput),
            Relayout::BackwardData => quote!(BackwardData),
            Relayout::Winograd(m) => {
                let f = winograd_fn(m);
                quote!(Transformed(#f))
            }
        };
        quote!(super::Derived { param: #param, kind: super::Relayout::#kind, offset: #offset, len: #len })
    });
    let mut tiles: Vec<usize> =
        g.derived.iter().filter_map(|d| if let Relayout::Winograd(m) = d.kind { Some(m) } else { None }).collect();
    tiles.sort_unstable();
    tiles.dedup();
    let winograd_fns = tiles.iter().map(|&m| {
        let (f, ml) = (winograd_fn(m), lit(m));
        let doc = format!("Winograd F({m}x{m}, 3x3)'s transformed weights of `o` 3x3 filters of `i` inputs.");
        quote! {
            #[doc = #doc]
            fn #f(o: usize, i: usize, w: &[f32], dst: &mut [f32]) -> Result<(), k::error::KernelError> {
                k::winograd::transform_plain_weights(&k::conv::ConvShape::simple(1, i, [3, 3], o, 3, 1, 1), #ml, w, dst)
            }
        }
    });
    let winograd_fns = quote!(#(#winograd_fns)*);
    let param_consts = g.params.iter().zip(&g.param_consts).filter(|(_, c)| used(c)).map(|(p, c)| {
        let (a, b) = (lit(p.offset), lit(p.offset + p.len));
        quote!(pub const #c: ::core::ops::Range<usize> = #a..#b;)
    });
    let derived_consts = g.derived.iter().filter(|d| used(&d.constant)).map(|d| {
        let (c, a, b) = (&d.constant, lit(d.offset), lit(d.offset + d.len));
        quote!(pub const #c: ::core::ops::Range<usize> = #a..#b;)
    });
    let mut places = Vec::new();
    let mut wholes = Vec::new();
    for (id, _) in g.graph().iter() {
        let c = g.place_const(id);
        if !used(&c) {
            continue;
        }
        match g.mem.values[id.index()] {
            Value::Batched(p) => {
                let t = place_tokens(&p);
                places.push(quote!(pub const #c: Place = #t;));
            }
            Value::Whole { start, len } => {
                let (a, b) = (lit(start), lit(start + len));
                wholes.push(quote!(pub const #c: ::core::ops::Range<usize> = #a..#b;));
            }
            Value::Labels { .. } | Value::Nothing => {}
        }
    }
    let [n_tensors, params_len, derived_len, logical_len, per_image, whole_len, tmp_fixed, tmp_per_image] = [
        specs.len(),
        g.params_len,
        g.derived_len,
        if g.derived.is_empty() { 0 } else { g.logical_len },
        g.mem.temp_base + g.max_temp,
        g.mem.whole,
        g.tmp_fixed,
        g.tmp_per_image,
    ]
    .map(lit);
    let shapes = shapes(g)?;
    let module = |name: &str, doc: &str, items: Vec<TokenStream>, uses: TokenStream| {
        if items.is_empty() {
            return quote!();
        }
        let name = ident(name);
        quote! {
            #[doc = #doc]
            mod #name {
                #uses
                #(#items)*
            }
        }
    };
    let modules = [
        module(
            "place",
            " Where every batched value lives (floats; image `i` of a batch of `n` at `buf * n + off + i * stride`), from the memory plan.",
            places,
            quote!(
                use super::{k, Place};
            ),
        ),
        module("whole", " Where every whole-batch value lives in the whole-batch region.", wholes, quote!()),
        module("param", " Where every parameter lives in the parameter storage.", param_consts.collect(), quote!()),
        module("derived", " Where every derived copy lives.", derived_consts.collect(), quote!()),
    ];
    let modules = quote!(#(#modules)*);
    let tensor_count =
        if mentioned.contains("TENSOR_COUNT") { quote!(const TENSOR_COUNT: usize = #n_tensors;) } else { quote!() };
    Ok(quote! {
        /// The checkpoint's tensors (PyTorch's `state_dict` names and shapes), sorted by name:
        /// what `from_safetensors` reads and `from_seed` draws.
        pub const TENSORS: &[super::TensorSpec] = &[#(#tensors),*];
        #tensor_count
        /// The parameters as the plan stores them (packed layouts, batch norms folded), each made
        /// from the checkpoint by its recipe, sorted by name.
        const PARAMS: &[super::ParamSpec] = &[#(#params),*];
        /// Floats of parameter storage.
        pub const PARAMS_LEN: usize = #params_len;
        /// Parameters copied into the layouts some kernels read.
        const DERIVED: &[super::Derived] = &[#(#derived),*];
        #winograd_fns
        const DERIVED_LEN: usize = #derived_len;
        /// Floats of the largest weight in the checkpoint layout (to derive the copies).
        const LOGICAL_LEN: usize = #logical_len;
        /// Floats per image of the arena: the memory plan's batched region, the inputs, the
        /// layers' temporaries.
        const ARENA_PER_IMAGE: usize = #per_image;
        /// Floats of the memory plan's whole-batch region (parameter gradients, statistics).
        const WHOLE_LEN: usize = #whole_len;
        /// Floats of per-layer vectors and dense copies: `TMP_FIXED + TMP_PER_IMAGE * batch`.
        const TMP_FIXED: usize = #tmp_fixed;
        const TMP_PER_IMAGE: usize = #tmp_per_image;
        #shapes

        #modules
    })
}

fn param_tokens(p: &ParamSpec) -> TokenStream {
    let (name, d, groups, offset, len) = (&p.name, dims(&p.dims), lit(p.groups), lit(p.offset), lit(p.len));
    let stored = ident(checkpoint::Stored::of(p.layout).name());
    let src = match p.src {
        Some(s) => {
            let s = lit(s);
            quote!(Some(#s))
        }
        None => quote!(None),
    };
    let folds = p.folds.iter().map(|f| {
        let (bias, gamma, beta, mean, var, eps) =
            (f.bias, lit(f.gamma), lit(f.beta), lit(f.mean), lit(f.var), f64_lit(f.eps));
        quote!(super::Fold { bias: #bias, gamma: #gamma, beta: #beta, mean: #mean, var: #var, eps: #eps })
    });
    quote!(super::ParamSpec {
        name: #name,
        dims: #d,
        stored: super::Stored::#stored,
        groups: #groups,
        offset: #offset,
        len: #len,
        src: #src,
        folds: &[#(#folds),*],
    })
}

/// The shapes of the model's inputs and outputs, per image.
fn shapes(g: &Gen<'_>) -> Result<TokenStream, CodegenError> {
    let graph = g.graph();
    let mut out = Vec::new();
    for (k, &id) in graph.inputs.iter().enumerate() {
        let node = &graph[id];
        let c = constant(&format!("input_{k}"));
        let (s, l) = (ident(&format!("{c}_SHAPE")), ident(&format!("{c}_LEN")));
        let (d, len) = (dims(&node.shape.0), lit(node.shape.elements()));
        let doc = format!(" The shape of one image of input {k}, `{}`.", node.name);
        out.push(quote! {
            #[doc = #doc]
            pub const #s: &[usize] = #d;
            pub const #l: usize = #len;
        });
    }
    for (k, role) in g.plan.outputs.iter().enumerate() {
        let OutputRole::Model(m) = role else { continue };
        let node = &graph[graph.outputs[k]];
        let c = constant(&format!("output_{m}"));
        let (s, l) = (ident(&format!("{c}_SHAPE")), ident(&format!("{c}_LEN")));
        let (d, len) = (dims(&node.shape.0), lit(node.shape.elements()));
        let doc = format!(" The shape of one image of model output {m}, `{}`.", node.name);
        out.push(quote! {
            #[doc = #doc]
            pub const #s: &[usize] = #d;
            pub const #l: usize = #len;
        });
    }
    Ok(quote!(#(#out)*))
}

/// `struct Plans`: every layer's kernel plan for one batch size.
fn plans_struct(g: &Gen<'_>) -> TokenStream {
    let fields = g.plan_fields.iter().map(|f| {
        let (name, ty) = (&f.field, f.plan.ty());
        quote!(#name: #ty)
    });
    let inits = g.plan_fields.iter().map(|f| {
        let (name, ctor, layer) = (&f.field, f.plan.constructor(), &f.layer);
        quote!(#name: #ctor.map_err(|e| Error::kernel(#layer, e))?)
    });
    let scratch: Vec<TokenStream> = g
        .plan_fields
        .iter()
        .filter_map(|f| {
            let name = &f.field;
            f.plan.scratch(&quote!(self.#name))
        })
        .collect();
    let ctor_text: String = g.plan_fields.iter().map(|f| f.plan.constructor().to_string()).collect();
    let arg = |name: &str| {
        let used = crate::support::mentions_word(&ctor_text, name);
        ident(&if used { name.to_string() } else { format!("_{name}") })
    };
    let (n, cpu, threads) = (arg("n"), arg("cpu"), arg("threads"));
    let scratch_text: String = scratch.iter().map(|t| t.to_string()).collect();
    let scratch_threads =
        ident(if crate::support::mentions_word(&scratch_text, "threads") { "threads" } else { "_threads" });
    let scratch_body =
        if scratch.is_empty() { quote!(0) } else { quote!([#(#scratch),*].into_iter().max().unwrap_or(0)) };
    quote! {
        /// The kernels' plan of every layer for one batch size (checked once, tiles and tasks
        /// chosen for the instruction set and the threads).
        struct Plans {
            #(#fields),*
        }

        impl Plans {
            fn new(#n: usize, #cpu: k::simd::Cpu, #threads: usize) -> Result<Plans, Error> {
                Ok(Plans { #(#inits),* })
            }

            /// Kernel scratch floats on `threads` threads.
            fn scratch_len(&self, #scratch_threads: usize) -> usize {
                #scratch_body
            }
        }
    }
}

/// The fields of `Cx` a layer can use, with their types (`params` is written by training).
fn cx_fields(training: bool) -> Vec<(&'static str, TokenStream)> {
    let params = if training { quote!(&'a mut [f32]) } else { quote!(&'a [f32]) };
    vec![
        ("n", quote!(usize)),
        ("cpu", quote!(k::simd::Cpu)),
        ("par", quote!(&'a dyn k::par::Parallel)),
        ("plans", quote!(&'a Plans)),
        ("params", params),
        ("derived", quote!(&'a [f32])),
        ("arena", quote!(&'a mut [f32])),
        ("whole", quote!(&'a mut [f32])),
        ("scratch", quote!(&'a mut [f32])),
        ("tmp", quote!(&'a mut [f32])),
        ("labels", quote!(&'a [u32])),
        ("lr", quote!(f32)),
        ("step", quote!(u64)),
        ("seed", quote!(u64)),
        ("win", quote!(super::Window)),
        ("one", quote!(&'a Plans)),
    ]
}

/// Which `Cx` fields the layers use.
pub fn used_fields(g: &Gen<'_>, layers: &[TokenStream]) -> Vec<&'static str> {
    let mut read = BTreeSet::new();
    for layer in layers {
        cx_field_reads(layer, &mut read);
    }
    cx_fields(g.training).into_iter().map(|(f, _)| f).filter(|f| *f == "n" || read.contains(*f)).collect()
}

/// Every `field` read as `cx.field` in `tokens`, groups included. Walked as tokens, not
/// searched in their text: inside the `cnn!` macro proc-macro2 prints through rustc, which
/// spaces `cx.field` differently from proc-macro2's own printer.
fn cx_field_reads(tokens: &TokenStream, read: &mut BTreeSet<String>) {
    let trees: Vec<TokenTree> = tokens.clone().into_iter().collect();
    for (i, tree) in trees.iter().enumerate() {
        match tree {
            TokenTree::Group(group) => cx_field_reads(&group.stream(), read),
            TokenTree::Ident(cx) if cx == "cx" => {
                if let (Some(TokenTree::Punct(dot)), Some(TokenTree::Ident(field))) =
                    (trees.get(i + 1), trees.get(i + 2))
                    && dot.as_char() == '.'
                {
                    read.insert(field.to_string());
                }
            }
            TokenTree::Ident(_) | TokenTree::Punct(_) | TokenTree::Literal(_) => {}
        }
    }
}

fn cx_struct(g: &Gen<'_>, used: &[&str]) -> TokenStream {
    let fields = cx_fields(g.training).into_iter().filter(|(f, _)| used.contains(f)).map(|(f, ty)| {
        let f = ident(f);
        quote!(#f: #ty)
    });
    quote! {
        /// What a layer works with: the batch size, the instruction set and threads, the plans,
        /// the parameters, and the memory (arena, whole-batch region, kernel scratch, vectors).
        struct Cx<'a> {
            #(#fields),*
        }
    }
}

use crate::api::{api_inference, api_training};

/// The name of the generated function making F(m x m, 3x3)'s weights.
fn winograd_fn(m: usize) -> proc_macro2::Ident {
    quote::format_ident!("winograd{m}x{m}_weights")
}

#[cfg(test)]
mod tests {
    use super::cx_field_reads;
    use quote::quote;
    use std::collections::BTreeSet;

    #[test]
    fn field_reads_are_found_in_nested_groups_and_only_after_cx_dot() {
        let tokens = quote! {
            k::conv(cx.arena, &cx.plans.conv1, { let s = &mut cx.scratch; s }); other.threads; cx
        };
        let mut read = BTreeSet::new();
        cx_field_reads(&tokens, &mut read);
        let want: BTreeSet<String> = ["arena", "plans", "scratch"].into_iter().map(String::from).collect();
        assert_eq!(read, want);
    }
}
