//! `cnnc repl` (a terminal session, or a script from a file or piped stdin) and `cnnc viz`
//! (a convolution's kernels or a layer's feature maps as PNG), thin shells over `cnnc-repl`
//! and the driver's `viz`.

use crate::{
    BackendArgs, Failure, ModelArgs, check_outputs, destination_text, load_input, lower_with_source, normalize,
    weights_and_normalization,
};
use clap::{Args, Subcommand};
use cnnc_driver::execute;
use cnnc_driver::viz::{self, Picture, VizError};
use cnnc_driver::{MemoryBudget, Task, check_memory};
use cnnc_ir::Graph;
use std::io::IsTerminal;
use std::path::PathBuf;

#[derive(Args, Debug)]
pub(crate) struct ReplArgs {
    /// A script to run instead of reading the terminal: one input per line, as typed at the
    /// prompt. Piped standard input is run the same way.
    script: Option<PathBuf>,
    /// Copy each script line to the output before its result (`> ` before it), so the output
    /// reads as a transcript.
    #[arg(long)]
    echo: bool,
}

/// Runs the REPL; a script exits 1 when any of its inputs failed.
pub(crate) fn repl(args: &ReplArgs, budget: &MemoryBudget, color: bool) -> Result<(), Failure> {
    let mut session = cnnc_repl::Session::new(color, *budget);
    let status = match &args.script {
        Some(path) => {
            let file = std::fs::File::open(path)
                .map_err(|e| Failure::Usage(format!("cannot read `{}`: {e}", path.display())))?;
            cnnc_repl::install_ctrl_c(session.cancel_token().clone());
            cnnc_repl::run_script(&mut session, std::io::BufReader::new(file), &mut cnnc_repl::ScriptIo, args.echo)
        }
        None if !std::io::stdin().is_terminal() => {
            cnnc_repl::install_ctrl_c(session.cancel_token().clone());
            cnnc_repl::run_script(&mut session, std::io::stdin().lock(), &mut cnnc_repl::ScriptIo, args.echo)
        }
        None => {
            cnnc_repl::run_terminal(&mut session, cnnc_repl::history_path())
                .map_err(|e| Failure::Usage(format!("the terminal failed: {e}")))?;
            cnnc_repl::Status::Ok
        }
    };
    match status {
        // A script ended by Ctrl-C (the cancelled input said `cancelled`).
        cnnc_repl::Status::Failed if session.cancel_token().is_requested() => Err(Failure::Quiet(130)),
        cnnc_repl::Status::Failed => Err(Failure::Quiet(1)),
        cnnc_repl::Status::Ok | cnnc_repl::Status::Quit => Ok(()),
    }
}

#[derive(Subcommand, Debug)]
pub(crate) enum VizArgs {
    /// A convolution's kernels as a grid of tiles, each scaled to its own range: colour tiles
    /// for a layer on three channels (as AlexNet's first layer), grey otherwise (one row per
    /// output channel, one tile per input channel).
    Filters {
        #[command(flatten)]
        model: ModelArgs,
        /// The convolution, by its name in `cnnc summary` (`conv1`, `layer1.0.conv1`).
        layer: String,
        #[command(flatten)]
        weights: VizWeights,
        /// The PNG file to write.
        #[arg(short, long, value_name = "OUT.png")]
        output: PathBuf,
    },
    /// A layer's feature maps for one image of a batch, one grey tile per channel.
    Maps {
        #[command(flatten)]
        model: ModelArgs,
        /// The layer, by its name in `cnnc summary`.
        layer: String,
        #[command(flatten)]
        weights: VizWeights,
        /// The input batch (.npy, [N, C, H, W]).
        #[arg(long, value_name = "X.npy")]
        input: PathBuf,
        /// Which image of the batch.
        #[arg(long, default_value_t = 0)]
        image: usize,
        /// Feed the input as it is, even when the weights record a normalisation.
        #[arg(long)]
        no_normalize: bool,
        /// The PNG file to write.
        #[arg(short, long, value_name = "OUT.png")]
        output: PathBuf,
        #[command(flatten)]
        backend: BackendArgs,
    },
}

/// The weights a picture shows.
#[derive(Args, Debug)]
pub(crate) struct VizWeights {
    /// The weights (safetensors); without it, parameters initialised from --seed.
    #[arg(long, value_name = "W.safetensors")]
    weights: Option<PathBuf>,
    /// Ignore tensors of the weights file the model does not have.
    #[arg(long, requires = "weights")]
    allow_extra_weights: bool,
    /// The seed of the initial weights without --weights.
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

impl VizWeights {
    /// The parameters (from the file, else drawn from the seed) and the file's normalisation.
    fn load(
        &self,
        graph: &Graph,
        budget: &MemoryBudget,
    ) -> Result<(execute::TensorMap, Option<cnnc_data::Normalization>), Failure> {
        weights_and_normalization(graph, self.weights.as_deref(), self.allow_extra_weights, self.seed, budget)
    }
}

pub(crate) fn viz(args: &VizArgs, budget: &MemoryBudget, color: bool, out: &mut String) -> Result<(), Failure> {
    match args {
        VizArgs::Filters { model, layer, weights, output } => {
            let (graph, _) = lower_with_source(model, color)?;
            check_outputs(&[("-o", output)], &[("the source FILE", &model.file)])?;
            check_memory(&graph, Task::Init, budget)?;
            let (params, _) = weights.load(&graph, budget)?;
            let weight = viz::conv_weight(&graph, &params, layer).map_err(viz_failure)?;
            let picture = viz::filters(weight).map_err(viz_failure)?;
            viz::write_png(output, &picture).map_err(viz_failure)?;
            let d = &weight.shape;
            let over = if d[1] == 1 { "1 input channel".to_string() } else { format!("{} input channels", d[1]) };
            let said = format!("{} kernels of `{layer}` ({}x{} over {over})", picture.tiles, d[2], d[3]);
            out.push_str(&written(output, &said, &picture));
            Ok(())
        }
        VizArgs::Maps { model, layer, weights, input, image, no_normalize, output, backend } => {
            let cancel = crate::cancel_on_ctrl_c();
            let (graph, file) = lower_with_source(model, color)?;
            viz::find_layer(&graph, layer).map_err(viz_failure)?;
            check_outputs(&[("-o", output)], &[("the source FILE", &model.file), ("--input", input)])?;
            let (mut x, warnings) = load_input(&graph, &file, model, input, budget)?;
            crate::warn(&warnings);
            if *image >= x.shape[0] {
                return Err(Failure::Usage(format!(
                    "--image {image} is out of range: `{}` holds {} images",
                    input.display(),
                    x.shape[0]
                )));
            }
            check_memory(&graph, Task::Run { batch: x.shape[0], passes: false, dump: true }, budget)?;
            let (params, normalization) = weights.load(&graph, budget)?;
            normalize(normalization.as_ref(), *no_normalize, &mut x, weights.weights.as_deref());
            let mode = execute::exec_mode(&graph, false, None)?;
            // Without passes, so that every layer's output exists (a fused conv + activation
            // would hide the conv's own).
            let outcome = execute::run(&graph, &params, &x, mode, &[], true, backend.backend(), Some(&cancel))?;
            let all = outcome
                .dump
                .and_then(|mut d| d.remove(layer.as_str()))
                .ok_or_else(|| viz_failure(VizError::NoOutput { layer: layer.clone() }))?;
            let one = viz::image_of(layer, &all, *image).map_err(viz_failure)?;
            let picture = viz::maps(layer, &one).map_err(viz_failure)?;
            viz::write_png(output, &picture).map_err(viz_failure)?;
            let said = format!(
                "{} feature maps of `{layer}` {:?}, image {image} of `{}`",
                picture.tiles,
                one.shape,
                input.display()
            );
            out.push_str(&written(output, &said, &picture));
            Ok(())
        }
    }
}

fn written(path: &std::path::Path, said: &str, picture: &Picture) -> String {
    let cut = if picture.tiles < picture.of {
        format!(" (the first {} of {})", picture.tiles, picture.of)
    } else {
        String::new()
    };
    format!("wrote {}: {said}{cut}, {}x{} pixels\n", destination_text(path), picture.width, picture.height)
}

fn viz_failure(e: VizError) -> Failure {
    let hint = e.hint().map_or(String::new(), |h| format!("\n  = help: {h}"));
    Failure::Usage(format!("{e}{hint}"))
}
