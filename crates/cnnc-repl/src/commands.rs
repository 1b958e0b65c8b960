//! The `:commands`: their names (for `:help` and completion), their parsing, and the ones that
//! inspect or edit the session; running models is in `exec.rs` and training in `train.rs`.

use crate::layout::Piece;
use crate::session::{Io, Session, Status, plural};
use cnnc_driver::{Mode, Pass};
use std::path::Path;
use std::rc::Rc;

/// Every command with its arguments and what it does, in `:help`'s order.
pub const COMMANDS: &[(&str, &str, &str)] = &[
    ("help", "", "this list"),
    ("load", "FILE", "add the models and blocks of a .cnn file"),
    ("model", "[NAME]", "choose the model the commands act on (with no name: list the models)"),
    ("summary", "", "the current model's layers, parameters, MACs, receptive fields and fusion"),
    ("ir", "[PASSES]", "the typed IR, after the passes given (`all`, or a list)"),
    ("dot", "FILE [PASSES]", "write the graph in Graphviz DOT"),
    ("run", "[X.npy|random]", "run the model on the JIT: output shape, top-5 classes, time"),
    ("bench", "[ROUNDS]", "compile time, per-layer times on the JIT and their share of the peak"),
    ("grad", "[CLASS]", "the cross-entropy loss of the last input and the gradient of every parameter"),
    ("train", "[epochs=N batch=N lr=X optimizer=sgd|adam data=digits|DIR seed=N]", "train on the JIT"),
    ("weights", "FILE", "load weights (safetensors) for the current model"),
    ("save", "FILE", "write the session's definitions as a .cnn file"),
    ("viz", "filters|maps LAYER FILE.png", "a convolution's kernels, or a layer's maps of the last input"),
    ("undo", "", "take back the last definition or line"),
    ("reset", "", "forget everything"),
    ("quit", "", "leave (Ctrl-D does too)"),
];

/// Runs one command line (without its `:`).
pub fn run(session: &mut Session, line: &str, io: &mut dyn Io) -> Status {
    let line = line.trim();
    let (name, args) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
    let args: Vec<&str> = args.split_whitespace().collect();
    match name {
        "help" | "h" | "?" => help(io),
        "load" => with_one(&args, "FILE", io, |path, io| load(session, Path::new(path), io)),
        "model" => model(session, &args, io),
        "summary" => summary(session, io),
        "ir" => ir(session, &args, io),
        "dot" => dot(session, &args, io),
        "run" => crate::exec::run(session, &args, io),
        "bench" => crate::exec::bench(session, &args, io),
        "grad" => crate::exec::grad(session, &args, io),
        "train" => crate::train::train(session, &args, io),
        "weights" => with_one(&args, "FILE", io, |path, io| crate::exec::weights(session, Path::new(path), io)),
        "save" => with_one(&args, "FILE", io, |path, io| save(session, Path::new(path), io)),
        "viz" => crate::exec::viz(session, &args, io),
        "undo" => match session.undo() {
            Some(input) => {
                let first = input.lines().next().unwrap_or("");
                let more = if input.lines().count() > 1 { " ..." } else { "" };
                io.out(&format!("undone: `{first}`{more}\n"));
                Status::Ok
            }
            None => {
                io.err("error: nothing to undo\n");
                Status::Failed
            }
        },
        "reset" => {
            session.reset();
            io.out("the session is empty\n");
            Status::Ok
        }
        "quit" | "q" | "exit" => Status::Quit,
        other => {
            let names = COMMANDS.iter().map(|c| c.0);
            let hint = match cnnc_diag::did_you_mean(other, names) {
                Some(close) => format!("did you mean `:{close}`?"),
                None => "`:help` lists the commands".to_string(),
            };
            io.err(&format!("error: unknown command `:{other}`\n  = help: {hint}\n"));
            Status::Failed
        }
    }
}

/// A command that takes exactly one argument.
fn with_one(args: &[&str], what: &str, io: &mut dyn Io, f: impl FnOnce(&str, &mut dyn Io) -> Status) -> Status {
    match args {
        [one] => f(one, io),
        _ => usage(&format!("expected one argument, {what}"), io),
    }
}

/// Prints a usage error.
pub(crate) fn usage(message: &str, io: &mut dyn Io) -> Status {
    io.err(&format!("error: {message}\n  = help: `:help` lists the commands and their arguments\n"));
    Status::Failed
}

fn help(io: &mut dyn Io) -> Status {
    let mut text = String::from(
        "Type .cnn at the prompt: `input x: [1, 8, 8]` starts a model, then each line adds layers\n\
         (`conv(8, k=3) -> relu`), `let` and `freeze` lines add statements, and `model` and `block`\n\
         definitions are kept by name (a brace left open continues on the next line).\n\ncommands:\n",
    );
    for (name, args, what) in COMMANDS {
        let head = if args.is_empty() { format!(":{name}") } else { format!(":{name} {args}") };
        if head.len() > 30 {
            text.push_str(&format!("  {head}\n  {:30}  {what}\n", ""));
        } else {
            text.push_str(&format!("  {head:30}  {what}\n"));
        }
    }
    io.out(&text);
    Status::Ok
}

fn load(session: &mut Session, path: &Path, io: &mut dyn Io) -> Status {
    match cnnc_driver::load(path) {
        Ok(file) => {
            let range = 0..file.text.len();
            session.define(Piece { origin: Rc::new(file), range }, io)
        }
        Err(e) => {
            io.err(&format!("error: {e}\n"));
            Status::Failed
        }
    }
}

fn model(session: &mut Session, args: &[&str], io: &mut dyn Io) -> Status {
    let names = session.model_names();
    match args {
        [] => {
            let current = session.current_name();
            let list: Vec<String> = names
                .iter()
                .map(|n| if Some(n) == current.as_ref() { format!("{n} (current)") } else { n.clone() })
                .collect();
            io.out(&if list.is_empty() {
                "no models yet\n".to_string()
            } else {
                format!("models: {}\n", list.join(", "))
            });
            Status::Ok
        }
        [name] if names.iter().any(|n| n == name) => {
            session.selected = Some((*name).to_string());
            match session.current(io) {
                Some(graph) => {
                    io.out(&format!("{}\n", crate::session::one_line(&graph)));
                    Status::Ok
                }
                None => Status::Failed,
            }
        }
        [name] => {
            let hint = cnnc_diag::did_you_mean(name, names.iter().map(String::as_str))
                .map_or_else(|| format!("the models: {}", names.join(", ")), |c| format!("did you mean `{c}`?"));
            io.err(&format!("error: no model named `{name}`\n  = help: {hint}\n"));
            Status::Failed
        }
        _ => usage("expected at most one argument, the model's NAME", io),
    }
}

fn summary(session: &Session, io: &mut dyn Io) -> Status {
    let Some(graph) = session.current(io) else { return Status::Failed };
    match cnnc_driver::summarize_optimized(&graph, Pass::ALL, Mode::Inference) {
        Ok(summary) => {
            io.out(&cnnc_driver::table(&summary));
            Status::Ok
        }
        Err(e) => {
            io.err(&format!("error: {e}\n"));
            Status::Failed
        }
    }
}

/// The passes of `:ir` and `:dot`, none when not given.
fn passes(arg: Option<&&str>, io: &mut dyn Io) -> Option<Vec<Pass>> {
    match arg {
        None => Some(Vec::new()),
        Some(list) => match cnnc_driver::parse_passes(list) {
            Ok(passes) => Some(passes),
            Err(e) => {
                io.err(&format!("error: {e}\n"));
                None
            }
        },
    }
}

fn ir(session: &Session, args: &[&str], io: &mut dyn Io) -> Status {
    if args.len() > 1 {
        return usage("expected at most one argument, the PASSES (`all` or a comma-separated list)", io);
    }
    let Some(graph) = session.current(io) else { return Status::Failed };
    let Some(passes) = passes(args.first(), io) else { return Status::Failed };
    if passes.is_empty() {
        io.out(&cnnc_ir::print(&graph));
        return Status::Ok;
    }
    match cnnc_driver::optimize(&graph, None, &passes, Mode::Inference) {
        Ok(opt) => {
            let notes: String = cnnc_driver::pass_report(&opt).iter().map(|l| format!("{l}\n")).collect();
            io.out(&format!("{notes}{}", opt.print()));
            Status::Ok
        }
        Err(e) => {
            io.err(&format!("error: {e}\n"));
            Status::Failed
        }
    }
}

fn dot(session: &Session, args: &[&str], io: &mut dyn Io) -> Status {
    let (path, list) = match args {
        [path] => (path, None),
        [path, list] => (path, Some(list)),
        _ => return usage("expected FILE and optionally the PASSES", io),
    };
    let Some(graph) = session.current(io) else { return Status::Failed };
    let Some(passes) = passes(list, io) else { return Status::Failed };
    let text = if passes.is_empty() {
        cnnc_ir::dot(&graph)
    } else {
        match cnnc_driver::optimize(&graph, None, &passes, Mode::Inference) {
            Ok(opt) => cnnc_driver::dot_fused(&graph, &opt),
            Err(e) => {
                io.err(&format!("error: {e}\n"));
                return Status::Failed;
            }
        }
    };
    write_text(Path::new(path), &text, &format!("the graph of model `{}` (Graphviz DOT)", graph.name), io)
}

fn save(session: &Session, path: &Path, io: &mut dyn Io) -> Status {
    let text = session.save_text();
    let count = session.entries.iter().filter(|e| matches!(e.kind, crate::layout::Kind::Item { .. })).count();
    let implicit =
        if session.model_names().iter().any(|n| n == crate::layout::IMPLICIT) { " and model `repl`" } else { "" };
    write_text(path, &text, &format!("{}{implicit}", plural(count, "definition")), io)
}

/// Writes a text file atomically and says so.
pub(crate) fn write_text(path: &Path, text: &str, what: &str, io: &mut dyn Io) -> Status {
    match cnnc_runtime::write_atomic(path, |w| w.write_all(text.as_bytes())) {
        Ok(()) => {
            io.out(&format!("wrote `{}`: {what}\n", path.display()));
            Status::Ok
        }
        Err(e) => {
            io.err(&format!("error: cannot write `{}`: {e}\n", path.display()));
            Status::Failed
        }
    }
}
