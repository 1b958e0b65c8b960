//! Missing command-line arguments, in cnnc's words: what each is, and a whole command that
//! works, instead of clap's bare "the following required arguments were not provided".

use clap::error::{ContextKind, ContextValue, ErrorKind};
use std::ffi::OsString;

/// What a required argument is, by the name clap gives it (`--input`, `<FILE>`): how to write
/// it and what it holds.
const ARGUMENTS: &[(&str, &str, &str)] = &[
    ("<FILE>", "FILE.cnn", "the .cnn source of the model"),
    ("--input", "--input X.npy", "the input batch, a float32 .npy of shape [N, C, H, W] (or [N, F] for a flat model)"),
    (
        "--target",
        "--target T.npy",
        "the targets: int64 class indices of shape [N] for ce and the hinges, a float tensor shaped like the output for \
         mse, l1 and huber",
    ),
    ("--loss", "--loss ce", "the loss: ce, mse, l1, huber, hinge or multi-margin"),
    ("--weights", "--weights W.safetensors", "the trained weights (safetensors, PyTorch state_dict names)"),
    ("--layer", "--layer NAME", "the layer whose output is saved (`cnnc summary` lists the layers by name)"),
];

/// What `-o` is, which depends on the command.
const OUTPUTS: &[(&str, &str, &str)] = &[
    ("init", "-o W.safetensors", "where to write the weights (`-` for standard output)"),
    ("features", "-o F.npy", "where to write the layer's output for each image (`-` for standard output)"),
];

/// A command that works, for each subcommand.
const EXAMPLES: &[(&str, &str)] = &[
    ("check", "cnnc check examples/resnet50.cnn"),
    ("summary", "cnnc summary examples/resnet50.cnn"),
    ("ir", "cnnc ir examples/lenet5.cnn"),
    ("dot", "cnnc dot examples/lenet5.cnn | dot -Tsvg > lenet5.svg"),
    ("init", "cnnc init examples/lenet5.cnn --seed 1 -o lenet5.safetensors"),
    ("run", "cnnc run examples/lenet5.cnn --weights lenet5.safetensors --input x.npy -o out.npy"),
    (
        "grad",
        "cnnc grad examples/lenet5.cnn --weights lenet5.safetensors --input x.npy --target y.npy --loss ce -o \
         grads.safetensors",
    ),
    ("gradcheck", "cnnc gradcheck examples/lenet5.cnn --train"),
    ("train", "cnnc train examples/digits.cnn"),
    ("bench", "cnnc bench examples/resnet18.cnn --batch 1"),
    ("features", "cnnc features examples/lenet5.cnn --weights lenet5.safetensors --layer f6 --input x.npy -o f6.npy"),
    ("emit-rust", "cnnc emit-rust examples/lenet5.cnn -o lenet5.rs"),
];

/// The message for a clap error about missing required arguments, given the command line
/// (program name first); `None` for other errors, or when the subcommand is not recognised.
pub fn missing_arguments(error: &clap::Error, args: &[OsString]) -> Option<String> {
    if error.kind() != ErrorKind::MissingRequiredArgument {
        return None;
    }
    let missing: Vec<String> = match error.get(ContextKind::InvalidArg)? {
        ContextValue::Strings(names) => names.clone(),
        ContextValue::String(name) => vec![name.clone()],
        _ => return None,
    };
    // The subcommand: the first argument naming one (options come before it or after it).
    let (command, example) =
        args.iter().skip(1).find_map(|a| EXAMPLES.iter().find(|(c, _)| a.to_str() == Some(c)).copied())?;
    let lines: Vec<String> = missing
        .iter()
        .map(|m| {
            // clap writes `--input <X.npy>` for options and `<FILE>` for positionals.
            let key = m.split_whitespace().next().unwrap_or(m);
            let output = OUTPUTS.iter().find(|(c, _, _)| key == "--output" && *c == command).map(|(_, w, t)| (*w, *t));
            match output.or_else(|| ARGUMENTS.iter().find(|(k, _, _)| *k == key).map(|(_, w, t)| (*w, *t))) {
                Some((written, what)) => format!("  - `{written}`: {what}\n"),
                None => format!("  - `{m}`\n"),
            }
        })
        .collect();
    let count = if lines.len() == 1 { "an argument".to_string() } else { format!("{} arguments", lines.len()) };
    Some(format!(
        "error: `cnnc {command}` needs {count} it was not given:\n{}  = example: {example}\n  = help: `cnnc {command} \
         --help` describes every argument\n",
        lines.concat()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Cli;
    use clap::Parser;

    fn message(args: &[&str]) -> Option<String> {
        let args: Vec<OsString> = args.iter().map(OsString::from).collect();
        let error = Cli::try_parse_from(&args).expect_err("arguments are missing");
        missing_arguments(&error, &args)
    }

    #[test]
    fn every_required_argument_of_every_command_is_explained() {
        let cases: &[(&[&str], &[&str])] = &[
            (&["cnnc", "check"], &["`FILE.cnn`: the .cnn source"]),
            (&["cnnc", "summary", "--json"], &["`FILE.cnn`"]),
            (&["cnnc", "ir"], &["`FILE.cnn`"]),
            (&["cnnc", "--color", "never", "dot"], &["`FILE.cnn`"]),
            (&["cnnc", "init", "m.cnn"], &["`-o W.safetensors`: where to write the weights"]),
            (&["cnnc", "run", "m.cnn"], &["`--input X.npy`: the input batch"]),
            (&["cnnc", "grad", "m.cnn", "--input", "x.npy"], &["2 arguments", "`--target T.npy`", "`--loss ce`"]),
            (&["cnnc", "grad"], &["4 arguments", "`FILE.cnn`", "`--input X.npy`"]),
            (&["cnnc", "bench", "--json"], &["`FILE.cnn`", "cnnc bench examples/resnet18.cnn"]),
            (
                &["cnnc", "features", "m.cnn"],
                &["4 arguments", "`--weights W.safetensors`", "`--layer NAME`", "`-o F.npy`"],
            ),
        ];
        for (args, needles) in cases {
            let text = message(args).unwrap_or_else(|| panic!("{args:?}: no message"));
            let command = args.iter().find(|a| EXAMPLES.iter().any(|(c, _)| c == *a)).unwrap();
            assert!(text.starts_with(&format!("error: `cnnc {command}` needs ")), "{text}");
            assert!(text.contains("  = example: cnnc "), "{text}");
            assert!(!text.contains("the following required arguments"), "{text}");
            for needle in *needles {
                assert!(text.contains(needle), "{args:?}: {needle:?} not in\n{text}");
            }
        }
        // Every subcommand with a required argument has an example.
        let with_examples: Vec<&str> = EXAMPLES.iter().map(|(c, _)| *c).collect();
        for sub in <Cli as clap::CommandFactory>::command().get_subcommands() {
            if sub.get_arguments().any(|a| a.is_required_set()) {
                assert!(with_examples.contains(&sub.get_name()), "`{}` has no example", sub.get_name());
            }
        }
    }

    #[test]
    fn other_errors_are_left_to_clap() {
        let args: Vec<OsString> =
            ["cnnc", "run", "m.cnn", "--input", "x", "--backend", "gpu"].map(OsString::from).into();
        let error = Cli::try_parse_from(&args).unwrap_err();
        assert!(missing_arguments(&error, &args).is_none());
    }
}
