//! The course's tools: `cnnc gradcheck` (the backward pass against finite differences) and
//! `cnnc features` (a trained network as a feature extractor).

use crate::{
    BackendArg, Failure, ModelArgs, check_outputs, destination_text, load_input, lower_with_source, say,
    weights_or_init,
};
use clap::Args;
use cnnc_driver::gradcheck::{self, GradcheckOptions};
use cnnc_driver::{MemoryBudget, Task, check_memory, execute};
use std::path::{Path, PathBuf};

#[derive(Args, Debug)]
pub(crate) struct GradcheckArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// The weights to check at; without it, parameters initialised from --seed.
    #[arg(long, value_name = "W.safetensors")]
    weights: Option<PathBuf>,
    /// Ignore tensors of the weights file the model does not have.
    #[arg(long, requires = "weights")]
    allow_extra_weights: bool,
    /// The seed of the random batch, the elements checked, the dropout masks and (without
    /// --weights) the parameters.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// The size of the random batch (2 or more for batch norm with --train).
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u64).range(1..=4096))]
    batch: u64,
    /// How many elements of each tensor to check (two forward passes each).
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    samples: u64,
    /// Check the backward pass of training: batch norm on batch statistics, dropout active.
    #[arg(long)]
    train: bool,
    /// The back end whose gradients are checked (finite differences always run on the
    /// reference interpreter in f64).
    #[arg(long, value_enum, default_value_t = BackendArg::Interp)]
    backend: BackendArg,
}

/// Checks the gradients; exit 1 when one is wrong.
pub(crate) fn gradcheck(
    args: &GradcheckArgs,
    budget: &MemoryBudget,
    color: bool,
    out: &mut String,
) -> Result<(), Failure> {
    let (graph, _) = lower_with_source(&args.model, color)?;
    let batch = usize::try_from(args.batch).unwrap_or(usize::MAX);
    check_memory(&graph, Task::Grad { batch, dump: false }, budget)?;
    let params = weights_or_init(&graph, args.weights.as_deref(), args.allow_extra_weights, args.seed, budget)?;
    let options = GradcheckOptions {
        batch,
        samples: usize::try_from(args.samples).unwrap_or(usize::MAX),
        seed: args.seed,
        train: args.train,
    };
    let check = gradcheck::gradcheck(&graph, &params, options, args.backend.backend())?;
    let mode = if args.train { "training" } else { "inference" };
    let mut text = format!(
        "gradcheck of `{}` on the {} back end: {} loss {} on a random batch of {batch} ({mode} mode)\n",
        graph.name,
        args.backend.name(),
        check.loss.name(),
        check.value,
    );
    let width = check.tensors.iter().map(|t| t.name.len()).max().unwrap_or(6).max(6);
    text.push_str(&format!(
        "  {:<width$}  {:>17}  {:>10}  {:>13}  {:>13}\n",
        "tensor", "checked", "worst rel.", "analytic", "numeric"
    ));
    for t in &check.tensors {
        text.push_str(&format!(
            "  {:<width$}  {:>17}  {:>10.2e}  {:>13.6e}  {:>13.6e}  {}\n",
            t.name,
            format!("{} of {}", t.checked, t.elements),
            t.worst,
            t.analytic,
            t.numeric,
            gradcheck::verdict(t.worst, check.f32_gradients)
        ));
    }
    let worst = check.tensors.iter().map(|t| t.worst).fold(0.0, f64::max);
    let wrong: Vec<&str> =
        check.tensors.iter().filter(|t| gradcheck::verdict(t.worst, check.f32_gradients) == "WRONG").map(|t| t.name.as_str()).collect();
    text.push_str(&match (gradcheck::verdict(worst, check.f32_gradients), wrong.is_empty()) {
        ("ok", _) => format!("every gradient agrees with central differences (worst relative error {worst:.1e})\n"),
        (_, true) => format!(
            "the gradients agree to {worst:.1e} at worst: above 1e-5, which a ReLU or max-pooling kink within the \
             step can cause; try another --seed\n"
        ),
        (_, false) => format!("WRONG gradients: {}\n", wrong.join(", ")),
    });
    if !check.few_values.is_empty() {
        let listed: Vec<String> = check.few_values.iter().map(|(name, n)| format!("`{name}` ({n})")).collect();
        text.push_str(&format!(
            "note: in training mode, batch norm normalising few values per channel makes finite differences \
             unreliable: {}; a larger --batch or --shape checks it properly\n",
            listed.join(", ")
        ));
    }
    out.push_str(&text);
    if wrong.is_empty() { Ok(()) } else { Err(Failure::Quiet(1)) }
}

#[derive(Args, Debug)]
pub(crate) struct FeaturesArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// The trained weights.
    #[arg(long, value_name = "W.safetensors")]
    weights: PathBuf,
    /// Ignore tensors of the weights file the model does not have.
    #[arg(long)]
    allow_extra_weights: bool,
    /// The layer whose output is the feature vector (`cnnc summary` lists the names).
    #[arg(long, value_name = "NAME")]
    layer: String,
    /// The input batch: float32 (or float64) .npy of shape [N, C, H, W], or [N, F].
    #[arg(long, value_name = "X.npy")]
    input: PathBuf,
    /// Where to write the features, [N, ...the layer's shape] (float32 .npy); `-` for standard
    /// output.
    #[arg(short, long, value_name = "F.npy")]
    output: PathBuf,
    /// The back end that runs the model.
    #[arg(long, value_enum, default_value_t = BackendArg::Interp)]
    backend: BackendArg,
}

/// Runs the model up to `--layer` and saves that layer's output.
pub(crate) fn features(
    args: &FeaturesArgs,
    budget: &MemoryBudget,
    color: bool,
    out: &mut String,
) -> Result<(), Failure> {
    let (graph, file) = lower_with_source(&args.model, color)?;
    let inputs = [
        ("the source FILE", args.model.file.as_path()),
        ("--input", args.input.as_path()),
        ("--weights", args.weights.as_path()),
    ];
    check_outputs(&[("-o", &args.output)], &inputs)?;
    let (input, warnings) = load_input(&graph, &file, &args.model, &args.input, budget)?;
    crate::warn(&warnings);
    check_memory(&graph, Task::Run { batch: input.shape[0], passes: false, dump: false }, budget)?;
    let params = weights_or_init(&graph, Some(args.weights.as_path()), args.allow_extra_weights, 0, budget)?;
    let features = execute::features(&graph, &params, &input, &args.layer, args.backend.backend())?;
    execute::save_output(&args.output, &features)?;
    let text = format!(
        "features: the output of `{}`, {:?}, written to {}\n",
        args.layer,
        features.shape,
        destination_text(Path::new(&args.output))
    );
    say(Some(&args.output), text, out);
    Ok(())
}
