//! A REPL session: the definitions entered so far, the implicit model built layer by layer,
//! the weights and the last input; [`Session::eval`] takes one complete input (a definition, a
//! layer line or a `:command`) and reports its effect through an [`Io`].
//!
//! An input that fails changes nothing: its diagnostics are printed and the session goes on.

use crate::layout::{self, Entry, IMPLICIT, Kind, Layout, Piece};
use cnnc_diag::{Diagnostic, SourceFile, has_errors};
use cnnc_driver::execute::{Tensor, TensorMap};
use cnnc_driver::{Options, summarize, thousands};
use cnnc_ir::Graph;
use cnnc_runtime::Cancel;
use cnnc_syntax::ast::ItemKind;
use std::rc::Rc;

/// Where a session's output goes. The CLI prints to the terminal; tests collect a transcript.
pub trait Io {
    /// Results.
    fn out(&mut self, text: &str);
    /// Diagnostics and errors.
    fn err(&mut self, text: &str);
    /// A live status line (the loss during `:train`), replaced by the next one; empty clears it.
    fn status(&mut self, line: &str);
}

/// What an input did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    Ok,
    /// It failed; the session is as before.
    Failed,
    /// `:quit`.
    Quit,
}

/// The weights of one model, with the input normalisation they were trained with.
#[derive(Clone, Debug)]
pub struct Weights {
    pub model: String,
    pub tensors: TensorMap,
    pub normalization: Option<cnnc_data::Normalization>,
    /// Changes whenever the tensors do, so a compiled model knows whether it is stale.
    pub generation: u64,
}

/// What `:undo` restores.
#[derive(Clone, Debug)]
struct Snapshot {
    entries: Vec<Entry>,
    selected: Option<String>,
    /// The input that changed the session, for `:undo` to name.
    input: String,
}

/// One session's state.
#[derive(Debug)]
pub struct Session {
    pub(crate) entries: Vec<Entry>,
    /// The model commands act on, when chosen by a definition or `:model`; otherwise the
    /// implicit model, or the last model defined.
    pub(crate) selected: Option<String>,
    undo: Vec<Snapshot>,
    /// How many inputs were read, to name them (`<input 3>`).
    inputs: usize,
    pub(crate) color: bool,
    /// The memory a command may use (checked before a model is compiled or a file read).
    pub(crate) budget: cnnc_driver::MemoryBudget,
    /// The weights of each model that has run, by model name.
    pub(crate) weights: std::collections::BTreeMap<String, Weights>,
    /// The last batch `:run` fed the model (before normalisation).
    pub(crate) last_input: Option<Tensor>,
    /// The implicit model's graph after its last accepted line (to tell which layers are new).
    implicit: Option<Graph>,
    /// The last weights generation handed out.
    generations: u64,
    /// The model `:run` or `:bench` compiled last, reused while its graph, batch and weights
    /// stay the same.
    pub(crate) compiled: Option<crate::exec::CachedModel>,
    /// Set by Ctrl-C (the terminal's handler holds a clone), cleared before each input; long
    /// commands check it and stop with `cancelled`.
    pub(crate) cancel: Cancel,
}

impl Session {
    pub fn new(color: bool, budget: cnnc_driver::MemoryBudget) -> Session {
        Session {
            entries: Vec::new(),
            selected: None,
            undo: Vec::new(),
            inputs: 0,
            color,
            budget,
            weights: Default::default(),
            last_input: None,
            implicit: None,
            generations: 0,
            compiled: None,
            cancel: Cancel::new(),
        }
    }

    /// The token that cancels the running command: a Ctrl-C handler requests it, and the
    /// loops around the session clear it before each input.
    pub fn cancel_token(&self) -> &Cancel {
        &self.cancel
    }

    /// A new weights generation.
    pub(crate) fn next_generation(&mut self) -> u64 {
        self.generations += 1;
        self.generations
    }

    /// Evaluates one complete input.
    pub fn eval(&mut self, input: &str, io: &mut dyn Io) -> Status {
        let trimmed = input.trim();
        if trimmed.is_empty() || is_comment(trimmed) {
            return Status::Ok;
        }
        if let Some(command) = trimmed.strip_prefix(':') {
            return crate::commands::run(self, command, io);
        }
        self.inputs += 1;
        let origin = Rc::new(SourceFile::new(format!("<input {}>", self.inputs), input));
        let start = input.len() - input.trim_start().len();
        let piece = Piece { range: start..start + trimmed.len(), origin };
        match first_word(trimmed) {
            "model" | "block" => self.define(piece, io),
            "input" => self.set_input(piece, io),
            "let" | "freeze" => self.add_implicit(Entry { piece, kind: Kind::Stmt }, io),
            _ => {
                // `-> conv(..)` reads as the continuation of the chain it is.
                let text = piece.text();
                let rest = text.strip_prefix("->").map(str::trim_start);
                let range = match rest {
                    Some(rest) => piece.range.end - rest.len()..piece.range.end,
                    None => piece.range.clone(),
                };
                self.add_implicit(Entry { piece: Piece { range, ..piece }, kind: Kind::Layers }, io)
            }
        }
    }

    /// Defines (or redefines) the models and blocks of a file or input.
    pub(crate) fn define(&mut self, piece: Piece, io: &mut dyn Io) -> Status {
        let (ast, syntax) = cnnc_syntax::parse(piece.text());
        if !syntax.is_empty() {
            let diags: Vec<Diagnostic> = syntax.iter().map(|e| e.diagnostic()).collect();
            return self.report_in(&piece, &diags, io);
        }
        if ast.items.is_empty() {
            io.err("error: nothing to define\n");
            return Status::Failed;
        }
        let (entries, added) = self.with_items(&ast.items, &piece);
        let layout = layout::assemble(&entries);
        let (lines, mut diags) = check_added(&layout, &entries, &added);
        // Warnings about other definitions were shown when those were entered.
        diags
            .retain(|d| d.is_error() || layout.origin_of(d.primary.span).is_some_and(|o| Rc::ptr_eq(o, &piece.origin)));
        io.err(&layout.render(&dedup(diags.clone()), self.color));
        if has_errors(&diags) {
            return Status::Failed;
        }
        // Lowering a loaded file's models is the long part, and cannot stop half-way: a
        // Ctrl-C during it drops the result.
        if self.cancel.is_requested() {
            io.err("cancelled\n");
            return Status::Failed;
        }
        self.commit(entries, &piece);
        if let Some(model) = added.iter().rev().find(|a| a.kind == ItemKind::Model) {
            self.selected = Some(model.name.clone());
        }
        if added.iter().any(|a| a.name == IMPLICIT) {
            self.implicit = lower(&layout, IMPLICIT).ok().map(|(g, _)| g);
        }
        io.out(&lines);
        Status::Ok
    }

    /// The session's entries with `items` (of `piece`) added, each replacing any definition of
    /// its name; a saved session's `model repl` becomes the implicit model again.
    fn with_items(&self, items: &[cnnc_syntax::ast::Item], piece: &Piece) -> (Vec<Entry>, Vec<Added>) {
        let mut entries = self.entries.clone();
        let mut added = Vec::new();
        for item in items {
            let name = item.name.name.clone();
            let kind = item.kind;
            if let Some(implicit) = layout::implicit_entries(item, piece) {
                let redefined = entries.iter().any(|e| !matches!(e.kind, Kind::Item { .. }));
                entries.retain(|e| matches!(e.kind, Kind::Item { .. }));
                entries.extend(implicit);
                added.push(Added { kind, name, params: 0, redefined });
                continue;
            }
            let redefined = entries.iter().any(|e| matches!(&e.kind, Kind::Item { name: n, .. } if *n == name));
            entries.retain(|e| !matches!(&e.kind, Kind::Item { name: n, .. } if *n == name));
            let range = piece.range.start + item.span.start as usize..piece.range.start + item.span.end as usize;
            let piece = Piece { origin: piece.origin.clone(), range };
            entries.push(Entry { piece, kind: Kind::Item { kind, name: name.clone() } });
            added.push(Added { kind, name, params: item.params.len(), redefined });
        }
        (entries, added)
    }

    /// Starts the implicit model, or changes its input (its layers are kept and re-inferred).
    fn set_input(&mut self, piece: Piece, io: &mut dyn Io) -> Status {
        let name = input_name(piece.text()).unwrap_or("x").to_string();
        let changed = piece.clone();
        let mut entries = self.entries.clone();
        let had_layers = entries.iter().any(|e| e.kind == Kind::Layers);
        entries.retain(|e| !matches!(e.kind, Kind::Input { .. }));
        entries.push(Entry { piece, kind: Kind::Input { name } });
        // A new input size re-infers every layer: all its warnings count again.
        let Some(graph) = self.try_implicit(&entries, None, io) else { return Status::Failed };
        let input = &graph[graph.inputs[0]];
        if had_layers {
            io.out(&format!("{}\n", one_line(&graph)));
        } else {
            io.out(&format!("input {}: {}\n", input.name, input.shape));
        }
        self.implicit = Some(graph);
        self.commit(entries, &changed);
        self.selected = None;
        Status::Ok
    }

    /// Adds a statement or layers to the implicit model, printing each new layer.
    fn add_implicit(&mut self, entry: Entry, io: &mut dyn Io) -> Status {
        if !self.entries.iter().any(|e| matches!(e.kind, Kind::Input { .. })) {
            io.err("error: the implicit model has no input yet\n  = help: start it with `input x: [1, 28, 28]` (channels, height, width), or define a `model`\n");
            return Status::Failed;
        }
        let layers = entry.kind == Kind::Layers;
        let changed = entry.piece.clone();
        let mut entries = self.entries.clone();
        entries.push(entry);
        let Some(graph) = self.try_implicit(&entries, Some(&changed.origin), io) else { return Status::Failed };
        if layers {
            let before = self.implicit.as_ref().map_or(0, |g| g.len());
            io.out(&layer_rows(&graph, before));
        }
        self.implicit = Some(graph);
        self.commit(entries, &changed);
        self.selected = None;
        Status::Ok
    }

    /// Lowers the implicit model of `entries`, printing its errors, and its warnings about
    /// `new` (those about earlier lines were shown with them), or all of them.
    fn try_implicit(&self, entries: &[Entry], new: Option<&Rc<SourceFile>>, io: &mut dyn Io) -> Option<Graph> {
        let layout = layout::assemble(entries);
        match lower(&layout, IMPLICIT) {
            Ok((graph, mut warnings)) => {
                if let Some(new) = new {
                    warnings.retain(|w| layout.origin_of(w.primary.span).is_none_or(|o| Rc::ptr_eq(o, new)));
                }
                io.err(&layout.render(&warnings, self.color));
                Some(graph)
            }
            Err(diags) => {
                io.err(&layout.render(&dedup(diags), self.color));
                None
            }
        }
    }

    fn report_in(&self, piece: &Piece, diags: &[Diagnostic], io: &mut dyn Io) -> Status {
        let moved: Vec<Diagnostic> = diags.iter().map(|d| shift(d, piece.range.start)).collect();
        io.err(&cnnc_driver::render_diagnostics(&moved, &piece.origin, self.color));
        if has_errors(diags) { Status::Failed } else { Status::Ok }
    }

    fn commit(&mut self, entries: Vec<Entry>, input: &Piece) {
        let previous = std::mem::replace(&mut self.entries, entries);
        let input = if input.origin.name.starts_with("<input") {
            input.text().trim().to_string()
        } else {
            format!(":load {}", input.origin.name)
        };
        self.undo.push(Snapshot { entries: previous, selected: self.selected.clone(), input });
    }

    /// Takes back the last definition or line: the input undone, or `None` when there is
    /// nothing to undo.
    pub(crate) fn undo(&mut self) -> Option<String> {
        let snapshot = self.undo.pop()?;
        self.entries = snapshot.entries;
        self.selected = snapshot.selected;
        self.implicit = lower(&layout::assemble(&self.entries), IMPLICIT).ok().map(|(g, _)| g);
        Some(snapshot.input)
    }

    /// Forgets everything.
    pub(crate) fn reset(&mut self) {
        *self = Session::new(self.color, self.budget);
    }

    /// The name of the model commands act on.
    pub(crate) fn current_name(&self) -> Option<String> {
        if let Some(name) = &self.selected {
            return Some(name.clone());
        }
        if self.entries.iter().any(|e| matches!(e.kind, Kind::Input { .. })) {
            return Some(IMPLICIT.to_string());
        }
        self.model_names().pop()
    }

    /// The models defined, in order, the implicit one last.
    pub(crate) fn model_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .entries
            .iter()
            .filter_map(|e| match &e.kind {
                Kind::Item { kind: ItemKind::Model, name } => Some(name.clone()),
                _ => None,
            })
            .collect();
        if self.entries.iter().any(|e| matches!(e.kind, Kind::Input { .. })) {
            names.push(IMPLICIT.to_string());
        }
        names
    }

    /// The names of the blocks defined.
    pub(crate) fn block_names(&self) -> Vec<String> {
        self.entries
            .iter()
            .filter_map(|e| match &e.kind {
                Kind::Item { kind: ItemKind::Block, name } => Some(name.clone()),
                _ => None,
            })
            .collect()
    }

    /// The current model, lowered; on failure the error is printed.
    pub(crate) fn current(&self, io: &mut dyn Io) -> Option<Graph> {
        let Some(name) = self.current_name() else {
            io.err("error: there is no model yet\n  = help: type `input x: [1, 28, 28]` and then layers, define a `model`, or `:load FILE`\n");
            return None;
        };
        let layout = layout::assemble(&self.entries);
        match lower(&layout, &name) {
            Ok((graph, _)) => Some(graph),
            Err(diags) => {
                io.err(&layout.render(&dedup(diags), self.color));
                None
            }
        }
    }

    /// The current model's layer names (for completion); none when it does not lower.
    pub(crate) fn layer_names(&self) -> Vec<String> {
        let Some(name) = self.current_name() else { return Vec::new() };
        match lower(&layout::assemble(&self.entries), &name) {
            Ok((graph, _)) => graph.iter().filter(|(_, n)| !n.inputs.is_empty()).map(|(_, n)| n.name.clone()).collect(),
            Err(_) => Vec::new(),
        }
    }

    /// The text `:save` writes.
    pub(crate) fn save_text(&self) -> String {
        layout::save_text(&self.entries)
    }
}

/// A definition just entered.
struct Added {
    kind: ItemKind,
    name: String,
    params: usize,
    /// Whether it replaces an earlier one.
    redefined: bool,
}

/// Checks the definitions just added, elaborating only what changed: the new models (and the
/// implicit model when a block it may use changed); blocks get the checks that need no
/// evaluation. The one-line summaries, and every diagnostic.
fn check_added(layout: &Layout, entries: &[Entry], added: &[Added]) -> (String, Vec<Diagnostic>) {
    let (file, syntax) = cnnc_syntax::parse(&layout.file.text);
    let mut diags: Vec<Diagnostic> = syntax.iter().map(|e| e.diagnostic()).collect();
    diags.extend(cnnc_lower::check_items(&file));
    let block_changed = added.iter().any(|a| a.kind == ItemKind::Block);
    let implicit = entries.iter().any(|e| matches!(e.kind, Kind::Input { .. }));
    if block_changed
        && implicit
        && !has_errors(&diags)
        && let Err(more) = lower(layout, IMPLICIT)
    {
        diags.extend(more);
    }
    let mut lines = String::new();
    for a in added {
        let again = if a.redefined { " (replaces the earlier one)" } else { "" };
        match a.kind {
            ItemKind::Block => {
                lines.push_str(&format!("block `{}` defined, {}{again}\n", a.name, plural(a.params, "parameter")));
            }
            ItemKind::Model if !has_errors(&diags) => match lower(layout, &a.name) {
                Ok((graph, _)) => lines.push_str(&format!("{}{again}\n", one_line(&graph))),
                Err(more) => diags.extend(more),
            },
            ItemKind::Model => {}
        }
    }
    (lines, diags)
}

/// Lowers one model of the assembled session.
fn lower(layout: &Layout, model: &str) -> Result<(Graph, Vec<Diagnostic>), Vec<Diagnostic>> {
    let options = Options { model: Some(model.to_string()), ..Options::default() };
    cnnc_driver::lower_source(&layout.file, &options)
}

/// Diagnostics without repeats (the file-level checks run once per lowering).
fn dedup(diags: Vec<Diagnostic>) -> Vec<Diagnostic> {
    let mut seen = Vec::new();
    diags
        .into_iter()
        .filter(|d| {
            let key = (d.code, d.primary.span, d.message.clone());
            let new = !seen.contains(&key);
            seen.push(key);
            new
        })
        .collect()
}

/// A diagnostic of a piece parsed on its own, moved to the piece's place in its origin.
fn shift(d: &Diagnostic, by: usize) -> Diagnostic {
    let mut d = d.clone();
    d.primary.span = d.primary.span.offset(by);
    for label in &mut d.secondary {
        label.span = label.span.offset(by);
    }
    d
}

/// `model lenet5: input [1, 32, 32] -> output [10], 12 layers, 61,706 parameters, 416,520 MACs`.
pub(crate) fn one_line(graph: &Graph) -> String {
    let s = summarize(graph);
    let outputs: Vec<String> = s.outputs.iter().map(|o| format!("{o:?}")).collect();
    format!(
        "model `{}`: input {:?} -> output {}, {}, {} parameters, {} MACs",
        s.model,
        s.input,
        outputs.join(", "),
        plural(s.layers.len(), "layer"),
        thousands(s.params),
        thousands(s.macs)
    )
}

/// One row for each layer from node `from` on: name, op, output shape, parameters, MACs and
/// receptive field.
fn layer_rows(graph: &Graph, from: usize) -> String {
    let stats = cnnc_ir::node_stats(graph);
    let mut out = String::new();
    for (id, node) in graph.iter().skip(from) {
        if node.inputs.is_empty() {
            continue;
        }
        let s = &stats[id.index()];
        let rf = s.receptive_field[0].max(s.receptive_field[1]);
        out.push_str(&format!(
            "  {:<12} {:<10} {:<16} params {:>9}  MACs {:>13}  RF {}\n",
            node.name,
            node.op.keyword(),
            node.shape.to_string(),
            thousands(s.params),
            thousands(s.macs),
            rf
        ));
    }
    out
}

pub(crate) fn plural(n: usize, what: &str) -> String {
    if n == 1 { format!("1 {what}") } else { format!("{n} {what}s") }
}

fn first_word(text: &str) -> &str {
    let end = text.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(text.len());
    &text[..end]
}

/// The name in `input x: [..]`.
fn input_name(text: &str) -> Option<&str> {
    let rest = text.strip_prefix("input")?.trim_start();
    let name = first_word(rest);
    (!name.is_empty()).then_some(name)
}

fn is_comment(text: &str) -> bool {
    text.lines().all(|l| l.trim().is_empty() || l.trim_start().starts_with("//"))
}
