//! `cnnc`, the command-line front door: argument parsing and exit codes around `cnnc-driver`.
//!
//! Exit codes: 0 success (warnings allowed), 1 the source has errors (rendered on stderr),
//! 2 the command itself could not run (bad arguments, unreadable file, unknown code).

mod explain;

use clap::{Args, Parser, Subcommand, ValueEnum};
use cnnc_diag::{Diagnostic, SourceFile};
use cnnc_driver::{Options, check_models, examples, lower_source, render, summarize, table, thousands, to_json};
use cnnc_ir::Graph;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(Parser, Debug)]
#[command(
    name = "cnnc",
    version,
    about = "A compiler for convolutional neural networks written in .cnn",
    long_about = "A compiler for convolutional neural networks written in .cnn.\n\n\
                  With no command, runs `cnnc demo` on the built-in examples."
)]
struct Cli {
    /// When to colour diagnostics: `auto` colours them only when stderr is a terminal.
    #[arg(long, value_enum, default_value_t = Color::Auto, global = true)]
    color: Color,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Color {
    Auto,
    Always,
    Never,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Check every model of a file (or the one given with --model) and report its size.
    Check(ModelArgs),
    /// Print a model's per-layer table: output shapes, parameters, MACs, receptive fields.
    Summary {
        #[command(flatten)]
        model: ModelArgs,
        /// Print the summary as one line of JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Print a model's typed IR as text.
    Ir(ModelArgs),
    /// Print a model's graph in Graphviz DOT (`cnnc dot m.cnn | dot -Tsvg > m.svg`).
    Dot(ModelArgs),
    /// Explain a diagnostic code such as E0301; with no code, list every code.
    Explain {
        /// The code, as printed in `error[E0301]`.
        code: Option<String>,
    },
    /// Check and summarise the built-in examples (LeNet-5, ResNet-18): needs no files.
    Demo,
}

#[derive(Args, Debug)]
struct ModelArgs {
    /// The .cnn source file.
    file: PathBuf,
    /// Input shape replacing the model's declared one: CxHxW such as 3x64x64, or F such as 784.
    #[arg(long, value_name = "CxHxW", value_parser = parse_shape)]
    shape: Option<InputShape>,
    /// The model to use, when the file defines several.
    #[arg(long, value_name = "NAME")]
    model: Option<String>,
}

/// A parsed `--shape`; a newtype because clap reads `Option<Vec<_>>` as a repeated argument.
#[derive(Clone, Debug)]
struct InputShape(Vec<usize>);

fn parse_shape(arg: &str) -> Result<InputShape, cnnc_driver::ShapeArgError> {
    cnnc_driver::parse_shape(arg).map(InputShape)
}

impl ModelArgs {
    fn options(&self) -> Options {
        Options { model: self.model.clone(), input_shape: self.shape.as_ref().map(|s| s.0.clone()), ..Default::default() }
    }
}

/// Why a command stopped early; `main` turns it into the exit code.
enum Failure {
    /// The source has errors; they were already printed.
    Diagnostics,
    /// The command could not run; the message is printed as `error: ...`.
    Usage(String),
}

fn main() -> ExitCode {
    // `--help` and `--version` exit 0 through clap; argument errors exit 2, as ours do.
    let cli = Cli::parse();
    let color = match cli.color {
        Color::Always => true,
        Color::Never => false,
        // NO_COLOR (no-color.org) is the common way to opt out for every tool at once.
        Color::Auto => std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty()),
    };
    let mut out = String::new();
    let result = match cli.command.unwrap_or(Command::Demo) {
        Command::Check(args) => check(&args, color, &mut out),
        Command::Summary { model, json } => lowered(&model, color, &mut out, |graph| {
            let summary = summarize(graph);
            if json { to_json(&summary) } else { table(&summary) }
        }),
        Command::Ir(args) => lowered(&args, color, &mut out, cnnc_ir::print),
        Command::Dot(args) => lowered(&args, color, &mut out, cnnc_ir::dot),
        Command::Explain { code } => explain::run(code.as_deref(), &mut out).map_err(Failure::Usage),
        Command::Demo => demo(color, &mut out),
    };
    // Whatever was produced goes out even when a later step failed.
    if let Err(e) = std::io::stdout().lock().write_all(out.as_bytes()) {
        // A closed pipe (`cnnc ir m.cnn | head`) means the reader has seen enough.
        if e.kind() != std::io::ErrorKind::BrokenPipe {
            let _ = writeln!(std::io::stderr(), "error: cannot write the output: {e}");
            return ExitCode::from(2);
        }
    }
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Diagnostics) => ExitCode::from(1),
        Err(Failure::Usage(message)) => {
            // `eprintln!` would panic if stderr were closed; the exit code still tells.
            let _ = writeln!(std::io::stderr(), "error: {message}");
            ExitCode::from(2)
        }
    }
}

fn load(path: &Path) -> Result<SourceFile, Failure> {
    cnnc_driver::load(path).map_err(|e| Failure::Usage(e.to_string()))
}

/// Prints diagnostics on stderr; errors among them stop the command.
fn report(diags: &[Diagnostic], file: &SourceFile, color: bool) -> Result<(), Failure> {
    if !diags.is_empty() {
        // Written whole, so that a closed stderr loses the text instead of panicking.
        let _ = std::io::stderr().lock().write_all(render(diags, file, color).as_bytes());
    }
    if cnnc_diag::has_errors(diags) { Err(Failure::Diagnostics) } else { Ok(()) }
}

fn check(args: &ModelArgs, color: bool, out: &mut String) -> Result<(), Failure> {
    let file = load(&args.file)?;
    check_file(&file, &args.options(), color, out).map(drop)
}

/// Lowers every selected model; one `ok:` line per model when all of them are free of errors.
fn check_file(file: &SourceFile, options: &Options, color: bool, out: &mut String) -> Result<Vec<Graph>, Failure> {
    let checked = check_models(file, options);
    report(&checked.diagnostics, file, color)?;
    for graph in &checked.models {
        let summary = summarize(graph);
        let outputs: Vec<String> = graph.outputs.iter().map(|&o| graph[o].shape.to_string()).collect();
        out.push_str(&format!(
            "ok: model `{}`: {} parameters, output {}\n",
            graph.name,
            thousands(summary.params),
            outputs.join(", ")
        ));
    }
    Ok(checked.models)
}

/// Lowers the one selected model and prints what `show` makes of it.
fn lowered(
    args: &ModelArgs,
    color: bool,
    out: &mut String,
    show: impl FnOnce(&Graph) -> String,
) -> Result<(), Failure> {
    let file = load(&args.file)?;
    match lower_source(&file, &args.options()) {
        Ok((graph, warnings)) => {
            report(&warnings, &file, color)?;
            out.push_str(&show(&graph));
            Ok(())
        }
        // Lowering fails only with an error among its diagnostics; exit 1 even if one did not.
        Err(diags) => report(&diags, &file, color).and(Err(Failure::Diagnostics)),
    }
}

/// The built-in job: check and summarise each embedded example.
fn demo(color: bool, out: &mut String) -> Result<(), Failure> {
    out.push_str("cnnc demo: the built-in examples, checked and summarised (no files needed)\n");
    for example in examples::ALL {
        let file = example.source_file();
        out.push_str(&format!("\n== {} ==\n", file.name));
        for graph in check_file(&file, &Options::default(), color, out)? {
            out.push('\n');
            out.push_str(&table(&summarize(&graph)));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn no_command_means_demo_and_color_is_global() {
        let cli = Cli::try_parse_from(["cnnc"]).expect("parses");
        assert!(cli.command.is_none());
        let cli = Cli::try_parse_from(["cnnc", "check", "m.cnn", "--color", "never", "--shape", "3x8x8"]).expect("ok");
        assert_eq!(cli.color, Color::Never);
        let Some(Command::Check(args)) = cli.command else { panic!("check expected") };
        assert_eq!(args.options().input_shape, Some(vec![3, 8, 8]));
    }

    #[test]
    fn bad_shape_is_a_usage_error() {
        let err = Cli::try_parse_from(["cnnc", "ir", "m.cnn", "--shape", "3x0x64"]).unwrap_err();
        assert_eq!(err.exit_code(), 2);
        assert!(err.to_string().contains("dimension 2 of `3x0x64` is 0"), "{err}");
    }
}
