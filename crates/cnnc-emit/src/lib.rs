//! IO-free compilation of `.cnn` source text into one generated Rust module: parse, lower, the
//! optimisation passes and `cnnc-codegen`, with typed results.
//!
//! [`emit_rust`] takes a [`SourceFile`] (a name and its text, already in memory) and
//! [`Options`], and returns the module's text and the warnings found on the way, or an
//! [`EmitError`]: the source's diagnostics (spans into the text, unrendered), or the passes' or
//! the code generator's error. It reads no file, renders nothing and runs no model, so the
//! `cnn!` macro can call it at compile time without the driver's interpreter, JIT and file
//! I/O in its dependency tree; a command writing the module to a file calls the same function.
//!
//! The module holds the inference struct `Model` and, when [`Options::training`] asks for it,
//! a training struct: `Trainer` (one optimiser step: forward, backward, update) or `Gradients`
//! (forward and backward, the parameter gradients as results).

use cnnc_codegen::{CodegenError, Program, Source};
use cnnc_diag::{Diagnostic, SourceFile};
use cnnc_ir::{Graph, Loss, Optimizer};
use cnnc_passes::{Objective, PassError, PassOptions, TrainingOptions};
use std::fmt;

/// What to compile and how.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// The model to lower (none: the file's only model), its input shape and parameter values.
    pub lower: cnnc_lower::Options,
    /// `None`: inference only (`Model`).
    pub training: Option<Training>,
    /// What the module is built for and with.
    pub module: Module,
}

/// How the module is built, whatever the model: the code generator's switches.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Module {
    /// `true`: a std module; `false`: `core` only (inference only, see `cnnc_codegen::Options`).
    pub std: bool,
    /// `false`: no Winograd kernels, every convolution direct (`cnnc_codegen::Options::winograd`).
    pub winograd: bool,
}

impl Default for Module {
    fn default() -> Module {
        Module { std: true, winograd: true }
    }
}

/// The training struct to add beside `Model`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Training {
    /// `None`: [`default_loss`] of the model.
    pub loss: Option<Loss>,
    /// `Some`: a step struct `Trainer` updating the parameters. `None`: a `Gradients` struct
    /// returning them.
    pub optimizer: Option<Optimizer>,
}

/// A compiled module.
#[derive(Clone, Debug)]
pub struct Emitted {
    /// The model's name, as the source declares it (`lenet5`).
    pub model: String,
    /// The public structs of the module, in order (`Model`, then `Trainer` or `Gradients`).
    pub structs: Vec<String>,
    /// The module's text (formatted Rust; it starts with the module's `//!` doc comment and
    /// inner attribute, so it is a file or the body of a `mod { ... }`).
    pub text: String,
    /// Warnings of the front end (stride remainders, unused values), spans into the source.
    pub warnings: Vec<Diagnostic>,
}

/// Why a source did not compile to Rust.
#[derive(Clone, Debug, PartialEq)]
pub enum EmitError {
    /// Syntax or lowering errors (and any warnings found with them), spans into the source.
    Source(Vec<Diagnostic>),
    /// The passes could not build a plan (the training transform refusing the model, say).
    Passes(PassError),
    /// The code generator could not compile the plan.
    Codegen(CodegenError),
}

impl fmt::Display for EmitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EmitError::Source(diags) => {
                let errors = diags.iter().filter(|d| d.is_error()).count();
                write!(f, "the source has {errors} error{}", if errors == 1 { "" } else { "s" })
            }
            EmitError::Passes(e) => write!(f, "the passes failed: {e}"),
            EmitError::Codegen(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for EmitError {}

/// The struct names of the training entries.
pub const TRAINER: &str = "Trainer";
pub const GRADIENTS: &str = "Gradients";

/// Compiles `source` into a Rust module as `options` say. Syntax errors stop before lowering,
/// as in the driver: lowering a half-parsed file would only add noise.
pub fn emit_rust(source: &SourceFile, options: &Options) -> Result<Emitted, EmitError> {
    let (ast, syntax_errors) = cnnc_syntax::parse(&source.text);
    if !syntax_errors.is_empty() {
        return Err(EmitError::Source(syntax_errors.iter().map(|e| e.diagnostic()).collect()));
    }
    let lowered = cnnc_lower::lower(&ast, &options.lower).map_err(EmitError::Source)?;
    let graph = lowered.graph;
    let training = options.training.map(|t| {
        let name = if t.optimizer.is_some() { TRAINER } else { GRADIENTS };
        (name, training_options(&graph, &t))
    });
    let (structs, text) = emit_graph(&graph, source, training.as_ref().map(|(name, t)| (*name, t)), options.module)
        .map_err(EmitError::from)?;
    Ok(Emitted { model: graph.name.clone(), structs, text, warnings: lowered.warnings })
}

/// Why a lowered graph did not compile to Rust: [`EmitError`] without the source's errors.
#[derive(Clone, Debug, PartialEq)]
pub enum GraphError {
    /// The passes could not build a plan (the training transform refusing the model, say).
    Passes(PassError),
    /// The code generator could not compile the plan.
    Codegen(CodegenError),
}

impl From<GraphError> for EmitError {
    fn from(e: GraphError) -> EmitError {
        match e {
            GraphError::Passes(e) => EmitError::Passes(e),
            GraphError::Codegen(e) => EmitError::Codegen(e),
        }
    }
}

/// A lowered `graph` compiled to one module: its plans (every pass, the verifier on), `Model`,
/// and with `training` the training struct it names (`Trainer` or `Gradients`), each layer's
/// doc comment quoting `source`. Returns the module's public structs in order and its text.
/// [`emit_rust`] runs the front end first; the driver, which lowers through its own front door,
/// calls this directly, so `cnnc emit-rust` and `cnn!` generate the same module.
pub fn emit_graph(
    graph: &Graph,
    source: &SourceFile,
    training: Option<(&str, &TrainingOptions)>,
    module: Module,
) -> Result<(Vec<String>, String), GraphError> {
    let passes = PassOptions { verify: true, ..PassOptions::all() };
    let inference = cnnc_passes::optimize(graph, None, &passes).map_err(GraphError::Passes)?.plan;
    let training = match training {
        None => None,
        Some((name, t)) => {
            Some((name, cnnc_passes::optimize_training(graph, None, &passes, t).map_err(GraphError::Passes)?.plan))
        }
    };
    let mut program = Program::inference(graph, &inference);
    if let Some((name, plan)) = &training {
        program = program.with(name, plan);
    }
    let codegen = cnnc_codegen::Options {
        source: Some(Source { name: source.name.clone(), text: source.text.clone() }),
        std: module.std,
        winograd: module.winograd,
        ..cnnc_codegen::Options::default()
    };
    let text = cnnc_codegen::emit(&program, &codegen).map_err(GraphError::Codegen)?;
    Ok((program.entries.iter().map(|e| e.name.clone()).collect(), text))
}

/// The loss a model trains with when none is named: softmax cross-entropy for a classifier (one
/// output of at least two class scores, `[C]` or `[C, 1, 1]`), mean squared error otherwise (as
/// the driver's `--train` does).
pub fn default_loss(graph: &Graph) -> Loss {
    let classifier = graph.outputs.len() == 1 && {
        let shape = &graph[graph.outputs[0]].shape.0;
        matches!(shape[..], [c] | [c, 1, 1] if c >= 2)
    };
    if classifier { Loss::CrossEntropy } else { Loss::Mse }
}

/// The training transform's options: the loss on the one output, or for a model of several
/// outputs their gradients as inputs; batch statistics; no input gradients.
fn training_options(graph: &Graph, t: &Training) -> TrainingOptions {
    let loss = t.loss.unwrap_or_else(|| default_loss(graph));
    let mut options = TrainingOptions { optimizer: t.optimizer, ..TrainingOptions::new(loss) };
    if graph.outputs.len() != 1 {
        options.objective = Objective::OutputGradients;
    }
    options
}

#[cfg(test)]
mod tests {
    use super::*;
    use cnnc_diag::Code;
    use cnnc_ir::Sgd;

    const SMALL: &str = "model small(classes = 4) {\n    input x: [1, 8, 8]\n    x -> conv(4, k=3) -> relu -> flatten -> fc(classes)\n}\n";

    fn file(text: &str) -> SourceFile {
        SourceFile::new("small.cnn", text)
    }

    #[test]
    fn inference_module_names_the_model_and_quotes_the_source() {
        let out = emit_rust(&file(SMALL), &Options::default()).expect("compiles");
        assert_eq!(out.model, "small");
        assert_eq!(out.structs, ["Model"]);
        assert!(out.text.starts_with("//! Model `small`, compiled by cnnc from `small.cnn`"), "{}", &out.text[..200]);
        assert!(out.text.contains("pub struct Model"));
        assert!(!out.text.contains("pub struct Trainer"));
        assert!(out.text.contains("x -> conv(4, k=3) -> relu -> flatten -> fc(classes)"), "layer docs quote the line");
        assert!(out.warnings.is_empty());
    }

    #[test]
    fn training_adds_a_trainer_or_gradients() {
        let sgd = Optimizer::Sgd(Sgd { momentum: 0.9, weight_decay: 0.0, nesterov: false });
        let options = Options { training: Some(Training { loss: None, optimizer: Some(sgd) }), ..Options::default() };
        let out = emit_rust(&file(SMALL), &options).expect("compiles");
        assert_eq!(out.structs, ["Model", TRAINER]);
        assert!(out.text.contains("pub struct Trainer") && out.text.contains("pub struct StepArgs"));
        let options =
            Options { training: Some(Training { loss: Some(Loss::Mse), optimizer: None }), ..Options::default() };
        let out = emit_rust(&file(SMALL), &options).expect("compiles");
        assert_eq!(out.structs, ["Model", GRADIENTS]);
    }

    #[test]
    fn a_core_only_module() {
        let out = emit_rust(
            &file(SMALL),
            &Options { module: Module { std: false, ..Module::default() }, ..Options::default() },
        )
        .expect("compiles");
        assert!(out.text.contains("depends on nothing but core"), "{}", &out.text[..400]);
        assert!(!out.text.contains("::std::"), "no std paths");
    }

    #[test]
    fn options_reach_lowering() {
        let lower = cnnc_lower::Options {
            input_shape: Some(vec![1, 12, 12]),
            overrides: vec![("classes".into(), "7".into())],
            ..Default::default()
        };
        let out = emit_rust(&file(SMALL), &Options { lower, ..Options::default() }).expect("compiles");
        assert!(out.text.contains("[1, 12, 12]"), "input shape in the tables");
        assert!(
            out.text.contains("OUTPUT_0_LEN: usize = 7"),
            "{}",
            out.text.lines().filter(|l| l.contains("OUTPUT_0_LEN")).collect::<Vec<_>>().join("\n")
        );
    }

    #[test]
    fn source_errors_and_warnings_stay_typed() {
        let Err(EmitError::Source(diags)) =
            emit_rust(&file("model m { input x: [1, 8, 8] x -> convv(4) }"), &Options::default())
        else {
            panic!("an unknown layer is a source error")
        };
        assert_eq!(diags[0].code, Code::UNKNOWN_LAYER);
        let Err(EmitError::Source(diags)) = emit_rust(&file("model m { input x: [1, 8, 8] x -> "), &Options::default())
        else {
            panic!("a syntax error is a source error")
        };
        assert!(diags.iter().all(|d| d.code == Code::SYNTAX || d.code == Code::UNCLOSED_DELIMITER), "{diags:?}");
        let strided = "model m {\n    input x: [1, 8, 8]\n    x -> conv(2, k=3, stride=2) -> flatten\n}\n";
        let out = emit_rust(&file(strided), &Options::default()).expect("a warning does not stop compilation");
        // One for the rows, one for the columns.
        assert_eq!(out.warnings.len(), 2, "{:?}", out.warnings);
        assert!(out.warnings.iter().all(|w| w.code == Code::STRIDE_REMAINDER));
    }

    #[test]
    fn default_loss_follows_the_output() {
        let (ast, _) = cnnc_syntax::parse(SMALL);
        let g = cnnc_lower::lower(&ast, &cnnc_lower::Options::default()).expect("lowers").graph;
        assert_eq!(default_loss(&g), Loss::CrossEntropy);
        let (ast, _) = cnnc_syntax::parse("model m { input x: [1, 8, 8]  x -> conv(1, k=3) }");
        let g = cnnc_lower::lower(&ast, &cnnc_lower::Options::default()).expect("lowers").graph;
        assert_eq!(default_loss(&g), Loss::Mse);
    }
}
