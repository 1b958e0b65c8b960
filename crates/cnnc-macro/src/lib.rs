//! The `cnn!` proc macro: a `.cnn` model inside a Rust program, compiled at build time into the
//! module `cnnc-codegen` generates for it (see `cnnc-model`, the facade to depend on).
//!
//! ```text
//! cnnc_model::cnn! {
//!     #![options(train = sgd)]
//!     model digits(classes = 10) { input x: [1, 8, 8]  x -> conv(32, k=3, pad=1) -> ... }
//! }
//! cnnc_model::cnn!(file = "models/resnet18.cnn");
//! ```
//!
//! A thin shell: `options` reads the macro's input, `source_map` turns the tokens back into
//! `.cnn` text with a map from byte offsets to the tokens' spans, `cnnc_emit::emit_rust` does
//! the compiling, and `expand` turns its result into the module or into compile errors at the
//! offending tokens (for a file, the diagnostics rendered by `cnnc-render`). Everything works
//! on `proc_macro2` tokens, so the unit tests run it outside the compiler.

mod expand;
mod options;
mod source_map;

/// Compiles a `.cnn` model into a module named after it (`pub mod digits { ... }`) holding
/// `Model` (inference) and, with `train = ...`, `Trainer` or `Gradients`. See the `cnnc-model`
/// crate for the options and the generated API.
#[proc_macro]
pub fn cnn(input: proc_macro::TokenStream) -> proc_macro::TokenStream {
    expand::expand(input.into()).into()
}
