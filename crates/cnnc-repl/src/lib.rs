//! `cnnc repl`: build, inspect, run and train a network interactively. Each line typed at the
//! prompt takes effect at once: `input x: [1, 8, 8]` starts an implicit model (`repl`), each
//! layer line adds layers and prints their output shape, parameters, MACs and receptive field,
//! `model` and `block` definitions are kept by name, and `:commands` inspect the current model
//! (`:summary`, `:ir`, `:dot`), run it on the JIT (`:run`, `:bench`, `:grad`), train it
//! (`:train`), draw it (`:viz`) and edit the session (`:load`, `:save`, `:undo`, `:reset`).
//!
//! The logic is [`Session`], driven through an [`Io`]; the CLI only picks [`run_terminal`] (a
//! terminal) or [`run_script`] (piped input: the same output with no prompts), which is also
//! how the tests replay transcripts. Diagnostics are the driver's, rendered against the input
//! they point into (`<input 3>:1:9`), so a caret sits under what was typed.
//!
//! How lowering is incremental is told in `layout.rs`.

mod commands;
mod complete;
mod exec;
mod layout;
mod session;
mod terminal;
mod train;

pub use complete::{Completion, Vocabulary, complete};
pub use layout::IMPLICIT;
pub use session::{Io, Session, Status, Weights};
pub use terminal::{ScriptIo, history_path, install_ctrl_c, needs_more, run_script, run_terminal};
