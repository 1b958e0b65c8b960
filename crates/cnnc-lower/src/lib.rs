//! Lowering: elaborates a parsed `.cnn` file into the typed IR graph of one model.
//!
//! Blocks are instantiated, parameters evaluated, loops unrolled and conditions decided here;
//! every layer gets its hierarchical name (`layer1.0.conv1`) and every shape is inferred as its
//! node is added. Nothing here renders text: errors are `Diagnostic` values.

mod checks;
mod elab;
mod foreign;
pub mod layers;
mod shape_diag;
mod value;

use cnnc_diag::{Code, Diagnostic, Span, did_you_mean, has_errors};
use cnnc_ir::{Graph, NodeId};
use cnnc_syntax::ast::{File, Item, ItemKind};
use elab::Elab;

pub use elab::{Budget, MAX_BLOCK_DEPTH, MAX_ITERATIONS, MAX_NODES};
pub use value::Value;

#[derive(Clone, Debug, Default)]
pub struct Options {
    /// Which model to lower; may be left out when the file defines exactly one.
    pub model: Option<String>,
    /// Replaces the model's declared input shape (`--shape 3x64x64`).
    pub input_shape: Option<Vec<usize>>,
    /// Replaces the defaults of model parameters (`--set classes=10`): each value is the text
    /// of an expression, evaluated with no names in scope.
    pub overrides: Vec<(String, String)>,
}

/// A lowered model and the warnings found on the way.
#[derive(Debug)]
pub struct Lowered {
    pub graph: Graph,
    pub warnings: Vec<Diagnostic>,
}

/// The names of the models a file defines, in order.
pub fn model_names(file: &File) -> Vec<&str> {
    file.items.iter().filter(|i| i.kind == ItemKind::Model).map(|i| i.name.name.as_str()).collect()
}

/// Lowers the chosen model. On failure, every diagnostic found (errors and warnings).
pub fn lower(file: &File, options: &Options) -> Result<Lowered, Vec<Diagnostic>> {
    lower_within(file, options, &mut Budget::default())
}

/// Lowers the chosen model, spending from a budget shared with other models of the same file
/// (a file of many models must not multiply the elaboration limits).
pub fn lower_within(file: &File, options: &Options, budget: &mut Budget) -> Result<Lowered, Vec<Diagnostic>> {
    let mut diags = checks::check_file(file);
    if has_errors(&diags) {
        return Err(sorted(diags));
    }
    let model = match choose_model(file, options.model.as_deref()) {
        Ok(m) => m,
        Err(d) => {
            diags.push(d);
            return Err(diags);
        }
    };
    let (graph, more) = elaborate(file, model, options, budget);
    diags.extend(more);
    match graph {
        Some(graph) if !has_errors(&diags) => Ok(Lowered { graph, warnings: sorted(diags) }),
        _ => Err(sorted(diags)),
    }
}

/// The whole-file checks that need no evaluation (duplicate names, shadowed built-ins,
/// recursive blocks), for a front door that elaborates one model at a time (the REPL).
pub fn check_items(file: &File) -> Vec<Diagnostic> {
    sorted(checks::check_file(file))
}

/// Checks a whole file: item-level checks, then every model elaborated at its declared shape.
/// Blocks that no model uses are checked for syntax and recursion only.
pub fn check(file: &File) -> Vec<Diagnostic> {
    let mut diags = checks::check_file(file);
    if !has_errors(&diags) {
        let mut budget = Budget::default();
        for model in file.items.iter().filter(|i| i.kind == ItemKind::Model) {
            diags.extend(elaborate(file, model, &Options::default(), &mut budget).1);
        }
    }
    sorted(diags)
}

fn elaborate(file: &File, model: &Item, options: &Options, budget: &mut Budget) -> (Option<Graph>, Vec<Diagnostic>) {
    let mut elab = Elab::new(file, model, *budget);
    let ok = elab.model(model, options.input_shape.as_deref(), &options.overrides).is_ok();
    *budget = elab.budget;
    let graph = ok.then(|| prune_dead(&elab.graph));
    (graph, elab.diags)
}

fn choose_model<'f>(file: &'f File, wanted: Option<&str>) -> Result<&'f Item, Diagnostic> {
    let models: Vec<&Item> = file.items.iter().filter(|i| i.kind == ItemKind::Model).collect();
    let names: Vec<&str> = models.iter().map(|m| m.name.name.as_str()).collect();
    // Nothing in the file is the culprit, so the error points at its end.
    let end = Span::new(file.span.end as usize, file.span.end as usize);
    let with_models = |mut d: Diagnostic| {
        for m in &models {
            d = d.with_secondary(m.name.span, "a model of this file");
        }
        d
    };
    match (wanted, models.as_slice()) {
        (Some(name), _) => models.iter().copied().find(|m| m.name.name == name).ok_or_else(|| {
            let d = Diagnostic::error(
                Code::NO_MODEL,
                format!("no model named `{name}` in this file"),
                end,
                format!("the file ends without `model {name}`"),
            );
            with_models(match did_you_mean(name, names.iter().copied()) {
                Some(close) => d.with_hint(format!("did you mean `{close}`?")),
                None if names.is_empty() => d.with_hint("the file defines no model"),
                None => d.with_hint(format!("the file defines: {}", names.join(", "))),
            })
        }),
        (None, [one]) => Ok(one),
        (None, []) => {
            Err(Diagnostic::error(Code::NO_MODEL, "the file defines no model", end, "the file ends without a `model`")
                .with_hint("add `model name { input x: [3, 32, 32] ... }`; blocks alone cannot be compiled"))
        }
        (None, many) => Err(with_models(Diagnostic::error(
            Code::NO_MODEL,
            format!("the file defines {} models; choose one", many.len()),
            end,
            "which model?",
        ))
        .with_hint(format!("pass `--model NAME`, one of: {}", names.join(", ")))),
    }
}

/// The graph without nodes whose values reach no output (the unused values were warned about).
fn prune_dead(graph: &Graph) -> Graph {
    // Model inputs stay even when unused: they are the model's signature.
    let mut live = graph.live();
    for &i in &graph.inputs {
        live[i.index()] = true;
    }
    let mut out = Graph::new(graph.name.clone());
    let mut map: Vec<Option<NodeId>> = vec![None; graph.len()];
    for (id, node) in graph.iter() {
        if !live[id.index()] {
            continue;
        }
        let new = if node.inputs.is_empty() && graph.inputs.contains(&id) {
            out.add_input(node.name.clone(), node.shape.clone(), node.span).expect("was valid")
        } else {
            let inputs = node.inputs.iter().map(|i| map[i.index()].expect("inputs come first")).collect();
            out.add(node.op.clone(), inputs, node.name.clone(), node.span).expect("was valid").0
        };
        map[id.index()] = Some(new);
    }
    out.outputs = graph.outputs.iter().map(|o| map[o.index()].expect("outputs are live")).collect();
    // The layers of an unused value (warned about) leave with their frozen marks.
    out.frozen = graph.frozen.clone();
    out.retain_frozen();
    out
}

fn sorted(mut diags: Vec<Diagnostic>) -> Vec<Diagnostic> {
    diags.sort_by_key(|d| (d.primary.span.start, d.severity));
    diags
}
