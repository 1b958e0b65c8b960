//! `cnnc emit-rust FILE [-o OUT.rs]` and its short form `cnnc FILE -o model.rs`: a model
//! compiled to one self-contained Rust module (the driver's [`cnnc_driver::emit_rust`]).

use crate::train::OptimizerArg;
use crate::{Failure, LossArg, ModelArgs, check_outputs, destination_text, lower_with_source, say};
use clap::Args;
use cnnc_driver::{EmitError, Objective, RustOptions, TrainingOptions, human_bytes, thousands};
use std::ffi::OsString;
use std::path::{Path, PathBuf};

#[derive(Args, Debug)]
pub(crate) struct EmitRustArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Where to write the module (`-` or nothing: standard output). The file is replaced
    /// atomically: a failed write leaves no partial file.
    #[arg(short, long, value_name = "OUT.rs")]
    output: Option<PathBuf>,
    /// A module for `#![no_std]` crates: only `core`, no allocation (the caller passes the
    /// parameter storage and the workspace; `WORKSPACE_LEN` says how large), one thread, the
    /// portable kernels. Inference only.
    #[arg(long, conflicts_with = "train")]
    no_std: bool,
    /// Run every 3x3 convolution on the direct kernel, none as Winograd (which the module
    /// otherwise uses for inference where it is faster, at a slightly different rounding).
    #[arg(long)]
    no_winograd: bool,
    /// Also generate `Trainer`, the training step: forward, the loss, every gradient and the
    /// optimiser's update (batch norm on batch statistics, its running statistics updated).
    #[arg(long)]
    train: bool,
    /// The training step's loss [default: ce for a classifier, mse otherwise].
    #[arg(long, value_enum, requires = "train")]
    loss: Option<LossArg>,
    /// The margin of `hinge` and `multi-margin` [default: 1].
    #[arg(long, value_parser = crate::parse_positive, requires = "train")]
    margin: Option<f64>,
    /// The delta of `huber` [default: 1].
    #[arg(long, value_parser = crate::parse_positive, requires = "train")]
    delta: Option<f64>,
    /// The training step's optimiser (the learning rate is an argument of each step).
    #[arg(long, value_enum, default_value_t = OptimizerArg::Sgd, requires = "train")]
    optimizer: OptimizerArg,
    /// Momentum of sgd and rmsprop (0 for none).
    #[arg(long, default_value_t = 0.9, requires = "train")]
    momentum: f64,
    /// Nesterov momentum (sgd).
    #[arg(long, requires = "train")]
    nesterov: bool,
    /// L2 weight decay, added to each gradient as PyTorch's optimisers do.
    #[arg(long, default_value_t = 0.0, requires = "train")]
    weight_decay: f64,
    /// The training step computes the loss and the gradients but updates nothing.
    #[arg(long, requires = "train", conflicts_with_all = ["optimizer", "momentum", "nesterov", "weight_decay"])]
    gradients_only: bool,
}

impl EmitRustArgs {
    /// The training step asked for, if any.
    fn training(&self, graph: &cnnc_ir::Graph) -> Result<Option<TrainingOptions>, Failure> {
        if !self.train {
            return Ok(None);
        }
        let mut training = cnnc_driver::default_training(graph);
        if let Some(loss) = self.loss {
            training.objective = Objective::Loss(loss.with(self.margin, self.delta)?);
        } else if self.margin.is_some() || self.delta.is_some() {
            return Err(Failure::Usage("--margin and --delta belong to a `--loss` that takes them".into()));
        }
        training.optimizer = if self.gradients_only {
            None
        } else {
            Some(self.optimizer.optimizer(self.momentum, self.nesterov, self.weight_decay))
        };
        Ok(Some(training))
    }
}

/// Lowers the model, compiles it and writes the module.
pub(crate) fn emit_rust(args: &EmitRustArgs, color: bool, out: &mut String) -> Result<(), Failure> {
    let (graph, file) = lower_with_source(&args.model, color)?;
    let output = args.output.clone().unwrap_or_else(|| PathBuf::from("-"));
    check_outputs(&[("-o", &output)], &[("the source FILE", args.model.file.as_path())])?;
    let options = RustOptions { no_std: args.no_std, no_winograd: args.no_winograd, training: args.training(&graph)? };
    let generated = cnnc_driver::emit_rust(&graph, &file, &options).map_err(emit_failure)?;
    match cnnc_driver::write_rust(&output, &generated.text) {
        // A closed pipe (`cnnc emit-rust m.cnn | head`) means the reader has seen enough.
        Err(EmitError::Write { source, .. })
            if source.kind() == std::io::ErrorKind::BrokenPipe && cnnc_driver::is_stdout(&output) =>
        {
            return Ok(());
        }
        written => written.map_err(emit_failure)?,
    }
    let structs: Vec<String> = generated.structs.iter().map(|s| format!("`{s}`")).collect();
    let report = format!(
        "wrote {}: model `{}` as a Rust module{} ({} lines, {}): {}\n",
        destination_text(&output),
        graph.name,
        if args.no_std { " without std" } else { "" },
        thousands(generated.text.lines().count() as u64),
        human_bytes(generated.text.len() as u64),
        structs.join(", "),
    );
    say(Some(&output), report, out);
    Ok(())
}

/// The driver's error as the CLI reports it: the message and the hint, exit 2 (the command
/// could not run; errors in the source are diagnostics, reported before).
fn emit_failure(e: EmitError) -> Failure {
    match e.hint() {
        Some(hint) => Failure::Usage(format!("{e}\n  = help: {hint}")),
        None => Failure::Usage(e.to_string()),
    }
}

/// `cnnc FILE ...` (no command) is `cnnc emit-rust FILE ...`: clap hands the words from FILE on
/// as an external subcommand, and this gives the command line to parse instead. A first word
/// that looks like no file (no `.cnn`, no `/`, not an existing file) is a mistyped command:
/// an error naming the closest one.
pub(crate) fn expand_bare_file(
    args: &[OsString],
    words: &[OsString],
    commands: &[&str],
) -> Result<Vec<OsString>, String> {
    let Some(first) = words.first() else { return Err("no command given".into()) };
    let text = first.to_string_lossy();
    let looks_like_a_file =
        text.ends_with(".cnn") || text.contains(std::path::MAIN_SEPARATOR) || Path::new(first).is_file();
    if !looks_like_a_file {
        let hint = match cnnc_diag::did_you_mean(&text, commands.iter().copied()) {
            Some(close) => format!(" (did you mean `{close}`?)"),
            None => String::new(),
        };
        return Err(format!(
            "unknown command `{text}`{hint}; `cnnc --help` lists the commands, and `cnnc FILE.cnn -o model.rs` compiles \
             a model to Rust"
        ));
    }
    // clap passes everything from the first word on, so the words are the tail of `args`.
    let at = args.len().saturating_sub(words.len());
    let mut expanded = args[..at].to_vec();
    expanded.push("emit-rust".into());
    expanded.extend_from_slice(&args[at..]);
    Ok(expanded)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Cli, Command};
    use clap::Parser;

    fn os(args: &[&str]) -> Vec<OsString> {
        args.iter().map(OsString::from).collect()
    }

    #[test]
    fn a_bare_file_is_emit_rust() {
        let args = os(&["cnnc", "--color", "never", "m.cnn", "-o", "model.rs", "--no-std"]);
        let Some(Command::External(words)) = Cli::try_parse_from(&args).expect("parses").command else {
            panic!("an external subcommand expected")
        };
        assert_eq!(words, os(&["m.cnn", "-o", "model.rs", "--no-std"]));
        let expanded = expand_bare_file(&args, &words, &["check", "emit-rust"]).expect("a file");
        assert_eq!(expanded, os(&["cnnc", "--color", "never", "emit-rust", "m.cnn", "-o", "model.rs", "--no-std"]));
        let Some(Command::EmitRust(emit)) = Cli::try_parse_from(&expanded).expect("parses").command else {
            panic!("emit-rust expected")
        };
        assert_eq!((emit.output.as_deref(), emit.no_std), (Some(Path::new("model.rs")), true));
        // Subcommands keep their meaning.
        assert!(matches!(
            Cli::try_parse_from(os(&["cnnc", "check", "m.cnn"])).unwrap().command,
            Some(Command::Check(_))
        ));
    }

    #[test]
    fn a_mistyped_command_is_not_a_file() {
        let args = os(&["cnnc", "chek", "m.cnn"]);
        let Some(Command::External(words)) = Cli::try_parse_from(&args).expect("parses").command else {
            panic!("an external subcommand expected")
        };
        let err = expand_bare_file(&args, &words, &["check", "summary"]).unwrap_err();
        assert!(err.starts_with("unknown command `chek` (did you mean `check`?)"), "{err}");
    }

    #[test]
    fn training_options() {
        let parse = |extra: &[&str]| {
            let mut args = vec!["cnnc", "emit-rust", "m.cnn"];
            args.extend_from_slice(extra);
            Cli::try_parse_from(args)
        };
        assert!(parse(&["--train", "--no-std"]).is_err(), "no training without std");
        assert!(parse(&["--loss", "mse"]).is_err(), "--loss needs --train");
        assert!(parse(&["--train", "--gradients-only", "--optimizer", "adam"]).is_err());
        // The optimiser's defaults do not conflict with --gradients-only.
        assert!(parse(&["--train", "--gradients-only"]).is_ok());
        let Some(Command::EmitRust(emit)) = parse(&["--train", "--loss", "huber", "--delta", "0.5"]).unwrap().command
        else {
            panic!("emit-rust expected")
        };
        assert_eq!(
            emit.loss.map(|l| l.with(emit.margin, emit.delta).ok()),
            Some(Some(cnnc_driver::Loss::Huber { delta: 0.5 }))
        );
    }
}
