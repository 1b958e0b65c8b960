//! The public struct of an entry: `Model` for an inference plan (std: loaded once, a workspace
//! per batch size kept behind a mutex, `forward(&self, ..)`; no-std: parameters and workspace
//! in the caller's memory), or a trainer for a training plan (`step(&mut self, ..)` running the
//! loss, backward and updates, then gradients, outputs and checkpoints).

use crate::Options;
use crate::context::Gen;
use crate::error::CodegenError;
use crate::kplan::lit;
use crate::memory::Value;
use crate::names::{Names, constant, ident};
use cnnc_ir::plan::OutputRole;
use proc_macro2::{Ident, TokenStream};
use quote::quote;

/// The model inputs as arguments: `(argument, place constant, length constant, is labels)`.
struct Input {
    arg: Ident,
    place: Option<Ident>,
    len: Ident,
    classes: Option<usize>,
    what: String,
}

fn inputs(g: &Gen<'_>) -> Vec<Input> {
    let graph = g.graph();
    let mut names = Names::default();
    for reserved in ["batch", "out", "args", "self", "outputs"] {
        names.unique(reserved);
    }
    graph
        .inputs
        .iter()
        .enumerate()
        .map(|(k, &id)| {
            let arg = ident(&names.unique(&graph[id].name));
            let len = ident(&format!("{}_LEN", constant(&format!("input_{k}"))));
            match g.mem.values[id.index()] {
                Value::Labels { classes } => Input {
                    arg,
                    place: None,
                    len,
                    classes: Some(classes),
                    what: format!("labels `{}`", graph[id].name),
                },
                Value::Batched(_) | Value::Whole { .. } | Value::Nothing => Input {
                    arg,
                    place: Some(g.place_const(id)),
                    len,
                    classes: None,
                    what: format!("input `{}`", graph[id].name),
                },
            }
        })
        .collect()
}

/// Checks of the inputs' lengths (and labels' classes), and their copies into the arena.
fn take_inputs(inputs: &[Input], arena: &TokenStream) -> (TokenStream, TokenStream) {
    let checks = inputs.iter().map(|i| {
        let (arg, len, what) = (&i.arg, &i.len, &i.what);
        let mut t = quote!(super::check_len(#what, #arg.len(), super::batch_len(batch, #len)?)?;);
        if let Some(c) = i.classes {
            let c = lit(c);
            t.extend(quote! {
                if let Some((sample, &label)) = #arg.iter().enumerate().find(|(_, l)| **l as usize >= #c) {
                    return Err(Error::Label { sample, label, classes: #c });
                }
            });
        }
        t
    });
    let copies = inputs.iter().filter_map(|i| {
        let (arg, place) = (&i.arg, i.place.as_ref()?);
        Some(quote!(super::write_place(#arena, place::#place, batch, #arg);))
    });
    (quote!(#(#checks)*), quote!(#(#copies)*))
}

fn input_params(inputs: &[Input]) -> Vec<TokenStream> {
    inputs
        .iter()
        .map(|i| {
            let arg = &i.arg;
            if i.classes.is_some() { quote!(#arg: &[u32]) } else { quote!(#arg: &[f32]) }
        })
        .collect()
}

/// The `Cx { .. }` expression over a workspace `ws`.
fn cx_init(used: &[&str], params: TokenStream, derived: TokenStream, training: bool) -> TokenStream {
    let all: Vec<(&str, TokenStream)> = vec![
        ("n", quote!(n: batch)),
        ("cpu", quote!(cpu: ws.cpu)),
        ("par", quote!(par)),
        ("plans", quote!(plans: &ws.plans)),
        ("params", quote!(params: #params)),
        ("derived", quote!(derived: #derived)),
        ("arena", quote!(arena: &mut ws.arena)),
        ("whole", quote!(whole: &mut ws.whole)),
        ("scratch", quote!(scratch: &mut ws.scratch)),
        ("tmp", quote!(tmp: &mut ws.tmp)),
        ("labels", if training { quote!(labels) } else { quote!(labels: &[]) }),
        ("lr", quote!(lr: args.lr)),
        ("step", quote!(step: args.step)),
        ("seed", quote!(seed: args.seed)),
        (
            "win",
            if used.contains(&"one") {
                quote!(win: super::Window::whole(batch, ws.local))
            } else {
                quote!(win: super::Window::whole(batch, 0))
            },
        ),
        ("one", quote!(one: ws.one.as_ref().unwrap_or(&ws.plans))),
    ];
    let fields = all.into_iter().filter(|(f, _)| used.contains(f)).map(|(_, t)| t);
    quote!(Cx { #(#fields),* })
}

/// The std workspace: the plans of one batch size and its memory.
fn workspace(used: &[&str]) -> TokenStream {
    let has = |f: &str| used.contains(&f);
    let mut fields = vec![quote!(n: usize), quote!(plans: Plans), quote!(arena: super::Floats)];
    let mut inits = vec![quote!(n), quote!(plans)];
    if has("cpu") {
        fields.push(quote!(cpu: k::simd::Cpu));
        inits.push(quote!(cpu));
    }
    // Depth first (see `run`), at batch > 1 only: the plans of one image, and one image's
    // memory after the batch's, where the values only the depth-first layers use live.
    let depth_first = has("one");
    if depth_first {
        fields.push(quote!(one: Option<Plans>));
        fields.push(quote!(local: usize));
        inits.push(quote!(one));
        inits.push(quote!(local));
        inits.push(quote!(arena: super::zeros(local.saturating_add(if n > 1 { ARENA_PER_IMAGE } else { 0 }))?));
    } else {
        inits.push(quote!(arena: super::zeros(super::batch_len(n, ARENA_PER_IMAGE)?)?));
    }
    for (f, init) in [
        ("whole", quote!(whole: super::zeros(WHOLE_LEN)?)),
        ("scratch", quote!(scratch: super::zeros(plans_scratch)?)),
        ("tmp", quote!(tmp: super::zeros(super::batch_len(n, TMP_PER_IMAGE)?.saturating_add(TMP_FIXED))?)),
    ] {
        if has(f) {
            let fi = ident(f);
            fields.push(quote!(#fi: super::Floats));
            inits.push(init);
        }
    }
    let scratch = match (has("scratch"), depth_first) {
        (true, true) => {
            quote!(let plans_scratch = plans.scratch_len(threads).max(one.as_ref().map_or(0, |p| p.scratch_len(threads)));)
        }
        (true, false) => quote!(let plans_scratch = plans.scratch_len(threads);),
        (false, _) => quote!(),
    };
    let one = if depth_first {
        quote! {
            let one = if n > 1 { Some(Plans::new(1, cpu, threads)?) } else { None };
            let local = super::batch_len(n, ARENA_PER_IMAGE)?;
        }
    } else {
        quote!()
    };
    quote! {
        /// One batch size's kernel plans and memory: made on the first run at that size, kept
        /// for the next.
        struct Workspace {
            #(#fields),*
        }

        impl Workspace {
            fn new(n: usize, par: &dyn k::par::Parallel) -> Result<Workspace, Error> {
                let (cpu, threads) = (k::cpu::active(), par.threads());
                let plans = Plans::new(n, cpu, threads)?;
                #one
                #scratch
                Ok(Workspace { #(#inits),* })
            }
        }
    }
}

/// Loading shared by both structs: `from_safetensors`, `from_seed`, `from_tensors`, `load`.
fn loaders(name: &Ident, has_derived: bool, body: TokenStream) -> TokenStream {
    let derive = if has_derived {
        quote! {
            let mut derived = super::zeros(DERIVED_LEN)?;
            let mut logical = super::zeros(LOGICAL_LEN)?;
            super::derive(PARAMS, DERIVED, &params, &mut derived, &mut logical).map_err(|e| Error::kernel("(loading)", e))?;
        }
    } else {
        quote!()
    };
    quote! {
        /// Loads a safetensors file of the checkpoint's tensors (PyTorch's `state_dict` names
        /// and shapes, F32; `num_batches_tracked` counters are skipped): a missing, misshapen,
        /// extra or corrupt tensor is an error naming it.
        pub fn from_safetensors(bytes: &[u8]) -> Result<#name, Error> {
            let mut at = ::std::vec![None; TENSORS.len()];
            let data = super::locate(bytes, TENSORS, &mut at)?;
            #name::load(&super::Checkpoint { data, at: &at })
        }

        /// The weights `cnnc init --seed SEED` draws (He or Xavier normals, each tensor from
        /// its own stream).
        pub fn from_seed(seed: u64) -> Result<#name, Error> {
            let (data, at) = super::seeded_checkpoint(TENSORS, seed);
            #name::load(&super::Checkpoint { data: &data, at: &at })
        }

        /// Named tensors in the checkpoint layout (`(name, values)`, each as long as its shape
        /// in [`TENSORS`] says).
        pub fn from_tensors(tensors: &[(&str, &[f32])]) -> Result<#name, Error> {
            let (data, at) = super::named_checkpoint(TENSORS, tensors)?;
            #name::load(&super::Checkpoint { data: &data, at: &at })
        }

        /// Stores every parameter as the plan says (batch norms folded, weights packed), once.
        fn load(c: &super::Checkpoint<'_>) -> Result<#name, Error> {
            let mut params = super::zeros(PARAMS_LEN)?;
            super::store_params(c, PARAMS, &mut params);
            #derive
            #body
        }

        /// Runs the kernels on `threads` threads: 0 (the default) the kernels' shared pool
        /// (`CNNC_THREADS`, or every core), 1 the calling thread alone, more a pool of its own.
        pub fn with_threads(mut self, threads: usize) -> #name {
            self.threads = super::Threads::new(threads);
            self.workspace = Default::default();
            self
        }
    }
}

pub fn api_inference(
    g: &Gen<'_>,
    struct_name: &str,
    used: &[&str],
    options: &Options,
) -> Result<TokenStream, CodegenError> {
    if !options.std {
        return api_no_std(g, struct_name, used);
    }
    let name = ident(struct_name);
    let ins = inputs(g);
    let (checks, copies) = take_inputs(&ins, &quote!(&mut ws.arena));
    let params = input_params(&ins);
    let (out_params, out_checks, reads) = outputs(g, &quote!(&ws.arena))?;
    let has_derived = !g.derived.is_empty();
    let derived_field = if has_derived { quote!(derived: super::Floats,) } else { quote!() };
    let derived_init = if has_derived { quote!(derived,) } else { quote!() };
    let cx = cx_init(used, quote!(&self.params), quote!(&self.derived), false);
    let ws = workspace(used);
    let depth_first_bytes = proc_macro2::Literal::u64_unsuffixed(cnnc_ir::depth::DEPTH_FIRST_BYTES);
    let loaders = loaders(
        &name,
        has_derived,
        quote! {
            Ok(#name {
                params,
                #derived_init
                threads: super::Threads::new(0),
                workspace: Default::default(),
                depth_first_bytes: DEPTH_FIRST_BYTES,
            })
        },
    );
    let doc = format!(
        " Model `{}` for inference: parameters stored once as the plan says, a workspace per batch size kept between calls (behind a mutex: calls from several threads take turns).",
        g.graph().name
    );
    Ok(quote! {
        #ws

        #[doc = #doc]
        pub struct #name {
            params: super::Floats,
            #derived_field
            threads: super::Threads,
            workspace: ::std::sync::Mutex<Option<Workspace>>,
            depth_first_bytes: u64,
        }

        /// Leading layers whose values for a whole batch take more than this many bytes run
        /// depth first, each image through all of them before the next, so that one image's
        /// maps stay in the caches (a quarter of a 32 MiB last-level cache).
        pub const DEPTH_FIRST_BYTES: u64 = #depth_first_bytes;

        impl #name {
            #loaders

            /// The same model with another threshold for running layers depth first (see
            /// [`DEPTH_FIRST_BYTES`]): `u64::MAX` runs every layer on the whole batch, 0 as
            /// many depth first as can be.
            pub fn with_depth_first_bytes(self, depth_first_bytes: u64) -> Self {
                #name { depth_first_bytes, ..self }
            }

            /// How many nodes of the plan, from the first, run depth first on a batch of
            /// `batch` (the layers among them: `LAYERS` before that node).
            pub fn depth_first_nodes(&self, batch: usize) -> usize {
                super::depth_first_prefix(DEPTH_FIRST, batch, self.depth_first_bytes)
            }

            /// Runs a batch of `batch` images (each input `batch` times its `INPUT_k_LEN` floats,
            /// row-major `[batch, ...]`) and writes the outputs (`batch` times `OUTPUT_k_LEN`).
            /// Every length is checked first.
            pub fn forward(&self, #(#params,)* batch: usize, #(#out_params),*) -> Result<(), Error> {
                #checks
                #out_checks
                let par = self.threads.par();
                let mut guard = self.workspace.lock().unwrap_or_else(::std::sync::PoisonError::into_inner);
                if guard.as_ref().is_none_or(|w| w.n != batch) {
                    // The old workspace goes before the new one is allocated.
                    *guard = None;
                    *guard = Some(Workspace::new(batch, par)?);
                }
                let Some(ws) = guard.as_mut() else { return Err(Error::Batch { batch }) };
                #copies
                let mut cx = #cx;
                run(&mut cx, self.depth_first_bytes)?;
                #reads
                Ok(())
            }
        }
    })
}

/// The model outputs of an inference entry: parameters, their checks, the copies out.
fn outputs(g: &Gen<'_>, arena: &TokenStream) -> Result<(Vec<TokenStream>, TokenStream, TokenStream), CodegenError> {
    let graph = g.graph();
    let models: Vec<(usize, usize)> = g
        .plan
        .outputs
        .iter()
        .enumerate()
        .filter_map(|(k, r)| if let OutputRole::Model(m) = r { Some((k, *m)) } else { None })
        .collect();
    let mut params = Vec::new();
    let mut checks = Vec::new();
    let mut reads = Vec::new();
    for &(k, m) in &models {
        let arg = if models.len() == 1 { ident("out") } else { ident(&format!("out{m}")) };
        let len = ident(&format!("{}_LEN", constant(&format!("output_{m}"))));
        let id = graph.outputs[k];
        let place = g.place_const(id);
        g.mem.batched(id)?;
        let what = format!("output {m}");
        params.push(quote!(#arg: &mut [f32]));
        checks.push(quote!(super::check_len(#what, #arg.len(), super::batch_len(batch, #len)?)?;));
        reads.push(quote!(super::read_place(#arena, place::#place, batch, #arg);));
    }
    Ok((params, quote!(#(#checks)*), quote!(#(#reads)*)))
}

/// The no-std model: parameters in the caller's storage, the caller's workspace, one thread,
/// the portable kernels (no run-time CPU detection in `core`).
fn api_no_std(g: &Gen<'_>, struct_name: &str, used: &[&str]) -> Result<TokenStream, CodegenError> {
    let name = ident(struct_name);
    let ins = inputs(g);
    let (checks, copies) = take_inputs(&ins, &quote!(&mut *arena));
    let params = input_params(&ins);
    let (out_params, out_checks, reads) = outputs(g, &quote!(&*arena))?;
    let has = |f: &str| used.contains(&f);
    let wl = lit(workspace_len(g)?);
    let mut split =
        vec![quote!(let (arena, rest) = workspace.split_at_mut(super::batch_len(batch, ARENA_PER_IMAGE)?);)];
    for (f, len) in [
        ("whole", quote!(WHOLE_LEN)),
        ("tmp", quote!(super::batch_len(batch, TMP_PER_IMAGE)? + TMP_FIXED)),
        ("scratch", quote!(plans.scratch_len(1))),
    ] {
        if has(f) {
            let fi = ident(f);
            split.push(quote!(let (#fi, rest) = rest.split_at_mut(#len);));
        }
    }
    let cx = cx_init_no_std(used);
    Ok(quote! {
        /// Floats of the parameter storage `from_safetensors` fills: the stored parameters,
        /// their copies in kernel layouts, and room to derive those.
        pub const STORAGE_LEN: usize = PARAMS_LEN + DERIVED_LEN + LOGICAL_LEN;
        /// Floats of the workspace a batch of one image needs (`workspace_len(1)`).
        pub const WORKSPACE_LEN: usize = #wl;

        /// Floats of the workspace a batch of `batch` images needs.
        pub fn workspace_len(batch: usize) -> Result<usize, Error> {
            let plans = Plans::new(batch, k::simd::Cpu::PORTABLE, 1)?;
            let sizes = [
                super::batch_len(batch, ARENA_PER_IMAGE)?,
                WHOLE_LEN,
                super::batch_len(batch, TMP_PER_IMAGE)?,
                TMP_FIXED,
                plans.scratch_len(1),
            ];
            sizes.iter().try_fold(0usize, |a, &b| a.checked_add(b)).ok_or(Error::Batch { batch })
        }

        /// The model for inference without std: parameters in the caller's storage, the
        /// caller's workspace, one thread, the portable kernels.
        pub struct #name<'p> {
            params: &'p [f32],
            derived: &'p [f32],
        }

        impl<'p> #name<'p> {
            /// Loads a safetensors file (PyTorch's `state_dict` names and shapes, F32) into
            /// `storage` (at least [`STORAGE_LEN`] floats), which the model then borrows: a
            /// missing, misshapen, extra or corrupt tensor is an error naming it.
            pub fn from_safetensors(bytes: &[u8], storage: &'p mut [f32]) -> Result<#name<'p>, Error> {
                if storage.len() < STORAGE_LEN {
                    return Err(Error::Length { what: "parameter storage", expected: STORAGE_LEN, found: storage.len() });
                }
                let mut at = [None; TENSOR_COUNT];
                let data = super::locate(bytes, TENSORS, &mut at)?;
                let (params, rest) = storage.split_at_mut(PARAMS_LEN);
                let (derived, rest) = rest.split_at_mut(DERIVED_LEN);
                super::store_params(&super::Checkpoint { data, at: &at }, PARAMS, params);
                super::derive(PARAMS, DERIVED, params, derived, &mut rest[..LOGICAL_LEN])
                    .map_err(|e| Error::kernel("(loading)", e))?;
                Ok(#name { params, derived })
            }

            /// Runs a batch of `batch` images (each input `batch` times its `INPUT_k_LEN`
            /// floats) into the outputs; `workspace` holds at least `workspace_len(batch)`
            /// floats. Every length is checked first.
            pub fn forward(&self, #(#params,)* batch: usize, #(#out_params,)* workspace: &mut [f32]) -> Result<(), Error> {
                #checks
                #out_checks
                let need = workspace_len(batch)?;
                if workspace.len() < need {
                    return Err(Error::Length { what: "workspace", expected: need, found: workspace.len() });
                }
                let plans = Plans::new(batch, k::simd::Cpu::PORTABLE, 1)?;
                #(#split)*
                let _ = rest;
                #copies
                let mut cx = #cx;
                run(&mut cx)?;
                #reads
                Ok(())
            }
        }
    })
}

/// The exact workspace of one image without std (portable kernels, one thread).
fn workspace_len(g: &Gen<'_>) -> Result<usize, CodegenError> {
    let cpu = cnnc_kernels::simd::Cpu::PORTABLE;
    let mut scratch = 0;
    for f in &g.plan_fields {
        let s = f.plan.check(1, cpu, 1).map_err(|e| CodegenError::Unsupported(format!("layer `{}`: {e}", f.layer)))?;
        if f.plan.scratch(&quote!(p)).is_some() {
            scratch = scratch.max(s);
        }
    }
    Ok(g.mem.temp_base + g.max_temp + g.mem.whole + g.tmp_per_image + g.tmp_fixed + scratch)
}

/// `Cx { .. }` in the no-std forward (memory from `ws`, plans from `plans`).
fn cx_init_no_std(used: &[&str]) -> TokenStream {
    let all: Vec<(&str, TokenStream)> = vec![
        ("n", quote!(n: batch)),
        ("cpu", quote!(cpu: k::simd::Cpu::PORTABLE)),
        ("par", quote!(par: &k::par::Serial)),
        ("plans", quote!(plans: &plans)),
        ("params", quote!(params: self.params)),
        ("derived", quote!(derived: self.derived)),
        ("arena", quote!(arena: &mut *arena)),
        ("whole", quote!(whole)),
        ("scratch", quote!(scratch)),
        ("tmp", quote!(tmp)),
        ("win", quote!(win: super::Window::whole(batch, 0))),
    ];
    let fields = all.into_iter().filter(|(f, _)| used.contains(f)).map(|(_, t)| t);
    quote!(Cx { #(#fields),* })
}

pub fn api_training(
    g: &Gen<'_>,
    struct_name: &str,
    used: &[&str],
    options: &Options,
) -> Result<TokenStream, CodegenError> {
    let name = ident(struct_name);
    let ins = inputs(g);
    let (checks, copies) = take_inputs(&ins, &quote!(&mut ws.arena));
    let params = input_params(&ins);
    let graph = g.graph();
    let has_derived = !g.derived.is_empty();
    let ws = workspace(used);
    let derived_field = if has_derived { quote!(derived: super::Floats, logical: super::Floats,) } else { quote!() };
    let derived_init = if has_derived { quote!(derived, logical,) } else { quote!() };
    let derive = if has_derived {
        quote! {
            super::derive(PARAMS, DERIVED, &self.params, &mut self.derived, &mut self.logical)
                .map_err(|e| Error::kernel("(deriving weights)", e))?;
        }
    } else {
        quote!()
    };
    let cx = cx_init(used, quote!(&mut self.params), quote!(&self.derived), true);
    let args = ident(if ["lr", "step", "seed"].iter().any(|f| used.contains(f)) { "args" } else { "_args" });
    let loss = g.plan.outputs.iter().position(|r| *r == OutputRole::Loss);
    let (ret_ty, ret) = match loss {
        Some(k) => {
            let c = g.place_const(graph.outputs[k]);
            (quote!(f32), quote!(Ok(ws.whole[whole::#c][0])))
        }
        None => (quote!(()), quote!(Ok(()))),
    };
    let labels = ins.iter().find(|i| i.classes.is_some()).map(|i| i.arg.clone());
    let labels_bind = match (&labels, used.contains(&"labels")) {
        (Some(l), true) => quote!(let labels = #l;),
        (None, true) => quote!(let labels: &[u32] = &[];),
        (_, false) => quote!(),
    };
    // Gradients of parameters: (name, param index, whole range).
    let mut grads = Vec::new();
    for (k, role) in g.plan.outputs.iter().enumerate() {
        if let OutputRole::ParamGrad(p) = role {
            let slot = lit(g.param_slot(p)?);
            let c = g.place_const(graph.outputs[k]);
            g.mem.whole(graph.outputs[k])?;
            grads.push(quote!((#p, #slot, whole::#c)));
        }
    }
    let gradient = if grads.is_empty() {
        quote!()
    } else {
        quote! {
            /// The gradient of parameter `name` from the last step, in its checkpoint layout
            /// (`None`: no step yet, or a parameter without a gradient output).
            pub fn gradient(&self, name: &str) -> Option<::std::vec::Vec<f32>> {
                const GRADIENTS: &[(&str, usize, ::core::ops::Range<usize>)] = &[#(#grads),*];
                let ws = self.workspace.as_ref()?;
                let (_, slot, range) = GRADIENTS.iter().find(|(n, _, _)| *n == name)?;
                let p = &PARAMS[*slot];
                let mut out = ::std::vec![0.0; p.dims.iter().product()];
                super::unpack_param(p, &ws.whole[range.clone()], &mut out);
                Some(out)
            }
        }
    };
    let mut readers = Vec::new();
    for (k, role) in g.plan.outputs.iter().enumerate() {
        let (fname, doc) = match role {
            OutputRole::Model(0) => {
                ("output", " The model's output of the last step (`batch` times `OUTPUT_0_LEN` floats).")
            }
            OutputRole::InputGrad(0) => {
                ("input_gradient", " The gradient of input 0 from the last step (`batch` times `INPUT_0_LEN` floats).")
            }
            OutputRole::Model(_)
            | OutputRole::InputGrad(_)
            | OutputRole::Loss
            | OutputRole::ParamGrad(_)
            | OutputRole::Update(_) => {
                continue;
            }
        };
        let id = graph.outputs[k];
        g.mem.batched(id)?;
        let (f, c) = (ident(fname), g.place_const(id));
        readers.push(quote! {
            #[doc = #doc]
            pub fn #f(&self, out: &mut [f32]) -> Result<(), Error> {
                let ws = self.workspace.as_ref().ok_or(Error::NotRun)?;
                super::check_len("output", out.len(), ws.n * place::#c.c * place::#c.h * place::#c.w)?;
                super::read_place(&ws.arena, place::#c, ws.n, out);
                Ok(())
            }
        });
    }
    let loaders = loaders(
        &name,
        has_derived,
        quote! {
            Ok(#name { params, #derived_init threads: super::Threads::new(0), workspace: None })
        },
    );
    let inspect = if options.inspect { inspect(g) } else { quote!() };
    let doc = format!(
        " Model `{}` training: each `step` runs the forward pass in its training form, the loss, the backward ops and the optimiser's updates of the plan, on parameters and optimiser state it keeps.",
        graph.name
    );
    Ok(quote! {
        #ws

        #[doc = #doc]
        pub struct #name {
            params: super::Floats,
            #derived_field
            threads: super::Threads,
            workspace: Option<Workspace>,
        }

        impl #name {
            #loaders

            /// One training step on a batch of `batch` images: returns the loss (the mean over
            /// the batch). Parameters, optimiser state and running statistics are updated in
            /// place. Every length is checked first, and every label.
            pub fn step(&mut self, #(#params,)* batch: usize, #args: &super::StepArgs) -> Result<#ret_ty, Error> {
                #checks
                let par = self.threads.par();
                if self.workspace.as_ref().is_none_or(|w| w.n != batch) {
                    self.workspace = None;
                    self.workspace = Some(Workspace::new(batch, par)?);
                }
                let Some(ws) = self.workspace.as_mut() else { return Err(Error::Batch { batch }) };
                #derive
                #copies
                #labels_bind
                let mut cx = #cx;
                run(&mut cx)?;
                #ret
            }

            #gradient
            #(#readers)*
            #inspect

            /// A stored tensor (parameter, running statistic, optimiser state) in its
            /// checkpoint layout.
            pub fn tensor(&self, name: &str) -> Option<::std::vec::Vec<f32>> {
                let k = PARAMS.binary_search_by(|p| p.name.cmp(name)).ok()?;
                let p = &PARAMS[k];
                let mut out = ::std::vec![0.0; p.dims.iter().product()];
                super::unpack_param(p, &self.params[p.offset..p.offset + p.len], &mut out);
                Some(out)
            }

            /// Every stored tensor as a safetensors file (F32, checkpoint layouts, sorted by
            /// name): a checkpoint to resume from, or to read in PyTorch.
            pub fn to_safetensors(&self) -> ::std::vec::Vec<u8> {
                let tensors: ::std::vec::Vec<(&str, &[usize], ::std::vec::Vec<f32>)> = PARAMS
                    .iter()
                    .map(|p| {
                        let mut out = ::std::vec![0.0; p.dims.iter().product()];
                        super::unpack_param(p, &self.params[p.offset..p.offset + p.len], &mut out);
                        (p.name, p.dims, out)
                    })
                    .collect();
                super::write_safetensors(&tensors)
            }
        }
    })
}

/// `value(node)`: a batched value of the last step by node index, recorded right after its
/// node ran (tests only).
fn inspect(g: &Gen<'_>) -> TokenStream {
    let _ = g;
    quote! {
        /// The value of node `node` of the plan's graph in the last step, right after it was
        /// computed (batched values only), in logical order.
        pub fn value(&self, node: usize) -> Option<::std::vec::Vec<f32>> {
            RECORDED.with(|r| r.borrow().get(node).cloned().flatten())
        }
    }
}

/// What `run` adds after each layer in inspect mode: the values it wrote, copied out.
pub fn record(g: &Gen<'_>) -> TokenStream {
    let places = g.mem.values.iter().map(|v| match v {
        Value::Batched(p) => {
            let t = crate::context::place_tokens(p);
            quote!(Some(#t))
        }
        Value::Whole { .. } | Value::Labels { .. } | Value::Nothing => quote!(None),
    });
    quote! {
        ::std::thread_local! {
            static RECORDED: ::core::cell::RefCell<::std::vec::Vec<Option<::std::vec::Vec<f32>>>> =
                const { ::core::cell::RefCell::new(::std::vec::Vec::new()) };
        }

        /// Copies node `node`'s value out of the arena (inspect mode).
        fn record(cx: &Cx<'_>, node: usize) {
            const PLACES: &[Option<Place>] = &[#(#places),*];
            RECORDED.with(|r| {
                let mut r = r.borrow_mut();
                r.resize(PLACES.len(), None);
                r[node] = PLACES[node].map(|p| {
                    let mut out = ::std::vec![0.0; cx.n * p.c * p.h * p.w];
                    super::read_place(cx.arena, p, cx.n, &mut out);
                    out
                });
            });
        }
    }
}
