//! The kernels' source text, for the Rust code generator: the one source of every kernel.
//!
//! Each kernel file is self-contained Rust that is both a module of this crate and, pasted
//! verbatim, a module of a generated crate: no `crate::` paths (siblings are `super::name`), no
//! external crates, no `#[macro_export]`. The code generator writes
//! `mod cnnc_kernels { pub mod simd { <text> } ... }` ([`module_text`]) with the files a model
//! needs ([`closure`]), and its own test compares that embedded copy with [`files`]; this
//! crate's test checks that [`files`] is byte-identical to the files on disk and lists every
//! module of `lib.rs`. Files marked [`Needs::Core`] use only `core` (no allocation: scratch
//! comes from the caller), so a future `no_std` module can take only those.

/// What a file needs besides the other kernel files.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Needs {
    /// `core` only.
    Core,
    /// `std` (threads, run-time CPU detection).
    Std,
    /// This crate itself (this file: its `include_str!` paths only resolve here); never
    /// embedded.
    Crate,
}

/// One kernel file: its module name, its text, what it needs, and the sibling modules it
/// uses (directly; [`closure`] follows them).
#[derive(Clone, Copy, Debug)]
pub struct Source {
    pub module: &'static str,
    pub text: &'static str,
    pub needs: Needs,
    pub deps: &'static [&'static str],
}

macro_rules! sources {
    ($($module:ident: $needs:ident [$($dep:ident)*];)*) => {
        &[$(Source {
            module: stringify!($module),
            text: include_str!(concat!(stringify!($module), ".rs")),
            needs: Needs::$needs,
            deps: &[$(stringify!($dep)),*],
        }),*]
    };
}

/// Every module of the crate in dependency order (each file's dependencies come before it).
/// Files using the `isa_fn!` dispatch depend on `simd` and `x86`.
pub fn files() -> &'static [Source] {
    sources! {
        fmath: Core [];
        simd: Core [fmath];
        x86: Core [simd];
        vmath: Core [simd x86];
        act: Core [simd vmath x86];
        error: Core [];
        par: Core [];
        view: Core [error];
        tile: Core [act fmath simd x86];
        conv: Core [act error simd tile view];
        pack: Core [error];
        conv_small: Core [conv tile];
        conv_fwd: Core [conv conv_small error par tile];
        winograd: Core [act conv error par simd tile view x86];
        conv_bwd_data: Core [conv conv_small error par simd tile view];
        optim: Core [error fmath par simd x86];
        conv_bwd_weights: Core [conv error optim par simd tile view];
        conv_generic: Core [act conv error par simd view];
        conv_plain_rows: Core [act conv error simd x86];
        conv_plain: Core [conv conv_plain_rows error par simd tile view];
        conv_plain_bwd: Core [conv conv_plain_rows error par simd view x86];
        depthwise: Core [conv error pack par simd tile view x86];
        fc: Core [act error par simd tile x86];
        fc_update: Core [fc optim];
        bn: Core [error fmath par view];
        lrn: Core [error par simd view vmath x86];
        pool: Core [error fmath par simd view x86];
        pool_bwd: Core [error fmath par pool simd view x86];
        pool2x2: Core [error par simd view];
        softmax: Core [error par simd vmath x86];
        eltwise: Core [act error par simd view x86];
        reorder: Core [error par view];
        cpu: Std [error simd];
        threads: Std [par];
        ffi: Std [conv conv_bwd_data conv_bwd_weights conv_fwd winograd conv_plain conv_plain_bwd depthwise fc fc_update lrn optim pack par pool pool_bwd pool2x2 threads];
        peak: Std [simd];
        lines: Std [];
        source: Crate [];
    }
}

/// The files `modules` need, dependencies included, in dependency order.
pub fn closure(modules: &[&str]) -> Vec<&'static Source> {
    let all = files();
    let mut wanted: Vec<&str> = modules.to_vec();
    let mut i = 0;
    while i < wanted.len() {
        if let Some(f) = all.iter().find(|f| f.module == wanted[i]) {
            for d in f.deps {
                if !wanted.contains(d) {
                    wanted.push(d);
                }
            }
        }
        i += 1;
    }
    all.iter().filter(|f| wanted.contains(&f.module) && f.needs != Needs::Crate).collect()
}

/// The text of `mod cnnc_kernels { ... }` holding exactly the files `modules` need.
pub fn module_text(modules: &[&str]) -> String {
    let mut out = String::from("#[allow(dead_code, unused_imports, clippy::all)]\npub mod cnnc_kernels {\n");
    for f in closure(modules) {
        out.push_str("pub mod ");
        out.push_str(f.module);
        out.push_str(" {\n");
        out.push_str(f.text);
        out.push_str("}\n");
    }
    out.push_str("}\n");
    out
}
